// SPDX-License-Identifier: MPL-2.0
//! shmringsrc's zero-copy path (issue 13): buffers whose memory is the leased ring slot.
//! Writers in other processes where the point is another process (gst-launch, Python), an
//! in-process appsrc writer where the test steers frame by frame. Run
//! `cargo build -p gst-plugin-shmring` first (the subprocesses load target/debug).

mod common;

use std::time::{Duration, Instant};

use common::*;
use gst::prelude::*;
use vcambridge_tests::ipc::{ShmName, read_frames, shmring_python};
use vcambridge_tests::{ChildGuard, wait_for};

/// Does the memory of `sample` lie inside this process's mapping of `shm` (`/proc/self/maps`),
/// i.e. is it the ring slot itself rather than a copy?
fn in_ring(sample: &gst::Sample, shm: &ShmName) -> bool {
    let buffer = sample.buffer().expect("buffer");
    let map = buffer.map_readable().expect("map");
    let addr = map.as_ptr() as usize;
    let path = shm.path();
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines()
        .filter(|l| l.contains(path.to_str().expect("utf-8 path")))
        .filter_map(|l| {
            let (range, _) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .any(|(a, b)| a <= addr && addr + map.len() <= b)
}

fn stat(reader: &InProcessReader, name: &str) -> u64 {
    reader.src.property::<u64>(name)
}

/// `appsrc ! shmringsink` writing 64x64 GRAY8 frames (unthrottled).
fn gray_writer(shm: &ShmName, slots: u32) -> AppSrcWriter {
    AppSrcWriter::new(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=GRAY8,width=64,height=64,framerate=30/1 \
         ! shmringsink name=sink shm-name={shm} slots={slots} sync=false"
    ))
}

fn gray(i: u8) -> gst::Buffer {
    gst::Buffer::from_slice(vec![i; 64 * 64])
}

/// A gst-launch writer in another process: every frame shmringsrc pushes is the ring slot
/// itself (its memory lies in the mapping of the ring), byte-identical to the writer's own copy
/// of the frame, and the stats say so (no frame copied).
#[test]
fn buffers_are_the_ring_slots_themselves() {
    let case = Case::new("zc-slots");
    let shm = &case.shm;
    let reference = case.file("ref.raw");
    let reader = InProcessReader::new(shm, "timeout=20000", "");
    reader.sink.set_property("enable-last-sample", false);
    let writer = ChildGuard::spawn(
        "writer",
        &mut writer_with_reference(&shm.name, 30, &reference),
    );
    let mut frames = Vec::new();
    while let Some(s) = reader.pull(LONG) {
        assert!(in_ring(&s, shm), "frame {} is a copy", frames.len());
        frames.push(sample_bytes(&s));
    }
    let wout = writer.wait_output(LONG);
    assert!(wout.status.success(), "{wout:?}");
    assert_eq!(frames, read_frames(&reference, FRAME), "frames differ");
    assert_eq!(stat(&reader, "frames-zero-copy"), 30);
    assert_eq!(stat(&reader, "frames-copied"), 0);
    assert_eq!(stat(&reader, "frames-overwritten"), 0);
    assert_eq!(reader.src.property::<String>("copy-reason"), "");
}

/// `zero-copy=false` copies every frame (memory of our own, outside the ring).
#[test]
fn zero_copy_false_copies() {
    let case = Case::new("zc-off");
    let shm = &case.shm;
    let writer = gray_writer(shm, 8);
    writer.push(gray(0));
    wait_for(LONG, "the ring", || shm.exists().then_some(()));
    let reader = InProcessReader::new(shm, "timeout=20000 zero-copy=false", "");
    // The reader starts at frame 0 of a young ring.
    assert_eq!(
        sample_bytes(&reader.pull(LONG).expect("frame 0")),
        vec![0; 64 * 64]
    );
    for i in 1..=5u8 {
        writer.push(gray(i));
        let s = reader.pull(LONG).expect("a frame");
        assert!(!in_ring(&s, shm));
        assert_eq!(sample_bytes(&s), vec![i; 64 * 64]);
    }
    assert_eq!(stat(&reader, "frames-zero-copy"), 0);
    assert_eq!(stat(&reader, "frames-copied"), 6);
    assert_eq!(
        reader.src.property::<String>("copy-reason"),
        "zero-copy=false"
    );
    writer.finish();
}

/// Downstream holds 20 frames: only `max-leases` (2) of them are ring slots, the others are
/// copied; the writer is never held up (it publishes all 41 frames meanwhile, around the two
/// leased slots) and every held frame keeps its content. Once freed, frames go zero-copy again.
#[test]
fn held_buffers_fall_back_to_copies_and_never_stall_the_writer() {
    let case = Case::new("zc-held");
    let shm = &case.shm;
    let writer = gray_writer(shm, 8);
    writer.push(gray(0));
    wait_for(LONG, "the ring", || shm.exists().then_some(()));
    let reader = InProcessReader::new(shm, "timeout=20000", "");
    reader.sink.set_property("enable-last-sample", false);
    let start = Instant::now();
    // The reader starts at frame 0 of a young ring.
    let mut held = vec![(0, reader.pull(LONG).expect("frame 0"))];
    for i in 1..=20u8 {
        writer.push(gray(i));
        held.push((i, reader.pull(LONG).expect("a frame")));
    }
    let in_ring_count = held.iter().filter(|(_, s)| in_ring(s, shm)).count();
    assert_eq!(in_ring_count, 2, "max-leases ring slots held downstream");
    assert_eq!(stat(&reader, "frames-zero-copy"), 2);
    assert_eq!(stat(&reader, "frames-copied"), 19);
    assert!(
        reader
            .src
            .property::<String>("copy-reason")
            .contains("max-leases")
    );
    // The writer goes on (20 more frames) while the two leased slots stay untouched.
    for i in 21..=40u8 {
        writer.push(gray(i));
    }
    let sink = writer.pipeline.by_name("sink").expect("sink");
    wait_for(Duration::from_secs(5), "41 frames written", || {
        (sink.property::<u64>("frames-written") == 41).then_some(())
    });
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(sink.property::<u64>("frames-dropped"), 0);
    for (i, s) in &held {
        assert_eq!(sample_bytes(s), vec![*i; 64 * 64], "held frame {i}");
    }
    drop(held);
    assert_eq!(stat(&reader, "frames-overwritten"), 0);
    reader.drain();
    for i in 41..=45u8 {
        writer.push(gray(i));
        let s = reader.pull(LONG).expect("a frame");
        assert_eq!(sample_bytes(&s), vec![i; 64 * 64]);
        assert!(in_ring(&s, shm), "zero-copy again once freed");
    }
    writer.finish();
}

/// A hostile process keeps a lease on every slot (renewed, within the writer's horizon): the
/// writer still publishes every frame at once (it takes the slot whose lease ends first), and a
/// zero-copy reader whose held buffers were overwritten counts them and posts one warning that
/// names the fix, instead of delivering changed frames silently or hanging.
#[test]
fn hostile_leases_on_every_slot_never_stall_the_writer() {
    let case = Case::new("zc-hostile");
    let shm = &case.shm;
    let writer = gray_writer(shm, 8);
    writer.push(gray(0));
    wait_for(LONG, "the ring", || shm.exists().then_some(()));
    let mut pinner_cmd = shmring_python(PINNER);
    pinner_cmd.arg(shm.path());
    let pinner = Logged::spawn(&case, "pinner", "pinner.log", &mut pinner_cmd);
    pinner.wait_log("pinning 8 slots");
    // appsink keeps frame 0 as its preroll (one lease); we hold frames 1 and 2.
    let reader = InProcessReader::new(shm, "timeout=20000 max-leases=3", "");
    reader.sink.set_property("enable-last-sample", false);
    drop(reader.pull(LONG).expect("frame 0"));
    writer.push(gray(1));
    writer.push(gray(2));
    let held = vec![
        reader.pull(LONG).expect("frame 1"),
        reader.pull(LONG).expect("frame 2"),
    ];
    assert!(
        held.iter().all(|s| in_ring(s, shm)),
        "leased under the hostile leases"
    );
    let start = Instant::now();
    for i in 3..=200u8 {
        writer.push(gray(i));
    }
    let sink = writer.pipeline.by_name("sink").expect("sink");
    wait_for(Duration::from_secs(5), "201 frames written", || {
        (sink.property::<u64>("frames-written") == 201).then_some(())
    });
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(sink.property::<u64>("frames-dropped"), 0);
    drop(held);
    // appsink keeps the last sample pulled (frame 2) until the next pull: drain, then one more
    // frame, with which the warning comes.
    reader.drain();
    writer.push(gray(201));
    reader.pull(LONG).expect("a frame");
    // (Zero-copy frames the reader delivered after them and drain() freed may count too.)
    let overwritten = stat(&reader, "frames-overwritten");
    assert!(
        overwritten >= 2,
        "{overwritten}: both held slots were taken"
    );
    let bus = reader.pipeline.bus().expect("bus");
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(10),
            &[gst::MessageType::Warning],
        )
        .expect("an overwrite warning");
    let gst::MessageView::Warning(w) = msg.view() else {
        unreachable!()
    };
    let text = format!("{} {:?}", w.error(), w.debug());
    assert!(
        text.contains("zero-copy buffer(s) while downstream still held them")
            && text.contains("zero-copy=false"),
        "{text}"
    );
    drop(pinner);
    writer.finish();
}

