//! Benchmark, not a test: every function here is `#[ignore]`; run it with
//! `plugins/rtmpflvsrc/bench/run.sh` (release build, one thread).
//!
//! In one run, alternating, it compares
//!   A: ffmpeg → rtmpflvsrc → decodebin → appsink
//!   B: ffmpeg → nginx-rtmp (libnginx-mod-rtmp) → rtmp2src ! flvdemux → decodebin → appsink
//! on glass-to-glass latency (the frame index is painted into each raw frame as black/white
//! blocks; latency = decoded-frame arrival − the moment the raw frame was handed to ffmpeg),
//! CPU (this process, which holds the receiving pipeline; nginx's own CPU is added for B), and
//! ingest throughput (a pre-encoded high-bitrate file published as fast as possible).

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{COUNT_ONLY, Options, Receiver};
use gst_video::prelude::*;
use vcambridge_tests::ChildGuard;
use vcambridge_tests::bench::{Report, median};
use vcambridge_tests::rtmp::{FfmpegPublisher, Nginx, nginx_missing, process_cpu_time};

/// The latency runs' frame size: BENCH_SIZE=WxH (default 320x240; at least 320x120).
fn frame_size() -> (usize, usize) {
    std::env::var("BENCH_SIZE")
        .ok()
        .and_then(|v| {
            let (w, h) = v.split_once('x')?;
            Some((w.parse().ok()?, h.parse().ok()?))
        })
        .filter(|&(w, h)| w >= 8 * BLOCK && h >= 3 * BLOCK)
        .unwrap_or((320, 240))
}
const BLOCK: usize = 40;

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Paint frame `index` (16 bits + an 8-bit check) as 3 rows of 8 blocks into a GRAY8 frame.
fn paint(frame: &mut [u8], width: usize, index: u32) {
    let lo = index as u8;
    let hi = (index >> 8) as u8;
    let rows = [lo, hi, lo ^ hi ^ 0xA5];
    frame.fill(128);
    for (r, byte) in rows.iter().enumerate() {
        for bit in 0..8 {
            let v = if byte & (1 << bit) != 0 { 235 } else { 16 };
            for y in r * BLOCK..(r + 1) * BLOCK {
                let start = y * width + bit * BLOCK;
                frame[start..start + BLOCK].fill(v);
            }
        }
    }
}

/// Read the index back from a decoded RGB frame (None if the check byte does not match).
fn read_marker(frame: &gst_video::VideoFrameRef<&gst::BufferRef>) -> Option<u32> {
    let stride = frame.info().stride()[0] as usize;
    let data = frame.plane_data(0).ok()?;
    let mut rows = [0u8; 3];
    for (r, row) in rows.iter_mut().enumerate() {
        for bit in 0..8 {
            let y = r * BLOCK + BLOCK / 2;
            let x = bit * BLOCK + BLOCK / 2;
            let off = y * stride + x * 3;
            let luma = (data[off] as u32 + data[off + 1] as u32 + data[off + 2] as u32) / 3;
            if luma > 128 {
                *row |= 1 << bit;
            }
        }
    }
    (rows[2] == rows[0] ^ rows[1] ^ 0xA5).then_some(rows[0] as u32 | (rows[1] as u32) << 8)
}

