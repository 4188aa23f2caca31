// SPDX-License-Identifier: MPL-2.0
//! Hostile writers (issue 15): a Python writer in another process (`python/surface_writer.py
//! --attack …`) sends surfaces and frames that lie about their sizes, memfds it shrinks, regular
//! files, frames smaller than their caps and a flood of caps. `surfacesrc` runs in this test
//! process (a SIGBUS would kill the test binary) or, for the memory figure, in a gst-launch
//! child. Each test checks the error or warning text, that the process lives, and that a good
//! writer's frames arrive right after, byte for byte.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use gst::prelude::*;
use vcambridge_tests::{ChildGuard, gst_command, python};

fn writer_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/surface_writer.py")
}

/// The Python writer on `sock`, with `--attack attack --frames frames`; returns once it listens.
fn writer(sock: &Path, attack: &str, frames: u32) -> LineChild {
    let mut cmd = Command::new(python());
    cmd.arg(writer_script())
        .arg(sock)
        .args(["--attack", attack, "--frames", &frames.to_string()]);
    let mut w = LineChild::spawn(
        &format!("python surface_writer --attack {attack}"),
        &mut cmd,
    );
    w.wait_line(Duration::from_secs(15), "listening", |l| {
        l.contains("listening")
    });
    w
}

/// `surfacesrc ! <middle> appsink` in this process. The sink keeps no last sample: the Python
/// writer waits for each frame's release before it sends the next.
fn reader(sock: &Path, middle: &str) -> Pipe {
    Pipe::launch(&format!(
        "surfacesrc name=src socket-path={} timeout=10000 ! {middle} appsink name=sink sync=false enable-last-sample=false",
        sock.display()
    ))
}

/// Every warning posted so far (non-blocking).
fn warnings(p: &Pipe) -> Vec<String> {
    let bus = p.pipeline.bus().expect("bus");
    let mut out = Vec::new();
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Warning]) {
        if let gst::MessageView::Warning(w) = msg.view() {
            out.push(w.error().to_string());
        }
    }
    out
}

/// Every reader pipeline reads each frame's pixels (videoconvert to RGBA), as a real consumer
/// does: without the checks, that read is where a hostile surface killed the process.
const CONVERT: &str = "videoconvert ! video/x-raw,format=RGBA !";

/// Frames of the good writer: 64x48 BGRx filled with `seq & 0xff`, converted to RGBA.
fn assert_good_frames(got: &[Got], first_seq: u64, n: usize) {
    assert_eq!(got.len(), n, "good frames after the attack");
    for (i, g) in got.iter().enumerate() {
        let seq = first_seq + i as u64;
        let v = (seq & 0xff) as u8;
        assert_eq!(g.offset, seq, "writer sequence number");
        assert_eq!(g.data.len(), FRAME_BYTES);
        assert!(
            g.data
                .chunks(4)
                .all(|px| px[0] == v && px[1] == v && px[2] == v),
            "frame {seq} content"
        );
    }
}

/// After an attack that made surfacesrc fail: the same pipeline, restarted, reads a good
/// writer on the same socket path.
fn good_writer_works_after(p: &Pipe, sock: &Path) {
    p.set(gst::State::Null);
    let w = writer(sock, "none", 3);
    p.set(gst::State::Playing);
    let got = pull(&p.appsink("sink"), 3, Duration::from_secs(15));
    assert_good_frames(&got, 1, 3);
    let (status, _json, stderr) = w.finish(Duration::from_secs(15));
    assert!(status.success(), "{stderr}");
}

/// A hostile writer whose surface makes surfacesrc fail: the error names the problem, the
/// process lives, a good writer works right after.
fn refused_surface(attack: &str, needles: &[&str]) {
    let (_dir, sock) = sock_dir();
    let w = writer(&sock, attack, 2);
    let p = reader(&sock, CONVERT);
    p.set(gst::State::Playing);
    let err = p.wait_error(Duration::from_secs(15));
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in: {err}");
    }
    let (status, _json, stderr) = w.finish(Duration::from_secs(15));
    assert!(status.success(), "{stderr}");
    assert_eq!(stat(&p.by_name("src"), "frames"), 0, "no frame exposed");
    good_writer_works_after(&p, &sock);
}

/// (a) A surface that declares 4x the memfd behind it: mapping the declared size and reading
/// the frame used to die of SIGBUS.
#[test]
fn surface_larger_than_its_memfd_is_refused() {
    refused_surface(
        "oversize",
        &[
            "sent surface 1 of 49152 bytes that cannot be mapped safely",
            "it declares 49152 bytes but the memory behind its fd holds only 4096 bytes",
        ],
    );
}

