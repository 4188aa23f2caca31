// SPDX-License-Identifier: MPL-2.0
//! Upstream delivering `video/x-raw(memory:DMABuf)`.
//!
//! - A consumer that takes DMA-BUFs (pipewiresrc asked for `memory:DMABuf`, in another
//!   process) gets upstream's own DMA-BUFs: the inode of every fd it receives is one of the
//!   producer's buffers (no copy anywhere), the pixels are right, frames keep flowing while
//!   upstream's small pool recycles buffers the consumer gave back.
//! - A consumer that wants system memory gets the frames copied into memfds.
//! - Upstream allocating a new DMA-BUF per frame: pass-through is given up with a warning,
//!   frames are copied.
//!
//! No GPU here: the "DMA-BUFs" are memfds wrapped by `GstDmaBufAllocator` (mmap works on
//! both; PipeWire passes them as `SPA_DATA_DmaBuf`). Real GPU buffers (tiled modifiers,
//! implicit sync) are not covered.

mod common;

use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use gst::prelude::*;
use gst_allocators::prelude::*;
use vcambridge_tests::pipewire::PipeWireSession;

/// A DmaBufMemory holding `data`, backed by a fresh memfd.
fn memfd_dmabuf(allocator: &gst_allocators::DmaBufAllocator, data: &[u8]) -> gst::Memory {
    // SAFETY: memfd_create with a valid C string; the fd is owned by the File from here on.
    let fd = unsafe { libc::memfd_create(c"vcam-dmabuf".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(data).expect("write memfd");
    // SAFETY: the allocator takes ownership of the fd (closes it with the memory).
    unsafe { allocator.alloc_dmabuf(file, data.len()) }.expect("dmabuf memory")
}

#[test]
fn dmabuf_memory_from_upstream_is_copied_with_correct_pixels() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-dmabuf";
    for format in ["RGBA", "I420"] {
        let reference = reference_frame(format);
        let caps = format!("caps=\"{}\"", dmabuf_caps(format));
        let (pipeline, appsrc, sink) = appsrc_pipeline(&session, node, &caps, "");
        // Count buffers reaching the sink whose memory really is DMA-BUF.
        let dmabufs = Arc::new(AtomicU64::new(0));
        sink.static_pad("sink")
            .expect("pad")
            .add_probe(gst::PadProbeType::BUFFER, {
                let dmabufs = dmabufs.clone();
                move |_, info| {
                    if let Some(buf) = info.buffer()
                        && buf.n_memory() == 1
                        && buf
                            .peek_memory(0)
                            .downcast_memory_ref::<gst_allocators::DmaBufMemory>()
                            .is_some()
                    {
                        dmabufs.fetch_add(1, Ordering::Relaxed);
                    }
                    gst::PadProbeReturn::Ok
                }
            });
        let pusher = {
            let reference = reference.clone();
            let allocator = gst_allocators::DmaBufAllocator::new();
            Pusher::start(appsrc, move || {
                let mut buf = gst::Buffer::new();
                buf.get_mut()
                    .expect("writable")
                    .append_memory(memfd_dmabuf(&allocator, &reference));
                Some(buf)
            })
        };
        session.wait_for_node(node, Duration::from_secs(10));
        let what = format!("{format}: consumer of DMA-BUF frames");
        let out = Consumer::run(&session, node, 10, format, &what);
        let stats = stats(&sink);
        // A new DMA-BUF per frame: after 16 the sink says it stops trying to pass them
        // through (bounded wait: upstream keeps pushing meanwhile).
        let bus = pipeline.bus().expect("bus");
        let warned = std::iter::from_fn(|| {
            bus.timed_pop_filtered(
                gst::ClockTime::from_seconds(10),
                &[gst::MessageType::Warning],
            )
        })
        .any(|m| match m.view() {
            gst::MessageView::Warning(w) => w.error().to_string().contains("distinct DMA-BUFs"),
            _ => false,
        });
        pusher.stop();
        let _ = pipeline.set_state(gst::State::Null);
        assert!(
            warned,
            "{format}: no warning about giving up DMA-BUF pass-through"
        );
        check_frames(out.path(), &reference, 10, &format!("DMA-BUF {format}"));
        // pipewiresrc asked for system memory: no pass-through (and a new DMA-BUF per frame
        // makes the sink give up on it anyway).
        assert_eq!(
            stats.get::<&str>("buffer-type").expect("buffer-type"),
            "memfd",
            "{format}: {stats}"
        );
        assert_eq!(
            stats
                .get::<&str>("upstream-memory")
                .expect("upstream-memory"),
            "DMABuf",
            "{format}: {stats}"
        );
        assert!(
            stats.get::<u64>("frames-sent").expect("frames-sent") >= 10,
            "{format}: {stats}"
        );
        assert!(
            dmabufs.load(Ordering::Relaxed) >= 10,
            "{format}: upstream buffers were not DMA-BUF memory"
        );
    }
}

/// Wait (bounded) until the sink's stats say upstream delivers `memory`.
fn wait_upstream_memory(sink: &gst::Element, memory: &str) {
    let what = format!("upstream-memory={memory}");
    vcambridge_tests::wait_for(Duration::from_secs(10), &what, || {
        (stats(sink).get::<&str>("upstream-memory").ok() == Some(memory)).then_some(())
    });
}

#[test]
fn system_memory_caps_report_system_upstream_memory() {
    let (_session, producer) = session_with_producer("vcam-sysmem-stats", "I420", "");
    wait_upstream_memory(&producer.sink, "system");
}

/// Upstream's buffer pool, as a decoder or GPU element has one: `n` memfd-backed DMA-BUFs,
/// reused once nobody downstream holds them any more, the one given back longest ago first
/// (as `GstBufferPool`'s queue does).
struct DmaBufPool {
    mems: Vec<(gst::Memory, std::fs::File, u64)>,
    /// Where the search for a free buffer starts: after the last one handed out.
    next: std::cell::Cell<usize>,
}

impl DmaBufPool {
    fn new(n: usize, size: usize) -> Self {
        let allocator = gst_allocators::DmaBufAllocator::new();
        let mems = (0..n)
            .map(|_| {
                // SAFETY: memfd_create with a valid C string; the fd is owned from here on.
                let fd = unsafe { libc::memfd_create(c"vcam-pool".as_ptr(), libc::MFD_CLOEXEC) };
                assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
                let file = unsafe { std::fs::File::from_raw_fd(fd) };
                file.set_len(size as u64).expect("ftruncate");
                let writer = file.try_clone().expect("dup");
                let ino = std::os::unix::fs::MetadataExt::ino(&writer.metadata().expect("fstat"));
                // SAFETY: the allocator takes ownership of the fd.
                let mem = unsafe { allocator.alloc_dmabuf(file, size) }.expect("dmabuf memory");
                (mem, writer, ino)
            })
            .collect();
        DmaBufPool {
            mems,
            next: std::cell::Cell::new(0),
        }
    }

    fn inodes(&self) -> Vec<u64> {
        self.mems.iter().map(|m| m.2).collect()
    }

    /// A buffer around a DMA-BUF nobody else references, holding `data`; `None` if all are
    /// still downstream.
    fn acquire(&self, data: &[u8]) -> Option<gst::Buffer> {
        let n = self.mems.len();
        let i = (0..n).map(|k| (self.next.get() + k) % n).find(|&i| {
            // SAFETY: reading the refcount of a live memory; only ours means it is free.
            unsafe { (*self.mems[i].0.as_ptr()).mini_object.refcount == 1 }
        })?;
        self.next.set(i + 1);
        let (mem, writer, _) = &self.mems[i];
        writer.write_all_at(data, 0).expect("write the DMA-BUF");
        let mut buf = gst::Buffer::new();
        buf.get_mut().expect("new").append_memory(mem.clone());
        Some(buf)
    }
}

/// The frame for sequence number `seq`: the reference with `seq` in its first 4 bytes.
fn marked(reference: &[u8], seq: u32) -> Vec<u8> {
    let mut f = reference.to_vec();
    f[..4].copy_from_slice(&seq.to_le_bytes());
    f
}

/// Pushes `reference` marked with a sequence number every 33 ms, each in a DMA-BUF from
/// `pool`, until stopped; [`Pusher::stop`] says how often the pool had no free buffer.
fn pool_pusher(pool: DmaBufPool, appsrc: gst_app::AppSrc, reference: Vec<u8>) -> Pusher {
    let mut seq = 0u32;
    Pusher::start(appsrc, move || {
        let buf = pool.acquire(&marked(&reference, seq))?;
        seq += 1;
        Some(buf)
    })
}

/// The consumer (`py/dmabuf_consumer.py`) reads every frame as it arrives: the sink releases
/// an upstream DMA-BUF when PipeWire gives its `pw_buffer` back, one cycle after the consumer
/// took it (README, "when a DMA-BUF comes back"), so its sequence numbers must increase.
#[test]
fn dmabufs_pass_through_to_a_dmabuf_consumer_without_copy() {
    init();
    let session = PipeWireSession::start();
    const FRAMES: usize = 40;
    for format in ["RGBA", "I420"] {
        let node = format!("vcam-passthrough-{}", format.to_lowercase());
        let reference = reference_frame(format);
        let caps = dmabuf_caps(format);
        let (pipeline, appsrc, sink) =
            appsrc_pipeline(&session, &node, &format!("caps=\"{caps}\""), "");
        let bus = pipeline.bus().expect("bus");
        // A pool of 4, as small as real ones: frames flow only if the sink gives buffers back
        // once the consumer has released them.
        let pool = DmaBufPool::new(4, reference.len());
        let inodes = pool.inodes();
        let pusher = pool_pusher(pool, appsrc, reference.clone());
        session.wait_for_node(&node, Duration::from_secs(10));
        let what = format!("{format}: DMA-BUF consumer (python, pipewiresrc)");
        let consumer = Consumer::python_dmabuf(&session, &node, &caps, FRAMES, &what);
        let (stdout, out) = consumer.finish(&session, Duration::from_secs(60));
        let stats = stats(&sink);
        let starved = pusher.stop();
        let _ = pipeline.set_state(gst::State::Null);
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("consumer JSON line"))
            .collect();
        assert_eq!(lines.len(), FRAMES, "{format}: {stdout}");
        println!("{format}: {stats}; first consumer buffer {}", lines[0]);
        let planes = if format == "I420" { 3 } else { 1 };
        let mut seen = std::collections::BTreeSet::new();
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(
                l["dmabuf"], true,
                "{format} frame {i}: not DMA-BUF memory: {l}"
            );
            assert!(
                l["caps"].as_str().unwrap().contains("memory:DMABuf"),
                "{format} frame {i}: {l}"
            );
            let got: Vec<u64> = l["inodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(
                got.len(),
                planes,
                "{format} frame {i}: one fd per plane: {l}"
            );
            for ino in &got {
                assert!(
                    inodes.contains(ino),
                    "{format} frame {i}: the consumer's DMA-BUF (inode {ino}) is not one of \
                     upstream's {inodes:?}: the frame was copied"
                );
                seen.insert(*ino);
            }
        }
        assert!(
            seen.len() >= 2,
            "{format}: the consumer saw only {seen:?} of upstream's pool {inodes:?}"
        );
        // Pixels: every frame is the reference with an increasing sequence number.
        let data = std::fs::read(out.path()).expect("consumer output");
        assert_eq!(
            data.len(),
            reference.len() * FRAMES,
            "{format}: frame sizes"
        );
        let mut last = None;
        for (i, frame) in data.chunks(reference.len()).enumerate() {
            let seq = u32::from_le_bytes(frame[..4].try_into().unwrap());
            assert!(
                frame[4..] == reference[4..],
                "{format} frame {i} (seq {seq}): pixels differ from the reference"
            );
            if let Some(l) = last {
                assert!(seq > l, "{format}: sequence {l} then {seq}");
            }
            last = Some(seq);
        }
        assert_eq!(
            stats.get::<&str>("buffer-type").expect("buffer-type"),
            "dmabuf",
            "{format}: {stats}"
        );
        assert!(
            stats.get::<u64>("frames-sent").expect("frames-sent") >= FRAMES as u64,
            "{format}: {stats}"
        );
        println!("{format}: {stats}");
        // Frames every 33 ms start every cycle: the recycle timer (2 frame intervals) stays idle.
        let recycles = stats.get::<u64>("recycle-cycles").expect("recycle-cycles");
        assert!(
            recycles <= 3,
            "{format}: {recycles} extra cycles at 30 fps: {stats}"
        );
        // Upstream kept going: the sink released buffers as the consumer returned them.
        assert!(
            starved < 10,
            "{format}: upstream's pool ran dry {starved} times: {stats}"
        );
        while let Some(msg) = bus.pop() {
            if let gst::MessageView::Error(e) = msg.view() {
                panic!("{format}: pipeline error {}", e.error());
            }
        }
    }
}

