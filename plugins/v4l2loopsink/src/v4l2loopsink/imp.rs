// SPDX-License-Identifier: MPL-2.0
//! `v4l2loopsink`: a `BaseSink` adapting [`crate::v4l2`] to pads and properties, plus the
//! keep-alive thread that feeds the device while upstream is stalled, paused or at EOS.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;

use crate::v4l2::{
    self, Capability, ControlDevice, DeviceProblem, FormatInfo, FrameLayout, LoopbackConfig,
    LoopbackDevice, OutputStream,
};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
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
/// The label of devices created with `create=true` when no `card-label` is set.
const DEFAULT_CREATE_LABEL: &str = "vcambridge";
/// Streaming buffers asked from the driver (it grants up to its `max_buffers`).
const BUFFER_COUNT: u32 = 4;
/// Frame interval used for keep-alive when the caps carry no frame rate.
const FALLBACK_FRAME_DURATION: Duration = Duration::from_micros(33_333);

#[derive(Debug, Clone)]
struct Settings {
    device: Option<String>,
    card_label: Option<String>,
    create: bool,
    device_number: i32,
    exclusive_caps: bool,
    max_width: u32,
    max_height: u32,
    keepalive: bool,
    placeholder: Option<String>,
    allow_format_lock: bool,
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
        }
    }
}

/// What keep-alive repeats.
enum RepeatFrame {
    /// A frame already in the V4L2 layout (placeholder colour).
    Raw(Vec<u8>),
    /// A GStreamer frame (the last one rendered, or a decoded placeholder image).
    Buffer(gst::Buffer, gst_video::VideoInfo),
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    frames_written: u64,
    frames_repeated: u64,
    bytes_copied: u64,
}

/// The writing side, shared between the streaming thread and the keep-alive thread.
struct Output {
    stream: Option<OutputStream>,
    info: Option<gst_video::VideoInfo>,
    last: Option<(gst::Buffer, gst_video::VideoInfo)>,
    /// `last` was written by prepare() while prerolling (its render is skipped).
    last_from_preroll: bool,
    placeholder: Option<RepeatFrame>,
    last_write: Instant,
    frame_duration: Duration,
    repeating: bool,
    stopping: bool,
    keepalive: bool,
    /// Set once a keep-alive write failed (reported once, then keep-alive pauses).
    failed: bool,
    stats: Stats,
}

