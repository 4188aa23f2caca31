// SPDX-License-Identifier: MPL-2.0

//! FLV video / audio tag body parsing, including Enhanced RTMP (veovera) headers.
//!
//! Plain Rust, no GStreamer types: the input is the payload of one RTMP video (type 9) or
//! audio (type 8) message, the output a typed description of what it carries. Its unit tests are
//! in `flv/tests.rs`.

use bytes::Bytes;
use std::fmt;

/// Video codecs this source can output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    H265,
    Av1,
    Vp9,
}

impl VideoCodec {
    /// Short lower-case name, as used in the `stats` structure.
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::H265 => "hevc",
            VideoCodec::Av1 => "av1",
            VideoCodec::Vp9 => "vp9",
        }
    }
}

/// Audio codecs this source can output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    Aac,
    Mp3,
    Opus,
}

impl AudioCodec {
    /// Short lower-case name, as used in the `stats` structure.
    pub fn name(self) -> &'static str {
        match self {
            AudioCodec::Aac => "aac",
            AudioCodec::Mp3 => "mp3",
            AudioCodec::Opus => "opus",
        }
    }
}

/// How a codec was identified in the tag: a legacy FLV codec id or an Enhanced RTMP FourCC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecId {
    Legacy(u8),
    FourCc([u8; 4]),
}

impl fmt::Display for CodecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecId::Legacy(id) => write!(f, "codec id {id}"),
            CodecId::FourCc(cc) => {
                let s: String = cc
                    .iter()
                    .map(|&b| {
                        if b.is_ascii_graphic() || b == b' ' {
                            b as char
                        } else {
                            '?'
                        }
                    })
                    .collect();
                write!(f, "FourCC '{s}' (0x{:08x})", u32::from_be_bytes(*cc))
            }
        }
    }
}

/// Why a tag could not be turned into media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlvError {
    /// The tag body ended before the named field.
    Truncated(&'static str),
    /// A video codec we cannot output.
    UnknownVideoCodec(CodecId),
    /// An audio codec we cannot output.
    UnknownAudioCodec(CodecId),
    /// A known codec but a packet layout we do not handle (e.g. multitrack).
    Unsupported(&'static str),
}

impl fmt::Display for FlvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlvError::Truncated(what) => write!(f, "truncated FLV tag: missing {what}"),
            FlvError::UnknownVideoCodec(id) => write!(f, "unknown video codec: {id}"),
            FlvError::UnknownAudioCodec(id) => write!(f, "unknown audio codec: {id}"),
            FlvError::Unsupported(what) => write!(f, "unsupported FLV packet: {what}"),
        }
    }
}

impl std::error::Error for FlvError {}

/// A parsed video tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoTag {
    /// Decoder configuration (avcC, hvcC, av1C, vpcC).
    SequenceStart { codec: VideoCodec, config: Bytes },
    /// One access unit / temporal unit / frame.
    Frame {
        codec: VideoCodec,
        keyframe: bool,
        /// Composition time offset in milliseconds (PTS - DTS), signed.
        composition_time: i32,
        data: Bytes,
    },
    /// End of sequence.
    SequenceEnd { codec: VideoCodec },
    /// Something that carries no media (command frames, metadata, empty frames).
    Ignored,
}

/// Sample rate / channels signalled in a legacy FLV audio tag header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyAudioParams {
    pub rate: u32,
    pub channels: u32,
}

/// A parsed audio tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioTag {
    /// Decoder configuration (AudioSpecificConfig, OpusHead).
    SequenceStart { codec: AudioCodec, config: Bytes },
    /// One coded audio frame.
    Frame {
        codec: AudioCodec,
        /// Rate / channels from a legacy tag header (absent for Enhanced RTMP audio).
        params: Option<LegacyAudioParams>,
        data: Bytes,
    },
    /// End of sequence.
    SequenceEnd { codec: AudioCodec },
    /// Something that carries no media.
    Ignored,
}

const FOURCC_AVC: [u8; 4] = *b"avc1";
const FOURCC_HEVC: [u8; 4] = *b"hvc1";
const FOURCC_AV1: [u8; 4] = *b"av01";
const FOURCC_VP9: [u8; 4] = *b"vp09";
const FOURCC_OPUS: [u8; 4] = *b"Opus";
const FOURCC_AAC: [u8; 4] = *b"mp4a";
const FOURCC_MP3: [u8; 4] = *b".mp3";

