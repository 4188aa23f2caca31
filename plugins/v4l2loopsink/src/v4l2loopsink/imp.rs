// SPDX-License-Identifier: MPL-2.0
//! `v4l2loopsink`: a `BaseSink` adapting [`crate::v4l2`] to pads and properties. The writing
//! side and the keep-alive thread are in `output.rs`, the placeholder in `placeholder.rs`, device
//! resolution and creation in `devices.rs`.
//!
//! Locks (never nested the other way round: `state` before `Shared::output`):
//! * `settings` — properties; held only to read or write them.
//! * `state` — `Stopped` / `Started`; held only to look at or replace fields, never across a
//!   wait, a device (re)open or a decode: `set_format` decides under it, takes the device out,
//!   does the slow work without it and installs the result after checking the element was not
//!   stopped meanwhile.
//! * `Shared::output` (see `output.rs`) — held for one frame copy at most.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use super::devices::{self, Created};
use super::negotiate;
use super::output::{self, Output, Shared, reason};
use super::pool::DevicePool;
use crate::v4l2::{self, FormatInfo, LoopbackDevice};

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "v4l2loopsink",
        gst::DebugColorFlags::empty(),
        Some("v4l2loopback writer"),
    )
});

const DEFAULT_CREATE: bool = false;
const DEFAULT_DEVICE_NUMBER: i32 = -1;
const DEFAULT_EXCLUSIVE_CAPS: bool = true;
const DEFAULT_MAX_SIZE: u32 = 0;
const DEFAULT_KEEPALIVE: bool = true;
const DEFAULT_ALLOW_FORMAT_LOCK: bool = false;
const DEFAULT_OFFER_POOL: bool = false;
/// The label of devices created with `create=true` when no `card-label` is set.
pub(super) const DEFAULT_CREATE_LABEL: &str = "vcambridge";
/// Streaming buffers asked from the driver (it grants up to its `max_buffers`).
pub(super) const BUFFER_COUNT: u32 = 4;
/// Frame interval used for keep-alive when the caps carry no frame rate.
const FALLBACK_FRAME_DURATION: Duration = Duration::from_micros(33_333);

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) device: Option<String>,
    pub(super) card_label: Option<String>,
    pub(super) create: bool,
    pub(super) device_number: i32,
    pub(super) exclusive_caps: bool,
    pub(super) max_width: u32,
    pub(super) max_height: u32,
    pub(super) keepalive: bool,
    pub(super) placeholder: Option<String>,
    pub(super) allow_format_lock: bool,
    pub(super) offer_pool: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            device: None,
            card_label: None,
            create: DEFAULT_CREATE,
            device_number: DEFAULT_DEVICE_NUMBER,
            exclusive_caps: DEFAULT_EXCLUSIVE_CAPS,
            max_width: DEFAULT_MAX_SIZE,
            max_height: DEFAULT_MAX_SIZE,
            keepalive: DEFAULT_KEEPALIVE,
            placeholder: None,
            allow_format_lock: DEFAULT_ALLOW_FORMAT_LOCK,
            offer_pool: DEFAULT_OFFER_POOL,
        }
    }
}

enum State {
    Stopped,
    Started {
        path: PathBuf,
        /// `None` while `set_format` works on the device without the lock (or after a reopen
        /// for a format change failed).
        device: Option<LoopbackDevice>,
        shared: Arc<Shared>,
        keepalive: Option<JoinHandle<()>>,
    },
}

pub struct V4l2LoopSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    created: Mutex<Option<Created>>,
    /// The device in use (for the `current-device` property).
    current: Mutex<Option<PathBuf>>,
}

