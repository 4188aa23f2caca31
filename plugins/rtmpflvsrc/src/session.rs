// SPDX-License-Identifier: MPL-2.0

//! Per-connection RTMP server byte handling, without I/O and without GStreamer types.
//!
//! [`Session`] takes the bytes a publisher sends and returns the bytes to send back plus
//! [`SessionEvent`]s (publish started, parsed media, rejections). It drives the `rml_rtmp`
//! handshake and `ServerSession`, checks the app / stream key, and guards `rml_rtmp` against
//! hostile input with a [`ChunkScanner`] that validates the chunk stream before `rml_rtmp`
//! sees it (size limits, chunk-size limits, interleaving, extended timestamps, AMF nesting).
//! The session and its guard are one state machine over the same bytes, hence one file of a
//! little under 900 lines (the tests are in `session/tests.rs`).

use crate::flv::{self, AudioTag, FlvError, VideoTag};
use crate::timestamps::{StreamKind, TimestampUnwrapper};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use std::collections::HashMap;
use std::fmt;

/// Hard limits applied to every connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest RTMP message (e.g. one video frame) accepted.
    pub max_message_size: u32,
    /// Largest chunk size a peer may announce with SetChunkSize.
    pub max_chunk_size: u32,
    /// Largest AMF command / data message.
    pub max_amf_size: u32,
    /// Deepest AMF0 object / array nesting.
    pub max_amf_depth: usize,
    /// Most distinct chunk stream ids in use on one connection.
    pub max_chunk_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 8 * 1024 * 1024,
            max_chunk_size: 1024 * 1024,
            max_amf_size: 64 * 1024,
            max_amf_depth: 16,
            max_chunk_streams: 64,
        }
    }
}

/// What a connection may publish to.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    /// Required RTMP application name.
    pub app: String,
    /// Required stream key; empty accepts any key.
    pub stream_key: String,
    pub limits: Limits,
}

/// Something that happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A publish request was accepted.
    PublishStarted { app: String, stream_key: String },
    /// A video message of the accepted publish stream; `dts_ms` is the unwrapped RTMP time.
    Video { dts_ms: i64, tag: VideoTag },
    /// An audio message of the accepted publish stream.
    Audio { dts_ms: i64, tag: AudioTag },
    /// The publisher's onMetaData: which streams it announces.
    Metadata { has_video: bool, has_audio: bool },
    /// A media message that could not be used (unknown codec, truncated tag, ...).
    MediaError { kind: StreamKind, error: FlvError },
    /// The publisher ended its publish (deleteStream / closeStream / FCUnpublish).
    PublishFinished,
    /// A request was refused at the protocol level; the connection should now be closed.
    /// `wrong_credentials`: a wrong application or stream key (a guess the server throttles).
    Rejected {
        reason: String,
        wrong_credentials: bool,
    },
}

/// Why a connection has to be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The RTMP handshake failed.
    Handshake(String),
    /// The peer broke the RTMP protocol.
    Protocol(String),
    /// The peer exceeded one of our [`Limits`].
    Limit(String),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Handshake(s) => write!(f, "RTMP handshake failed: {s}"),
            SessionError::Protocol(s) => write!(f, "RTMP protocol error: {s}"),
            SessionError::Limit(s) => write!(f, "limit exceeded: {s}"),
        }
    }
}

impl std::error::Error for SessionError {}

/// Result of feeding bytes into a [`Session`].
#[derive(Debug, Default)]
pub struct Output {
    /// Bytes to send to the peer, in order.
    pub send: Vec<u8>,
    pub events: Vec<SessionEvent>,
}

enum Phase {
    Handshake(Box<Handshake>),
    Rtmp(Box<ServerSession>),
    Closed,
}

/// The server side of one RTMP connection.
pub struct Session {
    config: SessionConfig,
    phase: Phase,
    scanner: ChunkScanner,
    publishing: bool,
    unwrapper: TimestampUnwrapper,
}

/// Decides whether a publish may start (one publisher per element). Returns the reason for a
/// refusal.
pub type PublishGate<'a> = dyn FnMut(&str, &str) -> Result<(), String> + 'a;

impl Session {
    pub fn new(config: SessionConfig) -> Self {
        Session {
            scanner: ChunkScanner::new(config.limits),
            config,
            phase: Phase::Handshake(Box::new(Handshake::new(PeerType::Server))),
            publishing: false,
            unwrapper: TimestampUnwrapper::new(),
        }
    }

