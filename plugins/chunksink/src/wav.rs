// SPDX-License-Identifier: MPL-2.0
//! WAV header layout (plain Rust, no GStreamer types): a header of fixed length for a format, so
//! that the sample data always starts at the same offset and only the size fields change while
//! a chunk fills; and a strict parser used by the tests and by consumers.
//!
//! Layout written (all little-endian):
//!
//! ```text
//! "RIFF" <riff size u32> "WAVE"
//! "JUNK" 28 <28 zero bytes>          room for a "ds64" chunk (RF64); is "ds64" when the file is RF64
//! "fmt " 16 <PCM fmt>                U8/S16/S24/S32 with 1 or 2 channels
//! "fmt " 40 <WAVE_FORMAT_EXTENSIBLE> float, or more than two channels
//! "fact" 4 <sample frames u32>       float only (non-PCM formats carry a fact chunk)
//! "data" <data size u32> <interleaved frames> [pad byte when the size is odd]
//! ```
//!
//! RF64 (a file longer than 4 GiB): "RF64", riff size, fact and data sizes are 0xFFFFFFFF and
//! the real sizes are in the ds64 chunk (riff size u64, data size u64, sample count u64, table
//! length u32 = 0).

use std::fmt;

/// Sample formats a WAV file holds (GStreamer names: U8, S16LE, S24LE, S32LE, F32LE, F64LE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleFormat {
    U8,
    S16,
    S24,
    S32,
    F32,
    F64,
}

impl SampleFormat {
    pub const ALL: [SampleFormat; 6] = [
        SampleFormat::U8,
        SampleFormat::S16,
        SampleFormat::S24,
        SampleFormat::S32,
        SampleFormat::F32,
        SampleFormat::F64,
    ];

    /// Bytes per sample (one channel).
    pub fn bytes(self) -> u32 {
        match self {
            SampleFormat::U8 => 1,
            SampleFormat::S16 => 2,
            SampleFormat::S24 => 3,
            SampleFormat::S32 | SampleFormat::F32 => 4,
            SampleFormat::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, SampleFormat::F32 | SampleFormat::F64)
    }

    /// The GStreamer format name (`audio/x-raw,format=...`).
    pub fn gst_name(self) -> &'static str {
        match self {
            SampleFormat::U8 => "U8",
            SampleFormat::S16 => "S16LE",
            SampleFormat::S24 => "S24LE",
            SampleFormat::S32 => "S32LE",
            SampleFormat::F32 => "F32LE",
            SampleFormat::F64 => "F64LE",
        }
    }

    pub fn from_gst_name(name: &str) -> Option<SampleFormat> {
        SampleFormat::ALL.into_iter().find(|f| f.gst_name() == name)
    }

    /// The byte pattern of silence (unsigned 8-bit is centred on 0x80).
    pub fn silence_byte(self) -> u8 {
        if self == SampleFormat::U8 { 0x80 } else { 0 }
    }
}

/// WAV speaker positions (`dwChannelMask` bits of WAVE_FORMAT_EXTENSIBLE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Speaker {
    FrontLeft = 0x1,
    FrontRight = 0x2,
    FrontCenter = 0x4,
    LowFrequency = 0x8,
    BackLeft = 0x10,
    BackRight = 0x20,
    FrontLeftOfCenter = 0x40,
    FrontRightOfCenter = 0x80,
    BackCenter = 0x100,
    SideLeft = 0x200,
    SideRight = 0x400,
    TopCenter = 0x800,
    TopFrontLeft = 0x1000,
    TopFrontCenter = 0x2000,
    TopFrontRight = 0x4000,
    TopBackLeft = 0x8000,
    TopBackCenter = 0x10000,
    TopBackRight = 0x20000,
}

/// The `dwChannelMask` for channels at `positions` (in stream order). WAV requires the channels
/// in ascending bit order, one each; anything else (an unknown position, a repeat, another
/// order) gives 0 = "no speaker assignment", because the samples are stored as they come.
pub fn channel_mask(positions: &[Option<Speaker>]) -> u32 {
    let mut mask = 0u32;
    let mut last = 0u32;
    for p in positions {
        let Some(bit) = p.map(|s| s as u32) else {
            return 0;
        };
        if bit <= last {
            return 0;
        }
        mask |= bit;
        last = bit;
    }
    mask
}

