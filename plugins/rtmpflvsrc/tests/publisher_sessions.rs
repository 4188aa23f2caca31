//! Publisher sessions end to end, over real TCP: stream-key and app checks, one publisher at a
//! time, disconnect + reconnect at a new resolution (from ffmpeg, then from rtmp2sink which ends
//! its publish with a bare TCP close), a killed publisher, NULL while streaming, restart after
//! NULL, `location=`, bind failures, eos-on-disconnect and the order in which pads are added.
mod common;

use std::time::Duration;

use common::{COUNT_ONLY, Options, Receiver, assert_strictly_increasing};
use gst::prelude::*;
use vcambridge_tests::rtmp::{FfmpegPublisher, GstPublisher};

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(30);

fn small_ffmpeg(url: &str, frames: u32) -> FfmpegPublisher {
    let mut p = FfmpegPublisher::new(url, frames);
    p.width = 160;
    p.height = 120;
    p.audio = false;
    p
}

#[test]
fn wrong_stream_key_rejected_then_right_key_accepted() {
    let rx = Receiver::start(
        Options::default()
            .prop("stream-key", "secret")
            .video_branch(COUNT_ONLY),
    );

    // Wrong key: ffmpeg must fail, nothing may come out.
    let (ok, err) = small_ffmpeg(&rx.url("live", "wrong"), 30).run(PUBLISH_TIMEOUT);
    assert!(!ok, "ffmpeg publishing with a wrong key must fail");
    println!("ffmpeg with the wrong key: {}", err.trim());
    rx.wait(WAIT, "rtmpflvsrc-rejected (wrong key)", |d| {
        !d.element_messages("rtmpflvsrc-rejected").is_empty()
    });
    // Wrong app, right key: rejected too.
    let (ok, _) = small_ffmpeg(&rx.url("other", "secret"), 30).run(PUBLISH_TIMEOUT);
    assert!(!ok, "ffmpeg publishing to a wrong app must fail");
    rx.wait(WAIT, "a second rtmpflvsrc-rejected (wrong app)", |d| {
        d.element_messages("rtmpflvsrc-rejected").len() >= 2
    });
    rx.check(|d| {
        assert!(
            d.video.is_empty(),
            "no video buffers from rejected publishers"
        );
        assert!(
            d.audio.is_empty(),
            "no audio buffers from rejected publishers"
        );
        assert!(
            d.element_messages("rtmpflvsrc-connected").is_empty(),
            "no rtmpflvsrc-connected for a rejected publisher"
        );
        for s in d.element_messages("rtmpflvsrc-rejected") {
            assert!(
                s.get::<String>("peer").unwrap().starts_with("127.0.0.1:"),
                "{s}"
            );
            assert!(!s.get::<String>("reason").unwrap().is_empty(), "{s}");
        }
    });
    let stats = rx.stats();
    assert!(stats.get::<u64>("rejected").unwrap() >= 2, "{stats}");
    assert_eq!(stats.get::<u64>("connections").unwrap(), 0, "{stats}");

    // Right key: accepted, every frame arrives.
    let (ok, err) = small_ffmpeg(&rx.url("live", "secret"), 30).run(PUBLISH_TIMEOUT);
    assert!(ok, "ffmpeg with the right key failed: {err}");
    rx.wait(WAIT, "30 video frames with the right key", |d| {
        d.video.len() == 30
    });
    rx.check(|d| {
        let c = d.element_messages("rtmpflvsrc-connected");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].get::<String>("stream-key").unwrap(), "secret");
    });
    rx.assert_no_error();
    rx.stop();
}

#[test]
fn second_publisher_rejected_while_first_streams() {
    let rx = Receiver::start(Options::default().video_branch(COUNT_ONLY));
    const FIRST: usize = 180;
    let mut first = small_ffmpeg(&rx.url("live", "key"), FIRST as u32);
    first.realtime = true; // ~6 s of stream: the second publisher comes while it runs
    let mut first = first.spawn();
    rx.wait(WAIT, "the first publisher streaming", |d| {
        d.video.len() >= 5
    });

    let (ok, err) = small_ffmpeg(&rx.url("live", "key"), 30).run(PUBLISH_TIMEOUT);
    assert!(
        first.try_status().is_none() || !ok,
        "the first publisher ended before the second connected: the test ran too slowly"
    );
    assert!(
        !ok,
        "a second publisher must be rejected while the first streams"
    );
    println!("second publisher: {}", err.trim());
    rx.wait(WAIT, "rtmpflvsrc-rejected for the second publisher", |d| {
        !d.element_messages("rtmpflvsrc-rejected").is_empty()
    });

    let out = first.wait_output(PUBLISH_TIMEOUT);
    assert!(
        out.status.success(),
        "the first publisher must be unaffected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    rx.wait(WAIT, "all frames of the first publisher", |d| {
        d.video.len() == FIRST
    });
    rx.check(|d| {
        assert_eq!(d.element_messages("rtmpflvsrc-connected").len(), 1);
    });
    rx.assert_no_error();
    rx.stop();
}

