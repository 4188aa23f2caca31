// SPDX-License-Identifier: MPL-2.0
//! POSIX shared-memory segments holding a ring, and the futex readers sleep on.
//! No GStreamer types here: the elements adapt these errors into element errors.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use crate::ring::{self, Geometry, LayoutError, RingMemory, WriterState};
use crate::sigbus::{self, MappingGuard};

/// Where Linux keeps POSIX shm objects (for messages and inode checks).
pub fn shm_path(name: &str) -> String {
    format!("/dev/shm{}", ring::canonical_shm_name(name))
}

/// Why a segment could not be created or opened; the `Display` text names the path and says
/// what to do.
#[derive(Debug)]
pub enum ShmError {
    /// The shm name is malformed.
    BadName(String),
    /// No segment with this name (yet).
    NotFound(String),
    /// The writer is still initialising it: try again shortly.
    NotReady(String),
    /// Permission denied.
    Permission(String),
    /// Something else lives at the name.
    Foreign(String),
    /// A ring of another layout version.
    Version(String),
    /// Too small / inconsistent.
    Corrupt(String),
    /// Another live writer owns the ring.
    Busy(String),
    /// The object at the name belongs to another user (a writer never adopts it).
    NotOurs(String),
    /// The mapped object shrank under us (another process truncated it).
    Broken(String),
    /// Any other OS error.
    Os(String),
}

impl ShmError {
    /// Transient: a reader waiting for a writer keeps trying.
    pub fn is_transient(&self) -> bool {
        matches!(self, ShmError::NotFound(_) | ShmError::NotReady(_))
    }
}

