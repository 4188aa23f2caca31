// SPDX-License-Identifier: MPL-2.0

//! The loop thread of `pwvideosink`: one thread owning every PipeWire object (main loop,
//! context, core, registry, stream) — the connection to the daemon and its loss and return,
//! registry link counting for `consumers`, the stream's lifecycle (create, offer formats,
//! renegotiate, recreate) and its buffers (`add_buffer`/`remove_buffer`). The element talks to
//! it through a `pipewire::channel` ([`Msg`]) and the one-slot frame mailbox ([`Shared`], in
//! `mailbox.rs`). It iterates the main loop by hand, holding `Shared::loop_lock` except while
//! it waits for events (`wake.rs` says why); what it reports to the element is posted after
//! it lets go ([`Deferred`]). The frames themselves are sent in graph cycles `render()` runs
//! (`wake::run_cycle`, `data_thread.rs`).
//!
//! One file (close to 800 lines) because it is one layer: every type here is `Rc`-based, lives
//! on the loop thread and shares the `LoopCtx`; splitting it would spread that state's
//! invariants (one stream, the session, the allocation mode) over several files.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pipewire as pw;
use pw::spa;
use pw::stream::{Stream, StreamFlags, StreamListener, StreamRc, StreamState};

use super::data_thread;
use super::dmabuf::{Pool, PoolMode};
use super::mailbox::{Shared, lock};
use super::wake::DataLoop;
use crate::format::{self, FrameLayout, VideoSpec};

pub(super) static CAT: std::sync::LazyLock<gst::DebugCategory> = std::sync::LazyLock::new(|| {
    gst::DebugCategory::new(
        "pwvideosink",
        gst::DebugColorFlags::empty(),
        Some("PipeWire camera sink"),
    )
});

/// Messages from the element to the loop thread.
pub(crate) enum Msg {
    /// Upstream caps (re)negotiated: publish this format first, then the same size and rate
    /// in the other SPA formats upstream could deliver. The flag: upstream gives DMA-BUFs.
    SetLayout(FrameLayout, Vec<u32>, bool),
    /// The set of upstream DMA-BUFs changed (a new one, or pass-through given up).
    DmaBufsChanged,
    /// No caps yet, but upstream can only deliver this size and rate: publish the node with
    /// these formats (the first, then the alternatives) already.
    Preview(VideoSpec, Vec<u32>),
    /// Tear everything down and leave the loop.
    Quit,
}

