// SPDX-License-Identifier: MPL-2.0
//! The shared-memory ring layout (version 1), free of GStreamer types.
//!
//! Everything here works on a plain memory region ([`RingMemory`]): the POSIX segment in
//! [`crate::shm`] in production, an aligned heap buffer in the unit tests. The layout is
//! specified in the plugin README; the constants below are the normative offsets.
//!
//! * one writer, any number of readers; the writer never waits for a reader;
//! * frame `n` (0-based) lives in slot `n % slot_count`;
//! * each slot is a seqlock: its `seq` is `2n + 1` while frame `n` is being written and
//!   `2n + 2` once it is published. A reader copies the payload and then re-checks `seq`:
//!   if it changed (or was not `2n + 2` to begin with), the frame was torn or overwritten and is
//!   discarded, never shown;
//! * the header's `write_seq` is the number of published frames; its low 32 bits are the futex
//!   word readers sleep on.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

// The layout is little-endian and fields are accessed as native atomics.
#[cfg(target_endian = "big")]
compile_error!("the shm ring layout is little-endian; big-endian hosts are not supported");

/// `b"VCSHMRNG"`, the first eight bytes of every ring.
pub const MAGIC: [u8; 8] = *b"VCSHMRNG";
/// The layout version this code reads and writes.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the header (slot 0 starts here).
pub const HEADER_SIZE: usize = 4096;
/// Size of each slot's header (the payload follows it).
pub const SLOT_HEADER_SIZE: usize = 64;
/// Everything (header fields, slots, payloads) is aligned to this.
pub const ALIGN: usize = 64;
/// Offset of the caps string in the header.
pub const CAPS_OFFSET: usize = 256;
/// Maximum length of the caps string in bytes.
pub const CAPS_CAPACITY: usize = HEADER_SIZE - CAPS_OFFSET;
/// Most slots a ring may have (the `slots` property's maximum). Readers refuse more.
pub const MAX_SLOT_COUNT: u32 = 1024;
/// Largest slot payload (the `slot-size` property's maximum, 4 GiB). Readers refuse bigger slots,
/// so a hostile header can never make them map or allocate more than this per frame.
pub const MAX_SLOT_SIZE: usize = 1 << 32;

// Header field offsets.
pub const OFF_MAGIC: usize = 0;
pub const OFF_VERSION: usize = 8;
pub const OFF_HEADER_SIZE: usize = 12;
pub const OFF_SLOT_COUNT: usize = 16;
pub const OFF_SLOT_HEADER_SIZE: usize = 20;
pub const OFF_SLOT_SIZE: usize = 24;
pub const OFF_SLOT_STRIDE: usize = 32;
pub const OFF_TOTAL_SIZE: usize = 40;
pub const OFF_WRITER_PID: usize = 48;
pub const OFF_STATE: usize = 52;
pub const OFF_GENERATION: usize = 56;
pub const OFF_WRITE_SEQ: usize = 64;
/// u64: the generation whose writer honors reader leases (see [`lease`]); 0 = none.
pub const OFF_LEASE_GENERATION: usize = 72;
pub const OFF_CAPS_SEQ: usize = 128;
pub const OFF_CAPS_ID: usize = 136;
pub const OFF_CAPS_LEN: usize = 144;
pub const OFF_CAPS_CAPACITY: usize = 148;

// Slot header field offsets (relative to the slot start).
pub const SLOT_SEQ: usize = 0;
pub const SLOT_PTS: usize = 8;
pub const SLOT_DTS: usize = 16;
pub const SLOT_DURATION: usize = 24;
pub const SLOT_CAPS_ID: usize = 32;
pub const SLOT_SIZE: usize = 40;
pub const SLOT_FLAGS: usize = 48;
/// u32 reader pin or lease (was "reserved (0)"): the `CLOCK_MONOTONIC` millisecond (low 32 bits)
/// until which a reader asks the writer to leave the slot alone; 0 = none. See [`lease`].
pub const SLOT_READER_PIN: usize = 52;
pub const SLOT_PUBLISH_TIME: usize = 56;

/// A timestamp field holding this value means "none".
pub const NO_TIME: u64 = u64::MAX;

/// Frame flags carried per slot.
pub mod flags {
    pub const DISCONT: u32 = 1 << 0;
    pub const DELTA_UNIT: u32 = 1 << 1;
    pub const HEADER: u32 = 1 << 2;
    pub const GAP: u32 = 1 << 3;
    pub const DROPPABLE: u32 = 1 << 4;
    pub const MARKER: u32 = 1 << 5;
}

