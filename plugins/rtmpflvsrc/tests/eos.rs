//! An EOS event sent to the pipeline (what `gst-launch-1.0 -e` and applications do on Ctrl-C)
//! ends rtmpflvsrc's pads promptly, whether or not a publisher is connected, so every sink gets
//! EOS and the pipeline posts EOS on the bus.

mod common;

use std::time::{Duration, Instant};

use gst::prelude::*;
use vcambridge_tests::rtmp::{FfmpegPublisher, rtmp_url};

/// The main job's shape: both branches exist before any pad does (delayed linking), the video
/// branch decodes.
const PIPELINE: &str = "rtmpflvsrc name=src port=0 \
    src.video ! queue ! decodebin ! videoconvert ! fakesink name=vsink \
    src.audio ! queue ! fakesink name=asink sync=false async=false";

fn start() -> (gst::Pipeline, u16) {
    common::init();
    let pipeline = gst::parse::launch(PIPELINE)
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    // The sinks wait for a first buffer (the pipeline stays ASYNC); the source itself is live
    // and PLAYING at once.
    let src = pipeline.by_name("src").expect("src");
    let port = common::wait_listening_port(&src);
    (pipeline, port)
}

/// Sends EOS to the pipeline and returns how long the EOS message took (fails on an error or
/// after `limit`).
fn eos_within(pipeline: &gst::Pipeline, limit: Duration) -> Duration {
    let bus = pipeline.bus().expect("bus");
    let t0 = Instant::now();
    assert!(
        pipeline.send_event(gst::event::Eos::new()),
        "EOS not handled"
    );
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(limit.as_nanos() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let took = t0.elapsed();
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => took,
        Some(gst::MessageView::Error(e)) => {
            panic!("error instead of EOS: {} ({:?})", e.error(), e.debug())
        }
        _ => panic!("no EOS on the bus within {limit:?}"),
    }
}

#[test]
fn eos_without_any_publisher_reaches_the_bus_within_1s() {
    let (pipeline, _port) = start();
    let src = pipeline.by_name("src").unwrap();
    assert!(src.src_pads().is_empty(), "no pads before a publisher");
    let took = eos_within(&pipeline, Duration::from_secs(1));
    println!("EOS on the bus {took:?} after sending it, no publisher");
    // Both branches got their pad (carrying only EOS), so both sinks ended.
    let names: Vec<String> = src
        .src_pads()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    assert_eq!(names, ["video", "audio"]);
    pipeline.set_state(gst::State::Null).expect("NULL");
}

#[test]
fn eos_after_the_publisher_left_reaches_the_bus_within_1s() {
    let (pipeline, port) = start();
    let bus = pipeline.bus().unwrap();
    let vsink = pipeline.by_name("vsink").unwrap();
    vsink.set_property("signal-handoffs", true);
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let f = frames.clone();
    vsink.connect("handoff", false, move |_| {
        f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        None
    });
    let mut publisher = FfmpegPublisher::new(&rtmp_url(port, "live", "k"), 30);
    publisher.width = 160;
    publisher.height = 120;
    let (ok, err) = publisher.run(Duration::from_secs(60));
    assert!(ok, "ffmpeg: {err}");
    // The publisher is gone; the element waits for the next one (eos-on-disconnect=false).
    let deadline = Instant::now() + Duration::from_secs(20);
    while frames.load(std::sync::atomic::Ordering::SeqCst) < 30 && Instant::now() < deadline {
        if let Some(m) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(50),
            &[gst::MessageType::Error],
        ) {
            panic!("error: {m:?}");
        }
    }
    assert_eq!(
        frames.load(std::sync::atomic::Ordering::SeqCst),
        30,
        "decoded frames"
    );
    let took = eos_within(&pipeline, Duration::from_secs(1));
    println!("EOS on the bus {took:?} after sending it, publisher gone");
    pipeline.set_state(gst::State::Null).expect("NULL");
}

#[test]
fn eos_while_a_publisher_streams_reaches_the_bus_within_1s() {
    let (pipeline, port) = start();
    let src = pipeline.by_name("src").unwrap();
    let mut publisher = FfmpegPublisher::new(&rtmp_url(port, "live", "k"), 100_000);
    publisher.width = 160;
    publisher.height = 120;
    // In real time, as OBS publishes: a publisher bursting faster than real time fills the
    // queue before the decoder, and the EOS then waits behind the blocked push.
    publisher.realtime = true;
    let _live = publisher.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while src.src_pads().len() < 2 {
        assert!(Instant::now() < deadline, "no pads from the live publisher");
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = eos_within(&pipeline, Duration::from_secs(1));
    println!("EOS on the bus {took:?} after sending it, publisher streaming");
    pipeline.set_state(gst::State::Null).expect("NULL");
}
