// SPDX-License-Identifier: MPL-2.0

//! Linux backend: memfd surfaces, `SOCK_SEQPACKET` Unix sockets, `SCM_RIGHTS`.

use std::ffi::CString;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept4, bind, connect, listen, recvmsg, sendmsg, socket,
};

use crate::wire::MAX_MESSAGE_LEN;

/// How a surface travels between processes: a file descriptor.
pub type SurfaceHandle<'a> = BorrowedFd<'a>;

/// Identity of a surface: (device, inode). Two fds with the same identity share the same pages.
pub fn surface_identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    Ok((st.st_dev, st.st_ino))
}

/// Size of the object behind an fd (memfd / dma-buf size).
pub fn surface_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // lseek(SEEK_END) works for memfds and dma-bufs alike (fstat reports 0 for dma-bufs).
    let end = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_END) };
    if end < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(end as u64)
}

/// `statfs` magic of DMA-BUF fds (`DMA_BUF_MAGIC` in `linux/magic.h`).
const DMA_BUF_MAGIC: i64 = 0x444d_4142;

/// What a surface fd is, once it passed [`inspect_surface`]: an object whose size cannot drop
/// under a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SurfaceKind {
    /// A memfd (shmem/hugetlbfs) sealed with `F_SEAL_SHRINK`.
    SealedMemfd,
    /// A DMA-BUF: its size is fixed when it is exported.
    DmaBuf,
}

/// Why a surface fd cannot be mapped safely.
#[derive(Debug)]
pub enum SurfaceRefusal {
    /// A memfd (or tmpfs file) without `F_SEAL_SHRINK`: its owner can truncate it under our
    /// mapping (reads would then die of SIGBUS).
    Unsealed {
        seals: i32,
    },
    /// Neither a memfd nor a DMA-BUF (a regular file, a pipe, …): its size can change.
    NotShareable,
    /// The declared size is larger than what the fd holds.
    LargerThanObject {
        declared: u64,
        actual: u64,
    },
    Io(io::Error),
}

impl std::fmt::Display for SurfaceRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsealed { seals } => write!(
                f,
                "its memfd is not sealed against shrinking (seals {seals:#x}, F_SEAL_SHRINK missing), so the writer could truncate it under our mapping; writers must seal memfds with F_SEAL_SHRINK"
            ),
            Self::NotShareable => write!(
                f,
                "its fd is neither a sealed memfd nor a DMA-BUF, so its size could change under our mapping"
            ),
            Self::LargerThanObject { declared, actual } => write!(
                f,
                "it declares {declared} bytes but the memory behind its fd holds only {actual} bytes"
            ),
            Self::Io(e) => write!(f, "cannot inspect its fd: {e}"),
        }
    }
}

/// The size the object behind `fd` is guaranteed to keep, if it cannot shrink: a memfd sealed
/// with `F_SEAL_SHRINK` (size from `fstat`) or a DMA-BUF (size from `lseek(SEEK_END)`).
pub fn inspect_surface(fd: BorrowedFd<'_>) -> Result<(SurfaceKind, u64), SurfaceRefusal> {
    match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(seals) => {
            if seals & libc::F_SEAL_SHRINK == 0 {
                return Err(SurfaceRefusal::Unsealed { seals });
            }
            let st = nix::sys::stat::fstat(fd).map_err(|e| SurfaceRefusal::Io(e.into()))?;
            Ok((SurfaceKind::SealedMemfd, st.st_size.max(0) as u64))
        }
        Err(Errno::EINVAL) => {
            let mut sfs = std::mem::MaybeUninit::<libc::statfs>::uninit();
            // SAFETY: fstatfs fills the struct on success; we read it only then.
            let r = unsafe { libc::fstatfs(fd.as_raw_fd(), sfs.as_mut_ptr()) };
            if r != 0 {
                return Err(SurfaceRefusal::Io(io::Error::last_os_error()));
            }
            // SAFETY: initialized by the successful fstatfs above.
            let sfs = unsafe { sfs.assume_init() };
            // f_type is i64 on x86_64 but narrower on some architectures.
            #[allow(clippy::unnecessary_cast)]
            let fs_type = sfs.f_type as i64;
            if fs_type != DMA_BUF_MAGIC {
                return Err(SurfaceRefusal::NotShareable);
            }
            let size = surface_size(fd).map_err(SurfaceRefusal::Io)?;
            Ok((SurfaceKind::DmaBuf, size))
        }
        Err(e) => Err(SurfaceRefusal::Io(e.into())),
    }
}

