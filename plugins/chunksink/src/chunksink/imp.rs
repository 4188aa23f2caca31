// SPDX-License-Identifier: MPL-2.0
//! chunksink: adapts the chunk core (`crate::chunk`, `crate::wav`) and the I/O thread
//! (`crate::files`) to a `GstBaseSink`.
//!
//! Locks: `settings` (properties) and `state` are only held to copy or swap values. The
//! streaming thread takes the `Writer` out of `state`, writes without any lock, and puts it back;
//! `stop()` takes it out the same way and joins the I/O thread without a lock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use super::caps::{supported_caps, wav_format_of};
use crate::chunk::{
    ChunkGeometry, ChunkRecord, Fill, Gap, GapReason, NamePattern, SealReason, Timeline, ns_of,
    resume_point,
};
use crate::files::{IoConfig, IoWorker, Job, MappedChunk};
use crate::wav::WavFormat;
use vcambridge_common::lock;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "chunksink",
        gst::DebugColorFlags::empty(),
        Some("Raw audio into mmap'd WAV chunk files"),
    )
});

const DEFAULT_DIRECTORY: &str = ".";
const DEFAULT_LOCATION: &str = "chunk-%06d.wav";
const DEFAULT_INDEX_FILE: &str = "index.jsonl";
const DEFAULT_CHUNK_SIZE: u64 = 0;
const DEFAULT_CHUNK_DURATION: u64 = 10_000_000_000;
const DEFAULT_MAX_CHUNKS: u32 = 0;
const DEFAULT_FILL_GAPS: bool = false;
const DEFAULT_GAP_TOLERANCE: u64 = 40_000_000;
/// `fill-gaps` writes at most this much silence for one gap (longer gaps are only recorded).
const MAX_FILL_SECONDS: u64 = 3600;

#[derive(Debug, Clone)]
struct Settings {
    directory: String,
    location: String,
    index_file: String,
    chunk_size: u64,
    chunk_duration: u64,
    max_chunks: u32,
    fill_gaps: bool,
    gap_tolerance: u64,
    device: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            directory: DEFAULT_DIRECTORY.into(),
            location: DEFAULT_LOCATION.into(),
            index_file: DEFAULT_INDEX_FILE.into(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            chunk_duration: DEFAULT_CHUNK_DURATION,
            max_chunks: DEFAULT_MAX_CHUNKS,
            fill_gaps: DEFAULT_FILL_GAPS,
            gap_tolerance: DEFAULT_GAP_TOLERANCE,
            device: String::new(),
        }
    }
}

/// The negotiated format and what follows from it.
struct Stream {
    format: WavFormat,
    geometry: ChunkGeometry,
    timeline: Timeline,
}

/// The chunk being written.
struct Current {
    chunk: MappedChunk,
    fill: Fill,
    first_sample: u64,
    pts: Option<u64>,
    unix_time: f64,
    gaps: Vec<Gap>,
}

/// Everything the streaming thread needs, owned by whoever holds it (never shared).
struct Writer {
    settings: Settings,
    io: IoWorker,
    stream: Option<Stream>,
    current: Option<Current>,
    /// Index of the next chunk to open.
    next_index: u64,
    /// A Prepare for chunk `next_index` is queued or done and not taken yet.
    prepare_pending: bool,
    /// Samples in the stream so far (all chunks, silence included).
    next_sample: u64,
    /// Gaps at `next_sample` recorded while no chunk was open.
    pending_gaps: Vec<Gap>,
    /// Wall-clock end of the previous capture in this directory (from the index): the first
    /// buffer records a restart gap.
    resumed_after: Option<f64>,
    failed: bool,
}

#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started {
        /// None while the streaming thread holds it.
        writer: Option<Box<Writer>>,
    },
}

