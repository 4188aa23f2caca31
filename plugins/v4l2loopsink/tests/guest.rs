//! `v4l2loopsink` against the real v4l2loopback module, inside the qemu guest of
//! `tests/guest/run.sh` (which loads v4l2loopback with devices 10 `vcam-excl` exclusive_caps=1,
//! 11 `vcam-plain` exclusive_caps=0, 12 `vcam-lock` exclusive_caps=1, plus vivid's capture-only
//! /dev/video0). Ignored on the host: run them with `tests/guest/run.sh`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use vcambridge_tests::v4l2::{
    Pipeline, assert_frames_equal, device_caps, guest_only, loopback_has_control_device,
    read_ffmpeg, read_v4l2ctl, read_v4l2src, reference_frame, scratch_dir, streaming_reader,
};
use vcambridge_tests::{gst_command, run_with_timeout};

const EXCL: &str = "/dev/video10";
const PLAIN: &str = "/dev/video11";
const LOCK: &str = "/dev/video12";
/// TCG is slow: generous bounds, but every wait has one.
const T: Duration = Duration::from_secs(40);

fn writer(launch_tail: &str, caps: &str) -> Pipeline {
    Pipeline::new(&format!(
        "videotestsrc is-live=true pattern=colors ! {caps} ! v4l2loopsink name=sink {launch_tail}"
    ))
}

fn stats(p: &Pipeline) -> gst::Structure {
    p.by_name("sink").property::<gst::Structure>("stats")
}

/// videotestsrc → v4l2loopsink → v4l2src, ffmpeg and v4l2-ctl, at the given sizes: frame
/// counts, caps and every byte of every frame checked.
fn roundtrip(format: &str, sizes: &[(u32, u32)]) {
    guest_only();
    let dir = scratch_dir(&format!("roundtrip-{format}"));
    for &(w, h) in sizes {
        let expected = reference_frame("colors", format, w, h);
        let page_aligned = expected.len().is_multiple_of(4096);
        eprintln!(
            "{format} {w}x{h}: {} bytes ({}page-aligned)",
            expected.len(),
            if page_aligned { "" } else { "not " }
        );
        let p = writer(
            &format!("device={EXCL}"),
            &format!("video/x-raw,format={format},width={w},height={h},framerate=15/1"),
        );
        p.set_state_wait(gst::State::Playing, T)
            .unwrap_or_else(|e| panic!("{format} {w}x{h}: writer failed: {e}"));

        let (frames, caps) =
            read_v4l2src(EXCL, 5, T).unwrap_or_else(|e| panic!("{format} {w}x{h}: v4l2src: {e}"));
        let s = caps.structure(0).expect("caps structure");
        assert_eq!(
            s.get::<&str>("format").ok(),
            Some(format),
            "v4l2src caps {caps}"
        );
        assert_eq!(
            s.get::<i32>("width").ok(),
            Some(w as i32),
            "v4l2src caps {caps}"
        );
        assert_eq!(
            s.get::<i32>("height").ok(),
            Some(h as i32),
            "v4l2src caps {caps}"
        );
        // VIDIOC_S_PARM on the output side reaches the readers.
        assert_eq!(
            s.get::<gst::Fraction>("framerate").ok(),
            Some(gst::Fraction::new(15, 1)),
            "v4l2src caps {caps}"
        );
        assert_frames_equal(&format!("v4l2src {format} {w}x{h}"), &frames, &expected);

        let frames = read_ffmpeg(EXCL, 5, expected.len(), &dir, T)
            .unwrap_or_else(|e| panic!("{format} {w}x{h}: {e}"));
        assert_frames_equal(&format!("ffmpeg {format} {w}x{h}"), &frames, &expected);

        let frames = read_v4l2ctl(EXCL, 5, expected.len(), &dir, T)
            .unwrap_or_else(|e| panic!("{format} {w}x{h}: {e}"));
        assert_frames_equal(&format!("v4l2-ctl {format} {w}x{h}"), &frames, &expected);

        let st = stats(&p);
        let written = st.get::<u64>("frames-written").expect("frames-written");
        assert!(written >= 5, "only {written} frames written: {st}");
        let copies = st.get::<f64>("copies-per-frame").expect("copies-per-frame");
        assert!((copies - 1.0).abs() < 1e-9, "copies per frame {copies}");
        p.set_state_wait(gst::State::Null, T).expect("writer stops");
    }
}

/// One ignored guest test per format: `roundtrip(format, sizes)`.
macro_rules! roundtrip_tests {
    ($($name:ident: $format:literal, $sizes:expr;)*) => {$(
        #[test]
        #[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
        fn $name() {
            roundtrip($format, $sizes);
        }
    )*};
}

// 320x240 YUY2 (153600 bytes, 37.5 pages) is where page-rounded bytesused made ffmpeg drop
// frames with v4l2loopback 0.12.7; 256x256 is page-aligned.
roundtrip_tests! {
    roundtrip_yuy2: "YUY2", &[(320, 240), (256, 256)];
    roundtrip_i420: "I420", &[(320, 180), (256, 256)];
    roundtrip_nv12: "NV12", &[(320, 180), (256, 256)];
    roundtrip_bgrx: "BGRx", &[(320, 180), (256, 256)];
    roundtrip_rgb: "RGB", &[(320, 180), (256, 256)];
}

/// exclusive_caps=1: no capture capability before a writer, capture once the sink is PAUSED
/// (prerolled), and a reader gets frames while the pipeline stays PAUSED (keep-alive).
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn exclusive_caps_capture_appears_when_paused() {
    guest_only();
    assert_eq!(
        device_caps(EXCL),
        (false, true),
        "before a writer the device must offer output only"
    );
    let p = Pipeline::new(&format!(
        "videotestsrc pattern=colors ! video/x-raw,format=YUY2,width=320,height=240,framerate=15/1 ! \
         v4l2loopsink name=sink device={EXCL}"
    ));
    p.set_state_wait(gst::State::Paused, T).expect("prerolls");
    let (capture, output) = device_caps(EXCL);
    assert!(capture, "PAUSED writer: the device must announce capture");
    assert!(
        !output,
        "exclusive_caps=1 with a writer: output is no longer announced"
    );
    let (frames, _) = read_v4l2src(EXCL, 3, T).expect("frames while PAUSED");
    assert_frames_equal(
        "v4l2src while PAUSED",
        &frames,
        &reference_frame("colors", "YUY2", 320, 240),
    );
    p.set_state_wait(gst::State::Null, T).expect("stops");
    assert_eq!(
        device_caps(EXCL),
        (false, true),
        "after the writer left the device offers output again"
    );
}

