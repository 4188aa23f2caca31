//! Hostile input over real TCP. Each case is followed by a good ffmpeg publisher into the same
//! element instance, which must still work; the pipeline must never error and memory must stay
//! bounded.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::client::{RtmpClient, h264_flv_video_tags};
use common::{COUNT_ONLY, Options, Receiver};
use vcambridge_tests::rtmp::{
    FfmpegPublisher, garbage_bytes, raw_connect, rss_bytes, set_small_recv_buffer, wait_peer_close,
    write_tolerant,
};

const WAIT: Duration = Duration::from_secs(30);
/// Memory growth allowed over one hostile case (the element in this process).
const RSS_SLACK: u64 = 96 * 1024 * 1024;

fn receiver() -> Receiver {
    Receiver::start(
        Options::default()
            .prop("handshake-timeout", "1000")
            .prop("idle-timeout", "2000")
            .video_branch(COUNT_ONLY),
    )
}

/// A good publisher after the hostile one: all its frames arrive, no pipeline error.
fn good_publisher_still_works(rx: &Receiver) {
    let before = rx.check(|d| d.video.len());
    let mut p = FfmpegPublisher::new(&rx.url("live", "key"), 10);
    p.width = 160;
    p.height = 120;
    p.audio = false;
    let (ok, err) = p.run(Duration::from_secs(90));
    assert!(
        ok,
        "the good publisher failed after the hostile client: {err}"
    );
    rx.wait(WAIT, "the good publisher's 10 frames", |d| {
        d.video.len() == before + 10
    });
    rx.assert_no_error();
    rx.stop();
}

fn wait_warning(rx: &Receiver, what: &str) {
    rx.wait(WAIT, &format!("a warning for {what}"), |d| {
        !d.warnings().is_empty()
    });
    println!("{what}: warning {:?}", rx.check(|d| d.warnings()));
}

fn assert_memory_bounded(rss_before: u64, what: &str) {
    let after = rss_bytes();
    assert!(
        after < rss_before + RSS_SLACK,
        "{what}: RSS grew from {} MiB to {} MiB",
        rss_before >> 20,
        after >> 20
    );
}

#[test]
fn garbage_instead_of_handshake() {
    let rx = receiver();
    let mut s = raw_connect(rx.port);
    write_tolerant(&mut s, &garbage_bytes(8192));
    wait_peer_close(&mut s, Duration::from_secs(10))
        .expect("the element must close a connection that sends garbage");
    wait_warning(&rx, "garbage bytes");
    rx.check(|d| assert!(d.video.is_empty() && d.pads.is_empty()));
    good_publisher_still_works(&rx);
}

#[test]
fn stalled_handshake_times_out() {
    let rx = Receiver::start(
        Options::default()
            .prop("handshake-timeout", "500")
            .video_branch(COUNT_ONLY),
    );
    // One sends nothing at all, the other only C0+C1 and then stalls.
    let connected = Instant::now();
    let mut silent = raw_connect(rx.port);
    let mut half = raw_connect(rx.port);
    let mut c0c1 = vec![3u8];
    c0c1.extend(std::iter::repeat_n(0u8, 1536));
    write_tolerant(&mut half, &c0c1);
    wait_peer_close(&mut silent, Duration::from_secs(10))
        .expect("a silent connection must be dropped after handshake-timeout");
    let t1 = connected.elapsed();
    wait_peer_close(&mut half, Duration::from_secs(10))
        .expect("a half handshake must be dropped after handshake-timeout");
    println!("dropped after {t1:?} / {:?}", connected.elapsed());
    // The element accepted after our connect, so its 500 ms ran out after ours (minus timer slack).
    assert!(
        t1 >= Duration::from_millis(450),
        "dropped before the 500 ms handshake-timeout ({t1:?})"
    );
    wait_warning(&rx, "a stalled handshake");
    good_publisher_still_works(&rx);
}

