// SPDX-License-Identifier: MPL-2.0

//! The network side of `rtmpflvsrc`: the shared runtime, the listening socket, the listener
//! task, one task per connection driving a [`Session`], the publisher slot and the element /
//! bus messages. It hands media to the streaming threads through two bounded queues
//! ([`Item`]s) and never touches pads. The pure tables it applies (pending slots, warning
//! digest, guess throttle) are in [`super::peer_limits`]; what remains (a little over 800 lines)
//! is the one connection loop and the listener around it.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use super::handoff::{Announced, Item, PostAfterAll};
use super::imp::CAT;
use super::lock;
use super::peer_limits::{
    GuessThrottle, MAX_PENDING, PENDING_GRACE, PendingTable, WARNING_INTERVAL, WarningDigest,
};
use super::stats::Stats;
use crate::flv::{self, AudioTag, VideoTag};
use crate::session::{Limits, Session, SessionConfig, SessionEvent};
use crate::timestamps::StreamKind;

/// One small runtime shared by every rtmpflvsrc instance: the network tasks run on it, and the
/// streaming threads wait on their queues with it.
pub(super) static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rtmpflvsrc-net")
        .thread_stack_size(4 * 1024 * 1024)
        .enable_all()
        .build()
        .expect("failed to create the rtmpflvsrc tokio runtime")
});

/// Video items queued between the network and the video streaming thread.
const VIDEO_QUEUE: usize = 64;
/// Audio items queued between the network and the audio streaming thread (audio frames are
/// smaller and more frequent).
const AUDIO_QUEUE: usize = 256;
/// How long [`Server::stop`] waits for the listener task to be gone (its socket closed).
const STOP_WAIT: Duration = Duration::from_secs(2);
/// Audio/video payload bytes a publisher must deliver per `idle-timeout` to keep its slot
/// (a trickle of one byte per second does not).
pub(super) const MIN_MEDIA_BYTES_PER_WINDOW: u64 = 1024;
/// Media bytes queued between the network and the streaming threads, at most; beyond that the
/// publisher's connection is not read (TCP back-pressure).
pub(super) const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;
/// Outgoing packets queued per connection before a non-reading peer is dropped.
const OUT_QUEUE: usize = 32;
/// Read buffer per connection.
const READ_SIZE: usize = 64 * 1024;

/// State shared between the element and its network tasks.
pub(super) struct Shared {
    pub(super) announced: Arc<Announced>,
    pub(super) element: glib::WeakRef<super::RtmpFlvSrc>,
    pub(super) session_config: SessionConfig,
    pub(super) handshake_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) eos_on_disconnect: bool,
    /// (connection id, peer) of the active publisher.
    pub(super) publisher: Mutex<Option<(u64, String)>>,
    /// Set once EOS was sent (eos-on-disconnect): no more publishers.
    pub(super) ended: AtomicBool,
    pub(super) stats: Arc<Mutex<Stats>>,
    /// Bytes of media queued towards the streaming threads (bounded by [`MAX_QUEUED_BYTES`]).
    pub(super) queued_bytes: Arc<Semaphore>,
    /// Queues to the video and audio streaming threads.
    pub(super) video_items: mpsc::Sender<Item>,
    pub(super) audio_items: mpsc::Sender<Item>,
    pub(super) next_id: AtomicU64,
    pub(super) next_session: AtomicU64,
    /// Connections that do not publish (yet).
    pub(super) pending: Mutex<PendingTable>,
    pub(super) warnings: Mutex<WarningDigest>,
    pub(super) guesses: Mutex<GuessThrottle>,
}

fn video_tag_len(tag: &VideoTag) -> usize {
    match tag {
        VideoTag::Frame { data, .. } => data.len(),
        VideoTag::SequenceStart { config, .. } => config.len(),
        _ => 0,
    }
}

fn audio_tag_len(tag: &AudioTag) -> usize {
    match tag {
        AudioTag::Frame { data, .. } => data.len(),
        AudioTag::SequenceStart { config, .. } => config.len(),
        _ => 0,
    }
}

impl Shared {
    pub(super) fn post_element_message(&self, s: gst::Structure) {
        if let Some(element) = self.element.upgrade() {
            let _ = element.post_message(gst::message::Element::builder(s).src(&element).build());
        }
    }

