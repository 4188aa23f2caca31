// SPDX-License-Identifier: MPL-2.0

//! The writer side without GStreamer: readers, surfaces, who holds what, and the rules that keep
//! the writer from ever waiting for a reader.
//!
//! * Every reader gets each surface's fd once; then only small frame records.
//! * A reader holds a surface from the frame record until its `Release`. A reader may hold at
//!   most `max_outstanding` frames; beyond that it is skipped (its frames are dropped).
//! * A reader that holds a frame longer than the release timeout, or whose socket stays full,
//!   is disconnected and everything it held is reclaimed.
//! * Sends are non-blocking; a small per-reader queue absorbs a momentarily full socket for
//!   control messages, frame records are dropped instead of queued.
//!
//! `H` is whatever must stay alive while a reader looks at an external (pass-through) surface —
//! the upstream `gst::Buffer` in the element.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::platform::{self, Channel, Mapping, Received};
use crate::wire::{self, FrameRecord, Message, Role, error_code};

/// Control messages a reader may have waiting before it is considered dead.
const MAX_QUEUED: usize = 64;
/// External (pass-through) surfaces remembered for re-use before the oldest idle one is retired.
const MAX_EXTERNAL: usize = 64;

/// Counters exposed as the element's `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames rendered.
    pub frames: u64,
    /// Frames copied into a writer-owned surface (1 copy each).
    pub copies: u64,
    /// Frames sent by passing the upstream fd on (0 copies).
    pub zero_copy: u64,
    /// Frame records not delivered to a reader (summed over readers), or frames not sent at all
    /// because no surface was free.
    pub dropped: u64,
    /// Readers disconnected for not releasing in time or not reading their socket.
    pub evicted: u64,
    /// Readers currently connected and past the handshake.
    pub readers: u64,
    /// Surfaces currently known (writer-owned + external).
    pub surfaces: u64,
}

/// Where a frame's bytes are.
pub enum FrameSource<'a, H> {
    /// Already in fd memory (memfd / DMA-BUF): pass the fd on, keep `hold` alive while readers
    /// look at it.
    Fd {
        fd: BorrowedFd<'a>,
        offset: u64,
        size: u64,
        hold: H,
    },
    /// Plain memory: copied into a writer-owned surface.
    Bytes(&'a [u8]),
}

/// Timing and layout of a frame (everything in a record except surface and offset).
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameInfo {
    pub pts: u64,
    pub dts: u64,
    pub duration: u64,
    pub flags: u32,
    pub n_planes: u32,
    pub plane_offsets: [u64; wire::MAX_PLANES],
    pub strides: [i32; wire::MAX_PLANES],
}

enum ReaderState {
    AwaitHello,
    Ready,
}

struct ReaderConn {
    id: u64,
    chan: Channel,
    state: ReaderState,
    connected_at: Instant,
    announced: Vec<u32>,
    caps_sent: Option<u32>,
    queue: VecDeque<(Vec<u8>, Option<Arc<OwnedFd>>)>,
    /// (surface, seq, since) of frames this reader holds.
    holds: Vec<(u32, u64, Instant)>,
}

struct SurfaceEntry<H> {
    fd: Arc<OwnedFd>,
    size: u64,
    /// Writer-owned surfaces have a writable mapping; external ones don't.
    map: Option<Mapping>,
    /// External surfaces: (dev, inode) of the fd.
    identity: Option<(u64, u64)>,
    /// (reader, seq) pairs holding this surface.
    holders: Vec<(u64, u64)>,
    /// What keeps an external surface's frame alive, per seq.
    keep: Vec<(u64, H)>,
    last_used: u64,
}

/// Settings the hub needs.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Writer-owned surfaces in the pool.
    pub surfaces: usize,
    /// Frames one reader may hold at once.
    pub max_outstanding: usize,
    /// Time a reader may hold a frame (and finish its handshake) before it is disconnected.
    pub release_timeout: Duration,
}