/// What the loop thread reports back to the element (posted as bus messages).
pub(crate) enum LoopEvent {
    Warning(String),
    Error(String),
    Info(String),
    /// The consumer fixed this (GStreamer) format, one of the alternatives: ask upstream for it.
    WantFormat(&'static str),
}

pub(crate) type Notify = Arc<dyn Fn(LoopEvent) + Send + Sync>;

/// Node settings fixed for the lifetime of one loop thread.
#[derive(Debug, Clone)]
pub(crate) struct NodeConfig {
    pub node_name: String,
    pub node_description: String,
    pub media_class: String,
    pub media_role: String,
    pub extra_props: Vec<(String, String)>,
    pub remote: Option<String>,
    pub socket_path: String,
    pub reconnect: bool,
    /// Load PipeWire's `client-rt.conf` (module-rt) instead of `client.conf`.
    pub realtime: bool,
}

/// The element's handle on a running loop thread.
pub(crate) struct LoopHandle {
    tx: pw::channel::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl LoopHandle {
    /// Start the loop thread and connect to the daemon; fails (naming the socket) if it can't.
    pub fn spawn(config: NodeConfig, shared: Arc<Shared>, notify: Notify) -> Result<Self, String> {
        let (tx, rx) = pw::channel::channel::<Msg>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        let thread = std::thread::Builder::new()
            .name("pwvideosink-loop".into())
            .spawn(move || run(config, shared, notify, rx, ready_tx))
            .map_err(|e| format!("could not spawn the PipeWire loop thread: {e}"))?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(LoopHandle {
                tx,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                // The thread is stuck connecting; ask it to quit and don't wait for it.
                let _ = tx.send(Msg::Quit);
                Err("the PipeWire loop thread did not come up within 10 s".into())
            }
        }
    }

    pub fn send(&self, msg: Msg) {
        let _ = self.tx.send(msg);
    }

    /// A sender to use without holding the element's state lock.
    pub fn sender(&self) -> LoopSender {
        LoopSender(self.tx.clone())
    }

    pub fn stop(mut self) {
        let _ = self.tx.send(Msg::Quit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends [`Msg`]s to the loop thread (never blocks; dropped silently once the loop is gone).
#[derive(Clone)]
pub(crate) struct LoopSender(pw::channel::Sender<Msg>);

impl LoopSender {
    pub fn send(&self, msg: Msg) {
        let _ = self.0.send(msg);
    }
}

impl Drop for LoopHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.tx.send(Msg::Quit);
            let _ = t.join();
        }
    }
}

/// Everything bound to one connection to the daemon. Field order is drop order: listeners
/// before their objects, the core last.
struct Session {
    stream: Option<(StreamListeners, StreamRc)>,
    _registry_listener: pw::registry::Listener,
    _registry: pw::registry::RegistryRc,
    _core_listener: pw::core::Listener,
    core: pw::core::CoreRc,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Disconnecting takes the stream off the data loop (synchronously), so the process
        // callback can't run while its listener is being dropped.
        if let Some((_, stream)) = &self.stream {
            let _ = stream.disconnect();
        }
    }
}

/// Loop-thread state (lives in an `Rc`, callbacks hold `Weak`s to it).
struct LoopCtx {
    context: pw::context::ContextRc,
    config: NodeConfig,
    shared: Arc<Shared>,
    notify: Notify,
    session: RefCell<Option<Session>>,
    /// The data loop taken over from PipeWire's data thread (`wake.rs`); dropped after the
    /// session.
    data_loop: RefCell<Option<DataLoop>>,
    /// `Msg::Quit` arrived: leave the loop.
    quit: Cell<bool>,
    layout: Cell<Option<FrameLayout>>,
    /// Offered before the first caps (see [`Msg::Preview`]).
    preview: Cell<Option<VideoSpec>>,
    alternatives: RefCell<Vec<u32>>,
    /// Upstream delivers DMA-BUFs.
    upstream_dmabuf: Cell<bool>,
    /// The current stream may pass DMA-BUFs through (created while upstream gave DMA-BUFs).
    alloc: Cell<bool>,
    /// (DMA-BUF variant offered, known DMA-BUFs) when the formats were last offered.
    offered_dmabufs: Cell<(bool, usize)>,
    disconnected: Cell<bool>,
    reconnect_failures: Cell<u32>,
    node_id: Cell<u32>,
    /// Link global id -> output node id, from the registry.
    links: RefCell<HashMap<u32, u32>>,
}

impl Drop for LoopCtx {
    fn drop(&mut self) {
        // Before the context (a field, dropped after this) takes the data loop with it: the
        // stream, then the data loop's source. (`run` has done this under `loop_lock` already,
        // unless it returned early, when no other thread used the loops.)
        self.forget_stream();
        self.session.get_mut().take();
        self.data_loop.get_mut().take();
    }
}

/// What the loop thread reports to the element, kept while it holds `loop_lock` and posted
/// after it lets go (posting runs the application's sync bus handlers, on this thread).
#[derive(Clone, Default)]
struct Deferred(Arc<Mutex<Vec<LoopEvent>>>);

impl Deferred {
    /// A `Notify` that keeps the events here.
    fn notify(&self) -> Notify {
        let events = self.0.clone();
        Arc::new(move |e| lock(&events).push(e))
    }

