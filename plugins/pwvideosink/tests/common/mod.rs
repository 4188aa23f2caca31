// SPDX-License-Identifier: MPL-2.0
//! Shared pieces of the pwvideosink integration tests: an in-process producer pipeline
//! (videotestsrc ! pwvideosink pointed at a private PipeWire session) and frame checks.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gst::prelude::*;
use vcambridge_tests::ChildGuard;
use vcambridge_tests::pipewire::PipeWireSession;

pub const WIDTH: u32 = 320;
pub const HEIGHT: u32 = 240;
pub const FPS: u32 = 30;

/// GStreamer with pwvideosink registered from this crate (not from a possibly stale .so).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        gst::init().expect("GStreamer initialisation");
        if gst::ElementFactory::find("pwvideosink").is_none() {
            gstpwvideosink::plugin_register_static().expect("register pwvideosink");
        }
    });
    assert!(
        vcambridge_tests::pipewire::available(),
        "pipewire, wireplumber and dbus-daemon are needed (scripts/install-deps.sh)"
    );
}

pub fn caps_str(format: &str) -> String {
    format!("video/x-raw,format={format},width={WIDTH},height={HEIGHT},framerate={FPS}/1")
}

/// Size in bytes of one frame with the default GStreamer layout.
pub fn frame_size(format: &str) -> usize {
    let caps: gst::Caps = caps_str(format).parse().expect("caps");
    gst_video::VideoInfo::from_caps(&caps)
        .expect("video info")
        .size()
}

/// The frame videotestsrc (pattern colors, a still image) produces in `format`.
pub fn reference_frame(format: &str) -> Vec<u8> {
    first_frame(&format!(
        "videotestsrc num-buffers=1 pattern=colors ! {} ! appsink name=out",
        caps_str(format)
    ))
}

/// videotestsrc's frame in `from`, converted by videoconvert to `to`.
pub fn converted_reference(from: &str, to: &str) -> Vec<u8> {
    first_frame(&format!(
        "videotestsrc num-buffers=1 pattern=colors ! {} ! videoconvert ! {} ! appsink name=out",
        caps_str(from),
        caps_str(to)
    ))
}

fn first_frame(desc: &str) -> Vec<u8> {
    let pipeline = vcambridge_tests::launch_pipeline(desc);
    let sink = pipeline
        .by_name("out")
        .expect("appsink")
        .downcast::<gst_app::AppSink>()
        .expect("appsink type");
    pipeline
        .set_state(gst::State::Playing)
        .expect("play reference");
    let sample = sink
        .try_pull_sample(gst::ClockTime::from_seconds(10))
        .expect("reference frame within 10 s");
    let map = sample
        .buffer()
        .expect("buffer")
        .map_readable()
        .expect("map");
    let v = map.to_vec();
    pipeline
        .set_state(gst::State::Null)
        .expect("stop reference");
    v
}

/// Check a consumer's filesink output: `count` whole frames, each equal to `reference`.
pub fn check_frames(path: &Path, reference: &[u8], count: usize, what: &str) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{what}: reading {path:?}: {e}"));
    assert_eq!(
        data.len(),
        reference.len() * count,
        "{what}: expected {count} frames of {} bytes, got {} bytes",
        reference.len(),
        data.len()
    );
    for (i, frame) in data.chunks(reference.len()).enumerate() {
        if frame != reference {
            let first = frame
                .iter()
                .zip(reference)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "{what}: frame {i} differs from the reference at byte {first} ({} != {})",
                frame[first], reference[first]
            );
        }
    }
}

/// A `pipewiresrc` consumer process on `node` that takes `frames` frames in `format` (bounded by
/// 30 s) and must exit cleanly with each of them equal to `reference`. `what` names it in
/// failure messages, which carry the consumer's stderr and the PipeWire session's logs.
pub fn run_consumer(
    session: &PipeWireSession,
    node: &str,
    format: &str,
    frames: usize,
    reference: &[u8],
    what: &str,
) {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let tail = format!(
        "{} ! filesink location={}",
        caps_str(format),
        out.path().display()
    );
    let res = ChildGuard::spawn(
        what,
        &mut session.consumer(node, Some(frames as u32), &tail),
    )
    .wait_output(Duration::from_secs(30));
    assert!(
        res.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&res.stderr),
        session.logs()
    );
    check_frames(out.path(), reference, frames, what);
}

/// `videotestsrc is-live=true pattern=colors ! caps ! pwvideosink` in this process.
pub struct Producer {
    pub pipeline: gst::Pipeline,
    pub sink: gst::Element,
    /// Buffers that reached the sink pad (upstream's frame count).
    pub count: Arc<AtomicU64>,
}

impl Producer {
    pub fn start(session: &PipeWireSession, node: &str, format: &str, extra: &str) -> Self {
        Self::start_remote(
            &session.socket_path().to_string_lossy(),
            node,
            format,
            extra,
        )
    }

    pub fn start_remote(remote: &str, node: &str, format: &str, extra: &str) -> Self {
        let p = Self::build(remote, node, format, extra);
        p.pipeline
            .set_state(gst::State::Playing)
            .unwrap_or_else(|e| panic!("producer to PLAYING: {e:?}; {:?}", p.first_error()));
        p
    }

    pub fn build(remote: &str, node: &str, format: &str, extra: &str) -> Self {
        let desc = format!(
            "videotestsrc is-live=true pattern=colors ! capsfilter name=caps caps=\"{}\" ! pwvideosink name=sink \
             node-name={node} remote=\"{remote}\" {extra}",
            caps_str(format)
        );
        let pipeline = vcambridge_tests::launch_pipeline(&desc);
        let sink = pipeline.by_name("sink").expect("sink");
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        sink.static_pad("sink").expect("sink pad").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, _| {
                c.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            },
        );
        Producer {
            pipeline,
            sink,
            count,
        }
    }

    pub fn stats(&self) -> gst::Structure {
        self.sink.property::<gst::Structure>("stats")
    }

    pub fn stat_u64(&self, field: &str) -> u64 {
        self.stats().get::<u64>(field).expect("stats field")
    }

    pub fn consumers(&self) -> u32 {
        self.stats().get::<u32>("consumers").expect("consumers")
    }

    /// Wait (bounded) for a bus message of `ty` whose text satisfies `pred`.
    pub fn wait_message(
        &self,
        ty: gst::MessageType,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let bus = self.pipeline.bus().expect("bus");
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(msg) = bus
                .timed_pop_filtered(gst::ClockTime::from_nseconds(left.as_nanos() as u64), &[ty])
            else {
                break;
            };
            let text = message_text(&msg);
            if pred(&text) {
                return Some(text);
            }
        }
        None
    }

    /// The first error on the bus so far, if any (non-blocking).
    pub fn first_error(&self) -> Option<String> {
        let bus = self.pipeline.bus()?;
        bus.pop_filtered(&[gst::MessageType::Error])
            .map(|m| message_text(&m))
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

pub fn message_text(msg: &gst::Message) -> String {
    match msg.view() {
        gst::MessageView::Error(e) => format!("{} ({:?})", e.error(), e.debug()),
        gst::MessageView::Warning(w) => format!("{} ({:?})", w.error(), w.debug()),
        gst::MessageView::Info(i) => format!("{} ({:?})", i.error(), i.debug()),
        _ => format!("{msg:?}"),
    }
}

/// Size of the file at `path` (0 if missing).
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// This process's resident set size in kB.
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .expect("VmRSS in /proc/self/status")
}
