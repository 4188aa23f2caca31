// SPDX-License-Identifier: MPL-2.0
//! [`DevicePool`]: a buffer pool over the device's mmap buffers, offered upstream through the
//! allocation query (`offer-pool=true`) so that upstream writes each frame straight into a
//! driver buffer and the sink only queues it (no copy).
//!
//! The pool holds a [`Lender`] of one stream: its buffers wrap [`LentBuffer`]s (exactly one
//! frame each), at most as many as the driver granted. When the stream stops (format change,
//! stop) the lent mappings are orphaned by the stream (an anonymous copy in place of the device
//! pages), so buffers of an old pool stay valid memory for whoever still holds them; the sink
//! recognises them as foreign and copies them (or drops them when their size does not fit).
//!
//! No element lock is taken here: the sink may acquire from the pool while it holds its
//! `output` lock.

use std::sync::{Arc, LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::v4l2::Lender;

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct DevicePool {
        pub(super) lender: Mutex<Option<Lender>>,
        /// Called when upstream finds no free buffer (before it waits for one): the sink gives
        /// back a buffer it holds only for keep-alive.
        pub(super) on_starved: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for DevicePool {
        const NAME: &'static str = "GstV4l2LoopSinkPool";
        type Type = super::DevicePool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for DevicePool {}
    impl GstObjectImpl for DevicePool {}

    impl BufferPoolImpl for DevicePool {
        fn acquire_buffer(
            &self,
            params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let dontwait = gst::BufferPoolAcquireFlags::DONTWAIT;
            if params.is_some_and(|p| p.flags().contains(dontwait)) {
                return self.parent_acquire_buffer(params);
            }
            let now = gst::BufferPoolAcquireParams::with_flags(dontwait);
            match self.parent_acquire_buffer(Some(&now)) {
                Err(gst::FlowError::Eos) => {
                    let starved = self
                        .on_starved
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    if let Some(starved) = starved {
                        starved();
                    }
                    self.parent_acquire_buffer(params)
                }
                other => other,
            }
        }

        fn alloc_buffer(
            &self,
            _params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let lent = self
                .lender
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|l| l.lend());
            let Some(lent) = lent else {
                gst::debug!(super::CAT, imp = self, "no device buffer left to lend");
                return Err(gst::FlowError::Eos);
            };
            let mut buffer = gst::Buffer::new();
            buffer
                .get_mut()
                .expect("new buffer is writable")
                .append_memory(gst::Memory::from_mut_slice(lent));
            Ok(buffer)
        }

        /// At most (and at least) as many buffers as the driver granted, each one frame.
        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            let (count, size) = match &*self.lender.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(l) => (l.count() as u32, l.size() as u32),
                None => return false,
            };
            let Some((caps, asked, _, _)) = config.params() else {
                return false;
            };
            let (_, _, min, _) = config.params().unwrap_or((None, 0, 0, 0));
            config.set_params(caps.as_ref(), size, count, count);
            if asked > size || min > count {
                // Upstream sees the change and falls back to its own buffers (then copied).
                gst::debug!(
                    super::CAT,
                    imp = self,
                    "refusing {min} buffers of {asked} bytes (the device has {count} of {size})"
                );
                let _ = self.parent_set_config(config);
                return false;
            }
            self.parent_set_config(config)
        }
    }
}

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "v4l2loopsinkpool",
        gst::DebugColorFlags::empty(),
        Some("v4l2loopsink device buffer pool"),
    )
});

glib::wrapper! {
    /// A pool of one stream's device buffers.
    pub struct DevicePool(ObjectSubclass<imp::DevicePool>)
        @extends gst::BufferPool, gst::Object;
}

impl DevicePool {
    pub fn new(lender: Lender) -> DevicePool {
        let pool: DevicePool = glib::Object::new();
        *pool.imp().lender.lock().unwrap_or_else(|e| e.into_inner()) = Some(lender);
        pool
    }

    /// What to call when upstream finds no free buffer (before it waits for one).
    pub fn set_on_starved(&self, f: impl Fn() + Send + Sync + 'static) {
        *self
            .imp()
            .on_starved
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(f));
    }

    /// A free buffer of this pool without waiting, if it is active and has one.
    pub fn try_acquire(&self) -> Option<gst::Buffer> {
        if !self.is_active() {
            return None;
        }
        let params =
            gst::BufferPoolAcquireParams::with_flags(gst::BufferPoolAcquireFlags::DONTWAIT);
        self.acquire_buffer(Some(&params)).ok()
    }
}
