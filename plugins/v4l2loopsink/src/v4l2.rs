// SPDX-License-Identifier: MPL-2.0
//! The V4L2 / v4l2loopback side of `v4l2loopsink`, in plain Rust (no GStreamer types).
//!
//! * [`FormatInfo`] maps GStreamer video format names to V4L2 fourccs and [`FrameLayout`]
//!   computes plane offsets, strides and the exact frame size (`bytesused`) the way V4L2 readers
//!   expect them (v4l2loopback pads its buffers to whole pages; readers such as ffmpeg drop frames
//!   whose `bytesused` is not the exact image size).
//! * [`LoopbackDevice`] owns the file descriptor of a `/dev/videoN` node and wraps the ioctls the
//!   writer needs, `io::Result` everywhere.
//! * [`OutputStream`] is the mmap streaming output: buffers requested after the format is set,
//!   mapped once, reused round-robin, one copy per frame.
//! * [`ControlDevice`] is v4l2loopback ≥ 0.13's `/dev/v4l2loopback` (add / remove / query).
//! * [`DeviceProblem`] turns open/probe failures into one precise, actionable message each.

use std::ffi::CStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::Duration;

/// Packs four ASCII characters into a V4L2 fourcc.
pub const fn fourcc(c: &[u8; 4]) -> u32 {
    (c[0] as u32) | ((c[1] as u32) << 8) | ((c[2] as u32) << 16) | ((c[3] as u32) << 24)
}

/// Renders a fourcc as its four characters (`YUYV`).
pub fn fourcc_str(code: u32) -> String {
    code.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// How the pixels of a format are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One plane, `bytes_per_pixel` bytes per pixel (RGB, GRAY8).
    Packed { bytes_per_pixel: u32 },
    /// One plane of 4:2:2 macro-pixels (2 bytes per pixel, even width).
    Packed422,
    /// Three planes Y, C, C at 4:2:0 (I420, YV12), chroma stride half the luma stride.
    Planar420,
    /// Two planes Y, CbCr interleaved at 4:2:0 (NV12).
    SemiPlanar420,
}

/// One pixel format both GStreamer and v4l2loopback (and its readers) handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatInfo {
    /// The GStreamer name (`GstVideoFormat` string, as in caps).
    pub gst_name: &'static str,
    /// The V4L2 pixel format.
    pub fourcc: u32,
    pub layout: Layout,
    /// Byte order of the components for packed formats, used to paint placeholder colours:
    /// `Y`, `U`, `V` (luma/chroma), `R`, `G`, `B`, `x` (padding, 0xff).
    pub components: &'static str,
}

/// The formats `v4l2loopsink` offers, in preference order (the caps template follows it).
pub const FORMATS: &[FormatInfo] = &[
    FormatInfo {
        gst_name: "YUY2",
        fourcc: fourcc(b"YUYV"),
        layout: Layout::Packed422,
        components: "YUYV",
    },
    FormatInfo {
        gst_name: "UYVY",
        fourcc: fourcc(b"UYVY"),
        layout: Layout::Packed422,
        components: "UYVY",
    },
    FormatInfo {
        gst_name: "I420",
        fourcc: fourcc(b"YU12"),
        layout: Layout::Planar420,
        components: "YUV",
    },
    FormatInfo {
        gst_name: "YV12",
        fourcc: fourcc(b"YV12"),
        layout: Layout::Planar420,
        components: "YVU",
    },
    FormatInfo {
        gst_name: "NV12",
        fourcc: fourcc(b"NV12"),
        layout: Layout::SemiPlanar420,
        components: "YUV",
    },
    FormatInfo {
        gst_name: "BGRx",
        fourcc: fourcc(b"BGR4"),
        layout: Layout::Packed { bytes_per_pixel: 4 },
        components: "BGRx",
    },
    FormatInfo {
        gst_name: "xRGB",
        fourcc: fourcc(b"RGB4"),
        layout: Layout::Packed { bytes_per_pixel: 4 },
        components: "xRGB",
    },
    FormatInfo {
        gst_name: "RGB",
        fourcc: fourcc(b"RGB3"),
        layout: Layout::Packed { bytes_per_pixel: 3 },
        components: "RGB",
    },
    FormatInfo {
        gst_name: "BGR",
        fourcc: fourcc(b"BGR3"),
        layout: Layout::Packed { bytes_per_pixel: 3 },
        components: "BGR",
    },
    FormatInfo {
        gst_name: "GRAY8",
        fourcc: fourcc(b"GREY"),
        layout: Layout::Packed { bytes_per_pixel: 1 },
        components: "Y",
    },
];

