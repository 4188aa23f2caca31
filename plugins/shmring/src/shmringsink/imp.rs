// SPDX-License-Identifier: MPL-2.0

use std::sync::{Arc, LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;

use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use vcambridge_common::lock;

use crate::ring::{self, FrameMeta, Geometry, WriterState};
use crate::shm::Segment;
use crate::slotpool::SlotPool;
use crate::writer::{InPlace, RingWriter};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "shmringsink",
        gst::DebugColorFlags::empty(),
        Some("POSIX shared-memory ring sink"),
    )
});

pub(crate) const DEFAULT_SHM_NAME: &str = "/vcambridge";
const DEFAULT_MODE: u32 = 0o600;
const DEFAULT_SLOTS: u32 = 8;
const DEFAULT_SLOT_SIZE: u64 = 0;
const DEFAULT_ZERO_COPY: bool = true;
/// Slot payload used with `slot-size=0` when the caps do not fix a frame size (audio, encoded);
/// the ring grows when a bigger buffer arrives.
const AUTO_SLOT_SIZE: usize = 1 << 20;

/// Rings written by sinks of this process: the pid check cannot tell two of them apart.
static NAMES_IN_USE: LazyLock<Mutex<std::collections::HashSet<String>>> =
    LazyLock::new(Default::default);

#[derive(Debug, Clone)]
struct Settings {
    shm_name: String,
    mode: u32,
    slots: u32,
    slot_size: u64,
    zero_copy: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            shm_name: DEFAULT_SHM_NAME.into(),
            mode: DEFAULT_MODE,
            slots: DEFAULT_SLOTS,
            slot_size: DEFAULT_SLOT_SIZE,
            zero_copy: DEFAULT_ZERO_COPY,
        }
    }
}

#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started {
        /// `None` until the caps say how big the slots must be (slot-size 0, no ring to reclaim).
        writer: Option<Arc<RingWriter>>,
        settings: Settings,
        caps: Option<String>,
        /// Raw video caps: the default layout the ring carries.
        video_info: Option<Box<gst_video::VideoInfo>>,
        pool: Option<SlotPool>,
        /// The caps could not be published (error already posted): refuse buffers.
        caps_failed: bool,
    },
}

#[derive(Default, Clone, Copy)]
struct Stats {
    written: u64,
    in_place: u64,
    dropped: u64,
}

#[derive(Default)]
pub struct ShmRingSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    stats: Mutex<Stats>,
}

/// The frame size fixed by raw video caps.
fn frame_size(caps: &gst::CapsRef) -> Option<usize> {
    gst_video::VideoInfo::from_caps(caps)
        .ok()
        .map(|info| info.size())
}

/// `buffer`'s raw video (laid out as its `GstVideoMeta` says) copied into the default layout of
/// `info`, with zeroed row padding (nothing stale reaches the ring); `None` when the layout
/// does not fit the buffer.
fn repack(
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
) -> Option<gst::MappedBuffer<gst::buffer::Readable>> {
    // Mapping does not check that the meta's planes lie inside the buffer: do it here. A
    // plane has the rows of the caps' default layout.
    let vmeta = buffer.meta::<gst_video::VideoMeta>()?;
    let n = info.n_planes() as usize;
    let default_offsets = &info.offset()[..n];
    for p in 0..n {
        let doff = default_offsets[p];
        let dstride = usize::try_from(info.stride()[p]).ok().filter(|s| *s > 0)?;
        // The plane ends where the next plane (in memory order) starts.
        let dend = default_offsets
            .iter()
            .copied()
            .filter(|o| *o > doff)
            .min()
            .unwrap_or(info.size());
        let rows = (dend - doff) / dstride;
        let off = *vmeta.offset().get(p)?;
        let stride = usize::try_from(*vmeta.stride().get(p)?)
            .ok()
            .filter(|s| *s > 0)?;
        let end = rows
            .checked_sub(1)
            .and_then(|r| r.checked_mul(stride))
            .and_then(|e| e.checked_add(off))
            .and_then(|e| e.checked_add(dstride.min(stride)));
        if end.is_none_or(|e| e > buffer.size()) {
            return None;
        }
    }
    let src = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info).ok()?;
    let mut packed = gst::Buffer::from_mut_slice(vec![0u8; info.size()]);
    {
        let mut dst =
            gst_video::VideoFrameRef::from_buffer_ref_writable(packed.get_mut()?, info).ok()?;
        src.copy(&mut dst).ok()?;
    }
    packed.into_mapped_buffer_readable().ok()
}

