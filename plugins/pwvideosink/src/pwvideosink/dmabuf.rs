// SPDX-License-Identifier: MPL-2.0

//! DMA-BUF pass-through and self-allocated PipeWire buffers.
//!
//! PipeWire gives a consumer a buffer's fds once, when buffers are negotiated; each graph cycle
//! only names a buffer. So upstream's DMA-BUFs can't be swapped into a `pw_buffer` per frame.
//! Instead the sink learns the set of DMA-BUFs upstream cycles through (its buffer pool), and
//! allocates PipeWire's buffers itself (`ALLOC_BUFFERS`) with those fds: a frame then goes out
//! in the `pw_buffer` that already carries its DMA-BUF, without a copy, and the upstream
//! `GstBuffer` is held until the consumer gives that `pw_buffer` back. A DMA-BUF never seen
//! before makes the sink renegotiate the buffers; more than [`MAX_DMABUFS`] distinct ones
//! (upstream allocating per frame) make it give up and fall back to copying into memfds.
//!
//! When the consumer did not take DMA-BUFs, the same `ALLOC_BUFFERS` stream allocates memfds
//! here (what PipeWire would otherwise do), and frames are copied into them.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use pipewire as pw;
use pw::spa;

/// The most distinct upstream DMA-BUFs passed through (PipeWire buffers per stream are
/// bounded too); beyond that frames are copied into memfds.
pub(crate) const MAX_DMABUFS: usize = 16;

/// Identity of a DMA-BUF across processes and fd numbers: the inode of its file.
pub(crate) type DmaBufKey = (u64, u64);

/// One plane of a frame in upstream's DMA-BUF memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DmaBufPlane {
    pub key: DmaBufKey,
    /// The fd in upstream's memory, valid while the frame's `GstBuffer` lives.
    pub fd: RawFd,
    /// Size of the whole DMA-BUF.
    pub fd_size: u64,
    /// Where the plane starts in the DMA-BUF.
    pub offset: u32,
    pub stride: i32,
    pub size: u32,
}

/// `(dev, ino)` and size of the file behind `fd`.
pub(crate) fn fd_identity(fd: RawFd) -> Option<(DmaBufKey, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes into `st`; a bad fd only makes it fail.
    let r = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: fstat succeeded.
    let st = unsafe { st.assume_init() };
    Some(((st.st_dev, st.st_ino), st.st_size.max(0) as u64))
}

fn dup(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd we own, or -1.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: `new` is a fresh fd owned by nobody else.
    (new >= 0).then(|| unsafe { OwnedFd::from_raw_fd(new) })
}

/// A DMA-BUF (one per plane, usually the same) upstream has delivered, kept open so it can be
/// handed to PipeWire when buffers are (re)negotiated.
pub(crate) struct KnownDmaBuf {
    pub key: Vec<DmaBufKey>,
    fds: Vec<(OwnedFd, u64)>,
}

/// What [`DmaBufRegistry::register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registered {
    Known,
    Added,
    /// Too many distinct DMA-BUFs: pass-through is off until the caps change.
    GaveUp,
    /// Pass-through was already given up.
    Off,
}

/// The distinct DMA-BUFs upstream has delivered since the last caps.
#[derive(Default)]
pub(crate) struct DmaBufRegistry {
    pub known: Vec<KnownDmaBuf>,
    pub gave_up: bool,
}

impl DmaBufRegistry {
    pub fn reset(&mut self) {
        self.known.clear();
        self.gave_up = false;
    }

    /// Usable for pass-through: something known and not given up.
    pub fn usable(&self) -> bool {
        !self.gave_up && !self.known.is_empty()
    }

    pub fn register(&mut self, planes: &[DmaBufPlane]) -> Registered {
        if self.gave_up {
            return Registered::Off;
        }
        let key: Vec<DmaBufKey> = planes.iter().map(|p| p.key).collect();
        if self.known.iter().any(|k| k.key == key) {
            return Registered::Known;
        }
        if self.known.len() >= MAX_DMABUFS {
            self.known.clear();
            self.gave_up = true;
            return Registered::GaveUp;
        }
        let Some(fds) = planes
            .iter()
            .map(|p| dup(p.fd).map(|fd| (fd, p.fd_size)))
            .collect::<Option<Vec<_>>>()
        else {
            return Registered::Off;
        };
        self.known.push(KnownDmaBuf { key, fds });
        Registered::Added
    }
}

