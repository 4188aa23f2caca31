// SPDX-License-Identifier: MPL-2.0
//! Chunk arithmetic (plain Rust, no GStreamer types, no I/O): how many frames a chunk holds,
//! how a buffer splits across chunk boundaries, gap detection from timestamps, chunk file names
//! and the JSON line appended to the index for each sealed chunk.

use crate::wav::{FormatError, WavFormat, WavLayout};

/// The size of every chunk file of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkGeometry {
    pub layout: WavLayout,
    /// Sample frames per full chunk (>= 1).
    pub frames_per_chunk: u64,
}

impl ChunkGeometry {
    /// Chunks of at most `chunk_bytes` bytes (header included): the largest whole number of
    /// frames that fits (and the pad byte an odd data size needs).
    pub fn from_bytes(format: WavFormat, chunk_bytes: u64) -> Result<Self, FormatError> {
        let ba = u64::from(format.block_align());
        let layout = WavLayout::for_capacity(format, chunk_bytes);
        let header = layout.header_len() as u64;
        let mut frames = chunk_bytes.saturating_sub(header) / ba;
        if frames > 0 && layout.file_len(frames * ba) > chunk_bytes {
            frames -= 1; // the pad byte of an odd data size did not fit
        }
        if frames == 0 {
            return Err(FormatError(format!(
                "chunk-size {chunk_bytes} holds no sample frame: the WAV header takes {header} \
                 bytes and one frame of this stream {ba} bytes; use chunk-size >= {}",
                header + ba + (ba & 1)
            )));
        }
        Ok(Self::from_frames(format, frames))
    }

    /// Chunks of `duration_ns` of audio, rounded to the nearest whole frame (at least one).
    pub fn from_duration(format: WavFormat, duration_ns: u64) -> Result<Self, FormatError> {
        let frames =
            (u128::from(duration_ns) * u128::from(format.rate) + 500_000_000) / 1_000_000_000;
        let frames = u64::try_from(frames).unwrap_or(u64::MAX).max(1);
        if frames
            .checked_mul(u64::from(format.block_align()))
            .is_none()
        {
            return Err(FormatError(format!(
                "chunk-duration {duration_ns} ns is too long"
            )));
        }
        Ok(Self::from_frames(format, frames))
    }

    pub fn from_frames(format: WavFormat, frames: u64) -> Self {
        let data = frames * u64::from(format.block_align());
        ChunkGeometry {
            layout: WavLayout::for_capacity(format, data),
            frames_per_chunk: frames,
        }
    }

    pub fn block_align(&self) -> u64 {
        u64::from(self.layout.format.block_align())
    }

    /// Bytes of samples in a full chunk.
    pub fn data_capacity(&self) -> u64 {
        self.frames_per_chunk * self.block_align()
    }

    /// Length of every chunk file as created (a full chunk's complete WAV file).
    pub fn file_len(&self) -> u64 {
        self.layout.file_len(self.data_capacity())
    }
}

/// One piece of a write: `frames` frames go into the current chunk at frame `offset`;
/// `fills_chunk` says the chunk is full afterwards (seal it, continue in the next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub frames: u64,
    pub fills_chunk: bool,
}

/// Fill level of the current chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fill {
    pub frames: u64,
}

impl Fill {
    /// The next piece of a write of `remaining` frames (call again with what is left after
    /// each piece; a full chunk restarts at 0).
    pub fn next_piece(&mut self, geometry: &ChunkGeometry, remaining: u64) -> Piece {
        let room = geometry.frames_per_chunk - self.frames;
        let frames = remaining.min(room);
        let piece = Piece {
            offset: self.frames,
            frames,
            fills_chunk: frames == room,
        };
        self.frames = if piece.fills_chunk {
            0
        } else {
            self.frames + frames
        };
        piece
    }
}

/// Why a stream has a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// A buffer flagged DISCONT (upstream lost data).
    Discont,
    /// A buffer's timestamp is further than the tolerance from where the previous one ended.
    Timestamp,
    /// The stream was stopped and started again (device gone and back); duration from the
    /// wall clock.
    Restart,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Discont => "discont",
            GapReason::Timestamp => "timestamp",
            GapReason::Restart => "restart",
        }
    }
}

/// A hole (or overlap, when `missing_samples` < 0) before sample `at_sample`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    pub reason: GapReason,
    /// Stream sample index (over all chunks) of the first sample after the gap.
    pub at_sample: u64,
    /// Frames missing (negative: the new data overlaps what was written).
    pub missing_samples: i64,
    /// Gap length in nanoseconds (negative for an overlap).
    pub duration_ns: i64,
    /// PTS of the first buffer after the gap.
    pub pts: Option<u64>,
    /// Where the stream should have continued.
    pub expected_pts: Option<u64>,
    /// Silence was written for the missing frames (`fill-gaps`).
    pub filled: bool,
}

