// SPDX-License-Identifier: MPL-2.0

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;

use vcambridge_common::lock;

use super::pool::SurfacePool;

use crate::hub::{FrameInfo, FrameSource, Hub, HubConfig};
use crate::platform::{self, Listener, Waker};
use crate::wire::{self, NO_TIME};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "surfacesink",
        gst::DebugColorFlags::empty(),
        Some("Zero-copy surface sink"),
    )
});

const DEFAULT_SURFACES: u32 = 6;
const DEFAULT_RELEASE_TIMEOUT_MS: u32 = 2000;
const DEFAULT_WAIT_FOR_CONNECTION: bool = false;

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<String>,
    surfaces: u32,
    release_timeout_ms: u32,
    wait_for_connection: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket_path: None,
            surfaces: DEFAULT_SURFACES,
            release_timeout_ms: DEFAULT_RELEASE_TIMEOUT_MS,
            wait_for_connection: DEFAULT_WAIT_FOR_CONNECTION,
        }
    }
}

/// What the streaming thread and the I/O thread share.
struct Shared {
    hub: Mutex<Hub<gst::Buffer>>,
    /// Signalled when a reader becomes ready (for `wait-for-connection`).
    ready: Condvar,
    waker: Waker,
    listener: Listener,
    stop: AtomicBool,
}

enum State {
    Stopped,
    Started {
        shared: Arc<Shared>,
        io_thread: Option<JoinHandle<()>>,
        info: Option<gst_video::VideoInfo>,
    },
}

pub struct SurfaceSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    unlocked: AtomicBool,
}

impl Default for SurfaceSink {
    fn default() -> Self {
        SurfaceSink {
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(State::Stopped),
            unlocked: AtomicBool::new(false),
        }
    }
}

impl SurfaceSink {
    fn shared(&self) -> Option<Arc<Shared>> {
        match &*lock(&self.state) {
            State::Started { shared, .. } => Some(shared.clone()),
            State::Stopped => None,
        }
    }

    fn stats_structure(&self) -> gst::Structure {
        let s = self
            .shared()
            .map(|s| lock(&s.hub).stats())
            .unwrap_or_default();
        gst::Structure::builder("surfacesink-stats")
            .field("frames", s.frames)
            .field("copies", s.copies)
            .field("zero-copy", s.zero_copy)
            .field("dropped", s.dropped)
            .field("evicted", s.evicted)
            .field("readers", s.readers)
            .field("surfaces", s.surfaces)
            .build()
    }

    fn frame_info(
        &self,
        buffer: &gst::BufferRef,
        info: Option<&gst_video::VideoInfo>,
    ) -> FrameInfo {
        let t = |c: Option<gst::ClockTime>| c.map(|c| c.nseconds()).unwrap_or(NO_TIME);
        let mut fi = FrameInfo {
            pts: t(buffer.pts()),
            dts: t(buffer.dts()),
            duration: t(buffer.duration()),
            flags: buffer.flags().bits(),
            ..Default::default()
        };
        if let Some(meta) = buffer.meta::<gst_video::VideoMeta>() {
            let n = (meta.n_planes() as usize).min(wire::MAX_PLANES);
            fi.n_planes = n as u32;
            for i in 0..n {
                fi.plane_offsets[i] = meta.offset()[i] as u64;
                fi.strides[i] = meta.stride()[i];
            }
        } else if let Some(info) = info {
            let n = (info.n_planes() as usize).min(wire::MAX_PLANES);
            fi.n_planes = n as u32;
            for i in 0..n {
                fi.plane_offsets[i] = info.offset()[i] as u64;
                fi.strides[i] = info.stride()[i];
            }
        }
        fi
    }
}