/// How the current PipeWire buffers carry frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolMode {
    /// memfds allocated here; frames are copied in.
    #[default]
    MemFd,
    /// upstream's DMA-BUFs; frames go out without a copy.
    DmaBuf,
}

/// A `pw_buffer` pointer, only dereferenced on PipeWire's threads while the stream owns it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct RawBuffer(*mut pw::sys::pw_buffer);
// SAFETY: the pointer is only used under the pool lock, between add_buffer and remove_buffer.
unsafe impl Send for RawBuffer {}

struct PoolBuffer {
    raw: RawBuffer,
    /// DMA-BUF mode: which upstream DMA-BUF this buffer carries.
    key: Vec<DmaBufKey>,
    /// The fds given to PipeWire (closed when the buffer is removed).
    _fds: Vec<OwnedFd>,
    /// memfd mode: our mapping of the memfd.
    map: Option<(usize, usize)>,
    /// Dequeued by us (not with the consumer).
    free: bool,
    /// The upstream buffer whose DMA-BUF the consumer is reading.
    held: Option<gst::Buffer>,
}

impl Drop for PoolBuffer {
    fn drop(&mut self) {
        if let Some((addr, len)) = self.map.take() {
            // SAFETY: mapped in `add_memfd` with this length, unmapped once.
            unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        }
    }
}

/// The PipeWire buffers of an `ALLOC_BUFFERS` stream.
#[derive(Default)]
pub(crate) struct Pool {
    pub mode: PoolMode,
    /// memfd mode: bytes per buffer.
    pub frame_size: u32,
    buffers: Vec<Option<PoolBuffer>>,
}

