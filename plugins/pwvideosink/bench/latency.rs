// SPDX-License-Identifier: MPL-2.0
//! Benchmark: producer→consumer latency and CPU per frame at 1280x720 I420 30 fps,
//! `pwvideosink` against the upstream `pipewiresink mode=provide`, side by side in one run
//! (alternating rounds on one private PipeWire session), ending with the common report
//! (`vcambridge_tests::bench::Report`: medians, ours / pipewiresink ratios). One warm-up round
//! of each sink first (not counted); odd rounds run the sinks in reverse order. A third column,
//! `pwvideosink realtime=true` (`--realtime-column`), shows what a realtime data-loop thread would
//! change in the same run.
//!
//!     plugins/pwvideosink/bench/run.sh [--rounds 7 --frames 300 --width 1280 --height 720]
//!
//! Latency: the producer writes CLOCK_MONOTONIC into the first 8 bytes of each frame just
//! before the sink; the consumer (this binary re-run with `--consumer`, `pipewiresrc !
//! appsink` in its own process) subtracts it from the time it receives the frame.
//! CPU: producer process, consumer process and pipewire daemon, per delivered frame, over the
//! consumer's measured frames only (from the end of its warm-up to its last frame: no
//! connection setup, buffer allocation or teardown; see `run_consumer`). `--threads` prints the
//! producer's CPU per frame by thread.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gst::prelude::*;
use vcambridge_tests::ChildGuard;
use vcambridge_tests::bench::{Report, median, percentile, pid_cpu_ns, schedstat_ns, self_cpu_ns};
use vcambridge_tests::pipewire::PipeWireSession;

mod dmabuf_path;

const WARMUP: usize = 30;

fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
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
            // The producer measures from here (see `run_consumer`).
            println!("WARM");
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
    println!("END");
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
    /// 95th percentile of the frames' latency.
    latency_p95_ms: f64,
    producer_us: f64,
    consumer_us: f64,
    daemon_us: f64,
    /// CPU per frame of each thread of the producer process (`--threads`).
    threads: Vec<(String, f64)>,
}

/// The producer side at one instant.
struct Snapshot {
    producer_ns: u64,
    daemon_ns: u64,
    frames: u64,
    threads: BTreeMap<u32, (String, u64)>,
}

/// CPU time of each thread of this process (ns on a CPU, from `schedstat`), by tid.
fn thread_cpu() -> BTreeMap<u32, (String, u64)> {
    let mut threads = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        threads.insert(tid, (comm.trim().to_string(), schedstat_ns(&entry.path())));
    }
    threads
}