#[derive(Default)]
pub struct ChunkSink {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    chunks_sealed: AtomicU64,
    samples_written: AtomicU64,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl ChunkSink {
    fn take_writer(&self) -> Option<Box<Writer>> {
        match &mut *lock(&self.state) {
            State::Started { writer } => writer.take(),
            State::Stopped => None,
        }
    }

    fn put_writer(&self, w: Box<Writer>) {
        let mut state = lock(&self.state);
        if let State::Started { writer } = &mut *state
            && writer.is_none()
        {
            *writer = Some(w);
            return;
        }
        drop(state);
        // Stopped meanwhile: dropping the writer joins its I/O thread (outside the lock).
        drop(w);
    }

    /// Post the chunk-full message for a sealed chunk.
    fn post_sealed(&self, r: &ChunkRecord) {
        let s = gst::Structure::builder("chunk-full")
            .field("path", &r.path)
            .field("index", r.index)
            .field("first-sample", r.first_sample)
            .field("sample-count", r.samples)
            .field_if_some("pts", r.pts.map(gst::ClockTime::from_nseconds))
            .field("sealed", r.reason.as_str())
            .field("gaps", r.gaps.len() as u32)
            .build();
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
    }

    /// Seal the current chunk (if any): its header already matches what it holds. An empty
    /// chunk is deleted instead (its gaps move to the next one).
    fn seal(&self, w: &mut Writer, reason: SealReason) {
        let Some(cur) = w.current.take() else {
            return;
        };
        let Some(stream) = w.stream.as_ref() else {
            return;
        };
        let samples = if reason == SealReason::Full {
            stream.geometry.frames_per_chunk
        } else {
            cur.fill.frames
        };
        if samples == 0 {
            w.pending_gaps.extend(cur.gaps);
            w.io.send(Job::Discard(cur.chunk));
            return;
        }
        let record = ChunkRecord {
            path: cur.chunk.path.display().to_string(),
            index: cur.chunk.index,
            first_sample: cur.first_sample,
            samples,
            pts: cur.pts,
            device: (!w.settings.device.is_empty()).then(|| w.settings.device.clone()),
            rate: stream.format.rate,
            channels: stream.format.channels,
            format: stream.format.sample.gst_name(),
            unix_time: cur.unix_time,
            end_unix_time: now_unix(),
            gaps: cur.gaps,
            reason,
        };
        let final_len = stream
            .geometry
            .layout
            .file_len(samples * stream.geometry.block_align());
        gst::debug!(
            CAT,
            imp = self,
            "sealed chunk {} ({samples} samples, {})",
            record.index,
            reason.as_str()
        );
        self.chunks_sealed.fetch_add(1, Ordering::Relaxed);
        self.post_sealed(&record);
        w.io.send(Job::Seal {
            chunk: cur.chunk,
            final_len,
            record,
        });
    }

    /// Delete the pre-created next chunk (format change, end of stream).
    fn discard_prepared(&self, w: &mut Writer) {
        if w.prepare_pending {
            w.prepare_pending = false;
            if let Ok(c) = w.io.take_prepared() {
                w.io.send(Job::Discard(c));
            }
        }
    }

    /// Make chunk `next_index` current (waiting for the I/O thread if it is not ready yet; one
    /// retry when preparing it failed earlier, e.g. space was freed since) and ask for the one
    /// after it.
    fn open_chunk(&self, w: &mut Writer, pts: Option<u64>, unix_time: f64) -> Result<(), String> {
        let stream = w.stream.as_ref().ok_or("no caps")?;
        let (len, layout) = (stream.geometry.file_len(), stream.geometry.layout);
        // Pages made writable ahead of the writer: one second of audio, 1..32 MiB.
        let per_second = u64::from(stream.format.rate) * u64::from(stream.format.block_align());
        let window = per_second.clamp(1 << 20, 32 << 20) as usize;
        let prepare = |w: &Writer| {
            w.io.send(Job::Prepare {
                index: w.next_index,
                len,
                layout,
                window,
            })
        };
        let mut chunk = if w.prepare_pending {
            w.prepare_pending = false;
            w.io.take_prepared()
        } else {
            prepare(w);
            w.io.take_prepared()
        };
        if chunk.is_err() {
            prepare(w);
            chunk = w.io.take_prepared();
        }
        let chunk = chunk?;
        gst::debug!(
            CAT,
            imp = self,
            "chunk {} open: {}",
            chunk.index,
            chunk.path.display()
        );
        w.next_index += 1;
        prepare(w);
        w.prepare_pending = true;
        w.current = Some(Current {
            chunk,
            fill: Fill::default(),
            first_sample: w.next_sample,
            pts,
            unix_time,
            gaps: std::mem::take(&mut w.pending_gaps),
        });
        Ok(())
    }

    /// Write `frames` frames (from `data`, or silence when None) at the end of the stream,
    /// rotating chunks on the way. `pts` is that of the first frame.
    fn write_frames(
        &self,
        w: &mut Writer,
        data: Option<&[u8]>,
        frames: u64,
        pts: Option<u64>,
        unix_time: f64,
    ) -> Result<(), String> {
        let Some(stream) = w.stream.as_ref() else {
            return Err("no caps".into());
        };
        let geometry = stream.geometry;
        let rate = u64::from(stream.format.rate);
        let silence = stream.format.sample.silence_byte();
        let ba = geometry.block_align() as usize;
        let header = geometry.layout.header_len();
        let mut done = 0u64;
        while done < frames {
            if w.current.is_none() {
                let at = pts.map(|p| p + ns_of(done, rate));
                if let Err(e) = self.open_chunk(w, at, unix_time) {
                    return Err(format!(
                        "{e}. The previous chunks are sealed and complete; {} samples of this \
                         buffer were not written",
                        frames - done
                    ));
                }
            }
            let cur = w.current.as_mut().expect("opened above");
            let piece = cur.fill.next_piece(&geometry, frames - done);
            let off = header + piece.offset as usize * ba;
            let n = piece.frames as usize * ba;
            let bytes = cur.chunk.bytes_mut();
            match data {
                Some(d) => {
                    let from = done as usize * ba;
                    bytes[off..off + n].copy_from_slice(&d[from..from + n]);
                }
                None => bytes[off..off + n].fill(silence),
            }
            geometry
                .layout
                .update_sizes(bytes, (piece.offset + piece.frames) * ba as u64);
            if let Some(job) = cur.chunk.prefault_ahead(off + n) {
                w.io.send(job);
            }
            done += piece.frames;
            w.next_sample += piece.frames;
            self.samples_written
                .fetch_add(piece.frames, Ordering::Relaxed);
            if piece.fills_chunk {
                self.seal(w, SealReason::Full);
            }
        }
        Ok(())
    }

    fn record_gap(&self, w: &mut Writer, gap: Gap) {
        gst::info!(
            CAT,
            imp = self,
            "gap ({}) at sample {}: {} samples ({} ns)",
            gap.reason.as_str(),
            gap.at_sample,
            gap.missing_samples,
            gap.duration_ns
        );
        match w.current.as_mut() {
            Some(c) => c.gaps.push(gap),
            None => w.pending_gaps.push(gap),
        }
    }

    fn render_inner(&self, w: &mut Writer, buffer: &gst::Buffer) -> Result<(), gst::FlowError> {
        if w.failed {
            return Err(gst::FlowError::Error);
        }
        if let Some(e) = w.io.take_failure() {
            w.failed = true;
            gst::element_imp_error!(self, gst::ResourceError::Write, ["{}", e]);
            return Err(gst::FlowError::Error);
        }
        let Some(stream) = w.stream.as_mut() else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ["chunksink received a buffer before any caps"]
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        let ba = u64::from(stream.format.block_align());
        let rate = u64::from(stream.format.rate);
        let map = buffer.map_readable().map_err(|_| {
            gst::element_imp_error!(self, gst::ResourceError::Read, ["cannot map a buffer"]);
            gst::FlowError::Error
        })?;
        let len = map.len() as u64;
        if !len.is_multiple_of(ba) {
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                [
                    "buffer of {} bytes is not whole frames of {} bytes ({} channels of {})",
                    len,
                    ba,
                    stream.format.channels,
                    stream.format.sample.gst_name()
                ]
            );
            return Err(gst::FlowError::Error);
        }
        let frames = len / ba;
        if frames == 0 {
            return Ok(());
        }
        let buffer_pts = buffer.pts().map(|t| t.nseconds());
        let discont = buffer.flags().contains(gst::BufferFlags::DISCONT);
        let wall = now_unix();
        let gap = stream.timeline.observe(buffer_pts, discont, w.next_sample);
        // Buffers without a timestamp (pipewiresrc stamps only its first one) continue the
        // last known one, so chunks still get a PTS.
        let pts = buffer_pts.or_else(|| stream.timeline.expected_pts(w.next_sample));
        let mut result = Ok(());
        if let Some(end) = w.resumed_after.take() {
            let secs = (wall - end).max(0.0);
            self.record_gap(
                w,
                Gap {
                    reason: GapReason::Restart,
                    at_sample: w.next_sample,
                    missing_samples: (secs * rate as f64).round() as i64,
                    duration_ns: (secs * 1e9).round() as i64,
                    pts,
                    expected_pts: None,
                    filled: false,
                },
            );
        }
        if let Some(mut gap) = gap {
            let fill = w.settings.fill_gaps
                && gap.missing_samples > 0
                && (gap.missing_samples as u64) <= MAX_FILL_SECONDS * rate;
            gap.filled = fill;
            let missing = gap.missing_samples.max(0) as u64;
            let from = gap.expected_pts;
            self.record_gap(w, gap);
            if fill {
                result = self.write_frames(w, None, missing, from, wall);
                if let (Some(s), Some(p)) = (w.stream.as_mut(), pts) {
                    s.timeline.filled(p, w.next_sample);
                }
            }
        }
        if result.is_ok() {
            result = self.write_frames(w, Some(&map), frames, pts, wall);
        }
        if let Err(e) = result {
            w.failed = true;
            let kind = if e.starts_with("disk full") {
                gst::ResourceError::NoSpaceLeft
            } else {
                gst::ResourceError::OpenWrite
            };
            gst::element_imp_error!(self, kind, ["{}", e]);
            return Err(gst::FlowError::Error);
        }
        Ok(())
    }

