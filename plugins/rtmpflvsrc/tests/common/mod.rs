//! Shared pieces of the rtmpflvsrc end-to-end tests: an in-process receiving pipeline that
//! records everything it sees (elementary buffers and caps on the source pads, decoded frames,
//! bus messages), and an rml_rtmp-based RTMP client for hand-made and hostile byte streams.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

pub mod client;

use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use gst::prelude::*;

static INIT: Once = Once::new();

/// Initialise GStreamer and register the plugin statically (the in-tree code under test).
pub fn init() {
    INIT.call_once(|| {
        gst::init().expect("GStreamer initialisation");
        gstrtmpflvsrc::plugin_register_static().expect("registering the rtmpflvsrc plugin");
    });
}

/// Lock, ignoring poison: a test assertion failing inside `Receiver::check` must not turn the
/// streaming-thread callbacks into panics (which abort the whole test binary).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Does the GStreamer registry have `factory`?
pub fn have_element(factory: &str) -> bool {
    gst::ElementFactory::find(factory).is_some()
}

/// One buffer seen on a source pad.
#[derive(Clone, Debug)]
pub struct BufInfo {
    pub pts: Option<gst::ClockTime>,
    pub dts: Option<gst::ClockTime>,
    pub discont: bool,
    pub delta_unit: bool,
    pub size: usize,
    pub arrival: Instant,
}

/// One sample that reached the branch's appsink (`vsink`).
#[derive(Clone, Debug)]
pub struct SinkSample {
    pub pts: Option<gst::ClockTime>,
    pub caps_name: String,
    pub width: i32,
    pub height: i32,
    /// The centre pixel when the sample is packed RGB.
    pub centre: Option<[u8; 3]>,
    /// What the marker reader found in the frame (benchmark).
    pub marker: Option<u32>,
    pub arrival: Instant,
}

/// Everything the receiver recorded.
#[derive(Default)]
pub struct Collected {
    pub video: Vec<BufInfo>,
    pub audio: Vec<BufInfo>,
    pub video_caps: Vec<gst::Caps>,
    pub audio_caps: Vec<gst::Caps>,
    /// Segments on the video pad, each with the number of video buffers seen before it.
    pub video_segments: Vec<(usize, gst::FormattedSegment<gst::ClockTime>)>,
    pub samples: Vec<SinkSample>,
    pub messages: Vec<gst::Message>,
    pub pads: Vec<String>,
    /// Source pads that have pushed EOS.
    pub pads_eos: Vec<String>,
    pub eos: bool,
    /// Problems of the test harness itself (e.g. a branch that cannot link), reported by wait().
    pub harness_errors: Vec<String>,
}

impl Collected {
    pub fn element_messages(&self, name: &str) -> Vec<gst::Structure> {
        self.messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Element(e) => e
                    .structure()
                    .filter(|s| s.name() == name)
                    .map(|s| s.to_owned()),
                _ => None,
            })
            .collect()
    }

    pub fn errors(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Error(e) => Some(format!(
                    "{} ({:?}) from {:?}",
                    e.error(),
                    e.debug(),
                    m.src().map(|s| s.path_string())
                )),
                _ => None,
            })
            .collect()
    }

    pub fn warnings(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Warning(w) => Some(format!("{} ({:?})", w.error(), w.debug())),
                _ => None,
            })
            .collect()
    }
}

/// Reads a marker (e.g. a frame index) out of a decoded RGB frame.
pub type MarkerReader = fn(&gst_video::VideoFrameRef<&gst::BufferRef>) -> Option<u32>;

