#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Write frames to vcambridge ``surfacesrc`` readers with the Python standard library only.

The writer side of the surface protocol (see ``plugins/surface/README.md``): listen on a
``SOCK_SEQPACKET`` Unix socket, hand each reader a surface (a memfd **sealed** with
``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``, as readers require) once, then send small frame
records and wait for the reader to release each frame::

    from surface_writer import SurfaceWriter
    with SurfaceWriter("/tmp/cam.sock") as w:
        reader = w.accept()
        surface = reader.new_surface(64 * 48 * 4)
        reader.send_caps("video/x-raw,format=BGRx,width=64,height=48,framerate=30/1")
        for seq in range(1, 31):
            surface.map[:] = bytes([seq]) * len(surface.map)
            reader.send_frame(seq, surface, size=len(surface.map))
            reader.wait_release(seq)

Command line (used by the tests; one JSON object per line on stdout)::

    surface_writer.py SOCKET [--caps CAPS] [--frame-size N] [--frames N] [--attack NAME]

``--attack`` makes it a *hostile* writer for the tests of ``surfacesrc`` (never use it for
anything else): it sends the named bad input, then ``--frames`` good frames on the same
connection (if the reader is still there)::

    oversize       a surface that declares 4x the size of the memfd behind it
    unsealed       an unsealed memfd, truncated to 0 after it was sent, then a frame in it
    sealed-shrink  a sealed memfd; tries to truncate it after sending (the kernel refuses)
    small-frame    frames of 100 bytes (in a 100-byte surface) whose caps need --frame-size,
                   without and with a plane layout (stride 256)
    bad-planes     frames whose plane offset / stride lie outside the frame
    regular-file   a regular file instead of a memfd
    surface-flood  300 surfaces, none retired
    caps-flood     one good frame, 20000 caps messages with new ids (~3 KB each), good frames
