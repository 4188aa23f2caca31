//! Test helpers for the Python camera API (`plugins/shmring/python/vcamera.py`): the test app
//! `tests/tests/vcamera_app.py` as a child whose JSON events are read on a thread, and process
//! liveness checks.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use crate::ipc::shmring_python_dir;
use crate::pipewire::PipeWireSession;
use crate::{ChildGuard, plugin_dir, python, workspace_root};

pub fn app_script() -> PathBuf {
    workspace_root().join("tests/tests/vcamera_app.py")
}

/// `python vcamera_app.py <args>` with vcamera importable and our plugins for the helper.
pub fn app(session: Option<&PipeWireSession>, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.env("PYTHONPATH", shmring_python_dir())
        .env("PYTHONUNBUFFERED", "1")
        .env("GST_PLUGIN_PATH", plugin_dir())
        .arg(app_script())
        .args(args);
    if let Some(s) = session {
        s.apply_env(&mut cmd);
    }
    cmd
}

/// A running app whose JSON events are read on a thread.
pub struct App {
    pub child: ChildGuard,
    events: mpsc::Receiver<serde_json::Value>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl App {
    pub fn spawn(cmd: &mut Command) -> App {
        let mut child = ChildGuard::spawn("vcamera app", cmd);
        let out = child.child.as_mut().and_then(|c| c.stdout.take()).unwrap();
        let err = child.child.as_mut().and_then(|c| c.stderr.take()).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => eprintln!("app: {line}"),
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let s2 = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("app stderr: {line}");
                s2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        App {
            child,
            events: rx,
            stderr,
        }
    }

    /// The next event (any kind) within `timeout`; panics with the app's stderr otherwise.
    pub fn next(&self, timeout: Duration) -> serde_json::Value {
        self.events.recv_timeout(timeout).unwrap_or_else(|_| {
            panic!(
                "no event from the app within {timeout:?}; stderr:\n{}",
                self.stderr.lock().unwrap()
            )
        })
    }

    /// The next event if one is waiting (never blocks).
    pub fn try_next(&self) -> Result<serde_json::Value, mpsc::TryRecvError> {
        self.events.try_recv()
    }

    /// The next event, which must be `kind` (an "error" event fails the test with its message).
    pub fn expect(&self, kind: &str, timeout: Duration) -> serde_json::Value {
        let ev = self.next(timeout);
        assert_eq!(ev["event"], kind, "expected a {kind} event, got {ev}");
        ev
    }
}

/// Is process `pid` gone (no such process, or a zombie nobody reaped yet)?
pub fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

pub fn pids(ev: &serde_json::Value) -> Vec<u64> {
    ev["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .map(|p| p.as_u64().expect("pid"))
        .collect()
}
