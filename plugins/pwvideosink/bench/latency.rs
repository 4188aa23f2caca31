// SPDX-License-Identifier: MPL-2.0
//! Benchmark: producer→consumer latency and CPU per frame at 1280x720 I420 30 fps,
//! `pwvideosink` against the upstream `pipewiresink mode=provide`, side by side in one run
//! (alternating rounds on one private PipeWire session), ending with the common report
//! (`vcambridge_tests::bench::Report`: medians, ours / pipewiresink ratios). A third column,
//! `pwvideosink realtime=false`, shows what the realtime data thread changes in the same run.
//!
//!     plugins/pwvideosink/bench/run.sh [--rounds 5 --frames 300 --width 1280 --height 720]
//!
//! Latency: the producer writes CLOCK_MONOTONIC into the first 8 bytes of each frame just
//! before the sink; the consumer (this binary re-run with `--consumer`, `pipewiresrc !
//! appsink` in its own process) subtracts it from the time it receives the frame.
//! CPU: producer process, consumer process and pipewire daemon, per delivered frame.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gst::prelude::*;
use vcambridge_tests::ChildGuard;
use vcambridge_tests::bench::{Report, median};
use vcambridge_tests::pipewire::PipeWireSession;

mod dmabuf_path;

const WARMUP: usize = 30;

fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// CPU time (user+system) of this process, in ns.
fn self_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (user+system) of another process from /proc, in ns.
fn pid_cpu_ns(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may contain spaces) start at ") ".
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf is always safe to call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000_000 / hz
}

/// Consumer mode: receive `frames` frames after a warm-up (through `caps`, if given), print
/// per-frame latency, CPU and frames/s.
fn consumer(node: &str, frames: usize, caps: Option<&str>) {
    gst::init().expect("gst init");
    let filter = caps.map(|c| format!("! {c} ")).unwrap_or_default();
    let desc = format!(
        "pipewiresrc target-object={node} stream-properties=props,media.type=Video \
         {filter}! appsink name=s sync=false max-buffers=4 drop=false"
    );
    let pipeline = vcambridge_tests::launch_pipeline(&desc);
    let sink = pipeline
        .by_name("s")
        .expect("appsink")
        .downcast::<gst_app::AppSink>()
        .expect("appsink type");
    pipeline.set_state(gst::State::Playing).expect("play");
    let mut cpu0 = 0;
    let (mut t0, mut t_last) = (0, 0);
    let mut lat = Vec::with_capacity(frames);
    for i in 0..WARMUP + frames {
        let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) else {
            eprintln!("consumer: no frame {i} within 10 s");
            std::process::exit(2);
        };
        let t = now_ns();
        if i == WARMUP {
            cpu0 = self_cpu_ns();
            t0 = t;
        }
        t_last = t;
        if i < WARMUP {
            continue;
        }
        let Some(buf) = sample.buffer() else { continue };
        let Ok(map) = buf.map_readable() else {
            continue;
        };
        if map.len() >= 8 {
            let sent = u64::from_le_bytes(map[..8].try_into().unwrap_or([0; 8]));
            if sent > 0 && t >= sent {
                lat.push(t - sent);
            }
        }
    }
    let cpu = self_cpu_ns() - cpu0;
    let _ = pipeline.set_state(gst::State::Null);
    for l in &lat {
        println!("LAT {l}");
    }
    println!("CPU {cpu}");
    println!("FRAMES {frames}");
    let secs = t_last.saturating_sub(t0) as f64 / 1e9;
    if frames > 1 && secs > 0.0 {
        println!("FPS {}", (frames - 1) as f64 / secs);
    }
}

/// Picks one figure out of a run.
type Metric = fn(&RunResult) -> f64;

struct RunResult {
    latency_ms: f64,
    producer_us: f64,
    consumer_us: f64,
    daemon_us: f64,
}

