// SPDX-License-Identifier: MPL-2.0

//! The check `shmringsrc` and `surfacesrc` tests both run (feature `testing`): frames written
//! in-process land on the reading pipeline's running time, and the source answers the latency
//! query as [`crate::live`] documents. Uses only action signals of `appsrc`/`appsink`, so it
//! needs no more than `gst`; the caller has initialised GStreamer and made its plugin loadable.

use std::time::{Duration, Instant};

use gst::prelude::*;

/// Caps of the frames written: tiny, so the copy costs nothing next to the wake-up.
pub const CAPS: &str = "video/x-raw,format=GRAY8,width=16,height=16,framerate=30/1";
const FRAME_BYTES: usize = 16 * 16;
const FRAMES: u8 = 10;
/// One frame at 30 fps: the latency the source must report.
pub const FRAME: gst::ClockTime = gst::ClockTime::from_nseconds(33_333_333);
/// How long the reader runs before the writer starts: the writer's running time is then this
/// much behind the reader's, so a source passing the writer's timestamps through is off by it.
const HEAD_START: Duration = Duration::from_millis(500);
/// How late a PTS may be against the reader's running time at the moment the frame was
/// handed to the writer. The rule makes it the delay of the *first* frame (a futex or socket
/// wake-up and a copy: well under a millisecond when idle) for every frame, since the writer's
/// spacing is kept; 150 ms (4.5 frames) leaves room for the scheduling stalls of a 2-core CI
/// machine that is building at the same time, and stays far below `HEAD_START`.
pub const BOUND: gst::ClockTime = gst::ClockTime::from_mseconds(150);

fn launch(desc: &str) -> gst::Pipeline {
    gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("parse {desc:?}: {e}"))
        .downcast::<gst::Pipeline>()
        .expect("a pipeline")
}