impl FormatInfo {
    /// The format with this GStreamer name.
    pub fn from_gst_name(name: &str) -> Option<&'static FormatInfo> {
        FORMATS.iter().find(|f| f.gst_name == name)
    }

    /// The format with this V4L2 fourcc.
    pub fn from_fourcc(code: u32) -> Option<&'static FormatInfo> {
        FORMATS.iter().find(|f| f.fourcc == code)
    }

    /// `YUYV (YUY2)`: how formats are named in messages.
    pub fn describe(&self) -> String {
        format!("{} ({})", fourcc_str(self.fourcc), self.gst_name)
    }

    /// The smallest `bytesperline` of the first plane for this width.
    pub fn min_bytes_per_line(&self, width: u32) -> u32 {
        match self.layout {
            Layout::Packed { bytes_per_pixel } => width * bytes_per_pixel,
            Layout::Packed422 => width * 2,
            Layout::Planar420 | Layout::SemiPlanar420 => width,
        }
    }

    /// Checks the size constraints of the format (chroma subsampling needs even sizes; browsers
    /// refuse odd sizes for 4:2:0 anyway). The error says what to change.
    pub fn check_size(&self, width: u32, height: u32) -> Result<(), String> {
        if width == 0 || height == 0 {
            return Err(format!("invalid frame size {width}x{height}"));
        }
        let (even_w, even_h) = match self.layout {
            Layout::Packed { .. } => (false, false),
            Layout::Packed422 => (true, false),
            Layout::Planar420 | Layout::SemiPlanar420 => (true, true),
        };
        if even_w && !width.is_multiple_of(2) {
            return Err(format!(
                "odd width {width}: {} needs an even width (V4L2 readers and browsers refuse odd \
                 widths); scale to {}x{height} (videoscale ! video/x-raw,width={}) or pick a \
                 packed RGB format",
                self.describe(),
                width + 1,
                width + 1
            ));
        }
        if even_h && !height.is_multiple_of(2) {
            return Err(format!(
                "odd height {height}: {} needs an even height; scale to {width}x{} \
                 (videoscale ! video/x-raw,height={})",
                self.describe(),
                height + 1,
                height + 1
            ));
        }
        Ok(())
    }
}

/// One plane of a V4L2 single-buffer frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneLayout {
    /// Offset of the plane from the start of the frame.
    pub offset: usize,
    /// Bytes from one row to the next.
    pub stride: usize,
    /// Bytes of pixel data in a row (≤ stride).
    pub row_bytes: usize,
    /// Number of rows.
    pub rows: usize,
}

/// Where the planes of a frame are in a V4L2 buffer, and its exact size (`bytesused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameLayout {
    pub format: &'static FormatInfo,
    pub width: u32,
    pub height: u32,
    pub planes: Vec<PlaneLayout>,
    /// The exact image size: what `bytesused` must say (never the page-rounded buffer length).
    pub size: usize,
}

impl FrameLayout {
    /// The layout for `bytes_per_line` (0 = the tightest, as v4l2loopback computes it).
    pub fn new(
        format: &'static FormatInfo,
        width: u32,
        height: u32,
        bytes_per_line: u32,
    ) -> FrameLayout {
        let bpl = bytes_per_line.max(format.min_bytes_per_line(width)) as usize;
        let (w, h) = (width as usize, height as usize);
        let planes = match format.layout {
            Layout::Packed { bytes_per_pixel } => vec![PlaneLayout {
                offset: 0,
                stride: bpl,
                row_bytes: w * bytes_per_pixel as usize,
                rows: h,
            }],
            Layout::Packed422 => vec![PlaneLayout {
                offset: 0,
                stride: bpl,
                row_bytes: w * 2,
                rows: h,
            }],
            Layout::Planar420 => {
                let (cw, ch, cs) = (w.div_ceil(2), h.div_ceil(2), bpl / 2);
                vec![
                    PlaneLayout {
                        offset: 0,
                        stride: bpl,
                        row_bytes: w,
                        rows: h,
                    },
                    PlaneLayout {
                        offset: bpl * h,
                        stride: cs,
                        row_bytes: cw,
                        rows: ch,
                    },
                    PlaneLayout {
                        offset: bpl * h + cs * ch,
                        stride: cs,
                        row_bytes: cw,
                        rows: ch,
                    },
                ]
            }
            Layout::SemiPlanar420 => vec![
                PlaneLayout {
                    offset: 0,
                    stride: bpl,
                    row_bytes: w,
                    rows: h,
                },
                PlaneLayout {
                    offset: bpl * h,
                    stride: bpl,
                    row_bytes: 2 * w.div_ceil(2),
                    rows: h.div_ceil(2),
                },
            ],
        };
        let size = planes
            .iter()
            .map(|p| p.offset + p.stride * p.rows)
            .max()
            .unwrap_or(0);
        FrameLayout {
            format,
            width,
            height,
            planes,
            size,
        }
    }