    /// Post what was kept (without `loop_lock`).
    fn flush(&self, notify: &Notify) {
        let events = std::mem::take(&mut *lock(&self.0));
        for e in events {
            notify(e);
        }
    }
}

const PW_ID_CORE: u32 = 0;

fn run(
    config: NodeConfig,
    shared: Arc<Shared>,
    notify: Notify,
    rx: pw::channel::Receiver<Msg>,
    ready_tx: std::sync::mpsc::SyncSender<Result<(), String>>,
) {
    let deferred = Deferred::default();
    let held = lock(&shared.loop_lock);
    let realtime = config.realtime;
    let (mainloop, ctx) = match set_up(config, shared.clone(), deferred.notify()) {
        Ok(r) => r,
        Err(e) => {
            drop(held);
            deferred.flush(&notify);
            let _ = ready_tx.send(Err(e));
            return;
        }
    };
    let main = mainloop.loop_();
    let rx = rx.attach(main, {
        let ctx = Rc::downgrade(&ctx);
        move |msg| {
            let Some(ctx) = ctx.upgrade() else { return };
            match msg {
                Msg::SetLayout(l, alts, dmabuf) => ctx.set_layout(l, alts, dmabuf),
                Msg::DmaBufsChanged => ctx.on_dmabufs_changed(),
                Msg::Preview(spec, alts) => ctx.set_preview(spec, alts),
                Msg::Quit => ctx.quit.set(true),
            }
        }
    });
    // Checks twice a second whether a lost daemon is back (cheap when connected).
    let timer = main.add_timer({
        let ctx = Rc::downgrade(&ctx);
        move |_| {
            if let Some(ctx) = ctx.upgrade() {
                ctx.on_reconnect_timer();
            }
        }
    });
    let _ = timer.update_timer(
        Some(Duration::from_millis(500)),
        Some(Duration::from_millis(500)),
    );
    let poller = ctx
        .data_loop
        .borrow()
        .as_ref()
        .map(|d| d.spawn_poller(&ctx.context, realtime))
        .unwrap_or_else(|| Err("no data loop".into()));
    let poller = match poller {
        Ok(p) => p,
        Err(e) => {
            // (No other thread uses the loops yet: torn down as they are dropped.)
            drop(held);
            deferred.flush(&notify);
            let _ = ready_tx.send(Err(e));
            return;
        }
    };
    // The main loop, iterated by hand (what `pw_main_loop_run` does, plus the lock): entered
    // for as long as this thread runs it — from before the data-loop thread can take the lock
    // — so invokes from the threads that run the data loop are queued to it (non-blocking in
    // PipeWire's stream and node code) and dispatched here, never run on their thread.
    // SAFETY: paired with the `leave` below, on this thread.
    unsafe { main.enter() };
    drop(held);
    deferred.flush(&notify);
    let _ = ready_tx.send(Ok(()));
    drop(ready_tx);

    let mut fds = [libc::pollfd {
        fd: main.fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    while !ctx.quit.get() {
        // SAFETY: polls the main loop's fd, open as long as the loop.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            gst::error!(
                CAT,
                "the PipeWire loop thread stops: poll failed: {}",
                std::io::Error::last_os_error()
            );
            break;
        }
        let held = lock(&shared.loop_lock);
        // SAFETY: entered above; a zero timeout never blocks.
        unsafe { main.iterate_unguarded(pw::loop_::Timeout::None) };
        drop(held);
        deferred.flush(&notify);
    }

    {
        let _held = lock(&shared.loop_lock);
        drop(timer);
        drop(rx);
        ctx.forget_stream();
        ctx.session.borrow_mut().take();
        ctx.shared.streaming.store(false, Ordering::Release);
        // No cycle can run any more (its pointers are cleared).
        ctx.data_loop.borrow_mut().take();
    }
    ctx.shared.drop_pending();
    deferred.flush(&notify);
    // Joined without the lock (it may be waiting for it), before the context goes.
    poller.stop();
    // SAFETY: entered above, on this thread.
    unsafe { main.leave() };
    drop(ctx);
}

/// Under `loop_lock`: create the main loop and the context, take over the data loop, connect.
fn set_up(
    config: NodeConfig,
    shared: Arc<Shared>,
    notify: Notify,
) -> Result<(pw::main_loop::MainLoopRc, Rc<LoopCtx>), String> {
    pw::init();
    let mainloop = pw::main_loop::MainLoopRc::new(None)
        .map_err(|e| format!("could not create a PipeWire main loop: {e}"))?;
    // `realtime=true`: client-rt.conf is client.conf plus PipeWire's module-rt, as PipeWire's
    // own low-latency clients use it: the data-loop thread gets realtime priority where the
    // system allows it (RLIMIT_RTPRIO/CAP_SYS_NICE, else RTKit), so the end of a cycle or
    // another driver's cycle preempts upstream's streaming thread; where it can't, the module
    // changes nothing (`stats` field `data-thread-realtime`). Not the default (README,
    // Threads and locks).
    let conf = if config.realtime {
        "client-rt.conf"
    } else {
        "client.conf"
    };
    let context = pw::context::ContextRc::new(
        &mainloop,
        Some(pw::properties::properties! { "config.name" => conf }),
    )
    .map_err(|e| format!("could not create a PipeWire context: {e}"))?;
    let data_loop = DataLoop::take_over(&context, shared.clone())?;
    let ctx = Rc::new(LoopCtx {
        context,
        config,
        shared,
        notify,
        session: RefCell::new(None),
        data_loop: RefCell::new(Some(data_loop)),
        quit: Cell::new(false),
        layout: Cell::new(None),
        preview: Cell::new(None),
        alternatives: RefCell::new(Vec::new()),
        upstream_dmabuf: Cell::new(false),
        alloc: Cell::new(false),
        offered_dmabufs: Cell::new((false, 0)),
        disconnected: Cell::new(false),
        reconnect_failures: Cell::new(0),
        node_id: Cell::new(u32::MAX),
        links: RefCell::new(HashMap::new()),
    });
    let session = connect_session(&ctx)?;
    *ctx.session.borrow_mut() = Some(session);
    Ok((mainloop, ctx))
}

fn connect_session(ctx: &Rc<LoopCtx>) -> Result<Session, String> {
    let props = ctx.config.remote.as_ref().map(|r| {
        let mut p = pw::properties::PropertiesBox::new();
        p.insert(*pw::keys::REMOTE_NAME, r.as_str());
        p
    });
    let core = ctx.context.connect_rc(props).map_err(|e| {
        // pw_context_connect leaves the socket error in errno.
        let os = std::io::Error::last_os_error();
        let e = if os.raw_os_error().unwrap_or(0) != 0 {
            os.to_string()
        } else {
            e.to_string()
        };
        format!(
            "could not connect to the PipeWire daemon at {} ({e}): start PipeWire for this \
             user (e.g. `systemctl --user start pipewire wireplumber`), or point the sink at a \
             running daemon with its `remote` property (a socket name in the runtime dir or an \
             absolute path) or the PIPEWIRE_REMOTE / XDG_RUNTIME_DIR environment variables",
            ctx.config.socket_path
        )
    })?;
    let core_listener = core
        .add_listener_local()
        .error({
            let ctx = Rc::downgrade(ctx);
            move |id, _seq, res, message| {
                let Some(ctx) = ctx.upgrade() else { return };
                if id == PW_ID_CORE && res == -libc::EPIPE {
                    ctx.on_disconnected(message);
                }
            }
        })
        .register();
    let registry = core
        .get_registry_rc()
        .map_err(|e| format!("could not get the PipeWire registry: {e}"))?;
    let registry_listener = registry
        .add_listener_local()
        .global({
            let ctx = Rc::downgrade(ctx);
            move |global| {
                let Some(ctx) = ctx.upgrade() else { return };
                if global.type_ != pw::types::ObjectType::Link {
                    return;
                }
                let out = global
                    .props
                    .and_then(|p| p.get("link.output.node"))
                    .and_then(|v| v.parse::<u32>().ok());
                if let Some(out) = out {
                    ctx.links.borrow_mut().insert(global.id, out);
                    ctx.count_consumers();
                }
            }
        })
        .global_remove({
            let ctx = Rc::downgrade(ctx);
            move |id| {
                let Some(ctx) = ctx.upgrade() else { return };
                if ctx.links.borrow_mut().remove(&id).is_some() {
                    ctx.count_consumers();
                }
            }
        })
        .register();
    let mut session = Session {
        stream: None,
        _registry_listener: registry_listener,
        _registry: registry,
        _core_listener: core_listener,
        core,
    };
    if ctx.offered_spec().is_some() {
        session.stream = Some(create_stream(ctx, &session.core)?);
    }
    Ok(session)
}

fn create_stream(
    ctx: &Rc<LoopCtx>,
    core: &pw::core::CoreRc,
) -> Result<(StreamListeners, StreamRc), String> {
    let cfg = &ctx.config;
    let mut props = pw::properties::PropertiesBox::new();
    props.insert(*pw::keys::MEDIA_TYPE, "Video");
    props.insert(*pw::keys::MEDIA_CATEGORY, "Capture");
    props.insert(*pw::keys::MEDIA_CLASS, cfg.media_class.as_str());
    props.insert(*pw::keys::MEDIA_ROLE, cfg.media_role.as_str());
    props.insert(*pw::keys::NODE_NAME, cfg.node_name.as_str());
    props.insert(*pw::keys::NODE_DESCRIPTION, cfg.node_description.as_str());
    for (k, v) in &cfg.extra_props {
        props.insert(k.as_str(), v.as_str());
    }
    ctx.alloc.set(ctx.upstream_dmabuf.get());
    *lock(&ctx.shared.pool) = Pool::default();
    let stream = StreamRc::new(core.clone(), &cfg.node_name, props)
        .map_err(|e| format!("could not create the PipeWire stream: {e}"))?;
    let listener = stream
        .add_local_listener_with_user_data(())
        .state_changed({
            let ctx = Rc::downgrade(ctx);
            move |stream, _, old, new| {
                if let Some(ctx) = ctx.upgrade() {
                    ctx.on_state_changed(stream, old, new);
                }
            }
        })
        .param_changed({
            let ctx = Rc::downgrade(ctx);
            move |stream, _, id, param| {
                if let Some(ctx) = ctx.upgrade() {
                    ctx.on_param_changed(stream, id, param);
                }
            }
        })
        .add_buffer({
            let shared = ctx.shared.clone();
            let notify = ctx.notify.clone();
            let alloc = ctx.alloc.get();
            // The core's memory pool, to find the file behind PipeWire's memory. The listener
            // (and so this pointer) is dropped before the core (`Session`'s field order).
            // SAFETY: `core` is alive; the pool is owned by it.
            let mempool = unsafe { pw::sys::pw_core_get_mempool(core.as_raw_ptr()) };
            move |_, _, raw| {
                let added = {
                    let registry = lock(&shared.dmabufs);
                    // SAFETY: PipeWire just added `raw` to this stream (it stays valid until
                    // `remove_buffer`); this runs on the loop thread that owns the core.
                    unsafe { lock(&shared.pool).add(raw, &registry, mempool, alloc) }
                };
                // Reported once both locks are released.
                if let Err(e) = added {
                    notify(LoopEvent::Warning(format!(
                        "could not set up a PipeWire buffer: {e}"
                    )));
                }
            }
        })
        .remove_buffer({
            let shared = ctx.shared.clone();
            move |_, _, raw| shared.remove_buffer(raw)
        })
        .process({
            // RT_PROCESS: this runs on whichever thread holds the data loop (`wake.rs`), so it only
            // touches `Shared`.
            let shared = ctx.shared.clone();
            move |stream, _| data_thread::process(&shared, stream)
        })
        .register()
        .map_err(|e| format!("could not listen to the PipeWire stream: {e}"))?;
    let pods = ctx.format_pods()?;
    let mut params = pods
        .iter()
        .map(|p| spa::pod::Pod::from_bytes(p).ok_or("invalid EnumFormat pod"))
        .collect::<Result<Vec<_>, _>>()?;
    // With DMA-BUF input the sink allocates PipeWire's buffers itself (upstream's DMA-BUFs, or
    // memfds when the consumer refuses them); otherwise PipeWire allocates memfds, which the
    // sink maps again and lends upstream (`dmabuf.rs` says why, `lend.rs` how).
    let flags = if ctx.alloc.get() {
        StreamFlags::DRIVER | StreamFlags::ALLOC_BUFFERS | StreamFlags::RT_PROCESS
    } else {
        StreamFlags::DRIVER | StreamFlags::MAP_BUFFERS | StreamFlags::RT_PROCESS
    };
    stream
        .connect(spa::utils::Direction::Output, None, flags, &mut params)
        .map_err(|e| format!("could not connect the PipeWire stream: {e}"))?;
    if let Some(data_loop) = ctx.data_loop.borrow().as_ref() {
        data_loop.set_stream(stream.as_raw_ptr());
    }
    let trigger_done = TriggerDoneHook::add(&stream, ctx.shared.clone());
    Ok(((listener, trigger_done), stream))
}

/// A stream's listeners (dropped before the stream).
type StreamListeners = (StreamListener<()>, TriggerDoneHook);

/// Counts the stream's `trigger_done` events (each one a wake-up of this loop thread at the
/// end of a graph cycle) in [`Shared::trigger_done`]. A listener of its own: pipewire-rs 0.10's
/// listener builder has no method for this event.
struct TriggerDoneHook {
    hook: Box<spa::sys::spa_hook>,
    _events: Box<pw::sys::pw_stream_events>,
    _shared: Arc<Shared>,
}

impl TriggerDoneHook {
    fn add(stream: &Stream, shared: Arc<Shared>) -> Self {
        unsafe extern "C" fn on_trigger_done(data: *mut std::os::raw::c_void) {
            // SAFETY: `data` is the `Shared` the hook holds an `Arc` of; the hook is removed
            // before that `Arc` goes.
            let shared = unsafe { &*(data as *const Shared) };
            shared.trigger_done.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: all-zero is a valid `pw_stream_events` (no callbacks) and `spa_hook`.
        let mut events: Box<pw::sys::pw_stream_events> = Box::new(unsafe { std::mem::zeroed() });
        events.version = pw::sys::PW_VERSION_STREAM_EVENTS;
        events.trigger_done = Some(on_trigger_done);
        // SAFETY: as above.
        let mut hook: Box<spa::sys::spa_hook> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: the stream is alive; `hook`, `events` and the data (`shared`) are boxed or
        // shared and outlive the registration (removed in `drop`, before the stream goes).
        unsafe {
            pw::sys::pw_stream_add_listener(
                stream.as_raw_ptr(),
                &mut *hook,
                &*events,
                Arc::as_ptr(&shared) as *mut std::os::raw::c_void,
            );
        }
        TriggerDoneHook {
            hook,
            _events: events,
            _shared: shared,
        }
    }
}

impl Drop for TriggerDoneHook {
    fn drop(&mut self) {
        spa::utils::hook::remove(*self.hook);
    }
}

impl LoopCtx {
    /// Cycles stop using the current stream (before it is disconnected or dropped).
    fn forget_stream(&self) {
        if let Some(data_loop) = self.data_loop.borrow().as_ref() {
            data_loop.forget_stream();
        }
    }

