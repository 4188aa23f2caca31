// SPDX-License-Identifier: MPL-2.0
//! What crosses the ring and how: shmringsrc's output pool on the copy path, the sink's slot pool
//! (an upstream decoder writing into the slots), raw audio and encoded streams, padded strides
//! repacked, torn frames never delivered, growing slots, refused video metas, state changes
//! that never wait. Across processes (gst-launch-1.0) where the point is another process, in
//! process where per-buffer checks are needed. Run `cargo build -p gst-plugin-shmring` first
//! (the subprocesses load target/debug).

mod common;

use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use vcambridge_tests::ipc::{gst_launch, last_json, read_frames, shmring_python};
use vcambridge_tests::{ChildGuard, wait_for};

/// shmringsrc's raw-video buffers on the copy path (`zero-copy=false`) come from its own pool:
/// memory that downstream frees is reused (`buffers-allocated` stays at the two allocated up front), and a downstream that holds
/// on to every buffer only makes it allocate more, without waiting: the writer publishes every
/// frame meanwhile and the reader keeps delivering.
#[test]
fn reader_reuses_freed_buffers_and_held_ones_stall_nobody() {
    let case = Case::new("framepool");
    let shm = &case.shm;
    let caps = "video/x-raw,format=GRAY8,width=64,height=64,framerate=30/1";
    let writer = AppSrcWriter::new(&format!(
        "appsrc name=src format=time caps={caps} ! shmringsink name=sink shm-name={shm} slots=8 sync=false"
    ));
    let frame = |i: u8| gst::Buffer::from_slice(vec![i; 64 * 64]);
    writer.push(frame(0));
    wait_for(LONG, "the ring", || shm.exists().then_some(()));
    let reader = InProcessReader::new(shm, "timeout=20000 zero-copy=false", "");
    reader.sink.set_property("enable-last-sample", false);
    let allocated = || reader.src.property::<u64>("buffers-allocated");
    // One frame at a time, each dropped before the next: the same memory over and over.
    let mut last = None;
    for i in 1..=30u8 {
        writer.push(frame(i));
        let s = reader.pull(LONG).expect("a frame");
        let v = sample_bytes(&s)[0];
        assert!(last.is_none_or(|l| v > l), "frames in order");
        last = Some(v);
    }
    assert!(
        allocated() <= 3,
        "{} buffers allocated for 30 frames read one by one",
        allocated()
    );
    // Downstream holds 20 frames: 20 buffers alive, the pool allocates instead of waiting.
    let start = Instant::now();
    let mut held = Vec::new();
    for i in 31..=50u8 {
        writer.push(frame(i));
        held.push(reader.pull(LONG).expect("a frame"));
    }
    // The reader can be one frame behind (when it started by reading frame 0): take the rest,
    // so that no frame is still being read (and allocated for) when the peak is taken below.
    while held.last().is_some_and(|s| sample_bytes(s)[0] < 50) {
        held.push(reader.pull(LONG).expect("a frame"));
    }
    assert!(allocated() >= 20, "{} allocated", allocated());
    // Every frame pushed is published (appsrc hands the last one over on its own thread).
    let sink = writer.pipeline.by_name("sink").expect("sink");
    wait_for(Duration::from_secs(5), "51 frames written", || {
        (sink.property::<u64>("frames-written") == 51).then_some(())
    });
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let peak = allocated();
    drop(held);
    // Freed again: reused, no new allocations.
    for i in 51..=60u8 {
        writer.push(frame(i));
        assert!(reader.pull(LONG).is_some());
    }
    assert_eq!(allocated(), peak, "freed buffers are reused");
    writer.finish();
}

/// The slot pool: videotestsrc writes straight into the ring (frames-in-place), content intact.
#[test]
fn zero_copy_pool_content_matches() {
    let case = Case::new("zc");
    let shm = &case.shm;
    let out = case.file("out.raw");
    let reference = case.file("ref.raw");
    let reader = waiting_python_reader(&case, &out);
    let pipeline = vcambridge_tests::launch_pipeline(&format!(
        "videotestsrc num-buffers=20 pattern=ball ! {CAPS} ! shmringsink name=sink shm-name={shm}"
    ));
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    assert_eos(&pipeline);
    let sink = pipeline.by_name("sink").expect("sink");
    assert_eq!(sink.property::<u64>("frames-written"), 20);
    assert_eq!(sink.property::<u64>("frames-in-place"), 20, "no copies");
    wait_file_len(&out, 20 * FRAME as u64, "the frames at the reader");
    pipeline.set_state(gst::State::Null).expect("NULL");
    run_ok(
        "reference",
        &mut gst_launch(&format!(
            "-q videotestsrc num-buffers=20 pattern=ball ! {CAPS} ! filesink location={}",
            reference.display()
        )),
    );
    let text = reader.finish();
    assert_eq!(last_json(text.as_bytes())["frames"], 20, "{text}");
    let got = read_frames(&out, FRAME);
    let want = read_frames(&reference, FRAME);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w, "frame {i} differs");
    }
}

