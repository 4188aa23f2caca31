// SPDX-License-Identifier: MPL-2.0
//! Kernel ABI: the `linux/videodev2.h` structures (x86_64 / aarch64 layouts), the ioctl
//! request numbers (V4L2 and v4l2loopback's control device) and their errno conversion. No logic.

use std::ffi::CStr;
use std::io;

use super::control::LoopbackConfig;
use super::format::{FormatInfo, fourcc_str};

/// `V4L2_BUF_TYPE_VIDEO_OUTPUT`
pub const BUF_TYPE_VIDEO_OUTPUT: u32 = 2;
/// `V4L2_MEMORY_MMAP`
pub(super) const MEMORY_MMAP: u32 = 1;
/// `V4L2_FIELD_NONE`
pub(super) const FIELD_NONE: u32 = 1;
/// `V4L2_COLORSPACE_SRGB`
pub(super) const COLORSPACE_SRGB: u32 = 8;
pub const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
pub const CAP_VIDEO_OUTPUT: u32 = 0x0000_0002;
pub const CAP_VIDEO_CAPTURE_MPLANE: u32 = 0x0000_1000;
pub const CAP_VIDEO_OUTPUT_MPLANE: u32 = 0x0000_2000;
pub const CAP_STREAMING: u32 = 0x0400_0000;
pub const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
/// `V4L2_CAP_TIMEPERFRAME`
pub(super) const CAP_TIMEPERFRAME: u32 = 0x1000;

/// The `driver` name v4l2loopback reports in `VIDIOC_QUERYCAP`.
pub const LOOPBACK_DRIVER: &str = "v4l2 loopback";

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RawCapability {
    pub(super) driver: [u8; 16],
    pub(super) card: [u8; 32],
    pub(super) bus_info: [u8; 32],
    pub(super) version: u32,
    pub(super) capabilities: u32,
    pub(super) device_caps: u32,
    pub(super) reserved: [u32; 3],
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
pub(super) struct RawFormat {
    pub(super) type_: u32,
    pub(super) _pad: u32,
    pub(super) fmt: RawFormatUnion,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) union RawFormatUnion {
    pub(super) pix: PixFormat,
    pub(super) raw: [u8; 200],
    pub(super) _align: [u64; 25],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct Fract {
    pub(super) numerator: u32,
    pub(super) denominator: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct OutputParm {
    pub(super) capability: u32,
    pub(super) outputmode: u32,
    pub(super) timeperframe: Fract,
    pub(super) extendedmode: u32,
    pub(super) writebuffers: u32,
    pub(super) reserved: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RawStreamParm {
    pub(super) type_: u32,
    pub(super) parm: RawStreamParmUnion,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) union RawStreamParmUnion {
    pub(super) output: OutputParm,
    pub(super) raw: [u8; 200],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct RequestBuffers {
    pub(super) count: u32,
    pub(super) type_: u32,
    pub(super) memory: u32,
    pub(super) capabilities: u32,
    pub(super) flags: u8,
    pub(super) reserved: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct Timecode {
    pub(super) type_: u32,
    pub(super) flags: u32,
    pub(super) frames: u8,
    pub(super) seconds: u8,
    pub(super) minutes: u8,
    pub(super) hours: u8,
    pub(super) userbits: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct RawBuffer {
    pub(super) index: u32,
    pub(super) type_: u32,
    pub(super) bytesused: u32,
    pub(super) flags: u32,
    pub(super) field: u32,
    pub(super) timestamp: libc::timeval,
    pub(super) timecode: Timecode,
    pub(super) sequence: u32,
    pub(super) memory: u32,
    /// union { offset; userptr; planes; fd }
    pub(super) m: u64,
    pub(super) length: u32,
    pub(super) reserved2: u32,
    pub(super) request_fd: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RawFmtDesc {
    pub(super) index: u32,
    pub(super) type_: u32,
    pub(super) flags: u32,
    pub(super) description: [u8; 32],
    pub(super) pixelformat: u32,
    pub(super) mbus_code: u32,
    pub(super) reserved: [u32; 3],
}

pub(super) mod ioctls {
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

pub(super) fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

pub(super) fn cstr(bytes: &[u8]) -> String {
    CStr::from_bytes_until_nul(bytes)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
pub(super) mod tests {
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
}
