//! The README's main-job command, `pipelines/rtmp-camera.sh --demo`, as a user runs it: it stops
//! by itself after `--demo-seconds`, and one SIGINT stops it and everything it started within
//! 2 s. Needs the debug build of the plugins (`cargo build --workspace`).

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vcambridge_tests::procs::{KillOnDrop, descendants, still_alive};
use vcambridge_tests::{ChildGuard, wait_for, workspace_root};

/// The main job in terminal mode on a free port, its output in `log`.
fn main_job(extra: &[&str], log: &Path) -> ChildGuard {
    let out = File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut cmd = Command::new(workspace_root().join("pipelines/rtmp-camera.sh"));
    cmd.args(["--demo", "--sink", "terminal", "--no-build", "--port", "0"])
        .args([
            "--profile",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        ])
        .args(extra)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    ChildGuard::spawn_inherit("rtmp-camera.sh", &mut cmd)
}

fn frames_shown(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("[vcambridge] frames "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn one_sigint_stops_the_job_and_everything_it_started_within_2s() {
    vcambridge_tests::assert_plugin_built("rtmpflvsrc");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("main-job.log");
    let mut job = main_job(&[], &log);
    let script = job.pid();
    wait_for(
        Duration::from_secs(90),
        "decoded frames on the terminal",
        || {
            assert!(
                job.try_status().is_none(),
                "the main job exited early:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            (frames_shown(&log) > 0).then_some(())
        },
    );
    let started = descendants(script);
    let names: HashSet<&str> = started.values().map(String::as_str).collect();
    assert!(
        names.contains("gst-launch-1.0") && names.contains("ffmpeg"),
        "the job's processes: {started:?}"
    );
    let pids: HashSet<u32> = started.keys().copied().collect();
    let _cleanup = KillOnDrop(pids.clone());

    let t0 = Instant::now();
    job.signal(libc::SIGINT);
    let status = wait_for(
        Duration::from_secs(2),
        "the script to exit after SIGINT",
        || job.try_status(),
    );
    let left = wait_for(
        Duration::from_secs(2),
        "every started process to end",
        || {
            let left = still_alive(&pids);
            (left.is_empty() || t0.elapsed() > Duration::from_secs(2)).then_some(left)
        },
    );
    let took = t0.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        left.is_empty(),
        "still running {took:?} after SIGINT: {left:?}\n{text}"
    );
    assert!(
        status.success(),
        "exit status {status:?} after SIGINT:\n{text}"
    );
    assert!(
        !text.contains("did not stop after EOS"),
        "the pipeline had to be killed instead of ending on EOS:\n{text}"
    );
    println!(
        "stopped {} processes ({names:?}) {took:?} after SIGINT; {} frames shown",
        pids.len(),
        frames_shown(&log)
    );
}

#[test]
fn demo_seconds_ends_the_job_by_itself() {
    vcambridge_tests::assert_plugin_built("rtmpflvsrc");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("main-job.log");
    let t0 = Instant::now();
    let job = main_job(&["--demo-seconds", "4"], &log);
    let out = job.wait_output(Duration::from_secs(60));
    let took = t0.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "exit status {:?}:\n{text}",
        out.status
    );
    assert!(frames_shown(&log) > 0, "no frames shown:\n{text}");
    assert!(
        text.contains("publisher finished after 4s") && !text.contains("did not stop after EOS"),
        "the job did not end through EOS:\n{text}"
    );
    println!("--demo-seconds 4 ended by itself after {took:?}");
}

/// Bad option values are refused at once with exit status 2 and a message that names the
/// option, the value given and what is accepted — before anything is installed, built or
/// started (no pipeline parse error, no camera nobody can open).
#[test]
fn bad_option_values_are_refused_before_anything_starts() {
    let cases: [(&[&str], &str); 12] = [
        (
            &["--fps", "abc"],
            "--fps must be a whole number of frames per second from 1 to 1000, got 'abc'",
        ),
        (
            &["--fps", "0"],
            "--fps must be a whole number of frames per second from 1 to 1000, got '0'",
        ),
        (&["--fps", "1001"], "got '1001'"),
        (&["--fps"], "--fps needs a value"),
        (
            &["--size", "1280"],
            "--size must be WIDTHxHEIGHT (e.g. 1280x720), got '1280'",
        ),
        (
            &["--size", "641x480"],
            "--size must be even WIDTHxHEIGHT from 2x2 to 16384x16384, got '641x480'",
        ),
        (
            &["--port", "70000"],
            "--port must be a TCP port from 0 (any free one) to 65535, got '70000'",
        ),
        (
            &["--latency", "-5"],
            "--latency must be milliseconds from 0 to 60000, got '-5'",
        ),
        (
            &["--demo-seconds", "soon"],
            "--demo-seconds must be a whole number of seconds",
        ),
        (
            &["--sink", "hdmi"],
            "--sink must be auto, v4l2, pipewire, window or terminal, got 'hdmi'",
        ),
        (
            &["--profile", "fast"],
            "--profile must be release or debug, got 'fast'",
        ),
        (&["--latency"], "--latency needs a value"),
    ];
    for (args, expected) in cases {
        let mut cmd = Command::new(workspace_root().join("pipelines/rtmp-camera.sh"));
        cmd.args(args);
        let out =
            vcambridge_tests::run_with_timeout("rtmp-camera.sh", &mut cmd, Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
        assert!(stderr.contains("see --help"), "{args:?}: {stderr}");
        // Refused before the install/build step (which prints its own lines and takes seconds).
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: more than the refusal:\n{stderr}"
        );
    }
}