/// A format the WAV file cannot hold, with what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FormatError {}

/// Interleaved sample frames as stored in the data chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavFormat {
    pub sample: SampleFormat,
    pub channels: u16,
    pub rate: u32,
    /// `dwChannelMask` (only written in the extensible header).
    pub channel_mask: u32,
}

impl WavFormat {
    /// Check that the WAV header fields (16-bit channel count and block align, 32-bit byte
    /// rate) can describe the stream.
    pub fn new(
        sample: SampleFormat,
        channels: u32,
        rate: u32,
        channel_mask: u32,
    ) -> Result<Self, FormatError> {
        if channels == 0 || rate == 0 {
            return Err(FormatError(format!(
                "{channels} channels at {rate} Hz is not an audio stream"
            )));
        }
        let max_channels = u32::from(u16::MAX) / sample.bytes();
        if channels > max_channels {
            return Err(FormatError(format!(
                "{channels} channels of {}: a WAV frame (block align) is at most 65535 bytes, \
                 so at most {max_channels} channels of this format; split the channels \
                 (deinterleave) into several sinks",
                sample.gst_name()
            )));
        }
        let block = u64::from(channels * sample.bytes());
        if u64::from(rate) * block > u64::from(u32::MAX) {
            return Err(FormatError(format!(
                "{channels} channels of {} at {rate} Hz: the WAV byte rate field is 32 bits \
                 (at most 4294967295 bytes/s); lower the rate or the channel count",
                sample.gst_name()
            )));
        }
        Ok(WavFormat {
            sample,
            channels: channels as u16,
            rate,
            channel_mask,
        })
    }

    /// Bytes per interleaved frame.
    pub fn block_align(&self) -> u32 {
        u32::from(self.channels) * self.sample.bytes()
    }

    pub fn byte_rate(&self) -> u32 {
        self.rate * self.block_align()
    }

    /// WAVE_FORMAT_EXTENSIBLE: float, or more than two channels.
    pub fn extensible(&self) -> bool {
        self.sample.is_float() || self.channels > 2
    }

    fn fmt_payload_len(&self) -> usize {
        if self.extensible() { 40 } else { 16 }
    }
}

const JUNK_PAYLOAD: usize = 28;
const UNKNOWN_SIZE: u32 = 0xFFFF_FFFF;
const WAVE_FORMAT_PCM: u16 = 1;
const WAVE_FORMAT_IEEE_FLOAT: u16 = 3;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;
/// The tail of KSDATAFORMAT_SUBTYPE_PCM / _IEEE_FLOAT after their first (format tag) u32.
const SUBFORMAT_TAIL: [u8; 12] = [
    0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];

/// Where the size fields of one header are, for a format and a file kind (RIFF or RF64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavLayout {
    pub format: WavFormat,
    pub rf64: bool,
}

impl WavLayout {
    /// The layout for a file holding at most `data_capacity` bytes of samples: RF64 when the
    /// RIFF size field (32 bits) could not hold the full file.
    pub fn for_capacity(format: WavFormat, data_capacity: u64) -> Self {
        let riff = WavLayout {
            format,
            rf64: false,
        };
        let full = riff.riff_size(data_capacity);
        WavLayout {
            format,
            rf64: full > u64::from(u32::MAX) - 1,
        }
    }

    fn fact_len(&self) -> usize {
        if self.format.sample.is_float() { 12 } else { 0 }
    }

    /// Offset of the "fact" chunk's sample count, if there is one.
    fn fact_offset(&self) -> Option<usize> {
        (self.fact_len() > 0).then(|| 12 + 8 + JUNK_PAYLOAD + 8 + self.format.fmt_payload_len() + 8)
    }

    /// Offset of the "data" chunk's size field.
    fn data_size_offset(&self) -> usize {
        12 + 8 + JUNK_PAYLOAD + 8 + self.format.fmt_payload_len() + self.fact_len() + 4
    }

    /// Bytes before the first sample (the data chunk starts here).
    pub fn header_len(&self) -> usize {
        self.data_size_offset() + 4
    }

    /// The RIFF size (file length minus 8) for `data_len` bytes of samples, pad byte included.
    pub fn riff_size(&self, data_len: u64) -> u64 {
        (self.header_len() as u64 - 8) + data_len + (data_len & 1)
    }

