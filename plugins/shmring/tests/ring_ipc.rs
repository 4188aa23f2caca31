// SPDX-License-Identifier: MPL-2.0
//! shmringsink / shmringsrc across processes: gst-launch-1.0 writers and readers, the Python
//! module as reader and writer, and an in-process pipeline where per-buffer checks are needed.
//! Run `cargo build -p gst-plugin-shmring` first (the subprocesses load target/debug).

mod common;

use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gstshmring::shm;
use vcambridge_tests::ipc::{gst_launch, last_json, read_frames, shmring_cli, shmring_python};
use vcambridge_tests::{ChildGuard, wait_for};

#[test]
fn gst_writer_to_gst_reader_started_first() {
    let case = Case::new("g2g");
    let shm = &case.shm;
    let out = case.file("out.raw");
    let reference = case.file("ref.raw");
    assert!(!shm.exists());
    let reader = waiting_gst_reader(&case, "-v", &shm.name, &out);
    assert!(!shm.exists());
    run_ok(
        "writer",
        &mut writer_with_reference(&shm.name, 30, &reference),
    );
    let text = reader.finish();
    assert!(
        text.contains("caps = video/x-raw, format=(string)BGRx, width=(int)160, height=(int)120"),
        "reader caps:\n{text}"
    );
    let got = read_frames(&out, FRAME);
    let want = read_frames(&reference, FRAME);
    assert_eq!(want.len(), 30);
    assert_eq!(got.len(), 30, "frame count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w, "frame {i} differs");
    }
    // Clean stop after EOS removes the name.
    assert!(!shm.exists());
}

/// `vcam0` is `/vcam0`, as in Python's `multiprocessing.shared_memory`: a writer given the name
/// without the slash feeds a reader given it with the slash, and the Python module takes it too.
#[test]
fn names_without_slash_are_the_same_ring() {
    let case = Case::new("noslash");
    let shm = &case.shm;
    let bare = shm.name.trim_start_matches('/').to_string();
    let out = case.file("out.raw");
    let py_out = case.file("py.raw");
    let reference = case.file("ref.raw");
    let py_reader = waiting_python_reader_of(&case, &bare, &py_out);
    // The writer starts once both readers wait: neither may miss the first frame.
    let reader = waiting_gst_reader(&case, "", &shm.name, &out);
    run_ok("writer", &mut writer_with_reference(&bare, 20, &reference));
    reader.finish();
    py_reader.finish();
    let want = read_frames(&reference, FRAME);
    assert_eq!(want.len(), 20);
    assert_eq!(read_frames(&out, FRAME), want, "gst reader frames (/name)");
    assert_eq!(
        read_frames(&py_out, FRAME),
        want,
        "python reader frames (bare name)"
    );
    assert!(!shm.exists(), "clean stop removes {}", shm.path().display());
}

#[test]
fn gst_writer_to_python_reader() {
    let case = Case::new("g2py");
    let shm = &case.shm;
    let out = case.file("out.raw");
    let reference = case.file("ref.raw");
    let reader = waiting_python_reader(&case, &out);
    run_ok(
        "writer",
        &mut writer_with_reference(&shm.name, 30, &reference),
    );
    let text = reader.finish();
    let summary = last_json(text.as_bytes());
    assert_eq!(summary["eos"], true, "{summary}");
    assert_eq!(summary["frames"], 30, "{summary}");
    assert_eq!(summary["dropped"], 0, "{summary}");
    let caps = summary["caps"][0].as_str().expect("caps string");
    assert!(
        caps.starts_with("video/x-raw, format=(string)BGRx, width=(int)160, height=(int)120"),
        "{caps}"
    );
    let seqs: Vec<u64> = summary["seqs"]
        .as_array()
        .expect("seqs")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert_eq!(seqs, (0..30).collect::<Vec<_>>());
    // Writer PTS as written by videotestsrc (30 fps).
    assert_eq!(summary["pts"][1], 33_333_333);
    assert_eq!(read_frames(&out, FRAME), read_frames(&reference, FRAME));
}

