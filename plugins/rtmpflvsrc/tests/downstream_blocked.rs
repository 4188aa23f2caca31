//! The element stays responsive while its streaming threads cannot make progress: downstream
//! blocked (a full `queue` in front of an `appsink` nobody pulls), or the audio pad waiting for a
//! video pad that never comes. A second publisher still gets its answer and the pipeline still
//! reaches NULL, each within 1 s.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::client::{FlvTag, RtmpClient, aac_flv_audio_tags, h264_flv_video_tags};
use gst::prelude::*;
use vcambridge_tests::ChildGuard;
use vcambridge_tests::rtmp::{FfmpegPublisher, rtmp_url};

/// How long the element may take to answer a publisher or to reach NULL.
const PROMPT: Duration = Duration::from_secs(1);

/// Video goes into a one-buffer queue in front of an appsink that nobody pulls (one buffer
/// queued, `drop=false`): after a few frames the video streaming thread blocks in `pad.push`.
/// Audio flows into a fakesink.
const BLOCKED: &str = "rtmpflvsrc name=src port=0 \
    src.video ! queue name=vq max-size-buffers=1 max-size-bytes=0 max-size-time=0 \
      ! appsink name=vsink max-buffers=1 drop=false sync=false emit-signals=false \
    src.audio ! queue ! fakesink sync=false async=false";

struct Blocked {
    pipeline: gst::Pipeline,
    port: u16,
    /// Buffers the element started to push on its video pad.
    video_pushes: Arc<AtomicU64>,
}

fn start(description: &str) -> Blocked {
    common::init();
    let pipeline = gst::parse::launch(description)
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let src = pipeline.by_name("src").expect("src");
    let video_pushes = Arc::new(AtomicU64::new(0));
    {
        let count = video_pushes.clone();
        src.connect_pad_added(move |_, pad| {
            if pad.name() != "video" {
                return;
            }
            let count = count.clone();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                count.fetch_add(1, Ordering::SeqCst);
                gst::PadProbeReturn::Ok
            });
        });
    }
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    let port = common::wait_listening_port(&src);
    Blocked {
        pipeline,
        port,
        video_pushes,
    }
}

/// A publisher that streams (audio and video, paced) for longer than the test runs.
fn live_publisher(port: u16) -> ChildGuard {
    let mut p = FfmpegPublisher::new(&rtmp_url(port, "live", "key"), 900);
    p.width = 160;
    p.height = 120;
    p.realtime = true;
    p.spawn()
}

