// SPDX-License-Identifier: MPL-2.0
//! surfacesink → surfacesrc / Python across real processes: frames, caps, pixels, readers
//! coming and going, slow and stuck readers, writer restarts, caps changes, zero copy.
//!
//! Needs `cargo build -p gst-plugin-surface` first (gst-launch-1.0 loads target/debug).

mod common;

use std::collections::HashSet;
use std::os::fd::IntoRawFd;
use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use gst_allocators::prelude::*;

/// Frames across processes, the reader started before the writer: gst-launch writer, surfacesrc reader in this process
/// started first; every frame arrives with the writer's caps, timestamps and pixels.
#[test]
fn gst_writer_to_surfacesrc_frames_caps_pixels_reader_first() {
    let (_dir, sock) = sock_dir();
    let reference = reference_frames("smpte", 30);
    let reader = Pipe::reader(&sock, "timeout=15000");
    let sink = reader.appsink("sink");
    // The reader is waiting for a writer that does not exist yet — without failing.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(reader.error(), None);
    assert!(!sock.exists());

    let writer = gst_writer(
        &sock,
        "videotestsrc num-buffers=30 pattern=smpte",
        "wait-for-connection=true surfaces=16",
    );
    let got = pull(&sink, 100, Duration::from_secs(20));
    assert_exits_ok(writer, Duration::from_secs(20));
    assert_eq!(reader.error(), None);
    assert!(sink.is_eos(), "reader got EOS from the writer");
    assert_eq!(got.len(), 30, "frame count");
    let caps = got[0].caps.structure(0).expect("structure");
    assert_eq!(caps.name(), "video/x-raw");
    assert_eq!(caps.get::<&str>("format").unwrap(), "BGRx");
    assert_eq!(caps.get::<i32>("width").unwrap(), 64);
    assert_eq!(caps.get::<i32>("height").unwrap(), 48);
    assert_eq!(
        caps.get::<gst::Fraction>("framerate").unwrap(),
        gst::Fraction::new(30, 1)
    );
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.data.len(), FRAME_BYTES);
        assert!(
            g.data == reference[i],
            "frame {i} pixels differ from videotestsrc smpte"
        );
        // The writer's timestamps (videotestsrc: i/30 s), moved onto our running time: the
        // spacing is the writer's exactly.
        let expect = gst::ClockTime::from_nseconds(i as u64 * 1_000_000_000 / 30);
        let first = got[0].pts.expect("pts of frame 0");
        assert_eq!(g.pts.map(|p| p - first), Some(expect), "pts of frame {i}");
        assert_eq!(
            g.offset,
            i as u64 + 1,
            "writer sequence number of frame {i}"
        );
        assert_eq!(g.discont, i == 0, "DISCONT only on the first frame");
    }
}

/// Frames across processes, read by the Python reader (socket + mmap, stdlib only).
#[test]
fn gst_writer_to_python_reader() {
    let (dir, sock) = sock_dir();
    let reference = reference_frames("smpte", 2);
    let dump = dir.path().join("frame");
    let py = py_reader(
        &sock,
        &["--dump", dump.to_str().unwrap(), "--dump-count", "2"],
    );
    let writer = gst_writer(
        &sock,
        "videotestsrc num-buffers=20 pattern=smpte",
        "wait-for-connection=true surfaces=16",
    );
    assert_exits_ok(writer, Duration::from_secs(20));
    let (status, json, stderr) = py.finish(Duration::from_secs(10));
    assert!(status.success(), "python reader failed: {stderr}");
    let frames = frames_of(&json);
    assert_eq!(frames.len(), 20, "{json:?}");
    assert!(
        json.iter().any(|v| v.get("eos").is_some()),
        "EOS reached Python"
    );
    for (i, f) in frames.iter().enumerate() {
        let caps = f["caps"].as_str().unwrap();
        assert!(
            caps.starts_with("video/x-raw")
                && caps.contains("BGRx")
                && caps.contains("width=(int)64")
                && caps.contains("height=(int)48"),
            "{caps}"
        );
        assert_eq!(f["size"].as_u64(), Some(FRAME_BYTES as u64));
        assert_eq!(f["strides"][0].as_i64(), Some(256));
        assert_eq!(f["seq"].as_u64(), Some(i as u64 + 1));
        assert_eq!(f["pts"].as_u64(), Some(i as u64 * 1_000_000_000 / 30));
    }
    for n in 1..=2 {
        let data = std::fs::read(dir.path().join(format!("frame-{n}.raw"))).unwrap();
        assert!(
            data == reference[n - 1],
            "Python saw other pixels in frame {n}"
        );
    }
}