/// Follows buffer timestamps against the sample count and reports gaps.
#[derive(Debug, Clone)]
pub struct Timeline {
    rate: u64,
    tolerance_ns: u64,
    /// (pts, samples written at that pts): where the current run of continuous data started.
    anchor: Option<(u64, u64)>,
}

impl Timeline {
    pub fn new(rate: u32, tolerance_ns: u64) -> Self {
        Timeline {
            rate: u64::from(rate),
            tolerance_ns,
            anchor: None,
        }
    }

    /// The PTS at which sample `sample` is expected, if timestamps are known.
    pub fn expected_pts(&self, sample: u64) -> Option<u64> {
        let (pts, base) = self.anchor?;
        Some(pts + ns_of(sample.checked_sub(base)?, self.rate))
    }

    /// A buffer with `pts` (and `discont`) arrives when `written` samples are in the stream.
    /// Returns the gap before it, if any; the first buffer never makes a gap.
    pub fn observe(&mut self, pts: Option<u64>, discont: bool, written: u64) -> Option<Gap> {
        let Some(pts) = pts else {
            // No timestamp: nothing to compare; a DISCONT without one is still a hole of
            // unknown length.
            return (discont && self.anchor.is_some()).then_some(Gap {
                reason: GapReason::Discont,
                at_sample: written,
                missing_samples: 0,
                duration_ns: 0,
                pts: None,
                expected_pts: None,
                filled: false,
            });
        };
        let Some(expected) = self.expected_pts(written) else {
            self.anchor = Some((pts, written));
            return None;
        };
        let delta = pts as i128 - expected as i128;
        let jumped = delta.unsigned_abs() > u128::from(self.tolerance_ns);
        if !jumped && !discont {
            return None;
        }
        self.anchor = Some((pts, written));
        // Round to the nearest frame.
        let missing = (delta * self.rate as i128 + delta.signum() * 500_000_000) / 1_000_000_000;
        Some(Gap {
            reason: if discont {
                GapReason::Discont
            } else {
                GapReason::Timestamp
            },
            at_sample: written,
            missing_samples: missing as i64,
            duration_ns: delta as i64,
            pts: Some(pts),
            expected_pts: Some(expected),
            filled: false,
        })
    }

    /// `frames` of silence were written for a gap: the anchor stays, the sample count moved.
    pub fn filled(&mut self, pts_after: u64, written_after: u64) {
        self.anchor = Some((pts_after, written_after));
    }
}

/// Nanoseconds of `frames` at `rate`.
pub fn ns_of(frames: u64, rate: u64) -> u64 {
    (u128::from(frames) * 1_000_000_000 / u128::from(rate)) as u64
}

/// A file name pattern with one integer directive: `%d`, `%u`, `%0Nd`, `%0Nu`, `%Nd` (and `%%`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    prefix: String,
    width: usize,
    zero: bool,
    suffix: String,
}

impl NamePattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "location \"{pattern}\" {why}: it must be a file name with one %d or %0Nd for \
                 the chunk index, e.g. chunk-%06d.wav"
            )
        };
        if pattern.contains('/') {
            return Err(bad("contains '/' (the folder is the directory property)"));
        }
        let mut parts: Vec<String> = vec![String::new()];
        let mut spec: Option<(usize, bool)> = None;
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                parts.last_mut().expect("one part").push(c);
                continue;
            }
            if chars.peek() == Some(&'%') {
                chars.next();
                parts.last_mut().expect("one part").push('%');
                continue;
            }
            let zero = chars.peek() == Some(&'0');
            let mut digits = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            match chars.next() {
                Some('d' | 'u' | 'i') if spec.is_none() => {
                    let width = digits.parse().unwrap_or(0);
                    if width > 20 {
                        return Err(bad("has a field wider than 20"));
                    }
                    spec = Some((width, zero));
                    parts.push(String::new());
                }
                Some('d' | 'u' | 'i') => return Err(bad("has more than one %d")),
                _ => return Err(bad("has a % directive other than %d")),
            }
        }
        let Some((width, zero)) = spec else {
            return Err(bad("has no %d"));
        };
        let suffix = parts.pop().expect("two parts");
        let prefix = parts.pop().expect("two parts");
        Ok(NamePattern {
            prefix,
            width,
            zero,
            suffix,
        })
    }

    pub fn name(&self, index: u64) -> String {
        let n = if self.zero {
            format!("{index:0w$}", w = self.width)
        } else {
            format!("{index:w$}", w = self.width)
        };
        format!("{}{n}{}", self.prefix, self.suffix)
    }
}