    /// Whether the handshake has completed.
    pub fn handshake_done(&self) -> bool {
        !matches!(self.phase, Phase::Handshake(_))
    }

    /// Whether the connection was refused and should be closed once `send` is flushed.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether a publish is active on this connection.
    pub fn is_publishing(&self) -> bool {
        self.publishing
    }

    /// Processes bytes received from the peer.
    ///
    /// `gate` is asked before a publish that passed the app / key checks is accepted.
    pub fn feed(&mut self, input: &[u8], gate: &mut PublishGate) -> Result<Output, SessionError> {
        let mut out = Output::default();
        let mut input = input;

        if let Phase::Handshake(handshake) = &mut self.phase {
            match handshake.process_bytes(input) {
                Err(e) => {
                    self.phase = Phase::Closed;
                    return Err(SessionError::Handshake(format!("{e:?}")));
                }
                Ok(HandshakeProcessResult::InProgress { response_bytes }) => {
                    out.send.extend_from_slice(&response_bytes);
                    return Ok(out);
                }
                Ok(HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                }) => {
                    out.send.extend_from_slice(&response_bytes);
                    let (session, results) = ServerSession::new(ServerSessionConfig::new())
                        .map_err(|e| SessionError::Protocol(e.to_string()))?;
                    self.phase = Phase::Rtmp(Box::new(session));
                    self.handle_results(results, &mut out, gate)?;
                    // Continue below with what followed the handshake.
                    return self.feed_rtmp(&remaining_bytes, out, gate);
                }
            }
        }
        if matches!(self.phase, Phase::Closed) {
            input = &[];
        }
        self.feed_rtmp(input, out, gate)
    }

    fn feed_rtmp(
        &mut self,
        mut input: &[u8],
        mut out: Output,
        gate: &mut PublishGate,
    ) -> Result<Output, SessionError> {
        while !input.is_empty() {
            if !matches!(self.phase, Phase::Rtmp(_)) {
                break;
            }
            // Hand rml_rtmp the bytes up to (and including) the next complete message only,
            // after the scanner has validated them.
            let (consumed, _message) = self.scanner.next(input)?;
            let (now, rest) = input.split_at(consumed);
            input = rest;
            let Phase::Rtmp(session) = &mut self.phase else {
                break;
            };
            let results = session
                .handle_input(now)
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            self.handle_results(results, &mut out, gate)?;
        }
        Ok(out)
    }

    fn handle_results(
        &mut self,
        results: Vec<ServerSessionResult>,
        out: &mut Output,
        gate: &mut PublishGate,
    ) -> Result<(), SessionError> {
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    if !matches!(self.phase, Phase::Closed) {
                        out.send.extend_from_slice(&packet.bytes);
                    }
                }
                ServerSessionResult::RaisedEvent(event) => self.handle_event(event, out, gate)?,
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    fn reject(
        &mut self,
        request_id: u32,
        code: &str,
        reason: String,
        wrong_credentials: bool,
        out: &mut Output,
    ) -> Result<(), SessionError> {
        if let Phase::Rtmp(session) = &mut self.phase {
            let results = session
                .reject_request(request_id, code, &reason)
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            for r in results {
                if let ServerSessionResult::OutboundResponse(packet) = r {
                    out.send.extend_from_slice(&packet.bytes);
                }
            }
        }
        out.events.push(SessionEvent::Rejected {
            reason,
            wrong_credentials,
        });
        self.phase = Phase::Closed;
        self.publishing = false;
        Ok(())
    }

    fn accept(
        &mut self,
        request_id: u32,
        out: &mut Output,
        gate: &mut PublishGate,
    ) -> Result<(), SessionError> {
        let results = match &mut self.phase {
            Phase::Rtmp(session) => session
                .accept_request(request_id)
                .map_err(|e| SessionError::Protocol(e.to_string()))?,
            _ => return Ok(()),
        };
        self.handle_results(results, out, gate)
    }

    fn handle_event(
        &mut self,
        event: ServerSessionEvent,
        out: &mut Output,
        gate: &mut PublishGate,
    ) -> Result<(), SessionError> {
        if matches!(self.phase, Phase::Closed) {
            return Ok(());
        }
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name == self.config.app {
                    self.accept(request_id, out, gate)?;
                } else {
                    let reason = format!(
                        "wrong application '{}' (this server accepts '{}')",
                        app_name, self.config.app
                    );
                    self.reject(
                        request_id,
                        "NetConnection.Connect.Rejected",
                        reason,
                        true,
                        out,
                    )?;
                }
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => {
                if self.publishing {
                    let reason = "a second publish on the same connection".to_string();
                    self.reject(request_id, "NetStream.Publish.BadName", reason, false, out)?;
                } else if !self.config.stream_key.is_empty() && stream_key != self.config.stream_key
                {
                    let reason = format!("wrong stream key '{stream_key}' for app '{app_name}'");
                    self.reject(request_id, "NetStream.Publish.BadName", reason, true, out)?;
                } else {
                    match gate(&app_name, &stream_key) {
                        Ok(()) => {
                            self.accept(request_id, out, gate)?;
                            self.publishing = true;
                            self.scanner.set_publishing(true);
                            self.unwrapper = TimestampUnwrapper::new();
                            out.events.push(SessionEvent::PublishStarted {
                                app: app_name,
                                stream_key,
                            });
                        }
                        Err(reason) => {
                            self.reject(
                                request_id,
                                "NetStream.Publish.BadName",
                                reason,
                                false,
                                out,
                            )?;
                        }
                    }
                }
            }
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                let reason = "play requested, but this server only accepts publishers".to_string();
                self.reject(request_id, "NetStream.Play.Failed", reason, false, out)?;
            }
            ServerSessionEvent::PublishStreamFinished { .. } if self.publishing => {
                self.publishing = false;
                out.events.push(SessionEvent::PublishFinished);
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } if self.publishing => {
                let dts_ms = self.unwrapper.unwrap(timestamp.value);
                match flv::parse_video(&data) {
                    Ok(VideoTag::Ignored) => {}
                    Ok(tag) => out.events.push(SessionEvent::Video { dts_ms, tag }),
                    Err(error) => out.events.push(SessionEvent::MediaError {
                        kind: StreamKind::Video,
                        error,
                    }),
                }
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } if self.publishing => {
                let dts_ms = self.unwrapper.unwrap(timestamp.value);
                match flv::parse_audio(&data) {
                    Ok(AudioTag::Ignored) => {}
                    Ok(tag) => out.events.push(SessionEvent::Audio { dts_ms, tag }),
                    Err(error) => out.events.push(SessionEvent::MediaError {
                        kind: StreamKind::Audio,
                        error,
                    }),
                }
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } if self.publishing => {
                out.events.push(SessionEvent::Metadata {
                    has_video: metadata.video_codec_id.is_some() || metadata.video_width.is_some(),
                    has_audio: metadata.audio_codec_id.is_some()
                        || metadata.audio_sample_rate.is_some(),
                });
            }
            ServerSessionEvent::UnhandleableAmf0Command { command_name, .. }
                if command_name == "FCUnpublish" && self.publishing =>
            {
                self.publishing = false;
                out.events.push(SessionEvent::PublishFinished);
            }
            _ => {}
        }
        Ok(())
    }
}

