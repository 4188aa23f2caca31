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
mod tests;
