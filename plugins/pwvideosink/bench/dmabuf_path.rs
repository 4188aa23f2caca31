// SPDX-License-Identifier: MPL-2.0
//! The DMA-BUF input paths of `pwvideosink`: upstream delivers `video/x-raw(memory:DMABuf)`
//! from a pool of 8 memfd-backed DMA-BUFs (`GstDmaBufAllocator`, as in tests/dmabuf.rs; no GPU
//! here) at 30 frames/s; the consumer (`pipewiresrc ! appsink` in another
//! process) either takes DMA-BUFs (pass-through: upstream's own fds, no copy) or system memory
//! (the sink maps and copies each frame into its memfds). Frames/s at the consumer and CPU per
//! delivered frame.

use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gst::prelude::*;
use gst_allocators::prelude::*;
use vcambridge_tests::pipewire::PipeWireSession;

use super::{now_ns, run_consumer, self_cpu_ns};

/// What one DMA-BUF run measured.
pub struct PathResult {
    pub fps: f64,
    pub latency_ms: f64,
    pub producer_us: f64,
    pub consumer_us: f64,
}

/// `n` memfd-backed DMA-BUFs of `size` bytes; a buffer is free again once only the pool
/// references its memory.
struct DmaBufPool {
    mems: Vec<(gst::Memory, std::fs::File)>,
}

impl DmaBufPool {
    fn new(n: usize, size: usize) -> Self {
        let allocator = gst_allocators::DmaBufAllocator::new();
        let mems = (0..n)
            .map(|_| {
                // SAFETY: memfd_create with a valid C string; the fd is owned from here on.
                let fd = unsafe { libc::memfd_create(c"bench-dmabuf".as_ptr(), libc::MFD_CLOEXEC) };
                assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
                // SAFETY: `fd` is a fresh fd nobody else owns.
                let file = unsafe { std::fs::File::from_raw_fd(fd) };
                file.set_len(size as u64).expect("ftruncate");
                let writer = file.try_clone().expect("dup");
                // SAFETY: the allocator takes ownership of the fd.
                let mem = unsafe { allocator.alloc_dmabuf(file, size) }.expect("dmabuf memory");
                (mem, writer)
            })
            .collect();
        DmaBufPool { mems }
    }

    /// A buffer around a free DMA-BUF stamped with the time now; `None` if all are downstream.
    fn acquire(&self) -> Option<gst::Buffer> {
        let (mem, writer) = self.mems.iter().find(|(mem, _)| {
            // SAFETY: reading the refcount of a live memory; only ours means it is free.
            unsafe { (*mem.as_ptr()).mini_object.refcount == 1 }
        })?;
        writer.write_all_at(&now_ns().to_le_bytes(), 0).ok()?;
        let mut buf = gst::Buffer::new();
        buf.get_mut()?.append_memory(mem.clone());
        Some(buf)
    }
}

/// One run: DMA-BUF upstream at `width`x`height` I420 into pwvideosink, a consumer taking
/// `frames` frames with `consumer_caps` (`video/x-raw(memory:DMABuf)` or `video/x-raw`).
pub fn run(
    session: &PipeWireSession,
    node: &str,
    (width, height): (usize, usize),
    consumer_caps: &str,
    frames: usize,
) -> Result<PathResult, String> {
    let caps = format!(
        "video/x-raw(memory:DMABuf),format=I420,width={width},height={height},framerate=30/1"
    );
    let desc = format!(
        "appsrc name=src format=time is-live=true do-timestamp=true caps=\"{caps}\" \
         max-buffers=2 block=true ! pwvideosink name=sink node-name={node} sync=false"
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| e.to_string())?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_string())?;
    let appsrc = pipeline
        .by_name("src")
        .and_downcast::<gst_app::AppSrc>()
        .ok_or("no appsrc")?;
    let sink = pipeline.by_name("sink").ok_or("no sink")?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("{e:?}"))?;
    let pool = DmaBufPool::new(8, width * height * 3 / 2);
    let stop = Arc::new(AtomicBool::new(false));
    // Paced at 30 frames/s, the camera case: unthrottled, pass-through stalls (every
    // DMA-BUF of upstream's pool held in PipeWire buffers, and buffers the consumer gave back
    // are only taken back when the next frame comes; see the crate README).
    let pusher = std::thread::spawn({
        let stop = stop.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(33));
                match pool.acquire() {
                    Some(buf) => {
                        if appsrc.push_buffer(buf).is_err() {
                            break;
                        }
                    }
                    // Every DMA-BUF is downstream (held while a consumer reads it).
                    None => std::thread::sleep(Duration::from_micros(500)),
                }
            }
        }
    });
    session.wait_for_node(node, Duration::from_secs(10));
    // The sink learns all 8 DMA-BUFs before anyone watches: no buffer renegotiation during
    // the measurement.
    std::thread::sleep(Duration::from_millis(700));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    session.apply_env(&mut cmd);
    cmd.args(["--consumer", node, &frames.to_string(), consumer_caps]);
    let snap = {
        let sink = sink.clone();
        move || {
            let sent = sink
                .property::<gst::Structure>("stats")
                .get::<u64>("frames-sent")
                .unwrap_or(0);
            (self_cpu_ns(), sent)
        }
    };
    let run = run_consumer(
        "dmabuf bench consumer",
        &mut cmd,
        Duration::from_secs(60 + frames as u64 / 10),
        snap,
    );
    let stats = sink.property::<gst::Structure>("stats");
    stop.store(true, Ordering::Relaxed);
    let _ = pipeline.set_state(gst::State::Null);
    let _ = pusher.join();
    let (text, (p0, s0), (p1, s1)) = run?;
    let value = |key: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    let mut lat: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("LAT "))
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|ns| ns / 1e6)
        .collect();
    let expected = if consumer_caps.contains("DMABuf") {
        "dmabuf"
    } else {
        "memfd"
    };
    let got = stats.get::<String>("buffer-type").unwrap_or_default();
    if got != expected {
        return Err(format!("buffer-type {got}, expected {expected}: {stats:?}"));
    }
    let delivered = (s1 - s0).max(1) as f64;
    Ok(PathResult {
        fps: value("FPS ").unwrap_or(f64::NAN),
        latency_ms: vcambridge_tests::bench::median(&mut lat),
        producer_us: (p1 - p0) as f64 / 1e3 / delivered,
        consumer_us: value("CPU ").unwrap_or(f64::NAN) / 1e3 / frames as f64,
    })
}
