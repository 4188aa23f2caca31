//! Benchmark (not a test): CPU time and copies per frame of three v4l2loopback writers doing the
//! same job — 1280x720 YUY2 frames into one loopback device as fast as they go:
//!
//! * `v4l2loopsink` (this crate) with `offer-pool=true` (upstream writes into the device's
//!   buffers: no copy) and without (one copy), `v4l2sink` (gst-plugins-good), all fed by
//!   `videotestsrc`;
//! * `ffmpeg -f v4l2`, fed by lavfi `color`.
//!
//! Each writer runs as a subprocess; its CPU time (user + system, from `wait4`) minus the CPU
//! time of the same source into a null sink (`fakesink` / `-f null`) is the writer's cost. Runs
//! are interleaved and repeated; medians and ratios against `v4l2loopsink` are printed.
//! Copies per frame: `v4l2loopsink` reports them (`stats`); for `v4l2sink` a pad probe checks
//! whether upstream wrote straight into the driver's buffers (0) or v4l2sink copies (1); for
//! ffmpeg, `/proc/<pid>/io` counts the bytes it pushed through `write()` (each a kernel copy),
//! plus the rawvideo encoder's frame-to-packet copy.
//!
//! Run it in the guest (real module): `plugins/v4l2loopsink/bench/run.sh` (which runs
//! `tests/guest/run.sh --bench`). It ends with the common report (`vcambridge_tests::bench`).
//! Environment: `BENCH_DEVICE` (default /dev/video11), `BENCH_FRAMES` (400), `BENCH_RUNS` (5).

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gst::prelude::*;
use vcambridge_tests::bench::{Report, median};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const FRAME_SIZE: u64 = WIDTH as u64 * HEIGHT as u64 * 2;

struct Run {
    cpu: Duration,
    wall: Duration,
    write_bytes: u64,
}

/// Runs `cmd` to completion (≤ 10 min) and returns its CPU time, wall time and `wchar`.
fn measure(name: &str, cmd: &mut Command) -> Result<Run, String> {
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{name}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let io_path = format!("/proc/{pid}/io");
    let mut write_bytes = 0u64;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        if let Ok(io) = std::fs::read_to_string(&io_path)
            && let Some(w) = io
                .lines()
                .find_map(|l| l.strip_prefix("wchar: "))
                .and_then(|v| v.trim().parse().ok())
        {
            write_bytes = w;
        }
        // SAFETY: wait4 on our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            return Err(format!("{name}: wait4 failed"));
        }
        if start.elapsed() > Duration::from_secs(600) {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(format!("{name}: no exit within 10 min"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let wall = start.elapsed();
    let exit = std::process::ExitStatus::from_raw(status);
    if !exit.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        return Err(format!("{name} failed ({exit}): {err}"));
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Run {
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        wall,
        write_bytes,
    })
}

fn gst_launch(pipeline: &str) -> Command {
    let mut c = Command::new("gst-launch-1.0");
    c.arg("-q").args(pipeline.split_whitespace());
    c
}

/// One raw 1280x720 YUY2 frame in a file (tmpfs), looped by ffmpeg as its source: demuxing a
/// raw file is the cheapest ffmpeg source, so the subtraction below leaves the writer's cost.
const FFMPEG_FRAME: &str = "/tmp/v4l2loopsink-bench-frame.yuv";

fn ffmpeg(frames: u32, output: &[&str]) -> Command {
    let mut c = Command::new("ffmpeg");
    c.args([
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-stream_loop",
        "-1",
    ])
    .args(["-f", "rawvideo", "-pix_fmt", "yuyv422", "-video_size"])
    .arg(format!("{WIDTH}x{HEIGHT}"))
    .args(["-framerate", "30", "-i", FFMPEG_FRAME])
    .args(["-frames:v", &frames.to_string()])
    .args(output);
    c
}

/// Copies per frame of `v4l2loopsink` with and without its pool (its stats) and inside
/// `v4l2sink` (0 when upstream rendered into its mmap pool), from short in-process runs.
fn copies(device: &str) -> Result<(f64, f64, f64, f64), String> {
    gst::init().map_err(|e| e.to_string())?;
    let caps = format!("video/x-raw,format=YUY2,width={WIDTH},height={HEIGHT},framerate=30/1");
    let run = |prefix: &str, sink: &str| -> Result<(gst::Pipeline, u64, u64), String> {
        let p = gst::parse::launch(&format!(
            "videotestsrc num-buffers=30 pattern=solid-color ! {caps} ! {prefix} {sink} name=sink \
             device={device} sync=false"
        ))
        .map_err(|e| e.to_string())?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_string())?;
        let sink_el = p.by_name("sink").ok_or("no sink")?;
        let counts = std::sync::Arc::new(std::sync::Mutex::new((0u64, 0u64)));
        let c = counts.clone();
        sink_el.static_pad("sink").ok_or("no sink pad")?.add_probe(
            gst::PadProbeType::BUFFER,
            move |_, info| {
                if let Some(buffer) = info.buffer() {
                    let in_driver_memory = buffer.iter_memories().all(|m| {
                        m.allocator()
                            .is_some_and(|a| a.type_().name().contains("V4l2"))
                    });
                    let mut g = c.lock().unwrap_or_else(|e| e.into_inner());
                    g.0 += 1;
                    if in_driver_memory {
                        g.1 += 1;
                    }
                }
                gst::PadProbeReturn::Ok
            },
        );
        p.set_state(gst::State::Playing)
            .map_err(|e| format!("{sink}: {e}"))?;
        let bus = p.bus().ok_or("no bus")?;
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(120),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .ok_or(format!("{sink}: no EOS within 120 s"))?;
        if let gst::MessageView::Error(e) = msg.view() {
            return Err(format!("{sink}: {}", e.error()));
        }
        let (frames, zero_copy) = *counts.lock().unwrap_or_else(|e| e.into_inner());
        Ok((p, frames, zero_copy))
    };
    let ratio = |frames: u64, zero_copy: u64| {
        if frames == 0 {
            f64::NAN
        } else {
            (frames - zero_copy) as f64 / frames as f64
        }
    };
    let (p, frames, zero_copy) = run("", "v4l2sink")?;
    let _ = p.set_state(gst::State::Null);
    let v4l2sink_copies = ratio(frames, zero_copy);
    let (p, frames, zero_copy) = run("identity drop-allocation=true !", "v4l2sink")?;
    let _ = p.set_state(gst::State::Null);
    let v4l2sink_upstream_pool_copies = ratio(frames, zero_copy);
    let ours = |sink: &str| -> Result<f64, String> {
        let (p, _, _) = run("", sink)?;
        let stats = p
            .by_name("sink")
            .ok_or("no sink")?
            .property::<gst::Structure>("stats");
        let _ = p.set_state(gst::State::Null);
        eprintln!("{sink}: {stats}");
        stats
            .get::<f64>("copies-per-frame")
            .map_err(|e| e.to_string())
    };
    let pooled = ours("v4l2loopsink keepalive=false offer-pool=true")?;
    let copied = ours("v4l2loopsink keepalive=false")?;
    Ok((
        pooled,
        copied,
        v4l2sink_copies,
        v4l2sink_upstream_pool_copies,
    ))
}

