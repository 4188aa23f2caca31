// SPDX-License-Identifier: MPL-2.0

//! RTMP timestamp handling, without GStreamer types.
//!
//! RTMP message timestamps are 32-bit milliseconds that wrap after ~49.7 days (and whose
//! on-the-wire encoding switches to an extended field at 0xFFFFFF, ~4 h 40 min; that part is
//! handled by the chunk layer). [`TimestampUnwrapper`] turns them into a signed 64-bit
//! millisecond timeline; [`OutputTimeline`] maps one publish session's timeline onto the
//! pipeline running time so that output stays monotonic across publisher reconnects.

use std::collections::VecDeque;

/// Nanoseconds per millisecond.
const MS: u64 = 1_000_000;

/// Extends 32-bit RTMP timestamps to 64 bits across the 32-bit wrap.
///
/// Consecutive timestamps are assumed to lie within 2^31 ms of each other (the RTMP
/// "adjacent timestamps" rule): a step forward across 0xFFFFFFFF -> 0 continues upwards,
/// a small step backwards (audio / video interleaving) stays a small step backwards.
#[derive(Debug, Default, Clone)]
pub struct TimestampUnwrapper {
    last: Option<(u32, i64)>,
}

impl TimestampUnwrapper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the unwrapped value of `ts` in milliseconds. It may go below the first value
    /// (e.g. negative DTS of B-frame streams written as 0xFFFFFFxx after a sequence header at 0):
    /// only differences matter.
    pub fn unwrap(&mut self, ts: u32) -> i64 {
        let value = match self.last {
            None => i64::from(ts),
            Some((last_ts, last_value)) => {
                let diff = ts.wrapping_sub(last_ts) as i32;
                last_value.saturating_add(i64::from(diff))
            }
        };
        self.last = Some((ts, value));
        value
    }
}

/// Which elementary stream a buffer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Video,
    Audio,
}

impl StreamKind {
    fn index(self) -> usize {
        match self {
            StreamKind::Video => 0,
            StreamKind::Audio => 1,
        }
    }
}

/// Output timestamps of one buffer, in nanoseconds of running time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputTimes {
    pub dts: u64,
    pub pts: u64,
}

/// Maps publish sessions (each with its own RTMP time origin) onto running time.
///
/// The first buffer of a session is placed at the running time at which it is handled (but
/// never before anything already output, so reconnects stay monotonic); the rest of the
/// session keeps the publisher's spacing. Video and audio are mapped by separate streaming
/// threads, so sessions are identified by number: a stream still draining session N keeps
/// using session N's mapping while the other one has moved on to N + 1. DTS is per stream
/// never decreasing.
#[derive(Debug, Default, Clone)]
pub struct OutputTimeline {
    /// (session, running_time_ns - rtmp_ms * MS), most recent last.
    offsets: VecDeque<(u64, i128)>,
    last_dts: [Option<u64>; 2],
    max_output: Option<u64>,
    /// Buffers mapped later than this behind `now` for [`REANCHOR_AFTER`] move the session's
    /// mapping forward.
    max_lateness: Option<u64>,
    /// The current run of late buffers: (session, running time of its first, least lateness).
    late_run: Option<(u64, u64, i128)>,
    reanchors: u64,
}

/// How long every buffer must stay later than the lateness bound before the mapping moves.
/// A burst after a network stall catches up well within it (its timestamps kept running, so
/// the old mapping is right again once the burst is through); a publisher that paused and
/// resumed its timestamps where they stopped stays late, and is moved.
pub const REANCHOR_AFTER: u64 = 1_000 * MS;

/// How many past sessions keep their mapping.
const KEPT_SESSIONS: usize = 4;

impl OutputTimeline {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything (flush / restart), keeping the lateness setting.
    pub fn reset(&mut self) {
        *self = Self {
            max_lateness: self.max_lateness,
            ..Self::default()
        };
    }

    /// When every buffer of a session is mapped more than `max_lateness` ns before the current
    /// running time for [`REANCHOR_AFTER`] (a publisher that paused and resumed its timestamps
    /// where they stopped, or a clock running slow), the session's mapping moves forward by the
    /// smallest lateness of that run, so that later buffers are on time again instead of all
    /// late. A shorter run of late buffers (the burst after a network stall) moves nothing:
    /// moving the mapping then would keep the stall's length as latency for good. Output stays
    /// monotonic (the mapping only ever moves forward). `None` disables this.
    pub fn set_max_lateness(&mut self, max_lateness: Option<u64>) {
        self.max_lateness = max_lateness;
    }

