//! A small blocking RTMP publisher built on rml_rtmp's I/O-free `Handshake` and `ClientSession`,
//! for byte streams no real publisher sends: chosen timestamps (24-bit extended boundary, 32-bit
//! wrap), truncated or oversized messages, clients that never read.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;

pub struct RtmpClient {
    pub stream: TcpStream,
    pub session: ClientSession,
    /// Bytes that followed the handshake, not yet given to the session.
    leftover: Vec<u8>,
}

fn io_err(what: &str, e: impl std::fmt::Debug) -> String {
    format!("{what}: {e:?}")
}

impl RtmpClient {
    /// Connect and complete the RTMP handshake (bounded by `timeout`).
    pub fn handshake(port: u16, timeout: Duration) -> Result<RtmpClient, String> {
        let mut stream = vcambridge_tests::rtmp::raw_connect(port);
        let mut hs = Handshake::new(PeerType::Client);
        let p0p1 = hs
            .generate_outbound_p0_and_p1()
            .map_err(|e| io_err("C0+C1", e))?;
        stream
            .write_all(&p0p1)
            .map_err(|e| io_err("send C0+C1", e))?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if Instant::now() >= deadline {
                return Err(format!("handshake not complete after {timeout:?}"));
            }
            let n = match stream.read(&mut buf) {
                Ok(0) => return Err("server closed during the handshake".into()),
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                Err(e) => return Err(io_err("read during the handshake", e)),
            };
            match hs
                .process_bytes(&buf[..n])
                .map_err(|e| io_err("handshake", e))?
            {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    if !response_bytes.is_empty() {
                        stream
                            .write_all(&response_bytes)
                            .map_err(|e| io_err("send handshake", e))?;
                    }
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    if !response_bytes.is_empty() {
                        stream
                            .write_all(&response_bytes)
                            .map_err(|e| io_err("send C2", e))?;
                    }
                    let mut config = ClientSessionConfig::new();
                    config.tc_url = Some(format!("rtmp://127.0.0.1:{port}/live"));
                    let (session, results) =
                        ClientSession::new(config).map_err(|e| io_err("session", e))?;
                    let mut c = RtmpClient {
                        stream,
                        session,
                        leftover: remaining_bytes,
                    };
                    c.send_results(results)?;
                    return Ok(c);
                }
            }
        }
    }

    fn send_results(&mut self, results: Vec<ClientSessionResult>) -> Result<(), String> {
        for r in results {
            if let ClientSessionResult::OutboundResponse(p) = r {
                self.stream
                    .write_all(&p.bytes)
                    .map_err(|e| io_err("send", e))?;
            }
        }
        Ok(())
    }

    fn send_result(&mut self, r: ClientSessionResult) -> Result<(), String> {
        self.send_results(vec![r])
    }

    /// Read and process server messages until `want` matches an event, bounded by `timeout`.
    fn pump_until(
        &mut self,
        timeout: Duration,
        what: &str,
        want: impl Fn(&ClientSessionEvent) -> Option<Result<(), String>>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        let mut pending = std::mem::take(&mut self.leftover);
        loop {
            if !pending.is_empty() {
                let results = self
                    .session
                    .handle_input(&pending)
                    .map_err(|e| io_err("session input", e))?;
                pending.clear();
                // Send every outbound packet of the batch (e.g. the SetChunkSize that follows the
                // connect result) before returning the outcome.
                let mut outcome = None;
                for r in results {
                    match r {
                        ClientSessionResult::OutboundResponse(p) => self
                            .stream
                            .write_all(&p.bytes)
                            .map_err(|e| io_err("send", e))?,
                        ClientSessionResult::RaisedEvent(ev) => {
                            if outcome.is_none() {
                                outcome = want(&ev);
                            }
                        }
                        ClientSessionResult::UnhandleableMessageReceived(_) => {}
                    }
                }
                if let Some(res) = outcome {
                    return res;
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no {what} within {timeout:?}"));
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(format!("server closed the connection waiting for {what}")),
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(io_err(&format!("read waiting for {what}"), e)),
            }
        }
    }

    /// `connect` to `app`; Ok once the server accepted it.
    pub fn connect_app(&mut self, app: &str) -> Result<(), String> {
        let r = self
            .session
            .request_connection(app.to_string())
            .map_err(|e| io_err("connect request", e))?;
        self.send_result(r)?;
        self.pump_until(Duration::from_secs(10), "connect result", |ev| match ev {
            ClientSessionEvent::ConnectionRequestAccepted => Some(Ok(())),
            ClientSessionEvent::ConnectionRequestRejected { description } => {
                Some(Err(format!("connect rejected: {description}")))
            }
            _ => None,
        })
    }

    /// `createStream` + `publish` `key` (live); Ok once the server accepted it.
    pub fn publish(&mut self, key: &str) -> Result<(), String> {
        let r = self
            .session
            .request_publishing(key.to_string(), PublishRequestType::Live)
            .map_err(|e| io_err("publish request", e))?;
        self.send_result(r)?;
        self.pump_until(Duration::from_secs(10), "publish start", |ev| match ev {
            ClientSessionEvent::PublishRequestAccepted => Some(Ok(())),
            _ => None,
        })
    }

    /// Handshake, connect to `app` and publish `key`.
    pub fn publisher(port: u16, app: &str, key: &str) -> Result<RtmpClient, String> {
        let mut c = RtmpClient::handshake(port, Duration::from_secs(10))?;
        c.connect_app(app)?;
        c.publish(key)?;
        Ok(c)
    }

    /// The chunk bytes of one video message (not sent).
    pub fn video_packet(&mut self, data: &[u8], ts: u32, droppable: bool) -> Vec<u8> {
        match self.session.publish_video_data(
            Bytes::copy_from_slice(data),
            RtmpTimestamp::new(ts),
            droppable,
        ) {
            Ok(ClientSessionResult::OutboundResponse(p)) => p.bytes,
            other => panic!("serialising a video message: {other:?}"),
        }
    }

    /// The chunk bytes of one audio message (not sent).
    pub fn audio_packet(&mut self, data: &[u8], ts: u32, droppable: bool) -> Vec<u8> {
        match self.session.publish_audio_data(
            Bytes::copy_from_slice(data),
            RtmpTimestamp::new(ts),
            droppable,
        ) {
            Ok(ClientSessionResult::OutboundResponse(p)) => p.bytes,
            other => panic!("serialising an audio message: {other:?}"),
        }
    }

    pub fn send_video(&mut self, data: &[u8], ts: u32, droppable: bool) -> Result<(), String> {
        let p = self.video_packet(data, ts, droppable);
        self.send_raw(&p)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream.write_all(bytes).map_err(|e| io_err("send", e))
    }

    /// The bytes of one PingRequest user-control message (the server must answer each one).
    pub fn ping_packet(&mut self) -> Vec<u8> {
        self.session
            .send_ping_request()
            .map(|(p, _)| p.bytes)
            .expect("serialising a ping request")
    }

    /// Drain whatever the server sent so far (non-blocking-ish: one short read).
    pub fn drain(&mut self) {
        let mut buf = [0u8; 65536];
        let _ = self.stream.read(&mut buf);
    }
}