fn run_once(
    caps: &str,
    session: &PipeWireSession,
    sink: &str,
    node: &str,
    frames: usize,
) -> Result<RunResult, String> {
    let sink_desc = match sink {
        "pwvideosink" => format!("pwvideosink node-name={node} sync=false"),
        "pwvideosink-nort" => format!("pwvideosink node-name={node} sync=false realtime=false"),
        _ => format!(
            "pipewiresink mode=provide sync=false stream-properties=\"props,node.name={node},\
             media.class=Video/Source,media.role=Camera\""
        ),
    };
    let desc = format!("videotestsrc is-live=true pattern=black ! {caps} ! {sink_desc} name=sink");
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| format!("{sink}: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_string())?;
    let count = Arc::new(AtomicU64::new(0));
    let pad = pipeline
        .by_name("sink")
        .and_then(|s| s.static_pad("sink"))
        .ok_or("no sink pad")?;
    {
        let count = count.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(gst::PadProbeData::Buffer(buf)) = info.data.as_mut() {
                let buf = buf.make_mut();
                if let Ok(mut map) = buf.map_writable()
                    && map.len() >= 8
                {
                    map[..8].copy_from_slice(&now_ns().to_le_bytes());
                }
            }
            count.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    }
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("{sink}: {e:?}"))?;
    session.wait_for_node(node, Duration::from_secs(10));

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    session.apply_env(&mut cmd);
    cmd.args(["--consumer", node, &frames.to_string()]);
    let daemon = session.pipewire_pid().unwrap_or(0);
    let (p0, d0, c0) = (
        self_cpu_ns(),
        pid_cpu_ns(daemon),
        count.load(Ordering::Relaxed),
    );
    let out = ChildGuard::spawn("bench consumer", &mut cmd)
        .wait_output(Duration::from_secs(60 + frames as u64 / 10));
    let (p1, d1, c1) = (
        self_cpu_ns(),
        pid_cpu_ns(daemon),
        count.load(Ordering::Relaxed),
    );
    let _ = pipeline.set_state(gst::State::Null);
    if !out.status.success() {
        return Err(format!(
            "{sink}: consumer failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lat: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("LAT "))
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|ns| ns / 1e6)
        .collect();
    let consumer_cpu: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("CPU "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    if lat.len() < frames / 2 {
        return Err(format!("{sink}: only {} timestamped frames", lat.len()));
    }
    let produced = (c1 - c0).max(1) as f64;
    Ok(RunResult {
        latency_ms: median(&mut lat),
        producer_us: (p1 - p0) as f64 / 1e3 / produced,
        consumer_us: consumer_cpu / 1e3 / frames as f64,
        daemon_us: (d1.saturating_sub(d0)) as f64 / 1e3 / produced,
    })
}

/// The upstream bug this element exists for: a consumer SIGKILLed mid-stream, then does a new
/// consumer get frames? Returns a one-line verdict.
fn kill_then_reconnect(caps: &str, session: &PipeWireSession, sink: &str, node: &str) -> String {
    let sink_desc = match sink {
        "pwvideosink" => format!("pwvideosink node-name={node}"),
        _ => format!(
            "pipewiresink mode=provide stream-properties=\"props,node.name={node},\
             media.class=Video/Source,media.role=Camera\""
        ),
    };
    let desc = format!("videotestsrc is-live=true ! {caps} ! {sink_desc}");
    let Ok(pipeline) = gst::parse::launch(&desc) else {
        return "could not build the producer".into();
    };
    if pipeline.set_state(gst::State::Playing).is_err() {
        return "producer did not start".into();
    }
    session.wait_for_node(node, Duration::from_secs(10));
    let Ok(exe) = std::env::current_exe() else {
        return "no current exe".into();
    };
    let consumer = |frames: &str| {
        let mut cmd = Command::new(&exe);
        session.apply_env(&mut cmd);
        cmd.args(["--consumer", node, frames]);
        cmd
    };
    let victim = ChildGuard::spawn("victim consumer", &mut consumer("100000"));
    std::thread::sleep(Duration::from_secs(2));
    victim.signal(libc::SIGKILL);
    drop(victim);
    std::thread::sleep(Duration::from_millis(500));
    // The consumer exits with an error if it gets no frame within 10 s.
    let out =
        ChildGuard::spawn("new consumer", &mut consumer("30")).wait_output(Duration::from_secs(60));
    let _ = pipeline.set_state(gst::State::Null);
    if out.status.success() {
        "new consumer got 30 frames".into()
    } else {
        format!(
            "new consumer got NO frames ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--consumer") {
        let node = args.get(2).expect("node name");
        let frames = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(150);
        consumer(node, frames, args.get(4).map(String::as_str));
        return;
    }
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rounds = arg("--rounds", 5);
    let frames = arg("--frames", 300);
    let width = arg("--width", 1280);
    let height = arg("--height", 720);
    let format = args
        .iter()
        .position(|a| a == "--format")
        .and_then(|i| args.get(i + 1))
        .map_or("I420", String::as_str);
    let caps = format!("video/x-raw,format={format},width={width},height={height},framerate=30/1");

    let session = PipeWireSession::start();
    // Both producers run in this process and find the daemon through the environment.
    // SAFETY: set before GStreamer (or any other thread that reads the environment) starts.
    unsafe {
        std::env::set_var("XDG_RUNTIME_DIR", session.runtime_dir());
        std::env::remove_var("PIPEWIRE_REMOTE");
    }
    gst::init().expect("gst init");
    if gst::ElementFactory::find("pwvideosink").is_none() {
        gstpwvideosink::plugin_register_static().expect("register pwvideosink");
    }

    if args.iter().any(|a| a == "--dmabuf") {
        dmabuf_report(&session, rounds, frames, (width, height));
        return;
    }

    // pwvideosink with realtime=false: what the realtime data thread buys (same run).
    let sinks = ["pwvideosink", "pipewiresink", "pwvideosink-nort"];
    let mut results: Vec<Vec<RunResult>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut failures: Vec<String> = Vec::new();
    eprintln!(
        "pwvideosink vs pipewiresink mode=provide (and pwvideosink realtime=false): {caps}, \
         {rounds} rounds x {frames} frames"
    );
    // `--only pwvideosink` (or pipewiresink, pwvideosink-nort): one column, e.g. under perf.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    for round in 0..rounds {
        for (i, sink) in sinks.iter().enumerate() {
            if only.is_some_and(|o| o != sink) {
                continue;
            }
            let node = format!("bench-{sink}-{round}");
            match run_once(&caps, &session, sink, &node, frames) {
                Ok(r) => {
                    eprintln!(
                        "round {round} {sink:>16}: latency {:6.2} ms  cpu/frame producer {:7.1} us  \
                         consumer {:7.1} us  daemon {:6.1} us",
                        r.latency_ms, r.producer_us, r.consumer_us, r.daemon_us
                    );
                    results[i].push(r);
                }
                Err(e) => {
                    eprintln!("round {round} {sink:>16}: FAILED: {e}");
                    failures.push(e);
                }
            }
        }
    }

    let med = |rs: &[RunResult], f: Metric| {
        let mut v: Vec<f64> = rs.iter().map(f).collect();
        Some(median(&mut v)).filter(|m| m.is_finite())
    };
    let metrics: [(&str, Metric); 5] = [
        ("latency (ms)", |r| r.latency_ms),
        ("producer CPU per frame (us)", |r| r.producer_us),
        ("consumer CPU per frame (us)", |r| r.consumer_us),
        ("daemon CPU per frame (us)", |r| r.daemon_us),
        ("total CPU per frame (us)", |r| {
            r.producer_us + r.consumer_us + r.daemon_us
        }),
    ];
    let mut report = Report::new(
        format!("pwvideosink -> pipewiresrc: {caps}, {frames} frames"),
        rounds,
        &[
            "pwvideosink",
            "pipewiresink mode=provide",
            "pwvideosink realtime=false",
        ],
    );
    for (name, f) in metrics {
        report.row(
            name,
            &[
                med(&results[0], f),
                med(&results[1], f),
                med(&results[2], f),
            ],
        );
    }
    report.note(format!(
        "runs ok: pwvideosink {}/{rounds}, pipewiresink {}/{rounds}, pwvideosink realtime=false \
         {}/{rounds}",
        results[0].len(),
        results[1].len(),
        results[2].len()
    ));
    // The spread between rounds (each round runs both sinks back to back): how far apart
    // two runs of the same code land on this machine.
    for (name, f) in [
        ("latency", (|r| r.latency_ms) as Metric),
        ("producer CPU", |r| r.producer_us),
    ] {
        let mut ratios: Vec<f64> = results[0]
            .iter()
            .zip(&results[1])
            .map(|(a, b)| f(a) / f(b))
            .filter(|r| r.is_finite())
            .collect();
        if ratios.is_empty() {
            continue;
        }
        let mid = median(&mut ratios); // (sorts)
        report.note(format!(
            "{name} ratio per round (pwvideosink / pipewiresink, same round): min {:.2}, median \
             {mid:.2}, max {:.2}",
            ratios[0],
            ratios[ratios.len() - 1]
        ));
    }
    if !failures.is_empty() {
        report.note(format!("failures: {failures:?}"));
    }
    for sink in sinks[..2].iter().filter(|_| only.is_none()) {
        let verdict = kill_then_reconnect(&caps, &session, sink, &format!("bench-kill-{sink}"));
        report.note(format!(
            "{sink}, consumer SIGKILLed after 2 s, then a new consumer: {verdict}"
        ));
    }
    report.print();
}

/// DMA-BUF upstream: pass-through to a DMA-BUF consumer against the memfd copy path (a
/// system-memory consumer), alternating rounds; one report.
fn dmabuf_report(session: &PipeWireSession, rounds: usize, frames: usize, size: (usize, usize)) {
    let paths = [
        ("pass-through", "video/x-raw(memory:DMABuf)"),
        ("memfd copy", "video/x-raw"),
    ];
    let mut results: Vec<Vec<dmabuf_path::PathResult>> = vec![Vec::new(), Vec::new()];
    let mut failures = Vec::new();
    eprintln!(
        "pwvideosink, DMA-BUF upstream {}x{} I420 (pool of 8, 30 frames/s): pass-through vs memfd copy, {rounds} rounds x {frames} frames",
        size.0, size.1
    );
    for round in 0..rounds {
        for (i, (name, caps)) in paths.iter().enumerate() {
            let node = format!("bench-dmabuf-{i}-{round}");
            match dmabuf_path::run(session, &node, size, caps, frames) {
                Ok(r) => {
                    eprintln!(
                        "round {round} {name:>12}: {:7.1} frames/s  latency {:5.2} ms  cpu/frame \
                         producer {:7.1} us  consumer {:7.1} us",
                        r.fps, r.latency_ms, r.producer_us, r.consumer_us
                    );
                    results[i].push(r);
                }
                Err(e) => {
                    eprintln!("round {round} {name:>12}: FAILED: {e}");
                    failures.push(format!("{name}: {e}"));
                }
            }
        }
    }
    type PathMetric = fn(&dmabuf_path::PathResult) -> f64;
    let med = |rs: &[dmabuf_path::PathResult], f: PathMetric| {
        let mut v: Vec<f64> = rs.iter().map(f).collect();
        Some(median(&mut v)).filter(|m| m.is_finite())
    };
    let metrics: [(&str, PathMetric); 4] = [
        ("frames/s at the consumer", |r| r.fps),
        ("latency (ms)", |r| r.latency_ms),
        ("producer CPU per frame (us)", |r| r.producer_us),
        ("consumer CPU per frame (us)", |r| r.consumer_us),
    ];
    let mut report = Report::new(
        format!(
            "pwvideosink, DMA-BUF upstream video/x-raw(memory:DMABuf),format=I420,width={},height={} \
             (8 memfd-backed DMA-BUFs, 30 frames/s) -> pipewiresrc, {frames} frames",
            size.0, size.1
        ),
        rounds,
        &[
            "pass-through (consumer takes DMA-BUF)",
            "memfd copy (consumer takes system memory)",
        ],
    );
    for (name, f) in metrics {
        report.row(name, &[med(&results[0], f), med(&results[1], f)]);
    }
    report.note(format!(
        "runs ok: pass-through {}/{rounds}, memfd copy {}/{rounds}",
        results[0].len(),
        results[1].len()
    ));
    if !failures.is_empty() {
        report.note(format!("failures: {failures:?}"));
    }
    report.print();
}
