// SPDX-License-Identifier: MPL-2.0
//! The writing side of `v4l2loopsink`, shared by the streaming thread (`render`/`prepare`) and
//! the keep-alive thread: [`Output`] behind [`Shared`]'s mutex, the frame writes (queued in
//! place when upstream wrote into a device buffer of the pool, else one copy), the keep-alive
//! loop and the `stats` structure.
//!
//! Lock rule: `Shared::output` is held only for a frame copy into a mapped buffer and the
//! `VIDIOC_QBUF` that follows (or to read/replace fields); the keep-alive thread waits on
//! `Shared::wake` with it released, and drops it before posting an error.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gst::glib;
use gst_video::prelude::*;

use super::pool::DevicePool;
use crate::v4l2::{self, FrameLayout, OutputStream};

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
    /// Frames (written or repeated) queued with no copy: written in place by upstream into a
    /// device buffer of the pool, or a repeat of such a frame.
    pub(super) frames_zero_copy: u64,
    /// Frames (written or repeated) copied into a device buffer.
    pub(super) frames_copied: u64,
    /// Frames not shown because every device buffer was held upstream.
    pub(super) frames_dropped: u64,
    /// Frames stamped 1 µs after the previous one because the clock read for them was not
    /// later (see [`Output::stamp`]).
    pub(super) timestamps_raised: u64,
}

/// Why frames are copied (the `copy-reason` field of `stats`).
pub(super) mod reason {
    pub const OFF: &str = "offer-pool=false";
    pub const NO_QUERY: &str = "upstream did not ask for an allocation pool";
    pub const LAYOUT: &str = "the device's line layout differs from GStreamer's for these caps (strides or plane offsets)";
    pub const CAPS: &str = "the allocation query was for other caps than the device's format";
    pub const NOT_OURS: &str = "upstream wrote into its own buffers, not the offered device pool";
    pub const PLACEHOLDER: &str = "keep-alive shows the placeholder";
    pub const PLACEHOLDER_SET: &str = "a placeholder is set: keep-alive copies it into device \
                                       buffers in turn, which a pool would hold (the driver \
                                       grants 2)";
    pub const TWIN: &str = "keep-alive: the last frame copied once into a second device buffer \
                            (readers need the repeats in alternating buffers)";
}

/// The writing side, shared between the streaming thread and the keep-alive thread.
pub(super) struct Output {
    pub(super) stream: Option<OutputStream>,
    pub(super) info: Option<gst_video::VideoInfo>,
    pub(super) last: Option<(gst::Buffer, gst_video::VideoInfo)>,
    /// `last` was written by prepare() while prerolling (its render is skipped).
    pub(super) last_from_preroll: bool,
    pub(super) placeholder: Option<RepeatFrame>,
    /// The pool of the current stream's device buffers, once offered upstream.
    pub(super) pool: Option<DevicePool>,
    /// The device buffer of `pool` queued last, held so that nobody writes into it while
    /// readers may read it; keep-alive queues it again (no copy).
    pub(super) queued: Option<(gst::Buffer, u32)>,
    /// While keep-alive repeats a frame of the pool: a second device buffer with a copy of
    /// it; the two are queued in turn (v4l2 readers such as `v4l2src` cannot take the same
    /// buffer twice in a row).
    pub(super) twin: Option<(gst::Buffer, u32)>,
    /// Upstream waits for a free buffer of the pool: keep-alive makes no twin until the next
    /// frame arrives.
    pub(super) starved: bool,
    /// Why no pool was offered (copies without a pool give this reason).
    pub(super) no_pool: &'static str,
    /// Why the latest copy was made (empty: no copy yet).
    pub(super) copy_reason: &'static str,
    pub(super) last_write: Instant,
    pub(super) frame_duration: Duration,
    pub(super) repeating: bool,
    pub(super) stopping: bool,
    pub(super) keepalive: bool,
    /// Set once a keep-alive write failed (reported once, then keep-alive pauses).
    pub(super) failed: bool,
    /// The timestamp of the last frame queued (written or repeated), in µs.
    last_timestamp_us: Option<u64>,
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

/// Where a copied frame comes from.
enum Source<'a> {
    /// Already in the V4L2 layout (placeholder colour).
    Raw(&'a [u8]),
    /// A GStreamer frame, repacked to the V4L2 layout.
    Frame(&'a gst::BufferRef, &'a gst_video::VideoInfo),
}

impl Output {
    /// A fresh output for a started element: nothing negotiated yet.
    pub(super) fn new(keepalive: bool, frame_duration: Duration, offer_pool: bool) -> Output {
        Output {
            stream: None,
            info: None,
            last: None,
            last_from_preroll: false,
            placeholder: None,
            pool: None,
            queued: None,
            twin: None,
            starved: false,
            no_pool: if offer_pool {
                reason::NO_QUERY
            } else {
                reason::OFF
            },
            copy_reason: "",
            last_write: Instant::now(),
            frame_duration,
            repeating: false,
            stopping: false,
            keepalive,
            failed: false,
            last_timestamp_us: None,
            stats: Stats::default(),
        }
    }

