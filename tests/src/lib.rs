//! Shared helpers for vcambridge's tests: where the built plugins and tools are, child processes
//! that are killed when a test ends, and bounded waits (a hang must fail fast, never stall CI).
//!
//! Area-specific harnesses live in their own modules (one owner each).

use gst::prelude::*;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("target"),
    }
}

/// The directory holding the built plugin `.so` files of the current profile.
///
/// `VCAMBRIDGE_PLUGIN_DIR` overrides it (the guest harness points it at the host build).
pub fn plugin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VCAMBRIDGE_PLUGIN_DIR") {
        return PathBuf::from(d);
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target_dir().join(profile)
}

/// The Python interpreter of the project's venv (PyAV, numpy), made by `scripts/install-deps.sh`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("VCAMBRIDGE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = target_dir().join("venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

static INIT: Once = Once::new();

/// Initialise GStreamer once per test binary with the workspace's plugins on the plugin path,
/// so that subprocesses (`gst-launch-1.0`) inherit the same path.
pub fn init_gst() {
    INIT.call_once(|| {
        // SAFETY: called once, before any other thread of this test binary reads the environment
        // through GStreamer.
        unsafe {
            std::env::set_var("GST_PLUGIN_PATH", plugin_dir());
        }
        gst::init().expect("GStreamer initialisation");
    });
}

/// Build a pipeline from a launch description; panics naming the description if it can't.
pub fn launch_pipeline(description: &str) -> gst::Pipeline {
    gst::parse::launch(description)
        .unwrap_or_else(|e| panic!("cannot build pipeline `{description}`: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap_or_else(|_| panic!("`{description}` is not a pipeline"))
}

/// Environment for a `gst-launch-1.0` (or other GStreamer) subprocess that must see our plugins.
pub fn gst_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("GST_PLUGIN_PATH", plugin_dir());
    cmd
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// The last `n` lines of `text` (for failure messages).
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Poll `f` every 20 ms until it returns `Some`, or fail after `timeout` with `what` in the message.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so a failing test never
/// leaves publishers, daemons or readers behind.
pub struct ChildGuard {
    pub name: String,
    pub child: Option<Child>,
}

impl ChildGuard {
    /// Spawn `cmd` with stdout/stderr piped (read them with [`ChildGuard::wait_output`]).
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        ChildGuard {
            name: name.to_string(),
            child: Some(child),
        }
    }

    /// Spawn `cmd` with stdout/stderr inherited (useful for daemons whose logs should show up).
    pub fn spawn_inherit(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        ChildGuard {
            name: name.to_string(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Send a signal (e.g. `libc::SIGINT` for a clean ffmpeg stop, `libc::SIGKILL`).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Has the process exited? Returns its status if so.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait at most `timeout` for the process to exit; kill it and panic on timeout.
    /// Returns its status and everything it wrote to stdout/stderr.
    pub fn wait_output(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("child present");
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let out_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_end(&mut v);
            }
            v
        });
        let err_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_end(&mut v);
            }
            v
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr = err_t.join().unwrap_or_default();
                    panic!(
                        "{} did not exit within {timeout:?}; stderr:\n{}",
                        self.name,
                        String::from_utf8_lossy(&stderr)
                    );
                }
            }
        };
        Output {
            status,
            stdout: out_t.join().unwrap_or_default(),
            stderr: err_t.join().unwrap_or_default(),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `cmd` to completion within `timeout` (killed and failed otherwise).
pub fn run_with_timeout(name: &str, cmd: &mut Command, timeout: Duration) -> Output {
    ChildGuard::spawn(name, cmd).wait_output(timeout)
}

/// Run `cmd` like [`run_with_timeout`] and fail the test, with its stderr, unless it succeeds.
pub fn run_ok(name: &str, cmd: &mut Command, timeout: Duration) -> Output {
    let out = run_with_timeout(name, cmd, timeout);
    assert!(
        out.status.success(),
        "{name} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ffmpeg -hide_banner -loglevel error -nostdin`: how every test and benchmark starts ffmpeg.
pub fn ffmpeg() -> Command {
    let mut c = Command::new("ffmpeg");
    c.args(["-hide_banner", "-loglevel", "error", "-nostdin"]);
    c
}

/// ffmpeg's libx264 at its lowest latency (no B-frames, no lookahead).
pub const X264_LOW_LATENCY: [&str; 6] = [
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-tune",
    "zerolatency",
];

/// Fails the test, naming the build command, when a file a subprocess test runs is missing.
pub fn assert_built(file: &Path) {
    assert!(
        file.exists(),
        "{} missing: run `cargo build --workspace` first",
        file.display()
    );
}

/// Fails the test, naming the build command, when plugin `name`'s `.so` is not built.
pub fn assert_plugin_built(name: &str) {
    let so = plugin_dir().join(format!("libgst{name}.so"));
    assert!(
        so.exists(),
        "{} missing: run `cargo build -p gst-plugin-{name}` first",
        so.display()
    );
}

/// Is `program` on `PATH`?
pub fn have_program(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub mod bench;
pub mod ipc;
pub mod pipewire;
pub mod procs;
pub mod rtmp;
pub mod screencast;
pub mod v4l2;
pub mod vcamera;
pub mod webrtc;
