// SPDX-License-Identifier: MPL-2.0

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use crate::flv::{self, AudioCodec, AudioTag, LegacyAudioParams, VideoCodec, VideoTag};
use crate::session::{Limits, Session, SessionConfig, SessionEvent};
use crate::timestamps::{OutputTimeline, StreamKind};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
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

/// Connections handled at once (publisher plus handshaking / rejected ones).
const MAX_CONNECTIONS: usize = 16;
/// Video items queued between the network and the video streaming thread.
const VIDEO_QUEUE: usize = 64;
/// Audio items queued between the network and the audio streaming thread (audio frames are
/// smaller and more frequent).
const AUDIO_QUEUE: usize = 256;
/// Outgoing packets queued per connection before a non-reading peer is dropped.
const OUT_QUEUE: usize = 32;
/// Read buffer per connection.
const READ_SIZE: usize = 64 * 1024;
/// How long the audio pad waits for the video pad of a publisher that sends video.
const VIDEO_PAD_WAIT: Duration = Duration::from_secs(3);
/// Window over which `bitrate` is computed.
const BITRATE_WINDOW: Duration = Duration::from_secs(3);

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

/// Counters behind the `stats` property.
#[derive(Debug, Default)]
struct Stats {
    publisher: String,
    app: String,
    stream_key: String,
    video_codec: String,
    audio_codec: String,
    bytes: u64,
    video_frames: u64,
    audio_frames: u64,
    connections: u64,
    rejected: u64,
    recent: VecDeque<(Instant, u64)>,
}

impl Stats {
    fn add_bytes(&mut self, n: u64) {
        self.bytes += n;
        let now = Instant::now();
        self.recent.push_back((now, n));
        self.prune(now);
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&(t, _)) = self.recent.front() {
            if now.duration_since(t) > BITRATE_WINDOW {
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }

    fn bitrate(&mut self) -> u64 {
        self.prune(Instant::now());
        let bytes: u64 = self.recent.iter().map(|&(_, n)| n).sum();
        bytes * 8 / BITRATE_WINDOW.as_secs()
    }

    fn snapshot(&mut self) -> gst::Structure {
        let bitrate = self.bitrate();
        gst::Structure::builder("rtmpflvsrc-stats")
            .field("publisher", &self.publisher)
            .field("app", &self.app)
            .field("stream-key", &self.stream_key)
            .field("video-codec", &self.video_codec)
            .field("audio-codec", &self.audio_codec)
            .field("bytes", self.bytes)
            .field("video-frames", self.video_frames)
            .field("audio-frames", self.audio_frames)
            .field("bitrate", bitrate)
            .field("connections", self.connections)
            .field("rejected", self.rejected)
            .build()
    }
}

/// What the network side hands to the streaming thread.
#[derive(Debug)]
enum Item {
    SessionStart { session: u64, publisher: String },
    Video { dts_ms: i64, tag: VideoTag },
    Audio { dts_ms: i64, tag: AudioTag },
    SessionEnd { reason: String },
}

/// What the current publisher announced, written by the network side and read by the
/// streaming threads to add pads in a predictable order and signal no-more-pads.
#[derive(Default)]
struct Announced {
    /// A video message was received.
    video: AtomicBool,
    /// onMetaData: (has video, has audio).
    metadata: Mutex<Option<(bool, bool)>>,
}

/// State shared between the element and its network tasks.
struct Shared {
    announced: Arc<Announced>,
    element: glib::WeakRef<super::RtmpFlvSrc>,
    session_config: SessionConfig,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    eos_on_disconnect: bool,
    /// (connection id, peer) of the active publisher.
    publisher: Mutex<Option<(u64, String)>>,
    /// Set once EOS was sent (eos-on-disconnect): no more publishers.
    ended: AtomicBool,
    stats: Arc<Mutex<Stats>>,
    /// Queues to the video and audio streaming threads.
    video_items: mpsc::Sender<Item>,
    audio_items: mpsc::Sender<Item>,
    next_id: AtomicU64,
    next_session: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn post_element_message(&self, s: gst::Structure) {
        if let Some(element) = self.element.upgrade() {
            let _ = element.post_message(gst::message::Element::builder(s).src(&element).build());
        }
    }

