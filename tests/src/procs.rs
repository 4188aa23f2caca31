//! Processes seen through `/proc`: what a script started, and whether all of it is gone.

use std::collections::{HashMap, HashSet};

/// (pid, ppid, state) of every process.
pub fn processes() -> Vec<(u32, u32, char)> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..." — comm may contain spaces and parentheses.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = rest.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        v.push((pid, ppid, state));
    }
    v
}

/// The program a process runs: the file name of its argv[0] (comm is cut at 15 characters).
pub fn program(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    argv0.rsplit('/').next().unwrap_or_default().to_owned()
}

/// Every living (not zombie) descendant of `root`, with its program name.
pub fn descendants(root: u32) -> HashMap<u32, String> {
    let procs = processes();
    let mut found = HashMap::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, state) in &procs {
            if *ppid == parent && *state != 'Z' && !found.contains_key(pid) {
                found.insert(*pid, program(*pid));
                frontier.push(*pid);
            }
        }
    }
    found
}

/// Living (not zombie) processes among `pids`, with their program names.
pub fn still_alive(pids: &HashSet<u32>) -> Vec<(u32, String)> {
    processes()
        .into_iter()
        .filter(|(pid, _, state)| pids.contains(pid) && *state != 'Z')
        .map(|(pid, _, _)| (pid, program(pid)))
        .collect()
}

/// Kills (SIGKILL) whatever of these pids is still alive when a test fails half-way.
pub struct KillOnDrop(pub HashSet<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: kill(2) on pids the test saw as descendants of its own child.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
    }
}
