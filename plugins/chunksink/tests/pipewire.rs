// SPDX-License-Identifier: MPL-2.0
//! chunksink and pipelines/audio-capture.sh against a real PipeWire graph: a private pipewire +
//! wireplumber (tests/src/pipewire.rs), null-audio-sinks fed a 1 kHz sine by `pw-play`, captured
//! from their monitors. Every wait is bounded.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{read_chunks, read_index, tempdir};
use vcambridge_tests::pipewire::PipeWireSession;
use vcambridge_tests::{ChildGuard, run_with_timeout, wait_for};

const RATE: u32 = 48000;
/// PipeWire's default quantum (frames per period) on these machines.
const PERIOD: i64 = 1024;

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn null_sink(s: &PipeWireSession, name: &str, description: &str) {
    let mut cmd = s.command("pw-cli");
    cmd.args([
        "create-node",
        "adapter",
        &format!(
            "{{ factory.name=support.null-audio-sink node.name={name} \
             node.description=\"{description}\" media.class=Audio/Sink object.linger=true \
             audio.position=[FL FR] }}"
        ),
    ]);
    let out = run_with_timeout("pw-cli create-node", &mut cmd, Duration::from_secs(10));
    assert!(out.status.success(), "{out:?}");
    s.wait_for_node(name, Duration::from_secs(10));
}

fn destroy_node(s: &PipeWireSession, name: &str) {
    let mut cmd = s.command("pw-cli");
    cmd.args(["destroy", name]);
    let out = run_with_timeout("pw-cli destroy", &mut cmd, Duration::from_secs(10));
    assert!(out.status.success(), "{out:?}");
}

