// SPDX-License-Identifier: MPL-2.0
//! surfacesrc's reader side of the protocol: connecting to the writer, what each message does
//! (hello, surfaces, caps, frames, EOS, errors), the checks a frame passes before any byte of it
//! is exposed, and the buffer that hands the surface back when downstream is done with it.
//! `imp.rs` holds the element (settings, state, `create()` acting on the [`Step`]s made here).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use gst::prelude::*;
use gst::subclass::prelude::*;

use vcambridge_common::{live, lock};

use super::{CAT, State, SurfaceSrc};
use crate::platform::{self, Channel, Mapping};
use crate::wire::{
    self, DecodeError, FrameRecord, Message, NO_TIME, PlaneNeed, RecentIds, Role, error_code,
};

/// One connection to a writer and what it told us.
pub(super) struct Conn {
    pub(super) chan: Arc<Channel>,
    pub(super) surfaces: HashMap<u32, Arc<Mapping>>,
    /// The most recent caps ids (bounded: a writer cannot make this table grow).
    pub(super) caps: RecentIds<FrameCaps>,
    greeted: bool,
}

/// Caps announced by the writer, with what a frame of them needs (checked on every frame).
pub(super) struct FrameCaps {
    caps: gst::Caps,
    video: Option<VideoNeeds>,
}

/// Raw video caps: the default frame size and, where the format allows, what each plane needs.
pub(super) struct VideoNeeds {
    info: gst_video::VideoInfo,
    /// `None` for formats whose planes we cannot bound (tiled, palettes): then no writer plane
    /// layout is trusted and the frame must hold the caps' default layout.
    planes: Option<Vec<PlaneNeed>>,
}

impl FrameCaps {
    fn new(caps: gst::Caps) -> Self {
        let video = gst_video::VideoInfo::from_caps(&caps)
            .ok()
            .map(|info| VideoNeeds {
                planes: plane_needs(&info),
                info,
            });
        FrameCaps { caps, video }
    }
}

/// Rows and minimum row length of each plane of `info` (see [`VideoNeeds::planes`]).
fn plane_needs(info: &gst_video::VideoInfo) -> Option<Vec<PlaneNeed>> {
    let finfo = info.format_info();
    if finfo.is_tiled() || finfo.n_components() == 0 {
        return None;
    }
    let mut needs = vec![PlaneNeed::default(); info.n_planes() as usize];
    for c in 0..finfo.n_components() as usize {
        let plane = *finfo.plane().get(c)? as usize;
        let need = needs.get_mut(plane)?;
        let rows = finfo.scale_height(c as u8, info.height()) as u64;
        let pstride = *finfo.pixel_stride().get(c)?;
        let row_bytes = if pstride > 0 {
            pstride as u64 * finfo.scale_width(c as u8, info.width()) as u64
        } else {
            // Packed formats without a per-pixel stride (v210, UYVP, …): the default stride.
            (*info.stride().get(plane)?).max(0) as u64
        };
        need.rows = need.rows.max(rows);
        need.row_bytes = need.row_bytes.max(row_bytes);
    }
    // A plane no component lives in (a palette): not bounded here.
    if needs.iter().any(|n| n.rows == 0) {
        return None;
    }
    Some(needs)
}

/// What handling one message led to (acted upon without the state lock).
pub(super) enum Step {
    Continue,
    Frame(gst::Buffer, Option<gst::Caps>),
    Eos,
    Fatal(gst::ErrorMessage),
}

/// A frame's bytes inside a mapped surface; releases the surface to the writer when dropped
/// (i.e. when the last `gst::Memory` referring to it is freed).
pub(super) struct SurfaceView {
    map: Arc<Mapping>,
    offset: usize,
    len: usize,
    chan: Arc<Channel>,
    surface: u32,
    seq: u64,
}

impl AsRef<[u8]> for SurfaceView {
    fn as_ref(&self) -> &[u8] {
        &self.map.as_slice()[self.offset..self.offset + self.len]
    }
}

