// SPDX-License-Identifier: MPL-2.0

//! The graph cycle's side of the stream: the `process` callback (the stream runs with
//! `RT_PROCESS`) and what `render()` runs when it starts a cycle itself (`wake::run_cycle`),
//! both on the thread that holds the data loop (`loop_lock` held). It takes back the buffers
//! the consumer returned, takes the waiting frame out of the mailbox and sends it in a
//! PipeWire buffer — the memfd buffer upstream wrote it into (lent through the pool, no copy),
//! a free memfd buffer it is copied into, or the `pw_buffer` that already carries its DMA-BUF
//! — and stamps the buffer's `spa_meta_header`. This is the only place where frame data meets
//! raw `pw_buffer`/`spa_buffer` pointers; it touches nothing but [`Shared`] (no loop-thread
//! object, no element) and takes no lock but the mailbox's and the pool's (never one inside
//! the other; frames are released with neither held).
//!
//! The pointer rule throughout: a `pw_buffer` returned by `pw_stream_dequeue_buffer` of our
//! stream is ours — with its `spa_buffer`, datas, chunks and metas — until we hand it back
//! with `pw_stream_queue_buffer`; each one is queued back exactly once.

use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gst_video::prelude::*;
use pipewire as pw;
use pw::spa;
use pw::stream::Stream;

use super::dmabuf::{DmaBufPlane, Pool, PoolMode};
use super::mailbox::{PendingFrame, Shared, lock};
use super::wake::RECYCLE_RETRY;

/// The `process` callback: send the waiting frame, if any.
pub(super) fn process(shared: &Shared, stream: &Stream) {
    if lock(&shared.pool).mode == PoolMode::DmaBuf {
        process_dmabuf_frame(shared, stream)
    } else {
        process_frame(shared, stream)
    }
}

/// Take back every buffer the consumer returned (free again; lendable, or to copy into).
pub(super) fn reclaim(pool: &mut Pool, stream: &Stream) {
    loop {
        // SAFETY: a plain call on the stream this callback runs for.
        let raw = unsafe { stream.dequeue_raw_buffer() };
        if raw.is_null() {
            break;
        }
        // SAFETY: `raw` was just dequeued from this stream; it stays ours (marked free in the
        // pool) until it is taken and queued back.
        unsafe { pool.reclaim(raw) };
    }
}