/// A stereo S16 1 kHz sine of `seconds` as a WAV file.
fn sine_wav(path: &Path, seconds: u32) {
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.args([
        "-q",
        "audiotestsrc",
        "freq=1000",
        "volume=0.5",
        &format!("num-buffers={}", seconds * 50),
        "samplesperbuffer=960",
        "!",
        "audio/x-raw,format=S16LE,rate=48000,channels=2",
        "!",
        "wavenc",
        "!",
        "filesink",
        &format!("location={}", path.display()),
    ]);
    let out = run_with_timeout("sine wav", &mut cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{out:?}");
}

fn play(s: &PipeWireSession, target: &str, wav: &Path) -> ChildGuard {
    let mut cmd = s.command("pw-play");
    cmd.args(["--target", target]).arg(wav);
    ChildGuard::spawn("pw-play", &mut cmd)
}

/// `gst-launch-1.0 -e pipewiresrc (monitor of node) ! F32LE stereo ! chunksink` in a subprocess.
fn capture(s: &PipeWireSession, node: &str, dir: &Path, chunk_ns: u64) -> ChildGuard {
    let mut cmd = s.command("gst-launch-1.0");
    cmd.args(["-q", "-e", "pipewiresrc"])
        .arg(format!("target-object={node}"))
        .arg("stream-properties=p,stream.capture.sink=true")
        .args(["!", "audio/x-raw,format=F32LE,rate=48000,channels=2", "!"])
        .arg("chunksink")
        .arg(format!("directory={}", dir.display()))
        .arg(format!("chunk-duration={chunk_ns}"))
        .env_remove("G_DEBUG");
    ChildGuard::spawn("gst-launch-1.0 pipewiresrc ! chunksink", &mut cmd)
}

/// Left channel of interleaved F32 stereo.
fn left(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(8)
        .map(|f| f32::from_le_bytes(f[0..4].try_into().unwrap()))
        .collect()
}

/// Indices where a 1 kHz sine at 48 kHz breaks its recurrence
/// x[n] = 2 cos(w) x[n-1] - x[n-2] (a lost or repeated sample breaks it by ~0.05 at volume 0.5;
/// S16 quantization stays below 1e-4). The capture may start with a few periods of silence
/// before the sine reaches the monitor: that single onset (two zero samples before it, within
/// the first 0.5 s) is not a break.
fn phase_breaks(x: &[f32]) -> Vec<usize> {
    let c = 2.0 * (2.0 * std::f64::consts::PI * 1000.0 / f64::from(RATE)).cos();
    let onset = x.iter().position(|v| *v != 0.0).unwrap_or(0);
    assert!(
        onset < RATE as usize / 2,
        "the sine starts {onset} samples into the capture"
    );
    (2..x.len())
        .filter(|&n| n != onset && n != onset + 1)
        .filter(|&n| {
            let pred = c * f64::from(x[n - 1]) - f64::from(x[n - 2]);
            (f64::from(x[n]) - pred).abs() > 0.005
        })
        .collect()
}

fn session() -> Option<PipeWireSession> {
    if !vcambridge_tests::pipewire::available() {
        eprintln!(
            "SKIP: pipewire, wireplumber and dbus-daemon are needed (scripts/install-deps.sh)"
        );
        return None;
    }
    Some(PipeWireSession::start())
}

#[test]
fn ten_seconds_in_one_second_chunks_are_sample_exact() {
    let Some(s) = session() else { return };
    let work = tempdir();
    let wav = work.path().join("sine.wav");
    sine_wav(&wav, 16);
    null_sink(&s, "vcb_sine", "Sine test sink");
    let _player = play(&s, "vcb_sine", &wav);
    std::thread::sleep(Duration::from_millis(1000));
    let dir = work.path().join("chunks");
    std::fs::create_dir(&dir).unwrap();
    let cap = capture(&s, "vcb_sine", &dir, 1_000_000_000);
    wait_for(Duration::from_secs(25), "ten sealed 1 s chunks", || {
        (read_index(&dir).len() >= 10).then_some(())
    });
    cap.signal(libc::SIGINT);
    let out = cap.wait_output(Duration::from_secs(10));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let chunks = read_chunks(&dir);
    let index = read_index(&dir);
    assert_eq!(
        chunks.len(),
        index.len(),
        "no leftover pre-created chunk after EOS"
    );
    assert!(
        chunks.len() == 10 || chunks.len() == 11,
        "{} chunks",
        chunks.len()
    );
    for (c, l) in chunks.iter().take(10).zip(&index) {
        assert_eq!(c.wav.frames(), u64::from(RATE), "{}", c.path.display());
        assert_eq!(
            c.wav.sample_format(),
            Some(gstchunksink::wav::SampleFormat::F32)
        );
        assert_eq!(l["gaps"].as_array().unwrap().len(), 0, "{l}");
    }
    assert!(
        index
            .iter()
            .all(|l| l["gaps"].as_array().unwrap().is_empty())
    );
    // Sample count against the wall clock: 9 chunks between the first and the tenth seal.
    let t0 = index[0]["end_unix_time"].as_f64().unwrap();
    let t9 = index[9]["end_unix_time"].as_f64().unwrap();
    let expected = ((t9 - t0) * f64::from(RATE)).round() as i64;
    let got = 9 * i64::from(RATE);
    eprintln!(
        "9 chunks: {got} samples in {:.4} s (clock says {expected})",
        t9 - t0
    );
    assert!(
        (got - expected).abs() <= PERIOD + 480,
        "{got} samples vs {expected} expected from the wall clock"
    );
    // Phase continuous over the whole capture, chunk boundaries included.
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
    let x = left(&all);
    assert!(x.iter().any(|v| v.abs() > 0.4), "the sine is there");
    let breaks = phase_breaks(&x);
    let around: Vec<Vec<f32>> = breaks
        .iter()
        .map(|&n| x[n.saturating_sub(3)..(n + 2).min(x.len())].to_vec())
        .collect();
    assert!(
        breaks.is_empty(),
        "phase breaks at samples {breaks:?}: {around:?}"
    );
}

#[test]
fn sigkill_during_capture_leaves_parseable_chunks() {
    let Some(s) = session() else { return };
    let work = tempdir();
    let wav = work.path().join("sine.wav");
    sine_wav(&wav, 10);
    null_sink(&s, "vcb_kill", "Kill test sink");
    let _player = play(&s, "vcb_kill", &wav);
    std::thread::sleep(Duration::from_millis(500));
    let dir = work.path().join("chunks");
    std::fs::create_dir(&dir).unwrap();
    let cap = capture(&s, "vcb_kill", &dir, 500_000_000);
    wait_for(Duration::from_secs(20), "three sealed chunks", || {
        (read_index(&dir).len() >= 3).then_some(())
    });
    std::thread::sleep(Duration::from_millis(230));
    let killed_at = now_unix();
    cap.signal(libc::SIGKILL);
    let _ = cap.wait_output(Duration::from_secs(5));
    let chunks = read_chunks(&dir);
    let index = read_index(&dir);
    let last_sealed_end = index.last().unwrap()["end_unix_time"].as_f64().unwrap();
    let partial = &chunks[index.len()];
    let expected = ((killed_at - last_sealed_end) * f64::from(RATE)).round() as i64;
    let got = partial.wav.frames() as i64;
    eprintln!("partial chunk: {got} frames, {expected} expected at the kill");
    assert!(
        // The buffer that filled the previous chunk put its rest (< one period) in this one.
        (got - expected).abs() <= PERIOD + 480,
        "the chunk being written holds {got} frames, {expected} were captured before the kill"
    );
    let x = left(
        &chunks
            .iter()
            .flat_map(|c| c.data.clone())
            .collect::<Vec<u8>>(),
    );
    assert!(phase_breaks(&x).is_empty());
}

fn script(s: &PipeWireSession) -> Command {
    let mut cmd =
        Command::new(vcambridge_tests::workspace_root().join("pipelines/audio-capture.sh"));
    s.apply_env(&mut cmd);
    cmd.env("VCB_PLUGIN_DIR", vcambridge_tests::plugin_dir())
        .env_remove("G_DEBUG");
    cmd
}

#[test]
fn script_lists_captures_two_devices_and_survives_a_device_leaving() {
    let Some(s) = session() else { return };
    let work = tempdir();
    null_sink(&s, "vcb_alpha", "Alpha test sink");
    null_sink(&s, "vcb_bravo", "Bravo test sink");
    let mut list = script(&s);
    list.arg("--list");
    let out = run_with_timeout(
        "audio-capture.sh --list",
        &mut list,
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "vcb_alpha",
        "Alpha test sink",
        "vcb_bravo",
        "Bravo test sink",
        "monitor",
    ] {
        assert!(text.contains(want), "--list lacks {want}:\n{text}");
    }
    // Null sinks take any rate (they run at the graph's): said so, with their 2 channels.
    let alpha = text
        .lines()
        .find(|l| l.contains("vcb_alpha"))
        .expect("a vcb_alpha line");
    let cols: Vec<&str> = alpha.split_whitespace().collect();
    assert_eq!(cols.get(3..5), Some(&["any", "2"][..]), "{alpha}");

    let dir = work.path().join("rec");
    let log = work.path().join("capture.log");
    let mut cmd = script(&s);
    cmd.args([
        "--device",
        "vcb_alpha",
        "--device",
        "bravo",
        "--chunk-seconds",
        "0.5",
    ])
    .arg("--dir")
    .arg(&dir)
    .stdout(std::fs::File::create(&log).unwrap())
    .stderr(std::fs::File::create(work.path().join("capture.err")).unwrap());
    let cap = ChildGuard::spawn_inherit("audio-capture.sh", &mut cmd);
    let (a, b) = (dir.join("vcb_alpha"), dir.join("bravo"));
    wait_for(
        Duration::from_secs(20),
        "two chunks from each device",
        || (read_index(&a).len() >= 2 && read_index(&b).len() >= 2).then_some(()),
    );
    destroy_node(&s, "vcb_bravo");
    wait_for(Duration::from_secs(5), "the script to notice", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("vcb_bravo: stopped (device gone)")
            .then_some(())
    });
    let lines_at_loss = read_index(&b).len();
    assert_eq!(read_index(&b).last().unwrap()["sealed"], "stopped");
    std::thread::sleep(Duration::from_millis(800));
    let back = now_unix();
    null_sink(&s, "vcb_bravo", "Bravo test sink");
    wait_for(
        Duration::from_secs(10),
        "a chunk after the device returned",
        || (read_index(&b).len() > lines_at_loss).then_some(()),
    );
    let resumed = &read_index(&b)[lines_at_loss];
    let gaps = resumed["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{resumed}");
    assert_eq!(gaps[0]["reason"], "restart");
    let delay = resumed["unix_time"].as_f64().unwrap() - back;
    eprintln!("capture resumed {delay:.3} s after the node returned");
    assert!(delay < 1.0, "resumed {delay:.3} s after the node came back");

    let t = Instant::now();
    cap.signal(libc::SIGINT);
    let out = cap.wait_output(Duration::from_secs(5));
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "exit {:?}; stderr:\n{}\nstdout:\n{}",
        out.status,
        std::fs::read_to_string(work.path().join("capture.err")).unwrap_or_default(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    for d in [&a, &b] {
        let chunks = read_chunks(d);
        let index = read_index(d);
        assert_eq!(chunks.len(), index.len(), "{}", d.display());
        assert_eq!(index.last().unwrap()["sealed"], "stopped");
    }
}

/// `--wait`: a device named before it exists is captured as soon as it appears; without
/// `--wait` the same command fails at once, naming the query and the way out.
#[test]
fn script_waits_for_a_device_that_appears_later() {
    let Some(s) = session() else { return };
    let work = tempdir();
    let dir = work.path().join("rec");

    let mut now = script(&s);
    now.args(["--device", "vcb_late"]).arg("--dir").arg(&dir);
    let out = run_with_timeout(
        "audio-capture.sh (no --wait)",
        &mut now,
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail without --wait:\n{err}");
    assert!(
        err.contains("no capture device matches 'vcb_late'") && err.contains("--wait"),
        "{err}"
    );

    let log = work.path().join("capture.log");
    let mut cmd = script(&s);
    cmd.args(["--device", "vcb_late", "--wait", "--chunk-seconds", "0.5"])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(work.path().join("capture.err")).unwrap());
    let cap = ChildGuard::spawn_inherit("audio-capture.sh --wait", &mut cmd);
    wait_for(Duration::from_secs(10), "the script to wait", || {
        let text = std::fs::read_to_string(work.path().join("capture.err")).unwrap_or_default()
            + &std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("waiting for a device matching 'vcb_late'")
            .then_some(())
    });
    let appeared = now_unix();
    null_sink(&s, "vcb_late", "Late test sink");
    // One device: its chunks go straight into --dir.
    let late = dir.clone();
    wait_for(
        Duration::from_secs(10),
        "two chunks from the late device",
        || (read_index(&late).len() >= 2).then_some(()),
    );
    let first = &read_index(&late)[0];
    // unix_time: wall clock of the chunk's first sample.
    let delay = first["unix_time"].as_f64().unwrap() - appeared;
    eprintln!("capture started {delay:.3} s after the device appeared");
    assert!(
        delay < 1.0,
        "capture started {delay:.3} s after the device appeared"
    );
    cap.signal(libc::SIGINT);
    let out = cap.wait_output(Duration::from_secs(5));
    assert!(out.status.success(), "exit {:?}", out.status);
    assert_eq!(read_chunks(&late).len(), read_index(&late).len());
}