impl Drop for SurfaceView {
    fn drop(&mut self) {
        let msg = Message::Release {
            surface: self.surface,
            seq: self.seq,
        };
        // Best effort: a writer that is gone does not need it; one that misses it reclaims the
        // surface after its release timeout.
        let _ = self.chan.send(&msg.encode(), None);
    }
}

pub(super) const FORWARDED_FLAGS: gst::BufferFlags = gst::BufferFlags::DISCONT
    .union(gst::BufferFlags::DELTA_UNIT)
    .union(gst::BufferFlags::HEADER)
    .union(gst::BufferFlags::GAP)
    .union(gst::BufferFlags::DROPPABLE)
    .union(gst::BufferFlags::CORRUPTED)
    .union(gst::BufferFlags::MARKER)
    .union(gst::BufferFlags::NON_DROPPABLE)
    .union(gst::BufferFlags::RESYNC);

impl SurfaceSrc {
    /// Sleep until `fd` (if any) is readable, the element is unlocked, or `timeout` passes.
    pub(super) fn wait(&self, fd: Option<std::os::fd::RawFd>, timeout: Duration) {
        let Some(waker) = lock(&self.waker).clone() else {
            return;
        };
        let mut fds = vec![waker.raw_fd()];
        fds.extend(fd);
        let _ = platform::wait_readable(&fds, timeout);
    }

