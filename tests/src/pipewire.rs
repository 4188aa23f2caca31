//! A private PipeWire session for tests: its own `XDG_RUNTIME_DIR` (a tempdir), its own D-Bus
//! session bus, `pipewire` and `wireplumber` (wireplumber 0.4 exits without a session bus).
//! Every daemon is a [`ChildGuard`], so a failing test never leaves one behind; every wait is
//! bounded.
//!
//! Consumers: `pipewiresrc target-object=<node.name> stream-properties="props,media.type=Video"`
//! (it hangs in PAUSED without the stream-properties) — see [`PipeWireSession::consumer`].

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ChildGuard, gst_command, have_program, run_with_timeout};

/// How long each daemon gets to come up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running private PipeWire session. Dropping it stops wireplumber, pipewire and the bus.
pub struct PipeWireSession {
    // Drop order = field order: session manager, daemon, bus, then the directory.
    wireplumber: Option<ChildGuard>,
    pipewire: Option<ChildGuard>,
    _dbus: ChildGuard,
    dbus_address: String,
    with_session_manager: bool,
    dir: tempfile::TempDir,
}

/// Are the PipeWire daemons installed (scripts/install-deps.sh installs them)?
pub fn available() -> bool {
    have_program("pipewire") && have_program("wireplumber") && have_program("dbus-daemon")
}

impl PipeWireSession {
    /// dbus + pipewire + wireplumber, ready to link `target-object` consumers.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// dbus + pipewire only (link ports yourself with `pw-link`).
    pub fn start_without_session_manager() -> Self {
        Self::start_with(false)
    }

    fn start_with(with_session_manager: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vcam-pw-")
            .tempdir()
            .expect("create a private runtime dir");
        // pipewire refuses runtime dirs others can read.
        let _ = std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        );
        let bus_path = dir.path().join("bus");
        let mut dbus_cmd = Command::new("dbus-daemon");
        dbus_cmd
            .arg("--session")
            .arg(format!("--address=unix:path={}", bus_path.display()))
            .args(["--nofork", "--print-address"])
            .env("XDG_RUNTIME_DIR", dir.path())
            .env_remove("G_DEBUG");
        let mut dbus = ChildGuard::spawn("dbus-daemon", &mut dbus_cmd);
        // The first stdout line is the bus address once it listens.
        let stdout = dbus
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("dbus-daemon stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let dbus_address = rx
            .recv_timeout(START_TIMEOUT)
            .map(|l| l.trim().to_string())
            .ok()
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| panic!("dbus-daemon printed no address within {START_TIMEOUT:?}"));

