// SPDX-License-Identifier: MPL-2.0

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

use gst::glib;
use gst::prelude::*;

use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::base_src::CreateSuccess;
use gst_base::subclass::prelude::*;

use vcambridge_common::live::{self, FrameLatency, Restamper};
use vcambridge_common::lock;

use crate::framepool::FramePool;
use crate::ring::{self, Geometry, ReadStart, WriterState};
use crate::shm::{self, Segment};
use crate::zerocopy::Stats;

mod frame;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "shmringsrc",
        gst::DebugColorFlags::empty(),
        Some("POSIX shared-memory ring source"),
    )
});

const DEFAULT_SHM_NAME: &str = "/vcambridge";
const DEFAULT_TIMEOUT_MS: u32 = 10_000;
const DEFAULT_IS_LIVE: bool = true;
const DEFAULT_ZERO_COPY: bool = true;
const DEFAULT_MAX_LEASES: u32 = 2;
/// Longest single sleep on the futex / while polling for the writer; `unlock()` interrupts it
/// earlier anyway.
const WAIT_SLICE: Duration = Duration::from_millis(100);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
struct Settings {
    shm_name: String,
    timeout_ms: u32,
    is_live: bool,
    zero_copy: bool,
    max_leases: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            shm_name: DEFAULT_SHM_NAME.into(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            is_live: DEFAULT_IS_LIVE,
            zero_copy: DEFAULT_ZERO_COPY,
            max_leases: DEFAULT_MAX_LEASES,
        }
    }
}

struct Attached {
    seg: Arc<Segment>,
    geometry: Geometry,
    generation: u64,
    next: u64,
}

#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started(Box<Reader>),
    /// Started, and the streaming thread holds the reader for one step of `create()` (opening
    /// the segment, copying a frame): the state lock is not held meanwhile.
    Stepping,
}

struct Reader {
    settings: Settings,
    attached: Option<Attached>,
    /// The ring caps id our current caps correspond to.
    caps_id: u64,
    caps: Option<gst::Caps>,
    /// Output memory for fixed-size (raw video) frames, reused last-freed first.
    pool: Option<FramePool>,
    /// The writer's timestamps onto our running time (re-anchored at every attach).
    restamper: Restamper,
    /// When we last made progress (attach or frame); the `timeout` counts from here.
    last_progress: Instant,
    discont: bool,
    /// Last writer pid seen, for messages.
    writer_pid: u32,
    /// We had to wait for the ring (not there, closed, restarted) before attaching.
    waited: bool,
}

/// What `create()` does next, decided under the state lock and executed without it.
enum Step {
    Frame(gst::Buffer),
    NewCaps(gst::Caps),
    WaitFutex(Arc<Segment>, u32),
    Poll,
    Again,
    Eos,
    Error(gst::ErrorMessage),
}

#[derive(Default)]
pub struct ShmRingSrc {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    flushing: Mutex<bool>,
    unlock_cv: Condvar,
    /// The mapped ring, so `unlock()` can wake a futex sleep at once.
    waker: Mutex<Option<Arc<Segment>>>,
    dropped: Mutex<u64>,
    /// Output frame memories allocated since start (`buffers-allocated`).
    allocated: Arc<AtomicU64>,
    /// One frame duration of the current caps (reported as latency).
    latency: FrameLatency,
    /// Zero-copy buffers downstream holds, and those the writer overwrote (shared with them).
    leases: Arc<Stats>,
    frames_zero_copy: AtomicU64,
    frames_copied: AtomicU64,
    /// Why the last copied frame was not handed out zero-copy.
    copy_reason: Mutex<&'static str>,
    /// `leases.overwritten` when the overwrite warning was posted (once per start).
    overwrite_warned: AtomicU64,
}

/// Why a frame is copied rather than leased.
mod copy_reason {
    pub const DISABLED: &str = "zero-copy=false";
    pub const READ_ONLY: &str = "read-only mapping (no write permission on the ring: cannot lease)";
    pub const WRITER: &str = "the writer does not honor leases (Python Writer or an older writer)";
    pub const MAX_LEASES: &str = "max-leases zero-copy buffers already held downstream";
}