/// Upstream pushing DMA-BUFs as fast as its pool of 4 recycles them: frames keep flowing.
/// Every DMA-BUF passed through is held until PipeWire gives its `pw_buffer` back, which it
/// does only in a graph cycle; when all 4 were held, no new
/// frame came to start one and the stream stalled for good (after ~40 frames). The sink now
/// runs a cycle on its own while it holds upstream's frames and none arrives.
#[test]
fn unthrottled_dmabuf_upstream_keeps_flowing() {
    init();
    let session = PipeWireSession::start();
    const FRAMES: usize = 150;
    let format = "RGBA";
    let node = "vcam-passthrough-fast";
    let reference = reference_frame(format);
    let caps = dmabuf_caps(format);
    let (pipeline, appsrc, sink) = appsrc_pipeline(&session, node, &format!("caps=\"{caps}\""), "");
    let pool = DmaBufPool::new(4, reference.len());
    let pusher = {
        let mut seq = 0u32;
        Pusher::start_every(appsrc, Duration::ZERO, move || {
            let buf = pool.acquire(&marked(&reference, seq))?;
            seq += 1;
            Some(buf)
        })
    };
    session.wait_for_node(node, Duration::from_secs(10));
    let what = "unthrottled DMA-BUF consumer (python, pipewiresrc)";
    let consumer = Consumer::python_dmabuf(&session, node, &caps, FRAMES, what);
    let (stdout, _out) = consumer.finish(&session, Duration::from_secs(40));
    let stats = stats(&sink);
    pusher.stop();
    let _ = pipeline.set_state(gst::State::Null);
    let lines = stdout.lines().count();
    assert_eq!(lines, FRAMES, "{stats}");
    println!("{stats}");
    let recycles = stats.get::<u64>("recycle-cycles").expect("recycle-cycles");
    assert!(recycles > 0, "no cycle of the sink's own: {stats}");
    assert_eq!(
        stats.get::<&str>("buffer-type").expect("buffer-type"),
        "dmabuf",
        "{stats}"
    );
}