    /// How often a mapping was moved forward because of lateness.
    pub fn reanchors(&self) -> u64 {
        self.reanchors
    }

    /// Maps a buffer of publish session `session` with DTS `dts_ms` (unwrapped RTMP time) and
    /// composition offset `composition_ms` (PTS - DTS). `now` gives the current running time;
    /// it is called (at most once) for the first buffer of a session and for lateness checks.
    pub fn map(
        &mut self,
        session: u64,
        kind: StreamKind,
        dts_ms: i64,
        composition_ms: i32,
        now: impl FnOnce() -> u64,
    ) -> OutputTimes {
        let mut now = Some(now);
        let mut now_value = None;
        let mut now = move || *now_value.get_or_insert_with(|| now.take().map_or(0, |f| f()));
        let dts_ns = i128::from(dts_ms) * i128::from(MS);
        let offset = match self.offsets.iter_mut().find(|(s, _)| *s == session) {
            Some((_, o)) => {
                if let Some(max_late) = self.max_lateness {
                    let current = now();
                    let lateness = i128::from(current) - (dts_ns + *o);
                    if lateness > i128::from(max_late) {
                        let run = match self.late_run {
                            Some((s, since, least)) if s == session => {
                                (s, since, least.min(lateness))
                            }
                            _ => (session, current, lateness),
                        };
                        if current.saturating_sub(run.1) >= REANCHOR_AFTER {
                            *o += run.2;
                            self.reanchors += 1;
                            self.late_run = None;
                        } else {
                            self.late_run = Some(run);
                        }
                    } else {
                        self.late_run = None;
                    }
                }
                *o
            }
            None => {
                let mut start = now();
                if let Some(max) = self.max_output {
                    // One millisecond after anything already output.
                    start = start.max(max.saturating_add(MS));
                }
                let o = i128::from(start) - dts_ns;
                self.offsets.push_back((session, o));
                if self.offsets.len() > KEPT_SESSIONS {
                    self.offsets.pop_front();
                }
                o
            }
        };
        let mut dts = clamp_u64(dts_ns + offset);
        let last = &mut self.last_dts[kind.index()];
        if let Some(l) = *last {
            dts = dts.max(l);
        }
        *last = Some(dts);
        let pts = clamp_u64(i128::from(dts) + i128::from(composition_ms) * i128::from(MS));
        let newest = dts.max(pts);
        self.max_output = Some(self.max_output.map_or(newest, |m| m.max(newest)));
        OutputTimes { dts, pts }
    }
}