/// The writer's I/O thread: accepts readers, reads their hellos and releases, evicts stuck
/// readers. Exits when `shared.stop` is set (and the waker fires).
fn io_loop(shared: Arc<Shared>) {
    let mut last_reclaim = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        let readers = lock(&shared.hub).reader_fds();
        let mut fds = vec![shared.listener.raw_fd(), shared.waker.raw_fd()];
        fds.extend(readers.iter().map(|(_, fd)| *fd));
        let ready = match platform::wait_readable(&fds, Duration::from_millis(100)) {
            Ok(r) => r,
            Err(e) => {
                gst::error!(CAT, "poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let mut hub = lock(&shared.hub);
        if ready[1] {
            shared.waker.drain();
        }
        if ready[0] {
            loop {
                match shared.listener.accept() {
                    Ok(Some(chan)) => hub.add_reader(chan),
                    Ok(None) => break,
                    Err(e) => {
                        gst::warning!(CAT, "accept on {:?}: {e}", shared.listener.path());
                        break;
                    }
                }
            }
        }
        for (i, (id, _)) in readers.iter().enumerate() {
            if ready[i + 2] {
                hub.service_reader(*id);
            }
        }
        let now = Instant::now();
        if now.duration_since(last_reclaim) >= Duration::from_millis(50) {
            hub.reclaim(now);
            hub.flush_queues();
            last_reclaim = now;
        }
        for line in hub.log.drain(..) {
            gst::info!(CAT, "{line}");
        }
        if hub.ready_readers() > 0 {
            shared.ready.notify_all();
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for SurfaceSink {
    const NAME: &'static str = "GstSurfaceSink";
    type Type = super::SurfaceSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for SurfaceSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb("Unix socket readers connect to (created 0600; a stale socket of a dead writer is replaced)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("surfaces")
                    .nick("Surfaces")
                    .blurb("Writer-owned surfaces in the pool (frames in flight across all readers); a reader may hold half of them")
                    .minimum(2)
                    .maximum(64)
                    .default_value(DEFAULT_SURFACES)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("release-timeout")
                    .nick("Release timeout")
                    .blurb("Milliseconds a reader may hold a surface before it is disconnected and its surfaces reclaimed")
                    .minimum(10)
                    .default_value(DEFAULT_RELEASE_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("wait-for-connection")
                    .nick("Wait for connection")
                    .blurb("Hold the first frames until at least one reader is connected (like shmsink)")
                    .default_value(DEFAULT_WAIT_FOR_CONNECTION)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames, copies, zero-copy, dropped, evicted, readers, surfaces")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = lock(&self.settings);
        match pspec.name() {
            "socket-path" => s.socket_path = value.get().expect("type checked upstream"),
            "surfaces" => s.surfaces = value.get().expect("type checked upstream"),
            "release-timeout" => s.release_timeout_ms = value.get().expect("type checked upstream"),
            "wait-for-connection" => {
                s.wait_for_connection = value.get().expect("type checked upstream")
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = lock(&self.settings).clone();
        match pspec.name() {
            "socket-path" => s.socket_path.to_value(),
            "surfaces" => s.surfaces.to_value(),
            "release-timeout" => s.release_timeout_ms.to_value(),
            "wait-for-connection" => s.wait_for_connection.to_value(),
            "stats" => self.stats_structure().to_value(),
            _ => unimplemented!(),
        }
    }
}

impl GstObjectImpl for SurfaceSink {}

impl ElementImpl for SurfaceSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Surface sink",
                "Sink/Video",
                "Shares frames with other processes as memfd/DMA-BUF surfaces over a Unix socket",
                "vcambridge developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &gst::Caps::new_any(),
                )
                .expect("sink pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for SurfaceSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let Some(path) = settings.socket_path.clone().filter(|p| !p.is_empty()) else {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ("surfacesink needs socket-path (e.g. socket-path=/run/user/1000/cam.sock)")
            ));
        };
        let path = PathBuf::from(path);
        let listener = Listener::bind(&path).map_err(|e| {
            let kind = match e {
                platform::BindError::InUse(_) => gst::ResourceError::Busy,
                _ => gst::ResourceError::OpenWrite,
            };
            gst::error_msg!(kind, ("{}", e))
        })?;
        let waker = Waker::new().map_err(|e| {
            gst::error_msg!(gst::ResourceError::Failed, ("creating an eventfd: {e}"))
        })?;
        let hub = Hub::new(HubConfig {
            surfaces: settings.surfaces as usize,
            max_outstanding: (settings.surfaces as usize).div_ceil(2),
            release_timeout: Duration::from_millis(settings.release_timeout_ms as u64),
        });
        let shared = Arc::new(Shared {
            hub: Mutex::new(hub),
            ready: Condvar::new(),
            waker,
            listener,
            stop: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        let io_thread = std::thread::Builder::new()
            .name("surfacesink-io".into())
            .spawn(move || io_loop(thread_shared))
            .map_err(|e| {
                gst::error_msg!(gst::ResourceError::Failed, ("spawning I/O thread: {e}"))
            })?;
        gst::info!(CAT, imp = self, "listening on {}", path.display());
        *lock(&self.state) = State::Started {
            shared,
            io_thread: Some(io_thread),
            info: None,
        };
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let old = std::mem::replace(&mut *lock(&self.state), State::Stopped);
        if let State::Started {
            shared,
            mut io_thread,
            ..
        } = old
        {
            shared.stop.store(true, Ordering::SeqCst);
            shared.waker.wake();
            if let Some(t) = io_thread.take() {
                let _ = t.join();
            }
            lock(&shared.hub).clear();
        }
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = gst_video::VideoInfo::from_caps(caps).ok();
        let mut state = lock(&self.state);
        if let State::Started {
            shared, info: i, ..
        } = &mut *state
        {
            *i = info;
            lock(&shared.hub).set_caps(caps.to_string());
        }
        gst::debug!(CAT, imp = self, "caps {caps}");
        Ok(())
    }

    fn propose_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        let (caps, need_pool) = query.get_owned();
        query.add_allocation_meta::<gst_video::VideoMeta>(None);
        let Some(caps) = caps else {
            return Ok(());
        };
        let Ok(info) = gst_video::VideoInfo::from_caps(&caps) else {
            return Ok(());
        };
        if !need_pool {
            return Ok(());
        }
        let size = info.size() as u32;
        let pool = SurfacePool::new();
        let mut config = pool.config();
        config.set_params(Some(&caps), size, 0, 0);
        config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
        pool.set_config(config)
            .map_err(|e| gst::loggable_error!(CAT, "configuring the surface pool: {e}"))?;
        query.add_allocation_pool(Some(&pool), size, 2, 0);
        gst::debug!(
            CAT,
            imp = self,
            "offered a memfd surface pool ({size} bytes)"
        );
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let (shared, info) = match &*lock(&self.state) {
            State::Started { shared, info, .. } => (shared.clone(), info.clone()),
            State::Stopped => return Err(gst::FlowError::Flushing),
        };
        let settings = lock(&self.settings).clone();
        let mut hub = lock(&shared.hub);
        if settings.wait_for_connection {
            while hub.ready_readers() == 0 {
                if self.unlocked.load(Ordering::SeqCst) {
                    return Err(gst::FlowError::Flushing);
                }
                hub = shared
                    .ready
                    .wait_timeout(hub, Duration::from_millis(50))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
        let fi = self.frame_info(buffer, info.as_ref());

        let fd_mem = if buffer.n_memory() == 1 {
            buffer
                .peek_memory(0)
                .downcast_memory_ref::<gst_allocators::FdMemory>()
        } else {
            None
        };
        // SAFETY: the fd belongs to the memory, which `buffer` (held below) keeps alive.
        let shareable = fd_mem.map(|mem| unsafe { std::os::fd::BorrowedFd::borrow_raw(mem.fd()) });
        // Readers map only fds that cannot shrink under them (sealed memfds, DMA-BUFs); other fd
        // memory (an unsealed memfd, a tmpfs file) is copied into one of our sealed surfaces.
        let shareable = match (fd_mem, shareable) {
            (Some(mem), Some(fd)) => match platform::inspect_surface(fd) {
                Ok(_) => Some((mem, fd)),
                Err(e) => {
                    gst::debug!(CAT, imp = self, "copying upstream fd memory: {e}");
                    None
                }
            },
            _ => None,
        };
        let result = if let Some((mem, fd)) = shareable {
            hub.publish(
                FrameSource::Fd {
                    fd,
                    offset: mem.offset() as u64,
                    size: mem.size() as u64,
                    hold: buffer.clone(),
                },
                fi,
            )
        } else {
            let map = buffer.map_readable().map_err(|_| {
                gst::element_imp_error!(self, gst::StreamError::Failed, ("cannot map buffer"));
                gst::FlowError::Error
            })?;
            hub.publish(FrameSource::Bytes(map.as_slice()), fi)
        };
        for line in hub.log.drain(..) {
            gst::info!(CAT, imp = self, "{line}");
        }
        drop(hub);
        if let Err(e) = result {
            gst::element_imp_error!(
                self,
                gst::ResourceError::Write,
                ("cannot publish frame as a surface: {e}")
            );
            return Err(gst::FlowError::Error);
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Eos(_) = event.view()
            && let Some(shared) = self.shared()
        {
            lock(&shared.hub).eos();
        }
        self.parent_event(event)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        self.unlocked.store(true, Ordering::SeqCst);
        if let Some(shared) = self.shared() {
            shared.ready.notify_all();
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        self.unlocked.store(false, Ordering::SeqCst);
        Ok(())
    }
}
