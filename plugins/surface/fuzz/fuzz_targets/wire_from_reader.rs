// SPDX-License-Identifier: MPL-2.0
//! What `surfacesink` parses from a reader: datagrams (each `u16` length-prefixed in the input)
//! through `wire::Message::decode`, as the hub's `service_reader` does. Anything that decodes
//! must survive an encode/decode round trip unchanged; only hello/release/error are accepted from
//! a reader, the rest is refused — never a panic.
#![no_main]

use gstsurface::wire::{Message, Role};
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
    for d in datagrams(data) {
        let msg = match Message::decode(d) {
            Ok(m) => m,
            Err(e) => {
                // The hub refuses the reader with an Error message carrying this text.
                let _ = e.to_string();
                break;
            }
        };
        let again = Message::decode(&msg.encode());
        assert_eq!(again.as_ref(), Ok(&msg), "round trip");
        match msg {
            Message::Hello {
                role: Role::Reader, ..
            }
            | Message::Release { .. } => {}
            // An error from the reader, or anything a reader must not send: dropped.
            _ => break,
        }
    }
});