struct Shared {
    output: Mutex<Output>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum State {
    Stopped,
    Started {
        device: LoopbackDevice,
        shared: Arc<Shared>,
        keepalive: Option<JoinHandle<()>>,
    },
}

/// A device this element created through the control device (removed again on NULL).
#[derive(Debug, Clone)]
struct Created {
    number: u32,
    path: PathBuf,
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

/// Writes a GStreamer frame into the next V4L2 buffer (the one copy).
fn write_gst_frame(
    stream: &mut OutputStream,
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
    timestamp: Duration,
) -> Result<(), String> {
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
        .map_err(|_| "cannot map the video buffer".to_string())?;
    let strides = frame.plane_stride();
    let mut planes = Vec::with_capacity(frame.n_planes() as usize);
    for i in 0..frame.n_planes() {
        let data = frame
            .plane_data(i)
            .map_err(|e| format!("cannot map plane {i}: {e}"))?;
        let stride = usize::try_from(strides[i as usize])
            .map_err(|_| format!("negative stride on plane {i}"))?;
        planes.push((data, stride));
    }
    let layout = stream.layout().clone();
    stream
        .write_frame(timestamp, |dst| layout.copy_into(&planes, dst))
        .map_err(|e| io_write_message(&e))?
}

fn write_raw_frame(
    stream: &mut OutputStream,
    data: &[u8],
    timestamp: Duration,
) -> Result<(), String> {
    stream
        .write_frame(timestamp, |dst: &mut [u8]| {
            if data.len() != dst.len() {
                return Err(format!(
                    "placeholder of {} bytes for a {} byte frame",
                    data.len(),
                    dst.len()
                ));
            }
            dst.copy_from_slice(data);
            Ok(())
        })
        .map_err(|e| io_write_message(&e))?
}

fn io_write_message(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => format!(
            "the device is gone ({e}): the v4l2loopback device was removed or the module unloaded"
        ),
        _ => format!("writing a frame failed: {e}"),
    }
}

/// The keep-alive loop: while no frame arrived for two frame intervals, repeat the last frame
/// (or the placeholder) once per frame interval. Ends when `stopping` is set.
fn keepalive_loop(shared: Arc<Shared>, element: glib::WeakRef<super::V4l2LoopSink>) {
    let mut out = shared.lock();
    loop {
        if out.stopping {
            return;
        }
        let wait = out.frame_duration;
        let due = out.last_write
            + if out.repeating {
                out.frame_duration
            } else {
                2 * out.frame_duration
            };
        let now = Instant::now();
        let active = out.keepalive && !out.failed && out.stream.is_some();
        if !active || now < due {
            let timeout = if active { due - now } else { wait };
            out = shared
                .wake
                .wait_timeout(out, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        let ts = v4l2::monotonic_now();
        let o = &mut *out;
        let Some(stream) = o.stream.as_mut() else {
            continue;
        };
        let result = match (&o.placeholder, &o.last) {
            (Some(RepeatFrame::Raw(data)), _) => write_raw_frame(stream, data, ts),
            (Some(RepeatFrame::Buffer(buf, info)), _) | (None, Some((buf, info))) => {
                write_gst_frame(stream, buf, info, ts)
            }
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => {
                o.stats.frames_repeated += 1;
                o.stats.bytes_copied += stream.layout().size as u64;
                o.repeating = true;
                // Keep the cadence even if a write was late.
                o.last_write = if now.duration_since(due) > o.frame_duration {
                    now
                } else {
                    due
                };
            }
            Err(msg) => {
                o.failed = true;
                drop(out);
                if let Some(element) = element.upgrade() {
                    gst::element_error!(
                        element,
                        gst::ResourceError::Write,
                        ("keep-alive write failed"),
                        ["{}", msg]
                    );
                }
                out = shared.lock();
            }
        }
    }
}

impl V4l2LoopSink {
    /// Finds the device to write to; errors say what was found and what to do.
    fn resolve_device(&self, settings: &Settings) -> Result<PathBuf, gst::ErrorMessage> {
        if let Some(created) = lock(&self.created).as_ref() {
            return Ok(created.path.clone());
        }
        if let Some(device) = settings.device.as_deref().filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(device));
        }
        let found = v4l2::list_loopback_devices();
        let listing = if found.is_empty() {
            "no v4l2loopback device exists".to_string()
        } else {
            let names: Vec<String> = found
                .iter()
                .map(|d| format!("{} '{}'", d.path.display(), d.caps.card))
                .collect();
            format!("v4l2loopback devices: {}", names.join(", "))
        };
        let create_hint = if Path::new(v4l2::CONTROL_DEVICE).exists() {
            "set create=true to create one".to_string()
        } else {
            format!(
                "load the module with `{}`",
                v4l2::modprobe_hint(
                    10,
                    settings
                        .card_label
                        .as_deref()
                        .unwrap_or(DEFAULT_CREATE_LABEL)
                )
            )
        };
        if let Some(label) = settings.card_label.as_deref().filter(|l| !l.is_empty()) {
            return found
                .iter()
                .find(|d| d.caps.card == label)
                .map(|d| d.path.clone())
                .ok_or_else(|| {
                    gst::error_msg!(
                        gst::ResourceError::NotFound,
                        [
                            "no v4l2loopback device with card label '{}' ({}); {}",
                            label,
                            listing,
                            create_hint
                        ]
                    )
                });
        }
        found
            .iter()
            .find(|d| d.caps.can_output())
            .map(|d| d.path.clone())
            .ok_or_else(|| {
                gst::error_msg!(
                    gst::ResourceError::NotFound,
                    [
                        "no v4l2loopback device accepts output ({}); set device= or {}",
                        listing,
                        create_hint
                    ]
                )
            })
    }

    /// `create=true`: make a device through the control device unless one with the wanted
    /// label or path exists already.
    fn create_device(&self, settings: &Settings) -> Result<(), gst::ErrorMessage> {
        let label = settings
            .card_label
            .clone()
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| DEFAULT_CREATE_LABEL.to_string());
        if let Some(device) = settings.device.as_deref().filter(|d| !d.is_empty()) {
            if Path::new(device).exists() {
                return Ok(());
            }
        } else if v4l2::list_loopback_devices()
            .iter()
            .any(|d| d.caps.card == label)
        {
            return Ok(());
        }
        let number = if settings.device_number >= 0 {
            settings.device_number
        } else {
            settings
                .device
                .as_deref()
                .and_then(|d| v4l2::video_number(Path::new(d)))
                .map(|n| n as i32)
                .unwrap_or(-1)
        };
        let ctl = ControlDevice::open().map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => {
                let loaded = match v4l2::module_version() {
                    Some(v) => format!("the loaded v4l2loopback is {v}"),
                    None => "v4l2loopback is not loaded".to_string(),
                };
                gst::error_msg!(
                    gst::ResourceError::NotFound,
                    [
                        "create=true needs v4l2loopback >= 0.13 (control device {}), but {}. \
                         Create the device when loading the module instead: `{}`, then use \
                         device=/dev/video{} or card-label=\"{}\"",
                        v4l2::CONTROL_DEVICE,
                        loaded,
                        v4l2::modprobe_hint(number.max(10) as u32, &label),
                        number.max(10),
                        label
                    ]
                )
            }
            Some(libc::EACCES) | Some(libc::EPERM) => gst::error_msg!(
                gst::ResourceError::NotAuthorized,
                [
                    "permission denied opening {}: creating loopback devices needs write access \
                     to it (root, or a udev rule for the 'video' group)",
                    v4l2::CONTROL_DEVICE
                ]
            ),
            _ => gst::error_msg!(
                gst::ResourceError::OpenWrite,
                ["cannot open {}: {}", v4l2::CONTROL_DEVICE, e]
            ),
        })?;
        let config = LoopbackConfig::new(
            number,
            &label,
            settings.exclusive_caps,
            settings.max_width,
            settings.max_height,
        );
        let nr = ctl.add(&config).map_err(|e| {
            let what = if number >= 0 {
                format!("/dev/video{number}")
            } else {
                "a v4l2loopback device".to_string()
            };
            let hint = if e.raw_os_error() == Some(libc::EEXIST) {
                " (that number is taken: pick another device-number or -1)"
            } else {
                ""
            };
            gst::error_msg!(
                gst::ResourceError::OpenWrite,
                ["creating {} '{}' failed: {}{}", what, label, e, hint]
            )
        })?;
        let path = PathBuf::from(format!("/dev/video{nr}"));
        // devtmpfs creates the node synchronously, udev may take a moment: bounded wait.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        gst::info!(CAT, imp = self, "created {} '{}'", path.display(), label);
        *lock(&self.created) = Some(Created { number: nr, path });
        Ok(())
    }

    fn remove_created_device(&self) {
        let Some(created) = lock(&self.created).take() else {
            return;
        };
        let result = ControlDevice::open().and_then(|ctl| ctl.remove(created.number));
        match result {
            Ok(()) => gst::info!(CAT, imp = self, "removed {}", created.path.display()),
            Err(e) => {
                let why = if e.raw_os_error() == Some(libc::EBUSY) {
                    "it is still opened by a reader".to_string()
                } else {
                    e.to_string()
                };
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Close,
                    (
                        "could not remove {}: {}; remove it later with `v4l2loopback-ctl delete {}`",
                        created.path.display(),
                        why,
                        created.number
                    )
                );
            }
        }
    }

    fn open_checked(path: &Path) -> Result<(LoopbackDevice, Capability), gst::ErrorMessage> {
        v4l2::open_output(path).map_err(|problem| Self::problem_error(path, problem))
    }

    fn problem_error(path: &Path, problem: DeviceProblem) -> gst::ErrorMessage {
        let msg = problem.message(path);
        match problem {
            DeviceProblem::Missing | DeviceProblem::NoDevice => {
                gst::error_msg!(gst::ResourceError::NotFound, ["{}", msg])
            }
            DeviceProblem::PermissionDenied => {
                gst::error_msg!(gst::ResourceError::NotAuthorized, ["{}", msg])
            }
            DeviceProblem::NoOutput { .. } => {
                gst::error_msg!(gst::ResourceError::Busy, ["{}", msg])
            }
            _ => gst::error_msg!(gst::ResourceError::Settings, ["{}", msg]),
        }
    }

    /// The clock time of `buffer` as CLOCK_MONOTONIC when the pipeline runs on the monotonic
    /// system clock (readers then get the buffer's true time); now otherwise.
    fn timestamp_for(&self, buffer: &gst::BufferRef) -> Duration {
        let obj = self.obj();
        let exact = || -> Option<Duration> {
            let clock = obj.clock()?;
            let sys = clock.downcast_ref::<gst::SystemClock>()?;
            if sys.property::<gst::ClockType>("clock-type") != gst::ClockType::Monotonic {
                return None;
            }
            let base = obj.base_time()?;
            let segment = obj.segment().downcast::<gst::ClockTime>().ok()?;
            let rt = segment.to_running_time(buffer.pts()?)?;
            Some(Duration::from_nanos((base + rt).nseconds()))
        };
        exact().unwrap_or_else(v4l2::monotonic_now)
    }

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
        let ts = self.timestamp_for(buffer);
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
        let (Some(stream), Some(info)) = (o.stream.as_mut(), o.info.as_ref()) else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ["received a buffer before caps"]
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        if let Err(msg) = write_gst_frame(stream, buffer, info, ts) {
            gst::element_imp_error!(self, gst::ResourceError::Write, ["{}", msg]);
            return Err(gst::FlowError::Error);
        }
        o.stats.frames_written += 1;
        o.stats.bytes_copied += stream.layout().size as u64;
        o.last = Some((buffer.clone(), info.clone()));
        o.last_from_preroll = preroll;
        o.last_write = Instant::now();
        o.repeating = false;
        o.failed = false;
        Ok(gst::FlowSuccess::Ok)
    }

    /// Builds the keep-alive placeholder for the negotiated format.
    fn make_placeholder(
        spec: &str,
        layout: &FrameLayout,
        info: &gst_video::VideoInfo,
    ) -> Result<RepeatFrame, String> {
        if let Some(rgb) = v4l2::parse_color(spec) {
            return Ok(RepeatFrame::Raw(layout.solid_color(rgb)));
        }
        let path = Path::new(spec);
        if !path.is_file() {
            return Err(format!(
                "placeholder '{spec}' is neither a colour (#rrggbb, 0xrrggbb, black, white, ...) \
                 nor an existing image file"
            ));
        }
        let buffer = decode_image(path, info)?;
        Ok(RepeatFrame::Buffer(buffer, info.clone()))
    }

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

        let mut state = lock(&self.state);
        let State::Started { device, shared, .. } = &mut *state else {
            return Err(gst::error_msg!(
                gst::CoreError::Negotiation,
                ["not started"]
            ));
        };
        let path = device.path().to_path_buf();
        let mut out = shared.lock();

        if let Some(stream) = out.stream.as_ref() {
            let l = stream.layout();
            if l.format == format && l.width == width && l.height == height {
                // Same image format: only the rate may have changed.
                if fps.numer() > 0 {
                    let _ = device.set_frame_rate(fps.numer() as u32, fps.denom() as u32);
                }
                out.info = Some(info.clone());
                out.frame_duration = frame_duration;
                return Ok(());
            }
            // A new format: v4l2loopback frees its format only when the writer lets go of the
            // device, so release everything and open it afresh.
            gst::info!(
                CAT,
                imp = self,
                "format change from {}: reopening {}",
                l.describe(),
                path.display()
            );
            out.stream = None;
            out.last = None;
            device
                .reopen_output()
                .map_err(|problem| Self::problem_error(&path, problem))?;
        }

        let requested = format!("{} {}x{}", format.describe(), width, height);
        let lock_hint = |locked: &str, locked_gst: Option<&str>| {
            let convert = match (locked_gst, locked.split(' ').next_back()) {
                (Some(f), Some(size)) => {
                    let (w, h) = size.split_once('x').unwrap_or(("W", "H"));
                    format!(
                        "videoconvert ! videoscale ! video/x-raw,format={f},width={w},height={h} ! "
                    )
                }
                _ => String::new(),
            };
            format!(
                "{} is locked to {} by a reader that is still streaming (or another writer, or \
                 keep_format); this pipeline sends {}. Stop the reader first, convert to the \
                 locked format ({}v4l2loopsink), or set allow-format-lock=true to convert \
                 automatically",
                path.display(),
                locked,
                requested,
                convert
            )
        };
        let pix = match device.set_format(format.fourcc, width, height) {
            Ok(pix) => pix,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let locked = device
                    .format()
                    .map(|p| p.describe())
                    .unwrap_or_else(|_| "another format".into());
                let gst_name = device
                    .format()
                    .ok()
                    .and_then(|p| FormatInfo::from_fourcc(p.pixelformat))
                    .map(|f| f.gst_name);
                return Err(gst::error_msg!(
                    gst::ResourceError::Busy,
                    ["{}", lock_hint(&locked, gst_name)]
                ));
            }
            Err(e) => {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ["setting {} on {} failed: {}", requested, path.display(), e]
                ));
            }
        };
        if pix.pixelformat != format.fourcc || pix.width != width || pix.height != height {
            let locked = device.locked_format().ok().flatten();
            return Err(match locked {
                Some(l) => gst::error_msg!(
                    gst::ResourceError::Busy,
                    [
                        "{}",
                        lock_hint(
                            &l.describe(),
                            FormatInfo::from_fourcc(l.pixelformat).map(|f| f.gst_name)
                        )
                    ]
                ),
                None if pix.pixelformat == format.fourcc => gst::error_msg!(
                    gst::ResourceError::Settings,
                    [
                        "{} cannot take {}: the device is limited to {}x{} (v4l2loopback \
                         max_width/max_height); reload the module with larger max_width= \
                         max_height= (or create the device with larger max-width/max-height), \
                         or scale down (videoscale ! video/x-raw,width=...,height=...)",
                        path.display(),
                        requested,
                        pix.width,
                        pix.height
                    ]
                ),
                None => gst::error_msg!(
                    gst::ResourceError::Settings,
                    [
                        "{} does not support {} (the driver chose {}); convert to YUY2 or I420",
                        path.display(),
                        requested,
                        pix.describe()
                    ]
                ),
            });
        }
        if fps.numer() > 0
            && let Err(e) = device.set_frame_rate(fps.numer() as u32, fps.denom() as u32)
        {
            gst::warning!(CAT, imp = self, "VIDIOC_S_PARM failed: {e}");
        }
        let layout = FrameLayout::new(format, width, height, pix.bytesperline);
        gst::debug!(
            CAT,
            imp = self,
            "set {} on {}: bytesperline {}, driver sizeimage {}, frame {} bytes",
            layout.describe(),
            path.display(),
            pix.bytesperline,
            pix.sizeimage,
            layout.size
        );
        let placeholder = match settings.placeholder.as_deref().filter(|s| !s.is_empty()) {
            Some(spec) => Some(
                Self::make_placeholder(spec, &layout, info)
                    .map_err(|m| gst::error_msg!(gst::ResourceError::Settings, ["{}", m]))?,
            ),
            None => None,
        };
        let stream = OutputStream::start(device, layout, BUFFER_COUNT).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                gst::error_msg!(
                    gst::ResourceError::Busy,
                    [
                        "{} refuses a new writer (VIDIOC_REQBUFS: {}): v4l2loopback believes \
                         another writer owns it (0.13.x keeps that state when a write()-based \
                         writer such as ffmpeg left while a reader had the device open). Close \
                         all readers and writers of the device, or remove and re-create it",
                        path.display(),
                        e
                    ]
                )
            } else {
                gst::error_msg!(
                    gst::ResourceError::Settings,
                    [
                        "starting mmap streaming on {} failed: {}",
                        path.display(),
                        e
                    ]
                )
            }
        })?;
        gst::info!(
            CAT,
            imp = self,
            "streaming {} to {} with {} buffers",
            requested,
            path.display(),
            stream.buffer_count()
        );
        out.stream = Some(stream);
        out.info = Some(info.clone());
        out.placeholder = placeholder;
        out.frame_duration = frame_duration;
        out.last_write = Instant::now();
        out.repeating = false;
        out.failed = false;
        out.keepalive = settings.keepalive;
        drop(out);
        shared.wake.notify_all();
        Ok(())
    }
}