    fn count_consumers(&self) {
        let node = self.node_id.get();
        let n = self.links.borrow().values().filter(|&&o| o == node).count();
        self.shared.consumers.store(n as u32, Ordering::Relaxed);
    }

    /// The format offered first: upstream's current one, or the preview before caps.
    fn offered_spec(&self) -> Option<VideoSpec> {
        self.layout.get().map(|l| l.spec).or(self.preview.get())
    }

    /// The `EnumFormat` pods for the offered format and alternatives (with a DMA-BUF variant
    /// first once upstream DMA-BUFs are known and the stream can allocate).
    fn format_pods(&self) -> Result<Vec<Vec<u8>>, String> {
        let spec = self.offered_spec().ok_or("no format yet")?;
        let (dmabuf, known) = {
            let r = lock(&self.shared.dmabufs);
            (self.alloc.get() && r.usable(), r.known.len())
        };
        self.offered_dmabufs.set((dmabuf, known));
        format::enum_format_pods(&spec, &self.alternatives.borrow(), dmabuf)
            .map_err(|e| e.to_string())
    }

    /// The `Buffers` and `Meta` pods for what the consumer fixed (`dmabuf`: a DMA-BUF variant).
    fn buffer_pods(&self, layout: &FrameLayout, dmabuf: bool) -> Result<Vec<Vec<u8>>, String> {
        let known = lock(&self.shared.dmabufs).known.len();
        let dmabuf = dmabuf && self.alloc.get() && known > 0;
        {
            let mut pool = lock(&self.shared.pool);
            pool.mode = if dmabuf {
                PoolMode::DmaBuf
            } else {
                PoolMode::MemFd
            };
            pool.frame_size = layout.size;
            pool.spec = Some(layout.spec);
        }
        self.shared
            .dmabuf_passthrough
            .store(dmabuf, Ordering::Relaxed);
        let buffers = if dmabuf {
            format::dmabuf_buffers_pod(layout, known as u32)
        } else {
            format::buffers_pod(layout)
        };
        Ok(vec![
            buffers.map_err(|e| e.to_string())?,
            format::header_meta_pod().map_err(|e| e.to_string())?,
        ])
    }

