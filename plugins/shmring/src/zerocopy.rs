// SPDX-License-Identifier: MPL-2.0
//! shmringsrc's zero-copy output: buffers whose memory *is* a leased ring slot.
//!
//! A [`LeasedSlot`] holds the mapping (an `Arc` of the segment: it stays mapped, even after a
//! writer restart or a truncation, until the last such buffer is freed) and the slot's lease
//! (see [`crate::ring::lease`]). One process-wide keeper thread renews every live lease each
//! [`LEASE_RENEW_MS`], so a lease holds however long downstream keeps the buffer (also while the
//! pipeline is paused or the streaming thread is blocked); the thread exits 2 s after the last
//! lease is gone. Freeing the buffer clears the lease and checks that the slot still holds the frame: if
//! not, the writer overrode the lease (every slot was held) and the frame is counted as
//! overwritten ([`Stats::overwritten`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use vcambridge_common::lock;

use crate::ring::{Geometry, LEASE_RENEW_MS};
use crate::shm::{self, Segment};

/// Counters of one shmringsrc, shared with its buffers (they may outlive a start/stop cycle).
#[derive(Debug, Default)]
pub struct Stats {
    /// Zero-copy buffers downstream holds right now.
    pub outstanding: AtomicUsize,
    /// Zero-copy buffers whose slot the writer took while downstream still held them.
    pub overwritten: AtomicU64,
}

/// One lease, renewed by the keeper while its buffer lives.
struct Lease {
    seg: Arc<Segment>,
    geometry: Geometry,
    frame: u64,
    /// Taken by the keeper (renewing) and the buffer's release, never across a wait.
    held: Mutex<Held>,
}

struct Held {
    /// The value this reader stored in the pin word (0: none; another reader's covers it).
    value: u32,
    /// The slot no longer holds the frame (seen while renewing).
    lost: bool,
    /// The buffer was freed: nothing more to renew.
    released: bool,
}

impl Lease {
    fn renew(&self, now_ms: u32) {
        let mut h = lock(&self.held);
        if h.lost || h.released || self.seg.check_faulted() {
            return;
        }
        match self
            .seg
            .memory()
            .renew_lease(&self.geometry, self.frame, h.value, now_ms)
        {
            Some(v) => h.value = v,
            None => {
                h.value = 0;
                h.lost = true;
            }
        }
    }

    /// Clear the lease; `true` if the slot held the frame the whole time.
    fn release(&self) -> bool {
        let mut h = lock(&self.held);
        h.released = true;
        let mem = self.seg.memory();
        let intact =
            !h.lost && !self.seg.check_faulted() && mem.holds_frame(&self.geometry, self.frame);
        mem.unpin(&self.geometry, self.frame, h.value);
        h.value = 0;
        intact
    }
}

/// The leases the keeper thread renews; `running` says whether the thread is alive.
#[derive(Default)]
struct Keeper {
    leases: Vec<Weak<Lease>>,
    running: bool,
}

static KEEPER: LazyLock<Mutex<Keeper>> = LazyLock::new(Mutex::default);

fn keep(lease: &Arc<Lease>) {
    let mut k = lock(&KEEPER);
    k.leases.push(Arc::downgrade(lease));
    if k.running {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("shmring-leases".into())
        .spawn(keeper_loop);
    // Without the thread the lease still holds for LEASE_MS; past that the writer may take the
    // slot, which the buffer's release counts as overwritten.
    k.running = spawned.is_ok();
}

/// The keeper exits after this many rounds without a lease (2 s), not at once: a stream whose
/// buffers are freed within a frame would otherwise start a thread every few frames.
const KEEPER_IDLE_ROUNDS: u32 = 20;

fn keeper_loop() {
    let mut idle = 0;
    loop {
        std::thread::sleep(Duration::from_millis(LEASE_RENEW_MS.into()));
        let alive: Vec<Arc<Lease>> = {
            let mut k = lock(&KEEPER);
            k.leases.retain(|l| l.strong_count() > 0);
            if k.leases.is_empty() {
                idle += 1;
                if idle >= KEEPER_IDLE_ROUNDS {
                    k.running = false;
                    return;
                }
                continue;
            }
            idle = 0;
            k.leases.iter().filter_map(Weak::upgrade).collect()
        };
        let now = shm::monotonic_ms();
        for l in &alive {
            l.renew(now);
        }
    }
}

/// The payload of a leased slot as read-only buffer memory.
pub struct LeasedSlot {
    lease: Arc<Lease>,
    ptr: *const u8,
    len: usize,
    stats: Arc<Stats>,
}

// SAFETY: `ptr` points into the mapping `lease.seg` keeps alive; the memory is only read, and a
// concurrent writer change is what the lease keeps away (and detected on drop when overridden).
unsafe impl Send for LeasedSlot {}

impl LeasedSlot {
    /// Lease frame `meta_seq` (published, `size` payload bytes, seen by `start_read`) and wrap
    /// its payload; `None` if the writer took the slot meanwhile (nothing is held then).
    pub fn lease(
        seg: Arc<Segment>,
        geometry: Geometry,
        frame: u64,
        size: usize,
        stats: Arc<Stats>,
    ) -> Option<Self> {
        let mem = seg.memory();
        let value = mem.lease(&geometry, frame, shm::monotonic_ms())?;
        // SAFETY: the payload offset and `size <= slot_size` were validated against the mapping
        // (start_read checks size; the geometry fits the mapped length).
        let ptr = unsafe {
            mem.as_ptr()
                .add(geometry.payload_offset(geometry.slot_of(frame)))
        };
        let lease = Arc::new(Lease {
            seg,
            geometry,
            frame,
            held: Mutex::new(Held {
                value,
                lost: false,
                released: false,
            }),
        });
        keep(&lease);
        stats.outstanding.fetch_add(1, Ordering::AcqRel);
        Some(LeasedSlot {
            lease,
            ptr,
            len: size,
            stats,
        })
    }
}

impl AsRef<[u8]> for LeasedSlot {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see `Send` above: in bounds of a mapping that outlives self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for LeasedSlot {
    fn drop(&mut self) {
        if !self.lease.release() {
            self.stats.overwritten.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}
