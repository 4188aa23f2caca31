// SPDX-License-Identifier: MPL-2.0

//! DMA-BUF pass-through and the stream's PipeWire buffers (PipeWire's memfds mapped again by
//! us, or our own).
//!
//! PipeWire gives a consumer a buffer's fds once, when buffers are negotiated; each graph cycle
//! only names a buffer. So upstream's DMA-BUFs can't be swapped into a `pw_buffer` per frame.
//! Instead the sink learns the set of DMA-BUFs upstream cycles through (its buffer pool), and
//! allocates PipeWire's buffers itself (`ALLOC_BUFFERS`) with those fds: a frame then goes out
//! in the `pw_buffer` that already carries its DMA-BUF, without a copy, and the upstream
//! `GstBuffer` is held until PipeWire gives that `pw_buffer` back to us, in the graph cycle
//! after the one that delivered it (PipeWire 0.3.65 has no way for a consumer in another
//! process to return a buffer: `remote-node.c`'s `reuse_buffer` is empty; a producer takes its
//! buffer back in its next `process`, whatever the consumer still does with it). A DMA-BUF never seen
//! before makes the sink renegotiate the buffers; more than [`MAX_DMABUFS`] distinct ones
//! (upstream allocating per frame) make it give up and fall back to copying into memfds.
//!
//! Otherwise (system-memory input, or a consumer that did not take DMA-BUFs) the frames travel
//! in memfds: with system-memory input PipeWire allocates them (one sealed memfd for all
//! buffers, handed to us as `MemPtr`s into its own mapping); a DMA-BUF stream whose consumer
//! refused DMA-BUFs allocates sealed memfds here. Either way the sink maps each buffer's
//! range of the file itself ([`Mapping`]: PipeWire unmaps its own mapping with the buffers,
//! ours lives as long as a buffer lent upstream holds it), lends those mappings upstream
//! through its buffer pool (`lend.rs`, no copy) and copies frames from anywhere else into them.
//!
//! Why PipeWire allocates when it can: with `ALLOC_BUFFERS`, PipeWire 0.3.65's link waits for
//! the producer to fill the buffers by a sync whose sequence number can collide with a
//! parameter enumeration answered meanwhile; the link then hands the consumer the buffers
//! unfilled ("invalid memory type" in the daemon, "unknown buffer data type -1" in the
//! consumer, whose `pipewiresrc` then fails `gst_buffer_peek_memory`). Seen in about one
//! consumer link in ten under load (`tests/lend.rs`); DMA-BUF pass-through needs
//! `ALLOC_BUFFERS` and keeps that risk.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use pipewire as pw;
use pw::spa;

use super::lend::Mapping;
use super::loop_thread::CAT;
use crate::format::VideoSpec;

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
    /// memfd mode: our mapping of the memfd (shared with the memory of a lent buffer, so it
    /// outlives the `pw_buffer` when upstream still holds that buffer).
    map: Option<Arc<Mapping>>,
    /// Dequeued by us (not with the consumer).
    free: bool,
    /// memfd mode: lent upstream (a `GstMemory` over `map` is alive).
    lent: bool,
    /// When the buffer was last taken to be filled (a tick of `Pool::ticks`): a copy goes into
    /// the least recently used free buffer, as PipeWire's own queue hands them out.
    last_used: u64,
    /// The upstream buffer whose DMA-BUF the consumer is reading.
    held: Option<gst::Buffer>,
}

/// The PipeWire buffers of the stream, with our mapping or DMA-BUF of each.
#[derive(Default)]
pub(crate) struct Pool {
    pub mode: PoolMode,
    /// memfd mode: bytes per buffer.
    pub frame_size: u32,
    /// memfd mode: the format the buffers were negotiated for.
    pub spec: Option<VideoSpec>,
    buffers: Vec<Option<PoolBuffer>>,
    /// Counts buffers taken to be filled (for least-recently-used order).
    ticks: u64,
}

