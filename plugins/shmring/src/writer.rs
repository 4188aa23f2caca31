// SPDX-License-Identifier: MPL-2.0
//! The writer side of a ring: frame numbering, the copy path, and slots lent out to a buffer
//! pool so that upstream writes straight into shared memory. No GStreamer types.

use std::sync::{Arc, Mutex};

use vcambridge_common::lock;

#[cfg(test)]
use crate::ring::{self, ReadStart};
use crate::ring::{FrameMeta, Geometry, WriterState};
use crate::shm::{self, Segment, ShmError};

/// A frame slot lent out for in-place writing (see [`RingWriter::lend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lent {
    pub frame: u64,
    pub slot: u32,
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: a pointer into the writer's mapping, kept alive by the Arc<RingWriter> held next to it.
unsafe impl Send for Lent {}

#[derive(Debug)]
struct Inner {
    /// Next frame number to hand out.
    next: u64,
    /// Per slot: the frame lent to a pool buffer that is still alive.
    lent: Vec<Option<u64>>,
    caps_id: u64,
    closed: bool,
}

/// The single writer of one ring generation.
#[derive(Debug)]
pub struct RingWriter {
    segment: Segment,
    geometry: Geometry,
    generation: u64,
    inner: Mutex<Inner>,
}

/// Outcome of [`RingWriter::publish_in_place`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InPlace {
    /// Published without a copy; the frame number.
    Published(u64),
    /// The data is not (or no longer) a publishable lent slot: use the copy path.
    NotLent,
}

