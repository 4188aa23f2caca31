// SPDX-License-Identifier: MPL-2.0

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, mpsc};

use super::server::{
    Announced, Item, MAX_QUEUED_BYTES, PostAfterAll, Server, Shared, Stats, lock, serve,
};
use crate::flv::{self, AudioCodec, AudioTag, LegacyAudioParams, VideoCodec, VideoTag};
use crate::session::{Limits, SessionConfig};
use crate::timestamps::{OutputTimeline, StreamKind};

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "rtmpflvsrc",
        gst::DebugColorFlags::empty(),
        Some("RTMP server source"),
    )
});

/// One small runtime shared by every rtmpflvsrc instance.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rtmpflvsrc-net")
        .thread_stack_size(4 * 1024 * 1024)
        .enable_all()
        .build()
        .expect("failed to create the rtmpflvsrc tokio runtime")
});

const DEFAULT_ADDRESS: &str = "127.0.0.1";
const DEFAULT_PORT: u32 = 1935;
const DEFAULT_APP: &str = "live";
const DEFAULT_STREAM_KEY: &str = "";
const DEFAULT_EOS_ON_DISCONNECT: bool = false;
const DEFAULT_HANDSHAKE_TIMEOUT_MS: u32 = 5000;
const DEFAULT_IDLE_TIMEOUT_MS: u32 = 10000;
const DEFAULT_LATENCY_MS: u32 = 100;

/// Video items queued between the network and the video streaming thread.
const VIDEO_QUEUE: usize = 64;
/// Audio items queued between the network and the audio streaming thread (audio frames are
/// smaller and more frequent).
const AUDIO_QUEUE: usize = 256;
/// How long the audio pad waits for the video pad of a publisher that sends video.
const VIDEO_PAD_WAIT: Duration = Duration::from_secs(3);
/// Lateness beyond the pipeline latency after which timestamps are re-anchored to now.
const REANCHOR_MARGIN: Duration = Duration::from_secs(1);

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
    fn location(&self) -> String {
        let host = if self.address.contains(':') {
            format!("[{}]", self.address)
        } else {
            self.address.clone()
        };
        if self.stream_key.is_empty() {
            format!("rtmp://{host}:{}/{}", self.port, self.app)
        } else {
            format!(
                "rtmp://{host}:{}/{}/{}",
                self.port, self.app, self.stream_key
            )
        }
    }
}

/// `rtmp://ADDR[:PORT]/APP[/KEY]` (or `rtmpserver://`) split into its parts.
#[derive(Debug, PartialEq, Eq)]
struct Location {
    address: String,
    port: u32,
    app: String,
    stream_key: String,
}

