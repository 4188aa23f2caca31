//! The WebSocket to the backend: hello, heartbeats, dispatch of backend messages to the
//! control thread, and reconnection with exponential backoff. Media keeps flowing to live
//! viewers while this is down (it only carries signalling).

use std::sync::mpsc::Sender;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use log::{debug, info, warn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc::UnboundedReceiver, watch};
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

use crate::control::{Backoff, random_unit};
use crate::media::Command;
use crate::protocol::{self, Incoming};

pub struct SignallingConfig {
    pub backend: String,
    pub device_id: String,
    pub device_name: String,
    pub device_type: String,
    pub register: bool,
    pub heartbeat: Duration,
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
}

/// `ws://host:port/path` → (`host:port`, `host`), or why the URL cannot be used.
pub fn backend_address(url: &str) -> Result<(String, String), String> {
    let rest = if let Some(r) = url.strip_prefix("ws://") {
        r
    } else if url.starts_with("wss://") {
        return Err(format!(
            "--backend {url}: wss:// needs TLS, which this agent does not include; \
             use ws:// (e.g. through a TLS-terminating proxy on the backend's host)"
        ));
    } else {
        return Err(format!(
            "--backend {url}: expected a ws://HOST:PORT/PATH URL"
        ));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("--backend {url}: no host"));
    }
    let host = if authority.starts_with('[') {
        authority
            .split(']')
            .next()
            .unwrap_or("")
            .trim_start_matches('[')
    } else {
        authority.split(':').next().unwrap_or("")
    };
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, host.to_owned()))
}

/// `POST /api/devices/register` on the backend's HTTP side (same host and port).
async fn register(cfg: &SignallingConfig) -> Result<(), String> {
    let (addr, host) = backend_address(&cfg.backend)?;
    let body = serde_json::json!({
        "device_id": cfg.device_id,
        "device_name": cfg.device_name,
        "device_type": cfg.device_type,
    })
    .to_string();
    let req = format!(
        "POST /api/devices/register HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut resp = Vec::new();
    let _ = (&mut s).take(4096).read_to_end(&mut resp).await;
    let head = String::from_utf8_lossy(&resp);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(format!(
            "registration answered '{}'",
            head.lines().next().unwrap_or("nothing")
        ))
    }
}

enum Ended {
    Shutdown,
    Lost { acked: bool, reason: String },
}

