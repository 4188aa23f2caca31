//! The routing core, free of I/O: registered devices, their current
//! connections, and sessions pairing a viewer connection with a device.
//! Each event returns the [`Action`]s the server must carry out.
//!
//! Sessions outlive a device's connection (media is peer-to-peer and keeps
//! flowing); they end when either side sends `watch_end` or the viewer's
//! connection closes.

use crate::ice::IceConfig;
use crate::protocol::{self, DeviceMsg, ErrorCode, LogStr, ViewerMsg};
use crate::registry::DeviceInfo;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Identifies one WebSocket connection for the lifetime of the process.
pub type ConnId = u64;

/// Sessions one viewer connection may hold at a time.
pub const MAX_SESSIONS_PER_VIEWER: usize = 16;

/// Something the server must do on behalf of the hub.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this JSON text on that connection.
    Send { to: ConnId, text: String },
    /// Close that connection with this reason.
    Close { to: ConnId, reason: String },
}

struct Device {
    info: DeviceInfo,
    conn: Option<ConnId>,
    last_seen: Option<u64>,
}

struct Session {
    device_id: String,
    viewer: ConnId,
}

pub struct Hub {
    devices: BTreeMap<String, Device>,
    /// Connections that said hello, to the device id they speak for.
    device_conns: HashMap<ConnId, String>,
    sessions: HashMap<String, Session>,
    viewer_sessions: HashMap<ConnId, BTreeSet<String>>,
    ice: IceConfig,
    heartbeat_interval: u64,
}

fn send(to: ConnId, kind: &str, payload: Value) -> Action {
    Action::Send {
        to,
        text: protocol::message(kind, payload),
    }
}

fn send_error(to: ConnId, code: ErrorCode, message: &str, session_id: Option<&str>) -> Action {
    Action::Send {
        to,
        text: protocol::error(code, message, session_id),
    }
}

impl Hub {
    pub fn new(ice: IceConfig, heartbeat_interval: u64, registered: Vec<DeviceInfo>) -> Self {
        let mut hub = Hub {
            devices: BTreeMap::new(),
            device_conns: HashMap::new(),
            sessions: HashMap::new(),
            viewer_sessions: HashMap::new(),
            ice,
            heartbeat_interval,
        };
        for info in registered {
            hub.register(info);
        }
        hub
    }

    /// Adds a device or updates its name and type.
    pub fn register(&mut self, info: DeviceInfo) {
        match self.devices.get_mut(&info.device_id) {
            Some(dev) => dev.info = info,
            None => {
                self.devices.insert(
                    info.device_id.clone(),
                    Device {
                        info,
                        conn: None,
                        last_seen: None,
                    },
                );
            }
        }
    }

    /// All registrations, as persisted.
    pub fn registrations(&self) -> Vec<DeviceInfo> {
        self.devices.values().map(|d| d.info.clone()).collect()
    }

    /// One device as `GET /api/devices` lists it.
    pub fn device_json(&self, device_id: &str) -> Option<Value> {
        self.devices.get(device_id).map(|d| {
            json!({
                "device_id": d.info.device_id,
                "device_name": d.info.device_name,
                "device_type": d.info.device_type,
                "online": d.conn.is_some(),
                "last_seen": d.last_seen,
            })
        })
    }

    /// Every device, sorted by id.
    pub fn devices_json(&self) -> Value {
        Value::Array(
            self.devices
                .keys()
                .filter_map(|id| self.device_json(id))
                .collect(),
        )
    }

    /// A device connection said hello. `Err` carries the reason to close it with.
    pub fn device_hello(
        &mut self,
        conn: ConnId,
        device_id: &str,
        now: u64,
    ) -> Result<Vec<Action>, String> {
        let Some(dev) = self.devices.get_mut(device_id) else {
            return Err(format!(
                "unknown device_id {}: register it first with POST /api/devices/register",
                LogStr(device_id)
            ));
        };
        let mut actions = Vec::new();
        if let Some(old) = dev.conn.replace(conn)
            && old != conn
        {
            self.device_conns.remove(&old);
            log::info!(
                "device replaced device_id={} old_conn={old} new_conn={conn}",
                LogStr(device_id)
            );
            actions.push(Action::Close {
                to: old,
                reason: "replaced by a newer connection for the same device_id".into(),
            });
        }
        dev.last_seen = Some(now);
        self.device_conns.insert(conn, device_id.to_owned());
        actions.push(send(
            conn,
            "hello_ack",
            json!({ "device_id": device_id, "heartbeat_interval": self.heartbeat_interval }),
        ));
        Ok(actions)
    }