const PY_WRITER: &str = r#"
import shmring, sys, time
name = sys.argv[1]
w = shmring.Writer(name, caps="video/x-raw,format=GRAY8,width=16,height=8,framerate=30/1",
                   slots=8, slot_size=512)
print("created", w.generation_, flush=True)
for i in range(10):
    w.write(bytes((i * 7 + j) % 256 for j in range(128)), pts=1_000_000_000 + i * 33_333_333,
            duration=33_333_333, flags=shmring.FLAG_DELTA_UNIT if i else 0)
    time.sleep(0.01)
w.set_caps("video/x-raw,format=GRAY8,width=32,height=16,framerate=30/1")
for i in range(10, 20):
    w.write(bytes((i * 7 + j) % 256 for j in range(512)), pts=1_000_000_000 + i * 33_333_333,
            duration=33_333_333)
    time.sleep(0.01)
w.eos()
w.close()
"#;

/// A Python writer feeds shmringsrc, and a caps change mid-stream is renegotiated.
#[test]
fn python_writer_to_gst_reader_with_caps_change() {
    let case = Case::new("py2g");
    let shm = &case.shm;
    let reader = InProcessReader::new(shm, "timeout=20000", "");
    let mut cmd = shmring_python(PY_WRITER);
    cmd.arg(&shm.name);
    let writer = ChildGuard::spawn("python writer", &mut cmd);
    let samples = reader.pull_all();
    let wout = writer.wait_output(LONG);
    assert!(wout.status.success(), "python writer: {wout:?}");
    assert_eq!(samples.len(), 20, "frame count");
    let mut prev_pts = None;
    for (i, s) in samples.iter().enumerate() {
        let (w, h) = caps_dims(s);
        let (ew, eh, size) = if i < 10 { (16, 8, 128) } else { (32, 16, 512) };
        assert_eq!((w, h), (ew, eh), "caps of frame {i}");
        let data = sample_bytes(s);
        let want: Vec<u8> = (0..size).map(|j| ((i * 7 + j) % 256) as u8).collect();
        assert_eq!(data, want, "pixels of frame {i}");
        let b = s.buffer().expect("buffer");
        // The ring's frame numbers: from 0, increasing; the writer skips the numbers of slots
        // this test still holds as zero-copy buffers (it keeps every sample), so they may jump.
        if i == 0 {
            assert_eq!(b.offset(), 0);
        } else {
            let prev = samples[i - 1].buffer().expect("buffer").offset();
            assert!(
                b.offset() > prev,
                "frame {i}: offset {} after {prev}",
                b.offset()
            );
        }
        assert_eq!(
            b.duration(),
            Some(gst::ClockTime::from_nseconds(33_333_333))
        );
        assert_eq!(
            b.flags().contains(gst::BufferFlags::DELTA_UNIT),
            i != 0 && i < 10
        );
        let pts = b.pts().expect("pts");
        if let Some(p) = prev_pts {
            // The writer's spacing survives the mapping onto our running time.
            assert_eq!(
                pts - p,
                gst::ClockTime::from_nseconds(33_333_333),
                "frame {i}"
            );
        }
        prev_pts = Some(pts);
    }
    assert!(is_discont(&samples[0]));
    assert_eq!(reader.dropped(), 0);
    // Live, one frame (30 fps) of latency.
    let mut q = gst::query::Latency::new();
    assert!(reader.src.query(&mut q));
    let (live, min, _max) = q.result();
    assert!(live);
    assert_eq!(min, gst::ClockTime::from_nseconds(33_333_333));
}

