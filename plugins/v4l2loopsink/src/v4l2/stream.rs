// SPDX-License-Identifier: MPL-2.0
//! Buffer I/O: [`OutputStream`] is mmap streaming output on a device whose format is set —
//! buffers requested after `VIDIOC_S_FMT`, mapped once, reused round-robin, one copy per frame.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::time::Duration;

use super::abi::*;
use super::device::LoopbackDevice;
use super::format::FrameLayout;

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