/// Counts frames `v4l2src` receives during `window`, returning their arrival times.
fn arrivals(device: &str, window: Duration) -> Vec<Duration> {
    let p = Pipeline::new(&format!(
        "v4l2src device={device} ! appsink name=sink sync=false max-buffers=256"
    ));
    let sink = p
        .by_name("sink")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    p.set_state_wait(gst::State::Playing, T)
        .expect("reader plays");
    let start = Instant::now();
    let mut times = Vec::new();
    while start.elapsed() < window {
        let left = window.saturating_sub(start.elapsed());
        if sink
            .try_pull_sample(gst::ClockTime::from_nseconds(left.as_nanos() as u64))
            .is_some()
        {
            times.push(start.elapsed());
        }
    }
    times
}

/// Upstream ends (EOS) and stalls: the reader keeps getting frames at the set rate for ≥ 2 s,
/// showing the last frame, or the placeholder colour.
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn keepalive_after_eos_and_placeholder() {
    guest_only();
    // A small white 16:9 PNG: the element decodes and scales it to the negotiated 320x180 I420
    // (other aspect ratios get black borders: videoscale keeps the picture undistorted).
    let dir = scratch_dir("placeholder");
    let png = dir.join("white.png");
    Pipeline::new(&format!(
        "videotestsrc num-buffers=1 pattern=white ! video/x-raw,width=64,height=36 ! pngenc ! \
         filesink location={}",
        png.display()
    ))
    .wait_eos_from_playing(T);
    let png = png.display().to_string();
    for placeholder in [None, Some("#00ff00"), Some(png.as_str())] {
        let p = Pipeline::new(&format!(
            "videotestsrc num-buffers=10 pattern=colors ! \
             video/x-raw,format=I420,width=320,height=180,framerate=10/1 ! \
             v4l2loopsink name=sink device={EXCL} {}",
            placeholder
                .map(|c| format!("placeholder={c}"))
                .unwrap_or_default()
        ));
        p.set_state_wait(gst::State::Playing, T).expect("plays");
        p.wait_eos(T);
        let t = arrivals(EXCL, Duration::from_secs(3));
        // 10 fps for 3 s = 30 frames; TCG timing is coarse, so demand 60 % and frames in the
        // last second.
        assert!(
            t.len() >= 18,
            "keep-alive delivered {} frames in 3 s after EOS: {t:?}",
            t.len()
        );
        assert!(
            t.last().is_some_and(|l| *l >= Duration::from_secs(2)),
            "frames stopped before 2 s: {t:?}"
        );
        let (frames, _) = read_v4l2src(EXCL, 2, T).expect("frames after EOS");
        let expected = match placeholder {
            None => reference_frame("colors", "I420", 320, 180),
            Some(spec) => {
                // #00ff00 in BT.601 limited range (integer maths): Y 144, U 54, V 34; the
                // white image: Y 235, U and V 128.
                let (y, u, v) = if spec.starts_with('#') {
                    (144, 54, 34)
                } else {
                    (235, 128, 128)
                };
                let mut f = vec![y; 320 * 180];
                f.extend(std::iter::repeat_n(u, 160 * 90));
                f.extend(std::iter::repeat_n(v, 160 * 90));
                f
            }
        };
        assert_frames_equal("keep-alive frame", &frames, &expected);
        let st = stats(&p);
        assert_eq!(st.get::<u64>("frames-written").ok(), Some(10), "{st}");
        assert!(st.get::<u64>("frames-repeated").unwrap_or(0) >= 18, "{st}");
        p.set_state_wait(gst::State::Null, T).expect("stops");
    }
}

/// keepalive=false: after EOS no more frames reach the reader; and a PAUSED live pipeline with
/// keep-alive keeps feeding it.
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn keepalive_off_stops_and_pause_keeps_feeding() {
    guest_only();
    let p = Pipeline::new(&format!(
        "videotestsrc num-buffers=5 ! video/x-raw,format=YUY2,width=320,height=240,framerate=10/1 ! \
         v4l2loopsink name=sink device={PLAIN} keepalive=false"
    ));
    p.set_state_wait(gst::State::Playing, T).expect("plays");
    p.wait_eos(T);
    // A new reader is handed the newest frame at once (driver behaviour); nothing after that.
    let t = arrivals(PLAIN, Duration::from_secs(2));
    assert!(
        t.len() <= 1 && t.iter().all(|at| *at < Duration::from_millis(500)),
        "keepalive=false still delivered frames: {t:?}"
    );
    p.set_state_wait(gst::State::Null, T).expect("stops");

    let p = writer(
        &format!("device={PLAIN}"),
        "video/x-raw,format=YUY2,width=320,height=240,framerate=10/1",
    );
    p.set_state_wait(gst::State::Playing, T).expect("plays");
    std::thread::sleep(Duration::from_millis(500));
    p.set_state_wait(gst::State::Paused, T).expect("pauses");
    let t = arrivals(PLAIN, Duration::from_secs(3));
    assert!(t.len() >= 18, "PAUSED pipeline: {} frames in 3 s", t.len());
    p.set_state_wait(gst::State::Null, T).expect("stops");
}

