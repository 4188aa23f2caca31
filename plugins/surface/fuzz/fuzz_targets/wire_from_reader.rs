// SPDX-License-Identifier: MPL-2.0
//! What `surfacesink` parses from a reader: datagrams (each `u16` length-prefixed in the input)
//! through `wire::Message::decode`, as the hub's `service_reader` does. Anything that decodes
//! must survive an encode/decode round trip unchanged; only hello/release/error are accepted from
//! a reader, the rest is refused — never a panic.
#![no_main]

mod common;

use gstsurface::wire::{Message, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A datagram that does not decode: the hub refuses the reader with an Error message
    // carrying the decoder's text (`common::decoded` renders it and stops there).
    for msg in common::decoded(data) {
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
