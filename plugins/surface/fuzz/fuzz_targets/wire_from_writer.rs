// SPDX-License-Identifier: MPL-2.0
//! What `surfacesrc` parses from a writer: datagrams (each `u16` length-prefixed in the input,
//! after a 24-byte header choosing a surface size and the caps' plane needs) through
//! `wire::Message::decode`, then the checks `surfacesrc` applies before exposing any byte:
//! caps ids into the bounded `RecentIds` table, frames through `FrameRecord::range_in` (against
//! the surface size) and `FrameRecord::check_layout` (against the caps). Asserts that what the
//! checks accept really lies inside the surface and the frame, and that the table stays bounded.
#![no_main]

mod common;

use gstsurface::wire::{self, Message, PlaneNeed, RecentIds};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let (head, rest) = data.split_at(24);
    let surface_len = u64::from_le_bytes(head[0..8].try_into().unwrap_or_default()) >> (head[8] % 64);
    let n_planes = (head[9] % 5) as usize;
    let default_size = u32::from_le_bytes([head[10], head[11], head[12], head[13]]) as u64;
    let planes: Vec<PlaneNeed> = (0..n_planes)
        .map(|i| PlaneNeed {
            rows: head[14 + 2 * i] as u64,
            row_bytes: head[15 + 2 * i] as u64 * 8,
        })
        .collect();

    let mut caps = RecentIds::new(wire::MAX_CAPS_IDS);
    for msg in common::decoded(rest) {
        match msg {
            Message::Caps { caps_id, caps: s } => {
                caps.insert(caps_id, s);
                assert!(caps.len() <= wire::MAX_CAPS_IDS);
                assert!(caps.get(caps_id).is_some());
            }
            Message::Frame(f) => {
                let _ = caps.get(f.caps_id);
                match f.range_in(surface_len) {
                    Ok(r) => {
                        assert!(r.start as u64 == f.offset && r.len() as u64 == f.size);
                        assert!(r.end as u64 <= surface_len);
                    }
                    Err(e) => {
                        let _ = e.to_string();
                        continue;
                    }
                }
                match f.check_layout(&planes, default_size) {
                    Ok(()) if f.n_planes as usize == planes.len() && !planes.is_empty() => {
                        for (i, p) in planes.iter().enumerate() {
                            let stride = f.strides[i];
                            assert!(stride >= 0 && stride as u64 >= p.row_bytes);
                            let end = f.plane_offsets[i] as u128 + stride as u128 * p.rows as u128;
                            assert!(end <= f.size as u128, "plane {i} beyond the frame");
                        }
                    }
                    Ok(()) => assert!(f.size >= default_size),
                    Err(e) => {
                        let _ = e.to_string();
                    }
                }
            }
            _ => {}
        }
    }
});
