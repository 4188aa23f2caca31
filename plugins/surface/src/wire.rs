// SPDX-License-Identifier: MPL-2.0

//! The surface wire protocol: message encoding and decoding, with no I/O and no GStreamer types.
//!
//! Every message is one datagram of a `SOCK_SEQPACKET` Unix socket (or, on a stream transport,
//! a length-delimited record) made of a fixed 12-byte header and a kind-specific payload, all
//! integers little-endian:
//!
//! ```text
//! offset size  field
//!  0     4     magic    b"VCSF"
//!  4     2     version  PROTOCOL_VERSION (the header layout itself never changes)
//!  6     2     kind     MessageKind
//!  8     4     length   payload length in bytes
//! 12     ...   payload
//! ```
//!
//! See the crate README for the payload of each kind.

use std::fmt;

/// The four bytes every message starts with.
pub const MAGIC: [u8; 4] = *b"VCSF";
/// The protocol version this crate speaks. Peers with another version are refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 12;
/// Upper bound for one message (a caps string is the largest payload).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Planes carried in a frame record.
pub const MAX_PLANES: usize = 4;
/// "No timestamp" in the pts/dts/duration fields.
pub const NO_TIME: u64 = u64::MAX;

/// Message kinds (the `kind` header field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MessageKind {
    Hello = 1,
    Caps = 2,
    Surface = 3,
    Frame = 4,
    Retire = 5,
    Eos = 6,
    Release = 7,
    Error = 8,
}

impl MessageKind {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Caps,
            3 => Self::Surface,
            4 => Self::Frame,
            5 => Self::Retire,
            6 => Self::Eos,
            7 => Self::Release,
            8 => Self::Error,
            _ => return None,
        })
    }
}

/// Who sent a `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Role {
    Writer = 0,
    Reader = 1,
}

/// One frame: which surface holds it, how it is laid out, and its timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameRecord {
    /// Frame sequence number of the writer (counts every rendered frame, so gaps mean skips).
    pub seq: u64,
    /// The surface holding the frame (announced earlier with a `Surface` message).
    pub surface: u32,
    /// The caps the frame has (announced earlier with a `Caps` message).
    pub caps_id: u32,
    pub pts: u64,
    pub dts: u64,
    pub duration: u64,
    /// `GstBufferFlags` bits of the writer's buffer.
    pub flags: u32,
    /// Number of valid entries in `plane_offsets`/`strides` (0 for non-video data).
    pub n_planes: u32,
    /// Byte offset of the frame inside the surface.
    pub offset: u64,
    /// Frame size in bytes.
    pub size: u64,
    /// Plane offsets relative to `offset`.
    pub plane_offsets: [u64; MAX_PLANES],
    pub strides: [i32; MAX_PLANES],
}

const FRAME_PAYLOAD_LEN: usize =
    8 + 4 + 4 + 8 * 3 + 4 + 4 + 8 + 8 + 8 * MAX_PLANES + 4 * MAX_PLANES;

/// A protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message on both sides. `session` identifies one writer run (a restarted writer has
    /// another), `pid` the sending process.
    Hello { role: Role, pid: u32, session: u64 },
    /// The caps string of `caps_id`, sent before the first frame that uses it.
    Caps { caps_id: u32, caps: String },
    /// Surface `surface` of `size` bytes; the message carries its fd (SCM_RIGHTS). Sent once per
    /// surface per reader.
    Surface { surface: u32, size: u64 },
    /// A frame is ready in a surface. The reader must answer with `Release` when done with it.
    Frame(FrameRecord),
    /// The writer no longer uses `surface`; the reader may unmap it.
    Retire { surface: u32 },
    /// End of stream.
    Eos,
    /// Reader to writer: the frame `seq` in `surface` may be overwritten.
    Release { surface: u32, seq: u64 },
    /// Either side: a fatal problem, explained in `message`, before closing.
    Error { code: u32, message: String },
}

