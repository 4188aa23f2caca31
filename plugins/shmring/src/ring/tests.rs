// SPDX-License-Identifier: MPL-2.0
//! Unit tests of the ring layout: geometry, validation, caps, the seqlock against a concurrent writer.

use super::*;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

/// A 64-byte aligned zeroed heap region.
struct Region(Vec<Block>);

impl Region {
    fn new(len: usize) -> Self {
        Region(vec![Block([0u8; 64]); len.div_ceil(64)])
    }
    fn mem(&mut self) -> RingMemory {
        let len = self.0.len() * 64;
        unsafe { RingMemory::new(self.0.as_mut_ptr() as *mut u8, len) }
    }
}

fn meta(seq: u64, size: usize) -> FrameMeta {
    FrameMeta {
        seq,
        pts: Some(seq * 1000),
        dts: None,
        duration: Some(1000),
        caps_id: 1,
        size,
        flags: flags::DELTA_UNIT,
        publish_time: 42,
    }
}

#[test]
fn geometry_is_aligned() {
    let g = Geometry::new(4, 100).unwrap();
    assert_eq!(g.slot_size, 128);
    assert_eq!(g.slot_stride(), 192);
    assert_eq!(g.total_size(), 4096 + 4 * 192);
    assert_eq!(g.slot_offset(1) % ALIGN, 0);
    assert_eq!(g.payload_offset(3), 4096 + 3 * 192 + 64);
    assert!(Geometry::new(1, 100).is_err());
    assert!(Geometry::new(u32::MAX, usize::MAX / 2).is_err());
}

#[test]
fn fixed_offsets_are_little_endian() {
    let g = Geometry::new(3, 64).unwrap();
    let mut r = Region::new(g.total_size());
    let m = r.mem();
    m.initialize(&g, 1234, 7);
    let bytes = unsafe { std::slice::from_raw_parts(m.as_ptr(), m.len()) };
    assert_eq!(&bytes[0..8], b"VCSHMRNG");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(bytes[16..20].try_into().unwrap()), 3);
    assert_eq!(u64::from_le_bytes(bytes[24..32].try_into().unwrap()), 64);
    assert_eq!(u32::from_le_bytes(bytes[48..52].try_into().unwrap()), 1234);
    assert_eq!(u32::from_le_bytes(bytes[52..56].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(bytes[56..64].try_into().unwrap()), 7);
    m.write_frame(&g, &meta(0, 3), b"abc");
    assert_eq!(u64::from_le_bytes(bytes[64..72].try_into().unwrap()), 1);
    let slot = g.slot_offset(0);
    assert_eq!(
        u64::from_le_bytes(bytes[slot..slot + 8].try_into().unwrap()),
        2
    );
    assert_eq!(&bytes[slot + 64..slot + 67], b"abc");
}

#[test]
fn validate_reports_what_is_wrong() {
    let g = Geometry::new(2, 64).unwrap();
    let mut r = Region::new(g.total_size());
    let m = r.mem();
    assert_eq!(m.validate(), Err(LayoutError::NotReady));
    m.initialize(&g, 1, 1);
    assert_eq!(m.validate(), Ok(g));
    let short = unsafe { RingMemory::new(m.as_ptr(), g.total_size() - 64) };
    assert!(matches!(
        short.validate(),
        Err(LayoutError::TooSmall { .. })
    ));
    m.u32_at(OFF_VERSION).store(2, Ordering::Relaxed);
    assert_eq!(m.validate(), Err(LayoutError::VersionMismatch { found: 2 }));
    assert!(m.validate().unwrap_err().to_string().contains("version 2"));
    m.u64_at(OFF_MAGIC)
        .store(u64::from_le_bytes(*b"GARBAGE!"), Ordering::Relaxed);
    let e = m.validate().unwrap_err();
    assert!(matches!(e, LayoutError::BadMagic { .. }));
    assert!(e.to_string().contains("GARBAGE!"), "{e}");
}