/// Check a surface a peer announced with `declared` bytes: the fd must be one that cannot
/// shrink ([`inspect_surface`]) and hold at least `declared` bytes. The peer's size is a claim,
/// the object's size is the truth.
pub fn check_surface(fd: BorrowedFd<'_>, declared: u64) -> Result<SurfaceKind, SurfaceRefusal> {
    let (kind, actual) = inspect_surface(fd)?;
    if declared > actual {
        return Err(SurfaceRefusal::LargerThanObject { declared, actual });
    }
    Ok(kind)
}

/// A process-local memory mapping of a surface; unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; access through `&[u8]` /
// `&mut [u8]` follows the usual borrow rules.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map `len` bytes of `fd` shared, read-only or read-write.
    pub fn map(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Mapping> {
        let nz = NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty surface"))?;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: a fresh shared mapping at a kernel-chosen address.
        let ptr = unsafe { mmap(None, nz, prot, MapFlags::MAP_SHARED, fd, 0) }
            .map_err(io::Error::from)?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr/len describe a live mapping owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Only valid for writable mappings.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above; &mut self gives exclusive access on our side.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// A writer-owned surface: a memfd whose size is sealed, mapped read-write.
#[derive(Debug)]
pub struct SurfaceMemory {
    fd: OwnedFd,
    map: Mapping,
}

impl SurfaceMemory {
    pub fn create(name: &str, size: usize) -> io::Result<SurfaceMemory> {
        let fd = create_memfd(name, size)?;
        let map = Mapping::map(fd.as_fd(), size, true)?;
        Ok(SurfaceMemory { fd, map })
    }

    pub fn handle(&self) -> SurfaceHandle<'_> {
        self.fd.as_fd()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.map.as_mut_slice()
    }
}

/// A sealed memfd of `size` bytes: `F_SEAL_SHRINK | F_SEAL_GROW` fix its size (readers require
/// `F_SEAL_SHRINK`), `F_SEAL_SEAL` keeps a reader from adding write seals behind our back.
pub fn create_memfd(name: &str, size: usize) -> io::Result<OwnedFd> {
    let cname = CString::new(name.replace('\0', "_")).map_err(io::Error::other)?;
    let fd = memfd_create(
        cname.as_c_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(io::Error::from)?;
    nix::unistd::ftruncate(&fd, size as libc::off_t).map_err(io::Error::from)?;
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(io::Error::from)?;
    Ok(fd)
}

/// One connection: a non-blocking `SOCK_SEQPACKET` Unix socket; one message per datagram.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// What [`Channel::recv`] got.
pub enum Received {
    /// A message (`len` bytes in the buffer) with the fds that came with it.
    Message { len: usize, fds: Vec<OwnedFd> },
    /// Nothing to read right now.
    WouldBlock,
    /// The peer closed the connection.
    Closed,
}

impl Channel {
    /// Connect to `path` (non-blocking afterwards).
    pub fn connect(path: &Path) -> io::Result<Channel> {
        let addr = UnixAddr::new(path).map_err(io::Error::from)?;
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)?;
        connect(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
        set_nonblocking(fd.as_fd())?;
        Ok(Channel { fd })
    }

    /// Send one message, with `fd` attached if given. Never blocks: a full socket buffer is
    /// `ErrorKind::WouldBlock`; a vanished peer is `BrokenPipe`/`ConnectionReset`.
    pub fn send(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let iov = [io::IoSlice::new(bytes)];
        let raw;
        let cmsg_storage;
        let cmsgs: &[ControlMessage] = match fd {
            Some(fd) => {
                raw = [fd.as_raw_fd()];
                cmsg_storage = [ControlMessage::ScmRights(&raw)];
                &cmsg_storage
            }
            None => &[],
        };
        let n = sendmsg::<()>(
            self.fd.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)?;
        if n != bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short send on a seqpacket socket",
            ));
        }
        Ok(())
    }

    /// Receive one message into `buf` (at least [`MAX_MESSAGE_LEN`] bytes).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        debug_assert!(buf.len() >= MAX_MESSAGE_LEN);
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [io::IoSliceMut::new(buf)];
        // A peer that closes with messages of ours unread makes the kernel report ECONNRESET
        // once; what the peer sent before closing (an EOS, say) is still queued behind it, so
        // read once more before calling the connection closed.
        let mut reset = false;
        let msg = loop {
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => break m,
                Err(Errno::ECONNRESET) if !reset => reset = true,
                Err(Errno::EAGAIN) if !reset => return Ok(Received::WouldBlock),
                Err(Errno::EAGAIN | Errno::ECONNRESET) => return Ok(Received::Closed),
                Err(e) => return Err(e.into()),
            }
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for r in raw {
                        // SAFETY: the kernel just installed these fds for us; we own them.
                        fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                    }
                }
            }
        }
        if msg.flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message larger than the protocol allows",
            ));
        }
        if msg.bytes == 0 && fds.is_empty() {
            return Ok(Received::Closed);
        }
        Ok(Received::Message {
            len: msg.bytes,
            fds,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// Why the writer could not take `socket-path`.
#[derive(Debug)]
pub enum BindError {
    /// A live writer already listens there.
    InUse(PathBuf),
    /// Something that is not a stale surface socket is there.
    Foreign(PathBuf, String),
    /// The path does not fit a Unix socket address.
    TooLong(PathBuf, usize),
    /// Every temporary name next to the path is taken by something that is not ours:
    /// (socket-path, first temporary name, what is there).
    TemporaryTaken(PathBuf, PathBuf, String),
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::InUse(p) => write!(
                f,
                "socket-path {} is in use by a running writer; stop it or choose another path",
                p.display()
            ),
            BindError::Foreign(p, what) => write!(
                f,
                "socket-path {} exists and is {what}; refusing to replace it (remove it or choose another path)",
                p.display()
            ),
            BindError::TooLong(p, max) => write!(
                f,
                "socket-path {} is too long for a Unix socket ({} bytes, at most {max})",
                p.display(),
                p.as_os_str().len()
            ),
            BindError::TemporaryTaken(p, tmp, what) => write!(
                f,
                "cannot create socket {}: its temporary name {} is {what}, and so are the other {} temporary names tried; they were left untouched (remove them or choose another path)",
                p.display(),
                tmp.display(),
                TMP_ATTEMPTS - 1
            ),
            BindError::Io(p, e) => write!(f, "cannot create socket {}: {e}", p.display()),
        }
    }
}

