// SPDX-License-Identifier: MPL-2.0

//! The element: settings, state, the two streaming threads (one per output stream) and their
//! pads. The network side is in [`super::server`], codec → caps in [`super::caps`], the
//! `location` / URI parsing in [`super::location`].
//!
//! No lock guard is held while a thread waits, pushes, posts a message or adds a pad: a
//! streaming thread takes its queue out of its [`StreamState`] to wait on it, decides under the
//! stream lock what to send (a [`Step`]) and sends it after dropping the guard.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use super::caps::{
    audio_caps, audio_template_caps, placeholder_caps, video_caps, video_template_caps,
};
use super::location::{DEFAULT_APP, DEFAULT_PORT, Location};
use super::lock;
use super::server::{Announced, Item, PostAfterAll, RUNTIME, Server, ServerConfig};
use super::stats::Stats;
use crate::flv::{AudioCodec, AudioTag, VideoCodec, VideoTag};
use crate::timestamps::{OutputTimeline, StreamKind};

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "rtmpflvsrc",
        gst::DebugColorFlags::empty(),
        Some("RTMP server source"),
    )
});

const DEFAULT_ADDRESS: &str = "127.0.0.1";
const DEFAULT_STREAM_KEY: &str = "";
const DEFAULT_EOS_ON_DISCONNECT: bool = false;
const DEFAULT_HANDSHAKE_TIMEOUT_MS: u32 = 5000;
const DEFAULT_IDLE_TIMEOUT_MS: u32 = 10000;
const DEFAULT_LATENCY_MS: u32 = 100;

/// How long the audio pad waits for the video pad of a publisher that sends video.
const VIDEO_PAD_WAIT: Duration = Duration::from_secs(3);
/// Lateness beyond the pipeline latency after which timestamps are re-anchored to now.
const REANCHOR_MARGIN: Duration = Duration::from_secs(1);
/// How long a streaming thread waits on its queue (or, when not PLAYING, for a wake-up) before
/// it looks at the element's state again.
const RECEIVE_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
struct Settings {
    address: String,
    port: u32,
    app: String,
    stream_key: String,
    eos_on_disconnect: bool,
    handshake_timeout_ms: u32,
    idle_timeout_ms: u32,
    latency_ms: u32,
    /// Why the last `location` set could not be used: NULL→READY fails with it (a property
    /// setter cannot fail, and listening on the defaults instead would hide the mistake).
    location_error: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            address: DEFAULT_ADDRESS.to_string(),
            port: DEFAULT_PORT,
            app: DEFAULT_APP.to_string(),
            stream_key: DEFAULT_STREAM_KEY.to_string(),
            eos_on_disconnect: DEFAULT_EOS_ON_DISCONNECT,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            latency_ms: DEFAULT_LATENCY_MS,
            location_error: None,
        }
    }
}

impl Settings {
    fn location(&self) -> Location {
        Location {
            address: self.address.clone(),
            port: self.port,
            app: self.app.clone(),
            stream_key: self.stream_key.clone(),
        }
    }

    fn set_location(&mut self, l: Location) {
        self.location_error = None;
        self.address = l.address;
        self.port = l.port;
        self.app = l.app;
        self.stream_key = l.stream_key;
    }
}

#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started(Server),
}

/// Output pad of one stream kind.
struct PadState {
    pad: gst::Pad,
    caps: Option<gst::Caps>,
    /// Events (stream-start, segment) need to be (re)sent.
    need_events: bool,
}

/// State of one output stream (video or audio). Its streaming thread locks it to decide what
/// to do with an item; state changes lock it while the streaming threads are stopped.
#[derive(Default)]
struct StreamState {
    /// The queue from the network side; taken out while the streaming thread waits on it.
    rx: Option<mpsc::Receiver<Item>>,
    /// Counts servers started and stopped: a queue taken out under an earlier server is not
    /// put back.
    server_generation: u64,
    pad: Option<PadState>,
    /// Current publish session.
    session: u64,
    discont: bool,
    eos: bool,
    warned_no_config: bool,
    /// Codec configuration (sequence header) of the current session.
    video_config: Option<(VideoCodec, Bytes)>,
    audio_config: Option<(AudioCodec, Bytes)>,
}

/// Timestamps and flow of both streams, locked briefly by either streaming thread (after its
/// stream lock when it holds that one).
#[derive(Default)]
struct Common {
    timeline: OutputTimeline,
    combiner: gst_base::UniqueFlowCombiner,
    group_id: Option<gst::GroupId>,
    not_linked_logged: bool,
}

/// The element's pads and whose turn it is to add one.
#[derive(Default)]
struct Pads {
    /// Pads added to the element (`add_pad` returned), video then audio.
    added: [Option<gst::Pad>; 2],
    /// A streaming thread is inside `add_pad`. `pad-added` handlers are not safe against
    /// concurrent emission (gst-launch's delayed links then link and disconnect the same handler
    /// twice), so the other thread waits on [`RtmpFlvSrc::pads_changed`] for its turn.
    adding: bool,
    no_more_pads: bool,
}

/// The streaming tasks and whether they are being stopped.
#[derive(Default)]
struct Tasks {
    list: Vec<StreamTask>,
    stopping: bool,
}

/// One streaming thread per output stream, so that a sink prerolling on one stream does not
/// block the other one.
struct StreamTask {
    task: gst::Task,
    _lock: gst::TaskLock,
}