/// The writer's view of all readers and surfaces.
pub struct Hub<H> {
    config: HubConfig,
    session: u64,
    readers: Vec<ReaderConn>,
    next_reader_id: u64,
    surfaces: HashMap<u32, SurfaceEntry<H>>,
    pool: Vec<u32>,
    next_surface_id: u32,
    caps: Option<(u32, String)>,
    seq: u64,
    stats: Stats,
    /// Messages worth a log line (the element drains and logs them).
    pub log: Vec<String>,
    buf: Vec<u8>,
}

impl<H> Hub<H> {
    pub fn new(config: HubConfig) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Hub {
            config,
            session: now ^ ((std::process::id() as u64) << 32),
            readers: Vec::new(),
            next_reader_id: 1,
            surfaces: HashMap::new(),
            pool: Vec::new(),
            next_surface_id: 1,
            caps: None,
            seq: 0,
            stats: Stats::default(),
            log: Vec::new(),
            buf: vec![0u8; wire::MAX_MESSAGE_LEN],
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.readers = self.ready_readers() as u64;
        s.surfaces = self.surfaces.len() as u64;
        s
    }

    pub fn ready_readers(&self) -> usize {
        self.readers
            .iter()
            .filter(|r| matches!(r.state, ReaderState::Ready))
            .count()
    }

    /// Raw fds to poll for reader input, with reader ids.
    pub fn reader_fds(&self) -> Vec<(u64, std::os::fd::RawFd)> {
        self.readers
            .iter()
            .map(|r| (r.id, r.chan.raw_fd()))
            .collect()
    }

    /// Set the caps string of the following frames.
    pub fn set_caps(&mut self, caps: String) {
        if self.caps.as_ref().is_some_and(|(_, c)| *c == caps) {
            return;
        }
        let id = self.caps.as_ref().map(|(id, _)| id + 1).unwrap_or(1);
        self.caps = Some((id, caps));
    }

    /// Take a newly connected reader: greet it, wait for its hello.
    pub fn add_reader(&mut self, chan: Channel) {
        let id = self.next_reader_id;
        self.next_reader_id += 1;
        let mut r = ReaderConn {
            id,
            chan,
            state: ReaderState::AwaitHello,
            connected_at: Instant::now(),
            announced: Vec::new(),
            caps_sent: None,
            queue: VecDeque::new(),
            holds: Vec::new(),
        };
        let hello = Message::Hello {
            role: Role::Writer,
            pid: std::process::id(),
            session: self.session,
        };
        if send_or_queue(&mut r, hello.encode(), None).is_ok() {
            self.log.push(format!("reader {id} connected"));
            self.readers.push(r);
        }
    }

    /// Read everything reader `id` sent. Returns false if the reader went away.
    pub fn service_reader(&mut self, id: u64) -> bool {
        let Some(idx) = self.readers.iter().position(|r| r.id == id) else {
            return false;
        };
        loop {
            let got = self.readers[idx].chan.recv(&mut self.buf);
            let (len, _fds) = match got {
                Ok(Received::Message { len, fds }) => (len, fds),
                Ok(Received::WouldBlock) => return true,
                Ok(Received::Closed) => {
                    self.drop_reader(id, "disconnected");
                    return false;
                }
                Err(e) => {
                    self.drop_reader(id, &format!("socket error: {e}"));
                    return false;
                }
            };
            match Message::decode(&self.buf[..len]) {
                Ok(Message::Hello {
                    role: Role::Reader, ..
                }) => {
                    self.readers[idx].state = ReaderState::Ready;
                    self.log.push(format!("reader {id} ready"));
                }
                Ok(Message::Release { surface, seq }) => self.release(id, surface, seq),
                Ok(Message::Error { message, .. }) => {
                    self.drop_reader(id, &format!("reader reported: {message}"));
                    return false;
                }
                Ok(other) => {
                    self.refuse(
                        id,
                        error_code::PROTOCOL,
                        &format!("unexpected {:?}", other.kind()),
                    );
                    return false;
                }
                Err(e @ wire::DecodeError::VersionMismatch { .. }) => {
                    let text = format!(
                        "surfacesink: {e}; use a reader built for surface protocol version {}",
                        wire::PROTOCOL_VERSION
                    );
                    self.refuse(id, error_code::VERSION_MISMATCH, &text);
                    return false;
                }
                Err(e) => {
                    self.refuse(id, error_code::PROTOCOL, &format!("surfacesink: {e}"));
                    return false;
                }
            }
        }
    }

