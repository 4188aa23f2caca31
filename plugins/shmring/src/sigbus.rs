// SPDX-License-Identifier: MPL-2.0
//! Surviving a peer that shrinks a mapped ring, the way libwayland-server's `wl_shm` does.
//!
//! A process with write access to a shm object can `ftruncate` it while we have it mapped; the
//! next access to a page past the new end raises `SIGBUS`, which would kill us. Every ring
//! mapping is registered here ([`register`]). A process-wide `SIGBUS` handler (installed once,
//! `SA_SIGINFO`) looks the faulting address up: inside a registered mapping, it maps anonymous
//! zero pages over the whole mapping (`MAP_FIXED`), marks the mapping as faulted and returns, so
//! the interrupted access finishes on zeros. Whoever uses the mapping checks
//! [`MappingGuard::faulted`] afterwards and discards what it read. Faults anywhere else go to the
//! handler that was installed before ours (or the default action, which kills as it always did).
//!
//! The table is a fixed array of atomics, so the handler never locks or allocates.

use std::cell::UnsafeCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// How many mappings one process may have registered at once (each ring reader/writer holds one).
pub const MAX_MAPPINGS: usize = 256;

struct Entry {
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Entry = Entry {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    faulted: AtomicBool::new(false),
};

static TABLE: [Entry; MAX_MAPPINGS] = [EMPTY; MAX_MAPPINGS];

/// The `SIGBUS` action that was installed before ours (written once, before our handler is
/// installed; only read afterwards).
struct OldAction(UnsafeCell<libc::sigaction>);

// SAFETY: written once inside `INSTALLED`'s initialiser before the handler can run, then only read.
unsafe impl Sync for OldAction {}

static OLD_ACTION: OldAction = OldAction(UnsafeCell::new(unsafe { std::mem::zeroed() }));
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// A registered mapping; unregistered on drop (drop it before unmapping).
#[derive(Debug)]
pub struct MappingGuard {
    index: usize,
}

impl MappingGuard {
    /// Did an access to the mapping fault (the object shrank under us)? The mapping then holds
    /// anonymous zero pages: nothing read from it since is real.
    pub fn faulted(&self) -> bool {
        TABLE[self.index].faulted.load(Ordering::Acquire)
    }
}

impl Drop for MappingGuard {
    fn drop(&mut self) {
        let e = &TABLE[self.index];
        e.len.store(0, Ordering::Release);
        e.faulted.store(false, Ordering::Release);
        e.start.store(0, Ordering::Release);
    }
}

/// Register the mapping `[ptr, ptr + len)` so that a `SIGBUS` inside it is survived. Installs the
/// handler on first use.
pub fn register(ptr: *mut u8, len: usize) -> Result<MappingGuard, String> {
    INSTALLED.get_or_init(install).clone()?;
    let start = ptr as usize;
    if start == 0 || len == 0 {
        return Err("cannot guard an empty mapping".into());
    }
    for (index, e) in TABLE.iter().enumerate() {
        if e.start
            .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            e.faulted.store(false, Ordering::Release);
            e.len.store(len, Ordering::Release);
            return Ok(MappingGuard { index });
        }
    }
    Err(format!(
        "more than {MAX_MAPPINGS} shm rings mapped in this process"
    ))
}

fn install() -> Result<(), String> {
    // SAFETY: plain sigaction calls with valid structures; OLD_ACTION is written before our
    // handler is installed, so the handler only ever reads a complete value.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), OLD_ACTION.0.get()) != 0 {
            return Err(format!(
                "cannot read the SIGBUS action: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "cannot install the SIGBUS handler: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for e in TABLE.iter() {
        let start = e.start.load(Ordering::Acquire);
        if start == 0 || addr < start {
            continue;
        }
        let len = e.len.load(Ordering::Acquire);
        if addr - start >= len {
            continue;
        }
        e.faulted.store(true, Ordering::Release);
        // SAFETY: replaces exactly the registered mapping (still alive: its owner is the one
        // accessing it) with private zero pages; mmap is a plain system call.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            // Return: the faulting access is retried and now reads/writes zero pages.
            return;
        }
        break;
    }
    // SAFETY: as the previous handler expects to be called.
    unsafe { chain(sig, info, ctx) }
}

/// Hand a fault that is not ours to whoever handled SIGBUS before us.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: only read after install() wrote it.
    let old = unsafe { &*OLD_ACTION.0.get() };
    // SAFETY: valid siginfo (see above).
    let sent_by_process = unsafe { (*info).si_code } <= 0;
    match old.sa_sigaction {
        libc::SIG_IGN if sent_by_process => (),
        libc::SIG_DFL | libc::SIG_IGN => {
            // Restore the default action: a real fault happens again on return and kills the
            // process as it would have without us; a SIGBUS sent with kill() is re-raised.
            // SAFETY: sigaction and raise are async-signal-safe.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigemptyset(&mut dfl.sa_mask);
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
                if sent_by_process {
                    libc::raise(libc::SIGBUS);
                }
            }
        }
        h if old.sa_flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: an SA_SIGINFO handler has this signature.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(h) };
            f(sig, info, ctx);
        }
        h => {
            // SAFETY: a plain handler has this signature.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
            f(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGBUS outside every registered ring is not swallowed: it goes to the previous handler
    /// (here the Rust runtime's) and then the default action, so the process dies of SIGBUS as it
    /// would without us. Runs in a forked child.
    #[test]
    fn faults_outside_rings_still_kill() {
        // SAFETY: plain system calls on our own memfd and mappings; the child only touches
        // memory and calls _exit.
        unsafe {
            let fd = libc::memfd_create(c"sigbus-test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, 8192), 0);
            let p = libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::ftruncate(fd, 0), 0);
            // Install our handler (a registered ring elsewhere), then unregister it.
            let other = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(other, libc::MAP_FAILED);
            let guard = register(other as *mut u8, 4096).expect("register");
            drop(guard);
            // A registered ring over the truncated mapping survives in this process...
            let guard = register(p as *mut u8, 8192).expect("register");
            let v = std::ptr::read_volatile(p as *const u8);
            assert_eq!(v, 0);
            assert!(guard.faulted());
            drop(guard);
            // ...an unregistered one kills (in a child).
            let q = libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(q, libc::MAP_FAILED);
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                let _ = std::ptr::read_volatile(q as *const u8);
                libc::_exit(0);
            }
            let mut status = 0;
            let mut done = 0;
            for _ in 0..1000 {
                done = libc::waitpid(pid, &mut status, libc::WNOHANG);
                if done != 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if done == 0 {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
                panic!("the child neither died nor exited within 10 s (fault loop?)");
            }
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS,
                "child status {status:#x}: a fault outside any ring must kill with SIGBUS"
            );
            libc::munmap(p, 8192);
            libc::munmap(q, 8192);
            libc::munmap(other, 4096);
            libc::close(fd);
        }
    }
}
