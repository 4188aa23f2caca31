// SPDX-License-Identifier: MPL-2.0
//! The Python camera API (`plugins/shmring/python/vcamera.py`) and `pipelines/stdin-camera.sh`
//! on the host, with the PipeWire backend (a private PipeWire session per test) read by
//! `pipewiresrc` in another process, plus the errors that need no loopback module. The
//! v4l2loopback side runs in the qemu guest (`vcamera_guest.rs`).
//!
//! The app is `tests/tests/vcamera_app.py` (events as JSON lines on stdout).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vcambridge_tests::pipewire::PipeWireSession;
use vcambridge_tests::vcamera::{App, app, gone, pids};
use vcambridge_tests::{ChildGuard, have_program, plugin_dir, python, wait_for, workspace_root};

const W: usize = 320;
const H: usize = 240;
const FRAME: usize = W * H * 3;
const COLOR: [u8; 3] = [200, 40, 90];
const WARMUP: [u8; 3] = [20, 60, 220];
const END: [u8; 3] = [30, 200, 40];
const T: Duration = Duration::from_secs(30);

/// A `pipewiresrc` consumer converting to RGB and writing frames unbuffered to `out`.
fn rgb_consumer(session: &PipeWireSession, node: &str, out: &Path) -> ChildGuard {
    let tail = format!(
        "videoconvert ! video/x-raw,format=RGB,width={W},height={H} ! filesink buffer-mode=2 location={}",
        out.display()
    );
    ChildGuard::spawn(
        "pipewiresrc consumer",
        &mut session.consumer(node, None, &tail),
    )
}

/// Frames in `out` classified by colour: (colour → count, sequence of colours in order).
fn classify(out: &Path, colors: &[[u8; 3]], tolerance: u8) -> Vec<Option<usize>> {
    let data = std::fs::read(out).unwrap_or_default();
    data.chunks_exact(FRAME)
        .map(|f| {
            colors.iter().position(|c| {
                f.chunks_exact(3)
                    .all(|px| (0..3).all(|i| px[i].abs_diff(c[i]) <= tolerance))
            })
        })
        .collect()
}

fn frames_in(out: &Path) -> usize {
    std::fs::metadata(out)
        .map(|m| m.len() as usize)
        .unwrap_or(0)
        / FRAME
}