/// Zero copy: videotestsrc writes into the memfd pool surfacesink proposes; the
/// Python reader maps the very same inodes; the sink counted no copies.
#[test]
fn zero_copy_upstream_pool_reaches_reader_with_same_inode() {
    let (_dir, sock) = sock_dir();
    let p = Pipe::writer(
        &format!("videotestsrc num-buffers=20 pattern=ball ! {CAPS}"),
        &sock,
        "surfaces=16",
    );
    let sink = p.by_name("sink");
    let writer_inodes = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let wi = writer_inodes.clone();
    sink.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer() {
                for mem in buf.iter_memories() {
                    if let Some(fdm) = mem.downcast_memory_ref::<gst_allocators::FdMemory>() {
                        let st = nix::sys::stat::fstat(unsafe {
                            std::os::fd::BorrowedFd::borrow_raw(fdm.fd())
                        })
                        .unwrap();
                        wi.lock().unwrap().insert(st.st_ino);
                    }
                }
            }
            gst::PadProbeReturn::Ok
        });
    let py = p.play_with_readers(1, || py_reader(&sock, &[]));
    p.wait_eos(Duration::from_secs(20)).unwrap();
    let json = py.finish_ok(Duration::from_secs(10));
    let frames = frames_of(&json);
    assert_eq!(frames.len(), 20);
    assert_eq!(stat(&sink, "frames"), 20);
    assert_eq!(stat(&sink, "copies"), 0, "upstream memory was copied");
    assert_eq!(stat(&sink, "zero-copy"), 20);
    let writer_inodes = writer_inodes.lock().unwrap().clone();
    assert!(!writer_inodes.is_empty(), "upstream did not use fd memory");
    let reader_inodes: HashSet<u64> = frames
        .iter()
        .map(|f| f["inode"].as_u64().unwrap())
        .collect();
    assert!(
        reader_inodes.is_subset(&writer_inodes),
        "reader mapped {reader_inodes:?}, upstream wrote into {writer_inodes:?}"
    );
}

