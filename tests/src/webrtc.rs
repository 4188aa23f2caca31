//! Harness for the WebRTC camera job: the real backend, the real agent, coturn, headless
//! Chromium (through `tests/webrtc/viewer.mjs`) and the webrtcbin viewer (`vcb-webrtc-viewer`),
//! each a child process whose output lines are collected as they come.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{ChildGuard, target_dir, wait_for, workspace_root};

/// A built binary of the current profile (`cargo build --workspace` builds them all).
pub fn binary(name: &str) -> PathBuf {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let p = target_dir().join(profile).join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// A child process whose stdout and stderr lines are collected (with arrival times).
pub struct Logged {
    pub guard: ChildGuard,
    lines: Arc<Mutex<Vec<(Instant, bool, String)>>>,
}

impl Logged {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let mut guard = ChildGuard::spawn(name, cmd);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let child = guard.child.as_mut().expect("spawned");
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        for (stream, is_out) in [
            (Box::new(out) as Box<dyn std::io::Read + Send>, true),
            (Box::new(err), false),
        ] {
            let lines = lines.clone();
            let echo = std::env::var_os("VCB_TEST_ECHO").is_some();
            let name = name.to_owned();
            std::thread::spawn(move || {
                for l in BufReader::new(stream).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("[{name}] {l}");
                    }
                    lines
                        .lock()
                        .expect("lines")
                        .push((Instant::now(), is_out, l));
                }
            });
        }
        Logged { guard, lines }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Every line so far (stdout and stderr interleaved as they arrived).
    pub fn text(&self) -> String {
        let l = self.lines.lock().expect("lines");
        l.iter()
            .map(|(_, _, s)| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        let l = self.lines.lock().expect("lines");
        l.iter()
            .filter(|(_, o, _)| *o)
            .map(|(_, _, s)| s.clone())
            .collect()
    }

    /// Lines matching `pred`, with their arrival times.
    pub fn matching(&self, pred: impl Fn(&str) -> bool) -> Vec<(Instant, String)> {
        let l = self.lines.lock().expect("lines");
        l.iter()
            .filter(|(_, _, s)| pred(s))
            .map(|(t, _, s)| (*t, s.clone()))
            .collect()
    }

    /// Waits for a line containing `needle` (fails with the log after `timeout`).
    pub fn wait_line(&self, timeout: Duration, needle: &str) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, l)) = self.matching(|s| s.contains(needle)).into_iter().next() {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no line with '{needle}' within {timeout:?}; output:\n{}",
                self.guard.name,
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last JSON line on stdout that has `key`.
    pub fn last_json_with(&self, key: &str) -> Option<Value> {
        self.stdout_lines()
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v.get(key).is_some())
    }
}

/// The signalling backend on 127.0.0.1 (`port` 0: any free one).
pub struct Backend {
    pub proc: Logged,
    pub addr: String,
}

