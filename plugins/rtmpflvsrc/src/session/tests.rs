// SPDX-License-Identifier: MPL-2.0

use super::testing::{Publisher, avc_frame, avc_sequence_header, sample_publish_stream};
use super::*;
use crate::flv::{VideoCodec, VideoTag};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the bytes allocated by the current thread, to check memory stays bounded.
struct CountingAlloc;

thread_local! {
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = CURRENT.try_with(|c| {
        let v = c.get() + delta;
        c.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Chunk size the rml_rtmp test client announces.
const CHUNK: usize = 4096;

fn config(app: &str, key: &str) -> SessionConfig {
    SessionConfig {
        app: app.into(),
        stream_key: key.into(),
        limits: Limits::default(),
    }
}

fn feed_all(
    session: &mut Session,
    bytes: &[u8],
    step: usize,
) -> Result<Vec<SessionEvent>, SessionError> {
    let mut gate = |_: &str, _: &str| Ok(());
    let mut events = Vec::new();
    for piece in bytes.chunks(step.max(1)) {
        let out = session.feed(piece, &mut gate)?;
        events.extend(out.events);
    }
    Ok(events)
}

#[test]
fn valid_stream_yields_publish_and_media_in_any_split() {
    let stream = sample_publish_stream(40);
    for step in [1usize, 7, 128, 1000, 1 << 20] {
        let mut s = Session::new(config("live", "key"));
        let events = feed_all(&mut s, &stream, step).unwrap();
        assert!(matches!(
            &events[0],
            SessionEvent::PublishStarted { app, stream_key } if app == "live" && stream_key == "key"
        ));
        let videos: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Video { dts_ms, tag } => Some((*dts_ms, tag.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(videos.len(), 41, "split {step}");
        assert!(matches!(
            videos[0].1,
            VideoTag::SequenceStart {
                codec: VideoCodec::H264,
                ..
            }
        ));
        for (i, (dts, tag)) in videos[1..].iter().enumerate() {
            assert_eq!(*dts, (i * 33) as i64);
            match tag {
                VideoTag::Frame {
                    keyframe,
                    composition_time,
                    data,
                    ..
                } => {
                    assert_eq!(*keyframe, i % 30 == 0);
                    assert_eq!(*composition_time, 66);
                    assert_eq!(data.len(), 4 + 200 + i * 13);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let audios = events
            .iter()
            .filter(|e| matches!(e, SessionEvent::Audio { .. }))
            .count();
        assert_eq!(audios, 21);
        assert!(s.is_publishing());
    }
}

#[test]
fn wrong_key_is_rejected_without_media() {
    let (publisher, server) = Publisher::connect(config("live", "secret"), "live", "guess");
    assert!(publisher.is_none());
    assert!(server.is_closed());
    // Replaying the right-key stream against a wrong key server yields a rejection event.
    let stream = sample_publish_stream(5);
    let mut s = Session::new(config("live", "secret"));
    let events = feed_all(&mut s, &stream, 4096).unwrap();
    assert!(events.iter().any(|e| matches!(e, SessionEvent::Rejected { reason, .. } if reason.contains("wrong stream key 'key'"))), "{events:?}");
    assert!(!events.iter().any(|e| matches!(
        e,
        SessionEvent::Video { .. } | SessionEvent::PublishStarted { .. }
    )));
    // The right key is accepted.
    let (publisher, _) = Publisher::connect(config("live", "secret"), "live", "secret");
    assert!(publisher.is_some());
}

#[test]
fn wrong_app_is_rejected() {
    let stream = sample_publish_stream(5);
    let mut s = Session::new(config("other", ""));
    let events = feed_all(&mut s, &stream, 4096).unwrap();
    assert!(
        matches!(&events[..], [SessionEvent::Rejected { reason, .. }] if reason.contains("wrong application 'live'")),
        "{events:?}"
    );
    assert!(s.is_closed());
}

#[test]
fn second_publisher_is_rejected_by_gate() {
    let stream = sample_publish_stream(5);
    let mut busy = true;
    let mut gate = |_: &str, _: &str| {
        if busy {
            Err("another publisher (127.0.0.1:5555) is active".to_string())
        } else {
            busy = true;
            Ok(())
        }
    };
    let mut s = Session::new(config("live", ""));
    let out = s.feed(&stream, &mut gate).unwrap();
    assert!(
        matches!(&out.events[..], [SessionEvent::Rejected { reason, .. }] if reason.contains("another publisher"))
    );
    // The rejection is sent to the peer (an onStatus error).
    assert!(
        out.send
            .windows(b"NetStream.Publish.BadName".len())
            .any(|w| w == b"NetStream.Publish.BadName")
    );
    busy = false;
    let mut gate = |_: &str, _: &str| {
        if busy {
            Err("busy".to_string())
        } else {
            Ok(())
        }
    };
    let mut s2 = Session::new(config("live", ""));
    let out = s2.feed(&stream, &mut gate).unwrap();
    assert!(matches!(out.events[0], SessionEvent::PublishStarted { .. }));
}

#[allow(clippy::too_many_arguments)]
/// Encodes one message as chunks by hand: `fmt` for the first chunk header, type 3 after.
fn encode(
    fmt: u8,
    csid: u8,
    ts: u32,
    type_id: u8,
    msid: u32,
    payload: &[u8],
    chunk_size: usize,
    ext_prev: bool,
) -> Vec<u8> {
    let mut v = vec![(fmt << 6) | csid];
    let ext = ts >= 0xFF_FFFF;
    let field = if ext { 0xFF_FFFF } else { ts };
    if fmt <= 2 {
        v.extend_from_slice(&field.to_be_bytes()[1..]);
    }
    if fmt <= 1 {
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        v.push(type_id);
    }
    if fmt == 0 {
        v.extend_from_slice(&msid.to_le_bytes());
    }
    let ext_here = if fmt == 3 { ext_prev } else { ext };
    if ext_here {
        v.extend_from_slice(&ts.to_be_bytes());
    }
    for (i, piece) in payload.chunks(chunk_size).enumerate() {
        if i > 0 {
            v.push(0xC0 | csid);
            if ext_here {
                v.extend_from_slice(&ts.to_be_bytes());
            }
        }
        v.extend_from_slice(piece);
    }
    v
}

fn published_session() -> (Session, u32) {
    let (publisher, server) = Publisher::connect(config("live", ""), "live", "k");
    assert!(publisher.is_some());
    (server, 1)
}

fn video_dts(events: &[SessionEvent]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Video { dts_ms, .. } => Some(*dts_ms),
            _ => None,
        })
        .collect()
}

#[test]
fn timestamps_across_24_bit_boundary_and_u32_wrap() {
    let (mut s, msid) = published_session();
    // Larger than one chunk, so continuation chunks (carrying extended timestamps) occur.
    let frame = avc_frame(true, 0, 5000);
    let mut bytes = Vec::new();
    // Absolute timestamp just below the extended boundary, then deltas across it.
    bytes.extend(encode(0, 6, 0xFF_FFF0, 9, msid, &frame, CHUNK, false));
    bytes.extend(encode(1, 6, 0x0F, 9, msid, &frame, CHUNK, false)); // -> 0xFFFFFF exactly
    bytes.extend(encode(2, 6, 0x21, 9, msid, &frame, CHUNK, false)); // -> 0x1000020
    bytes.extend(encode(3, 6, 0, 9, msid, &frame, CHUNK, false)); // same delta -> 0x1000041
    // Absolute extended timestamp with continuation chunks carrying it.
    bytes.extend(encode(0, 6, 0x0123_4567, 9, msid, &frame, CHUNK, false));
    bytes.extend(encode(3, 6, 0x0123_4567, 9, msid, &frame, CHUNK, true)); // delta = ext value
    let events = feed_all(&mut s, &bytes, 97).unwrap();
    let dts = video_dts(&events);
    // The unwrapper treats the 0x0123_4567 jumps as forward steps (< 2^31).
    assert_eq!(
        dts,
        vec![
            0xFF_FFF0,
            0xFF_FFFF,
            0x100_0020,
            0x100_0041,
            0x0123_4567,
            0x0246_8ACE,
        ]
    );

    // Near the 32-bit wrap (a fresh publish: RTMP time may start anywhere).
    let (mut s, msid) = published_session();
    let mut bytes = encode(0, 6, 0xFFFF_FFF0, 9, msid, &frame, CHUNK, false);
    bytes.extend(encode(1, 6, 0x20, 9, msid, &frame, CHUNK, false)); // wraps to 0x10
    bytes.extend(encode(2, 6, 0x21, 9, msid, &frame, CHUNK, false)); // 0x31
    bytes.extend(encode(0, 6, 0x52, 9, msid, &frame, CHUNK, false)); // absolute after wrap
    let events = feed_all(&mut s, &bytes, 1000).unwrap();
    assert_eq!(
        video_dts(&events),
        vec![
            0xFFFF_FFF0,
            (1i64 << 32) + 0x10,
            (1i64 << 32) + 0x31,
            (1i64 << 32) + 0x52
        ]
    );
}

#[test]
fn hostile_chunk_size_and_sizes_are_refused() {
    // Huge chunk size.
    let (mut s, _) = published_session();
    let msg = encode(0, 2, 0, 1, 0, &0x7FFF_FFFFu32.to_be_bytes(), CHUNK, false);
    let err = feed_all(&mut s, &msg, 100).unwrap_err();
    assert!(
        matches!(err, SessionError::Limit(ref m) if m.contains("chunk size")),
        "{err}"
    );
    // Zero chunk size.
    let (mut s, _) = published_session();
    let msg = encode(0, 2, 0, 1, 0, &0u32.to_be_bytes(), CHUNK, false);
    assert!(feed_all(&mut s, &msg, 100).is_err());
    // Oversized video message: refused from its header, before the payload arrives.
    let (mut s, msid) = published_session();
    let mut hdr = vec![0x06, 0, 0, 0];
    hdr.extend_from_slice(&[0xFF, 0xFF, 0xFF, 9]);
    hdr.extend_from_slice(&msid.to_le_bytes());
    let err = feed_all(&mut s, &hdr, 100).unwrap_err();
    assert!(
        matches!(err, SessionError::Limit(ref m) if m.contains("16777215 bytes")),
        "{err}"
    );
    // Oversized AMF command.
    let (mut s, _) = published_session();
    let mut hdr = vec![0x03, 0, 0, 0];
    hdr.extend_from_slice(&[0x10, 0x00, 0x00, 20, 0, 0, 0, 0]);
    assert!(feed_all(&mut s, &hdr, 100).is_err());
}

#[test]
fn hostile_amf_nesting_is_refused() {
    let (mut s, _) = published_session();
    let mut payload = vec![2, 0, 4];
    payload.extend_from_slice(b"test");
    payload.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0]);
    for _ in 0..5000 {
        payload.extend_from_slice(&[3, 0, 1, b'a']);
    }
    let msg = encode(
        0,
        3,
        0,
        20,
        0,
        &payload[..payload.len().min(60_000)],
        CHUNK,
        false,
    );
    let err = feed_all(&mut s, &msg, 4096).unwrap_err();
    assert!(
        matches!(err, SessionError::Limit(ref m) if m.contains("nested")),
        "{err}"
    );
    // Strict arrays too.
    let (mut s, _) = published_session();
    let mut payload = Vec::new();
    for _ in 0..2000 {
        payload.extend_from_slice(&[10, 0, 0, 0, 1]);
    }
    let msg = encode(0, 3, 0, 18, 0, &payload, CHUNK, false);
    assert!(feed_all(&mut s, &msg, 4096).is_err());
}

#[test]
fn interleaved_chunk_streams_and_bad_headers_are_refused() {
    let (mut s, msid) = published_session();
    let frame = avc_frame(true, 0, 5000);
    let a = encode(0, 6, 0, 9, msid, &frame, CHUNK, false);
    let b = encode(0, 7, 0, 8, msid, &[0xaf, 1, 2], CHUNK, false);
    let mut bytes = a[..12 + CHUNK].to_vec();
    bytes.extend_from_slice(&b);
    let err = feed_all(&mut s, &bytes, 1000).unwrap_err();
    assert!(err.to_string().contains("interleaved"), "{err}");

    let (mut s, _) = published_session();
    assert!(
        feed_all(&mut s, &[0x49, 0, 0, 1], 10).is_err(),
        "type 1 without previous header"
    );

    // Extended delta below 0xFFFFFF (rml_rtmp would underflow on it).
    let (mut s, msid) = published_session();
    let mut bytes = encode(0, 6, 5, 9, msid, &frame, CHUNK, false);
    bytes.extend_from_slice(&[0x46, 0xFF, 0xFF, 0xFF, 0, 0, 4, 9, 0, 0, 0, 1, 1, 2, 3, 4]);
    let err = feed_all(&mut s, &bytes, 1000).unwrap_err();
    assert!(err.to_string().contains("extended timestamp"), "{err}");
}

#[test]
fn short_set_data_frame_and_huge_ack_window_are_refused() {
    // "@setDataFrame", "onMetaData" without the object: rml_rtmp would index past the end.
    let mut payload = vec![2, 0, 13];
    payload.extend_from_slice(b"@setDataFrame");
    payload.extend_from_slice(&[2, 0, 10]);
    payload.extend_from_slice(b"onMetaData");
    for cut in [payload.len(), 16] {
        let (mut s, msid) = published_session();
        let msg = encode(0, 4, 0, 18, msid, &payload[..cut], CHUNK, false);
        let err = feed_all(&mut s, &msg, 1000).unwrap_err();
        assert!(err.to_string().contains("setDataFrame"), "{err}");
    }
    // A complete one is accepted and reported.
    let mut full = payload.clone();
    full.extend_from_slice(&[3, 0, 5]);
    full.extend_from_slice(b"width");
    full.extend_from_slice(&[0, 0x40, 0x74, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
    let (mut s, msid) = published_session();
    let events = feed_all(
        &mut s,
        &encode(0, 4, 0, 18, msid, &full, CHUNK, false),
        1000,
    )
    .unwrap();
    assert_eq!(
        events,
        vec![SessionEvent::Metadata {
            has_video: true,
            has_audio: false
        }]
    );

    let (mut s, _) = published_session();
    let msg = encode(0, 2, 0, 5, 0, &0xFFFF_FFF0u32.to_be_bytes(), CHUNK, false);
    assert!(feed_all(&mut s, &msg, 100).is_err());
}

#[test]
fn large_messages_need_an_accepted_publish() {
    let stream = sample_publish_stream(1);
    let handshake = &stream[..1 + 1536 + 1536];
    let big = avc_frame(true, 0, 100_000);
    // Right after the handshake: refused from the header on.
    let mut s = Session::new(config("live", ""));
    let mut bytes = handshake.to_vec();
    bytes.extend(encode(0, 6, 0, 9, 1, &big, 128, false));
    let err = feed_all(&mut s, &bytes, 4096).unwrap_err();
    assert!(
        matches!(err, SessionError::Limit(ref m) if m.contains("100009 bytes")),
        "{err}"
    );
    // Once publishing: accepted.
    let (mut s, msid) = published_session();
    let events = feed_all(&mut s, &encode(0, 6, 0, 9, msid, &big, CHUNK, false), 4096).unwrap();
    assert_eq!(video_dts(&events), vec![0]);
}

#[test]
fn garbage_handshake_is_refused() {
    let mut s = Session::new(config("live", ""));
    let err = feed_all(&mut s, b"GET / HTTP/1.1\r\n\r\n", 100).unwrap_err();
    assert!(matches!(err, SessionError::Handshake(_)));
}

#[test]
fn unknown_codec_is_reported_and_connection_lives_on() {
    let (mut s, msid) = published_session();
    let mut bytes = encode(0, 6, 0, 9, msid, &[0x14, 0, 1, 2], CHUNK, false); // VP6
    bytes.extend(encode(
        0,
        6,
        33,
        9,
        msid,
        &avc_sequence_header(),
        CHUNK,
        false,
    ));
    let events = feed_all(&mut s, &bytes, 1000).unwrap();
    assert!(
        matches!(&events[0], SessionEvent::MediaError { kind: StreamKind::Video, error } if error.to_string().contains("codec id 4"))
    );
    assert!(matches!(&events[1], SessionEvent::Video { .. }));
}

/// Deterministic xorshift generator for the mutation test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Feeds thousands of pseudo-random and mutated publisher streams through [`Session`]:
/// nothing may panic and the memory held stays bounded.
#[test]
fn mutated_streams_never_panic_and_stay_bounded() {
    let base = sample_publish_stream(30);
    let handshake_len = 1 + 1536 + 1536;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let limit = Limits::default();
    // Worst case: one maximal message buffered twice (rml's buffer + payload) plus slack.
    let bound = 2 * limit.max_message_size as isize + (4 << 20);
    let iterations = 3000;
    for i in 0..iterations {
        let mut data = if i % 10 == 0 {
            // Pure noise after a valid handshake.
            let mut d = base[..handshake_len].to_vec();
            d.extend((0..rng.below(20_000)).map(|_| rng.next() as u8));
            d
        } else {
            base.clone()
        };
        let mutations = 1 + rng.below(8);
        for _ in 0..mutations {
            // Keep the handshake mostly intact so the chunk layer gets exercised.
            let lo = if rng.below(10) == 0 { 0 } else { handshake_len };
            if data.len() <= lo {
                break;
            }
            let pos = lo + rng.below(data.len() - lo);
            match rng.below(6) {
                0 => data[pos] = rng.next() as u8,
                1 => data[pos] ^= 1 << rng.below(8),
                2 => {
                    let n = rng.below(64).min(data.len() - pos);
                    data.drain(pos..pos + n);
                }
                3 => {
                    let n = rng.below(64);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    data.splice(pos..pos, bytes);
                }
                4 => data[pos] = [0x00, 0xFF, 0x7F, 0x80, 0xC3, 0x03][rng.below(6)],
                _ => data.truncate(pos),
            }
        }
        let step = 1 + rng.below(5000);
        let start = CURRENT.with(|c| c.get());
        PEAK.with(|p| p.set(start));
        {
            let mut s = Session::new(config("live", if i % 3 == 0 { "key" } else { "" }));
            let _ = feed_all(&mut s, &data, step);
        }
        let peak = PEAK.with(|p| p.get()) - start;
        assert!(peak < bound, "iteration {i}: {peak} bytes");
        assert!(
            CURRENT.with(|c| c.get()) - start <= 64 * 1024,
            "leak in iteration {i}"
        );
    }
}

const NAMES: [&str; 12] = [
    "@setDataFrame",
    "onMetaData",
    "connect",
    "publish",
    "createStream",
    "deleteStream",
    "closeStream",
    "play",
    "releaseStream",
    "FCPublish",
    "FCUnpublish",
    "live",
];

fn amf_string(out: &mut Vec<u8>, s: &str) {
    out.push(2);
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn random_amf_value(rng: &mut Rng, out: &mut Vec<u8>, depth: usize) {
    match rng.below(if depth > 3 { 4 } else { 7 }) {
        0 => {
            out.push(0);
            out.extend_from_slice(&(rng.below(8) as f64).to_be_bytes());
        }
        1 | 2 => {
            let name = NAMES[rng.below(NAMES.len())];
            out.push(2);
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        3 => out.push([1, 5, 6][rng.below(3)]),
        4 | 5 => {
            out.push(if rng.below(2) == 0 { 3 } else { 8 });
            if out.last() == Some(&8) {
                out.extend_from_slice(&(rng.below(4) as u32).to_be_bytes());
            }
            for _ in 0..rng.below(4) {
                let key = ["width", "videocodecid", "audiocodecid", "k"][rng.below(4)];
                out.extend_from_slice(&(key.len() as u16).to_be_bytes());
                out.extend_from_slice(key.as_bytes());
                random_amf_value(rng, out, depth + 1);
            }
            out.extend_from_slice(&[0, 0, 9]);
        }
        _ => {
            let n = rng.below(4);
            out.push(10);
            out.extend_from_slice(&(n as u32).to_be_bytes());
            for _ in 0..n {
                random_amf_value(rng, out, depth + 1);
            }
        }
    }
}

/// Structured fuzzing: valid chunk framing around random (often truncated) AMF commands and
/// data, control messages and FLV tags, sent on a publishing connection.
#[test]
fn random_messages_never_panic() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for _ in 0..1500 {
        let (mut s, msid) = published_session();
        let mut bytes = Vec::new();
        for m in 0..(1 + rng.below(6)) {
            let (type_id, payload) = match rng.below(5) {
                0 | 1 => {
                    let mut p = Vec::new();
                    for i in 0..rng.below(5) {
                        // Mostly a command / data name first, as real messages have.
                        if i == 0 && rng.below(5) != 0 {
                            amf_string(&mut p, NAMES[rng.below(NAMES.len())]);
                        } else {
                            random_amf_value(&mut rng, &mut p, 0);
                        }
                    }
                    let cut = rng.below(p.len() + 1);
                    p.truncate(if rng.below(2) == 0 { cut } else { p.len() });
                    ([18, 20, 15, 17][rng.below(4)], p)
                }
                2 => {
                    let mut p: Vec<u8> = (0..rng.below(10)).map(|_| rng.next() as u8).collect();
                    if let Some(first) = p.first_mut() {
                        *first = [0x17, 0x27, 0x80, 0x90, 0x91, 0xaf, 0x2f, 0x97][rng.below(8)];
                    }
                    ([8, 9][rng.below(2)], p)
                }
                3 => {
                    let p: Vec<u8> = (0..rng.below(9)).map(|_| rng.next() as u8).collect();
                    ([1, 2, 3, 4, 5, 6][rng.below(6)], p)
                }
                _ => {
                    let p: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
                    (rng.below(30) as u8, p)
                }
            };
            let fmt = if m == 0 { 0 } else { rng.below(4) as u8 };
            let csid = [3u8, 4, 5, 6][rng.below(4)];
            let fmt = if fmt == 0 || rng.below(2) == 0 {
                0
            } else {
                fmt
            };
            bytes.extend(encode(
                fmt,
                csid,
                rng.below(100) as u32,
                type_id,
                msid,
                &payload,
                CHUNK,
                false,
            ));
        }
        let _ = feed_all(&mut s, &bytes, 1 + rng.below(600));
    }
}