impl std::fmt::Display for ShmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShmError::BadName(s)
            | ShmError::NotFound(s)
            | ShmError::NotReady(s)
            | ShmError::Permission(s)
            | ShmError::Foreign(s)
            | ShmError::Version(s)
            | ShmError::Corrupt(s)
            | ShmError::Busy(s)
            | ShmError::NotOurs(s)
            | ShmError::Broken(s)
            | ShmError::Os(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ShmError {}

fn describe_owner(name: &str) -> String {
    match std::fs::metadata(shm_path(name)) {
        Ok(md) => format!(
            "it is owned by uid {} with mode {:04o}, we run as uid {}",
            md.uid(),
            md.mode() & 0o7777,
            // SAFETY: getuid never fails.
            unsafe { libc::getuid() }
        ),
        Err(_) => String::from("its owner and mode could not be read"),
    }
}

fn shm_open(name: &str, oflag: i32, mode: u32) -> io::Result<File> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // O_NONBLOCK: a FIFO planted at the name must not block us in open(); glibc adds
    // O_NOFOLLOW. SAFETY: valid NUL-terminated string; on success we own the returned fd.
    let fd = unsafe {
        libc::shm_open(
            c.as_ptr(),
            oflag | libc::O_CLOEXEC | libc::O_NONBLOCK,
            mode as libc::mode_t,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly opened descriptor we own.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Remove the name (readers that mapped it keep their mapping).
pub fn unlink(name: &str) -> io::Result<()> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid NUL-terminated string.
    if unsafe { libc::shm_unlink(c.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() }
}

/// May a writer reuse the existing object `file` at `path`? Checked with `fstat` on the open fd
/// (not the name, which may change meanwhile): a regular file owned by our effective uid.
/// Returns whether its mode is wider than `mode` (then it must be replaced, not reused: someone
/// may hold an fd opened under the wider mode).
fn check_reusable(file: &File, path: &str, mode: u32) -> Result<bool, ShmError> {
    let md = file
        .metadata()
        .map_err(|e| ShmError::Os(format!("cannot stat {path}: {e}")))?;
    if !md.file_type().is_file() {
        return Err(ShmError::Foreign(format!(
            "{path} exists and is not a regular file; pick another shm-name or remove it \
             (rm {path})"
        )));
    }
    let me = euid();
    if md.uid() != me {
        return Err(ShmError::NotOurs(format!(
            "{path} already exists and is owned by uid {} (mode {:04o}), not by this writer's \
             uid {me}; its owner could read the frames and truncate the ring, so it is not \
             reused: pick another shm-name or remove it (rm {path})",
            md.uid(),
            md.mode() & 0o7777
        )));
    }
    Ok(md.mode() & 0o7777 & !mode != 0)
}

/// Is process `pid` alive (as far as we can tell from this pid namespace)?
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid as i32, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// `CLOCK_MONOTONIC` in milliseconds, low 32 bits (the clock of reader pins, see
/// [`crate::ring::PIN_MS`]).
pub fn monotonic_ms() -> u32 {
    (monotonic_ns() / 1_000_000) as u32
}

/// `CLOCK_MONOTONIC` in nanoseconds (the clock of the slots' publish time, same in every
/// process).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleep until the ring's futex word (low 32 bits of `write_seq`) is no longer `expected`, a
/// wake-up, or `timeout`. Shared (not process-private) futex, so it works across processes.
pub fn futex_wait(mem: &RingMemory, expected: u32, timeout: Duration) {
    let word = mem.futex_word();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` points into a live mapping; FUTEX_WAIT only reads it. Spurious returns
    // (EINTR, EAGAIN, ETIMEDOUT) are fine, callers re-check.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wake every reader sleeping on the ring's futex word.
pub fn futex_wake(mem: &RingMemory) {
    let word = mem.futex_word();
    // SAFETY: `word` points into a live mapping.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// A mapped segment, guarded against SIGBUS (see [`crate::sigbus`]). Unmapped on drop.
#[derive(Debug)]
pub struct Segment {
    name: String,
    file: File,
    ptr: *mut u8,
    len: usize,
    ino: u64,
    writable: bool,
    guard: Option<MappingGuard>,
}

// SAFETY: the mapping is process-wide memory; access goes through RingMemory's atomics.
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

impl Drop for Segment {
    fn drop(&mut self) {
        // Unregister before unmapping: the address range may be reused right after.
        drop(self.guard.take());
        // SAFETY: ptr/len come from a successful mmap that nothing else unmaps.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

/// Map `len` bytes of `file` and register the mapping with the SIGBUS guard.
fn map(file: &File, len: usize, writable: bool) -> io::Result<(*mut u8, MappingGuard)> {
    let ptr = map_raw(file, len, writable)?;
    match sigbus::register(ptr, len) {
        Ok(guard) => Ok((ptr, guard)),
        Err(e) => {
            // SAFETY: just mapped above, nothing else uses it.
            unsafe { libc::munmap(ptr as *mut libc::c_void, len) };
            Err(io::Error::other(e))
        }
    }
}

fn map_raw(file: &File, len: usize, writable: bool) -> io::Result<*mut u8> {
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // SAFETY: mapping a regular shm fd; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(file),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p as *mut u8)
}

impl Segment {
    /// Map `len` bytes of `file` (the object at `name`, inode `ino`; 0 if not needed).
    fn map(name: &str, file: File, len: usize, ino: u64, writable: bool) -> io::Result<Segment> {
        let (ptr, guard) = map(&file, len, writable)?;
        Ok(Segment {
            name: name.to_string(),
            file,
            ptr,
            len,
            ino,
            writable,
            guard: Some(guard),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mapping is read-write (a reader may pin slots).
    pub fn writable(&self) -> bool {
        self.writable
    }

    pub fn path(&self) -> String {
        shm_path(&self.name)
    }

    pub fn memory(&self) -> RingMemory {
        // SAFETY: the mapping lives as long as self; mmap returns page-aligned memory.
        unsafe { RingMemory::new(self.ptr, self.len) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Is the mapping still backed by the object? `Err(Broken)` once another process truncated
    /// it below the mapped size (checked with `fstat` on our fd, a cheap system call) or an access
    /// faulted (the SIGBUS guard then replaced the mapping by zero pages): nothing read from the
    /// ring since can be trusted.
    pub fn check_intact(&self) -> Result<(), ShmError> {
        let path = self.path();
        let shrank = |now: u64| {
            ShmError::Broken(format!(
                "{path} shrank to {now} bytes while mapped ({} bytes): another process \
                 truncated the ring; stop that process, then restart the writer (it re-creates \
                 the ring)",
                self.len
            ))
        };
        if self.guard.as_ref().is_some_and(|g| g.faulted()) {
            let now = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            return Err(shrank(now));
        }
        match self.file.metadata() {
            Ok(md) if md.len() < self.len as u64 => Err(shrank(md.len())),
            Ok(_) => Ok(()),
            Err(e) => Err(ShmError::Os(format!("cannot stat {path}: {e}"))),
        }
    }

    /// Did an access to the mapping fault (the SIGBUS guard replaced it by zero pages)? A cheap
    /// check without a system call; [`Self::check_intact`] also notices a shrink before a fault.
    pub fn check_faulted(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| g.faulted())
    }

    /// Does the name still refer to the object we mapped?
    pub fn name_still_ours(&self) -> bool {
        std::fs::metadata(self.path())
            .map(|m| m.ino() == self.ino)
            .unwrap_or(false)
    }

    /// Open an existing ring for reading. The mapping is read-write when the object allows it
    /// (the reader then only writes its slot pins, see [`RingMemory::pin`]), else read-only
    /// ([`Self::writable`] says which).
    pub fn open_reader(name: &str) -> Result<(Segment, Geometry), ShmError> {
        ring::validate_shm_name(name).map_err(ShmError::BadName)?;
        let path = shm_path(name);
        let opened = match shm_open(name, libc::O_RDWR, 0) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EACCES | libc::EROFS | libc::EISDIR)
                ) =>
            {
                shm_open(name, libc::O_RDONLY, 0).map(|f| (f, false))
            }
            other => other.map(|f| (f, true)),
        };
        let (file, writable) = match opened {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(ShmError::NotFound(format!(
                    "no shm ring at {path} (is the writer running with shm-name={name}?)"
                )));
            }
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                return Err(ShmError::Permission(format!(
                    "permission denied opening {path} for reading: {}; run the reader as the \
                     writer's user or give the writer a wider mode (e.g. mode=0644)",
                    describe_owner(name)
                )));
            }
            Err(e) => return Err(ShmError::Os(format!("cannot open {path}: {e}"))),
        };
        let md = file
            .metadata()
            .map_err(|e| ShmError::Os(format!("cannot stat {path}: {e}")))?;
        let size = md.len() as usize;
        if !md.file_type().is_file() {
            return Err(ShmError::Foreign(format!(
                "{path} is not a regular file; another program uses this name: pick another \
                 shm-name or remove it (rm {path})"
            )));
        }
        if size == 0 {
            return Err(ShmError::NotReady(format!(
                "{path} is empty (a writer is creating it)"
            )));
        }
        if size < ring::HEADER_SIZE {
            let mut head = [0u8; 8];
            let n = std::os::unix::fs::FileExt::read_at(&file, &mut head, 0).unwrap_or(0);
            if n == 8 && head == ring::MAGIC {
                return Err(ShmError::Corrupt(format!(
                    "{path} is only {size} bytes, too small for a shm ring header \
                     ({} bytes); remove it (rm {path}) and restart the writer",
                    ring::HEADER_SIZE
                )));
            }
            return Err(ShmError::Foreign(format!(
                "{path} is not a vcambridge shm ring ({size} bytes, no ring magic); another \
                 program uses this name: pick another shm-name or remove the file (rm {path})"
            )));
        }
        // Validate the header against the object's real size before mapping anything: a hostile
        // header must not make us map (or later allocate) what the object does not hold.
        let mut head = HeaderBuf([0; ring::HEADER_SIZE]);
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut head.0, 0)
            .map_err(|e| ShmError::Os(format!("cannot read {path}: {e}")))?;
        // SAFETY: a 64-byte aligned local buffer of HEADER_SIZE bytes, alive for the call.
        let header = unsafe { RingMemory::new(head.0.as_mut_ptr(), ring::HEADER_SIZE) };
        let g = header
            .validate_within(size)
            .map_err(|e| layout_error(name, e))?;
        let len = g.total_size();
        let seg = Segment::map(name, file, len, md.ino(), writable)
            .map_err(|e| ShmError::Os(format!("cannot map {path}: {e}")))?;
        // The writer may have re-initialised it between the read and the map: check again on
        // the mapping (the object cannot have shrunk below `len` unnoticed: see check_intact).
        seg.check_intact()?;
        if seg.memory().validate().map_err(|e| layout_error(name, e))? != g {
            return Err(ShmError::NotReady(format!(
                "{path} changed while being opened"
            )));
        }
        if seg.memory().state() == Some(WriterState::Closed) {
            // Left (or being replaced) by its writer: wait for the next one.
            return Err(ShmError::NotReady(format!(
                "{path} was closed by its writer (pid {})",
                seg.memory().writer_pid()
            )));
        }
        Ok((seg, g))
    }

    /// Create the ring, or reclaim the one a previous writer left behind (crashed or stopped):
    /// returns the segment, initialised and live, with a generation one above the old one.
    /// `mode` is applied to the object (0600 by default in the elements).
    pub fn create_writer(
        name: &str,
        mode: u32,
        geometry: &Geometry,
    ) -> Result<(Segment, u64), ShmError> {
        ring::validate_shm_name(name).map_err(ShmError::BadName)?;
        let path = shm_path(name);
        let pid = std::process::id();
        let mut generation = 1;
        for _attempt in 0..3 {
            match shm_open(name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, mode) {
                Ok(file) => {
                    let seg = Self::init_new(name, file, mode, geometry, pid, generation)?;
                    return Ok((seg, generation));
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                    return Err(ShmError::Permission(format!(
                        "permission denied creating {path}: {e}"
                    )));
                }
                Err(e) => return Err(ShmError::Os(format!("cannot create {path}: {e}"))),
            }
            // Something exists: is it a ring we may reclaim?
            let Some(file) = open_existing_for_writing(name, &path)? else {
                continue;
            };
            // Ours (owner = our euid, regular file) or refused; a mode wider than asked for
            // means the object is replaced below, never reused.
            let wider = check_reusable(&file, &path, mode)?;
            let md = file
                .metadata()
                .map_err(|e| ShmError::Os(format!("cannot stat {path}: {e}")))?;
            let size = md.len() as usize;
            if size == 0 {
                if !wider {
                    // Our own empty object: nothing to lose, take it.
                    let seg = Self::init_new(name, file, mode, geometry, pid, generation)?;
                    return Ok((seg, generation));
                }
                let _ = unlink(name);
                continue;
            }
            if size < ring::HEADER_SIZE {
                return Err(not_a_ring(&path, format!("{size} bytes")));
            }
            let old = Segment::map(name, file, size, md.ino(), true)
                .map_err(|e| ShmError::Os(format!("cannot map {path}: {e}")))?;
            let mem = old.memory();
            if mem.magic() != ring::MAGIC {
                let magic = mem.magic();
                return Err(not_a_ring(
                    &path,
                    format!("magic {:?}", String::from_utf8_lossy(&magic)),
                ));
            }
            check_version(&path, mem.version())?;
            check_no_other_writer(&path, &mem, pid)?;
            generation = mem.generation().wrapping_add(1).max(1);
            // Re-initialise in place only with the identical geometry: attached readers keep
            // using theirs until they notice the new generation.
            // A wider mode than asked for: replace the object (someone may hold an fd opened
            // under that mode).
            if !wider && size == geometry.total_size() && mem.validate().ok() == Some(*geometry) {
                if md.mode() & 0o7777 != mode {
                    let _ = old
                        .file
                        .set_permissions(std::fs::Permissions::from_mode(mode));
                }
                mem.initialize(geometry, pid, generation);
                futex_wake(&mem);
                return Ok((old, generation));
            }
            // Different geometry: abandon the old object and create a new one. Unlink first, so
            // readers that see the old one closed and re-open the name never find it again.
            let _ = unlink(name);
            mem.set_state(WriterState::Closed);
            mem.set_generation(generation);
            futex_wake(&mem);
            drop(old);
        }
        Err(ShmError::Os(format!(
            "{path} keeps changing under us (another writer racing for it?)"
        )))
    }

    /// What [`Self::create_writer`] would find at `name`, without changing anything: `None` if
    /// nothing is there, the geometry of a ring a writer may reclaim, or the error a writer would
    /// get (foreign file, version, another live writer, permissions).
    pub fn check_writable(name: &str, mode: u32) -> Result<Option<Geometry>, ShmError> {
        ring::validate_shm_name(name).map_err(ShmError::BadName)?;
        let path = shm_path(name);
        let Some(file) = open_existing_for_writing(name, &path)? else {
            return Ok(None);
        };
        // The owner check of create_writer: another user's object is refused right away.
        let wider = check_reusable(&file, &path, mode)?;
        let size = file
            .metadata()
            .map_err(|e| ShmError::Os(format!("cannot stat {path}: {e}")))?
            .len() as usize;
        if size == 0 {
            return Ok(None);
        }
        let mut head = [0u8; 16];
        let n = std::os::unix::fs::FileExt::read_at(&file, &mut head, 0).unwrap_or(0);
        if size < ring::HEADER_SIZE || n < 16 || head[..8] != ring::MAGIC {
            return Err(not_a_ring(&path, format!("{size} bytes")));
        }
        check_version(
            &path,
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]),
        )?;
        let seg = Segment::map(name, file, size, 0, false)
            .map_err(|e| ShmError::Os(format!("cannot map {path}: {e}")))?;
        let mem = seg.memory();
        check_no_other_writer(&path, &mem, std::process::id())?;
        // A ring with a wider mode is replaced by create_writer: nothing to reclaim.
        Ok(mem.validate().ok().filter(|_| !wider))
    }

    fn init_new(
        name: &str,
        file: File,
        mode: u32,
        geometry: &Geometry,
        pid: u32,
        generation: u64,
    ) -> Result<Segment, ShmError> {
        let path = shm_path(name);
        let fail = |what: String, e: io::Error| {
            let _ = unlink(name);
            ShmError::Os(format!("{what}: {e}"))
        };
        // The umask may have narrowed the mode: set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail(format!("cannot chmod {path}"), e))?;
        let len = geometry.total_size();
        file.set_len(len as u64).map_err(|e| {
            fail(
                format!("cannot size {path} to {len} bytes (is /dev/shm full? `df /dev/shm`)"),
                e,
            )
        })?;
        // Reserve the memory now: on a full /dev/shm this fails cleanly here instead of killing
        // the writer with SIGBUS on its first write into a slot.
        // SAFETY: plain syscall on our own fd.
        let r = unsafe {
            libc::posix_fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                len as libc::off_t,
            )
        };
        if r != 0 {
            return Err(fail(
                format!("cannot reserve {len} bytes for {path} (is /dev/shm full? `df /dev/shm`)"),
                io::Error::from_raw_os_error(r),
            ));
        }
        let md = file
            .metadata()
            .map_err(|e| fail(format!("cannot stat {path}"), e))?;
        let seg = Segment::map(name, file, len, md.ino(), true)
            .map_err(|e| fail(format!("cannot map {path}"), e))?;
        seg.memory().initialize(geometry, pid, generation);
        Ok(seg)
    }
}

/// A 64-byte aligned copy of a ring header.
#[repr(C, align(64))]
struct HeaderBuf([u8; ring::HEADER_SIZE]);

/// Turn a layout problem found by a reader into a message naming the path.
/// Open what exists at `name` for writing: `None` if nothing is there (any more).
fn open_existing_for_writing(name: &str, path: &str) -> Result<Option<File>, ShmError> {
    match shm_open(name, libc::O_RDWR, 0) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => Err(ShmError::Permission(format!(
            "permission denied opening the existing {path} for writing: {}; remove \
             it (rm {path}) or run the writer as its owner",
            describe_owner(name)
        ))),
        Err(e) => Err(ShmError::Os(format!("cannot open {path}: {e}"))),
    }
}

/// The object at `path` is something else than a ring (`what`: its size or magic).
fn not_a_ring(path: &str, what: String) -> ShmError {
    ShmError::Foreign(format!(
        "{path} exists and is not a vcambridge shm ring ({what}); pick another \
         shm-name or remove the file (rm {path})"
    ))
}

/// A ring of another layout version is never reused.
fn check_version(path: &str, version: u32) -> Result<(), ShmError> {
    if version == ring::LAYOUT_VERSION {
        return Ok(());
    }
    Err(ShmError::Version(format!(
        "{path} holds a shm ring of layout version {version}, this writer speaks \
         version {}; stop the programs using it and remove it (rm {path})",
        ring::LAYOUT_VERSION
    )))
}

/// One writer per ring: refused while another live process (not `pid`) writes to it.
fn check_no_other_writer(path: &str, mem: &RingMemory, pid: u32) -> Result<(), ShmError> {
    let old_pid = mem.writer_pid();
    if old_pid != pid && pid_alive(old_pid) && !matches!(mem.state(), Some(WriterState::Closed)) {
        return Err(ShmError::Busy(format!(
            "{path} is in use by another writer (pid {old_pid}); only one writer per ring: \
             stop it or pick another shm-name"
        )));
    }
    Ok(())
}

pub fn layout_error(name: &str, e: LayoutError) -> ShmError {
    let path = shm_path(name);
    match e {
        LayoutError::NotReady => ShmError::NotReady(format!("{path}: {e}")),
        LayoutError::BadMagic { .. } => ShmError::Foreign(format!(
            "{path} is {e}; another program uses this name: pick another shm-name or remove the \
             file (rm {path})"
        )),
        LayoutError::VersionMismatch { .. } => ShmError::Version(format!(
            "{path}: {e}; use a reader and writer of the same vcambridge release"
        )),
        LayoutError::TooSmall { .. } | LayoutError::Invalid(_) => ShmError::Corrupt(format!(
            "{path}: {e}; remove it (rm {path}) and restart the writer"
        )),
    }
}

#[cfg(test)]
mod tests;
