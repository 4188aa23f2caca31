//! The `ice_servers` list handed to both peers of a session, with TURN
//! credentials in the TURN REST form that coturn's `use-auth-secret` checks:
//! username `"<expiry unix time>:<session_id>"`, credential
//! `base64(HMAC-SHA1(secret, username))`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;

/// A TURN server with a shared secret.
#[derive(Clone, Debug)]
pub struct TurnConfig {
    /// `turn:HOST:PORT` (or `turns:`), given to the peers as is.
    pub url: String,
    pub secret: String,
    /// How long a credential stays valid, in seconds.
    pub ttl: u64,
}

/// STUN and TURN servers offered to every session.
#[derive(Clone, Debug, Default)]
pub struct IceConfig {
    pub stun_url: Option<String>,
    pub turn: Option<TurnConfig>,
}

/// `(username, credential)` for one session, valid until `expiry`.
pub fn turn_credentials(secret: &str, session_id: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{session_id}");
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC-SHA1 takes keys of any length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

impl IceConfig {
    /// The list for one session, as `[{"urls", "username"?, "credential"?}]`.
    pub fn servers(&self, session_id: &str, now: u64) -> Value {
        let mut list = Vec::new();
        if let Some(stun) = &self.stun_url {
            list.push(json!({ "urls": stun }));
        }
        if let Some(turn) = &self.turn {
            let (username, credential) =
                turn_credentials(&turn.secret, session_id, now.saturating_add(turn.ttl));
            list.push(json!({ "urls": turn.url, "username": username, "credential": credential }));
        }
        Value::Array(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha1_matches_the_known_vector() {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(b"key").expect("key");
        mac.update(b"The quick brown fox jumps over the lazy dog");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, "de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9");
    }

    #[test]
    fn servers_list_stun_then_turn_with_expiring_username() {
        let cfg = IceConfig {
            stun_url: Some("stun:stun.example:3478".into()),
            turn: Some(TurnConfig {
                url: "turn:turn.example:3478".into(),
                secret: "s3cret".into(),
                ttl: 60,
            }),
        };
        let list = cfg.servers("abc", 1000);
        assert_eq!(list[0], json!({ "urls": "stun:stun.example:3478" }));
        assert_eq!(list[1]["urls"], "turn:turn.example:3478");
        assert_eq!(list[1]["username"], "1060:abc");
        let (_, cred) = turn_credentials("s3cret", "abc", 1060);
        assert_eq!(list[1]["credential"], cred.as_str());
        assert_eq!(IceConfig::default().servers("abc", 0), json!([]));
    }
}