/// Temporary names tried (`<path>.<pid>.tmp`, then `<path>.<pid>.<n>.tmp`) before giving up.
const TMP_ATTEMPTS: usize = 8;
/// Longest suffix of the temporary name the socket is bound under before it is moved into place.
const TMP_SUFFIX_MAX: usize = ".4294967295.7.tmp".len();
const SUN_PATH_MAX: usize = 107;

/// What is at `path`, in words (for errors about files we refuse to touch).
fn describe(path: &Path) -> String {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => "a directory".into(),
        Ok(md) if md.file_type().is_symlink() => "a symbolic link".into(),
        Ok(md) if md.file_type().is_socket() => "a socket of another process".into(),
        Ok(_) => "a regular or special file".into(),
        Err(e) => format!("unusable ({e})"),
    }
}

/// Bind `fd` under a fresh temporary name next to `path`. `bind` creates the file or fails with
/// `EADDRINUSE` if anything is already there (like `O_EXCL`), so nothing that is not ours is
/// ever replaced or removed: a taken name is skipped for the next one.
fn bind_temporary(fd: &OwnedFd, path: &Path) -> Result<PathBuf, BindError> {
    let pid = std::process::id();
    let mut first_taken = None;
    for n in 0..TMP_ATTEMPTS {
        let mut tmp = path.as_os_str().to_owned();
        if n == 0 {
            tmp.push(format!(".{pid}.tmp"));
        } else {
            tmp.push(format!(".{pid}.{n}.tmp"));
        }
        let tmp = PathBuf::from(tmp);
        let addr = UnixAddr::new(&tmp).map_err(|e| BindError::Io(tmp.clone(), e.into()))?;
        match bind(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(tmp),
            Err(Errno::EADDRINUSE) => {
                if first_taken.is_none() {
                    first_taken = Some((tmp.clone(), describe(&tmp)));
                }
            }
            Err(e) => return Err(BindError::Io(tmp, e.into())),
        }
    }
    let (tmp, what) = first_taken.unwrap_or_default();
    Err(BindError::TemporaryTaken(path.to_owned(), tmp, what))
}