/// The writer's lifecycle state, stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum WriterState {
    /// Being (re-)initialised: readers must not trust any other field yet.
    Init = 0,
    /// A writer is publishing frames.
    Live = 1,
    /// The writer reached end of stream (it may still be running).
    Eos = 2,
    /// The writer stopped cleanly and left the ring.
    Closed = 3,
}

impl WriterState {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Init,
            1 => Self::Live,
            2 => Self::Eos,
            3 => Self::Closed,
            _ => return None,
        })
    }
}

/// Round `v` up to a multiple of [`ALIGN`].
pub const fn align_up(v: usize) -> usize {
    v.div_ceil(ALIGN) * ALIGN
}

/// The shape of a ring: how many slots of which payload capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub slot_count: u32,
    /// Payload capacity of one slot, a multiple of [`ALIGN`].
    pub slot_size: usize,
}

impl Geometry {
    /// A geometry for `slot_count` slots able to hold `payload` bytes each.
    pub fn new(slot_count: u32, payload: usize) -> Result<Self, LayoutError> {
        if slot_count < 2 {
            return Err(LayoutError::Invalid(format!(
                "slot count {slot_count} is too small (at least 2)"
            )));
        }
        if slot_count > MAX_SLOT_COUNT {
            return Err(LayoutError::Invalid(format!(
                "slot count {slot_count} is too large (at most {MAX_SLOT_COUNT})"
            )));
        }
        if payload > MAX_SLOT_SIZE {
            return Err(LayoutError::Invalid(format!(
                "slot size {payload} bytes is too large (at most {MAX_SLOT_SIZE})"
            )));
        }
        let slot_size = align_up(payload.max(1));
        let g = Geometry {
            slot_count,
            slot_size,
        };
        SLOT_HEADER_SIZE
            .checked_add(slot_size)
            .and_then(|s| s.checked_mul(slot_count as usize))
            .and_then(|s| s.checked_add(HEADER_SIZE))
            .filter(|s| *s <= isize::MAX as usize)
            .ok_or_else(|| {
                LayoutError::Invalid(format!(
                    "ring of {slot_count} x {payload} bytes is too large"
                ))
            })?;
        Ok(g)
    }

    pub fn slot_stride(&self) -> usize {
        SLOT_HEADER_SIZE + self.slot_size
    }

    /// Total size of the segment.
    pub fn total_size(&self) -> usize {
        HEADER_SIZE + self.slot_stride() * self.slot_count as usize
    }

    /// Offset of slot `index`'s header.
    pub fn slot_offset(&self, index: u32) -> usize {
        HEADER_SIZE + self.slot_stride() * index as usize
    }

    /// Offset of slot `index`'s payload.
    pub fn payload_offset(&self, index: u32) -> usize {
        self.slot_offset(index) + SLOT_HEADER_SIZE
    }

    /// The slot holding frame `seq`.
    pub fn slot_of(&self, seq: u64) -> u32 {
        (seq % self.slot_count as u64) as u32
    }
}

/// Why a region is not a usable ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// Smaller than the header, or smaller than the header says.
    TooSmall { size: usize, needed: usize },
    /// Not a ring at all.
    BadMagic { found: [u8; 8] },
    /// A ring, but of another layout version.
    VersionMismatch { found: u32 },
    /// Header fields that contradict each other.
    Invalid(String),
    /// A writer is (re-)initialising it right now.
    NotReady,
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayoutError::TooSmall { size, needed } => {
                write!(f, "segment is {size} bytes, a ring needs at least {needed}")
            }
            LayoutError::BadMagic { found } => write!(
                f,
                "not a vcambridge shm ring (magic {:?}, expected {:?})",
                String::from_utf8_lossy(found),
                String::from_utf8_lossy(&MAGIC)
            ),
            LayoutError::VersionMismatch { found } => write!(
                f,
                "ring layout version {found}, this build speaks version {LAYOUT_VERSION}"
            ),
            LayoutError::Invalid(s) => write!(f, "inconsistent ring header: {s}"),
            LayoutError::NotReady => write!(f, "the writer is initialising the ring"),
        }
    }
}

impl std::error::Error for LayoutError {}