/// A real decoder (avdec_h264, B-frames) decodes straight into ring slots through the pool;
/// what the reader gets is byte-identical to decoding into a file.
#[test]
fn decoder_writes_into_the_ring() {
    let case = Case::new("dec");
    let shm = &case.shm;
    let out = case.file("out.raw");
    let reference = case.file("ref.raw");
    let chain = "videotestsrc num-buffers=45 pattern=ball ! video/x-raw,format=I420,width=160,height=120 \
                 ! x264enc key-int-max=15 bframes=2 ! avdec_h264";
    let reader = waiting_python_reader(&case, &out);
    let mut cmd = gst_launch(&format!("-q {chain} ! shmringsink shm-name={shm} slots=16"));
    cmd.env("GST_DEBUG", "shmringsink:4")
        .env("GST_DEBUG_NO_COLOR", "1");
    let wout = ChildGuard::spawn("decoding writer", &mut cmd).wait_output(LONG);
    let wlog = String::from_utf8_lossy(&wout.stderr).to_string();
    assert!(wout.status.success(), "{wlog}");
    let stats = wlog
        .lines()
        .find(|l| l.contains("frames written"))
        .unwrap_or_else(|| panic!("no stats line in:\n{wlog}"));
    assert!(stats.contains("45 frames written"), "{stats}");
    let in_place: u64 = stats
        .split(", ")
        .find_map(|p| p.strip_suffix(" in place"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("in-place count in {stats}"));
    assert!(in_place > 0, "the decoder used the slot pool: {stats}");
    let text = reader.finish();
    assert_eq!(last_json(text.as_bytes())["frames"], 45, "{text}");
    run_ok(
        "reference decode",
        &mut gst_launch(&format!(
            "-q {chain} ! filesink location={}",
            reference.display()
        )),
    );
    let size = 160 * 120 * 3 / 2;
    assert_eq!(read_frames(&out, size), read_frames(&reference, size));
}

/// Any caps: raw audio and an encoded H.264 stream (variable sizes, delta flags) cross the ring.
#[test]
fn audio_and_encoded_streams() {
    // Audio: 20 buffers of 441 S16LE stereo samples.
    let case = Case::new("audio");
    let shm = &case.shm;
    let reader = InProcessReader::new(shm, "timeout=20000", "");
    let writer = ChildGuard::spawn(
        "audio writer",
        &mut gst_launch(&format!(
            "-q audiotestsrc num-buffers=20 samplesperbuffer=441 ! audio/x-raw,format=S16LE,rate=44100,channels=2 ! shmringsink shm-name={shm} slots=32"
        )),
    );
    let mut n = 0;
    while let Some(s) = reader.pull(LONG) {
        let caps = s.caps().expect("caps");
        let st = caps.structure(0).expect("structure");
        assert_eq!(st.name(), "audio/x-raw");
        assert_eq!(st.get::<i32>("rate").expect("rate"), 44100);
        assert_eq!(sample_bytes(&s).len(), 441 * 4);
        n += 1;
    }
    assert_eq!(n, 20);
    assert!(writer.wait_output(LONG).status.success());

    // H.264: the reader decodes every frame.
    let case = Case::new("h264");
    let shm = &case.shm;
    let reader = InProcessReader::new(shm, "timeout=20000", "h264parse ! avdec_h264 !");
    let writer = ChildGuard::spawn(
        "h264 writer",
        &mut gst_launch(&format!(
            "-q videotestsrc num-buffers=40 ! video/x-raw,width=160,height=120 ! x264enc key-int-max=10 ! \
             video/x-h264,stream-format=byte-stream ! shmringsink shm-name={shm} slots=32"
        )),
    );
    let mut n = 0;
    while let Some(s) = reader.pull(LONG) {
        assert_eq!(caps_dims(&s), (160, 120));
        n += 1;
    }
    assert_eq!(n, 40, "decoded frames");
    assert!(writer.wait_output(LONG).status.success());
}

/// State changes never wait on the writer: a reader waiting for a writer (or a frame) stops at once.
#[test]
fn state_changes_do_not_wait() {
    let case = Case::new("unlock");
    let shm = &case.shm;
    let reader = InProcessReader::new(shm, "timeout=0", "");
    // Waiting for a writer that does not exist (timeout 0 = forever). The pause only gives the
    // streaming thread time to start waiting; the bound below holds either way.
    std::thread::sleep(Duration::from_millis(200));
    reader.stop_quickly();
    // Waiting on the futex of a ring whose writer produces nothing.
    let mut cmd = shmring_python(
        "import shmring, sys, time\nw = shmring.Writer(sys.argv[1], caps='x/y', slot_size=64)\nprint('ready', flush=True)\ntime.sleep(30)\n",
    );
    cmd.arg(&shm.name);
    let _writer = ChildGuard::spawn("idle writer", &mut cmd);
    wait_for(LONG, "the idle ring", || shm.exists().then_some(()));
    let reader = InProcessReader::new(shm, "timeout=0", "");
    std::thread::sleep(Duration::from_millis(300));
    reader.stop_quickly();
}

/// Raw video with padded strides (VideoMeta) is repacked into the caps' default layout, which is
/// what the ring carries.
#[test]
fn padded_video_is_repacked() {
    let case = Case::new("stride");
    let shm = &case.shm;
    let out = case.file("out.raw");
    let reader = waiting_python_reader(&case, &out);
    let writer = AppSrcWriter::new(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=I420,width=8,height=4,framerate=30/1 \
         ! shmringsink shm-name={shm}"
    ));
    // Padded layout: Y 8x4 in stride 16, U and V 4x2 in stride 8.
    let (offsets, strides) = ([0usize, 64, 80], [16i32, 8, 8]);
    let mut expected = Vec::new();
    for f in 0..3u8 {
        let mut padded = vec![0xEEu8; 96];
        let mut packed = Vec::new();
        for (p, (w, h)) in [(8usize, 4usize), (4, 2), (4, 2)].iter().enumerate() {
            for r in 0..*h {
                for c in 0..*w {
                    let v = ((f as usize * 100 + p * 30 + r * 8 + c) % 251) as u8;
                    padded[offsets[p] + r * strides[p] as usize + c] = v;
                    packed.push(v);
                }
            }
        }
        expected.extend_from_slice(&packed);
        let mut b = gst::Buffer::from_slice(padded);
        {
            let b = b.get_mut().expect("writable");
            b.set_pts(gst::ClockTime::from_mseconds(f as u64 * 33));
            gst_video::VideoMeta::add_full(
                b,
                gst_video::VideoFrameFlags::empty(),
                gst_video::VideoFormat::I420,
                8,
                4,
                &offsets,
                &strides,
            )
            .expect("video meta");
        }
        writer.push(b);
    }
    writer.finish();
    // Stopping removes the name: keep the writer until the reader has the frames.
    wait_file_len(&out, expected.len() as u64, "the frames at the reader");
    drop(writer);
    let text = reader.finish();
    let summary = last_json(text.as_bytes());
    assert_eq!(summary["frames"], 3, "{text}");
    // Sized from the caps, the ring never had to grow for the padded buffers.
    assert_eq!(summary["restarts"], 0, "{text}");
    assert_eq!(std::fs::read(&out).expect("output"), expected);
}