/// Zero copy of foreign fd memory (e.g. a decoder's DMA-BUF or a memfd): an appsrc
/// pushes buffers wrapping our own memfds as `GstDmaBufMemory` and as `GstFdMemory`; the reader
/// maps those very inodes and nothing is copied. Plain memory afterwards is copied once per frame.
#[test]
fn zero_copy_of_foreign_dmabuf_and_fd_memory_one_copy_of_plain_memory() {
    let (_dir, sock) = sock_dir();
    let (p, src, sink) = Pipe::appsrc_writer(&sock, &format!("caps={CAPS}"), "surfaces=16");
    let py = py_reader(&sock, &[]);
    wait_readers(&sink, 1);

    let memfd = |fill: u8| {
        let fd = gstsurface::platform::create_memfd("test-foreign", FRAME_BYTES).unwrap();
        nix::unistd::write(&fd, &[fill; 16]).unwrap();
        let ino = nix::sys::stat::fstat(&fd).unwrap().st_ino;
        (fd, ino)
    };
    let (dmabuf_fd, dmabuf_ino) = memfd(7);
    let (fdmem_fd, fdmem_ino) = memfd(8);
    let dmabuf_alloc = gst_allocators::DmaBufAllocator::new();
    let fd_alloc = gst_allocators::FdAllocator::new();
    let push = |mem: gst::Memory, i: u64| {
        let mut buf = gst::Buffer::new();
        {
            let b = buf.get_mut().unwrap();
            b.append_memory(mem);
            b.set_pts(gst::ClockTime::from_mseconds(i * 33));
        }
        src.push_buffer(buf).unwrap();
        // Give the reader time to release, so no frame is skipped for lack of a free surface.
        std::thread::sleep(Duration::from_millis(30));
    };
    for i in 0..3u64 {
        let dup = dmabuf_fd.try_clone().unwrap();
        let mem = unsafe { dmabuf_alloc.alloc_dmabuf(dup, FRAME_BYTES) }.unwrap();
        assert!(mem.is_memory_type::<gst_allocators::DmaBufMemory>());
        push(mem, i);
    }
    for i in 3..6u64 {
        let dup = fdmem_fd.try_clone().unwrap();
        let mem = unsafe {
            fd_alloc.alloc_fd(
                dup.into_raw_fd(),
                FRAME_BYTES,
                gst_allocators::FdMemoryFlags::NONE,
            )
        }
        .unwrap();
        push(mem, i);
    }
    for i in 6..10u64 {
        push(gst::Memory::from_mut_slice(vec![9u8; FRAME_BYTES]), i);
    }
    src.end_of_stream().unwrap();
    p.wait_eos(Duration::from_secs(10)).unwrap();
    let json = py.finish_ok(Duration::from_secs(10));
    let frames = frames_of(&json);
    assert_eq!(frames.len(), 10, "{json:?}");
    for (i, f) in frames.iter().enumerate() {
        let (ino, first) = match i {
            0..3 => (Some(dmabuf_ino), 7),
            3..6 => (Some(fdmem_ino), 8),
            _ => (None, 9),
        };
        match ino {
            Some(ino) => assert_eq!(
                f["inode"].as_u64(),
                Some(ino),
                "frame {i}: the reader maps the upstream fd itself"
            ),
            None => assert!(
                f["inode"].as_u64() != Some(dmabuf_ino) && f["inode"].as_u64() != Some(fdmem_ino)
            ),
        }
        assert_eq!(f["first"][0].as_u64(), Some(first), "frame {i}");
    }
    assert_eq!(stat(&sink, "zero-copy"), 6);
    assert_eq!(stat(&sink, "copies"), 4);
}

/// Robustness: the writer is killed (its socket file stays behind) and restarted; the reader
/// keeps waiting without an error and continues with the new writer's frames.
#[test]
fn writer_killed_and_restarted() {
    let (_dir, sock) = sock_dir();
    let reader = Pipe::reader(&sock, "timeout=15000");
    let sink = reader.appsink("sink");

    let w1 = gst_writer(&sock, "videotestsrc is-live=true pattern=black", "");
    let mut py = py_reader(&sock, &[]);
    py.wait_line(Duration::from_secs(10), "a frame in Python", |l| {
        l.contains("\"seq\"")
    });
    let got = pull(&sink, 5, Duration::from_secs(15));
    assert_eq!(got.len(), 5, "frames from the first writer");
    assert!(got.iter().all(|g| g.data[..3] == [0, 0, 0]), "black frames");
    w1.signal(libc::SIGKILL);
    drop(w1);
    assert!(
        sock.exists(),
        "a killed writer leaves its socket file behind"
    );
    // The Python reader notices the writer is gone (not an EOS) and ends cleanly.
    let json = py.finish_ok(Duration::from_secs(10));
    assert!(
        json.iter().any(|v| v.get("writer_gone").is_some()),
        "{json:?}"
    );
    // Drain what was in flight, then check no error was raised.
    let _ = pull(&sink, 100, Duration::from_millis(300));
    assert_eq!(reader.error(), None);

    let _w2 = gst_writer(&sock, "videotestsrc is-live=true pattern=white", "");
    let got = wait_white(&sink);
    assert!(got, "frames from the restarted writer");
    assert_eq!(reader.error(), None);
    let src = reader.by_name("src");
    let stats = src.property::<gst::Structure>("stats");
    assert!(stats.get::<u64>("reconnects").unwrap() >= 1, "{stats}");
}

