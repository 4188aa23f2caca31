//! HTTP routes and WebSocket connections around the [`Hub`].
//!
//! Locks: `App::hub` and `App::conns` are plain mutexes held only for
//! non-blocking work (the hub decides, then `dispatch` queues on bounded
//! channels with `try_send`); never across an `.await`. Each WebSocket is owned
//! by one task, which alone reads and writes its socket. `App::persist` is an
//! async mutex that serialises writes of the registration file.

use crate::hub::{Action, ConnId, Hub};
use crate::protocol::{self, DeviceMsg, ErrorCode, LogStr, MAX_MESSAGE_BYTES, ViewerMsg};
use crate::registry;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, timeout};

/// The viewer page, built into the binary.
pub const PAGE: &str = include_str!("../web/index.html");

/// Messages queued for one connection before it counts as too slow and is closed.
const OUTBOUND_QUEUE: usize = 256;
/// What axum itself accepts; anything above [`MAX_MESSAGE_BYTES`] is refused by us with a reply.
const TRANSPORT_MAX_MESSAGE: usize = 1 << 20;
/// Longest wait for one socket write.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the peer's close reply after our close frame.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);
const SHUTDOWN_CLOSE_DRAIN: Duration = Duration::from_millis(300);

enum Outbound {
    Text(String),
    Close(String),
}

struct ConnHandle {
    tx: mpsc::Sender<Outbound>,
    /// Woken when the queue overflowed: the connection closes itself.
    kill: Arc<Notify>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Device,
    Viewer,
}

