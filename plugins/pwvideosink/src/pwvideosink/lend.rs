// SPDX-License-Identifier: MPL-2.0

//! Lending PipeWire's buffers upstream: the buffer pool `propose_allocation` offers for
//! system-memory caps. Each buffer it hands out wraps the mapping of a memfd that backs one of
//! the stream's own `pw_buffer`s (allocated in `dmabuf.rs`), so upstream writes the frame
//! where the consumer will read it, and `render()` queues that `pw_buffer` in the frame's graph cycle
//! as it is (no copy). Buffers from anywhere else are copied, as before.
//!
//! Rules:
//! - only a `pw_buffer` back in the sink's hands (dequeued, not queued, not lent) is lent;
//! - acquiring never waits: when none is free (all with the consumer, or no consumer and so
//!   no buffers at all) the pool hands out plain system memory, which takes the copy path;
//! - the memory keeps the mapping alive (`Arc<Mapping>`), so a buffer still lent when its
//!   `pw_buffer` goes away (consumer gone, new format, daemon restart) stays writable; coming
//!   back it matches no current `pw_buffer` and is copied (or dropped by the format check);
//! - the lend ends when the memory is freed (not when the `GstBuffer` is: memory can be
//!   shared), so a `pw_buffer` is never lent twice nor filled while someone can still write.

use std::sync::{Arc, Mutex, Weak};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::data_thread::copy_frame;
use super::mailbox::{PendingFrame, Shared, lock};
use crate::format::VideoSpec;

/// A shared read-write mapping of (part of) one memfd, unmapped when the last user lets go —
/// or, as a fallback, PipeWire's own mapping of a buffer (borrowed: used for copies only,
/// never lent, since PipeWire unmaps it with the buffer).
pub(crate) struct Mapping {
    /// Page-aligned start and length of the mapping.
    base: usize,
    map_len: usize,
    /// Where the bytes at `offset` of the file are mapped.
    addr: usize,
    len: usize,
    /// Ours (unmapped on drop, may outlive the `pw_buffer`): only these are lent.
    owned: bool,
}

impl Mapping {
    /// Map `len` bytes of `fd` from `offset` read-write, shared.
    pub fn new(fd: std::os::fd::RawFd, offset: u64, len: usize) -> Result<Self, String> {
        // SAFETY: sysconf is always safe to call.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let skip = (offset % page) as usize;
        let map_len = len + skip;
        // SAFETY: a fresh shared mapping of the caller's fd at a page-aligned offset; checked
        // for failure below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                (offset - skip as u64) as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Mapping {
            base: base as usize,
            map_len,
            addr: base as usize + skip,
            len,
            owned: true,
        })
    }

    /// PipeWire's mapping of a buffer's data, `len` bytes at `addr`: valid only as long as
    /// the `pw_buffer`, so never lent (copies only).
    pub fn borrowed(addr: usize, len: usize) -> Self {
        Mapping {
            base: addr,
            map_len: len,
            addr,
            len,
            owned: false,
        }
    }

    /// Ours: may be lent upstream.
    pub fn owned(&self) -> bool {
        self.owned
    }

    pub fn addr(&self) -> usize {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The mapped bytes, writable.
    ///
    /// # Safety
    /// Nobody else may read or write the mapping while the slice lives: the caller has taken
    /// its `pw_buffer` (not lent, not with the consumer) under the pool lock.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: `addr` maps `len` bytes until drop; exclusivity per the contract.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: mapped in `new` with this start and length, unmapped once.
            unsafe { libc::munmap(self.base as *mut libc::c_void, self.map_len) };
        }
    }
}

/// The `GstMemory` of a lent buffer: `len` bytes at the start of a `pw_buffer`'s mapping.
struct LentMemory {
    map: Arc<Mapping>,
    len: usize,
    shared: Weak<Shared>,
}

impl AsRef<[u8]> for LentMemory {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len <= map.len()` (checked by `Pool::lend`); the mapping lives as long as
        // `self`, and while lent only the holder of this memory touches it.
        unsafe { std::slice::from_raw_parts(self.map.addr() as *const u8, self.len) }
    }
}

impl AsMut<[u8]> for LentMemory {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_ref`; the buffer is lent to this memory alone.
        unsafe { std::slice::from_raw_parts_mut(self.map.addr() as *mut u8, self.len) }
    }
}

impl Drop for LentMemory {
    fn drop(&mut self) {
        // Never dropped under the pool lock: frames (and so this memory) are released only
        // after it (graph cycle, mailbox, pool's release_buffer).
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.pool).return_lent(&self.map);
        }
    }
}

