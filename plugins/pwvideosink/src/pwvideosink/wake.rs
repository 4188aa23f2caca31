// SPDX-License-Identifier: MPL-2.0

//! Waking PipeWire's data thread straight from the streaming thread.
//!
//! A frame used to travel streaming thread → loop thread (`Msg::Wake`) → data thread (the
//! loop thread's `pw_stream_trigger_process` is a `pw_loop_invoke` onto the data loop): one
//! hop more than `pipewiresink`, which triggers from its streaming thread under its
//! `pw_thread_loop` lock. Our streaming thread may not invoke onto the data loop (in PipeWire
//! 0.3.x that queue has a single writer, the loop thread, and no lock), so it writes an
//! eventfd instead ([`WakeFd`], safe from any thread) that an IO source on the data loop
//! reads ([`DataWake`]); the data thread then sends the frame and starts the graph cycle
//! itself, inline (`pw_loop_invoke` from a loop's own thread is a plain call; see [`on_wake`]
//! for why by queuing rather than `pw_stream_trigger_process`).
//!
//! The same IO-source mechanism carries the [`RecycleTimer`] of DMA-BUF pass-through.
//!
//! Known exposure: these callbacks run outside PipeWire's graph cycles, so PipeWire's own
//! guard (taking a port out of the data loop while its buffers change) does not cover them;
//! a wake or recycle landing while the loop thread is inside `use_buffers` could dequeue a
//! buffer not yet announced by `add_buffer` (the pool would then miss that one buffer).
//! `pipewiresink`, which queues from its streaming thread, has the same exposure. A gate
//! (flag raised in the first `remove_buffer`/`add_buffer`, cleared after the dispatch) was
//! tried and stalled the caps-change test in 4 of 10 runs; not kept.
//!
//! Lifetimes: the eventfd belongs to [`Shared`] (so a write can never hit a closed or reused
//! fd); the IO source is added and removed on the data thread (blocking invokes from the loop
//! thread, the queue's one writer); the stream pointer the data thread uses is cleared, and
//! the data thread synchronised with, before the loop thread lets a stream go.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_int, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::time::Duration;

use pipewire as pw;
use pw::spa;

use super::data_thread;
use super::dmabuf::PoolMode;
use super::mailbox::{Shared, lock};

/// The eventfd the streaming thread writes to wake the data thread (none if it could not be
/// created: then frames take the loop thread's path).
pub(crate) struct WakeFd(Option<OwnedFd>);