    /// The length of a complete file holding `data_len` bytes of samples.
    pub fn file_len(&self, data_len: u64) -> u64 {
        self.riff_size(data_len) + 8
    }

    /// Write the whole header for `data_len` bytes of samples into `out[..header_len()]`.
    pub fn write_header(&self, out: &mut [u8], data_len: u64) {
        let f = &self.format;
        let h = &mut out[..self.header_len()];
        h.fill(0);
        h[0..4].copy_from_slice(if self.rf64 { b"RF64" } else { b"RIFF" });
        h[8..12].copy_from_slice(b"WAVE");
        h[12..16].copy_from_slice(if self.rf64 { b"ds64" } else { b"JUNK" });
        put_u32(h, 16, JUNK_PAYLOAD as u32);
        let mut o = 12 + 8 + JUNK_PAYLOAD;
        h[o..o + 4].copy_from_slice(b"fmt ");
        put_u32(h, o + 4, f.fmt_payload_len() as u32);
        o += 8;
        let tag = if f.extensible() {
            WAVE_FORMAT_EXTENSIBLE
        } else {
            WAVE_FORMAT_PCM
        };
        put_u16(h, o, tag);
        put_u16(h, o + 2, f.channels);
        put_u32(h, o + 4, f.rate);
        put_u32(h, o + 8, f.byte_rate());
        put_u16(h, o + 12, f.block_align() as u16);
        put_u16(h, o + 14, (f.sample.bytes() * 8) as u16);
        if f.extensible() {
            put_u16(h, o + 16, 22);
            put_u16(h, o + 18, (f.sample.bytes() * 8) as u16);
            put_u32(h, o + 20, f.channel_mask);
            let sub = if f.sample.is_float() {
                WAVE_FORMAT_IEEE_FLOAT
            } else {
                WAVE_FORMAT_PCM
            };
            put_u32(h, o + 24, u32::from(sub));
            h[o + 28..o + 40].copy_from_slice(&SUBFORMAT_TAIL);
        }
        o += f.fmt_payload_len();
        if self.fact_len() > 0 {
            h[o..o + 4].copy_from_slice(b"fact");
            put_u32(h, o + 4, 4);
            o += 12;
        }
        h[o..o + 4].copy_from_slice(b"data");
        self.update_sizes(h, data_len);
    }

    /// Rewrite only the size fields for `data_len` bytes of samples (the samples must already be
    /// in place: a reader or a crash at any moment then sees a header valid for what is written).
    pub fn update_sizes(&self, header: &mut [u8], data_len: u64) {
        let frames = data_len / u64::from(self.format.block_align());
        if self.rf64 {
            put_u32(header, 4, UNKNOWN_SIZE);
            put_u64(header, 20, self.riff_size(data_len));
            put_u64(header, 28, data_len);
            put_u64(header, 36, frames);
            put_u32(header, 44, 0);
            if let Some(fo) = self.fact_offset() {
                put_u32(header, fo, UNKNOWN_SIZE);
            }
            put_u32(header, self.data_size_offset(), UNKNOWN_SIZE);
        } else {
            // for_capacity() chose RIFF, so these fit.
            if let Some(fo) = self.fact_offset() {
                put_u32(header, fo, frames as u32);
            }
            put_u32(header, self.data_size_offset(), data_len as u32);
            put_u32(header, 4, self.riff_size(data_len) as u32);
        }
    }
}

fn put_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// What [`parse`] found in a WAV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedWav {
    pub rf64: bool,
    /// wFormatTag (1 PCM, 0xFFFE extensible).
    pub format_tag: u16,
    /// 1 (PCM) or 3 (IEEE float): the tag, or the extensible sub-format.
    pub sub_format: u16,
    pub channels: u16,
    pub rate: u32,
    pub bits: u16,
    pub valid_bits: u16,
    pub block_align: u16,
    pub channel_mask: u32,
    /// The fact chunk's sample count, when present.
    pub fact_frames: Option<u64>,
    /// Byte range of the samples in the file.
    pub data: std::ops::Range<usize>,
}

impl ParsedWav {
    pub fn frames(&self) -> u64 {
        (self.data.len() / usize::from(self.block_align)) as u64
    }

