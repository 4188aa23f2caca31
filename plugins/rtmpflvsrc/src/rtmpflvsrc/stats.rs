// SPDX-License-Identifier: MPL-2.0

//! Counters behind the `stats` property, written by the network side.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Window over which `bitrate` is computed.
const BITRATE_WINDOW: Duration = Duration::from_secs(3);

/// Counters behind the `stats` property.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) publisher: String,
    pub(super) app: String,
    pub(super) stream_key: String,
    pub(super) video_codec: String,
    pub(super) audio_codec: String,
    pub(super) bytes: u64,
    pub(super) video_frames: u64,
    pub(super) audio_frames: u64,
    pub(super) connections: u64,
    pub(super) rejected: u64,
    pub(super) recent: VecDeque<(Instant, u64)>,
}

impl Stats {
    pub(super) fn add_bytes(&mut self, n: u64) {
        self.bytes += n;
        let now = Instant::now();
        self.recent.push_back((now, n));
        self.prune(now);
    }

    pub(super) fn prune(&mut self, now: Instant) {
        while let Some(&(t, _)) = self.recent.front() {
            if now.duration_since(t) > BITRATE_WINDOW {
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }

    pub(super) fn bitrate(&mut self) -> u64 {
        self.prune(Instant::now());
        let bytes: u64 = self.recent.iter().map(|&(_, n)| n).sum();
        bytes * 8 / BITRATE_WINDOW.as_secs()
    }

    pub(super) fn snapshot(&mut self) -> gst::Structure {
        let bitrate = self.bitrate();
        gst::Structure::builder("rtmpflvsrc-stats")
            .field("publisher", &self.publisher)
            .field("app", &self.app)
            .field("stream-key", &self.stream_key)
            .field("video-codec", &self.video_codec)
            .field("audio-codec", &self.audio_codec)
            .field("bytes", self.bytes)
            .field("video-frames", self.video_frames)
            .field("audio-frames", self.audio_frames)
            .field("bitrate", bitrate)
            .field("connections", self.connections)
            .field("rejected", self.rejected)
            .build()
    }
}