fn buffer_flags(f: u32) -> gst::BufferFlags {
    let mut out = gst::BufferFlags::empty();
    for (rf, gf) in [
        (ring::flags::DISCONT, gst::BufferFlags::DISCONT),
        (ring::flags::DELTA_UNIT, gst::BufferFlags::DELTA_UNIT),
        (ring::flags::HEADER, gst::BufferFlags::HEADER),
        (ring::flags::GAP, gst::BufferFlags::GAP),
        (ring::flags::DROPPABLE, gst::BufferFlags::DROPPABLE),
        (ring::flags::MARKER, gst::BufferFlags::MARKER),
    ] {
        if f & rf != 0 {
            out |= gf;
        }
    }
    out
}

impl ShmRingSrc {
    fn timeout_error(&self, r: &Reader, waited: Duration) -> gst::ErrorMessage {
        let path = shm::shm_path(&r.settings.shm_name);
        match &r.attached {
            None => gst::error_msg!(
                gst::ResourceError::NotFound,
                (
                    "shmringsrc: no writer appeared at {path} within {} ms (start a writer with shm-name={} or raise timeout)",
                    waited.as_millis(),
                    r.settings.shm_name
                )
            ),
            // pid 0 is never a live writer (the ring names none); kill(0, 0) would test our
            // own process group.
            Some(_) if r.writer_pid == 0 => gst::error_msg!(
                gst::ResourceError::Read,
                (
                    "shmringsrc: the ring at {path} names no writer process (pid 0) and no frame arrived for {} ms; restart the writer (it reclaims the ring)",
                    waited.as_millis()
                )
            ),
            Some(_) if !shm::pid_alive(r.writer_pid) => gst::error_msg!(
                gst::ResourceError::Read,
                (
                    "shmringsrc: the writer of {path} (pid {}) is no longer running (crashed?) and no new writer took over within {} ms; restart the writer (it reclaims the ring)",
                    r.writer_pid,
                    waited.as_millis()
                )
            ),
            Some(_) => gst::error_msg!(
                gst::ResourceError::Read,
                (
                    "shmringsrc: no frame from the writer of {path} (pid {}, still running) for {} ms; is it paused or stalled? (raise timeout, 0 waits forever)",
                    r.writer_pid,
                    waited.as_millis()
                )
            ),
        }
    }

    fn timed_out(r: &Reader) -> Option<Duration> {
        let waited = r.last_progress.elapsed();
        (r.settings.timeout_ms != 0 && waited > Duration::from_millis(r.settings.timeout_ms.into()))
            .then_some(waited)
    }

    fn detach(&self, r: &mut Reader) {
        r.attached = None;
        r.waited = true;
        r.restamper.reset();
        r.discont = true;
        *lock(&self.waker) = None;
    }