/// How to build the receiving pipeline.
#[derive(Clone)]
pub struct Options {
    /// Properties of rtmpflvsrc, set from strings (port is always 0 → bound-port).
    pub props: Vec<(&'static str, String)>,
    /// Receive from an RTMP server with `rtmp2src location=URL ! flvdemux` instead of
    /// rtmpflvsrc (the upstream peer of the benchmark).
    pub rtmp2src_url: Option<String>,
    /// What follows the `video` pad; an appsink named `vsink` in it is recorded.
    pub video_branch: String,
    /// What follows the `audio` pad.
    pub audio_branch: String,
    pub marker: Option<MarkerReader>,
}

/// Decode to packed RGB and record every frame. (Every branch gets a queue in front.)
pub const DECODE_RGB: &str =
    "decodebin ! videoconvert ! video/x-raw,format=RGB ! appsink name=vsink sync=false";
/// Only count elementary buffers (the source-pad probe records them).
pub const COUNT_ONLY: &str = "fakesink sync=false async=false";

/// Add `queue ! desc` to the pipeline and link `pad` to it.
fn link_branch(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    desc: &str,
    video: bool,
    data: &Arc<Mutex<Collected>>,
    marker: Option<MarkerReader>,
) -> Result<(), String> {
    let full = format!(
        "queue name=branchin max-size-buffers=0 max-size-bytes=0 max-size-time=5000000000 ! {desc}"
    );
    let bin = gst::parse::bin_from_description(&full, false)
        .map_err(|e| format!("branch {full:?}: {e}"))?
        .upcast::<gst::Bin>();
    let queue = bin.by_name("branchin").ok_or("no branchin queue")?;
    let ghost = gst::GhostPad::with_target(&queue.static_pad("sink").ok_or("queue sink pad")?)
        .map_err(|e| format!("ghost pad: {e}"))?;
    bin.add_pad(&ghost)
        .map_err(|e| format!("add ghost pad: {e}"))?;
    if video {
        attach_appsink(&bin, data, marker);
    }
    pipeline.add(&bin).map_err(|e| format!("add branch: {e}"))?;
    bin.sync_state_with_parent()
        .map_err(|e| format!("branch state: {e}"))?;
    pad.link(&ghost)
        .map_err(|e| format!("linking {} to {desc:?}: {e:?}", pad.name()))?;
    Ok(())
}

impl Default for Options {
    fn default() -> Self {
        Options {
            props: Vec::new(),
            rtmp2src_url: None,
            video_branch: DECODE_RGB.to_string(),
            audio_branch: COUNT_ONLY.to_string(),
            marker: None,
        }
    }
}

impl Options {
    pub fn prop(mut self, name: &'static str, value: impl ToString) -> Self {
        self.props.push((name, value.to_string()));
        self
    }

    pub fn audio_branch(mut self, d: &str) -> Self {
        self.audio_branch = d.to_string();
        self
    }

    pub fn video_branch(mut self, d: &str) -> Self {
        self.video_branch = d.to_string();
        self
    }
}

/// A running receiving pipeline (rtmpflvsrc, or rtmp2src ! flvdemux).
pub struct Receiver {
    pub pipeline: gst::Pipeline,
    /// rtmpflvsrc (or rtmp2src).
    pub src: gst::Element,
    /// The port publishers should use (bound-port of rtmpflvsrc; 0 in rtmp2src mode).
    pub port: u16,
    pub data: Arc<Mutex<Collected>>,
}

fn record_pad(pad: &gst::Pad, data: &Arc<Mutex<Collected>>, video: bool) {
    let data = data.clone();
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |pad, info| {
            match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => {
                    let bi = BufInfo {
                        pts: b.pts(),
                        dts: b.dts(),
                        discont: b.flags().contains(gst::BufferFlags::DISCONT),
                        delta_unit: b.flags().contains(gst::BufferFlags::DELTA_UNIT),
                        size: b.size(),
                        arrival: Instant::now(),
                    };
                    let mut d = lock(&data);
                    if video {
                        d.video.push(bi);
                    } else {
                        d.audio.push(bi);
                    }
                }
                Some(gst::PadProbeData::Event(e)) => {
                    if let gst::EventView::Eos(_) = e.view() {
                        lock(&data).pads_eos.push(pad.name().to_string());
                    }
                    if let gst::EventView::Segment(seg) = e.view()
                        && video
                        && let Ok(seg) = seg.segment().clone().downcast::<gst::ClockTime>()
                    {
                        let mut d = lock(&data);
                        let at = d.video.len();
                        d.video_segments.push((at, seg));
                    }
                    if let gst::EventView::Caps(c) = e.view() {
                        let mut d = lock(&data);
                        if video {
                            d.video_caps.push(c.caps_owned());
                        } else {
                            d.audio_caps.push(c.caps_owned());
                        }
                    }
                }
                _ => {}
            }
            gst::PadProbeReturn::Ok
        },
    );
}