fn wait_white(sink: &gst_app::AppSink) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        for g in pull(sink, 1, Duration::from_millis(200)) {
            if g.data[..3] == [255, 255, 255] {
                return true;
            }
        }
    }
    false
}

/// Robustness: a reader killed while holding a frame is dropped at once (EOF), without an
/// error and without waiting for the release timeout; the writer goes on and serves new readers.
#[test]
fn reader_killed_mid_frame_is_dropped() {
    let (_dir, sock) = sock_dir();
    let p = Pipe::writer(
        &format!("videotestsrc is-live=true ! {CAPS}"),
        &sock,
        "release-timeout=10000",
    );
    let sink = p.by_name("sink");
    p.set(gst::State::Playing);
    let mut a = py_reader(&sock, &["--sleep", "60"]);
    a.wait_line(Duration::from_secs(10), "a frame in reader A", |l| {
        l.contains("\"seq\"")
    });
    assert_eq!(stat(&sink, "readers"), 1);
    a.guard.signal(libc::SIGKILL);
    let killed = Instant::now();
    wait_readers(&sink, 0);
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "dead reader detected by EOF, not by the 10 s release timeout"
    );
    let f1 = stat(&sink, "frames");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        stat(&sink, "frames") >= f1 + 5,
        "the writer keeps rendering"
    );
    assert_eq!(p.error(), None);

    let b = py_reader(&sock, &["--frames", "5"]);
    let json = b.finish_ok(Duration::from_secs(10));
    assert_eq!(frames_of(&json).len(), 5);
    assert_eq!(p.error(), None);
}

/// Robustness: a reader that stops releasing is evicted after `release-timeout`, told why,
/// and its surfaces reclaimed; a well-behaved reader next to it is unaffected.
#[test]
fn stuck_reader_is_evicted_and_surfaces_reclaimed() {
    let (_dir, sock) = sock_dir();
    let p = Pipe::writer(
        &format!("videotestsrc is-live=true ! {CAPS}"),
        &sock,
        "release-timeout=400 surfaces=16",
    );
    let sink = p.by_name("sink");
    let (stuck, good) = p.play_with_readers(2, || {
        (
            py_reader(&sock, &["--no-release"]),
            py_reader(&sock, &["--frames", "45"]),
        )
    });
    let err = stuck.finish_error(Duration::from_secs(10), 2, "stuck reader");
    assert!(
        err.contains("disconnected this reader") && err.contains("400 ms"),
        "{err}"
    );
    let json = good.finish_ok(Duration::from_secs(15));
    let frames = frames_of(&json);
    assert_eq!(frames.len(), 45);
    let seqs = seqs_of(&json);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the good reader missed frames: {seqs:?}"
    );
    assert!(stat(&sink, "evicted") >= 1);
    assert_eq!(p.error(), None);
}

