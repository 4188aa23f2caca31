// SPDX-License-Identifier: MPL-2.0
//! Helpers shared by the surface tests: gst-launch writers/readers, the Python reader with its
//! JSON output streamed line by line, in-process pipelines with bounded waits.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gst::prelude::*;
use vcambridge_tests::{ChildGuard, gst_command, init_gst, python, wait_for};

pub const CAPS: &str = "video/x-raw,format=BGRx,width=64,height=48,framerate=30/1";
pub const FRAME_BYTES: usize = 64 * 48 * 4;

pub fn init() {
    init_gst();
}

pub fn reader_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/surface_reader.py")
}

/// A unique directory for one test's socket.
pub fn sock_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("surf")
        .tempdir()
        .expect("tempdir");
    let path = dir.path().join("s.sock");
    (dir, path)
}

/// `gst-launch-1.0 <src> ! CAPS ! surfacesink socket-path=… <props>` as a child process.
pub fn gst_writer(sock: &Path, src: &str, props: &str) -> ChildGuard {
    let desc = format!(
        "{src} ! {CAPS} ! surfacesink socket-path={} {props}",
        sock.display()
    );
    let mut cmd = gst_command("gst-launch-1.0");
    cmd.args(desc.split_whitespace());
    ChildGuard::spawn("gst-launch writer", &mut cmd)
}

