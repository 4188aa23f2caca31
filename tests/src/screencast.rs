//! Peers for the screencast bridge tests (`pipelines/screencast-to-wayland.sh`): a headless
//! mutter (the source, on a [`PipeWireSession`]'s bus and runtime dir), an animating Wayland
//! client on it, a headless weston (the target) with `weston-screenshooter`, and the bridge
//! itself with its statistics lines parsed. Every process is a [`ChildGuard`]; every wait is
//! bounded.
//!
//! Wayland clients here (the animating `waylandsink`, the bridge's `waylandsink`) run without
//! `G_DEBUG`: on a pixman-only weston or mutter, waylandsink logs the GLib warning "Could not
//! bind to zwp_linux_dmabuf_v1" (there is no DMA-BUF without a GPU), which
//! `G_DEBUG=fatal_warnings` would turn into an abort.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use crate::pipewire::PipeWireSession;
use crate::{ChildGuard, have_program, run_with_timeout, wait_for, workspace_root};

/// Bound on a compositor coming up (mutter's API appears in 0.4–1.4 s on an idle machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Are mutter, weston (+ screenshooter), the PipeWire daemons and Python's gi installed
/// (scripts/install-deps.sh installs them)?
pub fn available() -> bool {
    crate::pipewire::available()
        && have_program("mutter")
        && have_program("weston")
        && have_program("weston-screenshooter")
        && have_program("gdbus")
        && Command::new("/usr/bin/python3")
            .args(["-c", "import gi"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Send a process's output to `dir/name` (appending), so nobody has to drain a pipe.
fn log_to(cmd: &mut Command, dir: &Path, name: &str) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name));
    match file.and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((out, err)) => {
            cmd.stdout(out).stderr(err);
        }
        Err(_) => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
}

/// The last `n` lines of a log file (for failure messages).
pub fn log_tail(path: &Path, n: usize) -> String {
    crate::tail(&std::fs::read_to_string(path).unwrap_or_default(), n)
}

/// Is `org.gnome.Mutter.ScreenCast` owned on the session's bus?
pub fn screencast_api_up(pw: &PipeWireSession) -> bool {
    let mut cmd = pw.command("gdbus");
    cmd.args([
        "call",
        "--session",
        "--dest",
        "org.freedesktop.DBus",
        "--object-path",
        "/org/freedesktop/DBus",
        "--method",
        "org.freedesktop.DBus.NameHasOwner",
        "org.gnome.Mutter.ScreenCast",
    ])
    .env_remove("G_DEBUG");
    let out = run_with_timeout("gdbus NameHasOwner", &mut cmd, Duration::from_secs(10));
    String::from_utf8_lossy(&out.stdout).contains("true")
}

/// `mutter --headless --no-x11` with one virtual monitor, on `pw`'s bus and runtime dir; its
/// Wayland socket is `<runtime dir>/mutter-0`. Log: `<runtime dir>/mutter.log`.
pub struct Mutter {
    guard: Option<ChildGuard>,
    size: (u32, u32),
}

impl Mutter {
    /// Start mutter and wait (at most [`START_TIMEOUT`]) for its screen-cast API.
    pub fn start(pw: &PipeWireSession, size: (u32, u32)) -> Self {
        let mut m = Mutter { guard: None, size };
        m.spawn(pw);
        m
    }

    fn spawn(&mut self, pw: &PipeWireSession) {
        let mut cmd = pw.command("mutter");
        cmd.args([
            "--headless",
            "--no-x11",
            "--wayland-display",
            "mutter-0",
            "--virtual-monitor",
            &format!("{}x{}", self.size.0, self.size.1),
        ])
        .env_remove("G_DEBUG")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY");
        log_to(&mut cmd, pw.runtime_dir(), "mutter.log");
        let mut guard = ChildGuard::spawn_inherit("mutter", &mut cmd);
        let log = pw.runtime_dir().join("mutter.log");
        wait_for(
            START_TIMEOUT,
            "org.gnome.Mutter.ScreenCast on the bus",
            || {
                if let Some(st) = guard.try_status() {
                    panic!(
                        "mutter exited ({st}) while starting:\n{}",
                        log_tail(&log, 20)
                    );
                }
                screencast_api_up(pw).then_some(())
            },
        );
        self.guard = Some(guard);
    }