/// Robustness: a slow reader skips frames while the writer keeps its pace and a fast reader
/// gets every frame.
#[test]
fn slow_reader_skips_writer_unaffected() {
    let (_dir, sock) = sock_dir();
    let reference = reference_frames("smpte", 60);
    let p = Pipe::writer(
        &format!("videotestsrc is-live=true num-buffers=60 pattern=smpte ! {CAPS}"),
        &sock,
        "surfaces=16",
    );
    let sink = p.by_name("sink");
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("slow");
    let (fast, slow) = p.play_with_readers(2, || {
        let fast = py_reader(&sock, &[]);
        let slow = py_reader(
            &sock,
            &[
                "--sleep",
                "0.25",
                "--dump",
                dump.to_str().unwrap(),
                "--dump-count",
                "3",
            ],
        );
        (fast, slow)
    });
    let start = Instant::now();
    p.wait_eos(Duration::from_secs(20)).unwrap();
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "60 frames at 30 fps took {took:?}: the writer was held up"
    );
    let json = fast.finish_ok(Duration::from_secs(10));
    let seqs = seqs_of(&json);
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>(), "fast reader");
    let json = slow.finish_ok(Duration::from_secs(10));
    let seqs = seqs_of(&json);
    assert!(
        seqs.len() < 40 && seqs.len() >= 3,
        "slow reader got {seqs:?}"
    );
    assert!(
        seqs.windows(2).any(|w| w[1] > w[0] + 1),
        "slow reader skipped"
    );
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "in order");
    for n in 1..=3 {
        let data = std::fs::read(dir.path().join(format!("slow-{n}.raw"))).unwrap();
        let seq = seqs[n - 1] as usize;
        assert!(
            data == reference[seq - 1],
            "slow reader frame {n} (seq {seq}) intact"
        );
    }
    assert!(stat(&sink, "dropped") > 0);
}

/// Robustness: caps change mid-stream reach the Python reader (caps per frame) and a
/// gst-launch surfacesrc that renegotiates through videoconvert.
#[test]
fn caps_change_mid_stream() {
    let (_dir, sock) = sock_dir();
    let (p, src, sink) = Pipe::appsrc_writer(&sock, "is-live=true", "surfaces=16");
    let py = py_reader(&sock, &[]);
    let mut cmd = vcambridge_tests::gst_command("gst-launch-1.0");
    cmd.args([
        "-v",
        "surfacesrc",
        &format!("socket-path={}", sock.display()),
    ]);
    cmd.args("! videoconvert ! video/x-raw,format=I420 ! fakesink sync=false".split_whitespace());
    let gst_reader = vcambridge_tests::ChildGuard::spawn("gst-launch reader", &mut cmd);
    wait_readers(&sink, 2);

    let caps_a = gst::Caps::builder("video/x-raw")
        .field("format", "BGRx")
        .field("width", 64)
        .field("height", 48)
        .field("framerate", gst::Fraction::new(30, 1))
        .build();
    let caps_b = gst::Caps::builder("video/x-raw")
        .field("format", "BGRx")
        .field("width", 32)
        .field("height", 24)
        .field("framerate", gst::Fraction::new(30, 1))
        .build();
    for i in 0..20u64 {
        let (caps, size) = if i < 10 {
            (&caps_a, 64 * 48 * 4)
        } else {
            (&caps_b, 32 * 24 * 4)
        };
        let mut buf = gst::Buffer::from_mut_slice(vec![i as u8; size]);
        buf.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(i * 33));
        let sample = gst::Sample::builder().buffer(&buf).caps(caps).build();
        src.push_sample(&sample).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    src.end_of_stream().unwrap();
    p.wait_eos(Duration::from_secs(10)).unwrap();

    let json = py.finish_ok(Duration::from_secs(10));
    let frames = frames_of(&json);
    assert_eq!(frames.len(), 20, "{json:?}");
    for (i, f) in frames.iter().enumerate() {
        let caps = f["caps"].as_str().unwrap();
        let (w, size) = if i < 10 {
            (64, 64 * 48 * 4)
        } else {
            (32, 32 * 24 * 4)
        };
        assert!(
            caps.contains(&format!("width=(int){w},")),
            "frame {i}: {caps}"
        );
        assert_eq!(f["size"].as_u64(), Some(size));
        assert_eq!(f["first"][0].as_u64(), Some(i as u64));
    }
    let out = gst_reader.wait_output(Duration::from_secs(15));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gst reader: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in [64, 32] {
        let width = format!("width=(int){w},");
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("fakesink0.GstPad:sink: caps")
                    && l.contains("format=(string)I420")
                    && l.contains(&width)),
            "surfacesrc renegotiated to width {w}: {stdout}"
        );
    }
}