/// Session 1: ffmpeg 320x240 (ends with deleteStream). Session 2: rtmp2sink 480x272 (ends with a
/// bare TCP close). Session 3: ffmpeg 320x240 again. The pipeline stays PLAYING, no error, no EOS,
/// PTS strictly increase over all sessions, each new session starts with DISCONT and new caps.
#[test]
fn publisher_reconnects_at_another_resolution() {
    let rx = Receiver::start(
        Options::default().video_branch("h264parse ! appsink name=vsink sync=false"),
    );
    const N: usize = 20;

    let (ok, err) = FfmpegPublisher::new(&rx.url("live", "key"), N as u32).run(PUBLISH_TIMEOUT);
    assert!(ok, "session 1 (ffmpeg) failed: {err}");
    rx.wait(WAIT, "session 1 frames and its disconnect", |d| {
        d.video.len() == N && !d.element_messages("rtmpflvsrc-disconnected").is_empty()
    });

    let mut p2 = GstPublisher::new(&rx.url("live", "key"), N as u32);
    p2.width = 480;
    p2.height = 272;
    let (ok, err) = p2.run(PUBLISH_TIMEOUT);
    assert!(ok, "session 2 (rtmp2sink) failed: {err}");
    rx.wait(WAIT, "session 2 frames and its disconnect", |d| {
        d.video.len() == 2 * N && d.element_messages("rtmpflvsrc-disconnected").len() >= 2
    });

    let (ok, err) = FfmpegPublisher::new(&rx.url("live", "key"), N as u32).run(PUBLISH_TIMEOUT);
    assert!(ok, "session 3 (ffmpeg) failed: {err}");
    rx.wait(WAIT, "session 3 frames", |d| d.video.len() == 3 * N);
    rx.wait(WAIT, "all frames through h264parse", |d| {
        d.samples.len() >= 3 * N
    });

    let (_, state, _) = rx.pipeline.state(gst::ClockTime::from_seconds(1));
    assert_eq!(state, gst::State::Playing, "the pipeline stays PLAYING");
    rx.assert_no_error();
    rx.check(|d| {
        assert!(!d.eos, "no EOS without eos-on-disconnect");
        assert_eq!(d.element_messages("rtmpflvsrc-connected").len(), 3);
        let pts: Vec<_> = d.video.iter().map(|b| b.pts.expect("video PTS")).collect();
        assert_strictly_increasing(&pts, "video PTS over three sessions");
        for s in [N, 2 * N] {
            assert!(
                d.video[s].discont,
                "first buffer of a new session (#{s}) must have DISCONT"
            );
            assert!(!d.video[s].delta_unit, "a session starts with a keyframe");
        }
        assert!(
            d.video_caps.len() >= 2,
            "caps re-sent when the codec config changes: {:?}",
            d.video_caps
        );
        let sizes: Vec<(i32, i32)> = d.samples.iter().map(|s| (s.width, s.height)).collect();
        assert_eq!(sizes[0], (320, 240));
        assert_eq!(sizes[N], (480, 272), "session 2 caps: {sizes:?}");
        assert_eq!(sizes[2 * N], (320, 240), "session 3 caps: {sizes:?}");
    });
    assert_eq!(rx.stats().get::<u64>("connections").unwrap(), 3);
    rx.stop();
}