    pub(super) fn post_warning(&self, error: impl gst::MessageErrorDomain, text: &str) {
        if let Some(element) = self.element.upgrade() {
            gst::warning!(CAT, obj = element, "{text}");
            gst::element_warning!(element, error, ("{}", text));
        }
    }

    /// A warning about a peer (refused, dropped): logged every time, posted on the bus at most
    /// once per [`WARNING_INTERVAL`] per `kind`, the others summarized (a flood of hostile
    /// connections must not flood the application).
    fn post_peer_warning(
        &self,
        kind: &'static str,
        error: impl gst::MessageErrorDomain,
        text: &str,
    ) {
        let Some(element) = self.element.upgrade() else {
            return;
        };
        gst::warning!(CAT, obj = element, "{text}");
        let post = lock(&self.warnings).admit(kind, text, Instant::now());
        if let Some(text) = post {
            gst::element_warning!(element, error, ("{}", text));
        }
    }

    /// Posts the summaries of counted peer warnings whose interval is over.
    fn flush_peer_warnings(&self) {
        let summaries = lock(&self.warnings).flush(Instant::now());
        if let Some(element) = self.element.upgrade() {
            for text in summaries {
                gst::element_warning!(element, gst::ResourceError::Read, ("{}", text));
            }
        }
    }