/// Shared state of the running server.
pub struct App {
    hub: Mutex<Hub>,
    conns: Mutex<HashMap<ConnId, ConnHandle>>,
    next_conn: AtomicU64,
    persist: tokio::sync::Mutex<()>,
    data_path: PathBuf,
    heartbeat_interval: Duration,
    shutdown: watch::Receiver<bool>,
    /// Number of open WebSocket connections, so shutdown can wait for their close frames.
    open_conns: watch::Sender<usize>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 128 random bits as 32 hex digits.
fn new_session_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl App {
    pub fn new(
        hub: Hub,
        data_path: PathBuf,
        heartbeat_interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<App> {
        Arc::new(App {
            hub: Mutex::new(hub),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            persist: tokio::sync::Mutex::new(()),
            data_path,
            heartbeat_interval,
            shutdown,
            open_conns: watch::Sender::new(0),
        })
    }

    /// Watches the number of open WebSocket connections.
    pub fn open_connections(&self) -> watch::Receiver<usize> {
        self.open_conns.subscribe()
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<ConnId, ConnHandle>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues the hub's decisions on the connections they name.
    fn dispatch(&self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let conns = self.conns();
        for action in actions {
            let (to, item) = match action {
                Action::Send { to, text } => (to, Outbound::Text(text)),
                Action::Close { to, reason } => (to, Outbound::Close(reason)),
            };
            let Some(handle) = conns.get(&to) else {
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = handle.tx.try_send(item) {
                log::warn!("connection conn={to} does not keep up with its messages; closing it");
                handle.kill.notify_one();
            }
        }
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/api/devices", get(list_devices))
        .route("/api/devices/register", post(register_device))
        .route("/ws/device", get(ws_device))
        .route("/ws/viewer", get(ws_viewer))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
        .with_state(app)
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

async fn health() -> Response {
    json_response(StatusCode::OK, json!({ "status": "ok" }))
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({ "error": "not_found", "message": "no such path; see --help for the endpoints" }),
    )
}

async fn list_devices(State(app): State<Arc<App>>) -> Response {
    let list = app.hub().devices_json();
    json_response(StatusCode::OK, list)
}

async fn register_device(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let info = match registry::parse_registration(&body) {
        Ok(info) => info,
        Err((field, message)) => {
            let mut err = json!({ "error": "bad_request", "message": message });
            if !field.is_empty() {
                err["field"] = field.into();
            }
            return json_response(StatusCode::BAD_REQUEST, err);
        }
    };
    // One writer at a time, so a later snapshot never lands before an earlier one.
    let _writer = app.persist.lock().await;
    let mut all = app.hub().registrations();
    match all.iter_mut().find(|d| d.device_id == info.device_id) {
        Some(d) => *d = info.clone(),
        None => all.push(info.clone()),
    }
    let path = app.data_path.clone();
    let saved = tokio::task::spawn_blocking(move || registry::save(&path, &all)).await;
    let failure = match saved {
        Ok(Ok(())) => None,
        Ok(Err(msg)) => Some(msg),
        Err(e) => Some(format!("writing the device registry failed: {e}")),
    };
    if let Some(msg) = failure {
        log::error!("{msg}");
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": "storage", "message": msg }),
        );
    }
    let mut hub = app.hub();
    hub.register(info.clone());
    let body = hub.device_json(&info.device_id);
    drop(hub);
    log::info!(
        "device registered device_id={} device_name={} device_type={}",
        LogStr(&info.device_id),
        LogStr(&info.device_name),
        LogStr(&info.device_type)
    );
    json_response(StatusCode::OK, body.unwrap_or_default())
}

async fn ws_device(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    limited(ws).on_upgrade(move |socket| device_connection(app, socket, peer))
}

async fn ws_viewer(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    limited(ws).on_upgrade(move |socket| viewer_connection(app, socket, peer))
}

/// Both endpoints refuse messages and frames over the transport limit.
fn limited(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.max_message_size(TRANSPORT_MAX_MESSAGE)
        .max_frame_size(TRANSPORT_MAX_MESSAGE)
}

/// What a connection's task gets from [`Conn::next_event`].
enum Event {
    Text(String),
    TooLarge(usize),
    Binary,
    /// The connection is over (already closed towards the peer).
    End(String),
}

/// Leaves the hub and the connection table however the task ends.
struct ConnGuard {
    app: Arc<App>,
    id: ConnId,
    role: Role,
    peer: SocketAddr,
    left: bool,
}

impl ConnGuard {
    /// Takes the connection out of the hub and the table, once: before the
    /// close handshake, so nothing waits on the peer's close reply.
    fn leave(&mut self, reason: &str) {
        if self.left {
            return;
        }
        self.left = true;
        self.app.conns().remove(&self.id);
        match self.role {
            Role::Device => {
                let mut hub = self.app.hub();
                let was_current = hub.device_of(self.id).is_some();
                hub.device_closed(self.id, reason);
                drop(hub);
                if !was_current {
                    log::info!(
                        "device connection closed peer={} conn={} reason={}",
                        self.peer,
                        self.id,
                        LogStr(reason)
                    );
                }
            }
            Role::Viewer => {
                // On shutdown the sessions stay with the devices: media is peer to peer and a
                // restarted backend changes nothing for it.
                if !*self.app.shutdown.borrow() {
                    let actions = self.app.hub().viewer_closed(self.id);
                    self.app.dispatch(actions);
                }
                log::info!(
                    "viewer disconnected peer={} conn={} reason={}",
                    self.peer,
                    self.id,
                    LogStr(reason)
                );
            }
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.leave("connection task ended");
        self.app
            .open_conns
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One WebSocket, owned by its task.
struct Conn {
    guard: ConnGuard,
    socket: WebSocket,
    rx: mpsc::Receiver<Outbound>,
    kill: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
    idle_limit: Duration,
    last_rx: Instant,
    ping: Option<tokio::time::Interval>,
}

impl Conn {
    fn open(app: Arc<App>, socket: WebSocket, peer: SocketAddr, role: Role) -> Conn {
        let id = app.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let kill = Arc::new(Notify::new());
        app.conns().insert(
            id,
            ConnHandle {
                tx,
                kill: kill.clone(),
            },
        );
        app.open_conns.send_modify(|n| *n += 1);
        let interval = app.heartbeat_interval;
        let ping = (role == Role::Viewer).then(|| {
            let mut t = tokio::time::interval_at(Instant::now() + interval, interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        Conn {
            shutdown: app.shutdown.clone(),
            guard: ConnGuard {
                app,
                id,
                role,
                peer,
                left: false,
            },
            socket,
            rx,
            kill,
            idle_limit: interval * 3,
            last_rx: Instant::now(),
            ping,
        }
    }

    fn id(&self) -> ConnId {
        self.guard.id
    }

    fn app(&self) -> &Arc<App> {
        &self.guard.app
    }

    async fn send(&mut self, msg: Message) -> Result<(), String> {
        match timeout(SEND_TIMEOUT, self.socket.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("send failed: {e}")),
            Err(_) => Err(format!("send blocked for {} s", SEND_TIMEOUT.as_secs())),
        }
    }

    /// Leaves the hub, sends a close frame and waits (bounded) for the peer's reply.
    async fn close(&mut self, code: u16, reason: &str, drain: Duration) {
        self.guard.leave(reason);
        let mut cut = reason.len().min(120);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let frame = CloseFrame {
            code,
            reason: reason[..cut].into(),
        };
        if self.send(Message::Close(Some(frame))).await.is_ok() {
            let socket = &mut self.socket;
            let _ = timeout(drain, async {
                while let Some(Ok(_)) = socket.recv().await {}
            })
            .await;
        }
    }

    /// Ends the connection with a close frame; returns the [`Event::End`].
    async fn end(&mut self, code: u16, reason: String) -> Event {
        self.close(code, &reason, CLOSE_DRAIN).await;
        Event::End(reason)
    }

    /// Writes queued messages and pings until something arrives from the peer
    /// or the connection is over.
    async fn next_event(&mut self) -> Event {
        if *self.shutdown.borrow() {
            self.close(1001, "server shutting down", SHUTDOWN_CLOSE_DRAIN)
                .await;
            return Event::End("server shutting down".into());
        }
        loop {
            let idle = tokio::time::sleep_until(self.last_rx + self.idle_limit);
            let ping_timer = &mut self.ping;
            let ping = async move {
                match ping_timer {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => {
                    self.close(1001, "server shutting down", SHUTDOWN_CLOSE_DRAIN).await;
                    return Event::End("server shutting down".into());
                }
                _ = self.kill.notified() => {
                    return self.end(1008, "too slow: outgoing messages piled up".into()).await;
                }
                out = self.rx.recv() => match out {
                    Some(Outbound::Text(text)) => {
                        if let Err(e) = self.send(Message::Text(text.into())).await {
                            return Event::End(e);
                        }
                    }
                    Some(Outbound::Close(reason)) => return self.end(1008, reason).await,
                    None => return self.end(1011, "dropped by the server".into()).await,
                },
                msg = self.socket.recv() => {
                    self.last_rx = Instant::now();
                    match msg {
                        None => return Event::End("connection closed".into()),
                        Some(Err(e)) => return Event::End(format!("receive failed: {e}")),
                        Some(Ok(Message::Text(t))) if t.len() > MAX_MESSAGE_BYTES => {
                            return Event::TooLarge(t.len());
                        }
                        Some(Ok(Message::Text(t))) => return Event::Text(t.as_str().to_owned()),
                        Some(Ok(Message::Binary(b))) if b.len() > MAX_MESSAGE_BYTES => {
                            return Event::TooLarge(b.len());
                        }
                        Some(Ok(Message::Binary(_))) => return Event::Binary,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map(|f| f.reason.as_str().to_owned()).unwrap_or_default();
                            let reason = if why.is_empty() {
                                "closed by peer".to_owned()
                            } else {
                                format!("closed by peer: {why}")
                            };
                            self.guard.leave(&reason);
                            // Let tungstenite send its close reply, bounded.
                            let socket = &mut self.socket;
                            let _ = timeout(CLOSE_DRAIN, async {
                                while let Some(Ok(_)) = socket.recv().await {}
                            })
                            .await;
                            return Event::End(reason);
                        }
                    }
                }
                _ = idle => {
                    let secs = self.idle_limit.as_secs();
                    return self.end(1001, format!("nothing received for {secs} s (3 heartbeat intervals)")).await;
                }
                _ = ping => {
                    if let Err(e) = self.send(Message::Ping(Bytes::new())).await {
                        return Event::End(e);
                    }
                }
            }
        }
    }
}

async fn device_connection(app: Arc<App>, socket: WebSocket, peer: SocketAddr) {
    let mut conn = Conn::open(app, socket, peer, Role::Device);
    log::info!("device connected peer={peer} conn={}", conn.id());
    let rejected = |reason: String, device_id: Option<&str>| {
        log::warn!(
            "device rejected peer={peer} device_id={} reason={}",
            LogStr(device_id.unwrap_or("-")),
            LogStr(&reason)
        );
        reason
    };
    let device_id = match conn.next_event().await {
        Event::Text(text) => match protocol::parse_device(&text) {
            Ok(DeviceMsg::Hello { device_id }) => device_id,
            Ok(_) => {
                let reason = rejected("the first message must be hello".into(), None);
                conn.end(1008, reason).await;
                return;
            }
            Err(e) => {
                let reason = rejected(format!("malformed hello: {e}"), None);
                conn.end(1008, reason).await;
                return;
            }
        },
        Event::TooLarge(n) => {
            let reason = rejected(format!("first message is {n} bytes, over 64 KiB"), None);
            conn.end(1009, reason).await;
            return;
        }
        Event::Binary => {
            let reason = rejected("the first message must be a JSON text hello".into(), None);
            conn.end(1003, reason).await;
            return;
        }
        Event::End(reason) => {
            conn.guard.leave(&reason);
            return;
        }
    };
    let hello = conn
        .app()
        .hub()
        .device_hello(conn.id(), &device_id, unix_now());
    match hello {
        Ok(actions) => {
            log::info!(
                "hello device_id={} peer={peer} conn={}",
                LogStr(&device_id),
                conn.id()
            );
            conn.app().dispatch(actions);
        }
        Err(reason) => {
            let reason = rejected(reason, Some(&device_id));
            conn.end(1008, reason).await;
            return;
        }
    }
    loop {
        match conn.next_event().await {
            Event::Text(text) => match protocol::parse_device(&text) {
                Ok(msg) => {
                    let actions = conn.app().hub().device_message(conn.id(), msg, unix_now());
                    conn.app().dispatch(actions);
                }
                Err(e) => log::warn!(
                    "dropping a malformed message device_id={} error={}",
                    LogStr(&device_id),
                    LogStr(&e)
                ),
            },
            Event::TooLarge(n) => log::warn!(
                "dropping a {n} byte message over the 64 KiB limit device_id={}",
                LogStr(&device_id)
            ),
            Event::Binary => log::warn!(
                "dropping a binary message (send JSON text) device_id={}",
                LogStr(&device_id)
            ),
            Event::End(reason) => {
                conn.guard.leave(&reason);
                return;
            }
        }
    }
}

async fn viewer_connection(app: Arc<App>, socket: WebSocket, peer: SocketAddr) {
    let mut conn = Conn::open(app, socket, peer, Role::Viewer);
    let id = conn.id();
    log::info!("viewer connected peer={peer} conn={id}");
    let reply_error = |conn: &Conn, code: ErrorCode, message: &str| {
        conn.app().dispatch(vec![Action::Send {
            to: id,
            text: protocol::error(code, message, None),
        }]);
    };
    loop {
        match conn.next_event().await {
            Event::Text(text) => match protocol::parse_viewer(&text) {
                Ok(ViewerMsg::WatchRequest { device_id }) => match new_session_id() {
                    Ok(sid) => {
                        let actions =
                            conn.app()
                                .hub()
                                .watch_request(id, &device_id, sid, unix_now());
                        conn.app().dispatch(actions);
                    }
                    Err(e) => {
                        log::error!("no random numbers for a session id: {e}");
                        reply_error(
                            &conn,
                            ErrorCode::BadRequest,
                            "the server cannot create a session id right now",
                        );
                    }
                },
                Ok(msg) => {
                    let actions = conn.app().hub().viewer_message(id, msg);
                    conn.app().dispatch(actions);
                }
                Err(e) => {
                    log::warn!("bad viewer message peer={peer} error={}", LogStr(&e));
                    reply_error(&conn, ErrorCode::BadRequest, &e);
                }
            },
            Event::TooLarge(n) => {
                log::warn!("viewer message of {n} bytes over the 64 KiB limit peer={peer}");
                reply_error(
                    &conn,
                    ErrorCode::TooLarge,
                    &format!(
                        "message of {n} bytes refused: the limit is {MAX_MESSAGE_BYTES} bytes"
                    ),
                );
            }
            Event::Binary => reply_error(
                &conn,
                ErrorCode::BadRequest,
                "binary messages are not understood: send JSON text",
            ),
            Event::End(reason) => {
                conn.guard.leave(&reason);
                return;
            }
        }
    }
}