#[test]
fn invalid_huge_set_chunk_size() {
    let rx = receiver();
    let rss = rss_bytes();
    let mut c = RtmpClient::handshake(rx.port, Duration::from_secs(10)).expect("handshake");
    // SetChunkSize (type 1) on chunk stream 2 with 0xFFFFFFFF: bit 31 set, which the spec forbids.
    let mut msg = vec![0x02, 0, 0, 0, 0, 0, 4, 0x01, 0, 0, 0, 0];
    msg.extend_from_slice(&0xFFFF_FFFFu32.to_be_bytes());
    // Then a large message that would be one "chunk" under that size.
    msg.extend_from_slice(&[0x06, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0x09, 1, 0, 0, 0]);
    msg.extend(garbage_bytes(256 * 1024));
    write_tolerant(&mut c.stream, &msg);
    wait_peer_close(&mut c.stream, Duration::from_secs(10))
        .expect("the element must drop a connection announcing chunk size 0xFFFFFFFF");
    wait_warning(&rx, "SetChunkSize 0xFFFFFFFF");
    assert_memory_bounded(rss, "huge chunk size");
    good_publisher_still_works(&rx);
}

#[test]
fn truncated_message_then_close() {
    let rx = receiver();
    let tags = h264_flv_video_tags(5, 160, 120);
    {
        let mut c = RtmpClient::publisher(rx.port, "live", "key").expect("publish");
        c.send_video(&tags[0].data, 0, false)
            .expect("sequence header");
        for (i, t) in tags[1..4].iter().enumerate() {
            c.send_video(&t.data, 33 * i as u32, false).expect("frame");
        }
        let p = c.video_packet(&tags[4].data, 99, false);
        c.send_raw(&p[..p.len() / 2]).expect("half a frame");
        c.stream.flush().ok();
        // Dropped here: the TCP connection closes mid-message.
    }
    rx.wait(WAIT, "rtmpflvsrc-disconnected", |d| {
        !d.element_messages("rtmpflvsrc-disconnected").is_empty()
    });
    rx.check(|d| {
        assert_eq!(
            d.video.len(),
            3,
            "the 3 complete frames arrive, the truncated one does not"
        )
    });
    good_publisher_still_works(&rx);
}

#[test]
fn oversized_message_length() {
    let rx = receiver();
    let rss = rss_bytes();
    let mut c = RtmpClient::publisher(rx.port, "live", "key").expect("publish");
    // A type-0 video message header on chunk stream 6 announcing 0xFFFFFF (16 MiB - 1) bytes,
    // followed by junk at full speed until the element hangs up (or 64 MiB were sent).
    let mut header = vec![0x06, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0x09, 1, 0, 0, 0];
    header.extend(garbage_bytes(4096));
    let _ = c.stream.set_write_timeout(Some(Duration::from_millis(500)));
    let junk = garbage_bytes(64 * 1024);
    let mut sent = 0usize;
    if write_tolerant(&mut c.stream, &header) {
        while sent < 64 << 20 && c.stream.write_all(&junk).is_ok() {
            sent += junk.len();
        }
    }
    println!("sent {} KiB of the oversized message", sent >> 10);
    wait_peer_close(&mut c.stream, Duration::from_secs(15))
        .expect("the element must drop a connection sending an oversized message");
    wait_warning(&rx, "an oversized message");
    assert_memory_bounded(rss, "oversized message");
    rx.check(|d| assert!(d.video.is_empty(), "no buffer from the oversized message"));
    good_publisher_still_works(&rx);
}