    fn refuse(&mut self, id: u64, code: u32, text: &str) {
        if let Some(r) = self.readers.iter().find(|r| r.id == id) {
            let _ = r.chan.send(
                &Message::Error {
                    code,
                    message: text.to_string(),
                }
                .encode(),
                None,
            );
        }
        self.drop_reader(id, text);
    }

    /// Disconnect a reader and reclaim everything it held.
    pub fn drop_reader(&mut self, id: u64, why: &str) {
        let Some(idx) = self.readers.iter().position(|r| r.id == id) else {
            return;
        };
        let r = self.readers.remove(idx);
        for (surface, seq, _) in r.holds {
            self.unhold(id, surface, seq);
        }
        self.log.push(format!("reader {id} dropped: {why}"));
    }

    fn release(&mut self, reader: u64, surface: u32, seq: u64) {
        if let Some(r) = self.readers.iter_mut().find(|r| r.id == reader) {
            let before = r.holds.len();
            r.holds.retain(|(s, q, _)| !(*s == surface && *q == seq));
            if r.holds.len() != before {
                self.unhold(reader, surface, seq);
            }
        }
    }

    fn unhold(&mut self, reader: u64, surface: u32, seq: u64) {
        if let Some(s) = self.surfaces.get_mut(&surface) {
            s.holders.retain(|(r, q)| !(*r == reader && *q == seq));
            if !s.holders.iter().any(|(_, q)| *q == seq) {
                s.keep.retain(|(q, _)| *q != seq);
            }
        }
    }

    /// Disconnect readers that hold a frame, or sit in the handshake, longer than the release
    /// timeout. Returns how many were evicted.
    pub fn reclaim(&mut self, now: Instant) -> usize {
        let timeout = self.config.release_timeout;
        let late: Vec<(u64, String)> = self
            .readers
            .iter()
            .filter_map(|r| {
                let oldest = r.holds.iter().map(|(_, _, t)| *t).min();
                match (&r.state, oldest) {
                    (ReaderState::AwaitHello, _)
                        if now.duration_since(r.connected_at) > timeout =>
                    {
                        Some((
                            r.id,
                            format!(
                                "sent no hello within {} ms (the writer's release-timeout)",
                                timeout.as_millis()
                            ),
                        ))
                    }
                    (_, Some(t)) if now.duration_since(t) > timeout => Some((
                        r.id,
                        format!(
                            "held a surface for more than {} ms without releasing it",
                            timeout.as_millis()
                        ),
                    )),
                    _ => None,
                }
            })
            .collect();
        for (id, why) in &late {
            if let Some(r) = self.readers.iter().find(|r| r.id == *id) {
                let _ = r.chan.send(
                    &Message::Error {
                        code: error_code::RELEASE_TIMEOUT,
                        message: format!("surfacesink disconnected this reader: it {why}"),
                    }
                    .encode(),
                    None,
                );
            }
            self.stats.evicted += 1;
            self.drop_reader(*id, why);
        }
        late.len()
    }

