//! The screencast bridge (`pipelines/screencast-to-wayland.sh`) against real peers: headless
//! mutter with an animating client as the source, PipeWire + wireplumber on a private bus,
//! headless weston as the target (checked with `weston-screenshooter`).
//!
//! Mutter costs about one core while a client animates, so these tests take a shared lock and
//! run one at a time, and keep their sizes small (640x480) except where 1280x720 is asked.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gst::prelude::*;
use vcambridge_tests::pipewire::PipeWireSession;
use vcambridge_tests::screencast::{
    Bridge, Mutter, RgbImage, Weston, animating_client, available, is_cyan, is_magenta,
    is_mutter_background, is_yellow, pid_alive,
};
use vcambridge_tests::{ChildGuard, init_gst, launch_pipeline, wait_for};

/// One mutter at a time (see the module docs).
static SERIAL: Mutex<()> = Mutex::new(());

const SIZE: (u32, u32) = (640, 480);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Source (pipewire + mutter + client) and target (weston) in one private runtime dir.
struct Rig {
    // Drop order: client, bridge users, mutter, weston, then PipeWire and the directory.
    client: Option<ChildGuard>,
    mutter: Mutter,
    weston: Weston,
    pw: PipeWireSession,
}

impl Rig {
    fn start() -> Rig {
        let pw = PipeWireSession::start();
        let mutter = Mutter::start(&pw, SIZE);
        let client = Some(animating_client(&pw, &Mutter::display(&pw)));
        let weston = Weston::start(pw.runtime_dir(), "weston-0", SIZE);
        Rig {
            client,
            mutter,
            weston,
            pw,
        }
    }

    /// The bridge on this rig's session bus, shown on its weston.
    fn bridge(&self, extra: &[&str]) -> Bridge {
        let mut cmd = Bridge::command();
        self.pw.apply_env(&mut cmd);
        cmd.args(["--display", "weston-0", "--stats-interval", "0.5"])
            .args(extra);
        Bridge::spawn(&mut cmd)
    }
}

/// The screenshot shows mutter's desktop around the client's colour bars, full screen.
fn assert_shows_mutter_desktop_and_client(shot: &RgbImage, context: &str) {
    assert_eq!(
        (shot.width, shot.height),
        (SIZE.0 as usize, SIZE.1 as usize),
        "{context}: screenshot size"
    );
    // Mutter's blue desktop in all four corners, including the top where weston's own panel
    // would be if the stream were not full screen.
    for (x, y) in [
        (4, 4),
        (SIZE.0 - 5, 4),
        (4, SIZE.1 - 5),
        (SIZE.0 - 5, SIZE.1 - 5),
    ] {
        let p = shot.pixel(x as usize, y as usize);
        assert!(
            is_mutter_background(p),
            "{context}: pixel ({x},{y}) is {p:?}, not mutter's blue desktop"
        );
    }
    let desktop = shot.count(is_mutter_background);
    assert!(
        desktop > shot.width * shot.height / 2,
        "{context}: only {desktop} pixels of mutter's desktop"
    );
    // The client's 320x240 SMPTE bars: each saturated bar is ~45x160 px.
    for (name, pred) in [
        ("yellow", is_yellow as fn((u8, u8, u8)) -> bool),
        ("cyan", is_cyan),
        ("magenta", is_magenta),
    ] {
        let n = shot.count(pred);
        assert!(
            n > 2000,
            "{context}: only {n} {name} pixels of the client's colour bars"
        );
    }
}