/// Upstream stalls now and then (400 ms, twice the keep-alive interval) and then delivers the
/// late frames: the timestamps readers get from the driver (`v4l2-ctl --verbose`) only go
/// forwards — `v4l2src` ignores the driver's timestamps for good after one goes backwards.
/// (With frames stamped with their pipeline time, the late frames went behind the keep-alive
/// repeats sent during the stall, and on 0.13.2 behind the driver's own stamp on a new reader's
/// first frame.)
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn timestamps_keep_increasing_across_stalls_and_repeats() {
    guest_only();
    let p = Pipeline::new(&format!(
        "videotestsrc is-live=true pattern=colors ! \
         video/x-raw,format=YUY2,width=320,height=240,framerate=10/1 ! identity name=stall ! \
         v4l2loopsink name=sink device={PLAIN}"
    ));
    let n = Arc::new(Mutex::new(0u32));
    {
        let n = n.clone();
        p.by_name("stall")
            .static_pad("src")
            .expect("identity src pad")
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                let mut n = n.lock().unwrap_or_else(|e| e.into_inner());
                *n += 1;
                if (*n).is_multiple_of(8) {
                    std::thread::sleep(Duration::from_millis(400));
                }
                gst::PadProbeReturn::Ok
            });
    }
    p.set_state_wait(gst::State::Playing, T).expect("plays");
    let out = run_with_timeout(
        "v4l2-ctl --stream-mmap --verbose",
        Command::new("v4l2-ctl")
            .args([
                "-d",
                PLAIN,
                "--stream-mmap",
                "--stream-count=50",
                "--verbose",
            ])
            .arg("--stream-to=/dev/null"),
        T,
    );
    let st = stats(&p);
    p.set_state_wait(gst::State::Null, T).expect("stops");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "v4l2-ctl failed: {text}");
    // "cap dqbuf: 0 seq: 0 bytesused: 153600 ts: 95.466781 delta: ..." per frame.
    let ts: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| l.split_once(" ts: ").map(|(_, rest)| rest))
        .filter_map(|rest| {
            let (sec, frac) = rest.split_whitespace().next()?.split_once('.')?;
            Some((sec.parse().ok()?, frac.parse().ok()?))
        })
        .collect();
    assert!(
        ts.len() >= 40,
        "{} timestamps in v4l2-ctl's output: {text}",
        ts.len()
    );
    let us: Vec<u64> = ts.iter().map(|(s, f)| s * 1_000_000 + f).collect();
    let backwards: Vec<(usize, u64, u64)> = us
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] <= w[0])
        .map(|(i, w)| (i + 1, w[0], w[1]))
        .collect();
    let frames: Vec<&str> = text.lines().filter(|l| l.contains(" ts: ")).collect();
    assert!(
        backwards.is_empty(),
        "driver timestamps not increasing at (frame, previous µs, this µs) {backwards:?}; {st}; \
         v4l2-ctl: {:#?}",
        &frames[..frames.len().min(12)]
    );
    // The stalls did make keep-alive repeats in between.
    let repeated = st.get::<u64>("frames-repeated").unwrap_or(0);
    assert!(repeated > 0, "no keep-alive repeat during the stalls: {st}");
}

/// `card-label` picks the device with that v4l2loopback card name.
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn device_by_card_label() {
    guest_only();
    let p = writer(
        "card-label=vcam-plain",
        "video/x-raw,format=UYVY,width=160,height=120,framerate=15/1",
    );
    p.set_state_wait(gst::State::Playing, T).expect("plays");
    assert_eq!(
        p.by_name("sink")
            .property::<Option<String>>("current-device")
            .as_deref(),
        Some(PLAIN)
    );
    let (frames, caps) = read_v4l2src(PLAIN, 2, T).expect("frames by label");
    assert_frames_equal(
        "card-label",
        &frames,
        &reference_frame("colors", "UYVY", 160, 120),
    );
    assert!(caps.to_string().contains("UYVY"), "{caps}");
    p.set_state_wait(gst::State::Null, T).expect("stops");
    let p = writer("card-label=no-such-camera", "video/x-raw,format=YUY2");
    let e = p.set_state_wait(gst::State::Playing, T).unwrap_err();
    assert!(
        e.contains("no v4l2loopback device with card label 'no-such-camera'")
            && e.contains("/dev/video11 'vcam-plain'"),
        "{e}"
    );
}

/// create=true: made through /dev/v4l2loopback on 0.13.x and removed on NULL; on 0.12.x a
/// precise error that says how to load the module instead.
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn create_and_remove() {
    guest_only();
    let p = writer(
        "create=true card-label=vcam-dyn device-number=20",
        "video/x-raw,format=YUY2,width=320,height=240,framerate=15/1",
    );
    if !loopback_has_control_device() {
        let e = p.set_state_wait(gst::State::Playing, T).unwrap_err();
        assert!(
            e.contains("create=true needs v4l2loopback >= 0.13")
                && e.contains("the loaded v4l2loopback is < 0.13")
                && e.contains("modprobe v4l2loopback devices=1 video_nr=20 card_label=\"vcam-dyn\" exclusive_caps=1"),
            "{e}"
        );
        return;
    }
    p.set_state_wait(gst::State::Playing, T)
        .expect("creates and plays");
    assert!(Path::new("/dev/video20").exists());
    let info = run_with_timeout(
        "v4l2-ctl --info",
        Command::new("v4l2-ctl").args(["-d", "/dev/video20", "--info"]),
        T,
    );
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    assert!(
        info.contains("vcam-dyn") && info.contains("v4l2 loopback"),
        "{info}"
    );
    let (frames, _) = read_v4l2src("/dev/video20", 3, T).expect("frames from created device");
    assert_frames_equal(
        "created device",
        &frames,
        &reference_frame("colors", "YUY2", 320, 240),
    );
    p.set_state_wait(gst::State::Null, T).expect("stops");
    vcambridge_tests::wait_for(Duration::from_secs(5), "/dev/video20 removed", || {
        (!Path::new("/dev/video20").exists()).then_some(())
    });
    // A number that is taken: a clear error.
    let e = writer(
        "create=true card-label=clash device-number=10",
        "video/x-raw,format=YUY2",
    )
    .set_state_wait(gst::State::Playing, T)
    .unwrap_err();
    assert!(
        e.contains("creating /dev/video10 'clash' failed") && e.contains("that number is taken"),
        "{e}"
    );
    // A created device limited to 640x480 refuses 1280x720 with the limit in the message.
    let e = writer(
        "create=true card-label=small device-number=21 max-width=640 max-height=480",
        "video/x-raw,format=YUY2,width=1280,height=720,framerate=15/1",
    )
    .set_state_wait(gst::State::Playing, T)
    .unwrap_err();
    assert!(
        e.contains(
            "/dev/video21 cannot take YUYV (YUY2) 1280x720: the device is limited to 640x480"
        ),
        "{e}"
    );
}

