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
