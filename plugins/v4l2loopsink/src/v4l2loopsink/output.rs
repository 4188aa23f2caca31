// SPDX-License-Identifier: MPL-2.0
//! The writing side of `v4l2loopsink`, shared by the streaming thread (`render`/`prepare`) and
//! the keep-alive thread: [`Output`] behind [`Shared`]'s mutex, the one-copy frame writes, the
//! keep-alive loop and the `stats` structure.
//!
//! Lock rule: `Shared::output` is held only for a frame copy into a mapped buffer and the
//! `VIDIOC_QBUF` that follows (or to read/replace fields); the keep-alive thread waits on
//! `Shared::wake` with it released, and drops it before posting an error.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gst::glib;
use gst_video::prelude::*;

use crate::v4l2::{self, OutputStream};

/// What keep-alive repeats.
pub(super) enum RepeatFrame {
    /// A frame already in the V4L2 layout (placeholder colour).
    Raw(Vec<u8>),
    /// A GStreamer frame (the last one rendered, or a decoded placeholder image).
    Buffer(gst::Buffer, gst_video::VideoInfo),
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stats {
    pub(super) frames_written: u64,
    pub(super) frames_repeated: u64,
    pub(super) bytes_copied: u64,
}

/// The writing side, shared between the streaming thread and the keep-alive thread.
pub(super) struct Output {
    pub(super) stream: Option<OutputStream>,
    pub(super) info: Option<gst_video::VideoInfo>,
    pub(super) last: Option<(gst::Buffer, gst_video::VideoInfo)>,
    /// `last` was written by prepare() while prerolling (its render is skipped).
    pub(super) last_from_preroll: bool,
    pub(super) placeholder: Option<RepeatFrame>,
    pub(super) last_write: Instant,
    pub(super) frame_duration: Duration,
    pub(super) repeating: bool,
    pub(super) stopping: bool,
    pub(super) keepalive: bool,
    /// Set once a keep-alive write failed (reported once, then keep-alive pauses).
    pub(super) failed: bool,
    pub(super) stats: Stats,
}

pub(super) struct Shared {
    pub(super) output: Mutex<Output>,
    pub(super) wake: Condvar,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Output {
    /// A fresh output for a started element: nothing negotiated yet.
    pub(super) fn new(keepalive: bool, frame_duration: Duration) -> Output {
        Output {
            stream: None,
            info: None,
            last: None,
            last_from_preroll: false,
            placeholder: None,
            last_write: Instant::now(),
            frame_duration,
            repeating: false,
            stopping: false,
            keepalive,
            failed: false,
            stats: Stats::default(),
        }
    }

    /// The `stats` property: counters and copies per frame (bytes copied over frames written
    /// and repeated times the frame size).
    pub(super) fn stats_structure(&self) -> gst::Structure {
        let stats = self.stats;
        let frames = stats.frames_written + stats.frames_repeated;
        let frame_size = self
            .stream
            .as_ref()
            .map(|s| s.layout().size as u64)
            .unwrap_or(0);
        let copies = if frames > 0 && frame_size > 0 {
            stats.bytes_copied as f64 / (frames * frame_size) as f64
        } else {
            0.0
        };
        stats_structure(stats, copies)
    }
}

/// The `stats` structure of a stopped element.
pub(super) fn empty_stats() -> gst::Structure {
    stats_structure(Stats::default(), 0.0)
}

fn stats_structure(stats: Stats, copies: f64) -> gst::Structure {
    gst::Structure::builder("v4l2loopsink-stats")
        .field("frames-written", stats.frames_written)
        .field("frames-repeated", stats.frames_repeated)
        .field("bytes-copied", stats.bytes_copied)
        .field("copies-per-frame", copies)
        .build()
}

/// Writes a GStreamer frame into the next V4L2 buffer (the one copy).
pub(super) fn write_gst_frame(
    stream: &mut OutputStream,
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
    timestamp: Duration,
) -> Result<(), String> {
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
        .map_err(|_| "cannot map the video buffer".to_string())?;
    let strides = frame.plane_stride();
    let mut planes = Vec::with_capacity(frame.n_planes() as usize);
    for i in 0..frame.n_planes() {
        let data = frame
            .plane_data(i)
            .map_err(|e| format!("cannot map plane {i}: {e}"))?;
        let stride = usize::try_from(strides[i as usize])
            .map_err(|_| format!("negative stride on plane {i}"))?;
        planes.push((data, stride));
    }
    let layout = stream.layout().clone();
    stream
        .write_frame(timestamp, |dst| layout.copy_into(&planes, dst))
        .map_err(|e| io_write_message(&e))?
}

fn write_raw_frame(
    stream: &mut OutputStream,
    data: &[u8],
    timestamp: Duration,
) -> Result<(), String> {
    stream
        .write_frame(timestamp, |dst: &mut [u8]| {
            if data.len() != dst.len() {
                return Err(format!(
                    "placeholder of {} bytes for a {} byte frame",
                    data.len(),
                    dst.len()
                ));
            }
            dst.copy_from_slice(data);
            Ok(())
        })
        .map_err(|e| io_write_message(&e))?
}

fn io_write_message(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => format!(
            "the device is gone ({e}): the v4l2loopback device was removed or the module unloaded"
        ),
        _ => format!("writing a frame failed: {e}"),
    }
}

/// The keep-alive loop: while no frame arrived for two frame intervals, repeat the last frame
/// (or the placeholder) once per frame interval. Ends when `stopping` is set.
pub(super) fn keepalive_loop(shared: Arc<Shared>, element: glib::WeakRef<super::V4l2LoopSink>) {
    let mut out = shared.lock();
    loop {
        if out.stopping {
            return;
        }
        let wait = out.frame_duration;
        let due = out.last_write
            + if out.repeating {
                out.frame_duration
            } else {
                2 * out.frame_duration
            };
        let now = Instant::now();
        let active = out.keepalive && !out.failed && out.stream.is_some();
        if !active || now < due {
            let timeout = if active { due - now } else { wait };
            out = shared
                .wake
                .wait_timeout(out, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        let ts = v4l2::monotonic_now();
        let o = &mut *out;
        let Some(stream) = o.stream.as_mut() else {
            continue;
        };
        let result = match (&o.placeholder, &o.last) {
            (Some(RepeatFrame::Raw(data)), _) => write_raw_frame(stream, data, ts),
            (Some(RepeatFrame::Buffer(buf, info)), _) | (None, Some((buf, info))) => {
                write_gst_frame(stream, buf, info, ts)
            }
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => {
                o.stats.frames_repeated += 1;
                o.stats.bytes_copied += stream.layout().size as u64;
                o.repeating = true;
                // Keep the cadence even if a write was late.
                o.last_write = if now.duration_since(due) > o.frame_duration {
                    now
                } else {
                    due
                };
            }
            Err(msg) => {
                o.failed = true;
                drop(out);
                if let Some(element) = element.upgrade() {
                    gst::element_error!(
                        element,
                        gst::ResourceError::Write,
                        ("keep-alive write failed"),
                        ["{}", msg]
                    );
                }
                out = shared.lock();
            }
        }
    }
}
