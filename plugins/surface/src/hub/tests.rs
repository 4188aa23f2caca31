// SPDX-License-Identifier: MPL-2.0
//! Unit tests of the hub: readers, surfaces, holds, eviction, on a fake transport.

use super::*;
use crate::platform::{Listener, wait_readable};
use crate::wire::MessageKind;

/// A hub with one connected, greeted reader; returns the reader's end.
fn hub_with_reader(config: HubConfig) -> (tempfile::TempDir, Listener, Hub<u32>, Channel, u64) {
    let dir = tempfile::tempdir().unwrap();
    let l = Listener::bind(&dir.path().join("h.sock")).unwrap();
    let mut hub = Hub::new(config);
    let reader = Channel::connect(l.path()).unwrap();
    wait_readable(&[l.raw_fd()], Duration::from_secs(5)).unwrap();
    hub.add_reader(l.accept().unwrap().unwrap());
    let hello = Message::Hello {
        role: Role::Reader,
        pid: 1,
        session: 0,
    };
    reader.send(&hello.encode(), None).unwrap();
    let id = hub.reader_fds()[0].0;
    wait_readable(&[hub.reader_fds()[0].1], Duration::from_secs(5)).unwrap();
    assert!(hub.service_reader(id));
    assert_eq!(hub.ready_readers(), 1);
    (dir, l, hub, reader, id)
}

/// Everything the reader has received so far: (message, fds attached).
fn drain(reader: &Channel) -> Vec<(Message, usize)> {
    let mut buf = vec![0u8; wire::MAX_MESSAGE_LEN];
    let mut out = Vec::new();
    while let Ok(Received::Message { len, fds }) = reader.recv(&mut buf) {
        out.push((Message::decode(&buf[..len]).unwrap(), fds.len()));
    }
    out
}

fn config() -> HubConfig {
    HubConfig {
        surfaces: 4,
        max_outstanding: 2,
        release_timeout: Duration::from_millis(200),
    }
}

#[test]
fn fds_once_then_records_and_outstanding_limit() {
    let (_d, _l, mut hub, reader, _) = hub_with_reader(config());
    hub.set_caps("video/x-raw".into());
    let frame = vec![1u8; 1000];
    for _ in 0..5 {
        hub.publish(FrameSource::Bytes(&frame), FrameInfo::default())
            .unwrap();
    }
    let got = drain(&reader);
    let kinds: Vec<MessageKind> = got.iter().map(|(m, _)| m.kind()).collect();
    // hello, caps, surface(fd), frame, surface(fd), frame — then the reader holds 2 frames and
    // the next 3 are skipped for it.
    assert_eq!(
        kinds,
        [
            MessageKind::Hello,
            MessageKind::Caps,
            MessageKind::Surface,
            MessageKind::Frame,
            MessageKind::Surface,
            MessageKind::Frame
        ]
    );
    assert_eq!(got[2].1, 1, "surface carries its fd");
    assert_eq!(got[3].1, 0, "frame records carry no fd");
    let s = hub.stats();
    assert_eq!((s.frames, s.copies, s.dropped), (5, 2, 3));

    // Release the first frame: the next frame reuses surface 1, without another fd.
    let Message::Frame(f) = &got[3].0 else {
        panic!()
    };
    reader
        .send(
            &Message::Release {
                surface: f.surface,
                seq: f.seq,
            }
            .encode(),
            None,
        )
        .unwrap();
    let id = hub.reader_fds()[0].0;
    wait_readable(&[hub.reader_fds()[0].1], Duration::from_secs(5)).unwrap();
    hub.service_reader(id);
    hub.publish(FrameSource::Bytes(&frame), FrameInfo::default())
        .unwrap();
    let got = drain(&reader);
    assert_eq!(got.len(), 1);
    match &got[0].0 {
        Message::Frame(r) => assert_eq!((r.surface, r.seq), (f.surface, 6)),
        m => panic!("{m:?}"),
    }
}

#[test]
fn stuck_reader_is_evicted_and_surfaces_freed() {
    let (_d, _l, mut hub, reader, _) = hub_with_reader(config());
    let frame = vec![1u8; 100];
    hub.publish(FrameSource::Bytes(&frame), FrameInfo::default())
        .unwrap();
    assert_eq!(hub.reclaim(Instant::now()), 0);
    let later = Instant::now() + Duration::from_millis(300);
    assert_eq!(hub.reclaim(later), 1);
    assert_eq!(hub.ready_readers(), 0);
    let got = drain(&reader);
    match &got.last().unwrap().0 {
        Message::Error { code, message } => {
            assert_eq!(*code, error_code::RELEASE_TIMEOUT);
            assert!(message.contains("200 ms"), "{message}");
        }
        m => panic!("{m:?}"),
    }
    assert!(
        hub.surfaces.values().all(|s| s.holders.is_empty()),
        "holds reclaimed"
    );
    assert_eq!(hub.stats().evicted, 1);
}

#[test]
fn reader_without_hello_is_told_why() {
    let dir = tempfile::tempdir().unwrap();
    let l = Listener::bind(&dir.path().join("h.sock")).unwrap();
    let mut hub: Hub<u32> = Hub::new(config());
    let reader = Channel::connect(l.path()).unwrap();
    wait_readable(&[l.raw_fd()], Duration::from_secs(5)).unwrap();
    hub.add_reader(l.accept().unwrap().unwrap());
    assert_eq!(hub.reclaim(Instant::now() + Duration::from_millis(300)), 1);
    let got = drain(&reader);
    match &got.last().unwrap().0 {
        Message::Error { code, message } => {
            assert_eq!(*code, error_code::RELEASE_TIMEOUT);
            assert_eq!(
                message,
                "surfacesink disconnected this reader: it sent no hello within 200 ms (the writer's release-timeout)"
            );
        }
        m => panic!("{m:?}"),
    }
}

#[test]
fn external_fd_is_sent_once_and_kept_alive_while_held() {
    let (_d, _l, mut hub, reader, _) = hub_with_reader(config());
    let memfd = platform::create_memfd("ext", 4096).unwrap();
    for hold in [10u32, 11u32] {
        hub.publish(
            FrameSource::Fd {
                fd: memfd.as_fd(),
                offset: 0,
                size: 4096,
                hold,
            },
            FrameInfo::default(),
        )
        .unwrap();
    }
    let got = drain(&reader);
    let surfaces = got
        .iter()
        .filter(|(m, _)| m.kind() == MessageKind::Surface)
        .count();
    assert_eq!(surfaces, 1, "fd sent once for the same inode");
    let s = hub.stats();
    assert_eq!((s.zero_copy, s.copies), (2, 0));
    let kept: Vec<u32> = hub
        .surfaces
        .values()
        .flat_map(|s| s.keep.iter().map(|(_, h)| *h))
        .collect();
    assert_eq!(
        kept,
        [10, 11],
        "upstream buffers held while the reader looks"
    );
    // The reader disconnects: everything it held is let go.
    drop(reader);
    let id = hub.reader_fds()[0].0;
    assert!(!hub.service_reader(id));
    assert!(hub.surfaces.values().all(|s| s.keep.is_empty()));
}