/// Upstream with a small DMA-BUF pool, consumer wanting system memory (it does not offer the
/// DMA-BUF variant): the sink falls back to memfd buffers and copies, pixels exact.
#[test]
fn consumer_refusing_dmabuf_gets_copies_in_memfd() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-dmabuf-refused";
    let format = "RGBA";
    let reference = reference_frame(format);
    let caps = format!("caps=\"{}\"", dmabuf_caps(format));
    let (pipeline, appsrc, sink) = appsrc_pipeline(&session, node, &caps, "");
    let pool = DmaBufPool::new(4, reference.len());
    let pusher = pool_pusher(pool, appsrc, reference.clone());
    session.wait_for_node(node, Duration::from_secs(10));
    let out = Consumer::run(&session, node, 10, format, "system-memory consumer");
    let stats = stats(&sink);
    pusher.stop();
    let _ = pipeline.set_state(gst::State::Null);
    assert_eq!(
        stats.get::<&str>("buffer-type").expect("buffer-type"),
        "memfd",
        "{stats}"
    );
    let data = std::fs::read(out.path()).expect("consumer output");
    assert_eq!(data.len(), reference.len() * 10, "frame sizes");
    for (i, frame) in data.chunks(reference.len()).enumerate() {
        assert!(frame[4..] == reference[4..], "frame {i}: pixels differ");
    }
}

