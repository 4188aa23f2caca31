// SPDX-License-Identifier: MPL-2.0
//! Unit tests of the wire protocol: every message round-trips, malformed input is refused.

use super::*;

fn roundtrip(m: Message) {
    let bytes = m.encode();
    assert_eq!(Message::decode(&bytes).unwrap(), m);
}

#[test]
fn all_messages_roundtrip() {
    roundtrip(Message::Hello {
        role: Role::Writer,
        pid: 1234,
        session: 0xdead_beef_0000_0001,
    });
    roundtrip(Message::Hello {
        role: Role::Reader,
        pid: 1,
        session: 0,
    });
    roundtrip(Message::Caps {
        caps_id: 7,
        caps: "video/x-raw, format=(string)BGRx, width=(int)64".into(),
    });
    roundtrip(Message::Surface {
        surface: 3,
        size: 8_294_400,
    });
    roundtrip(Message::Frame(FrameRecord {
        seq: 99,
        surface: 2,
        caps_id: 1,
        pts: 1_000_000,
        dts: NO_TIME,
        duration: 33_333_333,
        flags: 0x40,
        n_planes: 3,
        offset: 4096,
        size: 1234,
        plane_offsets: [0, 100, 200, 0],
        strides: [64, 32, 32, 0],
    }));
    roundtrip(Message::Retire { surface: 5 });
    roundtrip(Message::Eos);
    roundtrip(Message::Release {
        surface: 4,
        seq: 77,
    });
    roundtrip(Message::Error {
        code: error_code::RELEASE_TIMEOUT,
        message: "too slow".into(),
    });
}

#[test]
fn frame_record_is_small() {
    let len = Message::Frame(FrameRecord::default()).encode().len();
    assert_eq!(len, HEADER_LEN + FRAME_PAYLOAD_LEN);
    assert!(len < 160, "{len}");
}

#[test]
fn header_layout_is_fixed() {
    let b = Message::Eos.encode();
    assert_eq!(&b[0..4], b"VCSF");
    assert_eq!(u16::from_le_bytes([b[4], b[5]]), PROTOCOL_VERSION);
    assert_eq!(u16::from_le_bytes([b[6], b[7]]), MessageKind::Eos as u16);
    assert_eq!(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), 0);
}

#[test]
fn version_mismatch_is_reported_but_errors_still_decode() {
    let mut b = Message::Hello {
        role: Role::Reader,
        pid: 1,
        session: 0,
    }
    .encode();
    b[4] = 9;
    b[5] = 0;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::VersionMismatch { theirs: 9 })
    );
    let msg = DecodeError::VersionMismatch { theirs: 9 }.to_string();
    assert!(
        msg.contains("version 9") && msg.contains("version 1"),
        "{msg}"
    );

    let mut e = Message::Error {
        code: error_code::VERSION_MISMATCH,
        message: "go away".into(),
    }
    .encode();
    e[4] = 9;
    assert!(matches!(Message::decode(&e), Ok(Message::Error { .. })));
}

#[test]
fn frame_range_and_layout_are_checked() {
    let f = FrameRecord {
        offset: 100,
        size: 12288,
        ..Default::default()
    };
    assert_eq!(f.range_in(12388), Ok(100..12388));
    let e = f.range_in(12387).unwrap_err();
    assert!(e.to_string().contains("12387 bytes"), "{e}");
    let huge = FrameRecord {
        offset: u64::MAX,
        size: 2,
        ..Default::default()
    };
    assert!(huge.range_in(u64::MAX).is_err(), "overflow is an error");

    // Caps need 64x48 BGRx: 48 rows of 256 bytes.
    let planes = [PlaneNeed {
        rows: 48,
        row_bytes: 256,
    }];
    let small = FrameRecord {
        size: 100,
        ..Default::default()
    };
    let e = small.check_layout(&planes, 12288).unwrap_err();
    assert_eq!(
        e.to_string(),
        "frame of 100 bytes is smaller than its caps need (12288 bytes)"
    );
    let mut good = FrameRecord {
        size: 12288,
        n_planes: 1,
        ..Default::default()
    };
    good.strides[0] = 256;
    assert_eq!(good.check_layout(&planes, 12288), Ok(()));
    let mut shifted = good;
    shifted.plane_offsets[0] = 8000;
    assert!(matches!(
        shifted.check_layout(&planes, 12288),
        Err(LayoutError::PlaneBeyondFrame { plane: 0, .. })
    ));
    let mut thin = good;
    thin.strides[0] = 1;
    assert!(matches!(
        thin.check_layout(&planes, 12288),
        Err(LayoutError::BadStride { stride: 1, .. })
    ));
    let mut negative = good;
    negative.strides[0] = -256;
    assert!(negative.check_layout(&planes, 12288).is_err());
    let mut overflow = good;
    overflow.plane_offsets[0] = u64::MAX - 10;
    assert!(overflow.check_layout(&planes, 12288).is_err());
}

#[test]
fn recent_ids_stay_bounded() {
    let mut t = RecentIds::new(4);
    for id in 0..20_000u32 {
        t.insert(id, id);
    }
    assert_eq!(t.len(), 4);
    assert_eq!(t.get(19_999), Some(&19_999));
    assert_eq!(t.get(19_995), None);
    // Re-inserting an id refreshes it instead of growing the table.
    assert_eq!(t.insert(19_996, 1), None);
    assert_eq!(t.insert(7, 7), Some(19_997));
    assert_eq!(t.get(19_996), Some(&1));
}

#[test]
fn garbage_is_rejected_without_panic() {
    assert!(matches!(
        Message::decode(b"GET / HTTP/1.1\r\n"),
        Err(DecodeError::BadMagic(_))
    ));
    assert!(matches!(
        Message::decode(b"VCSF"),
        Err(DecodeError::Truncated { .. })
    ));
    let mut frame = Message::Frame(FrameRecord::default()).encode();
    // Announce more payload than present.
    frame[8] = 0xff;
    assert!(matches!(
        Message::decode(&frame),
        Err(DecodeError::Truncated { .. })
    ));
    // Shorten the payload below a frame record.
    let mut short = Message::Frame(FrameRecord::default()).encode();
    short.truncate(HEADER_LEN + 10);
    short[8..12].copy_from_slice(&10u32.to_le_bytes());
    assert_eq!(
        Message::decode(&short),
        Err(DecodeError::BadPayload("frame"))
    );
    let mut unknown = Message::Eos.encode();
    unknown[6] = 200;
    assert_eq!(
        Message::decode(&unknown),
        Err(DecodeError::UnknownKind(200))
    );
    let mut bad_planes = Message::Frame(FrameRecord::default()).encode();
    // n_planes lives after seq(8)+surface(4)+caps(4)+3*8+flags(4).
    let at = HEADER_LEN + 8 + 4 + 4 + 24 + 4;
    bad_planes[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
    assert_eq!(
        Message::decode(&bad_planes),
        Err(DecodeError::BadPayload("frame"))
    );
    // Every prefix of every message decodes to an error or a message, never a panic.
    for m in [
        Message::Frame(FrameRecord::default()).encode(),
        Message::Caps {
            caps_id: 1,
            caps: "x".into(),
        }
        .encode(),
    ] {
        for n in 0..m.len() {
            let _ = Message::decode(&m[..n]);
        }
    }
}
