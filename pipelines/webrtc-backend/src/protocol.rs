//! The wire format, free of I/O: every WebSocket message is one JSON text
//! `{"type": ..., "payload": {...}}`. Parsing turns text into typed messages
//! (or a reason a person can read); builders turn typed replies into text.

use serde_json::{Map, Value, json};

/// Largest WebSocket message the backend accepts on either endpoint.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Error codes sent to viewers in `error {"code", "message"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    UnknownDevice,
    DeviceOffline,
    BadRequest,
    UnknownSession,
    TooLarge,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownDevice => "unknown_device",
            ErrorCode::DeviceOffline => "device_offline",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::TooLarge => "too_large",
        }
    }
}

/// What a viewer may send.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewerMsg {
    WatchRequest {
        device_id: String,
    },
    Offer {
        session_id: String,
        sdp: Value,
    },
    Candidate {
        session_id: String,
        candidate: Value,
    },
    WatchEnd {
        session_id: String,
    },
}

/// What a device agent may send.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceMsg {
    Hello {
        device_id: String,
    },
    Heartbeat,
    Answer {
        session_id: String,
        sdp: Value,
    },
    Candidate {
        session_id: String,
        candidate: Value,
    },
    WatchEnd {
        session_id: String,
    },
    /// A type this backend does not know; ignored for forward compatibility.
    Unknown {
        kind: String,
    },
}

/// Splits a text message into its type and payload object.
fn envelope(text: &str) -> Result<(String, Map<String, Value>), String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("message is not valid JSON: {e}"))?;
    let Value::Object(mut obj) = value else {
        return Err("message must be a JSON object {\"type\": ..., \"payload\": {...}}".into());
    };
    let kind = match obj.remove("type") {
        Some(Value::String(s)) => s,
        _ => return Err("message has no string field \"type\"".into()),
    };
    let payload = match obj.remove("payload") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return Err(format!("\"payload\" of {kind} must be a JSON object")),
    };
    Ok((kind, payload))
}

fn string_field(
    payload: &mut Map<String, Value>,
    kind: &str,
    name: &str,
) -> Result<String, String> {
    match payload.remove(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(format!(
            "{kind} needs a non-empty string field \"{name}\" in its payload"
        )),
    }
}

/// `{"type": "offer"|"answer", "sdp": "..."}`, kept as given.
fn sdp_field(
    payload: &mut Map<String, Value>,
    kind: &str,
    sdp_type: &str,
) -> Result<Value, String> {
    let sdp = payload.remove("sdp");
    let ok = sdp.as_ref().is_some_and(|v| {
        v.get("type").and_then(Value::as_str) == Some(sdp_type)
            && v.get("sdp").and_then(Value::as_str).is_some()
    });
    match sdp {
        Some(v) if ok => Ok(v),
        _ => Err(format!(
            "{kind} needs \"sdp\": {{\"type\": \"{sdp_type}\", \"sdp\": \"...\"}} in its payload"
        )),
    }
}

/// `{"candidate": "...", "sdpMid"?, "sdpMLineIndex"?}`, kept as given.
fn candidate_field(payload: &mut Map<String, Value>) -> Result<Value, String> {
    let candidate = payload.remove("candidate");
    let ok = candidate
        .as_ref()
        .is_some_and(|v| v.get("candidate").and_then(Value::as_str).is_some());
    match candidate {
        Some(v) if ok => Ok(v),
        _ => Err("ice_candidate needs \"candidate\": {\"candidate\": \"...\", \"sdpMid\", \"sdpMLineIndex\"} in its payload".into()),
    }
}

/// Parses a viewer's message; the error text is meant for the viewer.
pub fn parse_viewer(text: &str) -> Result<ViewerMsg, String> {
    let (kind, mut p) = envelope(text)?;
    let p = &mut p;
    Ok(match kind.as_str() {
        "watch_request" => ViewerMsg::WatchRequest {
            device_id: string_field(p, &kind, "device_id")?,
        },
        "signal_offer" => ViewerMsg::Offer {
            session_id: string_field(p, &kind, "session_id")?,
            sdp: sdp_field(p, &kind, "offer")?,
        },
        "ice_candidate" => ViewerMsg::Candidate {
            session_id: string_field(p, &kind, "session_id")?,
            candidate: candidate_field(p)?,
        },
        "watch_end" => ViewerMsg::WatchEnd {
            session_id: string_field(p, &kind, "session_id")?,
        },
        other => {
            return Err(format!(
                "unknown message type {other:?}; a viewer sends watch_request, signal_offer, ice_candidate or watch_end"
            ));
        }
    })
}

