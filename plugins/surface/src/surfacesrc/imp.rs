// SPDX-License-Identifier: MPL-2.0
//! The surfacesrc element: settings, state, properties and `create()`, which waits for the
//! writer and acts on what `imp/receive.rs` (the reader side of the protocol) decided, without
//! holding the state lock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use vcambridge_common::live::{FrameLatency, Restamper};
use vcambridge_common::lock;

use crate::platform::{self, Received, Waker};
use crate::wire;

mod receive;

use receive::{Conn, Step};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "surfacesrc",
        gst::DebugColorFlags::empty(),
        Some("Zero-copy surface source"),
    )
});

const DEFAULT_TIMEOUT_MS: u32 = 10_000;
/// Interval between connection attempts while the writer is absent.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
struct Settings {
    socket_path: Option<String>,
    timeout_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket_path: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }
}

#[derive(Default)]
struct State {
    conn: Option<Conn>,
    current_caps: Option<gst::Caps>,
    /// When we started waiting for a writer (for `timeout`).
    waiting_since: Option<Instant>,
    last_session: Option<u64>,
    frames: u64,
    reconnects: u64,
    /// Frames refused because they do not fit their surface's real size or their caps.
    rejected: u64,
    /// The next buffer starts a new stream segment (first frame, or after a reconnect).
    discont: bool,
    /// The writer's timestamps onto our running time (re-anchored at every connection).
    restamper: Restamper,
    buf: Vec<u8>,
}

pub struct SurfaceSrc {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    waker: Mutex<Option<Arc<Waker>>>,
    flushing: AtomicBool,
    /// One frame duration of the current caps (reported as latency).
    latency: FrameLatency,
}

impl Default for SurfaceSrc {
    fn default() -> Self {
        SurfaceSrc {
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(State::default()),
            waker: Mutex::new(None),
            flushing: AtomicBool::new(false),
            latency: FrameLatency::default(),
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for SurfaceSrc {
    const NAME: &'static str = "GstSurfaceSrc";
    type Type = super::SurfaceSrc;
    type ParentType = gst_base::PushSrc;
}

impl ObjectImpl for SurfaceSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("socket-path")
                    .nick("Socket path")
                    .blurb("Unix socket of the surfacesink to read from")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("timeout")
                    .nick("Timeout")
                    .blurb("Milliseconds to wait for a writer (at start and after it went away) before failing; 0 waits forever")
                    .default_value(DEFAULT_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("frames, reconnects, rejected (frames that did not fit their surface or caps), caps (caps ids remembered), surfaces (mapped)")
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
            "timeout" => s.timeout_ms = value.get().expect("type checked upstream"),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = lock(&self.settings).clone();
        match pspec.name() {
            "socket-path" => s.socket_path.to_value(),
            "timeout" => s.timeout_ms.to_value(),
            "stats" => {
                let st = lock(&self.state);
                gst::Structure::builder("surfacesrc-stats")
                    .field("frames", st.frames)
                    .field("reconnects", st.reconnects)
                    .field("rejected", st.rejected)
                    .field(
                        "caps",
                        st.conn.as_ref().map(|c| c.caps.len() as u64).unwrap_or(0),
                    )
                    .field(
                        "surfaces",
                        st.conn
                            .as_ref()
                            .map(|c| c.surfaces.len() as u64)
                            .unwrap_or(0),
                    )
                    .build()
                    .to_value()
            }
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_live(true);
        obj.set_format(gst::Format::Time);
    }
}

impl GstObjectImpl for SurfaceSrc {}

impl ElementImpl for SurfaceSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Surface source",
                "Source/Video",
                "Receives frames from a surfacesink in another process without copying",
                "vcambridge developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &gst::Caps::new_any(),
                )
                .expect("src pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSrcImpl for SurfaceSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        if settings.socket_path.as_deref().is_none_or(str::is_empty) {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                ("surfacesrc needs socket-path (the socket-path of the surfacesink)")
            ));
        }
        let waker = Waker::new().map_err(|e| {
            gst::error_msg!(gst::ResourceError::Failed, ("creating an eventfd: {e}"))
        })?;
        *lock(&self.waker) = Some(Arc::new(waker));
        *lock(&self.state) = State {
            buf: vec![0u8; wire::MAX_MESSAGE_LEN],
            ..Default::default()
        };
        self.latency.reset();
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *lock(&self.state) = State::default();
        Ok(())
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let caps = lock(&self.state)
            .current_caps
            .clone()
            .unwrap_or_else(gst::Caps::new_any);
        Some(match filter {
            Some(f) => f.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
            None => caps,
        })
    }

    fn is_seekable(&self) -> bool {
        false
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            // Frames are stamped with the running time at which they are read: allow one frame
            // of jitter downstream.
            self.latency.answer(q, true);
            return true;
        }
        BaseSrcImplExt::parent_query(self, query)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        self.flushing.store(true, Ordering::SeqCst);
        if let Some(w) = lock(&self.waker).clone() {
            w.wake();
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        self.flushing.store(false, Ordering::SeqCst);
        if let Some(w) = lock(&self.waker).clone() {
            w.drain();
        }
        Ok(())
    }
}