    /// Seal what is written, delete the pre-created chunk and wait for the I/O thread.
    fn finish(&self, w: &mut Writer, reason: SealReason) {
        self.seal(w, reason);
        self.discard_prepared(w);
        w.io.barrier();
        if let Some(e) = w.io.take_failure() {
            gst::element_imp_warning!(self, gst::ResourceError::Write, ["{}", e]);
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for ChunkSink {
    const NAME: &'static str = "GstChunkSink";
    type Type = super::ChunkSink;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for ChunkSink {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("directory")
                    .nick("Directory")
                    .blurb("Folder for the chunk files and the index (must exist)")
                    .default_value(Some(DEFAULT_DIRECTORY))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("location")
                    .nick("Location")
                    .blurb("Chunk file name pattern with one %d / %0Nd for the chunk index")
                    .default_value(Some(DEFAULT_LOCATION))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("index-file")
                    .nick("Index file")
                    .blurb(
                        "JSON-lines index in the directory, one line per sealed chunk \
                         (empty: none); an existing index continues (numbering, restart gap)",
                    )
                    .default_value(Some(DEFAULT_INDEX_FILE))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("chunk-size")
                    .nick("Chunk size")
                    .blurb(
                        "Bytes per chunk file, header included (whole frames; 0: use \
                         chunk-duration)",
                    )
                    .default_value(DEFAULT_CHUNK_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("chunk-duration")
                    .nick("Chunk duration")
                    .blurb("Audio per chunk in nanoseconds (rounded to whole frames)")
                    .minimum(1)
                    .default_value(DEFAULT_CHUNK_DURATION)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-chunks")
                    .nick("Max chunks")
                    .blurb("Keep only the newest N chunks, the one being written included (0: all)")
                    .default_value(DEFAULT_MAX_CHUNKS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("fill-gaps")
                    .nick("Fill gaps")
                    .blurb("Write silence for missing samples (gaps are recorded either way)")
                    .default_value(DEFAULT_FILL_GAPS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("gap-tolerance")
                    .nick("Gap tolerance")
                    .blurb("Timestamp deviation in nanoseconds above which a gap is recorded")
                    .default_value(DEFAULT_GAP_TOLERANCE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("device")
                    .nick("Device")
                    .blurb("Device name recorded in the index lines")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("chunks-sealed")
                    .nick("Chunks sealed")
                    .blurb("Chunks sealed so far")
                    .read_only()
                    .build(),
                glib::ParamSpecUInt64::builder("samples-written")
                    .nick("Samples written")
                    .blurb("Sample frames written so far (silence included)")
                    .read_only()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = lock(&self.settings);
        let string = || {
            value
                .get::<Option<String>>()
                .expect("type checked upstream")
                .unwrap_or_default()
        };
        match pspec.name() {
            "directory" => s.directory = string(),
            "location" => s.location = string(),
            "index-file" => s.index_file = string(),
            "chunk-size" => s.chunk_size = value.get().expect("type checked upstream"),
            "chunk-duration" => s.chunk_duration = value.get().expect("type checked upstream"),
            "max-chunks" => s.max_chunks = value.get().expect("type checked upstream"),
            "fill-gaps" => s.fill_gaps = value.get().expect("type checked upstream"),
            "gap-tolerance" => s.gap_tolerance = value.get().expect("type checked upstream"),
            "device" => s.device = string(),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = lock(&self.settings);
        match pspec.name() {
            "directory" => s.directory.to_value(),
            "location" => s.location.to_value(),
            "index-file" => s.index_file.to_value(),
            "chunk-size" => s.chunk_size.to_value(),
            "chunk-duration" => s.chunk_duration.to_value(),
            "max-chunks" => s.max_chunks.to_value(),
            "fill-gaps" => s.fill_gaps.to_value(),
            "gap-tolerance" => s.gap_tolerance.to_value(),
            "device" => s.device.to_value(),
            "chunks-sealed" => self.chunks_sealed.load(Ordering::Relaxed).to_value(),
            "samples-written" => self.samples_written.load(Ordering::Relaxed).to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // A file writer: write as fast as data comes (live sources pace themselves).
        self.obj().set_sync(false);
    }
}

impl GstObjectImpl for ChunkSink {}

impl ElementImpl for ChunkSink {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "WAV chunk sink",
                "Sink/File/Audio",
                "Writes raw audio into fixed-size, pre-allocated, mmap'd WAV chunk files with a \
                 JSON-lines index",
                "vcambridge developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            // Any raw audio is accepted at the pad so that a format WAV cannot hold gets an
            // error saying so (instead of a bare not-negotiated); caps queries answer the
            // supported formats first.
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &gst::Caps::new_empty_simple("audio/x-raw"),
                )
                .expect("sink pad template"),
            ]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for ChunkSink {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let pattern = NamePattern::parse(&settings.location)
            .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ["{}", e]))?;
        let directory = PathBuf::from(&settings.directory);
        crate::files::check_directory(&directory)
            .map_err(|e| gst::error_msg!(gst::ResourceError::OpenWrite, ["{}", e]))?;
        let mut resume = None;
        let index = if settings.index_file.is_empty() {
            None
        } else {
            let path = directory.join(&settings.index_file);
            match std::fs::read_to_string(&path) {
                Ok(text) => resume = resume_point(&text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(gst::error_msg!(
                        gst::ResourceError::OpenRead,
                        ["cannot read the index {}: {}", path.display(), e]
                    ));
                }
            }
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| {
                        gst::error_msg!(
                            gst::ResourceError::OpenWrite,
                            [
                                "cannot open the index {} for appending: {}",
                                path.display(),
                                e
                            ]
                        )
                    })?,
            )
        };
        let io = IoWorker::start(IoConfig {
            directory,
            pattern,
            index,
            max_chunks: settings.max_chunks,
        })
        .map_err(|e| gst::error_msg!(gst::ResourceError::Failed, ["{}", e]))?;
        let (next_index, next_sample, resumed_after) = match resume {
            Some((i, s, end)) => {
                gst::info!(
                    CAT,
                    imp = self,
                    "continuing the index at chunk {i}, sample {s}"
                );
                (i, s, Some(end))
            }
            None => (0, 0, None),
        };
        self.chunks_sealed.store(0, Ordering::Relaxed);
        self.samples_written.store(0, Ordering::Relaxed);
        *lock(&self.state) = State::Started {
            writer: Some(Box::new(Writer {
                settings,
                io,
                stream: None,
                current: None,
                next_index,
                prepare_pending: false,
                next_sample,
                pending_gaps: Vec::new(),
                resumed_after,
                failed: false,
            })),
        };
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let state = std::mem::take(&mut *lock(&self.state));
        if let State::Started {
            writer: Some(mut w),
        } = state
        {
            self.finish(&mut w, SealReason::Stopped);
            // Dropping the writer joins the I/O thread.
        }
        Ok(())
    }

    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let mut caps = supported_caps();
        caps.merge(gst::Caps::new_empty_simple("audio/x-raw"));
        Some(match filter {
            Some(f) => f.intersect_with_mode(&caps, gst::CapsIntersectMode::First),
            None => caps,
        })
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let format = match wav_format_of(caps) {
            Ok(f) => f,
            Err(e) => {
                gst::element_imp_error!(self, gst::StreamError::Format, ["{}", e]);
                return Err(gst::loggable_error!(CAT, "unsupported caps {}", caps));
            }
        };
        let Some(mut w) = self.take_writer() else {
            return Err(gst::loggable_error!(CAT, "caps while stopped"));
        };
        let geometry = if w.settings.chunk_size > 0 {
            ChunkGeometry::from_bytes(format, w.settings.chunk_size)
        } else {
            ChunkGeometry::from_duration(format, w.settings.chunk_duration)
        };
        let geometry = match geometry {
            Ok(g) => g,
            Err(e) => {
                self.put_writer(w);
                gst::element_imp_error!(self, gst::ResourceError::Settings, ["{}", e]);
                return Err(gst::loggable_error!(CAT, "chunk geometry"));
            }
        };
        if w.stream.as_ref().is_some_and(|s| s.geometry != geometry) {
            self.seal(&mut w, SealReason::FormatChange);
            self.discard_prepared(&mut w);
        }
        gst::info!(
            CAT,
            imp = self,
            "{} x{} at {} Hz: {} frames per chunk, files of {} bytes",
            format.sample.gst_name(),
            format.channels,
            format.rate,
            geometry.frames_per_chunk,
            geometry.file_len()
        );
        let tolerance = w.settings.gap_tolerance;
        w.stream = Some(Stream {
            format,
            geometry,
            timeline: Timeline::new(format.rate, tolerance),
        });
        self.put_writer(w);
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(mut w) = self.take_writer() else {
            return Err(gst::FlowError::Flushing);
        };
        let r = self.render_inner(&mut w, buffer);
        self.put_writer(w);
        r.map(|()| gst::FlowSuccess::Ok)
    }

    fn event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Eos(_) = event.view()
            && let Some(mut w) = self.take_writer()
        {
            self.finish(&mut w, SealReason::Eos);
            self.put_writer(w);
        }
        self.parent_event(event)
    }
}