/// Serialise a single control/other message with a fresh chunk serialiser (full type-0 header on
/// its own chunk stream), e.g. a SetChunkSize.
pub fn raw_message(msg: RtmpMessage, ts: u32, stream_id: u32) -> Vec<u8> {
    let payload = msg
        .into_message_payload(RtmpTimestamp::new(ts), stream_id)
        .expect("message payload");
    let mut ser = ChunkSerializer::new();
    ser.serialize(&payload, true, false)
        .expect("serialising a raw message")
        .bytes
}

/// One tag of an FLV file.
#[derive(Clone, Debug)]
pub struct FlvTag {
    pub tag_type: u8,
    pub timestamp: u32,
    pub data: Vec<u8>,
}

/// Parse the tags of an FLV file (header, then tag + PreviousTagSize pairs).
pub fn parse_flv(bytes: &[u8]) -> Vec<FlvTag> {
    assert!(
        bytes.len() >= 13 && &bytes[..3] == b"FLV",
        "not an FLV file"
    );
    let header_len = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
    let mut pos = header_len + 4;
    let mut tags = Vec::new();
    while pos + 11 <= bytes.len() {
        let t = &bytes[pos..];
        let size = u32::from_be_bytes([0, t[1], t[2], t[3]]) as usize;
        let ts = u32::from_be_bytes([t[7], t[4], t[5], t[6]]);
        if pos + 11 + size > bytes.len() {
            break;
        }
        tags.push(FlvTag {
            tag_type: t[0] & 0x1f,
            timestamp: ts,
            data: t[11..11 + size].to_vec(),
        });
        pos += 11 + size + 4;
    }
    tags
}

