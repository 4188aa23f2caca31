// SPDX-License-Identifier: MPL-2.0

//! One output stream (video or audio) as its streaming thread sees it, and what the thread
//! does with each item from the network side. Everything here runs under the stream's lock: it
//! updates the stream's state and returns a [`Step`] (the pad, its pending sticky events, the
//! buffer or EOS), which the element (`imp.rs`) then sends with no lock held.

use std::sync::Arc;

use bytes::Bytes;
use gst::subclass::prelude::*;
use tokio::sync::mpsc;

use super::caps::{audio_caps, placeholder_caps, video_caps};
use super::handoff::{Item, PostAfterAll};
use super::imp::{CAT, RtmpFlvSrc};
use crate::flv::{AudioCodec, AudioTag, VideoCodec, VideoTag};
use crate::timestamps::StreamKind;

pub(super) fn kind_index(kind: StreamKind) -> usize {
    match kind {
        StreamKind::Video => 0,
        StreamKind::Audio => 1,
    }
}

pub(super) fn kind_name(kind: StreamKind) -> &'static str {
    match kind {
        StreamKind::Video => "video",
        StreamKind::Audio => "audio",
    }
}

/// What a streaming thread does with an item: decided under its stream lock, done without it.
pub(super) enum Step {
    /// Nothing to send (session bookkeeping, a frame before its codec configuration).
    Nothing,
    /// Count this thread in on a message posted once both streaming threads got to it.
    Post(Arc<PostAfterAll>),
    /// Send the pad's pending sticky events, then the buffer.
    Push(PadOutput, gst::Buffer),
    /// End the stream: EOS on the pad (if the stream has one), then count in on the message.
    Eos(Option<PadOutput>, Option<Arc<PostAfterAll>>),
}

/// A pad and what it needs before the next buffer or EOS.
pub(super) struct PadOutput {
    pub(super) pad: gst::Pad,
    /// Sticky events to send first (stream-start, caps, segment).
    pub(super) events: Vec<gst::Event>,
    /// Made for this step: activate it, send `events`, then add it to the element.
    pub(super) new: bool,
}

/// A media frame from the publisher, about to become a buffer.
struct Frame {
    dts_ms: i64,
    composition_ms: i32,
    delta_unit: bool,
    data: Bytes,
}

/// Output pad of one stream kind.
struct PadState {
    pad: gst::Pad,
    caps: Option<gst::Caps>,
    /// Events (stream-start, segment) need to be (re)sent.
    need_events: bool,
    /// The shared timeline's re-anchor count when this pad's last segment was sent.
    reanchors: u64,
}

/// State of one output stream. Its streaming thread locks it to decide what to do with an
/// item; state changes lock it while the streaming threads are stopped.
pub(super) struct StreamState {
    kind: StreamKind,
    /// The queue from the network side; taken out while the streaming thread waits on it.
    rx: Option<mpsc::Receiver<Item>>,
    /// Counts servers started and stopped: a queue taken out under an earlier server is not
    /// put back.
    server_generation: u64,
    pad: Option<PadState>,
    /// Current publish session.
    session: u64,
    discont: bool,
    eos: bool,
    warned_no_config: bool,
    /// Codec configuration (sequence header) of the current session.
    video_config: Option<(VideoCodec, Bytes)>,
    audio_config: Option<(AudioCodec, Bytes)>,
}

impl StreamState {
    pub(super) fn new(kind: StreamKind) -> Self {
        StreamState {
            kind,
            rx: None,
            server_generation: 0,
            pad: None,
            session: 0,
            discont: false,
            eos: false,
            warned_no_config: false,
            video_config: None,
            audio_config: None,
        }
    }

    /// Takes the queue of a newly started server.
    pub(super) fn attach(&mut self, rx: mpsc::Receiver<Item>) {
        self.rx = Some(rx);
        self.server_generation += 1;
        self.session = 0;
        self.video_config = None;
        self.audio_config = None;
    }

    /// Drops the queue of a stopped server.
    pub(super) fn detach(&mut self) {
        self.rx = None;
        self.server_generation += 1;
    }