/// Renews a lease on every slot of the ring at argv[1] every 50 ms, 1.5 s ahead.
const PINNER: &str = r#"
import mmap, os, struct, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, os.fstat(fd).st_size)
count = struct.unpack_from("<I", m, 16)[0]
stride = struct.unpack_from("<Q", m, 32)[0]
print("pinning", count, "slots", flush=True)
while True:
    now = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1000)
    for i in range(count):
        struct.pack_into("<I", m, 4096 + i * stride + 52, (now + 1500) & 0xFFFFFFFF or 1)
    time.sleep(0.05)
"#;

/// 10 GRAY8 16x8 frames from the Python `Writer` (another process), 20 ms apart, `extra`
/// added to its arguments; the frames shmringsrc pushed (each dropped after its check, so the
/// leases stay below `max-leases`) and whether each was the ring slot itself.
fn python_writer_frames(case: &Case, extra: &str) -> (InProcessReader, Vec<(Vec<u8>, bool)>) {
    let shm = &case.shm;
    let reader = InProcessReader::new(shm, "timeout=20000", "");
    reader.sink.set_property("enable-last-sample", false);
    let mut cmd = shmring_python(&format!(
        r#"
import sys, time, shmring
w = shmring.Writer(sys.argv[1], "video/x-raw,format=GRAY8,width=16,height=8,framerate=30/1", slots=8, slot_size=128{extra})
for i in range(10):
    w.write(bytes([i]) * 128, pts=i * 33333333)
    time.sleep(0.02)
w.eos()
w.close()
"#
    ));
    cmd.arg(&shm.name);
    let writer = ChildGuard::spawn("python writer", &mut cmd);
    let mut frames = Vec::new();
    while let Some(s) = reader.pull(LONG) {
        frames.push((sample_bytes(&s), in_ring(&s, shm)));
    }
    let wout = writer.wait_output(LONG);
    assert!(wout.status.success(), "{wout:?}");
    (reader, frames)
}