impl PushSrcImpl for SurfaceSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        let settings = lock(&self.settings).clone();
        let path = PathBuf::from(settings.socket_path.unwrap_or_default());
        let p = platform::display_path(&path);
        let timeout =
            (settings.timeout_ms > 0).then(|| Duration::from_millis(settings.timeout_ms as u64));
        loop {
            if self.flushing.load(Ordering::SeqCst) {
                return Err(gst::FlowError::Flushing);
            }
            let mut st = lock(&self.state);
            if st.conn.is_none() {
                let since = *st.waiting_since.get_or_insert_with(Instant::now);
                match self.try_connect(&path) {
                    Ok(Some(conn)) => {
                        gst::info!(CAT, imp = self, "connected to {p}");
                        if st.last_session.is_some() {
                            st.reconnects += 1;
                        }
                        st.conn = Some(conn);
                        st.waiting_since = None;
                        st.discont = true;
                        st.restamper.reset();
                        continue;
                    }
                    Ok(None) => {
                        if let Some(t) = timeout
                            && since.elapsed() >= t
                        {
                            drop(st);
                            gst::element_imp_error!(
                                self,
                                gst::ResourceError::OpenRead,
                                (
                                    "no surfacesink at {p} within {} ms (is the writer running with this socket-path?)",
                                    t.as_millis()
                                )
                            );
                            return Err(gst::FlowError::Error);
                        }
                        drop(st);
                        self.wait(None, RETRY_INTERVAL);
                        continue;
                    }
                    Err(msg) => {
                        drop(st);
                        self.post_error_message(msg);
                        return Err(gst::FlowError::Error);
                    }
                }
            }
            let Some(chan) = st.conn.as_ref().map(|c| c.chan.clone()) else {
                continue;
            };
            let mut buf = std::mem::take(&mut st.buf);
            let got = chan.recv(&mut buf);
            st.buf = buf;
            let step = match got {
                Ok(Received::WouldBlock) => {
                    drop(st);
                    self.wait(Some(chan.raw_fd()), Duration::from_millis(500));
                    continue;
                }
                Ok(Received::Closed) | Err(_) => {
                    gst::info!(CAT, imp = self, "writer at {p} went away; waiting for it");
                    st.conn = None;
                    st.waiting_since = Some(Instant::now());
                    continue;
                }
                Ok(Received::Message { len, fds }) => self.handle(&mut st, len, fds, &p),
            };
            match step {
                Step::Continue => continue,
                Step::Eos => {
                    gst::info!(CAT, imp = self, "writer sent end-of-stream");
                    return Err(gst::FlowError::Eos);
                }
                Step::Fatal(msg) => {
                    st.conn = None;
                    drop(st);
                    self.post_error_message(msg);
                    return Err(gst::FlowError::Error);
                }
                Step::Frame(buffer, new_caps) => {
                    if let Some(caps) = new_caps {
                        st.current_caps = Some(caps.clone());
                        drop(st);
                        gst::debug!(CAT, imp = self, "caps now {caps}");
                        if self.obj().set_caps(&caps).is_err() {
                            gst::element_imp_error!(
                                self,
                                gst::CoreError::Negotiation,
                                ("downstream does not accept the writer's caps {caps}")
                            );
                            return Err(gst::FlowError::NotNegotiated);
                        }
                        self.latency.update(self.obj().upcast_ref(), &caps);
                    }
                    return Ok(CreateSuccess::NewBuffer(buffer));
                }
            }
        }
    }
}