// Enhanced RTMP video packet types.
const VIDEO_SEQUENCE_START: u8 = 0;
const VIDEO_CODED_FRAMES: u8 = 1;
const VIDEO_SEQUENCE_END: u8 = 2;
const VIDEO_CODED_FRAMES_X: u8 = 3;
const VIDEO_METADATA: u8 = 4;
const VIDEO_MPEG2TS_SEQUENCE_START: u8 = 5;
const VIDEO_MULTITRACK: u8 = 6;
const VIDEO_MODEX: u8 = 7;

// Enhanced RTMP audio packet types.
const AUDIO_SEQUENCE_START: u8 = 0;
const AUDIO_CODED_FRAMES: u8 = 1;
const AUDIO_SEQUENCE_END: u8 = 2;
const AUDIO_MULTICHANNEL_CONFIG: u8 = 4;
const AUDIO_MULTITRACK: u8 = 5;
const AUDIO_MODEX: u8 = 7;

const FRAME_TYPE_KEY: u8 = 1;
const FRAME_TYPE_GENERATED_KEY: u8 = 4;
const FRAME_TYPE_COMMAND: u8 = 5;

/// A small forward-only reader over a `Bytes`.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a Bytes) -> Self {
        Reader { data, pos: 0 }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FlvError> {
        let b = *self.data.get(self.pos).ok_or(FlvError::Truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FlvError> {
        let end = self.pos.checked_add(n).ok_or(FlvError::Truncated(what))?;
        let s = self
            .data
            .get(self.pos..end)
            .ok_or(FlvError::Truncated(what))?;
        self.pos = end;
        Ok(s)
    }

    fn fourcc(&mut self, what: &'static str) -> Result<[u8; 4], FlvError> {
        let s = self.take(4, what)?;
        Ok([s[0], s[1], s[2], s[3]])
    }

    fn si24(&mut self, what: &'static str) -> Result<i32, FlvError> {
        let s = self.take(3, what)?;
        let v = (u32::from(s[0]) << 16) | (u32::from(s[1]) << 8) | u32::from(s[2]);
        // Sign-extend the 24-bit value.
        Ok(((v << 8) as i32) >> 8)
    }

    fn rest(&self) -> Bytes {
        self.data.slice(self.pos.min(self.data.len())..)
    }

    /// Skips Enhanced RTMP ModEx prefixes; returns the packet type that follows them.
    fn skip_modex(&mut self, mut packet_type: u8, modex: u8) -> Result<u8, FlvError> {
        // Every ModEx round consumes at least two bytes, so this terminates.
        while packet_type == modex {
            let mut size = usize::from(self.u8("ModEx data size")?) + 1;
            if size == 256 {
                let s = self.take(2, "ModEx data size")?;
                size = usize::from(u16::from_be_bytes([s[0], s[1]])) + 1;
            }
            self.take(size, "ModEx data")?;
            packet_type = self.u8("ModEx packet type")? & 0x0f;
        }
        Ok(packet_type)
    }
}

/// Parses the body of an RTMP video message (FLV VIDEODATA).
pub fn parse_video(data: &Bytes) -> Result<VideoTag, FlvError> {
    let mut r = Reader::new(data);
    let first = r.u8("video tag header")?;

    if first & 0x80 != 0 {
        // Enhanced RTMP ExVideoTagHeader.
        let frame_type = (first >> 4) & 0x07;
        let packet_type = r.skip_modex(first & 0x0f, VIDEO_MODEX)?;
        if frame_type == FRAME_TYPE_COMMAND && packet_type != VIDEO_METADATA {
            return Ok(VideoTag::Ignored);
        }
        if packet_type == VIDEO_MULTITRACK {
            return Err(FlvError::Unsupported("multitrack video"));
        }
        let fourcc = r.fourcc("video FourCC")?;
        let codec = match fourcc {
            FOURCC_AVC => VideoCodec::H264,
            FOURCC_HEVC => VideoCodec::H265,
            FOURCC_AV1 => VideoCodec::Av1,
            FOURCC_VP9 => VideoCodec::Vp9,
            other => return Err(FlvError::UnknownVideoCodec(CodecId::FourCc(other))),
        };
        let keyframe = frame_type == FRAME_TYPE_KEY || frame_type == FRAME_TYPE_GENERATED_KEY;
        return match packet_type {
            VIDEO_SEQUENCE_START => Ok(VideoTag::SequenceStart {
                codec,
                config: r.rest(),
            }),
            VIDEO_CODED_FRAMES | VIDEO_CODED_FRAMES_X => {
                // Only AVC / HEVC carry a composition time, and only in CodedFrames.
                let composition_time = if packet_type == VIDEO_CODED_FRAMES
                    && matches!(codec, VideoCodec::H264 | VideoCodec::H265)
                {
                    r.si24("composition time")?
                } else {
                    0
                };
                let data = r.rest();
                if data.is_empty() {
                    return Ok(VideoTag::Ignored);
                }
                Ok(VideoTag::Frame {
                    codec,
                    keyframe,
                    composition_time,
                    data,
                })
            }
            VIDEO_SEQUENCE_END => Ok(VideoTag::SequenceEnd { codec }),
            VIDEO_METADATA => Ok(VideoTag::Ignored),
            VIDEO_MPEG2TS_SEQUENCE_START => Err(FlvError::Unsupported("MPEG-2 TS sequence start")),
            _ => Err(FlvError::Unsupported("unknown video packet type")),
        };
    }

    // Legacy FLV video tag.
    let frame_type = first >> 4;
    let codec_id = first & 0x0f;
    let codec = match codec_id {
        7 => VideoCodec::H264,
        // Non-standard but widespread (pre-Enhanced-RTMP) HEVC-in-FLV.
        12 => VideoCodec::H265,
        other => return Err(FlvError::UnknownVideoCodec(CodecId::Legacy(other))),
    };
    if frame_type == FRAME_TYPE_COMMAND {
        return Ok(VideoTag::Ignored);
    }
    let packet_type = r.u8("AVC packet type")?;
    let composition_time = r.si24("composition time")?;
    match packet_type {
        0 => Ok(VideoTag::SequenceStart {
            codec,
            config: r.rest(),
        }),
        1 => {
            let data = r.rest();
            if data.is_empty() {
                return Ok(VideoTag::Ignored);
            }
            Ok(VideoTag::Frame {
                codec,
                keyframe: frame_type == FRAME_TYPE_KEY || frame_type == FRAME_TYPE_GENERATED_KEY,
                composition_time,
                data,
            })
        }
        2 => Ok(VideoTag::SequenceEnd { codec }),
        _ => Err(FlvError::Unsupported("unknown AVC packet type")),
    }
}

fn legacy_audio_params(first: u8) -> LegacyAudioParams {
    let rate = match (first >> 2) & 0x03 {
        0 => 5512,
        1 => 11025,
        2 => 22050,
        _ => 44100,
    };
    let channels = if first & 0x01 != 0 { 2 } else { 1 };
    LegacyAudioParams { rate, channels }
}

/// Parses the body of an RTMP audio message (FLV AUDIODATA).
pub fn parse_audio(data: &Bytes) -> Result<AudioTag, FlvError> {
    let mut r = Reader::new(data);
    let first = r.u8("audio tag header")?;
    let sound_format = first >> 4;

    if sound_format == 9 {
        // Enhanced RTMP ExAudioTagHeader.
        let packet_type = r.skip_modex(first & 0x0f, AUDIO_MODEX)?;
        if packet_type == AUDIO_MULTITRACK {
            return Err(FlvError::Unsupported("multitrack audio"));
        }
        let fourcc = r.fourcc("audio FourCC")?;
        let codec = match fourcc {
            FOURCC_OPUS => AudioCodec::Opus,
            FOURCC_AAC => AudioCodec::Aac,
            FOURCC_MP3 => AudioCodec::Mp3,
            other => return Err(FlvError::UnknownAudioCodec(CodecId::FourCc(other))),
        };
        return match packet_type {
            AUDIO_SEQUENCE_START => Ok(AudioTag::SequenceStart {
                codec,
                config: r.rest(),
            }),
            AUDIO_CODED_FRAMES => {
                let data = r.rest();
                if data.is_empty() {
                    return Ok(AudioTag::Ignored);
                }
                Ok(AudioTag::Frame {
                    codec,
                    params: None,
                    data,
                })
            }
            AUDIO_SEQUENCE_END => Ok(AudioTag::SequenceEnd { codec }),
            AUDIO_MULTICHANNEL_CONFIG => Ok(AudioTag::Ignored),
            _ => Err(FlvError::Unsupported("unknown audio packet type")),
        };
    }

    let params = legacy_audio_params(first);
    match sound_format {
        10 => {
            let packet_type = r.u8("AAC packet type")?;
            match packet_type {
                0 => Ok(AudioTag::SequenceStart {
                    codec: AudioCodec::Aac,
                    config: r.rest(),
                }),
                1 => {
                    let data = r.rest();
                    if data.is_empty() {
                        return Ok(AudioTag::Ignored);
                    }
                    Ok(AudioTag::Frame {
                        codec: AudioCodec::Aac,
                        params: Some(params),
                        data,
                    })
                }
                _ => Err(FlvError::Unsupported("unknown AAC packet type")),
            }
        }
        2 | 14 => {
            let data = r.rest();
            if data.is_empty() {
                return Ok(AudioTag::Ignored);
            }
            let params = if sound_format == 14 {
                LegacyAudioParams {
                    rate: 8000,
                    channels: params.channels,
                }
            } else {
                params
            };
            Ok(AudioTag::Frame {
                codec: AudioCodec::Mp3,
                params: Some(params),
                data,
            })
        }
        other => Err(FlvError::UnknownAudioCodec(CodecId::Legacy(other))),
    }
}

/// Rate and channel count from an MPEG-4 AudioSpecificConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfig {
    pub object_type: u32,
    pub rate: u32,
    pub channels: u32,
}