/// A frame in memory the sink did not lend (another pool, system or DMA-BUF memory while the
/// consumer takes memfds): copied here, on the streaming thread, into a free PipeWire buffer
/// the sink lends itself, so the graph cycle only queues it, as it does a
/// frame upstream wrote in place. Returns the frame to hand over: the copy, or `frame` as it
/// is when it needs no copy (a lent buffer, DMA-BUF pass-through) or none is possible now (no
/// free buffer, another format): a later graph cycle then copies it when a buffer comes back.
pub(crate) fn copy_ahead(shared: &Arc<Shared>, frame: PendingFrame) -> PendingFrame {
    let (spec, size) = (frame.layout.spec, frame.layout.size as usize);
    let map = {
        let mut pool = lock(&shared.pool);
        if frame.lent.is_some_and(|addr| pool.is_lent_at(addr)) {
            return frame;
        }
        // (None unless memfd mode with this format and a free buffer.)
        pool.lend(spec, size, true)
    };
    let Some(map) = map else {
        return frame;
    };
    // SAFETY: the buffer was just lent to us alone (free, not with the consumer, not lent to
    // anyone else) and `size <= map.len()` (`Pool::lend`); the bytes are released with the
    // memory below, before anything else can take the buffer.
    let written = copy_frame(&frame, unsafe { &mut map.bytes_mut()[..size] });
    let addr = map.addr();
    // (Dropped at once when the copy failed: that ends the lend.)
    let buffer = lent_buffer(map, size, Arc::downgrade(shared));
    if written != size {
        // Short or unmappable: left to the graph cycle's copy (which counts it).
        return frame;
    }
    PendingFrame {
        buffer,
        lent: Some(addr),
        info: None,
        dmabuf: None,
        copied: true,
        ..frame
    }
}

/// A buffer of one `GstMemory` over the first `len` bytes of the lent mapping `map`; the lend
/// ends when that memory is freed.
fn lent_buffer(map: Arc<Mapping>, len: usize, shared: Weak<Shared>) -> gst::Buffer {
    let mut buffer = gst::Buffer::new();
    if let Some(b) = buffer.get_mut() {
        b.append_memory(gst::Memory::from_mut_slice(LentMemory { map, len, shared }));
    }
    buffer
}

/// What the pool lends for: the sink's shared state and the caps it was proposed for.
#[derive(Clone)]
struct Target {
    shared: Weak<Shared>,
    spec: VideoSpec,
    size: usize,
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct LendPool {
        pub(super) target: Mutex<Option<Target>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for LendPool {
        const NAME: &'static str = "GstPwVideoSinkLendPool";
        type Type = super::LendPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for LendPool {}
    impl GstObjectImpl for LendPool {}

    impl BufferPoolImpl for LendPool {
        // Nothing to preallocate or free: every acquire wraps a PipeWire buffer anew.
        fn start(&self) -> bool {
            true
        }

        fn stop(&self) -> bool {
            true
        }

        fn acquire_buffer(
            &self,
            _params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            if !self.obj().is_active() {
                return Err(gst::FlowError::Flushing);
            }
            let Some(target) = lock(&self.target).clone() else {
                return Err(gst::FlowError::NotNegotiated);
            };
            if let Some(shared) = target.shared.upgrade() {
                let lent = lock(&shared.pool).lend(target.spec, target.size, false);
                if let Some(map) = lent {
                    shared.buffers_lent.fetch_add(1, Ordering::Relaxed);
                    return Ok(lent_buffer(map, target.size, target.shared.clone()));
                }
                shared.lend_misses.fetch_add(1, Ordering::Relaxed);
            }
            // No PipeWire buffer free (all with the consumer, or no consumer): system memory,
            // copied in a later graph cycle. Never wait here: a dead consumer must not stall
            // upstream.
            gst::Buffer::with_size(target.size).map_err(|_| gst::FlowError::Error)
        }

        fn release_buffer(&self, buffer: gst::Buffer) {
            // Not recycled: the lend ends when the memory is freed (`LentMemory::drop`).
            drop(buffer);
        }
    }

    use std::sync::atomic::Ordering;
}

glib::wrapper! {
    /// The buffer pool lending the stream's memfd buffers upstream.
    pub struct LendPool(ObjectSubclass<imp::LendPool>)
        @extends gst::BufferPool, gst::Object;
}

impl LendPool {
    /// A pool for frames of `spec` (`size` bytes, default layout) lending `shared`'s buffers.
    pub(crate) fn new(shared: &Arc<Shared>, spec: VideoSpec, size: usize) -> Self {
        let pool: Self = glib::Object::new();
        *lock(&pool.imp().target) = Some(Target {
            shared: Arc::downgrade(shared),
            spec,
            size,
        });
        pool
    }
}