/// The writer's listening socket at `socket-path`, mode 0600. Removed on drop if it is still ours.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
    ino: u64,
}

impl Listener {
    /// Create the socket at `path`: a stale socket (nobody listening) is replaced, a live one or
    /// any other file is an error. The socket is bound under a temporary name, made 0600 and
    /// renamed into place, so it is never reachable with looser permissions.
    pub fn bind(path: &Path) -> Result<Listener, BindError> {
        let max = SUN_PATH_MAX - TMP_SUFFIX_MAX;
        if path.as_os_str().len() > max {
            return Err(BindError::TooLong(path.to_owned(), max));
        }
        let io_err = |e: io::Error| BindError::Io(path.to_owned(), e);
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_socket() => match Channel::connect(path) {
                Ok(_) => return Err(BindError::InUse(path.to_owned())),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    // Stale socket of a dead writer: replaced by the rename below.
                }
                Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => {
                    return Err(BindError::Foreign(
                        path.to_owned(),
                        "a live socket of another kind (not a surfacesink)".into(),
                    ));
                }
                Err(e) => return Err(io_err(e)),
            },
            Ok(md) => {
                let what = if md.is_dir() {
                    "a directory"
                } else if md.file_type().is_symlink() {
                    "a symbolic link"
                } else {
                    "a regular or special file, not a socket"
                };
                return Err(BindError::Foreign(path.to_owned(), what.into()));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("directory {} does not exist", parent.display()),
            )));
        }
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| io_err(e.into()))?;
        let tmp = bind_temporary(&fd, path)?;
        let cleanup = |e: io::Error| {
            let _ = std::fs::remove_file(&tmp);
            io_err(e)
        };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(cleanup)?;
        listen(&fd, Backlog::new(16).unwrap_or(Backlog::MAXCONN)).map_err(|e| cleanup(e.into()))?;
        std::fs::rename(&tmp, path).map_err(cleanup)?;
        let ino = std::fs::symlink_metadata(path).map_err(io_err)?.ino();
        Ok(Listener {
            fd,
            path: path.to_owned(),
            ino,
        })
    }

    /// Accept one pending connection, if any.
    pub fn accept(&self) -> io::Result<Option<Channel>> {
        match accept4(
            self.fd.as_raw_fd(),
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        ) {
            // SAFETY: accept4 returned a new fd that nobody else owns.
            Ok(fd) => Ok(Some(Channel {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            })),
            Err(Errno::EAGAIN) | Err(Errno::ECONNABORTED) | Err(Errno::EINTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Only remove the socket file if it is still ours (a newer writer may have replaced it).
        if let Ok(md) = std::fs::symlink_metadata(&self.path)
            && md.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Wakes a thread blocked in [`wait_readable`].
#[derive(Debug)]
pub struct Waker {
    fd: EventFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        Ok(Waker {
            fd: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(io::Error::from)?,
        })
    }

    pub fn wake(&self) {
        let _ = self.fd.write(1);
    }

    /// Consume pending wake-ups.
    pub fn drain(&self) {
        let _ = self.fd.read();
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }
}

/// Wait until one of `fds` is readable (or hung up), at most `timeout`. Returns one flag per fd.
pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> io::Result<Vec<bool>> {
    // SAFETY: the callers keep these fds open for the duration of the call.
    let borrowed: Vec<BorrowedFd<'_>> = fds
        .iter()
        .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) })
        .collect();
    let mut pfds: Vec<PollFd<'_>> = borrowed
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let t = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    match poll(&mut pfds, t) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(pfds
        .iter()
        .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}