/// Metadata of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameMeta {
    /// Frame number (0-based, counts every frame the writer published in this generation).
    pub seq: u64,
    pub pts: Option<u64>,
    pub dts: Option<u64>,
    pub duration: Option<u64>,
    /// The caps the frame was written with (see [`RingMemory::read_caps`]).
    pub caps_id: u64,
    /// Payload size in bytes.
    pub size: usize,
    pub flags: u32,
    /// `CLOCK_MONOTONIC` in ns when the writer published the frame.
    pub publish_time: u64,
}

/// The slot seq of frame `n` once published (`2n + 2`; wraps instead of overflowing for the
/// absurd frame numbers a hostile `write_seq` can claim).
fn seq_published(n: u64) -> u64 {
    n.wrapping_mul(2).wrapping_add(2)
}

fn time_to_raw(t: Option<u64>) -> u64 {
    t.unwrap_or(NO_TIME)
}

fn raw_to_time(t: u64) -> Option<u64> {
    (t != NO_TIME).then_some(t)
}

/// Outcome of trying to read frame `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStart {
    /// Frame `n` is there: copy its payload, then call [`RingMemory::finish_read`].
    Ready(FrameMeta),
    /// Frame `n` is not published yet.
    NotYet,
    /// Frame `n` is gone: the writer lapped this reader; `write_seq` is the writer's position
    /// (continue at the newest frame, see [`catch_up`]).
    Lost { write_seq: u64 },
    /// The writer skipped frame number `n` (never published): continue with `n + 1`.
    Skipped,
}

/// A memory region holding a ring. Copyable view; the owner keeps the mapping alive.
///
/// All shared fields are accessed through atomics; payloads are copied with plain memcpy and
/// validated by the slot seqlock.
#[derive(Debug, Clone, Copy)]
pub struct RingMemory {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the region is shared memory designed for concurrent access through atomics and the
// seqlock protocol; the view itself is just a pointer and a length.
unsafe impl Send for RingMemory {}
unsafe impl Sync for RingMemory {}

impl RingMemory {
    /// # Safety
    /// `ptr` must be valid for reads (and for writes if any writer method is used) of `len`
    /// bytes, 64-byte aligned, for as long as the view is used.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        debug_assert!((ptr as usize).is_multiple_of(ALIGN));
        RingMemory { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off.checked_add(8).is_some_and(|e| e <= self.len));
        // SAFETY: in bounds and 8-byte aligned (checked), the region outlives self.
        unsafe { AtomicU64::from_ptr(self.ptr.add(off) as *mut u64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off.checked_add(4).is_some_and(|e| e <= self.len));
        // SAFETY: as above.
        unsafe { AtomicU32::from_ptr(self.ptr.add(off) as *mut u32) }
    }

    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        assert!(off.checked_add(dst.len()).is_some_and(|e| e <= self.len));
        // SAFETY: bounds checked; concurrent writes are detected by the seqlock around the copy.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), dst.as_mut_ptr(), dst.len()) }
    }

    fn write_bytes(&self, off: usize, src: &[u8]) {
        assert!(off + src.len() <= self.len);
        // SAFETY: bounds checked; only the single writer writes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(off), src.len()) }
    }

    // ---- header ----

    pub fn magic(&self) -> [u8; 8] {
        self.u64_at(OFF_MAGIC).load(Ordering::Acquire).to_le_bytes()
    }

    pub fn version(&self) -> u32 {
        self.u32_at(OFF_VERSION).load(Ordering::Relaxed)
    }

    pub fn writer_pid(&self) -> u32 {
        self.u32_at(OFF_WRITER_PID).load(Ordering::Acquire)
    }

    pub fn state_raw(&self) -> u32 {
        self.u32_at(OFF_STATE).load(Ordering::Acquire)
    }

    pub fn state(&self) -> Option<WriterState> {
        WriterState::from_u32(self.state_raw())
    }

    pub fn generation(&self) -> u64 {
        self.u64_at(OFF_GENERATION).load(Ordering::Acquire)
    }

    pub fn write_seq(&self) -> u64 {
        self.u64_at(OFF_WRITE_SEQ).load(Ordering::Acquire)
    }

    /// Address of the futex word (the low 32 bits of `write_seq`, little-endian).
    pub fn futex_word(&self) -> *const u32 {
        assert!(OFF_WRITE_SEQ + 4 <= self.len);
        // SAFETY: in bounds.
        unsafe { self.ptr.add(OFF_WRITE_SEQ) as *const u32 }
    }