    /// `YUYV (YUY2) 320x240`.
    pub fn describe(&self) -> String {
        format!("{} {}x{}", self.format.describe(), self.width, self.height)
    }

    /// Copies a frame given as `(plane data, stride)` per plane into `dst` (the V4L2 buffer),
    /// row by row where strides differ, one `memcpy` per plane where they match.
    pub fn copy_into(&self, src: &[(&[u8], usize)], dst: &mut [u8]) -> Result<(), String> {
        if src.len() != self.planes.len() {
            return Err(format!(
                "{} planes given, {} has {}",
                src.len(),
                self.describe(),
                self.planes.len()
            ));
        }
        if dst.len() < self.size {
            return Err(format!(
                "buffer of {} bytes is smaller than the frame ({} bytes)",
                dst.len(),
                self.size
            ));
        }
        for (plane, &(data, stride)) in self.planes.iter().zip(src) {
            let needed = stride * (plane.rows - 1) + plane.row_bytes;
            if stride < plane.row_bytes || data.len() < needed {
                return Err(format!(
                    "plane of {} bytes (stride {stride}) too small for {} rows of {} bytes",
                    data.len(),
                    plane.rows,
                    plane.row_bytes
                ));
            }
            let out = &mut dst[plane.offset..plane.offset + plane.stride * plane.rows];
            if stride == plane.stride && data.len() >= plane.stride * plane.rows {
                out.copy_from_slice(&data[..plane.stride * plane.rows]);
            } else {
                for row in 0..plane.rows {
                    let s = &data[row * stride..row * stride + plane.row_bytes];
                    out[row * plane.stride..row * plane.stride + plane.row_bytes]
                        .copy_from_slice(s);
                }
            }
        }
        Ok(())
    }

    /// A frame of one solid colour (`0xRRGGBB`) in this layout (BT.601 limited range for YUV).
    pub fn solid_color(&self, rgb: u32) -> Vec<u8> {
        let (r, g, b) = (
            ((rgb >> 16) & 0xff) as i32,
            ((rgb >> 8) & 0xff) as i32,
            (rgb & 0xff) as i32,
        );
        let y = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
        let u = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128) as u8;
        let v = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128) as u8;
        let gray = ((77 * r + 150 * g + 29 * b + 128) >> 8) as u8;
        let value = |c: char| match c {
            'Y' if self.format.components == "Y" => gray,
            'Y' => y,
            'U' => u,
            'V' => v,
            'R' => r as u8,
            'G' => g as u8,
            'B' => b as u8,
            _ => 0xff,
        };
        let mut out = vec![0u8; self.size];
        match self.format.layout {
            Layout::Packed { .. } | Layout::Packed422 => {
                let pattern: Vec<u8> = self.format.components.chars().map(value).collect();
                let p = self.planes[0];
                for row in 0..p.rows {
                    let line = &mut out[p.offset + row * p.stride..][..p.row_bytes];
                    for (i, byte) in line.iter_mut().enumerate() {
                        *byte = pattern[i % pattern.len()];
                    }
                }
            }
            Layout::Planar420 => {
                let comps: Vec<u8> = self.format.components.chars().map(value).collect();
                for (p, c) in self.planes.iter().zip(comps) {
                    out[p.offset..p.offset + p.stride * p.rows].fill(c);
                }
            }
            Layout::SemiPlanar420 => {
                let p0 = self.planes[0];
                out[p0.offset..p0.offset + p0.stride * p0.rows].fill(y);
                let p1 = self.planes[1];
                for (i, byte) in out[p1.offset..p1.offset + p1.stride * p1.rows]
                    .iter_mut()
                    .enumerate()
                {
                    *byte = if i % 2 == 0 { u } else { v };
                }
            }
        }
        out
    }
}

/// Parses a placeholder colour: `#rrggbb`, `0xrrggbb`, `rrggbb` or a few names.
pub fn parse_color(s: &str) -> Option<u32> {
    let s = s.trim();
    let named = match s.to_ascii_lowercase().as_str() {
        "black" => Some(0x000000),
        "white" => Some(0xffffff),
        "gray" | "grey" => Some(0x808080),
        "red" => Some(0xff0000),
        "green" => Some(0x00ff00),
        "blue" => Some(0x0000ff),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    let hex = s
        .strip_prefix('#')
        .or_else(|| s.strip_prefix("0x"))
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        u32::from_str_radix(hex, 16).ok()
    } else {
        None
    }
}

// ------------------------------------------------------------------------------------------------
// Kernel ABI (linux/videodev2.h, x86_64 / aarch64 layouts)