fn main() {
    let device = std::env::var("BENCH_DEVICE").unwrap_or_else(|_| "/dev/video11".into());
    let frames: u32 = std::env::var("BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let caps = format!("video/x-raw,format=YUY2,width={WIDTH},height={HEIGHT},framerate=30/1");
    let src = format!("videotestsrc num-buffers={frames} pattern=solid-color ! {caps}");
    let module = std::fs::read_to_string("/sys/module/v4l2loopback/version")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| std::env::var("VCAMBRIDGE_V4L2LOOPBACK_VERSION").unwrap_or_default());
    eprintln!(
        "v4l2loopback {module} — {WIDTH}x{HEIGHT} YUY2, {frames} frames per run, {runs} runs, \
         device {device}"
    );

    let frame: Vec<u8> = (0..FRAME_SIZE).map(|i| (i % 251) as u8).collect();
    if let Err(e) = std::fs::write(FFMPEG_FRAME, frame) {
        eprintln!("writing {FFMPEG_FRAME}: {e}");
        std::process::exit(1);
    }
    let (pooled_copies, ours_copies, v4l2sink_copies, v4l2sink_upstream_copies) =
        match copies(&device) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("copies measurement failed: {e}");
                std::process::exit(1);
            }
        };

    type Maker = Box<dyn Fn() -> Command>;
    let cases: Vec<(&str, Maker)> = vec![
        (
            "gst baseline (fakesink)",
            Box::new({
                let src = src.clone();
                move || gst_launch(&format!("{src} ! fakesink sync=false"))
            }),
        ),
        (
            "v4l2loopsink offer-pool=true",
            Box::new({
                let (src, device) = (src.clone(), device.clone());
                move || {
                    gst_launch(&format!(
                        "{src} ! v4l2loopsink device={device} sync=false keepalive=false \
                         offer-pool=true"
                    ))
                }
            }),
        ),
        (
            "v4l2loopsink",
            Box::new({
                let (src, device) = (src.clone(), device.clone());
                move || {
                    gst_launch(&format!(
                        "{src} ! v4l2loopsink device={device} sync=false keepalive=false"
                    ))
                }
            }),
        ),
        (
            "v4l2sink",
            Box::new({
                let (src, device) = (src.clone(), device.clone());
                move || gst_launch(&format!("{src} ! v4l2sink device={device} sync=false"))
            }),
        ),
        (
            "v4l2sink, upstream pool",
            Box::new({
                let (src, device) = (src.clone(), device.clone());
                // identity drop-allocation: upstream cannot render into v4l2sink's buffers (as
                // with a decoder that brings its own pool), so v4l2sink copies each frame.
                move || {
                    gst_launch(&format!(
                        "{src} ! identity drop-allocation=true ! v4l2sink device={device} sync=false"
                    ))
                }
            }),
        ),
        (
            "ffmpeg baseline (-f null)",
            Box::new(move || ffmpeg(frames, &["-f", "null", "-"])),
        ),
        (
            "ffmpeg -f v4l2",
            Box::new({
                let device = device.clone();
                move || ffmpeg(frames, &["-c:v", "rawvideo", "-f", "v4l2", &device])
            }),
        ),
    ];
    let mut cpu: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    let mut wall: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    let mut wchar: Vec<u64> = vec![0; cases.len()];
    for r in 0..runs {
        for (i, (name, make)) in cases.iter().enumerate() {
            match measure(name, &mut make()) {
                Ok(run) => {
                    cpu[i].push(run.cpu);
                    wall[i].push(run.wall);
                    wchar[i] = wchar[i].max(run.write_bytes);
                    eprintln!(
                        "run {}/{runs} {name}: cpu {:?} wall {:?}",
                        r + 1,
                        run.cpu,
                        run.wall
                    );
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
        }
    }
    let per_frame = |d: Duration| d.as_secs_f64() * 1000.0 / frames as f64;
    let medians = |runs: &[Vec<Duration>]| -> Vec<f64> {
        runs.iter()
            .map(|v| median(&mut v.iter().map(|d| per_frame(*d)).collect::<Vec<_>>()))
            .collect()
    };
    let med = medians(&cpu);
    let wall_med = medians(&wall);
    // Case indices: 0 gst baseline, 1 ours with the pool, 2 ours copying, 3 v4l2sink rendering
    // into its pool, 4 v4l2sink copying, 5 ffmpeg baseline, 6 ffmpeg.
    let net = [
        med[1] - med[0],
        med[2] - med[0],
        med[3] - med[0],
        med[4] - med[0],
        med[6] - med[5],
    ];
    let ffmpeg_write_copies = wchar[6] as f64 / (frames as u64 * FRAME_SIZE) as f64;
    let mut report = Report::new(
        format!(
            "v4l2loopback {module} writers: {WIDTH}x{HEIGHT} YUY2, {frames} frames per run, \
             device {device}"
        ),
        runs,
        &[
            "v4l2loopsink (pool)",
            "v4l2loopsink (copy)",
            "v4l2sink (own pool)",
            "v4l2sink (upstream pool)",
            "ffmpeg -f v4l2",
        ],
    );
    report
        .row(
            "net CPU per frame (ms)",
            &[
                Some(net[0]),
                Some(net[1]),
                Some(net[2]),
                Some(net[3]),
                Some(net[4]),
            ],
        )
        .row(
            "CPU per frame (ms)",
            &[
                Some(med[1]),
                Some(med[2]),
                Some(med[3]),
                Some(med[4]),
                Some(med[6]),
            ],
        )
        .row(
            "wall per frame (ms)",
            &[
                Some(wall_med[1]),
                Some(wall_med[2]),
                Some(wall_med[3]),
                Some(wall_med[4]),
                Some(wall_med[6]),
            ],
        )
        .row(
            "copies per frame",
            &[
                Some(pooled_copies),
                Some(ours_copies),
                Some(v4l2sink_copies),
                Some(v4l2sink_upstream_copies),
                // write(): one kernel copy per byte written, plus rawvideo's frame→packet copy.
                Some(ffmpeg_write_copies + 1.0),
            ],
        )
        .note(
            "CPU = user+system time of the writer process; net = minus the same source into a \
             null sink (fakesink / ffmpeg -f null)",
        )
        .note(format!(
            "source alone: gst {:.3} ms/frame, ffmpeg {:.3} ms/frame",
            med[0], med[5]
        ))
        .note(
            "copies: v4l2loopsink's stats (with and without offer-pool); v4l2sink: a pad probe \
             on whether its input lives in the driver's buffers; ffmpeg: write() bytes \
             (/proc/<pid>/io) + its packet copy",
        );
    report.print();
}