    fn post_warning(&self, error: impl gst::MessageErrorDomain, text: &str) {
        if let Some(element) = self.element.upgrade() {
            gst::warning!(CAT, obj = element, "{text}");
            gst::element_warning!(element, error, ("{}", text));
        }
    }

    fn reject(&self, peer: &str, reason: &str) {
        lock(&self.stats).rejected += 1;
        if let Some(element) = self.element.upgrade() {
            gst::warning!(CAT, obj = element, "Rejected {peer}: {reason}");
        }
        self.post_element_message(
            gst::Structure::builder("rtmpflvsrc-rejected")
                .field("peer", peer)
                .field("reason", reason)
                .build(),
        );
    }

    fn try_acquire(&self, id: u64, peer: &str) -> Result<(), String> {
        if self.ended.load(Ordering::SeqCst) {
            return Err("the stream has ended (eos-on-disconnect=true)".to_string());
        }
        let mut publisher = lock(&self.publisher);
        match &*publisher {
            Some((other, other_peer)) if *other != id => Err(format!(
                "another publisher ({other_peer}) is already active; one publisher at a time"
            )),
            _ => {
                *publisher = Some((id, peer.to_string()));
                Ok(())
            }
        }
    }

    fn release(&self, id: u64) {
        let mut publisher = lock(&self.publisher);
        if publisher.as_ref().is_some_and(|(p, _)| *p == id) {
            *publisher = None;
        }
    }
}

/// How a connection ended.
struct ConnectionEnd {
    reason: String,
    /// Hostile / broken peer: posted as a warning.
    warn: bool,
}

impl ConnectionEnd {
    fn normal(reason: impl Into<String>) -> Self {
        ConnectionEnd {
            reason: reason.into(),
            warn: false,
        }
    }
    fn warn(reason: impl Into<String>) -> Self {
        ConnectionEnd {
            reason: reason.into(),
            warn: true,
        }
    }
}

struct Connection {
    id: u64,
    peer: String,
    shared: Arc<Shared>,
    session: Session,
    publishing: bool,
    warned: HashSet<String>,
}

impl Connection {
    async fn run(
        &mut self,
        rd: &mut tokio::net::tcp::OwnedReadHalf,
        out: &mpsc::Sender<Vec<u8>>,
    ) -> ConnectionEnd {
        let mut buf = vec![0u8; READ_SIZE];
        let start = Instant::now();
        loop {
            let (limit, what) = if self.session.handshake_done() {
                (self.shared.idle_timeout, "idle")
            } else {
                (
                    self.shared
                        .handshake_timeout
                        .saturating_sub(start.elapsed()),
                    "handshake",
                )
            };
            let n = match tokio::time::timeout(limit, rd.read(&mut buf)).await {
                Err(_) => {
                    return ConnectionEnd::warn(if what == "idle" {
                        format!(
                            "no data for {} ms (idle-timeout)",
                            self.shared.idle_timeout.as_millis()
                        )
                    } else {
                        format!(
                            "RTMP handshake not completed within {} ms (handshake-timeout)",
                            self.shared.handshake_timeout.as_millis()
                        )
                    });
                }
                Ok(Err(e)) => return ConnectionEnd::normal(format!("read error: {e}")),
                Ok(Ok(0)) => return ConnectionEnd::normal("connection closed by the publisher"),
                Ok(Ok(n)) => n,
            };
            if self.publishing {
                lock(&self.shared.stats).add_bytes(n as u64);
            }

            let shared = self.shared.clone();
            let id = self.id;
            let peer = self.peer.clone();
            let mut gate = move |_app: &str, _key: &str| shared.try_acquire(id, &peer);
            let session = &mut self.session;
            let result =
                std::panic::catch_unwind(AssertUnwindSafe(|| session.feed(&buf[..n], &mut gate)));
            let output = match result {
                Err(_) => return ConnectionEnd::warn("internal error while parsing RTMP input"),
                Ok(Err(e)) => return ConnectionEnd::warn(e.to_string()),
                Ok(Ok(output)) => output,
            };
            if !output.send.is_empty() {
                match out.try_send(output.send) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        return ConnectionEnd::warn(
                            "the peer does not read what the server sends (output queue full)",
                        );
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return ConnectionEnd::normal("write side closed");
                    }
                }
            }
            for event in output.events {
                if let Some(end) = self.handle_event(event).await {
                    return end;
                }
            }
            if self.session.is_closed() {
                return ConnectionEnd::normal("rejected");
            }
        }
    }

    async fn send_item(&self, item: Item) -> Option<ConnectionEnd> {
        let shared = &self.shared;
        let res = match item {
            Item::Video { .. } => shared.video_items.send(item).await,
            Item::Audio { .. } => shared.audio_items.send(item).await,
            Item::SessionStart { session, publisher } => {
                let copy = Item::SessionStart {
                    session,
                    publisher: publisher.clone(),
                };
                match shared.video_items.send(copy).await {
                    Ok(()) => {
                        let item = Item::SessionStart { session, publisher };
                        shared.audio_items.send(item).await
                    }
                    Err(e) => Err(e),
                }
            }
            Item::SessionEnd { reason } => {
                let copy = Item::SessionEnd {
                    reason: reason.clone(),
                };
                match shared.video_items.send(copy).await {
                    Ok(()) => shared.audio_items.send(Item::SessionEnd { reason }).await,
                    Err(e) => Err(e),
                }
            }
        };
        match res {
            Ok(()) => None,
            Err(_) => Some(ConnectionEnd::normal("element is shutting down")),
        }
    }

    async fn handle_event(&mut self, event: SessionEvent) -> Option<ConnectionEnd> {
        match event {
            SessionEvent::PublishStarted { app, stream_key } => {
                self.publishing = true;
                {
                    let mut stats = lock(&self.shared.stats);
                    stats.publisher = self.peer.clone();
                    stats.app = app.clone();
                    stats.stream_key = stream_key.clone();
                    stats.video_codec.clear();
                    stats.audio_codec.clear();
                    stats.connections += 1;
                }
                if let Some(element) = self.shared.element.upgrade() {
                    gst::info!(
                        CAT,
                        obj = element,
                        "Publisher {} started publishing to {app}/{stream_key}",
                        self.peer
                    );
                }
                self.shared.post_element_message(
                    gst::Structure::builder("rtmpflvsrc-connected")
                        .field("publisher", &self.peer)
                        .field("app", &app)
                        .field("stream-key", &stream_key)
                        .build(),
                );
                self.send_item(Item::SessionStart {
                    session: self.shared.next_session.fetch_add(1, Ordering::SeqCst),
                    publisher: self.peer.clone(),
                })
                .await
            }
            SessionEvent::Video { dts_ms, tag } => {
                self.shared.announced.video.store(true, Ordering::SeqCst);
                {
                    let mut stats = lock(&self.shared.stats);
                    match &tag {
                        VideoTag::Frame { codec, .. } => {
                            stats.video_frames += 1;
                            stats.video_codec = codec.name().to_string();
                        }
                        VideoTag::SequenceStart { codec, .. } => {
                            stats.video_codec = codec.name().to_string();
                        }
                        _ => {}
                    }
                }
                self.send_item(Item::Video { dts_ms, tag }).await
            }
            SessionEvent::Audio { dts_ms, tag } => {
                {
                    let mut stats = lock(&self.shared.stats);
                    match &tag {
                        AudioTag::Frame { codec, .. } => {
                            stats.audio_frames += 1;
                            stats.audio_codec = codec.name().to_string();
                        }
                        AudioTag::SequenceStart { codec, .. } => {
                            stats.audio_codec = codec.name().to_string();
                        }
                        _ => {}
                    }
                }
                self.send_item(Item::Audio { dts_ms, tag }).await
            }
            SessionEvent::Metadata {
                has_video,
                has_audio,
            } => {
                *lock(&self.shared.announced.metadata) = Some((has_video, has_audio));
                None
            }
            SessionEvent::MediaError { kind, error } => {
                let text = format!(
                    "Dropping {} data from publisher {}: {error}",
                    match kind {
                        StreamKind::Video => "video",
                        StreamKind::Audio => "audio",
                    },
                    self.peer
                );
                if self.warned.insert(error.to_string()) {
                    match error {
                        flv::FlvError::UnknownAudioCodec(_)
                        | flv::FlvError::UnknownVideoCodec(_) => self
                            .shared
                            .post_warning(gst::StreamError::CodecNotFound, &text),
                        _ => self.shared.post_warning(gst::StreamError::Decode, &text),
                    }
                }
                None
            }
            SessionEvent::PublishFinished => {
                self.end_publish("the publisher ended the stream").await
            }
            SessionEvent::Rejected { reason } => {
                self.shared.reject(&self.peer, &reason);
                None
            }
        }
    }

    async fn end_publish(&mut self, reason: &str) -> Option<ConnectionEnd> {
        if !self.publishing {
            return None;
        }
        self.publishing = false;
        if self.shared.eos_on_disconnect {
            self.shared.ended.store(true, Ordering::SeqCst);
        }
        self.shared.release(self.id);
        lock(&self.shared.stats).publisher.clear();
        if let Some(element) = self.shared.element.upgrade() {
            gst::info!(
                CAT,
                obj = element,
                "Publisher {} disconnected: {reason}",
                self.peer
            );
        }
        self.shared.post_element_message(
            gst::Structure::builder("rtmpflvsrc-disconnected")
                .field("publisher", &self.peer)
                .field("reason", reason)
                .build(),
        );
        self.send_item(Item::SessionEnd {
            reason: reason.to_string(),
        })
        .await
    }
}