/// The Python `Writer` honors leases (it says so in the header; libatomic gives it the full
/// barrier the order needs): shmringsrc hands its slots downstream, no frame copied.
#[test]
fn python_writer_is_read_zero_copy() {
    let case = Case::new("zc-pywriter");
    let (reader, frames) = python_writer_frames(&case, "");
    assert_eq!(frames.len(), 10);
    for (i, (bytes, in_ring)) in frames.iter().enumerate() {
        assert_eq!(bytes, &vec![i as u8; 128]);
        assert!(in_ring, "frame {i} is a copy");
    }
    assert_eq!(stat(&reader, "frames-zero-copy"), 10);
    assert_eq!(stat(&reader, "frames-copied"), 0);
    assert_eq!(stat(&reader, "frames-overwritten"), 0);
    assert_eq!(reader.src.property::<String>("copy-reason"), "");
}

/// A writer that does not honor leases (the Python `Writer` with `honor_leases=False`, as
/// before it did, or without libatomic): no header flag, shmringsrc copies every frame and
/// says why.
#[test]
fn writer_without_leases_is_read_with_copies() {
    let case = Case::new("zc-pywriter-nolease");
    let (reader, frames) = python_writer_frames(&case, ", honor_leases=False");
    assert_eq!(frames.len(), 10);
    for (i, (bytes, in_ring)) in frames.iter().enumerate() {
        assert_eq!(bytes, &vec![i as u8; 128]);
        assert!(!in_ring, "frame {i} is the slot");
    }
    assert_eq!(stat(&reader, "frames-zero-copy"), 0);
    assert_eq!(stat(&reader, "frames-copied"), 10);
    assert!(
        reader
            .src
            .property::<String>("copy-reason")
            .contains("does not honor leases")
    );
}