impl RingWriter {
    /// Create or reclaim the ring `name` (see [`Segment::create_writer`]).
    pub fn create(name: &str, mode: u32, geometry: Geometry) -> Result<Arc<Self>, ShmError> {
        let (segment, generation) = Segment::create_writer(name, mode, &geometry)?;
        // `claim` honors reader leases: readers may hand slot memory downstream.
        segment.memory().set_honors_leases(generation);
        Ok(Arc::new(RingWriter {
            segment,
            geometry,
            generation,
            inner: Mutex::new(Inner {
                next: 0,
                lent: vec![None; geometry.slot_count as usize],
                caps_id: 0,
                closed: false,
            }),
        }))
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn path(&self) -> String {
        self.segment.path()
    }

    /// `Err` once another process truncated the ring under us (see [`Segment::check_intact`]):
    /// the frames written since went to zero pages, readers cannot see them.
    pub fn check_intact(&self) -> Result<(), ShmError> {
        self.segment.check_intact()
    }

    /// Publish a caps string (new caps id, used by the following frames).
    pub fn set_caps(&self, caps: &str) -> Result<u64, String> {
        let mut inner = lock(&self.inner);
        let id = self
            .segment
            .memory()
            .write_caps(caps)
            .map_err(|e| format!("{}: {e}", self.path()))?;
        inner.caps_id = id;
        Ok(id)
    }

    /// Claim the next frame whose slot is neither lent out nor pinned / leased by a reader, and
    /// mark it in progress (in Dekker's order against readers' leases, see
    /// [`crate::ring::lease`]). Frame numbers of skipped slots are never published. Leases only
    /// steer: if every free slot is held, the one whose hold ends first is taken anyway (a
    /// reader can never hold the writer up); such a reader's copy then tears and is discarded,
    /// and a zero-copy reader counts the frame as overwritten.
    fn claim(&self, inner: &mut Inner) -> Option<u64> {
        let g = &self.geometry;
        let mem = self.segment.memory();
        let now_ms = shm::monotonic_ms();
        // (frame number, ms left of its hold) of the held slot to fall back on.
        let mut first_free: Option<(u64, u32)> = None;
        for n in (0..g.slot_count as u64).map(|k| inner.next + k) {
            if inner.lent[g.slot_of(n) as usize].is_some() {
                continue;
            }
            match mem.try_begin_write(g, n, now_ms) {
                Ok(()) => {
                    inner.next = n + 1;
                    return Some(n);
                }
                Err(left) => {
                    if first_free.is_none_or(|(_, l)| left < l) {
                        first_free = Some((n, left));
                    }
                }
            }
        }
        let (n, _) = first_free?;
        inner.next = n + 1;
        mem.begin_write(g, n);
        Some(n)
    }

    fn wake(&self) {
        shm::futex_wake(&self.segment.memory());
    }

    /// Copy path: write `payload` as the next frame and publish it. `meta.seq`, `caps_id`,
    /// `size` and `publish_time` are filled in here. Returns the frame number, or `None` if every
    /// slot is lent out (the frame is dropped).
    pub fn write_frame(&self, meta: FrameMeta, payload: &[u8]) -> Option<u64> {
        assert!(payload.len() <= self.geometry.slot_size);
        let mut inner = lock(&self.inner);
        let n = self.claim(&mut inner)?;
        let mem = self.segment.memory();
        mem.write_payload(&self.geometry, n, payload);
        let meta = FrameMeta {
            seq: n,
            caps_id: inner.caps_id,
            size: payload.len(),
            publish_time: shm::monotonic_ns(),
            ..meta
        };
        mem.publish(&self.geometry, &meta);
        drop(inner);
        self.wake();
        Some(n)
    }

    /// Lend the next frame's slot for in-place writing (it is marked in progress, so readers
    /// never see it half-written). Slots lent plus slots readers hold stay below
    /// `slot_count - 2`, so the copy path always has room without overriding a reader's lease. The slot stays reserved until [`Self::release`].
    pub fn lend(&self) -> Option<Lent> {
        let mut inner = lock(&self.inner);
        if inner.closed || self.segment.check_intact().is_err() {
            return None;
        }
        // Slots readers hold (pins, zero-copy leases) count too: the copy path and the next
        // lend must still find two slots nobody holds, or the writer would override a lease.
        let g = &self.geometry;
        let mem = self.segment.memory();
        let now_ms = shm::monotonic_ms();
        let busy = (0..g.slot_count)
            .filter(|&i| inner.lent[i as usize].is_some() || mem.pinned(g, i, now_ms).is_some())
            .count();
        if busy + 2 >= g.slot_count as usize {
            return None;
        }
        let frame = self.claim(&mut inner)?;
        let slot = self.geometry.slot_of(frame);
        inner.lent[slot as usize] = Some(frame);
        let ptr = self.segment.memory().begin_write(&self.geometry, frame);
        Some(Lent {
            frame,
            slot,
            ptr,
            len: self.geometry.slot_size,
        })
    }

    /// The lent memory was freed: the slot may be reused.
    pub fn release(&self, lent: &Lent) {
        let mut inner = lock(&self.inner);
        if inner.lent[lent.slot as usize] == Some(lent.frame) {
            inner.lent[lent.slot as usize] = None;
        }
    }

    /// If `data` is the payload of a lent, not yet published frame that is still ahead of the
    /// readers, publish it without copying.
    pub fn publish_in_place(&self, data: *const u8, size: usize, meta: FrameMeta) -> InPlace {
        let mut inner = lock(&self.inner);
        let g = self.geometry;
        let base = self.segment.memory().as_ptr() as usize;
        let addr = data as usize;
        if addr < base + g.payload_offset(0) || addr >= base + g.total_size() {
            return InPlace::NotLent;
        }
        let rel = addr - base - crate::ring::HEADER_SIZE;
        let slot = (rel / g.slot_stride()) as u32;
        if rel % g.slot_stride() != crate::ring::SLOT_HEADER_SIZE || size > g.slot_size {
            return InPlace::NotLent;
        }
        let Some(frame) = inner.lent[slot as usize] else {
            return InPlace::NotLent;
        };
        let mem = self.segment.memory();
        // Already published, or the readers moved past it: copy instead.
        if mem.write_seq() > frame {
            return InPlace::NotLent;
        }
        let meta = FrameMeta {
            seq: frame,
            caps_id: inner.caps_id,
            size,
            publish_time: shm::monotonic_ns(),
            ..meta
        };
        mem.publish(&g, &meta);
        // The claim counter must stay ahead of everything published.
        inner.next = inner.next.max(frame + 1);
        drop(inner);
        self.wake();
        InPlace::Published(frame)
    }

    /// Set the state (`Live` / `Eos`) and wake the readers.
    pub fn set_state(&self, state: WriterState) {
        self.segment.memory().set_state(state);
        self.wake();
    }

    /// The writer is done with this ring: mark it closed, wake the readers and remove the name
    /// (if it still refers to this object). Mappings held by readers stay valid.
    pub fn close(&self) {
        let mut inner = lock(&self.inner);
        if inner.closed {
            return;
        }
        inner.closed = true;
        // Unlink first: a reader that sees the ring closed and re-opens the name must not find
        // this object again.
        if self.segment.name_still_ours() {
            let _ = shm::unlink(self.segment.name());
        }
        let mem = self.segment.memory();
        // After end of stream the state stays `Eos`: readers drain the ring and finish.
        if mem.state() != Some(WriterState::Eos) {
            mem.set_state(WriterState::Closed);
        }
        self.wake();
    }

    /// The ring is being replaced by a new one of the same name (resize): mark it closed so
    /// readers re-open the name, but do not unlink (the new object owns the name).
    pub fn abandon(&self) {
        let mut inner = lock(&self.inner);
        inner.closed = true;
        self.segment.memory().set_state(WriterState::Closed);
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes the test ring even when an assertion fails.
    struct Unlink(String);

    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = shm::unlink(&self.0);
        }
    }

