//! `v4l2loopsink` against the real v4l2loopback module, inside the qemu guest of
//! `tests/guest/run.sh` (which loads v4l2loopback with devices 10 `vcam-excl` exclusive_caps=1,
//! 11 `vcam-plain` exclusive_caps=0, 12 `vcam-lock` exclusive_caps=1, plus vivid's capture-only
//! /dev/video0). Ignored on the host: run them with `tests/guest/run.sh`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gst::prelude::*;
use vcambridge_tests::v4l2::{
    Pipeline, assert_frames_equal, device_caps, in_guest, loopback_has_control_device,
    loopback_version, read_ffmpeg, read_v4l2ctl, read_v4l2src, reference_frame, scratch_dir,
};
use vcambridge_tests::{gst_command, init_gst, run_with_timeout};

const EXCL: &str = "/dev/video10";
const PLAIN: &str = "/dev/video11";
const LOCK: &str = "/dev/video12";
/// TCG is slow: generous bounds, but every wait has one.
const T: Duration = Duration::from_secs(40);

fn guest_only() {
    assert!(
        in_guest(),
        "these tests need the v4l2loopback module: run tests/guest/run.sh"
    );
    init_gst();
    eprintln!("v4l2loopback {}", loopback_version());
}

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

#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn roundtrip_yuy2() {
    // 320x240 YUY2 (153600 bytes, 37.5 pages) is where page-rounded bytesused made ffmpeg drop
    // frames with v4l2loopback 0.12.7; 256x256 is page-aligned.
    roundtrip("YUY2", &[(320, 240), (256, 256)]);
}

#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn roundtrip_i420() {
    roundtrip("I420", &[(320, 180), (256, 256)]);
}

#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn roundtrip_nv12() {
    roundtrip("NV12", &[(320, 180), (256, 256)]);
}

#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn roundtrip_bgrx() {
    roundtrip("BGRx", &[(320, 180), (256, 256)]);
}

#[test]
#[ignore = "needs the v4l2loopback module: tests/guest/run.sh"]
fn roundtrip_rgb() {
    roundtrip("RGB", &[(320, 180), (256, 256)]);
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
    let reader = Pipeline::new(&format!("v4l2src device={LOCK} ! fakesink sync=false"));
    reader
        .set_state_wait(gst::State::Playing, T)
        .expect("reader streams");
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
    let (frames, caps) = read_v4l2src(EXCL, 2, T).expect("second format");
    assert!(caps.to_string().contains("I420"), "{caps}");
    assert_frames_equal(
        "after",
        &frames,
        &reference_frame("colors", "I420", 256, 256),
    );
    assert!(p.pop_error(Duration::ZERO).is_none());
}