/// Caps change on the GStreamer writer side with a frame size that needs bigger slots: the
/// sink replaces the ring (new generation) and the Python reader follows it.
#[test]
fn gst_writer_caps_change_resizes_ring() {
    let case = Case::new("resize");
    let shm = &case.shm;
    let out = case.file("out.raw");
    let reader = waiting_python_reader(&case, &out);
    let writer = AppSrcWriter::new(&format!(
        "appsrc name=src format=time ! shmringsink name=sink shm-name={shm}"
    ));
    let mut expected = Vec::new();
    for (i, (w, h)) in [(16usize, 8usize), (64, 32)].iter().enumerate() {
        let caps = gst::Caps::builder("video/x-raw")
            .field("format", "GRAY8")
            .field("width", *w as i32)
            .field("height", *h as i32)
            .field("framerate", gst::Fraction::new(30, 1))
            .build();
        writer.src.set_caps(Some(&caps));
        for f in 0..5usize {
            let n = i * 5 + f;
            let data: Vec<u8> = (0..w * h).map(|j| ((n * 13 + j) % 251) as u8).collect();
            expected.extend_from_slice(&data);
            let mut b = gst::Buffer::from_slice(data);
            b.get_mut()
                .expect("writable")
                .set_pts(gst::ClockTime::from_mseconds(n as u64 * 33));
            writer.push(b);
        }
        if i == 0 {
            // The reader has the first frames before the ring is replaced.
            wait_file_len(&out, 5 * 16 * 8, "the reader to read 5 frames");
        }
    }
    writer.finish();
    let sink = writer.pipeline.by_name("sink").expect("sink");
    assert_eq!(sink.property::<u64>("frames-written"), 10);
    // Stopping removes the name: keep the writer until the reader (which had to re-open the name
    // for the bigger ring) has everything.
    wait_file_len(&out, expected.len() as u64, "all frames at the reader");
    drop(writer);
    let text = reader.finish();
    let summary = last_json(text.as_bytes());
    assert_eq!(summary["frames"], 10, "{summary}");
    assert_eq!(summary["eos"], true, "{summary}");
    assert!(summary["restarts"].as_u64().unwrap_or(0) >= 1, "{summary}");
    let caps: Vec<&str> = summary["caps"]
        .as_array()
        .expect("caps")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(caps.len(), 2, "{summary}");
    assert!(caps[0].contains("width=(int)16"), "{caps:?}");
    assert!(caps[1].contains("width=(int)64"), "{caps:?}");
    assert_eq!(std::fs::read(&out).expect("reader output"), expected);
}

/// Writer killed (SIGKILL) and restarted: the reader keeps going on the new generation; a
/// writer that stays dead makes the reader time out with a message saying so.
#[test]
fn writer_killed_restarted_and_crash_timeout() {
    let case = Case::new("restart");
    let shm = &case.shm;
    let reader = InProcessReader::new(shm, "timeout=20000", "");
    let caps = "video/x-raw,format=BGRx,width=160,height=120,framerate=60/1";
    let w1 = ChildGuard::spawn("writer 1", &mut live_writer(shm, caps));
    for _ in 0..10 {
        reader.pull(LONG).expect("frame from writer 1");
    }
    let (gen1, pid1, _) = ring_info(shm);
    assert_eq!(pid1, w1.pid());
    w1.signal(libc::SIGKILL);
    let _ = w1.wait_output(LONG);
    // A crash leaves the ring behind, naming a dead writer.
    assert!(shm.exists());
    assert!(!shm::pid_alive(pid1));
    // A second reader (separate gst-launch) meets the crashed ring and times out clearly.
    let dead_reader = ChildGuard::spawn(
        "reader of a dead ring",
        &mut gst_launch(&format!(
            "shmringsrc shm-name={shm} timeout=1000 ! fakesink"
        )),
    );
    let out = dead_reader.wait_output(LONG);
    let err = output_text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("(pid {pid1}) is no longer running")),
        "message: {err}"
    );
    assert!(err.contains(&shm.path().display().to_string()), "{err}");
    // The Python reader says the same.
    let out = ChildGuard::spawn(
        "python reader of a dead ring",
        &mut shmring_cli(&["read", &shm.name, "--timeout", "1"]),
    )
    .wait_output(LONG);
    let summary = last_json(&out.stdout);
    assert_eq!(summary["timeout"], true, "{summary}");
    assert_eq!(summary["writer_alive"], false, "{summary}");
    // Drain what the first reader still has queued, then restart the writer.
    reader.drain();
    let w2 = ChildGuard::spawn("writer 2", &mut live_writer(shm, caps));
    let first = reader.pull(LONG).expect("frame from writer 2");
    assert!(is_discont(&first));
    for _ in 0..10 {
        reader.pull(LONG).expect("frames from writer 2");
    }
    let (gen2, pid2, _) = ring_info(shm);
    assert_eq!(pid2, w2.pid());
    assert_eq!(
        gen2,
        gen1 + 1,
        "restarted writer reclaims with a new generation"
    );
    drop(w2);
}