impl Pool {
    /// `add_buffer`: fill the buffer's datas (memfd, or the next known DMA-BUF).
    ///
    /// # Safety
    /// `raw` must be a buffer of the stream, just added.
    /// `mempool`: the core's memory pool (to find the file behind PipeWire's memory);
    /// `alloc`: the stream allocates buffers itself (`ALLOC_BUFFERS`).
    pub unsafe fn add(
        &mut self,
        raw: *mut pw::sys::pw_buffer,
        registry: &DmaBufRegistry,
        mempool: *mut pw::sys::pw_mempool,
        alloc: bool,
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
            lent: false,
            last_used: 0,
            held: None,
        };
        match self.mode {
            PoolMode::MemFd if !alloc => {
                // PipeWire allocated the memory: map the same pages ourselves.
                let d = &datas[0];
                // SAFETY: `d` is a data of a buffer just added to our stream; `mempool` is
                // the core's pool (the caller's contract).
                let map = match unsafe { map_pipewire_data(d, mempool) } {
                    Ok(m) => m,
                    Err(e) if !d.data.is_null() && d.maxsize > 0 => {
                        gst::warning!(
                            CAT,
                            "can't map PipeWire's buffer memory ourselves ({e}): frames are \
                             copied into it, none is lent upstream"
                        );
                        Mapping::borrowed(d.data as usize, d.maxsize as usize)
                    }
                    Err(e) => return Err(e),
                };
                entry.map = Some(Arc::new(map));
            }
            PoolMode::MemFd => {
                let d = &mut datas[0];
                if d.type_ & (1 << spa::sys::SPA_DATA_MemFd) == 0 {
                    return Err(format!(
                        "consumer accepts none of our memory types (data types {:#x})",
                        d.type_
                    ));
                }
                let size = self.frame_size.max(1) as usize;
                let fd = sealed_memfd(size)?;
                let map = Mapping::new(fd.as_fd().as_raw_fd(), 0, size)?;
                d.type_ = spa::sys::SPA_DATA_MemFd;
                d.flags = spa::sys::SPA_DATA_FLAG_READWRITE;
                d.fd = i64::from(fd.as_raw_fd());
                d.mapoffset = 0;
                d.maxsize = size as u32;
                d.data = map.addr() as *mut libc::c_void;
                entry.map = Some(Arc::new(map));
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

    /// Some buffer holds an upstream frame (DMA-BUF mode: with the consumer, or returned and
    /// not taken back yet).
    pub fn holds_frames(&self) -> bool {
        self.held_frames() > 0
    }

    /// How many buffers hold an upstream frame.
    pub fn held_frames(&self) -> usize {
        self.buffers
            .iter()
            .flatten()
            .filter(|b| b.held.is_some())
            .count()
    }

    /// memfd mode: lend a free buffer of `size` bytes negotiated for `spec` upstream (its
    /// mapping; the buffer stays dequeued, marked lent until [`Pool::return_lent`]).
    ///
    /// `oldest`: the least recently used free buffer (to copy into at once, as
    /// [`Pool::take_for_copy`]) rather than the first (the same few buffers stay warm in the
    /// cache: upstream fills it and it is queued a cycle later at the earliest).
    pub fn lend(&mut self, spec: VideoSpec, size: usize, oldest: bool) -> Option<Arc<Mapping>> {
        if self.mode != PoolMode::MemFd || self.spec != Some(spec) {
            return None;
        }
        self.ticks += 1;
        let mut lendable = self.buffers.iter_mut().flatten().filter(|b| {
            b.free && !b.lent && b.map.as_ref().is_some_and(|m| m.owned() && m.len() >= size)
        });
        let b = if oldest {
            lendable.min_by_key(|b| b.last_used)?
        } else {
            lendable.next()?
        };
        b.lent = true;
        b.last_used = self.ticks;
        b.map.clone()
    }

    /// A buffer lent at `addr` (its mapping starts there) belongs to the stream.
    pub fn is_lent_at(&self, addr: usize) -> bool {
        self.buffers
            .iter()
            .flatten()
            .any(|b| b.lent && b.map.as_ref().is_some_and(|m| m.addr() == addr))
    }

    /// The memory over `map` is gone: its buffer (if it still exists) can be used again.
    pub fn return_lent(&mut self, map: &Arc<Mapping>) {
        if let Some(b) = self
            .buffers
            .iter_mut()
            .flatten()
            .find(|b| b.map.as_ref().is_some_and(|m| Arc::ptr_eq(m, map)))
        {
            b.lent = false;
        }
    }

    /// memfd mode: the lent buffer whose mapping starts at `addr`, if it still belongs to the
    /// stream, holds at least `size` bytes and was negotiated for `spec`: taken (not free any
    /// more) to be queued as it is.
    pub fn take_lent(
        &mut self,
        addr: usize,
        spec: VideoSpec,
        size: usize,
    ) -> Option<*mut pw::sys::pw_buffer> {
        if self.mode != PoolMode::MemFd || self.spec != Some(spec) {
            return None;
        }
        let b = self.buffers.iter_mut().flatten().find(|b| {
            b.free
                && b.lent
                && b.map
                    .as_ref()
                    .is_some_and(|m| m.addr() == addr && m.len() >= size)
        })?;
        b.free = false;
        Some(b.raw.0)
    }

    /// memfd mode: a free buffer nobody borrowed, taken to copy a frame into (its mapping
    /// stays valid without the lock); queue it with [`Pool::still_taken`] checked. The least
    /// recently used one: a buffer taken back and queued again in the same cycle made
    /// `pipewiresrc` 0.3.65 lose frames (1 in 4 at 720p).
    pub fn take_for_copy(&mut self) -> Option<(*mut pw::sys::pw_buffer, Arc<Mapping>)> {
        if self.mode != PoolMode::MemFd {
            return None;
        }
        self.ticks += 1;
        let b = self
            .buffers
            .iter_mut()
            .flatten()
            .filter(|b| b.free && !b.lent && b.map.is_some())
            .min_by_key(|b| b.last_used)?;
        b.free = false;
        b.last_used = self.ticks;
        Some((b.raw.0, b.map.clone()?))
    }

    /// The buffer taken by [`Pool::take_for_copy`] is still the stream's (not removed while the
    /// frame was copied without the lock).
    pub fn still_taken(&self, raw: *mut pw::sys::pw_buffer, map: &Arc<Mapping>) -> bool {
        self.buffers.iter().flatten().any(|b| {
            b.raw == RawBuffer(raw)
                && !b.free
                && b.map.as_ref().is_some_and(|m| Arc::ptr_eq(m, map))
        })
    }
}

/// Map the memory PipeWire allocated for a buffer's data `d` ourselves: the same pages of the
/// same file, in a mapping that lives as long as we hold it (PipeWire's goes with the buffer).
///
/// # Safety
/// `d` is a data of a `pw_buffer` of our stream (between `add_buffer` and `remove_buffer`);
/// `mempool` is null or the pool of the core the stream belongs to, used on its thread.
unsafe fn map_pipewire_data(
    d: &spa::sys::spa_data,
    mempool: *mut pw::sys::pw_mempool,
) -> Result<Mapping, String> {
    let len = d.maxsize as usize;
    if len == 0 {
        return Err("the buffer has no memory".into());
    }
    match d.type_ {
        spa::sys::SPA_DATA_MemFd if d.fd >= 0 => {
            Mapping::new(d.fd as RawFd, u64::from(d.mapoffset), len)
        }
        spa::sys::SPA_DATA_MemPtr if !d.data.is_null() && !mempool.is_null() => {
            // SAFETY: per the contract; the block (if any) stays valid during this call.
            let fd = unsafe {
                let block = pw::sys::pw_mempool_find_ptr(mempool, d.data);
                if block.is_null() {
                    return Err("its memory is not in the client's memory pool".into());
                }
                (*block).fd
            };
            let offset = file_offset_of(d.data as usize, fd)?;
            Mapping::new(fd, offset, len)
        }
        t => Err(format!("data type {t} without a file")),
    }
}

/// Where the byte mapped at `addr` lies in the file `fd` refers to: from this process's memory
/// map (`/proc/self/maps`), checking that the mapping is of that very file.
pub(crate) fn file_offset_of(addr: usize, fd: RawFd) -> Result<u64, String> {
    // SAFETY: fstat into a zeroed struct on a caller's fd.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(format!("fstat: {}", std::io::Error::last_os_error()));
        }
        st
    };
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(_perms), Some(off), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Some(start), Some(end)) = (hex(start), hex(end)) else {
            continue;
        };
        let addr = addr as u64;
        if addr < start || addr >= end {
            continue;
        }
        let same_file = dev
            .split_once(':')
            .and_then(|(ma, mi)| Some((hex(ma)?, hex(mi)?)))
            == Some((
                u64::from(libc::major(st.st_dev)),
                u64::from(libc::minor(st.st_dev)),
            ))
            && inode.parse::<u64>().ok() == Some(st.st_ino);
        if !same_file {
            return Err(format!(
                "the mapping at {addr:#x} is not of the memory block's file"
            ));
        }
        let off = hex(off).ok_or("bad offset in /proc/self/maps")?;
        return Ok(off + (addr - start));
    }
    Err(format!("{addr:#x} is not mapped"))
}