/// `Error` codes.
pub mod error_code {
    /// The peer speaks another protocol version.
    pub const VERSION_MISMATCH: u32 = 1;
    /// The reader held surfaces longer than the writer's release timeout.
    pub const RELEASE_TIMEOUT: u32 = 2;
    /// The peer sent something that is not valid protocol.
    pub const PROTOCOL: u32 = 3;
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header or the announced payload.
    Truncated {
        needed: usize,
        got: usize,
    },
    /// Not our magic: the peer is not a surface endpoint.
    BadMagic([u8; 4]),
    /// Same protocol, other version.
    VersionMismatch {
        theirs: u16,
    },
    UnknownKind(u16),
    /// A payload that does not fit its kind.
    BadPayload(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, got } => {
                write!(f, "truncated message: needed {needed} bytes, got {got}")
            }
            Self::BadMagic(m) => write!(
                f,
                "peer is not a surface endpoint (magic {m:02x?}, expected {MAGIC:02x?})"
            ),
            Self::VersionMismatch { theirs } => write!(
                f,
                "protocol version mismatch: peer speaks version {theirs}, we speak version {PROTOCOL_VERSION}"
            ),
            Self::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            Self::BadPayload(what) => write!(f, "malformed {what} message"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn header(out: &mut Vec<u8>, kind: MessageKind, payload_len: usize) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&(kind as u16).to_le_bytes());
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
}