/// Runs until `shutdown` turns true; then sends what is queued in `outbox` and closes.
pub async fn run(
    cfg: SignallingConfig,
    mut outbox: UnboundedReceiver<String>,
    commands: Sender<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(cfg.reconnect_base, cfg.reconnect_max);
    let mut attempt = 0u64;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut dropped = 0;
        while outbox.try_recv().is_ok() {
            dropped += 1;
        }
        if dropped > 0 {
            debug!("{dropped} signalling messages dropped while the backend was unreachable");
        }
        if cfg.register {
            match tokio::time::timeout(Duration::from_secs(5), register(&cfg)).await {
                Ok(Ok(())) => debug!("registered {} with the backend", cfg.device_id),
                Ok(Err(e)) => warn!("device registration failed: {e}"),
                Err(_) => warn!("device registration timed out after 5 s"),
            }
        }
        attempt += 1;
        info!("connecting to {} (attempt {attempt})", cfg.backend);
        let ws_cfg = WebSocketConfig::default()
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let connect =
            tokio_tungstenite::connect_async_with_config(&cfg.backend, Some(ws_cfg), false);
        let reason = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok((ws, _))) => match session(&cfg, ws, &mut outbox, &commands, &mut shutdown).await
            {
                Ended::Shutdown => return,
                Ended::Lost { acked, reason } => {
                    if acked {
                        backoff.reset();
                        attempt = 0;
                    }
                    reason
                }
            },
            Ok(Err(e)) => format!("cannot connect: {e}"),
            Err(_) => "connecting timed out after 10 s".to_owned(),
        };
        let delay = backoff.next_delay(random_unit());
        warn!(
            "backend {}: {reason}; reconnecting in {:.2} s",
            cfg.backend,
            delay.as_secs_f64()
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn session(
    cfg: &SignallingConfig,
    mut ws: Ws,
    outbox: &mut UnboundedReceiver<String>,
    commands: &Sender<Command>,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    if let Err(e) = ws
        .send(Message::text(protocol::hello(&cfg.device_id)))
        .await
    {
        return Ended::Lost {
            acked: false,
            reason: format!("sending hello failed: {e}"),
        };
    }
    let mut acked = false;
    let ack_deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(ack_deadline);
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                        let reason = if acked {
                            format!("the backend closed the connection ({why})")
                        } else {
                            format!("the backend refused device '{}' ({why}): is it registered?", cfg.device_id)
                        };
                        return Ended::Lost { acked, reason };
                    }
                    Some(Ok(Message::Binary(b))) => {
                        warn!("binary message of {} bytes from the backend: ignored", b.len());
                        continue;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Ended::Lost { acked, reason: format!("connection error: {e}") },
                    None => return Ended::Lost { acked, reason: "connection closed".into() },
                };
                match protocol::parse(&text) {
                    Err(e) => warn!("message from the backend refused: {e}"),
                    Ok(Incoming::HelloAck) => {
                        if !acked {
                            info!("backend accepted device {}", cfg.device_id);
                        }
                        acked = true;
                    }
                    Ok(Incoming::Unknown(t)) => debug!("message type '{t}' ignored"),
                    Ok(m) => {
                        let cmd = match m {
                            Incoming::WatchRequest { session_id, ice_servers } =>
                                Command::Watch { session_id, ice_servers },
                            Incoming::SignalOffer { session_id, sdp } => Command::Offer { session_id, sdp },
                            Incoming::IceCandidate { session_id, candidate, sdp_mline_index, sdp_mid } =>
                                Command::Candidate { session_id, candidate, mline: sdp_mline_index, mid: sdp_mid },
                            Incoming::WatchEnd { session_id } => Command::End {
                                session_id, reason: "watch_end from the backend".into(), tell_backend: false,
                            },
                            Incoming::HelloAck | Incoming::Unknown(_) => continue,
                        };
                        if commands.send(cmd).is_err() {
                            return Ended::Shutdown;
                        }
                    }
                }
            }
            out = outbox.recv() => {
                let Some(out) = out else { return Ended::Shutdown };
                if let Err(e) = ws.send(Message::text(out)).await {
                    return Ended::Lost { acked, reason: format!("sending failed: {e}") };
                }
            }
            _ = heartbeat.tick(), if acked => {
                if let Err(e) = ws.send(Message::text(protocol::heartbeat())).await {
                    return Ended::Lost { acked, reason: format!("heartbeat failed: {e}") };
                }
            }
            _ = &mut ack_deadline, if !acked => {
                return Ended::Lost { acked, reason: "no hello_ack within 10 s".into() };
            }
            _ = shutdown.changed() => {
                // Sends what the control thread queued while stopping (watch_end per session).
                while let Ok(m) = outbox.try_recv() {
                    if ws.send(Message::text(m)).await.is_err() {
                        break;
                    }
                }
                let _ = tokio::time::timeout(Duration::from_millis(300), ws.close(None)).await;
                return Ended::Shutdown;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls() {
        assert_eq!(
            backend_address("ws://localhost:8000/ws/device").unwrap(),
            ("localhost:8000".into(), "localhost".into())
        );
        assert_eq!(
            backend_address("ws://example.org/ws/device").unwrap(),
            ("example.org:80".into(), "example.org".into())
        );
        assert!(backend_address("wss://x/ws").unwrap_err().contains("TLS"));
        assert!(
            backend_address("http://x/ws")
                .unwrap_err()
                .contains("ws://HOST:PORT/PATH")
        );
        assert!(backend_address("ws:///x").is_err());
    }
}
