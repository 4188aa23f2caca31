// SPDX-License-Identifier: MPL-2.0
//! Arbitrary bytes as a mapped ring (header + slots): header validation (on the whole region and,
//! as `Segment::open_reader` does, on a header-only copy against the object size), caps and the
//! reader's frame loop as `shmringsrc` runs it. Nothing may panic; everything a reader is told
//! must lie inside the region.
#![no_main]

use gstshmring::ring::{self, HEADER_SIZE, ReadStart, RingMemory};
use libfuzzer_sys::fuzz_target;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

/// A 64-byte aligned copy of `data` (a mapping is page aligned).
fn aligned(data: &[u8]) -> Vec<Block> {
    let mut v = vec![Block([0; 64]); data.len().div_ceil(64).max(1)];
    for (b, chunk) in v.iter_mut().zip(data.chunks(64)) {
        b.0[..chunk.len()].copy_from_slice(chunk);
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let mut region = aligned(data);
    // SAFETY: the region is 64-byte aligned, at least data.len() bytes, alive below.
    let mem = unsafe { RingMemory::new(region.as_mut_ptr() as *mut u8, data.len()) };

    // The reader's first step: the header alone, checked against the object size.
    if data.len() >= HEADER_SIZE {
        let mut head = aligned(&data[..HEADER_SIZE]);
        // SAFETY: as above, HEADER_SIZE bytes.
        let header = unsafe { RingMemory::new(head.as_mut_ptr() as *mut u8, HEADER_SIZE) };
        let from_header = header.validate_within(data.len());
        if let Ok(g) = from_header {
            assert!(g.total_size() <= data.len());
            assert_eq!(mem.validate(), Ok(g), "header-only and full validation agree");
        }
        // A claimed object size far beyond the bytes we have: geometry may pass, but it must
        // stay within the claim.
        if let Ok(g) = header.validate_within(usize::MAX) {
            assert!(g.slot_size <= ring::MAX_SLOT_SIZE);
            assert!(g.slot_count <= ring::MAX_SLOT_COUNT);
        }
    }

    let Ok(g) = mem.validate() else {
        return;
    };
    assert!(g.total_size() <= data.len());
    let _ = mem.read_caps();
    let _ = (mem.state(), mem.generation(), mem.writer_pid());
    let w = mem.write_seq();
    let count = g.slot_count as u64;
    // Where shmringsrc starts: waited (oldest), young ring (0), running (newest).
    for start in [w.saturating_sub(count - 1), 0, w.saturating_sub(1)] {
        let mut next = start;
        for _ in 0..2 * count + 4 {
            match mem.start_read(&g, next) {
                ReadStart::Ready(meta) => {
                    assert!(meta.size <= g.slot_size);
                    // The pin words are the peer's too: any value, any clock.
                    let now = (w as u32).rotate_left(7);
                    let _ = mem.pinned(&g, g.slot_of(next), now);
                    let pin = mem.pin(&g, next, now);
                    let mut buf = vec![0u8; meta.size];
                    mem.copy_payload(&g, &meta, &mut buf);
                    let _ = mem.finish_read(&g, &meta);
                    mem.unpin(&g, next, pin);
                    // The zero-copy path: lease, renew, release (any header, any clock).
                    let _ = mem.honors_leases(mem.generation());
                    if let Some(v) = mem.lease(&g, next, now)
                        && let Some(v) = mem.renew_lease(&g, next, v, now.wrapping_add(250))
                    {
                        let _ = mem.holds_frame(&g, next);
                        mem.unpin(&g, next, v);
                    }
                    next = next.wrapping_add(1);
                }
                ReadStart::NotYet => break,
                ReadStart::Lost { write_seq } => next = ring::catch_up(next, write_seq).0,
                ReadStart::Skipped => next = next.wrapping_add(1),
            }
        }
    }
});