    /// Offer the formats again (PipeWire renegotiates format and buffers with the consumer).
    fn renegotiate(&self) {
        let guard = self.session.borrow();
        let Some((_, stream)) = guard.as_ref().and_then(|s| s.stream.as_ref()) else {
            return;
        };
        self.offer(stream, self.format_pods());
    }

    /// Give the stream new params (`pods`: formats, maybe buffers); PipeWire renegotiates them
    /// with the consumer. A failure is posted as a warning.
    fn offer(&self, stream: &Stream, pods: Result<Vec<Vec<u8>>, String>) {
        let res = pods.and_then(|pods| {
            let mut params = pods
                .iter()
                .filter_map(|p| spa::pod::Pod::from_bytes(p))
                .collect::<Vec<_>>();
            stream.update_params(&mut params).map_err(|e| e.to_string())
        });
        if let Err(e) = res {
            (self.notify)(LoopEvent::Warning(format!(
                "could not renegotiate the PipeWire format: {e}"
            )));
        }
    }

    /// A new upstream DMA-BUF, or pass-through given up: renegotiate when that changes what
    /// is offered (the DMA-BUF variant appears or goes) or the buffers the consumer holds.
    fn on_dmabufs_changed(&self) {
        if !self.alloc.get() {
            return;
        }
        let (usable, known) = {
            let r = lock(&self.shared.dmabufs);
            (r.usable(), r.known.len())
        };
        let (offered, offered_known) = self.offered_dmabufs.get();
        let passthrough = lock(&self.shared.pool).mode == PoolMode::DmaBuf;
        if usable != offered || (passthrough && known != offered_known) {
            gst::debug!(
                CAT,
                "upstream DMA-BUFs: {known} known, pass-through {}; renegotiating",
                if usable { "possible" } else { "off" }
            );
            self.renegotiate();
        }
    }