impl Message {
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::Hello { .. } => MessageKind::Hello,
            Self::Caps { .. } => MessageKind::Caps,
            Self::Surface { .. } => MessageKind::Surface,
            Self::Frame(_) => MessageKind::Frame,
            Self::Retire { .. } => MessageKind::Retire,
            Self::Eos => MessageKind::Eos,
            Self::Release { .. } => MessageKind::Release,
            Self::Error { .. } => MessageKind::Error,
        }
    }

    /// Encode into a fresh buffer (header + payload).
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(FRAME_PAYLOAD_LEN);
        match self {
            Self::Hello { role, pid, session } => {
                p.extend_from_slice(&(*role as u32).to_le_bytes());
                p.extend_from_slice(&pid.to_le_bytes());
                p.extend_from_slice(&session.to_le_bytes());
            }
            Self::Caps { caps_id, caps } => {
                p.extend_from_slice(&caps_id.to_le_bytes());
                p.extend_from_slice(caps.as_bytes());
            }
            Self::Surface { surface, size } => {
                p.extend_from_slice(&surface.to_le_bytes());
                p.extend_from_slice(&0u32.to_le_bytes());
                p.extend_from_slice(&size.to_le_bytes());
            }
            Self::Frame(f) => {
                p.extend_from_slice(&f.seq.to_le_bytes());
                p.extend_from_slice(&f.surface.to_le_bytes());
                p.extend_from_slice(&f.caps_id.to_le_bytes());
                p.extend_from_slice(&f.pts.to_le_bytes());
                p.extend_from_slice(&f.dts.to_le_bytes());
                p.extend_from_slice(&f.duration.to_le_bytes());
                p.extend_from_slice(&f.flags.to_le_bytes());
                p.extend_from_slice(&f.n_planes.to_le_bytes());
                p.extend_from_slice(&f.offset.to_le_bytes());
                p.extend_from_slice(&f.size.to_le_bytes());
                for o in f.plane_offsets {
                    p.extend_from_slice(&o.to_le_bytes());
                }
                for s in f.strides {
                    p.extend_from_slice(&s.to_le_bytes());
                }
            }
            Self::Retire { surface } => p.extend_from_slice(&surface.to_le_bytes()),
            Self::Eos => {}
            Self::Release { surface, seq } => {
                p.extend_from_slice(&surface.to_le_bytes());
                p.extend_from_slice(&0u32.to_le_bytes());
                p.extend_from_slice(&seq.to_le_bytes());
            }
            Self::Error { code, message } => {
                p.extend_from_slice(&code.to_le_bytes());
                p.extend_from_slice(message.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(HEADER_LEN + p.len());
        header(&mut out, self.kind(), p.len());
        out.extend_from_slice(&p);
        out
    }

    /// Decode one message from `buf` (exactly one datagram). Trailing bytes beyond the announced
    /// payload are ignored, so a newer minor revision may append fields.
    ///
    /// An `Error` message is decoded even from a peer of another version (so its explanation
    /// reaches the user); any other message of another version is a [`DecodeError::VersionMismatch`].
    pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                needed: HEADER_LEN,
                got: buf.len(),
            });
        }
        let magic = [buf[0], buf[1], buf[2], buf[3]];
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([buf[4], buf[5]]);
        let kind_raw = u16::from_le_bytes([buf[6], buf[7]]);
        let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        if buf.len() < HEADER_LEN + len {
            return Err(DecodeError::Truncated {
                needed: HEADER_LEN + len,
                got: buf.len(),
            });
        }
        let kind = MessageKind::from_u16(kind_raw);
        if version != PROTOCOL_VERSION && kind != Some(MessageKind::Error) {
            return Err(DecodeError::VersionMismatch { theirs: version });
        }
        let kind = kind.ok_or(DecodeError::UnknownKind(kind_raw))?;
        let mut r = Reader {
            buf: &buf[HEADER_LEN..HEADER_LEN + len],
            what: kind_name(kind),
        };
        let msg = match kind {
            MessageKind::Hello => {
                let role = match r.u32()? {
                    0 => Role::Writer,
                    1 => Role::Reader,
                    _ => return Err(DecodeError::BadPayload("hello")),
                };
                Message::Hello {
                    role,
                    pid: r.u32()?,
                    session: r.u64()?,
                }
            }
            MessageKind::Caps => Message::Caps {
                caps_id: r.u32()?,
                caps: r.rest_str()?,
            },
            MessageKind::Surface => {
                let surface = r.u32()?;
                let _reserved = r.u32()?;
                Message::Surface {
                    surface,
                    size: r.u64()?,
                }
            }
            MessageKind::Frame => {
                let mut f = FrameRecord {
                    seq: r.u64()?,
                    surface: r.u32()?,
                    caps_id: r.u32()?,
                    pts: r.u64()?,
                    dts: r.u64()?,
                    duration: r.u64()?,
                    flags: r.u32()?,
                    n_planes: r.u32()?,
                    offset: r.u64()?,
                    size: r.u64()?,
                    ..Default::default()
                };
                for o in f.plane_offsets.iter_mut() {
                    *o = r.u64()?;
                }
                for s in f.strides.iter_mut() {
                    *s = r.u32()? as i32;
                }
                if f.n_planes as usize > MAX_PLANES {
                    return Err(DecodeError::BadPayload("frame"));
                }
                Message::Frame(f)
            }
            MessageKind::Retire => Message::Retire { surface: r.u32()? },
            MessageKind::Eos => Message::Eos,
            MessageKind::Release => {
                let surface = r.u32()?;
                let _reserved = r.u32()?;
                Message::Release {
                    surface,
                    seq: r.u64()?,
                }
            }
            MessageKind::Error => Message::Error {
                code: r.u32()?,
                message: r.rest_str()?,
            },
        };
        Ok(msg)
    }
}

/// Caps ids a reader remembers at once; a writer that announces more evicts the oldest (an honest
/// writer uses one caps id at a time, plus the few of a renegotiation).
pub const MAX_CAPS_IDS: usize = 16;
/// Surfaces a reader keeps mapped at once (the writer's pool holds at most 64 own and 64
/// pass-through surfaces); a writer announcing more without retiring any is refused.
pub const MAX_SURFACES: usize = 256;

/// What one plane of a frame needs, from its caps: `rows` rows of at least `row_bytes` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlaneNeed {
    pub rows: u64,
    pub row_bytes: u64,
}