/// A printable form of a path for messages.
pub fn display_path(p: &Path) -> String {
    String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_surface_is_shared_between_mappings() {
        let mut s = SurfaceMemory::create("test", 4096).unwrap();
        s.as_mut_slice()[..4].copy_from_slice(b"abcd");
        let m = Mapping::map(s.handle(), 4096, false).unwrap();
        assert_eq!(&m.as_slice()[..4], b"abcd");
        assert_eq!(surface_size(s.handle()).unwrap(), 4096);
        // Sealed: growing fails.
        assert!(nix::unistd::ftruncate(s.handle(), 8192).is_err());
    }

    #[test]
    fn only_surfaces_that_cannot_shrink_pass() {
        let sealed = create_memfd("sealed", 4096).unwrap();
        assert_eq!(
            check_surface(sealed.as_fd(), 4096).unwrap(),
            SurfaceKind::SealedMemfd
        );
        let e = check_surface(sealed.as_fd(), 8192).unwrap_err().to_string();
        assert!(
            e.contains("declares 8192 bytes") && e.contains("holds only 4096 bytes"),
            "{e}"
        );
        // F_SEAL_SEAL: nobody can add seals (e.g. a reader sealing writes) afterwards.
        assert!(fcntl(&sealed, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)).is_err());

        let unsealed = memfd_create(
            c"unsealed",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .unwrap();
        nix::unistd::ftruncate(&unsealed, 4096).unwrap();
        let e = check_surface(unsealed.as_fd(), 4096)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not sealed against shrinking"), "{e}");

        let file = tempfile::tempfile().unwrap();
        file.set_len(4096).unwrap();
        let e = check_surface(file.as_fd(), 4096).unwrap_err().to_string();
        // (on a tmpfs /tmp the file reports seals and is refused as unsealed)
        assert!(
            e.contains("neither a sealed memfd nor a DMA-BUF")
                || e.contains("not sealed against shrinking"),
            "{e}"
        );
    }

    #[test]
    fn fds_travel_and_keep_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = Listener::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let c = Channel::connect(&path).unwrap();
        wait_readable(&[l.raw_fd()], Duration::from_secs(5)).unwrap();
        let s = l.accept().unwrap().expect("a pending connection");
        let mem = SurfaceMemory::create("x", 4096).unwrap();
        s.send(b"hello", Some(mem.handle())).unwrap();
        let mut buf = vec![0u8; MAX_MESSAGE_LEN];
        wait_readable(&[c.raw_fd()], Duration::from_secs(5)).unwrap();
        match c.recv(&mut buf).unwrap() {
            Received::Message { len, fds } => {
                assert_eq!(&buf[..len], b"hello");
                assert_eq!(fds.len(), 1);
                assert_eq!(
                    surface_identity(fds[0].as_fd()).unwrap(),
                    surface_identity(mem.handle()).unwrap()
                );
            }
            _ => panic!("no message"),
        }
        drop(s);
        wait_readable(&[c.raw_fd()], Duration::from_secs(5)).unwrap();
        assert!(matches!(c.recv(&mut buf).unwrap(), Received::Closed));
        // A second writer on a live socket is refused, naming the path.
        let e = Listener::bind(&path).unwrap_err().to_string();
        assert!(e.contains("in use") && e.contains("s.sock"), "{e}");
        drop(l);
        assert!(!path.exists());
    }

    #[test]
    fn stale_socket_is_replaced_foreign_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.sock");
        {
            let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
            // Leak the file: UnixListener does not unlink on drop.
        }
        assert!(path.exists());
        let l = Listener::bind(&path).unwrap();
        drop(l);
        let foreign = dir.path().join("file");
        std::fs::write(&foreign, b"data").unwrap();
        let e = Listener::bind(&foreign).unwrap_err().to_string();
        assert!(e.contains("not a socket") && e.contains("file"), "{e}");
        assert_eq!(std::fs::read(&foreign).unwrap(), b"data");
        // Whatever sits at the temporary name is never removed: another name is used, and when
        // every name is taken the error names the path.
        let sock = dir.path().join("t.sock");
        let pid = std::process::id();
        let tmp0 = dir.path().join(format!("t.sock.{pid}.tmp"));
        std::fs::write(&tmp0, b"keep me").unwrap();
        drop(Listener::bind(&sock).unwrap());
        assert_eq!(std::fs::read(&tmp0).unwrap(), b"keep me");
        std::fs::remove_file(&tmp0).unwrap();
        std::fs::create_dir(&tmp0).unwrap();
        for n in 1..TMP_ATTEMPTS {
            std::fs::create_dir(dir.path().join(format!("t.sock.{pid}.{n}.tmp"))).unwrap();
        }
        let e = Listener::bind(&sock).unwrap_err().to_string();
        assert!(
            e.contains(&format!("t.sock.{pid}.tmp is a directory")) && e.contains("untouched"),
            "{e}"
        );
        assert!(tmp0.is_dir());
        let long = dir.path().join("x".repeat(120));
        let e = Listener::bind(&long).unwrap_err().to_string();
        assert!(e.contains("too long"), "{e}");
    }
}
