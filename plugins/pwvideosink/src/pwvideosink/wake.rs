// SPDX-License-Identifier: MPL-2.0

//! The data loop, served by the sink itself, and graph cycles run by `render()`.
//!
//! PipeWire's context comes with a data thread of its own that iterates the data loop (our
//! stream's `process` callback, the node's activation by the daemon). A frame used to travel
//! streaming thread → eventfd → that data thread → daemon → consumer: one thread wake-up
//! (40–80 µs here, more when it lands on a halted vCPU) before the daemon heard of the frame,
//! where `pipewiresink`, queuing from its streaming thread under its `pw_thread_loop` lock,
//! pays the same hop. Here the sink stops PipeWire's data thread right after creating the
//! context and serves the data loop itself, under one mutex (`Shared::loop_lock`) held by
//! whichever thread runs PipeWire loop code of this context:
//! - the loop thread (`loop_thread.rs`) iterates the main loop by hand and holds the lock
//!   except while it waits in poll(2);
//! - the data-loop thread ([`Poller`]) waits on the data loop's fd without the lock, then
//!   takes it, enters the loop and dispatches what is ready (the end of each graph cycle,
//!   cycles another driver starts, the recycle timer);
//! - `render()` takes it, enters the data loop and runs the frame's graph cycle inline
//!   ([`run_cycle`]): queuing the buffer wakes the daemon and the consumer straight from the
//!   streaming thread, no thread of ours in between.
//!
//! Why this is sound with PipeWire 0.3.65 (Debian 12's; `spa/plugins/support/loop.c`): a loop
//! has no lock of its own, and `pw_loop_invoke` runs the call inline when the caller is the
//! thread that entered the loop or nobody has entered it, and queues it otherwise (a queue
//! with one writer at a time). With the lock, at most one thread runs loop code at a time:
//! the data loop is entered only under it (so the loop thread's blocking invokes onto it,
//! e.g. when buffers or ports change, run inline under the lock and never wait for another
//! thread), and invokes from the data loop onto the main loop are all non-blocking in 0.3.65's
//! stream and node code (queued; the loop thread dispatches them under the lock). Nothing
//! waits for another thread while holding the lock: the loop thread's messages to the element
//! are posted after it lets go (`loop_thread::Deferred`), and the data-loop thread is joined
//! only without it.
//!
//! The recycle timer of DMA-BUF pass-through ([`RecycleTimer`]) is an IO source on the data
//! loop.
//!
//! Known exposure: `render()`'s cycles and the recycle timer's run outside cycles PipeWire
//! starts itself; with the lock they can no longer overlap the loop thread's `use_buffers`
//! (which used to be a window where a buffer not yet announced by `add_buffer` could be
//! dequeued), but a cycle may still see a buffer set PipeWire is halfway through changing
//! between two loop-thread iterations.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_int, c_void};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use pipewire as pw;
use pw::spa;

use super::data_thread;
use super::dmabuf::PoolMode;
use super::mailbox::{Shared, lock};

/// A one-shot timer (timerfd) on the data loop that starts a graph cycle of its own while
/// DMA-BUF pass-through holds upstream's frames and no new frame comes: PipeWire hands a
/// buffer the consumer returned back to the producer only in a cycle, and upstream (its pool
/// all held in our `pw_buffer`s) has no frame left to start one. Armed and read under
/// `loop_lock` only (`timerfd_settime` is a plain syscall).
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

/// `pw::loop_::Loop` over a raw loop pointer.
///
/// # Safety
/// `lp` is a live `pw_loop`.
unsafe fn as_loop<'a>(lp: *mut pw::sys::pw_loop) -> &'a pw::loop_::Loop {
    // SAFETY: per the contract; `Loop` is `#[repr(transparent)]` over `pw_loop`.
    unsafe { &*(lp as *const pw::loop_::Loop) }
}

/// The data loop while this thread has entered it (left again on drop).
struct Entered<'a>(&'a pw::loop_::Loop);

impl<'a> Entered<'a> {
    /// # Safety
    /// The caller holds `loop_lock` (so nobody else has entered the loop) until the value is
    /// dropped, on this thread.
    unsafe fn new(lp: &'a pw::loop_::Loop) -> Self {
        // SAFETY: per the contract; paired with the `leave` in `drop`.
        unsafe { lp.enter() };
        Entered(lp)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        // SAFETY: entered in `new`, on this thread.
        unsafe { self.0.leave() };
    }
}

