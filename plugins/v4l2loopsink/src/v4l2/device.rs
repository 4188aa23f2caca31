// SPDX-License-Identifier: MPL-2.0
//! Opening and probing a device node: [`LoopbackDevice`] owns the fd of a `/dev/videoN` and wraps
//! the format ioctls; [`open_output`] checks that a path is a v4l2loopback output right now, and
//! [`DeviceProblem`] turns what went wrong into one precise, actionable message.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::abi::*;
use nix::sys::inotify::AddWatchFlags;

use super::watch::NodeWatch;

/// What `VIDIOC_QUERYCAP` says about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub driver: String,
    pub card: String,
    pub bus_info: String,
    /// The capabilities of this device node (`device_caps` when present).
    pub device_caps: u32,
}

impl Capability {
    pub fn is_loopback(&self) -> bool {
        self.driver == LOOPBACK_DRIVER
    }
    pub fn can_output(&self) -> bool {
        self.device_caps & (CAP_VIDEO_OUTPUT | CAP_VIDEO_OUTPUT_MPLANE) != 0
    }
    pub fn can_capture(&self) -> bool {
        self.device_caps & (CAP_VIDEO_CAPTURE | CAP_VIDEO_CAPTURE_MPLANE) != 0
    }
}

/// An open V4L2 device node. Owns its file descriptor.
#[derive(Debug)]
pub struct LoopbackDevice {
    pub(super) path: PathBuf,
    pub(super) file: File,
}

impl LoopbackDevice {
    /// Opens `path` read-write, non-blocking.
    pub fn open(path: &Path) -> io::Result<LoopbackDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        Ok(LoopbackDevice {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn query_capability(&self) -> io::Result<Capability> {
        let mut raw: RawCapability = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, `raw` has the kernel's layout for this ioctl.
        unsafe { ioctls::querycap(self.file.as_raw_fd(), &mut raw) }.map_err(errno)?;
        let caps = if raw.capabilities & CAP_DEVICE_CAPS != 0 {
            raw.device_caps
        } else {
            raw.capabilities
        };
        Ok(Capability {
            driver: cstr(&raw.driver),
            card: cstr(&raw.card),
            bus_info: cstr(&raw.bus_info),
            device_caps: caps,
        })
    }

    fn raw_format(pix: PixFormat) -> RawFormat {
        let mut raw = RawFormat {
            type_: BUF_TYPE_VIDEO_OUTPUT,
            _pad: 0,
            fmt: RawFormatUnion { raw: [0; 200] },
        };
        raw.fmt.pix = pix;
        raw
    }

    /// The current output format (`VIDIOC_G_FMT`).
    pub fn format(&self) -> io::Result<PixFormat> {
        let mut raw = Self::raw_format(PixFormat::default());
        // SAFETY: valid fd, kernel layout.
        unsafe { ioctls::g_fmt(self.file.as_raw_fd(), &mut raw) }.map_err(errno)?;
        // SAFETY: the kernel filled the `pix` member for a single-planar buffer type.
        Ok(unsafe { raw.fmt.pix })
    }

    /// Sets the output format (`VIDIOC_S_FMT`); returns what the driver made of it. A driver
    /// may return another format than asked for (v4l2loopback does when the format is fixed
    /// by a reader, or clamps the size to its `max_width`/`max_height`): compare.
    pub fn set_format(&self, fourcc: u32, width: u32, height: u32) -> io::Result<PixFormat> {
        let mut raw = Self::raw_format(PixFormat {
            width,
            height,
            pixelformat: fourcc,
            field: FIELD_NONE,
            colorspace: COLORSPACE_SRGB,
            ..Default::default()
        });
        // SAFETY: valid fd, kernel layout.
        unsafe { ioctls::s_fmt(self.file.as_raw_fd(), &mut raw) }.map_err(errno)?;
        // SAFETY: single-planar buffer type.
        Ok(unsafe { raw.fmt.pix })
    }

    /// The fourccs the output side enumerates (`VIDIOC_ENUM_FMT`). v4l2loopback lists its whole
    /// table while the format is free and only the fixed format once a writer or reader holds it.
    pub fn output_formats(&self) -> io::Result<Vec<u32>> {
        let mut out = Vec::new();
        for index in 0..256 {
            let mut raw: RawFmtDesc = unsafe { std::mem::zeroed() };
            raw.index = index;
            raw.type_ = BUF_TYPE_VIDEO_OUTPUT;
            // SAFETY: valid fd, kernel layout.
            match unsafe { ioctls::enum_fmt(self.file.as_raw_fd(), &mut raw) } {
                Ok(_) => out.push(raw.pixelformat),
                Err(nix::errno::Errno::EINVAL) if index > 0 => break,
                Err(e) => return Err(errno(e)),
            }
        }
        Ok(out)
    }

    /// The format the device is fixed to by another user (a streaming reader, another writer or
    /// `keep_format`), if any: v4l2loopback then enumerates that single format only.
    pub fn locked_format(&self) -> io::Result<Option<PixFormat>> {
        let formats = self.output_formats()?;
        if formats.len() == 1 {
            Ok(Some(self.format()?))
        } else {
            Ok(None)
        }
    }

    /// Sets the frame interval the readers see (`VIDIOC_S_PARM`, output side).
    pub fn set_frame_rate(&self, num: u32, den: u32) -> io::Result<()> {
        let mut raw = RawStreamParm {
            type_: BUF_TYPE_VIDEO_OUTPUT,
            parm: RawStreamParmUnion { raw: [0; 200] },
        };
        raw.parm.output = OutputParm {
            capability: CAP_TIMEPERFRAME,
            timeperframe: Fract {
                numerator: den,
                denominator: num,
            },
            ..Default::default()
        };
        // SAFETY: valid fd, kernel layout.
        unsafe { ioctls::s_parm(self.file.as_raw_fd(), &mut raw) }.map_err(errno)?;
        Ok(())
    }
}

/// A v4l2loopback device found by scanning `/dev/video*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDevice {
    pub path: PathBuf,
    pub caps: Capability,
}

/// All v4l2loopback devices, in device-number order (devices that cannot be opened are skipped).
pub fn list_loopback_devices() -> Vec<FoundDevice> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let n = name.strip_prefix("video")?.parse::<u32>().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
        .into_iter()
        .filter_map(|(_, path)| {
            let dev = LoopbackDevice::open(&path).ok()?;
            let caps = dev.query_capability().ok()?;
            caps.is_loopback().then_some(FoundDevice { path, caps })
        })
        .collect()
}