/// A reader killed while copying frames does not disturb the writer or other readers.
#[test]
fn reader_killed_mid_frame() {
    let case = Case::new("rkill");
    let shm = &case.shm;
    // Big frames so the kill most likely lands inside a copy.
    let caps = "video/x-raw,format=BGRx,width=1280,height=720,framerate=50/1";
    let writer = ChildGuard::spawn("writer", &mut live_writer(shm, caps));
    let survivor = InProcessReader::new(shm, "timeout=20000", "");
    survivor.pull(LONG).expect("first frame");
    let victim = ChildGuard::spawn(
        "victim reader",
        &mut shmring_cli(&["read", &shm.name, "--timeout", "20"]),
    );
    // Let the victim copy frames for a while, then kill it.
    wait_for(LONG, "the victim to be reading", || {
        let (_, _, w) = ring_info(shm);
        (w > 30).then_some(())
    });
    let gst_victim = ChildGuard::spawn(
        "victim gst reader",
        &mut gst_launch(&format!("shmringsrc shm-name={shm} ! fakesink")),
    );
    let (_, _, w) = ring_info(shm);
    wait_for(LONG, "more frames", || {
        let (_, _, w2) = ring_info(shm);
        (w2 > w + 10).then_some(())
    });
    victim.signal(libc::SIGKILL);
    gst_victim.signal(libc::SIGKILL);
    let _ = victim.wait_output(LONG);
    let _ = gst_victim.wait_output(LONG);
    let (_, _, w0) = ring_info(shm);
    let t0 = Instant::now();
    let mut got = 0;
    while t0.elapsed() < Duration::from_secs(2) {
        let s = survivor.pull(LONG).expect("frames after the kill");
        assert_eq!(sample_bytes(&s).len(), 1280 * 720 * 4);
        got += 1;
    }
    let (_, _, w1) = ring_info(shm);
    let rate = (w1 - w0) as f64 / t0.elapsed().as_secs_f64();
    // The writer keeps its 50 fps (bound halved for a loaded 2-core machine; a writer waiting
    // for the dead reader would make no progress at all).
    assert!(rate > 25.0, "writer rate after the kill: {rate:.1} fps");
    assert!(got > 20, "survivor got {got} frames in 2 s");
    // A new reader attaches fine.
    let late = ChildGuard::spawn(
        "late reader",
        &mut shmring_cli(&["read", &shm.name, "--max", "5", "--timeout", "10"]),
    );
    let out = late.wait_output(LONG);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(last_json(&out.stdout)["frames"], 5);
    drop(writer);
}