/// The Python `Writer` against readers' holds (the pin word of each slot, as a reader stores
/// it): a held slot's frame number is skipped and the frame in it stays intact; with every
/// slot held it takes the one whose hold ends first, at once (a reader never makes it wait).
#[test]
fn python_writer_skips_held_slots_and_never_waits() {
    let case = Case::new("pywriter-holds");
    let mut cmd = shmring_python(
        r#"
import json, struct, sys, time
import shmring
w = shmring.Writer(sys.argv[1], caps="x/y", slots=4, slot_size=64)
lease_gen = struct.unpack_from("<Q", w.mm, shmring.OFF_LEASE_GENERATION)[0]
seqs = [w.write(bytes([i]) * 64) for i in range(4)]
now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000
def hold(slot, ms):
    struct.pack_into("<I", w.mm, shmring.HEADER_SIZE + slot * w.slot_stride + shmring.SLOT_READER_PIN,
                     (now + ms) & 0xFFFFFFFF)
hold(1, 1500)
seqs += [w.write(bytes([10 + i]) * 64) for i in range(4)]
off1 = shmring.HEADER_SIZE + w.slot_stride
slot1 = list(w.mm[off1 + shmring.SLOT_HEADER_SIZE:off1 + shmring.SLOT_HEADER_SIZE + 64])
seq1 = struct.unpack_from("<Q", w.mm, off1)[0]
# Every slot held; frame 9 would go to slot 1, slot 2's hold ends first.
for slot, ms in enumerate([1500, 1200, 900, 1800]):
    hold(slot, ms)
t = time.monotonic()
seqs.append(w.write(bytes([20]) * 64))
took = time.monotonic() - t
print(json.dumps({"honors": w.honors_leases, "lease_gen": lease_gen, "generation": w.generation_,
                  "seqs": seqs, "slot1": slot1, "seq1": seq1, "took": took}))
w.close()
"#,
    );
    cmd.arg(&case.shm.name);
    let out = ChildGuard::spawn("python writer", &mut cmd).wait_output(LONG);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect(&text);
    assert_eq!(v["honors"], true, "{text}");
    assert_eq!(v["lease_gen"], v["generation"], "header flag: {text}");
    // 5 maps to the held slot 1: skipped, never published; 9 would too, 10 (slot 2) ends first.
    let seqs: Vec<u64> = serde_json::from_value(v["seqs"].clone()).expect("seqs");
    assert_eq!(seqs, [0, 1, 2, 3, 4, 6, 7, 8, 10], "{text}");
    assert_eq!(
        v["slot1"],
        serde_json::json!(vec![1u8; 64]),
        "frame 1 intact: {text}"
    );
    assert_eq!(
        v["seq1"], 4,
        "slot 1 still publishes frame 1 (seq 2n+2): {text}"
    );
    assert!(v["took"].as_f64().expect("took") < 0.1, "{text}");
}

