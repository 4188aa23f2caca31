// SPDX-License-Identifier: MPL-2.0
//! Helpers shared by the shmring tests: one test's ring name and scratch directory, processes
//! logging to a file, the Python reader, gst-launch writers, an in-process `shmringsrc ! appsink`
//! reader and an `appsrc ! shmringsink` writer, each with bounded waits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstshmring::shm::Segment;
use vcambridge_tests::ipc::{ShmName, gst_launch, shmring_cli, spawn_logged, wait_for_log};
use vcambridge_tests::{ChildGuard, init_gst, wait_for};

pub const W: usize = 160;
pub const H: usize = 120;
pub const FRAME: usize = W * H * 4;
pub const CAPS: &str = "video/x-raw,format=BGRx,width=160,height=120,framerate=30/1";
pub const LONG: Duration = Duration::from_secs(60);

/// One test's ring name and scratch directory; making it checks the plugin is built and
/// initialises GStreamer.
pub struct Case {
    pub shm: ShmName,
    dir: tempfile::TempDir,
}

impl Case {
    pub fn new(tag: &str) -> Case {
        vcambridge_tests::assert_plugin_built("shmring");
        init_gst();
        Case {
            shm: ShmName::new(tag),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `name` in the scratch directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A child process whose stdout and stderr go to a log file.
pub struct Logged {
    guard: ChildGuard,
    pub log: PathBuf,
}

impl Logged {
    /// Spawn `cmd` logging to `log_name` in the case's directory.
    pub fn spawn(case: &Case, name: &str, log_name: &str, cmd: &mut Command) -> Logged {
        let log = case.file(log_name);
        Logged {
            guard: spawn_logged(name, cmd, &log),
            log,
        }
    }

    /// Wait (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        wait_for_log(&self.log, needle, LONG)
    }

    /// Wait (bounded) for the process to exit, assert it succeeded and return its log.
    pub fn finish(self) -> String {
        let name = self.guard.name.clone();
        let out = self.guard.wait_output(LONG);
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(out.status.success(), "{name} failed:\n{text}");
        text
    }
}

/// A Python reader (`shmring.py read`) copying every frame of the case's ring into `out`,
/// logging to `py.log`; it is already waiting for the writer when this returns.
pub fn waiting_python_reader(case: &Case, out: &Path) -> Logged {
    waiting_python_reader_of(case, &case.shm.name, out)
}

/// [`waiting_python_reader`] of the ring called `name` (spelled as the test wants it).
pub fn waiting_python_reader_of(case: &Case, name: &str, out: &Path) -> Logged {
    let out = out.display().to_string();
    let reader = Logged::spawn(
        case,
        "python reader",
        "py.log",
        &mut shmring_cli(&["read", name, "--out", &out, "--timeout", "20"]),
    );
    reader.wait_log(r#"{"waiting": true}"#);
    reader
}

/// `gst-launch-1.0 <flags> shmringsrc shm-name=<name> timeout=20000 ! filesink location=<out>`
/// with shmringsrc's debug log in `reader.log`; it is already waiting for the writer when this
/// returns.
pub fn waiting_gst_reader(case: &Case, flags: &str, name: &str, out: &Path) -> Logged {
    let mut cmd = gst_launch(&format!(
        "{flags} shmringsrc shm-name={name} timeout=20000 ! filesink location={}",
        out.display()
    ));
    cmd.env("GST_DEBUG", "shmringsrc:7");
    let reader = Logged::spawn(case, "reader", "reader.log", &mut cmd);
    reader.wait_log("waiting for the writer");
    reader
}

/// `videotestsrc num-buffers=n pattern=ball ! CAPS ! tee ! shmringsink shm-name=<name>` plus the
/// same frames into `reference` so readers can be compared byte for byte.
pub fn writer_with_reference(name: &str, n: u32, reference: &Path) -> Command {
    gst_launch(&format!(
        "-q videotestsrc num-buffers={n} pattern=ball ! {CAPS} ! tee name=t \
         t. ! queue ! shmringsink shm-name={name} \
         t. ! queue ! filesink location={}",
        reference.display()
    ))
}

/// A live writer that runs until killed.
pub fn live_writer(shm: &ShmName, caps: &str) -> Command {
    gst_launch(&format!(
        "-q videotestsrc is-live=true pattern=ball ! {caps} ! shmringsink shm-name={shm}"
    ))
}

/// Run `cmd` to its end (bounded) and assert it succeeded.
pub fn run_ok(name: &str, cmd: &mut Command) -> Output {
    let out = ChildGuard::spawn(name, cmd).wait_output(LONG);
    assert!(out.status.success(), "{name}: {out:?}");
    out
}

/// Wait (bounded) until the file at `path` holds `len` bytes.
pub fn wait_file_len(path: &Path, len: u64, what: &str) {
    wait_for(LONG, what, || {
        let now = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        (now == len).then_some(())
    });
}

/// `appsrc name=src … ! shmringsink …` in this process, PLAYING.
pub struct AppSrcWriter {
    pub pipeline: gst::Pipeline,
    pub src: gst_app::AppSrc,
}

impl AppSrcWriter {
    pub fn new(desc: &str) -> AppSrcWriter {
        let pipeline = vcambridge_tests::launch_pipeline(desc);
        let src = pipeline
            .by_name("src")
            .expect("appsrc")
            .downcast::<gst_app::AppSrc>()
            .expect("appsrc type");
        pipeline.set_state(gst::State::Playing).expect("PLAYING");
        AppSrcWriter { pipeline, src }
    }

    pub fn push(&self, buffer: gst::Buffer) {
        self.src.push_buffer(buffer).expect("push");
    }

    /// End the stream and wait (bounded) for EOS; an error fails the test.
    pub fn finish(&self) {
        self.src.end_of_stream().expect("eos");
        assert_eos(&self.pipeline);
    }
}

impl Drop for AppSrcWriter {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The first EOS or error message of `pipeline`, waiting at most 30 s.
pub fn eos_or_error(pipeline: &gst::Pipeline) -> gst::Message {
    pipeline
        .bus()
        .expect("bus")
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS or an error within 30 s")
}

/// Wait (bounded) for EOS; an error fails the test.
pub fn assert_eos(pipeline: &gst::Pipeline) {
    let msg = eos_or_error(pipeline);
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
}

/// `shmringsrc ! appsink` in this process.
pub struct InProcessReader {
    pub pipeline: gst::Pipeline,
    pub sink: gst_app::AppSink,
    pub src: gst::Element,
}

impl InProcessReader {
    pub fn new(shm: &ShmName, src_opts: &str, middle: &str) -> Self {
        init_gst();
        let desc = format!(
            "shmringsrc name=src shm-name={shm} {src_opts} ! {middle} appsink name=sink sync=false"
        );
        let pipeline = vcambridge_tests::launch_pipeline(&desc);
        let sink = pipeline
            .by_name("sink")
            .expect("appsink")
            .downcast::<gst_app::AppSink>()
            .expect("appsink type");
        let src = pipeline.by_name("src").expect("shmringsrc");
        pipeline
            .set_state(gst::State::Playing)
            .expect("reader to PLAYING");
        InProcessReader {
            pipeline,
            sink,
            src,
        }
    }

    /// Next sample, or None at EOS; panics on a pipeline error or after `timeout`.
    pub fn pull(&self, timeout: Duration) -> Option<gst::Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self
                .sink
                .try_pull_sample(gst::ClockTime::from_mseconds(100))
            {
                return Some(s);
            }
            if self.sink.is_eos() {
                return None;
            }
            if let Some(bus) = self.pipeline.bus()
                && let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error])
                && let gst::MessageView::Error(e) = msg.view()
            {
                panic!("reader error: {} ({:?})", e.error(), e.debug());
            }
            assert!(Instant::now() < deadline, "no sample within {timeout:?}");
        }
    }

