// SPDX-License-Identifier: MPL-2.0
//! A buffer pool whose buffers ARE ring slots: shmringsink offers it upstream in the allocation
//! query, so an element that accepts it writes straight into shared memory and shmringsink only
//! publishes the slot (no copy).
//!
//! Every acquire lends the next free slot (marked in progress: readers never see it half-written)
//! and wraps it in a fresh buffer; when the buffer is freed the slot is returned. When no slot can
//! be lent (all lent out, ring being replaced) the pool hands out ordinary memory and the sink
//! copies, so acquiring never blocks.

use std::sync::{Arc, Mutex};

use gst::glib;
use gst::subclass::prelude::*;

use vcambridge_common::lock;

use crate::writer::{Lent, RingWriter};

/// Memory of one lent slot; returns the slot to the writer when freed.
struct SlotMemory {
    writer: Arc<RingWriter>,
    lent: Lent,
    size: usize,
}

impl AsMut<[u8]> for SlotMemory {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the lent slot payload (`lent.len >= size` bytes) stays mapped while `writer`
        // lives and is reserved for this memory until it is dropped.
        unsafe { std::slice::from_raw_parts_mut(self.lent.ptr, self.size) }
    }
}

impl Drop for SlotMemory {
    fn drop(&mut self) {
        self.writer.release(&self.lent);
    }
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct SlotPool {
        pub writer: Mutex<Option<Arc<RingWriter>>>,
        pub size: Mutex<usize>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for SlotPool {
        const NAME: &'static str = "GstShmRingSlotPool";
        type Type = super::SlotPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for SlotPool {}
    impl GstObjectImpl for SlotPool {}

    impl BufferPoolImpl for SlotPool {
        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            let Some((_caps, size, _min, _max)) = config.params() else {
                return false;
            };
            *lock(&self.size) = size as usize;
            self.parent_set_config(config)
        }

        fn start(&self) -> bool {
            // Nothing to preallocate: every acquire lends a slot.
            true
        }

        fn stop(&self) -> bool {
            true
        }

        fn acquire_buffer(
            &self,
            _params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let size = *lock(&self.size);
            let writer = lock(&self.writer).clone();
            if let Some(writer) = writer
                && size <= writer.geometry().slot_size
                && let Some(lent) = writer.lend()
            {
                let mem = gst::Memory::from_mut_slice(SlotMemory { writer, lent, size });
                let mut buffer = gst::Buffer::new();
                buffer
                    .get_mut()
                    .ok_or(gst::FlowError::Error)?
                    .append_memory(mem);
                return Ok(buffer);
            }
            gst::Buffer::with_size(size).map_err(|_| gst::FlowError::Error)
        }

        fn release_buffer(&self, buffer: gst::Buffer) {
            // Never recycle: dropping frees the memory, which returns the slot.
            drop(buffer);
        }
    }
}

glib::wrapper! {
    /// Pool handing out ring-slot-backed buffers.
    pub struct SlotPool(ObjectSubclass<imp::SlotPool>) @extends gst::BufferPool, gst::Object;
}

impl SlotPool {
    pub fn new(writer: Option<Arc<RingWriter>>) -> Self {
        let pool: Self = glib::Object::new();
        *lock(&pool.imp().writer) = writer;
        pool
    }

    /// Point the pool at a new ring (after a resize) or detach it (`None`).
    pub fn set_writer(&self, writer: Option<Arc<RingWriter>>) {
        *lock(&self.imp().writer) = writer;
    }
}