    pub(super) fn try_connect(
        &self,
        path: &std::path::Path,
    ) -> Result<Option<Conn>, gst::ErrorMessage> {
        let p = platform::display_path(path);
        match Channel::connect(path) {
            Ok(chan) => {
                let hello = Message::Hello {
                    role: Role::Reader,
                    pid: std::process::id(),
                    session: 0,
                };
                if let Err(e) = chan.send(&hello.encode(), None) {
                    gst::debug!(CAT, imp = self, "hello to {p} failed: {e}");
                    return Ok(None);
                }
                Ok(Some(Conn {
                    chan: Arc::new(chan),
                    surfaces: HashMap::new(),
                    caps: RecentIds::new(wire::MAX_CAPS_IDS),
                    greeted: false,
                }))
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::ECONNREFUSED)
                    if std::fs::symlink_metadata(path).is_ok_and(|m| {
                        !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())
                    }) =>
                {
                    Err(gst::error_msg!(
                        gst::ResourceError::OpenRead,
                        ("{p} is not a socket (a regular file or directory is in the way); point socket-path at the surfacesink's socket")
                    ))
                }
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => Ok(None),
                Some(libc::EACCES) | Some(libc::EPERM) => Err(gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    ("permission denied connecting to {p}: the socket is 0600 and owned by the writer's user; run the reader as that user")
                )),
                Some(libc::EPROTOTYPE) | Some(libc::ENOTSOCK) => Err(gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    ("{p} is not a surfacesink socket (wrong socket type)")
                )),
                _ => Err(gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    ("cannot connect to {p}: {e}")
                )),
            },
        }
    }

    /// Handle one received message.
    pub(super) fn handle(
        &self,
        st: &mut State,
        len: usize,
        fds: Vec<std::os::fd::OwnedFd>,
        path: &str,
    ) -> Step {
        let msg = match Message::decode(&st.buf[..len]) {
            Ok(m) => m,
            Err(e @ DecodeError::VersionMismatch { .. }) => {
                return Step::Fatal(gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    ("writer at {path}: {e}; upgrade the older side")
                ));
            }
            Err(e @ DecodeError::BadMagic(_)) => {
                return Step::Fatal(gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    ("{path} is not a surfacesink: {e}")
                ));
            }
            Err(e) => {
                return Step::Fatal(gst::error_msg!(
                    gst::StreamError::Decode,
                    ("bad message from the writer at {path}: {e}")
                ));
            }
        };
        let Some(conn) = st.conn.as_mut() else {
            return Step::Continue;
        };
        match msg {
            Message::Hello {
                role: Role::Writer,
                pid,
                session,
            } => {
                conn.greeted = true;
                if st.last_session.is_some_and(|s| s != session) {
                    gst::info!(CAT, imp = self, "new writer session (pid {pid}) at {path}");
                }
                st.last_session = Some(session);
                Step::Continue
            }
            Message::Caps { caps_id, caps } => match gst::Caps::from_str(&caps) {
                Ok(c) => {
                    if let Some(old) = conn.caps.insert(caps_id, FrameCaps::new(c)) {
                        gst::debug!(
                            CAT,
                            imp = self,
                            "forgot caps id {old} (more than {} announced)",
                            wire::MAX_CAPS_IDS
                        );
                    }
                    Step::Continue
                }
                Err(_) => Step::Fatal(gst::error_msg!(
                    gst::StreamError::Format,
                    ("writer at {path} sent unparsable caps {caps:?}")
                )),
            },
            Message::Surface { surface, size } => {
                let Some(fd) = fds.into_iter().next() else {
                    return Step::Fatal(gst::error_msg!(
                        gst::StreamError::Decode,
                        ("writer at {path} announced surface {surface} without an fd")
                    ));
                };
                let fd = std::os::fd::AsFd::as_fd(&fd);
                // The declared size is a claim: the fd must be one that cannot shrink (a sealed
                // memfd or a DMA-BUF) and hold at least that much.
                if let Err(e) = platform::check_surface(fd, size) {
                    return Step::Fatal(gst::error_msg!(
                        gst::StreamError::Decode,
                        ("writer at {path} sent surface {surface} of {size} bytes that cannot be mapped safely: {e}")
                    ));
                }
                if !conn.surfaces.contains_key(&surface)
                    && conn.surfaces.len() >= wire::MAX_SURFACES
                {
                    return Step::Fatal(gst::error_msg!(
                        gst::StreamError::Decode,
                        (
                            "writer at {path} announced more than {} surfaces without retiring any",
                            wire::MAX_SURFACES
                        )
                    ));
                }
                let Ok(len) = usize::try_from(size) else {
                    return Step::Fatal(gst::error_msg!(
                        gst::StreamError::Decode,
                        ("writer at {path} sent surface {surface} of {size} bytes, more than this process can map")
                    ));
                };
                match Mapping::map(fd, len, false) {
                    Ok(m) => {
                        conn.surfaces.insert(surface, Arc::new(m));
                        Step::Continue
                    }
                    Err(e) => Step::Fatal(gst::error_msg!(
                        gst::ResourceError::Read,
                        ("cannot map surface {surface} ({size} bytes) from {path}: {e}")
                    )),
                }
            }
            Message::Retire { surface } => {
                conn.surfaces.remove(&surface);
                Step::Continue
            }
            Message::Frame(f) => self.frame(st, f, path),
            Message::Eos => Step::Eos,
            Message::Error { code, message } => {
                if code == error_code::RELEASE_TIMEOUT {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Read,
                        ("{message}; reconnecting (let downstream release buffers sooner, or raise the writer's release-timeout)")
                    );
                    st.conn = None;
                    Step::Continue
                } else {
                    Step::Fatal(gst::error_msg!(
                        gst::ResourceError::OpenRead,
                        ("writer at {path} refused this reader: {message}")
                    ))
                }
            }
            Message::Hello { .. } | Message::Release { .. } => Step::Fatal(gst::error_msg!(
                gst::StreamError::Decode,
                (
                    "unexpected {:?} message from the writer at {path}",
                    msg.kind()
                )
            )),
        }
    }

    /// Count a refused frame; the first 10 and then every 1000th become element warnings (a
    /// hostile writer cannot flood the bus), the others debug lines.
    fn reject(&self, st: &mut State, why: &str) -> Step {
        st.rejected += 1;
        if st.rejected <= 10 || st.rejected.is_multiple_of(1000) {
            gst::element_imp_warning!(
                self,
                gst::StreamError::Decode,
                ("{why} ({} frames refused so far)", st.rejected)
            );
        } else {
            gst::debug!(CAT, imp = self, "{why}");
        }
        Step::Continue
    }

    fn frame(&self, st: &mut State, f: FrameRecord, path: &str) -> Step {
        let Some(conn) = st.conn.as_mut() else {
            return Step::Continue;
        };
        let release = |conn: &Conn| {
            let _ = conn.chan.send(
                &Message::Release {
                    surface: f.surface,
                    seq: f.seq,
                }
                .encode(),
                None,
            );
        };
        let Some(map) = conn.surfaces.get(&f.surface).cloned() else {
            gst::warning!(
                CAT,
                imp = self,
                "frame {} in unknown surface {}",
                f.seq,
                f.surface
            );
            release(conn);
            return Step::Continue;
        };
        let range = match f.range_in(map.len() as u64) {
            Ok(r) => r,
            Err(e) => {
                release(conn);
                return Step::Fatal(gst::error_msg!(
                    gst::StreamError::Decode,
                    (
                        "writer at {path} sent frame {} in surface {}: {e}",
                        f.seq,
                        f.surface
                    )
                ));
            }
        };
        let (offset, len) = (range.start, range.len());
        // A frame smaller than its caps (or with planes outside it) would make downstream read
        // beyond the frame: skipped with a warning.
        let checked = match conn.caps.get(f.caps_id) {
            None => Err(format!("unknown caps id {}", f.caps_id)),
            Some(fc) => match &fc.video {
                Some(v) => {
                    let planes = v.planes.as_deref().unwrap_or(&[]);
                    match f.check_layout(planes, v.info.size() as u64) {
                        Ok(()) => {
                            let trusted = v.planes.is_some()
                                && f.n_planes as usize == v.info.n_planes() as usize;
                            Ok((fc.caps.clone(), trusted.then(|| v.info.clone())))
                        }
                        Err(e) => Err(format!("{e} ({})", fc.caps)),
                    }
                }
                None => Ok((fc.caps.clone(), None)),
            },
        };
        let (caps, video_layout) = match checked {
            Ok((caps, layout)) => (Some(caps), layout),
            Err(why) => {
                release(conn);
                return self.reject(
                    st,
                    &format!("skipped frame {} from the writer at {path}: {why}", f.seq),
                );
            }
        };
        let mut buffer = gst::Buffer::new();
        {
            let Some(b) = buffer.get_mut() else {
                return Step::Continue;
            };
            if len > 0 {
                b.append_memory(gst::Memory::from_slice(SurfaceView {
                    map,
                    offset,
                    len,
                    chan: conn.chan.clone(),
                    surface: f.surface,
                    seq: f.seq,
                }));
            } else {
                release(conn);
            }
            let t = |v: u64| (v != NO_TIME).then_some(v);
            // The writer's timestamps, moved onto our running time (vcambridge_common::live).
            let (pts, dts) = st.restamper.stamp(
                t(f.pts),
                t(f.dts),
                live::running_time(self.obj().upcast_ref()),
            );
            b.set_pts(pts);
            b.set_dts(dts);
            b.set_duration(t(f.duration).map(gst::ClockTime::from_nseconds));
            b.set_offset(f.seq);
            let mut flags = gst::BufferFlags::from_bits_truncate(f.flags) & FORWARDED_FLAGS;
            if st.discont {
                flags |= gst::BufferFlags::DISCONT;
                st.discont = false;
            }
            b.set_flags(flags);
            if let Some(info) = video_layout {
                let n = (f.n_planes as usize).min(wire::MAX_PLANES);
                let offsets: Vec<usize> =
                    f.plane_offsets[..n].iter().map(|o| *o as usize).collect();
                if n == info.n_planes() as usize
                    && let Err(e) = gst_video::VideoMeta::add_full(
                        b,
                        gst_video::VideoFrameFlags::empty(),
                        info.format(),
                        info.width(),
                        info.height(),
                        &offsets,
                        &f.strides[..n],
                    )
                {
                    gst::warning!(CAT, imp = self, "video meta: {e}");
                }
            }
        }
        st.frames += 1;
        let new_caps = match (&caps, &st.current_caps) {
            (Some(c), Some(cur)) if c == cur => None,
            (Some(c), _) => Some(c.clone()),
            (None, _) => None,
        };
        Step::Frame(buffer, new_caps)
    }
}