/// A complete RTMP message as seen by the [`ChunkScanner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo {
    pub chunk_stream_id: u32,
    pub type_id: u8,
    pub message_stream_id: u32,
    /// Message timestamp (32-bit RTMP milliseconds, extended timestamps resolved).
    pub timestamp: u32,
    pub length: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct ChunkStreamState {
    timestamp: u32,
    /// The last 24-bit timestamp field received on this chunk stream (0xFFFFFF = extended).
    timestamp_field: u32,
    length: u32,
    type_id: u8,
    message_stream_id: u32,
    /// Bytes of the message in progress still to come (0 = none in progress).
    remaining: u32,
}

const EXTENDED_TIMESTAMP: u32 = 0x00FF_FFFF;
const INITIAL_CHUNK_SIZE: u32 = 128;

/// Validating RTMP chunk-stream parser that mirrors `rml_rtmp`'s chunk deserializer without
/// storing payloads, so that input it would mishandle is refused before it gets there.
///
/// It splits the input at message boundaries, which lets the caller feed `rml_rtmp` one
/// message at a time.
pub struct ChunkScanner {
    limits: Limits,
    chunk_size: u32,
    streams: HashMap<u32, ChunkStreamState>,
    header: Vec<u8>,
    /// (chunk stream id, payload bytes left in the current chunk)
    in_chunk: Option<(u32, u32)>,
    /// Chunk stream with a partially received message.
    active: Option<u32>,
    /// Payload of the current message, kept for control and AMF messages only.
    capture: Option<Vec<u8>>,
    /// Large (media) messages are only accepted once publishing.
    publishing: bool,
}