fn clamp_u64(v: i128) -> u64 {
    v.clamp(0, i128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: u64 = 1;

    #[test]
    fn unwrap_is_identity_below_wrap_and_across_24_bit_boundary() {
        let mut u = TimestampUnwrapper::new();
        assert_eq!(u.unwrap(0xFF_FFF0), 0xFF_FFF0);
        assert_eq!(u.unwrap(0xFF_FFFF), 0xFF_FFFF);
        assert_eq!(u.unwrap(0x100_0000), 0x100_0000);
        assert_eq!(u.unwrap(0x100_0021), 0x100_0021);
    }

    #[test]
    fn unwrap_continues_across_u32_wrap() {
        let mut u = TimestampUnwrapper::new();
        assert_eq!(u.unwrap(u32::MAX - 33), i64::from(u32::MAX) - 33);
        assert_eq!(u.unwrap(u32::MAX), i64::from(u32::MAX));
        assert_eq!(u.unwrap(0), 1 << 32);
        assert_eq!(u.unwrap(33), (1 << 32) + 33);
        // A small step backwards (audio interleaved with video) across the wrap.
        assert_eq!(u.unwrap(u32::MAX - 10), i64::from(u32::MAX) - 10);
        assert_eq!(u.unwrap(66), (1 << 32) + 66);
        // And a second wrap.
        let mut t = 66u32;
        let mut expected = (1i64 << 32) + 66;
        for _ in 0..200 {
            t = t.wrapping_add(0x4000_0000);
            expected += 0x4000_0000;
            assert_eq!(u.unwrap(t), expected);
        }
        assert!(expected > 1 << 34);
    }

    #[test]
    fn unwrap_keeps_initial_backward_steps() {
        // Sequence header at 0, then B-frame stream DTS -67, -34, 0, audio at 0.
        let mut u = TimestampUnwrapper::new();
        assert_eq!(u.unwrap(0), 0);
        assert_eq!(u.unwrap(0u32.wrapping_sub(67)), -67);
        assert_eq!(u.unwrap(0u32.wrapping_sub(34)), -34);
        assert_eq!(u.unwrap(0), 0);
        assert_eq!(u.unwrap(33), 33);
    }

    #[test]
    fn timeline_maps_session_start_to_now() {
        let mut t = OutputTimeline::new();
        let a = t.map(SESSION, StreamKind::Video, 5000, 0, || 2 * 1_000_000_000);
        assert_eq!(a.dts, 2_000_000_000);
        let b = t.map(SESSION, StreamKind::Video, 5033, 66, || unreachable!());
        assert_eq!(b.dts, 2_033_000_000);
        assert_eq!(b.pts, 2_099_000_000);
    }

    #[test]
    fn negative_composition_time() {
        let mut t = OutputTimeline::new();
        let a = t.map(SESSION, StreamKind::Video, 1000, 0, || 1_000_000_000);
        let b = t.map(SESSION, StreamKind::Video, 1040, -40, || unreachable!());
        assert_eq!(a.pts, 1_000_000_000);
        assert_eq!(b.dts, 1_040_000_000);
        assert_eq!(b.pts, 1_000_000_000);
        // Never below zero.
        let mut t = OutputTimeline::new();
        let c = t.map(SESSION, StreamKind::Video, 0, -100, || 0);
        assert_eq!(c, OutputTimes { dts: 0, pts: 0 });
    }

    #[test]
    fn reconnect_is_monotonic_even_if_clock_says_earlier() {
        let mut t = OutputTimeline::new();
        let mut last = 0;
        for i in 0..100i64 {
            let o = t.map(1, StreamKind::Video, 90_000 + i * 33, 0, || 10_000_000_000);
            assert!(o.dts >= last);
            last = o.dts;
        }
        // New session restarts RTMP time at 0; the "now" reported is earlier than what we
        // already output (e.g. the publisher ran ahead of the clock).
        let o = t.map(2, StreamKind::Video, 0, 0, || 10_500_000_000);
        assert!(o.dts > last, "{} > {}", o.dts, last);
        assert_eq!(o.dts, last + MS);
        let o2 = t.map(2, StreamKind::Audio, 10, 0, || unreachable!());
        assert_eq!(o2.dts, o.dts + 10 * MS);
        // And when the clock is later, the new session starts at now.
        let o3 = t.map(3, StreamKind::Audio, 777, 0, || 60_000_000_000);
        assert_eq!(o3.dts, 60_000_000_000);
    }

    #[test]
    fn lagging_stream_keeps_its_session_mapping() {
        let mut t = OutputTimeline::new();
        let v1 = t.map(1, StreamKind::Video, 1000, 0, || 1_000_000_000);
        // Audio of the new session is handled first ...
        let a2 = t.map(2, StreamKind::Audio, 0, 0, || 5_000_000_000);
        assert_eq!(a2.dts, 5_000_000_000);
        // ... while video still drains session 1 with session 1's mapping.
        let v1b = t.map(1, StreamKind::Video, 1033, 0, || unreachable!());
        assert_eq!(v1b.dts, v1.dts + 33 * MS);
        let v2 = t.map(2, StreamKind::Video, 20, 0, || unreachable!());
        assert_eq!(v2.dts, a2.dts + 20 * MS);
    }

    #[test]
    fn timeline_across_u32_wrap_stays_monotonic() {
        let mut u = TimestampUnwrapper::new();
        let mut t = OutputTimeline::new();
        let mut ts = u32::MAX - 100;
        let mut last = 0u64;
        for _ in 0..20 {
            let o = t.map(SESSION, StreamKind::Video, u.unwrap(ts), 0, || {
                5_000_000_000
            });
            assert!(o.dts >= last);
            if last != 0 {
                assert_eq!(o.dts - last, 33 * MS);
            }
            last = o.dts;
            ts = ts.wrapping_add(33);
        }
    }

    #[test]
    fn buffers_late_for_a_second_move_the_mapping_forward() {
        let mut t = OutputTimeline::new();
        t.set_max_lateness(Some(100 * MS));
        let a = t.map(1, StreamKind::Video, 0, 0, || 1_000_000_000);
        assert_eq!(a.dts, 1_000_000_000);
        // On time (within the tolerance): unchanged spacing.
        let b = t.map(1, StreamKind::Video, 33, 0, || 1_033_000_000 + 90 * MS);
        assert_eq!(b.dts, 1_033_000_000);
        // The publisher paused for 2 s and resumed its timestamps where they stopped: every
        // buffer is ~2 s late. For a second they keep the old mapping (the sink sees them late)...
        let mut ts = 66;
        let mut now = 3_066 * MS;
        while now < 3_066 * MS + REANCHOR_AFTER - 33 * MS {
            let o = t.map(1, StreamKind::Video, ts, 0, || now);
            assert_eq!(
                o.dts,
                1_000_000_000 + ts as u64 * MS,
                "old mapping at {now}"
            );
            ts += 33;
            now += 33 * MS;
        }
        assert_eq!(t.reanchors(), 0);
        // ... then the mapping moves forward by the least lateness of the run.
        let lateness = now - (1_000_000_000 + ts as u64 * MS);
        let c = t.map(1, StreamKind::Video, ts, 0, || now + 33 * MS);
        assert_eq!(t.reanchors(), 1);
        assert_eq!(c.dts, 1_000_000_000 + ts as u64 * MS + lateness);
        // Audio shares the session's mapping; on-time buffers start no new run.
        let d = t.map(1, StreamKind::Audio, ts + 4, 0, || now + 37 * MS);
        assert_eq!(d.dts, c.dts + 4 * MS);
        let e = t.map(1, StreamKind::Video, ts + 33, 10, || now + 66 * MS);
        assert_eq!(e.dts, c.dts + 33 * MS);
        assert_eq!(e.pts, c.dts + 43 * MS);
        // Early buffers (publisher ahead of the clock) are left alone.
        let f = t.map(1, StreamKind::Video, ts + 5_000, 0, || now + 100 * MS);
        assert_eq!(f.dts, c.dts + 5_000 * MS);
        assert_eq!(t.reanchors(), 1);
    }

    #[test]
    fn the_burst_after_a_network_stall_keeps_the_mapping() {
        // Real-time timestamps; the network holds 2 s of frames back, then delivers them in a
        // burst within 300 ms: late buffers, but fewer than a second of them, and the frames
        // after the burst are on time again under the original mapping.
        let mut t = OutputTimeline::new();
        t.set_max_lateness(Some(100 * MS));
        let base = t.map(1, StreamKind::Video, 0, 0, || 1_000_000_000).dts;
        let mut ts = 33;
        while ts < 5_000 {
            let arrival = if (1_000..3_000).contains(&ts) {
                // Held back until 3.0 s, then drained at 10 frames per 15 ms.
                3_000 + (ts - 1_000) / 33 * 15 / 10
            } else {
                ts
            };
            let o = t.map(1, StreamKind::Video, ts, 0, || {
                1_000_000_000 + arrival as u64 * MS
            });
            assert_eq!(o.dts, base + ts as u64 * MS, "frame at {ts} ms");
            ts += 33;
        }
        assert_eq!(t.reanchors(), 0);
    }

    #[test]
    fn per_stream_dts_never_decreases() {
        let mut t = OutputTimeline::new();
        let a = t.map(SESSION, StreamKind::Audio, 100, 0, || 1_000_000_000);
        let b = t.map(SESSION, StreamKind::Audio, 90, 0, || unreachable!());
        assert_eq!(b.dts, a.dts);
        // Video may legitimately be earlier than audio.
        let v = t.map(SESSION, StreamKind::Video, 80, 0, || unreachable!());
        assert_eq!(v.dts, a.dts - 20 * MS);
    }
}