/// Parses the leading fields of an MPEG-4 AudioSpecificConfig (ISO 14496-3 1.6.2.1).
pub fn parse_aac_config(config: &[u8]) -> Option<AacConfig> {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let mut bits = BitReader::new(config);
    let mut object_type = bits.read(5)?;
    if object_type == 31 {
        object_type = 32 + bits.read(6)?;
    }
    let index = bits.read(4)?;
    let rate = if index == 15 {
        bits.read(24)?
    } else {
        *RATES.get(index as usize)?
    };
    let channel_config = bits.read(4)?;
    let channels = match channel_config {
        1..=6 => channel_config,
        7 => 8,
        _ => return None,
    };
    if rate == 0 {
        return None;
    }
    Some(AacConfig {
        object_type,
        rate,
        channels,
    })
}

struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, bit: 0 }
    }

    fn read(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.bit / 8)?;
            let b = (byte >> (7 - (self.bit % 8))) & 1;
            v = (v << 1) | u32::from(b);
            self.bit += 1;
        }
        Some(v)
    }
}

/// The fields of an Opus identification header ("OpusHead", RFC 7845 5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusHead {
    pub channels: u8,
    pub pre_skip: u16,
    pub input_rate: u32,
    pub mapping_family: u8,
    /// (stream count, coupled count, channel mapping) for mapping families other than 0.
    pub mapping: Option<(u8, u8, Vec<u8>)>,
}

/// Parses an OpusHead packet; `None` if it is not a valid one.
pub fn parse_opus_head(data: &[u8]) -> Option<OpusHead> {
    if data.len() < 19 || &data[0..8] != b"OpusHead" {
        return None;
    }
    let channels = data[9];
    if channels == 0 {
        return None;
    }
    let pre_skip = u16::from_le_bytes([data[10], data[11]]);
    let input_rate = u32::from_le_bytes([data[12], data[13], data[14], data[15]]);
    let mapping_family = data[18];
    let mapping = if mapping_family != 0 {
        let streams = *data.get(19)?;
        let coupled = *data.get(20)?;
        let map = data.get(21..21 + usize::from(channels))?.to_vec();
        if streams == 0 || coupled > streams {
            return None;
        }
        Some((streams, coupled, map))
    } else {
        if channels > 2 {
            return None;
        }
        None
    };
    Some(OpusHead {
        channels,
        pre_skip,
        input_rate,
        mapping_family,
        mapping,
    })
}

#[cfg(test)]
mod tests;
