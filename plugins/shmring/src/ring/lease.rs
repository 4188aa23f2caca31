// SPDX-License-Identifier: MPL-2.0
//! Reader pins and leases on slots: the `u32` at slot offset 52 ([`SLOT_READER_PIN`]).
//!
//! A reader stores there the `CLOCK_MONOTONIC` millisecond (low 32 bits) until which it asks the
//! writer to leave the slot alone: for [`PIN_MS`] while it copies the payload (a *pin*), or for
//! [`LEASE_MS`], renewed while it lives, when it hands the slot payload itself downstream (a
//! *lease*). A writer that honors leases says so in the header ([`OFF_LEASE_GENERATION`] =
//! its generation); readers hand out slot memory only then.
//!
//! No race between "writer takes the slot" and "reader leases it" (Dekker's order, both sides
//! sequentially consistent): the writer stores the slot seq odd, fences, then reads the pin; the
//! reader stores the pin, fences, then re-reads the seq. At least one of them sees the other:
//! either the writer sees the lease (and puts the old seq back, skipping that frame number) or
//! the reader sees the seq changed (and does not trust the slot).
//!
//! Everything stays a hint the writer may override: it honors a value at most
//! [`LEASE_HORIZON_MS`] ahead (more is garbage), and when every slot it could take is leased it
//! takes the one whose lease ends first. A reader that stops renewing, or a hostile one, can make
//! the writer skip frame numbers, never wait or drop a frame.
//!
//! The word is shared by every reader of the ring: a hold never shortens a longer one of
//! another reader, and a reader clears only the value it stored. When two readers lease the same
//! frame and the one whose value is in the word releases first, the other's lease is gone until
//! its next renewal ([`LEASE_RENEW_MS`]); a writer that reaches the slot meanwhile takes it, and
//! that reader counts the frame as overwritten when its buffer is freed.

use std::sync::atomic::{Ordering, fence};

use super::{Geometry, RingMemory, SLOT_READER_PIN, SLOT_SEQ, seq_published};

/// How long a copy pin holds (ms): a reader that stops (or dies) while copying frees the slot
/// after this long at most.
pub const PIN_MS: u32 = 100;
/// How long a lease holds unless renewed (ms).
pub const LEASE_MS: u32 = 1000;
/// A reader renews its leases this often (ms), well inside [`LEASE_MS`].
pub const LEASE_RENEW_MS: u32 = 100;
/// A writer honors pins and leases at most this far ahead (ms); a value further in the future is
/// garbage (or a reader whose clock is not ours) and ignored.
pub const LEASE_HORIZON_MS: u32 = 2000;

/// Milliseconds left of the pin or lease `pin` at `now_ms`, if it is one the writer honors.
pub fn lease_left(pin: u32, now_ms: u32) -> Option<u32> {
    let left = pin.wrapping_sub(now_ms);
    (pin != 0 && left != 0 && left <= LEASE_HORIZON_MS).then_some(left)
}

impl RingMemory {
    fn pin_word(&self, g: &Geometry, n: u64) -> &std::sync::atomic::AtomicU32 {
        self.u32_at(g.slot_offset(g.slot_of(n)) + SLOT_READER_PIN)
    }

    /// Ask the writer to leave frame `n`'s slot alone until `until_ms`, unless another reader
    /// already holds it longer (its value stays). Needs a writable mapping. Returns the value
    /// stored, for [`Self::unpin`] (0 if none was stored).
    pub fn hold(&self, g: &Geometry, n: u64, until_ms: u32) -> u32 {
        let until = until_ms.max(1);
        let word = self.pin_word(g, n);
        let mut cur = word.load(Ordering::SeqCst);
        loop {
            // A longer hold of another reader stays (it is not ours to shorten).
            if lease_left(cur, until).is_some() {
                return 0;
            }
            match word.compare_exchange_weak(cur, until, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return until,
                Err(v) => cur = v,
            }
        }
    }