/// Seqlock across processes: a writer laps small rings as fast as it can while readers copy;
/// no reader ever delivers a torn frame. Frame `i` carries `i` in its first 8 bytes and `i % 251`
/// in every other byte (not its ring frame number: the writer skips the numbers of slots a reader
/// has pinned).
#[test]
fn torn_frames_are_never_delivered() {
    let case = Case::new("torn");
    let shm = &case.shm;
    const SIZE: usize = 1 << 20;
    const N: u64 = 400;
    let py_check = r#"
import shmring, sys, json
r = shmring.Reader(sys.argv[1], timeout=20)
print(json.dumps({"attached": True}), flush=True)
good = torn = 0
try:
    while True:
        f = r.read(timeout=20)
        if f is None:
            break
        i = int.from_bytes(f.data[:8], "little")
        if f.data.count(bytes([i % 251]), 8) == len(f.data) - 8:
            good += 1
        else:
            torn += 1
except shmring.EndOfStream:
    pass
print(json.dumps({"good": good, "torn": torn, "dropped": r.dropped}), flush=True)
"#;
    // The writer first, so the readers attach to an existing ring.
    let writer = AppSrcWriter::new(&format!(
        "appsrc name=src format=time caps=application/x-test ! shmringsink shm-name={shm} slots=3 slot-size={SIZE} sync=false"
    ));
    let frame = |i: u64| {
        let mut v = vec![(i % 251) as u8; SIZE];
        v[..8].copy_from_slice(&i.to_le_bytes());
        gst::Buffer::from_slice(v)
    };
    writer.push(frame(0));
    wait_for(LONG, "the ring", || shm.exists().then_some(()));
    let mut cmd = shmring_python(py_check);
    cmd.arg(&shm.name);
    let py = Logged::spawn(&case, "python checker", "py.log", &mut cmd);
    py.wait_log("attached");
    let reader = InProcessReader::new(shm, "timeout=20000", "");
    for i in 1..N {
        writer.push(frame(i));
    }
    writer.src.end_of_stream().expect("eos");
    let mut good = 0;
    while let Some(s) = reader.pull(LONG) {
        let data = sample_bytes(&s);
        let i = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        assert!(
            data[8..].iter().all(|v| *v == (i % 251) as u8),
            "torn frame {i} (ring frame {}) delivered by shmringsrc",
            s.buffer().expect("buffer").offset()
        );
        good += 1;
    }
    let text = py.finish();
    let summary = last_json(text.as_bytes());
    eprintln!(
        "python checker: {summary}, shmringsrc delivered {good}, dropped {}",
        reader.dropped()
    );
    assert_eq!(summary["torn"], 0, "{summary}");
    assert!(summary["good"].as_u64().unwrap_or(0) > 0, "{summary}");
    assert!(good > 0);
    drop(writer);
}