    /// Mutter's Wayland socket (an absolute path, usable as `WAYLAND_DISPLAY`).
    pub fn display(pw: &PipeWireSession) -> PathBuf {
        pw.runtime_dir().join("mutter-0")
    }

    /// SIGKILL mutter (a crash), wait until its API is gone from the bus.
    pub fn kill(&mut self, pw: &PipeWireSession) {
        self.guard.take();
        wait_for(
            Duration::from_secs(10),
            "mutter's API to leave the bus",
            || (!screencast_api_up(pw)).then_some(()),
        );
    }

    /// Start mutter again after [`Mutter::kill`]; returns when its API is on the bus.
    pub fn restart(&mut self, pw: &PipeWireSession) {
        assert!(self.guard.is_none(), "mutter is still running");
        self.spawn(pw);
    }
}

/// `gst-launch-1.0` arguments of a Wayland client that animates: `videotestsrc pattern=smpte`
/// scrolling at 30 fps, 320x240, in a normal window: colour bars the tests look for in screenshots.
pub const ANIMATING_CLIENT: [&str; 8] = [
    "-q",
    "videotestsrc",
    "pattern=smpte",
    "horizontal-speed=4",
    "!",
    "video/x-raw,width=320,height=240,framerate=30/1",
    "!",
    "waylandsink",
];

/// The [`ANIMATING_CLIENT`] on `display`, in `pw`'s session.
pub fn animating_client(pw: &PipeWireSession, display: &Path) -> ChildGuard {
    let mut cmd = pw.command("gst-launch-1.0");
    cmd.args(ANIMATING_CLIENT)
        .env("WAYLAND_DISPLAY", display)
        .env_remove("G_DEBUG");
    log_to(&mut cmd, pw.runtime_dir(), "client.log");
    ChildGuard::spawn_inherit("animating client", &mut cmd)
}

/// Headless weston (pixman, desktop-shell, screenshots allowed by `--debug`) with its socket
/// `<dir>/<name>`. Log: `<dir>/weston.log`.
pub struct Weston {
    guard: Option<ChildGuard>,
    dir: PathBuf,
    name: String,
    size: (u32, u32),
}

impl Weston {
    pub fn start(dir: &Path, name: &str, size: (u32, u32)) -> Self {
        let mut w = Weston {
            guard: None,
            dir: dir.to_path_buf(),
            name: name.to_string(),
            size,
        };
        w.spawn();
        w
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("weston");
        cmd.args([
            "--backend=headless-backend.so",
            "--use-pixman",
            "--shell=desktop-shell.so",
            "--idle-time=0",
            "--no-config",
            "--debug",
            &format!("--socket={}", self.name),
            &format!("--width={}", self.size.0),
            &format!("--height={}", self.size.1),
        ])
        .env("XDG_RUNTIME_DIR", &self.dir)
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY")
        .env_remove("G_DEBUG");
        log_to(&mut cmd, &self.dir, "weston.log");
        let mut guard = ChildGuard::spawn_inherit("weston", &mut cmd);
        let sock = self.socket();
        let log = self.dir.join("weston.log");
        wait_for(START_TIMEOUT, "weston's socket", || {
            if let Some(st) = guard.try_status() {
                panic!(
                    "weston exited ({st}) while starting:\n{}",
                    log_tail(&log, 20)
                );
            }
            std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .map(|_| ())
        });
        self.guard = Some(guard);
    }

