// SPDX-License-Identifier: MPL-2.0

//! The network side of `rtmpflvsrc`: the listener task, one task per connection driving a
//! [`Session`], the publisher slot, statistics and the element / bus messages.

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use super::imp::CAT;
use crate::flv::{self, AudioTag, VideoTag};
use crate::session::{Session, SessionConfig, SessionEvent};
use crate::timestamps::StreamKind;

/// Connections not publishing (yet) served at once: handshaking, connecting, being rejected.
/// The publisher does not count against it.
pub(super) const MAX_PENDING: usize = 64;
/// When every pending slot is taken, the oldest pending connection is dropped for a new one if
/// it has had this long to publish; otherwise the new connection is refused. A real publisher
/// needs a few round trips, an attacker holding slots is churned out.
const PENDING_GRACE: Duration = Duration::from_secs(1);
/// Audio/video payload bytes a publisher must deliver per `idle-timeout` to keep its slot
/// (a trickle of one byte per second does not).
pub(super) const MIN_MEDIA_BYTES_PER_WINDOW: u64 = 1024;
/// At most one bus warning per kind (refused, dropped) per interval; the others are counted
/// and summarized.
const WARNING_INTERVAL: Duration = Duration::from_secs(5);
/// Wrong application / stream-key guesses per peer address: this many at once, then one per
/// [`GUESS_INTERVAL`] (the answer to a guess is delayed).
const GUESS_BURST: u32 = 5;
const GUESS_INTERVAL: Duration = Duration::from_secs(1);
/// Addresses remembered by the guess throttle, at most.
const GUESS_TABLE: usize = 1024;
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

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connections that do not publish (yet): when they fill [`MAX_PENDING`], the oldest one past
/// [`PENDING_GRACE`] makes room for a newcomer.
#[derive(Default)]
pub(super) struct PendingTable {
    conns: HashMap<u64, (Instant, Option<AbortHandle>)>,
}

impl PendingTable {
    /// Admits connection `id`; returns the task to abort to make room (if any), or `Err` with
    /// the reason to refuse the newcomer.
    fn admit(&mut self, id: u64, now: Instant) -> Result<Option<AbortHandle>, String> {
        let mut evict = None;
        if self.conns.len() >= MAX_PENDING {
            let oldest = self
                .conns
                .iter()
                .min_by_key(|(_, (since, _))| *since)
                .map(|(id, (since, _))| (*id, *since));
            match oldest {
                Some((old, since)) if now.duration_since(since) >= PENDING_GRACE => {
                    evict = self.conns.remove(&old).and_then(|(_, h)| h);
                }
                _ => {
                    return Err(format!(
                        "{MAX_PENDING} connections are already connecting, none of them for \
                         longer than {} ms",
                        PENDING_GRACE.as_millis()
                    ));
                }
            }
        }
        self.conns.insert(id, (now, None));
        Ok(evict)
    }

    fn set_handle(&mut self, id: u64, handle: AbortHandle) {
        if let Some(entry) = self.conns.get_mut(&id) {
            entry.1 = Some(handle);
        }
    }

    /// Removes `id`; false if it was not there (evicted).
    fn remove(&mut self, id: u64) -> bool {
        self.conns.remove(&id).is_some()
    }
}

/// Bus warnings of one kind at most once per [`WARNING_INTERVAL`]; the rest are counted and
/// reported in one summary.
#[derive(Default)]
pub(super) struct WarningDigest {
    kinds: HashMap<&'static str, DigestEntry>,
}

struct DigestEntry {
    posted: Instant,
    suppressed: u64,
    latest: String,
}

impl WarningDigest {
    /// The text to post now, or `None` if this warning is only counted.
    fn admit(&mut self, kind: &'static str, text: &str, now: Instant) -> Option<String> {
        match self.kinds.get_mut(kind) {
            Some(e) if now.duration_since(e.posted) < WARNING_INTERVAL => {
                e.suppressed += 1;
                e.latest = text.to_string();
                None
            }
            Some(e) => {
                let out = if e.suppressed > 0 {
                    format!(
                        "{text} (and {} more like this in the {} s before)",
                        e.suppressed,
                        now.duration_since(e.posted).as_secs()
                    )
                } else {
                    text.to_string()
                };
                e.posted = now;
                e.suppressed = 0;
                Some(out)
            }
            None => {
                self.kinds.insert(
                    kind,
                    DigestEntry {
                        posted: now,
                        suppressed: 0,
                        latest: String::new(),
                    },
                );
                Some(text.to_string())
            }
        }
    }

