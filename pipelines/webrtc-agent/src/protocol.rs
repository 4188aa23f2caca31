//! The device protocol spoken with the backend: JSON text messages `{"type", "payload"}` over a
//! WebSocket. Plain data in, plain data out (no I/O), so every malformed input is unit-tested.

use serde_json::{Value, json};
use std::fmt;

/// Larger messages are refused (a warning; the connection stays up). An SDP offer is a few KiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// One entry of `ice_servers`, as the backend sends it (WebRTC's `RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<String>,
}

/// A message from the backend to the device.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    HelloAck,
    WatchRequest {
        session_id: String,
        ice_servers: Vec<IceServer>,
    },
    SignalOffer {
        session_id: String,
        sdp: String,
    },
    IceCandidate {
        session_id: String,
        candidate: String,
        sdp_mline_index: Option<u32>,
        sdp_mid: Option<String>,
    },
    WatchEnd {
        session_id: String,
    },
    /// A type this agent does not know (ignored, logged at debug level).
    Unknown(String),
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    TooLarge(usize),
    Json(String),
    Field(&'static str, &'static str),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::TooLarge(n) => write!(
                f,
                "message of {n} bytes is larger than the limit of {MAX_MESSAGE_BYTES} bytes"
            ),
            ProtocolError::Json(e) => write!(f, "malformed JSON: {e}"),
            ProtocolError::Field(name, what) => write!(f, "field '{name}' {what}"),
        }
    }
}

fn str_field<'a>(v: &'a Value, name: &'static str) -> Result<&'a str, ProtocolError> {
    match v.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ProtocolError::Field(name, "is not a string")),
        None => Err(ProtocolError::Field(name, "is missing")),
    }
}

fn session_id(payload: &Value) -> Result<String, ProtocolError> {
    let id = str_field(payload, "session_id")?;
    if id.is_empty() || id.len() > 256 {
        return Err(ProtocolError::Field(
            "session_id",
            "must be 1 to 256 characters",
        ));
    }
    Ok(id.to_owned())
}

fn urls(v: &Value) -> Result<Vec<String>, ProtocolError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|u| {
                u.as_str()
                    .map(str::to_owned)
                    .ok_or(ProtocolError::Field("urls", "must hold strings"))
            })
            .collect(),
        _ => Err(ProtocolError::Field(
            "urls",
            "must be a string or a list of strings",
        )),
    }
}

fn ice_servers(payload: &Value) -> Result<Vec<IceServer>, ProtocolError> {
    let list = match payload.get("ice_servers") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ProtocolError::Field("ice_servers", "is not a list")),
    };
    list.iter()
        .map(|s| {
            let opt = |name: &'static str| match s.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(v)) => Ok(Some(v.clone())),
                Some(_) => Err(ProtocolError::Field(name, "is not a string")),
            };
            Ok(IceServer {
                urls: urls(
                    s.get("urls")
                        .ok_or(ProtocolError::Field("urls", "is missing"))?,
                )?,
                username: opt("username")?,
                credential: opt("credential")?,
            })
        })
        .collect()
}

/// Parses one text message from the backend.
pub fn parse(text: &str) -> Result<Incoming, ProtocolError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::TooLarge(text.len()));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| ProtocolError::Json(e.to_string()))?;
    let kind = str_field(&v, "type")?;
    let empty = Value::Object(Default::default());
    let payload = match v.get("payload") {
        None | Some(Value::Null) => &empty,
        Some(p @ Value::Object(_)) => p,
        Some(_) => return Err(ProtocolError::Field("payload", "is not an object")),
    };
    Ok(match kind {
        "hello_ack" => Incoming::HelloAck,
        "watch_request" => Incoming::WatchRequest {
            session_id: session_id(payload)?,
            ice_servers: ice_servers(payload)?,
        },
        "signal_offer" => {
            let sdp = payload
                .get("sdp")
                .ok_or(ProtocolError::Field("sdp", "is missing"))?;
            if let Some(t) = sdp.get("type").and_then(Value::as_str)
                && t != "offer"
            {
                return Err(ProtocolError::Field("sdp.type", "is not \"offer\""));
            }
            Incoming::SignalOffer {
                session_id: session_id(payload)?,
                sdp: str_field(sdp, "sdp")?.to_owned(),
            }
        }
        "ice_candidate" => {
            let c = payload
                .get("candidate")
                .ok_or(ProtocolError::Field("candidate", "is missing"))?;
            let index = match c.get("sdpMLineIndex") {
                None | Some(Value::Null) => None,
                Some(i) => Some(i.as_u64().filter(|i| *i < 64).ok_or(ProtocolError::Field(
                    "sdpMLineIndex",
                    "is not a small non-negative integer",
                ))? as u32),
            };
            Incoming::IceCandidate {
                session_id: session_id(payload)?,
                candidate: str_field(c, "candidate")?.to_owned(),
                sdp_mline_index: index,
                sdp_mid: c.get("sdpMid").and_then(Value::as_str).map(str::to_owned),
            }
        }
        "watch_end" => Incoming::WatchEnd {
            session_id: session_id(payload)?,
        },
        other => Incoming::Unknown(other.to_owned()),
    })
}

fn message(kind: &str, payload: Value) -> String {
    json!({ "type": kind, "payload": payload }).to_string()
}

pub fn hello(device_id: &str) -> String {
    message("hello", json!({ "device_id": device_id }))
}

