// SPDX-License-Identifier: MPL-2.0
//! Shared pieces of the pwvideosink integration tests: an in-process producer pipeline
//! (videotestsrc ! pwvideosink pointed at a private PipeWire session) and frame checks.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// [`caps_str`] with the `memory:DMABuf` feature.
pub fn dmabuf_caps(format: &str) -> String {
    caps_str(format).replacen("video/x-raw", "video/x-raw(memory:DMABuf)", 1)
}

/// A private PipeWire session and a [`Producer`] of `format` publishing `node` on it, the node
/// already visible (bounded wait).
pub fn session_with_producer(node: &str, format: &str, extra: &str) -> (PipeWireSession, Producer) {
    init();
    let session = PipeWireSession::start();
    let producer = Producer::start(&session, node, format, extra);
    session.wait_for_node(node, Duration::from_secs(10));
    (session, producer)
}

/// The `stats` structure of a pwvideosink.
pub fn stats(sink: &gst::Element) -> gst::Structure {
    sink.property::<gst::Structure>("stats")
}

/// The formats of a node's `EnumFormat` params (pw-dump object), asserting each has the fixed
/// size and rate.
pub fn fixed_formats(obj: &serde_json::Value) -> Vec<String> {
    obj["info"]["params"]["EnumFormat"]
        .as_array()
        .expect("EnumFormat")
        .iter()
        .map(|f| {
            assert_eq!(f["size"]["width"], WIDTH, "{f}");
            assert_eq!(f["size"]["height"], HEIGHT, "{f}");
            assert_eq!(f["framerate"]["num"], FPS, "{f}");
            f["format"].as_str().unwrap_or_default().to_string()
        })
        .collect()
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

/// A consumer process of a node whose frames land in a temporary file.
pub struct Consumer {
    pub guard: ChildGuard,
    pub out: tempfile::NamedTempFile,
}

impl Consumer {
    /// `pipewiresrc` on `node` taking `frames` frames (`None`: until killed) in `caps` into the
    /// file; `what` names it in failure messages.
    pub fn spawn(
        session: &PipeWireSession,
        node: &str,
        frames: Option<usize>,
        caps: &str,
        what: &str,
    ) -> Consumer {
        let out = tempfile::NamedTempFile::new().expect("temp file");
        let tail = format!("{caps} ! filesink location={}", out.path().display());
        let frames = frames.map(|n| n as u32);
        let guard = ChildGuard::spawn(what, &mut session.consumer(node, frames, &tail));
        Consumer { guard, out }
    }

    /// `tests/py/dmabuf_consumer.py`: pipewiresrc asking for `caps` (DMA-BUF), printing one JSON
    /// line per frame (inodes, memory type) and writing `frames` frames into the file.
    pub fn python_dmabuf(
        session: &PipeWireSession,
        node: &str,
        caps: &str,
        frames: usize,
        what: &str,
    ) -> Consumer {
        let out = tempfile::NamedTempFile::new().expect("temp file");
        let mut cmd = session.command("/usr/bin/python3");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/dmabuf_consumer.py"))
            .arg(node)
            .arg(caps)
            .arg(frames.to_string())
            .arg(out.path());
        let guard = ChildGuard::spawn(what, &mut cmd);
        Consumer { guard, out }
    }

    /// [`Consumer::spawn`] taking `frames` frames in `format`, run to its end (bounded by 30 s;
    /// it must succeed); returns the file holding them.
    pub fn run(
        session: &PipeWireSession,
        node: &str,
        frames: usize,
        format: &str,
        what: &str,
    ) -> tempfile::NamedTempFile {
        let consumer = Consumer::spawn(session, node, Some(frames), &caps_str(format), what);
        consumer.finish(session, Duration::from_secs(30)).1
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        file_len(self.out.path())
    }

    /// Wait (bounded) for the consumer to end; it must have succeeded (the failure message
    /// carries its stderr and stdout and the session's logs). Returns its stdout and file.
    pub fn finish(
        self,
        session: &PipeWireSession,
        timeout: Duration,
    ) -> (String, tempfile::NamedTempFile) {
        let what = self.guard.name.clone();
        let res = self.guard.wait_output(timeout);
        let stdout = String::from_utf8_lossy(&res.stdout).into_owned();
        assert!(
            res.status.success(),
            "{what} failed: {}\n{stdout}\n{}",
            String::from_utf8_lossy(&res.stderr),
            session.logs()
        );
        (stdout, self.out)
    }

    /// [`Consumer::finish`], then check the file holds `frames` frames equal to `reference`.
    pub fn check(self, session: &PipeWireSession, reference: &[u8], frames: usize, what: &str) {
        let (_, out) = self.finish(session, Duration::from_secs(30));
        check_frames(out.path(), reference, frames, what);
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
    Consumer::spawn(session, node, Some(frames), &caps_str(format), what)
        .check(session, reference, frames, what);
}

/// `gst-launch-1.0 -v pipewiresrc … num-buffers=<buffers> ! <filter> fakesink silent=false`
/// on `node`: its stdout has a line per buffer (size, offset, timestamps). `filter` is empty or
/// ends with `!`.
pub fn printing_consumer(
    session: &PipeWireSession,
    node: &str,
    buffers: u32,
    filter: &str,
) -> std::process::Command {
    let mut cmd = session.command("gst-launch-1.0");
    cmd.args([
        "-v",
        "pipewiresrc",
        &format!("target-object={node}"),
        "stream-properties=props,media.type=Video",
        &format!("num-buffers={buffers}"),
        "!",
    ])
    .args(filter.split_whitespace())
    .args(["fakesink", "silent=false"]);
    cmd
}

/// `appsrc name=src is-live=true format=time do-timestamp=true <src_props> ! <middle>
/// pwvideosink name=sink` publishing `node` on `session`, PLAYING; returns the pipeline, its
/// appsrc and its sink.
pub fn appsrc_pipeline(
    session: &PipeWireSession,
    node: &str,
    src_props: &str,
    middle: &str,
) -> (gst::Pipeline, gst_app::AppSrc, gst::Element) {
    let desc = format!(
        "appsrc name=src is-live=true format=time do-timestamp=true {src_props} ! {middle} \
         pwvideosink name=sink node-name={node} remote=\"{}\"",
        session.socket_path().display()
    );
    let pipeline = vcambridge_tests::launch_pipeline(&desc);
    let appsrc = pipeline
        .by_name("src")
        .expect("appsrc")
        .downcast::<gst_app::AppSrc>()
        .expect("appsrc type");
    let sink = pipeline.by_name("sink").expect("sink");
    pipeline.set_state(gst::State::Playing).expect("play");
    (pipeline, appsrc, sink)
}

/// Pushes what `next` makes into an appsrc every 33 ms until stopped; a round where `next` has
/// nothing (an upstream pool run dry) is counted.
pub struct Pusher {
    stop: Arc<AtomicBool>,
    starved: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Pusher {
    pub fn start(
        appsrc: gst_app::AppSrc,
        next: impl FnMut() -> Option<gst::Buffer> + Send + 'static,
    ) -> Pusher {
        Self::start_every(appsrc, Duration::from_millis(33), next)
    }

    /// [`Pusher::start`] with `interval` between attempts (`ZERO`: as fast as `next` gives
    /// buffers, 1 ms between attempts when it has none).
    pub fn start_every(
        appsrc: gst_app::AppSrc,
        interval: Duration,
        mut next: impl FnMut() -> Option<gst::Buffer> + Send + 'static,
    ) -> Pusher {
        let stop = Arc::new(AtomicBool::new(false));
        let starved = Arc::new(AtomicU64::new(0));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            let starved = starved.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match next() {
                        Some(buf) => {
                            if appsrc.push_buffer(buf).is_err() {
                                break;
                            }
                            std::thread::sleep(interval);
                        }
                        None => {
                            starved.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(interval.max(Duration::from_millis(1)));
                        }
                    }
                }
            }
        });
        Pusher {
            stop,
            starved,
            thread,
        }
    }

    /// Stop pushing; returns how often `next` had nothing.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.starved.load(Ordering::Relaxed)
    }
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

    /// The pipeline's buffer count so far (see [`Producer::count`]).
    pub fn frames(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
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
    let bytes = vcambridge_tests::rtmp::rss_bytes();
    assert!(bytes > 0, "no VmRSS in /proc/self/status");
    bytes / 1024
}

/// stdout and stderr of a finished process, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