/// Precise errors: missing device, capture-only device, permission denied, odd I420 width, a
/// second writer, and a format locked by a streaming reader (and allow-format-lock converting).
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn errors_are_precise() {
    guest_only();
    let caps = "video/x-raw,format=YUY2,width=320,height=240,framerate=15/1";
    let e = writer("device=/dev/video99", caps)
        .set_state_wait(gst::State::Playing, T)
        .unwrap_err();
    assert!(
        e.contains("/dev/video99 does not exist") && e.contains("modprobe v4l2loopback"),
        "{e}"
    );

    // vivid's capture node: a real capture-only V4L2 device.
    let vivid = (0..10)
        .map(|n| format!("/dev/video{n}"))
        .find(|d| {
            Path::new(&format!("/sys/class/video4linux/{}/name", &d[5..])).exists()
                && std::fs::read_to_string(format!("/sys/class/video4linux/{}/name", &d[5..]))
                    .is_ok_and(|n| n.contains("vivid"))
        })
        .expect("vivid capture device");
    let e = writer(&format!("device={vivid}"), caps)
        .set_state_wait(gst::State::Playing, T)
        .unwrap_err();
    assert!(
        e.contains(&format!("{vivid} is a capture-only device (driver 'vivid'")),
        "{e}"
    );

    // Odd width for I420.
    let e = writer(
        &format!("device={PLAIN}"),
        "video/x-raw,format=I420,width=321,height=240,framerate=15/1",
    )
    .set_state_wait(gst::State::Playing, T)
    .unwrap_err();
    assert!(
        e.contains("odd width 321") && e.contains("I420) needs an even width"),
        "{e}"
    );

    // Permission denied: an unprivileged user (the node is root-only, mode 0600).
    let out = run_with_timeout(
        "gst-launch-1.0 as nobody",
        std::os::unix::process::CommandExt::uid(
            gst_command("gst-launch-1.0").args([
                "videotestsrc",
                "num-buffers=1",
                "!",
                "v4l2loopsink",
                &format!("device={PLAIN}"),
            ]),
            65534,
        ),
        T,
    );
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains(&format!("permission denied opening {PLAIN}"))
            && text.contains("'video' group"),
        "{text}"
    );

    // A second writer while the first streams on an exclusive_caps device.
    let first = writer(&format!("device={LOCK}"), caps);
    first
        .set_state_wait(gst::State::Playing, T)
        .expect("first writer");
    let e = writer(&format!("device={LOCK}"), caps)
        .set_state_wait(gst::State::Playing, T)
        .unwrap_err();
    assert!(e.contains("another writer"), "{e}");

    // Format locked by a streaming reader: the first writer leaves, the reader stays.
    let reader = streaming_reader(LOCK, T);
    first
        .set_state_wait(gst::State::Null, T)
        .expect("first writer stops");
    let e = writer(
        &format!("device={LOCK}"),
        "video/x-raw,format=I420,width=640,height=480,framerate=15/1",
    )
    .set_state_wait(gst::State::Playing, T)
    .unwrap_err();
    assert!(
        e.contains(&format!("{LOCK} is locked to YUYV (YUY2) 320x240"))
            && e.contains("this pipeline sends YU12 (I420) 640x480")
            && e.contains("allow-format-lock=true"),
        "{e}"
    );

    // allow-format-lock=true: upstream converts to the locked format instead.
    let p = Pipeline::new(&format!(
        "videotestsrc is-live=true pattern=colors ! \
         video/x-raw,format=I420,width=640,height=480,framerate=15/1 ! videoconvert ! videoscale ! \
         v4l2loopsink name=sink device={LOCK} allow-format-lock=true"
    ));
    p.set_state_wait(gst::State::Playing, T)
        .expect("allow-format-lock converts");
    let sinkpad = p.by_name("sink").static_pad("sink").expect("sink pad");
    vcambridge_tests::wait_for(T, "negotiated caps", || sinkpad.current_caps());
    let negotiated = sinkpad.current_caps().expect("caps").to_string();
    assert!(
        negotiated.contains("YUY2") && negotiated.contains("width=(int)320"),
        "{negotiated}"
    );
    vcambridge_tests::wait_for(T, "frames written", || {
        (stats(&p).get::<u64>("frames-written").unwrap_or(0) >= 3).then_some(())
    });
    drop(p);
    drop(reader);
}