    /// The device id a connection speaks for, once it said hello and while it is current.
    pub fn device_of(&self, conn: ConnId) -> Option<&str> {
        self.device_conns.get(&conn).map(String::as_str)
    }

    /// A message from a device connection that said hello.
    pub fn device_message(&mut self, conn: ConnId, msg: DeviceMsg, now: u64) -> Vec<Action> {
        let Some(device_id) = self.device_conns.get(&conn).cloned() else {
            // A replaced connection that is still draining: its words no longer count.
            log::debug!("dropping a message from replaced device connection conn={conn}");
            return Vec::new();
        };
        if let Some(dev) = self.devices.get_mut(&device_id) {
            dev.last_seen = Some(now);
        }
        let d = LogStr(&device_id);
        let (session_id, kind, payload) = match msg {
            DeviceMsg::Heartbeat => return Vec::new(),
            DeviceMsg::Hello { device_id: again } => {
                log::warn!(
                    "ignoring a second hello device_id={d} said_device_id={}",
                    LogStr(&again)
                );
                return Vec::new();
            }
            DeviceMsg::Unknown { kind } => {
                log::debug!(
                    "ignoring unknown message type device_id={d} type={}",
                    LogStr(&kind)
                );
                return Vec::new();
            }
            DeviceMsg::Answer { session_id, sdp } => {
                let p = json!({ "session_id": session_id, "sdp": sdp });
                (session_id, "signal_answer", p)
            }
            DeviceMsg::Candidate {
                session_id,
                candidate,
            } => {
                let p = json!({ "session_id": session_id, "candidate": candidate });
                (session_id, "ice_candidate", p)
            }
            DeviceMsg::WatchEnd { session_id } => {
                let p = json!({ "session_id": session_id });
                (session_id, "watch_end", p)
            }
        };
        let viewer = match self.sessions.get(&session_id) {
            Some(s) if s.device_id == device_id => s.viewer,
            _ => {
                log::warn!(
                    "dropping {kind} for a session this device does not own device_id={d} session_id={}",
                    LogStr(&session_id)
                );
                return Vec::new();
            }
        };
        if kind == "watch_end" {
            self.end_session(&session_id, "device_watch_end");
        }
        vec![send(viewer, kind, payload)]
    }

    /// A device connection closed. Its sessions stay: the agent comes back and says hello again.
    pub fn device_closed(&mut self, conn: ConnId, reason: &str) {
        let Some(device_id) = self.device_conns.remove(&conn) else {
            return;
        };
        if let Some(dev) = self.devices.get_mut(&device_id)
            && dev.conn == Some(conn)
        {
            dev.conn = None;
        }
        log::info!(
            "device disconnected device_id={} reason={}",
            LogStr(&device_id),
            LogStr(reason)
        );
    }

    /// A viewer asks to watch a device; `session_id` is the fresh random id to use.
    pub fn watch_request(
        &mut self,
        viewer: ConnId,
        device_id: &str,
        session_id: String,
        now: u64,
    ) -> Vec<Action> {
        let Some(dev) = self.devices.get(device_id) else {
            return vec![send(
                viewer,
                "error",
                json!({ "code": ErrorCode::UnknownDevice.as_str(),
                        "message": format!("no device is registered as {device_id:?}"),
                        "device_id": device_id }),
            )];
        };
        let Some(device_conn) = dev.conn else {
            return vec![send(
                viewer,
                "error",
                json!({ "code": ErrorCode::DeviceOffline.as_str(),
                        "message": format!("device {device_id:?} is not connected; try again when it is online"),
                        "device_id": device_id }),
            )];
        };
        let held = self.viewer_sessions.entry(viewer).or_default();
        if held.len() >= MAX_SESSIONS_PER_VIEWER {
            return vec![send_error(
                viewer,
                ErrorCode::BadRequest,
                &format!(
                    "this connection already holds {MAX_SESSIONS_PER_VIEWER} sessions; send watch_end for one first"
                ),
                None,
            )];
        }
        held.insert(session_id.clone());
        let ice_servers = self.ice.servers(&session_id, now);
        self.sessions.insert(
            session_id.clone(),
            Session {
                device_id: device_id.to_owned(),
                viewer,
            },
        );
        log::info!(
            "session started session_id={session_id} device_id={} viewer_conn={viewer}",
            LogStr(device_id)
        );
        vec![
            send(
                viewer,
                "watch_accepted",
                json!({ "session_id": session_id, "ice_servers": ice_servers, "device_id": device_id }),
            ),
            send(
                device_conn,
                "watch_request",
                json!({ "session_id": session_id, "ice_servers": ice_servers }),
            ),
        ]
    }

