// SPDX-License-Identifier: MPL-2.0
//! shmringsrc's output buffers: the leased ring slot itself (zero-copy, `crate::zerocopy`) or a
//! copy into memory of our own (`crate::framepool` for raw video).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use gst::glib;

use vcambridge_common::lock;

use super::{Reader, ShmRingSrc, Step, copy_reason};
use crate::framepool::FramePool;
use crate::ring::{self, Geometry};
use crate::shm::{self, Segment};
use crate::zerocopy::LeasedSlot;

impl ShmRingSrc {
    /// A buffer for a frame of `size` bytes (at most the validated slot size): from the pool for
    /// raw video, else allocated with `g_try_malloc`, so a failed allocation is an error, not an
    /// abort of the process.
    pub(super) fn alloc(&self, r: &mut Reader, size: usize) -> Result<gst::Buffer, gst::FlowError> {
        if let Some(pool) = &r.pool
            && pool.size() == size
        {
            return pool.acquire().ok_or(gst::FlowError::Error);
        }
        if size == 0 {
            return Ok(gst::Buffer::new());
        }
        // SAFETY: g_try_malloc returns NULL or `size` bytes that gst_buffer_new_wrapped takes
        // ownership of (freed with g_free).
        unsafe {
            let p = glib::ffi::g_try_malloc(size);
            if p.is_null() {
                return Err(gst::FlowError::Error);
            }
            Ok(glib::translate::from_glib_full(
                gst::ffi::gst_buffer_new_wrapped(p, size),
            ))
        }
    }

    /// Output memory for raw video of `caps`, if its frames fit the ring's slots (`slot_size`,
    /// validated): the caps come from the peer, so nothing is sized from them alone.
    pub(super) fn pool_for(&self, caps: &gst::Caps, slot_size: usize) -> Option<FramePool> {
        let info = gst_video::VideoInfo::from_caps(caps).ok()?;
        if info.size() == 0 || info.size() > slot_size {
            return None;
        }
        // Two frames allocated and faulted in now (one downstream, one being copied); more
        // only while downstream holds on to them.
        FramePool::new(info.size(), 2, self.allocated.clone())
    }

    /// Hand out frame `meta` without a copy: a buffer whose memory is the leased slot
    /// (`crate::zerocopy`). `Err(reason)`: copy it instead; `Ok(None)`: the writer took the slot
    /// while we leased it (nothing is held).
    pub(super) fn zero_copy(
        &self,
        r: &Reader,
        seg: &Arc<Segment>,
        g: &Geometry,
        generation: u64,
        meta: &ring::FrameMeta,
    ) -> Result<Option<gst::Buffer>, &'static str> {
        if !r.settings.zero_copy {
            return Err(copy_reason::DISABLED);
        }
        if !seg.writable() {
            return Err(copy_reason::READ_ONLY);
        }
        if !seg.memory().honors_leases(generation) {
            return Err(copy_reason::WRITER);
        }
        // Well under half the ring, so that the writer always finds slots nobody holds.
        let max = (r.settings.max_leases as usize).min((g.slot_count as usize - 2) / 2);
        if meta.size == 0 || self.leases.outstanding.load(Ordering::Acquire) >= max {
            return Err(copy_reason::MAX_LEASES);
        }
        let Some(slot) =
            LeasedSlot::lease(seg.clone(), *g, meta.seq, meta.size, self.leases.clone())
        else {
            return Ok(None);
        };
        self.frames_zero_copy.fetch_add(1, Ordering::Relaxed);
        let mut buffer = gst::Buffer::new();
        if let Some(b) = buffer.get_mut() {
            b.append_memory(gst::Memory::from_slice(slot));
        }
        Ok(Some(buffer))
    }

    /// Copy frame `meta` out of its slot (pinned meanwhile) into a buffer of our own.
    /// `Ok(None)`: overwritten while we copied (discarded). `Err`: the step to take (allocation
    /// failed, ring truncated).
    pub(super) fn copy_frame(
        &self,
        r: &mut Reader,
        seg: &Arc<Segment>,
        g: &Geometry,
        meta: &ring::FrameMeta,
    ) -> Result<Option<gst::Buffer>, Step> {
        let name = r.settings.shm_name.clone();
        let mem = seg.memory();
        let mut buffer = match self.alloc(r, meta.size) {
            Ok(b) => b,
            Err(_) => {
                return Err(Step::Error(gst::error_msg!(
                    gst::ResourceError::NoSpaceLeft,
                    (
                        "shmringsrc shm-name={name}: cannot allocate a {} byte buffer for the next frame (out of memory?)",
                        meta.size
                    )
                )));
            }
        };
        let Some(buf) = buffer.get_mut() else {
            return Err(Step::Error(gst::error_msg!(
                gst::CoreError::Failed,
                ("output buffer not writable")
            )));
        };
        buf.set_size(meta.size);
        // Ask the writer to leave the slot alone while we copy (it skips pinned slots for up to
        // ring::PIN_MS): an unthrottled writer would otherwise lap an 8 MB copy and tear nearly
        // every frame. Read-only mappings cannot pin.
        let pin = seg
            .writable()
            .then(|| mem.pin(g, meta.seq, shm::monotonic_ms()));
        let ok = match buf.map_writable() {
            Ok(mut map) => {
                mem.copy_payload(g, meta, map.as_mut_slice());
                mem.finish_read(g, meta)
            }
            Err(_) => false,
        };
        if let Some(pin) = pin {
            mem.unpin(g, meta.seq, pin);
        }
        // A truncation racing the copy: the SIGBUS guard let the copy finish on zero pages; the
        // frame is discarded and the ring reported broken.
        if let Err(e) = seg.check_intact() {
            *lock(&self.dropped) += 1;
            return Err(Step::Error(gst::error_msg!(
                gst::ResourceError::Read,
                ("shmringsrc shm-name={name}: {e}")
            )));
        }
        if ok {
            self.frames_copied.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ok.then_some(buffer))
    }
}