    /// Check that the region is a ready ring of this layout version; return its geometry.
    pub fn validate(&self) -> Result<Geometry, LayoutError> {
        self.validate_within(self.len)
    }

    /// Check the header against an object of `object_size` bytes (what `fstat` says; this
    /// region may hold just the header): every field is checked with overflow-free arithmetic,
    /// within [`MAX_SLOT_COUNT`] / [`MAX_SLOT_SIZE`], and the whole ring must fit in
    /// `object_size`. The caller maps `total_size()` bytes of the object afterwards.
    pub fn validate_within(&self, object_size: usize) -> Result<Geometry, LayoutError> {
        if self.len < HEADER_SIZE || object_size < HEADER_SIZE {
            return Err(LayoutError::TooSmall {
                size: self.len.min(object_size),
                needed: HEADER_SIZE,
            });
        }
        let magic = self.magic();
        if magic != MAGIC {
            if magic == [0; 8] {
                // A writer created the file but has not written the magic yet.
                return Err(LayoutError::NotReady);
            }
            return Err(LayoutError::BadMagic { found: magic });
        }
        let version = self.version();
        if version != LAYOUT_VERSION {
            return Err(LayoutError::VersionMismatch { found: version });
        }
        if self.state_raw() == WriterState::Init as u32 {
            return Err(LayoutError::NotReady);
        }
        let header_size = self.u32_at(OFF_HEADER_SIZE).load(Ordering::Relaxed);
        let slot_header = self.u32_at(OFF_SLOT_HEADER_SIZE).load(Ordering::Relaxed);
        if header_size as usize != HEADER_SIZE || slot_header as usize != SLOT_HEADER_SIZE {
            return Err(LayoutError::Invalid(format!(
                "header size {header_size} / slot header size {slot_header}, expected {HEADER_SIZE} / {SLOT_HEADER_SIZE}"
            )));
        }
        let slot_count = self.u32_at(OFF_SLOT_COUNT).load(Ordering::Relaxed);
        let slot_size = self.u64_at(OFF_SLOT_SIZE).load(Ordering::Relaxed);
        if !(2..=MAX_SLOT_COUNT).contains(&slot_count) {
            return Err(LayoutError::Invalid(format!(
                "slot count {slot_count}, expected 2..={MAX_SLOT_COUNT}"
            )));
        }
        if slot_size == 0
            || !slot_size.is_multiple_of(ALIGN as u64)
            || slot_size > MAX_SLOT_SIZE as u64
        {
            return Err(LayoutError::Invalid(format!(
                "slot size {slot_size}, expected a multiple of {ALIGN} up to {MAX_SLOT_SIZE}"
            )));
        }
        let stride = self.u64_at(OFF_SLOT_STRIDE).load(Ordering::Relaxed);
        let total = self.u64_at(OFF_TOTAL_SIZE).load(Ordering::Relaxed);
        let want_stride = (SLOT_HEADER_SIZE as u64).checked_add(slot_size);
        let want_total = want_stride
            .and_then(|s| s.checked_mul(slot_count as u64))
            .and_then(|s| s.checked_add(HEADER_SIZE as u64));
        let (Some(want_stride), Some(want_total)) = (want_stride, want_total) else {
            return Err(LayoutError::Invalid(format!(
                "{slot_count} slots of {slot_size} bytes overflow"
            )));
        };
        if stride != want_stride || total != want_total {
            return Err(LayoutError::Invalid(format!(
                "slot stride {stride} / total size {total}, expected {want_stride} / {want_total}"
            )));
        }
        if total > object_size as u64 {
            return Err(LayoutError::TooSmall {
                size: object_size,
                needed: usize::try_from(total).unwrap_or(usize::MAX),
            });
        }
        let caps_cap = self.u32_at(OFF_CAPS_CAPACITY).load(Ordering::Relaxed) as usize;
        if caps_cap != CAPS_CAPACITY {
            return Err(LayoutError::Invalid(format!(
                "caps capacity {caps_cap}, expected {CAPS_CAPACITY}"
            )));
        }
        let g = Geometry::new(slot_count, slot_size as usize)?;
        debug_assert_eq!(g.total_size() as u64, total);
        Ok(g)
    }

