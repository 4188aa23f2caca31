//! Test harness helpers for the ipc area (shmring, surface): unique shm names that are removed
//! when a test ends, the shmring Python module, gst-launch and raw-frame file helpers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{gst_command, python, workspace_root};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A POSIX shm name unique to this test process and call, removed (with its `/dev/shm` file)
/// when dropped.
pub struct ShmName {
    pub name: String,
}

impl ShmName {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("/vcb-test-{tag}-{}-{n}", std::process::id());
        let s = ShmName { name };
        s.remove();
        s
    }

    /// `/dev/shm/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/shm{}", self.name))
    }

    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(self.path());
    }
}

impl Drop for ShmName {
    fn drop(&mut self) {
        self.remove();
    }
}

impl std::fmt::Display for ShmName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// The directory holding the stdlib-only `shmring.py`.
pub fn shmring_python_dir() -> PathBuf {
    workspace_root().join("plugins/shmring/python")
}

/// `python -c <script>` with `shmring` importable.
pub fn shmring_python(script: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.env("PYTHONPATH", shmring_python_dir())
        .env("PYTHONUNBUFFERED", "1")
        .arg("-c")
        .arg(script);
    cmd
}

/// `python shmring.py <args>` (the module's command line: `read`, `info`).
pub fn shmring_cli(args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.env("PYTHONUNBUFFERED", "1")
        .arg(shmring_python_dir().join("shmring.py"))
        .args(args);
    cmd
}

/// `gst-launch-1.0 <args>` with our plugins on the path (`args` split on whitespace; use
/// [`gst_launch_args`] for arguments containing spaces).
pub fn gst_launch(pipeline: &str) -> Command {
    let args: Vec<&str> = pipeline.split_whitespace().collect();
    gst_launch_args(&args)
}

/// `gst-launch-1.0` with explicit arguments.
pub fn gst_launch_args(args: &[&str]) -> Command {
    let mut cmd = gst_command("gst-launch-1.0");
    cmd.args(args);
    cmd
}

/// Split a raw file into frames of `frame_size` bytes (panics if it is not a whole number).
pub fn read_frames(path: &Path, frame_size: usize) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(
        data.len() % frame_size,
        0,
        "{} holds {} bytes, not a whole number of {frame_size}-byte frames",
        path.display(),
        data.len()
    );
    data.chunks(frame_size).map(|c| c.to_vec()).collect()
}

/// The last line of `out` that parses as JSON (the shmring CLI's summary).
pub fn last_json(out: &[u8]) -> serde_json::Value {
    String::from_utf8_lossy(out)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line in:\n{}", String::from_utf8_lossy(out)))
}

/// Spawn `cmd` with stdout and stderr appended to `log` (read it while the process runs with
/// [`wait_for_log`]; stdin is null).
pub fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> crate::ChildGuard {
    let out = std::fs::File::create(log)
        .unwrap_or_else(|e| panic!("creating log {}: {e}", log.display()));
    let err = out.try_clone().expect("clone log file handle");
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
    crate::ChildGuard {
        name: name.to_string(),
        child: Some(child),
    }
}

/// Wait (bounded) until `log` contains `needle`; returns the log text.
pub fn wait_for_log(log: &Path, needle: &str, timeout: std::time::Duration) -> String {
    let mut last = String::new();
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::wait_for(timeout, &format!("{needle:?} in {}", log.display()), || {
            last = std::fs::read_to_string(log).unwrap_or_default();
            last.contains(needle).then(|| last.clone())
        })
    }));
    match found {
        Ok(s) => s,
        Err(_) => panic!(
            "timed out after {timeout:?} waiting for {needle:?} in {}; it holds:\n{last}",
            log.display()
        ),
    }
}