/// The version of the loaded v4l2loopback module (`/sys/module/v4l2loopback/version`);
/// 0.12.x does not publish one (`"< 0.13"`); `None` when the module is not loaded.
pub fn module_version() -> Option<String> {
    match std::fs::read_to_string("/sys/module/v4l2loopback/version") {
        Ok(s) => Some(s.trim().to_string()),
        Err(_) if Path::new("/sys/module/v4l2loopback").exists() => Some("< 0.13".to_string()),
        Err(_) => None,
    }
}

/// The `modprobe` line that creates a suitable device (what to tell users of 0.12.x).
pub fn modprobe_hint(video_nr: u32, label: &str) -> String {
    format!(
        "sudo modprobe v4l2loopback devices=1 video_nr={video_nr} card_label=\"{label}\" \
         exclusive_caps=1"
    )
}

/// Why a device cannot be used as a loopback output, with the fix.
#[derive(Debug)]
pub enum DeviceProblem {
    Missing,
    /// The node exists but no device answers behind it (ENXIO / ENODEV).
    NoDevice,
    PermissionDenied,
    NotCharDevice,
    NotV4l2,
    NotLoopback {
        caps: Capability,
    },
    /// A loopback device that does not accept output right now (exclusive_caps=1 while another
    /// writer streams to it).
    NoOutput {
        caps: Capability,
    },
    Other(io::Error),
}

impl DeviceProblem {
    /// The message for `path`: what is wrong and what to do.
    pub fn message(&self, path: &Path) -> String {
        let p = path.display();
        let load = modprobe_hint(10, "vcambridge");
        match self {
            DeviceProblem::Missing => format!(
                "{p} does not exist: the v4l2loopback module is not loaded or has no such device. \
                 Load it with `{load}` (then use device=/dev/video10), or with v4l2loopback >= 0.13 \
                 set create=true"
            ),
            DeviceProblem::NoDevice => format!(
                "{p} exists but no device answers behind it (the driver was unloaded or it is not \
                 a video device, e.g. a terminal); pick the v4l2loopback device \
                 (v4l2-ctl --list-devices) or load the module with `{load}`"
            ),
            DeviceProblem::PermissionDenied => format!(
                "permission denied opening {p}: add your user to the 'video' group \
                 (sudo usermod -aG video $USER, then log in again) or make the device writable"
            ),
            DeviceProblem::NotCharDevice => {
                format!("{p} is not a device node (expected a v4l2loopback /dev/videoN)")
            }
            DeviceProblem::NotV4l2 => format!(
                "{p} is not a V4L2 video device (VIDIOC_QUERYCAP failed); pick the v4l2loopback \
                 device (v4l2-ctl --list-devices)"
            ),
            DeviceProblem::NotLoopback { caps } => {
                let kind = if caps.can_capture() && !caps.can_output() {
                    "a capture-only device"
                } else {
                    "not a v4l2loopback device"
                };
                format!(
                    "{p} is {kind} (driver '{}', card '{}'): v4l2loopsink writes to v4l2loopback \
                     output devices only; pick one with `v4l2-ctl --list-devices` or load the module \
                     with `{load}`",
                    caps.driver, caps.card
                )
            }
            DeviceProblem::NoOutput { caps } => format!(
                "{p} (v4l2loopback '{}') does not accept output right now: another writer is \
                 streaming to it (with exclusive_caps=1 the device then offers capture only). Stop \
                 the other writer or use another loopback device",
                caps.card
            ),
            DeviceProblem::Other(e) => format!("cannot use {p}: {e}"),
        }
    }
}