        let mut session = PipeWireSession {
            wireplumber: None,
            pipewire: None,
            _dbus: dbus,
            dbus_address,
            with_session_manager,
            dir,
        };
        session.start_daemons();
        session
    }

    /// The private `XDG_RUNTIME_DIR`.
    pub fn runtime_dir(&self) -> &Path {
        self.dir.path()
    }

    /// PID of the running pipewire daemon (e.g. to read its CPU time in a benchmark).
    pub fn pipewire_pid(&self) -> Option<u32> {
        self.pipewire.as_ref().map(|p| p.pid())
    }

    /// The daemon's socket (`<runtime dir>/pipewire-0`), e.g. for pwvideosink's `remote`.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("pipewire-0")
    }

    /// Point `cmd` at this session (runtime dir, bus; no inherited PIPEWIRE_REMOTE).
    pub fn apply_env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("XDG_RUNTIME_DIR", self.dir.path())
            .env("DBUS_SESSION_BUS_ADDRESS", &self.dbus_address)
            .env_remove("PIPEWIRE_REMOTE")
            .env_remove("PIPEWIRE_RUNTIME_DIR")
    }

    /// A command (GStreamer tools see our plugins) talking to this session.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = gst_command(program);
        self.apply_env(&mut cmd);
        cmd
    }

    /// `gst-launch-1.0 -q pipewiresrc target-object=<node> ... ! <tail>` as a command
    /// (spawn it with [`ChildGuard`]; bound its run with `wait_output`).
    pub fn consumer(&self, node_name: &str, num_buffers: Option<u32>, tail: &str) -> Command {
        let mut cmd = self.command("gst-launch-1.0");
        cmd.arg("-q").arg("pipewiresrc");
        cmd.arg(format!("target-object={node_name}"));
        cmd.arg("stream-properties=props,media.type=Video");
        if let Some(n) = num_buffers {
            cmd.arg(format!("num-buffers={n}"));
        }
        cmd.arg("!");
        cmd.args(tail.split_whitespace());
        cmd
    }

    fn start_daemons(&mut self) {
        let mut pw = self.command("pipewire");
        // The daemons are peers, not under test: the test runner's G_DEBUG=fatal_warnings
        // must not abort them on a harmless warning.
        pw.env_remove("G_DEBUG");
        self.log_to(&mut pw, "pipewire.log");
        self.pipewire = Some(ChildGuard::spawn_inherit("pipewire", &mut pw));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.socket_path().exists() && self.cli_ok() {
                break;
            }
            if let Some(st) = self.pipewire.as_mut().and_then(|p| p.try_status()) {
                panic!("pipewire exited during start-up: {st}");
            }
            if Instant::now() >= deadline {
                panic!(
                    "pipewire did not answer on {} within {START_TIMEOUT:?}",
                    self.socket_path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.with_session_manager {
            let mut wp = self.command("wireplumber");
            wp.env_remove("G_DEBUG");
            self.log_to(&mut wp, "wireplumber.log");
            self.wireplumber = Some(ChildGuard::spawn_inherit("wireplumber", &mut wp));
            let deadline = Instant::now() + START_TIMEOUT;
            while !self.session_manager_ready() {
                if let Some(st) = self.wireplumber.as_mut().and_then(|p| p.try_status()) {
                    panic!("wireplumber exited during start-up: {st}");
                }
                if Instant::now() >= deadline {
                    panic!("wireplumber did not register within {START_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Send a daemon's output to a log file in the runtime dir (appending across restarts), so
    /// it can't fill a pipe nobody reads.
    fn log_to(&self, cmd: &mut Command, name: &str) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name));
        match file.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((out, err)) => {
                cmd.stdout(out).stderr(err);
            }
            Err(_) => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
    }

    /// The daemons' logs so far (for failure messages).
    pub fn logs(&self) -> String {
        ["pipewire.log", "wireplumber.log"]
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
                let lines = std::env::var("VCB_LOG_TAIL")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(30);
                format!("--- {n} (tail) ---\n{}\n", crate::tail(&text, lines))
            })
            .collect()
    }

    fn cli_ok(&self) -> bool {
        let mut cmd = self.command("pw-cli");
        cmd.args(["info", "0"]);
        let out = run_with_timeout("pw-cli info 0", &mut cmd, Duration::from_secs(5));
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Core")
    }

    /// wireplumber is connected and has set up its export core (its second client, made once
    /// its modules are loaded).
    fn session_manager_ready(&self) -> bool {
        let Some(dump) = self.try_dump() else {
            return false;
        };
        dump.as_array().is_some_and(|objs| {
            objs.iter().any(|o| {
                o["info"]["props"]["application.name"].as_str() == Some("WirePlumber [export]")
            })
        })
    }

    fn try_dump(&self) -> Option<serde_json::Value> {
        let mut cmd = self.command("pw-dump");
        let out = run_with_timeout("pw-dump", &mut cmd, Duration::from_secs(10));
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `pw-dump` as JSON (panics if the daemon does not answer within 10 s).
    pub fn dump(&self) -> serde_json::Value {
        self.try_dump().expect("pw-dump output")
    }

    /// The pw-dump object of the node called `node_name`, once it has EnumFormat params
    /// (waits at most `timeout`).
    pub fn wait_for_node(&self, node_name: &str, timeout: Duration) -> serde_json::Value {
        crate::wait_for(timeout, &format!("PipeWire node {node_name}"), || {
            let dump = self.try_dump()?;
            dump.as_array()?
                .iter()
                .find(|o| {
                    o["type"].as_str().is_some_and(|t| t.ends_with("Node"))
                        && o["info"]["props"]["node.name"].as_str() == Some(node_name)
                        && o["info"]["params"]["EnumFormat"]
                            .as_array()
                            .is_some_and(|a| !a.is_empty())
                })
                .cloned()
        })
    }

    /// Kill the pipewire daemon (and the session manager, which cannot live without it).
    pub fn stop_pipewire(&mut self) {
        self.wireplumber.take();
        self.pipewire.take();
        let sock = self.socket_path();
        crate::wait_for(Duration::from_secs(5), "the pipewire socket to go", || {
            // The socket file stays behind after a SIGKILL; it is unlinked on restart.
            let _ = std::fs::remove_file(&sock);
            (!sock.exists()).then_some(())
        });
    }

    /// Start pipewire (and wireplumber) again after [`Self::stop_pipewire`].
    pub fn start_pipewire(&mut self) {
        assert!(self.pipewire.is_none(), "pipewire is already running");
        self.start_daemons();
    }

    /// Stop and start the daemon: what a user's `systemctl --user restart pipewire` does.
    pub fn restart_pipewire(&mut self) {
        self.stop_pipewire();
        self.start_pipewire();
    }
}