fn bus_error(p: &gst::Pipeline) -> Option<String> {
    let msg = p.bus()?.pop_filtered(&[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(format!("{} ({:?})", e.error(), e.debug())),
        _ => None,
    }
}

/// The next sample of `appsink` (waiting at most `wait`), as (first byte, PTS).
fn pull(appsink: &gst::Element, read: &mut Vec<(u8, gst::ClockTime)>, wait: gst::ClockTime) {
    if let Some(s) = appsink.emit_by_name::<Option<gst::Sample>>("try-pull-sample", &[&wait]) {
        let b = s.buffer().expect("buffer");
        let first = b.map_readable().expect("map").first().copied();
        read.push((first.expect("a non-empty frame"), b.pts().expect("a PTS")));
    }
}

/// Runs `<src> name=rsrc ! appsink` (the reader) and, [`HEAD_START`] later,
/// `appsrc ! CAPS ! <sink>` (the writer), calls `writer_ready` (e.g. to wait until the writer
/// sees the reader), then writes 10 frames at 30 fps stamped with the writer's running time.
/// Asserts for every frame read that its PTS is between the reader's running time when the
/// frame was handed to the writer and [`BOUND`] after it, that the writer's spacing is kept, and
/// that the source answers the latency query: live, one frame ([`FRAME`]) minimum, no maximum.
pub fn check_live_source_timing(src: &str, sink: &str, writer_ready: impl FnOnce(&gst::Pipeline)) {
    let reader = launch(&format!("{src} name=rsrc ! appsink name=rsink sync=false"));
    let writer = launch(&format!(
        "appsrc name=wsrc is-live=true format=time caps={CAPS} ! {sink}"
    ));
    // Same clock for both, so one clock reading converts between their running times.
    let clock = gst::SystemClock::obtain();
    reader.use_clock(Some(&clock));
    writer.use_clock(Some(&clock));
    let stop = |why: String| -> ! {
        let _ = writer.set_state(gst::State::Null);
        let _ = reader.set_state(gst::State::Null);
        panic!("{why}");
    };
    reader
        .set_state(gst::State::Playing)
        .expect("reader to PLAYING");
    std::thread::sleep(HEAD_START);
    // Not waiting for the state: a live pipeline's sink completes it with its first buffer.
    // Both base times are chosen when `set_state` passes PAUSED -> PLAYING, before it returns.
    if writer.set_state(gst::State::Playing).is_err() {
        stop(format!("writer to PLAYING: {:?}", bus_error(&writer)));
    }
    writer_ready(&writer);
    let (Some(rbase), Some(wbase)) = (reader.base_time(), writer.base_time()) else {
        stop("pipelines without base time".into());
    };
    let appsrc = writer.by_name("wsrc").expect("appsrc");
    let appsink = reader.by_name("rsink").expect("appsink");

    // Reader running time at which frame i was handed to the writer, and what was read.
    let mut written = Vec::new();
    let mut read: Vec<(u8, gst::ClockTime)> = Vec::new();
    let start = Instant::now();
    for i in 0..FRAMES {
        let now = clock.time();
        let mut buf = gst::Buffer::from_mut_slice(vec![i; FRAME_BYTES]);
        {
            let b = buf.get_mut().expect("new buffer");
            b.set_pts(now.saturating_sub(wbase));
            b.set_duration(FRAME);
        }
        written.push(now.saturating_sub(rbase));
        let ret = appsrc.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buf]);
        if ret != gst::FlowReturn::Ok {
            stop(format!("push-buffer: {ret:?} ({:?})", bus_error(&writer)));
        }
        // Read it back before the next (a zero-copy source lends the writer's surfaces).
        pull(&appsink, &mut read, gst::ClockTime::from_seconds(2));
        let next = start + Duration::from_nanos(FRAME.nseconds()) * (i as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    while read.len() < FRAMES as usize
        && start.elapsed() < Duration::from_secs(20)
        && reader.current_state() == gst::State::Playing
    {
        if let Some(e) = bus_error(&reader) {
            stop(format!("reader error: {e}"));
        }
        pull(&appsink, &mut read, gst::ClockTime::from_mseconds(100));
    }
    let mut q = gst::query::Latency::new();
    let answered = reader.by_name("rsrc").expect("source").query(&mut q);
    let _ = appsrc.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    let _ = writer.set_state(gst::State::Null);
    let _ = reader.set_state(gst::State::Null);

    assert_eq!(read.len(), FRAMES as usize, "frames read: {read:?}");
    let mut late = None;
    for &(i, pts) in &read {
        let w = written[i as usize];
        assert!(
            pts >= w && pts - w <= BOUND,
            "frame {i}: PTS {pts} should be within {BOUND} after the reader's running time \
             {w} when it was written (writer's own running time was {HEAD_START:?} behind)"
        );
        // Everything after the first frame keeps the writer's spacing exactly.
        let l = pts - w;
        assert_eq!(*late.get_or_insert(l), l, "frame {i}: spacing changed");
    }
    assert!(answered, "the source did not answer the latency query");
    let (live, min, max) = q.result();
    assert!(live, "latency query: not live");
    assert_eq!(min, FRAME, "latency query: minimum is one frame");
    assert_eq!(max, gst::ClockTime::NONE, "latency query: no maximum");
}

/// The `timeout` property of the source made by `factory`: a `guint` of milliseconds, default
/// 10 s, that keeps what it is given (the same for `shmringsrc` and `surfacesrc`).
pub fn check_timeout_property(factory: &str) {
    let src = gst::ElementFactory::make(factory)
        .build()
        .unwrap_or_else(|e| panic!("{factory}: {e}"));
    let pspec = src.find_property("timeout").expect("a timeout property");
    assert_eq!(
        pspec.value_type(),
        u32::static_type(),
        "{factory} timeout type"
    );
    assert_eq!(src.property::<u32>("timeout"), 10_000, "{factory} default");
    src.set_property("timeout", 250u32);
    assert_eq!(src.property::<u32>("timeout"), 250);
    src.set_property_from_str("timeout", "0");
    assert_eq!(src.property::<u32>("timeout"), 0, "0 = wait forever");
}
