//! Runs the real backend binary on a free port and talks to it as device
//! agents, viewers and an HTTP client would, over real TCP.

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_vcambridge-webrtc-backend");
const WAIT: Duration = Duration::from_secs(5);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running backend; killed on drop if still alive.
struct Backend {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    fn start(data: &Path, extra: &[&str]) -> Backend {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the backend binary");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("backend: {line}");
                sink.lock().expect("log lock").push(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let first = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                panic!("backend printed no `listening on` line within 10 s: {other:?}");
            }
        };
        let addr = first
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("first stdout line is {first:?}"));
        Backend { child, addr, log }
    }

    fn log_contains(&self, needle: &str) -> bool {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Waits (bounded) until a log line contains `needle`.
    async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log_contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` and returns the exit status and how long the exit took.
    fn stop_with(&mut self, signal: i32) -> (ExitStatus, Duration) {
        let pid = i32::try_from(self.child.id()).expect("pid fits");
        let start = Instant::now();
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill failed");
        let status = wait_exit(&mut self.child, Duration::from_secs(5));
        (status, start.elapsed())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write request");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.expect("read response");
        String::from_utf8(resp).expect("utf-8 response")
    };
    let resp = timeout(WAIT, exchange)
        .await
        .expect("HTTP exchange in time");
    let status: u16 = resp
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn http_json(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (status, text) = http(addr, method, path, body).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} body {text:?}: {e}"));
    (status, v)
}

async fn register(addr: SocketAddr, id: &str) {
    let body =
        json!({ "device_id": id, "device_name": format!("{id} name"), "device_type": "camera" });
    let (status, v) = http_json(
        addr,
        "POST",
        "/api/devices/register",
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["device_id"], id);
}

async fn device_entry(addr: SocketAddr, id: &str) -> Value {
    let (status, list) = http_json(addr, "GET", "/api/devices", None).await;
    assert_eq!(status, 200);
    list.as_array()
        .expect("a list")
        .iter()
        .find(|d| d["device_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} missing from {list}"))
}

async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let (ws, _) = timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    .expect("WebSocket handshake in time")
    .expect("WebSocket handshake");
    ws
}

async fn send(ws: &mut Ws, kind: &str, payload: Value) {
    let text = json!({ "type": kind, "payload": payload }).to_string();
    timeout(WAIT, ws.send(Message::text(text)))
        .await
        .expect("send in time")
        .expect("send");
}

async fn send_raw(ws: &mut Ws, text: String) {
    timeout(WAIT, ws.send(Message::text(text)))
        .await
        .expect("send in time")
        .expect("send");
}

/// The next JSON message as `(type, payload)`.
async fn recv(ws: &mut Ws) -> (String, Value) {
    loop {
        let msg = timeout(WAIT, ws.next())
            .await
            .expect("a message within 5 s")
            .expect("connection still open")
            .expect("a valid frame");
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON text");
                let kind = v["type"].as_str().expect("a type").to_owned();
                return (kind, v["payload"].clone());
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    let (got, payload) = recv(ws).await;
    assert_eq!(got, kind, "payload {payload}");
    payload
}

/// Waits for the peer to close; returns the close reason ("" when closed without a frame).
async fn expect_close(ws: &mut Ws) -> String {
    loop {
        match timeout(WAIT, ws.next()).await.expect("closed within 5 s") {
            None | Some(Err(_)) => return String::new(),
            Some(Ok(Message::Close(frame))) => {
                return frame
                    .map(|f| f.reason.as_str().to_owned())
                    .unwrap_or_default();
            }
            Some(Ok(Message::Text(t))) => panic!("expected a close, got {t}"),
            Some(Ok(_)) => {}
        }
    }
}

async fn device(addr: SocketAddr, id: &str) -> Ws {
    let mut ws = connect(addr, "/ws/device").await;
    send(&mut ws, "hello", json!({ "device_id": id })).await;
    let ack = recv_type(&mut ws, "hello_ack").await;
    assert_eq!(ack["device_id"], id);
    ws
}

fn hmac_sha1_base64(key: &str, msg: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(msg.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn candidate(n: u32) -> Value {
    json!({ "candidate": format!("candidate:{n} 1 udp 2122260223 192.0.2.{n} 5000{n} typ host"),
            "sdpMid": "0", "sdpMLineIndex": 0 })
}

#[tokio::test]
async fn registrations_survive_a_restart_and_devices_show_online() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("state/devices.json");
    let mut backend = Backend::start(&data, &["--register", "preset"]);
    let addr = backend.addr;

    let (status, v) = http_json(addr, "GET", "/health", None).await;
    assert_eq!((status, v), (200, json!({ "status": "ok" })));

    register(addr, "cam1").await;
    let (status, v) = http_json(
        addr,
        "POST",
        "/api/devices/register",
        Some(r#"{"device_id":"cam2","device_type":"camera"}"#),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["field"], "device_name", "{v}");
    assert!(
        v["message"]
            .as_str()
            .expect("message")
            .contains("device_name")
    );
    let (status, _) = http_json(addr, "POST", "/api/devices/register", Some("{oops")).await;
    assert_eq!(status, 400);

    let cam1 = device_entry(addr, "cam1").await;
    assert_eq!(cam1["device_name"], "cam1 name");
    assert_eq!(cam1["online"], false);
    assert_eq!(cam1["last_seen"], Value::Null);
    let preset = device_entry(addr, "preset").await;
    assert_eq!(preset["device_type"], "camera");

    let before = now();
    let mut dev = device(addr, "cam1").await;
    let cam1 = device_entry(addr, "cam1").await;
    assert_eq!(cam1["online"], true);
    let seen = cam1["last_seen"].as_u64().expect("last_seen is a number");
    assert!(seen >= before && seen <= now(), "last_seen {seen}");
    assert_eq!(device_entry(addr, "preset").await["online"], false);
    backend.wait_log("hello device_id=cam1").await;

    dev.close(None).await.expect("device closes");
    backend.wait_log("device disconnected device_id=cam1").await;
    assert_eq!(device_entry(addr, "cam1").await["online"], false);

    let (status, took) = backend.stop_with(libc::SIGINT);
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(1),
        "exit on SIGINT took {took:?}"
    );

    let backend = Backend::start(&data, &[]);
    let cam1 = device_entry(backend.addr, "cam1").await;
    assert_eq!(cam1["device_name"], "cam1 name");
    device_entry(backend.addr, "preset").await;
    assert!(
        device_entry_missing(backend.addr, "cam2").await,
        "a refused registration must not be stored"
    );
}

async fn device_entry_missing(addr: SocketAddr, id: &str) -> bool {
    let (_, list) = http_json(addr, "GET", "/api/devices", None).await;
    !list
        .as_array()
        .expect("list")
        .iter()
        .any(|d| d["device_id"] == id)
}

#[tokio::test]
async fn unregistered_or_misbehaving_devices_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start(&dir.path().join("d.json"), &["--register", "cam1"]);
    let addr = backend.addr;

    let mut ws = connect(addr, "/ws/device").await;
    send(&mut ws, "hello", json!({ "device_id": "ghost" })).await;
    let reason = expect_close(&mut ws).await;
    assert!(reason.contains("unknown device_id ghost"), "{reason:?}");
    backend.wait_log("device rejected peer=127.0.0.1:").await;
    backend.wait_log("device_id=ghost").await;

    let mut ws = connect(addr, "/ws/device").await;
    send(&mut ws, "heartbeat", json!({})).await;
    let reason = expect_close(&mut ws).await;
    assert!(reason.contains("first message must be hello"), "{reason:?}");

    let mut ws = connect(addr, "/ws/device").await;
    send_raw(&mut ws, "{\"type\": \"hello\", ".into()).await;
    let reason = expect_close(&mut ws).await;
    assert!(reason.contains("malformed hello"), "{reason:?}");

    assert_eq!(device_entry(addr, "cam1").await["online"], false);
}

#[tokio::test]
async fn offer_answer_candidates_and_watch_end_route_between_viewer_and_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start(
        &dir.path().join("d.json"),
        &["--register", "cam1", "--stun-url", "stun:192.0.2.1:3478"],
    );
    let addr = backend.addr;
    let mut dev = device(addr, "cam1").await;
    let mut viewer = connect(addr, "/ws/viewer").await;

    send(&mut viewer, "watch_request", json!({ "device_id": "cam1" })).await;
    let accepted = recv_type(&mut viewer, "watch_accepted").await;
    let sid = accepted["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    assert_eq!(sid.len(), 32, "{sid}");
    assert!(sid.bytes().all(|b| b.is_ascii_hexdigit()), "{sid}");
    assert_eq!(
        accepted["ice_servers"],
        json!([{ "urls": "stun:192.0.2.1:3478" }])
    );
    let asked = recv_type(&mut dev, "watch_request").await;
    assert_eq!(asked["session_id"], sid.as_str());
    assert_eq!(asked["ice_servers"], accepted["ice_servers"]);
    backend
        .wait_log(&format!("session started session_id={sid} device_id=cam1"))
        .await;

    let offer = json!({ "type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n" });
    send(
        &mut viewer,
        "signal_offer",
        json!({ "session_id": sid, "sdp": offer }),
    )
    .await;
    let got = recv_type(&mut dev, "signal_offer").await;
    assert_eq!(got, json!({ "session_id": sid, "sdp": offer }));

    send(
        &mut viewer,
        "ice_candidate",
        json!({ "session_id": sid, "candidate": candidate(1) }),
    )
    .await;
    let got = recv_type(&mut dev, "ice_candidate").await;
    assert_eq!(got["candidate"], candidate(1));

    // A session this device does not own is dropped; the next real message still arrives.
    send(
        &mut dev,
        "ice_candidate",
        json!({ "session_id": "f".repeat(32), "candidate": candidate(9) }),
    )
    .await;
    send(&mut dev, "heartbeat", json!({})).await;
    send(&mut dev, "something_new", json!({ "x": 1 })).await;
    let answer = json!({ "type": "answer", "sdp": "v=0\r\n" });
    send(
        &mut dev,
        "signal_answer",
        json!({ "session_id": sid, "sdp": answer }),
    )
    .await;
    let got = recv_type(&mut viewer, "signal_answer").await;
    assert_eq!(got, json!({ "session_id": sid, "sdp": answer }));
    backend.wait_log("session this device does not own").await;

    send(
        &mut dev,
        "ice_candidate",
        json!({ "session_id": sid, "candidate": candidate(2) }),
    )
    .await;
    let got = recv_type(&mut viewer, "ice_candidate").await;
    assert_eq!(got, json!({ "session_id": sid, "candidate": candidate(2) }));

    // The device ends the first session; the viewer hears it and the session is gone.
    send(&mut dev, "watch_end", json!({ "session_id": sid })).await;
    assert_eq!(
        recv_type(&mut viewer, "watch_end").await["session_id"],
        sid.as_str()
    );
    send(
        &mut viewer,
        "ice_candidate",
        json!({ "session_id": sid, "candidate": candidate(3) }),
    )
    .await;
    let err = recv_type(&mut viewer, "error").await;
    assert_eq!(err["code"], "unknown_session");

    // Two more sessions on one viewer connection: one ended by the viewer, one by closing.
    send(&mut viewer, "watch_request", json!({ "device_id": "cam1" })).await;
    let s2 = recv_type(&mut viewer, "watch_accepted").await["session_id"].clone();
    assert_eq!(recv_type(&mut dev, "watch_request").await["session_id"], s2);
    send(&mut viewer, "watch_request", json!({ "device_id": "cam1" })).await;
    let s3 = recv_type(&mut viewer, "watch_accepted").await["session_id"].clone();
    assert_eq!(recv_type(&mut dev, "watch_request").await["session_id"], s3);
    assert_ne!(s2, s3);
    send(&mut viewer, "watch_end", json!({ "session_id": s2 })).await;
    assert_eq!(recv_type(&mut dev, "watch_end").await["session_id"], s2);

    viewer.close(None).await.expect("viewer closes");
    assert_eq!(recv_type(&mut dev, "watch_end").await["session_id"], s3);
    let s3 = s3.as_str().expect("sid");
    backend
        .wait_log(&format!(
            "session ended session_id={s3} reason=viewer_disconnected"
        ))
        .await;
}

#[tokio::test]
async fn turn_credentials_follow_the_turn_rest_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "north-wind-42";
    let backend = Backend::start(
        &dir.path().join("d.json"),
        &[
            "--register",
            "cam1",
            "--turn-url",
            "turn:192.0.2.7:3478",
            "--turn-secret",
            secret,
            "--turn-ttl",
            "3600",
        ],
    );
    let mut dev = device(backend.addr, "cam1").await;
    let mut viewer = connect(backend.addr, "/ws/viewer").await;
    let before = now();
    send(&mut viewer, "watch_request", json!({ "device_id": "cam1" })).await;
    let accepted = recv_type(&mut viewer, "watch_accepted").await;
    let after = now();
    let sid = accepted["session_id"].as_str().expect("sid");
    let servers = accepted["ice_servers"].as_array().expect("list");
    assert_eq!(servers.len(), 1, "{servers:?}");
    let turn = &servers[0];
    assert_eq!(turn["urls"], "turn:192.0.2.7:3478");
    let username = turn["username"].as_str().expect("username");
    let (expiry, user_sid) = username.split_once(':').expect("expiry:session_id");
    let expiry: u64 = expiry.parse().expect("expiry is a unix time");
    assert!(
        expiry >= before + 3600 && expiry <= after + 3600,
        "expiry {expiry} not now+3600 ({before}..{after})"
    );
    assert_eq!(user_sid, sid);
    assert_eq!(
        turn["credential"],
        hmac_sha1_base64(secret, username).as_str()
    );
    assert_ne!(
        turn["credential"],
        hmac_sha1_base64("other", username).as_str()
    );
    // The device gets the same list.
    assert_eq!(
        recv_type(&mut dev, "watch_request").await["ice_servers"],
        accepted["ice_servers"]
    );
}

#[tokio::test]
async fn viewer_errors_leave_the_connection_usable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start(&dir.path().join("d.json"), &["--register", "cam1"]);
    let addr = backend.addr;
    let mut viewer = connect(addr, "/ws/viewer").await;

    send(
        &mut viewer,
        "watch_request",
        json!({ "device_id": "nobody" }),
    )
    .await;
    assert_eq!(
        recv_type(&mut viewer, "error").await["code"],
        "unknown_device"
    );

    send(&mut viewer, "watch_request", json!({ "device_id": "cam1" })).await;
    let err = recv_type(&mut viewer, "error").await;
    assert_eq!(err["code"], "device_offline");

    send_raw(&mut viewer, "{not json".into()).await;
    assert_eq!(recv_type(&mut viewer, "error").await["code"], "bad_request");

    send(&mut viewer, "watch_request", json!({})).await;
    let err = recv_type(&mut viewer, "error").await;
    assert_eq!(err["code"], "bad_request");
    assert!(
        err["message"]
            .as_str()
            .expect("message")
            .contains("device_id"),
        "{err}"
    );

    send(
        &mut viewer,
        "signal_offer",
        json!({ "session_id": "abc", "sdp": { "type": "offer", "sdp": "v=0" } }),
    )
    .await;
    assert_eq!(
        recv_type(&mut viewer, "error").await["code"],
        "unknown_session"
    );

    let big = json!({ "type": "ice_candidate", "payload": { "session_id": "abc",
        "candidate": { "candidate": "x".repeat(100 * 1024) } } })
    .to_string();
    send_raw(&mut viewer, big).await;
    assert_eq!(recv_type(&mut viewer, "error").await["code"], "too_large");
    backend.wait_log("over the 64 KiB limit").await;

    // Still usable: the device comes online and a watch succeeds on the same connection.
    let mut dev = device(addr, "cam1").await;
    // An oversized device message is dropped; the device connection stays.
    let big =
        json!({ "type": "heartbeat", "payload": { "pad": "y".repeat(100 * 1024) } }).to_string();
    send_raw(&mut dev, big).await;
    send(&mut viewer, "watch_request", json!({ "device_id": "cam1" })).await;
    let sid = recv_type(&mut viewer, "watch_accepted").await["session_id"].clone();
    assert_eq!(
        recv_type(&mut dev, "watch_request").await["session_id"],
        sid
    );
}

#[tokio::test]
async fn a_reconnecting_device_replaces_the_old_connection_and_sessions_route_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start(&dir.path().join("d.json"), &["--register", "cam1"]);
    let addr = backend.addr;
    let mut first = device(addr, "cam1").await;
    let mut viewer = connect(addr, "/ws/viewer").await;
    send(&mut viewer, "watch_request", json!({ "device_id": "cam1" })).await;
    let sid = recv_type(&mut viewer, "watch_accepted").await["session_id"].clone();
    assert_eq!(
        recv_type(&mut first, "watch_request").await["session_id"],
        sid
    );

    let mut second = device(addr, "cam1").await;
    let reason = expect_close(&mut first).await;
    assert!(reason.contains("replaced"), "{reason:?}");
    send(
        &mut viewer,
        "ice_candidate",
        json!({ "session_id": sid, "candidate": candidate(1) }),
    )
    .await;
    assert_eq!(
        recv_type(&mut second, "ice_candidate").await["candidate"],
        candidate(1)
    );
    assert_eq!(device_entry(addr, "cam1").await["online"], true);

    // The device drops: the session stays, the viewer learns the device is away.
    second.close(None).await.expect("device closes");
    backend.wait_log("device disconnected device_id=cam1").await;
    assert_eq!(device_entry(addr, "cam1").await["online"], false);
    send(
        &mut viewer,
        "ice_candidate",
        json!({ "session_id": sid, "candidate": candidate(2) }),
    )
    .await;
    let err = recv_type(&mut viewer, "error").await;
    assert_eq!(
        (err["code"].as_str(), &err["session_id"]),
        (Some("device_offline"), &sid)
    );

    // Back again: both directions route for the old session.
    let mut third = device(addr, "cam1").await;
    send(
        &mut viewer,
        "ice_candidate",
        json!({ "session_id": sid, "candidate": candidate(3) }),
    )
    .await;
    assert_eq!(
        recv_type(&mut third, "ice_candidate").await["candidate"],
        candidate(3)
    );
    let answer = json!({ "type": "answer", "sdp": "v=0\r\n" });
    send(
        &mut third,
        "signal_answer",
        json!({ "session_id": sid, "sdp": answer }),
    )
    .await;
    assert_eq!(recv_type(&mut viewer, "signal_answer").await["sdp"], answer);
}

#[tokio::test]
async fn a_silent_device_is_closed_after_three_heartbeat_intervals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start(
        &dir.path().join("d.json"),
        &["--register", "cam1", "--heartbeat-interval", "1"],
    );
    let addr = backend.addr;
    let mut ws = connect(addr, "/ws/device").await;
    send(&mut ws, "hello", json!({ "device_id": "cam1" })).await;
    let ack = recv_type(&mut ws, "hello_ack").await;
    assert_eq!(ack, json!({ "device_id": "cam1", "heartbeat_interval": 1 }));

    // Heartbeats every half interval for 4 s (past the 3 s limit) keep it online.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        send(&mut ws, "heartbeat", json!({})).await;
    }
    assert_eq!(device_entry(addr, "cam1").await["online"], true);

    let silent_since = Instant::now();
    let reason = expect_close(&mut ws).await;
    let silent = silent_since.elapsed();
    assert!(reason.contains("nothing received"), "{reason:?}");
    assert!(
        silent >= Duration::from_millis(2500) && silent <= Duration::from_millis(4500),
        "closed after {silent:?} of silence, expected about 3 s"
    );
    assert_eq!(device_entry(addr, "cam1").await["online"], false);
}

#[tokio::test]
async fn sigterm_closes_connections_and_exits_zero_within_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut backend = Backend::start(&dir.path().join("d.json"), &["--register", "cam1"]);
    let mut dev = device(backend.addr, "cam1").await;
    let mut viewer = connect(backend.addr, "/ws/viewer").await;
    send(&mut viewer, "watch_request", json!({ "device_id": "cam1" })).await;
    recv_type(&mut viewer, "watch_accepted").await;
    recv_type(&mut dev, "watch_request").await;

    // Read the close frames while the process shuts down; a shutdown is no watch_end
    // (expect_close fails on any text message first).
    let dev_close = tokio::spawn(async move { expect_close(&mut dev).await });
    let viewer_close = tokio::spawn(async move { expect_close(&mut viewer).await });
    let (status, took) = tokio::task::spawn_blocking(move || {
        let r = backend.stop_with(libc::SIGTERM);
        drop(backend);
        r
    })
    .await
    .expect("terminate");
    assert!(status.success(), "exit status {status}");
    println!("exit after SIGTERM with two open WebSockets took {took:?}");
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    let reason = timeout(WAIT, dev_close)
        .await
        .expect("device close")
        .expect("task");
    assert_eq!(reason, "server shutting down");
    let reason = timeout(WAIT, viewer_close)
        .await
        .expect("viewer close")
        .expect("task");
    assert_eq!(reason, "server shutting down");
}

#[test]
fn a_busy_port_is_an_error_that_names_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = holder.local_addr().expect("addr").to_string();
    let mut child = Command::new(BIN)
        .args(["--listen", &busy, "--data"])
        .arg(dir.path().join("d.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot listen on {busy}")), "{err}");
    assert!(err.contains("--listen"), "{err}");
}

#[test]
fn help_lists_every_option_and_endpoint() {
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("utf-8");
    for needle in [
        "--listen",
        "--data",
        "--heartbeat-interval",
        "--stun-url",
        "--turn-url",
        "--turn-secret",
        "--turn-ttl",
        "--register",
        "/ws/device",
        "/ws/viewer",
        "/api/devices/register",
        "SIGTERM",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[tokio::test]
async fn the_viewer_page_is_served_whole_and_its_script_parses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start(&dir.path().join("d.json"), &[]);
    let (status, page) = http(backend.addr, "GET", "/?device=cam1", None).await;
    assert_eq!(status, 200);
    for hook in [
        "window.vcb",
        "window.vcbSampleColor",
        "framesRendered",
        "wsReconnects",
        "setCodecPreferences",
    ] {
        assert!(page.contains(hook), "page lacks {hook}");
    }
    // Works offline: nothing loaded from elsewhere.
    for external in ["src=\"http", "href=\"http", "src=\"//", "@import"] {
        assert!(
            !page.contains(external),
            "page loads an external resource ({external})"
        );
    }
    let start = page.find("<script>").expect("an inline script") + "<script>".len();
    let end = page[start..].find("</script>").expect("script end") + start;
    let script = &page[start..end];
    assert!(script.len() > 1000, "script is only {} bytes", script.len());

    let node_found = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_found {
        println!("note: node is not on PATH; the page's script was not syntax-checked");
        return;
    }
    let js = dir.path().join("page.js");
    std::fs::write(&js, script).expect("write script");
    let out = Command::new("node")
        .arg("--check")
        .arg(&js)
        .output()
        .expect("run node --check");
    assert!(
        out.status.success(),
        "node --check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And a broken script would fail: the check can fail.
    std::fs::write(&js, format!("{script}\n}}")).expect("write script");
    let out = Command::new("node")
        .arg("--check")
        .arg(&js)
        .output()
        .expect("run node --check");
    assert!(!out.status.success(), "node --check accepts anything");
}