    fn set_preview(self: &Rc<Self>, spec: VideoSpec, alternatives: Vec<u32>) {
        if self.layout.get().is_some() {
            return;
        }
        self.preview.set(Some(spec));
        *self.alternatives.borrow_mut() = alternatives;
        let core = match self.session.borrow().as_ref() {
            Some(s) if s.stream.is_none() => s.core.clone(),
            _ => return,
        };
        match create_stream(self, &core) {
            Ok(s) => {
                if let Some(session) = self.session.borrow_mut().as_mut() {
                    session.stream = Some(s);
                }
            }
            Err(e) => (self.notify)(LoopEvent::Error(e)),
        }
    }

    fn set_layout(self: &Rc<Self>, layout: FrameLayout, alternatives: Vec<u32>, dmabuf: bool) {
        let old = self.layout.replace(Some(layout));
        let old_alts = self.alternatives.replace(alternatives);
        let old_dmabuf = self.upstream_dmabuf.replace(dmabuf);
        if old == Some(layout) && *self.alternatives.borrow() == old_alts && old_dmabuf == dmabuf {
            return;
        }
        if self.alloc.get() != dmabuf
            && let Some(session) = self.session.borrow_mut().as_mut()
        {
            // Buffer allocation is fixed when a stream connects: switching between system
            // memory and DMA-BUF input takes a new stream (same node name).
            self.forget_stream();
            if let Some((listener, stream)) = session.stream.take() {
                // Off the data loop first, so process can't run while its listener goes.
                let _ = stream.disconnect();
                drop(listener);
                drop(stream);
                gst::info!(
                    CAT,
                    "upstream memory changed to {}: recreating the stream",
                    if dmabuf { "DMA-BUF" } else { "system memory" }
                );
            }
        }
        let guard = self.session.borrow();
        let Some(session) = guard.as_ref() else {
            return;
        };
        if let Some((_, stream)) = &session.stream {
            // Renegotiate: offer the new formats; the consumer fixes one again and
            // param_changed(Format) brings new buffers.
            let pods = self.format_pods().and_then(|mut pods| {
                // A consumer that already fixed this format (e.g. from the preview) needs
                // its buffers now.
                if self.shared.negotiated() == Some(layout.spec) {
                    let dmabuf = self.shared.dmabuf_passthrough.load(Ordering::Relaxed);
                    pods.extend(self.buffer_pods(&layout, dmabuf)?);
                }
                Ok(pods)
            });
            self.offer(stream, pods);
            return;
        }
        let core = session.core.clone();
        drop(guard);
        match create_stream(self, &core) {
            Ok(s) => {
                if let Some(session) = self.session.borrow_mut().as_mut() {
                    session.stream = Some(s);
                }
            }
            Err(e) => (self.notify)(LoopEvent::Error(e)),
        }
    }