/// A memfd of `size` bytes that nobody can shrink or grow any more (a consumer mapping it
/// can't make our writes fault).
fn sealed_memfd(size: usize) -> Result<OwnedFd, String> {
    use nix::sys::memfd::MFdFlags;
    let fd = nix::sys::memfd::memfd_create(
        c"pwvideosink",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| format!("memfd_create: {e}"))?;
    nix::unistd::ftruncate(&fd, size as i64).map_err(|e| format!("ftruncate: {e}"))?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: a plain fcntl on our own fd.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(format!(
            "sealing the memfd: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
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

    /// The file offset of a mapped byte is found from /proc/self/maps, and our own mapping of
    /// that offset shows the same pages; another file's mapping is refused.
    #[test]
    fn file_offset_of_finds_the_same_pages() {
        let page = 4096usize;
        let fd = memfd(4 * page);
        let other = memfd(4 * page);
        // SAFETY: a fresh shared mapping of our memfd, 2 pages from page 1; unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                page as libc::off_t,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let addr = base as usize + 100;
        assert_eq!(
            file_offset_of(addr, fd.as_raw_fd()).unwrap(),
            (page + 100) as u64
        );
        let ours = Mapping::new(fd.as_raw_fd(), (page + 100) as u64, 64).unwrap();
        // SAFETY: `addr` lies in the mapping above; `ours` is ours alone.
        unsafe {
            *(addr as *mut u8) = 0xa5;
            assert_eq!(ours.bytes_mut()[0], 0xa5);
        }
        let err = file_offset_of(addr, other.as_raw_fd()).unwrap_err();
        assert!(err.contains("not of the memory block's file"), "{err}");
        // SAFETY: mapped above with this length.
        unsafe { libc::munmap(base, 2 * page) };
        // (Another thread may map something else there meanwhile: any error will do.)
        assert!(file_offset_of(addr, fd.as_raw_fd()).is_err());
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