impl Backend {
    pub fn start(data: &Path, port: u16, extra: &[&str]) -> Backend {
        let mut cmd = Command::new(binary("vcambridge-webrtc-backend"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "debug");
        let proc = Logged::spawn("backend", &mut cmd);
        let line = proc.wait_line(Duration::from_secs(10), "listening on ");
        let addr = line
            .rsplit("listening on ")
            .next()
            .expect("address")
            .trim()
            .to_owned();
        Backend { proc, addr }
    }

    pub fn device_url(&self) -> String {
        format!("ws://{}/ws/device", self.addr)
    }

    pub fn viewer_url(&self) -> String {
        format!("ws://{}/ws/viewer", self.addr)
    }

    pub fn page(&self, device: &str, query: &str) -> String {
        format!("http://{}/?device={device}{query}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }
}

/// A solid colour the viewers read back (0x3050d0 → RGB 48, 80, 208).
pub const SOLID_SOURCE: &str =
    "videotestsrc is-live=true pattern=solid-color foreground-color=0xff3050d0";
pub const SOLID_RGB: [i64; 3] = [48, 80, 208];

/// Starts the agent; waits until the backend accepted it (`hello_ack`).
pub fn start_agent(backend_ws: &str, device: &str, source: &str, extra: &[&str]) -> Logged {
    let mut cmd = Command::new(binary("vcambridge-webrtc-agent"));
    cmd.args([
        "--backend",
        backend_ws,
        "--device-id",
        device,
        "--source",
        source,
    ])
    .args(extra)
    .env("RUST_LOG", "vcambridge_webrtc_agent=debug")
    .env("GST_PLUGIN_PATH", crate::plugin_dir());
    let agent = Logged::spawn("agent", &mut cmd);
    agent.wait_line(Duration::from_secs(20), "backend accepted device");
    agent
}

fn gst_viewer_command(backend_viewer_ws: &str, device: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("vcb-webrtc-viewer"));
    cmd.args(["--backend", backend_viewer_ws, "--device", device])
        .args(args);
    cmd
}

/// Runs the webrtcbin viewer to completion; returns its `result` object.
pub fn gst_viewer(backend_viewer_ws: &str, device: &str, args: &[&str], limit: Duration) -> Value {
    let mut cmd = gst_viewer_command(backend_viewer_ws, device, args);
    let out = ChildGuard::spawn("vcb-webrtc-viewer", &mut cmd).wait_output(limit);
    result_of("vcb-webrtc-viewer", &out.stdout, &out.stderr)
}

/// Spawns the webrtcbin viewer (for viewers that must run while the test does other things).
pub fn spawn_gst_viewer(backend_viewer_ws: &str, device: &str, args: &[&str]) -> Logged {
    Logged::spawn(
        "vcb-webrtc-viewer",
        &mut gst_viewer_command(backend_viewer_ws, device, args),
    )
}

fn result_of(name: &str, stdout: &[u8], stderr: &[u8]) -> Value {
    let out = String::from_utf8_lossy(stdout);
    out.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v.get("result").cloned())
        .unwrap_or_else(|| {
            panic!(
                "{name} printed no result; stdout:\n{out}\nstderr:\n{}",
                String::from_utf8_lossy(stderr)
            )
        })
}

/// `node viewer.mjs …`: headless Chromium on the viewer page (see `tests/webrtc/viewer.mjs`).
fn browser_command(url: &str, frames: u32, timeout_s: u32, hold_s: u32) -> Command {
    let dir = workspace_root().join("tests/webrtc");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run scripts/install-deps.sh"
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir).args([
        "viewer.mjs",
        "--url",
        url,
        "--frames",
        &frames.to_string(),
        "--timeout",
        &timeout_s.to_string(),
        "--hold",
        &hold_s.to_string(),
    ]);
    cmd
}

/// Opens the viewer page in headless Chromium; returns viewer.mjs's `result` object.
pub fn browser(url: &str, frames: u32, timeout_s: u32, hold_s: u32) -> Value {
    let mut cmd = browser_command(url, frames, timeout_s, hold_s);
    let out = ChildGuard::spawn("chromium viewer", &mut cmd)
        .wait_output(Duration::from_secs(u64::from(timeout_s + hold_s) + 60));
    result_of("viewer.mjs", &out.stdout, &out.stderr)
}

/// Opens the viewer page in headless Chromium in the background (JSON state lines on stdout).
pub fn spawn_browser(url: &str, frames: u32, timeout_s: u32, hold_s: u32) -> Logged {
    Logged::spawn(
        "chromium viewer",
        &mut browser_command(url, frames, timeout_s, hold_s),
    )
}

/// Asserts an RGB triple is within `tol` of `want`.
pub fn assert_colour(got: &Value, want: [i64; 3], tol: i64, what: &str) {
    let c: Vec<i64> = got
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no colour read back ({got})"))
        .iter()
        .map(|x| x.as_i64().unwrap_or(-1000))
        .collect();
    assert_eq!(c.len(), 3, "{what}: colour {got}");
    for i in 0..3 {
        assert!(
            (c[i] - want[i]).abs() <= tol,
            "{what}: colour {c:?}, expected {want:?} ± {tol}"
        );
    }
}

/// CPU time (user + system) of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat(5), counted after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// coturn on 127.0.0.1 with TURN REST authentication (`use-auth-secret`).
pub fn start_coturn(port: u16, secret: &str) -> Logged {
    let mut cmd = Command::new("turnserver");
    cmd.args([
        "-n",
        "--no-cli",
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        &format!("--listening-port={port}"),
        "--min-port=49200",
        "--max-port=49400",
        "--use-auth-secret",
        &format!("--static-auth-secret={secret}"),
        "--realm=vcambridge.test",
        "--no-tls",
        "--no-dtls",
        "--allow-loopback-peers",
        "--log-file=stdout",
        "--simple-log",
    ]);
    let turn = Logged::spawn("coturn", &mut cmd);
    // Ready when it answers a STUN binding request.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(b"vcbtestprobe");
    wait_for(Duration::from_secs(10), "coturn answering STUN", || {
        let _ = sock.send_to(&req, ("127.0.0.1", port));
        let mut buf = [0u8; 512];
        sock.recv_from(&mut buf).ok().filter(|(n, _)| *n >= 20)
    });
    turn
}
