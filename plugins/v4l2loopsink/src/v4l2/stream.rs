// SPDX-License-Identifier: MPL-2.0
//! Buffer I/O: [`OutputStream`] is mmap streaming output on a device whose format is set —
//! buffers requested after `VIDIOC_S_FMT`, mapped once, reused round-robin, one copy per frame;
//! or lent out ([`Lender`], [`LentBuffer`]) so that the frame is written straight into them and
//! only queued ([`OutputStream::queue`]).
//!
//! Lifetimes: a lent buffer may outlive its stream (GStreamer owns it until it is rendered or
//! its pool is freed). When the stream stops, every mapping still lent out is *orphaned*: its
//! device pages are replaced, at the same address, by an anonymous private copy (`mremap`), so
//! a writer still holding it writes into ordinary memory, and `VIDIOC_REQBUFS(0)` and the close
//! never happen under a live device mapping (which would also keep the device file open).

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Lent out as a [`LentBuffer`] (then only its holder writes into it).
    lent: AtomicBool,
    /// The device pages were replaced by an anonymous copy (the stream stopped).
    orphaned: AtomicBool,
}

// SAFETY: the mapping is plain shared memory; it is written either through `&mut OutputStream`
// (when not lent) or by the one holder of its `LentBuffer`. Unmapped once, on drop.
unsafe impl Send for MappedBuffer {}
unsafe impl Sync for MappedBuffer {}

impl MappedBuffer {
    /// Replaces the device pages by an anonymous private copy of their content at the same
    /// address (atomic for other threads: a concurrent writer writes into one or the other).
    fn orphan(&self) -> io::Result<()> {
        if self.orphaned.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // SAFETY: a fresh private anonymous mapping of `length` bytes.
        let tmp = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if tmp == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both ranges are mapped for `length` bytes and do not overlap; then `tmp`
        // moves over our range (MREMAP_FIXED unmaps the device pages there).
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), tmp.cast::<u8>(), self.length);
            let moved = libc::mremap(
                tmp,
                self.length,
                self.length,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                self.ptr.as_ptr().cast::<libc::c_void>(),
            );
            if moved == libc::MAP_FAILED {
                let e = io::Error::last_os_error();
                libc::munmap(tmp, self.length);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// A device buffer lent out for a frame to be written into it (the bytes of one frame). Its
/// mapping stays valid while it lives (the device's pages, or an anonymous copy once the
/// stream stopped); dropping it makes the buffer available to [`Lender::lend`] again.
pub struct LentBuffer {
    buf: Arc<MappedBuffer>,
    size: usize,
}

impl LentBuffer {
    /// Where the frame starts: what [`OutputStream::index_of`] recognises.
    pub fn as_ptr(&self) -> *const u8 {
        self.buf.ptr.as_ptr()
    }
}

impl AsMut<[u8]> for LentBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is valid for `length` ≥ `size` bytes while `buf` lives, and only
        // the holder of the `LentBuffer` writes into it.
        unsafe { std::slice::from_raw_parts_mut(self.buf.ptr.as_ptr(), self.size) }
    }
}

impl Drop for LentBuffer {
    fn drop(&mut self) {
        self.buf.lent.store(false, Ordering::Release);
    }
}

/// Lends a stream's buffers (held by a buffer pool); independent of the [`OutputStream`]'s
/// lifetime and lock.
pub struct Lender {
    buffers: Vec<Arc<MappedBuffer>>,
    size: usize,
}