/// What a streaming thread does with an item: decided under its stream lock, done without it.
enum Step {
    /// Nothing to send (session bookkeeping, a frame before its codec configuration).
    Nothing,
    /// Count this thread in on a message posted once both streaming threads got to it.
    Post(Arc<PostAfterAll>),
    /// Send the pad's pending sticky events, then the buffer.
    Push(PadOutput, gst::Buffer),
    /// End the stream: EOS on the pad (if the stream has one), then count in on the message.
    Eos(Option<PadOutput>, Option<Arc<PostAfterAll>>),
}

/// A pad and what it needs before the next buffer or EOS.
struct PadOutput {
    pad: gst::Pad,
    /// Sticky events to send first (stream-start, caps, segment).
    events: Vec<gst::Event>,
    /// Made for this step: activate it, send `events`, then add it to the element.
    new: bool,
}

/// A media frame from the publisher, about to become a buffer.
struct Frame {
    dts_ms: i64,
    composition_ms: i32,
    delta_unit: bool,
    data: Bytes,
}

pub struct RtmpFlvSrc {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    streams: [Mutex<StreamState>; 2],
    common: Mutex<Common>,
    pads: Mutex<Pads>,
    /// Notified when `pads` changes (a pad added, a turn given back) and when the streaming
    /// threads are woken (stopping, EOS requested), for a thread waiting to add its pad.
    pads_changed: Condvar,
    stats: Arc<Mutex<Stats>>,
    announced: Arc<Announced>,
    tasks: Mutex<Tasks>,
    playing: AtomicBool,
    flushing: AtomicBool,
    /// An EOS event was sent to the element (`gst_element_send_event`, e.g. `gst-launch-1.0 -e`
    /// on Ctrl-C): each streaming thread ends its pad, creating it first if no publisher ever
    /// came, so that every sink downstream gets EOS.
    eos_requested: AtomicBool,
    wake: [Arc<Notify>; 2],
    /// Latency configured on the pipeline (LATENCY event on our pads), in ns.
    pipeline_latency: AtomicU64,
}

#[glib::object_subclass]
impl ObjectSubclass for RtmpFlvSrc {
    const NAME: &'static str = "GstRtmpFlvSrc";
    type Type = super::RtmpFlvSrc;
    type ParentType = gst::Element;
    type Interfaces = (gst::URIHandler,);

    fn new() -> Self {
        RtmpFlvSrc {
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(State::default()),
            streams: Default::default(),
            common: Mutex::new(Common::default()),
            pads: Mutex::new(Pads::default()),
            pads_changed: Condvar::new(),
            stats: Arc::new(Mutex::new(Stats::default())),
            announced: Arc::new(Announced::default()),
            tasks: Mutex::new(Tasks::default()),
            playing: AtomicBool::new(false),
            flushing: AtomicBool::new(true),
            eos_requested: AtomicBool::new(false),
            wake: [Arc::new(Notify::new()), Arc::new(Notify::new())],
            pipeline_latency: AtomicU64::new(0),
        }
    }
}

const KINDS: [StreamKind; 2] = [StreamKind::Video, StreamKind::Audio];

fn kind_index(kind: StreamKind) -> usize {
    match kind {
        StreamKind::Video => 0,
        StreamKind::Audio => 1,
    }
}

fn kind_name(kind: StreamKind) -> &'static str {
    match kind {
        StreamKind::Video => "video",
        StreamKind::Audio => "audio",
    }
}

enum Received {
    Item(Item),
    Woken,
    Closed,
}