/// With `slot-size=0` and caps without a frame size, the ring grows when a buffer does not fit.
#[test]
fn auto_slot_size_grows_for_big_buffers() {
    let case = Case::new("grow");
    let shm = &case.shm;
    let out = case.file("out.raw");
    let reader = waiting_python_reader(&case, &out);
    let writer = AppSrcWriter::new(&format!(
        "appsrc name=src format=time caps=application/x-blob ! shmringsink shm-name={shm}"
    ));
    let small: Vec<u8> = (0..100u32).map(|i| i as u8).collect();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    writer.push(gst::Buffer::from_slice(small.clone()));
    // The reader holds the small frame before the ring is replaced by a bigger one.
    wait_file_len(&out, 100, "the small frame");
    writer.push(gst::Buffer::from_slice(big.clone()));
    writer.finish();
    // Stopping removes the name: keep the writer until the reader, which had to re-open the
    // name for the bigger ring, has the big frame.
    wait_file_len(&out, 100 + 3_000_000, "the big frame");
    drop(writer);
    let text = reader.finish();
    let summary = last_json(text.as_bytes());
    assert_eq!(summary["frames"], 2, "{summary}");
    assert_eq!(summary["caps"][0], "application/x-blob", "{summary}");
    let mut want = small;
    want.extend_from_slice(&big);
    assert!(
        std::fs::read(&out).expect("output") == want,
        "payloads differ"
    );
}

/// A buffer whose video meta puts a plane outside the buffer is refused with an error naming
/// the layout, never read beyond its end.
#[test]
fn video_meta_outside_the_buffer_is_an_error() {
    let case = Case::new("badmeta");
    let shm = &case.shm;
    let writer = AppSrcWriter::new(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=I420,width=8,height=4,framerate=30/1 \
         ! shmringsink shm-name={shm}"
    ));
    // V starts at 90 with stride 8: its 2 rows would end at 106, the buffer has 96 bytes.
    let mut b = gst::Buffer::from_slice(vec![0u8; 96]);
    gst_video::VideoMeta::add_full(
        b.get_mut().expect("writable"),
        gst_video::VideoFrameFlags::empty(),
        gst_video::VideoFormat::I420,
        8,
        4,
        &[0, 64, 90],
        &[16, 8, 8],
    )
    .expect("video meta");
    let _ = writer.src.push_buffer(b);
    let msg = eos_or_error(&writer.pipeline);
    drop(writer);
    let gst::MessageView::Error(e) = msg.view() else {
        panic!("expected an error, got {msg:?}");
    };
    assert!(
        e.error().to_string().contains("does not fit its caps"),
        "{}",
        e.error()
    );
}