impl Default for V4l2LoopSink {
    fn default() -> Self {
        V4l2LoopSink {
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(State::Stopped),
            created: Mutex::new(None),
            current: Mutex::new(None),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl V4l2LoopSink {
    fn write(
        &self,
        buffer: &gst::Buffer,
        preroll: bool,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let shared = {
            let state = lock(&self.state);
            let State::Started { shared, .. } = &*state else {
                gst::element_imp_error!(self, gst::CoreError::Failed, ["not started"]);
                return Err(gst::FlowError::Error);
            };
            shared.clone()
        };
        gst::trace!(
            CAT,
            imp = self,
            "{} buffer {:?} pts {:?}",
            if preroll { "preroll" } else { "render" },
            buffer.as_ptr(),
            buffer.pts()
        );
        let mut out = shared.lock();
        let o = &mut *out;
        // The buffer prepare() wrote while prerolling comes again (BaseSink calls prepare() once
        // more after the preroll wait, then render()): written once. `o.last` holds a
        // reference, so its pointer cannot have been recycled by a pool meanwhile.
        if o.last_from_preroll
            && o.last
                .as_ref()
                .is_some_and(|(b, _)| b.as_ptr() == buffer.as_ptr())
        {
            if !preroll {
                o.last_from_preroll = false;
            }
            return Ok(gst::FlowSuccess::Ok);
        }
        let (Some(_), Some(info)) = (o.stream.as_ref(), o.info.clone()) else {
            drop(out);
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ["received a buffer before caps"]
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        if let Err(msg) = o.write_frame(buffer, &info) {
            drop(out);
            gst::element_imp_error!(self, gst::ResourceError::Write, ["{}", msg]);
            return Err(gst::FlowError::Error);
        }
        o.last = Some((buffer.clone(), info));
        o.last_from_preroll = preroll;
        o.last_write = Instant::now();
        o.repeating = false;
        o.failed = false;
        Ok(gst::FlowSuccess::Ok)
    }

    /// Negotiation: decides under the `state` lock, does the slow part (reopening the device for
    /// a format change, decoding a placeholder image) with no lock held, then installs the
    /// result if the element is still the same started instance.
    fn set_format(&self, info: &gst_video::VideoInfo) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let format = FormatInfo::from_gst_name(info.format().to_str()).ok_or_else(|| {
            gst::error_msg!(
                gst::CoreError::Negotiation,
                ["format {} is not supported", info.format().to_str()]
            )
        })?;
        let (width, height) = (info.width(), info.height());
        format
            .check_size(width, height)
            .map_err(|m| gst::error_msg!(gst::StreamError::Format, ["{}", m]))?;
        let fps = info.fps();
        let frame_duration = if fps.numer() > 0 && fps.denom() > 0 {
            Duration::from_nanos(1_000_000_000u64 * fps.denom() as u64 / fps.numer() as u64)
                .max(Duration::from_millis(1))
        } else {
            FALLBACK_FRAME_DURATION
        };

        // Decide under the lock; take the device (and the old stream) out of the state.
        let (path, device, shared, old_stream, old_pool) = {
            let mut state = lock(&self.state);
            let State::Started {
                path,
                device,
                shared,
                ..
            } = &mut *state
            else {
                return Err(gst::error_msg!(
                    gst::CoreError::Negotiation,
                    ["not started"]
                ));
            };
            let mut out = shared.lock();
            if let Some(l) = out.stream.as_ref().map(|s| s.layout())
                && l.format == format
                && l.width == width
                && l.height == height
            {
                // Same image format: only the rate may have changed (one ioctl).
                if fps.numer() > 0
                    && let Some(device) = device.as_ref()
                {
                    let _ = device.set_frame_rate(fps.numer() as u32, fps.denom() as u32);
                }
                out.info = Some(info.clone());
                out.frame_duration = frame_duration;
                return Ok(());
            }
            let Some(taken) = device.take() else {
                return Err(gst::error_msg!(
                    gst::ResourceError::OpenWrite,
                    [
                        "{} is not open: an earlier format change could not reopen it; set the \
                         pipeline to READY and back to retry",
                        path.display()
                    ]
                ));
            };
            let old_stream = out.stream.take();
            if old_stream.is_some() {
                out.last = None;
            }
            // The old stream's pool is orphaned with the stream: buffers upstream still
            // holds become plain memory (copied if they come back), the new stream gets a new
            // pool when upstream asks.
            let old_pool = out.drop_pool();
            (path.clone(), taken, shared.clone(), old_stream, old_pool)
        };
        drop(old_pool);

        // The slow part, no lock held: keep-alive, caps queries and `stats` carry on.
        let requested = format!("{} {}x{}", format.describe(), width, height);
        let (device, result) = negotiate::configure(
            self,
            &path,
            device,
            old_stream,
            format,
            info,
            &requested,
            settings.placeholder.as_deref().filter(|s| !s.is_empty()),
        );

        // Install, unless the element was stopped (or restarted) meanwhile.
        let mut state = lock(&self.state);
        let stale = match &mut *state {
            State::Started {
                device: slot,
                shared: current,
                ..
            } if Arc::ptr_eq(current, &shared) && slot.is_none() => {
                *slot = device;
                let configured = result?;
                let mut out = shared.lock();
                out.stream = Some(configured.stream);
                out.info = Some(info.clone());
                out.placeholder = configured.placeholder;
                out.frame_duration = frame_duration;
                out.last_write = Instant::now();
                out.repeating = false;
                out.failed = false;
                out.keepalive = settings.keepalive;
                drop(out);
                shared.wake.notify_all();
                return Ok(());
            }
            _ => (device, result),
        };
        drop(state);
        gst::debug!(
            CAT,
            imp = self,
            "stopped while setting {requested}: the new format is dropped"
        );
        drop(stale); // STREAMOFF and close, without the lock
        Ok(())
    }
}

#[glib::object_subclass]
impl ObjectSubclass for V4l2LoopSink {
    const NAME: &'static str = "GstV4l2LoopSink";
    type Type = super::V4l2LoopSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for V4l2LoopSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("device")
                    .nick("Device")
                    .blurb(
                        "The v4l2loopback device to write to (/dev/videoN); empty: the device \
                         with card-label, else the first v4l2loopback output device",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("card-label")
                    .nick("Card label")
                    .blurb(
                        "Pick the v4l2loopback device with this card name (what browsers show); \
                         also the label of devices made with create=true",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("create")
                    .nick("Create")
                    .blurb(
                        "Create the device through /dev/v4l2loopback (v4l2loopback >= 0.13) if \
                         it does not exist, and remove it again on NULL",
                    )
                    .default_value(DEFAULT_CREATE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt::builder("device-number")
                    .nick("Device number")
                    .blurb("With create=true: the N of /dev/videoN to create (-1: any free one)")
                    .minimum(-1)
                    .maximum(255)
                    .default_value(DEFAULT_DEVICE_NUMBER)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("exclusive-caps")
                    .nick("Exclusive caps")
                    .blurb(
                        "With create=true: announce capture only once a writer streams (what \
                         Chrome needs to list the camera)",
                    )
                    .default_value(DEFAULT_EXCLUSIVE_CAPS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-width")
                    .nick("Max width")
                    .blurb("With create=true: largest frame width the device accepts (0: driver default)")
                    .default_value(DEFAULT_MAX_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-height")
                    .nick("Max height")
                    .blurb("With create=true: largest frame height the device accepts (0: driver default)")
                    .default_value(DEFAULT_MAX_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("keepalive")
                    .nick("Keep alive")
                    .blurb(
                        "Repeat the last frame (or the placeholder) at the negotiated rate while \
                         upstream stalls, pauses or is at EOS, so readers never freeze",
                    )
                    .default_value(DEFAULT_KEEPALIVE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("placeholder")
                    .nick("Placeholder")
                    .blurb(
                        "What keep-alive shows instead of the last frame: a colour (#rrggbb, \
                         0xrrggbb, black, white, ...) or an image file; empty: the last frame",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("allow-format-lock")
                    .nick("Allow format lock")
                    .blurb(
                        "When a reader holds the device to another format, offer only that \
                         format so upstream converts (instead of failing with an error)",
                    )
                    .default_value(DEFAULT_ALLOW_FORMAT_LOCK)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("offer-pool")
                    .nick("Offer pool")
                    .blurb(
                        "Offer the device's mmap buffers upstream (allocation query) so that \
                         upstream writes frames straight into them: no copy per frame when it \
                         accepts (see the stats' frames-zero-copy and copy-reason)",
                    )
                    .default_value(DEFAULT_OFFER_POOL)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("current-device")
                    .nick("Current device")
                    .blurb("The device in use (after READY→PAUSED)")
                    .read_only()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "frames-written, frames-repeated (keep-alive), timestamps-raised, \
                         bytes-copied, copies-per-frame, frames-zero-copy, frames-copied, \
                         frames-dropped, pool-offered and copy-reason",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = lock(&self.settings);
        match pspec.name() {
            "device" => s.device = value.get().expect("type checked upstream"),
            "card-label" => s.card_label = value.get().expect("type checked upstream"),
            "create" => s.create = value.get().expect("type checked upstream"),
            "device-number" => s.device_number = value.get().expect("type checked upstream"),
            "exclusive-caps" => s.exclusive_caps = value.get().expect("type checked upstream"),
            "max-width" => s.max_width = value.get().expect("type checked upstream"),
            "max-height" => s.max_height = value.get().expect("type checked upstream"),
            "keepalive" => s.keepalive = value.get().expect("type checked upstream"),
            "placeholder" => s.placeholder = value.get().expect("type checked upstream"),
            "allow-format-lock" => {
                s.allow_format_lock = value.get().expect("type checked upstream")
            }
            "offer-pool" => s.offer_pool = value.get().expect("type checked upstream"),
            other => unimplemented!("property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        // Read-only values first, without the settings lock.
        let s = match pspec.name() {
            "current-device" | "stats" => None,
            _ => Some(lock(&self.settings)),
        };
        let s = match s {
            Some(s) => s,
            None => return self.status_property(pspec.name()),
        };
        match pspec.name() {
            "device" => s.device.to_value(),
            "card-label" => s.card_label.to_value(),
            "create" => s.create.to_value(),
            "device-number" => s.device_number.to_value(),
            "exclusive-caps" => s.exclusive_caps.to_value(),
            "max-width" => s.max_width.to_value(),
            "max-height" => s.max_height.to_value(),
            "keepalive" => s.keepalive.to_value(),
            "placeholder" => s.placeholder.to_value(),
            "allow-format-lock" => s.allow_format_lock.to_value(),
            "offer-pool" => s.offer_pool.to_value(),
            other => unimplemented!("property {other}"),
        }
    }
}

impl V4l2LoopSink {
    /// The read-only properties: `current-device` and `stats`.
    fn status_property(&self, name: &str) -> glib::Value {
        match name {
            "current-device" => lock(&self.current)
                .as_ref()
                .map(|p| p.display().to_string())
                .to_value(),
            "stats" => {
                // The state lock, then the output lock: each held for a field read (set_format
                // and the keep-alive thread never hold them across slow work).
                let shared = match &*lock(&self.state) {
                    State::Started { shared, .. } => Some(shared.clone()),
                    State::Stopped => None,
                };
                shared
                    .map(|s| s.lock().stats_structure())
                    .unwrap_or_else(output::empty_stats)
                    .to_value()
            }
            other => unimplemented!("property {other}"),
        }
    }
}

impl GstObjectImpl for V4l2LoopSink {}

impl ElementImpl for V4l2LoopSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "V4L2 loopback sink",
                "Sink/Video/Hardware",
                "Writes video to a v4l2loopback device (a virtual webcam for browsers and apps)",
                "vcambridge developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list(
                    v4l2::FORMATS
                        .iter()
                        .map(|f| gst_video::VideoFormat::from_string(f.gst_name)),
                )
                .width_range(1..=8192)
                .height_range(1..=8192)
                .build();
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("valid sink pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady {
            let settings = lock(&self.settings).clone();
            if settings.create {
                match devices::create_device(&settings) {
                    Ok(Some(created)) => {
                        gst::info!(CAT, imp = self, "created {}", created.path.display());
                        *lock(&self.created) = Some(created);
                    }
                    Ok(None) => {}
                    Err(err) => {
                        self.post_error_message(err);
                        return Err(gst::StateChangeError);
                    }
                }
            }
        }
        let ret = self.parent_change_state(transition);
        if transition == gst::StateChange::ReadyToNull
            && let Some(created) = lock(&self.created).take()
        {
            match devices::remove_device(&created) {
                Ok(()) => gst::info!(CAT, imp = self, "removed {}", created.path.display()),
                Err(text) => {
                    gst::element_imp_warning!(self, gst::ResourceError::Close, ("{}", text))
                }
            }
        }
        ret
    }
}

impl BaseSinkImpl for V4l2LoopSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let created = lock(&self.created).clone();
        let path = devices::resolve_device(&settings, created.as_ref())?;
        let (device, caps) = devices::open_checked(&path)?;
        gst::info!(
            CAT,
            imp = self,
            "writing to {} ('{}', v4l2loopback {})",
            path.display(),
            caps.card,
            v4l2::module_version().unwrap_or_else(|| "?".into())
        );
        let shared = Arc::new(Shared {
            output: Mutex::new(Output::new(
                settings.keepalive,
                FALLBACK_FRAME_DURATION,
                settings.offer_pool,
            )),
            wake: Condvar::new(),
        });
        let keepalive = if settings.keepalive {
            let thread_shared = shared.clone();
            let weak = self.obj().downgrade();
            Some(
                std::thread::Builder::new()
                    .name("v4l2loopsink-keepalive".into())
                    .spawn(move || output::keepalive_loop(thread_shared, weak))
                    .map_err(|e| {
                        gst::error_msg!(
                            gst::CoreError::Failed,
                            ["cannot start the keep-alive thread: {}", e]
                        )
                    })?,
            )
        } else {
            None
        };
        *lock(&self.current) = Some(path.clone());
        *lock(&self.state) = State::Started {
            path,
            device: Some(device),
            shared,
            keepalive,
        };
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let state = std::mem::replace(&mut *lock(&self.state), State::Stopped);
        if let State::Started {
            device,
            shared,
            keepalive,
            ..
        } = state
        {
            shared.lock().stopping = true;
            shared.wake.notify_all();
            if let Some(handle) = keepalive {
                let _ = handle.join();
            }
            let mut out = shared.lock();
            let stream = out.stream.take();
            let last = out.last.take();
            let placeholder = out.placeholder.take();
            let pool = out.drop_pool();
            drop(out);
            drop((last, placeholder, pool));
            // STREAMOFF, orphan the buffers still lent upstream, unmap, release the buffers.
            drop(stream);
            drop(device);
            gst::info!(CAT, imp = self, "stopped");
        }
        Ok(())
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let template = self.obj().sink_pad().pad_template_caps();
        let allow = lock(&self.settings).allow_format_lock;
        let mut caps = template.clone();
        if allow
            && let State::Started {
                device: Some(device),
                shared,
                ..
            } = &*lock(&self.state)
        {
            let streaming = shared.lock().stream.is_some();
            if !streaming
                && let Ok(Some(pix)) = device.locked_format()
                && let Some(f) = FormatInfo::from_fourcc(pix.pixelformat)
            {
                gst::debug!(
                    CAT,
                    imp = self,
                    "device locked to {}: offering only that",
                    pix.describe()
                );
                caps = gst_video::VideoCapsBuilder::new()
                    .format(gst_video::VideoFormat::from_string(f.gst_name))
                    .width(pix.width as i32)
                    .height(pix.height as i32)
                    .build();
            }
        }
        Some(match filter {
            Some(f) => f.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
            None => caps,
        })
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = gst_video::VideoInfo::from_caps(caps)
            .map_err(|_| gst::loggable_error!(CAT, "invalid caps {caps}"))?;
        match self.set_format(&info) {
            Ok(()) => Ok(()),
            Err(err) => {
                let text = format!("{err:?}");
                self.post_error_message(err);
                Err(gst::loggable_error!(CAT, "cannot set the format: {text}"))
            }
        }
    }

    /// Called for every buffer before the clock wait. While not PLAYING (prerolling in PAUSED)
    /// the frame is written here, so readers get a picture as soon as the sink is PAUSED; the
    /// following render of that same buffer is skipped.
    fn prepare(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.obj().current_state() == gst::State::Playing {
            return Ok(gst::FlowSuccess::Ok);
        }
        self.write(buffer, true)
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.write(buffer, false)
    }

    /// With `offer-pool=true`: offers a pool of the device's mmap buffers when the query's
    /// caps are the device's format and GStreamer lays such frames out as V4L2 does.
    fn propose_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        self.parent_propose_allocation(query)?;
        if !lock(&self.settings).offer_pool {
            return Ok(());
        }
        let (caps, _) = query.get_owned();
        let shared = match &*lock(&self.state) {
            State::Started { shared, .. } => shared.clone(),
            State::Stopped => return Ok(()),
        };
        let info = caps.and_then(|c| gst_video::VideoInfo::from_caps(&c).ok());
        let mut out = shared.lock();
        let Some(stream) = out.stream.as_ref() else {
            return Ok(());
        };
        let layout = stream.layout();
        let fits = info.as_ref().map(|info| {
            let same_format = FormatInfo::from_gst_name(info.format().to_str())
                .is_some_and(|f| f == layout.format)
                && info.width() == layout.width
                && info.height() == layout.height;
            let same_lines = info.size() == layout.size
                && layout.planes.iter().enumerate().all(|(i, p)| {
                    info.offset().get(i).copied() == Some(p.offset)
                        && info.stride().get(i).copied() == Some(p.stride as i32)
                });
            (same_format, same_lines)
        });
        let why = match fits {
            _ if out.placeholder.is_some() => Some(reason::PLACEHOLDER_SET),
            Some((true, true)) => None,
            Some((true, false)) => Some(reason::LAYOUT),
            _ => Some(reason::CAPS),
        };
        if let Some(why) = why {
            gst::debug!(CAT, imp = self, "no pool offered: {why}");
            out.no_pool = why;
            return Ok(());
        }
        let count = stream.buffer_count() as u32;
        let size = layout.size as u32;
        let pool = match &out.pool {
            Some(pool) => pool.clone(),
            None => {
                let pool = DevicePool::new(stream.lender());
                // Weak: the pool lives in the output it calls back into.
                let weak = Arc::downgrade(&shared);
                pool.set_on_starved(move || {
                    if let Some(shared) = weak.upgrade() {
                        let released = shared.lock().release_twin();
                        drop(released); // back into the pool, outside the lock
                    }
                });
                out.pool = Some(pool.clone());
                pool
            }
        };
        drop(out);
        gst::debug!(
            CAT,
            imp = self,
            "offering a pool of {count} device buffers of {size} bytes"
        );
        query.add_allocation_pool(Some(&pool), size, count, count);
        Ok(())
    }
}
