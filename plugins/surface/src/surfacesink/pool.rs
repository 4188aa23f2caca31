// SPDX-License-Identifier: MPL-2.0

//! A buffer pool whose buffers are memfd surfaces (fd memory), offered to upstream by
//! `surfacesink` so producers write straight into shareable memory (0 copies).

use std::os::fd::IntoRawFd;
use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::subclass::prelude::*;
use gst_allocators::prelude::*;

use vcambridge_common::lock;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "surfacepool",
        gst::DebugColorFlags::empty(),
        Some("memfd surface buffer pool"),
    )
});

glib::wrapper! {
    /// Buffer pool of memfd-backed (fd memory) buffers.
    pub struct SurfacePool(ObjectSubclass<imp::SurfacePool>) @extends gst::BufferPool, gst::Object;
}

impl SurfacePool {
    pub fn new() -> Self {
        glib::Object::new()
    }
}

impl Default for SurfacePool {
    fn default() -> Self {
        Self::new()
    }
}

mod imp {
    use super::*;

    #[derive(Default)]
    struct Config {
        size: usize,
        info: Option<gst_video::VideoInfo>,
        video_meta: bool,
    }

    pub struct SurfacePool {
        config: Mutex<Config>,
        allocator: gst_allocators::FdAllocator,
    }

    impl Default for SurfacePool {
        fn default() -> Self {
            SurfacePool {
                config: Mutex::new(Config::default()),
                allocator: gst_allocators::FdAllocator::new(),
            }
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for SurfacePool {
        const NAME: &'static str = "GstSurfacePool";
        type Type = super::SurfacePool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for SurfacePool {}
    impl GstObjectImpl for SurfacePool {}

    impl BufferPoolImpl for SurfacePool {
        fn options() -> &'static [&'static str] {
            static OPTIONS: [&str; 1] = ["GstBufferPoolOptionVideoMeta"];
            &OPTIONS
        }

        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            let Some((caps, size, _min, _max)) = config.params() else {
                return false;
            };
            let info = caps
                .as_ref()
                .and_then(|c| gst_video::VideoInfo::from_caps(c).ok());
            let size = info.as_ref().map(|i| i.size()).unwrap_or(size as usize);
            if size == 0 {
                gst::warning!(CAT, imp = self, "no size in pool config");
                return false;
            }
            let video_meta = config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
            *lock(&self.config) = Config {
                size,
                info,
                video_meta,
            };
            self.parent_set_config(config)
        }

        fn alloc_buffer(
            &self,
            _params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let (size, info, video_meta) = {
                let c = lock(&self.config);
                (c.size, c.info.clone(), c.video_meta)
            };
            let fd = crate::platform::create_memfd("surfacesink-pool", size).map_err(|e| {
                gst::error!(CAT, imp = self, "memfd of {size} bytes: {e}");
                gst::FlowError::Error
            })?;
            // SAFETY: the allocator takes ownership of the fd (closed when the memory is freed).
            let mem = unsafe {
                self.allocator.alloc_fd(
                    fd.into_raw_fd(),
                    size,
                    gst_allocators::FdMemoryFlags::KEEP_MAPPED,
                )
            }
            .map_err(|e| {
                gst::error!(CAT, imp = self, "wrapping memfd: {e}");
                gst::FlowError::Error
            })?;
            let mut buffer = gst::Buffer::new();
            {
                let b = buffer.get_mut().ok_or(gst::FlowError::Error)?;
                b.append_memory(mem);
                if video_meta && let Some(info) = info {
                    let _ = gst_video::VideoMeta::add_full(
                        b,
                        gst_video::VideoFrameFlags::empty(),
                        info.format(),
                        info.width(),
                        info.height(),
                        info.offset(),
                        info.stride(),
                    );
                }
            }
            gst::trace!(CAT, imp = self, "allocated a {size} byte memfd surface");
            Ok(buffer)
        }
    }
}