/// (b) An unsealed memfd that the writer truncates after sending it: refused before it is
/// mapped, because nothing would stop the writer from shrinking it later.
#[test]
fn unsealed_memfd_is_refused() {
    refused_surface(
        "unsealed",
        &["not sealed against shrinking", "F_SEAL_SHRINK missing"],
    );
}

/// A regular file passed as a surface (its size can change): refused.
#[test]
fn regular_file_surface_is_refused() {
    refused_surface(
        "regular-file",
        &[
            "cannot be mapped safely",
            "neither a sealed memfd nor a DMA-BUF",
        ],
    );
}

/// 300 surfaces announced and none retired (each a mapping and an fd): refused past 256.
#[test]
fn surface_flood_is_refused() {
    refused_surface(
        "surface-flood",
        &["announced more than 256 surfaces without retiring any"],
    );
}

/// (b) with seals, as surfacesink and the Python writer create them: the writer's own attempt
/// to shrink the surface fails, and frames keep arriving intact.
#[test]
fn sealed_memfd_cannot_be_shrunk_by_its_writer() {
    let (_dir, sock) = sock_dir();
    let mut w = writer(&sock, "sealed-shrink", 2);
    let p = reader(&sock, CONVERT);
    p.set(gst::State::Playing);
    let shrink = w.wait_line(Duration::from_secs(15), "shrink attempt", |l| {
        l.contains("shrink")
    });
    assert!(
        shrink.contains("refused: Operation not permitted"),
        "{shrink}"
    );
    let got = pull(&p.appsink("sink"), 3, Duration::from_secs(15));
    assert_good_frames(&got, 1, 3);
    assert_eq!(p.error(), None);
    let (status, _json, stderr) = w.finish(Duration::from_secs(15));
    assert!(status.success(), "{stderr}");
}

/// (c) Frames smaller than their caps: they used to reach videoconvert, which read past the
/// surface. Now each is skipped (released to the writer) with a warning naming both sizes, and
/// the writer's good frames after them pass videoconvert intact.
#[test]
fn frame_smaller_than_caps_is_skipped_with_a_warning() {
    let (_dir, sock) = sock_dir();
    let w = writer(&sock, "small-frame", 3);
    let p = reader(&sock, CONVERT);
    p.set(gst::State::Playing);
    let got = pull(&p.appsink("sink"), 3, Duration::from_secs(15));
    assert_eq!(got.len(), 3, "good frames after the small ones");
    for (i, g) in got.iter().enumerate() {
        let v = (4 + i) as u8; // seq 1..3 were the small frames
        assert_eq!(g.offset, 4 + i as u64);
        assert_eq!(g.data.len(), FRAME_BYTES);
        assert!(
            g.data
                .chunks(4)
                .all(|px| px[0] == v && px[1] == v && px[2] == v),
            "frame {} content after videoconvert",
            4 + i
        );
    }
    let warns = warnings(&p);
    assert!(
        warns
            .iter()
            .any(|w| w.contains("skipped frame 1 from the writer at")
                && w.contains("frame of 100 bytes is smaller than its caps need (12288 bytes)")),
        "{warns:?}"
    );
    assert!(
        warns
            .iter()
            .any(|w| w.contains("skipped frame 2 from the writer at")
                && w.contains("plane 0 ends at byte 12288, beyond the frame of 100 bytes")),
        "{warns:?}"
    );
    assert_eq!(stat(&p.by_name("src"), "rejected"), 3);
    assert_eq!(p.error(), None);
    let json = w.finish_ok(Duration::from_secs(15));
    assert!(json.iter().any(|v| v.get("done").is_some()), "{json:?}");
}

/// Plane offsets and strides outside the frame (offset 8000 with 48 rows of 256 bytes, stride
/// 1, negative stride): skipped with a warning; good frames follow.
#[test]
fn planes_outside_the_frame_are_skipped() {
    let (_dir, sock) = sock_dir();
    let w = writer(&sock, "bad-planes", 2);
    let p = reader(&sock, CONVERT);
    p.set(gst::State::Playing);
    let got = pull(&p.appsink("sink"), 2, Duration::from_secs(15));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].offset, 4);
    let warns = warnings(&p);
    assert!(
        warns
            .iter()
            .any(|w| w.contains("plane 0 ends at byte 20288, beyond the frame of 12288 bytes")),
        "{warns:?}"
    );
    assert_eq!(stat(&p.by_name("src"), "rejected"), 3);
    let (status, _json, stderr) = w.finish(Duration::from_secs(15));
    assert!(status.success(), "{stderr}");
}