/// Parses a device agent's message; the error text goes to the log.
pub fn parse_device(text: &str) -> Result<DeviceMsg, String> {
    let (kind, mut p) = envelope(text)?;
    let p = &mut p;
    Ok(match kind.as_str() {
        "hello" => DeviceMsg::Hello {
            device_id: string_field(p, &kind, "device_id")?,
        },
        "heartbeat" => DeviceMsg::Heartbeat,
        "signal_answer" => DeviceMsg::Answer {
            session_id: string_field(p, &kind, "session_id")?,
            sdp: sdp_field(p, &kind, "answer")?,
        },
        "ice_candidate" => DeviceMsg::Candidate {
            session_id: string_field(p, &kind, "session_id")?,
            candidate: candidate_field(p)?,
        },
        "watch_end" => DeviceMsg::WatchEnd {
            session_id: string_field(p, &kind, "session_id")?,
        },
        _ => DeviceMsg::Unknown { kind },
    })
}

/// One outgoing message as text.
pub fn message(kind: &str, payload: Value) -> String {
    json!({ "type": kind, "payload": payload }).to_string()
}

/// `error {"code", "message"}`, with the session it is about when there is one.
pub fn error(code: ErrorCode, text: &str, session_id: Option<&str>) -> String {
    let mut payload = json!({ "code": code.as_str(), "message": text });
    if let Some(sid) = session_id {
        payload["session_id"] = Value::String(sid.to_owned());
    }
    message("error", payload)
}

/// Formats an untrusted string for a `key=value` log line: bare when it is
/// plain printable ASCII without spaces, quoted and escaped otherwise.
pub struct LogStr<'a>(pub &'a str);

impl std::fmt::Display for LogStr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = !self.0.is_empty()
            && self.0.len() <= 256
            && self.0.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
        if plain {
            f.write_str(self.0)
        } else {
            let cut: String = self.0.chars().take(256).collect();
            write!(f, "{cut:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewer_messages_parse_and_name_missing_fields() {
        assert_eq!(
            parse_viewer(r#"{"type":"watch_request","payload":{"device_id":"cam1"}}"#),
            Ok(ViewerMsg::WatchRequest {
                device_id: "cam1".into()
            })
        );
        let err = parse_viewer(r#"{"type":"signal_offer","payload":{"session_id":"s"}}"#)
            .expect_err("offer without sdp");
        assert!(err.contains("\"sdp\""), "{err}");
        let err = parse_viewer(r#"{"type":"signal_offer","payload":{"session_id":"s","sdp":{"type":"answer","sdp":"v=0"}}}"#)
            .expect_err("answer passed as offer");
        assert!(err.contains("offer"), "{err}");
        let err = parse_viewer(r#"{"type":"watch_end","payload":{}}"#).expect_err("no sid");
        assert!(err.contains("session_id"), "{err}");
        assert!(parse_viewer("{not json").is_err());
        assert!(parse_viewer("[1,2]").is_err());
        assert!(parse_viewer(r#"{"type":"dance"}"#).is_err());
    }

    #[test]
    fn device_unknown_types_are_not_errors() {
        assert_eq!(
            parse_device(r#"{"type":"stats","payload":{"x":1}}"#),
            Ok(DeviceMsg::Unknown {
                kind: "stats".into()
            })
        );
        assert_eq!(
            parse_device(r#"{"type":"heartbeat"}"#),
            Ok(DeviceMsg::Heartbeat)
        );
        let c = parse_device(r#"{"type":"ice_candidate","payload":{"session_id":"s","candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0","sdpMLineIndex":0}}}"#)
            .expect("candidate parses");
        let DeviceMsg::Candidate { candidate, .. } = c else {
            panic!("wrong variant {c:?}")
        };
        assert_eq!(candidate["sdpMLineIndex"], 0);
    }

    #[test]
    fn log_strings_escape_what_is_not_plain() {
        assert_eq!(LogStr("cam-1").to_string(), "cam-1");
        assert_eq!(LogStr("a b").to_string(), "\"a b\"");
        assert_eq!(LogStr("x\ny").to_string(), "\"x\\ny\"");
        assert_eq!(LogStr("").to_string(), "\"\"");
    }

    #[test]
    fn errors_carry_code_and_session() {
        let v: Value = serde_json::from_str(&error(ErrorCode::TooLarge, "big", Some("s1")))
            .expect("valid json");
        assert_eq!(v["type"], "error");
        assert_eq!(v["payload"]["code"], "too_large");
        assert_eq!(v["payload"]["session_id"], "s1");
    }
}
