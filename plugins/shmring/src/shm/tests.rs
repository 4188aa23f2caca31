// SPDX-License-Identifier: MPL-2.0
//! Unit tests of the shm segment: create, read, reclaim, foreign objects, shrinking.

use super::*;
use crate::ring::FrameMeta;

fn unique(tag: &str) -> String {
    format!("/shmring-unit-{tag}-{}", std::process::id())
}

/// Removes the test ring even when an assertion fails.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = unlink(&self.0);
    }
}

#[test]
fn create_read_reclaim() {
    let name = unique("crr");
    let _cleanup = Unlink(name.clone());
    let g = Geometry::new(4, 256).unwrap();
    assert_eq!(Segment::check_writable(&name, 0o600).unwrap(), None);
    let (w, gen1) = Segment::create_writer(&name, 0o600, &g).unwrap();
    assert_eq!(gen1, 1);
    // Our own ring: reclaimable, with its geometry.
    assert_eq!(Segment::check_writable(&name, 0o600).unwrap(), Some(g));
    let md = std::fs::metadata(shm_path(&name)).unwrap();
    assert_eq!(md.mode() & 0o777, 0o600);
    let wm = w.memory();
    wm.write_frame(
        &g,
        &FrameMeta {
            seq: 0,
            size: 3,
            ..Default::default()
        },
        b"xyz",
    );
    let (r, rg) = Segment::open_reader(&name).unwrap();
    assert_eq!(rg, g);
    assert_eq!(r.memory().read_frame(&g, 0).unwrap().1, b"xyz");
    // Same pid reclaims (as a restarted writer would): new generation, same object.
    let (w2, gen2) = Segment::create_writer(&name, 0o600, &g).unwrap();
    assert_eq!(gen2, 2);
    assert_eq!(r.memory().generation(), 2);
    assert!(r.name_still_ours());
    // Different geometry: new object, the old one is marked closed.
    let g2 = Geometry::new(4, 1024).unwrap();
    let (_w3, gen3) = Segment::create_writer(&name, 0o600, &g2).unwrap();
    assert_eq!(gen3, 3);
    assert_eq!(r.memory().state(), Some(WriterState::Closed));
    assert!(!r.name_still_ours());
    drop((w, w2));
}

#[test]
fn foreign_and_missing() {
    let name = unique("foreign");
    let _cleanup = Unlink(name.clone());
    assert!(matches!(
        Segment::open_reader(&name),
        Err(ShmError::NotFound(_))
    ));
    std::fs::write(shm_path(&name), vec![b'x'; 8192]).unwrap();
    let e = Segment::open_reader(&name).unwrap_err();
    assert!(matches!(e, ShmError::Foreign(_)), "{e}");
    assert!(e.to_string().contains(&shm_path(&name)));
    let e = Segment::create_writer(&name, 0o600, &Geometry::new(2, 64).unwrap()).unwrap_err();
    assert!(matches!(e, ShmError::Foreign(_)), "{e}");
    let e = Segment::check_writable(&name, 0o600).unwrap_err();
    assert!(matches!(e, ShmError::Foreign(_)), "{e}");
    assert!(matches!(
        Segment::open_reader("a/b"),
        Err(ShmError::BadName(_))
    ));
    assert_eq!(shm_path("vcam0"), "/dev/shm/vcam0");
}