/// Hostile geometry (issue 15): fields that overflow, slots bigger than the object or than
/// any real frame, a ring bigger than the object. All refused, nothing panics.
#[test]
fn validate_refuses_geometry_it_cannot_map() {
    let g = Geometry::new(2, 64).unwrap();
    let mut r = Region::new(g.total_size());
    let m = r.mem();
    m.initialize(&g, 1, 1);
    let set = |slots: u32, size: u64, stride: u64, total: u64| {
        m.u32_at(OFF_SLOT_COUNT).store(slots, Ordering::Relaxed);
        m.u64_at(OFF_SLOT_SIZE).store(size, Ordering::Relaxed);
        m.u64_at(OFF_SLOT_STRIDE).store(stride, Ordering::Relaxed);
        m.u64_at(OFF_TOTAL_SIZE).store(total, Ordering::Relaxed);
    };
    // slot size 2^64 - 64: the stride wraps to 0 and total to 4096 (a 4 KiB "ring").
    set(2, u64::MAX - 63, 0, 4096);
    let e = m.validate().unwrap_err();
    assert!(
        e.to_string().contains("slot size 18446744073709551552"),
        "{e}"
    );
    // A consistent 2 TiB ring of two 1 TiB slots in a (sparse) 2 TiB object.
    let tib = 1u64 << 40;
    set(2, tib, tib + 64, 4096 + 2 * (tib + 64));
    let e = m.validate_within(1 << 42).unwrap_err();
    assert!(e.to_string().contains("up to 4294967296"), "{e}");
    // Within the limits but bigger than the object.
    let gib = 1u64 << 30;
    set(4, gib, gib + 64, 4096 + 4 * (gib + 64));
    assert!(matches!(
        m.validate_within(1 << 20),
        Err(LayoutError::TooSmall { size: 1048576, .. })
    ));
    let big = m.validate_within(8 << 30).unwrap();
    assert_eq!(big.total_size() as u64, 4096 + 4 * (gib + 64));
    set(
        MAX_SLOT_COUNT + 1,
        64,
        128,
        4096 + 128 * (MAX_SLOT_COUNT as u64 + 1),
    );
    assert!(
        m.validate_within(usize::MAX)
            .unwrap_err()
            .to_string()
            .contains("slot count")
    );
    set(2, 64, 128, 4096 + 256);
    assert_eq!(m.validate(), Ok(g));
    assert!(Geometry::new(2, MAX_SLOT_SIZE + 1).is_err());
    assert!(Geometry::new(MAX_SLOT_COUNT + 1, 64).is_err());
    // A hostile write_seq near u64::MAX: no overflow, just no frame.
    m.u64_at(OFF_WRITE_SEQ).store(u64::MAX, Ordering::Relaxed);
    assert!(m.read_frame(&g, u64::MAX - 1).is_err());
    assert_eq!(catch_up(u64::MAX, u64::MAX), (u64::MAX, 1));
}

#[test]
fn frames_round_trip_and_get_overwritten() {
    let g = Geometry::new(3, 64).unwrap();
    let mut r = Region::new(g.total_size());
    let m = r.mem();
    m.initialize(&g, 1, 1);
    assert_eq!(m.start_read(&g, 0), ReadStart::NotYet);
    for n in 0..5u64 {
        let payload = vec![n as u8; 10 + n as usize];
        m.write_frame(&g, &meta(n, payload.len()), &payload);
    }
    assert_eq!(m.write_seq(), 5);
    // frames 0..=2 are overwritten (3 slots, newest is 4; frame 2's slot is being reused next)
    assert_eq!(m.read_frame(&g, 1), Err(ReadStart::Lost { write_seq: 5 }));
    assert_eq!(m.read_frame(&g, 2), Err(ReadStart::Lost { write_seq: 5 }));
    let (fm, data) = m.read_frame(&g, 4).unwrap();
    assert_eq!(fm, meta(4, 14));
    assert_eq!(data, vec![4u8; 14]);
    let (fm, data) = m.read_frame(&g, 3).unwrap();
    assert_eq!(fm.pts, Some(3000));
    assert_eq!(data, vec![3u8; 13]);
    assert_eq!(m.read_frame(&g, 5), Err(ReadStart::NotYet));
}

#[test]
fn torn_frame_is_discarded() {
    let g = Geometry::new(4, 64).unwrap();
    let mut r = Region::new(g.total_size());
    let m = r.mem();
    m.initialize(&g, 1, 1);
    m.write_frame(&g, &meta(0, 4), b"aaaa");
    let ReadStart::Ready(fm) = m.start_read(&g, 0) else {
        panic!("frame 0 ready")
    };
    // The writer wraps around onto slot 0 while the reader copies.
    m.begin_write(&g, 4);
    let mut buf = [0u8; 4];
    m.copy_payload(&g, &fm, &mut buf);
    assert!(!m.finish_read(&g, &fm));
    // A slot in progress (seq odd) is never handed out.
    m.u64_at(OFF_WRITE_SEQ).store(5, Ordering::Relaxed);
    assert_eq!(m.start_read(&g, 4), ReadStart::Skipped);
    // A number the writer skipped (the slot still holds an older frame).
    m.write_frame(&g, &meta(6, 1), b"x");
    assert_eq!(m.start_read(&g, 5), ReadStart::Skipped);
    assert!(matches!(m.start_read(&g, 6), ReadStart::Ready(_)));
}

#[test]
fn caps_are_versioned() {
    let g = Geometry::new(2, 64).unwrap();
    let mut r = Region::new(g.total_size());
    let m = r.mem();
    m.initialize(&g, 1, 1);
    assert_eq!(m.read_caps(), None);
    assert_eq!(m.write_caps("video/x-raw,width=2"), Ok(1));
    assert_eq!(m.read_caps(), Some((1, "video/x-raw,width=2".into())));
    assert_eq!(m.write_caps("audio/x-raw"), Ok(2));
    assert_eq!(m.read_caps(), Some((2, "audio/x-raw".into())));
    assert!(m.write_caps(&"x".repeat(CAPS_CAPACITY + 1)).is_err());
}

#[test]
fn catch_up_skips_to_newest() {
    assert_eq!(catch_up(3, 10), (9, 6));
    assert_eq!(catch_up(9, 10), (10, 1));
    assert_eq!(catch_up(0, 0), (0, 0));
}

