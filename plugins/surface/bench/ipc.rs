// SPDX-License-Identifier: MPL-2.0
//! Issue-5 benchmark: 1920x1080 BGRx and 1280x720 I420 frames from one process to another through
//!   shmsink → shmsrc (upstream), shmringsink → shmringsrc, surfacesink → surfacesrc,
//! next to a plain memcpy of the same frame (the physical limit), in one run.
//!
//! Run with `plugins/surface/bench/run.sh` (builds the release plugins first). Not a test.
//!
//! Each transport is measured `BENCH_RUNS` (3) times, alternating transports, in two modes:
//! * throughput: an unthrottled writer pushes `BENCH_FRAMES` (300) frames; frames/s = frames the
//!   reader received per second. The ring writer, which never waits for its reader, goes on
//!   writing until the reader has received that many.
//!   The reader's CPU per frame (its process's CPU time between the first and the last frame)
//!   is reported too: on a loaded machine frames/s also measures how much CPU the reader got.
//! * latency: a 30 fps writer (`BENCH_LATENCY_FRAMES`, 90 frames); every frame carries the
//!   CLOCK_MONOTONIC time it was pushed (in its first 8 bytes), the reader subtracts it from the
//!   time its appsink got the frame.
//!
//! The writer (an appsrc) takes frame memory from what the sink proposes in the allocation
//! query — each transport's own zero-copy path — and paints nothing but the 8-byte stamp, so
//! the transport alone is measured.
//!
//! The writer is this binary re-executed with `VCB_BENCH_WRITER` set; the reader runs here.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use vcambridge_tests::bench::{Report, median, percentile};
use vcambridge_tests::ipc::{last_json, shmring_cli};
use vcambridge_tests::{ChildGuard, target_dir};

/// A raw-video format the benchmark moves: 1920x1080 BGRx and 1280x720 I420.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Video {
    format: &'static str,
    width: usize,
    height: usize,
}

const VIDEOS: [Video; 2] = [
    Video {
        format: "BGRx",
        width: 1920,
        height: 1080,
    },
    Video {
        format: "I420",
        width: 1280,
        height: 720,
    },
];

impl Video {
    /// Bytes of one frame in the default `GstVideoInfo` layout (even sizes only here).
    fn size(self) -> usize {
        match self.format {
            "I420" => self.width * self.height * 3 / 2,
            _ => self.width * self.height * 4,
        }
    }

    fn caps(self, fps: u32) -> String {
        format!(
            "video/x-raw,format={},width={},height={},framerate={fps}/1",
            self.format, self.width, self.height
        )
    }

    fn label(self) -> String {
        format!("{}x{} {}", self.width, self.height, self.format)
    }

    /// The writer learns the format from `VCB_BENCH_VIDEO` (its index in [`VIDEOS`]).
    fn from_env() -> Video {
        let i: usize = std::env::var("VCB_BENCH_VIDEO")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        VIDEOS[i.min(VIDEOS.len() - 1)]
    }
}

/// `name` from the environment as a number, else `default` (`BENCH_RUNS=1 BENCH_FRAMES=60` for
/// a quick run).
fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// CPU time of this process (every thread), ns: the reader's CPU between two frames.
fn cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Shm,
    ShmRing,
    Surface,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Shm => "shmsink -> shmsrc (upstream)",
            Kind::ShmRing => "shmringsink -> shmringsrc",
            Kind::Surface => "surfacesink -> surfacesrc",
        }
    }

    fn sink(self, id: &str, sync: bool, video: Video) -> String {
        match self {
            Kind::Shm => format!(
                "shmsink socket-path=/tmp/{id}.sock shm-size={} wait-for-connection=true sync={sync}",
                video.size() * 6
            ),
            Kind::ShmRing => {
                format!("shmringsink shm-name=/{id} slots=8 zero-copy=true sync={sync}")
            }
            Kind::Surface => {
                format!(
                    "surfacesink socket-path=/tmp/{id}.sock wait-for-connection=true sync={sync}"
                )
            }
        }
    }

    fn src(self, id: &str, video: Video) -> String {
        match self {
            Kind::Shm => format!(
                "shmsrc socket-path=/tmp/{id}.sock is-live=true ! {}",
                video.caps(30)
            ),
            Kind::ShmRing => format!("shmringsrc name=src shm-name=/{id} timeout=20000"),
            Kind::Surface => format!("surfacesrc socket-path=/tmp/{id}.sock timeout=20000"),
        }
    }

    /// Stats line the writer prints about its sink.
    fn sink_stats(self, sink: &gst::Element) -> String {
        match self {
            Kind::Shm => String::new(),
            Kind::ShmRing => format!(
                "frames-written={} frames-in-place={}",
                sink.property::<u64>("frames-written"),
                sink.property::<u64>("frames-in-place")
            ),
            Kind::Surface => {
                let s = sink.property::<gst::Structure>("stats");
                format!(
                    "frames={} zero-copy={} copies={}",
                    s.get::<u64>("frames").unwrap_or(0),
                    s.get::<u64>("zero-copy").unwrap_or(0),
                    s.get::<u64>("copies").unwrap_or(0)
                )
            }
        }
    }
}

