// SPDX-License-Identifier: MPL-2.0
//! Upstream delivering `video/x-raw(memory:DMABuf)`: the sink accepts it, maps the DMA-BUF
//! memory and copies the frames into PipeWire's memfd buffers; pipewiresrc in another process
//! gets the right pixels.
//!
//! No GPU here: the "DMA-BUFs" are memfds wrapped by `GstDmaBufAllocator` (mmap works on
//! both), so this proves caps negotiation and the map-and-copy path, not real GPU buffers.

mod common;

use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use gst::prelude::*;
use gst_allocators::prelude::*;
use vcambridge_tests::ChildGuard;
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
        let caps = caps_str(format).replacen("video/x-raw", "video/x-raw(memory:DMABuf)", 1);
        let desc = format!(
            "appsrc name=src is-live=true format=time do-timestamp=true caps=\"{caps}\" ! \
             pwvideosink name=sink node-name={node} remote=\"{}\"",
            session.socket_path().display()
        );
        let pipeline = vcambridge_tests::launch_pipeline(&desc);
        let appsrc = pipeline
            .by_name("src")
            .expect("appsrc")
            .downcast::<gst_app::AppSrc>()
            .expect("appsrc type");
        let sink = pipeline.by_name("sink").expect("sink");
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
        pipeline.set_state(gst::State::Playing).expect("play");
        let stop = Arc::new(AtomicBool::new(false));
        let pusher = {
            let stop = stop.clone();
            let reference = reference.clone();
            std::thread::spawn(move || {
                let allocator = gst_allocators::DmaBufAllocator::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut buf = gst::Buffer::new();
                    buf.get_mut()
                        .expect("writable")
                        .append_memory(memfd_dmabuf(&allocator, &reference));
                    if appsrc.push_buffer(buf).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(33));
                }
            })
        };
        session.wait_for_node(node, Duration::from_secs(10));
        let out = tempfile::NamedTempFile::new().expect("temp file");
        let tail = format!(
            "{} ! filesink location={}",
            caps_str(format),
            out.path().display()
        );
        let res = ChildGuard::spawn(
            "consumer of DMA-BUF frames",
            &mut session.consumer(node, Some(10), &tail),
        )
        .wait_output(Duration::from_secs(30));
        let stats = sink.property::<gst::Structure>("stats");
        stop.store(true, Ordering::Relaxed);
        let _ = pusher.join();
        let _ = pipeline.set_state(gst::State::Null);
        assert!(
            res.status.success(),
            "{format}: consumer failed: {}\n{}",
            String::from_utf8_lossy(&res.stderr),
            session.logs()
        );
        check_frames(out.path(), &reference, 10, &format!("DMA-BUF {format}"));
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

#[test]
fn system_memory_caps_report_system_upstream_memory() {
    init();
    let session = PipeWireSession::start();
    let node = "vcam-sysmem-stats";
    let producer = Producer::start(&session, node, "I420", "");
    vcambridge_tests::wait_for(Duration::from_secs(10), "upstream-memory=system", || {
        (producer.stats().get::<&str>("upstream-memory").ok() == Some("system")).then_some(())
    });
}