    /// The sample format, if it is one of ours.
    pub fn sample_format(&self) -> Option<SampleFormat> {
        match (self.sub_format, self.bits) {
            (1, 8) => Some(SampleFormat::U8),
            (1, 16) => Some(SampleFormat::S16),
            (1, 24) => Some(SampleFormat::S24),
            (1, 32) => Some(SampleFormat::S32),
            (3, 32) => Some(SampleFormat::F32),
            (3, 64) => Some(SampleFormat::F64),
            _ => None,
        }
    }
}

fn get_u16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn get_u32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn get_u64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// A strict WAV/RF64 reader: every size must fit inside the file, the fmt fields must agree
/// with each other, the data must be whole frames. Bytes after the RIFF size are ignored (a
/// chunk file is allocated at full size before it fills).
pub fn parse(file: &[u8]) -> Result<ParsedWav, String> {
    let short = || format!("file of {} bytes is too short for a WAV header", file.len());
    let id = file.get(0..4).ok_or_else(short)?;
    let rf64 = match id {
        b"RIFF" => false,
        b"RF64" => true,
        _ => return Err(format!("starts with {id:?}, not RIFF/RF64")),
    };
    if file.get(8..12) != Some(b"WAVE") {
        return Err("no WAVE form type".into());
    }
    let mut riff_size = u64::from(get_u32(file, 4).ok_or_else(short)?);
    let mut ds64: Option<(u64, u64)> = None;
    let mut fmt: Option<ParsedWav> = None;
    let mut fact_frames: Option<u64> = None;
    let mut o = 12usize;
    loop {
        let cid = file
            .get(o..o + 4)
            .ok_or_else(|| format!("no data chunk before offset {o}"))?;
        let csize = get_u32(file, o + 4).ok_or_else(short)?;
        let body = o + 8;
        if body as u64 > riff_size + 8 {
            return Err(format!(
                "chunk at {o} starts past the RIFF size {riff_size}"
            ));
        }
        match cid {
            b"ds64" => {
                if !rf64 || o != 12 {
                    return Err("ds64 chunk outside the first position of an RF64 file".into());
                }
                let r = get_u64(file, body).ok_or_else(short)?;
                let d = get_u64(file, body + 8).ok_or_else(short)?;
                ds64 = Some((r, d));
                riff_size = r;
            }
            b"fmt " => {
                if csize < 16 {
                    return Err(format!("fmt chunk of {csize} bytes"));
                }
                let tag = get_u16(file, body).ok_or_else(short)?;
                let channels = get_u16(file, body + 2).ok_or_else(short)?;
                let rate = get_u32(file, body + 4).ok_or_else(short)?;
                let byte_rate = get_u32(file, body + 8).ok_or_else(short)?;
                let block_align = get_u16(file, body + 12).ok_or_else(short)?;
                let bits = get_u16(file, body + 14).ok_or_else(short)?;
                let (sub_format, valid_bits, channel_mask) = match tag {
                    WAVE_FORMAT_PCM | WAVE_FORMAT_IEEE_FLOAT => (tag, bits, 0),
                    WAVE_FORMAT_EXTENSIBLE => {
                        if csize < 40 || get_u16(file, body + 16) != Some(22) {
                            return Err("extensible fmt chunk without its 22 extra bytes".into());
                        }
                        let sub = get_u32(file, body + 24).ok_or_else(short)?;
                        if file.get(body + 28..body + 40) != Some(&SUBFORMAT_TAIL[..]) {
                            return Err("extensible sub-format is not a KSDATAFORMAT GUID".into());
                        }
                        (
                            sub as u16,
                            get_u16(file, body + 18).ok_or_else(short)?,
                            get_u32(file, body + 20).ok_or_else(short)?,
                        )
                    }
                    t => return Err(format!("format tag {t:#x} is not PCM/float/extensible")),
                };
                if channels == 0 || rate == 0 || bits == 0 || bits % 8 != 0 {
                    return Err(format!("fmt: {channels} channels, {rate} Hz, {bits} bits"));
                }
                if u32::from(block_align) != u32::from(channels) * u32::from(bits / 8) {
                    return Err(format!(
                        "block align {block_align} != {channels} channels x {bits} bits"
                    ));
                }
                if u64::from(byte_rate) != u64::from(rate) * u64::from(block_align) {
                    return Err(format!("byte rate {byte_rate} != {rate} x {block_align}"));
                }
                if channel_mask != 0 && channel_mask.count_ones() != u32::from(channels) {
                    return Err(format!(
                        "channel mask {channel_mask:#x} does not name {channels} speakers"
                    ));
                }
                fmt = Some(ParsedWav {
                    rf64,
                    format_tag: tag,
                    sub_format,
                    channels,
                    rate,
                    bits,
                    valid_bits,
                    block_align,
                    channel_mask,
                    fact_frames: None,
                    data: 0..0,
                });
            }
            b"fact" => {
                let v = get_u32(file, body).ok_or_else(short)?;
                fact_frames = Some(if v == UNKNOWN_SIZE && rf64 {
                    ds64.map(|_| get_u64(file, 36).unwrap_or(0)).unwrap_or(0)
                } else {
                    u64::from(v)
                });
            }
            b"data" => {
                let mut w = fmt.ok_or("data chunk before the fmt chunk")?;
                let len = if rf64 && csize == UNKNOWN_SIZE {
                    ds64.ok_or("RF64 without a ds64 chunk")?.1
                } else {
                    u64::from(csize)
                };
                let end = body as u64 + len;
                if end > file.len() as u64 {
                    return Err(format!(
                        "data size {len} runs past the end of the file ({} bytes)",
                        file.len()
                    ));
                }
                if end + (len & 1) > riff_size + 8 {
                    return Err(format!(
                        "data size {len} runs past the RIFF size {riff_size}"
                    ));
                }
                if len % u64::from(w.block_align) != 0 {
                    return Err(format!(
                        "data size {len} is not whole frames of {} bytes",
                        w.block_align
                    ));
                }
                if let Some(ff) = fact_frames
                    && ff != len / u64::from(w.block_align)
                {
                    return Err(format!(
                        "fact says {ff} frames, data holds {}",
                        len / u64::from(w.block_align)
                    ));
                }
                w.fact_frames = fact_frames;
                w.data = body..end as usize;
                return Ok(w);
            }
            _ => {}
        }
        o = body
            .checked_add(csize as usize + (csize as usize & 1))
            .ok_or("chunk size overflows")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(s: SampleFormat, ch: u32) -> WavFormat {
        WavFormat::new(s, ch, 48000, 0).unwrap()
    }

    #[test]
    fn header_lengths_per_kind() {
        assert_eq!(
            WavLayout::for_capacity(fmt(SampleFormat::S16, 2), 1000).header_len(),
            80
        );
        assert_eq!(
            WavLayout::for_capacity(fmt(SampleFormat::S16, 6), 1000).header_len(),
            104
        );
        assert_eq!(
            WavLayout::for_capacity(fmt(SampleFormat::F32, 1), 1000).header_len(),
            116
        );
    }

    #[test]
    fn every_format_and_channel_count_round_trips_through_the_parser() {
        for s in SampleFormat::ALL {
            for ch in [1u32, 2, 3, 6, 8, 64] {
                let f = fmt(s, ch);
                let l = WavLayout::for_capacity(f, 1 << 20);
                assert!(!l.rf64);
                let frames = 7u64;
                let data = frames * u64::from(f.block_align());
                let mut file = vec![0u8; l.file_len(data) as usize];
                l.write_header(&mut file, data);
                let p = parse(&file).unwrap_or_else(|e| panic!("{s:?} x{ch}: {e}"));
                assert_eq!(p.sample_format(), Some(s));
                assert_eq!(u32::from(p.channels), ch);
                assert_eq!(p.rate, 48000);
                assert_eq!(p.frames(), frames);
                assert_eq!(p.data.start, l.header_len());
                assert_eq!(p.format_tag == 0xFFFE, s.is_float() || ch > 2);
                assert_eq!(p.fact_frames, s.is_float().then_some(frames));
                assert_eq!(p.valid_bits, p.bits);
                assert_eq!(p.data.end + (data as usize & 1), file.len());
            }
        }
    }

    #[test]
    fn sizes_follow_the_written_length_and_trailing_room_is_ignored() {
        let f = fmt(SampleFormat::S24, 1);
        let l = WavLayout::for_capacity(f, 3000);
        let mut file = vec![0u8; l.file_len(3000) as usize];
        l.write_header(&mut file, 0);
        assert_eq!(parse(&file).unwrap().frames(), 0);
        for frames in [1u64, 2, 333, 999, 1000] {
            l.update_sizes(&mut file, frames * 3);
            let p = parse(&file).unwrap();
            assert_eq!(p.frames(), frames);
            // odd data: the RIFF size counts the pad byte
            assert_eq!(
                u64::from(u32::from_le_bytes(file[4..8].try_into().unwrap())),
                l.header_len() as u64 - 8 + frames * 3 + ((frames * 3) & 1)
            );
        }
    }

    #[test]
    fn rf64_when_the_file_passes_4_gib() {
        let f = fmt(SampleFormat::F32, 2);
        let small = WavLayout::for_capacity(f, u64::from(u32::MAX) - 200);
        assert!(!small.rf64);
        let big = WavLayout::for_capacity(f, 5 << 30);
        assert!(big.rf64);
        assert_eq!(big.header_len(), small.header_len());
        // A header claiming 5 GiB only parses with the data present; check the fields instead
        // on a file whose ds64 says 800 bytes.
        let mut file = vec![0u8; big.header_len() + 800];
        big.write_header(&mut file, 800);
        assert_eq!(&file[0..4], b"RF64");
        assert_eq!(&file[12..16], b"ds64");
        let p = parse(&file).unwrap();
        assert!(p.rf64);
        assert_eq!(p.frames(), 100);
        assert_eq!(p.fact_frames, Some(100));
    }

    #[test]
    fn extensible_fields() {
        let mask = channel_mask(&[
            Some(Speaker::FrontLeft),
            Some(Speaker::FrontRight),
            Some(Speaker::FrontCenter),
            Some(Speaker::LowFrequency),
            Some(Speaker::BackLeft),
            Some(Speaker::BackRight),
        ]);
        assert_eq!(mask, 0x3F);
        let f = WavFormat::new(SampleFormat::S32, 6, 44100, mask).unwrap();
        let l = WavLayout::for_capacity(f, 24);
        let mut file = vec![0u8; l.file_len(24) as usize];
        l.write_header(&mut file, 24);
        let p = parse(&file).unwrap();
        assert_eq!(
            (p.format_tag, p.sub_format, p.channel_mask),
            (0xFFFE, 1, 0x3F)
        );
        assert_eq!(p.block_align, 24);
    }

    #[test]
    fn channel_mask_only_for_wav_order() {
        use Speaker::*;
        assert_eq!(channel_mask(&[Some(FrontRight), Some(FrontLeft)]), 0);
        assert_eq!(channel_mask(&[Some(FrontLeft), Some(FrontLeft)]), 0);
        assert_eq!(channel_mask(&[Some(FrontLeft), None]), 0);
        assert_eq!(channel_mask(&[Some(FrontCenter)]), 4);
    }

    #[test]
    fn formats_the_header_cannot_describe() {
        let e = WavFormat::new(SampleFormat::F64, 8192, 48000, 0).unwrap_err();
        assert!(e.0.contains("at most 8191 channels"), "{e}");
        let e = WavFormat::new(SampleFormat::F64, 8000, 96000, 0).unwrap_err();
        assert!(e.0.contains("byte rate"), "{e}");
        assert!(WavFormat::new(SampleFormat::S16, 0, 48000, 0).is_err());
    }

    #[test]
    fn parser_rejects_lies() {
        let f = fmt(SampleFormat::S16, 2);
        let l = WavLayout::for_capacity(f, 400);
        let mut file = vec![0u8; l.file_len(400) as usize];
        l.write_header(&mut file, 400);
        assert!(parse(&file).is_ok());
        let mut cut = file.clone();
        cut.truncate(file.len() - 4);
        assert!(parse(&cut).unwrap_err().contains("past the end"));
        let mut odd = file.clone();
        l.update_sizes(&mut odd, 398);
        put_u32(&mut odd, l.header_len() - 4, 399);
        put_u32(&mut odd, 4, (l.header_len() - 8 + 400) as u32);
        assert!(parse(&odd).unwrap_err().contains("whole frames"));
        let mut bad = file.clone();
        put_u32(&mut bad, 12 + 36 + 8 + 8, 1);
        assert!(parse(&bad).unwrap_err().contains("byte rate"));
        assert!(parse(b"RIFF").is_err());
        assert!(parse(&file[..60]).is_err());
    }
}