fn attach_appsink(bin: &gst::Bin, data: &Arc<Mutex<Collected>>, marker: Option<MarkerReader>) {
    let Some(sink) = bin.by_name("vsink") else {
        return;
    };
    let sink = sink
        .downcast::<gst_app::AppSink>()
        .expect("vsink is an appsink");
    let data = data.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let arrival = Instant::now();
                let Some(caps) = sample.caps() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let st = caps.structure(0).expect("caps have a structure");
                let mut rec = SinkSample {
                    pts: sample.buffer().and_then(|b| b.pts()),
                    caps_name: st.name().to_string(),
                    width: st.get::<i32>("width").unwrap_or(0),
                    height: st.get::<i32>("height").unwrap_or(0),
                    centre: None,
                    marker: None,
                    arrival,
                };
                if let (Ok(vi), Some(buf)) =
                    (gst_video::VideoInfo::from_caps(caps), sample.buffer())
                    && vi.format() == gst_video::VideoFormat::Rgb
                    && let Ok(frame) = gst_video::VideoFrameRef::from_buffer_ref_readable(buf, &vi)
                {
                    let stride = vi.stride()[0] as usize;
                    let plane = frame.plane_data(0).expect("RGB plane");
                    let off = (vi.height() as usize / 2) * stride + (vi.width() as usize / 2) * 3;
                    rec.centre = Some([plane[off], plane[off + 1], plane[off + 2]]);
                    if let Some(m) = marker {
                        rec.marker = m(&frame);
                    }
                }
                lock(&data).samples.push(rec);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

impl Receiver {
    /// Build and start the pipeline (PLAYING), bounded.
    pub fn start(opts: Options) -> Receiver {
        init();
        let pipeline = gst::Pipeline::new();
        let data = Arc::new(Mutex::new(Collected::default()));

        // Record every message (and drop it from the bus: nobody pops them).
        let bus = pipeline.bus().expect("pipeline bus");
        {
            let data = data.clone();
            bus.set_sync_handler(move |_bus, msg| {
                let mut d = lock(&data);
                if matches!(msg.view(), gst::MessageView::Eos(_)) {
                    d.eos = true;
                }
                if matches!(
                    msg.view(),
                    gst::MessageView::Element(_)
                        | gst::MessageView::Warning(_)
                        | gst::MessageView::Error(_)
                        | gst::MessageView::Eos(_)
                ) {
                    d.messages.push(msg.clone());
                }
                gst::BusSyncReply::Drop
            });
        }

        let (src, demux) = match &opts.rtmp2src_url {
            None => {
                let src = gst::ElementFactory::make("rtmpflvsrc")
                    .property_from_str("port", "0")
                    .build()
                    .expect("rtmpflvsrc element (is the plugin registered?)");
                for (k, v) in &opts.props {
                    src.set_property_from_str(k, v);
                }
                pipeline.add(&src).unwrap();
                (src.clone(), src)
            }
            Some(url) => {
                let src = gst::ElementFactory::make("rtmp2src")
                    .property("location", url)
                    .build()
                    .expect("rtmp2src");
                let demux = gst::ElementFactory::make("flvdemux")
                    .build()
                    .expect("flvdemux");
                pipeline.add_many([&src, &demux]).unwrap();
                src.link(&demux).unwrap();
                (src, demux)
            }
        };

        {
            let data = data.clone();
            let pipeline_weak = pipeline.downgrade();
            let opts = opts.clone();
            demux.connect_pad_added(move |_el, pad| {
                let Some(pipeline) = pipeline_weak.upgrade() else {
                    return;
                };
                let name = pad.name().to_string();
                let video = name.starts_with("video");
                if !video && !name.starts_with("audio") {
                    return;
                }
                lock(&data).pads.push(name.clone());
                record_pad(pad, &data, video);
                let desc = if video {
                    &opts.video_branch
                } else {
                    &opts.audio_branch
                };
                if let Err(e) = link_branch(&pipeline, pad, desc, video, &data, opts.marker) {
                    lock(&data).harness_errors.push(e);
                }
            });
        }

        let mut port = 0u16;
        if opts.rtmp2src_url.is_none() {
            pipeline
                .set_state(gst::State::Ready)
                .expect("rtmpflvsrc to READY (binds the port)");
            port = src.property::<u32>("bound-port") as u16;
            assert_ne!(port, 0, "bound-port must be known in READY");
        }
        let ret = pipeline.set_state(gst::State::Playing);
        assert!(ret.is_ok(), "pipeline to PLAYING: {ret:?}");
        Receiver {
            pipeline,
            src,
            port,
            data,
        }
    }

    /// An `rtmp://` URL for publishers to this receiver.
    pub fn url(&self, app: &str, key: &str) -> String {
        vcambridge_tests::rtmp::rtmp_url(self.port, app, key)
    }

    /// Wait (bounded) until `f` holds on what was collected; fail with `what` and a summary.
    pub fn wait(&self, timeout: Duration, what: &str, f: impl Fn(&Collected) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let d = lock(&self.data);
                if f(&d) {
                    return;
                }
                let mut errors = d.errors();
                errors.extend(d.harness_errors.iter().cloned());
                if !errors.is_empty() {
                    panic!("pipeline error while waiting for {what}: {errors:?}");
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {}",
                    self.summary()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (bounded) until each of `pads` exists and has pushed EOS (eos-on-disconnect): the
    /// pipeline's EOS message alone does not mean a pad added late has finished.
    pub fn wait_pads_eos(&self, pads: &[&str], timeout: Duration) {
        self.wait(timeout, &format!("EOS on the pads {pads:?}"), |d| {
            pads.iter().all(|p| d.pads_eos.iter().any(|e| e == p))
        });
        self.wait(timeout, "the pipeline's EOS message", |d| d.eos);
    }

    /// Does `f` hold on what was collected?
    pub fn check<T>(&self, f: impl FnOnce(&Collected) -> T) -> T {
        f(&lock(&self.data))
    }

    pub fn summary(&self) -> String {
        let d = lock(&self.data);
        format!(
            "pads {:?}, {} video buffers, {} audio buffers, {} sink samples, eos {}, video caps {:?}, \
             messages: {:?}",
            d.pads,
            d.video.len(),
            d.audio.len(),
            d.samples.len(),
            d.eos,
            d.video_caps
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>(),
            d.messages
                .iter()
                .map(|m| match m.view() {
                    gst::MessageView::Element(e) =>
                        e.structure().map(|s| s.to_string()).unwrap_or_default(),
                    gst::MessageView::Warning(w) =>
                        format!("WARNING {} {:?}", w.error(), w.debug()),
                    gst::MessageView::Error(w) => format!("ERROR {} {:?}", w.error(), w.debug()),
                    _ => format!("{:?}", m.type_()),
                })
                .collect::<Vec<_>>()
        )
    }

    pub fn assert_no_error(&self) {
        let errors = self.check(|d| d.errors());
        assert!(errors.is_empty(), "pipeline errors: {errors:?}");
    }

    /// The `stats` structure of rtmpflvsrc.
    pub fn stats(&self) -> gst::Structure {
        self.src.property::<gst::Structure>("stats")
    }

    /// Go to NULL; fails the test if that takes more than 5 s (state changes must never block on
    /// the network).
    pub fn stop(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = self.pipeline.clone();
        std::thread::spawn(move || {
            let r = p.set_state(gst::State::Null);
            let _ = tx.send(r);
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => assert!(r.is_ok(), "pipeline to NULL failed: {r:?}"),
            Err(_) => panic!("pipeline to NULL blocked for more than 5 s"),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        if let Some(bus) = self.pipeline.bus() {
            bus.unset_sync_handler();
        }
    }
}

/// Assert the colour is within `tol` per component.
pub fn assert_colour_close(got: [u8; 3], want: [u8; 3], tol: u8, what: &str) {
    let ok = got
        .iter()
        .zip(want.iter())
        .all(|(g, w)| g.abs_diff(*w) <= tol);
    assert!(
        ok,
        "{what}: pixel {got:?} is not within {tol} of the published colour {want:?}"
    );
}

/// PTS values must strictly increase.
pub fn assert_strictly_increasing(pts: &[gst::ClockTime], what: &str) {
    for (i, w) in pts.windows(2).enumerate() {
        assert!(
            w[1] > w[0],
            "{what}: PTS not strictly increasing at {}: {} then {}",
            i + 1,
            w[0],
            w[1]
        );
    }
}

/// Waits (bounded) until the `rtmpflvsrc` element `src` is PLAYING and accepts connections;
/// returns its bound port.
pub fn wait_listening_port(src: &gst::Element) -> u16 {
    let (res, state, _) = src.state(gst::ClockTime::from_seconds(10));
    assert!(
        res.is_ok() && state == gst::State::Playing,
        "{res:?} {state:?}"
    );
    let port = src.property::<u32>("bound-port") as u16;
    assert_ne!(port, 0, "bound-port");
    vcambridge_tests::rtmp::wait_listening(port, std::time::Duration::from_secs(10));
    port
}