impl ChunkScanner {
    pub fn new(limits: Limits) -> Self {
        ChunkScanner {
            limits,
            chunk_size: INITIAL_CHUNK_SIZE,
            streams: HashMap::new(),
            header: Vec::with_capacity(18),
            in_chunk: None,
            active: None,
            capture: None,
            publishing: false,
        }
    }

    /// Allows messages up to `max_message_size` (before a publish is accepted, every message
    /// is limited to `max_amf_size`, so unauthenticated peers cannot make us buffer much).
    pub fn set_publishing(&mut self, publishing: bool) {
        self.publishing = publishing;
    }

    /// Bytes of header / payload the scanner itself holds.
    pub fn buffered(&self) -> usize {
        self.header.capacity() + self.capture.as_ref().map_or(0, |c| c.capacity())
    }

    /// Consumes input up to and including the end of the next complete message.
    ///
    /// Returns how many bytes were consumed and the message completed by the last of them (if
    /// any). Without a completed message all input was consumed.
    pub fn next(&mut self, input: &[u8]) -> Result<(usize, Option<MessageInfo>), SessionError> {
        let mut pos = 0;
        while pos < input.len() {
            if let Some((csid, left)) = self.in_chunk {
                let n = (left as usize).min(input.len() - pos);
                if let Some(capture) = &mut self.capture {
                    capture.extend_from_slice(&input[pos..pos + n]);
                }
                pos += n;
                let left = left - n as u32;
                let state = self.streams.get_mut(&csid).ok_or_else(|| {
                    SessionError::Protocol("internal: lost chunk stream".to_string())
                })?;
                state.remaining -= n as u32;
                if left > 0 {
                    self.in_chunk = Some((csid, left));
                    continue;
                }
                self.in_chunk = None;
                if state.remaining == 0 {
                    let info = self.complete(csid)?;
                    return Ok((pos, Some(info)));
                }
                continue;
            }

            self.header.push(input[pos]);
            pos += 1;
            if let Some(info) = self.try_header()? {
                return Ok((pos, Some(info)));
            }
        }
        Ok((pos, None))
    }

    /// Length of the header collected so far, once it can be known.
    fn header_len(&self) -> Option<usize> {
        let h = &self.header;
        let first = *h.first()?;
        let fmt = first >> 6;
        let basic = match first & 0x3f {
            0 => 2,
            1 => 3,
            _ => 1,
        };
        let message = match fmt {
            0 => 11,
            1 => 7,
            2 => 3,
            _ => 0,
        };
        let base = basic + message;
        if h.len() < basic {
            return None;
        }
        let extended = if fmt == 3 {
            let csid = basic_csid(h);
            self.streams
                .get(&csid)
                .is_some_and(|s| s.timestamp_field >= EXTENDED_TIMESTAMP)
        } else {
            if h.len() < basic + 3 {
                return None;
            }
            read_u24(&h[basic..]) == EXTENDED_TIMESTAMP
        };
        Some(if extended { base + 4 } else { base })
    }

    fn try_header(&mut self) -> Result<Option<MessageInfo>, SessionError> {
        let Some(len) = self.header_len() else {
            return Ok(None);
        };
        if self.header.len() < len {
            return Ok(None);
        }
        let h = std::mem::take(&mut self.header);
        let result = self.apply_header(&h);
        self.header = h;
        self.header.clear();
        result
    }