/// A child process whose stdout lines arrive on a channel as they are written.
pub struct LineChild {
    pub guard: ChildGuard,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl LineChild {
    pub fn spawn(name: &str, cmd: &mut Command) -> LineChild {
        let mut guard = ChildGuard::spawn(name, cmd);
        let stdout = guard
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LineChild {
            guard,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Wait (bounded) for a line matching `pred`; returns it.
    pub fn wait_line(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "{}: timed out after {timeout:?} waiting for {what}; output so far:\n{}",
                    self.guard.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Wait for exit (bounded) and return (status ok, all stdout lines as JSON).
    pub fn finish(
        mut self,
        timeout: Duration,
    ) -> (std::process::ExitStatus, Vec<serde_json::Value>, String) {
        let name = self.guard.name.clone();
        let out = std::mem::replace(
            &mut self.guard,
            ChildGuard {
                name: name.clone(),
                child: None,
            },
        )
        .wait_output(timeout);
        // The reader thread ends at EOF; collect what is left.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        let json = self
            .seen
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (
            out.status,
            json,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl LineChild {
    /// [`LineChild::finish`], asserting the process succeeded; returns its JSON lines.
    pub fn finish_ok(self, timeout: Duration) -> Vec<serde_json::Value> {
        let name = self.guard.name.clone();
        let (status, json, stderr) = self.finish(timeout);
        assert!(status.success(), "{name} failed: {stderr}");
        json
    }

    /// [`LineChild::finish`], asserting the process exited with `code`; returns the `error` it
    /// reported (empty if none).
    pub fn finish_error(self, timeout: Duration, code: i32, what: &str) -> String {
        let (status, json, stderr) = self.finish(timeout);
        assert_eq!(status.code(), Some(code), "{what}: {stderr}");
        error_of(&json)
    }
}

/// The first `error` a JSON-speaking child reported (empty if none).
pub fn error_of(json: &[serde_json::Value]) -> String {
    json.iter()
        .find_map(|v| v.get("error").and_then(|e| e.as_str()))
        .unwrap_or_default()
        .to_string()
}

/// Wait (bounded) for a gst-launch child to end and assert it succeeded.
pub fn assert_exits_ok(child: ChildGuard, timeout: Duration) {
    let name = child.name.clone();
    let out = child.wait_output(timeout);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python reader (`python/surface_reader.py`) on `sock` with extra arguments.
pub fn py_reader(sock: &Path, args: &[&str]) -> LineChild {
    let mut cmd = Command::new(python());
    cmd.arg(reader_script()).arg(sock).args(args);
    LineChild::spawn("python surface_reader", &mut cmd)
}

pub fn frames_of(json: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    json.iter().filter(|v| v.get("seq").is_some()).collect()
}

/// The sequence numbers of the frames a Python reader printed.
pub fn seqs_of(json: &[serde_json::Value]) -> Vec<u64> {
    frames_of(json)
        .iter()
        .map(|f| f["seq"].as_u64().expect("seq"))
        .collect()
}

/// An in-process pipeline with a bus we can check.
pub struct Pipe {
    pub pipeline: gst::Pipeline,
}

impl Pipe {
    pub fn launch(desc: &str) -> Pipe {
        init();
        let pipeline = vcambridge_tests::launch_pipeline(desc);
        Pipe { pipeline }
    }

    pub fn by_name(&self, name: &str) -> gst::Element {
        self.pipeline.by_name(name).expect("named element")
    }

    pub fn set(&self, state: gst::State) {
        let _ = self.pipeline.set_state(state);
    }

    pub fn appsink(&self, name: &str) -> gst_app::AppSink {
        self.by_name(name)
            .downcast::<gst_app::AppSink>()
            .expect("appsink")
    }

    pub fn appsrc(&self, name: &str) -> gst_app::AppSrc {
        self.by_name(name)
            .downcast::<gst_app::AppSrc>()
            .expect("appsrc")
    }

    /// `<upstream> ! surfacesink name=sink socket-path=<sock> <props>`, not started.
    pub fn writer(upstream: &str, sock: &Path, props: &str) -> Pipe {
        Pipe::launch(&format!(
            "{upstream} ! surfacesink name=sink socket-path={} {props}",
            sock.display()
        ))
    }

    /// `appsrc name=src format=time <src_props> ! surfacesink name=sink socket-path=<sock>
    /// <sink_props>`, PLAYING; returns the pipeline, its appsrc and its sink.
    pub fn appsrc_writer(
        sock: &Path,
        src_props: &str,
        sink_props: &str,
    ) -> (Pipe, gst_app::AppSrc, gst::Element) {
        let p = Pipe::writer(
            &format!("appsrc name=src format=time {src_props}"),
            sock,
            sink_props,
        );
        let (src, sink) = (p.appsrc("src"), p.by_name("sink"));
        p.set(gst::State::Playing);
        (p, src, sink)
    }

    /// `surfacesrc name=src socket-path=<sock> <props> ! appsink name=sink sync=false`, PLAYING.
    pub fn reader(sock: &Path, props: &str) -> Pipe {
        let p = Pipe::launch(&format!(
            "surfacesrc name=src socket-path={} {props} ! appsink name=sink sync=false",
            sock.display()
        ));
        p.set(gst::State::Playing);
        p
    }

    /// Start a [`Pipe::writer`] once its sink has `n` readers (spawned by `readers` while the
    /// pipeline waits in PAUSED), so none of them misses a frame.
    pub fn play_with_readers<T>(&self, n: u64, readers: impl FnOnce() -> T) -> T {
        self.set(gst::State::Paused);
        let r = readers();
        wait_readers(&self.by_name("sink"), n);
        self.set(gst::State::Playing);
        r
    }

    /// The first error on the bus, if any (non-blocking).
    pub fn error(&self) -> Option<String> {
        let bus = self.pipeline.bus().expect("bus");
        while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(e) = msg.view() {
                return Some(format!("{} ({:?})", e.error(), e.debug()));
            }
        }
        None
    }

    /// Wait (bounded) for EOS or an error; returns Err(error text) on error.
    pub fn wait_eos(&self, timeout: Duration) -> Result<(), String> {
        let bus = self.pipeline.bus().expect("bus");
        match bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) {
            Some(msg) => match msg.view() {
                gst::MessageView::Eos(_) => Ok(()),
                gst::MessageView::Error(e) => Err(format!("{} ({:?})", e.error(), e.debug())),
                _ => unreachable!(),
            },
            None => panic!("no EOS or error within {timeout:?}"),
        }
    }

    /// Wait (bounded) for an error message; returns its text.
    pub fn wait_error(&self, timeout: Duration) -> String {
        let bus = self.pipeline.bus().expect("bus");
        match bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(timeout.as_nanos() as u64),
            &[gst::MessageType::Error],
        ) {
            Some(msg) => match msg.view() {
                gst::MessageView::Error(e) => format!("{} ({:?})", e.error(), e.debug()),
                _ => unreachable!(),
            },
            None => panic!("no error within {timeout:?}"),
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// A `u64` field of a sink's `stats`.
pub fn stat(sink: &gst::Element, field: &str) -> u64 {
    let s = sink.property::<gst::Structure>("stats");
    s.get::<u64>(field).expect("stats field")
}

/// Wait until the surfacesink has `n` ready readers.
pub fn wait_readers(sink: &gst::Element, n: u64) {
    wait_for(Duration::from_secs(10), &format!("{n} readers"), || {
        (stat(sink, "readers") == n).then_some(())
    });
}

/// The first `n` frames of `videotestsrc pattern=<pattern>` in [`CAPS`], made locally for
/// comparison (videotestsrc is deterministic, including the noise patch of `smpte`).
pub fn reference_frames(pattern: &str, n: usize) -> Vec<Vec<u8>> {
    let p = Pipe::launch(&format!(
        "videotestsrc pattern={pattern} num-buffers={n} ! {CAPS} ! appsink name=sink sync=false"
    ));
    let sink = p.appsink("sink");
    p.set(gst::State::Playing);
    let got = pull(&sink, n, Duration::from_secs(10));
    assert_eq!(got.len(), n, "reference frames");
    got.into_iter().map(|g| g.data).collect()
}

/// A received frame, copied out so the surface goes back to the writer at once.
#[derive(Debug, Clone)]
pub struct Got {
    pub pts: Option<gst::ClockTime>,
    pub caps: gst::Caps,
    pub data: Vec<u8>,
    pub offset: u64,
    pub discont: bool,
}

/// Pull samples from an appsink until EOS or `n` samples, bounded by `timeout`.
pub fn pull(sink: &gst_app::AppSink, n: usize, timeout: Duration) -> Vec<Got> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline && !sink.is_eos() {
        if let Some(s) = sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) {
            let buf = s.buffer().expect("buffer");
            out.push(Got {
                pts: buf.pts(),
                caps: s.caps().expect("caps").to_owned(),
                data: buf.map_readable().expect("map").as_slice().to_vec(),
                offset: buf.offset(),
                discont: buf.flags().contains(gst::BufferFlags::DISCONT),
            });
        }
    }
    out
}