/// A slow reader skips frames; the writer's rate and frame count are unaffected.
#[test]
fn slow_readers_skip_and_writer_never_blocks() {
    let case = Case::new("slow");
    let shm = &case.shm;
    let caps = "video/x-raw,format=BGRx,width=160,height=120,framerate=100/1";
    let slow_gst = InProcessReader::new(shm, "timeout=20000", "identity sleep-time=50000 !");
    let slow_py = Logged::spawn(
        &case,
        "slow python reader",
        "slow.log",
        &mut shmring_cli(&["read", &shm.name, "--sleep", "0.05", "--timeout", "20"]),
    );
    slow_py.wait_log("waiting");
    let start = Instant::now();
    let writer = ChildGuard::spawn(
        "writer",
        &mut gst_launch(&format!(
            "-q videotestsrc is-live=true num-buffers=300 ! {caps} ! shmringsink shm-name={shm} slots=4"
        )),
    );
    let wout = writer.wait_output(LONG);
    let elapsed = start.elapsed();
    assert!(wout.status.success(), "{wout:?}");
    // 300 frames at 100 fps: 3 s when nobody waits for the readers (15 s if the writer were
    // paced by the 50 ms readers); the bound leaves room for a loaded machine.
    assert!(
        elapsed < Duration::from_millis(8000),
        "writer took {elapsed:?} for 3 s of frames"
    );
    let mut n = 0;
    let mut offsets = Vec::new();
    let mut disconts = 0;
    while let Some(s) = slow_gst.pull(LONG) {
        let b = s.buffer().expect("buffer");
        offsets.push(b.offset());
        if b.flags().contains(gst::BufferFlags::DISCONT) {
            disconts += 1;
        }
        n += 1;
    }
    assert!(n < 200, "slow gst reader got {n} frames");
    assert!(slow_gst.dropped() > 50, "dropped {}", slow_gst.dropped());
    assert!(disconts > 1);
    assert!(offsets.windows(2).all(|w| w[1] > w[0]), "{offsets:?}");
    assert!(offsets.windows(2).any(|w| w[1] > w[0] + 1), "{offsets:?}");
    let text = slow_py.finish();
    let summary = last_json(text.as_bytes());
    let frames = summary["frames"].as_u64().expect("frames");
    let dropped = summary["dropped"].as_u64().expect("dropped");
    assert!(frames < 150, "{summary}");
    assert!(dropped > 100, "{summary}");
    assert_eq!(summary["eos"], true);
    // Every frame was written; the writer skips the frame numbers of slots a reader holds: pinned
    // while copying, or leased while downstream (the 50 ms identity) holds a zero-copy buffer —
    // one slot of the four (max-leases is capped at (slots - 2) / 2), so at most a third more.
    let write_seq = summary["write_seq"].as_u64().expect("write_seq");
    assert!((300..=400).contains(&write_seq), "{summary}");
    assert_eq!(
        *offsets.last().expect("frames"),
        write_seq - 1,
        "ends with the newest frame"
    );
}

/// The Python module's numpy view (optional dependency) gives the pixels in the caps' shape.
#[test]
fn python_reader_numpy_view_and_read_into() {
    let case = Case::new("numpy");
    let shm = &case.shm;
    let script = r#"
import shmring, sys, json
r = shmring.Reader(sys.argv[1], timeout=20)
print(json.dumps({"attached": True}), flush=True)
f = r.read(timeout=20)
try:
    import numpy
    a = f.array((120, 160, 4))
    px = [int(v) for v in a[60, 80, :3]]
    kind = "numpy"
except ImportError:
    o = (60 * 160 + 80) * 4
    px = list(f.data[o:o + 3])
    kind = "bytes"
# The next frames into one preallocated buffer (numpy if there, else a bytearray).
size = 120 * 160 * 4
buf = numpy.zeros(size + 64, dtype=numpy.uint8) if kind == "numpy" else bytearray(size + 64)
g = r.read(timeout=20, into=buf)
o = (60 * 160 + 80) * 4
into_px = [int(v) for v in buf[o:o + 3]]
try:
    r.read(timeout=20, into=bytearray(10))
    small = None
except shmring.RingError as e:
    small = str(e)
print(json.dumps({"px": px, "kind": kind, "caps": f.caps, "into_px": into_px,
                  "view_of_buf": g.data.obj is buf and len(g.data) == size, "small": small}),
      flush=True)
"#;
    let mut cmd = shmring_python(script);
    cmd.arg(&shm.name);
    let reader = Logged::spawn(&case, "python numpy reader", "py.log", &mut cmd);
    let writer = ChildGuard::spawn(
        "writer",
        &mut gst_launch(&format!(
            "-q videotestsrc is-live=true pattern=red ! {CAPS} ! shmringsink shm-name={shm}"
        )),
    );
    let text = reader.finish();
    let summary = last_json(text.as_bytes());
    // BGRx red.
    let px: Vec<u64> = (0..3)
        .map(|i| summary["px"][i].as_u64().expect("pixel value"))
        .collect();
    assert_eq!(px, [0, 0, 255], "{summary}");
    eprintln!("pixel read through {}", summary["kind"]);
    // read(into=buf): the frame lands in the caller's buffer, data is a view of it.
    assert_eq!(summary["into_px"].to_string(), "[0,0,255]", "{summary}");
    assert_eq!(summary["view_of_buf"], true, "{summary}");
    let small = summary["small"].as_str().unwrap_or_default();
    assert!(
        small.contains("holds 10 bytes") && small.contains("has 76800"),
        "{summary}"
    );
    drop(writer);
}

