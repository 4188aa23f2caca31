// SPDX-License-Identifier: MPL-2.0

//! Builders for RTMP publisher byte streams, used by unit tests and the fuzz targets.

use super::{Session, SessionConfig};
use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;

/// A minimal H.264 sequence header tag body (legacy FLV, AVC).
pub fn avc_sequence_header() -> Bytes {
    Bytes::from_static(&[
        0x17, 0, 0, 0, 0, // key frame, AVC, sequence header, cts 0
        1, 0x42, 0xc0, 0x1e, 0xff, 0xe1, 0, 4, 0x67, 0x42, 0xc0, 0x1e, 1, 0, 4, 0x68, 0xce, 0x3c,
        0x80,
    ])
}

/// A small H.264 frame tag body.
pub fn avc_frame(keyframe: bool, cts: i32, len: usize) -> Bytes {
    let mut v = vec![if keyframe { 0x17 } else { 0x27 }, 1];
    v.extend_from_slice(&cts.to_be_bytes()[1..]);
    v.extend_from_slice(&(len as u32).to_be_bytes());
    v.extend((0..len).map(|i| (i as u8).wrapping_mul(31)));
    Bytes::from(v)
}

fn client_out(
    results: Vec<ClientSessionResult>,
    to_server: &mut Vec<u8>,
) -> Vec<ClientSessionEvent> {
    let mut events = Vec::new();
    for r in results {
        match r {
            ClientSessionResult::OutboundResponse(p) => to_server.extend_from_slice(&p.bytes),
            ClientSessionResult::RaisedEvent(e) => events.push(e),
            ClientSessionResult::UnhandleableMessageReceived(_) => {}
        }
    }
    events
}

/// A connected, publishing rml_rtmp client plus the bytes it sent so far.
pub struct Publisher {
    pub client: ClientSession,
    /// Everything the client sent to the server, from C0 on.
    pub sent: Vec<u8>,
}

impl Publisher {
    /// Runs handshake, connect and publish against a fresh [`Session`] with `config`.
    ///
    /// Returns `None` if the server refused.
    pub fn connect(config: SessionConfig, app: &str, key: &str) -> (Option<Publisher>, Session) {
        let mut server = Session::new(config);
        let mut gate = |_: &str, _: &str| Ok(());
        let mut sent = Vec::new();

        let mut hs = Handshake::new(PeerType::Client);
        let c0c1 = hs.generate_outbound_p0_and_p1().expect("p0p1");
        sent.extend_from_slice(&c0c1);
        let reply = server.feed(&c0c1, &mut gate).expect("handshake");
        let c2 = match hs.process_bytes(&reply.send).expect("client handshake") {
            HandshakeProcessResult::Completed { response_bytes, .. } => response_bytes,
            HandshakeProcessResult::InProgress { response_bytes } => response_bytes,
        };
        sent.extend_from_slice(&c2);
        let mut to_client = server.feed(&c2, &mut gate).expect("c2").send;

        let (mut client, results) = ClientSession::new(ClientSessionConfig::new()).expect("client");
        let mut to_server = Vec::new();
        client_out(results, &mut to_server);
        let r = client.request_connection(app.to_string()).expect("connect");
        client_out(vec![r], &mut to_server);

        let mut publish_requested = false;
        for _ in 0..20 {
            if !to_server.is_empty() {
                sent.extend_from_slice(&to_server);
                match server.feed(&to_server, &mut gate) {
                    Ok(out) => to_client.extend_from_slice(&out.send),
                    Err(_) => return (None, server),
                }
                to_server.clear();
            }
            if server.is_closed() {
                return (None, server);
            }
            let events = client_out(
                client.handle_input(&to_client).expect("client input"),
                &mut to_server,
            );
            to_client.clear();
            for e in events {
                match e {
                    ClientSessionEvent::ConnectionRequestAccepted if !publish_requested => {
                        publish_requested = true;
                        let r = client
                            .request_publishing(key.to_string(), PublishRequestType::Live)
                            .expect("publish");
                        client_out(vec![r], &mut to_server);
                    }
                    ClientSessionEvent::PublishRequestAccepted => {
                        return (Some(Publisher { client, sent }), server);
                    }
                    ClientSessionEvent::ConnectionRequestRejected { .. } => {
                        return (None, server);
                    }
                    _ => {}
                }
            }
            if to_server.is_empty() && to_client.is_empty() {
                break;
            }
        }
        (None, server)
    }

    /// Serializes a video message; returns its bytes (also appended to `sent`).
    pub fn video(&mut self, data: Bytes, ts: u32) -> Vec<u8> {
        let r = self
            .client
            .publish_video_data(data, RtmpTimestamp::new(ts), false)
            .expect("video");
        let mut out = Vec::new();
        client_out(vec![r], &mut out);
        self.sent.extend_from_slice(&out);
        out
    }

    /// Serializes an audio message; returns its bytes (also appended to `sent`).
    pub fn audio(&mut self, data: Bytes, ts: u32) -> Vec<u8> {
        let r = self
            .client
            .publish_audio_data(data, RtmpTimestamp::new(ts), false)
            .expect("audio");
        let mut out = Vec::new();
        client_out(vec![r], &mut out);
        self.sent.extend_from_slice(&out);
        out
    }
}

/// A complete valid publisher byte stream: handshake, connect to `live`, publish `key`, an AVC
/// sequence header and `frames` frames at 30 fps (plus a few AAC frames).
pub fn sample_publish_stream(frames: usize) -> Vec<u8> {
    let config = SessionConfig {
        app: "live".into(),
        ..Default::default()
    };
    let (publisher, _server) = Publisher::connect(config, "live", "key");
    let mut p = publisher.expect("sample publisher accepted");
    p.video(avc_sequence_header(), 0);
    p.audio(Bytes::from_static(&[0xaf, 0, 0x12, 0x10]), 0);
    for i in 0..frames {
        p.video(avc_frame(i % 30 == 0, 66, 200 + i * 13), (i * 33) as u32);
        if i % 2 == 0 {
            p.audio(
                Bytes::from_static(&[0xaf, 1, 0x21, 0x10, 0x04]),
                (i * 33) as u32,
            );
        }
    }
    p.sent
}

/// Bytes of the RTMP handshake a client sends (C0 + C1 + C2).
pub const HANDSHAKE_LEN: usize = 1 + 1536 + 1536;

/// A server session whose handshake is already done (no handshake cryptography): feed it what a
/// client sends after the handshake. For fuzz targets that work on the chunk / message layers.
pub fn session_after_handshake(config: SessionConfig) -> Session {
    let mut session = Session::new(config);
    let (server, _results) =
        rml_rtmp::sessions::ServerSession::new(rml_rtmp::sessions::ServerSessionConfig::new())
            .expect("server session");
    session.phase = super::Phase::Rtmp(Box::new(server));
    session
}