    /// Takes the queue out to wait on it without the lock; give it back with
    /// [`Self::put_back`].
    pub(super) fn take_queue(&mut self) -> Option<(mpsc::Receiver<Item>, u64)> {
        self.rx.take().map(|rx| (rx, self.server_generation))
    }

    /// Puts a queue back, unless its server was stopped (or replaced) meanwhile.
    pub(super) fn put_back(&mut self, rx: mpsc::Receiver<Item>, generation: u64) {
        if self.server_generation == generation {
            self.rx = Some(rx);
        }
    }

    /// READY→PAUSED: the pad's sticky events are sent again and the next buffer is a DISCONT.
    pub(super) fn reset_for_restart(&mut self) {
        self.eos = false;
        self.discont = true;
        if let Some(ps) = &mut self.pad {
            ps.need_events = true;
        }
    }

    /// What to do with `item`; only updates the stream's state and prepares what the element
    /// sends.
    pub(super) fn decide(&mut self, item: Item, element: &RtmpFlvSrc) -> Step {
        let kind = self.kind;
        if self.eos {
            return match item {
                Item::SessionEnd {
                    message: Some(m), ..
                } => Step::Post(m),
                _ => Step::Nothing,
            };
        }
        match item {
            Item::SessionStart { session, publisher } => {
                gst::debug!(
                    CAT,
                    imp = element,
                    "{}: session {session} from {publisher} starts",
                    kind_name(kind)
                );
                self.session = session;
                self.discont = true;
                self.video_config = None;
                self.audio_config = None;
                Step::Nothing
            }
            Item::SessionEnd { reason, message } => {
                gst::debug!(
                    CAT,
                    imp = element,
                    "{}: session ended: {reason}",
                    kind_name(kind)
                );
                if !element.eos_on_disconnect() {
                    return message.map_or(Step::Nothing, Step::Post);
                }
                self.eos = true;
                Step::Eos(self.eos_output(element, false), message)
            }
            Item::Video { dts_ms, tag, .. } => match tag {
                VideoTag::SequenceStart { codec, config } => {
                    self.video_config = Some((codec, config));
                    Step::Nothing
                }
                VideoTag::Frame {
                    codec,
                    keyframe,
                    composition_time,
                    data,
                } => {
                    let config = self
                        .video_config
                        .as_ref()
                        .filter(|(c, _)| *c == codec)
                        .map(|(_, b)| b.clone());
                    let caps = video_caps(codec, config.as_ref());
                    let frame = Frame {
                        dts_ms,
                        composition_ms: composition_time,
                        delta_unit: !keyframe,
                        data,
                    };
                    self.frame_step(element, codec.name(), caps, frame)
                }
                _ => Step::Nothing,
            },
            Item::Audio { dts_ms, tag, .. } => match tag {
                AudioTag::SequenceStart { codec, config } => {
                    self.audio_config = Some((codec, config));
                    Step::Nothing
                }
                AudioTag::Frame {
                    codec,
                    params,
                    data,
                } => {
                    let config = self
                        .audio_config
                        .as_ref()
                        .filter(|(c, _)| *c == codec)
                        .map(|(_, b)| b.clone());
                    let caps = audio_caps(codec, config.as_ref(), params);
                    let frame = Frame {
                        dts_ms,
                        composition_ms: 0,
                        delta_unit: false,
                        data,
                    };
                    self.frame_step(element, codec.name(), caps, frame)
                }
                _ => Step::Nothing,
            },
        }
    }

    /// An EOS event was sent to the element: end this stream's pad with EOS. A stream that
    /// never had a publisher gets its pad now, with placeholder caps of the most common codec
    /// (decoders accept caps followed by EOS), so the branch behind it (a decoder, a sink) ends
    /// too and the pipeline posts EOS instead of waiting for a publisher forever.
    pub(super) fn decide_eos_request(&mut self, element: &RtmpFlvSrc) -> Step {
        if self.eos {
            return Step::Nothing;
        }
        self.eos = true;
        gst::info!(
            CAT,
            imp = element,
            "{}: EOS requested",
            kind_name(self.kind)
        );
        Step::Eos(self.eos_output(element, true), None)
    }