    /// Read the current caps (`caps_id`, caps string); `None` if the writer has not set caps yet
    /// or kept changing them during 100 attempts.
    pub fn read_caps(&self) -> Option<(u64, String)> {
        for _ in 0..100 {
            let s1 = self.u64_at(OFF_CAPS_SEQ).load(Ordering::Acquire);
            if s1 % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let id = self.u64_at(OFF_CAPS_ID).load(Ordering::Relaxed);
            let len =
                (self.u32_at(OFF_CAPS_LEN).load(Ordering::Relaxed) as usize).min(CAPS_CAPACITY);
            let mut buf = vec![0u8; len];
            self.read_bytes(CAPS_OFFSET, &mut buf);
            fence(Ordering::Acquire);
            let s2 = self.u64_at(OFF_CAPS_SEQ).load(Ordering::Relaxed);
            if s1 == s2 {
                if id == 0 {
                    return None;
                }
                return String::from_utf8(buf).ok().map(|s| (id, s));
            }
        }
        None
    }

    /// Start reading frame `n`.
    pub fn start_read(&self, g: &Geometry, n: u64) -> ReadStart {
        let w = self.write_seq();
        if w <= n {
            return ReadStart::NotYet;
        }
        if w - n >= g.slot_count as u64 {
            return ReadStart::Lost { write_seq: w };
        }
        let off = g.slot_offset(g.slot_of(n));
        let s1 = self.u64_at(off + SLOT_SEQ).load(Ordering::Acquire);
        let published = seq_published(n);
        if s1 > published {
            // A later frame took the slot.
            return ReadStart::Lost { write_seq: w };
        }
        if s1 != published {
            // Older content or frame `n` still marked in progress although the writer is past
            // it: the writer skipped this number (slot lent out, frame dropped).
            return ReadStart::Skipped;
        }
        let size = self.u64_at(off + SLOT_SIZE).load(Ordering::Relaxed) as usize;
        if size > g.slot_size {
            return ReadStart::Skipped;
        }
        ReadStart::Ready(FrameMeta {
            seq: n,
            pts: raw_to_time(self.u64_at(off + SLOT_PTS).load(Ordering::Relaxed)),
            dts: raw_to_time(self.u64_at(off + SLOT_DTS).load(Ordering::Relaxed)),
            duration: raw_to_time(self.u64_at(off + SLOT_DURATION).load(Ordering::Relaxed)),
            caps_id: self.u64_at(off + SLOT_CAPS_ID).load(Ordering::Relaxed),
            size,
            flags: self.u32_at(off + SLOT_FLAGS).load(Ordering::Relaxed),
            publish_time: self.u64_at(off + SLOT_PUBLISH_TIME).load(Ordering::Relaxed),
        })
    }

    /// Copy the payload of a frame returned by [`Self::start_read`] into `dst`
    /// (`dst.len()` must be `meta.size`).
    pub fn copy_payload(&self, g: &Geometry, meta: &FrameMeta, dst: &mut [u8]) {
        assert_eq!(dst.len(), meta.size);
        self.read_bytes(g.payload_offset(g.slot_of(meta.seq)), dst);
    }

    /// After copying: `true` if the frame was intact the whole time (not torn, not overwritten).
    pub fn finish_read(&self, g: &Geometry, meta: &FrameMeta) -> bool {
        fence(Ordering::Acquire);
        let off = g.slot_offset(g.slot_of(meta.seq));
        self.u64_at(off + SLOT_SEQ).load(Ordering::Relaxed) == seq_published(meta.seq)
    }

    /// Read frame `n` into a new vector (convenience for tests and tools).
    pub fn read_frame(&self, g: &Geometry, n: u64) -> Result<(FrameMeta, Vec<u8>), ReadStart> {
        match self.start_read(g, n) {
            ReadStart::Ready(meta) => {
                let mut v = vec![0u8; meta.size];
                self.copy_payload(g, &meta, &mut v);
                if self.finish_read(g, &meta) {
                    Ok((meta, v))
                } else {
                    Err(ReadStart::Lost {
                        write_seq: self.write_seq(),
                    })
                }
            }
            other => Err(other),
        }
    }

    // ---- writer side ----