impl From<io::Error> for DeviceProblem {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOENT) => DeviceProblem::Missing,
            Some(libc::ENODEV) | Some(libc::ENXIO) => DeviceProblem::NoDevice,
            Some(libc::EACCES) | Some(libc::EPERM) => DeviceProblem::PermissionDenied,
            _ => DeviceProblem::Other(e),
        }
    }
}

/// Opens `path` and checks that it is a v4l2loopback device that accepts output now.
pub fn open_output(path: &Path) -> Result<(LoopbackDevice, Capability), DeviceProblem> {
    let meta = std::fs::metadata(path)?;
    if !meta.file_type().is_char_device() {
        return Err(DeviceProblem::NotCharDevice);
    }
    let dev = LoopbackDevice::open(path)?;
    let caps = match dev.query_capability() {
        Ok(c) => c,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) => {
            return Err(DeviceProblem::NotV4l2);
        }
        Err(e) => return Err(e.into()),
    };
    if !caps.is_loopback() {
        return Err(DeviceProblem::NotLoopback { caps });
    }
    if !caps.can_output() {
        return Err(DeviceProblem::NoOutput { caps });
    }
    Ok((dev, caps))
}

/// How long a format change waits for the device to offer output again after the sink let go.
pub const REOPEN_GRACE: Duration = Duration::from_secs(2);

/// The format v4l2loopback has fixed on `path` (fourcc, width, height), read from sysfs
/// (`/sys/class/video4linux/videoN/format`, "YUYV:320x240@15", empty while none is fixed) —
/// without opening the device. `None` if the attribute cannot be read or parsed.
pub fn fixed_format(path: &Path) -> Option<Option<(u32, u32, u32)>> {
    let node = std::fs::canonicalize(path).ok()?;
    let name = node.file_name()?.to_str()?;
    let text = std::fs::read_to_string(format!("/sys/class/video4linux/{name}/format")).ok()?;
    parse_sysfs_format(&text)
}

fn parse_sysfs_format(text: &str) -> Option<Option<(u32, u32, u32)>> {
    let text = text.trim_end_matches('\n');
    if text.trim().is_empty() {
        return Some(None);
    }
    let (fourcc, rest) = text.split_once(':')?;
    let code: [u8; 4] = fourcc.as_bytes().try_into().ok()?;
    let size = rest.split('@').next()?;
    let (w, h) = size.split_once('x')?;
    Some(Some((
        u32::from_le_bytes(code),
        w.trim().parse().ok()?,
        h.trim().parse().ok()?,
    )))
}

