// SPDX-License-Identifier: MPL-2.0
//! The Python camera API (`plugins/shmring/python/vcamera.py`) and `pipelines/stdin-camera.sh`
//! against the real v4l2loopback module, inside the qemu guest of `tests/guest/run.sh` (devices
//! 10 `vcam-excl` exclusive_caps=1, 11 `vcam-plain`, 12 `vcam-lock` exclusive_caps=1). Ignored on
//! the host. The reader is `v4l2src` in this test process; the app and its helper are others.
//!
//! numpy is not used here: the qemu TCG CPU lacks instructions numpy 2 needs (SIGILL on import).

use std::path::Path;
use std::process::Command;
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_video::prelude::*;
use vcambridge_tests::v4l2::{Pipeline, guest_only, streaming_reader};
use vcambridge_tests::vcamera::{App, app, gone, pids};
use vcambridge_tests::{ChildGuard, plugin_dir, wait_for, workspace_root};

const EXCL: &str = "/dev/video10";
const LOCK: &str = "/dev/video12";
const W: usize = 320;
const H: usize = 240;
const COLOR: [u8; 3] = [200, 40, 90];
const WARMUP: [u8; 3] = [20, 60, 220];
const END: [u8; 3] = [30, 200, 40];
/// RGB → I420 (the device) → RGB loses a little.
const TOLERANCE: u8 = 6;
/// TCG is slow: generous bounds, but every wait has one.
const T: Duration = Duration::from_secs(60);

/// One frame read back: its RGB rows and its timestamp (v4l2src takes it from the V4L2 buffer,
/// which the writer stamped when it queued the frame: when the frame reached the device).
struct Seen {
    rgb: Vec<u8>,
    pts: Duration,
}

impl Seen {
    /// Which of `colors` the frame is (None: another picture); every pixel of every 4th row.
    fn color(&self, colors: &[[u8; 3]]) -> Option<usize> {
        colors.iter().position(|c| {
            self.rgb.chunks_exact(W * 3).step_by(4).all(|row| {
                row.chunks_exact(3)
                    .all(|px| (0..3).all(|i| px[i].abs_diff(c[i]) <= TOLERANCE))
            })
        })
    }
}

/// `v4l2src` on `device`, converted to RGB. Frames are copied out as they arrive and judged
/// afterwards (a slow check must not hold the reader up).
struct Reader {
    p: Pipeline,
    sink: gst_app::AppSink,
}

impl Reader {
    fn start(device: &str) -> Reader {
        let p = Pipeline::new(&format!(
            "v4l2src name=src device={device} ! videoconvert ! \
             video/x-raw,format=RGB ! appsink name=sink sync=false max-buffers=400"
        ));
        let sink = p
            .by_name("sink")
            .downcast::<gst_app::AppSink>()
            .expect("appsink");
        p.set_state_wait(gst::State::Playing, T)
            .unwrap_or_else(|e| panic!("v4l2src on {device} does not play: {e}"));
        Reader { p, sink }
    }

    /// The device's caps as v4l2src negotiated them.
    fn device_caps(&self) -> String {
        let pad = self.p.by_name("src").static_pad("src").expect("src pad");
        pad.current_caps()
            .map(|c| c.to_string())
            .unwrap_or_default()
    }

    fn pull(&self, timeout: Duration) -> Option<Seen> {
        let sample = self
            .sink
            .try_pull_sample(gst::ClockTime::from_nseconds(timeout.as_nanos() as u64))?;
        let info = gst_video::VideoInfo::from_caps(sample.caps().expect("caps")).expect("info");
        assert_eq!(
            (info.width() as usize, info.height() as usize),
            (W, H),
            "frame size"
        );
        let buffer = sample.buffer().expect("buffer");
        let pts = Duration::from_nanos(buffer.pts().expect("v4l2src timestamps").nseconds());
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).expect("map");
        let stride = frame.plane_stride()[0] as usize;
        let data = frame.plane_data(0).expect("plane");
        let mut rgb = Vec::with_capacity(W * H * 3);
        for y in 0..H {
            rgb.extend_from_slice(&data[y * stride..y * stride + W * 3]);
        }
        Some(Seen { rgb, pts })
    }
}

/// Classifies every frame; counts those of colour index `target` and the span between the
/// timestamps of the first and last of them.
fn summarize(seen: &[Seen], colors: &[[u8; 3]], target: usize) -> (Vec<Option<usize>>, usize, f64) {
    let classes: Vec<Option<usize>> = seen.iter().map(|s| s.color(colors)).collect();
    let hits: Vec<&Seen> = seen
        .iter()
        .zip(&classes)
        .filter(|(_, c)| **c == Some(target))
        .map(|(s, _)| s)
        .collect();
    let span = match (hits.first(), hits.last()) {
        (Some(a), Some(b)) => b.pts.saturating_sub(a.pts).as_secs_f64(),
        _ => 0.0,
    };
    (classes, hits.len(), span)
}