    /// Every sample up to EOS.
    pub fn pull_all(&self) -> Vec<gst::Sample> {
        std::iter::from_fn(|| self.pull(LONG)).collect()
    }

    /// Drop what is queued (after a writer died, before the next one starts).
    pub fn drain(&self) {
        while self
            .sink
            .try_pull_sample(gst::ClockTime::from_mseconds(10))
            .is_some()
        {}
    }

    pub fn dropped(&self) -> u64 {
        self.src.property::<u64>("frames-dropped")
    }

    /// Set the pipeline to NULL and assert it took under 500 ms.
    pub fn stop_quickly(&self) {
        let t = Instant::now();
        self.pipeline.set_state(gst::State::Null).expect("to NULL");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
}

impl Drop for InProcessReader {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

pub fn sample_bytes(s: &gst::Sample) -> Vec<u8> {
    let b = s.buffer().expect("buffer");
    b.map_readable().expect("map").to_vec()
}

pub fn is_discont(s: &gst::Sample) -> bool {
    s.buffer()
        .expect("buffer")
        .flags()
        .contains(gst::BufferFlags::DISCONT)
}

pub fn caps_dims(s: &gst::Sample) -> (i32, i32) {
    let caps = s.caps().expect("caps");
    let st = caps.structure(0).expect("structure");
    (
        st.get::<i32>("width").expect("width"),
        st.get::<i32>("height").expect("height"),
    )
}

/// Header of a ring, read through the Rust layout module (independent of the elements):
/// generation, writer pid, write sequence.
pub fn ring_info(shm: &ShmName) -> (u64, u32, u64) {
    let (seg, _g) = Segment::open_reader(&shm.name).expect("open ring");
    let m = seg.memory();
    (m.generation(), m.writer_pid(), m.write_seq())
}

/// stdout and stderr of a finished process, as text.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What a hostile process with write access does: cut the ring's object down to `len` bytes.
pub fn truncate_ring(shm: &ShmName, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(shm.path())
        .expect("open ring")
        .set_len(len)
        .expect("truncate");
}