/// Opens `path` again for a format change, checked like [`open_output`]. v4l2loopback releases
/// a writer's format (and its claim on the output side) only when the writer's file is closed:
/// the caller drops its [`LoopbackDevice`] (and the [`OutputStream`](super::OutputStream) on
/// it) first.
///
/// Two transient states are waited out, for up to `grace` ([`REOPEN_GRACE`]) in all, each
/// woken when someone closes the node (inotify `IN_CLOSE`; rechecked every 100 ms should an
/// event be missed):
/// - the format just released (`released`: fourcc, width, height) is still fixed. 0.12.x frees
///   it only when *every* file on the device is closed, so anyone who merely has the node open
///   at that moment — a reader that is exiting, `v4l2-ctl`, a program listing cameras — keeps
///   our old format. This is watched in sysfs
///   ([`fixed_format`]), not by opening the device: on 0.12.x a close of ours racing another
///   file's last close can free the driver's buffers twice (a kernel BUG in
///   `v4l2_loopback_close`), so the wait opens nothing. Without the sysfs attribute it is not
///   waited for.
/// - with exclusive_caps=1 the device offers output only while no writer is attached —
///   another writer streaming, or the previous writer's file still open elsewhere (a forked
///   child, a descriptor passed on).
///
/// After `grace` the device is opened as it is and the caller's `VIDIOC_S_FMT` reports what
/// holds it. Blocks: never call it with a lock held that other threads need.
pub fn reopen_output(
    path: &Path,
    grace: Duration,
    released: Option<(u32, u32, u32)>,
) -> Result<(LoopbackDevice, Capability), DeviceProblem> {
    let deadline = Instant::now() + grace;
    let watch = NodeWatch::new(
        path,
        AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_CLOSE_NOWRITE,
    );
    let wait = |step_from: Instant| {
        let step = deadline
            .saturating_duration_since(step_from)
            .min(Duration::from_millis(100));
        match &watch {
            Some(w) => {
                w.wait(step);
            }
            None => std::thread::sleep(step),
        }
    };
    if let Some(ours) = released {
        while Instant::now() < deadline && fixed_format(path) == Some(Some(ours)) {
            wait(Instant::now());
        }
    }
    loop {
        match open_output(path) {
            Ok(opened) => return Ok(opened),
            Err(DeviceProblem::NoOutput { .. }) if Instant::now() < deadline => {
                // Our own probe just closed the node: that event is not the one awaited.
                if let Some(w) = &watch {
                    w.drain();
                }
                wait(Instant::now());
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_format_parses_both_module_versions_output() {
        let yuyv = u32::from_le_bytes(*b"YUYV");
        assert_eq!(
            parse_sysfs_format("YUYV:320x240@15\n"),
            Some(Some((yuyv, 320, 240)))
        );
        assert_eq!(
            parse_sysfs_format("YU12:1280x720@30000/1001\n"),
            Some(Some((u32::from_le_bytes(*b"YU12"), 1280, 720)))
        );
        assert_eq!(
            parse_sysfs_format("Y16 :64x48@30\n"),
            Some(Some((u32::from_le_bytes(*b"Y16 "), 64, 48)))
        );
        assert_eq!(parse_sysfs_format(""), Some(None));
        assert_eq!(parse_sysfs_format("\n"), Some(None));
        assert_eq!(parse_sysfs_format("garbage"), None);
        assert_eq!(parse_sysfs_format("YUYV:axb@1"), None);
    }

    #[test]
    fn problem_messages_name_device_and_fix() {
        let p = Path::new("/dev/video10");
        let m = DeviceProblem::NoDevice.message(p);
        assert!(
            m.starts_with("/dev/video10 exists but no device answers behind it"),
            "{m}"
        );
        let m = DeviceProblem::Missing.message(p);
        assert!(m.starts_with("/dev/video10 does not exist"), "{m}");
        assert!(
            m.contains("modprobe v4l2loopback devices=1 video_nr=10"),
            "{m}"
        );
        assert!(m.contains("exclusive_caps=1"), "{m}");
        let m = DeviceProblem::PermissionDenied.message(p);
        assert!(m.contains("permission denied opening /dev/video10"), "{m}");
        assert!(m.contains("video' group"), "{m}");
        let caps = Capability {
            driver: "vivid".into(),
            card: "vivid".into(),
            bus_info: String::new(),
            device_caps: CAP_VIDEO_CAPTURE | CAP_STREAMING,
        };
        let m = DeviceProblem::NotLoopback { caps: caps.clone() }.message(p);
        assert!(
            m.contains("is a capture-only device (driver 'vivid'"),
            "{m}"
        );
        let m = DeviceProblem::NoOutput { caps }.message(p);
        assert!(m.contains("another writer"), "{m}");
        let e = io::Error::from_raw_os_error(libc::EACCES);
        assert!(matches!(
            DeviceProblem::from(e),
            DeviceProblem::PermissionDenied
        ));
    }

    #[test]
    fn opening_a_missing_or_non_v4l2_path_is_precise() {
        let e = open_output(Path::new("/dev/video-does-not-exist")).unwrap_err();
        assert!(matches!(e, DeviceProblem::Missing), "{e:?}");
        let e = open_output(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(e, DeviceProblem::NotV4l2), "{e:?}");
        let dir = std::env::temp_dir();
        let e = open_output(&dir).unwrap_err();
        assert!(matches!(e, DeviceProblem::NotCharDevice), "{e:?}");
    }
}