/// Why a frame record does not fit its surface or its caps. Every size the writer declares is a
/// claim; these are checked against the surface's real size and the caps before the frame's
/// bytes are exposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// `offset + size` lies beyond the surface (or overflows).
    BeyondSurface {
        offset: u64,
        size: u64,
        surface_len: u64,
    },
    /// A frame without plane layout is smaller than its caps' frame size.
    SmallerThanCaps { size: u64, needed: u64 },
    /// A plane's stride is negative or shorter than one row of the caps.
    BadStride {
        plane: usize,
        stride: i32,
        row_bytes: u64,
    },
    /// A plane (offset + stride × rows) ends beyond the frame.
    PlaneBeyondFrame { plane: usize, end: u64, size: u64 },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BeyondSurface {
                offset,
                size,
                surface_len,
            } => write!(
                f,
                "frame at offset {offset} of {size} bytes lies beyond its surface of {surface_len} bytes"
            ),
            Self::SmallerThanCaps { size, needed } => write!(
                f,
                "frame of {size} bytes is smaller than its caps need ({needed} bytes)"
            ),
            Self::BadStride {
                plane,
                stride,
                row_bytes,
            } => write!(
                f,
                "plane {plane} has stride {stride}, less than one row of its caps ({row_bytes} bytes)"
            ),
            Self::PlaneBeyondFrame { plane, end, size } => write!(
                f,
                "plane {plane} ends at byte {end}, beyond the frame of {size} bytes"
            ),
        }
    }
}

impl std::error::Error for LayoutError {}

impl FrameRecord {
    /// The frame's bytes inside a surface of `surface_len` bytes (checked arithmetic).
    pub fn range_in(&self, surface_len: u64) -> Result<std::ops::Range<usize>, LayoutError> {
        let err = LayoutError::BeyondSurface {
            offset: self.offset,
            size: self.size,
            surface_len,
        };
        match self.offset.checked_add(self.size) {
            Some(end) if end <= surface_len => {
                let start = usize::try_from(self.offset).map_err(|_| err.clone())?;
                let end = usize::try_from(end).map_err(|_| err)?;
                Ok(start..end)
            }
            _ => Err(err),
        }
    }