"""

import argparse
import fcntl
import json
import mmap
import os
import random
import socket
import struct
import sys
import tempfile
import time

MAGIC = b"VCSF"
PROTOCOL_VERSION = 1
HEADER = struct.Struct("<4sHHI")
MAX_MESSAGE = 64 * 1024
NO_TIME = (1 << 64) - 1
HELLO, CAPS, SURFACE, FRAME, RETIRE, EOS, RELEASE, ERROR = range(1, 9)
ROLE_WRITER, ROLE_READER = 0, 1
FRAME_RECORD = struct.Struct("<QIIQQQIIQQ4Q4i")
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def encode(kind, payload=b""):
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, len(payload)) + payload


class ReaderGone(Exception):
    """The reader closed the connection (or refused us)."""


class Surface:
    """A memfd mapped read-write; ``sealed`` surfaces cannot change size any more."""

    def __init__(self, surface_id, size, sealed=True):
        self.id = surface_id
        self.size = size
        self.fd = os.memfd_create(f"surface_writer-{surface_id}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, size)
        if sealed:
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, SEALS)
        self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def close(self):
        self.map.close()
        os.close(self.fd)


class ReaderConnection:
    def __init__(self, sock, session):
        self.sock = sock
        self.next_surface = 1
        self.next_caps = 1
        self.caps_id = 0
        self.sock.send(encode(HELLO, struct.pack("<IIQ", ROLE_WRITER, os.getpid(), session)))

    def recv(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(MAX_MESSAGE)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            raise ReaderGone("reader closed the connection")
        magic, _version, kind, length = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise ReaderGone(f"not a surface reader (magic {magic!r})")
        return kind, data[HEADER.size:HEADER.size + length]

    def wait_hello(self, timeout=10.0):
        kind, _ = self.recv(timeout)
        if kind != HELLO:
            raise ReaderGone(f"expected a hello, got kind {kind}")

    def send(self, msg, fd=None):
        try:
            if fd is None:
                self.sock.send(msg)
            else:
                socket.send_fds(self.sock, [msg], [fd])
        except (ConnectionResetError, BrokenPipeError) as e:
            raise ReaderGone(str(e)) from e

    def send_caps(self, caps, caps_id=None):
        if caps_id is None:
            caps_id = self.next_caps
            self.next_caps += 1
        self.caps_id = caps_id
        self.send(encode(CAPS, struct.pack("<I", caps_id) + caps.encode()))
        return caps_id

    def new_surface(self, size, sealed=True, declared=None):
        """Create a memfd surface and send it (``declared`` overrides the announced size)."""
        s = Surface(self.next_surface, size, sealed)
        self.next_surface += 1
        self.announce(s.id, s.fd, size if declared is None else declared)
        return s

    def announce(self, surface_id, fd, size):
        self.send(encode(SURFACE, struct.pack("<IIQ", surface_id, 0, size)), fd)

    def send_frame(self, seq, surface, size, offset=0, planes=(), pts=None):
        """``planes``: up to 4 (offset, stride) pairs relative to ``offset``."""
        offsets = [p[0] for p in planes] + [0] * (4 - len(planes))
        strides = [p[1] for p in planes] + [0] * (4 - len(planes))
        sid = surface if isinstance(surface, int) else surface.id
        pts = seq * 33_333_333 if pts is None else pts
        rec = FRAME_RECORD.pack(seq, sid, self.caps_id, pts, NO_TIME, 33_333_333, 0,
                                len(planes), offset, size, *offsets, *strides)
        self.send(encode(FRAME, rec))

    def wait_release(self, seq, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"frame {seq} not released within {timeout} s")
            kind, payload = self.recv(left)
            if kind == RELEASE and struct.unpack_from("<IIQ", payload)[2] == seq:
                return
            if kind == ERROR:
                raise ReaderGone(payload[4:].decode(errors="replace"))

    def eos(self):
        self.send(encode(EOS))


class SurfaceWriter:
    def __init__(self, path):
        self.path = path
        self.session = random.getrandbits(64)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if os.path.exists(path) and _is_stale_socket(path):
            os.unlink(path)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(4)

    def accept(self, timeout=10.0):
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        r = ReaderConnection(conn, self.session)
        r.wait_hello(timeout)
        return r

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_stale_socket(path):
    import stat
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    finally:
        probe.close()
    raise FileExistsError(f"{path} is in use by a running writer")


def fill(surface, seq, size):
    surface.map[:size] = bytes([seq & 0xFF]) * size


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("socket")
    ap.add_argument("--caps", default="video/x-raw,format=BGRx,width=64,height=48,framerate=30/1")
    ap.add_argument("--frame-size", type=int, default=64 * 48 * 4)
    ap.add_argument("--frames", type=int, default=3, help="good frames to send")
    ap.add_argument("--attack", default="none")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--close-at-once", action="store_true",
                    help="after EOS, close without reading what the reader sent (releases)")
    args = ap.parse_args()

    def out(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    size = args.frame_size
    seq = 0
    with SurfaceWriter(args.socket) as w:
        out({"listening": True})
        try:
            r = w.accept(args.timeout)
            out({"reader": True})
            r.send_caps(args.caps)
            a = args.attack
            if a == "oversize":
                s = Surface(r.next_surface, 4096)
                r.next_surface += 1
                r.announce(s.id, s.fd, size * 4)
                seq += 1
                r.send_frame(seq, s, size)
            elif a in ("unsealed", "sealed-shrink"):
                s = r.new_surface(size, sealed=(a == "sealed-shrink"))
                try:
                    os.ftruncate(s.fd, 0)
                    out({"shrink": "done"})
                except OSError as e:
                    out({"shrink": f"refused: {e.strerror}"})
                    sealed = True
                else:
                    sealed = False
                seq += 1
                if not sealed:
                    r.send_frame(seq, s, size)  # in pages that no longer exist
                else:
                    fill(s, seq, size)
                    r.send_frame(seq, s, size)
                    out({"sent": seq})
            elif a == "small-frame":
                s = r.new_surface(100)
                # Without a plane layout, then with one (as writers using GstVideoMeta send).
                for planes in ([], [(0, 256)], [(0, 256)]):
                    seq += 1
                    r.send_frame(seq, s, 100, planes=planes)
                    r.wait_release(seq, args.timeout)
                out({"attacked": a})
            elif a == "bad-planes":
                s = r.new_surface(size)
                for planes in ([(8000, 256)], [(0, 1)], [(0, -256)]):
                    seq += 1
                    r.send_frame(seq, s, size, planes=planes)
                    r.wait_release(seq, args.timeout)
                out({"attacked": a})
            elif a == "regular-file":
                with tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(args.socket))) as f:
                    f.truncate(size)
                    r.announce(r.next_surface, f.fileno(), size)
                    seq += 1
                    r.send_frame(seq, r.next_surface, size)
                    r.next_surface += 1
            elif a == "surface-flood":
                for _ in range(300):
                    s = r.new_surface(4096)
                    s.close()
            elif a == "caps-flood":
                s = r.new_surface(size)
                seq += 1
                fill(s, seq, size)
                r.send_frame(seq, s, size)
                r.wait_release(seq, args.timeout)
                out({"released": seq})
                junk = "x" * 3000
                for i in range(20000):
                    r.send_caps(f"{args.caps},junk=(string){junk}{i}")
                out({"flooded": 20000})
                seq += 1
                fill(s, seq, size)
                r.send_frame(seq, s, size)
                r.wait_release(seq, args.timeout)
                out({"released": seq})
            elif a != "none":
                ap.error(f"unknown attack {a}")
            # Good frames, each in a fresh surface (a reader may keep a frame as long as it
            # likes, e.g. an appsink's preroll; the surface is never overwritten under it).
            for _ in range(args.frames):
                seq += 1
                good = r.new_surface(size)
                fill(good, seq, size)
                r.send_frame(seq, good, size)
                out({"sent": seq})
            r.eos()
            # Let the reader see the EOS before the socket goes away: its first answer, then
            # whatever else it sends (releases) until it goes quiet or hangs up (2 s at most). A
            # socket closed with messages it never read resets the reader's connection, and the
            # EOS still queued for the reader is lost with it.
            if args.close_at_once:
                out({"closed": seq})
                return 0
            try:
                deadline = time.monotonic() + min(args.timeout, 2.0)
                r.recv(min(args.timeout, 2.0))
                while deadline > time.monotonic():
                    r.recv(min(0.2, max(deadline - time.monotonic(), 0.01)))
            except (ReaderGone, socket.timeout, TimeoutError):
                pass
        except ReaderGone as e:
            out({"reader_gone": str(e)})
            return 0
        except (socket.timeout, TimeoutError) as e:
            out({"error": f"timeout: {e}"})
            return 3
    out({"done": seq})
    return 0


if __name__ == "__main__":
    sys.exit(main())