impl Blocked {
    /// Waits (bounded) until the video streaming thread is stuck in `pad.push`: the queue in
    /// front of the appsink is full and no further push started for 500 ms while the publisher
    /// keeps sending 30 frames per second.
    fn wait_blocked(&self) {
        let queue = self.pipeline.by_name("vq").expect("vq");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = (0, Instant::now());
        loop {
            assert!(
                Instant::now() < deadline,
                "downstream never blocked ({} video pushes)",
                self.video_pushes.load(Ordering::SeqCst)
            );
            self.assert_no_error();
            let n = self.video_pushes.load(Ordering::SeqCst);
            let full = queue.property::<u32>("current-level-buffers") == 1;
            if n != last.0 || !full {
                last = (n, Instant::now());
            } else if n >= 3 && last.1.elapsed() >= Duration::from_millis(500) {
                println!("video streaming thread blocked after {n} pushes");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_no_error(&self) {
        let bus = self.pipeline.bus().expect("bus");
        if let Some(m) = bus.pop_filtered(&[gst::MessageType::Error]) {
            panic!("pipeline error: {m:?}");
        }
    }

    /// The next `rtmpflvsrc-rejected` message within `limit`.
    fn rejected_within(&self, limit: Duration) -> Option<gst::Structure> {
        let bus = self.pipeline.bus().expect("bus");
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let msg = bus.timed_pop_filtered(
                gst::ClockTime::from_nseconds(left.as_nanos() as u64),
                &[gst::MessageType::Element],
            )?;
            if let Some(s) = msg
                .structure()
                .filter(|s| s.name() == "rtmpflvsrc-rejected")
            {
                return Some(s.to_owned());
            }
        }
        None
    }
}

/// Sets `pipeline` to NULL from another thread; returns how long it took, fails after `limit`.
fn null_within(pipeline: &gst::Pipeline, limit: Duration) -> Duration {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = pipeline.clone();
    let t0 = Instant::now();
    std::thread::spawn(move || {
        let r = p.set_state(gst::State::Null);
        let _ = tx.send((r, t0.elapsed()));
    });
    match rx.recv_timeout(limit) {
        Ok((r, took)) => {
            assert!(r.is_ok(), "pipeline to NULL failed: {r:?}");
            took
        }
        Err(_) => panic!("pipeline did not reach NULL within {limit:?}"),
    }
}

#[test]
fn second_publisher_is_answered_within_1s_while_downstream_is_blocked() {
    let b = start(BLOCKED);
    let mut first = live_publisher(b.port);
    b.wait_blocked();
    assert!(
        first.try_status().is_none(),
        "the first publisher must still be connected (blocked by TCP back-pressure)"
    );

    // One publisher at a time: the newcomer is refused at the protocol level, promptly, although
    // the element's video streaming thread is stuck downstream.
    let t0 = Instant::now();
    let res = RtmpClient::publisher(b.port, "live", "key");
    let answered = t0.elapsed();
    println!(
        "second publisher answered after {answered:?}: {:?}",
        res.as_ref().err()
    );
    assert!(
        res.is_err(),
        "a second publisher must be rejected while the first is connected"
    );
    assert!(
        answered < PROMPT,
        "the second publisher waited {answered:?} for its answer"
    );
    let rejected = b
        .rejected_within(PROMPT)
        .expect("rtmpflvsrc-rejected within 1 s");
    let reason = rejected.get::<String>("reason").unwrap();
    assert!(reason.contains("another publisher"), "{rejected}");
    b.assert_no_error();

    let took = null_within(&b.pipeline, PROMPT);
    println!("then PLAYING -> NULL took {took:?}");
}

#[test]
fn null_within_1s_while_downstream_is_blocked() {
    let b = start(BLOCKED);
    let _publisher = live_publisher(b.port);
    b.wait_blocked();
    let took = null_within(&b.pipeline, PROMPT);
    println!("PLAYING -> NULL with the video thread blocked downstream took {took:?}");
    std::net::TcpListener::bind(("127.0.0.1", b.port))
        .unwrap_or_else(|e| panic!("port {} still taken after NULL: {e}", b.port));
}

/// Both pads into fakesinks, no blocking downstream.
const FLOWING: &str = "rtmpflvsrc name=src port=0 \
    src.video ! queue ! fakesink sync=false async=false \
    src.audio ! queue ! fakesink sync=false async=false";

/// What [`publish_video_announced_then_audio`] sends: one H.264 frame and AAC (encoded before the
/// clock starts).
fn video_frame_and_aac() -> (FlvTag, Vec<FlvTag>) {
    let video = h264_flv_video_tags(2, 160, 120).swap_remove(1);
    (video, aac_flv_audio_tags())
}

/// A publisher that announces video (one H.264 frame without its sequence header, so no video pad
/// can be made) and then sends AAC: the audio pad waits (bounded, 3 s) for a video pad that never
/// comes.
fn publish_video_announced_then_audio(
    port: u16,
    (video, audio): &(FlvTag, Vec<FlvTag>),
) -> RtmpClient {
    let mut c = RtmpClient::publisher(port, "live", "key").expect("publish");
    c.send_video(&video.data, 0, false).expect("a video frame");
    for (i, t) in audio.iter().take(20).enumerate() {
        let p = c.audio_packet(&t.data, i as u32 * 23, false);
        c.send_raw(&p).expect("audio");
    }
    c
}

fn pad_names(src: &gst::Element) -> Vec<String> {
    src.src_pads()
        .iter()
        .map(|p| p.name().to_string())
        .collect()
}

#[test]
fn audio_pad_waits_at_most_3s_for_a_video_pad_that_never_comes() {
    let b = start(FLOWING);
    let src = b.pipeline.by_name("src").unwrap();
    let tags = video_frame_and_aac();
    let _client = publish_video_announced_then_audio(b.port, &tags);
    let t0 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pad_names(&src).is_empty() {
        assert!(Instant::now() < deadline, "no audio pad within 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = t0.elapsed();
    println!("audio pad added {after:?} after the audio was sent");
    assert_eq!(pad_names(&src), ["audio"]);
    assert!(
        after >= Duration::from_millis(2500),
        "the audio pad must wait for the announced video pad ({after:?})"
    );
    assert!(
        after < Duration::from_secs(8),
        "the audio pad waits 3 s at most, not until a video pad comes ({after:?})"
    );
    b.assert_no_error();
    null_within(&b.pipeline, PROMPT);
}

#[test]
fn null_within_1s_while_audio_waits_for_the_video_pad() {
    let b = start(FLOWING);
    let src = b.pipeline.by_name("src").unwrap();
    let _client = publish_video_announced_then_audio(b.port, &video_frame_and_aac());
    // Give the audio thread time to get its first buffer and start waiting.
    let stats_deadline = Instant::now() + Duration::from_secs(10);
    while src
        .property::<gst::Structure>("stats")
        .get::<u64>("audio-frames")
        .unwrap()
        < 10
    {
        assert!(Instant::now() < stats_deadline, "audio frames not received");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        pad_names(&src).is_empty(),
        "still waiting for the video pad"
    );
    let took = null_within(&b.pipeline, PROMPT);
    println!("PLAYING -> NULL while the audio pad waits for video took {took:?}");
}