#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn api_frames_reach_v4l2src_with_size_colour_and_rate() {
    guest_only();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    // backend auto, no device: the first v4l2loopback device.
    let a = App::spawn(&mut app(None, &["stream", "--go", go.to_str().unwrap()]));
    let ready = a.expect("ready", T);
    assert_eq!(ready["backend"], "v4l2", "{ready}");
    assert_eq!(ready["device"], EXCL, "{ready}");

    let colors = [WARMUP, COLOR, END];
    let reader = Reader::start(EXCL);
    let mut seen = Vec::new();
    let first = reader.pull(T).expect("v4l2src gets a first frame");
    assert_eq!(
        first.color(&colors),
        Some(0),
        "the first frame has the warm-up colour"
    );
    let caps = reader.device_caps();
    assert!(
        caps.contains("format=(string)I420")
            && caps.contains("width=(int)320")
            && caps.contains("height=(int)240"),
        "{caps}"
    );
    seen.push(first);
    std::fs::write(&go, b"").unwrap();
    let mut done = None;
    let deadline = Instant::now() + T;
    loop {
        match a.try_next() {
            Ok(ev) if ev["event"] == "done" => done = Some(ev),
            Ok(ev) if ev["event"] == "closed" => break,
            Ok(ev) => panic!("unexpected event {ev}"),
            Err(TryRecvError::Disconnected) => panic!("the app ended without closing"),
            Err(TryRecvError::Empty) => {}
        }
        assert!(Instant::now() < deadline, "the app did not finish");
        if let Some(s) = reader.pull(Duration::from_millis(50)) {
            seen.push(s);
        }
    }
    while let Some(s) = reader.pull(Duration::from_millis(300)) {
        seen.push(s);
    }
    drop(reader);
    let done = done.expect("done event");

    let span = done["span"].as_f64().unwrap();
    let expected = 89.0 / 30.0;
    let (classes, n, reader_span) = summarize(&seen, &colors, 1);
    eprintln!(
        "app: 90 frames over {span:.3} s (longest interval {:.1} ms); v4l2src: {n} frames of the \
         colour over {reader_span:.3} s; {} frames in all, {} of another picture",
        done["intervals_max"].as_f64().unwrap() * 1000.0,
        seen.len(),
        classes.iter().filter(|c| c.is_none()).count()
    );
    assert!(
        (span - expected).abs() / expected < 0.05,
        "sleep_until_next_frame: 90 frames took {span:.3} s from first to last send, \
         expected {expected:.3} s ± 5 %"
    );
    assert!(
        classes.iter().all(|c| c.is_some()),
        "v4l2src read a frame that is none of the three colours"
    );
    // Keep-alive may repeat a frame that came late by two intervals: a few extra are allowed.
    assert!(
        (85..=95).contains(&n),
        "v4l2src read {n} frames of the colour, expected about 90"
    );
    assert!(
        (reader_span - expected).abs() / expected < 0.05,
        "the colour's frames reached the device over {reader_span:.3} s (v4l2src timestamps), expected {expected:.3} s ± 5 %"
    );
}

#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn stdin_script_turns_ffmpeg_rgb24_into_a_webcam() {
    guest_only();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let warm = dir.path().join("warm.rgb");
    let end = dir.path().join("end.rgb");
    let reference = dir.path().join("ref.rgb");
    let ffmpeg_frames = |c: &str, n: u32, out: &Path| {
        let lavfi = format!("color=c={c}:s={W}x{H}:r=30");
        let st = Command::new("ffmpeg")
            .args(["-v", "error", "-f", "lavfi", "-i", &lavfi])
            .args([
                "-frames:v",
                &n.to_string(),
                "-pix_fmt",
                "rgb24",
                "-f",
                "rawvideo",
                "-y",
            ])
            .arg(out)
            .status()
            .expect("ffmpeg");
        assert!(st.success());
    };
    ffmpeg_frames("0x143CDC", 10, &warm);
    ffmpeg_frames("0x1EC828", 10, &end);
    ffmpeg_frames("0xC8285A", 1, &reference);
    let rgb = |p: &Path| {
        let d = std::fs::read(p).unwrap();
        [d[0], d[1], d[2]]
    };
    let colors = [rgb(&warm), rgb(&reference), rgb(&end)];

    // Warm-up frames until the reader is attached, then the 90 frames ffmpeg made, then the end
    // colour. ffmpeg writes them to a file first: in the TCG guest a live ffmpeg stalls now and
    // then, and what is measured here is the script's pacing, not ffmpeg's speed.
    let target = dir.path().join("target.rgb");
    ffmpeg_frames("0xC8285A", 90, &target);
    let script = workspace_root().join("pipelines/stdin-camera.sh");
    let producer = format!(
        "{{ while [ ! -e {go} ]; do cat {warm}; done; cat {target} {end}; }} | \
         {script} --pixel-format rgb24 --size {W}x{H} --fps 30",
        go = go.display(),
        warm = warm.display(),
        target = target.display(),
        end = end.display(),
        script = script.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &producer])
        .env("GST_PLUGIN_PATH", plugin_dir());
    let mut job = ChildGuard::spawn("producer | stdin-camera.sh", &mut cmd);
    // The capture side of the exclusive_caps device appears with the first frame.
    wait_for(T, "the webcam to stream", || {
        vcambridge_tests::v4l2::device_caps(EXCL).0.then_some(())
    });
    let reader = Reader::start(EXCL);
    let mut seen = Vec::new();
    seen.push(reader.pull(T).expect("a first frame"));
    std::fs::write(&go, b"").unwrap();
    let deadline = Instant::now() + T;
    while job.try_status().is_none() {
        assert!(Instant::now() < deadline, "the stdin job did not end");
        if let Some(s) = reader.pull(Duration::from_millis(50)) {
            seen.push(s);
        }
    }
    while let Some(s) = reader.pull(Duration::from_millis(300)) {
        seen.push(s);
    }
    drop(reader);
    let res = job.wait_output(T);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("-> v4l2loopback {EXCL}")),
        "{stderr}"
    );
    let (classes, n, span) = summarize(&seen, &colors, 1);
    let expected = 89.0 / 30.0;
    eprintln!(
        "stdin-camera: v4l2src read {n} ffmpeg frames over {span:.3} s ({} in all)",
        seen.len()
    );
    assert!(
        classes.iter().all(|c| c.is_some()),
        "v4l2src read a frame of another picture"
    );
    assert!((85..=95).contains(&n), "v4l2src read {n} of the 90 frames");
    assert!(
        (span - expected).abs() / expected < 0.05,
        "the 90 frames reached the device over {span:.3} s (v4l2src timestamps), expected {expected:.3} s ± 5 %"
    );
}