#[test]
fn publisher_that_never_reads() {
    let rx = receiver();
    let rss = rss_bytes();
    let mut c = RtmpClient::publisher(rx.port, "live", "key").expect("publish");
    set_small_recv_buffer(&c.stream, 4096);
    let _ = c.stream.set_write_timeout(Some(Duration::from_millis(500)));
    // Every PingRequest asks for a PingResponse; never read them. Stop once our writes block
    // (the element stopped reading us) or after 20 s / 64 MiB.
    let mut batch = Vec::new();
    for _ in 0..2000 {
        batch.extend(c.ping_packet());
    }
    let start = Instant::now();
    let mut sent = 0usize;
    let mut blocked = false;
    while start.elapsed() < Duration::from_secs(20) && sent < 64 << 20 {
        match c.stream.write_all(&batch) {
            Ok(()) => sent += batch.len(),
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    println!(
        "sent {} KiB of pings in {:?}, writes blocked/failed: {blocked}",
        sent >> 10,
        start.elapsed()
    );

    // Meanwhile the server still serves others: a fresh connection completes the handshake and
    // connect promptly.
    let mut other = RtmpClient::handshake(rx.port, Duration::from_secs(5))
        .expect("a second connection must be served while one client is stuck");
    other
        .connect_app("live")
        .expect("connect on the second connection");
    drop(other);

    // Without reading a byte (that would unblock the element), wait for it to give up on us.
    rx.wait(WAIT, "the never-reading publisher dropped", |d| {
        !d.element_messages("rtmpflvsrc-disconnected").is_empty()
    });
    wait_peer_close(&mut c.stream, Duration::from_secs(20))
        .expect("the element must close the never-reading publisher's socket");
    wait_warning(&rx, "a publisher that never reads");
    assert_memory_bounded(rss, "never-reading publisher");
    good_publisher_still_works(&rx);
}

#[test]
fn unknown_audio_codec_warns_and_video_lives_on() {
    let rx = receiver();
    let tags = h264_flv_video_tags(5, 160, 120);
    {
        let mut c = RtmpClient::publisher(rx.port, "live", "key").expect("publish");
        // SoundFormat 6 (Nellymoser, 44 kHz, 16 bit, mono): not a codec rtmpflvsrc outputs.
        let mut nelly = vec![0x6E];
        nelly.extend(garbage_bytes(64));
        for i in 0..3u32 {
            let p = c.audio_packet(&nelly, 10 * i, false);
            c.send_raw(&p).expect("audio");
        }
        c.send_video(&tags[0].data, 0, false)
            .expect("sequence header");
        for (i, t) in tags[1..].iter().enumerate() {
            c.send_video(&t.data, 33 * i as u32, false).expect("frame");
        }
        rx.wait(WAIT, "the 5 H.264 frames after the unknown audio", |d| {
            d.video.len() == 5
        });
    }
    rx.wait(WAIT, "a warning naming the unknown codec", |d| {
        d.warnings()
            .iter()
            .any(|w| w.contains("codec") && w.contains('6'))
    });
    rx.check(|d| {
        println!("unknown codec: warnings {:?}", d.warnings());
        assert!(d.audio.is_empty(), "no buffer of the unknown audio codec");
    });
    good_publisher_still_works(&rx);
}

#[test]
fn silent_publisher_dropped_after_idle_timeout() {
    let rx = Receiver::start(
        Options::default()
            .prop("idle-timeout", "1000")
            .video_branch(COUNT_ONLY),
    );
    let tags = h264_flv_video_tags(3, 160, 120);
    let mut c = RtmpClient::publisher(rx.port, "live", "key").expect("publish");
    c.send_video(&tags[0].data, 0, false)
        .expect("sequence header");
    for (i, t) in tags[1..].iter().enumerate() {
        c.send_video(&t.data, 33 * i as u32, false).expect("frame");
    }
    let silent_since = Instant::now();
    // Then nothing, with the socket open: dropped after idle-timeout (1 s).
    wait_peer_close(&mut c.stream, Duration::from_secs(15))
        .expect("a silent publisher must be dropped after idle-timeout");
    let after = silent_since.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "dropped after {after:?}, before the 1 s idle-timeout"
    );
    wait_warning(&rx, "a silent publisher");
    rx.wait(WAIT, "rtmpflvsrc-disconnected", |d| {
        !d.element_messages("rtmpflvsrc-disconnected").is_empty()
    });
    rx.check(|d| assert_eq!(d.video.len(), 3));
    good_publisher_still_works(&rx);
}

/// Which of `socks` the peer has closed (non-blocking peek at each).
fn closed_flags(socks: &mut [std::net::TcpStream]) -> Vec<bool> {
    use std::io::Read;
    socks
        .iter_mut()
        .map(|s| {
            let _ = s.set_nonblocking(true);
            let mut b = [0u8; 4096];
            match s.read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .collect()
}

#[test]
fn connection_flood_is_bounded() {
    let rx = Receiver::start(
        Options::default()
            .prop("handshake-timeout", "5000")
            .video_branch(COUNT_ONLY),
    );
    let rss = rss_bytes();
    // 100 connections that never send a byte: more than the element lets connect at once (64).
    let mut socks: Vec<_> = (0..100).map(|_| raw_connect(rx.port)).collect();
    let opened = Instant::now();
    let mut closed = vec![false; socks.len()];
    while opened.elapsed() < Duration::from_millis(800) {
        for (c, now) in closed.iter_mut().zip(closed_flags(&mut socks)) {
            *c |= now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let early = closed.iter().filter(|c| **c).count();
    println!("{early} of 100 connections refused at once");
    assert!(
        early >= 30,
        "connections beyond the element's limit must be closed at once ({early} of 100 were)"
    );
    // The rest go at handshake-timeout.
    let deadline = Instant::now() + Duration::from_secs(20);
    while closed.iter().any(|c| !c) && Instant::now() < deadline {
        for (c, now) in closed.iter_mut().zip(closed_flags(&mut socks)) {
            *c |= now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed.iter().all(|c| *c),
        "every silent connection must be dropped after handshake-timeout"
    );
    drop(socks);
    assert_memory_bounded(rss, "connection flood");
    good_publisher_still_works(&rx);
}

/// An Enhanced-RTMP video stream with an unknown FourCC next to good AAC audio: a warning names
/// the FourCC, the video is dropped, the audio flows, the connection lives on.
#[test]
fn unknown_video_fourcc_warns_and_audio_lives_on() {
    let rx = receiver();
    let audio = common::client::aac_flv_audio_tags();
    {
        let mut c = RtmpClient::publisher(rx.port, "live", "key").expect("publish");
        // ExVideoTagHeader: IsExHeader | keyframe | SequenceStart, FourCC "zzzz".
        let mut seq = vec![0x80 | 0x10, b'z', b'z', b'z', b'z'];
        seq.extend(garbage_bytes(32));
        c.send_video(&seq, 0, false).expect("video sequence start");
        for (i, t) in audio.iter().enumerate() {
            if i % 5 == 1 {
                // CodedFrames of the unknown codec, interleaved.
                let mut f = vec![0x80 | 0x10 | 0x01, b'z', b'z', b'z', b'z', 0, 0, 0];
                f.extend(garbage_bytes(200));
                c.send_video(&f, t.timestamp, false).expect("video frame");
            }
            let p = c.audio_packet(&t.data, t.timestamp, false);
            c.send_raw(&p).expect("audio");
        }
        rx.wait(WAIT, "the AAC frames next to the unknown video", |d| {
            d.audio.len() == audio.len() - 1
        });
    }
    rx.wait(WAIT, "a warning naming the FourCC", |d| {
        d.warnings().iter().any(|w| w.contains("zzzz"))
    });
    rx.check(|d| {
        println!("unknown FourCC: warnings {:?}", d.warnings());
        assert!(d.video.is_empty(), "no buffer of the unknown video codec");
        assert!(!d.pads.contains(&"video".to_string()), "no video pad");
    });
    good_publisher_still_works(&rx);
}

/// Slot exhaustion: 16 clients that finish the handshake and then trickle one byte per second,
/// and 20 silent clients that reconnect as soon as they are dropped, all running while a real
/// ffmpeg publisher connects: it is accepted within 5 s and its frames are decoded; the hostile
/// connections are reported in a few summarized warnings, not one per connection.
#[test]
fn trickling_and_reconnecting_clients_do_not_keep_a_publisher_out() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    // The element's defaults (handshake-timeout 5 s, idle-timeout 10 s).
    let rx = Receiver::start(Options::default());
    let port = rx.port;
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();
    for _ in 0..16 {
        let (stop, connects) = (stop.clone(), connects.clone());
        attackers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut c) = RtmpClient::handshake(port, Duration::from_secs(2)) else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                connects.fetch_add(1, Ordering::SeqCst);
                // The start of a chunk header, one byte per second: never a whole message.
                while !stop.load(Ordering::SeqCst) && c.send_raw(&[0x03]).is_ok() {
                    let until = Instant::now() + Duration::from_secs(1);
                    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }));
    }
    for _ in 0..20 {
        let (stop, connects) = (stop.clone(), connects.clone());
        attackers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut s = raw_connect(port);
                connects.fetch_add(1, Ordering::SeqCst);
                while !stop.load(Ordering::SeqCst)
                    && wait_peer_close(&mut s, Duration::from_millis(200)).is_err()
                {
                }
            }
        }));
    }
    // Let the attack take every slot it can and cycle once (handshake-timeout is 5 s).
    std::thread::sleep(Duration::from_secs(6));

    let mut p = FfmpegPublisher::new(&rx.url("live", "key"), 60);
    p.width = 160;
    p.height = 120;
    p.audio = false;
    let t0 = Instant::now();
    let publisher = p.spawn();
    rx.wait(
        Duration::from_secs(5),
        "the real publisher accepted within 5 s",
        |d| !d.element_messages("rtmpflvsrc-connected").is_empty(),
    );
    let accepted = t0.elapsed();
    let out = publisher.wait_output(Duration::from_secs(90));
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    rx.wait(WAIT, "60 decoded frames", |d| d.video.len() == 60);
    stop.store(true, Ordering::SeqCst);
    for a in attackers {
        let _ = a.join();
    }
    let warnings = rx.check(|d| d.warnings());
    let attempts = connects.load(Ordering::SeqCst);
    println!(
        "publisher accepted after {accepted:?} under attack ({attempts} hostile connections); \
         {} bus warnings: {warnings:?}",
        warnings.len()
    );
    assert!(
        attempts >= 36,
        "the attack did not run ({attempts} connections)"
    );
    // One per kind per 5 s, plus the summaries, over ~10 s of attack.
    assert!(
        warnings.len() <= 12,
        "hostile connections must be summarized, got {} warnings",
        warnings.len()
    );
    rx.assert_no_error();
    rx.stop();
}