impl RtmpFlvSrc {
    fn start_server(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        if let Some(e) = &settings.location_error {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                (
                    "Invalid location: {}. Use rtmp://ADDRESS:PORT/APP[/KEY] (or set address, port, \
                     app and stream-key).",
                    e
                )
            ));
        }
        self.announced.video.store(false, Ordering::SeqCst);
        *lock(&self.announced.metadata) = None;
        let config = ServerConfig {
            address: settings.address.clone(),
            port: settings.port,
            app: settings.app.clone(),
            stream_key: settings.stream_key.clone(),
            handshake_timeout: Duration::from_millis(u64::from(
                settings.handshake_timeout_ms.max(1),
            )),
            idle_timeout: Duration::from_millis(u64::from(settings.idle_timeout_ms.max(1))),
            eos_on_disconnect: settings.eos_on_disconnect,
        };
        let (server, queues) = Server::start(
            config,
            self.obj().downgrade(),
            self.announced.clone(),
            self.stats.clone(),
        )?;
        let bound = server.bound;
        gst::info!(
            CAT,
            imp = self,
            "Listening on {bound} for rtmp://{bound}/{}",
            settings.app
        );
        if bound.ip().is_unspecified() && settings.stream_key.is_empty() {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Settings,
                (
                    "Listening on all interfaces ({}) without a stream-key: anyone who can reach \
                     port {} can publish. Set stream-key (or listen on 127.0.0.1).",
                    bound.ip(),
                    bound.port()
                )
            );
        }

        for (stream, rx) in self.streams.iter().zip(queues) {
            let mut stream = lock(stream);
            stream.rx = Some(rx);
            stream.server_generation += 1;
            stream.session = 0;
            stream.video_config = None;
            stream.audio_config = None;
        }
        *lock(&self.state) = State::Started(server);
        Ok(())
    }

    fn stop_server(&self) {
        let state = std::mem::take(&mut *lock(&self.state));
        if let State::Started(server) = state {
            if server.stop() {
                gst::info!(CAT, imp = self, "Stopped listening");
            } else {
                gst::warning!(
                    CAT,
                    imp = self,
                    "Stopped listening; the listener task was still running when NULL was reached"
                );
            }
        }
        for stream in &self.streams {
            let mut stream = lock(stream);
            stream.rx = None;
            stream.server_generation += 1;
        }
    }

    fn start_tasks(&self) -> Result<(), gst::StateChangeError> {
        let mut guard = lock(&self.tasks);
        guard.stopping = false;
        let tasks = &mut guard.list;
        if tasks.is_empty() {
            for kind in KINDS {
                let weak = self.obj().downgrade();
                let task_lock = gst::TaskLock::new();
                let task = gst::Task::builder(move |task| {
                    let Some(element) = weak.upgrade() else {
                        let _ = task.pause();
                        return;
                    };
                    element.imp().iterate(task, kind);
                })
                .lock(&task_lock)
                .build();
                tasks.push(StreamTask {
                    task,
                    _lock: task_lock,
                });
            }
        }
        for t in tasks.iter() {
            t.task.start().map_err(|_| gst::StateChangeError)?;
        }
        Ok(())
    }

    fn stop_tasks(&self) {
        let tasks = {
            let mut guard = lock(&self.tasks);
            // Under the same lock as pause_task(): a task pausing itself must not turn this
            // stop back into a pause (the join below would then wait forever).
            guard.stopping = true;
            for t in &guard.list {
                let _ = t.task.stop();
            }
            std::mem::take(&mut guard.list)
        };
        self.wake_tasks();
        for t in tasks {
            let _ = t.task.join();
        }
    }

    /// Counts this streaming thread in on `message` and posts it if it was the last one.
    fn arrive_and_post(&self, message: &PostAfterAll) {
        if let Some(structure) = message.arrive() {
            let obj = self.obj();
            let _ = obj.post_message(gst::message::Element::builder(structure).src(&*obj).build());
        }
    }

    /// Whether the streaming threads are running (PLAYING).
    pub(super) fn streaming_active(&self) -> bool {
        self.playing.load(Ordering::SeqCst)
    }

    /// Pauses a streaming task from inside its function, unless the element is stopping it.
    fn pause_task(&self, task: &gst::Task) {
        let guard = lock(&self.tasks);
        if !guard.stopping {
            let _ = task.pause();
        }
    }

    /// Wakes both streaming threads: from their queue wait, and from waiting to add a pad.
    fn wake_tasks(&self) {
        for wake in &self.wake {
            wake.notify_one();
        }
        // Taking the lock orders this after a waiter's check of `flushing` / `eos_requested`.
        drop(lock(&self.pads));
        self.pads_changed.notify_all();
    }

    fn receive(&self, kind: StreamKind, rx: &mut mpsc::Receiver<Item>) -> Received {
        let wake = self.wake[kind_index(kind)].clone();
        RUNTIME.block_on(async move {
            tokio::select! {
                biased;
                _ = wake.notified() => Received::Woken,
                item = rx.recv() => match item {
                    Some(item) => Received::Item(item),
                    None => Received::Closed,
                },
                _ = tokio::time::sleep(RECEIVE_WAIT) => Received::Woken,
            }
        })
    }

    /// One iteration of the streaming task of `kind`.
    fn iterate(&self, task: &gst::Task, kind: StreamKind) {
        if self.flushing.load(Ordering::SeqCst) {
            self.pause_task(task);
            return;
        }
        if self.eos_requested.load(Ordering::SeqCst) {
            let step = self.decide_eos_request(kind);
            let _ = self.act(kind, step);
            self.pause_task(task);
            return;
        }
        if !self.playing.load(Ordering::SeqCst) {
            let wake = self.wake[kind_index(kind)].clone();
            RUNTIME.block_on(async move {
                let _ = tokio::time::timeout(RECEIVE_WAIT, wake.notified()).await;
            });
            return;
        }

        let stream = &self.streams[kind_index(kind)];
        // Take the queue out under the lock, wait on it without.
        let (rx, generation) = {
            let mut s = lock(stream);
            (s.rx.take(), s.server_generation)
        };
        let Some(mut rx) = rx else {
            self.pause_task(task);
            return;
        };
        let received = self.receive(kind, &mut rx);
        // Put it back and decide under the lock, act without it.
        let step = {
            let mut s = lock(stream);
            if s.server_generation == generation {
                s.rx = Some(rx);
            }
            match received {
                Received::Woken => return,
                Received::Closed => None,
                Received::Item(item) => Some(self.decide(&mut s, kind, item)),
            }
        };
        let Some(step) = step else {
            self.pause_task(task);
            return;
        };
        if let Err(err) = self.act(kind, step) {
            self.handle_flow_error(task, kind, err);
        }
    }

    fn handle_flow_error(&self, task: &gst::Task, kind: StreamKind, err: gst::FlowError) {
        match err {
            gst::FlowError::Flushing => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "{} flushing, pausing task",
                    kind_name(kind)
                );
            }
            gst::FlowError::Eos => {
                gst::debug!(CAT, imp = self, "{} EOS, pausing task", kind_name(kind));
            }
            err => {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("Internal data flow error."),
                    ["streaming task paused, reason {:?}", err]
                );
                let pads: Vec<gst::Pad> =
                    lock(&self.pads).added.iter().flatten().cloned().collect();
                for pad in pads {
                    pad.push_event(gst::event::Eos::new());
                }
            }
        }
        self.pause_task(task);
    }

    fn now_running_time(&self) -> u64 {
        let obj = self.obj();
        match (obj.clock(), obj.base_time()) {
            (Some(clock), Some(base)) => clock.time().checked_sub(base).map_or(0, |t| t.nseconds()),
            _ => 0,
        }
    }

    fn pad_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        if let gst::EventView::Latency(l) = event.view() {
            gst::debug!(CAT, obj = pad, "Pipeline latency {}", l.latency());
            self.pipeline_latency
                .store(l.latency().nseconds(), Ordering::SeqCst);
        }
        gst::Pad::event_default(pad, Some(&*self.obj()), event)
    }

    /// Lateness after which the timestamp mapping moves forward: syncing sinks hold buffers
    /// until their running time plus the pipeline latency, and our streaming threads are paced
    /// by them, so only lateness well beyond that means a stall.
    fn max_lateness(&self) -> u64 {
        let own = u64::from(lock(&self.settings).latency_ms) * 1_000_000;
        own.max(self.pipeline_latency.load(Ordering::SeqCst)) + REANCHOR_MARGIN.as_nanos() as u64
    }

    fn pad_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let latency = u64::from(lock(&self.settings).latency_ms);
            q.set(
                true,
                gst::ClockTime::from_mseconds(latency),
                gst::ClockTime::NONE,
            );
            return true;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    /// What to do with `item`; called with the stream's lock held, so it only updates the
    /// stream's state and prepares what [`Self::act`] sends.
    fn decide(&self, stream: &mut StreamState, kind: StreamKind, item: Item) -> Step {
        if stream.eos {
            return match item {
                Item::SessionEnd {
                    message: Some(m), ..
                } => Step::Post(m),
                _ => Step::Nothing,
            };
        }
        match item {
            Item::SessionStart { session, publisher } => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "{}: session {session} from {publisher} starts",
                    kind_name(kind)
                );
                stream.session = session;
                stream.discont = true;
                stream.video_config = None;
                stream.audio_config = None;
                Step::Nothing
            }
            Item::SessionEnd { reason, message } => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "{}: session ended: {reason}",
                    kind_name(kind)
                );
                if !lock(&self.settings).eos_on_disconnect {
                    return message.map_or(Step::Nothing, Step::Post);
                }
                stream.eos = true;
                Step::Eos(self.eos_output(stream, kind, false), message)
            }
            Item::Video { dts_ms, tag, .. } => match tag {
                VideoTag::SequenceStart { codec, config } => {
                    stream.video_config = Some((codec, config));
                    Step::Nothing
                }
                VideoTag::Frame {
                    codec,
                    keyframe,
                    composition_time,
                    data,
                } => {
                    let config = stream
                        .video_config
                        .as_ref()
                        .filter(|(c, _)| *c == codec)
                        .map(|(_, b)| b.clone());
                    let caps = video_caps(codec, config.as_ref());
                    let frame = Frame {
                        dts_ms,
                        composition_ms: composition_time,
                        delta_unit: !keyframe,
                        data,
                    };
                    self.frame_step(stream, kind, codec.name(), caps, frame)
                }
                _ => Step::Nothing,
            },
            Item::Audio { dts_ms, tag, .. } => match tag {
                AudioTag::SequenceStart { codec, config } => {
                    stream.audio_config = Some((codec, config));
                    Step::Nothing
                }
                AudioTag::Frame {
                    codec,
                    params,
                    data,
                } => {
                    let config = stream
                        .audio_config
                        .as_ref()
                        .filter(|(c, _)| *c == codec)
                        .map(|(_, b)| b.clone());
                    let caps = audio_caps(codec, config.as_ref(), params);
                    let frame = Frame {
                        dts_ms,
                        composition_ms: 0,
                        delta_unit: false,
                        data,
                    };
                    self.frame_step(stream, kind, codec.name(), caps, frame)
                }
                _ => Step::Nothing,
            },
        }
    }

    /// An EOS event was sent to the element: end this stream's pad with EOS. A stream that
    /// never had a publisher gets its pad now, with placeholder caps of the most common codec
    /// (decoders accept caps followed by EOS), so the branch behind it (a decoder, a sink) ends
    /// too and the pipeline posts EOS instead of waiting for a publisher forever.
    fn decide_eos_request(&self, kind: StreamKind) -> Step {
        let mut stream = lock(&self.streams[kind_index(kind)]);
        if stream.eos {
            return Step::Nothing;
        }
        stream.eos = true;
        gst::info!(CAT, imp = self, "{}: EOS requested", kind_name(kind));
        Step::Eos(self.eos_output(&mut stream, kind, true), None)
    }

    /// The stream's pad, ready for EOS: with its last caps (placeholder caps if it never had
    /// any) in case its sticky events must be sent again. `None` if the stream has no pad and
    /// `create` is false.
    fn eos_output(
        &self,
        stream: &mut StreamState,
        kind: StreamKind,
        create: bool,
    ) -> Option<PadOutput> {
        if stream.pad.is_none() && !create {
            return None;
        }
        let caps = stream
            .pad
            .as_ref()
            .and_then(|ps| ps.caps.clone())
            .unwrap_or_else(|| placeholder_caps(kind));
        let group_id = *lock(&self.common)
            .group_id
            .get_or_insert_with(gst::GroupId::next);
        Some(self.pad_output(stream, kind, caps, group_id))
    }

    /// A buffer for `frame` with its output timestamps, and the pad to push it on.
    fn frame_step(
        &self,
        stream: &mut StreamState,
        kind: StreamKind,
        codec: &'static str,
        caps: Option<gst::Caps>,
        frame: Frame,
    ) -> Step {
        let Some(caps) = caps else {
            if !stream.warned_no_config {
                stream.warned_no_config = true;
                gst::warning!(
                    CAT,
                    imp = self,
                    "Dropping {codec} frame: no sequence header (codec configuration) yet"
                );
            }
            return Step::Nothing;
        };
        stream.warned_no_config = false;

        let (times, group_id) = {
            let mut common = lock(&self.common);
            let group_id = *common.group_id.get_or_insert_with(gst::GroupId::next);
            let max_lateness = self.max_lateness();
            common.timeline.set_max_lateness(Some(max_lateness));
            let reanchors = common.timeline.reanchors();
            let times = common.timeline.map(
                stream.session,
                kind,
                frame.dts_ms,
                frame.composition_ms,
                || self.now_running_time(),
            );
            if common.timeline.reanchors() != reanchors {
                gst::debug!(
                    CAT,
                    imp = self,
                    "{} buffer arrived more than {} late: timestamps moved forward to {}",
                    kind_name(kind),
                    gst::ClockTime::from_nseconds(max_lateness),
                    gst::ClockTime::from_nseconds(times.dts)
                );
            }
            (times, group_id)
        };

        let out = self.pad_output(stream, kind, caps, group_id);

        let mut buffer = gst::Buffer::from_slice(frame.data);
        {
            let b = buffer.get_mut().expect("new buffer is writable");
            b.set_dts(gst::ClockTime::from_nseconds(times.dts));
            b.set_pts(gst::ClockTime::from_nseconds(times.pts));
            if frame.delta_unit {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
            if stream.discont {
                b.set_flags(gst::BufferFlags::DISCONT);
                stream.discont = false;
            }
        }
        Step::Push(out, buffer)
    }

    /// The stream's pad (made now if it has none) and the sticky events it needs before data
    /// with `caps`.
    fn pad_output(
        &self,
        stream: &mut StreamState,
        kind: StreamKind,
        caps: gst::Caps,
        group_id: gst::GroupId,
    ) -> PadOutput {
        let new = stream.pad.is_none();
        let ps = stream.pad.get_or_insert_with(|| PadState {
            pad: self.create_pad(kind),
            caps: None,
            need_events: true,
        });
        let mut events = Vec::new();
        if ps.need_events {
            let stream_id = format!("{}/{}", self.obj().name(), kind_name(kind));
            events.push(
                gst::event::StreamStart::builder(&stream_id)
                    .group_id(group_id)
                    .build(),
            );
            ps.caps = None;
        }
        if ps.caps.as_ref() != Some(&caps) {
            gst::info!(CAT, obj = ps.pad, "Caps {caps}");
            events.push(gst::event::Caps::new(&caps));
            ps.caps = Some(caps);
        }
        if ps.need_events {
            let segment = gst::FormattedSegment::<gst::ClockTime>::new();
            events.push(gst::event::Segment::new(&segment));
            ps.need_events = false;
        }
        PadOutput {
            pad: ps.pad.clone(),
            events,
            new,
        }
    }

    /// A new (inactive) source pad of `kind`.
    fn create_pad(&self, kind: StreamKind) -> gst::Pad {
        let name = kind_name(kind);
        let templ = self
            .obj()
            .pad_template(name)
            .expect("pad templates are registered");
        gst::Pad::builder_from_template(&templ)
            .name(name)
            .query_function(|pad, parent, query| {
                RtmpFlvSrc::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.pad_query(pad, query),
                )
            })
            .event_function(|pad, parent, event| {
                RtmpFlvSrc::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.pad_event(pad, event),
                )
            })
            .build()
    }

    /// Does what [`Self::decide`] prepared; no lock is held while pushing or adding a pad.
    fn act(&self, kind: StreamKind, step: Step) -> Result<(), gst::FlowError> {
        match step {
            Step::Nothing => Ok(()),
            Step::Post(message) => {
                self.arrive_and_post(&message);
                Ok(())
            }
            Step::Push(out, buffer) => {
                let pad = self.send_pad_output(kind, out);
                gst::trace!(CAT, obj = pad, "Pushing {buffer:?}");
                let res = pad.push(buffer);
                self.combine_flow(&pad, res)
            }
            Step::Eos(out, message) => {
                if let Some(out) = out {
                    let pad = self.send_pad_output(kind, out);
                    gst::info!(CAT, obj = pad, "Ending the stream with EOS");
                    pad.push_event(gst::event::Eos::new());
                }
                if let Some(message) = message {
                    self.arrive_and_post(&message);
                }
                Err(gst::FlowError::Eos)
            }
        }
    }

    /// Activates a new pad, sends the pending sticky events and adds a new pad to the element.
    fn send_pad_output(&self, kind: StreamKind, out: PadOutput) -> gst::Pad {
        if out.new {
            let _ = out.pad.set_active(true);
        }
        for event in out.events {
            out.pad.push_event(event);
        }
        if out.new {
            self.add_stream_pad(kind, &out.pad);
        }
        out.pad
    }

    fn combine_flow(
        &self,
        pad: &gst::Pad,
        res: Result<gst::FlowSuccess, gst::FlowError>,
    ) -> Result<(), gst::FlowError> {
        let mut common = lock(&self.common);
        match common.combiner.update_pad_flow(pad, res) {
            Err(gst::FlowError::NotLinked) => {
                if !common.not_linked_logged {
                    common.not_linked_logged = true;
                    gst::info!(CAT, imp = self, "No linked pads, dropping data");
                }
                Ok(())
            }
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }

    /// Adds a pad to the element, one at a time and audio after video (see
    /// [`Self::wait_for_video_pad`]), and signals no-more-pads when all are there. `add_pad`
    /// runs the application's `pad-added` handlers; no lock is held meanwhile, the other
    /// streaming thread waits for its turn on `pads_changed`.
    fn add_stream_pad(&self, kind: StreamKind, pad: &gst::Pad) {
        lock(&self.common).combiner.add_pad(pad);
        {
            let mut pads = lock(&self.pads);
            if kind == StreamKind::Audio {
                pads = self.wait_for_video_pad(pads);
            }
            // As long as the other thread's handlers run (like the mutex this replaces): two
            // concurrent `pad-added` emissions are what must not happen.
            while pads.adding {
                pads = self
                    .pads_changed
                    .wait(pads)
                    .unwrap_or_else(|e| e.into_inner());
            }
            pads.adding = true;
        }
        gst::info!(CAT, imp = self, "Adding pad {}", pad.name());
        let _ = self.obj().add_pad(pad);
        {
            let mut pads = lock(&self.pads);
            pads.adding = false;
            // Only now: the audio pad waits for this, and `pad-added` handlers (which link the
            // video branch into the pipeline) must have run before audio can reach EOS.
            pads.added[kind_index(kind)] = Some(pad.clone());
        }
        self.pads_changed.notify_all();
        self.maybe_no_more_pads();
    }

    /// Adds pads in a predictable order: when the publisher sends video, the audio pad waits
    /// for the video pad (woken when it is added or when the element stops streaming, at most
    /// [`VIDEO_PAD_WAIT`]), so that `rtmpflvsrc ! decodebin` links video.
    fn wait_for_video_pad<'a>(&self, mut pads: MutexGuard<'a, Pads>) -> MutexGuard<'a, Pads> {
        let deadline = Instant::now() + VIDEO_PAD_WAIT;
        loop {
            if pads.added[kind_index(StreamKind::Video)].is_some()
                || self.flushing.load(Ordering::SeqCst)
                || !self.video_expected()
            {
                return pads;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                gst::debug!(
                    CAT,
                    imp = self,
                    "No video pad after {VIDEO_PAD_WAIT:?}: adding the audio pad"
                );
                return pads;
            }
            pads = match self.pads_changed.wait_timeout(pads, left) {
                Ok((pads, _)) => pads,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Whether a video pad is coming: the publisher sent or announced video, or EOS was
    /// requested (the video thread then adds its pad, with placeholder caps if no publisher
    /// came).
    fn video_expected(&self) -> bool {
        self.announced.video.load(Ordering::SeqCst)
            || self.eos_requested.load(Ordering::SeqCst)
            || lock(&self.announced.metadata).is_some_and(|(v, _)| v)
    }

    /// Signals no-more-pads once every stream the publisher announced has its pad.
    fn maybe_no_more_pads(&self) {
        let expected = *lock(&self.announced.metadata);
        let done = {
            let mut pads = lock(&self.pads);
            let video = pads.added[kind_index(StreamKind::Video)].is_some();
            let audio = pads.added[kind_index(StreamKind::Audio)].is_some();
            let all = (video && audio)
                || expected.is_some_and(|(has_video, has_audio)| {
                    (!has_video || video) && (!has_audio || audio)
                });
            if all && !pads.no_more_pads {
                pads.no_more_pads = true;
                true
            } else {
                false
            }
        };
        if done {
            gst::debug!(CAT, imp = self, "No more pads");
            self.obj().no_more_pads();
        }
    }

    fn reset_streams_for_restart(&self) {
        {
            let mut common = lock(&self.common);
            common.timeline.reset();
            common.combiner.reset();
        }
        for stream in &self.streams {
            let mut stream = lock(stream);
            stream.eos = false;
            stream.discont = true;
            if let Some(ps) = &mut stream.pad {
                ps.need_events = true;
            }
        }
    }
}

impl ObjectImpl for RtmpFlvSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("address")
                    .nick("Address")
                    .blurb("Address to listen on (0.0.0.0 / :: for all interfaces)")
                    .default_value(Some(DEFAULT_ADDRESS))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("port")
                    .nick("Port")
                    .blurb("TCP port to listen on (0 = pick a free port, see bound-port)")
                    .maximum(65535)
                    .default_value(DEFAULT_PORT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("bound-port")
                    .nick("Bound port")
                    .blurb("The port actually listened on (valid from READY on, else 0)")
                    .maximum(65535)
                    .read_only()
                    .build(),
                glib::ParamSpecString::builder("location")
                    .nick("Location")
                    .blurb("rtmp://ADDR:PORT/APP[/KEY]: sets address, port, app and stream-key")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("app")
                    .nick("Application")
                    .blurb("RTMP application name publishers must connect to")
                    .default_value(Some(DEFAULT_APP))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("stream-key")
                    .nick("Stream key")
                    .blurb("Stream key publishers must use (empty = any key)")
                    .default_value(Some(DEFAULT_STREAM_KEY))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("eos-on-disconnect")
                    .nick("EOS on disconnect")
                    .blurb("Send EOS when the publisher leaves instead of waiting for the next one")
                    .default_value(DEFAULT_EOS_ON_DISCONNECT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("handshake-timeout")
                    .nick("Handshake timeout")
                    .blurb("Milliseconds a new connection has, from connecting, to start publishing (handshake, connect, publish); trickled bytes do not extend it")
                    .minimum(1)
                    .default_value(DEFAULT_HANDSHAKE_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("idle-timeout")
                    .nick("Idle timeout")
                    .blurb("A publisher that delivers less than 1 KiB of audio/video within this many milliseconds is dropped")
                    .minimum(1)
                    .default_value(DEFAULT_IDLE_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("latency")
                    .nick("Latency")
                    .blurb("Minimum latency reported to the pipeline, in milliseconds")
                    .default_value(DEFAULT_LATENCY_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("rtmpflvsrc-stats: publisher, app, stream-key, video-codec, audio-codec, bytes, video-frames, audio-frames, bitrate, connections, rejected")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = lock(&self.settings);
        if matches!(
            pspec.name(),
            "address" | "port" | "app" | "stream-key" | "location"
        ) {
            settings.location_error = None;
        }
        match pspec.name() {
            "address" => {
                settings.address = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
            }
            "port" => settings.port = value.get().expect("type checked upstream"),
            "location" => {
                let location: Option<String> = value.get().expect("type checked upstream");
                if let Some(location) = location {
                    match Location::parse(&location) {
                        Ok(l) => settings.set_location(l),
                        Err(e) => {
                            gst::warning!(
                                CAT,
                                imp = self,
                                "Invalid location: {e}; going to READY will fail"
                            );
                            settings.location_error = Some(e);
                        }
                    }
                }
            }
            "app" => {
                settings.app = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_default();
            }
            "stream-key" => {
                settings.stream_key = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_default();
            }
            "eos-on-disconnect" => {
                settings.eos_on_disconnect = value.get().expect("type checked upstream")
            }
            "handshake-timeout" => {
                settings.handshake_timeout_ms = value.get().expect("type checked upstream")
            }
            "idle-timeout" => {
                settings.idle_timeout_ms = value.get().expect("type checked upstream")
            }
            "latency" => settings.latency_ms = value.get().expect("type checked upstream"),
            other => unimplemented!("property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "bound-port" => match &*lock(&self.state) {
                State::Started(server) => u32::from(server.bound.port()).to_value(),
                State::Stopped => 0u32.to_value(),
            },
            "stats" => lock(&self.stats).snapshot().to_value(),
            name => {
                let settings = lock(&self.settings);
                match name {
                    "address" => settings.address.to_value(),
                    "port" => settings.port.to_value(),
                    "location" => settings.location().url().to_value(),
                    "app" => settings.app.to_value(),
                    "stream-key" => settings.stream_key.to_value(),
                    "eos-on-disconnect" => settings.eos_on_disconnect.to_value(),
                    "handshake-timeout" => settings.handshake_timeout_ms.to_value(),
                    "idle-timeout" => settings.idle_timeout_ms.to_value(),
                    "latency" => settings.latency_ms.to_value(),
                    other => unimplemented!("property {other}"),
                }
            }
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_element_flags(gst::ElementFlags::SOURCE);
    }
}

impl GstObjectImpl for RtmpFlvSrc {}

impl ElementImpl for RtmpFlvSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "RTMP server source",
                "Source/Network",
                "Accepts RTMP / Enhanced RTMP publishers and outputs their video and audio",
                "vcambridge developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let video = video_template_caps();
            let audio = audio_template_caps();
            vec![
                gst::PadTemplate::new(
                    "video",
                    gst::PadDirection::Src,
                    gst::PadPresence::Sometimes,
                    &video,
                )
                .expect("valid video template"),
                gst::PadTemplate::new(
                    "audio",
                    gst::PadDirection::Src,
                    gst::PadPresence::Sometimes,
                    &audio,
                )
                .expect("valid audio template"),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }

    /// EOS sent to the element (what `gst-launch-1.0 -e` and applications do to stop cleanly):
    /// the streaming threads end both pads, with or without a publisher.
    fn send_event(&self, event: gst::Event) -> bool {
        if event.type_() != gst::EventType::Eos {
            return self.parent_send_event(event);
        }
        gst::debug!(CAT, imp = self, "EOS requested");
        self.eos_requested.store(true, Ordering::SeqCst);
        self.wake_tasks();
        // A task that paused itself (its channel closed) must run once more to end its pad.
        if self.playing.load(Ordering::SeqCst) {
            let guard = lock(&self.tasks);
            if !guard.stopping {
                for t in &guard.list {
                    let _ = t.task.start();
                }
            }
        }
        true
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        gst::debug!(CAT, imp = self, "Changing state {transition:?}");
        match transition {
            gst::StateChange::NullToReady => {
                if let Err(err) = self.start_server() {
                    self.post_error_message(err);
                    return Err(gst::StateChangeError);
                }
            }
            gst::StateChange::ReadyToPaused => {
                self.eos_requested.store(false, Ordering::SeqCst);
                self.reset_streams_for_restart();
                self.flushing.store(false, Ordering::SeqCst);
                self.playing.store(false, Ordering::SeqCst);
            }
            gst::StateChange::PausedToPlaying => {
                self.playing.store(true, Ordering::SeqCst);
                self.start_tasks()?;
            }
            gst::StateChange::PlayingToPaused => {
                self.playing.store(false, Ordering::SeqCst);
                self.wake_tasks();
            }
            gst::StateChange::PausedToReady => {
                self.playing.store(false, Ordering::SeqCst);
                self.flushing.store(true, Ordering::SeqCst);
                self.wake_tasks();
            }
            _ => {}
        }

        let mut success = self.parent_change_state(transition)?;

        match transition {
            gst::StateChange::ReadyToPaused | gst::StateChange::PlayingToPaused => {
                success = gst::StateChangeSuccess::NoPreroll;
            }
            gst::StateChange::PausedToReady => {
                self.stop_tasks();
            }
            gst::StateChange::ReadyToNull => {
                self.stop_tasks();
                self.stop_server();
            }
            _ => {}
        }
        Ok(success)
    }
}

impl URIHandlerImpl for RtmpFlvSrc {
    const URI_TYPE: gst::URIType = gst::URIType::Src;

    fn protocols() -> &'static [&'static str] {
        &["rtmpserver"]
    }

    fn uri(&self) -> Option<String> {
        Some(lock(&self.settings).location().uri())
    }

    fn set_uri(&self, uri: &str) -> Result<(), glib::Error> {
        if !matches!(*lock(&self.state), State::Stopped) {
            return Err(glib::Error::new(
                gst::URIError::BadState,
                "Changing the URI is only possible in the NULL state",
            ));
        }
        let location = Location::from_uri(uri)?;
        lock(&self.settings).set_location(location);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() {
        super::super::init_for_tests();
    }

    fn element(port: u32) -> gst::Element {
        gst::ElementFactory::make("rtmpflvsrc")
            .property("port", port)
            .build()
            .expect("rtmpflvsrc")
    }

    #[test]
    fn bound_port_bind_failure_and_null_frees_the_port() {
        init();
        let a = element(0);
        assert_eq!(a.property::<u32>("bound-port"), 0);
        a.set_state(gst::State::Ready).expect("READY");
        let port = a.property::<u32>("bound-port");
        assert_ne!(port, 0);

        // A second element on the same port fails with an error naming address:port.
        let pipeline = gst::Pipeline::new();
        let b = element(port);
        pipeline.add(&b).unwrap();
        assert!(pipeline.set_state(gst::State::Ready).is_err());
        let bus = pipeline.bus().unwrap();
        let msg = bus
            .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
            .expect("error message");
        let gst::MessageView::Error(err) = msg.view() else {
            unreachable!()
        };
        let text = err.error().to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("port=0"), "{text}");
        pipeline.set_state(gst::State::Null).unwrap();

        // NULL frees the port at once.
        a.set_state(gst::State::Null).unwrap();
        assert_eq!(a.property::<u32>("bound-port"), 0);
        std::net::TcpListener::bind(("127.0.0.1", port as u16)).expect("port free after NULL");
    }

    #[test]
    fn state_cycles_never_hang() {
        init();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pipeline = gst::Pipeline::new();
            let src = element(0);
            pipeline.add(&src).unwrap();
            for i in 0..100 {
                pipeline.set_state(gst::State::Playing).unwrap();
                if i % 3 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let target = if i % 2 == 0 {
                    gst::State::Null
                } else {
                    gst::State::Ready
                };
                pipeline.set_state(target).unwrap();
            }
            pipeline.set_state(gst::State::Null).unwrap();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("100 PLAYING -> READY/NULL cycles within 30 s (a stuck task join?)");
    }

    /// The first error or warning `pipeline` posted (within 1 s), as text.
    fn first_message(pipeline: &gst::Pipeline, kind: gst::MessageType) -> Option<String> {
        let msg = pipeline
            .bus()
            .unwrap()
            .timed_pop_filtered(gst::ClockTime::from_seconds(1), &[kind])?;
        Some(match msg.view() {
            gst::MessageView::Error(e) => e.error().to_string(),
            gst::MessageView::Warning(w) => w.error().to_string(),
            _ => unreachable!(),
        })
    }

    #[test]
    fn invalid_location_fails_at_ready_naming_the_problem() {
        init();
        for (location, needle) in [
            ("garbage", "'garbage' is not an rtmp://"),
            ("rtmp://127.0.0.1:99999/x", "invalid port '99999'"),
            ("http://127.0.0.1:1935/live", "is not an rtmp://"),
        ] {
            let pipeline = gst::Pipeline::new();
            let e = element(0);
            pipeline.add(&e).unwrap();
            e.set_property("location", location);
            assert!(
                pipeline.set_state(gst::State::Ready).is_err(),
                "{location}: READY must fail instead of listening on the defaults"
            );
            let text = first_message(&pipeline, gst::MessageType::Error).expect("an error");
            assert!(
                text.contains("Invalid location") && text.contains(needle),
                "{location}: {text}"
            );
            pipeline.set_state(gst::State::Null).unwrap();
            // A good location (or address/port) afterwards clears the mistake.
            e.set_property("location", "rtmp://127.0.0.1:0/live");
            pipeline
                .set_state(gst::State::Ready)
                .expect("READY with a good location");
            pipeline.set_state(gst::State::Null).unwrap();
        }
    }

    #[test]
    fn all_interfaces_without_stream_key_warns() {
        init();
        for (key, warns) in [("", true), ("secret", false)] {
            let pipeline = gst::Pipeline::new();
            let e = element(0);
            pipeline.add(&e).unwrap();
            e.set_property("address", "0.0.0.0");
            e.set_property("stream-key", key);
            pipeline.set_state(gst::State::Ready).expect("READY");
            let warning = first_message(&pipeline, gst::MessageType::Warning);
            pipeline.set_state(gst::State::Null).unwrap();
            if warns {
                let text = warning.expect("a warning for 0.0.0.0 without a stream key");
                assert!(
                    text.contains("without a stream-key") && text.contains("Set stream-key"),
                    "{text}"
                );
            } else {
                assert_eq!(warning, None);
            }
        }
    }
}