/// Runs a consumer (this binary with `--consumer`) and calls `snap` when it reports the end of
/// its warm-up (`WARM`) and its last measured frame (`END`): the producer's figures then cover
/// the very frames the consumer measures, without connection setup, buffer allocation, warm-up
/// or teardown (one-off costs that differ between the sinks and would blur the per-frame
/// figure). Returns the consumer's output and both snapshots.
pub(crate) fn run_consumer<S: Send + 'static>(
    name: &str,
    cmd: &mut Command,
    timeout: Duration,
    snap: impl Fn() -> S + Send + 'static,
) -> Result<(String, S, S), String> {
    let mut guard = ChildGuard::spawn(name, cmd);
    let child = guard.child.as_mut().ok_or("no child")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut text, mut warm, mut end) = (String::new(), None, None);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match line.as_str() {
                "WARM" => warm = Some(snap()),
                "END" => end = Some(snap()),
                _ => {}
            }
            text.push_str(&line);
            text.push('\n');
        }
        let _ = tx.send((text, warm, end));
    });
    // On a timeout the guard kills the consumer; the reader then sees the pipe close.
    let (text, warm, end) = rx
        .recv_timeout(timeout)
        .map_err(|_| format!("{name}: not done within {timeout:?}"))?;
    let status = guard.child.as_mut().and_then(|c| c.wait().ok());
    let errors = errors.join().unwrap_or_default();
    if !status.is_some_and(|s| s.success()) {
        return Err(format!("{name} failed: {}", errors.trim()));
    }
    match (warm, end) {
        (Some(warm), Some(end)) => Ok((text, warm, end)),
        _ => Err(format!(
            "{name}: no WARM/END line; stderr: {}",
            errors.trim()
        )),
    }
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
        "pwvideosink-rt" => format!("pwvideosink node-name={node} sync=false realtime=true"),
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
    let snap = {
        let count = count.clone();
        move || Snapshot {
            producer_ns: self_cpu_ns(),
            daemon_ns: pid_cpu_ns(daemon),
            frames: count.load(Ordering::Relaxed),
            threads: thread_cpu(),
        }
    };
    let run = run_consumer(
        &format!("{sink}: consumer"),
        &mut cmd,
        Duration::from_secs(60 + frames as u64 / 10),
        snap,
    );
    let _ = pipeline.set_state(gst::State::Null);
    let (text, s0, s1) = run?;
    let produced = (s1.frames - s0.frames).max(1) as f64;
    let consumer_cpu: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("CPU "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let mut lat: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("LAT "))
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|ns| ns / 1e6)
        .collect();
    if lat.len() < frames / 2 {
        return Err(format!("{sink}: only {} timestamped frames", lat.len()));
    }
    Ok(RunResult {
        latency_p95_ms: percentile(&mut lat, 0.95),
        latency_ms: median(&mut lat),
        producer_us: (s1.producer_ns - s0.producer_ns) as f64 / 1e3 / produced,
        consumer_us: consumer_cpu / 1e3 / frames as f64,
        daemon_us: (s1.daemon_ns.saturating_sub(s0.daemon_ns)) as f64 / 1e3 / produced,
        threads: s1
            .threads
            .iter()
            .map(|(tid, (name, t1))| {
                let t0 = s0.threads.get(tid).map_or(0, |t| t.1);
                (
                    format!("{name}[{tid}]"),
                    t1.saturating_sub(t0) as f64 / 1e3 / produced,
                )
            })
            .filter(|(_, us)| *us >= 0.5)
            .collect(),
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
    let rounds = arg("--rounds", 7);
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

    // `--realtime-column`: a third column, pwvideosink with realtime=true (what a realtime data
    // thread changes, same run).
    let with_rt = args.iter().any(|a| a == "--realtime-column");
    let sinks: &[&str] = if with_rt {
        &["pwvideosink", "pipewiresink", "pwvideosink-rt"]
    } else {
        &["pwvideosink", "pipewiresink"]
    };
    let mut results: Vec<Vec<RunResult>> = sinks.iter().map(|_| Vec::new()).collect();
    let mut failures: Vec<String> = Vec::new();
    eprintln!(
        "{}: {caps}, one warm-up round then {rounds} rounds x {frames} frames",
        sinks.join(" vs ")
    );
    // `--only pwvideosink` (or pipewiresink, pwvideosink-rt): one column, e.g. under perf.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    // `--threads`: the producer's CPU per frame by thread, per round.
    let show_threads = args.iter().any(|a| a == "--threads");
    // The warm-up round runs each sink once and is not counted: the first pipeline of the
    // process pays one-off costs (plugin loading, the daemon's first buffers, clock ramp-up)
    // that would otherwise land on whichever sink runs first. Odd rounds run the sinks in
    // reverse order, so a drift in the machine's speed during a round favours neither side.
    for round in std::iter::once(None).chain((0..rounds).map(Some)) {
        let mut order: Vec<usize> = (0..sinks.len()).collect();
        if round.is_some_and(|r| r % 2 == 1) {
            order.reverse();
        }
        let label = round.map_or("warm-up".to_string(), |r| format!("round {r}"));
        for i in order {
            let sink = sinks[i];
            if only.is_some_and(|o| o != sink) {
                continue;
            }
            let node = format!("bench-{sink}-{label}").replace(' ', "-");
            match run_once(&caps, &session, sink, &node, frames) {
                Ok(r) => {
                    eprintln!(
                        "{label:>8} {sink:>16}: latency {:6.2} ms (p95 {:5.2})  cpu/frame producer {:7.1} us  \
                         consumer {:7.1} us  daemon {:6.1} us",
                        r.latency_ms, r.latency_p95_ms, r.producer_us, r.consumer_us, r.daemon_us
                    );
                    if show_threads {
                        for (thread, us) in &r.threads {
                            eprintln!("    {thread:>28}: {us:7.1} us per frame");
                        }
                    }
                    if round.is_some() {
                        results[i].push(r);
                    }
                }
                Err(e) => {
                    eprintln!("{label:>8} {sink:>16}: FAILED: {e}");
                    failures.push(e);
                }
            }
        }
    }

    let med = |rs: &[RunResult], f: Metric| {
        let mut v: Vec<f64> = rs.iter().map(f).collect();
        Some(median(&mut v)).filter(|m| m.is_finite())
    };
    let metrics: [(&str, Metric); 6] = [
        ("latency (ms)", |r| r.latency_ms),
        ("latency p95 (ms)", |r| r.latency_p95_ms),
        ("producer CPU per frame (us)", |r| r.producer_us),
        ("consumer CPU per frame (us)", |r| r.consumer_us),
        ("daemon CPU per frame (us)", |r| r.daemon_us),
        ("total CPU per frame (us)", |r| {
            r.producer_us + r.consumer_us + r.daemon_us
        }),
    ];
    let names = [
        "pwvideosink",
        "pipewiresink mode=provide",
        "pwvideosink realtime=true",
    ];
    let mut report = Report::new(
        format!("pwvideosink -> pipewiresrc: {caps}, {frames} frames"),
        rounds,
        &names[..sinks.len()],
    );
    for (name, f) in metrics {
        let cells: Vec<Option<f64>> = results.iter().map(|rs| med(rs, f)).collect();
        report.row(name, &cells);
    }
    report.note(format!(
        "runs ok (after one warm-up round of each, not counted): {}",
        names
            .iter()
            .zip(&results)
            .map(|(n, rs)| format!("{n} {}/{rounds}", rs.len()))
            .collect::<Vec<_>>()
            .join(", ")
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