/// A paced raw-video publisher: GRAY8 frames with painted indices into ffmpeg's stdin.
fn publish_paced(url: &str, frames: u32, rate: u32) -> Vec<Instant> {
    let (width, height) = frame_size();
    let mut child = vcambridge_tests::ffmpeg()
        .args(["-f", "rawvideo", "-pix_fmt", "gray"])
        .args([
            "-s",
            &format!("{width}x{height}"),
            "-r",
            &rate.to_string(),
            "-i",
            "-",
        ])
        .args(vcambridge_tests::X264_LOW_LATENCY)
        .args(["-pix_fmt", "yuv420p", "-g", &rate.to_string()])
        .args(["-f", "flv", "-flvflags", "no_duration_filesize", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ffmpeg");
    let mut stdin = child.stdin.take().expect("ffmpeg stdin");
    let mut frame = vec![0u8; width * height];
    let mut sent = Vec::with_capacity(frames as usize);
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    for i in 0..frames {
        let due = start + period * i;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        paint(&mut frame, width, i);
        if stdin.write_all(&frame).is_err() {
            break;
        }
        sent.push(Instant::now());
    }
    drop(stdin);
    let guard = ChildGuard {
        name: "ffmpeg paced publisher".into(),
        child: Some(child),
    };
    let out = guard.wait_output(Duration::from_secs(30));
    assert!(out.status.success(), "paced ffmpeg publisher failed");
    sent
}

struct LatencyRun {
    latencies_ms: Vec<f64>,
    received: usize,
    cpu_ms_per_frame: f64,
    server_cpu_ms_per_frame: f64,
}

/// The decoder branches compared: what decodebin picks with its defaults (avdec_h264 may use
/// frame threads, i.e. hold frames, unless upstream is live), and a single-threaded avdec_h264
/// (no frame delay: isolates the transport).
const DECODERS: [(&str, &str); 2] = [
    ("decodebin", common::DECODE_RGB),
    (
        "avdec_h264 max-threads=1",
        "h264parse ! avdec_h264 max-threads=1 ! videoconvert ! video/x-raw,format=RGB \
         ! appsink name=vsink sync=false",
    ),
];

fn latency_run(nginx: Option<&Nginx>, decoder: &str, frames: u32, rate: u32) -> LatencyRun {
    let mut opts = Options {
        marker: Some(read_marker),
        video_branch: decoder.to_string(),
        ..Options::default()
    };
    let url;
    if let Some(n) = nginx {
        opts.rtmp2src_url = Some(n.url("bench"));
    }
    let rx = Receiver::start(opts);
    match nginx {
        Some(n) => {
            url = n.url("bench");
            // Let rtmp2src connect and start playing before the publisher appears.
            std::thread::sleep(Duration::from_millis(1000));
        }
        None => url = rx.url("live", "bench"),
    }
    let me = std::process::id();
    let server_pid = nginx.map(|n| n.pid());
    let cpu0 = process_cpu_time(me);
    let scpu0 = server_pid.map(process_cpu_time).unwrap_or_default();
    let sent = publish_paced(&url, frames, rate);
    let want = sent.len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (n, last) = rx.check(|d| {
            (
                d.samples.len(),
                d.samples.last().and_then(|s| s.marker).unwrap_or(0),
            )
        });
        if n >= want || last as usize + 1 >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = process_cpu_time(me) - cpu0;
    let scpu = server_pid
        .map(|p| process_cpu_time(p) - scpu0)
        .unwrap_or_default();
    let (latencies_ms, received) = rx.check(|d| {
        let skip = rate as usize; // the first second: connection set-up, first GOP
        let l = d
            .samples
            .iter()
            .filter_map(|s| {
                let i = s.marker? as usize;
                (i >= skip && i < sent.len())
                    .then(|| s.arrival.saturating_duration_since(sent[i]).as_secs_f64() * 1e3)
            })
            .collect::<Vec<_>>();
        (l, d.samples.len())
    });
    rx.stop();
    LatencyRun {
        latencies_ms,
        received,
        cpu_ms_per_frame: cpu.as_secs_f64() * 1e3 / received.max(1) as f64,
        server_cpu_ms_per_frame: scpu.as_secs_f64() * 1e3 / received.max(1) as f64,
    }
}

/// Publish `file` (FLV) with `-c copy` as fast as possible; return (elementary bytes, seconds from
/// first to last buffer, video buffers).
fn throughput_run(nginx: Option<&Nginx>, file: &std::path::Path) -> (u64, f64, usize) {
    let mut opts = Options::default().video_branch(COUNT_ONLY);
    if let Some(n) = nginx {
        opts.rtmp2src_url = Some(n.url("tp"));
    }
    let rx = Receiver::start(opts);
    let url = match nginx {
        Some(n) => {
            std::thread::sleep(Duration::from_millis(1000));
            n.url("tp")
        }
        None => rx.url("live", "tp"),
    };
    let out = vcambridge_tests::run_with_timeout(
        "ffmpeg -c copy publisher",
        vcambridge_tests::ffmpeg()
            .arg("-i")
            .arg(file)
            .args(["-c", "copy", "-f", "flv", &url]),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Wait until nothing new arrives for 1 s.
    let mut last = (0usize, Instant::now());
    loop {
        let n = rx.check(|d| d.video.len());
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = rx.check(|d| {
        let bytes: u64 = d
            .video
            .iter()
            .chain(d.audio.iter())
            .map(|b| b.size as u64)
            .sum();
        let first = d.video.first().map(|b| b.arrival);
        let lastt = d.video.last().map(|b| b.arrival);
        let secs = match (first, lastt) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => f64::NAN,
        };
        (bytes, secs, d.video.len())
    });
    rx.stop();
    r
}

#[test]
#[ignore]
fn rtmp_bench() {
    if let Some(why) = nginx_missing() {
        panic!("the benchmark compares against nginx-rtmp: {why}");
    }
    common::init();
    let runs = env_u32("BENCH_RUNS", 3);
    let frames = env_u32("BENCH_FRAMES", 300);
    let rate = env_u32("BENCH_FPS", 30);
    let nginx = Nginx::start();
    // BENCH_ONLY=nginx|rtmpflvsrc runs one side (for debugging the harness).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let paths: Vec<(usize, Option<&Nginx>)> = [(0, None), (1, Some(&nginx))]
        .into_iter()
        .filter(|(k, _)| only.is_empty() || (only == "nginx") == (*k == 1))
        .collect();

    // [decoder][path]
    let mut lat = vec![[Vec::new(), Vec::new()]; DECODERS.len()];
    let mut run_medians = vec![[Vec::new(), Vec::new()]; DECODERS.len()];
    let mut cpu = vec![[Vec::new(), Vec::new()]; DECODERS.len()];
    let mut scpu = Vec::new();
    let mut lost = [0usize, 0usize];
    for run in 0..runs {
        for (d, (dname, branch)) in DECODERS.iter().enumerate() {
            for &(k, n) in &paths {
                let r = latency_run(n, branch, frames, rate);
                let mut l = r.latencies_ms.clone();
                let m = median(&mut l);
                eprintln!(
                    "run {run} {} / {dname}: {} frames decoded, median latency {m:.1} ms, \
                     CPU {:.2} ms/frame{}",
                    ["rtmpflvsrc", "nginx+rtmp2src"][k],
                    r.received,
                    r.cpu_ms_per_frame,
                    if k == 1 {
                        format!(" (+ nginx {:.2} ms/frame)", r.server_cpu_ms_per_frame)
                    } else {
                        String::new()
                    }
                );
                lost[k] += (frames as usize).saturating_sub(r.received);
                run_medians[d][k].push(m);
                lat[d][k].extend(r.latencies_ms);
                cpu[d][k].push(r.cpu_ms_per_frame);
                if k == 1 {
                    scpu.push(r.server_cpu_ms_per_frame);
                }
            }
        }
    }

    // Throughput: a high-bitrate 720p file, published with -c copy as fast as possible.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("highrate.flv");
    let out = vcambridge_tests::run_with_timeout(
        "ffmpeg (encode the high-bitrate file)",
        vcambridge_tests::ffmpeg()
            .args([
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=1280x720:rate=30",
                "-frames:v",
                "300",
            ])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-qp", "8"])
            .args(["-pix_fmt", "yuv420p", "-g", "30", "-f", "flv"])
            .arg(&file),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "encoding the high-bitrate file failed"
    );
    let file_mbit = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) as f64 * 8.0 / 1e6;
    let mut tput = [Vec::new(), Vec::new()];
    let mut tframes = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for &(k, n) in &paths {
            let (bytes, secs, vframes) = throughput_run(n, &file);
            tput[k].push(bytes as f64 * 8.0 / 1e6 / secs);
            tframes[k].push(vframes);
        }
    }

    let sm = median(&mut scpu);
    let tm = [median(&mut tput[0]), median(&mut tput[1])];
    let per_run = |v: &[f64]| {
        v.iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    let (w, h) = frame_size();
    let mut report = Report::new(
        format!(
            "rtmpflvsrc: ffmpeg publishes {frames} frames {w}x{h}@{rate} (x264 ultrafast \
             zerolatency), medians over all frames after the first second"
        ),
        runs as usize,
        &["rtmpflvsrc", "nginx-rtmp + rtmp2src"],
    );
    for (d, (dname, _)) in DECODERS.iter().enumerate() {
        let lm = [
            median(&mut lat[d][0].clone()),
            median(&mut lat[d][1].clone()),
        ];
        let cm = [median(&mut cpu[d][0]), median(&mut cpu[d][1])];
        report
            .row(
                format!("glass-to-glass latency, {dname} (ms)"),
                &[Some(lm[0]), Some(lm[1])],
            )
            .row(
                format!("receiver CPU incl. decode, {dname} (ms/frame)"),
                &[Some(cm[0]), Some(cm[1])],
            )
            .row(
                format!("receiver + nginx CPU, {dname} (ms/frame)"),
                &[Some(cm[0]), Some(cm[1] + sm)],
            )
            .note(format!(
                "{dname}: per-run latency medians {} / {} ms",
                per_run(&run_medians[d][0]),
                per_run(&run_medians[d][1])
            ));
    }
    report
        .row("ingest throughput (Mbit/s)", &[Some(tm[0]), Some(tm[1])])
        .row(
            "frames not decoded (all runs)",
            &[Some(lost[0] as f64), Some(lost[1] as f64)],
        )
        .note(format!(
            "throughput: a {file_mbit:.0} Mbit file (1280x720 x264 qp 8) sent with ffmpeg -c copy, \
             no -re; video frames received per run (of 300): {} / {}",
            per_run(&tframes[0].iter().map(|&v| v as f64).collect::<Vec<_>>()),
            per_run(&tframes[1].iter().map(|&v| v as f64).collect::<Vec<_>>())
        ));
    println!();
    report.print();
}

/// Harness self-check against the upstream peer: ffmpeg -> nginx-rtmp -> rtmp2src ! flvdemux.
#[test]
#[ignore]
fn harness_check_nginx() {
    let nginx = Nginx::start();
    let rx = Receiver::start(Options {
        rtmp2src_url: Some(nginx.url("k")),
        ..Options::default()
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut p = FfmpegPublisher::new(&nginx.url("k"), 60);
    p.realtime = true;
    let (ok, err) = p.run(Duration::from_secs(30));
    assert!(ok, "{err}");
    rx.wait(Duration::from_secs(10), "frames", |d| d.samples.len() >= 50);
    println!("{}", rx.summary());
}
