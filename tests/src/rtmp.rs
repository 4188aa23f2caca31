//! Test harness helpers for the rtmp area: real RTMP publishers (ffmpeg, `gst-launch-1.0 …
//! rtmp2sink`, a PyAV Enhanced-RTMP publisher), a private nginx-rtmp server (the upstream peer the
//! benchmark compares against) and hostile raw-TCP clients.
//!
//! Everything spawned here is a [`ChildGuard`]: killed and reaped when dropped, so a failing test
//! leaves nothing behind. Every wait is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{ChildGuard, free_tcp_port, gst_command, python, wait_for, workspace_root};

/// `rtmp://127.0.0.1:PORT/APP/KEY`.
pub fn rtmp_url(port: u16, app: &str, key: &str) -> String {
    format!("rtmp://127.0.0.1:{port}/{app}/{key}")
}

/// Wait (bounded) until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, timeout: Duration) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(timeout, &format!("a listener on {addr}"), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|s| {
                let _ = s.shutdown(Shutdown::Both);
            })
    });
}

/// A video colour as `0xRRGGBB`.
pub type Rgb = u32;

/// Split `0xRRGGBB` into its components.
pub fn rgb_components(c: Rgb) -> [u8; 3] {
    [(c >> 16) as u8, (c >> 8) as u8, c as u8]
}

/// An ffmpeg (libx264 + AAC) publisher of a solid-colour test stream.
#[derive(Clone, Debug)]
pub struct FfmpegPublisher {
    pub url: String,
    /// Number of video frames to publish (`-frames:v`).
    pub frames: u32,
    pub width: u32,
    pub height: u32,
    pub rate: u32,
    pub color: Rgb,
    /// Also publish audio (a 440 Hz sine).
    pub audio: bool,
    /// ffmpeg audio encoder: `aac` (default) or `libmp3lame`.
    pub audio_codec: String,
    /// Pace input at the frame rate (`-re`); off = as fast as possible.
    pub realtime: bool,
    /// x264 `-tune zerolatency` (no B-frames, no lookahead). Off keeps B-frames, which exercises
    /// the FLV composition time.
    pub zerolatency: bool,
    pub gop: u32,
    /// `-output_ts_offset` in seconds: shifts every FLV/RTMP timestamp (e.g. to just below the
    /// 24-bit extended-timestamp boundary).
    pub ts_offset: Option<f64>,
}

impl FfmpegPublisher {
    pub fn new(url: &str, frames: u32) -> Self {
        FfmpegPublisher {
            url: url.to_string(),
            frames,
            width: 320,
            height: 240,
            rate: 30,
            color: 0x3050F0,
            audio: true,
            audio_codec: "aac".to_string(),
            realtime: false,
            zerolatency: true,
            gop: 30,
            ts_offset: None,
        }
    }