/// Why a chunk was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealReason {
    /// It is full; the stream continues in the next chunk.
    Full,
    /// End of stream.
    Eos,
    /// The element stopped (state change; the device went away).
    Stopped,
    /// The caps changed: the next chunk has the new format.
    FormatChange,
    /// The next chunk could not be created (disk full, ...): the stream ends here.
    Error,
}

impl SealReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SealReason::Full => "full",
            SealReason::Eos => "eos",
            SealReason::Stopped => "stopped",
            SealReason::FormatChange => "format-change",
            SealReason::Error => "error",
        }
    }
}

/// Everything the index line and the `chunk-full` message say about one sealed chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkRecord {
    pub path: String,
    pub index: u64,
    pub first_sample: u64,
    pub samples: u64,
    /// PTS of the first sample (from the buffer timestamps), if known.
    pub pts: Option<u64>,
    pub device: Option<String>,
    pub rate: u32,
    pub channels: u16,
    pub format: &'static str,
    /// Wall-clock time (Unix seconds) when the first sample arrived / the last one was written.
    pub unix_time: f64,
    pub end_unix_time: f64,
    pub gaps: Vec<Gap>,
    pub reason: SealReason,
}

impl ChunkRecord {
    /// One JSON object on one line, `\n`-terminated.
    pub fn to_json_line(&self) -> String {
        let gaps: Vec<serde_json::Value> = self
            .gaps
            .iter()
            .map(|g| {
                serde_json::json!({
                    "reason": g.reason.as_str(),
                    "at_sample": g.at_sample,
                    "missing_samples": g.missing_samples,
                    "duration_ns": g.duration_ns,
                    "pts": g.pts,
                    "expected_pts": g.expected_pts,
                    "filled": g.filled,
                })
            })
            .collect();
        let v = serde_json::json!({
            "path": self.path,
            "index": self.index,
            "first_sample": self.first_sample,
            "samples": self.samples,
            "pts": self.pts,
            "device": self.device,
            "rate": self.rate,
            "channels": self.channels,
            "format": self.format,
            "unix_time": self.unix_time,
            "end_unix_time": self.end_unix_time,
            "gaps": gaps,
            "sealed": self.reason.as_str(),
        });
        let mut s = v.to_string();
        s.push('\n');
        s
    }
}