impl Default for WakeFd {
    fn default() -> Self {
        // SAFETY: a plain eventfd(2); the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        // SAFETY: a fresh fd owned by nobody else.
        WakeFd((fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

impl WakeFd {
    /// Wake the data thread. Never blocks (a full counter already means "awake").
    pub fn signal(&self) {
        if let Some(fd) = &self.0 {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a local to our own fd.
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    fn raw(&self) -> Option<RawFd> {
        self.0.as_ref().map(|fd| fd.as_raw_fd())
    }
}

/// A one-shot timer (timerfd) on the data loop that starts a graph cycle of its own while
/// DMA-BUF pass-through holds upstream's frames and no new frame comes: PipeWire hands a
/// buffer the consumer returned back to the producer only in a cycle, and upstream (its pool
/// all held in our `pw_buffer`s) has no frame left to start one. Armed and read on the data
/// thread only (`timerfd_settime` is a plain syscall).
pub(crate) struct RecycleTimer(Option<OwnedFd>);

impl Default for RecycleTimer {
    fn default() -> Self {
        // SAFETY: a plain timerfd_create(2); the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
            )
        };
        // SAFETY: a fresh fd owned by nobody else.
        RecycleTimer((fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

impl RecycleTimer {
    /// Fire once after `after` (replacing an earlier setting).
    pub fn arm(&self, after: Duration) {
        let Some(fd) = &self.0 else { return };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: (after.subsec_nanos() as libc::c_long).max(1),
            },
        };
        // SAFETY: sets our own timerfd from a local spec.
        unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }

    fn raw(&self) -> Option<RawFd> {
        self.0.as_ref().map(|fd| fd.as_raw_fd())
    }
}

/// After an empty cycle, how soon to try again while upstream's frames are still held.
pub(crate) const RECYCLE_RETRY: Duration = Duration::from_millis(10);

/// What the data thread's IO source works with.
struct WakeCtx {
    shared: Arc<Shared>,
    /// The stream to trigger (null while there is none); see the module doc for its lifetime.
    stream: AtomicPtr<pw::sys::pw_stream>,
    /// `pw_stream_trigger_process` was called on `stream` (see [`on_wake`]).
    triggered: AtomicBool,
}

/// The IO source on the data loop that reads [`WakeFd`] and triggers the stream. Owned by the
/// loop thread; dropping it removes the source (on the data thread).
pub(crate) struct DataWake {
    data_loop: *mut pw::sys::pw_loop,
    /// The wake eventfd's source and the recycle timer's (if it has one).
    sources: Vec<*mut spa::sys::spa_source>,
    ctx: Box<WakeCtx>,
}

impl DataWake {
    /// Add the IO source to `context`'s data loop. `None` (frames then take the loop
    /// thread's path) if there is no eventfd or the source could not be added.
    pub fn install(context: &pw::context::ContextRc, shared: Arc<Shared>) -> Option<Self> {
        let fd = shared.wake.raw()?;
        // SAFETY: the context is alive; its data loop lives as long as it.
        let data_loop = unsafe {
            let dl = pw::sys::pw_context_get_data_loop(context.as_raw_ptr());
            if dl.is_null() {
                return None;
            }
            pw::sys::pw_data_loop_get_loop(dl)
        };
        if data_loop.is_null() {
            return None;
        }
        let recycle_fd = shared.recycle.raw();
        let mut wake = DataWake {
            data_loop,
            sources: Vec::new(),
            ctx: Box::new(WakeCtx {
                shared,
                stream: AtomicPtr::new(std::ptr::null_mut()),
                triggered: AtomicBool::new(false),
            }),
        };
        let ios: [(Option<RawFd>, IoFunc); 2] = [(Some(fd), on_wake), (recycle_fd, on_recycle)];
        for (fd, func) in ios {
            let Some(fd) = fd else { continue };
            let mut add = AddIo {
                // SAFETY: `data_loop` is the context's live data loop (checked for null above).
                utils: unsafe { (*data_loop).utils },
                fd,
                func,
                ctx: &*wake.ctx as *const WakeCtx as *mut c_void,
                source: std::ptr::null_mut(),
                // SAFETY: always safe to call.
                caller: unsafe { libc::pthread_self() },
                realtime: false,
            };
            // SAFETY: a blocking invoke from the loop thread (the data loop's one invoker);
            // `add` outlives it.
            unsafe { invoke_blocking(data_loop, Some(do_add_io), (&mut add as *mut AddIo).cast()) };
            if add.source.is_null() {
                // (Dropping `wake` removes what was added.)
                return None;
            }
            wake.sources.push(add.source);
            wake.ctx
                .shared
                .data_thread_realtime
                .store(add.realtime, Ordering::Relaxed);
        }
        Some(wake)
    }

    /// The stream the data thread triggers from now on.
    pub fn set_stream(&self, stream: *mut pw::sys::pw_stream) {
        self.ctx.triggered.store(false, Ordering::Relaxed);
        self.ctx.stream.store(stream, Ordering::Release);
    }

    /// Stop using the current stream: once this returns, the data thread no longer touches
    /// it (call before disconnecting or dropping a stream).
    pub fn forget_stream(&self) {
        if self
            .ctx
            .stream
            .swap(std::ptr::null_mut(), Ordering::AcqRel)
            .is_null()
        {
            return;
        }
        // An IO callback that loaded the old pointer has finished once the data loop got to
        // this (empty) invoke.
        // SAFETY: a blocking invoke of nothing from the loop thread.
        unsafe { invoke_blocking(self.data_loop, None, std::ptr::null_mut()) };
    }
}

impl Drop for DataWake {
    fn drop(&mut self) {
        self.ctx
            .stream
            .store(std::ptr::null_mut(), Ordering::Release);
        let mut remove = RemoveIo {
            // SAFETY: the data loop outlives us (the loop thread drops us before the context).
            utils: unsafe { (*self.data_loop).utils },
            sources: std::mem::take(&mut self.sources),
        };
        // SAFETY: as in `install`; the source is destroyed on the data thread, after which
        // nothing refers to `ctx` any more.
        unsafe {
            invoke_blocking(
                self.data_loop,
                Some(do_remove_io),
                (&mut remove as *mut RemoveIo).cast(),
            )
        };
    }
}

type IoFunc = unsafe extern "C" fn(*mut c_void, c_int, u32);

struct AddIo {
    utils: *mut spa::sys::spa_loop_utils,
    fd: RawFd,
    func: IoFunc,
    ctx: *mut c_void,
    source: *mut spa::sys::spa_source,
    /// The thread asking (the loop thread).
    caller: libc::pthread_t,
    /// Set by `do_add_io` when it ran on the data thread and found it realtime.
    realtime: bool,
}

struct RemoveIo {
    utils: *mut spa::sys::spa_loop_utils,
    sources: Vec<*mut spa::sys::spa_source>,
}

/// `spa_loop_invoke(loop, func, 0, NULL, 0, true, user_data)`: runs `func` on the loop's
/// thread (or inline, from that thread or before the loop runs) and waits for it.
///
/// # Safety
/// `lp` is a live `pw_loop`; the caller is the loop's only invoker from other threads.
unsafe fn invoke_blocking(
    lp: *mut pw::sys::pw_loop,
    func: spa::sys::spa_invoke_func_t,
    user_data: *mut c_void,
) -> c_int {
    // SAFETY: per the contract; the interface's method table is checked for the entry.
    unsafe {
        let sl = (*lp).loop_;
        if sl.is_null() {
            return -libc::EINVAL;
        }
        let cb = (*sl).iface.cb;
        let methods = cb.funcs as *const spa::sys::spa_loop_methods;
        match (*methods).invoke {
            Some(invoke) => invoke(cb.data, func, 0, std::ptr::null(), 0, true, user_data),
            None => -libc::ENOTSUP,
        }
    }
}

/// The object and method table of a loop's utils interface.
///
/// # Safety
/// `utils` is the live `spa_loop_utils` of a loop.
unsafe fn utils_methods(
    utils: *mut spa::sys::spa_loop_utils,
) -> (*mut c_void, *const spa::sys::spa_loop_utils_methods) {
    // SAFETY: per the contract.
    let cb = unsafe { (*utils).iface.cb };
    (cb.data, cb.funcs as *const spa::sys::spa_loop_utils_methods)
}

/// On the data thread: add an IO source (the wake eventfd or the recycle timerfd).
unsafe extern "C" fn do_add_io(
    _loop: *mut spa::sys::spa_loop,
    _async: bool,
    _seq: u32,
    _data: *const c_void,
    _size: usize,
    user_data: *mut c_void,
) -> c_int {
    // SAFETY: `user_data` is the `AddIo` of `DataWake::install`, alive during the blocking
    // invoke; the utils interface is the data loop's.
    unsafe {
        let add = &mut *(user_data as *mut AddIo);
        // (Inline on the loop thread when the data loop does not run: not the data thread.)
        if libc::pthread_equal(libc::pthread_self(), add.caller) == 0 {
            // (module-rt sets SCHED_RESET_ON_FORK with the policy.)
            let policy = libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK;
            add.realtime = policy == libc::SCHED_FIFO || policy == libc::SCHED_RR;
        }
        let (object, methods) = utils_methods(add.utils);
        if let Some(add_io) = (*methods).add_io {
            add.source = add_io(
                object,
                add.fd,
                spa::sys::SPA_IO_IN,
                false,
                Some(add.func),
                add.ctx,
            );
        }
    }
    0
}

/// On the data thread: remove the IO sources.
unsafe extern "C" fn do_remove_io(
    _loop: *mut spa::sys::spa_loop,
    _async: bool,
    _seq: u32,
    _data: *const c_void,
    _size: usize,
    user_data: *mut c_void,
) -> c_int {
    // SAFETY: `user_data` is the `RemoveIo` of `DataWake::drop`, alive during the invoke.
    unsafe {
        let remove = &*(user_data as *const RemoveIo);
        let (object, methods) = utils_methods(remove.utils);
        if let Some(destroy) = (*methods).destroy_source {
            for &source in remove.sources.iter().filter(|s| !s.is_null()) {
                destroy(object, source);
            }
        }
    }
    0
}

/// The IO source's callback, on the data thread: a frame is waiting in the mailbox.
unsafe extern "C" fn on_wake(data: *mut c_void, fd: c_int, _mask: u32) {
    // SAFETY: `data` is the `WakeCtx` boxed in the `DataWake` that owns this source (removed
    // before the box is freed).
    let ctx = unsafe { &*(data as *const WakeCtx) };
    let mut count: u64 = 0;
    // SAFETY: reads 8 bytes into a local from the non-blocking eventfd.
    unsafe { libc::read(fd, (&mut count as *mut u64).cast(), 8) };
    let shared = &ctx.shared;
    shared.wake_pending.store(false, Ordering::Release);
    shared.wakes_data_thread.fetch_add(1, Ordering::Relaxed);
    let stream = ctx.stream.load(Ordering::Acquire);
    if stream.is_null() || !shared.streaming.load(Ordering::Acquire) {
        shared.drop_pending();
        return;
    }
    // SAFETY: the loop thread clears `stream` and waits for this thread before it lets the
    // stream go (`forget_stream`), so it is alive here.
    unsafe {
        // `driving` changes on the loop thread (`set_io`) when the graph is rearranged; read
        // right before the trigger, which makes it a graph cycle here on the data thread.
        let driving = pw::sys::pw_stream_is_driving(stream);
        shared.driving.store(driving, Ordering::Relaxed);
        if driving && !ctx.triggered.load(Ordering::Relaxed) {
            // Queuing the frame starts the cycle (PipeWire 0.3.65 triggers a driving stream
            // from `pw_stream_queue_buffer` until `pw_stream_trigger_process` is first called
            // on it). `pw_stream_trigger_process` would run the same cycle, but then ends each
            // one with a `trigger_done` invoke onto the loop thread: one more thread woken
            // per frame, measured at about 10% of the producer's CPU per 720p frame.
            // `Stream` is `#[repr(transparent)]` over `pw_stream`.
            data_thread::process(shared, &*(stream as *const pw::stream::Stream));
        } else if driving {
            // The recycle timer triggered this stream (an empty cycle only a trigger makes):
            // queuing no longer starts cycles.
            pw::sys::pw_stream_trigger_process(stream);
        }
    }
    // Not driving: the graph's driver calls process at its own rate.
}

/// The recycle timer's callback, on the data thread (see [`RecycleTimer`]): while the pool
/// still holds upstream's DMA-BUF frames and we drive the graph, run an empty cycle (the
/// consumer's returned buffer comes back to us in it) and take back what came back, which
/// releases those frames to upstream. Not when following another driver: its cycles run
/// anyway, and dequeuing in a cycle that queued nothing stalled PipeWire 0.3.65's graph.
unsafe extern "C" fn on_recycle(data: *mut c_void, fd: c_int, _mask: u32) {
    // SAFETY: as in `on_wake`.
    let ctx = unsafe { &*(data as *const WakeCtx) };
    let mut expirations: u64 = 0;
    // SAFETY: reads 8 bytes into a local from the non-blocking timerfd.
    unsafe { libc::read(fd, (&mut expirations as *mut u64).cast(), 8) };
    let shared = &ctx.shared;
    let stream = ctx.stream.load(Ordering::Acquire);
    if stream.is_null() || !shared.streaming.load(Ordering::Acquire) {
        return;
    }
    {
        // Only when upstream may be out of buffers: we hold a frame in each DMA-BUF it has.
        let known = lock(&shared.dmabufs).known.len();
        let pool = lock(&shared.pool);
        if pool.mode != PoolMode::DmaBuf || pool.held_frames() < known.max(1) {
            return;
        }
    }
    // SAFETY: `stream` is alive (as in `on_wake`); the trigger runs the cycle inline here,
    // and the dequeues are ours to make on this thread (`RT_PROCESS`: the data thread is the
    // stream's only user of its buffer queues).
    let still_held = unsafe {
        if !pw::sys::pw_stream_is_driving(stream) {
            return;
        }
        shared.recycle_cycles.fetch_add(1, Ordering::Relaxed);
        ctx.triggered.store(true, Ordering::Relaxed);
        pw::sys::pw_stream_trigger_process(stream);
        let mut pool = lock(&shared.pool);
        // `Stream` is `#[repr(transparent)]` over `pw_stream`.
        data_thread::reclaim(&mut pool, &*(stream as *const pw::stream::Stream));
        pool.holds_frames()
    };
    if still_held {
        shared.recycle.arm(RECYCLE_RETRY);
    }
}