#[test]
fn shm_names() {
    assert!(validate_shm_name("/vcam0").is_ok());
    assert!(validate_shm_name("vcam0").is_ok());
    assert_eq!(canonical_shm_name("vcam0"), "/vcam0");
    assert_eq!(canonical_shm_name("/vcam0"), "/vcam0");
    assert!(validate_shm_name("").unwrap_err().contains("needs a name"));
    assert!(validate_shm_name("/").unwrap_err().contains("needs a name"));
    assert!(validate_shm_name("/..").is_err());
    assert!(validate_shm_name("..").is_err());
    for bad in ["/a/b", "a/b", "../x", "/../x"] {
        assert!(
            validate_shm_name(bad)
                .unwrap_err()
                .contains("only at the start"),
            "{bad}"
        );
    }
    assert!(validate_shm_name(&format!("/{}", "a".repeat(254))).is_ok());
    assert!(validate_shm_name(&"a".repeat(254)).is_ok());
    assert!(
        validate_shm_name(&format!("/{}", "a".repeat(255)))
            .unwrap_err()
            .contains("at most 255")
    );
    assert!(
        validate_shm_name(&"a".repeat(255))
            .unwrap_err()
            .contains("at most 255")
    );
}

#[test]
fn concurrent_reader_never_sees_torn_frames() {
    let g = Geometry::new(3, 4096).unwrap();
    let mut r = Region::new(g.total_size());
    let m = r.mem();
    m.initialize(&g, 1, 1);
    let writer = std::thread::spawn(move || {
        for n in 0..20_000u64 {
            let payload = vec![(n % 251) as u8; 4096];
            m.write_frame(&g, &meta(n, payload.len()), &payload);
        }
    });
    let mut next = 0;
    let mut seen = 0;
    while next < 20_000 {
        match m.read_frame(&g, next) {
            Ok((fm, data)) => {
                assert!(
                    data.iter().all(|b| *b == (fm.seq % 251) as u8),
                    "torn frame {}",
                    fm.seq
                );
                seen += 1;
                next += 1;
            }
            Err(ReadStart::NotYet) => std::hint::spin_loop(),
            Err(ReadStart::Lost { write_seq }) => next = catch_up(next, write_seq).0,
            Err(ReadStart::Skipped) => next += 1,
            Err(ReadStart::Ready(_)) => unreachable!(),
        }
    }
    writer.join().unwrap();
    assert!(seen > 0);
}

/// Leases in Dekker's order: a lease the writer can see keeps it off the slot (the old frame
/// stays intact, its seq restored); a lease taken after the writer claimed the slot is refused;
/// values beyond the horizon are garbage; a longer hold of another reader is never shortened;
/// the header flag is tied to the generation that set it.
#[test]
fn leases_and_the_writer_never_race() {
    let g = Geometry::new(4, 64).unwrap();
    let mut region = Region::new(g.total_size());
    let mem = region.mem();
    mem.initialize(&g, 1, 7);
    assert!(!mem.honors_leases(7), "initialize clears the flag");
    mem.set_honors_leases(7);
    assert!(mem.honors_leases(7) && !mem.honors_leases(8) && !mem.honors_leases(0));
    for n in 0..4 {
        mem.write_frame(&g, &meta(n, 8), &[n as u8; 8]);
    }
    let now = 1_000_000u32;
    // Frame 1 leased: frame 5 (same slot) is refused, frame 1 intact.
    let v = mem.lease(&g, 1, now).expect("frame 1 is in its slot");
    assert_eq!(v, now + LEASE_MS);
    assert_eq!(mem.try_begin_write(&g, 5, now + 10), Err(LEASE_MS - 10));
    assert!(mem.holds_frame(&g, 1));
    assert_eq!(mem.read_frame(&g, 1).unwrap().1, vec![1u8; 8]);
    // Renewed: still held later on; released: the writer takes the slot.
    let v = mem.renew_lease(&g, 1, v, now + 900).expect("still there");
    assert!(mem.try_begin_write(&g, 5, now + 1500).is_err());
    mem.unpin(&g, 1, v);
    assert_eq!(mem.try_begin_write(&g, 5, now + 1500), Ok(()));
    // The writer claimed slot 1 first: a lease on frame 1 is refused and leaves nothing behind.
    assert_eq!(mem.lease(&g, 1, now + 1500), None);
    assert_eq!(mem.pinned(&g, 1, now + 1500), None);
    mem.publish(&g, &meta(5, 8));
    assert_eq!(
        mem.renew_lease(&g, 1, 0, now + 1500),
        None,
        "frame 1 is gone"
    );
    // Beyond the horizon: garbage, ignored; a longer hold is never shortened by a pin.
    mem.hold(&g, 2, now + LEASE_HORIZON_MS + 1);
    assert_eq!(mem.pinned(&g, 2, now), None);
    let long = mem.hold(&g, 3, now + 1800);
    assert_eq!(mem.pin(&g, 3, now), 0);
    assert_eq!(mem.pinned(&g, 3, now), Some(1800));
    mem.unpin(&g, 3, long);
    assert_eq!(mem.pinned(&g, 3, now), None);
}