impl Lender {
    /// A buffer nobody holds, or `None` (all lent, or the stream stopped).
    pub fn lend(&self) -> Option<LentBuffer> {
        self.buffers.iter().find_map(|b| {
            if b.orphaned.load(Ordering::Acquire)
                || b.lent
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                return None;
            }
            Some(LentBuffer {
                buf: b.clone(),
                size: self.size,
            })
        })
    }

    pub fn count(&self) -> usize {
        self.buffers.len()
    }

    /// The frame size (bytes of each lent buffer).
    pub fn size(&self) -> usize {
        self.size
    }
}

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
    buffers: Vec<Arc<MappedBuffer>>,
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
                Some(ptr) => buffers.push(Arc::new(MappedBuffer {
                    ptr,
                    length,
                    lent: AtomicBool::new(false),
                    orphaned: AtomicBool::new(false),
                })),
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

    /// A lender for a buffer pool: hands out this stream's buffers to be written into.
    pub fn lender(&self) -> Lender {
        Lender {
            buffers: self.buffers.clone(),
            size: self.layout.size,
        }
    }

    /// How many buffers are lent out right now.
    pub fn lent_count(&self) -> usize {
        self.buffers
            .iter()
            .filter(|b| b.lent.load(Ordering::Acquire))
            .count()
    }

    /// The index of this stream's buffer whose frame starts at `ptr` and is `len` bytes long
    /// (a [`LentBuffer`] of this stream, written by its holder), if any.
    pub fn index_of(&self, ptr: *const u8, len: usize) -> Option<u32> {
        if len != self.layout.size {
            return None;
        }
        self.buffers
            .iter()
            .position(|b| std::ptr::eq(b.ptr.as_ptr(), ptr) && !b.orphaned.load(Ordering::Acquire))
            .map(|i| i as u32)
    }

    /// Queues buffer `index` as it is (its frame was written in place, or it is queued again
    /// to repeat it) with `bytesused` = the exact frame size and `timestamp`.
    pub fn queue(&mut self, index: u32, timestamp: Duration) -> io::Result<()> {
        if index as usize >= self.buffers.len() {
            return Err(io::Error::other(format!(
                "buffer index {index} of {}",
                self.buffers.len()
            )));
        }
        let mut b = RawBuffer {
            index,
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
        unsafe { ioctls::qbuf(self.dev.file.as_raw_fd(), &mut b) }.map_err(errno)?;
        Ok(())
    }

    /// Writes one frame: takes a free buffer, lets `fill` write the image into it (the one
    /// copy), and queues it with `bytesused` = the exact frame size and `timestamp`
    /// (CLOCK_MONOTONIC). Fails with `WouldBlock` when every buffer is lent out.
    pub fn write_frame<E>(
        &mut self,
        timestamp: Duration,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, io::Error> {
        // Round-robin, oldest buffer first, skipping lent ones. v4l2loopback does not track
        // buffer ownership on the output side, and its output VIDIOC_DQBUF hands back the most
        // recently queued buffer (the one readers are about to read); writing the oldest one
        // instead keeps readers off the buffer being written.
        let index = match self.spare.take() {
            Some(i) => i,
            None => {
                let n = self.buffers.len();
                let free = (0..n)
                    .map(|k| (self.next + k) % n)
                    .find(|&i| !self.buffers[i].lent.load(Ordering::Acquire));
                let Some(i) = free else {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "every device buffer is lent out",
                    ));
                };
                self.next = i.wrapping_add(1);
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
        self.queue(index as u32, timestamp)?;
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
        // Mappings held elsewhere (a pool, a buffer upstream) get an anonymous copy in place
        // of the device pages before the buffers are released; ours are unmapped here.
        // If that fails (out of memory) the buffers are not released: the mapping keeps the
        // device pages (and the file) until its holder lets go.
        let mut all_released = true;
        for b in self.buffers.drain(..) {
            if Arc::strong_count(&b) > 1 && b.orphan().is_err() {
                all_released = false;
            }
        }
        if !all_released {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared anonymous mapping standing in for a device buffer.
    fn shared_mapping(length: usize) -> Arc<MappedBuffer> {
        // SAFETY: a fresh shared anonymous mapping.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Arc::new(MappedBuffer {
            ptr: NonNull::new(ptr.cast()).expect("mapped"),
            length,
            lent: AtomicBool::new(false),
            orphaned: AtomicBool::new(false),
        })
    }

    #[test]
    fn lent_buffers_are_handed_out_once_and_survive_orphaning() {
        let lender = Lender {
            buffers: vec![shared_mapping(8192), shared_mapping(8192)],
            size: 5000,
        };
        let mut a = lender.lend().expect("first buffer");
        let b = lender.lend().expect("second buffer");
        assert!(lender.lend().is_none(), "both are lent");
        assert_eq!(a.as_mut().len(), 5000);
        a.as_mut().fill(0x5a);
        let ptr = a.as_ptr();
        drop(b);
        let again = lender.lend().expect("a returned buffer is lent again");
        drop(again);

        // The stream stops while `a` is held: same address, same bytes, still writable.
        for buf in &lender.buffers {
            buf.orphan().expect("orphan");
        }
        assert_eq!(a.as_ptr(), ptr);
        assert!(a.as_mut().iter().all(|&x| x == 0x5a));
        a.as_mut()[0] = 1;
        assert!(lender.lend().is_none(), "orphaned buffers are not lent");
    }
}