fn parse_location(location: &str) -> Result<Location, String> {
    let rest = location
        .strip_prefix("rtmpserver://")
        .or_else(|| location.strip_prefix("rtmp://"))
        .ok_or_else(|| {
            format!("'{location}' is not an rtmp://ADDR:PORT/APP/KEY or rtmpserver:// URI")
        })?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (address, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unterminated IPv6 address in '{location}'"))?;
        (host.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if address.is_empty() {
        return Err(format!("no address in '{location}'"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .map(u32::from)
            .map_err(|_| format!("invalid port '{p}' in '{location}'"))?,
    };
    let path = path.trim_end_matches('/');
    let (app, key) = path.split_once('/').unwrap_or((path, ""));
    Ok(Location {
        address,
        port,
        app: if app.is_empty() {
            DEFAULT_APP.to_string()
        } else {
            app.to_string()
        },
        stream_key: key.to_string(),
    })
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

/// State of one output stream (video or audio), owned by its streaming thread.
#[derive(Default)]
struct StreamState {
    rx: Option<mpsc::Receiver<Item>>,
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

/// State shared by the two streaming threads.
#[derive(Default)]
struct Common {
    timeline: OutputTimeline,
    combiner: gst_base::UniqueFlowCombiner,
    group_id: Option<gst::GroupId>,
    /// Every pad added so far.
    pads: Vec<gst::Pad>,
    video_pad_added: bool,
    no_more_pads: bool,
    not_linked_logged: bool,
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
    /// Serializes `add_pad` between the two streaming threads: `pad-added` handlers are not
    /// safe against concurrent emission (gst-launch's delayed links then link and disconnect
    /// the same handler twice). Held only across `add_pad`, never with another lock.
    adding_pad: Mutex<()>,
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
            stats: Arc::new(Mutex::new(Stats::default())),
            announced: Arc::new(Announced::default()),
            tasks: Mutex::new(Tasks::default()),
            playing: AtomicBool::new(false),
            flushing: AtomicBool::new(true),
            eos_requested: AtomicBool::new(false),
            wake: [Arc::new(Notify::new()), Arc::new(Notify::new())],
            pipeline_latency: AtomicU64::new(0),
            adding_pad: Mutex::new(()),
        }
    }
}

const KINDS: [StreamKind; 2] = [StreamKind::Video, StreamKind::Audio];

/// Caps for a pad that only carries EOS (no publisher came): H.264 / AAC, the codecs of
/// nearly every RTMP publisher.
fn placeholder_caps(kind: StreamKind) -> gst::Caps {
    match kind {
        StreamKind::Video => gst::Caps::builder("video/x-h264")
            .field("stream-format", "avc")
            .field("alignment", "au")
            .build(),
        StreamKind::Audio => gst::Caps::builder("audio/mpeg")
            .field("mpegversion", 4i32)
            .field("stream-format", "raw")
            .build(),
    }
}

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

fn video_caps(codec: VideoCodec, config: Option<&Bytes>) -> Option<gst::Caps> {
    let codec_data = config
        .filter(|c| !c.is_empty())
        .map(|c| gst::Buffer::from_slice(c.clone()));
    Some(match codec {
        VideoCodec::H264 => gst::Caps::builder("video/x-h264")
            .field("stream-format", "avc")
            .field("alignment", "au")
            .field("codec_data", codec_data?)
            .build(),
        VideoCodec::H265 => gst::Caps::builder("video/x-h265")
            .field("stream-format", "hvc1")
            .field("alignment", "au")
            .field("codec_data", codec_data?)
            .build(),
        VideoCodec::Av1 => gst::Caps::builder("video/x-av1")
            .field("stream-format", "obu-stream")
            .field("alignment", "tu")
            .field_if_some("codec_data", codec_data)
            .build(),
        VideoCodec::Vp9 => gst::Caps::builder("video/x-vp9").build(),
    })
}

fn audio_caps(
    codec: AudioCodec,
    config: Option<&Bytes>,
    params: Option<LegacyAudioParams>,
) -> Option<gst::Caps> {
    Some(match codec {
        AudioCodec::Aac => {
            let config = config.filter(|c| !c.is_empty())?;
            let mut b = gst::Caps::builder("audio/mpeg")
                .field("mpegversion", 4i32)
                .field("stream-format", "raw")
                .field("framed", true)
                .field("codec_data", gst::Buffer::from_slice(config.clone()));
            if let Some(aac) = flv::parse_aac_config(config) {
                b = b
                    .field("rate", aac.rate as i32)
                    .field("channels", aac.channels as i32);
            }
            b.build()
        }
        AudioCodec::Mp3 => {
            let mut b = gst::Caps::builder("audio/mpeg")
                .field("mpegversion", 1i32)
                .field("layer", 3i32)
                .field("parsed", false);
            if let Some(p) = params {
                b = b
                    .field("rate", p.rate as i32)
                    .field("channels", p.channels as i32);
            }
            b.build()
        }
        AudioCodec::Opus => {
            let head = config.and_then(|c| flv::parse_opus_head(c));
            match head {
                Some(head) => {
                    let rate = if head.input_rate == 0 {
                        48000
                    } else {
                        head.input_rate as i32
                    };
                    let mut b = gst::Caps::builder("audio/x-opus")
                        .field("rate", rate)
                        .field("channels", i32::from(head.channels))
                        .field("channel-mapping-family", i32::from(head.mapping_family));
                    if let Some((streams, coupled, map)) = &head.mapping {
                        b = b
                            .field("stream-count", i32::from(*streams))
                            .field("coupled-count", i32::from(*coupled))
                            .field(
                                "channel-mapping",
                                gst::Array::new(map.iter().map(|&v| i32::from(v))),
                            );
                    }
                    if let Some(c) = config {
                        b = b.field(
                            "streamheader",
                            gst::Array::new([gst::Buffer::from_slice(c.clone()).to_send_value()]),
                        );
                    }
                    b.build()
                }
                None => gst::Caps::builder("audio/x-opus")
                    .field("rate", 48000i32)
                    .field("channels", 2i32)
                    .field("channel-mapping-family", 0i32)
                    .build(),
            }
        }
    })
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
        let port = u16::try_from(settings.port).map_err(|_| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                ("Invalid port {}: must be 0..=65535", settings.port)
            )
        })?;
        let host = settings
            .address
            .trim_start_matches('[')
            .trim_end_matches(']');
        let listener = std::net::TcpListener::bind((host, port)).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                (
                    "Could not listen on {}:{}: {}. Is another server using the port? Choose another \
                     address/port (port=0 picks a free one).",
                    settings.address,
                    settings.port,
                    e
                )
            )
        })?;
        let bound = listener.local_addr().map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                ("Could not query the listening address: {}", e)
            )
        })?;
        listener.set_nonblocking(true).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                ("Could not make the socket non-blocking: {}", e)
            )
        })?;

        self.announced.video.store(false, Ordering::SeqCst);
        *lock(&self.announced.metadata) = None;
        let (video_tx, video_rx) = mpsc::channel(VIDEO_QUEUE);
        let (audio_tx, audio_rx) = mpsc::channel(AUDIO_QUEUE);
        let shared = Arc::new(Shared {
            announced: self.announced.clone(),
            element: self.obj().downgrade(),
            session_config: SessionConfig {
                app: settings.app.clone(),
                stream_key: settings.stream_key.clone(),
                limits: Limits::default(),
            },
            handshake_timeout: Duration::from_millis(u64::from(
                settings.handshake_timeout_ms.max(1),
            )),
            idle_timeout: Duration::from_millis(u64::from(settings.idle_timeout_ms.max(1))),
            eos_on_disconnect: settings.eos_on_disconnect,
            publisher: Mutex::new(None),
            ended: AtomicBool::new(false),
            stats: self.stats.clone(),
            queued_bytes: Arc::new(Semaphore::new(MAX_QUEUED_BYTES)),
            video_items: video_tx,
            audio_items: audio_tx,
            next_id: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
            pending: Mutex::new(Default::default()),
            warnings: Mutex::new(Default::default()),
            guesses: Mutex::new(Default::default()),
        });

        let listener = {
            let _guard = RUNTIME.enter();
            TcpListener::from_std(listener).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    ("Could not register the socket: {}", e)
                )
            })?
        };
        let task = RUNTIME.spawn(serve(listener, shared.clone()));
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

        for (kind, rx) in [(StreamKind::Video, video_rx), (StreamKind::Audio, audio_rx)] {
            let mut stream = lock(&self.streams[kind_index(kind)]);
            stream.rx = Some(rx);
            stream.session = 0;
            stream.video_config = None;
            stream.audio_config = None;
        }
        *lock(&self.state) = State::Started(Server {
            task,
            shared,
            bound,
        });
        Ok(())
    }

    fn stop_server(&self) {
        let state = std::mem::take(&mut *lock(&self.state));
        if let State::Started(server) = state {
            server.stop();
            gst::info!(CAT, imp = self, "Stopped listening");
        }
        for stream in &self.streams {
            lock(stream).rx = None;
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
        for wake in &self.wake {
            wake.notify_one();
        }
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

    fn wake_tasks(&self) {
        for wake in &self.wake {
            wake.notify_one();
        }
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
                _ = tokio::time::sleep(Duration::from_millis(200)) => Received::Woken,
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
            self.end_stream_on_request(kind);
            self.pause_task(task);
            return;
        }
        if !self.playing.load(Ordering::SeqCst) {
            let wake = self.wake[kind_index(kind)].clone();
            RUNTIME.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_millis(200), wake.notified()).await;
            });
            return;
        }
        let mut stream = lock(&self.streams[kind_index(kind)]);
        let Some(mut rx) = stream.rx.take() else {
            drop(stream);
            self.pause_task(task);
            return;
        };
        let received = self.receive(kind, &mut rx);
        stream.rx = Some(rx);
        match received {
            Received::Woken => {}
            Received::Closed => {
                drop(stream);
                self.pause_task(task);
            }
            Received::Item(item) => {
                if let Err(err) = self.handle_item(&mut stream, kind, item) {
                    drop(stream);
                    self.handle_flow_error(task, kind, err);
                }
            }
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
                // Not the stream locks: the other thread may hold its lock while pushing.
                let pads = lock(&self.common).pads.clone();
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

    fn handle_item(
        &self,
        stream: &mut StreamState,
        kind: StreamKind,
        item: Item,
    ) -> Result<(), gst::FlowError> {
        if stream.eos {
            if let Item::SessionEnd {
                message: Some(m), ..
            } = &item
            {
                self.arrive_and_post(m);
            }
            return Ok(());
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
                Ok(())
            }
            Item::SessionEnd { reason, message } => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "{}: session ended: {reason}",
                    kind_name(kind)
                );
                let eos = lock(&self.settings).eos_on_disconnect;
                if eos {
                    stream.eos = true;
                    if let Some(ps) = &stream.pad {
                        ps.pad.push_event(gst::event::Eos::new());
                    }
                }
                if let Some(m) = &message {
                    self.arrive_and_post(m);
                }
                if eos {
                    return Err(gst::FlowError::Eos);
                }
                Ok(())
            }
            Item::Video { dts_ms, tag, .. } => match tag {
                VideoTag::SequenceStart { codec, config } => {
                    stream.video_config = Some((codec, config));
                    Ok(())
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
                    self.push_frame(
                        stream,
                        kind,
                        codec.name(),
                        caps,
                        dts_ms,
                        composition_time,
                        !keyframe,
                        data,
                    )
                }
                _ => Ok(()),
            },
            Item::Audio { dts_ms, tag, .. } => match tag {
                AudioTag::SequenceStart { codec, config } => {
                    stream.audio_config = Some((codec, config));
                    Ok(())
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
                    self.push_frame(stream, kind, codec.name(), caps, dts_ms, 0, false, data)
                }
                _ => Ok(()),
            },
        }
    }

    fn create_pad(&self, kind: StreamKind) -> gst::Pad {
        let name = kind_name(kind);
        let templ = self
            .obj()
            .pad_template(name)
            .expect("pad templates are registered");
        let pad = gst::Pad::builder_from_template(&templ)
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
            .build();
        let _ = pad.set_active(true);
        pad
    }

    #[allow(clippy::too_many_arguments)]
    fn push_frame(
        &self,
        stream: &mut StreamState,
        kind: StreamKind,
        codec: &'static str,
        caps: Option<gst::Caps>,
        dts_ms: i64,
        composition_ms: i32,
        delta_unit: bool,
        data: Bytes,
    ) -> Result<(), gst::FlowError> {
        let Some(caps) = caps else {
            if !stream.warned_no_config {
                stream.warned_no_config = true;
                gst::warning!(
                    CAT,
                    imp = self,
                    "Dropping {codec} frame: no sequence header (codec configuration) yet"
                );
            }
            return Ok(());
        };
        stream.warned_no_config = false;

        let (times, group_id) = {
            let mut common = lock(&self.common);
            let group_id = *common.group_id.get_or_insert_with(gst::GroupId::next);
            let max_lateness = self.max_lateness();
            common.timeline.set_max_lateness(Some(max_lateness));
            let reanchors = common.timeline.reanchors();
            let times = common
                .timeline
                .map(stream.session, kind, dts_ms, composition_ms, || {
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
            (times, group_id)
        };

        let (pad, new_pad) = self.prepare_pad(stream, kind, caps, group_id);

        let mut buffer = gst::Buffer::from_slice(data);
        {
            let b = buffer.get_mut().expect("new buffer is writable");
            b.set_dts(gst::ClockTime::from_nseconds(times.dts));
            b.set_pts(gst::ClockTime::from_nseconds(times.pts));
            if delta_unit {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
            if stream.discont {
                b.set_flags(gst::BufferFlags::DISCONT);
                stream.discont = false;
            }
        }

        if new_pad {
            self.add_stream_pad(kind, &pad);
        }

        gst::trace!(CAT, obj = pad, "Pushing {buffer:?}");
        let res = pad.push(buffer);
        let mut common = lock(&self.common);
        match common.combiner.update_pad_flow(&pad, res) {
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

    /// The pad of `kind` with its sticky events (stream-start, `caps`, segment) sent; creates it
    /// if needed (then `true`: add it with [`Self::add_stream_pad`] after the first buffer is
    /// ready).
    fn prepare_pad(
        &self,
        stream: &mut StreamState,
        kind: StreamKind,
        caps: gst::Caps,
        group_id: gst::GroupId,
    ) -> (gst::Pad, bool) {
        let new_pad = stream.pad.is_none();
        let ps = stream.pad.get_or_insert_with(|| PadState {
            pad: self.create_pad(kind),
            caps: None,
            need_events: true,
        });

        if ps.need_events {
            let stream_id = format!("{}/{}", self.obj().name(), kind_name(kind));
            ps.pad.push_event(
                gst::event::StreamStart::builder(&stream_id)
                    .group_id(group_id)
                    .build(),
            );
            ps.caps = None;
        }
        if ps.caps.as_ref() != Some(&caps) {
            gst::info!(CAT, obj = ps.pad, "Caps {caps}");
            ps.pad.push_event(gst::event::Caps::new(&caps));
            ps.caps = Some(caps);
        }
        if ps.need_events {
            let segment = gst::FormattedSegment::<gst::ClockTime>::new();
            ps.pad.push_event(gst::event::Segment::new(&segment));
            ps.need_events = false;
        }
        (ps.pad.clone(), new_pad)
    }

    /// Adds a pad made by [`Self::prepare_pad`] to the element (audio after video, see
    /// [`Self::wait_for_video_pad`]) and signals no-more-pads when all are there.
    fn add_stream_pad(&self, kind: StreamKind, pad: &gst::Pad) {
        if kind == StreamKind::Audio {
            self.wait_for_video_pad();
        }
        gst::info!(CAT, imp = self, "Adding pad {}", pad.name());
        {
            let mut common = lock(&self.common);
            common.combiner.add_pad(pad);
            common.pads.push(pad.clone());
        }
        {
            let _serial = lock(&self.adding_pad);
            let _ = self.obj().add_pad(pad);
        }
        // Only now: the audio pad waits for this, and `pad-added` handlers (which link the
        // video branch into the pipeline) must have run before audio can reach EOS.
        if kind == StreamKind::Video {
            lock(&self.common).video_pad_added = true;
        }
        self.maybe_no_more_pads();
    }

    /// An EOS event was sent to the element: end this stream's pad with EOS. A stream that
    /// never had a publisher gets its pad now, with placeholder caps of the most common codec
    /// (decoders accept caps followed by EOS), so the branch behind it (a decoder, a sink) ends
    /// too and the pipeline posts EOS instead of waiting for a publisher forever.
    fn end_stream_on_request(&self, kind: StreamKind) {
        let mut stream = lock(&self.streams[kind_index(kind)]);
        if stream.eos {
            return;
        }
        stream.eos = true;
        let caps = stream
            .pad
            .as_ref()
            .and_then(|ps| ps.caps.clone())
            .unwrap_or_else(|| placeholder_caps(kind));
        let group_id = *lock(&self.common)
            .group_id
            .get_or_insert_with(gst::GroupId::next);
        let (pad, new_pad) = self.prepare_pad(&mut stream, kind, caps, group_id);
        if new_pad {
            self.add_stream_pad(kind, &pad);
        }
        gst::info!(CAT, obj = pad, "EOS requested: ending the stream");
        pad.push_event(gst::event::Eos::new());
    }

    /// Adds pads in a predictable order: when the publisher has sent video, the audio pad
    /// waits (bounded) for the video pad, so that `rtmpflvsrc ! decodebin` links video.
    fn wait_for_video_pad(&self) {
        let deadline = Instant::now() + VIDEO_PAD_WAIT;
        while Instant::now() < deadline && !self.flushing.load(Ordering::SeqCst) {
            // On an EOS request the video thread adds its pad too (placeholder caps if no
            // publisher came).
            let video_expected = self.announced.video.load(Ordering::SeqCst)
                || self.eos_requested.load(Ordering::SeqCst)
                || lock(&self.announced.metadata).is_some_and(|(v, _)| v);
            if !video_expected || lock(&self.common).video_pad_added {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Signals no-more-pads once every stream the publisher announced has its pad.
    fn maybe_no_more_pads(&self) {
        let expected = *lock(&self.announced.metadata);
        let done = {
            let mut common = lock(&self.common);
            let all = match expected {
                _ if common.pads.len() == KINDS.len() => true,
                Some((has_video, has_audio)) => {
                    let audio_added = common.pads.len() > usize::from(common.video_pad_added);
                    (!has_video || common.video_pad_added) && (!has_audio || audio_added)
                }
                None => false,
            };
            if all && !common.no_more_pads {
                common.no_more_pads = true;
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
                    match parse_location(&location) {
                        Ok(l) => {
                            settings.address = l.address;
                            settings.port = l.port;
                            settings.app = l.app;
                            settings.stream_key = l.stream_key;
                        }
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
                    "location" => settings.location().to_value(),
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
            let video = gst::Caps::builder_full()
                .structure(
                    gst::Structure::builder("video/x-h264")
                        .field("stream-format", "avc")
                        .field("alignment", "au")
                        .build(),
                )
                .structure(
                    gst::Structure::builder("video/x-h265")
                        .field("stream-format", "hvc1")
                        .field("alignment", "au")
                        .build(),
                )
                .structure(
                    gst::Structure::builder("video/x-av1")
                        .field("stream-format", "obu-stream")
                        .field("alignment", "tu")
                        .build(),
                )
                .structure(gst::Structure::new_empty("video/x-vp9"))
                .build();
            let audio = gst::Caps::builder_full()
                .structure(
                    gst::Structure::builder("audio/mpeg")
                        .field("mpegversion", 4i32)
                        .field("stream-format", "raw")
                        .build(),
                )
                .structure(
                    gst::Structure::builder("audio/mpeg")
                        .field("mpegversion", 1i32)
                        .field("layer", 3i32)
                        .build(),
                )
                .structure(gst::Structure::new_empty("audio/x-opus"))
                .build();
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
        let settings = lock(&self.settings);
        Some(settings.location().replacen("rtmp://", "rtmpserver://", 1))
    }

    fn set_uri(&self, uri: &str) -> Result<(), glib::Error> {
        if !matches!(*lock(&self.state), State::Stopped) {
            return Err(glib::Error::new(
                gst::URIError::BadState,
                "Changing the URI is only possible in the NULL state",
            ));
        }
        if !uri.starts_with("rtmpserver://") {
            return Err(glib::Error::new(
                gst::URIError::UnsupportedProtocol,
                &format!("Unsupported URI '{uri}': expected rtmpserver://ADDR:PORT/APP/KEY"),
            ));
        }
        let l = parse_location(uri).map_err(|e| glib::Error::new(gst::URIError::BadUri, &e))?;
        let mut settings = lock(&self.settings);
        settings.location_error = None;
        settings.address = l.address;
        settings.port = l.port;
        settings.app = l.app;
        settings.stream_key = l.stream_key;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            gst::init().expect("gst init");
            crate::plugin_register_static().expect("register rtmpflvsrc");
        });
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

    #[test]
    fn location_and_uri() {
        init();
        let e = element(1935);
        e.set_property("location", "rtmp://0.0.0.0:1940/show/secret");
        assert_eq!(e.property::<String>("address"), "0.0.0.0");
        assert_eq!(e.property::<u32>("port"), 1940);
        assert_eq!(e.property::<String>("app"), "show");
        assert_eq!(e.property::<String>("stream-key"), "secret");
        let handler = e.dynamic_cast_ref::<gst::URIHandler>().unwrap();
        assert_eq!(
            handler.uri().as_deref(),
            Some("rtmpserver://0.0.0.0:1940/show/secret")
        );
        handler.set_uri("rtmpserver://127.0.0.1:1941/live").unwrap();
        assert_eq!(e.property::<u32>("port"), 1941);
        assert_eq!(e.property::<String>("stream-key"), "");
        assert!(handler.set_uri("rtmp://127.0.0.1/live").is_err());
        // Never registered for rtmp://, so the client elements are not shadowed.
        assert_eq!(gst::URIHandler::protocols(handler), vec!["rtmpserver"]);
        let made =
            gst::Element::make_from_uri(gst::URIType::Src, "rtmpserver://127.0.0.1:0/live/k", None)
                .expect("made from rtmpserver:// URI");
        assert_eq!(made.factory().unwrap().name(), "rtmpflvsrc");
        let stats = e.property::<gst::Structure>("stats");
        assert_eq!(stats.name(), "rtmpflvsrc-stats");
        assert_eq!(stats.get::<u64>("connections").unwrap(), 0);
        assert_eq!(stats.get::<String>("publisher").unwrap(), "");
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

    #[test]
    fn locations() {
        assert_eq!(
            parse_location("rtmp://0.0.0.0:1936/live/key").unwrap(),
            Location {
                address: "0.0.0.0".into(),
                port: 1936,
                app: "live".into(),
                stream_key: "key".into()
            }
        );
        assert_eq!(
            parse_location("rtmpserver://[::1]/app").unwrap(),
            Location {
                address: "::1".into(),
                port: 1935,
                app: "app".into(),
                stream_key: "".into()
            }
        );
        assert_eq!(
            parse_location("rtmp://host:1/a/b/c").unwrap().stream_key,
            "b/c"
        );
        assert!(parse_location("http://x/live").is_err());
        assert!(parse_location("rtmp://x:99999/live").is_err());
    }
}