/// On the streaming thread (`render()`), with no other lock held: run the waiting frame's
/// graph cycle now, on this thread. Takes `loop_lock` for the length of one cycle (a dequeue,
/// a queue and the eventfd writes that wake the daemon and the consumer).
pub(crate) fn run_cycle(shared: &Shared) {
    let held = lock(&shared.loop_lock);
    let data_loop = shared.cycle.data_loop.load(Ordering::Relaxed);
    let stream = shared.cycle.stream.load(Ordering::Relaxed);
    if data_loop.is_null() || stream.is_null() || !shared.streaming.load(Ordering::Acquire) {
        // (The frame goes back upstream without the lock.)
        drop(held);
        shared.drop_pending();
        return;
    }
    // SAFETY: the loop thread clears both pointers under `loop_lock` before it lets the
    // stream or the loop go, so they are alive while we hold it; nobody else is inside the
    // data loop while we do.
    let _entered = unsafe { Entered::new(as_loop(data_loop)) };
    shared.cycles_in_render.fetch_add(1, Ordering::Relaxed);
    // SAFETY: as above.
    unsafe {
        // `driving` changes on the loop thread (`set_io`) when the graph is rearranged; read
        // right before the cycle.
        let driving = pw::sys::pw_stream_is_driving(stream);
        shared.driving.store(driving, Ordering::Relaxed);
        if driving && !shared.cycle.triggered.load(Ordering::Relaxed) {
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
    // Not driving: the graph's driver runs the cycles (on the data-loop thread).
}

/// The context's data loop, taken over from PipeWire's data thread, with the recycle timer's
/// IO source. Owned by the loop thread and dropped under `loop_lock`, before the context.
pub(crate) struct DataLoop {
    data_loop: *mut pw::sys::pw_loop,
    shared: Arc<Shared>,
    recycle: *mut spa::sys::spa_source,
}

impl DataLoop {
    /// On the loop thread, under `loop_lock`, right after the context was created: stop
    /// PipeWire's data thread (its queued set-up runs first, then it leaves the loop and is
    /// joined) and add the recycle timer. The data loop is then iterated by nobody until a
    /// [`Poller`] runs.
    pub fn take_over(
        context: &pw::context::ContextRc,
        shared: Arc<Shared>,
    ) -> Result<Self, String> {
        // SAFETY: the context is alive; its data loop lives as long as it.
        let data_loop = unsafe {
            let dl = pw::sys::pw_context_get_data_loop(context.as_raw_ptr());
            if dl.is_null() {
                return Err("the PipeWire context has no data loop".into());
            }
            let res = pw::sys::pw_data_loop_stop(dl);
            if res < 0 {
                return Err(format!(
                    "could not stop PipeWire's data thread: {}",
                    std::io::Error::from_raw_os_error(-res)
                ));
            }
            pw::sys::pw_data_loop_get_loop(dl)
        };
        if data_loop.is_null() {
            return Err("the PipeWire context has no data loop".into());
        }
        let mut this = DataLoop {
            data_loop,
            shared,
            recycle: std::ptr::null_mut(),
        };
        if let Some(fd) = this.shared.recycle.raw() {
            // SAFETY: the loop is alive and nobody runs it (its thread is gone, `loop_lock`
            // is held); the source's data is the `Shared` we keep an `Arc` of until the
            // source is destroyed in `drop`.
            unsafe {
                let (object, methods) = utils_methods((*data_loop).utils);
                if let Some(add_io) = (*methods).add_io {
                    this.recycle = add_io(
                        object,
                        fd,
                        spa::sys::SPA_IO_IN,
                        false,
                        Some(on_recycle),
                        Arc::as_ptr(&this.shared) as *mut c_void,
                    );
                }
            }
        }
        this.shared
            .cycle
            .data_loop
            .store(data_loop, Ordering::Relaxed);
        Ok(this)
    }

    /// Under `loop_lock`: the stream cycles run for from now on.
    pub fn set_stream(&self, stream: *mut pw::sys::pw_stream) {
        self.shared.cycle.triggered.store(false, Ordering::Relaxed);
        self.shared.cycle.stream.store(stream, Ordering::Relaxed);
    }

    /// Under `loop_lock`: no cycle of ours uses the current stream any more (call before
    /// disconnecting or dropping it).
    pub fn forget_stream(&self) {
        self.shared
            .cycle
            .stream
            .store(std::ptr::null_mut(), Ordering::Relaxed);
    }

    /// Start the thread that serves the data loop. With `realtime`, created through the
    /// context's thread utils (`client-rt.conf`'s module-rt, like PipeWire's own data thread)
    /// and raised to its realtime priority where the system allows it.
    pub fn spawn_poller(
        &self,
        context: &pw::context::ContextRc,
        realtime: bool,
    ) -> Result<Poller, String> {
        // SAFETY: a plain eventfd(2); the result is checked.
        let quit = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if quit < 0 {
            return Err(format!(
                "could not create an eventfd for the data-loop thread: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a fresh fd owned by nobody else.
        let quit = unsafe { OwnedFd::from_raw_fd(quit) };
        let args = Box::new(PollArgs {
            shared: self.shared.clone(),
            data_loop: self.data_loop,
            quit: quit.as_raw_fd(),
        });
        let utils = if realtime {
            // SAFETY: the context is alive; the object (module-rt's thread utils) lives as long
            // as the context, which outlives the poller (joined before the context goes).
            unsafe {
                pw::sys::pw_context_get_object(
                    context.as_raw_ptr(),
                    spa::sys::SPA_TYPE_INTERFACE_ThreadUtils.as_ptr().cast(),
                ) as *mut spa::sys::spa_thread_utils
            }
        } else {
            std::ptr::null_mut()
        };
        let thread = if utils.is_null() {
            let args = SendArgs(args);
            let handle = std::thread::Builder::new()
                .name("pwvideosink-data".into())
                .spawn(move || poll_loop(&args.into_inner()))
                .map_err(|e| format!("could not start the data-loop thread: {e}"))?;
            PollerThread::Std(handle)
        } else {
            // SAFETY: `utils` is the live thread-utils interface; `start` takes back the box.
            unsafe {
                let (object, methods) = thread_utils_methods(utils);
                let (Some(create), Some(join)) = ((*methods).create, (*methods).join) else {
                    return Err("PipeWire's thread utils cannot create threads".into());
                };
                let arg = Box::into_raw(args);
                let thread = create(object, std::ptr::null(), Some(start_poll_loop), arg.cast());
                if thread.is_null() {
                    drop(Box::from_raw(arg));
                    return Err(format!(
                        "could not start the data-loop thread: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                if let Some(acquire_rt) = (*methods).acquire_rt {
                    acquire_rt(object, thread, -1);
                }
                let mut policy: c_int = 0;
                let mut param: libc::sched_param = std::mem::zeroed();
                let realtime =
                    libc::pthread_getschedparam(thread as libc::pthread_t, &mut policy, &mut param)
                        == 0
                        && matches!(
                            policy & !libc::SCHED_RESET_ON_FORK,
                            libc::SCHED_FIFO | libc::SCHED_RR
                        );
                self.shared
                    .data_thread_realtime
                    .store(realtime, Ordering::Relaxed);
                PollerThread::Spa {
                    object,
                    join,
                    thread,
                }
            }
        };
        Ok(Poller {
            quit,
            thread: Some(thread),
        })
    }
}

impl Drop for DataLoop {
    fn drop(&mut self) {
        // (Under `loop_lock`, on the loop thread.)
        self.shared
            .cycle
            .stream
            .store(std::ptr::null_mut(), Ordering::Relaxed);
        self.shared
            .cycle
            .data_loop
            .store(std::ptr::null_mut(), Ordering::Relaxed);
        if self.recycle.is_null() {
            return;
        }
        // SAFETY: the loop is alive (the context goes after us) and nobody else runs it
        // (`loop_lock`); after this nothing refers to the `Shared` pointer given to the source.
        unsafe {
            let (object, methods) = utils_methods((*self.data_loop).utils);
            if let Some(destroy) = (*methods).destroy_source {
                destroy(object, self.recycle);
            }
        }
    }
}

/// What the data-loop thread works with.
struct PollArgs {
    shared: Arc<Shared>,
    data_loop: *mut pw::sys::pw_loop,
    quit: RawFd,
}

/// [`PollArgs`] crossing to the new thread.
struct SendArgs(Box<PollArgs>);
// SAFETY: the loop pointer is only used under `loop_lock`; the loop outlives the thread
// (joined before the context goes).
unsafe impl Send for SendArgs {}

impl SendArgs {
    fn into_inner(self) -> Box<PollArgs> {
        self.0
    }
}

/// The thread serving the data loop; stopped (without `loop_lock`) before the context goes.
pub(crate) struct Poller {
    quit: OwnedFd,
    thread: Option<PollerThread>,
}

enum PollerThread {
    Std(JoinHandle<()>),
    /// Created by PipeWire's thread utils (module-rt).
    Spa {
        object: *mut c_void,
        join:
            unsafe extern "C" fn(*mut c_void, *mut spa::sys::spa_thread, *mut *mut c_void) -> c_int,
        thread: *mut spa::sys::spa_thread,
    },
}

impl Poller {
    /// Stop and join the thread. The caller must not hold `loop_lock` (the thread may be
    /// waiting for it).
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local to our own eventfd.
        unsafe { libc::write(self.quit.as_raw_fd(), (&one as *const u64).cast(), 8) };
        match thread {
            PollerThread::Std(handle) => {
                let _ = handle.join();
            }
            PollerThread::Spa {
                object,
                join,
                thread,
            } => {
                let mut ret: *mut c_void = std::ptr::null_mut();
                // SAFETY: `thread` was created by these utils and is joined once.
                unsafe { join(object, thread, &mut ret) };
            }
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The data-loop thread's start routine for PipeWire's thread utils.
unsafe extern "C" fn start_poll_loop(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `arg` is the box `spawn_poller` leaked for us, taken back once.
    let args = unsafe { Box::from_raw(arg as *mut PollArgs) };
    // A panic must not unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll_loop(&args)));
    std::ptr::null_mut()
}

/// The data-loop thread: wait (without the lock) until the data loop has something to
/// dispatch, then dispatch it under `loop_lock`; until `quit` is signalled.
fn poll_loop(args: &PollArgs) {
    let shared = &args.shared;
    // SAFETY: the loop outlives this thread (module doc).
    let lp = unsafe { as_loop(args.data_loop) };
    let mut fds = [
        libc::pollfd {
            fd: lp.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: args.quit,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: polls two fds we keep open for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            gst::error!(
                super::loop_thread::CAT,
                "the data-loop thread stops: poll failed: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents != 0 {
            let _held = lock(&shared.loop_lock);
            // SAFETY: nobody else is inside the loop while we hold `loop_lock`.
            let _entered = unsafe { Entered::new(lp) };
            // SAFETY: entered just above; a zero timeout never blocks.
            unsafe { lp.iterate_unguarded(pw::loop_::Timeout::None) };
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

/// The object and method table of a thread-utils interface.
///
/// # Safety
/// `utils` is a live `spa_thread_utils`.
unsafe fn thread_utils_methods(
    utils: *mut spa::sys::spa_thread_utils,
) -> (*mut c_void, *const spa::sys::spa_thread_utils_methods) {
    // SAFETY: per the contract.
    let cb = unsafe { (*utils).iface.cb };
    (
        cb.data,
        cb.funcs as *const spa::sys::spa_thread_utils_methods,
    )
}

/// The recycle timer's callback, on the data-loop thread (see [`RecycleTimer`]): while the
/// pool still holds upstream's DMA-BUF frames and we drive the graph, run an empty cycle (the
/// consumer's returned buffer comes back to us in it) and take back what came back, which
/// releases those frames to upstream. Not when following another driver: its cycles run
/// anyway, and dequeuing in a cycle that queued nothing stalled PipeWire 0.3.65's graph.
unsafe extern "C" fn on_recycle(data: *mut c_void, fd: c_int, _mask: u32) {
    // SAFETY: `data` is the `Shared` the `DataLoop` owning this source keeps alive (the
    // source is destroyed first).
    let shared = unsafe { &*(data as *const Shared) };
    let mut expirations: u64 = 0;
    // SAFETY: reads 8 bytes into a local from the non-blocking timerfd.
    unsafe { libc::read(fd, (&mut expirations as *mut u64).cast(), 8) };
    let stream = shared.cycle.stream.load(Ordering::Relaxed);
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
    // SAFETY: `stream` is alive (cleared under `loop_lock` before it goes, and we run under
    // it); the trigger runs the cycle inline here, and the dequeues are ours to make on this
    // thread (`RT_PROCESS`: whoever holds the data loop is the stream's only user of its
    // buffer queues).
    let still_held = unsafe {
        if !pw::sys::pw_stream_is_driving(stream) {
            return;
        }
        shared.recycle_cycles.fetch_add(1, Ordering::Relaxed);
        shared.cycle.triggered.store(true, Ordering::Relaxed);
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
