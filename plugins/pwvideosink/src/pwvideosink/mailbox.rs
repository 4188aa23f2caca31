// SPDX-License-Identifier: MPL-2.0

//! What the threads of `pwvideosink` share: the loop lock, the one-slot frame mailbox the
//! streaming thread fills and the graph cycle empties, the counters behind the `stats`
//! property, the format the consumer fixed and the pool of the stream's PipeWire buffers.
//!
//! `loop_lock` is held by whichever thread runs PipeWire's loop code (`wake.rs`): the loop
//! thread while it dispatches, the data-loop thread while it dispatches, `render()` while it
//! runs a graph cycle. Nobody waits for another thread, sleeps, posts a message or calls into
//! another element while holding it. Every other lock here is held only for a few field reads
//! or writes (the pool's also across non-blocking dequeues and queues). Nesting order: the
//! element's state lock is never held with `loop_lock`; `loop_lock`, then `dmabufs`, then
//! `pool`, then `negotiated`.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use pipewire as pw;

use super::dmabuf::{DmaBufPlane, DmaBufRegistry, Pool};
use super::wake::RecycleTimer;
use crate::format::{FrameLayout, VideoSpec};

/// A frame handed over by the streaming thread.
pub(crate) struct PendingFrame {
    pub buffer: gst::Buffer,
    pub layout: FrameLayout,
    pub seq: u64,
    /// Presentation time in ns (-1 when unknown).
    pub pts: i64,
    /// Set when the buffer's planes are not in the default layout (a `VideoMeta` with other
    /// offsets/strides): the negotiated video info, to copy plane by plane.
    pub info: Option<gst_video::VideoInfo>,
    /// The frame's planes when it lives in DMA-BUF memory (pass-through candidates).
    pub dmabuf: Option<Vec<DmaBufPlane>>,
    /// Where the frame's single memory block starts when it may be a buffer the sink lent
    /// upstream (default layout, system memory): queued without a copy if it is one.
    pub lent: Option<usize>,
    /// The streaming thread already copied the frame into the lent buffer at `lent`
    /// (`lend::copy_ahead`): counted as copied, not in place.
    pub copied: bool,
}

/// State shared between the element (streaming thread, property reads), the loop thread and
/// the data-loop thread.
#[derive(Default)]
pub(crate) struct Shared {
    /// Held while PipeWire's loop code runs on any thread (module doc; `wake.rs`).
    pub loop_lock: Mutex<()>,
    /// The stream a frame's graph cycle runs for, and the data loop it runs on (both null
    /// while there is none). Written and used under `loop_lock` only.
    pub cycle: CycleTarget,
    mailbox: Mutex<Option<PendingFrame>>,
    /// A consumer is linked and the stream is streaming.
    pub streaming: AtomicBool,
    pub frames_sent: AtomicU64,
    pub frames_dropped: AtomicU64,
    /// Frames sent in the PipeWire buffer upstream wrote them into (lent, no copy).
    pub frames_in_place: AtomicU64,
    /// Frames copied into a PipeWire buffer (memory from elsewhere).
    pub frames_copied: AtomicU64,
    /// Of those, copied in the graph cycle (no buffer was free when the frame arrived).
    pub copies_on_data_thread: AtomicU64,
    /// PipeWire buffers lent upstream by the pool (`lend.rs`).
    pub buffers_lent: AtomicU64,
    /// Pool acquires answered with system memory because no PipeWire buffer was free.
    pub lend_misses: AtomicU64,
    pub consumers: AtomicU32,
    /// The node drives its graph (last seen when a frame was handed over).
    pub driving: AtomicBool,
    /// Format fixed with the consumer, if any.
    pub negotiated: Mutex<Option<VideoSpec>>,
    /// Set when the connection is lost for good (reconnect=false): the message to error out with.
    pub failed: Mutex<Option<String>>,
    /// The DMA-BUFs upstream cycles through (learnt from frames by the streaming thread).
    pub dmabufs: Mutex<DmaBufRegistry>,
    /// The stream's PipeWire buffers (with our mapping of each, or the DMA-BUF it carries):
    /// filled by the loop thread (`add_buffer`/`remove_buffer`), used in graph cycles and by
    /// the lending pool.
    pub pool: Mutex<Pool>,
    /// The consumer takes upstream's DMA-BUFs (no copy).
    pub dmabuf_passthrough: AtomicBool,
    /// Frames whose graph cycle `render()` ran itself (`wake::run_cycle`).
    pub cycles_in_render: AtomicU64,
    /// DMA-BUF pass-through: runs a cycle of its own when upstream's frames stay held.
    pub recycle: RecycleTimer,
    /// The data-loop thread runs with a realtime scheduling policy (`client-rt.conf`'s
    /// module-rt could raise it), as seen from that thread when it started.
    pub data_thread_realtime: AtomicBool,
    /// Graph cycles that ended by waking the loop thread (PipeWire's `trigger_done`, once a
    /// cycle was triggered with `pw_stream_trigger_process`: see `wake::on_wake`).
    pub trigger_done: AtomicU64,
    /// Cycles the recycle timer started.
    pub recycle_cycles: AtomicU64,
    /// When a graph cycle last sent a DMA-BUF frame (monotonic ns), to pace the timer.
    pub last_dmabuf_frame_ns: AtomicU64,
}

impl Shared {
    /// Put `frame` in the mailbox (replacing, and counting as dropped, a frame not sent yet).
    pub fn offer(&self, frame: PendingFrame) {
        let (replaced, old) = match self.mailbox.lock() {
            Ok(mut m) => {
                let old = m.replace(frame);
                (old.is_some(), old)
            }
            Err(_) => (true, None),
        };
        // The replaced frame's buffer goes back to upstream here, after the lock.
        drop(old);
        if replaced {
            self.frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn take(&self) -> Option<PendingFrame> {
        self.mailbox.lock().ok().and_then(|mut m| m.take())
    }

    /// Return a frame that could not be sent yet, unless a newer one arrived meanwhile.
    pub fn put_back(&self, frame: PendingFrame) {
        if let Ok(mut m) = self.mailbox.lock()
            && m.is_none()
        {
            *m = Some(frame);
            return;
        }
        self.frames_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn drop_pending(&self) {
        if self.take().is_some() {
            self.frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `remove_buffer` (loop thread, under `loop_lock`: no graph cycle is queuing `raw`).
    pub fn remove_buffer(&self, raw: *mut pw::sys::pw_buffer) {
        lock(&self.pool).remove(raw);
    }

    pub fn negotiated(&self) -> Option<VideoSpec> {
        self.negotiated.lock().ok().and_then(|n| *n)
    }

    pub fn set_negotiated(&self, spec: Option<VideoSpec>) {
        if let Ok(mut n) = self.negotiated.lock() {
            *n = spec;
        }
    }
}

/// What a graph cycle runs on: see [`Shared::cycle`].
#[derive(Default)]
pub(crate) struct CycleTarget {
    pub stream: AtomicPtr<pw::sys::pw_stream>,
    pub data_loop: AtomicPtr<pw::sys::pw_loop>,
    /// `pw_stream_trigger_process` was called on `stream` (see `wake::run_cycle`).
    pub triggered: AtomicBool,
}

/// Lock `m`, also when another thread panicked while holding it (the data stays usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
