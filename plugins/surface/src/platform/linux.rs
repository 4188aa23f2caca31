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

/// A sealed (fixed-size) memfd of `size` bytes.
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
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
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
        let msg = match recvmsg::<()>(
            self.fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::EAGAIN) => return Ok(Received::WouldBlock),
            Err(Errno::ECONNRESET) => return Ok(Received::Closed),
            Err(e) => return Err(e.into()),
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
            BindError::Io(p, e) => write!(f, "cannot create socket {}: {e}", p.display()),
        }
    }
}

/// Suffix of the temporary name the socket is bound under before it is moved into place.
const TMP_SUFFIX_MAX: usize = ".4294967295.tmp".len();
const SUN_PATH_MAX: usize = 107;

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
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);

        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| io_err(e.into()))?;
        let addr = UnixAddr::new(&tmp).map_err(|e| io_err(e.into()))?;
        bind(fd.as_raw_fd(), &addr).map_err(|e| io_err(e.into()))?;
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
        let long = dir.path().join("x".repeat(120));
        let e = Listener::bind(&long).unwrap_err().to_string();
        assert!(e.contains("too long"), "{e}");
    }
}