fn meta_of(buffer: &gst::BufferRef) -> FrameMeta {
    let f = buffer.flags();
    let mut flags = 0;
    for (gf, rf) in [
        (gst::BufferFlags::DISCONT, ring::flags::DISCONT),
        (gst::BufferFlags::DELTA_UNIT, ring::flags::DELTA_UNIT),
        (gst::BufferFlags::HEADER, ring::flags::HEADER),
        (gst::BufferFlags::GAP, ring::flags::GAP),
        (gst::BufferFlags::DROPPABLE, ring::flags::DROPPABLE),
        (gst::BufferFlags::MARKER, ring::flags::MARKER),
    ] {
        if f.contains(gf) {
            flags |= rf;
        }
    }
    FrameMeta {
        pts: buffer.pts().map(|t| t.nseconds()),
        dts: buffer.dts().map(|t| t.nseconds()),
        duration: buffer.duration().map(|t| t.nseconds()),
        flags,
        ..Default::default()
    }
}

impl ShmRingSink {
    /// Create (or replace) the ring with slots of `payload` bytes.
    fn open_ring(
        &self,
        settings: &Settings,
        payload: usize,
    ) -> Result<Arc<RingWriter>, gst::ErrorMessage> {
        let geometry = Geometry::new(settings.slots, payload).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                ("shm ring {}: {e}", settings.shm_name)
            )
        })?;
        let writer =
            RingWriter::create(&settings.shm_name, settings.mode, geometry).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenWrite,
                    ("shmringsink shm-name={}: {e}", settings.shm_name)
                )
            })?;
        gst::info!(
            CAT,
            imp = self,
            "ring {} generation {}: {} slots of {} bytes",
            writer.path(),
            writer.generation(),
            geometry.slot_count,
            geometry.slot_size
        );
        Ok(writer)
    }

    /// Publish `caps` into the ring, creating or resizing it (slot-size 0) or refusing them
    /// (fixed size too small).
    fn publish_caps(&self, state: &mut State, caps: &gst::Caps) -> Result<(), gst::ErrorMessage> {
        let State::Started {
            writer, settings, ..
        } = &*state
        else {
            return Err(gst::error_msg!(
                gst::CoreError::StateChange,
                ("not started")
            ));
        };
        let slot_size = writer.as_ref().map(|w| w.geometry().slot_size);
        let auto = settings.slot_size == 0;
        let name = settings.shm_name.clone();
        match (frame_size(caps), slot_size) {
            (Some(needed), Some(slot_size)) if !auto && needed > slot_size => {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("shmringsink shm-name={name}: caps {caps} need {needed} bytes per frame but slot-size is {slot_size}; raise slot-size or set it to 0 (size from caps)")
                ));
            }
            (Some(needed), cur) if auto && cur != Some(ring::align_up(needed)) => {
                self.resize(state, needed)?
            }
            (None, None) => self.resize(state, AUTO_SLOT_SIZE)?,
            _ => (),
        }
        let caps_str = caps.to_string();
        let State::Started {
            writer: Some(writer),
            caps: cur_caps,
            video_info,
            ..
        } = state
        else {
            return Err(gst::error_msg!(
                gst::CoreError::StateChange,
                ("not started")
            ));
        };
        *video_info = gst_video::VideoInfo::from_caps(caps).ok().map(Box::new);
        writer
            .set_caps(&caps_str)
            .map_err(|e| gst::error_msg!(gst::StreamError::Format, ("shmringsink: {e}")))?;
        gst::debug!(CAT, imp = self, "published caps {caps_str}");
        *cur_caps = Some(caps_str);
        Ok(())
    }

    /// Create the ring of a started sink, or replace it by one with `payload`-byte slots
    /// (re-publishing the caps).
    fn resize(&self, state: &mut State, payload: usize) -> Result<(), gst::ErrorMessage> {
        let State::Started {
            writer,
            settings,
            caps,
            pool,
            ..
        } = state
        else {
            return Ok(());
        };
        let new = self.open_ring(settings, payload)?;
        if let Some(old) = writer.take() {
            old.abandon();
        }
        if let Some(c) = caps.as_deref() {
            new.set_caps(c)
                .map_err(|e| gst::error_msg!(gst::ResourceError::Write, ("{e}")))?;
        }
        if let Some(p) = pool {
            p.set_writer(Some(new.clone()));
        }
        *writer = Some(new);
        Ok(())
    }
}