/// Wrong stream keys from one address: the first few are answered at once, then one per
/// second, so keys cannot be guessed at thousands per second; the right key still works.
#[test]
fn wrong_stream_key_guesses_are_throttled() {
    let rx = Receiver::start(
        Options::default()
            .prop("stream-key", "secret")
            .video_branch(COUNT_ONLY),
    );
    let t0 = Instant::now();
    let mut answered = Vec::new();
    for i in 0..8 {
        let r = RtmpClient::publisher(rx.port, "live", &format!("guess{i}"));
        assert!(r.is_err(), "a wrong key was accepted");
        answered.push(t0.elapsed());
    }
    println!("wrong keys answered at {answered:?}");
    assert!(
        answered[4] < Duration::from_secs(1),
        "the first five guesses are not delayed: {answered:?}"
    );
    assert!(
        answered[7] >= Duration::from_millis(2500),
        "guesses beyond the burst are answered about one per second: {answered:?}"
    );
    good_publisher_still_works_with_key(&rx, "secret");
}

fn good_publisher_still_works_with_key(rx: &Receiver, key: &str) {
    let before = rx.check(|d| d.video.len());
    let mut p = FfmpegPublisher::new(&rx.url("live", key), 10);
    p.width = 160;
    p.height = 120;
    p.audio = false;
    let (ok, err) = p.run(Duration::from_secs(90));
    assert!(ok, "the good publisher failed: {err}");
    rx.wait(WAIT, "the good publisher's 10 frames", |d| {
        d.video.len() == before + 10
    });
    rx.assert_no_error();
    rx.stop();
}