    fn apply_header(&mut self, h: &[u8]) -> Result<Option<MessageInfo>, SessionError> {
        let fmt = h[0] >> 6;
        let csid = basic_csid(h);
        let basic = match h[0] & 0x3f {
            0 => 2,
            1 => 3,
            _ => 1,
        };
        let m = &h[basic..];

        if let Some(active) = self.active
            && active != csid
        {
            return Err(SessionError::Protocol(format!(
                "chunk stream {csid} interleaved into an unfinished message on chunk stream \
                 {active} (not supported)"
            )));
        }

        if !self.streams.contains_key(&csid) {
            if fmt != 0 {
                return Err(SessionError::Protocol(format!(
                    "chunk type {fmt} on chunk stream {csid} without a previous header"
                )));
            }
            if self.streams.len() >= self.limits.max_chunk_streams {
                return Err(SessionError::Limit(format!(
                    "more than {} chunk streams",
                    self.limits.max_chunk_streams
                )));
            }
            self.streams.insert(csid, ChunkStreamState::default());
        }
        let chunk_size = self.chunk_size;
        let limits = self.limits;
        let state = self
            .streams
            .get_mut(&csid)
            .ok_or_else(|| SessionError::Protocol("internal: lost chunk stream".to_string()))?;

        if state.remaining > 0 {
            // Continuation chunk of the message in progress.
            if fmt != 3 {
                return Err(SessionError::Protocol(format!(
                    "chunk type {fmt} header in the middle of a message on chunk stream {csid}"
                )));
            }
            self.in_chunk = Some((csid, state.remaining.min(chunk_size)));
            return Ok(None);
        }

        match fmt {
            0..=2 => {
                let field = read_u24(m);
                let value = if field == EXTENDED_TIMESTAMP {
                    let ext = read_u32(&m[message_header_len(fmt)..]);
                    if fmt != 0 && ext < EXTENDED_TIMESTAMP {
                        return Err(SessionError::Protocol(format!(
                            "extended timestamp delta {ext} below 0xFFFFFF"
                        )));
                    }
                    ext
                } else {
                    field
                };
                if fmt == 0 {
                    state.timestamp = value;
                    state.message_stream_id = u32::from_le_bytes([m[7], m[8], m[9], m[10]]);
                } else {
                    state.timestamp = state.timestamp.wrapping_add(value);
                }
                if fmt != 2 {
                    state.length = read_u24(&m[3..]);
                    state.type_id = m[6];
                }
                state.timestamp_field = field;
            }
            _ => {
                // A new message with all header fields (and the delta) of the previous one.
                let delta = if state.timestamp_field >= EXTENDED_TIMESTAMP {
                    let ext = read_u32(m);
                    if ext < EXTENDED_TIMESTAMP {
                        return Err(SessionError::Protocol(format!(
                            "extended timestamp delta {ext} below 0xFFFFFF"
                        )));
                    }
                    ext
                } else {
                    state.timestamp_field
                };
                state.timestamp = state.timestamp.wrapping_add(delta);
            }
        }

        let length = state.length;
        let type_id = state.type_id;
        let max = match type_id {
            15 | 17 | 18 | 20 => limits.max_amf_size,
            1..=6 => 64,
            _ if self.publishing => limits.max_message_size,
            _ => limits.max_amf_size,
        };
        if length > max {
            return Err(SessionError::Limit(format!(
                "message of type {type_id} with {length} bytes (at most {max} accepted)"
            )));
        }
        state.remaining = length;
        self.capture = match type_id {
            1..=6 | 15 | 17 | 18 | 20 => Some(Vec::with_capacity(length as usize)),
            _ => None,
        };
        if length == 0 {
            return self.complete(csid).map(Some);
        }
        self.active = Some(csid);
        self.in_chunk = Some((csid, length.min(chunk_size)));
        Ok(None)
    }

    fn complete(&mut self, csid: u32) -> Result<MessageInfo, SessionError> {
        self.active = None;
        let state = self
            .streams
            .get(&csid)
            .copied()
            .ok_or_else(|| SessionError::Protocol("internal: lost chunk stream".to_string()))?;
        let payload = self.capture.take().unwrap_or_default();
        match state.type_id {
            1 => {
                if payload.len() < 4 {
                    return Err(SessionError::Protocol(
                        "truncated SetChunkSize message".to_string(),
                    ));
                }
                let size = read_u32(&payload);
                if size == 0 || size > self.limits.max_chunk_size {
                    return Err(SessionError::Limit(format!(
                        "chunk size {size} (accepted: 1..={})",
                        self.limits.max_chunk_size
                    )));
                }
                self.chunk_size = size;
            }
            // rml_rtmp adds up received bytes in a u32 until this window is reached.
            5 if payload.len() >= 4 && read_u32(&payload) > 0x7FFF_FFFF => {
                return Err(SessionError::Protocol(format!(
                    "window acknowledgement size {} too large",
                    read_u32(&payload)
                )));
            }
            15 | 18 => {
                let values = check_amf0(&payload, self.limits.max_amf_depth)?;
                // rml_rtmp indexes "@setDataFrame", "onMetaData", {...} without checking.
                const SET_DATA_FRAME: &[u8] = b"\x02\x00\x0d@setDataFrame";
                if payload.starts_with(SET_DATA_FRAME) && values < 3 {
                    return Err(SessionError::Protocol(
                        "@setDataFrame with fewer than 3 values".to_string(),
                    ));
                }
            }
            17 | 20 => {
                let body = if state.type_id == 17 && payload.first() == Some(&0) {
                    &payload[1..]
                } else {
                    &payload[..]
                };
                // rml_rtmp expects name, transaction id and command object.
                if check_amf0(body, self.limits.max_amf_depth)? < 3 {
                    return Err(SessionError::Protocol(
                        "AMF command with fewer than 3 values".to_string(),
                    ));
                }
            }
            _ => {}
        }
        Ok(MessageInfo {
            chunk_stream_id: csid,
            type_id: state.type_id,
            message_stream_id: state.message_stream_id,
            timestamp: state.timestamp,
            length: state.length,
        })
    }
}