    /// (Re-)initialise the region as an empty ring with generation `generation`, owned by
    /// `pid`. The caller must be the only writer. Readers attached to the previous generation
    /// see the generation change (and `Init` meanwhile).
    pub fn initialize(&self, g: &Geometry, pid: u32, generation: u64) {
        assert!(self.len >= g.total_size());
        self.u32_at(OFF_STATE)
            .store(WriterState::Init as u32, Ordering::SeqCst);
        self.u64_at(OFF_GENERATION)
            .store(generation, Ordering::SeqCst);
        self.u32_at(OFF_VERSION)
            .store(LAYOUT_VERSION, Ordering::Relaxed);
        self.u32_at(OFF_HEADER_SIZE)
            .store(HEADER_SIZE as u32, Ordering::Relaxed);
        self.u32_at(OFF_SLOT_COUNT)
            .store(g.slot_count, Ordering::Relaxed);
        self.u32_at(OFF_SLOT_HEADER_SIZE)
            .store(SLOT_HEADER_SIZE as u32, Ordering::Relaxed);
        self.u64_at(OFF_SLOT_SIZE)
            .store(g.slot_size as u64, Ordering::Relaxed);
        self.u64_at(OFF_SLOT_STRIDE)
            .store(g.slot_stride() as u64, Ordering::Relaxed);
        self.u64_at(OFF_TOTAL_SIZE)
            .store(g.total_size() as u64, Ordering::Relaxed);
        self.u32_at(OFF_WRITER_PID).store(pid, Ordering::Relaxed);
        self.u64_at(OFF_WRITE_SEQ).store(0, Ordering::Relaxed);
        self.u64_at(OFF_CAPS_SEQ).store(0, Ordering::Relaxed);
        self.u64_at(OFF_CAPS_ID).store(0, Ordering::Relaxed);
        self.u32_at(OFF_CAPS_LEN).store(0, Ordering::Relaxed);
        self.u32_at(OFF_CAPS_CAPACITY)
            .store(CAPS_CAPACITY as u32, Ordering::Relaxed);
        // Set again by a writer that honors leases (see `set_honors_leases`).
        self.u64_at(OFF_LEASE_GENERATION)
            .store(0, Ordering::Relaxed);
        for i in 0..g.slot_count {
            let off = g.slot_offset(i);
            for f in (0..SLOT_HEADER_SIZE).step_by(8) {
                self.u64_at(off + f).store(0, Ordering::Relaxed);
            }
        }
        self.u64_at(OFF_MAGIC)
            .store(u64::from_le_bytes(MAGIC), Ordering::Release);
        self.u32_at(OFF_STATE)
            .store(WriterState::Live as u32, Ordering::SeqCst);
    }

    /// Set the writer state (`Eos`, `Closed`, back to `Live`).
    pub fn set_state(&self, state: WriterState) {
        self.u32_at(OFF_STATE).store(state as u32, Ordering::SeqCst);
    }

    /// Bump the generation (readers re-open the name); used before abandoning a segment.
    pub fn set_generation(&self, generation: u64) {
        self.u64_at(OFF_GENERATION)
            .store(generation, Ordering::SeqCst);
    }