#[test]
fn eos_on_disconnect_and_null_frees_the_port() {
    let rx = Receiver::start(
        Options::default()
            .prop("eos-on-disconnect", "true")
            .video_branch(COUNT_ONLY),
    );
    let port = rx.port;
    let (ok, err) = small_ffmpeg(&rx.url("live", "key"), 10).run(PUBLISH_TIMEOUT);
    assert!(ok, "{err}");
    rx.wait_pads_eos(&["video"], WAIT);
    rx.check(|d| assert_eq!(d.video.len(), 10));
    rx.stop();
    // Going to NULL frees the port at once.
    std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("port {port} still taken after NULL: {e}"));
}

/// `location=rtmp://ADDR:PORT/APP/KEY` sets address, port, app and key at once.
#[test]
fn location_sets_app_and_key() {
    let rx = Receiver::start(
        Options::default()
            .prop("location", "rtmp://127.0.0.1:0/studio/k2")
            .video_branch(COUNT_ONLY),
    );
    assert_eq!(rx.src.property::<String>("app"), "studio");
    assert_eq!(rx.src.property::<String>("stream-key"), "k2");
    let (ok, _) = small_ffmpeg(&rx.url("live", "k2"), 10).run(PUBLISH_TIMEOUT);
    assert!(
        !ok,
        "app 'live' must be rejected when location says 'studio'"
    );
    let (ok, err) = small_ffmpeg(&rx.url("studio", "k2"), 10).run(PUBLISH_TIMEOUT);
    assert!(ok, "publishing to the location's app/key failed: {err}");
    rx.wait(WAIT, "10 frames", |d| d.video.len() == 10);
    rx.assert_no_error();
    rx.stop();
}

/// A port already in use: READY fails with an error naming address:port; no hang.
#[test]
fn bind_failure_names_the_address() {
    common::init();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().unwrap().port();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("rtmpflvsrc")
        .property("port", port as u32)
        .build()
        .unwrap();
    pipeline.add(&src).unwrap();
    let r = pipeline.set_state(gst::State::Ready);
    assert!(r.is_err(), "READY must fail when 127.0.0.1:{port} is taken");
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
        .expect("an error message");
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    let text = format!("{} {:?}", e.error(), e.debug());
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "the error must name the address: {text}"
    );
    let _ = pipeline.set_state(gst::State::Null);
}

/// A publisher killed mid-stream (SIGKILL: no deleteStream, no FIN handshake of its own): the
/// pipeline carries on, the next publisher resumes with DISCONT and later timestamps.
#[test]
fn killed_publisher_then_new_one() {
    let rx = Receiver::start(Options::default().video_branch(COUNT_ONLY));
    let mut p = small_ffmpeg(&rx.url("live", "key"), 300);
    p.realtime = true;
    let first = p.spawn();
    rx.wait(WAIT, "the first publisher streaming", |d| {
        d.video.len() >= 15
    });
    // While it streams, stats name the publisher and show a bitrate (bounded wait: the element
    // may average over a window).
    vcambridge_tests::wait_for(
        Duration::from_secs(8),
        "stats with the publisher and a bitrate",
        || {
            let stats = rx.stats();
            (stats
                .get::<String>("publisher")
                .unwrap()
                .starts_with("127.0.0.1:")
                && stats.get::<u64>("bitrate").unwrap() > 0)
                .then_some(())
        },
    );
    first.signal(9);
    drop(first);
    rx.wait(WAIT, "rtmpflvsrc-disconnected after the kill", |d| {
        !d.element_messages("rtmpflvsrc-disconnected").is_empty()
    });
    let before = rx.check(|d| d.video.len());
    let (ok, err) = small_ffmpeg(&rx.url("live", "key"), 10).run(PUBLISH_TIMEOUT);
    assert!(ok, "the next publisher failed: {err}");
    rx.wait(WAIT, "the next publisher's frames", |d| {
        d.video.len() == before + 10
    });
    rx.assert_no_error();
    rx.check(|d| {
        assert!(!d.eos);
        assert!(
            d.video[before].discont,
            "the new session starts with DISCONT"
        );
        let pts: Vec<_> = d.video.iter().map(|b| b.pts.expect("PTS")).collect();
        assert_strictly_increasing(&pts, "video PTS across the kill");
    });
    rx.stop();
}