/// Decodes an image file into one frame of `info` (format and size) for the placeholder.
fn decode_image(path: &Path, info: &gst_video::VideoInfo) -> Result<gst::Buffer, String> {
    let fail = |m: String| format!("placeholder image {}: {m}", path.display());
    let pipeline = gst::Pipeline::new();
    let make = |name: &str| {
        gst::ElementFactory::make(name)
            .build()
            .map_err(|_| fail(format!("element {name} is missing")))
    };
    let src = make("filesrc")?;
    src.set_property("location", path.to_string_lossy().to_string());
    let decode = make("decodebin")?;
    let convert = make("videoconvert")?;
    let scale = make("videoscale")?;
    let freeze = make("imagefreeze")?;
    let caps = info.to_caps().map_err(|e| fail(format!("caps: {e}")))?;
    let sink = gst_app::AppSink::builder().caps(&caps).sync(false).build();
    pipeline
        .add_many([&src, &decode, &convert, &scale, &freeze, sink.upcast_ref()])
        .map_err(|e| fail(e.to_string()))?;
    src.link(&decode).map_err(|e| fail(e.to_string()))?;
    gst::Element::link_many([&convert, &scale, &freeze, sink.upcast_ref()])
        .map_err(|e| fail(e.to_string()))?;
    let convert_weak = convert.downgrade();
    decode.connect_pad_added(move |_, pad| {
        if let Some(convert) = convert_weak.upgrade()
            && let Some(sinkpad) = convert.static_pad("sink")
            && !sinkpad.is_linked()
        {
            let _ = pad.link(&sinkpad);
        }
    });
    let result = (|| {
        pipeline
            .set_state(gst::State::Paused)
            .map_err(|_| fail("cannot start decoding".into()))?;
        let sample = sink
            .try_pull_preroll(gst::ClockTime::from_seconds(10))
            .ok_or_else(|| {
                let bus_error = pipeline
                    .bus()
                    .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
                    .and_then(|m| match m.view() {
                        gst::MessageView::Error(e) => Some(e.error().to_string()),
                        _ => None,
                    })
                    .unwrap_or_else(|| "no frame within 10 s".into());
                fail(format!("cannot decode it ({bus_error})"))
            })?;
        sample
            .buffer_owned()
            .ok_or_else(|| fail("decoder gave no buffer".into()))
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
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
                glib::ParamSpecString::builder("current-device")
                    .nick("Current device")
                    .blurb("The device in use (after READY→PAUSED)")
                    .read_only()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "frames-written, frames-repeated (keep-alive), bytes-copied and \
                         copies-per-frame",
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
            other => unimplemented!("property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = lock(&self.settings);
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
            "current-device" => lock(&self.current)
                .as_ref()
                .map(|p| p.display().to_string())
                .to_value(),
            "stats" => {
                let stats = match &*lock(&self.state) {
                    State::Started { shared, .. } => shared.lock().stats,
                    State::Stopped => Stats::default(),
                };
                let frames = stats.frames_written + stats.frames_repeated;
                let frame_size = match &*lock(&self.state) {
                    State::Started { shared, .. } => shared
                        .lock()
                        .stream
                        .as_ref()
                        .map(|s| s.layout().size as u64)
                        .unwrap_or(0),
                    State::Stopped => 0,
                };
                let copies = if frames > 0 && frame_size > 0 {
                    stats.bytes_copied as f64 / (frames * frame_size) as f64
                } else {
                    0.0
                };
                gst::Structure::builder("v4l2loopsink-stats")
                    .field("frames-written", stats.frames_written)
                    .field("frames-repeated", stats.frames_repeated)
                    .field("bytes-copied", stats.bytes_copied)
                    .field("copies-per-frame", copies)
                    .build()
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
            if settings.create
                && let Err(err) = self.create_device(&settings)
            {
                self.post_error_message(err);
                return Err(gst::StateChangeError);
            }
        }
        let ret = self.parent_change_state(transition);
        if transition == gst::StateChange::ReadyToNull {
            self.remove_created_device();
        }
        ret
    }
}

impl BaseSinkImpl for V4l2LoopSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let path = self.resolve_device(&settings)?;
        let (device, caps) = Self::open_checked(&path)?;
        gst::info!(
            CAT,
            imp = self,
            "writing to {} ('{}', v4l2loopback {})",
            path.display(),
            caps.card,
            v4l2::module_version().unwrap_or_else(|| "?".into())
        );
        let shared = Arc::new(Shared {
            output: Mutex::new(Output {
                stream: None,
                info: None,
                last: None,
                last_from_preroll: false,
                placeholder: None,
                last_write: Instant::now(),
                frame_duration: FALLBACK_FRAME_DURATION,
                repeating: false,
                stopping: false,
                keepalive: settings.keepalive,
                failed: false,
                stats: Stats::default(),
            }),
            wake: Condvar::new(),
        });
        let keepalive = if settings.keepalive {
            let thread_shared = shared.clone();
            let weak = self.obj().downgrade();
            Some(
                std::thread::Builder::new()
                    .name("v4l2loopsink-keepalive".into())
                    .spawn(move || keepalive_loop(thread_shared, weak))
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
        *lock(&self.current) = Some(path);
        *lock(&self.state) = State::Started {
            device,
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
            out.stream = None; // STREAMOFF, unmap, release the buffers
            out.last = None;
            out.placeholder = None;
            drop(out);
            drop(device);
            gst::info!(CAT, imp = self, "stopped");
        }
        Ok(())
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let template = self.obj().sink_pad().pad_template_caps();
        let allow = lock(&self.settings).allow_format_lock;
        let mut caps = template.clone();
        if allow && let State::Started { device, shared, .. } = &*lock(&self.state) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_image_is_decoded_and_scaled_to_the_format() {
        gst::init().expect("gst init");
        let dir = std::env::temp_dir().join(format!("v4l2loopsink-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let png = dir.join("white.png");
        let p = gst::parse::launch(&format!(
            "videotestsrc num-buffers=1 pattern=white ! video/x-raw,width=64,height=36 ! pngenc ! \
             filesink location={}",
            png.display()
        ))
        .expect("pipeline");
        p.set_state(gst::State::Playing).expect("play");
        let bus = p.bus().expect("bus");
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Eos])
            .expect("png written");
        p.set_state(gst::State::Null).expect("null");
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 320, 180)
            .fps(gst::Fraction::new(10, 1))
            .build()
            .expect("info");
        let buffer = decode_image(&png, &info).expect("decoded");
        let frame =
            gst_video::VideoFrameRef::from_buffer_ref_readable(&buffer, &info).expect("mapped");
        assert_eq!(frame.width(), 320);
        let y = frame.plane_data(0).expect("y");
        assert!(y.iter().all(|&v| v == 235), "Y {:?}", &y[..8]);
        assert!(frame.plane_data(1).expect("u").iter().all(|&v| v == 128));
        let missing = decode_image(Path::new("/nonexistent.png"), &info).unwrap_err();
        assert!(missing.contains("/nonexistent.png"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