/// A format change mid-stream with no reader holding the device (what an RTMP stream changing
/// resolution does): the sink lets go of the device, sets the new format and readers get it.
/// A program that merely has the node open at that moment (here for 600 ms: a reader that is
/// exiting, `v4l2-ctl`, a camera list) keeps the old format on 0.12.x until it closes; the
/// sink's reopen waits that out instead of failing (this raced with the `v4l2-ctl` polls below).
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn renegotiation_without_readers() {
    guest_only();
    let p = Pipeline::new(&format!(
        "videotestsrc is-live=true pattern=colors ! capsfilter name=cf \
         caps=video/x-raw,format=YUY2,width=320,height=240,framerate=15/1 ! \
         v4l2loopsink name=sink device={EXCL}"
    ));
    p.set_state_wait(gst::State::Playing, T).expect("plays");
    let (frames, _) = read_v4l2src(EXCL, 2, T).expect("first format");
    assert_frames_equal(
        "before",
        &frames,
        &reference_frame("colors", "YUY2", 320, 240),
    );
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", 256i32)
        .field("height", 256i32)
        .field("framerate", gst::Fraction::new(15, 1))
        .build();
    let bystander = std::fs::File::open(EXCL).expect("open the node read-only");
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        drop(bystander);
    });
    p.by_name("cf").set_property("caps", &caps);
    let deadline = Instant::now() + T;
    loop {
        if let Some(e) = p.pop_error(Duration::ZERO) {
            panic!("renegotiation failed: {e}");
        }
        let out = run_with_timeout(
            "v4l2-ctl --get-fmt-video",
            Command::new("v4l2-ctl").args(["-d", EXCL, "--get-fmt-video"]),
            T,
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("256/256") && text.contains("YU12") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the device did not switch to I420 256x256: {text}; sink caps {:?}; {}",
            p.by_name("sink")
                .static_pad("sink")
                .and_then(|p| p.current_caps()),
            stats(&p)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    closer.join().expect("closer");
    let (frames, caps) = read_v4l2src(EXCL, 2, T).expect("second format");
    assert!(caps.to_string().contains("I420"), "{caps}");
    assert_frames_equal(
        "after",
        &frames,
        &reference_frame("colors", "I420", 256, 256),
    );
    assert!(p.pop_error(Duration::ZERO).is_none());
}

/// `offer-pool=true`: the sink's stats after upstream wrote `min` frames or more, checked to
/// have gone through the device pool with no copy.
fn assert_zero_copy(what: &str, st: &gst::Structure, min: u64) {
    let zero = st.get::<u64>("frames-zero-copy").unwrap_or(0);
    assert!(
        zero >= min,
        "{what}: {zero} zero-copy frames (< {min}): {st}"
    );
    assert_eq!(
        st.get::<u64>("frames-copied").ok(),
        Some(0),
        "{what}: frames copied: {st}"
    );
    assert_eq!(st.get::<f64>("copies-per-frame").ok(), Some(0.0), "{st}");
    assert_eq!(st.get::<bool>("pool-offered").ok(), Some(true), "{st}");
}

/// `offer-pool=true` with videotestsrc (which takes the pool from the allocation query):
/// frames arrive intact (every byte checked, v4l2src and v4l2-ctl; v4l2-ctl only for RGB
/// 322) with 0 copies; where
/// GStreamer's line layout differs from V4L2's (RGB, 322 pixels: 966-byte lines padded to
/// 968), no pool is offered and the frame is copied, the reason given in `stats`. After NULL
/// the device is free again (exclusive_caps=1: output announced), although videotestsrc's
/// pool still held device buffers when the sink stopped.
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn pooled_frames_intact_with_zero_copies() {
    guest_only();
    let dir = scratch_dir("pooled");
    for (format, w, h, pooled) in [
        ("YUY2", 320, 240, true),
        ("I420", 320, 180, true),
        ("RGB", 322, 180, false),
    ] {
        let what = format!("{format} {w}x{h}");
        let expected = reference_frame("colors", format, w, h);
        let p = writer(
            &format!("device={EXCL} offer-pool=true"),
            &format!("video/x-raw,format={format},width={w},height={h},framerate=15/1"),
        );
        p.set_state_wait(gst::State::Playing, T)
            .unwrap_or_else(|e| panic!("{what}: writer failed: {e}"));
        // GStreamer 1.22's v4l2src does not read lines GStreamer would pad (RGB 322).
        if pooled {
            let (frames, _) =
                read_v4l2src(EXCL, 5, T).unwrap_or_else(|e| panic!("{what}: v4l2src: {e}"));
            assert_frames_equal(&format!("v4l2src {what} (pool)"), &frames, &expected);
        }
        let frames = read_v4l2ctl(EXCL, 5, expected.len(), &dir, T)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_frames_equal(&format!("v4l2-ctl {what} (pool)"), &frames, &expected);
        let st = stats(&p);
        if pooled {
            assert_zero_copy(&what, &st, 5);
        } else {
            assert_eq!(st.get::<u64>("frames-zero-copy").ok(), Some(0), "{st}");
            let why = st.get::<String>("copy-reason").unwrap_or_default();
            assert!(why.contains("line layout"), "{what}: copy-reason {why:?}");
            let copies = st.get::<f64>("copies-per-frame").unwrap_or(0.0);
            assert!((copies - 1.0).abs() < 1e-9, "{what}: {st}");
        }
        assert!(p.pop_error(Duration::ZERO).is_none());
        p.set_state_wait(gst::State::Null, T).expect("writer stops");
        assert_eq!(
            device_caps(EXCL),
            (false, true),
            "{what}: after the writer left the device offers output again"
        );
    }
}

/// `offer-pool=true`, upstream ends (EOS): keep-alive copies the last frame once into a second
/// device buffer of the pool and from then on queues the two in turn (no copy; the last
/// frame's pixels); with a placeholder no pool is offered (keep-alive copies the placeholder
/// into the device buffers in turn, which the pool would hold) and `copy-reason` says so.
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn pooled_keepalive() {
    guest_only();
    for placeholder in [None, Some("#00ff00")] {
        let p = Pipeline::new(&format!(
            "videotestsrc num-buffers=10 pattern=colors ! \
             video/x-raw,format=I420,width=320,height=180,framerate=10/1 ! \
             v4l2loopsink name=sink device={EXCL} offer-pool=true {}",
            placeholder
                .map(|c| format!("placeholder={c}"))
                .unwrap_or_default()
        ));
        p.set_state_wait(gst::State::Playing, T).expect("plays");
        p.wait_eos(T);
        let t = arrivals(EXCL, Duration::from_secs(3));
        assert!(
            t.len() >= 18,
            "keep-alive delivered {} frames in 3 s after EOS: {t:?}; {}",
            t.len(),
            stats(&p)
        );
        let (frames, _) = read_v4l2src(EXCL, 2, T).expect("frames after EOS");
        let st = stats(&p);
        assert_eq!(st.get::<u64>("frames-written").ok(), Some(10), "{st}");
        let repeated = st.get::<u64>("frames-repeated").unwrap_or(0);
        assert!(repeated >= 18, "{st}");
        match placeholder {
            None => {
                assert_frames_equal(
                    "pooled keep-alive frame",
                    &frames,
                    &reference_frame("colors", "I420", 320, 180),
                );
                // One copy for the whole stall: the twin buffer the repeats alternate with.
                let zero = st.get::<u64>("frames-zero-copy").unwrap_or(0);
                assert_eq!(zero, 10 + repeated - 1, "{st}");
                assert_eq!(st.get::<u64>("frames-copied").ok(), Some(1), "{st}");
                let why = st.get::<String>("copy-reason").unwrap_or_default();
                assert!(why.contains("second device buffer"), "copy-reason {why:?}");
            }
            Some(_) => {
                let mut f = vec![144; 320 * 180];
                f.extend(std::iter::repeat_n(54, 160 * 90));
                f.extend(std::iter::repeat_n(34, 160 * 90));
                assert_frames_equal("pooled placeholder frame", &frames, &f);
                // No pool: the placeholder needs the device buffers in turn.
                assert_eq!(st.get::<u64>("frames-zero-copy").ok(), Some(0), "{st}");
                assert_eq!(st.get::<bool>("pool-offered").ok(), Some(false), "{st}");
                let why = st.get::<String>("copy-reason").unwrap_or_default();
                assert!(why.contains("placeholder"), "copy-reason {why:?}: {st}");
            }
        }
        p.set_state_wait(gst::State::Null, T).expect("stops");
    }
}

/// `offer-pool=true`, a live source paused and resumed: while PAUSED keep-alive feeds the
/// reader; on resume frames flow again with no copy.
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn pooled_pause_and_resume() {
    guest_only();
    let p = writer(
        &format!("device={PLAIN} offer-pool=true"),
        "video/x-raw,format=YUY2,width=320,height=240,framerate=10/1",
    );
    p.set_state_wait(gst::State::Playing, T).expect("plays");
    std::thread::sleep(Duration::from_millis(500));
    p.set_state_wait(gst::State::Paused, T).expect("pauses");
    let t = arrivals(PLAIN, Duration::from_secs(2));
    assert!(t.len() >= 12, "PAUSED pipeline: {} frames in 2 s", t.len());
    let paused = stats(&p);
    assert!(
        paused.get::<u64>("frames-repeated").unwrap_or(0) >= 12,
        "{paused}"
    );
    // videotestsrc may hold the other device buffer in its clock wait: then there is no twin
    // and the same buffer is queued again.
    assert!(
        paused.get::<u64>("frames-copied").unwrap_or(0) <= 1,
        "{paused}"
    );
    p.set_state_wait(gst::State::Playing, T).expect("resumes");
    let written = paused.get::<u64>("frames-written").unwrap_or(0);
    let deadline = Instant::now() + T;
    while stats(&p).get::<u64>("frames-written").unwrap_or(0) < written + 10 {
        assert!(
            Instant::now() < deadline,
            "upstream did not resume (no free device buffer?): {}",
            stats(&p)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (frames, _) = read_v4l2src(PLAIN, 3, T).expect("frames after resume");
    assert_frames_equal(
        "after resume",
        &frames,
        &reference_frame("colors", "YUY2", 320, 240),
    );
    let st = stats(&p);
    let zero = st.get::<u64>("frames-zero-copy").unwrap_or(0);
    assert!(zero >= written + 10, "{st}");
    assert!(st.get::<u64>("frames-copied").unwrap_or(0) <= 1, "{st}");
    assert!(p.pop_error(Duration::ZERO).is_none());
    p.set_state_wait(gst::State::Null, T).expect("stops");
}

/// `offer-pool=true`, upstream (videoconvert, writing into the device pool) stalls with no
/// buffer in hand: keep-alive copies the last frame into the other device buffer (the sink now
/// holds both); when input comes back, videoconvert finds no free buffer, the pool asks the
/// sink for the copy back, and frames flow again with no copy (no deadlock).
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn pooled_stall_and_resume() {
    guest_only();
    let p = Pipeline::new(&format!(
        "appsrc name=src is-live=true format=time \
         caps=video/x-raw,format=I420,width=320,height=240,framerate=10/1 ! videoconvert ! \
         video/x-raw,format=YUY2 ! v4l2loopsink name=sink device={PLAIN} offer-pool=true \
         sync=false"
    ));
    let src = p
        .by_name("src")
        .downcast::<gst_app::AppSrc>()
        .expect("appsrc");
    // Live: PLAYING is reached with the first frame (pushed below).
    p.set_state_wait(gst::State::Paused, T).expect("pauses");
    let frame = vec![128u8; 320 * 240 * 3 / 2];
    let mut n = 0u64;
    let mut push = |count: u64| {
        for _ in 0..count {
            let mut b = gst::Buffer::from_slice(frame.clone());
            b.get_mut()
                .expect("writable")
                .set_pts(gst::ClockTime::from_mseconds(100 * n));
            src.push_buffer(b).expect("push");
            n += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let written = |p: &Pipeline| stats(p).get::<u64>("frames-written").unwrap_or(0);
    let wait_written = |p: &Pipeline, count: u64| {
        let deadline = Instant::now() + T;
        while written(p) < count {
            assert!(
                Instant::now() < deadline,
                "upstream stuck (no free device buffer?): {}",
                stats(p)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    push(1);
    p.set_state_wait(gst::State::Playing, T).expect("plays");
    push(4);
    wait_written(&p, 5);
    std::thread::sleep(Duration::from_millis(1500));
    let stalled = stats(&p);
    assert!(
        stalled.get::<u64>("frames-repeated").unwrap_or(0) >= 5,
        "{stalled}"
    );
    assert_eq!(
        stalled.get::<u64>("frames-copied").ok(),
        Some(1),
        "keep-alive's twin: {stalled}"
    );
    push(5);
    wait_written(&p, 10);
    let (frames, _) = read_v4l2src(PLAIN, 1, T).expect("frames after the stall");
    let mut gray = Vec::new();
    for _ in 0..320 * 240 / 2 {
        gray.extend_from_slice(&[128, 128, 128, 128]);
    }
    assert_frames_equal("after the stall", &frames, &gray);
    // Upstream has stopped again by now: keep-alive may have made a second twin.
    let st = stats(&p);
    assert!(st.get::<u64>("frames-zero-copy").unwrap_or(0) >= 9, "{st}");
    let copied = st.get::<u64>("frames-copied").unwrap_or(0);
    assert!((1..=2).contains(&copied), "{st}");
    assert!(p.pop_error(Duration::ZERO).is_none());
    p.set_state_wait(gst::State::Null, T).expect("stops");
}

/// `offer-pool=true`, a format change mid-stream while videotestsrc's pool holds device
/// buffers: the old buffers are orphaned (the device is closed and reopened without waiting
/// for them), upstream gets a new pool for the new format, frames are intact on both sides
/// and no frame was copied.
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn pooled_renegotiation() {
    guest_only();
    let p = Pipeline::new(&format!(
        "videotestsrc is-live=true pattern=colors ! capsfilter name=cf \
         caps=video/x-raw,format=YUY2,width=320,height=240,framerate=15/1 ! \
         v4l2loopsink name=sink device={EXCL} offer-pool=true"
    ));
    p.set_state_wait(gst::State::Playing, T).expect("plays");
    let (frames, _) = read_v4l2src(EXCL, 2, T).expect("first format");
    assert_frames_equal(
        "before",
        &frames,
        &reference_frame("colors", "YUY2", 320, 240),
    );
    let before = stats(&p);
    assert_zero_copy("before", &before, 2);
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", 256i32)
        .field("height", 256i32)
        .field("framerate", gst::Fraction::new(15, 1))
        .build();
    let changed = Instant::now();
    let bystander = std::fs::File::open(EXCL).expect("open the node read-only");
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        drop(bystander);
    });
    p.by_name("cf").set_property("caps", &caps);
    let deadline = Instant::now() + T;
    loop {
        if let Some(e) = p.pop_error(Duration::ZERO) {
            panic!("renegotiation failed: {e}");
        }
        let sink_caps = p
            .by_name("sink")
            .static_pad("sink")
            .and_then(|p| p.current_caps());
        if sink_caps.is_some_and(|c| c.to_string().contains("I420"))
            && stats(&p).get::<u64>("frames-zero-copy").unwrap_or(0)
                > before.get::<u64>("frames-zero-copy").unwrap_or(0) + 2
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no zero-copy frames in the new format: {}",
            stats(&p)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "pooled renegotiation: new format streaming after {} ms",
        changed.elapsed().as_millis()
    );
    closer.join().expect("closer");
    let (frames, caps) = read_v4l2src(EXCL, 2, T).expect("second format");
    assert!(caps.to_string().contains("I420"), "{caps}");
    assert_frames_equal(
        "after",
        &frames,
        &reference_frame("colors", "I420", 256, 256),
    );
    assert_zero_copy("after", &stats(&p), 4);
    assert!(p.pop_error(Duration::ZERO).is_none());
    p.set_state_wait(gst::State::Null, T).expect("stops");
}

/// The sink's own log lines (category `v4l2loopsink`, up to DEBUG) with the time each was
/// logged: they mark when a slow step (reopen, placeholder decode) starts and ends.
struct SinkLog {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    id: Option<gst::log::DebugLogFunction>,
}

impl SinkLog {
    fn start() -> SinkLog {
        gst::log::set_active(true);
        gst::log::set_threshold_for_name("v4l2loopsink", gst::DebugLevel::Debug);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let id = gst::log::add_log_function(move |cat, level, _, _, _, _, msg| {
            if cat.name() == "v4l2loopsink"
                && level <= gst::DebugLevel::Debug
                && let Some(text) = msg.get()
            {
                l.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), text.to_string()));
            }
        });
        SinkLog {
            lines,
            id: Some(id),
        }
    }

    /// When the first line containing `needle` was logged after `since`.
    fn at(&self, needle: &str, since: Instant) -> Option<Instant> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(t, l)| *t >= since && l.contains(needle))
            .map(|(t, _)| *t)
    }
}

impl Drop for SinkLog {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            gst::log::remove_log_function(id);
        }
        gst::log::unset_threshold_for_name("v4l2loopsink");
    }
}