    /// One step of `create()`, on the reader taken out of the state (no lock held): never waits
    /// (a wait is returned as a step, done by `create()`).
    fn step(&self, r: &mut Reader) -> Step {
        let name = r.settings.shm_name.clone();
        let Some(att) = &mut r.attached else {
            return match Segment::open_reader(&name) {
                Ok((seg, geometry)) => {
                    let mem = seg.memory();
                    let w = mem.write_seq();
                    // A reader that waited for this writer (started first, or following a
                    // restart) takes everything still in the ring; one attaching to a running
                    // writer starts at frame 0 of a young (not wrapped) ring, else at the
                    // newest frame.
                    let count = geometry.slot_count as u64;
                    let next = if r.waited {
                        w.saturating_sub(count - 1)
                    } else if w < count {
                        0
                    } else {
                        w - 1
                    };
                    r.waited = false;
                    r.writer_pid = mem.writer_pid();
                    gst::info!(
                        CAT,
                        imp = self,
                        "attached to {} generation {} (writer pid {}), starting at frame {next}",
                        seg.path(),
                        mem.generation(),
                        r.writer_pid
                    );
                    let seg = Arc::new(seg);
                    *lock(&self.waker) = Some(seg.clone());
                    r.attached = Some(Attached {
                        generation: mem.generation(),
                        seg,
                        geometry,
                        next,
                    });
                    r.caps_id = 0;
                    r.last_progress = Instant::now();
                    Step::Again
                }
                Err(e) if e.is_transient() => {
                    r.waited = true;
                    if let Some(waited) = Self::timed_out(r) {
                        return Step::Error(self.timeout_error(r, waited));
                    }
                    gst::trace!(CAT, imp = self, "waiting for the writer: {e}");
                    Step::Poll
                }
                Err(e) => Step::Error(gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    ("shmringsrc shm-name={name}: {e}")
                )),
            };
        };
        // The writer (or anyone with write access) may have truncated the object: never touch
        // a mapping that is no longer backed (fstat on our fd, cheap).
        if let Err(e) = att.seg.check_intact() {
            return Step::Error(gst::error_msg!(
                gst::ResourceError::Read,
                ("shmringsrc shm-name={name}: {e}")
            ));
        }
        let mem = att.seg.memory();
        let g = att.geometry;
        let state = mem.state();
        let w = mem.write_seq();
        // A new generation re-initialised the ring in place (frames gone): re-map now. A ring
        // abandoned for a bigger one (state Closed) is drained first.
        if state == Some(WriterState::Init)
            || (mem.generation() != att.generation && state != Some(WriterState::Closed))
        {
            gst::info!(
                CAT,
                imp = self,
                "writer of {} restarted (generation {} -> {}), re-mapping",
                att.seg.path(),
                att.generation,
                mem.generation()
            );
            self.detach(r);
            return Step::Again;
        }
        let writer_pid = mem.writer_pid();
        if writer_pid != r.writer_pid {
            r.writer_pid = writer_pid;
        }
        match mem.start_read(&g, att.next) {
            ReadStart::NotYet => {
                match state {
                    Some(WriterState::Eos) => return Step::Eos,
                    Some(WriterState::Closed) => {
                        gst::info!(CAT, imp = self, "writer closed {}", att.seg.path());
                        self.detach(r);
                        return Step::Poll;
                    }
                    _ => (),
                }
                // A writer that stopped and a new one that created a fresh object under the
                // same name: follow the name.
                if r.last_progress.elapsed() > Duration::from_millis(500)
                    && !att.seg.name_still_ours()
                {
                    self.detach(r);
                    return Step::Again;
                }
                let seg = att.seg.clone();
                if let Some(waited) = Self::timed_out(r) {
                    return Step::Error(self.timeout_error(r, waited));
                }
                Step::WaitFutex(seg, w as u32)
            }
            ReadStart::Skipped => {
                // Not a gap in the stream: the writer published that frame under another
                // number (or dropped it itself).
                att.next = att.next.wrapping_add(1);
                Step::Again
            }
            ReadStart::Lost { write_seq } => {
                let (next, skipped) = ring::catch_up(att.next, write_seq);
                gst::debug!(
                    CAT,
                    imp = self,
                    "fell behind: skipping {skipped} frames ({} -> {next})",
                    att.next
                );
                att.next = next;
                *lock(&self.dropped) += skipped;
                r.discont = true;
                Step::Again
            }
            ReadStart::Ready(meta) => {
                if meta.caps_id != r.caps_id {
                    match mem.read_caps() {
                        Some((id, s)) if id == meta.caps_id => {
                            let caps = match gst::Caps::from_str(&s) {
                                Ok(c) => c,
                                Err(_) => {
                                    return Step::Error(gst::error_msg!(
                                        gst::StreamError::Format,
                                        (
                                            "shmringsrc: the writer of {} published caps that do not parse: {s:?}",
                                            att.seg.path()
                                        )
                                    ));
                                }
                            };
                            r.caps_id = id;
                            if r.caps.as_ref() != Some(&caps) {
                                return Step::NewCaps(caps);
                            }
                            return Step::Again;
                        }
                        _ => {
                            // Written with caps that were already replaced: drop the frame.
                            att.next = att.next.wrapping_add(1);
                            *lock(&self.dropped) += 1;
                            return Step::Again;
                        }
                    }
                }
                let att_next = att.next;
                // Keeps the mapping alive while `mem` is used below.
                let seg = att.seg.clone();
                let generation = att.generation;
                let mut buffer = match self.zero_copy(r, &seg, &g, generation, &meta) {
                    Ok(Some(buffer)) => buffer,
                    // The writer took the slot while we leased it: look again.
                    Ok(None) => return Step::Again,
                    Err(reason) => {
                        *lock(&self.copy_reason) = reason;
                        match self.copy_frame(r, &seg, &g, &meta) {
                            Ok(Some(buffer)) => buffer,
                            Ok(None) => {
                                // Overwritten while we copied: never show it.
                                *lock(&self.dropped) += 1;
                                r.discont = true;
                                let Some(att) = r.attached.as_mut() else {
                                    return Step::Again;
                                };
                                let (next, skipped) = ring::catch_up(att_next, mem.write_seq());
                                att.next = next.max(att_next.wrapping_add(1));
                                *lock(&self.dropped) += skipped.saturating_sub(1);
                                return Step::Again;
                            }
                            Err(step) => return step,
                        }
                    }
                };
                drop(seg);
                let Some(att) = r.attached.as_mut() else {
                    return Step::Again;
                };
                att.next = att_next.wrapping_add(1);
                r.last_progress = Instant::now();
                // Timestamps: the writer's, moved onto our running time (vcambridge_common::live).
                let (pts, dts) = r.restamper.stamp(
                    meta.pts,
                    meta.dts,
                    live::running_time(self.obj().upcast_ref()),
                );
                let Some(buf) = buffer.get_mut() else {
                    return Step::Error(gst::error_msg!(
                        gst::CoreError::Failed,
                        ("output buffer not writable")
                    ));
                };
                buf.set_pts(pts);
                buf.set_dts(dts);
                buf.set_duration(meta.duration.map(gst::ClockTime::from_nseconds));
                buf.set_offset(meta.seq);
                let mut flags = buffer_flags(meta.flags);
                if r.discont {
                    flags |= gst::BufferFlags::DISCONT;
                    r.discont = false;
                }
                buf.set_flags(flags);
                Step::Frame(buffer)
            }
        }
    }

    /// Post one warning per start once the writer overwrote zero-copy buffers downstream held.
    fn warn_overwritten(&self) {
        let n = self.leases.overwritten.load(Ordering::Relaxed);
        if n == 0
            || self
                .overwrite_warned
                .compare_exchange(0, n, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let name = lock(&self.settings).shm_name.clone();
        gst::element_imp_warning!(
            self,
            gst::ResourceError::Read,
            ("shmringsrc shm-name={name}: the writer overwrote {n} zero-copy buffer(s) while downstream still held them (every ring slot was held: a process pins every slot, or more readers hold more buffers than the ring has slots; or the writer restarted): downstream may have seen a newer frame in that buffer; give the writer more slots or set zero-copy=false on this reader")
        );
    }

    /// Sleep on the condvar (interrupted by `unlock()`); returns false when flushing.
    fn poll_wait(&self, d: Duration) -> bool {
        let flushing = lock(&self.flushing);
        if *flushing {
            return false;
        }
        let (flushing, _) = self
            .unlock_cv
            .wait_timeout(flushing, d)
            .unwrap_or_else(|e| e.into_inner());
        !*flushing
    }
}

