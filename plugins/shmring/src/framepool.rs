// SPDX-License-Identifier: MPL-2.0
//! Output memory of `shmringsrc`: fixed-size frame buffers, allocated once, pre-faulted, and
//! reused most-recently-freed first.
//!
//! A buffer's memory comes back here when downstream drops its last reference; the next frame
//! takes the memory freed last, which is still in the CPU caches when downstream keeps up (the
//! usual case: one or two frames in flight). When downstream holds every buffer the pool simply
//! allocates another (it never waits, so a stalled downstream cannot stall the reader, let alone
//! the writer); at most [`MAX_FREE`] idle ones are kept.

use std::alloc::{self, Layout};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use vcambridge_common::lock;

/// Idle frame memories kept for reuse; more are freed.
pub const MAX_FREE: usize = 4;
/// Alignment of every frame (cache line; enough for SIMD loads of any video converter).
const ALIGN: usize = 64;

/// One frame's memory: `len` bytes at `ptr`, aligned to [`ALIGN`].
struct Block {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: an exclusively owned heap allocation.
unsafe impl Send for Block {}

impl Block {
    /// `len` bytes (> 0), every page touched so that the first copy into it does not fault;
    /// `None` when the allocation fails (an error for the caller, never an abort).
    fn alloc(len: usize) -> Option<Block> {
        let layout = Layout::from_size_align(len, ALIGN).ok()?;
        // SAFETY: non-zero size (checked by the caller).
        let ptr = unsafe { alloc::alloc(layout) };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: `ptr` is valid for `len` bytes; writing them initialises the memory and
        // faults its pages in now rather than during the first frame.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Some(Block { ptr, len })
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated in `Block::alloc` with this layout.
        unsafe { alloc::dealloc(self.ptr, Layout::from_size_align_unchecked(self.len, ALIGN)) }
    }
}

#[derive(Default)]
struct Free {
    /// Most recently freed last.
    blocks: Vec<Block>,
}

/// Frame memory of one size, shared with the buffers it lent (they hold a weak reference).
pub struct FramePool {
    size: usize,
    free: Arc<Mutex<Free>>,
    /// Frame memories allocated, counted into the owner's statistic.
    allocated: Arc<AtomicU64>,
}

/// The memory inside one output buffer; goes back to its pool when the buffer is freed.
struct Lent {
    block: Option<Block>,
    home: Weak<Mutex<Free>>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        match &self.block {
            // SAFETY: the block is initialised and exclusively ours.
            Some(b) => unsafe { std::slice::from_raw_parts(b.ptr, b.len) },
            None => &[],
        }
    }
}

impl AsMut<[u8]> for Lent {
    fn as_mut(&mut self) -> &mut [u8] {
        match &mut self.block {
            // SAFETY: as above.
            Some(b) => unsafe { std::slice::from_raw_parts_mut(b.ptr, b.len) },
            None => &mut [],
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let (Some(block), Some(home)) = (self.block.take(), self.home.upgrade()) else {
            return;
        };
        let mut free = lock(&home);
        if free.blocks.len() < MAX_FREE {
            free.blocks.push(block);
        }
    }
}

impl FramePool {
    /// A pool of `size`-byte frames (> 0) with `prealloc` of them allocated and faulted in now;
    /// every allocation is added to `allocated`. `None` if the first allocations fail.
    pub fn new(size: usize, prealloc: usize, allocated: Arc<AtomicU64>) -> Option<FramePool> {
        if size == 0 {
            return None;
        }
        let mut free = Free::default();
        for _ in 0..prealloc.min(MAX_FREE) {
            free.blocks.push(Block::alloc(size)?);
            allocated.fetch_add(1, Ordering::Relaxed);
        }
        Some(FramePool {
            size,
            free: Arc::new(Mutex::new(free)),
            allocated,
        })
    }

    /// Frame size of this pool.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A writable buffer of [`Self::size`] bytes: the memory freed last, else a new one; `None`
    /// when a new one cannot be allocated. Never waits.
    pub fn acquire(&self) -> Option<gst::Buffer> {
        let reused = lock(&self.free).blocks.pop();
        let block = match reused {
            Some(b) => b,
            None => {
                let b = Block::alloc(self.size)?;
                self.allocated.fetch_add(1, Ordering::Relaxed);
                b
            }
        };
        Some(gst::Buffer::from_mut_slice(Lent {
            block: Some(block),
            home: Arc::downgrade(&self.free),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    fn data_ptr(b: &gst::Buffer) -> *const u8 {
        b.map_readable().unwrap().as_slice().as_ptr()
    }

    #[test]
    fn freed_memory_is_reused_last_freed_first() {
        gst::init().unwrap();
        let allocated = Arc::new(AtomicU64::new(0));
        let pool = FramePool::new(3 * PAGE + 5, 2, allocated.clone()).unwrap();
        assert_eq!(allocated.load(Ordering::Relaxed), 2);
        let a = pool.acquire().unwrap();
        assert_eq!(a.size(), 3 * PAGE + 5);
        assert!((data_ptr(&a) as usize).is_multiple_of(ALIGN));
        let pa = data_ptr(&a);
        drop(a);
        // One frame in flight at a time: always the same memory.
        for _ in 0..10 {
            let b = pool.acquire().unwrap();
            assert_eq!(data_ptr(&b), pa);
        }
        assert_eq!(allocated.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn held_buffers_make_the_pool_grow_and_only_max_free_stay() {
        gst::init().unwrap();
        let allocated = Arc::new(AtomicU64::new(0));
        let pool = FramePool::new(PAGE, 1, allocated.clone()).unwrap();
        // Downstream holds 10 buffers: 10 distinct memories, no waiting.
        let held: Vec<_> = (0..10).map(|_| pool.acquire().unwrap()).collect();
        let mut ptrs: Vec<_> = held.iter().map(data_ptr).collect();
        ptrs.sort();
        ptrs.dedup();
        assert_eq!(ptrs.len(), 10);
        assert_eq!(allocated.load(Ordering::Relaxed), 10);
        drop(held);
        assert_eq!(lock(&pool.free).blocks.len(), MAX_FREE);
        // A buffer outliving its pool frees its memory.
        let late = pool.acquire().unwrap();
        drop(pool);
        drop(late);
    }

    #[test]
    fn buffers_are_writable_and_zero_sizes_refused() {
        gst::init().unwrap();
        assert!(FramePool::new(0, 1, Arc::default()).is_none());
        let pool = FramePool::new(64, 0, Arc::default()).unwrap();
        let mut b = pool.acquire().unwrap();
        b.get_mut()
            .unwrap()
            .map_writable()
            .unwrap()
            .as_mut_slice()
            .fill(7);
        assert_eq!(b.map_readable().unwrap().as_slice(), &[7u8; 64]);
    }
}