    pub(super) fn reject(&self, peer: &str, reason: &str) {
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

    /// Makes connection `id` the publisher. `published_before`: it already published (and ended
    /// that publish) on this connection, so it left the pending table then.
    pub(super) fn try_acquire(
        &self,
        id: u64,
        peer: &str,
        published_before: bool,
    ) -> Result<(), String> {
        if self.ended.load(Ordering::SeqCst) {
            return Err("the stream has ended (eos-on-disconnect=true)".to_string());
        }
        // Lock order: pending, then publisher. A connection leaves the pending table as it
        // becomes the publisher, so eviction (which aborts the task) never hits a publisher.
        let mut pending = lock(&self.pending);
        let mut publisher = lock(&self.publisher);
        match &*publisher {
            Some((other, other_peer)) if *other != id => Err(format!(
                "another publisher ({other_peer}) is already active; one publisher at a time"
            )),
            _ => {
                if !pending.remove(id) && !published_before {
                    return Err("the connection was dropped to make room for others".to_string());
                }
                *publisher = Some((id, peer.to_string()));
                Ok(())
            }
        }
    }

    pub(super) fn release(&self, id: u64) {
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
    /// A publish was accepted on this connection before (it then left the pending table).
    published_before: bool,
    /// Current `idle-timeout` window of a publisher and the media bytes received in it.
    window_start: Instant,
    window_media: u64,
}

impl Connection {
    async fn run(
        &mut self,
        rd: &mut tokio::net::tcp::OwnedReadHalf,
        out: &mpsc::Sender<Vec<u8>>,
    ) -> ConnectionEnd {
        let mut buf = vec![0u8; READ_SIZE];
        let start = Instant::now();
        let idle = self.shared.idle_timeout;
        let pre_publish = self.shared.handshake_timeout;
        loop {
            // Deadlines that trickled bytes do not extend: publish within handshake-timeout of
            // connecting; once publishing, deliver MIN_MEDIA_BYTES_PER_WINDOW per idle-timeout.
            let limit = if self.publishing {
                if self.window_start.elapsed() >= idle {
                    if self.window_media < MIN_MEDIA_BYTES_PER_WINDOW {
                        return ConnectionEnd::warn(if self.window_media == 0 {
                            format!("no audio/video for {} ms (idle-timeout)", idle.as_millis())
                        } else {
                            format!(
                                "only {} bytes of audio/video in {} ms (idle-timeout; at least \
                                 {MIN_MEDIA_BYTES_PER_WINDOW} needed)",
                                self.window_media,
                                idle.as_millis()
                            )
                        });
                    }
                    self.window_start = Instant::now();
                    self.window_media = 0;
                }
                idle.saturating_sub(self.window_start.elapsed())
            } else {
                if start.elapsed() >= pre_publish {
                    return ConnectionEnd::warn(if self.session.handshake_done() {
                        format!(
                            "did not start publishing within {} ms of connecting \
                             (handshake-timeout)",
                            pre_publish.as_millis()
                        )
                    } else {
                        format!(
                            "RTMP handshake not completed within {} ms (handshake-timeout)",
                            pre_publish.as_millis()
                        )
                    });
                }
                pre_publish.saturating_sub(start.elapsed())
            };
            let n = match tokio::time::timeout(limit, rd.read(&mut buf)).await {
                // The deadlines are checked at the top of the loop.
                Err(_) => continue,
                Ok(Err(e)) => return ConnectionEnd::normal(format!("read error: {e}")),
                Ok(Ok(0)) => return ConnectionEnd::normal("connection closed by the publisher"),
                Ok(Ok(n)) => n,
            };
            if self.publishing {
                lock(&self.shared.stats).add_bytes(n as u64);
            }

            let shared = &self.shared;
            let peer = self.peer.as_str();
            let id = self.id;
            let published_before = self.published_before;
            let mut gate = |_app: &str, _key: &str| shared.try_acquire(id, peer, published_before);
            let session = &mut self.session;
            let result =
                std::panic::catch_unwind(AssertUnwindSafe(|| session.feed(&buf[..n], &mut gate)));
            let output = match result {
                Err(_) => return ConnectionEnd::warn("internal error while parsing RTMP input"),
                Ok(Err(e)) => return ConnectionEnd::warn(e.to_string()),
                Ok(Ok(output)) => output,
            };
            let guesses = output
                .events
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        SessionEvent::Rejected {
                            wrong_credentials: true,
                            ..
                        }
                    )
                })
                .count();
            if guesses > 0 && !self.throttle_guess(start).await {
                return ConnectionEnd::warn(
                    "too many wrong application / stream-key attempts from this address; \
                     try again later",
                );
            }
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

    /// Delays the answer to a wrong application / stream key as the per-address throttle says;
    /// false if the delay would outlast the connection's pre-publish deadline.
    async fn throttle_guess(&self, start: Instant) -> bool {
        let Ok(addr) = self.peer.parse::<SocketAddr>() else {
            return true;
        };
        let delay = lock(&self.shared.guesses).charge(addr.ip(), Instant::now());
        if delay.is_zero() {
            return true;
        }
        if start.elapsed() + delay > self.shared.handshake_timeout {
            return false;
        }
        tokio::time::sleep(delay).await;
        true
    }

    /// Waits until `len` more bytes may be queued towards the streaming threads.
    async fn reserve(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let permits = len.clamp(1, MAX_QUEUED_BYTES) as u32;
        self.shared
            .queued_bytes
            .clone()
            .acquire_many_owned(permits)
            .await
            .ok()
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
            Item::SessionEnd { reason, message } => {
                let copy = Item::SessionEnd {
                    reason: reason.clone(),
                    message: message.clone(),
                };
                match shared.video_items.send(copy).await {
                    Ok(()) => {
                        let item = Item::SessionEnd { reason, message };
                        shared.audio_items.send(item).await
                    }
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
                self.published_before = true;
                self.window_start = Instant::now();
                self.window_media = 0;
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
                let len = video_tag_len(&tag);
                self.window_media += len as u64;
                let budget = self.reserve(len).await;
                self.send_item(Item::Video {
                    dts_ms,
                    tag,
                    _budget: budget,
                })
                .await
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
                let len = audio_tag_len(&tag);
                self.window_media += len as u64;
                let budget = self.reserve(len).await;
                self.send_item(Item::Audio {
                    dts_ms,
                    tag,
                    _budget: budget,
                })
                .await
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
            SessionEvent::Rejected { reason, .. } => {
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
        let structure = gst::Structure::builder("rtmpflvsrc-disconnected")
            .field("publisher", &self.peer)
            .field("reason", reason)
            .build();
        // Posted after the session's buffers when the streaming threads run, else right away.
        let streaming = self
            .shared
            .element
            .upgrade()
            .is_some_and(|e| e.imp().streaming_active());
        let message = if streaming {
            Some(PostAfterAll::new(2, structure))
        } else {
            self.shared.post_element_message(structure);
            None
        };
        self.send_item(Item::SessionEnd {
            reason: reason.to_string(),
            message,
        })
        .await
    }
}

async fn handle_connection(stream: TcpStream, peer: SocketAddr, id: u64, shared: Arc<Shared>) {
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
        published_before: false,
        window_start: Instant::now(),
        window_media: 0,
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
        shared.post_peer_warning(
            "dropped",
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
    lock(&shared.pending).remove(id);
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    let mut summaries = tokio::time::interval(WARNING_INTERVAL);
    summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
                    let admitted = lock(&shared.pending).admit(id, Instant::now());
                    match admitted {
                        Err(reason) => {
                            shared.post_peer_warning(
                                "refused",
                                gst::ResourceError::Busy,
                                &format!("Refusing RTMP connection from {peer}: {reason}"),
                            );
                            drop(stream);
                        }
                        Ok(evict) => {
                            if let Some(old) = evict {
                                old.abort();
                                shared.post_peer_warning(
                                    "dropped",
                                    gst::ResourceError::Read,
                                    &format!(
                                        "Dropped an RTMP connection that had not published after \
                                         {} ms to make room for {peer} ({MAX_PENDING} were \
                                         connecting)",
                                        PENDING_GRACE.as_millis()
                                    ),
                                );
                            }
                            let handle =
                                connections.spawn(handle_connection(stream, peer, id, shared.clone()));
                            lock(&shared.pending).set_handle(id, handle);
                        }
                    }
                }
                Err(e) => {
                    if let Some(element) = shared.element.upgrade() {
                        gst::warning!(CAT, obj = element, "accept failed: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = summaries.tick() => shared.flush_peer_warnings(),
        }
    }
}

/// What a server is started with (the element's settings at NULL→READY).
pub(super) struct ServerConfig {
    pub(super) address: String,
    pub(super) port: u32,
    pub(super) app: String,
    pub(super) stream_key: String,
    pub(super) handshake_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) eos_on_disconnect: bool,
}

/// The running server: the listener task and the address it listens on.
pub(super) struct Server {
    task: JoinHandle<()>,
    pub(super) bound: SocketAddr,
}

impl Server {
    /// Binds `address:port` (errors name the address and what to do) and starts the listener
    /// task. Returns the server and the queues of video and audio [`Item`]s for the streaming
    /// threads.
    pub(super) fn start(
        config: ServerConfig,
        element: glib::WeakRef<super::RtmpFlvSrc>,
        announced: Arc<Announced>,
        stats: Arc<Mutex<Stats>>,
    ) -> Result<(Server, [mpsc::Receiver<Item>; 2]), gst::ErrorMessage> {
        let port = u16::try_from(config.port).map_err(|_| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                ("Invalid port {}: must be 0..=65535", config.port)
            )
        })?;
        let host = config.address.trim_start_matches('[').trim_end_matches(']');
        let listener = std::net::TcpListener::bind((host, port)).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                (
                    "Could not listen on {}:{}: {}. Is another server using the port? Choose another \
                     address/port (port=0 picks a free one).",
                    config.address,
                    config.port,
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
        let listener = {
            let _guard = RUNTIME.enter();
            TcpListener::from_std(listener).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    ("Could not register the socket: {}", e)
                )
            })?
        };

        let (video_tx, video_rx) = mpsc::channel(VIDEO_QUEUE);
        let (audio_tx, audio_rx) = mpsc::channel(AUDIO_QUEUE);
        let shared = Arc::new(Shared {
            announced,
            element,
            session_config: SessionConfig {
                app: config.app,
                stream_key: config.stream_key,
                limits: Limits::default(),
            },
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            eos_on_disconnect: config.eos_on_disconnect,
            publisher: Mutex::new(None),
            ended: AtomicBool::new(false),
            stats,
            queued_bytes: Arc::new(Semaphore::new(MAX_QUEUED_BYTES)),
            video_items: video_tx,
            audio_items: audio_tx,
            next_id: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
            pending: Mutex::new(Default::default()),
            warnings: Mutex::new(Default::default()),
            guesses: Mutex::new(Default::default()),
        });
        let task = RUNTIME.spawn(serve(listener, shared));
        Ok((Server { task, bound }, [video_rx, audio_rx]))
    }

    /// Aborts the listener task (and with it every connection) and waits on its join handle,
    /// at most [`STOP_WAIT`], until the task is gone and its listening socket closed. On a
    /// runtime thread (e.g. a bus sync handler run by a network task) it does not wait: that
    /// thread may be the one that must drop the task. `Err` says why the socket may still be
    /// open for a moment.
    pub(super) fn stop(self) -> Result<(), String> {
        self.task.abort();
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err("stopped from a network thread, not waiting for the listener".into());
        }
        let task = self.task;
        RUNTIME
            .block_on(async move { tokio::time::timeout(STOP_WAIT, task).await })
            .map(|_| ())
            .map_err(|_| format!("the listener task did not end within {STOP_WAIT:?}"))
    }
}