/// `V4L2_BUF_TYPE_VIDEO_OUTPUT`
pub const BUF_TYPE_VIDEO_OUTPUT: u32 = 2;
/// `V4L2_MEMORY_MMAP`
const MEMORY_MMAP: u32 = 1;
/// `V4L2_FIELD_NONE`
const FIELD_NONE: u32 = 1;
/// `V4L2_COLORSPACE_SRGB`
const COLORSPACE_SRGB: u32 = 8;
pub const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
pub const CAP_VIDEO_OUTPUT: u32 = 0x0000_0002;
pub const CAP_VIDEO_CAPTURE_MPLANE: u32 = 0x0000_1000;
pub const CAP_VIDEO_OUTPUT_MPLANE: u32 = 0x0000_2000;
pub const CAP_STREAMING: u32 = 0x0400_0000;
pub const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
/// `V4L2_CAP_TIMEPERFRAME`
const CAP_TIMEPERFRAME: u32 = 0x1000;

/// The `driver` name v4l2loopback reports in `VIDIOC_QUERYCAP`.
pub const LOOPBACK_DRIVER: &str = "v4l2 loopback";

#[repr(C)]
#[derive(Clone, Copy)]
struct RawCapability {
    driver: [u8; 16],
    card: [u8; 32],
    bus_info: [u8; 32],
    version: u32,
    capabilities: u32,
    device_caps: u32,
    reserved: [u32; 3],
}

/// `struct v4l2_pix_format`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PixFormat {
    pub width: u32,
    pub height: u32,
    pub pixelformat: u32,
    pub field: u32,
    pub bytesperline: u32,
    pub sizeimage: u32,
    pub colorspace: u32,
    pub priv_: u32,
    pub flags: u32,
    pub ycbcr_enc: u32,
    pub quantization: u32,
    pub xfer_func: u32,
}

impl PixFormat {
    /// `YUYV (YUY2) 320x240` (or the bare fourcc for formats we do not map).
    pub fn describe(&self) -> String {
        match FormatInfo::from_fourcc(self.pixelformat) {
            Some(f) => format!("{} {}x{}", f.describe(), self.width, self.height),
            None => format!(
                "{} {}x{}",
                fourcc_str(self.pixelformat),
                self.width,
                self.height
            ),
        }
    }
}

/// `struct v4l2_format`: the union holds pointers on other members, hence 8-byte alignment.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawFormat {
    type_: u32,
    _pad: u32,
    fmt: RawFormatUnion,
}