    /// The ffmpeg command line (without the program name).
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-hide_banner", "-loglevel", "error", "-nostdin"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if self.realtime {
            a.push("-re".into());
        }
        a.extend([
            "-f".into(),
            "lavfi".into(),
            "-i".into(),
            format!(
                "color=c=0x{:06X}:size={}x{}:rate={}",
                self.color, self.width, self.height, self.rate
            ),
        ]);
        if self.audio {
            if self.realtime {
                a.push("-re".into());
            }
            a.extend([
                "-f".into(),
                "lavfi".into(),
                "-i".into(),
                "sine=frequency=440:sample_rate=44100".into(),
            ]);
        }
        a.extend([
            "-frames:v".into(),
            self.frames.to_string(),
            "-c:v".into(),
            "libx264".into(),
            "-preset".into(),
            "ultrafast".into(),
        ]);
        if self.zerolatency {
            a.extend(["-tune".into(), "zerolatency".into()]);
        } else {
            // ultrafast disables B-frames; ask for some so composition times are non-zero.
            a.extend(["-bf".into(), "2".into()]);
        }
        a.extend([
            "-pix_fmt".into(),
            "yuv420p".into(),
            "-g".into(),
            self.gop.to_string(),
        ]);
        if self.audio {
            a.extend([
                "-c:a".into(),
                self.audio_codec.clone(),
                "-b:a".into(),
                "64k".into(),
                "-ac".into(),
                "1".into(),
            ]);
        }
        if let Some(off) = self.ts_offset {
            a.extend(["-output_ts_offset".into(), format!("{off}")]);
        }
        a.extend(["-f".into(), "flv".into(), self.url.clone()]);
        a
    }

    pub fn spawn(&self) -> ChildGuard {
        ChildGuard::spawn("ffmpeg publisher", Command::new("ffmpeg").args(self.args()))
    }

    /// Publish and wait (bounded) for ffmpeg to exit; returns whether it succeeded and its stderr.
    pub fn run(&self, timeout: Duration) -> (bool, String) {
        let out = self.spawn().wait_output(timeout);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A GStreamer publisher: `videotestsrc ! x264enc ! flvmux streamable=true ! rtmp2sink`
/// (optionally with `audiotestsrc ! avenc_aac` into the same flvmux).
#[derive(Clone, Debug)]
pub struct GstPublisher {
    pub url: String,
    pub frames: u32,
    pub width: u32,
    pub height: u32,
    pub rate: u32,
    pub color: Rgb,
    pub audio: bool,
}

impl GstPublisher {
    pub fn new(url: &str, frames: u32) -> Self {
        GstPublisher {
            url: url.to_string(),
            frames,
            width: 320,
            height: 240,
            rate: 30,
            color: 0x3050F0,
            audio: false,
        }
    }

    /// The `gst-launch-1.0` pipeline description.
    pub fn description(&self) -> String {
        let mut d = format!(
            "videotestsrc num-buffers={n} pattern=solid-color foreground-color=0xff{c:06x} \
             ! video/x-raw,format=I420,width={w},height={h},framerate={r}/1 \
             ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max={r} \
             ! h264parse ! queue ! flvmux name=m streamable=true \
             ! rtmp2sink location={url}",
            n = self.frames,
            c = self.color,
            w = self.width,
            h = self.height,
            r = self.rate,
            url = self.url
        );
        if self.audio {
            // 1024 samples per buffer at 44.1 kHz, as long as the video.
            let buffers = (self.frames as u64 * 44100).div_ceil(self.rate as u64 * 1024);
            d.push_str(&format!(
                " audiotestsrc num-buffers={buffers} samplesperbuffer=1024 \
                 ! audio/x-raw,rate=44100,channels=1 ! avenc_aac ! aacparse ! queue ! m."
            ));
        }
        d
    }

    pub fn spawn(&self) -> ChildGuard {
        let mut cmd = gst_command("gst-launch-1.0");
        cmd.arg("-q");
        cmd.args(self.description().split_whitespace());
        ChildGuard::spawn("gst-launch rtmp2sink publisher", &mut cmd)
    }

    pub fn run(&self, timeout: Duration) -> (bool, String) {
        let out = self.spawn().wait_output(timeout);
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        (out.status.success(), text)
    }
}

/// The PyAV (FFmpeg >= 6.1 libavformat) Enhanced-RTMP publisher script.
pub fn pyav_publisher_script() -> PathBuf {
    workspace_root().join("plugins/rtmpflvsrc/tests/py/publish_eflv.py")
}

/// Does the project's Python have PyAV with the encoders the Enhanced-RTMP tests need?
/// Returns the reason if not.
pub fn pyav_missing() -> Option<String> {
    let out = Command::new(python())
        .args([
            "-c",
            "import av\n\
             for c in ('libx264','libx265','libsvtav1','libvpx-vp9','libopus','aac'):\n\
             \x20   av.codec.Codec(c, 'w')\n\
             print(av.__version__, av.library_versions['libavformat'])",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "{} lacks PyAV or an encoder: {}",
            python().display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run {}: {e}", python().display())),
    }
}

/// A PyAV publisher: `codec` is one of h264, hevc, av1, vp9; `audio` one of none, aac, opus.
#[derive(Clone, Debug)]
pub struct PyavPublisher {
    pub url: String,
    pub codec: String,
    pub audio: String,
    pub frames: u32,
    pub width: u32,
    pub height: u32,
    pub rate: u32,
    pub color: Rgb,
    pub realtime: bool,
}

impl PyavPublisher {
    pub fn new(url: &str, codec: &str, frames: u32) -> Self {
        PyavPublisher {
            url: url.to_string(),
            codec: codec.to_string(),
            audio: "none".to_string(),
            frames,
            width: 320,
            height: 240,
            rate: 30,
            color: 0x3050F0,
            realtime: false,
        }
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(python());
        cmd.arg(pyav_publisher_script())
            .arg(&self.url)
            .args(["--vcodec", &self.codec, "--acodec", &self.audio])
            .args(["--frames", &self.frames.to_string()])
            .args(["--size", &format!("{}x{}", self.width, self.height)])
            .args(["--rate", &self.rate.to_string()])
            .args(["--color", &format!("{:06X}", self.color)])
            // SVT-AV1 prints its configuration banner unless told to log errors only.
            .env("SVT_LOG", "1");
        if self.realtime {
            cmd.arg("--realtime");
        }
        cmd
    }

    pub fn spawn(&self) -> ChildGuard {
        ChildGuard::spawn("PyAV Enhanced-RTMP publisher", &mut self.command())
    }

    pub fn run(&self, timeout: Duration) -> (bool, String) {
        let out = self.spawn().wait_output(timeout);
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

/// A private nginx with the RTMP module (`libnginx-mod-rtmp`), `application live { live on; }`,
/// on a free port, in its own temporary prefix. Killed when dropped.
pub struct Nginx {
    pub port: u16,
    _guard: ChildGuard,
    _dir: tempfile::TempDir,
}

/// The nginx RTMP module shipped by Debian's `libnginx-mod-rtmp`.
pub const NGINX_RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// Why a private nginx-rtmp cannot run here, if it cannot.
pub fn nginx_missing() -> Option<String> {
    if !crate::have_program("nginx") {
        return Some("nginx is not installed (apt-get install nginx-light)".into());
    }
    if !std::path::Path::new(NGINX_RTMP_MODULE).exists() {
        return Some(format!(
            "{NGINX_RTMP_MODULE} missing (apt-get install libnginx-mod-rtmp)"
        ));
    }
    None
}

impl Nginx {
    /// Start it and wait (bounded) until it listens.
    pub fn start() -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("vcambridge-nginx-rtmp")
            .tempdir()
            .expect("temp dir for nginx");
        let port = free_tcp_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::create_dir_all(dir.path().join("logs")).expect("nginx logs dir");
        std::fs::write(
            &conf,
            format!(
                "load_module {NGINX_RTMP_MODULE};\n\
                 worker_processes 1;\n\
                 events {{ worker_connections 128; }}\n\
                 rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
                 application live {{ live on; }} }} }}\n"
            ),
        )
        .expect("write nginx.conf");
        let prefix = dir.path().to_string_lossy().into_owned();
        // master_process off: one process, so the benchmark can read its CPU time from /proc.
        // The log goes to a file: a piped stderr nobody reads could fill and stall nginx.
        let globals = format!(
            "daemon off; master_process off; pid {prefix}/pid; error_log {prefix}/error.log warn;"
        );
        let guard = ChildGuard::spawn(
            "nginx-rtmp",
            Command::new("nginx")
                .args(["-p", &prefix, "-c"])
                .arg(&conf)
                .args(["-g", &globals]),
        );
        wait_listening(port, Duration::from_secs(10));
        Nginx {
            port,
            _guard: guard,
            _dir: dir,
        }
    }

    /// The pid of the (single, master_process off) nginx process.
    pub fn pid(&self) -> u32 {
        self._guard.pid()
    }

    pub fn url(&self, key: &str) -> String {
        rtmp_url(self.port, "live", key)
    }

    /// nginx's error log so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default()
    }
}

