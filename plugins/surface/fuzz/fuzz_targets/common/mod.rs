// SPDX-License-Identifier: MPL-2.0
//! What both fuzz targets do first: split the input into datagrams (each `u16` length-prefixed)
//! and decode them as a peer of `surfacesink`/`surfacesrc` would.

use gstsurface::wire::Message;

/// The input's datagrams: each is a little-endian `u16` length, then that many bytes (cut at the
/// end of the input).
fn datagrams(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let len = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
        let (d, rest) = data[2..].split_at(len);
        data = rest;
        Some(d)
    })
}

/// The messages the datagrams decode to, up to the first that does not decode (its error text is
/// rendered, as the elements do when they refuse the peer). Each must survive an encode/decode
/// round trip unchanged.
pub fn decoded(data: &[u8]) -> impl Iterator<Item = Message> + '_ {
    datagrams(data).map_while(|d| match Message::decode(d) {
        Ok(msg) => {
            assert_eq!(Message::decode(&msg.encode()).as_ref(), Ok(&msg), "round trip");
            Some(msg)
        }
        Err(e) => {
            let _ = e.to_string();
            None
        }
    })
}