#[repr(C)]
#[derive(Clone, Copy)]
union RawFormatUnion {
    pix: PixFormat,
    raw: [u8; 200],
    _align: [u64; 25],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Fract {
    numerator: u32,
    denominator: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct OutputParm {
    capability: u32,
    outputmode: u32,
    timeperframe: Fract,
    extendedmode: u32,
    writebuffers: u32,
    reserved: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawStreamParm {
    type_: u32,
    parm: RawStreamParmUnion,
}

#[repr(C)]
#[derive(Clone, Copy)]
union RawStreamParmUnion {
    output: OutputParm,
    raw: [u8; 200],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RequestBuffers {
    count: u32,
    type_: u32,
    memory: u32,
    capabilities: u32,
    flags: u8,
    reserved: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Timecode {
    type_: u32,
    flags: u32,
    frames: u8,
    seconds: u8,
    minutes: u8,
    hours: u8,
    userbits: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawBuffer {
    index: u32,
    type_: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    timestamp: libc::timeval,
    timecode: Timecode,
    sequence: u32,
    memory: u32,
    /// union { offset; userptr; planes; fd }
    m: u64,
    length: u32,
    reserved2: u32,
    request_fd: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawFmtDesc {
    index: u32,
    type_: u32,
    flags: u32,
    description: [u8; 32],
    pixelformat: u32,
    mbus_code: u32,
    reserved: [u32; 3],
}

mod ioctls {
    use super::*;
    nix::ioctl_read!(querycap, b'V', 0, RawCapability);
    nix::ioctl_readwrite!(enum_fmt, b'V', 2, RawFmtDesc);
    nix::ioctl_readwrite!(g_fmt, b'V', 4, RawFormat);
    nix::ioctl_readwrite!(s_fmt, b'V', 5, RawFormat);
    nix::ioctl_readwrite!(reqbufs, b'V', 8, RequestBuffers);
    nix::ioctl_readwrite!(querybuf, b'V', 9, RawBuffer);
    nix::ioctl_readwrite!(qbuf, b'V', 15, RawBuffer);
    nix::ioctl_write_ptr!(streamon, b'V', 18, libc::c_int);
    nix::ioctl_write_ptr!(streamoff, b'V', 19, libc::c_int);
    nix::ioctl_readwrite!(s_parm, b'V', 22, RawStreamParm);
    // v4l2loopback.h (0.13): plain numbers, not _IOWR-encoded.
    nix::ioctl_readwrite_bad!(loopback_ctl_add, 0x4C80, LoopbackConfig);
    nix::ioctl_write_int_bad!(loopback_ctl_remove, 0x4C81);
    nix::ioctl_readwrite_bad!(loopback_ctl_query, 0x4C82, LoopbackConfig);
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn cstr(bytes: &[u8]) -> String {
    CStr::from_bytes_until_nul(bytes)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

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
    path: PathBuf,
    file: File,
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

impl LoopbackDevice {
    /// Closes the device and opens it again as a new opener, checked like [`open_output`]:
    /// v4l2loopback releases a writer's format (and its claim on the output side) only when the
    /// writer's file is closed, so a format change needs a fresh open after the close.
    ///
    /// With exclusive_caps=1 the device offers output again only once every opener has let go;
    /// a reader that has just stopped may still hold it for a moment, so "no output" is retried
    /// for up to [`REOPEN_GRACE`].
    pub fn reopen_output(&mut self) -> Result<Capability, DeviceProblem> {
        let placeholder = File::open("/dev/null")?;
        drop(std::mem::replace(&mut self.file, placeholder));
        let deadline = std::time::Instant::now() + REOPEN_GRACE;
        loop {
            match open_output(&self.path) {
                Ok((dev, caps)) => {
                    self.file = dev.file;
                    return Ok(caps);
                }
                Err(DeviceProblem::NoOutput { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A CLOCK_MONOTONIC time as a `timeval` (the clock V4L2 buffer timestamps use).
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct MappedBuffer {
    ptr: NonNull<u8>,
    length: usize,
}

// SAFETY: the mapping is plain shared memory owned by the `OutputStream`; access is through
// `&mut OutputStream`.
unsafe impl Send for MappedBuffer {}

impl Drop for MappedBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`length` come from a successful mmap and are unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.length);
        }
    }
}

/// mmap streaming output on a [`LoopbackDevice`] whose format is set: the buffers are requested
/// after `VIDIOC_S_FMT` (v4l2loopback sizes them from the format), mapped once and reused
/// round-robin.
pub struct OutputStream {
    /// A duplicate of the device's fd (same open file, so the same v4l2loopback opener).
    dev: LoopbackDevice,
    buffers: Vec<MappedBuffer>,
    /// Sequence number of the next frame (selects the buffer).
    next: usize,
    /// A dequeued buffer whose frame was not written (reused by the next write).
    spare: Option<usize>,
    layout: FrameLayout,
    streaming: bool,
}

impl fmt::Debug for OutputStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputStream")
            .field("dev", &self.dev.path)
            .field("buffers", &self.buffers.len())
            .field("layout", &self.layout.describe())
            .finish()
    }
}

impl OutputStream {
    /// Requests up to `count` buffers, maps them and starts streaming. With exclusive_caps=1
    /// the device announces capture from here on.
    pub fn start(
        dev: &LoopbackDevice,
        layout: FrameLayout,
        count: u32,
    ) -> io::Result<OutputStream> {
        let dev = LoopbackDevice {
            path: dev.path.clone(),
            file: dev.file.try_clone()?,
        };
        let mut req = RequestBuffers {
            count,
            type_: BUF_TYPE_VIDEO_OUTPUT,
            memory: MEMORY_MMAP,
            ..Default::default()
        };
        let fd = dev.file.as_raw_fd();
        // SAFETY: valid fd, kernel layout.
        if let Err(e) = unsafe { ioctls::reqbufs(fd, &mut req) } {
            return Err(errno(e));
        }
        if req.count == 0 {
            return Err(io::Error::other(
                "the driver granted no buffers (VIDIOC_REQBUFS)",
            ));
        }
        let mut buffers = Vec::new();
        for index in 0..req.count {
            let mut b = RawBuffer {
                index,
                type_: BUF_TYPE_VIDEO_OUTPUT,
                memory: MEMORY_MMAP,
                ..Default::default()
            };
            // SAFETY: valid fd, kernel layout.
            if let Err(e) = unsafe { ioctls::querybuf(fd, &mut b) } {
                return Err(errno(e));
            }
            let length = b.length as usize;
            if length < layout.size {
                return Err(io::Error::other(format!(
                    "driver buffer of {length} bytes is smaller than a {} frame ({} bytes)",
                    layout.describe(),
                    layout.size
                )));
            }
            // SAFETY: mapping the buffer the driver described, shared, read-write.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    length,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    (b.m & 0xffff_ffff) as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            match NonNull::new(ptr.cast::<u8>()) {
                Some(ptr) => buffers.push(MappedBuffer { ptr, length }),
                None => return Err(io::Error::other("mmap returned NULL")),
            }
        }
        let ty: libc::c_int = BUF_TYPE_VIDEO_OUTPUT as libc::c_int;
        // SAFETY: valid fd, pointer to the buffer type.
        if let Err(e) = unsafe { ioctls::streamon(fd, &ty) } {
            return Err(errno(e));
        }
        Ok(OutputStream {
            next: 0,
            spare: None,
            buffers,
            dev,
            layout,
            streaming: true,
        })
    }

    pub fn layout(&self) -> &FrameLayout {
        &self.layout
    }

    pub fn buffer_count(&self) -> usize {
        self.buffers.len()
    }

    /// Writes one frame: takes a free buffer, lets `fill` write the image into it (the one
    /// copy), and queues it with `bytesused` = the exact frame size and `timestamp`
    /// (CLOCK_MONOTONIC).
    pub fn write_frame<E>(
        &mut self,
        timestamp: Duration,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, io::Error> {
        let fd = self.dev.file.as_raw_fd();
        // Round-robin, oldest buffer first. v4l2loopback does not track buffer ownership on the
        // output side, and its output VIDIOC_DQBUF hands back the most recently queued buffer
        // (the one readers are about to read); writing the oldest one instead keeps readers off
        // the buffer being written.
        let index = match self.spare.take() {
            Some(i) => i,
            None => {
                let i = self.next % self.buffers.len();
                self.next = self.next.wrapping_add(1);
                i
            }
        };
        let Some(buf) = self.buffers.get(index) else {
            return Err(io::Error::other(format!(
                "driver returned buffer index {index} of {}",
                self.buffers.len()
            )));
        };
        // SAFETY: the mapping is valid for `length` bytes while `self` lives; the driver does not
        // read a buffer we hold (it is dequeued).
        let data = unsafe { std::slice::from_raw_parts_mut(buf.ptr.as_ptr(), buf.length) };
        if let Err(e) = fill(&mut data[..self.layout.size]) {
            // Keep the buffer for the next frame; this one is not shown.
            self.spare = Some(index);
            return Ok(Err(e));
        }
        let mut b = RawBuffer {
            index: index as u32,
            type_: BUF_TYPE_VIDEO_OUTPUT,
            memory: MEMORY_MMAP,
            bytesused: self.layout.size as u32,
            field: FIELD_NONE,
            timestamp: libc::timeval {
                tv_sec: timestamp.as_secs() as libc::time_t,
                tv_usec: timestamp.subsec_micros() as libc::suseconds_t,
            },
            ..Default::default()
        };
        // SAFETY: valid fd, kernel layout.
        unsafe { ioctls::qbuf(fd, &mut b) }.map_err(errno)?;
        Ok(Ok(()))
    }

    fn stop_streaming(&mut self) {
        if !self.streaming {
            return;
        }
        self.streaming = false;
        let fd = self.dev.file.as_raw_fd();
        let ty: libc::c_int = BUF_TYPE_VIDEO_OUTPUT as libc::c_int;
        // SAFETY: valid fd. Errors (device gone) leave nothing to undo.
        let _ = unsafe { ioctls::streamoff(fd, &ty) };
        self.buffers.clear();
        let mut req = RequestBuffers {
            count: 0,
            type_: BUF_TYPE_VIDEO_OUTPUT,
            memory: MEMORY_MMAP,
            ..Default::default()
        };
        // SAFETY: valid fd, kernel layout.
        let _ = unsafe { ioctls::reqbufs(fd, &mut req) };
    }
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        self.stop_streaming();
    }
}

/// `struct v4l2_loopback_config` (v4l2loopback.h, 0.13).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LoopbackConfig {
    pub output_nr: i32,
    pub unused: i32,
    pub card_label: [u8; 32],
    pub min_width: u32,
    pub max_width: u32,
    pub min_height: u32,
    pub max_height: u32,
    pub max_buffers: i32,
    pub max_openers: i32,
    pub debug: i32,
    pub announce_all_caps: i32,
}

impl LoopbackConfig {
    /// A config for `V4L2LOOPBACK_CTL_ADD`: `number` < 0 picks a free one, 0 sizes mean the
    /// driver defaults.
    pub fn new(
        number: i32,
        label: &str,
        exclusive_caps: bool,
        max_width: u32,
        max_height: u32,
    ) -> LoopbackConfig {
        let mut card_label = [0u8; 32];
        let bytes = label.as_bytes();
        let n = bytes.len().min(31);
        card_label[..n].copy_from_slice(&bytes[..n]);
        LoopbackConfig {
            output_nr: number,
            unused: number,
            card_label,
            min_width: 0,
            max_width,
            min_height: 0,
            max_height,
            max_buffers: 0,
            max_openers: 0,
            debug: 0,
            announce_all_caps: if exclusive_caps { 0 } else { 1 },
        }
    }

    pub fn label(&self) -> String {
        cstr(&self.card_label)
    }
}

/// The path of v4l2loopback's control device.
pub const CONTROL_DEVICE: &str = "/dev/v4l2loopback";

/// v4l2loopback ≥ 0.13's control device: creates and removes loopback devices at runtime.
#[derive(Debug)]
pub struct ControlDevice {
    fd: OwnedFd,
}

impl ControlDevice {
    pub fn open() -> io::Result<ControlDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(CONTROL_DEVICE)?;
        Ok(ControlDevice { fd: file.into() })
    }

    /// Creates a device; returns its number (`/dev/video<n>`).
    pub fn add(&self, config: &LoopbackConfig) -> io::Result<u32> {
        let mut c = *config;
        // SAFETY: valid fd, the struct has the driver's layout.
        let n = unsafe { ioctls::loopback_ctl_add(self.fd.as_raw_fd(), &mut c) }.map_err(errno)?;
        Ok(n as u32)
    }

    /// Removes device `number` (EBUSY while anybody has it open).
    pub fn remove(&self, number: u32) -> io::Result<()> {
        // SAFETY: valid fd, integer argument.
        unsafe { ioctls::loopback_ctl_remove(self.fd.as_raw_fd(), number as libc::c_int) }
            .map_err(errno)?;
        Ok(())
    }

    /// The configuration of device `number`.
    pub fn query(&self, number: u32) -> io::Result<LoopbackConfig> {
        let mut c = LoopbackConfig::new(number as i32, "", true, 0, 0);
        c.unused = -1;
        // SAFETY: valid fd, driver layout.
        unsafe { ioctls::loopback_ctl_query(self.fd.as_raw_fd(), &mut c) }.map_err(errno)?;
        Ok(c)
    }
}

/// The number `N` of a `/dev/videoN` path.
pub fn video_number(path: &Path) -> Option<u32> {
    path.file_name()?
        .to_str()?
        .strip_prefix("video")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_sizes_match_videodev2() {
        assert_eq!(std::mem::size_of::<RawCapability>(), 104);
        assert_eq!(std::mem::size_of::<PixFormat>(), 48);
        assert_eq!(std::mem::size_of::<RawFormat>(), 208);
        assert_eq!(std::mem::size_of::<RawStreamParm>(), 204);
        assert_eq!(std::mem::size_of::<RequestBuffers>(), 20);
        assert_eq!(std::mem::size_of::<RawBuffer>(), 88);
        assert_eq!(std::mem::size_of::<RawFmtDesc>(), 64);
        assert_eq!(std::mem::size_of::<LoopbackConfig>(), 72);
        // The encoded request numbers every V4L2 program uses.
        assert_eq!(nix::request_code_readwrite!(b'V', 5, 208), 0xc0d0_5605);
        assert_eq!(nix::request_code_readwrite!(b'V', 15, 88), 0xc058_560f);
        assert_eq!(nix::request_code_read!(b'V', 0, 104), 0x8068_5600);
    }

    #[test]
    fn format_mapping_round_trips() {
        for f in FORMATS {
            assert_eq!(FormatInfo::from_gst_name(f.gst_name), Some(f));
            assert_eq!(FormatInfo::from_fourcc(f.fourcc), Some(f));
        }
        assert_eq!(fourcc_str(fourcc(b"YUYV")), "YUYV");
        assert_eq!(
            FormatInfo::from_gst_name("YUY2").unwrap().fourcc,
            0x5659_5559
        );
        assert_eq!(
            fourcc_str(FormatInfo::from_gst_name("I420").unwrap().fourcc),
            "YU12"
        );
        assert_eq!(
            fourcc_str(FormatInfo::from_gst_name("BGRx").unwrap().fourcc),
            "BGR4"
        );
        assert!(FormatInfo::from_gst_name("P010_10LE").is_none());
    }

    #[test]
    fn frame_sizes_match_the_driver() {
        let f = |n| FormatInfo::from_gst_name(n).unwrap();
        // 320x240 YUY2: 153600 bytes, 37.5 pages (v4l2loopback pads the buffer to 155648).
        let l = FrameLayout::new(f("YUY2"), 320, 240, 0);
        assert_eq!(l.size, 153_600);
        assert_eq!(l.planes[0].stride, 640);
        let l = FrameLayout::new(f("I420"), 320, 180, 320);
        assert_eq!(l.size, 320 * 180 * 3 / 2);
        assert_eq!(l.planes[1].offset, 320 * 180);
        assert_eq!(l.planes[2].offset, 320 * 180 + 160 * 90);
        assert_eq!(l.planes[2].stride, 160);
        let l = FrameLayout::new(f("NV12"), 256, 256, 0);
        assert_eq!(l.size, 256 * 256 * 3 / 2);
        assert_eq!(l.planes[1].row_bytes, 256);
        assert_eq!(FrameLayout::new(f("RGB"), 322, 10, 0).size, 322 * 3 * 10);
        assert_eq!(
            FrameLayout::new(f("BGRx"), 1280, 720, 0).size,
            1280 * 720 * 4
        );
        // A driver stride larger than the tightest one is honoured.
        let l = FrameLayout::new(f("GRAY8"), 10, 4, 16);
        assert_eq!((l.planes[0].stride, l.size), (16, 64));
    }

    #[test]
    fn odd_sizes_are_refused_for_subsampled_formats() {
        let i420 = FormatInfo::from_gst_name("I420").unwrap();
        let e = i420.check_size(321, 240).unwrap_err();
        assert!(e.contains("odd width 321"), "{e}");
        assert!(e.contains("YU12 (I420) needs an even width"), "{e}");
        assert!(e.contains("width=322"), "{e}");
        let nv12 = FormatInfo::from_gst_name("NV12").unwrap();
        assert!(
            nv12.check_size(320, 239)
                .unwrap_err()
                .contains("odd height 239")
        );
        let yuy2 = FormatInfo::from_gst_name("YUY2").unwrap();
        assert!(yuy2.check_size(321, 239).unwrap_err().contains("odd width"));
        assert!(yuy2.check_size(320, 239).is_ok());
        let rgb = FormatInfo::from_gst_name("RGB").unwrap();
        assert!(rgb.check_size(321, 239).is_ok());
    }

    #[test]
    fn copy_repacks_gstreamer_strides() {
        // RGB 3x2: GStreamer pads rows to 4-byte strides (12), V4L2 packs them (9).
        let l = FrameLayout::new(FormatInfo::from_gst_name("RGB").unwrap(), 3, 2, 0);
        let src: Vec<u8> = (0..24).collect();
        let mut dst = vec![0xaa; l.size + 3];
        l.copy_into(&[(&src, 12)], &mut dst).unwrap();
        assert_eq!(
            &dst[..18],
            &[
                0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 13, 14, 15, 16, 17, 18, 19, 20
            ]
        );
        assert_eq!(dst[18], 0xaa);
        // I420 2x2 with matching strides copies plane by plane.
        let l = FrameLayout::new(FormatInfo::from_gst_name("I420").unwrap(), 2, 2, 0);
        let mut dst = vec![0; l.size];
        l.copy_into(&[(&[1, 2, 3, 4], 2), (&[5], 1), (&[6], 1)], &mut dst)
            .unwrap();
        assert_eq!(dst, [1, 2, 3, 4, 5, 6]);
        // Too little data is an error, not a panic.
        assert!(
            l.copy_into(&[(&[1, 2], 2), (&[5], 1), (&[6], 1)], &mut dst)
                .is_err()
        );
        assert!(l.copy_into(&[(&[1, 2, 3, 4], 2)], &mut dst).is_err());
    }

    #[test]
    fn solid_colors() {
        let f = |n| FormatInfo::from_gst_name(n).unwrap();
        let yuy2 = FrameLayout::new(f("YUY2"), 4, 1, 0).solid_color(0xffffff);
        assert_eq!(yuy2, [235, 128, 235, 128, 235, 128, 235, 128]);
        let bgrx = FrameLayout::new(f("BGRx"), 1, 1, 0).solid_color(0x102030);
        assert_eq!(bgrx, [0x30, 0x20, 0x10, 0xff]);
        let i420 = FrameLayout::new(f("I420"), 2, 2, 0).solid_color(0x000000);
        assert_eq!(i420, [16, 16, 16, 16, 128, 128]);
        let nv12 = FrameLayout::new(f("NV12"), 2, 2, 0).solid_color(0x0000ff);
        assert_eq!(&nv12[4..], &[240, 110]);
        assert_eq!(
            FrameLayout::new(f("GRAY8"), 1, 1, 0).solid_color(0xffffff),
            [255]
        );
    }

    #[test]
    fn colors_parse() {
        assert_eq!(parse_color("#00ff80"), Some(0x00ff80));
        assert_eq!(parse_color("0x123456"), Some(0x123456));
        assert_eq!(parse_color("Black"), Some(0));
        assert_eq!(parse_color("/tmp/image.png"), None);
        assert_eq!(parse_color("#12345"), None);
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

    #[test]
    fn loopback_config_layout() {
        let c = LoopbackConfig::new(-1, "a very long label that will be cut off", false, 1920, 0);
        assert_eq!(c.label().len(), 31);
        assert_eq!(c.announce_all_caps, 1);
        assert_eq!(video_number(Path::new("/dev/video12")), Some(12));
        assert_eq!(video_number(Path::new("/dev/null")), None);
    }
}
