//! Command line: `--help` is the reference.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
ENDPOINTS
  GET  /                        the viewer page; /?device=ID starts watching ID
                                (also relay=1 for TURN only, codec=h264|vp8, autoplay=0, retry=0)
  GET  /health                  {\"status\":\"ok\"}
  GET  /api/devices             [{device_id, device_name, device_type, online, last_seen}]
  POST /api/devices/register    {device_id, device_name, device_type}; kept in --data FILE
  GET  /ws/device               WebSocket for device agents (first message: hello)
  GET  /ws/viewer               WebSocket for viewers (watch_request, signal_offer, ...)
  Every WebSocket message is JSON {\"type\": ..., \"payload\": {...}} of at most 64 KiB.

OUTPUT
  stdout: one line `listening on ADDR:PORT` once the socket is bound.
  stderr: one log line per event, e.g. `hello device_id=cam1 peer=...`,
  `session started session_id=... device_id=cam1`; set RUST_LOG=debug for more.

EXIT
  0 after SIGINT/SIGTERM (connections are closed within a second), 1 on a startup error.

EXAMPLE
  vcambridge-webrtc-backend --listen 0.0.0.0:8000 --register cam1 \\
      --stun-url stun:stun.example.org:3478 \\
      --turn-url turn:turn.example.org:3478 --turn-secret \"$SECRET\"
  then open http://HOST:8000/?device=cam1";

/// WebRTC signalling backend for vcambridge device agents and browser viewers.
///
/// Registers devices, accepts device agents on /ws/device and viewers on /ws/viewer, pairs
/// them in sessions and relays the offer, answer and ICE candidates between them (media flows
/// peer to peer). Serves the viewer page at /.
#[derive(Parser, Debug)]
#[command(name = "vcambridge-webrtc-backend", version, after_long_help = AFTER_HELP)]
pub struct Args {
    /// Address to serve HTTP and WebSockets on. Port 0 picks a free port; the first line on
    /// stdout says which (`listening on 127.0.0.1:PORT`).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// JSON file keeping device registrations across restarts (replaced atomically).
    /// Default: $XDG_STATE_HOME/vcambridge/webrtc-backend.json, else
    /// ~/.local/state/vcambridge/webrtc-backend.json.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,

    /// Seconds between device heartbeats, told to each device in hello_ack. A connection
    /// that sends nothing for three intervals is closed (viewers are pinged every interval).
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_interval: u64,

    /// STUN server offered to both peers, e.g. stun:stun.example.org:3478.
    #[arg(long, value_name = "URL", value_parser = stun_url)]
    pub stun_url: Option<String>,

    /// TURN server offered to both peers with per-session credentials (TURN REST form, as
    /// coturn's use-auth-secret checks them). Needs --turn-secret.
    #[arg(long, value_name = "turn:HOST:PORT", value_parser = turn_url, requires = "turn_secret")]
    pub turn_url: Option<String>,

    /// Shared secret of the TURN server (coturn's static-auth-secret). Prefer the environment
    /// variable: a command line is visible to other users.
    #[arg(
        long,
        value_name = "S",
        env = "VCAMBRIDGE_TURN_SECRET",
        hide_env_values = true
    )]
    pub turn_secret: Option<String>,

    /// Seconds a TURN credential stays valid (the expiry in its username).
    #[arg(long, value_name = "SECS", default_value_t = 86400,
          value_parser = clap::value_parser!(u64).range(60..=31_536_000))]
    pub turn_ttl: u64,

    /// Register this device id at startup (name = id, type "camera") unless it is already
    /// registered. Repeatable.
    #[arg(long = "register", value_name = "ID", value_parser = device_id)]
    pub register: Vec<String>,
}

fn stun_url(s: &str) -> Result<String, String> {
    if (s.starts_with("stun:") || s.starts_with("stuns:")) && s.len() > 6 {
        Ok(s.to_owned())
    } else {
        Err("expected stun:HOST:PORT (or stuns:HOST:PORT)".into())
    }
}

fn turn_url(s: &str) -> Result<String, String> {
    if (s.starts_with("turn:") || s.starts_with("turns:")) && s.len() > 6 {
        Ok(s.to_owned())
    } else {
        Err("expected turn:HOST:PORT (or turns:HOST:PORT, ?transport=tcp allowed)".into())
    }
}

fn device_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 128 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("a device id is 1 to 128 bytes without whitespace".into())
    } else {
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_url_needs_a_secret_and_urls_are_checked() {
        let err = Args::try_parse_from(["x", "--turn-url", "turn:h:3478"]).expect_err("no secret");
        assert!(err.to_string().contains("--turn-secret"), "{err}");
        assert!(Args::try_parse_from(["x", "--stun-url", "h:3478"]).is_err());
        let a = Args::try_parse_from([
            "x",
            "--turn-url",
            "turn:h:3478",
            "--turn-secret",
            "s",
            "--register",
            "a",
            "--register",
            "b",
        ])
        .expect("valid");
        assert_eq!(a.register, ["a", "b"]);
        assert_eq!(a.turn_ttl, 86400);
        assert_eq!(a.heartbeat_interval, 10);
        assert!(Args::try_parse_from(["x", "--heartbeat-interval", "0"]).is_err());
    }
}