    /// The timestamp of a frame queued now: CLOCK_MONOTONIC (as a camera's driver stamps a
    /// frame when it is captured; for a virtual camera that is when it is written), and at
    /// least 1 µs after the previous frame's (V4L2 timestamps have µs resolution; both
    /// writers, the streaming and the keep-alive thread, stamp under the output lock, so
    /// this only separates two frames queued within one µs). Readers check that they only go forwards: GStreamer's `v4l2src` ignores the
    /// driver's timestamps for good once one goes backwards ("Timestamp going backward") and
    /// then stamps frames when it happens to dequeue them. (Frames used to carry their
    /// pipeline clock time, which lags the write by the latency plus any lateness: the
    /// keep-alive repeats sent during a stall, and v4l2loopback 0.13's own stamp on a new
    /// reader's first frame, came after the late frames that followed them.)
    fn stamp(&mut self) -> Duration {
        let us = v4l2::monotonic_now().as_micros() as u64;
        let us = match self.last_timestamp_us {
            Some(last) if us <= last => {
                self.stats.timestamps_raised += 1;
                last + 1
            }
            _ => us,
        };
        self.last_timestamp_us = Some(us);
        Duration::from_micros(us)
    }

    /// Writes a frame from upstream: queued as it is when upstream wrote it into one of the
    /// stream's device buffers (no copy), copied into a device buffer otherwise.
    pub(super) fn write_frame(
        &mut self,
        buffer: &gst::Buffer,
        info: &gst_video::VideoInfo,
    ) -> Result<(), String> {
        // (Stamped first: without a stream the element errors out anyway.)
        let timestamp = self.stamp();
        let Some(stream) = self.stream.as_mut() else {
            return Err("no stream".into());
        };
        self.stats.frames_written += 1;
        self.starved = false;
        if let Some(index) = device_index(stream, buffer) {
            stream
                .queue(index, timestamp)
                .map_err(|e| io_write_message(&e))?;
            self.queued = Some((buffer.clone(), index));
            self.twin = None;
            self.stats.frames_zero_copy += 1;
            return Ok(());
        }
        let why = if self.pool.is_some() {
            reason::NOT_OURS
        } else {
            self.no_pool
        };
        self.copy(Source::Frame(buffer, info), timestamp, why)
            .map(drop)
    }

    /// Keep-alive: shows the placeholder, or the last frame again (queued again when it is in
    /// a device buffer we hold: no copy).
    fn repeat_frame(&mut self) -> Result<(), String> {
        let timestamp = self.stamp();
        let placeholder = self.placeholder.take();
        let result = match (&placeholder, self.last.clone(), self.queued.as_ref()) {
            (Some(RepeatFrame::Raw(data)), _, _) => self
                .copy(Source::Raw(data), timestamp, reason::PLACEHOLDER)
                .map(drop),
            (Some(RepeatFrame::Buffer(buf, info)), _, _) => self
                .copy(Source::Frame(buf, info), timestamp, reason::PLACEHOLDER)
                .map(drop),
            (None, Some((buf, info)), Some(_)) => self.repeat_pooled(&buf, &info, timestamp),
            (None, Some((buf, info)), None) => {
                let why = self.copy_reason;
                self.copy(Source::Frame(&buf, &info), timestamp, why)
                    .map(drop)
            }
            (None, None, _) => Ok(()),
        };
        self.placeholder = placeholder;
        result
    }

    /// Keep-alive of a frame in a device buffer of the pool: the first repeat copies it into a
    /// second buffer of the pool (the twin), later ones queue the two in turn with no copy.
    /// Without a free buffer for the twin, the same buffer is queued again.
    fn repeat_pooled(
        &mut self,
        buffer: &gst::Buffer,
        info: &gst_video::VideoInfo,
        timestamp: Duration,
    ) -> Result<(), String> {
        if self.twin.is_some() {
            std::mem::swap(&mut self.queued, &mut self.twin);
        } else if !self.starved {
            let held = self.queued.take();
            let shown = self.copy(Source::Frame(buffer, info), timestamp, reason::TWIN)?;
            if shown {
                // In a buffer of the pool (queued): the pair alternates from now on. In a
                // buffer nobody lent (the pool is unused now): later repeats copy.
                if self.queued.is_some() {
                    self.twin = held;
                }
                return Ok(());
            }
            // No free buffer: the same one again.
            self.stats.frames_dropped = self.stats.frames_dropped.saturating_sub(1);
            self.queued = held;
        }
        let (Some(stream), Some((_, index))) = (self.stream.as_mut(), self.queued.as_ref()) else {
            return Ok(());
        };
        self.stats.frames_zero_copy += 1;
        stream
            .queue(*index, timestamp)
            .map_err(|e| io_write_message(&e))
    }