/// The writer stops and a new one creates a new ring under the name while downstream holds
/// zero-copy buffers of the old one: the old mapping stays alive (unlinked) until they are
/// freed, with their content intact, and the reader goes on with the new writer.
#[test]
fn writer_restart_while_zero_copy_buffers_are_held() {
    let case = Case::new("zc-restart");
    let shm = &case.shm;
    let writer = gray_writer(shm, 8);
    writer.push(gray(10));
    wait_for(LONG, "the ring", || shm.exists().then_some(()));
    let reader = InProcessReader::new(shm, "timeout=20000", "");
    reader.sink.set_property("enable-last-sample", false);
    let a = reader.pull(LONG).expect("frame");
    writer.push(gray(11));
    let b = reader.pull(LONG).expect("frame");
    assert!(in_ring(&a, shm) && in_ring(&b, shm));
    let _ = writer.pipeline.set_state(gst::State::Null);
    drop(writer);
    wait_for(LONG, "the name removed", || (!shm.exists()).then_some(()));
    let writer = gray_writer(shm, 8);
    writer.push(gray(20));
    let c = reader.pull(LONG).expect("a frame of the new writer");
    assert_eq!(sample_bytes(&c), vec![20; 64 * 64]);
    assert!(is_discont(&c));
    // The old ring is gone from /dev/shm but still mapped for a and b.
    assert_eq!(sample_bytes(&a), vec![10; 64 * 64]);
    assert_eq!(sample_bytes(&b), vec![11; 64 * 64]);
    drop((a, b, c));
    assert_eq!(stat(&reader, "frames-overwritten"), 0);
    writer.push(gray(21));
    assert_eq!(
        sample_bytes(&reader.pull(LONG).expect("frame")),
        vec![21; 64 * 64]
    );
    writer.finish();
}

/// Another process truncates the ring while downstream holds a zero-copy buffer of it: reading
/// the buffer faults, the SIGBUS guard maps zero pages over the ring and the read finishes on
/// zeros (this process lives), the reader stops with the "shrank" error, and the buffer is
/// counted as overwritten when freed.
#[test]
fn truncation_while_a_zero_copy_buffer_is_held() {
    let case = Case::new("zc-shrink");
    let shm = &case.shm;
    let writer = ChildGuard::spawn(
        "writer",
        &mut live_writer(
            shm,
            "video/x-raw,format=BGRx,width=160,height=120,framerate=30/1",
        ),
    );
    let reader = InProcessReader::new(shm, "timeout=20000", "");
    reader.sink.set_property("enable-last-sample", false);
    // (appsink keeps the first buffer as its preroll: hold the second one.)
    drop(reader.pull(LONG).expect("a frame"));
    let s = reader.pull(LONG).expect("a frame");
    assert!(in_ring(&s, shm));
    truncate_ring(shm, 4096);
    let bytes = sample_bytes(&s);
    assert_eq!(bytes.len(), FRAME);
    assert!(bytes.iter().all(|&b| b == 0), "read on zero pages");
    drop(s);
    let bus = reader.pipeline.bus().expect("bus");
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Error])
        .expect("the reader's error");
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    let text = format!("{} {:?}", e.error(), e.debug());
    assert!(text.contains("shrank to 4096 bytes while mapped"), "{text}");
    // appsink keeps the last sample pulled until the next pull or until it is freed.
    let src = reader.src.clone();
    drop(reader);
    assert!(src.property::<u64>("frames-overwritten") >= 1);
    drop(writer);
}
