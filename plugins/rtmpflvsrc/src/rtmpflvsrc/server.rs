// SPDX-License-Identifier: MPL-2.0

//! The network side of `rtmpflvsrc`: the listener task, one task per connection driving a
//! [`Session`], the publisher slot, statistics and the element / bus messages.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use super::imp::CAT;
use crate::flv::{self, AudioTag, VideoTag};
use crate::session::{Session, SessionConfig, SessionEvent};
use crate::timestamps::StreamKind;

/// Connections handled at once (publisher plus handshaking / rejected ones).
const MAX_CONNECTIONS: usize = 16;
/// Media bytes queued between the network and the streaming threads, at most; beyond that the
/// publisher's connection is not read (TCP back-pressure).
pub(super) const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;
/// Outgoing packets queued per connection before a non-reading peer is dropped.
const OUT_QUEUE: usize = 32;
/// Read buffer per connection.
const READ_SIZE: usize = 64 * 1024;
/// Window over which `bitrate` is computed.
const BITRATE_WINDOW: Duration = Duration::from_secs(3);

/// Counters behind the `stats` property.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) publisher: String,
    pub(super) app: String,
    pub(super) stream_key: String,
    pub(super) video_codec: String,
    pub(super) audio_codec: String,
    pub(super) bytes: u64,
    pub(super) video_frames: u64,
    pub(super) audio_frames: u64,
    pub(super) connections: u64,
    pub(super) rejected: u64,
    pub(super) recent: VecDeque<(Instant, u64)>,
}

impl Stats {
    pub(super) fn add_bytes(&mut self, n: u64) {
        self.bytes += n;
        let now = Instant::now();
        self.recent.push_back((now, n));
        self.prune(now);
    }

    pub(super) fn prune(&mut self, now: Instant) {
        while let Some(&(t, _)) = self.recent.front() {
            if now.duration_since(t) > BITRATE_WINDOW {
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }

    pub(super) fn bitrate(&mut self) -> u64 {
        self.prune(Instant::now());
        let bytes: u64 = self.recent.iter().map(|&(_, n)| n).sum();
        bytes * 8 / BITRATE_WINDOW.as_secs()
    }

    pub(super) fn snapshot(&mut self) -> gst::Structure {
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
pub(super) enum Item {
    SessionStart {
        session: u64,
        publisher: String,
    },
    /// `budget` holds the item's share of [`MAX_QUEUED_BYTES`] until the item is dropped.
    Video {
        dts_ms: i64,
        tag: VideoTag,
        _budget: Option<OwnedSemaphorePermit>,
    },
    Audio {
        dts_ms: i64,
        tag: AudioTag,
        _budget: Option<OwnedSemaphorePermit>,
    },
    SessionEnd {
        reason: String,
        /// The "rtmpflvsrc-disconnected" message, posted by the second streaming thread to
        /// handle this item, i.e. once every buffer of the session has been pushed.
        message: Option<Arc<PostAfterAll>>,
    },
}

/// An element message to post once all streaming threads got to it.
#[derive(Debug)]
pub(super) struct PostAfterAll {
    remaining: AtomicUsize,
    structure: Mutex<Option<gst::Structure>>,
}

impl PostAfterAll {
    fn new(count: usize, structure: gst::Structure) -> Arc<Self> {
        Arc::new(PostAfterAll {
            remaining: AtomicUsize::new(count),
            structure: Mutex::new(Some(structure)),
        })
    }

    /// Counts one thread in; returns the structure to post for the last one.
    pub(super) fn arrive(&self) -> Option<gst::Structure> {
        if self.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            lock(&self.structure).take()
        } else {
            None
        }
    }
}

/// What the current publisher announced, written by the network side and read by the
/// streaming threads to add pads in a predictable order and signal no-more-pads.
#[derive(Default)]
pub(super) struct Announced {
    /// A video message was received.
    pub(super) video: AtomicBool,
    /// onMetaData: (has video, has audio).
    pub(super) metadata: Mutex<Option<(bool, bool)>>,
}

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

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

    pub(super) fn try_acquire(&self, id: u64, peer: &str) -> Result<(), String> {
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

            let shared = &self.shared;
            let peer = self.peer.as_str();
            let id = self.id;
            let mut gate = |_app: &str, _key: &str| shared.try_acquire(id, peer);
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
                let budget = self.reserve(video_tag_len(&tag)).await;
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
                let budget = self.reserve(audio_tag_len(&tag)).await;
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

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
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
pub(super) struct Server {
    pub(super) task: JoinHandle<()>,
    pub(super) shared: Arc<Shared>,
    pub(super) bound: SocketAddr,
}

impl Server {
    /// Aborts the listener (and with it every connection) and waits, bounded, until the
    /// listening socket is closed.
    pub(super) fn stop(self) {
        self.task.abort();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.task.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(self.shared);
    }
}