#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn device_held_in_another_format_is_an_exception() {
    guest_only();
    // A writer sets YUY2 320x240, a reader streams it, the writer leaves: the reader holds it.
    let writer = Pipeline::new(&format!(
        "videotestsrc is-live=true ! video/x-raw,format=YUY2,width=320,height=240,framerate=15/1 ! \
         v4l2loopsink device={LOCK}"
    ));
    writer
        .set_state_wait(gst::State::Playing, T)
        .expect("first writer");
    let reader = streaming_reader(LOCK, T);
    writer
        .set_state_wait(gst::State::Null, T)
        .expect("writer stops");

    let a = App::spawn(&mut app(
        None,
        &["forever", "--device", LOCK, "--size", "640x480"],
    ));
    let ev = a.expect("error", T);
    let msg = ev["message"].as_str().unwrap();
    assert_eq!(ev["type"], "CameraError");
    assert!(
        msg.starts_with(&format!("v4l2 camera {LOCK}: "))
            && msg.contains(&format!("{LOCK} is locked to YUYV (YUY2) 320x240"))
            && msg.contains("640x480"),
        "{msg}"
    );
    let res = a.child.wait_output(T);
    assert_eq!(res.status.code(), Some(3));
    drop(reader);

    // Devices that are not there: the message lists the ones that are.
    for (device, text) in [
        (
            "/dev/video99",
            "/dev/video99 does not exist; the v4l2loopback devices are /dev/video10 ('vcam-excl'), /dev/video11 ('vcam-plain'), /dev/video12 ('vcam-lock')",
        ),
        (
            "nosuchlabel",
            "no v4l2loopback device has the card label 'nosuchlabel'",
        ),
    ] {
        let a = App::spawn(&mut app(
            None,
            &["forever", "--backend", "v4l2", "--device", device],
        ));
        let ev = a.expect("error", T);
        let msg = ev["message"].as_str().unwrap();
        assert!(msg.contains(text), "{device}: {msg}");
    }
}

#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn killed_app_leaves_no_helper_and_frees_the_device() {
    guest_only();
    let a = App::spawn(&mut app(None, &["forever", "--device", "vcam-plain"]));
    let ready = a.expect("ready", T);
    assert_eq!(
        ready["device"], "/dev/video11",
        "card label → device: {ready}"
    );
    let helper = pids(&ready);
    let ring = format!("/dev/shm{}", ready["ring"].as_str().unwrap());
    assert!(Path::new(&ring).exists());
    std::thread::sleep(Duration::from_millis(500));
    a.child.signal(libc::SIGKILL);
    let killed = Instant::now();
    wait_for(Duration::from_secs(2), "the helper to exit", || {
        helper.iter().all(|p| gone(*p)).then_some(())
    });
    eprintln!("helper gone {:?} after SIGKILL", killed.elapsed());
    wait_for(Duration::from_secs(1), "the ring to be removed", || {
        (!Path::new(&ring).exists()).then_some(())
    });
    // The device has no writer left: a new camera on it streams at once.
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    std::fs::write(&go, b"").unwrap();
    let a = App::spawn(&mut app(
        None,
        &[
            "stream",
            "--device",
            "/dev/video11",
            "--frames",
            "5",
            "--tail",
            "0",
            "--go",
            go.to_str().unwrap(),
        ],
    ));
    a.expect("ready", T);
    a.expect("done", T);
    a.expect("closed", T);
}