pub fn heartbeat() -> String {
    message("heartbeat", json!({}))
}

pub fn answer(session_id: &str, sdp: &str) -> String {
    message(
        "signal_answer",
        json!({ "session_id": session_id, "sdp": { "type": "answer", "sdp": sdp } }),
    )
}

pub fn ice_candidate(session_id: &str, candidate: &str, mid: Option<&str>, mline: u32) -> String {
    message(
        "ice_candidate",
        json!({ "session_id": session_id,
                "candidate": { "candidate": candidate, "sdpMid": mid, "sdpMLineIndex": mline } }),
    )
}

pub fn watch_end(session_id: &str) -> String {
    message("watch_end", json!({ "session_id": session_id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_backend_message() {
        assert_eq!(
            parse(r#"{"type":"hello_ack","payload":{"device_id":"d"}}"#),
            Ok(Incoming::HelloAck)
        );
        let w = parse(
            r#"{"type":"watch_request","payload":{"session_id":"s1","ice_servers":[
            {"urls":"stun:127.0.0.1:3478"},
            {"urls":["turn:127.0.0.1:3478"],"username":"1:s1","credential":"x/y="}]}}"#,
        )
        .unwrap();
        assert_eq!(
            w,
            Incoming::WatchRequest {
                session_id: "s1".into(),
                ice_servers: vec![
                    IceServer {
                        urls: vec!["stun:127.0.0.1:3478".into()],
                        username: None,
                        credential: None
                    },
                    IceServer {
                        urls: vec!["turn:127.0.0.1:3478".into()],
                        username: Some("1:s1".into()),
                        credential: Some("x/y=".into())
                    },
                ]
            }
        );
        assert_eq!(
            parse(
                r#"{"type":"signal_offer","payload":{"session_id":"s","sdp":{"type":"offer","sdp":"v=0"}}}"#
            ),
            Ok(Incoming::SignalOffer {
                session_id: "s".into(),
                sdp: "v=0".into()
            })
        );
        assert_eq!(
            parse(
                r#"{"type":"ice_candidate","payload":{"session_id":"s","candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0","sdpMLineIndex":0}}}"#
            ),
            Ok(Incoming::IceCandidate {
                session_id: "s".into(),
                candidate: "candidate:1 1 udp 1 1.2.3.4 5 typ host".into(),
                sdp_mline_index: Some(0),
                sdp_mid: Some("0".into())
            })
        );
        assert_eq!(
            parse(r#"{"type":"watch_end","payload":{"session_id":"s"}}"#),
            Ok(Incoming::WatchEnd {
                session_id: "s".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"firmware_update","payload":{}}"#),
            Ok(Incoming::Unknown("firmware_update".into()))
        );
    }

    #[test]
    fn malformed_messages_are_refused_with_the_reason() {
        let big = format!(
            r#"{{"type":"x","payload":{{"pad":"{}"}}}}"#,
            "a".repeat(70_000)
        );
        assert!(matches!(parse(&big), Err(ProtocolError::TooLarge(_))));
        assert!(matches!(parse("{nope"), Err(ProtocolError::Json(_))));
        assert!(matches!(
            parse("[1,2]"),
            Err(ProtocolError::Field("type", _))
        ));
        assert_eq!(
            parse(r#"{"type":"watch_request","payload":{}}"#),
            Err(ProtocolError::Field("session_id", "is missing"))
        );
        assert_eq!(
            parse(r#"{"type":"watch_request","payload":{"session_id":5}}"#),
            Err(ProtocolError::Field("session_id", "is not a string"))
        );
        assert_eq!(
            parse(
                r#"{"type":"signal_offer","payload":{"session_id":"s","sdp":{"type":"answer","sdp":"v=0"}}}"#
            ),
            Err(ProtocolError::Field("sdp.type", "is not \"offer\""))
        );
        assert!(
            parse(
                r#"{"type":"ice_candidate","payload":{"session_id":"s","candidate":{"candidate":"c","sdpMLineIndex":-1}}}"#
            )
            .is_err()
        );
        assert!(parse(r#"{"type":"watch_request","payload":{"session_id":"s","ice_servers":[{"username":"u"}]}}"#).is_err());
        let e = parse(r#"{"type":"watch_end","payload":[]}"#).unwrap_err();
        assert_eq!(e.to_string(), "field 'payload' is not an object");
    }

    #[test]
    fn outgoing_messages_have_the_protocol_shape() {
        let v: Value = serde_json::from_str(&answer("s", "v=0\r\n")).unwrap();
        assert_eq!(v["type"], "signal_answer");
        assert_eq!(v["payload"]["session_id"], "s");
        assert_eq!(v["payload"]["sdp"]["type"], "answer");
        assert_eq!(v["payload"]["sdp"]["sdp"], "v=0\r\n");
        let v: Value =
            serde_json::from_str(&ice_candidate("s", "candidate:x", Some("0"), 0)).unwrap();
        assert_eq!(v["payload"]["candidate"]["sdpMid"], "0");
        assert_eq!(v["payload"]["candidate"]["sdpMLineIndex"], 0);
        let v: Value = serde_json::from_str(&hello("cam")).unwrap();
        assert_eq!(v, json!({"type":"hello","payload":{"device_id":"cam"}}));
        let v: Value = serde_json::from_str(&heartbeat()).unwrap();
        assert_eq!(v["type"], "heartbeat");
    }
}
