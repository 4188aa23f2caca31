// SPDX-License-Identifier: MPL-2.0

//! Timestamps and latency of a live source fed by a writer in another process.
//!
//! The writer's timestamps are in *its* running time, which means nothing in the reading
//! pipeline. The rule: the first frame after (re-)attaching to a writer lands on the reader's
//! running time at the moment it is read; later frames keep the writer's spacing (so the
//! writer's frame pacing survives), until the writer's PTS goes backwards (a restarted writer),
//! which re-anchors. A frame without a PTS is stamped with the running time it was read at.
//! Downstream is told one frame duration of latency (live, no maximum): a frame can reach us up
//! to a frame late, i.e. after the running time it is stamped with.

use std::sync::Mutex;

use gst::prelude::*;

use crate::lock;

/// The duration of one frame for caps with a frame rate (`None` without one, or for 0/1).
pub fn frame_duration(caps: &gst::Caps) -> Option<gst::ClockTime> {
    let fr = caps.structure(0)?.get::<gst::Fraction>("framerate").ok()?;
    if fr.numer() <= 0 || fr.denom() <= 0 {
        return None;
    }
    gst::ClockTime::SECOND.mul_div_floor(fr.denom() as u64, fr.numer() as u64)
}

/// The running time of `element` now (clock time minus base time; zero without a clock).
pub fn running_time(element: &gst::Element) -> gst::ClockTime {
    match (element.clock(), element.base_time()) {
        (Some(clock), Some(base)) => clock.time().saturating_sub(base),
        _ => gst::ClockTime::ZERO,
    }
}

/// Maps a writer's timestamps (nanoseconds in the writer's running time) onto ours (see the
/// module docs for the rule). Sans-IO: the caller says what "now" is.
#[derive(Debug, Default, Clone, Copy)]
pub struct Restamper {
    /// (writer PTS, our running time) of the frame the mapping is anchored on.
    anchor: Option<(u64, gst::ClockTime)>,
    last_pts: Option<u64>,
}

impl Restamper {
    /// Forget the writer (a new one, or a reconnect): the next frame with a PTS re-anchors.
    pub fn reset(&mut self) {
        *self = Restamper::default();
    }

    /// (PTS, DTS) on our running time for a frame the writer stamped `pts`/`dts`, read at our
    /// running time `now`.
    pub fn stamp(
        &mut self,
        pts: Option<u64>,
        dts: Option<u64>,
        now: gst::ClockTime,
    ) -> (Option<gst::ClockTime>, Option<gst::ClockTime>) {
        if let Some(pts) = pts {
            let restart = match (self.anchor, self.last_pts) {
                (None, _) => true,
                (Some(_), Some(last)) => pts < last,
                _ => false,
            };
            if restart {
                self.anchor = Some((pts, now));
            }
            self.last_pts = Some(pts);
        }
        let map = |t: Option<u64>| -> Option<gst::ClockTime> {
            let (apts, art) = self.anchor?;
            t?.checked_sub(apts)
                .map(|d| art + gst::ClockTime::from_nseconds(d))
        };
        let out_pts = if pts.is_some() { map(pts) } else { Some(now) };
        (out_pts, map(dts))
    }
}

/// The latency a live source reports: one frame duration of its current caps.
#[derive(Debug, Default)]
pub struct FrameLatency(Mutex<Option<gst::ClockTime>>);

impl FrameLatency {
    /// Forget the caps (at `start()`).
    pub fn reset(&self) {
        *lock(&self.0) = None;
    }

    /// Take the frame duration of new caps; when it changed, posts a latency message from
    /// `element` so the pipeline re-queries.
    pub fn update(&self, element: &gst::Element, caps: &gst::Caps) {
        let latency = frame_duration(caps);
        let changed = std::mem::replace(&mut *lock(&self.0), latency) != latency;
        if changed {
            let _ = element.post_message(gst::message::Latency::builder().src(element).build());
        }
    }

    /// Answer a latency query: `live`, one frame as the minimum (zero before caps), no maximum.
    pub fn answer(&self, q: &mut gst::query::Latency, live: bool) {
        let min = lock(&self.0).unwrap_or(gst::ClockTime::ZERO);
        q.set(live, min, gst::ClockTime::NONE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ms(v: u64) -> gst::ClockTime {
        gst::ClockTime::from_mseconds(v)
    }

    #[test]
    fn first_frame_lands_on_now_and_spacing_is_kept() {
        let mut r = Restamper::default();
        assert_eq!(
            r.stamp(Some(5_000 * MS), Some(4_990 * MS), ms(100)),
            (Some(ms(100)), None),
            "a DTS before the anchor has no place on our time line"
        );
        assert_eq!(
            r.stamp(Some(5_033 * MS), Some(5_020 * MS), ms(140)),
            (Some(ms(133)), Some(ms(120)))
        );
    }

    #[test]
    fn writer_going_back_in_time_re_anchors_and_reset_forgets() {
        let mut r = Restamper::default();
        r.stamp(Some(5_000 * MS), None, ms(100));
        assert_eq!(r.stamp(Some(10 * MS), None, ms(900)).0, Some(ms(900)));
        assert_eq!(r.stamp(Some(20 * MS), None, ms(905)).0, Some(ms(910)));
        r.reset();
        assert_eq!(r.stamp(Some(30 * MS), None, ms(950)).0, Some(ms(950)));
    }

    #[test]
    fn frames_without_pts_get_the_read_time() {
        let mut r = Restamper::default();
        assert_eq!(r.stamp(None, None, ms(7)), (Some(ms(7)), None));
    }

    #[test]
    fn frame_duration_of_caps() {
        gst::init().expect("gst init");
        let caps = gst::Caps::builder("video/x-raw")
            .field("framerate", gst::Fraction::new(30, 1))
            .build();
        assert_eq!(
            frame_duration(&caps),
            Some(gst::ClockTime::from_nseconds(33_333_333))
        );
        let still = gst::Caps::builder("video/x-raw")
            .field("framerate", gst::Fraction::new(0, 1))
            .build();
        assert_eq!(frame_duration(&still), None);
        assert_eq!(
            frame_duration(&gst::Caps::new_empty_simple("audio/x-opus")),
            None
        );
    }
}