    /// A viewer's message about one of its sessions (anything but `watch_request`).
    pub fn viewer_message(&mut self, viewer: ConnId, msg: ViewerMsg) -> Vec<Action> {
        let (session_id, kind, payload) = match msg {
            ViewerMsg::WatchRequest { .. } => {
                debug_assert!(false, "watch_request goes to Hub::watch_request");
                return Vec::new();
            }
            ViewerMsg::Offer { session_id, sdp } => {
                let p = json!({ "session_id": session_id, "sdp": sdp });
                (session_id, "signal_offer", p)
            }
            ViewerMsg::Candidate {
                session_id,
                candidate,
            } => {
                let p = json!({ "session_id": session_id, "candidate": candidate });
                (session_id, "ice_candidate", p)
            }
            ViewerMsg::WatchEnd { session_id } => {
                let p = json!({ "session_id": session_id });
                (session_id, "watch_end", p)
            }
        };
        let device_id = match self.sessions.get(&session_id) {
            Some(s) if s.viewer == viewer => s.device_id.clone(),
            _ => {
                return vec![send_error(
                    viewer,
                    ErrorCode::UnknownSession,
                    "this connection holds no session with that session_id; send watch_request first",
                    Some(&session_id),
                )];
            }
        };
        if kind == "watch_end" {
            self.end_session(&session_id, "viewer_watch_end");
        }
        match self.devices.get(&device_id).and_then(|d| d.conn) {
            Some(device_conn) => vec![send(device_conn, kind, payload)],
            None if kind == "watch_end" => Vec::new(),
            None => {
                log::warn!(
                    "dropping {kind}: device offline device_id={} session_id={session_id}",
                    LogStr(&device_id)
                );
                vec![send_error(
                    viewer,
                    ErrorCode::DeviceOffline,
                    &format!("device {device_id:?} is reconnecting; {kind} was not delivered"),
                    Some(&session_id),
                )]
            }
        }
    }

    /// A viewer connection closed: end each of its sessions towards the devices.
    pub fn viewer_closed(&mut self, viewer: ConnId) -> Vec<Action> {
        let held = self.viewer_sessions.remove(&viewer).unwrap_or_default();
        let mut actions = Vec::new();
        for session_id in held {
            let Some(session) = self.sessions.remove(&session_id) else {
                continue;
            };
            log::info!("session ended session_id={session_id} reason=viewer_disconnected");
            if let Some(device_conn) = self.devices.get(&session.device_id).and_then(|d| d.conn) {
                actions.push(send(
                    device_conn,
                    "watch_end",
                    json!({ "session_id": session_id }),
                ));
            }
        }
        actions
    }

    fn end_session(&mut self, session_id: &str, reason: &str) {
        if let Some(s) = self.sessions.remove(session_id) {
            if let Some(held) = self.viewer_sessions.get_mut(&s.viewer) {
                held.remove(session_id);
            }
            log::info!("session ended session_id={session_id} reason={reason}");
        }
    }