#[test]
fn mutter_screen_reaches_weston_full_screen_at_source_rate() {
    if !available() {
        eprintln!("skipped: mutter/weston/PipeWire/python3-gi missing (scripts/install-deps.sh)");
        return;
    }
    let _serial = serial();
    let rig = Rig::start();
    let mut bridge = rig.bridge(&[]);
    let t0 = Instant::now();
    let first = bridge.wait_stats(
        "frames reaching waylandsink",
        t0,
        Duration::from_secs(30),
        |s| s.frames_out >= 30,
    );
    assert_eq!(first.field("size"), Some("640x480"));
    assert_eq!(
        first.field("buffers"),
        Some("memfd"),
        "shared memory here (no GPU)"
    );

    // 10 s of streaming: how many frames left pipewiresrc (what mutter sent) and how many
    // reached waylandsink.
    let start = bridge.wait_stats("a start mark", first.at, Duration::from_secs(5), |s| {
        s.at > first.at
    });
    let end = bridge.wait_stats(
        "a line 10 s later",
        start.at,
        Duration::from_secs(20),
        |s| s.at >= start.at + Duration::from_secs(10),
    );
    let secs = (end.at - start.at).as_secs_f64();
    let frames_in = end.frames_in - start.frames_in;
    let frames_out = end.frames_out - start.frames_out;
    let rate_in = frames_in as f64 / secs;
    eprintln!(
        "over {secs:.1} s: {frames_in} frames from mutter ({rate_in:.1} fps), {frames_out} to waylandsink"
    );
    assert!(
        rate_in >= 20.0,
        "the source sent only {rate_in:.1} fps while a 30 fps client animates"
    );
    assert!(
        frames_out as f64 >= 0.9 * frames_in as f64,
        "only {frames_out} of {frames_in} frames reached waylandsink"
    );

    let shot = rig.weston.screenshot();
    assert_shows_mutter_desktop_and_client(&shot, "weston while bridging");

    bridge.guard.signal(libc::SIGINT);
    let out = bridge.guard.wait_output(Duration::from_secs(3));
    assert!(out.status.success(), "exit status {}", out.status);
}

#[test]
fn start_headless_brings_up_the_chain_and_ctrl_c_stops_it() {
    if !available() {
        eprintln!("skipped: mutter/weston/PipeWire/python3-gi missing (scripts/install-deps.sh)");
        return;
    }
    let _serial = serial();
    // Only the target exists: no bus, no PipeWire, no mutter.
    let dir = tempfile::Builder::new()
        .prefix("vcb-sc-target-")
        .tempdir()
        .expect("runtime dir");
    let _ = std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    );
    let weston = Weston::start(dir.path(), "weston-0", (1280, 720));
    let mut cmd = Bridge::command();
    cmd.env("XDG_RUNTIME_DIR", dir.path())
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("PIPEWIRE_REMOTE")
        .env_remove("PIPEWIRE_RUNTIME_DIR")
        .args(["--display", "weston-0", "--start-headless", "1280x720"])
        .args(["--stats-interval", "0.5"]);
    let t0 = Instant::now();
    let mut bridge = Bridge::spawn(&mut cmd);
    let (_, line) = bridge.wait_line(
        "clients go to WAYLAND_DISPLAY=",
        t0,
        Duration::from_secs(40),
    );
    let mutter_display = PathBuf::from(line.rsplit_once('=').expect("display path").1);
    let private_dir = mutter_display
        .parent()
        .expect("private runtime dir")
        .to_path_buf();
    // A client on the headless session, so that it has frames to send.
    let mut client_cmd = vcambridge_tests::gst_command("gst-launch-1.0");
    client_cmd
        .args(vcambridge_tests::screencast::ANIMATING_CLIENT)
        .env("XDG_RUNTIME_DIR", &private_dir)
        .env("WAYLAND_DISPLAY", &mutter_display)
        .env_remove("G_DEBUG");
    let _client = ChildGuard::spawn("animating client", &mut client_cmd);
    let shown = bridge.wait_stats("30 frames shown", t0, Duration::from_secs(30), |s| {
        s.frames_out >= 30
    });
    assert_eq!(shown.field("size"), Some("1280x720"));
    let shot = weston.screenshot();
    let bars = shot.count(is_yellow);
    assert!(
        bars > 2000,
        "weston shows no client bars ({bars} yellow px)"
    );
    eprintln!(
        "chain up and showing frames {:.1} s after the start",
        (shown.at - t0).as_secs_f64()
    );

    // Everything the bridge started, by pid.
    let pids: Vec<(String, i32)> = bridge
        .output()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("[screencast] started ")?;
            let (name, pid) = rest.split_once(" (pid ")?;
            Some((name.to_string(), pid.trim_end_matches(')').parse().ok()?))
        })
        .collect();
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["dbus-daemon", "pipewire", "wireplumber", "mutter"],
        "what --start-headless started"
    );
    let bridge_pid = bridge.guard.pid() as i32;

    let sent = Instant::now();
    bridge.guard.signal(libc::SIGINT);
    let out = bridge.guard.wait_output(Duration::from_secs(2));
    assert!(
        out.status.success(),
        "exit status {} after SIGINT",
        out.status
    );
    let still: Vec<&(String, i32)> = pids.iter().filter(|(_, pid)| pid_alive(*pid)).collect();
    let elapsed = sent.elapsed();
    assert!(still.is_empty(), "still running after SIGINT: {still:?}");
    assert!(!pid_alive(bridge_pid));
    assert!(
        elapsed <= Duration::from_secs(2),
        "stopping took {elapsed:?}"
    );
    assert!(
        !private_dir.exists(),
        "the private runtime dir {private_dir:?} was left behind"
    );
    eprintln!(
        "SIGINT -> everything gone in {:.0} ms",
        elapsed.as_secs_f64() * 1000.0
    );
}

