// SPDX-License-Identifier: MPL-2.0
//! Writes seed rings for the `ring` fuzz target into corpus/ring/ (valid rings as a writer leaves
//! them: young, wrapped, with skipped numbers, caps changes, end of stream, closed).

use gstshmring::ring::{FrameMeta, Geometry, RingMemory, WriterState, flags};

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

fn ring(slots: u32, slot_size: usize, fill: impl Fn(&RingMemory, &Geometry)) -> Vec<u8> {
    let g = Geometry::new(slots, slot_size).expect("geometry");
    let mut region = vec![Block([0; 64]); g.total_size() / 64];
    // SAFETY: aligned, total_size bytes, alive for this function.
    let mem = unsafe { RingMemory::new(region.as_mut_ptr() as *mut u8, g.total_size()) };
    mem.initialize(&g, 4242, 1);
    fill(&mem, &g);
    region.iter().flat_map(|b| b.0).collect()
}

fn frame(mem: &RingMemory, g: &Geometry, seq: u64, caps_id: u64, payload: &[u8]) {
    let meta = FrameMeta {
        seq,
        pts: Some(seq * 33_333_333),
        dts: None,
        duration: Some(33_333_333),
        caps_id,
        size: payload.len(),
        flags: if seq == 0 { 0 } else { flags::DELTA_UNIT },
        publish_time: 1_000 + seq,
    };
    mem.write_frame(g, &meta, payload);
}

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/ring");
    std::fs::create_dir_all(&dir)?;
    let seeds = [
        ("empty", ring(2, 64, |_, _| {})),
        (
            "young",
            ring(4, 128, |m, g| {
                let id = m.write_caps("video/x-raw,format=GRAY8,width=8,height=8").unwrap_or(0);
                for n in 0..3 {
                    frame(m, g, n, id, &[n as u8; 64]);
                }
            }),
        ),
        (
            "wrapped",
            ring(3, 256, |m, g| {
                let id = m.write_caps("audio/x-raw").unwrap_or(0);
                for n in 0..8 {
                    frame(m, g, n, id, &vec![n as u8; 100 + n as usize]);
                }
            }),
        ),
        (
            "skipped_and_caps_change",
            ring(4, 64, |m, g| {
                let a = m.write_caps("x/a").unwrap_or(0);
                frame(m, g, 0, a, b"first");
                m.begin_write(g, 1); // lent, never published
                let b = m.write_caps("x/b").unwrap_or(0);
                frame(m, g, 2, a, b"old caps");
                frame(m, g, 3, b, b"new caps");
            }),
        ),
        (
            "eos",
            ring(2, 64, |m, g| {
                frame(m, g, 0, 0, b"last");
                m.set_state(WriterState::Eos);
            }),
        ),
        (
            "closed",
            ring(2, 64, |m, g| {
                frame(m, g, 0, 0, b"gone");
                m.set_state(WriterState::Closed);
                m.set_generation(2);
            }),
        ),
    ];
    // The header of issue 15: slot size 2^64 - 64, so the stride wraps to 0 and the total to
    // 4096 (must be refused, not read).
    let mut huge = seeds[0].1.clone();
    huge[24..32].copy_from_slice(&(u64::MAX - 63).to_le_bytes());
    huge[32..40].copy_from_slice(&0u64.to_le_bytes());
    huge[40..48].copy_from_slice(&4096u64.to_le_bytes());
    std::fs::write(dir.join("huge_slot_size"), huge)?;
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