/// Upstream switches from system memory to DMA-BUF mid-stream: the stream is recreated with
/// the same node name, and a consumer that links afterwards gets upstream's DMA-BUFs.
#[test]
fn switch_from_system_memory_to_dmabuf_recreates_the_stream() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-mem-switch";
    let format = "RGBA";
    let reference = reference_frame(format);
    let sys_caps: gst::Caps = caps_str(format).parse().expect("caps");
    let dma_caps: gst::Caps = dmabuf_caps(format).parse().expect("caps");
    let (pipeline, appsrc, sink) = appsrc_pipeline(&session, node, "", "");
    appsrc.set_caps(Some(&sys_caps));
    for _ in 0..5 {
        appsrc
            .push_buffer(gst::Buffer::from_slice(reference.clone()))
            .expect("push");
        std::thread::sleep(Duration::from_millis(33));
    }
    session.wait_for_node(node, Duration::from_secs(10));
    wait_upstream_memory(&sink, "system");
    appsrc.set_caps(Some(&dma_caps));
    let pool = DmaBufPool::new(4, reference.len());
    let inodes = pool.inodes();
    let pusher = pool_pusher(pool, appsrc, reference.clone());
    wait_upstream_memory(&sink, "DMABuf");
    session.wait_for_node(node, Duration::from_secs(10));
    let caps = dma_caps.to_string();
    let what = "DMA-BUF consumer after the switch";
    let consumer = Consumer::python_dmabuf(&session, node, &caps, 10, what);
    let (stdout, _out) = consumer.finish(&session, Duration::from_secs(60));
    let stats = stats(&sink);
    pusher.stop();
    let _ = pipeline.set_state(gst::State::Null);
    for l in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
        assert_eq!(v["dmabuf"], true, "{l}");
        for ino in v["inodes"].as_array().unwrap() {
            assert!(inodes.contains(&ino.as_u64().unwrap()), "copied frame: {l}");
        }
    }
    assert_eq!(stdout.lines().count(), 10, "{stdout}");
    assert_eq!(
        stats.get::<&str>("buffer-type").unwrap(),
        "dmabuf",
        "{stats}"
    );
}