    /// Publish one frame to every ready reader. Never blocks.
    pub fn publish(&mut self, source: FrameSource<'_, H>, info: FrameInfo) -> io::Result<()> {
        self.seq += 1;
        self.stats.frames += 1;
        let seq = self.seq;
        self.reclaim(Instant::now());
        self.flush_queues();

        let max_out = self.config.max_outstanding.max(1);
        let ready: Vec<u64> = self
            .readers
            .iter()
            .filter(|r| matches!(r.state, ReaderState::Ready))
            .map(|r| r.id)
            .collect();
        let eligible: Vec<u64> = self
            .readers
            .iter()
            .filter(|r| matches!(r.state, ReaderState::Ready) && r.holds.len() < max_out)
            .map(|r| r.id)
            .collect();
        self.stats.dropped += (ready.len() - eligible.len()) as u64;
        if eligible.is_empty() {
            return Ok(());
        }

        let (surface_id, offset, size, hold) = match source {
            FrameSource::Fd {
                fd,
                offset,
                size,
                hold,
            } => {
                let id = self.external_surface(fd)?;
                self.stats.zero_copy += 1;
                (id, offset, size, Some(hold))
            }
            FrameSource::Bytes(bytes) => match self.free_pool_surface(bytes.len())? {
                Some(id) => {
                    if let Some(map) = self.surfaces.get_mut(&id).and_then(|s| s.map.as_mut()) {
                        map.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
                    }
                    self.stats.copies += 1;
                    (id, 0, bytes.len() as u64, None)
                }
                None => {
                    self.stats.dropped += eligible.len() as u64;
                    return Ok(());
                }
            },
        };

        let caps = self.caps.clone();
        let record = Message::Frame(FrameRecord {
            seq,
            surface: surface_id,
            caps_id: caps.as_ref().map(|(id, _)| *id).unwrap_or(0),
            pts: info.pts,
            dts: info.dts,
            duration: info.duration,
            flags: info.flags,
            n_planes: info.n_planes,
            offset,
            size,
            plane_offsets: info.plane_offsets,
            strides: info.strides,
        })
        .encode();
        let (fd, surface_size) = match self.surfaces.get_mut(&surface_id) {
            Some(s) => {
                s.last_used = seq;
                (s.fd.clone(), s.size)
            }
            None => return Ok(()),
        };

        let mut holders = Vec::new();
        let mut dead = Vec::new();
        let now = Instant::now();
        for r in self.readers.iter_mut().filter(|r| eligible.contains(&r.id)) {
            let mut ok = true;
            if let Some((caps_id, caps_str)) = &caps
                && r.caps_sent != Some(*caps_id)
            {
                let m = Message::Caps {
                    caps_id: *caps_id,
                    caps: caps_str.clone(),
                };
                ok &= send_or_queue(r, m.encode(), None).is_ok();
                r.caps_sent = Some(*caps_id);
            }
            if !r.announced.contains(&surface_id) {
                let m = Message::Surface {
                    surface: surface_id,
                    size: surface_size,
                };
                ok &= send_or_queue(r, m.encode(), Some(fd.clone())).is_ok();
                r.announced.push(surface_id);
            }
            if !ok {
                dead.push(r.id);
                continue;
            }
            // Frame records are never queued: a reader whose socket is full skips this frame.
            if !r.queue.is_empty() {
                self.stats.dropped += 1;
                continue;
            }
            match r.chan.send(&record, None) {
                Ok(()) => {
                    r.holds.push((surface_id, seq, now));
                    holders.push((r.id, seq));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stats.dropped += 1,
                Err(_) => dead.push(r.id),
            }
        }
        if let Some(s) = self.surfaces.get_mut(&surface_id) {
            if !holders.is_empty()
                && let Some(h) = hold
            {
                s.keep.push((seq, h));
            }
            s.holders.extend(holders);
        }
        for id in dead {
            self.drop_reader(id, "connection lost");
        }
        Ok(())
    }

    /// Send end-of-stream to every ready reader.
    pub fn eos(&mut self) {
        self.flush_queues();
        let mut dead = Vec::new();
        for r in self
            .readers
            .iter_mut()
            .filter(|r| matches!(r.state, ReaderState::Ready))
        {
            if send_or_queue(r, Message::Eos.encode(), None).is_err() {
                dead.push(r.id);
            }
        }
        for id in dead {
            self.drop_reader(id, "connection lost");
        }
    }

    /// Retry queued control messages; readers whose queue overflowed are dropped.
    pub fn flush_queues(&mut self) {
        let mut dead = Vec::new();
        for r in self.readers.iter_mut() {
            if flush(r).is_err() {
                dead.push(r.id);
            }
        }
        for id in dead {
            self.stats.evicted += 1;
            self.drop_reader(id, "socket full or broken");
        }
    }

    /// Forget every reader and surface (element stop).
    pub fn clear(&mut self) {
        self.flush_queues();
        self.readers.clear();
        self.surfaces.clear();
        self.pool.clear();
    }

    fn new_surface_id(&mut self) -> u32 {
        let id = self.next_surface_id;
        self.next_surface_id = self.next_surface_id.wrapping_add(1).max(1);
        id
    }

    fn retire(&mut self, id: u32) {
        self.surfaces.remove(&id);
        self.pool.retain(|p| *p != id);
        let msg = Message::Retire { surface: id }.encode();
        let mut dead = Vec::new();
        for r in self.readers.iter_mut() {
            if let Some(pos) = r.announced.iter().position(|s| *s == id) {
                r.announced.swap_remove(pos);
                if send_or_queue(r, msg.clone(), None).is_err() {
                    dead.push(r.id);
                }
            }
        }
        for id in dead {
            self.drop_reader(id, "connection lost");
        }
    }

    /// The surface id for an upstream fd (registered on first sight, by inode).
    fn external_surface(&mut self, fd: BorrowedFd<'_>) -> io::Result<u32> {
        let identity = platform::surface_identity(fd)?;
        if let Some((id, _)) = self
            .surfaces
            .iter()
            .find(|(_, s)| s.identity == Some(identity))
        {
            return Ok(*id);
        }
        let externals: Vec<(u32, u64, bool)> = self
            .surfaces
            .iter()
            .filter(|(_, s)| s.identity.is_some())
            .map(|(id, s)| (*id, s.last_used, s.holders.is_empty()))
            .collect();
        if externals.len() >= MAX_EXTERNAL
            && let Some((old, _, _)) = externals
                .iter()
                .filter(|(_, _, idle)| *idle)
                .min_by_key(|(_, used, _)| *used)
        {
            self.retire(*old);
        }
        let size = platform::surface_size(fd)?;
        let dup = fd.try_clone_to_owned()?;
        let id = self.new_surface_id();
        self.surfaces.insert(
            id,
            SurfaceEntry {
                fd: Arc::new(dup),
                size,
                map: None,
                identity: Some(identity),
                holders: Vec::new(),
                keep: Vec::new(),
                last_used: self.seq,
            },
        );
        Ok(id)
    }

    /// A writer-owned surface of at least `size` bytes that no reader holds, creating or
    /// replacing one if the pool allows. `None` if every surface is held.
    fn free_pool_surface(&mut self, size: usize) -> io::Result<Option<u32>> {
        let mut too_small = None;
        for id in &self.pool {
            if let Some(s) = self.surfaces.get(id)
                && s.holders.is_empty()
            {
                if s.size as usize >= size {
                    return Ok(Some(*id));
                }
                too_small = Some(*id);
            }
        }
        if self.pool.len() >= self.config.surfaces.max(1) {
            match too_small {
                Some(id) => self.retire(id),
                None => return Ok(None),
            }
        }
        let fd = platform::create_memfd("surfacesink", size)?;
        let map = Mapping::map(fd.as_fd(), size, true)?;
        let id = self.new_surface_id();
        self.surfaces.insert(
            id,
            SurfaceEntry {
                fd: Arc::new(fd),
                size: size as u64,
                map: Some(map),
                identity: None,
                holders: Vec::new(),
                keep: Vec::new(),
                last_used: self.seq,
            },
        );
        self.pool.push(id);
        Ok(Some(id))
    }
}

fn flush(r: &mut ReaderConn) -> io::Result<()> {
    while let Some((msg, fd)) = r.queue.front() {
        match r.chan.send(msg, fd.as_ref().map(|f| f.as_fd())) {
            Ok(()) => {
                r.queue.pop_front();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if r.queue.len() > MAX_QUEUED {
                    return Err(e);
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn send_or_queue(r: &mut ReaderConn, msg: Vec<u8>, fd: Option<Arc<OwnedFd>>) -> io::Result<()> {
    r.queue.push_back((msg, fd));
    flush(r)
}

#[cfg(test)]
mod tests;