/// One look at the element from the application thread: how long reading `stats` and answering
/// a caps query on the sink pad took.
struct Probe {
    at: Instant,
    stats: Timed,
    caps: Timed,
}

/// How long one call took, and a repeat if the first try took over 50 ms: the qemu TCG guest
/// shares a loaded host whose scheduler can pause a vCPU for tens of milliseconds. A repeat
/// that starts while the slow step is still running and answers fast shows the element was not
/// the cause; a stall behind a lock lasts as long as the slow step, so a repeat started within
/// it is slow too.
struct Timed {
    first: Duration,
    repeat: Option<(Instant, Duration)>,
}

impl Timed {
    fn measure(mut f: impl FnMut()) -> Timed {
        let t = Instant::now();
        f();
        let first = t.elapsed();
        let repeat = (first >= Duration::from_millis(50)).then(|| {
            let t = Instant::now();
            f();
            (t, t.elapsed())
        });
        Timed { first, repeat }
    }

    /// The answer time that counts for a slow step ending at `to`.
    fn within(&self, to: Instant) -> Duration {
        match self.repeat {
            Some((at, took)) if at < to => self.first.min(took),
            _ => self.first,
        }
    }
}

/// Reads `stats` and queries the sink pad's caps every 10 ms until `done` (≤ `T`).
fn probe_until(sink: &gst::Element, mut done: impl FnMut() -> bool) -> Vec<Probe> {
    let pad = sink.static_pad("sink").expect("sink pad");
    let deadline = Instant::now() + T;
    let mut probes = Vec::new();
    while !done() && Instant::now() < deadline {
        let at = Instant::now();
        let stats = Timed::measure(|| {
            let _ = sink.property::<gst::Structure>("stats");
        });
        let caps = Timed::measure(|| {
            let caps = pad.query_caps(None);
            assert!(!caps.is_empty(), "caps query answered empty caps");
        });
        probes.push(Probe { at, stats, caps });
        std::thread::sleep(Duration::from_millis(10));
    }
    probes
}