    /// Summaries of what was counted over a finished interval.
    fn flush(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.kinds.values_mut() {
            if e.suppressed > 0 && now.duration_since(e.posted) >= WARNING_INTERVAL {
                out.push(format!(
                    "{} more like this in the last {} s, the latest: {}",
                    e.suppressed,
                    now.duration_since(e.posted).as_secs(),
                    e.latest
                ));
                e.posted = now;
                e.suppressed = 0;
            }
        }
        out
    }
}

/// Wrong application / stream-key guesses per address (GCRA): [`GUESS_BURST`] answered at
/// once, then one per [`GUESS_INTERVAL`].
#[derive(Default)]
pub(super) struct GuessThrottle {
    /// Per address: the time the next guess is "due" at the sustained rate.
    due: HashMap<IpAddr, Instant>,
}

impl GuessThrottle {
    /// Counts a wrong guess from `ip`; returns how long its answer must wait.
    fn charge(&mut self, ip: IpAddr, now: Instant) -> Duration {
        if self.due.len() >= GUESS_TABLE && !self.due.contains_key(&ip) {
            // Forget addresses that are back at full allowance, else the one due soonest.
            self.due.retain(|_, due| *due > now);
            if self.due.len() >= GUESS_TABLE
                && let Some(ip) = self.due.iter().min_by_key(|(_, d)| **d).map(|(ip, _)| *ip)
            {
                self.due.remove(&ip);
            }
        }
        let due = self.due.entry(ip).or_insert(now);
        let start = (*due).max(now);
        *due = start + GUESS_INTERVAL;
        let allowance = GUESS_INTERVAL * GUESS_BURST;
        (start + GUESS_INTERVAL)
            .saturating_duration_since(now)
            .saturating_sub(allowance)
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

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_table_evicts_only_past_the_grace() {
        let t0 = Instant::now();
        let mut t = PendingTable::default();
        for id in 0..MAX_PENDING as u64 {
            assert!(matches!(t.admit(id, t0), Ok(None)));
        }
        // Full of young connections: the newcomer is refused.
        let e = t.admit(1000, t0 + PENDING_GRACE / 2).unwrap_err();
        assert!(e.contains("already connecting"), "{e}");
        // Past the grace the oldest makes room (no handle registered: nothing to abort).
        assert!(matches!(t.admit(1001, t0 + PENDING_GRACE), Ok(None)));
        assert_eq!(t.conns.len(), MAX_PENDING);
        assert!(t.conns.contains_key(&1001));
        // A connection that became the publisher left the table; an evicted one is gone.
        assert!(t.remove(1001));
        assert!(!t.remove(1001));
    }

    #[test]
    fn warning_digest_posts_once_per_interval_and_summarizes() {
        let t0 = Instant::now();
        let mut d = WarningDigest::default();
        assert_eq!(d.admit("refused", "a", t0).as_deref(), Some("a"));
        for i in 0..1000 {
            assert!(d.admit("refused", &format!("r{i}"), t0).is_none());
        }
        // Another kind is independent.
        assert_eq!(d.admit("dropped", "b", t0).as_deref(), Some("b"));
        assert!(d.flush(t0 + WARNING_INTERVAL / 2).is_empty());
        let s = d.flush(t0 + WARNING_INTERVAL);
        assert_eq!(s.len(), 1, "{s:?}");
        assert!(
            s[0].starts_with("1000 more like this") && s[0].ends_with("r999"),
            "{s:?}"
        );
        assert!(d.flush(t0 + WARNING_INTERVAL * 3).is_empty());
        let later = t0 + WARNING_INTERVAL * 3;
        assert_eq!(d.admit("refused", "c", later).as_deref(), Some("c"));
    }

    #[test]
    fn guess_throttle_allows_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut g = GuessThrottle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let delays: Vec<Duration> = (0..8).map(|_| g.charge(ip, t0)).collect();
        assert!(
            delays[..GUESS_BURST as usize].iter().all(|d| d.is_zero()),
            "{delays:?}"
        );
        assert_eq!(delays[GUESS_BURST as usize], GUESS_INTERVAL);
        assert_eq!(delays[GUESS_BURST as usize + 2], GUESS_INTERVAL * 3);
        // Another address is not slowed down.
        assert!(g.charge("192.0.2.2".parse().unwrap(), t0).is_zero());
        // After a quiet period the burst is back.
        assert!(g.charge(ip, t0 + GUESS_INTERVAL * 20).is_zero());
        // The table stays bounded.
        for i in 0..(GUESS_TABLE as u32 * 2) {
            g.charge(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(g.due.len() <= GUESS_TABLE);
    }
}