impl Pool {
    /// `add_buffer`: fill the buffer's datas (memfd, or the next known DMA-BUF).
    ///
    /// # Safety
    /// `raw` must be a buffer of the stream, just added.
    pub unsafe fn add(
        &mut self,
        raw: *mut pw::sys::pw_buffer,
        registry: &DmaBufRegistry,
    ) -> Result<(), String> {
        let index = self.buffers.len();
        // SAFETY: per the contract, `raw` and its spa_buffer are valid.
        let datas = unsafe {
            let buf = (*raw).buffer;
            if buf.is_null() || (*buf).n_datas < 1 || (*buf).datas.is_null() {
                return Err("PipeWire buffer without data".into());
            }
            std::slice::from_raw_parts_mut((*buf).datas, (*buf).n_datas as usize)
        };
        let mut entry = PoolBuffer {
            raw: RawBuffer(raw),
            key: Vec::new(),
            _fds: Vec::new(),
            map: None,
            free: false,
            held: None,
        };
        match self.mode {
            PoolMode::MemFd => {
                let d = &mut datas[0];
                if d.type_ & (1 << spa::sys::SPA_DATA_MemFd) == 0 {
                    return Err(format!(
                        "consumer accepts none of our memory types (data types {:#x})",
                        d.type_
                    ));
                }
                let size = self.frame_size.max(1) as usize;
                let fd = nix::sys::memfd::memfd_create(
                    c"pwvideosink",
                    nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
                )
                .map_err(|e| format!("memfd_create: {e}"))?;
                nix::unistd::ftruncate(&fd, size as i64).map_err(|e| format!("ftruncate: {e}"))?;
                // SAFETY: a fresh shared mapping of our own memfd.
                let addr = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        size,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        fd.as_fd().as_raw_fd(),
                        0,
                    )
                };
                if addr == libc::MAP_FAILED {
                    return Err(format!("mmap: {}", std::io::Error::last_os_error()));
                }
                d.type_ = spa::sys::SPA_DATA_MemFd;
                d.flags = spa::sys::SPA_DATA_FLAG_READWRITE;
                d.fd = i64::from(fd.as_raw_fd());
                d.mapoffset = 0;
                d.maxsize = size as u32;
                d.data = addr;
                entry.map = Some((addr as usize, size));
                entry._fds.push(fd);
            }
            PoolMode::DmaBuf => {
                if registry.known.is_empty() {
                    return Err("no upstream DMA-BUF known yet".into());
                }
                let known = &registry.known[index % registry.known.len()];
                for (p, d) in datas.iter_mut().enumerate() {
                    if d.type_ & (1 << spa::sys::SPA_DATA_DmaBuf) == 0 {
                        return Err(format!(
                            "consumer does not accept DMA-BUF (data types {:#x})",
                            d.type_
                        ));
                    }
                    let (fd, size) = known.fds.get(p).or(known.fds.last()).ok_or("no planes")?;
                    let fd = dup(fd.as_raw_fd()).ok_or("could not dup a DMA-BUF fd")?;
                    d.type_ = spa::sys::SPA_DATA_DmaBuf;
                    d.flags = spa::sys::SPA_DATA_FLAG_READABLE;
                    d.fd = i64::from(fd.as_raw_fd());
                    d.mapoffset = 0;
                    d.maxsize = (*size).min(u64::from(u32::MAX)) as u32;
                    d.data = std::ptr::null_mut();
                    entry._fds.push(fd);
                }
                entry.key = known.key.clone();
            }
        }
        // SAFETY: `raw` is valid; user_data is ours.
        unsafe { (*raw).user_data = index as *mut libc::c_void };
        self.buffers.push(Some(entry));
        Ok(())
    }

    /// `remove_buffer`: release what `raw` held (upstream buffer, fds, mapping).
    pub fn remove(&mut self, raw: *mut pw::sys::pw_buffer) {
        for slot in self.buffers.iter_mut() {
            if slot.as_ref().is_some_and(|b| b.raw == RawBuffer(raw)) {
                *slot = None;
            }
        }
        if self.buffers.iter().all(Option::is_none) {
            self.buffers.clear();
        }
    }

    /// Mark a buffer the stream gave back (dequeued) as free, releasing its upstream frame.
    ///
    /// # Safety
    /// `raw` must come from `pw_stream_dequeue_buffer` of this stream.
    pub unsafe fn reclaim(&mut self, raw: *mut pw::sys::pw_buffer) {
        // SAFETY: per the contract.
        let index = unsafe { (*raw).user_data } as usize;
        if let Some(Some(b)) = self.buffers.get_mut(index)
            && b.raw == RawBuffer(raw)
        {
            b.free = true;
            b.held = None;
        }
    }

    /// A free buffer carrying the DMA-BUF `key`: taken (not free any more), holding `frame`.
    pub fn take_for(
        &mut self,
        key: &[DmaBufKey],
        frame: gst::Buffer,
    ) -> Option<*mut pw::sys::pw_buffer> {
        let b = self
            .buffers
            .iter_mut()
            .flatten()
            .find(|b| b.free && b.key == key)?;
        b.free = false;
        b.held = Some(frame);
        Some(b.raw.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: usize) -> OwnedFd {
        let fd =
            nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, len as i64).unwrap();
        fd
    }

    fn plane(fd: &OwnedFd) -> DmaBufPlane {
        let (key, fd_size) = fd_identity(fd.as_raw_fd()).unwrap();
        DmaBufPlane {
            key,
            fd: fd.as_raw_fd(),
            fd_size,
            offset: 0,
            stride: 16,
            size: 64,
        }
    }

    #[test]
    fn identity_follows_the_file_not_the_fd_number() {
        let a = memfd(4096);
        let b = memfd(4096);
        let a2 = dup(a.as_raw_fd()).unwrap();
        let (ka, size) = fd_identity(a.as_raw_fd()).unwrap();
        assert_eq!(size, 4096);
        assert_eq!(fd_identity(a2.as_raw_fd()).unwrap().0, ka);
        assert_ne!(fd_identity(b.as_raw_fd()).unwrap().0, ka);
        assert!(fd_identity(-1).is_none());
    }

    #[test]
    fn registry_learns_each_buffer_once_and_gives_up_beyond_the_limit() {
        let fds: Vec<OwnedFd> = (0..=MAX_DMABUFS).map(|_| memfd(4096)).collect();
        let mut r = DmaBufRegistry::default();
        assert!(!r.usable());
        assert_eq!(r.register(&[plane(&fds[0])]), Registered::Added);
        assert_eq!(r.register(&[plane(&fds[0])]), Registered::Known);
        assert!(r.usable());
        for fd in &fds[1..MAX_DMABUFS] {
            assert_eq!(r.register(&[plane(fd)]), Registered::Added);
        }
        assert_eq!(r.known.len(), MAX_DMABUFS);
        assert_eq!(r.register(&[plane(&fds[MAX_DMABUFS])]), Registered::GaveUp);
        assert!(!r.usable());
        assert!(r.known.is_empty(), "the kept fds are closed");
        assert_eq!(r.register(&[plane(&fds[0])]), Registered::Off);
        r.reset();
        assert_eq!(r.register(&[plane(&fds[0])]), Registered::Added);
    }
}