    /// The stream's pad, ready for EOS: with its last caps (placeholder caps if it never had
    /// any) in case its sticky events must be sent again. `None` if the stream has no pad and
    /// `create` is false.
    fn eos_output(&mut self, element: &RtmpFlvSrc, create: bool) -> Option<PadOutput> {
        if self.pad.is_none() && !create {
            return None;
        }
        let caps = self
            .pad
            .as_ref()
            .and_then(|ps| ps.caps.clone())
            .unwrap_or_else(|| placeholder_caps(self.kind));
        Some(self.pad_output(element, caps, element.group_id(), None))
    }

    /// A buffer for `frame` with its output timestamps, and the pad to push it on.
    fn frame_step(
        &mut self,
        element: &RtmpFlvSrc,
        codec: &'static str,
        caps: Option<gst::Caps>,
        frame: Frame,
    ) -> Step {
        let Some(caps) = caps else {
            if !self.warned_no_config {
                self.warned_no_config = true;
                gst::warning!(
                    CAT,
                    imp = element,
                    "Dropping {codec} frame: no sequence header (codec configuration) yet"
                );
            }
            return Step::Nothing;
        };
        self.warned_no_config = false;

        let (times, group_id, reanchors) =
            element.output_times(self.session, self.kind, frame.dts_ms, frame.composition_ms);
        let out = self.pad_output(element, caps, group_id, Some((reanchors, times.dts)));

        let mut buffer = gst::Buffer::from_slice(frame.data);
        {
            let b = buffer.get_mut().expect("new buffer is writable");
            b.set_dts(gst::ClockTime::from_nseconds(times.dts));
            b.set_pts(gst::ClockTime::from_nseconds(times.pts));
            if frame.delta_unit {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
            if self.discont {
                b.set_flags(gst::BufferFlags::DISCONT);
                self.discont = false;
            }
        }
        Step::Push(out, buffer)
    }

    /// The stream's pad (made now if it has none, not yet active) and the sticky events it
    /// needs before data with `caps`. `mapped`: the timeline's re-anchor count and the output
    /// DTS of the buffer about to be pushed (none for EOS).
    fn pad_output(
        &mut self,
        element: &RtmpFlvSrc,
        caps: gst::Caps,
        group_id: gst::GroupId,
        mapped: Option<(u64, u64)>,
    ) -> PadOutput {
        let kind = self.kind;
        let new = self.pad.is_none();
        let ps = self.pad.get_or_insert_with(|| PadState {
            pad: element.create_pad(kind),
            caps: None,
            need_events: true,
            reanchors: 0,
        });
        let mut events = Vec::new();
        if ps.need_events {
            events.push(
                gst::event::StreamStart::builder(&element.stream_id(kind))
                    .group_id(group_id)
                    .build(),
            );
            ps.caps = None;
        }
        if ps.caps.as_ref() != Some(&caps) {
            gst::info!(CAT, obj = ps.pad, "Caps {caps}");
            events.push(gst::event::Caps::new(&caps));
            ps.caps = Some(caps);
        }
        if ps.need_events {
            let segment = gst::FormattedSegment::<gst::ClockTime>::new();
            events.push(gst::event::Segment::new(&segment));
            ps.need_events = false;
            if let Some((reanchors, _)) = mapped {
                ps.reanchors = reanchors;
            }
        } else if let Some((reanchors, dts)) = mapped
            && reanchors != ps.reanchors
        {
            // The timeline moved forward (the pipeline ran late for a second, see
            // `Timeline::map`): a new segment starting at this buffer, with the same running
            // times (start = time = base), so that elements which count frames from the start of
            // a segment start again — `videorate max-rate` otherwise lets every frame through
            // until its count has caught up with the jump (the main job's `--fps` cap). Buffers
            // after this one have DTS (and PTS) at or after it: none falls before the start.
            let start = gst::ClockTime::from_nseconds(dts);
            let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
            segment.set_start(start);
            segment.set_time(start);
            segment.set_base(start);
            gst::info!(
                CAT,
                obj = ps.pad,
                "Timeline moved forward: new segment at {start}"
            );
            events.push(gst::event::Segment::new(&segment));
            ps.reanchors = reanchors;
        }
        PadOutput {
            pad: ps.pad.clone(),
            events,
            new,
        }
    }
}