#[glib::object_subclass]
impl ObjectSubclass for ShmRingSrc {
    const NAME: &'static str = "GstShmRingSrc";
    type Type = super::ShmRingSrc;
    type ParentType = gst_base::PushSrc;
}

impl ObjectImpl for ShmRingSrc {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("shm-name")
                    .nick("Shm name")
                    .blurb("POSIX shm name of the ring to read ('vcam0' = '/vcam0', lives in /dev/shm)")
                    .default_value(Some(DEFAULT_SHM_NAME))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("timeout")
                    .nick("Timeout")
                    .blurb("Milliseconds to wait for a writer to appear or for the next frame before failing (0 = wait forever)")
                    .default_value(DEFAULT_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("is-live")
                    .nick("Is live")
                    .blurb("Act as a live source")
                    .default_value(DEFAULT_IS_LIVE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("zero-copy")
                    .nick("Zero copy")
                    .blurb("Hand slot memory downstream without a copy (leasing the slot) when the writer honors leases and the ring is writable; false copies every frame")
                    .default_value(DEFAULT_ZERO_COPY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-leases")
                    .nick("Max leases")
                    .blurb("Most zero-copy buffers downstream may hold at once (at most (slots - 2) / 2 of the ring); frames beyond are copied")
                    .minimum(1)
                    .maximum(ring::MAX_SLOT_COUNT / 2)
                    .default_value(DEFAULT_MAX_LEASES)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("frames-zero-copy")
                    .nick("Frames zero-copy")
                    .blurb("Frames handed downstream as the ring slot itself (leased, no copy)")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt64::builder("frames-copied")
                    .nick("Frames copied")
                    .blurb("Frames copied out of the ring (copy-reason says why the last one was)")
                    .read_only()
                    .build(),
                glib::ParamSpecString::builder("copy-reason")
                    .nick("Copy reason")
                    .blurb("Why the last copied frame was not handed out zero-copy (empty if none was copied)")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt64::builder("frames-overwritten")
                    .nick("Frames overwritten")
                    .blurb("Zero-copy buffers whose slot the writer took while downstream still held them (every slot was held, the writer restarted, or the ring was truncated)")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt64::builder("frames-dropped")
                    .nick("Frames dropped")
                    .blurb("Frames skipped because this reader fell behind (or they were torn)")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt64::builder("buffers-allocated")
                    .nick("Buffers allocated")
                    .blurb("Raw-video output buffers allocated since start; buffers downstream has freed are reused, so this stays at the number downstream holds at once")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = lock(&self.settings);
        match pspec.name() {
            "shm-name" => {
                let name = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| DEFAULT_SHM_NAME.into());
                // `vcam0` is `/vcam0`; a bad name is kept as given so the error quotes it.
                s.shm_name = match ring::validate_shm_name(&name) {
                    Ok(()) => ring::canonical_shm_name(&name),
                    Err(_) => name,
                };
            }
            "timeout" => s.timeout_ms = value.get().expect("type checked upstream"),
            "zero-copy" => s.zero_copy = value.get().expect("type checked upstream"),
            "max-leases" => s.max_leases = value.get().expect("type checked upstream"),
            "is-live" => {
                s.is_live = value.get().expect("type checked upstream");
                self.obj().set_live(s.is_live);
            }
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = lock(&self.settings);
        match pspec.name() {
            "shm-name" => s.shm_name.to_value(),
            "timeout" => s.timeout_ms.to_value(),
            "is-live" => s.is_live.to_value(),
            "zero-copy" => s.zero_copy.to_value(),
            "max-leases" => s.max_leases.to_value(),
            "frames-zero-copy" => self.frames_zero_copy.load(Ordering::Relaxed).to_value(),
            "frames-copied" => self.frames_copied.load(Ordering::Relaxed).to_value(),
            "copy-reason" => lock(&self.copy_reason).to_value(),
            "frames-overwritten" => self.leases.overwritten.load(Ordering::Relaxed).to_value(),
            "frames-dropped" => lock(&self.dropped).to_value(),
            "buffers-allocated" => self.allocated.load(Ordering::Relaxed).to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.set_live(DEFAULT_IS_LIVE);
        obj.set_format(gst::Format::Time);
    }
}

impl GstObjectImpl for ShmRingSrc {}

impl ElementImpl for ShmRingSrc {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Shared-memory ring source",
                "Source/Video/Audio",
                "Reads buffers and their caps from a POSIX shared-memory ring written by shmringsink or another process",
                "vcambridge developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &gst::Caps::new_any(),
                )
                .expect("src pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSrcImpl for ShmRingSrc {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        ring::validate_shm_name(&settings.shm_name)
            .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("shmringsrc: {e}")))?;
        // Fail early on anything that waiting will not fix (foreign file, permissions, version).
        if let Err(e) = Segment::open_reader(&settings.shm_name)
            && !e.is_transient()
        {
            return Err(gst::error_msg!(
                gst::ResourceError::OpenRead,
                ("shmringsrc shm-name={}: {e}", settings.shm_name)
            ));
        }
        *lock(&self.dropped) = 0;
        self.allocated.store(0, Ordering::Relaxed);
        self.frames_zero_copy.store(0, Ordering::Relaxed);
        self.frames_copied.store(0, Ordering::Relaxed);
        *lock(&self.copy_reason) = "";
        self.leases.overwritten.store(0, Ordering::Relaxed);
        self.overwrite_warned.store(0, Ordering::Relaxed);
        self.latency.reset();
        *lock(&self.state) = State::Started(Box::new(Reader {
            settings,
            attached: None,
            caps_id: 0,
            caps: None,
            pool: None,
            restamper: Restamper::default(),
            last_progress: Instant::now(),
            discont: true,
            writer_pid: 0,
            waited: false,
        }));
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Buffers still downstream free their memory themselves; the reader (its mapping) is
        // dropped outside the lock.
        let old = std::mem::replace(&mut *lock(&self.state), State::Stopped);
        let waker = lock(&self.waker).take();
        drop((old, waker));
        Ok(())
    }

