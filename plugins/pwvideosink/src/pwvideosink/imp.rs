// SPDX-License-Identifier: MPL-2.0

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use super::dmabuf::{DmaBufPlane, MAX_DMABUFS, Registered, fd_identity};
use super::lend::LendPool;
use super::loop_thread::{LoopEvent, LoopHandle, Msg, NodeConfig, Notify};
use super::mailbox::{PendingFrame, Shared, lock};
use crate::format::{self, FrameLayout, VideoSpec};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "pwvideosink",
        gst::DebugColorFlags::empty(),
        Some("PipeWire camera sink"),
    )
});

const DEFAULT_MEDIA_CLASS: &str = "Video/Source";
const DEFAULT_MEDIA_ROLE: &str = "Camera";
const DEFAULT_RECONNECT: bool = true;
const DEFAULT_REALTIME: bool = false;
/// `GST_CAPS_FEATURE_MEMORY_DMABUF` (gst-allocators), spelled out to avoid the dependency.
const CAPS_FEATURE_MEMORY_DMABUF: &str = "memory:DMABuf";

#[derive(Debug, Clone)]
struct Settings {
    node_name: Option<String>,
    node_description: Option<String>,
    media_class: String,
    media_role: String,
    stream_properties: Option<gst::Structure>,
    reconnect: bool,
    remote: Option<String>,
    realtime: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_name: None,
            node_description: None,
            media_class: DEFAULT_MEDIA_CLASS.into(),
            media_role: DEFAULT_MEDIA_ROLE.into(),
            stream_properties: None,
            reconnect: DEFAULT_RECONNECT,
            remote: None,
            realtime: DEFAULT_REALTIME,
        }
    }
}

#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started {
        handle: LoopHandle,
        shared: Arc<Shared>,
        layout: Option<FrameLayout>,
        /// Shared with `render()`, which uses it after releasing the state lock.
        info: Option<Arc<gst_video::VideoInfo>>,
        /// The negotiated caps carry the `memory:DMABuf` feature.
        dmabuf: bool,
        seq: u64,
    },
}

#[derive(Default)]
pub struct PwVideoSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    /// Format a consumer fixed that upstream said it could deliver: our caps query answers
    /// only this one until stop, so upstream renegotiates to it.
    preferred_format: Mutex<Option<&'static str>>,
}

fn negotiated_some(shared: &Shared) -> bool {
    lock(&shared.negotiated).is_some()
}

/// The planes of `buffer` in DMA-BUF memory (fd, where each plane starts, its stride and
/// size), or `None` if any plane is in other memory.
fn dmabuf_planes(buffer: &gst::BufferRef, info: &gst_video::VideoInfo) -> Option<Vec<DmaBufPlane>> {
    let meta = buffer.meta::<gst_video::VideoMeta>();
    let (offsets, strides) = match &meta {
        Some(m) => (m.offset(), m.stride()),
        None => (info.offset(), info.stride()),
    };
    let finfo = info.format_info();
    let mut planes = Vec::with_capacity(info.n_planes() as usize);
    for p in 0..info.n_planes() as usize {
        let comp = (0..finfo.n_components()).find(|&c| finfo.plane()[c as usize] == p as u32)?;
        let rows = finfo.scale_height(comp as u8, info.height()) as usize;
        let stride = *strides.get(p)?;
        let offset = *offsets.get(p)?;
        let size = rows * stride.max(0) as usize;
        let (range, skip) = buffer.find_memory(offset..offset + size.max(1))?;
        if range.len() != 1 {
            return None;
        }
        let mem = buffer.peek_memory(range.start);
        let dmabuf = mem.downcast_memory_ref::<gst_allocators::DmaBufMemory>()?;
        let fd = dmabuf.fd();
        let (key, fd_size) = fd_identity(fd)?;
        planes.push(DmaBufPlane {
            key,
            fd,
            fd_size,
            offset: (mem.offset() + skip) as u32,
            stride,
            size: size as u32,
        });
    }
    Some(planes)
}