/// Encode `frames` frames of solid-colour H.264 (one keyframe, no B-frames) with ffmpeg into
/// an FLV file and return its video tags: the AVC sequence header first, then one tag per frame.
pub fn h264_flv_video_tags(frames: u32, width: u32, height: u32) -> Vec<FlvTag> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("h264.flv");
    vcambridge_tests::run_ok(
        "ffmpeg (encode H.264 FLV)",
        vcambridge_tests::ffmpeg()
            .args(["-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size={width}x{height}:rate=30"))
            .args(["-frames:v", &frames.to_string()])
            .args(vcambridge_tests::X264_LOW_LATENCY)
            .args(["-pix_fmt", "yuv420p", "-g", "1000", "-f", "flv"])
            .arg(&path),
        Duration::from_secs(60),
    );
    let bytes = std::fs::read(&path).expect("read the FLV file");
    let tags: Vec<FlvTag> = parse_flv(&bytes)
        .into_iter()
        // Video tags, without the AVC end-of-sequence tag ffmpeg writes at the end.
        .filter(|t| t.tag_type == 9 && t.data.get(1) != Some(&2))
        .collect();
    assert_eq!(
        tags.len(),
        frames as usize + 1,
        "expected a sequence header and {frames} frames"
    );
    assert_eq!(
        tags[0].data[1], 0,
        "first video tag is the AVC sequence header"
    );
    tags
}

/// ffmpeg arguments: one second of a 440 Hz sine, 44.1 kHz mono AAC, as FLV (output follows).
pub const SINE_1S_AAC_FLV: [&str; 11] = [
    "-f",
    "lavfi",
    "-i",
    "sine=frequency=440:sample_rate=44100:duration=1",
    "-c:a",
    "aac",
    "-ac",
    "1",
    "-f",
    "flv",
    "-y",
];

/// Encode about one second of 44.1 kHz mono AAC with ffmpeg into FLV and return its audio tags:
/// the AAC sequence header first, then one tag per AAC frame.
pub fn aac_flv_audio_tags() -> Vec<FlvTag> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("aac.flv");
    vcambridge_tests::run_ok(
        "ffmpeg (encode AAC FLV)",
        vcambridge_tests::ffmpeg().args(SINE_1S_AAC_FLV).arg(&path),
        Duration::from_secs(60),
    );
    let bytes = std::fs::read(&path).expect("read the FLV file");
    let tags: Vec<FlvTag> = parse_flv(&bytes)
        .into_iter()
        .filter(|t| t.tag_type == 8)
        .collect();
    assert!(tags.len() > 10, "AAC tags");
    assert_eq!(
        tags[0].data[1], 0,
        "first audio tag is the AAC sequence header"
    );
    tags
}