/// Where the writer gets frame memory: what the sink proposes in the allocation query (so each
/// transport runs its own zero-copy path), else system memory.
enum FrameMemory {
    Pool(gst::BufferPool),
    Allocator(gst::Allocator, gst::AllocationParams),
    System,
}

impl FrameMemory {
    fn from_sink(sink: &gst::Element, caps: &gst::Caps) -> (FrameMemory, &'static str) {
        let Some(pad) = sink.static_pad("sink") else {
            return (FrameMemory::System, "system memory");
        };
        let mut q = gst::query::Allocation::new(Some(caps), true);
        if !pad.query(&mut q) {
            return (FrameMemory::System, "system memory");
        }
        if let Some((Some(pool), size, min, max)) = q.allocation_pools().next() {
            if !pool.is_active() {
                let mut config = pool.config();
                if config.params().is_none_or(|(c, ..)| c.is_none()) {
                    config.set_params(Some(caps), size, min, max);
                }
                let _ = pool.set_config(config);
            }
            if pool.set_active(true).is_ok() {
                return (FrameMemory::Pool(pool), "sink's buffer pool");
            }
        }
        if let Some((Some(alloc), params)) = q.allocation_params().next() {
            return (FrameMemory::Allocator(alloc, params), "sink's allocator");
        }
        (FrameMemory::System, "system memory")
    }

    fn frame(&self, size: usize) -> Option<gst::Buffer> {
        match self {
            FrameMemory::Pool(p) => p.acquire_buffer(None).ok(),
            FrameMemory::Allocator(a, params) => {
                let mem = a.alloc(size, Some(params)).ok()?;
                let mut b = gst::Buffer::new();
                b.get_mut()?.append_memory(mem);
                Some(b)
            }
            FrameMemory::System => gst::Buffer::with_size(size).ok(),
        }
    }
}