    #[test]
    fn lent_slots_are_skipped_and_published_in_place() {
        let name = format!("/shmring-unit-writer-{}", std::process::id());
        let _cleanup = Unlink(name.clone());
        let g = Geometry::new(4, 64).unwrap();
        let w = RingWriter::create(&name, 0o600, g).unwrap();
        w.set_caps("x/y").unwrap();
        let l0 = w.lend().unwrap();
        assert_eq!(l0.frame, 0);
        let l1 = w.lend().unwrap();
        // Only slot_count - 2 lent at once.
        assert!(w.lend().is_none());
        // Copy path skips the lent slots.
        assert_eq!(w.write_frame(FrameMeta::default(), b"c2"), Some(2));
        assert_eq!(w.write_frame(FrameMeta::default(), b"c3"), Some(3));
        // Frame 4 would go to slot 0 (lent) and frame 5 to slot 1 (lent): skipped.
        assert_eq!(w.write_frame(FrameMeta::default(), b"c6"), Some(6));
        // l0 is behind the readers now: copy path.
        assert_eq!(
            w.publish_in_place(l0.ptr, 2, FrameMeta::default()),
            InPlace::NotLent
        );
        w.release(&l0);
        w.release(&l1);
        let l = w.lend().unwrap();
        assert_eq!(l.frame, 7);
        // SAFETY: the lent slot is ours to write.
        unsafe { std::ptr::copy_nonoverlapping(b"zc".as_ptr(), l.ptr, 2) };
        assert_eq!(
            w.publish_in_place(l.ptr, 2, FrameMeta::default()),
            InPlace::Published(7)
        );
        let (r, rg) = Segment::open_reader(&name).unwrap();
        let (meta, data) = r.memory().read_frame(&rg, 7).unwrap();
        assert_eq!(data, b"zc");
        assert_eq!(meta.caps_id, 1);
        assert!(r.memory().read_frame(&rg, 5).is_err());
        w.close();
        assert!(!std::path::Path::new(&shm::shm_path(&name)).exists());
    }

