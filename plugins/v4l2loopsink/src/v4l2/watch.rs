// SPDX-License-Identifier: MPL-2.0
//! Waiting on a device node instead of polling it with sleeps: inotify tells when a writer
//! closes the node (the moment v4l2loopback offers output again) or when the node appears
//! (udev after `V4L2LOOPBACK_CTL_ADD`). Every wait is bounded by its caller's deadline.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// An inotify watch on one path (a device node, or the directory a node appears in).
pub(super) struct NodeWatch {
    inotify: Inotify,
}

impl NodeWatch {
    /// Watches `path` for `flags`; `None` if inotify is unavailable (callers then recheck on
    /// their fallback interval).
    pub(super) fn new(path: &Path, flags: AddWatchFlags) -> Option<NodeWatch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        inotify.add_watch(path, flags).ok()?;
        Some(NodeWatch { inotify })
    }

    /// Drops the events seen so far (e.g. those our own probe caused).
    pub(super) fn drain(&self) {
        while matches!(self.inotify.read_events(), Ok(ev) if !ev.is_empty()) {}
    }

    /// Waits until an event arrives or `timeout` passes; true if an event arrived.
    pub(super) fn wait(&self, timeout: Duration) -> bool {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        let ready = matches!(poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)), Ok(n) if n > 0);
        self.drain();
        ready
    }
}

/// Waits (≤ `timeout`) until `path` exists, woken by inotify on its directory; rechecks every
/// 100 ms should an event be missed. True if it exists.
pub fn wait_for_node(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let watch = path
        .parent()
        .and_then(|dir| NodeWatch::new(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_ATTRIB));
    loop {
        if path.exists() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let step = left.min(Duration::from_millis(100));
        match &watch {
            Some(w) => {
                w.wait(step);
            }
            // No inotify: the bounded recheck is all there is.
            None => std::thread::sleep(step),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_created_meanwhile_wakes_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = dir.path().join("video42");
        let n = node.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(n, b"").expect("create");
        });
        let start = Instant::now();
        assert!(wait_for_node(&node, Duration::from_secs(5)));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        t.join().expect("join");
        assert!(!wait_for_node(
            &dir.path().join("absent"),
            Duration::from_millis(150)
        ));
    }
}