    /// Publish new caps; returns the new caps id. Fails if the string is longer than
    /// [`CAPS_CAPACITY`].
    pub fn write_caps(&self, caps: &str) -> Result<u64, LayoutError> {
        if caps.len() > CAPS_CAPACITY {
            return Err(LayoutError::Invalid(format!(
                "caps string of {} bytes is longer than the {CAPS_CAPACITY} bytes the header holds",
                caps.len()
            )));
        }
        let seq = self.u64_at(OFF_CAPS_SEQ);
        let s = seq.load(Ordering::Relaxed);
        seq.store(s | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        let id = self
            .u64_at(OFF_CAPS_ID)
            .load(Ordering::Relaxed)
            .wrapping_add(1);
        self.write_bytes(CAPS_OFFSET, caps.as_bytes());
        self.u32_at(OFF_CAPS_LEN)
            .store(caps.len() as u32, Ordering::Relaxed);
        self.u64_at(OFF_CAPS_ID).store(id, Ordering::Relaxed);
        seq.store((s | 1).wrapping_add(1), Ordering::Release);
        Ok(id)
    }

    /// Mark frame `n`'s slot as being written (seq odd). Returns the payload pointer.
    pub fn begin_write(&self, g: &Geometry, n: u64) -> *mut u8 {
        let off = g.slot_offset(g.slot_of(n));
        self.u64_at(off + SLOT_SEQ)
            .store(n.wrapping_mul(2).wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        // SAFETY: payload_offset is within total_size <= len (checked at initialize/validate).
        unsafe { self.ptr.add(off + SLOT_HEADER_SIZE) }
    }

    /// Copy `payload` into frame `n`'s slot (after [`Self::begin_write`]).
    pub fn write_payload(&self, g: &Geometry, n: u64, payload: &[u8]) {
        assert!(payload.len() <= g.slot_size);
        self.write_bytes(g.payload_offset(g.slot_of(n)), payload);
    }

    /// Fill in frame `meta.seq`'s metadata and publish it: the slot seq becomes even and
    /// `write_seq` becomes `meta.seq + 1`. The caller wakes the readers afterwards.
    pub fn publish(&self, g: &Geometry, meta: &FrameMeta) {
        assert!(meta.size <= g.slot_size);
        let n = meta.seq;
        let off = g.slot_offset(g.slot_of(n));
        self.u64_at(off + SLOT_PTS)
            .store(time_to_raw(meta.pts), Ordering::Relaxed);
        self.u64_at(off + SLOT_DTS)
            .store(time_to_raw(meta.dts), Ordering::Relaxed);
        self.u64_at(off + SLOT_DURATION)
            .store(time_to_raw(meta.duration), Ordering::Relaxed);
        self.u64_at(off + SLOT_CAPS_ID)
            .store(meta.caps_id, Ordering::Relaxed);
        self.u64_at(off + SLOT_SIZE)
            .store(meta.size as u64, Ordering::Relaxed);
        self.u32_at(off + SLOT_FLAGS)
            .store(meta.flags, Ordering::Relaxed);
        self.u64_at(off + SLOT_PUBLISH_TIME)
            .store(meta.publish_time, Ordering::Relaxed);
        self.u64_at(off + SLOT_SEQ)
            .store(seq_published(n), Ordering::Release);
        self.u64_at(OFF_WRITE_SEQ)
            .store(n.wrapping_add(1), Ordering::SeqCst);
    }

    /// Copy-path convenience: write and publish a whole frame.
    pub fn write_frame(&self, g: &Geometry, meta: &FrameMeta, payload: &[u8]) {
        assert_eq!(meta.size, payload.len());
        self.begin_write(g, meta.seq);
        self.write_payload(g, meta.seq, payload);
        self.publish(g, meta);
    }
}

/// Where a reader should continue after frame `next` was found lost while the writer is at
/// `write_seq`: the newest published frame (a live reader that fell behind skips to the present).
/// Returns (new next, number of frames skipped).
pub fn catch_up(next: u64, write_seq: u64) -> (u64, u64) {
    if write_seq == 0 {
        return (0, 0);
    }
    let newest = write_seq - 1;
    if newest > next {
        (newest, newest - next)
    } else {
        // Frame `next` itself was lost (torn or never published) but is the newest: skip it.
        (next.saturating_add(1), 1)
    }
}

/// The canonical form of a POSIX shm name: `vcam0` is taken as `/vcam0`, as Python's
/// `multiprocessing.shared_memory` and glibc's `shm_open` do. Validate it with
/// [`validate_shm_name`].
pub fn canonical_shm_name(name: &str) -> String {
    if name.starts_with('/') || name.is_empty() {
        name.to_string()
    } else {
        format!("/{name}")
    }
}

/// Check a POSIX shm name: an optional leading `/` then 1..=`NAME_MAX`-1 characters, no further
/// `/` (nothing can escape `/dev/shm`), not `.` or `..`, no NUL.
pub fn validate_shm_name(name: &str) -> Result<(), String> {
    const MAX: usize = 255;
    let rest = name.strip_prefix('/').unwrap_or(name);
    if rest.is_empty() || rest == "." || rest == ".." {
        return Err(format!(
            "shm name {name:?} needs a name (for example \"vcam0\" or \"/vcam0\")"
        ));
    }
    if rest.contains('/') {
        return Err(format!(
            "shm name {name:?} may contain a '/' only at the start (for example \"/vcam0\")"
        ));
    }
    if rest.contains('\0') {
        return Err(format!("shm name {name:?} contains a NUL byte"));
    }
    if rest.len() > MAX - 1 {
        return Err(format!(
            "shm name {name:?} is {} bytes long, at most {} are allowed",
            rest.len() + 1,
            MAX
        ));
    }
    Ok(())
}

mod lease;
pub use lease::*;

#[cfg(test)]
mod tests;