/// A raw TCP connection to 127.0.0.1:`port` with bounded connect/read/write timeouts.
pub fn raw_connect(port: u16) -> TcpStream {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set_read_timeout");
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("set_write_timeout");
    s
}

/// Read (and discard) from `s` until the peer closes the connection (EOF, reset or broken pipe).
/// Returns how long that took, or `Err` with the byte count if it stayed open for `timeout`.
pub fn wait_peer_close(s: &mut TcpStream, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 16384];
    let mut received = 0usize;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(start.elapsed()),
            Ok(n) => received += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Ok(start.elapsed()),
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "connection still open after {timeout:?} ({received} bytes received)"
            ));
        }
    }
}

/// Write all of `bytes`, tolerating the peer closing on us (returns false then).
pub fn write_tolerant(s: &mut TcpStream, bytes: &[u8]) -> bool {
    s.write_all(bytes).and_then(|_| s.flush()).is_ok()
}

/// Bytes that are not an RTMP handshake: an HTTP request followed by pseudo-random noise.
pub fn garbage_bytes(len: usize) -> Vec<u8> {
    let mut v = b"GET /live/key HTTP/1.1\r\nHost: example\r\n\r\n".to_vec();
    let mut x: u32 = 0x1234_5678;
    while v.len() < len {
        // xorshift32: deterministic noise.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v
}

/// Shrink the socket's receive buffer (SO_RCVBUF), so a client that never reads blocks its
/// peer's writes quickly.
pub fn set_small_recv_buffer(s: &TcpStream, bytes: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a valid, owned socket fd with a correctly sized c_int option value.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt(SO_RCVBUF)");
}

/// Resident memory of this process in bytes (from /proc/self/status), 0 if unknown.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// CPU time (user + system) a process used so far; zero if unknown. This process: `getrusage`
/// (threads that ended included); another: the sum of its threads' `schedstat` in ns (the
/// single-process nginx of [`Nginx`]; `/proc/PID/stat` counts 10 ms ticks).
pub fn process_cpu_time(pid: u32) -> Duration {
    Duration::from_nanos(if pid == std::process::id() {
        crate::bench::self_cpu_ns()
    } else {
        crate::bench::pid_cpu_ns(pid)
    })
}
