//! `ice_servers` (WebRTC's RTCIceServer list) as webrtcbin's STUN and TURN URLs.

use crate::protocol::IceServer;

/// webrtcbin's view of an `ice_servers` list.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IceUrls {
    /// webrtcbin takes one STUN server (`stun-server`): the first one listed.
    pub stun: Option<String>,
    /// `turn://user:pass@host:port` (or `turns://`), each given with `add-turn-server`.
    pub turn: Vec<String>,
    /// Entries that could not be used, with the reason (logged as warnings).
    pub skipped: Vec<String>,
}

/// Percent-encodes everything outside RFC 3986's unreserved set (TURN REST usernames hold
/// `:`, base64 credentials hold `+`, `/` and `=`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn convert(servers: &[IceServer]) -> IceUrls {
    let mut out = IceUrls::default();
    for s in servers {
        for url in &s.urls {
            let (scheme, rest) = match url.split_once(':') {
                Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
                None => {
                    out.skipped.push(format!("{url}: not a STUN/TURN URL"));
                    continue;
                }
            };
            // Drop the `?transport=` query: libnice relays over UDP unless told otherwise.
            let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
            let hostport = hostport.trim_start_matches("//");
            if hostport.is_empty() {
                out.skipped.push(format!("{url}: no host"));
                continue;
            }
            match scheme.as_str() {
                "stun" | "stuns" => {
                    if out.stun.is_none() {
                        out.stun = Some(format!("stun://{hostport}"));
                    } else {
                        out.skipped
                            .push(format!("{url}: webrtcbin takes one STUN server"));
                    }
                }
                "turn" | "turns" => {
                    let (Some(user), Some(cred)) = (&s.username, &s.credential) else {
                        out.skipped.push(format!(
                            "{url}: a TURN server needs a username and credential"
                        ));
                        continue;
                    };
                    if query.contains("transport=tcp") && scheme == "turn" {
                        out.skipped.push(format!(
                            "{url}: TURN over TCP is not supported by this agent (use UDP)"
                        ));
                        continue;
                    }
                    out.turn.push(format!(
                        "{scheme}://{}:{}@{hostport}",
                        encode(user),
                        encode(cred)
                    ));
                }
                _ => out
                    .skipped
                    .push(format!("{url}: unknown scheme '{scheme}'")),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(urls: &[&str], user: Option<&str>, cred: Option<&str>) -> IceServer {
        IceServer {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            username: user.map(str::to_owned),
            credential: cred.map(str::to_owned),
        }
    }

    #[test]
    fn turn_rest_credentials_are_percent_encoded() {
        let u = convert(&[
            server(&["stun:127.0.0.1:3478", "stun:10.0.0.1:3478"], None, None),
            server(
                &["turn:127.0.0.1:3478?transport=udp"],
                Some("1700000000:s1"),
                Some("ab+/c="),
            ),
        ]);
        assert_eq!(u.stun.as_deref(), Some("stun://127.0.0.1:3478"));
        assert_eq!(
            u.turn,
            ["turn://1700000000%3As1:ab%2B%2Fc%3D@127.0.0.1:3478"]
        );
        assert_eq!(u.skipped.len(), 1);
    }

    #[test]
    fn unusable_entries_say_why() {
        let u = convert(&[
            server(&["turn:h:1"], None, None),
            server(&["http://x"], None, None),
            server(&["turn:h:1?transport=tcp"], Some("u"), Some("p")),
            server(&["nothing"], None, None),
        ]);
        assert!(u.turn.is_empty() && u.stun.is_none());
        assert_eq!(u.skipped.len(), 4);
        assert!(u.skipped[0].contains("needs a username"));
        assert!(u.skipped[1].contains("unknown scheme 'http'"));
    }
}