/// Send the waiting frame in a memfd buffer (called from the graph cycle that our trigger or
/// another driver started): queued as it is when upstream wrote it into a buffer we lent,
/// copied into a free one otherwise.
fn process_frame(shared: &Shared, stream: &Stream) {
    let Some(frame) = shared.take() else {
        // Nothing to send: leave the returned buffers queued in the stream. (PipeWire 0.3.65,
        // following another driver: dequeuing in a cycle that queues nothing stalled the
        // graph for good — `roundtrip::follows_another_driver`.)
        return;
    };
    reclaim(&mut lock(&shared.pool), stream);
    if shared.negotiated() != Some(frame.layout.spec) {
        shared.frames_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let (spec, size) = (frame.layout.spec, frame.layout.size as usize);
    if let Some(addr) = frame.lent {
        let mut pool = lock(&shared.pool);
        if let Some(raw) = pool.take_lent(addr, spec, size) {
            // SAFETY: `raw` is dequeued and was taken just now under the pool lock; queued
            // back exactly once here.
            unsafe { queue(pool, stream, raw, |buf| finish(buf, size, &frame)) };
            if frame.copied {
                shared.frames_copied.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.frames_in_place.fetch_add(1, Ordering::Relaxed);
            }
            shared.frames_sent.fetch_add(1, Ordering::Relaxed);
            // `frame` (the lent memory) is released after the pool lock.
            return;
        }
        // Not one of the current buffers (lent before the consumer, format or daemon
        // changed): copied like any other memory.
    }
    let taken = lock(&shared.pool).take_for_copy();
    let Some((raw, map)) = taken else {
        // Every buffer is with the consumer or lent: keep the frame for the next cycle.
        shared.put_back(frame);
        return;
    };
    // Copied without the pool lock (upstream may be acquiring); the mapping stays valid even
    // if the buffer is removed meanwhile.
    // SAFETY: `take_for_copy` took the buffer for us alone (not lent, not with the consumer).
    let written = copy_frame(&frame, unsafe { map.bytes_mut() });
    let pool = lock(&shared.pool);
    if !pool.still_taken(raw, &map) {
        drop(pool);
        shared.frames_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // SAFETY: still the stream's, dequeued and taken by us (checked under the lock); queued
    // back exactly once here.
    unsafe { queue(pool, stream, raw, |buf| finish(buf, written, &frame)) };
    if written == 0 {
        shared.frames_dropped.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.frames_copied.fetch_add(1, Ordering::Relaxed);
        shared.copies_on_data_thread.fetch_add(1, Ordering::Relaxed);
        shared.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Fill in `raw` (its `spa_buffer`) with `fill` and queue it, after `pool`'s lock is released:
/// queuing starts the graph cycle when the stream drives (PipeWire 0.3.65 runs a driving
/// stream's cycle from `pw_stream_queue_buffer`, inline on the thread that holds the data
/// loop: it wakes the daemon and the consumer), and nothing may wait on the pool lock
/// meanwhile (upstream's next acquire). The loop thread can't remove the buffer meanwhile:
/// `remove_buffer` runs under `loop_lock` too, which the caller holds.
///
/// # Safety
/// `raw` is a `pw_buffer` dequeued from `stream`, taken from `pool` (so no other thread uses
/// it) and not queued back yet; it is queued here, once. The caller holds `loop_lock`.
unsafe fn queue(
    pool: MutexGuard<'_, Pool>,
    stream: &Stream,
    raw: *mut pw::sys::pw_buffer,
    fill: impl FnOnce(*mut spa::sys::spa_buffer),
) {
    drop(pool);
    // SAFETY: per the contract.
    unsafe {
        fill((*raw).buffer);
        stream.queue_raw_buffer(raw);
    }
}

/// Set the first data block's chunk (`written` bytes from offset 0, marked corrupted when
/// nothing was written) and the header of `buf`.
///
/// # Safety
/// `buf` is null or the `spa_buffer` of a `pw_buffer` dequeued from our stream and not queued
/// back yet.
unsafe fn finish(buf: *mut spa::sys::spa_buffer, written: usize, frame: &PendingFrame) {
    // SAFETY: per the contract; every pointer is checked for null before use.
    unsafe {
        if buf.is_null() || (*buf).n_datas < 1 || (*buf).datas.is_null() {
            return;
        }
        let d = &mut *(*buf).datas;
        if !d.chunk.is_null() {
            let c = &mut *d.chunk;
            c.offset = 0;
            c.size = written.min(d.maxsize as usize) as u32;
            c.stride = frame.layout.stride as i32;
            c.flags = if written == 0 {
                spa::sys::SPA_CHUNK_FLAG_CORRUPTED as i32
            } else {
                0
            };
        }
        write_header(buf, frame.pts, frame.seq);
    }
}

/// Send the waiting frame in the `pw_buffer` that already carries its DMA-BUF (no copy); the
/// upstream buffer stays referenced until PipeWire gives that `pw_buffer` back (in the next
/// cycle, see `dmabuf.rs`).
fn process_dmabuf_frame(shared: &Shared, stream: &Stream) {
    let Some(frame) = shared.take() else {
        return;
    };
    // Held from dequeue to take; the loop thread can't remove the buffer while we queue it.
    let mut pool = lock(&shared.pool);
    // Buffers the consumer gave back: free again, their upstream frames released.
    reclaim(&mut pool, stream);
    let (Some(planes), true) = (
        frame.dmabuf.as_ref(),
        shared.negotiated() == Some(frame.layout.spec),
    ) else {
        shared.frames_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let key: Vec<_> = planes.iter().map(|p| p.key).collect();
    let pts = frame.pts;
    let seq = frame.seq;
    let Some(raw) = pool.take_for(&key, frame.buffer) else {
        // A DMA-BUF not in the negotiated set yet (the streaming thread asked for new
        // buffers), or every buffer carrying it is still with the consumer.
        shared.frames_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // SAFETY: `raw` was dequeued from this stream (above or in an earlier cycle) and has not
    // been queued back since (the pool hands out only free buffers, once each).
    unsafe {
        queue(pool, stream, raw, |buf| {
            set_dmabuf_chunks(buf, planes);
            write_header(buf, pts, seq);
        })
    };
    shared.frames_sent.fetch_add(1, Ordering::Relaxed);
    // If no frame follows within two frame intervals (10–100 ms), start a cycle ourselves to
    // get back what the consumer returned (`wake.rs`, `RecycleTimer`): upstream may be out of
    // buffers, all held here.
    let now = super::monotonic_ns().max(0) as u64;
    let last = shared.last_dmabuf_frame_ns.swap(now, Ordering::Relaxed);
    let interval = Duration::from_nanos(now.saturating_sub(last));
    shared
        .recycle
        .arm((interval * 2).clamp(RECYCLE_RETRY, Duration::from_millis(100)));
}

/// Where each plane of the frame lies in the DMA-BUF the buffer carries (one data per plane).
///
/// # Safety
/// `buf` is the `spa_buffer` of a `pw_buffer` dequeued from our stream and not queued back
/// yet; its `datas` array holds `n_datas` entries.
unsafe fn set_dmabuf_chunks(buf: *mut spa::sys::spa_buffer, planes: &[DmaBufPlane]) {
    // SAFETY: per the contract; chunk pointers are checked for null.
    unsafe {
        if buf.is_null() || (*buf).datas.is_null() {
            return;
        }
        let datas = std::slice::from_raw_parts_mut((*buf).datas, (*buf).n_datas as usize);
        for (d, p) in datas.iter_mut().zip(planes.iter()) {
            if d.chunk.is_null() {
                continue;
            }
            let c = &mut *d.chunk;
            c.offset = p.offset;
            c.size = p.size;
            c.stride = p.stride;
            c.flags = 0;
        }
    }
}

/// Copy `frame` into `dst` in GStreamer's default layout; returns the bytes written.
pub(super) fn copy_frame(frame: &PendingFrame, dst: &mut [u8]) -> usize {
    let Some(info) = &frame.info else {
        let Ok(map) = frame.buffer.map_readable() else {
            return 0;
        };
        let n = map.len().min(dst.len());
        dst[..n].copy_from_slice(&map[..n]);
        return n;
    };
    let Ok(src) = gst_video::VideoFrameRef::from_buffer_ref_readable(frame.buffer.as_ref(), info)
    else {
        return 0;
    };
    let finfo = info.format_info();
    let default =
        match gst_video::VideoInfo::builder(info.format(), info.width(), info.height()).build() {
            Ok(d) => d,
            Err(_) => return 0,
        };
    for p in 0..info.n_planes() {
        let Some(comp) = (0..finfo.n_components()).find(|&c| finfo.plane()[c as usize] == p) else {
            continue;
        };
        let comp = comp as u8;
        let rows = finfo.scale_height(comp, info.height()) as usize;
        let row_bytes = finfo.scale_width(comp, info.width()) as usize
            * finfo.pixel_stride()[comp as usize].max(0) as usize;
        let (Ok(data), Some(&sstride)) = (src.plane_data(p), src.plane_stride().get(p as usize))
        else {
            continue;
        };
        let sstride = sstride.max(0) as usize;
        let dstride = default.stride()[p as usize].max(0) as usize;
        let doff = default.offset()[p as usize];
        let n = row_bytes.min(sstride).min(dstride);
        for r in 0..rows {
            let (s0, d0) = (r * sstride, doff + r * dstride);
            if s0 + n > data.len() || d0 + n > dst.len() {
                break;
            }
            dst[d0..d0 + n].copy_from_slice(&data[s0..s0 + n]);
        }
    }
    default.size().min(dst.len())
}

/// Timestamp and sequence number in the buffer's `spa_meta_header`, if it has one.
///
/// # Safety
/// `buf` is null or the `spa_buffer` of a `pw_buffer` dequeued from our stream and not queued
/// back yet.
unsafe fn write_header(buf: *mut spa::sys::spa_buffer, pts: i64, seq: u64) {
    if buf.is_null() {
        return;
    }
    // SAFETY: per the contract; the meta is looked up with its size and checked for null.
    unsafe {
        let h = spa::sys::spa_buffer_find_meta_data(
            buf,
            spa::sys::SPA_META_Header,
            std::mem::size_of::<spa::sys::spa_meta_header>(),
        ) as *mut spa::sys::spa_meta_header;
        if !h.is_null() {
            (*h).flags = 0;
            (*h).offset = 0;
            (*h).pts = pts;
            (*h).dts_offset = 0;
            (*h).seq = seq;
        }
    }
}