/// Going to NULL while a publisher streams and another client sits mid-handshake never blocks,
/// frees the port at once, and the publisher notices.
#[test]
fn null_while_streaming_does_not_block() {
    let rx = Receiver::start(Options::default().video_branch(COUNT_ONLY));
    let port = rx.port;
    let mut p = small_ffmpeg(&rx.url("live", "key"), 600);
    p.realtime = true;
    let publisher = p.spawn();
    rx.wait(WAIT, "the publisher streaming", |d| d.video.len() >= 10);
    let mut stalled = vcambridge_tests::rtmp::raw_connect(port);
    vcambridge_tests::rtmp::write_tolerant(&mut stalled, &[3u8; 100]);

    let t = std::time::Instant::now();
    rx.stop(); // fails the test if NULL takes more than 5 s
    println!(
        "PLAYING -> NULL with a live publisher took {:?}",
        t.elapsed()
    );
    std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("port {port} still taken after NULL: {e}"));
    vcambridge_tests::rtmp::wait_peer_close(&mut stalled, Duration::from_secs(5))
        .expect("the half-open client is closed at NULL");
    // ffmpeg sees its connection go away and exits (with an error) well before its 20 s of input.
    let out = publisher.wait_output(Duration::from_secs(15));
    assert!(
        !out.status.success(),
        "the publisher must notice the server going away"
    );
}

/// The same element can be stopped and started again (a fresh server each time).
#[test]
fn restart_after_null() {
    let rx = Receiver::start(Options::default().video_branch(COUNT_ONLY));
    let (ok, err) = small_ffmpeg(&rx.url("live", "key"), 10).run(PUBLISH_TIMEOUT);
    assert!(ok, "first run: {err}");
    rx.wait(WAIT, "first run frames", |d| d.video.len() == 10);
    rx.stop();

    rx.pipeline
        .set_state(gst::State::Ready)
        .expect("READY again");
    let port = rx.src.property::<u32>("bound-port") as u16;
    assert_ne!(port, 0, "bound-port after restart");
    rx.pipeline
        .set_state(gst::State::Playing)
        .expect("PLAYING again");
    let url = vcambridge_tests::rtmp::rtmp_url(port, "live", "key");
    let (ok, err) = small_ffmpeg(&url, 10).run(PUBLISH_TIMEOUT);
    assert!(ok, "second run: {err}");
    rx.wait(WAIT, "second run frames", |d| d.video.len() == 20);
    rx.assert_no_error();
    rx.stop();
}

/// The audio pad is added only once the video pad's `pad-added` handlers have returned, so an
/// application that links video slowly (here: 500 ms in its handler) has its video branch in the
/// pipeline before audio can reach EOS — otherwise the pipeline posts EOS with video undecoded.
#[test]
fn audio_pad_waits_for_slow_video_pad_added_handler() {
    common::init();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("rtmpflvsrc")
        .property_from_str("port", "0")
        .property("eos-on-disconnect", true)
        .build()
        .expect("rtmpflvsrc");
    pipeline.add(&src).unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let order = order.clone();
        let weak = pipeline.downgrade();
        src.connect_pad_added(move |_, pad| {
            let name = pad.name().to_string();
            order.lock().unwrap().push(format!("{name}-begin"));
            if name == "video" {
                std::thread::sleep(Duration::from_millis(500));
            }
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            let sink = gst::ElementFactory::make("fakesink")
                .property("sync", false)
                .build()
                .unwrap();
            pipeline.add(&sink).unwrap();
            sink.sync_state_with_parent().unwrap();
            pad.link(&sink.static_pad("sink").unwrap()).unwrap();
            order.lock().unwrap().push(format!("{name}-end"));
        });
    }
    {
        let order = order.clone();
        src.connect_no_more_pads(move |_| order.lock().unwrap().push("no-more-pads".into()));
    }
    pipeline.set_state(gst::State::Ready).unwrap();
    let port = src.property::<u32>("bound-port") as u16;
    pipeline.set_state(gst::State::Playing).unwrap();

    let mut p = FfmpegPublisher::new(&vcambridge_tests::rtmp::rtmp_url(port, "live", "k"), 10);
    p.width = 160;
    p.height = 120;
    let (ok, err) = p.run(PUBLISH_TIMEOUT);
    assert!(ok, "{err}");
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS within 30 s");
    assert_eq!(msg.type_(), gst::MessageType::Eos, "{msg:?}");
    let _ = pipeline.set_state(gst::State::Null);
    assert_eq!(
        *order.lock().unwrap(),
        [
            "video-begin",
            "video-end",
            "audio-begin",
            "audio-end",
            "no-more-pads"
        ],
        "pad-added order"
    );
}