/// Where a stream left off in an existing index (its last line): the next chunk index, the next
/// sample index and the wall-clock end of the last chunk.
pub fn resume_point(index_text: &str) -> Option<(u64, u64, f64)> {
    let last = index_text.lines().rev().find(|l| !l.trim().is_empty())?;
    let v: serde_json::Value = serde_json::from_str(last).ok()?;
    Some((
        v["index"].as_u64()? + 1,
        v["first_sample"].as_u64()? + v["samples"].as_u64()?,
        v["end_unix_time"].as_f64().unwrap_or(0.0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wav::SampleFormat;

    fn fmt(s: SampleFormat, ch: u32, rate: u32) -> WavFormat {
        WavFormat::new(s, ch, rate, 0).unwrap()
    }

    #[test]
    fn chunk_size_in_bytes_is_an_upper_bound_of_whole_frames() {
        // S24 mono: 3-byte frames, odd data sizes need a pad byte.
        let f = fmt(SampleFormat::S24, 1, 48000);
        for bytes in 84u64..200 {
            match ChunkGeometry::from_bytes(f, bytes) {
                Ok(g) => {
                    assert!(g.file_len() <= bytes, "{bytes}: {g:?}");
                    // one more frame would not fit
                    let more = g.layout.file_len(g.data_capacity() + 3);
                    assert!(more > bytes, "{bytes}: could hold one more frame");
                }
                Err(e) => {
                    assert!(bytes < 80 + 3 + 1, "{bytes}: {e}");
                    assert!(e.0.contains("use chunk-size >= 84"), "{e}");
                }
            }
        }
        let g = ChunkGeometry::from_bytes(fmt(SampleFormat::S16, 2, 48000), 1 << 20).unwrap();
        assert_eq!(g.frames_per_chunk, ((1 << 20) - 80) / 4);
        assert_eq!(g.file_len(), 80 + g.frames_per_chunk * 4);
    }

    #[test]
    fn chunk_duration_rounds_to_frames() {
        let f = fmt(SampleFormat::F32, 2, 44100);
        assert_eq!(
            ChunkGeometry::from_duration(f, 1_000_000_000)
                .unwrap()
                .frames_per_chunk,
            44100
        );
        assert_eq!(
            ChunkGeometry::from_duration(f, 10_000_000)
                .unwrap()
                .frames_per_chunk,
            441
        );
        assert_eq!(
            ChunkGeometry::from_duration(f, 1).unwrap().frames_per_chunk,
            1
        );
        // 1/3 s at 44100 = 14700 exactly; 1/7 s = 6300
        assert_eq!(
            ChunkGeometry::from_duration(f, 142_857_143)
                .unwrap()
                .frames_per_chunk,
            6300
        );
    }

    /// Odd buffer sizes against odd chunk sizes: every frame lands once, in order, and chunks
    /// are full exactly when their frame count reaches the capacity.
    #[test]
    fn splitting_is_exact_for_odd_sizes() {
        let f = fmt(SampleFormat::S16, 1, 8000);
        for per_chunk in [1u64, 7, 100, 101, 997] {
            let g = ChunkGeometry::from_frames(f, per_chunk);
            for buf in [1u64, 3, 7, 99, 101, 1000, 1999] {
                let mut fill = Fill::default();
                let mut chunk_fill = 0u64;
                let mut chunks = 0u64;
                let mut total = 0u64;
                for _ in 0..13 {
                    let mut left = buf;
                    while left > 0 {
                        let p = fill.next_piece(&g, left);
                        assert_eq!(p.offset, chunk_fill);
                        assert!(p.frames > 0 && p.offset + p.frames <= per_chunk);
                        chunk_fill += p.frames;
                        assert_eq!(p.fills_chunk, chunk_fill == per_chunk);
                        if p.fills_chunk {
                            chunks += 1;
                            chunk_fill = 0;
                        }
                        left -= p.frames;
                        total += p.frames;
                    }
                }
                assert_eq!(total, 13 * buf);
                assert_eq!(chunks, total / per_chunk);
                assert_eq!(chunk_fill, total % per_chunk);
            }
        }
    }

    #[test]
    fn timeline_reports_jumps_and_discont_not_jitter() {
        let mut t = Timeline::new(48000, 40_000_000);
        assert_eq!(t.observe(Some(1_000_000_000), true, 0), None);
        // 480 frames = 10 ms; a 1 ms jitter is within the tolerance
        assert_eq!(t.observe(Some(1_011_000_000), false, 480), None);
        // 100 ms missing
        let g = t.observe(Some(1_120_000_000), false, 960).unwrap();
        assert_eq!(g.reason, GapReason::Timestamp);
        assert_eq!(g.at_sample, 960);
        assert_eq!(g.missing_samples, 4800);
        assert_eq!(g.duration_ns, 100_000_000);
        assert_eq!(g.expected_pts, Some(1_020_000_000));
        // re-anchored after the gap
        assert_eq!(t.observe(Some(1_130_000_000), false, 1440), None);
        // DISCONT is a gap even if the timestamp matches
        let g = t.observe(Some(1_140_000_000), true, 1920).unwrap();
        assert_eq!((g.reason, g.missing_samples), (GapReason::Discont, 0));
        // an overlap is negative
        let g = t.observe(Some(1_000_000_000), false, 2400).unwrap();
        assert_eq!(g.missing_samples, -48000 / 1000 * 150);
    }

    #[test]
    fn name_patterns() {
        let p = NamePattern::parse("chunk-%06d.wav").unwrap();
        assert_eq!(p.name(42), "chunk-000042.wav");
        assert_eq!(p.name(1234567), "chunk-1234567.wav");
        assert_eq!(NamePattern::parse("a%ub").unwrap().name(7), "a7b");
        assert_eq!(NamePattern::parse("%%%3d").unwrap().name(7), "%  7");
        for bad in ["x.wav", "a/%d", "%d%d", "%s", "%d%"] {
            let e = NamePattern::parse(bad).unwrap_err();
            assert!(e.contains("chunk-%06d.wav"), "{bad}: {e}");
        }
    }

    #[test]
    fn index_line_round_trips_and_resumes() {
        let r = ChunkRecord {
            path: "/tmp/x/chunk-000003.wav".into(),
            index: 3,
            first_sample: 144000,
            samples: 48000,
            pts: Some(3_000_000_000),
            device: Some("mic \"1\"".into()),
            rate: 48000,
            channels: 2,
            format: "F32LE",
            unix_time: 1_700_000_000.25,
            end_unix_time: 1_700_000_001.25,
            gaps: vec![Gap {
                reason: GapReason::Timestamp,
                at_sample: 150000,
                missing_samples: 480,
                duration_ns: 10_000_000,
                pts: Some(3_135_000_000),
                expected_pts: Some(3_125_000_000),
                filled: false,
            }],
            reason: SealReason::Full,
        };
        let line = r.to_json_line();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["device"], "mic \"1\"");
        assert_eq!(v["gaps"][0]["missing_samples"], 480);
        assert_eq!(v["gaps"][0]["reason"], "timestamp");
        assert_eq!(v["sealed"], "full");
        let two = format!("{line}{line}\n");
        assert_eq!(resume_point(&two), Some((4, 192000, 1_700_000_001.25)));
        assert_eq!(resume_point(""), None);
    }
}