    fn is_seekable(&self) -> bool {
        false
    }

    fn query(&self, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            // Frames are stamped with the running time at which they are read: allow one frame
            // of jitter downstream.
            let live = lock(&self.settings).is_live;
            self.latency.answer(q, live);
            return true;
        }
        BaseSrcImplExt::parent_query(self, query)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        *lock(&self.flushing) = true;
        self.unlock_cv.notify_all();
        if let Some(seg) = lock(&self.waker).as_ref() {
            // Wakes every reader of the ring; the others just re-check and sleep again.
            shm::futex_wake(&seg.memory());
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        *lock(&self.flushing) = false;
        Ok(())
    }
}

impl PushSrcImpl for ShmRingSrc {
    fn create(
        &self,
        _buffer: Option<&mut gst::BufferRef>,
    ) -> Result<CreateSuccess, gst::FlowError> {
        loop {
            if *lock(&self.flushing) {
                return Err(gst::FlowError::Flushing);
            }
            // The reader leaves the state for the step (which may open the segment or copy a
            // frame): decided and done without the state lock, put back afterwards.
            let mut r = {
                let mut state = lock(&self.state);
                match std::mem::replace(&mut *state, State::Stepping) {
                    State::Started(r) => r,
                    other => {
                        *state = other;
                        return Err(gst::FlowError::Flushing);
                    }
                }
            };
            let step = self.step(&mut r);
            {
                let mut state = lock(&self.state);
                if !matches!(*state, State::Stepping) {
                    // Stopped meanwhile: the reader (and its mapping) goes, after the lock.
                    drop(state);
                    drop(r);
                    return Err(gst::FlowError::Flushing);
                }
                *state = State::Started(r);
            }
            match step {
                Step::Frame(b) => {
                    self.warn_overwritten();
                    return Ok(CreateSuccess::NewBuffer(b));
                }
                Step::NewCaps(caps) => {
                    gst::info!(CAT, imp = self, "writer caps: {caps}");
                    if self.obj().set_caps(&caps).is_err() {
                        if *lock(&self.flushing) {
                            return Err(gst::FlowError::Flushing);
                        }
                        gst::element_imp_error!(
                            self,
                            gst::CoreError::Negotiation,
                            ("shmringsrc: downstream does not accept the writer's caps {caps}")
                        );
                        return Err(gst::FlowError::NotNegotiated);
                    }
                    self.latency.update(self.obj().upcast_ref(), &caps);
                    let slot_size = match &*lock(&self.state) {
                        State::Started(r) => {
                            r.attached.as_ref().map_or(0, |a| a.geometry.slot_size)
                        }
                        State::Stopped | State::Stepping => 0,
                    };
                    // Allocated (and faulted in) without the state lock.
                    let pool = self.pool_for(&caps, slot_size);
                    if let State::Started(r) = &mut *lock(&self.state) {
                        r.pool = pool;
                        r.caps = Some(caps);
                    }
                }
                Step::WaitFutex(seg, val) => {
                    if *lock(&self.flushing) {
                        return Err(gst::FlowError::Flushing);
                    }
                    shm::futex_wait(&seg.memory(), val, WAIT_SLICE);
                }
                Step::Poll => {
                    if !self.poll_wait(POLL_INTERVAL) {
                        return Err(gst::FlowError::Flushing);
                    }
                }
                Step::Again => (),
                Step::Eos => {
                    gst::info!(CAT, imp = self, "writer reached end of stream");
                    return Err(gst::FlowError::Eos);
                }
                Step::Error(msg) => {
                    self.post_error_message(msg);
                    return Err(gst::FlowError::Error);
                }
            }
        }
    }
}