    /// Pin frame `n`'s slot for [`PIN_MS`] from `now_ms` while copying it; needs a writable
    /// mapping. Call after [`Self::start_read`]; returns the pin to give to [`Self::unpin`].
    pub fn pin(&self, g: &Geometry, n: u64, now_ms: u32) -> u32 {
        self.hold(g, n, now_ms.wrapping_add(PIN_MS))
    }

    /// Drop a pin or lease (`value` from [`Self::hold`]) unless another reader replaced it.
    pub fn unpin(&self, g: &Geometry, n: u64, value: u32) {
        if value != 0 {
            let _ = self.pin_word(g, n).compare_exchange(
                value,
                0,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
    }

    /// Lease frame `n`'s slot (already seen published by [`Self::start_read`]) for [`LEASE_MS`]
    /// from `now_ms`. `Some(value)` (for [`Self::renew_lease`] / [`Self::unpin`]; 0 when another
    /// reader's longer lease covers it) if the frame is still in its slot after the lease was
    /// visible: from then on a lease-honoring writer leaves the payload alone. `None`: the
    /// writer took the slot meanwhile (nothing is held).
    pub fn lease(&self, g: &Geometry, n: u64, now_ms: u32) -> Option<u32> {
        let value = self.hold(g, n, now_ms.wrapping_add(LEASE_MS));
        fence(Ordering::SeqCst);
        if self.holds_frame(g, n) {
            Some(value)
        } else {
            self.unpin(g, n, value);
            None
        }
    }

    /// Extend a lease while its buffer lives: `Some(new value)` (0: another reader's longer
    /// lease covers it), `None` once the slot no longer holds frame `n` (nothing is stored).
    pub fn renew_lease(&self, g: &Geometry, n: u64, value: u32, now_ms: u32) -> Option<u32> {
        if !self.holds_frame(g, n) {
            self.unpin(g, n, value);
            return None;
        }
        let new = self.hold(g, n, now_ms.wrapping_add(LEASE_MS));
        if new == 0 {
            self.unpin(g, n, value);
        }
        Some(new)
    }

    /// Does frame `n`'s slot still hold frame `n` (seq `2n+2`)?
    pub fn holds_frame(&self, g: &Geometry, n: u64) -> bool {
        self.u64_at(g.slot_offset(g.slot_of(n)) + SLOT_SEQ)
            .load(Ordering::SeqCst)
            == seq_published(n)
    }

    /// Writer side: ms left of a pin or lease on `slot` at `now_ms` that the writer honors.
    pub fn pinned(&self, g: &Geometry, slot: u32, now_ms: u32) -> Option<u32> {
        let pin = self
            .u32_at(g.slot_offset(slot) + SLOT_READER_PIN)
            .load(Ordering::SeqCst);
        lease_left(pin, now_ms)
    }

    /// Writer side: take frame `n`'s slot (seq `2n+1`, in progress) unless a reader holds it.
    /// `Err(ms left)`: a pin or lease holds it, the slot is left as it was.
    pub fn try_begin_write(&self, g: &Geometry, n: u64, now_ms: u32) -> Result<(), u32> {
        let off = g.slot_offset(g.slot_of(n));
        let seq = self.u64_at(off + SLOT_SEQ);
        let old = seq.swap(n.wrapping_mul(2).wrapping_add(1), Ordering::SeqCst);
        fence(Ordering::SeqCst);
        match self.pinned(g, g.slot_of(n), now_ms) {
            Some(left) => {
                // Nothing was written: the frame in the slot is intact again.
                seq.store(old, Ordering::SeqCst);
                Err(left)
            }
            None => Ok(()),
        }
    }

    /// Does the writer of generation `generation` honor leases (it said so in the header)?
    pub fn honors_leases(&self, generation: u64) -> bool {
        generation != 0
            && self
                .u64_at(super::OFF_LEASE_GENERATION)
                .load(Ordering::Acquire)
                == generation
    }

    /// Writer side: announce that this generation's writer honors leases.
    pub fn set_honors_leases(&self, generation: u64) {
        self.u64_at(super::OFF_LEASE_GENERATION)
            .store(generation, Ordering::Release);
    }
}