/// unlock/unlock_stop: stopping never waits on the socket — not a surfacesrc waiting for an
/// absent writer (timeout=0: forever), not one connected to an idle writer, not a surfacesink
/// holding frames for a reader that never comes (wait-for-connection).
#[test]
fn state_changes_never_wait_on_the_socket() {
    let (_dir, sock) = sock_dir();
    let stop_within = |p: &Pipe, what: &str| {
        let t = Instant::now();
        p.set(gst::State::Null);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{what}: stopping took {:?}",
            t.elapsed()
        );
    };

    let reader = Pipe::launch(&format!(
        "surfacesrc socket-path={} timeout=0 ! fakesink",
        sock.display()
    ));
    reader.set(gst::State::Playing);
    std::thread::sleep(Duration::from_millis(300));
    stop_within(&reader, "reader without writer");

    let (writer, src, sink) =
        Pipe::appsrc_writer(&sock, &format!("caps={CAPS}"), "wait-for-connection=true");
    // The sink blocks in render waiting for a reader.
    src.push_buffer(gst::Buffer::from_mut_slice(vec![0u8; FRAME_BYTES]))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let reader = Pipe::launch(&format!(
        "surfacesrc socket-path={} timeout=0 ! fakesink",
        sock.display()
    ));
    reader.set(gst::State::Playing);
    wait_readers(&sink, 1);
    std::thread::sleep(Duration::from_millis(300));
    // Connected, the writer idle: the reader sits in poll.
    stop_within(&reader, "reader of an idle writer");
    let blocked = Pipe::launch(&format!(
        "appsrc name=src2 format=time caps={CAPS} ! surfacesink socket-path={}/other.sock wait-for-connection=true",
        sock.parent().unwrap().display()
    ));
    let src2 = blocked.appsrc("src2");
    blocked.set(gst::State::Playing);
    src2.push_buffer(gst::Buffer::from_mut_slice(vec![0u8; FRAME_BYTES]))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop_within(&blocked, "writer waiting for a reader");
    stop_within(&writer, "writer");
}

/// A transform upstream (videoconvert) also writes straight into the proposed memfd pool.
#[test]
fn zero_copy_through_videoconvert() {
    let (_dir, sock) = sock_dir();
    let p = Pipe::writer(
        &format!(
            "videotestsrc num-buffers=10 ! video/x-raw,format=I420,width=64,height=48 ! videoconvert ! {CAPS}"
        ),
        &sock,
        "surfaces=16",
    );
    let sink = p.by_name("sink");
    let py = p.play_with_readers(1, || py_reader(&sock, &[]));
    p.wait_eos(Duration::from_secs(20)).unwrap();
    let json = py.finish_ok(Duration::from_secs(10));
    assert_eq!(frames_of(&json).len(), 10);
    assert_eq!(stat(&sink, "copies"), 0);
    assert_eq!(stat(&sink, "zero-copy"), 10);
}

/// surfacesrc stamps frames on this pipeline's running time and answers the latency query
/// (live, one frame) — the same check, by the same helper, as shmringsrc's.
#[test]
fn timestamps_on_running_time_and_latency_answered() {
    init();
    let (_dir, sock) = sock_dir();
    vcambridge_common::testing::check_live_source_timing(
        &format!("surfacesrc socket-path={} timeout=15000", sock.display()),
        &format!("surfacesink name=wsink socket-path={}", sock.display()),
        |writer| wait_readers(&writer.by_name("wsink").expect("surfacesink"), 1),
    );
}

/// `timeout` is a `guint` of milliseconds, as shmringsrc's (same helper).
#[test]
fn timeout_is_milliseconds_as_in_shmringsrc() {
    init();
    vcambridge_common::testing::check_timeout_property("surfacesrc");
}