    /// The socket path (what `--display` may name).
    pub fn socket(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// SIGKILL weston (and let the kernel close its socket).
    pub fn kill(&mut self) {
        self.guard.take();
    }

    pub fn restart(&mut self) {
        assert!(self.guard.is_none(), "weston is still running");
        self.spawn();
    }

    /// What weston shows now, through `weston-screenshooter`.
    pub fn screenshot(&self) -> RgbImage {
        let cwd = tempfile::tempdir().expect("a directory for the screenshot");
        let mut cmd = Command::new("weston-screenshooter");
        cmd.current_dir(cwd.path())
            .env("XDG_RUNTIME_DIR", &self.dir)
            .env("WAYLAND_DISPLAY", self.socket())
            .env_remove("G_DEBUG");
        let out = run_with_timeout("weston-screenshooter", &mut cmd, Duration::from_secs(10));
        assert!(
            out.status.success(),
            "weston-screenshooter failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read_dir(cwd.path())
            .expect("screenshot dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "png"))
            .expect("weston-screenshooter wrote no PNG");
        decode_png(&png)
    }
}

/// An 8-bit RGB image (rows packed, no padding).
#[derive(Clone)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn pixel(&self, x: usize, y: usize) -> (u8, u8, u8) {
        let i = (y * self.width + x) * 3;
        (self.data[i], self.data[i + 1], self.data[i + 2])
    }

    /// How many pixels satisfy `pred`.
    pub fn count(&self, pred: impl Fn((u8, u8, u8)) -> bool) -> usize {
        self.data
            .chunks_exact(3)
            .filter(|p| pred((p[0], p[1], p[2])))
            .count()
    }

    /// Pixels of the same position whose channels differ by more than `tolerance`.
    pub fn differing_pixels(&self, other: &RgbImage, tolerance: u8) -> usize {
        assert_eq!((self.width, self.height), (other.width, other.height));
        self.data
            .chunks_exact(3)
            .zip(other.data.chunks_exact(3))
            .filter(|(a, b)| {
                a.iter()
                    .zip(b.iter())
                    .any(|(x, y)| x.abs_diff(*y) > tolerance)
            })
            .count()
    }

    /// From a GStreamer sample of `video/x-raw,format=RGB`.
    pub fn from_sample(sample: &gst::Sample) -> RgbImage {
        let caps = sample.caps().expect("sample caps");
        let info = gst_video::VideoInfo::from_caps(caps).expect("raw video caps");
        assert_eq!(info.format(), gst_video::VideoFormat::Rgb);
        let buffer = sample.buffer().expect("sample buffer");
        let map = buffer.map_readable().expect("map the frame");
        let (w, h) = (info.width() as usize, info.height() as usize);
        let stride = info.stride()[0] as usize;
        let mut data = Vec::with_capacity(w * h * 3);
        for row in 0..h {
            data.extend_from_slice(&map[row * stride..row * stride + w * 3]);
        }
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }
}

/// Decode a PNG with GStreamer (`pngdec`) into RGB.
pub fn decode_png(path: &Path) -> RgbImage {
    crate::init_gst();
    let desc = format!(
        "filesrc location=\"{}\" ! pngdec ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false",
        path.display()
    );
    let pipeline = crate::launch_pipeline(&desc);
    let sink = pipeline
        .by_name("sink")
        .and_downcast::<gst_app::AppSink>()
        .expect("appsink");
    pipeline.set_state(gst::State::Playing).expect("play");
    let sample = sink.try_pull_sample(gst::ClockTime::from_seconds(10));
    let _ = pipeline.set_state(gst::State::Null);
    RgbImage::from_sample(&sample.unwrap_or_else(|| panic!("no frame decoded from {path:?}")))
}

/// Is this pixel part of a saturated SMPTE bar (the animating client's content)?
pub fn is_yellow(p: (u8, u8, u8)) -> bool {
    p.0 > 180 && p.1 > 180 && p.2 < 70
}
pub fn is_cyan(p: (u8, u8, u8)) -> bool {
    p.0 < 70 && p.1 > 180 && p.2 > 180
}
pub fn is_magenta(p: (u8, u8, u8)) -> bool {
    p.0 > 180 && p.1 < 70 && p.2 > 180
}
/// Mutter's default (no gnome-shell) background: a dark blue gradient. Weston's own desktop
/// is grey (r ≈ g ≈ b) under a dark grey panel, so a blue pixel is mutter's desktop.
pub fn is_mutter_background(p: (u8, u8, u8)) -> bool {
    p.2 as i32 > p.0 as i32 + 25 && p.2 > p.1
}

/// One `[screencast] stats ...` line of the bridge, with when the test read it.
#[derive(Clone, Debug)]
pub struct Stats {
    pub at: Instant,
    pub frames_in: u64,
    pub frames_out: u64,
    pub node: String,
    pub fields: Vec<(String, String)>,
}

impl Stats {
    pub fn parse(line: &str, at: Instant) -> Option<Stats> {
        let rest = line.strip_prefix("[screencast] stats ")?;
        let fields: Vec<(String, String)> = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        Some(Stats {
            at,
            frames_in: get("in")?.parse().ok()?,
            frames_out: get("out")?.parse().ok()?,
            node: get("node")?,
            fields: fields.clone(),
        })
    }

    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `pipelines/screencast-to-wayland.sh` running, its stderr collected line by line (with the
/// time each line was read) by a thread.
pub struct Bridge {
    pub guard: ChildGuard,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Bridge {
    /// The script as a command: our plugins from this build (`VCB_PLUGIN_DIR`), no `G_DEBUG`
    /// (see the module docs). Add the environment and arguments, then [`Bridge::spawn`].
    pub fn command() -> Command {
        let mut cmd = Command::new(workspace_root().join("pipelines/screencast-to-wayland.sh"));
        cmd.env("VCB_PLUGIN_DIR", crate::plugin_dir())
            .env_remove("G_DEBUG")
            .env_remove("GST_PLUGIN_PATH");
        cmd
    }

    pub fn spawn(cmd: &mut Command) -> Bridge {
        let mut guard = ChildGuard::spawn("screencast-to-wayland.sh", cmd);
        let stderr = guard
            .child
            .as_mut()
            .and_then(|c| c.stderr.take())
            .expect("bridge stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Bridge { guard, lines }
    }

    /// Everything the bridge printed so far.
    pub fn output(&self) -> String {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Wait for a line containing `needle` printed at or after `since`; returns it and when it
    /// was read. Fails with the bridge's output on timeout or if the bridge exits.
    pub fn wait_line(
        &mut self,
        needle: &str,
        since: Instant,
        timeout: Duration,
    ) -> (Instant, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(hit) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(t, l)| *t >= since && l.contains(needle))
                .cloned()
            {
                return hit;
            }
            if let Some(st) = self.guard.try_status() {
                panic!(
                    "the bridge exited ({st}) while we waited for `{needle}`; its output:\n{}",
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "no `{needle}` from the bridge within {timeout:?}; its output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every statistics line so far.
    pub fn stats(&self) -> Vec<Stats> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(t, l)| Stats::parse(l, *t))
            .collect()
    }

    /// Wait for a statistics line read at or after `since` that satisfies `pred`.
    pub fn wait_stats(
        &mut self,
        what: &str,
        since: Instant,
        timeout: Duration,
        pred: impl Fn(&Stats) -> bool,
    ) -> Stats {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.stats().into_iter().find(|s| s.at >= since && pred(s)) {
                return s;
            }
            if let Some(st) = self.guard.try_status() {
                panic!(
                    "the bridge exited ({st}) while we waited for {what}; its output:\n{}",
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "no statistics line with {what} within {timeout:?}; the bridge's output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Is a process with this pid still there (zombies included)?
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}