/// The probes made between `from` and `to` (or overlapping `from`): each answered within 50 ms (see [`Timed`]), and at
/// least `min` of them. Prints the figures and keeps them in the guest's output directory.
fn assert_answers_within_50ms(
    what: &str,
    probes: &[Probe],
    from: Instant,
    to: Instant,
    min: usize,
) {
    let during: Vec<&Probe> = probes
        .iter()
        // Started inside the window, or started before it and still waiting when it began.
        .filter(|p| p.at < to && p.at + p.stats.first + p.caps.first >= from)
        .collect();
    let max_stats = during
        .iter()
        .map(|p| p.stats.within(to))
        .max()
        .unwrap_or_default();
    let max_caps = during
        .iter()
        .map(|p| p.caps.within(to))
        .max()
        .unwrap_or_default();
    let repeated = during
        .iter()
        .filter(|p| p.stats.repeat.is_some() || p.caps.repeat.is_some())
        .count();
    let figures = format!(
        "v4l2loopback {}: {what}: {} ms; {} probes during it; slowest stats read {:?}, slowest \
         caps query {:?}; {repeated} probe(s) repeated after a first try over 50 ms",
        vcambridge_tests::v4l2::loopback_version(),
        (to - from).as_millis(),
        during.len(),
        max_stats,
        max_caps
    );
    eprintln!("{figures}");
    // Kept beside the console log (target/guest/out/<version>/) by tests/guest/run.sh.
    if let Some(dir) = std::env::var_os("VCAMBRIDGE_GUEST_OUT") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(&dir).join("stall-figures.txt"))
        {
            let _ = writeln!(f, "{figures}");
        }
    }
    let limit = Duration::from_millis(50);
    assert!(
        max_stats < limit && max_caps < limit,
        "{what}: the element stalled the application thread (stats {max_stats:?}, caps query \
         {max_caps:?}; limit {limit:?})"
    );
    assert!(
        during.len() >= min,
        "{what} lasted {:?}: only {} probes fell inside it (need {min})",
        to - from,
        during.len()
    );
}