async fn handle_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let write_timeout = shared.idle_timeout.max(Duration::from_millis(100));

    let writer = async move {
        while let Some(data) = out_rx.recv().await {
            match tokio::time::timeout(write_timeout, wr.write_all(&data)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("write error: {e}")),
                Err(_) => {
                    return Err(format!(
                        "the peer does not read what the server sends (write blocked for {} ms)",
                        write_timeout.as_millis()
                    ));
                }
            }
        }
        let _ = wr.shutdown().await;
        Ok(())
    };
    tokio::pin!(writer);

    let mut conn = Connection {
        id,
        peer: peer.to_string(),
        session: Session::new(shared.session_config.clone()),
        shared: shared.clone(),
        publishing: false,
        warned: HashSet::new(),
    };
    if let Some(element) = shared.element.upgrade() {
        gst::debug!(CAT, obj = element, "New connection from {peer}");
    }

    let mut writer_done = false;
    let end = {
        let reader = conn.run(&mut rd, &out_tx);
        tokio::select! {
            end = reader => end,
            res = &mut writer => {
                writer_done = true;
                match res {
                    Ok(()) => ConnectionEnd::normal("write side closed"),
                    Err(e) => ConnectionEnd::warn(e),
                }
            }
        }
    };
    drop(out_tx);
    if !writer_done {
        // Flush what is queued (e.g. a rejection) but do not wait for long.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
    }

    if end.warn {
        shared.post_warning(
            gst::ResourceError::Read,
            &format!("Dropped RTMP connection from {peer}: {}", end.reason),
        );
    } else if let Some(element) = shared.element.upgrade() {
        gst::debug!(
            CAT,
            obj = element,
            "Connection from {peer} ended: {}",
            end.reason
        );
    }
    conn.end_publish(&end.reason).await;
    shared.release(id);
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        shared.post_warning(
                            gst::ResourceError::Busy,
                            &format!("Refusing connection from {peer}: {MAX_CONNECTIONS} connections already open"),
                        );
                        drop(stream);
                        continue;
                    }
                    connections.spawn(handle_connection(stream, peer, shared.clone()));
                }
                Err(e) => {
                    if let Some(element) = shared.element.upgrade() {
                        gst::warning!(CAT, obj = element, "accept failed: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The running server: the listener task and its shared state.
struct Server {
    task: JoinHandle<()>,
    shared: Arc<Shared>,
    bound: SocketAddr,
}

impl Server {
    /// Aborts the listener (and with it every connection) and waits, bounded, until the
    /// listening socket is closed.
    fn stop(self) {
        self.task.abort();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.task.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(self.shared);
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
    tasks: Mutex<Vec<StreamTask>>,
    playing: AtomicBool,
    flushing: AtomicBool,
    wake: [Arc<Notify>; 2],
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
            tasks: Mutex::new(Vec::new()),
            playing: AtomicBool::new(false),
            flushing: AtomicBool::new(true),
            wake: [Arc::new(Notify::new()), Arc::new(Notify::new())],
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
        let port = u16::try_from(settings.port).map_err(|_| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                ["Invalid port {}: must be 0..=65535", settings.port]
            )
        })?;
        let host = settings
            .address
            .trim_start_matches('[')
            .trim_end_matches(']');
        let listener = std::net::TcpListener::bind((host, port)).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                [
                    "Could not listen on {}:{}: {}. Is another server using the port? Choose another \
                     address/port (port=0 picks a free one).",
                    settings.address,
                    settings.port,
                    e
                ]
            )
        })?;
        let bound = listener.local_addr().map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                ["Could not query the listening address: {}", e]
            )
        })?;
        listener.set_nonblocking(true).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                ["Could not make the socket non-blocking: {}", e]
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
            video_items: video_tx,
            audio_items: audio_tx,
            next_id: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
        });

        let listener = {
            let _guard = RUNTIME.enter();
            TcpListener::from_std(listener).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    ["Could not register the socket: {}", e]
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
        let mut tasks = lock(&self.tasks);
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
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for t in &tasks {
            let _ = t.task.stop();
        }
        for wake in &self.wake {
            wake.notify_one();
        }
        for t in tasks {
            let _ = t.task.join();
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
            let _ = task.pause();
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
            let _ = task.pause();
            return;
        };
        let received = self.receive(kind, &mut rx);
        stream.rx = Some(rx);
        match received {
            Received::Woken => {}
            Received::Closed => {
                drop(stream);
                let _ = task.pause();
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
        let _ = task.pause();
    }

    fn now_running_time(&self) -> u64 {
        let obj = self.obj();
        match (obj.clock(), obj.base_time()) {
            (Some(clock), Some(base)) => clock.time().checked_sub(base).map_or(0, |t| t.nseconds()),
            _ => 0,
        }
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
            Item::SessionEnd { reason } => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "{}: session ended: {reason}",
                    kind_name(kind)
                );
                if lock(&self.settings).eos_on_disconnect {
                    stream.eos = true;
                    if let Some(ps) = &stream.pad {
                        ps.pad.push_event(gst::event::Eos::new());
                    }
                    return Err(gst::FlowError::Eos);
                }
                Ok(())
            }
            Item::Video { dts_ms, tag } => match tag {
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
            Item::Audio { dts_ms, tag } => match tag {
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
            let times = common
                .timeline
                .map(stream.session, kind, dts_ms, composition_ms, || {
                    self.now_running_time()
                });
            (times, group_id)
        };

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
        let pad = ps.pad.clone();

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
            if kind == StreamKind::Audio {
                self.wait_for_video_pad();
            }
            gst::info!(CAT, imp = self, "Adding pad {}", pad.name());
            {
                let mut common = lock(&self.common);
                common.combiner.add_pad(&pad);
                common.pads.push(pad.clone());
                if kind == StreamKind::Video {
                    common.video_pad_added = true;
                }
            }
            let _ = self.obj().add_pad(&pad);
            self.maybe_no_more_pads();
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

    /// Adds pads in a predictable order: when the publisher has sent video, the audio pad
    /// waits (bounded) for the video pad, so that `rtmpflvsrc ! decodebin` links video.
    fn wait_for_video_pad(&self) {
        let deadline = Instant::now() + VIDEO_PAD_WAIT;
        while Instant::now() < deadline && !self.flushing.load(Ordering::SeqCst) {
            let video_expected = self.announced.video.load(Ordering::SeqCst)
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
                    .blurb("Milliseconds a new connection may take to complete the RTMP handshake")
                    .minimum(1)
                    .default_value(DEFAULT_HANDSHAKE_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("idle-timeout")
                    .nick("Idle timeout")
                    .blurb("Milliseconds without data after which a connection is dropped")
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
                            gst::error!(CAT, imp = self, "Invalid location: {e}");
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