#[test]
fn pipewire_camera_frames_reach_pipewiresrc_at_the_set_rate() {
    if !vcambridge_tests::pipewire::available() {
        eprintln!("skipped: PipeWire not installed");
        return;
    }
    let session = PipeWireSession::start();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let out = dir.path().join("frames.rgb");
    let node = "vcam-py-rate";
    let app = App::spawn(&mut app(
        Some(&session),
        &[
            "stream",
            "--backend",
            "pipewire",
            "--device",
            node,
            "--go",
            go.to_str().unwrap(),
        ],
    ));
    let ready = app.expect("ready", T);
    assert_eq!(ready["backend"], "pipewire");
    assert_eq!(ready["device"], node);
    let obj = session.wait_for_node(node, T);
    assert_eq!(obj["info"]["props"]["media.class"], "Video/Source");
    assert_eq!(obj["info"]["props"]["media.role"], "Camera");
    let consumer = rgb_consumer(&session, node, &out);
    wait_for(T, "the consumer's first frame", || {
        (frames_in(&out) > 0).then_some(())
    });
    std::fs::write(&go, b"").unwrap();
    let done = app.expect("done", T);
    let closed = app.expect("closed", T);
    std::thread::sleep(Duration::from_millis(300));
    drop(consumer);

    // The app side: 90 sends paced by sleep_until_next_frame(), 89 intervals of 1/30 s.
    let span = done["span"].as_f64().unwrap();
    let expected = 89.0 / 30.0;
    assert!(
        (span - expected).abs() / expected < 0.05,
        "90 frames took {span:.3} s from first to last send, expected {expected:.3} s ± 5 %"
    );
    assert!(closed["close_seconds"].as_f64().unwrap() < 3.0, "{closed}");

    // The consumer side: every frame one of the three colours, exactly (RGB all the way).
    let seq = classify(&out, &[WARMUP, COLOR, END], 0);
    assert!(
        seq.iter().all(|c| c.is_some()),
        "a frame of another colour: {seq:?}"
    );
    let colored = seq.iter().filter(|c| **c == Some(1)).count();
    assert!(
        (85..=90).contains(&colored),
        "pipewiresrc got {colored} frames of the colour, expected 85..=90 of 90"
    );
    // In order: warm-up, then the colour, then the end frames.
    let order: Vec<usize> = seq.iter().map(|c| c.unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    eprintln!("app span {span:.3} s; consumer: {colored} of 90 frames");
}

#[test]
fn stdin_script_turns_ffmpeg_rawvideo_into_a_pipewire_camera() {
    if !vcambridge_tests::pipewire::available() || !have_program("ffmpeg") {
        eprintln!("skipped: PipeWire or ffmpeg not installed");
        return;
    }
    let session = PipeWireSession::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("frames.rgb");
    let reference = dir.path().join("ref.rgb");
    let node = "vcam-stdin";
    // What ffmpeg's colour source makes of 0xc8285a in rgb24 (it works in YUV: not exactly it).
    let lavfi = format!("color=c=0xC8285A:s={W}x{H}:r=30");
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i", &lavfi, "-frames:v", "1"])
        .args(["-pix_fmt", "rgb24", "-f", "rawvideo", "-y"])
        .arg(&reference)
        .status()
        .unwrap();
    assert!(st.success());
    let expected = std::fs::read(&reference).unwrap();
    assert_eq!(expected.len(), FRAME);
    let color = [expected[0], expected[1], expected[2]];

    // ffmpeg -re: a real-time producer of 150 frames (5 s); the script paces at 30 fps too.
    let script = workspace_root().join("pipelines/stdin-camera.sh");
    let pipeline = format!(
        "ffmpeg -v error -re -f lavfi -i {lavfi} -frames:v 150 -pix_fmt rgb24 -f rawvideo - | \
         {} --pixel-format rgb24 --size {W}x{H} --fps 30 --sink pipewire --device {node}",
        script.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &pipeline])
        .env("GST_PLUGIN_PATH", plugin_dir());
    session.apply_env(&mut cmd);
    let producer = ChildGuard::spawn("ffmpeg | stdin-camera.sh", &mut cmd);
    session.wait_for_node(node, T);
    let consumer = rgb_consumer(&session, node, &out);
    let res = producer.wait_output(T);
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    assert!(res.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("PipeWire camera node '{node}'"))
            && stderr.contains("150 frames sent"),
        "{stderr}"
    );
    drop(consumer);
    let seq = classify(&out, &[color], 0);
    let n = seq.iter().filter(|c| c.is_some()).count();
    assert!(
        n >= 60 && n == seq.len(),
        "consumer: {n} of {} frames have ffmpeg's colour {color:?} (the consumer attaches late, \
         so >= 60 of the 150 are expected)",
        seq.len()
    );
}