/// Resident memory of a process, in bytes (from /proc); `None` once it has exited.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Samples a process's resident memory every 10 ms until stopped or the process exits, keeping
/// the highest value (the peak, even if the process ends right after what is measured).
struct PeakRss {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl PeakRss {
    fn start(pid: u32, first: u64) -> PeakRss {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut peak = first;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Some(now) = rss(pid) else { break };
                    peak = peak.max(now);
                    std::thread::sleep(Duration::from_millis(10));
                }
                peak
            }
        });
        PeakRss { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("RSS sampler")
    }
}

/// 20,000 caps messages (new id each, ~3 KB) used to grow a surfacesrc by ~62 MB: now it keeps
/// the last 16 caps ids, its memory stays flat, and frames with the newest caps still arrive.
#[test]
fn caps_flood_keeps_memory_bounded() {
    let (_dir, sock) = sock_dir();
    let mut w = writer(&sock, "caps-flood", 3);
    let mut cmd = gst_command("gst-launch-1.0");
    cmd.args(
        format!(
            "surfacesrc socket-path={} timeout=10000 ! fakesink enable-last-sample=false",
            sock.display()
        )
        .split_whitespace(),
    );
    let src = ChildGuard::spawn("gst-launch surfacesrc", &mut cmd);
    let pid = src.pid();
    w.wait_line(Duration::from_secs(20), "first frame released", |l| {
        l.contains("\"released\": 1")
    });
    let before = rss(pid).expect("surfacesrc running");
    // The peak from here until the frame after the flood: the reader may reach EOS (and exit)
    // right after that frame, before a single sample could be taken.
    let sampler = PeakRss::start(pid, before);
    w.wait_line(Duration::from_secs(60), "flood sent", |l| {
        l.contains("flooded")
    });
    w.wait_line(Duration::from_secs(60), "frame after the flood", |l| {
        l.contains("\"released\": 2")
    });
    let after = sampler.stop();
    let grown = after.saturating_sub(before);
    eprintln!(
        "surfacesrc RSS before the caps flood {} KiB, peak until the frame after it {} KiB",
        before / 1024,
        after / 1024
    );
    assert!(
        grown < 8 * 1024 * 1024,
        "surfacesrc grew by {} KiB under 20000 caps messages",
        grown / 1024
    );
    let json = w.finish_ok(Duration::from_secs(30));
    assert!(
        json.iter()
            .any(|v| v.get("done").and_then(|d| d.as_u64()) == Some(5)),
        "all good frames sent: {json:?}"
    );
    let out = src.wait_output(Duration::from_secs(15));
    assert!(
        out.status.success(),
        "gst-launch surfacesrc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python reader applies the same rules: an oversized or unsealed surface is refused with
/// an explanation (exit status 2), never mapped.
#[test]
fn python_reader_refuses_hostile_surfaces() {
    for (attack, needle) in [
        (
            "oversize",
            "surface declares 49152 bytes but its fd holds only 4096",
        ),
        ("unsealed", "not sealed against shrinking"),
    ] {
        let (_dir, sock) = sock_dir();
        let w = writer(&sock, attack, 1);
        let r = py_reader(&sock, &[]);
        let err = r.finish_error(Duration::from_secs(15), 2, attack);
        assert!(err.contains(needle), "{attack}: {err}");
        let _ = w.finish(Duration::from_secs(15));
    }
}

/// A writer that sends frames and EOS and closes at once, with the reader's releases unread:
/// the kernel reports the reset before the queued messages, and surfacesrc still ends with EOS
/// after every frame (it used to take the reset for "writer gone", wait for a new one and fail
/// after `timeout`). Ten rounds: the reset comes in most of them.
#[test]
fn eos_survives_a_writer_that_closes_with_releases_unread() {
    init();
    for round in 0..10 {
        let (_dir, sock) = sock_dir();
        let mut cmd = Command::new(python());
        cmd.arg(writer_script())
            .arg(&sock)
            .args(["--frames", "5", "--close-at-once"]);
        let mut w = LineChild::spawn("python surface_writer --close-at-once", &mut cmd);
        w.wait_line(Duration::from_secs(15), "listening", |l| {
            l.contains("listening")
        });
        let p = reader(&sock, CONVERT);
        p.set(gst::State::Playing);
        let got = pull(&p.appsink("sink"), 5, Duration::from_secs(15));
        assert_good_frames(&got, 1, 5);
        if let Err(e) = p.wait_eos(Duration::from_secs(5)) {
            panic!("round {round}: no EOS after the writer closed: {e}");
        }
        p.set(gst::State::Null);
        let (status, _json, stderr) = w.finish(Duration::from_secs(15));
        assert!(status.success(), "{stderr}");
    }
}