#[glib::object_subclass]
impl ObjectSubclass for ShmRingSink {
    const NAME: &'static str = "GstShmRingSink";
    type Type = super::ShmRingSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for ShmRingSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("shm-name")
                    .nick("Shm name")
                    .blurb("POSIX shm name of the ring: up to 255 characters, '/' only at the start ('vcam0' = '/vcam0', lives in /dev/shm)")
                    .default_value(Some(DEFAULT_SHM_NAME))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("mode")
                    .nick("Mode")
                    .blurb("Permission bits of the shm object (decimal in gst-launch: 384 = 0600, 420 = 0644)")
                    .maximum(0o777)
                    .default_value(DEFAULT_MODE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("slots")
                    .nick("Slots")
                    .blurb("Number of frame slots in the ring")
                    .minimum(2)
                    .maximum(1024)
                    .default_value(DEFAULT_SLOTS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("slot-size")
                    .nick("Slot size")
                    .blurb("Payload bytes per slot; 0 = the raw video frame size from the caps (1 MiB for other caps), growing if a bigger buffer arrives")
                    .maximum(1 << 32)
                    .default_value(DEFAULT_SLOT_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("zero-copy")
                    .nick("Zero copy")
                    .blurb("Offer upstream a buffer pool whose buffers are ring slots (no copy when accepted)")
                    .default_value(DEFAULT_ZERO_COPY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("frames-written")
                    .nick("Frames written")
                    .blurb("Frames published into the ring")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt64::builder("frames-in-place")
                    .nick("Frames in place")
                    .blurb("Frames published without a copy (upstream wrote into the ring slot)")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt64::builder("frames-dropped")
                    .nick("Frames dropped")
                    .blurb("Frames dropped because every slot was lent out to upstream")
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
            "mode" => s.mode = value.get().expect("type checked upstream"),
            "slots" => s.slots = value.get().expect("type checked upstream"),
            "slot-size" => s.slot_size = value.get().expect("type checked upstream"),
            "zero-copy" => s.zero_copy = value.get().expect("type checked upstream"),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = lock(&self.settings);
        let st = *lock(&self.stats);
        match pspec.name() {
            "shm-name" => s.shm_name.to_value(),
            "mode" => s.mode.to_value(),
            "slots" => s.slots.to_value(),
            "slot-size" => s.slot_size.to_value(),
            "zero-copy" => s.zero_copy.to_value(),
            "frames-written" => st.written.to_value(),
            "frames-in-place" => st.in_place.to_value(),
            "frames-dropped" => st.dropped.to_value(),
            _ => unimplemented!(),
        }
    }
}

impl GstObjectImpl for ShmRingSink {}

impl ElementImpl for ShmRingSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Shared-memory ring sink",
                "Sink/Video/Audio",
                "Publishes buffers and their caps into a POSIX shared-memory ring readable with mmap",
                "vcambridge developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &gst::Caps::new_any(),
                )
                .expect("sink pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for ShmRingSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        ring::validate_shm_name(&settings.shm_name)
            .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("shmringsink: {e}")))?;
        if !lock(&NAMES_IN_USE).insert(settings.shm_name.clone()) {
            return Err(gst::error_msg!(
                gst::ResourceError::Busy,
                (
                    "shmringsink shm-name={}: another shmringsink in this process writes that ring; only one writer per ring",
                    settings.shm_name
                )
            ));
        }
        // With slot-size 0 the ring is created when the caps say how big frames are, unless a
        // previous writer (crash, restart) left one of this slot count: that one is reclaimed in
        // place right away. Either way, problems at the name are reported now.
        let payload = match settings.slot_size {
            0 => match Segment::check_writable(&settings.shm_name, settings.mode) {
                Ok(existing) => existing
                    .filter(|g| g.slot_count == settings.slots)
                    .map(|g| g.slot_size),
                Err(e) => {
                    lock(&NAMES_IN_USE).remove(&settings.shm_name);
                    return Err(gst::error_msg!(
                        gst::ResourceError::OpenWrite,
                        ("shmringsink shm-name={}: {e}", settings.shm_name)
                    ));
                }
            },
            n => Some(n as usize),
        };
        let writer = match payload.map(|p| self.open_ring(&settings, p)).transpose() {
            Ok(w) => w,
            Err(e) => {
                lock(&NAMES_IN_USE).remove(&settings.shm_name);
                return Err(e);
            }
        };
        *lock(&self.stats) = Stats::default();
        *lock(&self.state) = State::Started {
            writer,
            settings,
            caps: None,
            video_info: None,
            pool: None,
            caps_failed: false,
        };
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let old = std::mem::take(&mut *lock(&self.state));
        if let State::Started {
            writer,
            pool,
            settings,
            ..
        } = old
        {
            lock(&NAMES_IN_USE).remove(&settings.shm_name);
            if let Some(p) = pool {
                p.set_writer(None);
            }
            if let Some(writer) = writer {
                writer.close();
                let st = *lock(&self.stats);
                gst::info!(
                    CAT,
                    imp = self,
                    "closed {}: {} frames written, {} in place, {} dropped",
                    writer.path(),
                    st.written,
                    st.in_place,
                    st.dropped
                );
            }
        }
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let mut state = lock(&self.state);
        // Errors are posted once and make `prepare` refuse buffers: failing here would make
        // upstream retry negotiation (and post the error) for every buffer.
        let result = self.publish_caps(&mut state, caps);
        if let State::Started { caps_failed, .. } = &mut *state {
            match result {
                Ok(()) => *caps_failed = false,
                Err(e) => {
                    if !*caps_failed {
                        self.post_error_message(e);
                    }
                    *caps_failed = true;
                }
            }
        }
        Ok(())
    }

    fn prepare(&self, _buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        match &*lock(&self.state) {
            State::Started {
                caps_failed: true, ..
            } => Err(gst::FlowError::Error),
            State::Started { .. } => Ok(gst::FlowSuccess::Ok),
            State::Stopped => Err(gst::FlowError::Flushing),
        }
    }

    fn propose_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        let mut state = lock(&self.state);
        let State::Started {
            writer,
            settings,
            pool,
            ..
        } = &mut *state
        else {
            return Ok(());
        };
        let Some(writer) = writer.as_ref() else {
            return Ok(());
        };
        if !settings.zero_copy {
            return Ok(());
        }
        let (caps, _need_pool) = query.get_owned();
        let Some(caps) = caps else { return Ok(()) };
        let Some(size) = frame_size(&caps) else {
            return Ok(());
        };
        if size > writer.geometry().slot_size {
            return Ok(());
        }
        let p = SlotPool::new(Some(writer.clone()));
        let mut config = p.config();
        config.set_params(Some(&caps), size as u32, 0, 0);
        if p.set_config(config).is_err() {
            return Err(gst::loggable_error!(CAT, "slot pool rejected its config"));
        }
        query.add_allocation_pool(Some(&p), size as u32, 0, 0);
        gst::debug!(
            CAT,
            imp = self,
            "proposing slot pool, {size} bytes per buffer"
        );
        *pool = Some(p);
        Ok(())
    }

    fn event(&self, event: gst::Event) -> bool {
        if let State::Started {
            writer: Some(writer),
            ..
        } = &*lock(&self.state)
        {
            match event.view() {
                gst::EventView::Eos(_) => writer.set_state(WriterState::Eos),
                gst::EventView::StreamStart(_) | gst::EventView::FlushStop(_) => {
                    writer.set_state(WriterState::Live)
                }
                _ => (),
            }
        }
        self.parent_event(event)
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut state = lock(&self.state);
        let map = buffer.map_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::ResourceError::Read, ("cannot map buffer"));
            gst::FlowError::Error
        })?;
        let meta = meta_of(buffer);
        let State::Started {
            writer,
            settings,
            video_info,
            ..
        } = &*state
        else {
            return Err(gst::FlowError::Flushing);
        };
        // Raw video with a non-default layout (padded strides, moved planes): the ring carries
        // the default layout of the caps, so repack.
        let packed = match (video_info, buffer.meta::<gst_video::VideoMeta>()) {
            (Some(info), Some(vmeta))
                if vmeta.stride() != info.stride() || vmeta.offset() != info.offset() =>
            {
                let Some(packed) = repack(buffer, info) else {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        (
                            "buffer layout (offsets {:?}, strides {:?}) does not fit its caps",
                            vmeta.offset(),
                            vmeta.stride()
                        )
                    );
                    return Err(gst::FlowError::Error);
                };
                Some(packed)
            }
            _ => None,
        };
        let data: &[u8] = packed.as_ref().map_or(map.as_slice(), |p| p.as_slice());
        let slot_size = writer.as_ref().map_or(0, |w| w.geometry().slot_size);
        if data.len() > slot_size || writer.is_none() {
            if settings.slot_size != 0 {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "shmringsink shm-name={}: a {} byte buffer does not fit slot-size {}; raise slot-size or set it to 0",
                        settings.shm_name,
                        data.len(),
                        slot_size
                    )
                );
                return Err(gst::FlowError::Error);
            }
            let payload = data.len().next_power_of_two().max(AUTO_SLOT_SIZE);
            if let Err(e) = self.resize(&mut state, payload) {
                self.post_error_message(e);
                return Err(gst::FlowError::Error);
            }
        }
        let State::Started {
            writer: Some(writer),
            ..
        } = &*state
        else {
            return Err(gst::FlowError::Flushing);
        };
        // Another process (same uid) truncated our ring: the SIGBUS guard kept us alive, but
        // nothing written since reaches the readers.
        if let Err(e) = writer.check_intact() {
            gst::element_imp_error!(self, gst::ResourceError::Write, ("shmringsink: {e}"));
            return Err(gst::FlowError::Error);
        }
        let mut stats = lock(&self.stats);
        let in_place = if packed.is_some() {
            InPlace::NotLent
        } else {
            writer.publish_in_place(map.as_ptr(), map.size(), meta)
        };
        match in_place {
            InPlace::Published(_) => {
                stats.in_place += 1;
                stats.written += 1;
            }
            InPlace::NotLent => match writer.write_frame(meta, data) {
                Some(_) => stats.written += 1,
                None => {
                    stats.dropped += 1;
                    gst::warning!(CAT, imp = self, "every slot is lent out, frame dropped");
                }
            },
        }
        Ok(gst::FlowSuccess::Ok)
    }
}