    #[test]
    fn pinned_slots_are_skipped_but_never_hold_the_writer() {
        let name = format!("/shmring-unit-pins-{}", std::process::id());
        let _cleanup = Unlink(name.clone());
        let g = Geometry::new(4, 64).unwrap();
        let w = RingWriter::create(&name, 0o600, g).unwrap();
        w.set_caps("x/y").unwrap();
        let (r, rg) = Segment::open_reader(&name).unwrap();
        assert!(
            r.writable(),
            "the writer's own user maps the ring read-write"
        );
        let mem = r.memory();
        for i in 0..4u8 {
            assert_eq!(w.write_frame(FrameMeta::default(), &[i]), Some(i as u64));
        }
        // A reader copies frame 1 (slot 1): frame 5 would overwrite it, the writer takes 6.
        let ReadStart::Ready(meta) = mem.start_read(&rg, 1) else {
            panic!("frame 1 is there");
        };
        let pin = mem.pin(&rg, 1, shm::monotonic_ms());
        assert_eq!(w.write_frame(FrameMeta::default(), b"4"), Some(4));
        assert_eq!(w.write_frame(FrameMeta::default(), b"6"), Some(6));
        let mut copy = [0u8];
        mem.copy_payload(&rg, &meta, &mut copy);
        assert!(
            mem.finish_read(&rg, &meta),
            "the pinned frame was not overwritten"
        );
        assert_eq!(copy, [1]);
        assert_eq!(mem.start_read(&rg, 5), ReadStart::Skipped);
        mem.unpin(&rg, 1, pin);
        assert_eq!(w.write_frame(FrameMeta::default(), b"7"), Some(7));
        assert_eq!(w.write_frame(FrameMeta::default(), b"8"), Some(8));
        assert_eq!(w.write_frame(FrameMeta::default(), b"9"), Some(9));
        // Pins that expired (a reader that stopped) or lie further ahead than the horizon
        // (garbage) are ignored: slot 2 is taken by frame 10.
        let now = shm::monotonic_ms();
        mem.pin(&rg, 10, now.wrapping_sub(ring::PIN_MS + 1));
        assert_eq!(w.write_frame(FrameMeta::default(), b"10"), Some(10));
        mem.hold(&rg, 11, now.wrapping_add(ring::LEASE_HORIZON_MS + 500));
        assert_eq!(w.write_frame(FrameMeta::default(), b"11"), Some(11));
        // Every slot pinned (stopped or hostile readers): the writer writes on regardless.
        let now = shm::monotonic_ms();
        let pins: Vec<u32> = (12..16).map(|n| mem.pin(&rg, n, now)).collect();
        for n in 12..20u64 {
            assert_eq!(w.write_frame(FrameMeta::default(), b"x"), Some(n));
        }
        // Held slots leave no room to lend (the sink then copies).
        assert!(w.lend().is_none(), "4 slots held");
        for (n, pin) in (12..16).zip(pins) {
            mem.unpin(&rg, n, pin);
        }
        // Lent slots stay off limits whatever the pins say.
        let lent = w.lend().unwrap();
        assert_eq!(lent.frame, 20);
        // (One value for all: with every free slot held, ties go to the next frame number.)
        let now = shm::monotonic_ms();
        for n in 21..24 {
            mem.pin(&rg, n, now);
        }
        assert_eq!(w.write_frame(FrameMeta::default(), b"x"), Some(21));
        assert_eq!(w.write_frame(FrameMeta::default(), b"x"), Some(22));
        assert_eq!(w.write_frame(FrameMeta::default(), b"x"), Some(23));
        assert_eq!(w.write_frame(FrameMeta::default(), b"x"), Some(25));
        w.release(&lent);
        // Every slot leased: the lease that ends first is overridden (frame 28's slot).
        let now = shm::monotonic_ms();
        for n in 26..30 {
            mem.hold(&rg, n, now.wrapping_add(1500));
        }
        mem.unpin(&rg, 28, now.wrapping_add(1500));
        mem.hold(&rg, 28, now.wrapping_add(300));
        assert_eq!(w.write_frame(FrameMeta::default(), b"x"), Some(28));
        w.close();
    }
}