#[test]
fn survives_mutter_and_weston_restarts() {
    if !available() {
        eprintln!("skipped: mutter/weston/PipeWire/python3-gi missing (scripts/install-deps.sh)");
        return;
    }
    let _serial = serial();
    let mut rig = Rig::start();
    let mut bridge = rig.bridge(&[]);
    let t0 = Instant::now();
    let before = bridge.wait_stats("frames shown", t0, Duration::from_secs(30), |s| {
        s.frames_out >= 15
    });

    // Mutter crashes: the bridge says so; once mutter's API is back, new frames within 5 s.
    rig.client.take();
    let killed = Instant::now();
    rig.mutter.kill(&rig.pw);
    bridge.wait_line("went away", killed, Duration::from_secs(10));
    rig.mutter.restart(&rig.pw);
    let api_back = Instant::now();
    rig.client = Some(animating_client(&rig.pw, &Mutter::display(&rig.pw)));
    let resumed_from = bridge
        .stats()
        .last()
        .map(|s| s.frames_out)
        .unwrap_or(before.frames_out);
    let resumed = bridge.wait_stats(
        "frames of the new session",
        api_back,
        Duration::from_secs(10),
        |s| s.frames_out > resumed_from,
    );
    let delay = resumed.at - api_back;
    eprintln!(
        "new session's frames {:.2} s after mutter's API returned (node {} -> {})",
        delay.as_secs_f64(),
        before.node,
        resumed.node
    );
    assert!(
        delay <= Duration::from_secs(5),
        "new frames only {delay:?} after the API returned"
    );
    bridge.wait_line("is back", killed, Duration::from_secs(1));

    // Weston goes away and comes back: the bridge waits and reconnects.
    let killed = Instant::now();
    rig.weston.kill();
    bridge.wait_line(
        "target compositor went away",
        killed,
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(500));
    rig.weston.restart();
    let (back, _) = bridge.wait_line("is back: reconnecting", killed, Duration::from_secs(10));
    let n = bridge.stats().last().map(|s| s.frames_out).unwrap_or(0);
    bridge.wait_stats(
        "frames after reconnecting",
        back,
        Duration::from_secs(10),
        |s| s.frames_out >= n + 15,
    );
    let shot = rig.weston.screenshot();
    assert_shows_mutter_desktop_and_client(&shot, "the restarted weston");

    bridge.guard.signal(libc::SIGTERM);
    let out = bridge.guard.wait_output(Duration::from_secs(3));
    assert!(
        out.status.success(),
        "exit status {} after SIGTERM",
        out.status
    );
}