/// While the placeholder image is being decoded (a 1920x1080 noise PNG, scaled to the
/// negotiated 320x240: a whole decode pipeline inside set_caps), `stats` and caps queries answer
/// within 50 ms.
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn stats_and_caps_answer_while_the_placeholder_decodes() {
    guest_only();
    let dir = scratch_dir("big-placeholder");
    let png = dir.join("noise.png");
    Pipeline::new(&format!(
        "videotestsrc num-buffers=1 pattern=snow ! video/x-raw,width=1920,height=1080 ! \
         pngenc compression-level=1 ! filesink location={}",
        png.display()
    ))
    .wait_eos_from_playing(T);
    let log = SinkLog::start();
    let p = writer(
        &format!("device={PLAIN} placeholder={}", png.display()),
        "video/x-raw,format=YUY2,width=320,height=240,framerate=15/1",
    );
    let sink = p.by_name("sink");
    let since = Instant::now();
    p.pipeline.set_state(gst::State::Playing).expect("plays");
    let probes = probe_until(&sink, || log.at("placeholder ready", since).is_some());
    if let Some(e) = p.pop_error(Duration::ZERO) {
        panic!("decoding the placeholder failed: {e}");
    }
    let from = log
        .at("preparing placeholder", since)
        .expect("the sink logged the start of the decode");
    let to = log
        .at("placeholder ready", since)
        .expect("the placeholder was decoded within the time limit");
    assert_answers_within_50ms("placeholder decode", &probes, from, to, 3);
    p.set_state_wait(gst::State::Playing, T).expect("plays");
    vcambridge_tests::wait_for(T, "frames written", || {
        (stats(&p).get::<u64>("frames-written").unwrap_or(0) >= 2).then_some(())
    });
    p.set_state_wait(gst::State::Null, T).expect("stops");
}

/// A duplicate of this process's open file of `device` (the sink's, found through
/// `/proc/self/fd`): while it lives, v4l2loopback still counts the sink's old writer as attached
/// after the sink closed its own descriptors — as when a forked child still holds a writer's
/// file. Closing it releases the writer.
fn hold_writer_file(device: &str) -> OwnedFd {
    let entries = std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd");
    for entry in entries.flatten() {
        if std::fs::read_link(entry.path()).is_ok_and(|target| target == Path::new(device))
            && let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
        {
            // SAFETY: dup of a descriptor this process has open; the result is owned below.
            let dup = unsafe { libc::dup(fd) };
            if dup >= 0 {
                // SAFETY: a fresh descriptor nobody else owns.
                return unsafe { OwnedFd::from_raw_fd(dup) };
            }
        }
    }
    panic!("the sink has no file of {device} open");
}

/// While a format change waits for the device (the sink's previous writer file is still held
/// elsewhere for a second, so the exclusive_caps device keeps offering capture only), `stats`
/// and caps queries answer within 50 ms; once that file is closed the sink gets the device at
/// once and the new format reaches readers.
#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn stats_and_caps_answer_while_a_reopen_waits() {
    guest_only();
    let log = SinkLog::start();
    let p = Pipeline::new(&format!(
        "videotestsrc is-live=true pattern=colors ! capsfilter name=cf \
         caps=video/x-raw,format=YUY2,width=320,height=240,framerate=15/1 ! \
         v4l2loopsink name=sink device={EXCL}"
    ));
    p.set_state_wait(gst::State::Playing, T).expect("plays");
    let sink = p.by_name("sink");
    vcambridge_tests::wait_for(T, "frames written", || {
        (stats(&p).get::<u64>("frames-written").unwrap_or(0) >= 2).then_some(())
    });
    let held = hold_writer_file(EXCL);
    let since = Instant::now();
    let lines = log.lines.clone();
    let holder = std::thread::spawn(move || {
        let deadline = Instant::now() + T;
        let reopening = || {
            lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|(t, l)| *t >= since && l.contains("reopening"))
        };
        while !reopening() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_secs(1));
        drop(held);
        Instant::now()
    });
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", 256i32)
        .field("height", 256i32)
        .field("framerate", gst::Fraction::new(15, 1))
        .build();
    p.by_name("cf").set_property("caps", &caps);
    let probes = probe_until(&sink, || log.at("reopened", since).is_some());
    let released = holder.join().expect("the holder ends");
    if let Some(e) = p.pop_error(Duration::from_millis(200)) {
        panic!("the format change failed: {e}");
    }
    let from = log
        .at("reopening", since)
        .expect("the sink logged the reopen");
    let to = log
        .at("reopened", since)
        .expect("the sink reopened the device");
    assert!(
        to - from >= Duration::from_millis(900),
        "the reopen did not wait for the held writer file: {:?}",
        to - from
    );
    // Woken by the close (inotify), not by its 100 ms recheck.
    eprintln!(
        "the sink reopened {:?} after the writer file was closed",
        to.saturating_duration_since(released)
    );
    assert_answers_within_50ms("reopen waiting for the device", &probes, from, to, 10);
    let (frames, caps) = read_v4l2src(EXCL, 2, T).expect("frames in the new format");
    assert!(caps.to_string().contains("I420"), "{caps}");
    assert_frames_equal(
        "after the waited reopen",
        &frames,
        &reference_frame("colors", "I420", 256, 256),
    );
    assert!(p.pop_error(Duration::ZERO).is_none());
    p.set_state_wait(gst::State::Null, T).expect("stops");
}