impl PwVideoSink {
    fn node_config(&self) -> NodeConfig {
        let s = lock(&self.settings).clone();
        let node_name = s
            .node_name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| self.obj().name().to_string());
        let node_description = s
            .node_description
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| node_name.clone());
        let extra_props = s
            .stream_properties
            .map(|st| {
                st.iter()
                    .map(|(k, v)| {
                        let v = v.get::<String>().unwrap_or_else(|_| {
                            v.serialize().map(|s| s.into()).unwrap_or_default()
                        });
                        (k.to_string(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let socket_path = format::socket_path(s.remote.as_deref(), |k| std::env::var(k).ok());
        NodeConfig {
            node_name,
            node_description,
            media_class: s.media_class,
            media_role: s.media_role,
            extra_props,
            remote: s.remote,
            socket_path,
            reconnect: s.reconnect,
            realtime: s.realtime,
        }
    }

    fn notifier(&self) -> Notify {
        let weak = self.obj().downgrade();
        Arc::new(move |ev: LoopEvent| {
            let Some(obj) = weak.upgrade() else { return };
            match ev {
                LoopEvent::Warning(m) => {
                    gst::warning!(CAT, obj = obj, "{m}");
                    gst::element_warning!(obj, gst::ResourceError::Write, ("{}", m));
                }
                LoopEvent::Error(m) => {
                    gst::error!(CAT, obj = obj, "{m}");
                    gst::element_error!(obj, gst::ResourceError::Write, ("{}", m));
                }
                LoopEvent::WantFormat(f) => obj.imp().want_format(f),
                LoopEvent::Info(m) => {
                    gst::info!(CAT, obj = obj, "{m}");
                    gst::element_info!(obj, gst::ResourceError::Write, ("{}", m));
                }
            }
        })
    }

    /// When the frame is due, in CLOCK_MONOTONIC ns, as PipeWire sources stamp
    /// `spa_meta_header.pts` (pipewiresrc subtracts its base time from it): the buffer's
    /// running time on the pipeline clock, moved onto the monotonic clock.
    fn presentation_time_monotonic(&self, buffer: &gst::BufferRef) -> i64 {
        let obj = self.obj();
        let now = super::monotonic_ns();
        let running = obj
            .segment()
            .downcast_ref::<gst::ClockTime>()
            .and_then(|seg| seg.to_running_time(buffer.pts()));
        match (running, obj.base_time(), obj.clock()) {
            (Some(rt), Some(base), Some(clock)) => {
                let due = (rt + base).nseconds() as i64;
                now - (clock.time().nseconds() as i64 - due)
            }
            _ => now,
        }
    }

    /// A consumer fixed `format`: make upstream switch to it.
    fn want_format(&self, format: &'static str) {
        gst::info!(
            CAT,
            imp = self,
            "consumer wants {format}, asking upstream to switch"
        );
        *lock(&self.preferred_format) = Some(format);
        if let Some(pad) = self.obj().static_pad("sink") {
            pad.push_event(gst::event::Reconfigure::new());
        }
    }

    /// Before any caps: if upstream can only deliver one size and frame rate (e.g. a capsfilter
    /// after videoscale/videorate, as in the main job), the formats it could deliver at it, so
    /// the camera can be published before the first frame.
    fn upstream_preview(&self) -> Option<(VideoSpec, Vec<u32>)> {
        let pad = self.obj().static_pad("sink")?;
        let caps = pad.peer_query_caps(Some(&pad.pad_template_caps()));
        let mut geometry = None;
        let mut names: Vec<String> = Vec::new();
        for s in caps.iter() {
            let w = s.get::<i32>("width").ok()?;
            let h = s.get::<i32>("height").ok()?;
            let fps = s.get::<gst::Fraction>("framerate").ok()?;
            let g = (w, h, fps.numer(), fps.denom());
            if *geometry.get_or_insert(g) != g {
                return None;
            }
            if let Ok(f) = s.get::<String>("format") {
                names.push(f);
            } else if let Ok(list) = s.get::<gst::List>("format") {
                names.extend(list.iter().filter_map(|v| v.get::<String>().ok()));
            }
        }
        let (w, h, n, d) = geometry?;
        let formats: Vec<u32> = format::supported_gst_formats()
            .filter(|f| names.iter().any(|n| n == f))
            .filter_map(format::spa_format_from_gst)
            .collect();
        let first = *formats.first()?;
        let spec = VideoSpec {
            format: first,
            width: w.max(1) as u32,
            height: h.max(1) as u32,
            fps_n: n.max(0) as u32,
            fps_d: d.max(1) as u32,
        };
        Some((spec, formats[1..].to_vec()))
    }

    /// Other supported formats upstream can deliver at the negotiated size and rate.
    fn upstream_alternatives(&self, info: &gst_video::VideoInfo) -> Vec<u32> {
        let Some(pad) = self.obj().static_pad("sink") else {
            return Vec::new();
        };
        let filter = gst::Caps::builder("video/x-raw")
            .field("format", gst::List::new(format::supported_gst_formats()))
            .field("width", info.width() as i32)
            .field("height", info.height() as i32)
            .field("framerate", info.fps())
            .build();
        let caps = pad.peer_query_caps(Some(&filter));
        let mut names: Vec<String> = Vec::new();
        for s in caps.iter() {
            if let Ok(f) = s.get::<String>("format") {
                names.push(f);
            } else if let Ok(list) = s.get::<gst::List>("format") {
                names.extend(list.iter().filter_map(|v| v.get::<String>().ok()));
            }
        }
        // Keep our order of preference.
        format::supported_gst_formats()
            .filter(|f| names.iter().any(|n| n == f) && *f != info.format().to_str())
            .filter_map(format::spa_format_from_gst)
            .collect()
    }

    fn stats(&self) -> gst::Structure {
        let state = lock(&self.state);
        let mut counts = [0u64; 8];
        let mut realtime = false;
        let (consumers, sent, dropped, fmt, driving, memory, buffer_type) = match &*state {
            State::Stopped => (0u32, 0u64, 0u64, String::new(), false, "", ""),
            State::Started {
                shared,
                layout,
                dmabuf,
                ..
            } => {
                let negotiated = lock(&shared.negotiated).map(|s: VideoSpec| s.describe());
                counts = [
                    &shared.frames_in_place,
                    &shared.frames_copied,
                    &shared.buffers_lent,
                    &shared.lend_misses,
                    &shared.cycles_in_render,
                    &shared.recycle_cycles,
                    &shared.copies_on_data_thread,
                    &shared.trigger_done,
                ]
                .map(|c| c.load(Ordering::Relaxed));
                realtime = shared.data_thread_realtime.load(Ordering::Relaxed);
                (
                    shared.consumers.load(Ordering::Relaxed),
                    shared.frames_sent.load(Ordering::Relaxed),
                    shared.frames_dropped.load(Ordering::Relaxed),
                    negotiated
                        .or_else(|| layout.map(|l| l.spec.describe()))
                        .unwrap_or_default(),
                    shared.driving.load(Ordering::Relaxed),
                    match (layout, dmabuf) {
                        (None, _) => "",
                        (Some(_), true) => "DMABuf",
                        (Some(_), false) => "system",
                    },
                    match (
                        negotiated_some(shared),
                        shared.dmabuf_passthrough.load(Ordering::Relaxed),
                    ) {
                        (false, _) => "",
                        (true, true) => "dmabuf",
                        (true, false) => "memfd",
                    },
                )
            }
        };
        gst::Structure::builder("application/x-pwvideosink-stats")
            .field("consumers", consumers)
            .field("frames-sent", sent)
            .field("frames-dropped", dropped)
            .field("format", fmt)
            .field("driving", driving)
            .field("upstream-memory", memory)
            .field("buffer-type", buffer_type)
            .field("frames-in-place", counts[0])
            .field("frames-copied", counts[1])
            .field("buffers-lent", counts[2])
            .field("lend-misses", counts[3])
            .field("cycles-in-render", counts[4])
            .field("recycle-cycles", counts[5])
            .field("data-thread-realtime", realtime)
            .field("copies-on-data-thread", counts[6])
            .field("trigger-done", counts[7])
            .build()
    }
}

#[glib::object_subclass]
impl ObjectSubclass for PwVideoSink {
    const NAME: &'static str = "GstPwVideoSink";
    type Type = super::PwVideoSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for PwVideoSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("node-name")
                    .nick("Node name")
                    .blurb("PipeWire node.name consumers target (default: the element name)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("node-description")
                    .nick("Node description")
                    .blurb("Human-readable node.description shown by apps (default: node-name)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("media-class")
                    .nick("Media class")
                    .blurb("PipeWire media.class of the node")
                    .default_value(Some(DEFAULT_MEDIA_CLASS))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("media-role")
                    .nick("Media role")
                    .blurb("PipeWire media.role of the node (Camera for the camera portal, or e.g. Screen)")
                    .default_value(Some(DEFAULT_MEDIA_ROLE))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stream-properties")
                    .nick("Stream properties")
                    .blurb("Extra node properties, e.g. props,node.nick=cam (values as strings)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("reconnect")
                    .nick("Reconnect")
                    .blurb("Reconnect when the PipeWire daemon comes back (false: error out when it goes away)")
                    .default_value(DEFAULT_RECONNECT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("realtime")
                    .nick("Realtime")
                    .blurb("Give the data-loop thread (the end of each graph cycle, cycles other drivers start) realtime priority where the system allows it (module-rt: RLIMIT_RTPRIO or RTKit), as PipeWire's low-latency audio clients do; off by default (the frame's own cycle runs on the streaming thread either way)")
                    .default_value(DEFAULT_REALTIME)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("remote")
                    .nick("Remote")
                    .blurb("PipeWire socket: a name in the runtime dir or an absolute path (default: PIPEWIRE_REMOTE or pipewire-0)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("consumers, frames-sent, frames-dropped, format, driving, upstream-memory, buffer-type, frames-in-place, frames-copied, buffers-lent, lend-misses, cycles-in-render, recycle-cycles, data-thread-realtime, copies-on-data-thread, trigger-done")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = lock(&self.settings);
        match pspec.name() {
            "node-name" => s.node_name = value.get().unwrap_or(None),
            "node-description" => s.node_description = value.get().unwrap_or(None),
            "media-class" => {
                s.media_class = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| DEFAULT_MEDIA_CLASS.into())
            }
            "media-role" => {
                s.media_role = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| DEFAULT_MEDIA_ROLE.into())
            }
            "stream-properties" => s.stream_properties = value.get().unwrap_or(None),
            "reconnect" => s.reconnect = value.get().unwrap_or(DEFAULT_RECONNECT),
            "realtime" => s.realtime = value.get().unwrap_or(DEFAULT_REALTIME),
            "remote" => s.remote = value.get().unwrap_or(None),
            other => gst::warning!(CAT, imp = self, "unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats().to_value();
        }
        let s = lock(&self.settings);
        match pspec.name() {
            "node-name" => s.node_name.to_value(),
            "node-description" => s.node_description.to_value(),
            "media-class" => s.media_class.to_value(),
            "media-role" => s.media_role.to_value(),
            "stream-properties" => s.stream_properties.to_value(),
            "reconnect" => s.reconnect.to_value(),
            "realtime" => s.realtime.to_value(),
            "remote" => s.remote.to_value(),
            _ => None::<String>.to_value(),
        }
    }
}

impl GstObjectImpl for PwVideoSink {}

impl ElementImpl for PwVideoSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "PipeWire camera sink",
                "Sink/Video",
                "Publishes raw video as a PipeWire Video/Source camera node",
                "vcambridge developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst::Caps::builder("video/x-raw")
                .field("format", gst::List::new(format::supported_gst_formats()))
                .field("width", gst::IntRange::new(1, i32::MAX))
                .field("height", gst::IntRange::new(1, i32::MAX))
                .field(
                    "framerate",
                    gst::FractionRange::new(
                        gst::Fraction::new(0, 1),
                        gst::Fraction::new(i32::MAX, 1),
                    ),
                )
                .build();
            // Same formats in DMA-BUF memory (GStreamer 1.22: a plain `format` field, linear
            // layout). The frames are mapped and copied into PipeWire's memfd buffers.
            let mut dmabuf = caps.copy();
            dmabuf
                .make_mut()
                .set_features_simple(Some(gst::CapsFeatures::new([CAPS_FEATURE_MEMORY_DMABUF])));
            let mut caps = caps;
            caps.make_mut().append(dmabuf);
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("valid sink pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for PwVideoSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let config = self.node_config();
        gst::debug!(CAT, imp = self, "connecting to {}", config.socket_path);
        let shared = Arc::new(Shared::default());
        let handle = LoopHandle::spawn(config, shared.clone(), self.notifier())
            .map_err(|e| gst::error_msg!(gst::ResourceError::OpenWrite, ("{}", e)))?;
        if let Some((spec, alternatives)) = self.upstream_preview() {
            gst::info!(
                CAT,
                imp = self,
                "publishing {} (+{} formats) before the first caps",
                spec.describe(),
                alternatives.len()
            );
            handle.send(Msg::Preview(spec, alternatives));
        }
        let old = std::mem::replace(
            &mut *lock(&self.state),
            State::Started {
                handle,
                shared,
                layout: None,
                info: None,
                dmabuf: false,
                seq: 0,
            },
        );
        // Not expected (BaseSink stops before it starts again), but a loop thread left over
        // would be joined here, without the state lock.
        drop(old);
        Ok(())
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let mut caps = self.obj().static_pad("sink")?.pad_template_caps();
        let preferred = *lock(&self.preferred_format);
        if let Some(f) = preferred {
            let caps = caps.make_mut();
            for s in caps.iter_mut() {
                s.set("format", f);
            }
        }
        Some(match filter {
            Some(filter) => filter.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
            None => caps,
        })
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *lock(&self.preferred_format) = None;
        let old = std::mem::take(&mut *lock(&self.state));
        if let State::Started { handle, .. } = old {
            handle.stop();
        }
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = gst_video::VideoInfo::from_caps(caps)
            .map_err(|_| gst::loggable_error!(CAT, "invalid video caps {caps}"))?;
        let spa = format::spa_format_from_gst(info.format().to_str())
            .ok_or_else(|| gst::loggable_error!(CAT, "unsupported format {}", info.format()))?;
        let layout = FrameLayout {
            spec: VideoSpec {
                format: spa,
                width: info.width(),
                height: info.height(),
                fps_n: info.fps().numer().max(0) as u32,
                fps_d: info.fps().denom().max(1) as u32,
            },
            size: info.size() as u32,
            stride: info.stride()[0].max(0) as u32,
            planes: info.n_planes(),
        };
        let dmabuf = caps
            .features(0)
            .is_some_and(|f| f.contains(CAPS_FEATURE_MEMORY_DMABUF));
        let alternatives = self.upstream_alternatives(&info);
        gst::info!(
            CAT,
            imp = self,
            "publishing {} (+{} other formats upstream can deliver){}",
            layout.spec.describe(),
            alternatives.len(),
            if dmabuf {
                ", from DMA-BUF memory (passed through when the consumer takes DMA-BUFs)"
            } else {
                ""
            }
        );
        let mut state = lock(&self.state);
        let State::Started {
            handle,
            shared,
            layout: current,
            info: current_info,
            dmabuf: current_dmabuf,
            ..
        } = &mut *state
        else {
            return Err(gst::loggable_error!(CAT, "caps set while not started"));
        };
        *current = Some(layout);
        *current_info = Some(Arc::new(info));
        *current_dmabuf = dmabuf;
        // New caps, new upstream pool: forget (and close) the DMA-BUFs of the old one.
        lock(&shared.dmabufs).reset();
        handle.send(Msg::SetLayout(layout, alternatives, dmabuf));
        Ok(())
    }

    fn propose_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        // Frames are copied plane by plane (or passed on with their offsets and strides), so
        // any upstream layout is fine.
        query.add_allocation_meta::<gst_video::VideoMeta>(None);
        let (caps, need_pool) = query.get_owned();
        let Some((caps, info)) = caps.and_then(|c| {
            let info = gst_video::VideoInfo::from_caps(&c).ok()?;
            Some((c, info))
        }) else {
            return self.parent_propose_allocation(query);
        };
        if caps
            .features(0)
            .is_some_and(|f| f.contains(CAPS_FEATURE_MEMORY_DMABUF))
        {
            // Passed-through DMA-BUFs stay with the sink while a consumer reads them: ask
            // upstream's pool for room (no pool of our own: upstream allocates the DMA-BUFs).
            query.add_allocation_pool(None::<&gst::BufferPool>, info.size() as u32, 6, 0);
        } else if need_pool && let Some(spa) = format::spa_format_from_gst(info.format().to_str()) {
            // System memory: lend the stream's own memfd buffers, upstream writes frames
            // where the consumer reads them (see lend.rs).
            let shared = match &*lock(&self.state) {
                State::Started { shared, .. } => Some(shared.clone()),
                State::Stopped => None,
            };
            if let Some(shared) = shared {
                let spec = VideoSpec {
                    format: spa,
                    width: info.width(),
                    height: info.height(),
                    fps_n: info.fps().numer().max(0) as u32,
                    fps_d: info.fps().denom().max(1) as u32,
                };
                let pool = LendPool::new(&shared, spec, info.size());
                query.add_allocation_pool(Some(&pool), info.size() as u32, 0, 0);
            }
        }
        self.parent_propose_allocation(query)
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        // Decide under the state lock, act without it: everything below (DMA-BUF identity,
        // bus messages, clock, mailbox, loop channel, the graph cycle) runs with the guard
        // dropped.
        let (sender, shared, layout, info, dmabuf, seq) = {
            let mut state = lock(&self.state);
            let State::Started {
                handle,
                shared,
                layout,
                info,
                dmabuf,
                seq,
            } = &mut *state
            else {
                return Err(gst::FlowError::Flushing);
            };
            let failed = lock(&shared.failed).clone();
            if let Some(msg) = failed {
                drop(state);
                gst::element_imp_error!(self, gst::ResourceError::Write, ("{}", msg));
                return Err(gst::FlowError::Error);
            }
            let Some(layout) = *layout else {
                return Err(gst::FlowError::NotNegotiated);
            };
            *seq += 1;
            (
                handle.sender(),
                shared.clone(),
                layout,
                info.clone(),
                *dmabuf,
                *seq,
            )
        };
        // Learn upstream's DMA-BUFs even while nobody watches: the DMA-BUF format variant is
        // offered once one is known, before a consumer links.
        let planes = match (dmabuf, info.as_deref()) {
            (true, Some(info)) => dmabuf_planes(buffer, info),
            _ => None,
        };
        if let Some(planes) = &planes {
            let registered = lock(&shared.dmabufs).register(planes);
            match registered {
                Registered::Known | Registered::Off => {}
                Registered::Added => sender.send(Msg::DmaBufsChanged),
                Registered::GaveUp => {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Settings,
                        (
                            "upstream delivered more than {} distinct DMA-BUFs (a new one per \
                             frame?); copying frames into shared memory instead of passing \
                             DMA-BUFs through",
                            MAX_DMABUFS
                        )
                    );
                    sender.send(Msg::DmaBufsChanged);
                }
            }
        }
        if !shared.streaming.load(Ordering::Acquire) {
            // Nobody is watching: drop cheaply, never block upstream.
            shared.frames_dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(gst::FlowSuccess::Ok);
        }
        let pts = self.presentation_time_monotonic(buffer);
        // Planes elsewhere than in the default layout (we accept VideoMeta): copy per plane.
        let info = info.as_deref().and_then(|info| {
            let meta = buffer.meta::<gst_video::VideoMeta>()?;
            let same = meta.offset() == info.offset() && meta.stride() == info.stride();
            (!same).then(|| info.clone())
        });
        // Maybe a buffer our pool lent (default layout, one memory block): where it starts.
        let lent = (!dmabuf && info.is_none() && buffer.n_memory() == 1)
            .then(|| buffer.peek_memory(0))
            .filter(|m| m.size() == layout.size as usize)
            .and_then(|m| m.map_readable().ok().map(|map| map.as_ptr() as usize));
        let frame = PendingFrame {
            buffer: buffer.clone(),
            layout,
            seq,
            pts,
            info,
            dmabuf: planes,
            lent,
            copied: false,
        };
        // Memory we did not lend: copied now, with no lock held, not later in a graph cycle.
        let frame = super::lend::copy_ahead(&shared, frame);
        shared.offer(frame);
        // The frame's graph cycle, here on the streaming thread (`wake.rs`).
        super::wake::run_cycle(&shared);
        Ok(gst::FlowSuccess::Ok)
    }
}