/// A crashed GStreamer writer's ring is reclaimed by a Python writer (same layout, generation
/// + 1) and the attached shmringsrc follows, renegotiating to the Python writer's caps.
#[test]
fn python_writer_reclaims_a_crashed_gst_ring() {
    let case = Case::new("reclaim");
    let shm = &case.shm;
    let reader = InProcessReader::new(shm, "timeout=20000", "");
    let caps = "video/x-raw,format=GRAY8,width=16,height=8,framerate=30/1";
    let w1 = ChildGuard::spawn("gst writer", &mut live_writer(shm, caps));
    for _ in 0..5 {
        let s = reader.pull(LONG).expect("frame from the gst writer");
        assert_eq!(caps_dims(&s), (16, 8));
    }
    let (gen1, _, _) = ring_info(shm);
    w1.signal(libc::SIGKILL);
    let _ = w1.wait_output(LONG);
    reader.drain();
    let mut cmd = shmring_python(
        r#"
import shmring, sys, time
w = shmring.Writer(sys.argv[1], caps="video/x-raw,format=GRAY8,width=8,height=4,framerate=30/1",
                   slots=8, slot_size=128)
print("generation", w.generation_, flush=True)
for i in range(10):
    w.write(bytes([i + 1]) * 32, pts=i * 33_333_333, duration=33_333_333)
    time.sleep(0.02)
w.eos()
time.sleep(5)
"#,
    );
    cmd.arg(&shm.name);
    let w2 = ChildGuard::spawn("python writer", &mut cmd);
    let mut got = Vec::new();
    for s in reader.pull_all() {
        assert_eq!(
            caps_dims(&s),
            (8, 4),
            "renegotiated to the python writer's caps"
        );
        got.push(sample_bytes(&s)[0]);
    }
    assert_eq!(got, (1..=10).collect::<Vec<u8>>());
    let (gen2, pid2, _) = ring_info(shm);
    assert_eq!(pid2, w2.pid());
    assert!(gen2 > gen1, "generation {gen1} -> {gen2}");
    drop(w2);
}

/// shmringsrc stamps frames on this pipeline's running time and answers the latency query
/// (live, one frame) — the same check, by the same helper, as surfacesrc's.
#[test]
fn timestamps_on_running_time_and_latency_answered() {
    let case = Case::new("rtime");
    let shm = &case.shm;
    vcambridge_common::testing::check_live_source_timing(
        &format!("shmringsrc shm-name={shm} timeout=20000"),
        &format!("shmringsink shm-name={shm}"),
        |_| (),
    );
}

/// `timeout` is a `guint` of milliseconds, as surfacesrc's (same helper).
#[test]
fn timeout_is_milliseconds_as_in_surfacesrc() {
    Case::new("timeout");
    vcambridge_common::testing::check_timeout_property("shmringsrc");
}