#[test]
fn errors_name_the_problem_and_the_fix() {
    // No PipeWire daemon behind XDG_RUNTIME_DIR: the helper's error comes back as CameraError.
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = app(
        None,
        &["forever", "--backend", "pipewire", "--device", "vcam-x"],
    );
    cmd.env("XDG_RUNTIME_DIR", empty.path())
        .env_remove("PIPEWIRE_REMOTE");
    let a = App::spawn(&mut cmd);
    let ev = a.expect("error", T);
    let msg = ev["message"].as_str().unwrap();
    assert_eq!(ev["type"], "CameraError");
    assert!(
        msg.contains(&format!(
            "could not connect to the PipeWire daemon at {}/pipewire-0",
            empty.path().display()
        )) && msg.contains("start PipeWire for this user"),
        "{msg}"
    );

    // No v4l2loopback device (the host has the module unloaded) and no PipeWire: auto names both.
    let loopback_loaded = Path::new("/sys/module/v4l2loopback").exists();
    if loopback_loaded {
        eprintln!("v4l2loopback is loaded here: the no-device cases run only in the guest");
    } else {
        for (backend, both) in [("auto", true), ("v4l2", false)] {
            let mut cmd = app(None, &["forever", "--backend", backend]);
            cmd.env("XDG_RUNTIME_DIR", empty.path());
            let ev = App::spawn(&mut cmd).expect("error", T);
            let msg = ev["message"].as_str().unwrap();
            assert!(
                msg.contains("no v4l2loopback device exists")
                    && msg.contains(
                        "sudo modprobe v4l2loopback devices=1 video_nr=10 \
                         card_label=\"vcambridge\" exclusive_caps=1"
                    ),
                "{backend}: {msg}"
            );
            assert_eq!(
                msg.contains(&format!(
                    "no PipeWire session (no socket at {}/pipewire-0",
                    empty.path().display()
                )),
                both,
                "{backend}: {msg}"
            );
        }
    }

    // Frame size, shape and dtype against a working camera.
    if !vcambridge_tests::pipewire::available() {
        eprintln!("skipped the frame checks: PipeWire not installed");
        return;
    }
    let session = PipeWireSession::start();
    let a = App::spawn(&mut app(
        Some(&session),
        &[
            "errors",
            "--backend",
            "pipewire",
            "--device",
            "vcam-err",
            "--size",
            "64x48",
        ],
    ));
    let mut cases = std::collections::HashMap::new();
    loop {
        let ev = a.next(T);
        assert_eq!(ev["event"], "case", "{ev}");
        let name = ev["name"].as_str().unwrap().to_string();
        let last = name == "closed";
        cases.insert(name, ev);
        if last {
            break;
        }
    }
    let raised = |name: &str, ty: &str, text: &str| {
        let ev = &cases[name];
        assert_eq!(ev["raised"], ty, "{name}: {ev}");
        let msg = ev["message"].as_str().unwrap();
        assert!(msg.contains(text), "{name}: {msg}");
    };
    raised(
        "short_bytes",
        "ValueError",
        "frame has 10 bytes; RGB 64x48 needs 9216 bytes (numpy shape (48, 64, 3))",
    );
    raised("not_bytes", "ValueError", "frame must be bytes, bytearray");
    raised(
        "odd_i420",
        "ValueError",
        "I420 needs an even width and height, got 63x48",
    );
    raised("closed", "CameraError", "the camera is closed");
    assert_eq!(cases["good_bytes"]["raised"], serde_json::Value::Null);
    if cases.contains_key("numpy_rgba") {
        raised(
            "numpy_rgba",
            "ValueError",
            "frame shape (48, 64, 4) does not match RGB 64x48: expected (48, 64, 3)",
        );
        raised(
            "numpy_transposed",
            "ValueError",
            "frame shape (64, 48, 3) does not match RGB 64x48: expected (48, 64, 3)",
        );
        raised(
            "numpy_float",
            "ValueError",
            "frame dtype is float32, expected uint8",
        );
        assert_eq!(cases["numpy_good"]["raised"], serde_json::Value::Null);
        assert_eq!(cases["numpy_strided"]["raised"], serde_json::Value::Null);
    } else {
        eprintln!(
            "numpy not installed for {}: numpy cases skipped",
            python().display()
        );
    }

    // The stdin script: a producer whose frames don't match --size, and bad flags.
    let script = workspace_root().join("pipelines/stdin-camera.sh");
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!(
            "head -c 100000 /dev/zero | {} --pixel-format rgb24 --size 64x48 --fps 30 \
             --sink pipewire --device vcam-partial",
            script.display()
        ),
    ])
    .env("GST_PLUGIN_PATH", plugin_dir());
    session.apply_env(&mut cmd);
    let res = ChildGuard::spawn("stdin-camera partial", &mut cmd).wait_output(T);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("stdin ended inside a frame (7840 of 9216 bytes)")
            && stderr.contains("10 frames sent"),
        "{stderr}"
    );
    let res = ChildGuard::spawn(
        "stdin-camera bad flags",
        Command::new(&script).args(["--pixel-format", "rgb48", "--size", "64x48", "--fps", "30"]),
    )
    .wait_output(T);
    assert_eq!(res.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&res.stderr).contains("unknown pixel format 'rgb48'; known: rgb24"),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[test]