    /// Check that the frame holds what its caps describe. With a plane layout matching the caps
    /// (`n_planes == planes.len()`) every plane must fit: `plane_offset + stride × rows <= size`
    /// with `stride >= row_bytes`; without one (the reader then assumes the caps' default
    /// layout) the frame must be at least `default_size` bytes.
    pub fn check_layout(&self, planes: &[PlaneNeed], default_size: u64) -> Result<(), LayoutError> {
        let n = self.n_planes as usize;
        if n == 0 || n != planes.len() || n > MAX_PLANES {
            if self.size < default_size {
                return Err(LayoutError::SmallerThanCaps {
                    size: self.size,
                    needed: default_size,
                });
            }
            return Ok(());
        }
        for (i, need) in planes.iter().enumerate() {
            let stride = self.strides[i];
            if stride < 0 || (stride as u64) < need.row_bytes {
                return Err(LayoutError::BadStride {
                    plane: i,
                    stride,
                    row_bytes: need.row_bytes,
                });
            }
            let end = (stride as u64)
                .checked_mul(need.rows)
                .and_then(|b| b.checked_add(self.plane_offsets[i]));
            match end {
                Some(end) if end <= self.size => {}
                _ => {
                    return Err(LayoutError::PlaneBeyondFrame {
                        plane: i,
                        end: end.unwrap_or(u64::MAX),
                        size: self.size,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A small table of the most recent `capacity` ids (caps ids on the reader side): inserting a
/// new id when full evicts the oldest, so a writer cannot make it grow.
#[derive(Debug, Clone)]
pub struct RecentIds<T> {
    capacity: usize,
    entries: std::collections::VecDeque<(u32, T)>,
}

impl<T> RecentIds<T> {
    pub fn new(capacity: usize) -> Self {
        RecentIds {
            capacity: capacity.max(1),
            entries: std::collections::VecDeque::new(),
        }
    }

    /// Insert or replace `id` (it becomes the newest). Returns the evicted id, if any.
    pub fn insert(&mut self, id: u32, value: T) -> Option<u32> {
        if let Some(pos) = self.entries.iter().position(|(i, _)| *i == id) {
            self.entries.remove(pos);
        }
        let evicted = if self.entries.len() >= self.capacity {
            self.entries.pop_front().map(|(i, _)| i)
        } else {
            None
        };
        self.entries.push_back((id, value));
        evicted
    }

    pub fn get(&self, id: u32) -> Option<&T> {
        self.entries.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn kind_name(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Hello => "hello",
        MessageKind::Caps => "caps",
        MessageKind::Surface => "surface",
        MessageKind::Frame => "frame",
        MessageKind::Retire => "retire",
        MessageKind::Eos => "eos",
        MessageKind::Release => "release",
        MessageKind::Error => "error",
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        if self.buf.len() < N {
            return Err(DecodeError::BadPayload(self.what));
        }
        let (a, rest) = self.buf.split_at(N);
        self.buf = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(a);
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take::<4>()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take::<8>()?))
    }
    fn rest_str(&mut self) -> Result<String, DecodeError> {
        let s = std::str::from_utf8(self.buf).map_err(|_| DecodeError::BadPayload(self.what))?;
        self.buf = &[];
        Ok(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: Message) {
        let bytes = m.encode();
        assert_eq!(Message::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn all_messages_roundtrip() {
        roundtrip(Message::Hello {
            role: Role::Writer,
            pid: 1234,
            session: 0xdead_beef_0000_0001,
        });
        roundtrip(Message::Hello {
            role: Role::Reader,
            pid: 1,
            session: 0,
        });
        roundtrip(Message::Caps {
            caps_id: 7,
            caps: "video/x-raw, format=(string)BGRx, width=(int)64".into(),
        });
        roundtrip(Message::Surface {
            surface: 3,
            size: 8_294_400,
        });
        roundtrip(Message::Frame(FrameRecord {
            seq: 99,
            surface: 2,
            caps_id: 1,
            pts: 1_000_000,
            dts: NO_TIME,
            duration: 33_333_333,
            flags: 0x40,
            n_planes: 3,
            offset: 4096,
            size: 1234,
            plane_offsets: [0, 100, 200, 0],
            strides: [64, 32, 32, 0],
        }));
        roundtrip(Message::Retire { surface: 5 });
        roundtrip(Message::Eos);
        roundtrip(Message::Release {
            surface: 4,
            seq: 77,
        });
        roundtrip(Message::Error {
            code: error_code::RELEASE_TIMEOUT,
            message: "too slow".into(),
        });
    }

    #[test]
    fn frame_record_is_small() {
        let len = Message::Frame(FrameRecord::default()).encode().len();
        assert_eq!(len, HEADER_LEN + FRAME_PAYLOAD_LEN);
        assert!(len < 160, "{len}");
    }

    #[test]
    fn header_layout_is_fixed() {
        let b = Message::Eos.encode();
        assert_eq!(&b[0..4], b"VCSF");
        assert_eq!(u16::from_le_bytes([b[4], b[5]]), PROTOCOL_VERSION);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), MessageKind::Eos as u16);
        assert_eq!(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), 0);
    }

    #[test]
    fn version_mismatch_is_reported_but_errors_still_decode() {
        let mut b = Message::Hello {
            role: Role::Reader,
            pid: 1,
            session: 0,
        }
        .encode();
        b[4] = 9;
        b[5] = 0;
        assert_eq!(
            Message::decode(&b),
            Err(DecodeError::VersionMismatch { theirs: 9 })
        );
        let msg = DecodeError::VersionMismatch { theirs: 9 }.to_string();
        assert!(
            msg.contains("version 9") && msg.contains("version 1"),
            "{msg}"
        );

        let mut e = Message::Error {
            code: error_code::VERSION_MISMATCH,
            message: "go away".into(),
        }
        .encode();
        e[4] = 9;
        assert!(matches!(Message::decode(&e), Ok(Message::Error { .. })));
    }

    #[test]
    fn frame_range_and_layout_are_checked() {
        let f = FrameRecord {
            offset: 100,
            size: 12288,
            ..Default::default()
        };
        assert_eq!(f.range_in(12388), Ok(100..12388));
        let e = f.range_in(12387).unwrap_err();
        assert!(e.to_string().contains("12387 bytes"), "{e}");
        let huge = FrameRecord {
            offset: u64::MAX,
            size: 2,
            ..Default::default()
        };
        assert!(huge.range_in(u64::MAX).is_err(), "overflow is an error");

        // Caps need 64x48 BGRx: 48 rows of 256 bytes.
        let planes = [PlaneNeed {
            rows: 48,
            row_bytes: 256,
        }];
        let small = FrameRecord {
            size: 100,
            ..Default::default()
        };
        let e = small.check_layout(&planes, 12288).unwrap_err();
        assert_eq!(
            e.to_string(),
            "frame of 100 bytes is smaller than its caps need (12288 bytes)"
        );
        let mut good = FrameRecord {
            size: 12288,
            n_planes: 1,
            ..Default::default()
        };
        good.strides[0] = 256;
        assert_eq!(good.check_layout(&planes, 12288), Ok(()));
        let mut shifted = good;
        shifted.plane_offsets[0] = 8000;
        assert!(matches!(
            shifted.check_layout(&planes, 12288),
            Err(LayoutError::PlaneBeyondFrame { plane: 0, .. })
        ));
        let mut thin = good;
        thin.strides[0] = 1;
        assert!(matches!(
            thin.check_layout(&planes, 12288),
            Err(LayoutError::BadStride { stride: 1, .. })
        ));
        let mut negative = good;
        negative.strides[0] = -256;
        assert!(negative.check_layout(&planes, 12288).is_err());
        let mut overflow = good;
        overflow.plane_offsets[0] = u64::MAX - 10;
        assert!(overflow.check_layout(&planes, 12288).is_err());
    }

    #[test]
    fn recent_ids_stay_bounded() {
        let mut t = RecentIds::new(4);
        for id in 0..20_000u32 {
            t.insert(id, id);
        }
        assert_eq!(t.len(), 4);
        assert_eq!(t.get(19_999), Some(&19_999));
        assert_eq!(t.get(19_995), None);
        // Re-inserting an id refreshes it instead of growing the table.
        assert_eq!(t.insert(19_996, 1), None);
        assert_eq!(t.insert(7, 7), Some(19_997));
        assert_eq!(t.get(19_996), Some(&1));
    }

    #[test]
    fn garbage_is_rejected_without_panic() {
        assert!(matches!(
            Message::decode(b"GET / HTTP/1.1\r\n"),
            Err(DecodeError::BadMagic(_))
        ));
        assert!(matches!(
            Message::decode(b"VCSF"),
            Err(DecodeError::Truncated { .. })
        ));
        let mut frame = Message::Frame(FrameRecord::default()).encode();
        // Announce more payload than present.
        frame[8] = 0xff;
        assert!(matches!(
            Message::decode(&frame),
            Err(DecodeError::Truncated { .. })
        ));
        // Shorten the payload below a frame record.
        let mut short = Message::Frame(FrameRecord::default()).encode();
        short.truncate(HEADER_LEN + 10);
        short[8..12].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(
            Message::decode(&short),
            Err(DecodeError::BadPayload("frame"))
        );
        let mut unknown = Message::Eos.encode();
        unknown[6] = 200;
        assert_eq!(
            Message::decode(&unknown),
            Err(DecodeError::UnknownKind(200))
        );
        let mut bad_planes = Message::Frame(FrameRecord::default()).encode();
        // n_planes lives after seq(8)+surface(4)+caps(4)+3*8+flags(4).
        let at = HEADER_LEN + 8 + 4 + 4 + 24 + 4;
        bad_planes[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(
            Message::decode(&bad_planes),
            Err(DecodeError::BadPayload("frame"))
        );
        // Every prefix of every message decodes to an error or a message, never a panic.
        for m in [
            Message::Frame(FrameRecord::default()).encode(),
            Message::Caps {
                caps_id: 1,
                caps: "x".into(),
            }
            .encode(),
        ] {
            for n in 0..m.len() {
                let _ = Message::decode(&m[..n]);
            }
        }
    }
}