#[test]
fn also_ring_delivers_the_frames_weston_shows() {
    if !available() {
        eprintln!("skipped: mutter/weston/PipeWire/python3-gi missing (scripts/install-deps.sh)");
        return;
    }
    let _serial = serial();
    init_gst();
    let mut rig = Rig::start();
    let ring = format!("/vcb-sc-{}", std::process::id());
    let mut bridge = rig.bridge(&["--also", &format!("ring:{ring}")]);
    let t0 = Instant::now();
    bridge.wait_stats("frames into the ring", t0, Duration::from_secs(30), |s| {
        s.field(&format!("ring:{ring}"))
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n >= 10)
    });

    // A reader in this process.
    let reader = launch_pipeline(&format!(
        "shmringsrc shm-name={ring} timeout=10000 ! videoconvert ! video/x-raw,format=RGB ! \
         appsink name=sink sync=false max-buffers=1 drop=true emit-signals=true"
    ));
    let sink = reader
        .by_name("sink")
        .and_downcast::<gst_app::AppSink>()
        .expect("appsink");
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let last = std::sync::Arc::new(Mutex::new(None::<gst::Sample>));
    {
        let (count, last) = (count.clone(), last.clone());
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    *last.lock().unwrap() = Some(sample);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
    }
    reader.set_state(gst::State::Playing).expect("reader plays");
    wait_for(
        Duration::from_secs(10),
        "the ring reader's first frame",
        || (count.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(()),
    );

    // Over ~4 s the reader gets (nearly) every frame the bridge writes and weston is shown.
    let a = bridge.wait_stats(
        "a start mark",
        Instant::now(),
        Duration::from_secs(5),
        |_| true,
    );
    let read_a = count.load(std::sync::atomic::Ordering::SeqCst);
    let b = bridge.wait_stats(
        "4 s later",
        a.at + Duration::from_secs(4),
        Duration::from_secs(10),
        |_| true,
    );
    let read_b = count.load(std::sync::atomic::Ordering::SeqCst);
    let ring_key = format!("ring:{ring}");
    let written = b.field(&ring_key).unwrap().parse::<u64>().unwrap()
        - a.field(&ring_key).unwrap().parse::<u64>().unwrap();
    let shown = b.frames_out - a.frames_out;
    let read = read_b - read_a;
    eprintln!("in ~4 s: {written} frames into the ring, {read} read back, {shown} to weston");
    assert!(written >= 60, "only {written} frames into the ring");
    assert!(
        read as f64 >= 0.9 * written as f64,
        "the reader got {read} of {written}"
    );
    assert!(
        shown as f64 >= 0.9 * written as f64,
        "weston got {shown} of {written}"
    );

    // Freeze the client: mutter sends no more frames, so the ring's last frame and what weston
    // shows are the same frame, pixel for pixel.
    rig.client.as_ref().expect("client").signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    let settled = count.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        settled,
        "frames still arrive with the client stopped"
    );
    let ring_frame = RgbImage::from_sample(last.lock().unwrap().as_ref().expect("a ring frame"));
    let shot = rig.weston.screenshot();
    assert_shows_mutter_desktop_and_client(&shot, "weston with --also ring");
    assert_shows_mutter_desktop_and_client(&ring_frame, "the ring's last frame");
    let differing = ring_frame.differing_pixels(&shot, 2);
    assert!(
        differing * 1000 <= shot.width * shot.height,
        "{differing} pixels differ between the ring's last frame and weston's screen"
    );
    rig.client.as_ref().expect("client").signal(libc::SIGCONT);

    let _ = reader.set_state(gst::State::Null);
    bridge.guard.signal(libc::SIGINT);
    let out = bridge.guard.wait_output(Duration::from_secs(3));
    assert!(out.status.success(), "exit status {}", out.status);
    rig.client.take();
}