    fn on_state_changed(&self, stream: &Stream, old: StreamState, new: StreamState) {
        gst::debug!(
            CAT,
            "stream state {old:?} -> {new:?} (node {})",
            stream.node_id()
        );
        self.node_id.set(stream.node_id());
        self.count_consumers();
        let streaming = matches!(new, StreamState::Streaming);
        self.shared.streaming.store(streaming, Ordering::Release);
        if let StreamState::Error(e) = &new {
            (self.notify)(LoopEvent::Warning(format!("PipeWire stream error: {e}")));
        }
    }

    fn on_param_changed(&self, stream: &Stream, id: u32, param: Option<&spa::pod::Pod>) {
        if id != spa::param::ParamType::Format.as_raw() {
            return;
        }
        let Some(param) = param else {
            gst::debug!(CAT, "format cleared");
            self.shared.set_negotiated(None);
            self.shared
                .dmabuf_passthrough
                .store(false, Ordering::Relaxed);
            return;
        };
        let modifier = format::format_modifier(param.as_bytes());
        let spec = match format::parse_video_format(param.as_bytes()) {
            Ok(s) => s,
            Err(e) => {
                (self.notify)(LoopEvent::Warning(format!(
                    "consumer chose a format we can't use: {e}"
                )));
                return;
            }
        };
        gst::info!(
            CAT,
            "consumer fixed {}{}",
            spec.describe(),
            match modifier {
                Some(m) => format!(" as DMA-BUF (modifier {m:#x})"),
                None => String::new(),
            }
        );
        self.shared.set_negotiated(Some(spec));
        let Some(layout) = self.layout.get() else {
            // Before the first caps: steer upstream to the consumer's choice.
            if let Some(preview) = self.preview.get()
                && format::same_geometry(&preview, &spec)
                && (preview.format == spec.format
                    || self.alternatives.borrow().contains(&spec.format))
                && let Some(name) = format::gst_format_from_spa(spec.format)
            {
                (self.notify)(LoopEvent::WantFormat(name));
            }
            return;
        };
        if layout.spec != spec
            && format::same_geometry(&layout.spec, &spec)
            && self.alternatives.borrow().contains(&spec.format)
            && let Some(name) = format::gst_format_from_spa(spec.format)
        {
            // Upstream said it can deliver this one: frames wait until it has switched.
            (self.notify)(LoopEvent::WantFormat(name));
            return;
        }
        if layout.spec != spec {
            (self.notify)(LoopEvent::Warning(format!(
                "consumer fixed {} but upstream delivers {}",
                spec.describe(),
                layout.spec.describe()
            )));
            return;
        }
        let pods = match self.buffer_pods(&layout, modifier.is_some()) {
            Ok(p) => p,
            Err(e) => {
                (self.notify)(LoopEvent::Warning(format!(
                    "could not build PipeWire buffer params: {e}"
                )));
                return;
            }
        };
        let mut params = pods
            .iter()
            .filter_map(|p| spa::pod::Pod::from_bytes(p))
            .collect::<Vec<_>>();
        if let Err(e) = stream.update_params(&mut params) {
            (self.notify)(LoopEvent::Warning(format!(
                "could not set PipeWire buffer params: {e}"
            )));
        }
    }

