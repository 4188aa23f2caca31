// SPDX-License-Identifier: MPL-2.0

//! The element: state changes, the two streaming threads (one per output stream) and their
//! pads. What a streaming thread does with an item is decided in [`super::stream`]; the network
//! side is in [`super::server`], properties in [`super::settings`], codec → caps in
//! [`super::caps`], `location` / URI parsing in [`super::location`].
//!
//! No lock guard is held while a thread waits, pushes, posts a message or adds a pad: a
//! streaming thread takes its queue out of its [`StreamState`] to wait on it, decides under the
//! stream lock what to send (a [`Step`]) and sends it after dropping the guard. The file is kept
//! whole (a little over 800 lines) because the state changes, the tasks and the pad turn share
//! one set of locks and flags (`flushing`, `playing`, `stopping`, `pads_changed`) whose rules
//! are easiest to check in one place.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use super::caps::pad_templates;
use super::handoff::{Announced, Item, PostAfterAll};
use super::location::Location;
use super::lock;
use super::server::{RUNTIME, Server, ServerConfig};
use super::settings::{Settings, property_specs};
use super::stats::Stats;
use super::stream::{PadOutput, Step, StreamState, kind_index, kind_name};
use crate::timestamps::{OutputTimeline, OutputTimes, StreamKind};

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "rtmpflvsrc",
        gst::DebugColorFlags::empty(),
        Some("RTMP server source"),
    )
});

/// How long the audio pad waits for the video pad of a publisher that sends video.
const VIDEO_PAD_WAIT: Duration = Duration::from_secs(3);
/// Lateness beyond the pipeline latency after which timestamps are re-anchored to now.
const REANCHOR_MARGIN: Duration = Duration::from_secs(1);
/// How long a streaming thread waits on its queue (or, when not PLAYING, for a wake-up) before
/// it looks at the element's state again.
const RECEIVE_WAIT: Duration = Duration::from_millis(200);

#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started(Server),
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
            streams: KINDS.map(|kind| Mutex::new(StreamState::new(kind))),
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
            lock(stream).attach(rx);
        }
        *lock(&self.state) = State::Started(server);
        Ok(())
    }

    fn stop_server(&self) {
        let state = std::mem::take(&mut *lock(&self.state));
        if let State::Started(server) = state {
            match server.stop() {
                Ok(()) => gst::info!(CAT, imp = self, "Stopped listening"),
                Err(e) => gst::warning!(CAT, imp = self, "Stopped listening: {e}"),
            }
        }
        for stream in &self.streams {
            lock(stream).detach();
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
            let step = lock(&self.streams[kind_index(kind)]).decide_eos_request(self);
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
        let queue = lock(stream).take_queue();
        let Some((mut rx, generation)) = queue else {
            self.pause_task(task);
            return;
        };
        let received = self.receive(kind, &mut rx);
        // Put it back and decide under the lock, act without it.
        let step = {
            let mut s = lock(stream);
            s.put_back(rx, generation);
            match received {
                Received::Woken => return,
                Received::Closed => None,
                Received::Item(item) => Some(s.decide(item, self)),
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

    pub(super) fn eos_on_disconnect(&self) -> bool {
        lock(&self.settings).eos_on_disconnect
    }

    /// The group id of both streams' stream-start events.
    pub(super) fn group_id(&self) -> gst::GroupId {
        *lock(&self.common)
            .group_id
            .get_or_insert_with(gst::GroupId::next)
    }

    pub(super) fn stream_id(&self, kind: StreamKind) -> String {
        format!("{}/{}", self.obj().name(), kind_name(kind))
    }

    /// Output DTS / PTS of a frame of publish `session` on the timeline both streams share,
    /// the group id, and how often the timeline has been re-anchored (moved forward) so far.
    pub(super) fn output_times(
        &self,
        session: u64,
        kind: StreamKind,
        dts_ms: i64,
        composition_ms: i32,
    ) -> (OutputTimes, gst::GroupId, u64) {
        let mut common = lock(&self.common);
        let group_id = *common.group_id.get_or_insert_with(gst::GroupId::next);
        let max_lateness = self.max_lateness();
        common.timeline.set_max_lateness(Some(max_lateness));
        let reanchors = common.timeline.reanchors();
        let times = common
            .timeline
            .map(session, kind, dts_ms, composition_ms, || {
                self.now_running_time()
            });
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
        (times, group_id, common.timeline.reanchors())
    }

    /// A new (inactive) source pad of `kind`.
    pub(super) fn create_pad(&self, kind: StreamKind) -> gst::Pad {
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
        lock(&self.common).combiner.add_pad(pad);
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
            lock(stream).reset_for_restart();
        }
    }
}

impl ObjectImpl for RtmpFlvSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(property_specs);
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        if let Err(e) = lock(&self.settings).set(pspec.name(), value) {
            gst::warning!(CAT, imp = self, "{e}; going to READY will fail");
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        match pspec.name() {
            "bound-port" => match &*lock(&self.state) {
                State::Started(server) => u32::from(server.bound.port()).to_value(),
                State::Stopped => 0u32.to_value(),
            },
            "stats" => lock(&self.stats).snapshot().to_value(),
            name => lock(&self.settings).get(name),
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
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(pad_templates);
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
mod tests;