/// Writer role: an appsrc pushing frames taken from the memory the sink proposes, each stamped
/// with CLOCK_MONOTONIC in its first 8 bytes (nothing else is painted, so only the transport is
/// measured); paced at 30 fps in latency runs, unthrottled otherwise. With `VCB_BENCH_STOP_FILE`
/// it goes on after its frames until that file exists (a ring writer never waits for its
/// reader, so the reader only has enough frames to count if the writer keeps producing; 120 s
/// at most). Exits at EOS.
fn writer(kind: Kind) -> i32 {
    let id = std::env::var("VCB_BENCH_ID").unwrap_or_default();
    let live = std::env::var("VCB_BENCH_LIVE").is_ok_and(|v| v == "1");
    let n: usize = std::env::var("VCB_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let stop_file = std::env::var_os("VCB_BENCH_STOP_FILE").map(PathBuf::from);
    let video = Video::from_env();
    if let Err(e) = gst::init() {
        eprintln!("gst init: {e}");
        return 1;
    }
    let desc = format!(
        "appsrc name=src format=time is-live={live} block=true max-buffers=2 caps={} ! {} name=benchsink",
        video.caps(30),
        kind.sink(&id, false, video)
    );
    let pipeline = match gst::parse::launch(&desc) {
        Ok(p) => p.downcast::<gst::Pipeline>().expect("pipeline"),
        Err(e) => {
            eprintln!("writer pipeline {desc}: {e}");
            return 1;
        }
    };
    let sink = pipeline.by_name("benchsink").expect("benchsink");
    let src = pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .expect("appsrc");
    let _ = pipeline.set_state(gst::State::Playing);
    let frame_caps = video.caps(30).parse::<gst::Caps>().expect("caps");
    // Frame 0 comes from system memory; once the sink has its caps (some sinks only offer their
    // memory then), the rest comes from what the sink proposes.
    let (mut memory, mut memory_name) = (FrameMemory::System, "system memory");
    let period = Duration::from_nanos(1_000_000_000 / 30);
    let start = Instant::now();
    for i in 0.. {
        if i >= n
            && stop_file
                .as_ref()
                .is_none_or(|f| f.exists() || start.elapsed() > Duration::from_secs(120))
        {
            break;
        }
        if live {
            let due = start + period * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let Some(mut buf) = memory.frame(video.size()) else {
            eprintln!("writer: no frame memory");
            break;
        };
        {
            let Some(b) = buf.get_mut() else { break };
            b.set_pts(gst::ClockTime::from_nseconds(i as u64 * 33_333_333));
            if let Ok(mut map) = b.map_writable() {
                map.as_mut_slice()[..8].copy_from_slice(&mono_ns().to_le_bytes());
            }
        }
        if src.push_buffer(buf).is_err() {
            break;
        }
        if i == 0 {
            let pad = sink.static_pad("sink").expect("sink pad");
            let deadline = Instant::now() + Duration::from_secs(20);
            while pad.current_caps().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            (memory, memory_name) = FrameMemory::from_sink(&sink, &frame_caps);
        }
    }
    let _ = src.end_of_stream();
    let bus = pipeline.bus().expect("bus");
    let code = match bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(120),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    ) {
        Some(m) => match m.view() {
            gst::MessageView::Error(e) => {
                eprintln!("writer error: {} ({:?})", e.error(), e.debug());
                1
            }
            _ => 0,
        },
        None => {
            eprintln!("writer: no EOS within 120 s");
            1
        }
    };
    println!(
        "STATS frames from {memory_name}; {}",
        kind.sink_stats(&sink)
    );
    let _ = pipeline.set_state(gst::State::Null);
    if let FrameMemory::Pool(p) = &memory {
        let _ = p.set_active(false);
    }
    code
}

struct RunResult {
    frames: usize,
    fps: f64,
    /// The reader process's CPU time per frame (ms), first to last frame.
    cpu_ms: f64,
    latencies_ms: Vec<f64>,
    stats: String,
    /// The reader element's own counters (shmringsrc: zero-copy / copied frames).
    reader_stats: String,
}

/// This benchmark binary again, as the writer process of `kind` for `n` frames of `video`.
fn writer_command(kind: Kind, id: &str, live: bool, n: usize, video: Video) -> Command {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.env("VCB_BENCH_WRITER", format!("{kind:?}"))
        .env("VCB_BENCH_ID", id)
        .env("VCB_BENCH_LIVE", if live { "1" } else { "0" })
        .env("VCB_BENCH_FRAMES", n.to_string())
        .env(
            "VCB_BENCH_VIDEO",
            VIDEOS
                .iter()
                .position(|v| *v == video)
                .unwrap_or(0)
                .to_string(),
        );
    cmd
}

fn run(kind: Kind, video: Video, live: bool, n: usize, seq: usize) -> Result<RunResult, String> {
    let id = format!("vcb-bench-{}-{seq}", std::process::id());
    // The ring writer goes on until the reader has its frames (it never waits for a reader).
    let stop_file =
        (kind == Kind::ShmRing && !live).then(|| PathBuf::from(format!("/tmp/{id}.stop")));
    let spawn_writer = || {
        let mut cmd = writer_command(kind, &id, live, n, video);
        if let Some(f) = &stop_file {
            cmd.env("VCB_BENCH_STOP_FILE", f);
        }
        ChildGuard::spawn("bench writer", &mut cmd)
    };
    let reader = gst::parse::launch(&format!(
        "{} ! appsink name=sink sync=false max-buffers=2 enable-last-sample=false",
        kind.src(&id, video)
    ))
    .map_err(|e| e.to_string())?
    .downcast::<gst::Pipeline>()
    .map_err(|_| "not a pipeline".to_string())?;
    let appsink = reader
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or("appsink")?;
    // (arrival, latency, process CPU time) per frame, ns.
    let samples: Arc<Mutex<Vec<(u64, u64, u64)>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let s2 = samples.clone();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let now = mono_ns();
                if let Some(buf) = sample.buffer()
                    && let Ok(map) = buf.map_readable()
                    && map.len() >= 8
                {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&map[..8]);
                    let stamp = u64::from_le_bytes(b);
                    s2.lock()
                        .unwrap()
                        .push((now, now.saturating_sub(stamp), cpu_ns()));
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );

    let mut writer;
    if kind == Kind::Shm {
        writer = spawn_writer();
        let sock = PathBuf::from(format!("/tmp/{id}.sock"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            if Instant::now() > deadline {
                return Err("shmsink socket did not appear".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = reader.set_state(gst::State::Playing);
    } else {
        let _ = reader.set_state(gst::State::Playing);
        writer = spawn_writer();
    }

    // Until every frame arrived, the writer is done, or nothing arrived for 3 s (bounded).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (0usize, Instant::now());
    while writer.try_status().is_none() && Instant::now() < deadline {
        if let Some(err) = reader
            .bus()
            .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
        {
            let _ = reader.set_state(gst::State::Null);
            return Err(format!("reader error: {err:?}"));
        }
        let got = samples.lock().unwrap().len();
        if got >= n {
            if let Some(f) = &stop_file {
                let _ = std::fs::write(f, b"");
            }
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if got > 0 && last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let reader_stats = reader
        .by_name("src")
        .filter(|_| kind == Kind::ShmRing)
        .map(|src| {
            format!(
                "frames-zero-copy={} frames-copied={} frames-overwritten={} frames-dropped={}",
                src.property::<u64>("frames-zero-copy"),
                src.property::<u64>("frames-copied"),
                src.property::<u64>("frames-overwritten"),
                src.property::<u64>("frames-dropped")
            )
        })
        .unwrap_or_default();
    let _ = reader.set_state(gst::State::Null);
    // shmsink (wait-for-connection=true) waits at EOS until the reader acknowledged every
    // buffer, which can take until the reader is gone: give it 5 s, then stop it.
    let give_up = Instant::now() + Duration::from_secs(5);
    while writer.try_status().is_none() && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = writer.try_status().is_none();
    if let Some(f) = &stop_file {
        let _ = std::fs::remove_file(f);
    }
    if stopped {
        writer.signal(libc::SIGKILL);
    }
    let out = writer.wait_output(Duration::from_secs(20));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stats = stdout
        .lines()
        .find_map(|l| l.strip_prefix("STATS "))
        .unwrap_or("")
        .to_string();
    if !stopped && !out.status.success() {
        return Err(format!(
            "writer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let s = samples.lock().unwrap().clone();
    if s.len() < 2 {
        return Err(format!("only {} frames arrived", s.len()));
    }
    let (first, last) = (s[0], s[s.len() - 1]);
    let span = (last.0 - first.0) as f64 / 1e9;
    Ok(RunResult {
        frames: s.len(),
        fps: (s.len() - 1) as f64 / span,
        cpu_ms: last.2.saturating_sub(first.2) as f64 / 1e6 / (s.len() - 1) as f64,
        latencies_ms: s.iter().map(|(_, l, _)| *l as f64 / 1e6).collect(),
        stats,
        reader_stats,
    })
}

/// The Python reader (`shmring.py read --max n`, with `--into`: one preallocated buffer, numpy
/// if installed) against an unthrottled shmringsink writer; frames/s and what `--into` used.
fn python_run(video: Video, into: bool, n: usize, seq: usize) -> Result<(f64, String), String> {
    let id = format!("vcb-bench-{}-{seq}", std::process::id());
    let stop_file = PathBuf::from(format!("/tmp/{id}.stop"));
    let name = format!("/{id}");
    let max = n.to_string();
    let mut args = vec!["read", &name, "--max", &max, "--timeout", "20"];
    if into {
        args.push("--into");
    }
    let reader = ChildGuard::spawn("python reader", &mut shmring_cli(&args));
    let mut cmd = writer_command(Kind::ShmRing, &id, false, n, video);
    cmd.env("VCB_BENCH_STOP_FILE", &stop_file);
    let writer = ChildGuard::spawn("bench writer", &mut cmd);
    let out = reader.wait_output(Duration::from_secs(120));
    let _ = std::fs::write(&stop_file, b"");
    let wout = writer.wait_output(Duration::from_secs(20));
    let _ = std::fs::remove_file(&stop_file);
    if !out.status.success() || !wout.status.success() {
        return Err(format!(
            "python reader: {} / writer: {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&wout.stderr).trim()
        ));
    }
    let summary = last_json(&out.stdout);
    let fps = summary["fps"]
        .as_f64()
        .ok_or_else(|| format!("no fps in {summary}"))?;
    Ok((fps, summary["into"].as_str().unwrap_or("").to_string()))
}

/// Median time (ms) of copying one frame of `size` bytes, over 200 copies.
fn memcpy_baseline(size: usize) -> f64 {
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut dst = vec![0u8; size];
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(&mut times)
}

fn main() {
    if let Ok(role) = std::env::var("VCB_BENCH_WRITER") {
        let kind = match role.as_str() {
            "Shm" => Kind::Shm,
            "ShmRing" => Kind::ShmRing,
            _ => Kind::Surface,
        };
        std::process::exit(writer(kind));
    }
    let plugin_dir = std::env::var_os("VCAMBRIDGE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release"));
    // SAFETY: single-threaded at this point; children inherit it.
    unsafe { std::env::set_var("GST_PLUGIN_PATH", &plugin_dir) };
    gst::init().expect("gst init");

    let mut kinds = vec![Kind::Shm];
    // (the transport it is about, if one; the note)
    let mut notes: Vec<(Option<Kind>, String)> = Vec::new();
    if gst::ElementFactory::find("shmringsink").is_some() {
        kinds.push(Kind::ShmRing);
    } else {
        notes.push((None, format!(
            "shmringsink row skipped: no shmringsink in {} (cargo build --release -p gst-plugin-shmring)",
            plugin_dir.display()
        )));
    }
    if gst::ElementFactory::find("surfacesink").is_none() {
        eprintln!(
            "no surfacesink in {}: run cargo build --release -p gst-plugin-surface first",
            plugin_dir.display()
        );
        std::process::exit(2);
    }
    kinds.push(Kind::Surface);
    // BENCH_SKIP_SURFACE=1 leaves surfacesink out (a shmring-only run; shmsink is the reference).
    if std::env::var("BENCH_SKIP_SURFACE").is_ok_and(|v| v == "1") {
        kinds.retain(|k| *k != Kind::Surface);
    }

    let reps = env_or("BENCH_RUNS", 3);
    let throughput_frames = env_or("BENCH_FRAMES", 300);
    let latency_frames = env_or("BENCH_LATENCY_FRAMES", 90);
    let mut seq = 0;
    for video in VIDEOS {
        seq = bench_video(
            video,
            &kinds,
            &notes,
            reps,
            throughput_frames,
            latency_frames,
            seq,
        );
    }
}

/// Every transport in `kinds` at `video`, `reps` times (alternating), then one report per
/// transport of ours; returns the last run number used (ring and socket names stay unique).
fn bench_video(
    video: Video,
    kinds: &[Kind],
    notes: &[(Option<Kind>, String)],
    reps: usize,
    throughput_frames: usize,
    latency_frames: usize,
    mut seq: usize,
) -> usize {
    let mut notes = notes.to_vec();
    let mut py_notes: Vec<String> = Vec::new();
    let size = video.size();
    let label = video.label();
    eprintln!(
        "{label} ({size} bytes/frame), {reps} repetitions, throughput {throughput_frames} frames unthrottled, latency {latency_frames} frames at 30 fps"
    );
    let mut memcpy_ms_reps = Vec::new();

    // The Python reader: read(into=<preallocated>) and read() (a new bytes object per frame).
    let mut py_fps: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut py_into = String::new();
    let mut fps: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut stats: Vec<String> = vec![String::new(); kinds.len()];
    let mut reader_stats: Vec<String> = vec![String::new(); kinds.len()];
    for rep in 0..reps {
        memcpy_ms_reps.push(memcpy_baseline(size));
        for (i, k) in kinds.iter().enumerate() {
            seq += 1;
            match run(*k, video, false, throughput_frames, seq) {
                Ok(r) => {
                    eprintln!(
                        "rep {rep} {label} {:<30} throughput: {} frames, {:.1} fps  [{}] [{}]",
                        k.label(),
                        r.frames,
                        r.fps,
                        r.stats,
                        r.reader_stats
                    );
                    fps[i].push(r.fps);
                    cpu[i].push(r.cpu_ms);
                    stats[i] = r.stats;
                    reader_stats[i] = r.reader_stats;
                }
                Err(e) => {
                    notes.push((Some(*k), format!("{} throughput run {rep}: {e}", k.label())))
                }
            }
            seq += 1;
            match run(*k, video, true, latency_frames, seq) {
                Ok(r) => {
                    let mut l = r.latencies_ms.clone();
                    eprintln!(
                        "rep {rep} {label} {:<30} latency: {} frames, median {:.3} ms",
                        k.label(),
                        r.frames,
                        median(&mut l)
                    );
                    lat[i].extend(r.latencies_ms);
                }
                Err(e) => notes.push((Some(*k), format!("{} latency run {rep}: {e}", k.label()))),
            }
        }
        if kinds.contains(&Kind::ShmRing) {
            for (j, into) in [true, false].into_iter().enumerate() {
                seq += 1;
                match python_run(video, into, throughput_frames, seq) {
                    Ok((f, what)) => {
                        eprintln!("rep {rep} {label} python read (into={into}): {f:.1} fps {what}");
                        py_fps[j].push(f);
                        if into {
                            py_into = what;
                        }
                    }
                    Err(e) => py_notes.push(format!("python reader (into={into}) run {rep}: {e}")),
                }
            }
        }
    }

    // A median over no run (every run of a transport failed) is left empty in the report.
    let median = |v: &mut [f64]| Some(median(v)).filter(|m| m.is_finite());
    let percentile = |v: &mut [f64], p| Some(percentile(v, p)).filter(|m| m.is_finite());
    let memcpy_ms = median(&mut memcpy_ms_reps).unwrap_or(f64::NAN);
    let memcpy_fps = 1e3 / memcpy_ms;
    let shm_fps = median(&mut fps[0].clone());
    let shm_cpu = median(&mut cpu[0].clone());
    let shm_lat = median(&mut lat[0].clone());
    let shm_p95 = percentile(&mut lat[0].clone(), 0.95);
    // One report per transport of ours (after shmsink at index 0), against shmsink and memcpy.
    for (i, k) in kinds.iter().enumerate().skip(1) {
        let ours = match k {
            Kind::ShmRing => "shmringsink -> shmringsrc",
            _ => "surfacesink -> surfacesrc",
        };
        let mut report = Report::new(
            format!(
                "{ours}: {label}, {throughput_frames} frames unthrottled, {latency_frames} at 30 fps"
            ),
            reps,
            &[ours, "shmsink -> shmsrc", "memcpy"],
        );
        report
            .row(
                "frames/s",
                &[median(&mut fps[i].clone()), shm_fps, Some(memcpy_fps)],
            )
            .row(
                "reader CPU per frame (ms)",
                &[median(&mut cpu[i].clone()), shm_cpu, Some(memcpy_ms)],
            )
            .row(
                "latency p50 (ms)",
                &[median(&mut lat[i].clone()), shm_lat, Some(memcpy_ms)],
            )
            .row(
                "latency p95 (ms)",
                &[percentile(&mut lat[i].clone(), 0.95), shm_p95, None],
            )
            .note(format!(
                "memcpy: one copy of the {size}-byte frame in this process (the physical limit)"
            ));
        if *k == Kind::ShmRing {
            report.note(
                "the ring writer never waits for its reader: in throughput runs it goes on writing until the reader has its frames",
            );
        }
        if !stats[i].is_empty() {
            report.note(format!("writer stats (last throughput run): {}", stats[i]));
        }
        if !reader_stats[i].is_empty() {
            report.note(format!(
                "reader stats (last throughput run): {}",
                reader_stats[i]
            ));
        }
        for (about, n) in &notes {
            if about.is_none_or(|a| a == Kind::Shm || a == *k) {
                report.note(n.clone());
            }
        }
        report.print();
        println!();
    }
    if kinds.contains(&Kind::ShmRing) {
        let into = if py_into.is_empty() {
            "preallocated buffer"
        } else {
            py_into.as_str()
        };
        let ours = format!("shmring.py read(into={into})");
        let mut report = Report::new(
            format!(
                "Python reader (plugins/shmring/python/shmring.py) of shmringsink: {label}, {throughput_frames} frames unthrottled"
            ),
            reps,
            &[&ours, "shmring.py read() (new bytes)", "memcpy"],
        );
        report
            .row(
                "frames/s",
                &[
                    median(&mut py_fps[0].clone()),
                    median(&mut py_fps[1].clone()),
                    Some(memcpy_fps),
                ],
            )
            .note("the reader is `shmring.py read NAME --max N [--into]` in its own process; frames/s between its first and last frame");
        for n in &py_notes {
            report.note(n.clone());
        }
        report.print();
        println!();
    }
    seq
}