fn message_header_len(fmt: u8) -> usize {
    match fmt {
        0 => 11,
        1 => 7,
        2 => 3,
        _ => 0,
    }
}

fn basic_csid(h: &[u8]) -> u32 {
    match h[0] & 0x3f {
        0 => u32::from(h[1]) + 64,
        1 => u32::from(h[2]) * 256 + u32::from(h[1]) + 64,
        x => u32::from(x),
    }
}

fn read_u24(b: &[u8]) -> u32 {
    (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2])
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Rejects AMF0 payloads nested deeper than `max_depth`, walking them the way `rml_amf0`
/// does (which recurses without a limit), and returns the number of top-level values.
/// Anything it cannot walk is left to `rml_amf0` to reject (the count stops there).
fn check_amf0(data: &[u8], max_depth: usize) -> Result<usize, SessionError> {
    struct Walker<'a> {
        data: &'a [u8],
        pos: usize,
        max_depth: usize,
    }
    enum Stop {
        TooDeep,
        End,
    }
    impl Walker<'_> {
        fn u8(&mut self) -> Result<u8, Stop> {
            let b = *self.data.get(self.pos).ok_or(Stop::End)?;
            self.pos += 1;
            Ok(b)
        }
        fn skip(&mut self, n: usize) -> Result<(), Stop> {
            if self.pos + n > self.data.len() {
                return Err(Stop::End);
            }
            self.pos += n;
            Ok(())
        }
        fn u16(&mut self) -> Result<usize, Stop> {
            Ok((usize::from(self.u8()?) << 8) | usize::from(self.u8()?))
        }
        fn string_body(&mut self) -> Result<(), Stop> {
            let len = self.u16()?;
            // rml_amf0 tolerates short reads here.
            self.pos = (self.pos + len).min(self.data.len());
            Ok(())
        }
        /// Ok(false) at end of input.
        fn value(&mut self, depth: usize) -> Result<bool, Stop> {
            let Some(&marker) = self.data.get(self.pos) else {
                return Ok(false);
            };
            self.pos += 1;
            match marker {
                0 => self.skip(8)?,
                1 => self.skip(1)?,
                2 => self.string_body()?,
                5 | 6 => {}
                3 => self.object(depth + 1)?,
                8 => {
                    self.skip(4)?;
                    self.object(depth + 1)?
                }
                10 => {
                    if depth + 1 > self.max_depth {
                        return Err(Stop::TooDeep);
                    }
                    self.skip(4)?;
                    let count = u32::from_be_bytes([
                        self.data[self.pos - 4],
                        self.data[self.pos - 3],
                        self.data[self.pos - 2],
                        self.data[self.pos - 1],
                    ]);
                    for _ in 0..count {
                        if !self.value(depth + 1)? {
                            break;
                        }
                    }
                }
                _ => return Err(Stop::End),
            }
            Ok(true)
        }
        fn object(&mut self, depth: usize) -> Result<(), Stop> {
            if depth > self.max_depth {
                return Err(Stop::TooDeep);
            }
            loop {
                let label_len = self.u16()?;
                if label_len == 0 {
                    return if self.u8()? == 9 {
                        Ok(())
                    } else {
                        Err(Stop::End)
                    };
                }
                self.pos = (self.pos + label_len).min(self.data.len());
                if !self.value(depth)? {
                    return Err(Stop::End);
                }
            }
        }
    }

    let mut w = Walker {
        data,
        pos: 0,
        max_depth,
    };
    let mut count = 0;
    loop {
        match w.value(0) {
            Ok(true) => count += 1,
            Ok(false) | Err(Stop::End) => return Ok(count),
            Err(Stop::TooDeep) => {
                return Err(SessionError::Limit(format!(
                    "AMF0 values nested deeper than {max_depth}"
                )));
            }
        }
    }
}

/// Publisher-side fixtures (a scripted handshake, connect and publish) for this crate's unit
/// tests and the fuzz targets; not part of the shipped plugin (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;