fn killed_app_leaves_no_helper_behind() {
    if !vcambridge_tests::pipewire::available() {
        eprintln!("skipped: PipeWire not installed");
        return;
    }
    let session = PipeWireSession::start();
    let node = "vcam-kill";
    let a = App::spawn(&mut app(
        Some(&session),
        &["forever", "--backend", "pipewire", "--device", node],
    ));
    let ready = a.expect("ready", T);
    let ring = PathBuf::from(format!(
        "/dev/shm{}",
        ready["ring"].as_str().expect("ring name")
    ));
    let helper = pids(&ready);
    assert!(
        helper.iter().all(|p| !gone(*p)),
        "helper running: {helper:?}"
    );
    assert!(ring.exists());
    session.wait_for_node(node, T);
    std::thread::sleep(Duration::from_millis(500));

    a.child.signal(libc::SIGKILL);
    let killed = Instant::now();
    wait_for(Duration::from_secs(2), "the helper to exit", || {
        helper.iter().all(|p| gone(*p)).then_some(())
    });
    let took = killed.elapsed();
    wait_for(Duration::from_secs(1), "the ring to be removed", || {
        (!ring.exists()).then_some(())
    });
    eprintln!("helper (supervisor + gst-launch) gone {took:?} after SIGKILL of the app");
    // And the camera node with it.
    wait_for(Duration::from_secs(5), "the node to disappear", || {
        let dump = session.dump();
        (!dump
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["info"]["props"]["node.name"].as_str() == Some(node)))
        .then_some(())
    });
}

#[test]
fn helper_dying_mid_stream_is_an_exception_and_close_cleans_up() {
    if !vcambridge_tests::pipewire::available() {
        eprintln!("skipped: PipeWire not installed");
        return;
    }
    let session = PipeWireSession::start();
    let a = App::spawn(&mut app(
        Some(&session),
        &["forever", "--backend", "pipewire", "--device", "vcam-die"],
    ));
    let ready = a.expect("ready", T);
    let helper = pids(&ready);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the gst-launch process the app started.
    unsafe {
        libc::kill(helper[1] as i32, libc::SIGKILL);
    }
    let ev = a.expect("error", Duration::from_secs(5));
    let msg = ev["message"].as_str().unwrap();
    assert!(
        msg.starts_with("pipewire camera vcam-die: the helper pipeline exited"),
        "{msg}"
    );
    let res = a.child.wait_output(T);
    assert_eq!(res.status.code(), Some(3));
    assert!(helper.iter().all(|p| gone(*p)));

    // A normal run: close() ends the stream, the helper exits by itself, the ring is removed.
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    std::fs::write(&go, b"").unwrap();
    let a = App::spawn(&mut app(
        Some(&session),
        &[
            "stream",
            "--backend",
            "pipewire",
            "--device",
            "vcam-close",
            "--frames",
            "5",
            "--tail",
            "0",
            "--go",
            go.to_str().unwrap(),
        ],
    ));
    let ready = a.expect("ready", T);
    a.expect("done", T);
    let closed = a.expect("closed", T);
    assert!(closed["close_seconds"].as_f64().unwrap() < 3.0, "{closed}");
    assert!(pids(&ready).iter().all(|p| gone(*p)));
    let res = a.child.wait_output(T);
    assert!(res.status.success());
    let ring = format!("/dev/shm{}", ready["ring"].as_str().expect("ring name"));
    assert!(!Path::new(&ring).exists(), "{ring} left behind");
}