    /// Sessions open right now.
    #[cfg(test)]
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(
            IceConfig::default(),
            10,
            vec![DeviceInfo {
                device_id: "cam1".into(),
                device_name: "cam1".into(),
                device_type: "camera".into(),
            }],
        )
    }

    fn payload(a: &Action) -> (ConnId, String, Value) {
        let Action::Send { to, text } = a else {
            panic!("expected a send, got {a:?}")
        };
        let v: Value = serde_json::from_str(text).expect("json");
        (
            *to,
            v["type"].as_str().expect("type").to_owned(),
            v["payload"].clone(),
        )
    }

    #[test]
    fn unknown_devices_are_refused() {
        let mut h = hub();
        let err = h.device_hello(1, "nope", 0).expect_err("unknown");
        assert!(err.contains("register"), "{err}");
        assert_eq!(h.device_of(1), None);
    }

    #[test]
    fn a_second_hello_replaces_the_first_connection() {
        let mut h = hub();
        h.device_hello(1, "cam1", 5).expect("hello");
        let acts = h.device_hello(2, "cam1", 6).expect("hello again");
        assert!(matches!(acts[0], Action::Close { to: 1, .. }), "{acts:?}");
        assert_eq!(payload(&acts[1]).1, "hello_ack");
        // The old connection's close must not take the device offline.
        h.device_closed(1, "closed");
        assert_eq!(h.device_json("cam1").expect("dev")["online"], true);
        h.device_closed(2, "closed");
        assert_eq!(h.device_json("cam1").expect("dev")["online"], false);
        assert_eq!(h.device_json("cam1").expect("dev")["last_seen"], 6);
    }

    #[test]
    fn sessions_survive_a_device_reconnect_and_end_with_the_viewer() {
        let mut h = hub();
        h.device_hello(1, "cam1", 0).expect("hello");
        let acts = h.watch_request(100, "cam1", "s1".into(), 0);
        assert_eq!(payload(&acts[0]).1, "watch_accepted");
        assert_eq!(payload(&acts[1]).0, 1);
        h.device_closed(1, "eof");
        // Offline: the viewer hears so, the session stays.
        let acts = h.viewer_message(
            100,
            ViewerMsg::Candidate {
                session_id: "s1".into(),
                candidate: json!({"candidate": "c"}),
            },
        );
        assert_eq!(payload(&acts[0]).2["code"], "device_offline");
        h.device_hello(2, "cam1", 1).expect("back");
        let acts = h.device_message(
            2,
            DeviceMsg::Candidate {
                session_id: "s1".into(),
                candidate: json!({"candidate": "d"}),
            },
            1,
        );
        assert_eq!(payload(&acts[0]).0, 100);
        let acts = h.viewer_closed(100);
        let (to, kind, p) = payload(&acts[0]);
        assert_eq!(
            (to, kind.as_str(), p["session_id"].as_str()),
            (2, "watch_end", Some("s1"))
        );
        assert_eq!(h.session_count(), 0);
    }

    #[test]
    fn a_device_cannot_speak_for_another_devices_session() {
        let mut h = hub();
        h.register(DeviceInfo {
            device_id: "cam2".into(),
            device_name: "cam2".into(),
            device_type: "camera".into(),
        });
        h.device_hello(1, "cam1", 0).expect("hello");
        h.device_hello(2, "cam2", 0).expect("hello");
        h.watch_request(100, "cam1", "s1".into(), 0);
        let acts = h.device_message(
            2,
            DeviceMsg::WatchEnd {
                session_id: "s1".into(),
            },
            0,
        );
        assert!(acts.is_empty());
        assert_eq!(h.session_count(), 1);
        // Another viewer cannot use it either.
        let acts = h.viewer_message(
            101,
            ViewerMsg::WatchEnd {
                session_id: "s1".into(),
            },
        );
        assert_eq!(payload(&acts[0]).2["code"], "unknown_session");
        assert_eq!(h.session_count(), 1);
    }

    #[test]
    fn a_viewer_holds_a_bounded_number_of_sessions() {
        let mut h = hub();
        h.device_hello(1, "cam1", 0).expect("hello");
        for i in 0..MAX_SESSIONS_PER_VIEWER {
            let acts = h.watch_request(100, "cam1", format!("s{i}"), 0);
            assert_eq!(payload(&acts[0]).1, "watch_accepted");
        }
        let acts = h.watch_request(100, "cam1", "one-too-many".into(), 0);
        assert_eq!(payload(&acts[0]).2["code"], "bad_request");
        assert_eq!(h.session_count(), MAX_SESSIONS_PER_VIEWER);
    }
}