    fn on_disconnected(&self, message: &str) {
        if self.disconnected.replace(true) {
            return;
        }
        self.shared.streaming.store(false, Ordering::Release);
        self.shared.consumers.store(0, Ordering::Relaxed);
        self.shared.set_negotiated(None);
        self.links.borrow_mut().clear();
        let path = &self.config.socket_path;
        if self.config.reconnect {
            (self.notify)(LoopEvent::Warning(format!(
                "lost the PipeWire daemon at {path} ({message}); reconnecting when it is back"
            )));
        } else {
            let msg = format!("lost the PipeWire daemon at {path} ({message}) and reconnect=false");
            if let Ok(mut f) = self.shared.failed.lock() {
                *f = Some(msg.clone());
            }
            (self.notify)(LoopEvent::Error(msg));
        }
    }

    fn on_reconnect_timer(self: &Rc<Self>) {
        if !self.disconnected.get() {
            return;
        }
        // Drop the dead connection outside of its own callbacks.
        self.forget_stream();
        self.session.borrow_mut().take();
        if !self.config.reconnect {
            return;
        }
        match connect_session(self) {
            Ok(s) => {
                *self.session.borrow_mut() = Some(s);
                self.disconnected.set(false);
                self.reconnect_failures.set(0);
                (self.notify)(LoopEvent::Info(format!(
                    "reconnected to the PipeWire daemon at {}",
                    self.config.socket_path
                )));
            }
            Err(_) => {
                self.reconnect_failures
                    .set(self.reconnect_failures.get().saturating_add(1));
            }
        }
    }
}