/// A peer truncates the ring while a reader copies from it and while the writer writes:
/// the SIGBUS guard keeps this process alive, the copy finishes on zeros, and both sides
/// report the ring broken (the reader's fstat check catches it before a copy, too).
#[test]
fn shrink_under_reader_and_writer_is_survived() {
    let name = unique("shrink");
    let _cleanup = Unlink(name.clone());
    let g = Geometry::new(4, 64 * 1024).unwrap();
    let (w, _) = Segment::create_writer(&name, 0o600, &g).unwrap();
    let payload = vec![7u8; 64 * 1024];
    let meta = FrameMeta {
        seq: 0,
        size: payload.len(),
        ..Default::default()
    };
    w.memory().write_frame(&g, &meta, &payload);
    let (r, rg) = Segment::open_reader(&name).unwrap();
    assert!(r.check_intact().is_ok());
    let ring::ReadStart::Ready(fm) = r.memory().start_read(&rg, 0) else {
        panic!("frame 0 ready");
    };
    // The peer shrinks the object to its header between our check and our copy.
    let peer = std::fs::OpenOptions::new()
        .write(true)
        .open(shm_path(&name))
        .unwrap();
    peer.set_len(ring::HEADER_SIZE as u64).unwrap();
    let e = r.check_intact().unwrap_err();
    assert!(matches!(e, ShmError::Broken(_)), "{e}");
    assert!(e.to_string().contains("shrank to 4096 bytes"), "{e}");
    // The copy itself (as if the shrink raced it): faults, survives, reads zeros.
    let mut buf = vec![1u8; fm.size];
    r.memory().copy_payload(&rg, &fm, &mut buf);
    assert!(buf.iter().all(|b| *b == 0));
    assert!(r.guard.as_ref().unwrap().faulted());
    assert!(!r.memory().finish_read(&rg, &fm), "frame discarded");
    // The writer writing into its truncated ring survives too and notices.
    w.memory()
        .write_frame(&g, &FrameMeta { seq: 1, ..meta }, &payload);
    assert!(w.guard.as_ref().unwrap().faulted());
    assert!(matches!(w.check_intact(), Err(ShmError::Broken(_))));
    // A fault outside any ring still reaches the previous handler: not tested here (it
    // would kill the test process); the table lookup is what decides.
    drop((r, w));
    // A good writer and reader work right after (new object at the name).
    unlink(&name).unwrap();
    let (w, _) = Segment::create_writer(&name, 0o600, &g).unwrap();
    w.memory().write_frame(
        &g,
        &FrameMeta {
            seq: 0,
            size: 3,
            ..Default::default()
        },
        b"ok!",
    );
    let (r, rg) = Segment::open_reader(&name).unwrap();
    assert_eq!(r.memory().read_frame(&rg, 0).unwrap().1, b"ok!");
    assert!(r.check_intact().is_ok() && w.check_intact().is_ok());
}

/// A writer never adopts another user's object at its name, and replaces its own object
/// when its mode is wider than asked for.
#[test]
fn writer_refuses_foreign_owner_and_replaces_wider_mode() {
    let name = unique("owner");
    let _cleanup = Unlink(name.clone());
    let g = Geometry::new(2, 64).unwrap();
    // Our own empty object, mode 0666: replaced by a fresh 0600 object.
    let f = shm_open(&name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o666).unwrap();
    f.set_permissions(std::fs::Permissions::from_mode(0o666))
        .unwrap();
    let old_ino = f.metadata().unwrap().ino();
    let (w, _) = Segment::create_writer(&name, 0o600, &g).unwrap();
    let md = std::fs::metadata(shm_path(&name)).unwrap();
    assert_ne!(md.ino(), old_ino, "replaced, not reused");
    assert_eq!(md.mode() & 0o777, 0o600);
    assert_eq!(f.metadata().unwrap().len(), 0, "the old fd sees nothing");
    drop(w);
    unlink(&name).unwrap();
    if euid() != 0 {
        eprintln!("skipped the foreign-owner part: needs root to chown");
        return;
    }
    let f = shm_open(&name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o666).unwrap();
    std::os::unix::fs::fchown(&f, Some(65534), Some(65534)).unwrap();
    for e in [
        Segment::create_writer(&name, 0o600, &g).unwrap_err(),
        Segment::check_writable(&name, 0o600).unwrap_err(),
    ] {
        assert!(matches!(e, ShmError::NotOurs(_)), "{e}");
        let text = e.to_string();
        assert!(text.contains("owned by uid 65534"), "{text}");
        assert!(text.contains(&format!("rm {}", shm_path(&name))), "{text}");
        assert!(text.contains("pick another shm-name"), "{text}");
    }
    let md = f.metadata().unwrap();
    assert_eq!((md.len(), md.uid()), (0, 65534), "left untouched");
}