    /// Copies a frame into a free device buffer and queues it: one of the stream's buffers
    /// nobody holds, else (all lent to the pool) a free buffer of the pool, else the frame is
    /// dropped (counted).
    fn copy(
        &mut self,
        src: Source<'_>,
        timestamp: Duration,
        why: &'static str,
    ) -> Result<bool, String> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(false);
        };
        let layout = stream.layout().clone();
        match stream.write_frame(timestamp, |dst| fill(&src, &layout, dst)) {
            Ok(filled) => {
                filled?;
                self.queued = None;
                self.twin = None;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let target = self.pool.as_ref().and_then(|p| p.try_acquire());
                let Some(mut target) = target else {
                    self.stats.frames_dropped += 1;
                    return Ok(false);
                };
                let Some(index) = device_index(stream, &target) else {
                    self.stats.frames_dropped += 1;
                    return Ok(false);
                };
                {
                    let target = target.make_mut();
                    let mut map = target
                        .map_writable()
                        .map_err(|_| "cannot map a device buffer".to_string())?;
                    fill(&src, &layout, &mut map.as_mut_slice()[..layout.size])?;
                }
                stream
                    .queue(index, timestamp)
                    .map_err(|e| io_write_message(&e))?;
                self.queued = Some((target, index));
                self.twin = None;
            }
            Err(e) => return Err(io_write_message(&e)),
        }
        self.stats.frames_copied += 1;
        self.stats.bytes_copied += layout.size as u64;
        self.copy_reason = why;
        Ok(true)
    }

    /// Upstream waits for a buffer of the pool: gives back the twin made for keep-alive (the
    /// copy; the frame's own buffer stays queued, it is held as `last` anyway). The caller
    /// drops the returned buffer (back into the pool) after releasing the lock.
    pub(super) fn release_twin(&mut self) -> Option<gst::Buffer> {
        self.starved = true;
        let twin = self.twin.take()?;
        let is_last = self
            .last
            .as_ref()
            .is_some_and(|(b, _)| b.as_ptr() == twin.0.as_ptr());
        if is_last {
            // The copy is the one queued now: keep the original instead.
            self.queued.replace(twin).map(|(b, _)| b)
        } else {
            Some(twin.0)
        }
    }

    /// Forgets the stream's pool and the buffers held for it (the stream is being replaced).
    #[allow(clippy::type_complexity)]
    pub(super) fn drop_pool(
        &mut self,
    ) -> (
        Option<DevicePool>,
        Option<(gst::Buffer, u32)>,
        Option<(gst::Buffer, u32)>,
    ) {
        (self.pool.take(), self.queued.take(), self.twin.take())
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
        let why = if stats.frames_copied > 0 {
            self.copy_reason
        } else if self.pool.is_some() {
            ""
        } else {
            self.no_pool
        };
        stats_structure(stats, copies, self.pool.is_some(), why)
    }
}

/// The device buffer index of `buffer` when it is one frame written into one of `stream`'s
/// buffers (lent through the pool).
fn device_index(stream: &OutputStream, buffer: &gst::BufferRef) -> Option<u32> {
    if buffer.n_memory() != 1 {
        return None;
    }
    let map = buffer.peek_memory(0).map_readable().ok()?;
    stream.index_of(map.as_ptr(), map.len())
}

/// Writes `src` into `dst` (one frame in the V4L2 layout).
fn fill(src: &Source<'_>, layout: &FrameLayout, dst: &mut [u8]) -> Result<(), String> {
    match src {
        Source::Raw(data) => {
            if data.len() != dst.len() {
                return Err(format!(
                    "placeholder of {} bytes for a {} byte frame",
                    data.len(),
                    dst.len()
                ));
            }
            dst.copy_from_slice(data);
            Ok(())
        }
        Source::Frame(buffer, info) => {
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
            layout.copy_into(&planes, dst)
        }
    }
}

/// The `stats` structure of a stopped element.
pub(super) fn empty_stats() -> gst::Structure {
    stats_structure(Stats::default(), 0.0, false, "")
}

fn stats_structure(stats: Stats, copies: f64, pool: bool, why: &str) -> gst::Structure {
    gst::Structure::builder("v4l2loopsink-stats")
        .field("frames-written", stats.frames_written)
        .field("frames-repeated", stats.frames_repeated)
        .field("timestamps-raised", stats.timestamps_raised)
        .field("bytes-copied", stats.bytes_copied)
        .field("copies-per-frame", copies)
        .field("frames-zero-copy", stats.frames_zero_copy)
        .field("frames-copied", stats.frames_copied)
        .field("frames-dropped", stats.frames_dropped)
        .field("pool-offered", pool)
        .field("copy-reason", why)
        .build()
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
        let o = &mut *out;
        match o.repeat_frame() {
            Ok(()) => {
                o.stats.frames_repeated += 1;
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
