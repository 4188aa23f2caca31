// SPDX-License-Identifier: MPL-2.0
//! v4l2loopback ≥ 0.13's control device `/dev/v4l2loopback`: create, remove and query loopback
//! devices at runtime.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::abi::{cstr, errno, ioctls};

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
    fn loopback_config_layout() {
        let c = LoopbackConfig::new(-1, "a very long label that will be cut off", false, 1920, 0);
        assert_eq!(c.label().len(), 31);
        assert_eq!(c.announce_all_caps, 1);
        assert_eq!(video_number(Path::new("/dev/video12")), Some(12));
        assert_eq!(video_number(Path::new("/dev/null")), None);
    }
}
