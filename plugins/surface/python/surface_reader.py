#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Read frames from a vcambridge ``surfacesink`` with the Python standard library only.

The writer hands over each surface (a memfd) once as a file descriptor over a
``SOCK_SEQPACKET`` Unix socket; afterwards every frame is a small record naming the
surface. Map the surface with ``mmap``, read the frame, then release it::

    from surface_reader import SurfaceReader
    with SurfaceReader("/tmp/cam.sock") as r:
        for frame in r.frames():
            pixels = frame.data          # memoryview into the shared surface, no copy
            print(frame.seq, frame.caps, len(pixels))
            r.release(frame)             # the writer may now reuse the surface

Command line (used by the tests; one JSON object per line on stdout)::

    surface_reader.py SOCKET [--frames N] [--sleep S] [--no-release] [--dump PREFIX]
                             [--dump-count K] [--exit-after N] [--protocol-version V]
"""

import argparse
import errno
import fcntl
import json
import mmap
import os
import socket
import struct
import sys
import time

MAGIC = b"VCSF"
PROTOCOL_VERSION = 1
HEADER = struct.Struct("<4sHHI")  # magic, version, kind, payload length
MAX_MESSAGE = 64 * 1024
NO_TIME = (1 << 64) - 1
MAX_CAPS_IDS = 16

HELLO, CAPS, SURFACE, FRAME, RETIRE, EOS, RELEASE, ERROR = range(1, 9)
ROLE_WRITER, ROLE_READER = 0, 1
# seq, surface, caps_id, pts, dts, duration, flags, n_planes, offset, size, 4 plane offsets, 4 strides
FRAME_RECORD = struct.Struct("<QIIQQQIIQQ4Q4i")


class ProtocolError(Exception):
    """The writer refused us or sent something we do not understand."""


def safe_surface_size(fd, declared):
    """The size of a surface we may map: a memfd sealed with F_SEAL_SHRINK or a DMA-BUF holding
    at least ``declared`` bytes (the writer's size is a claim, the fd's size the truth).
    Anything else could shrink under the mapping and kill us with SIGBUS."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise ProtocolError(f"cannot inspect a surface fd: {e}") from e
        target = os.readlink(f"/proc/self/fd/{fd}")
        if "dmabuf" not in target:
            raise ProtocolError(f"surface fd is neither a sealed memfd nor a DMA-BUF ({target}); "
                                "its size could change under our mapping") from e
        actual = os.lseek(fd, 0, os.SEEK_END)
    else:
        if not seals & fcntl.F_SEAL_SHRINK:
            raise ProtocolError("surface memfd is not sealed against shrinking "
                                f"(seals {seals:#x}, F_SEAL_SHRINK missing)")
        actual = os.fstat(fd).st_size
    if declared > actual:
        raise ProtocolError(f"surface declares {declared} bytes but its fd holds only {actual}")
    return declared


class Frame:
    __slots__ = ("seq", "surface", "caps", "pts", "dts", "duration", "flags",
                 "offset", "size", "plane_offsets", "strides", "data", "inode")

    def as_dict(self):
        return {
            "seq": self.seq, "surface": self.surface, "caps": self.caps,
            "pts": None if self.pts == NO_TIME else self.pts,
            "duration": None if self.duration == NO_TIME else self.duration,
            "size": self.size, "offset": self.offset, "inode": self.inode,
            "strides": self.strides, "plane_offsets": self.plane_offsets,
        }


def encode(kind, payload=b"", version=PROTOCOL_VERSION):
    return HEADER.pack(MAGIC, version, kind, len(payload)) + payload


class SurfaceReader:
    def __init__(self, path, timeout=10.0, version=PROTOCOL_VERSION):
        self.path = path
        self.version = version
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no surfacesink at {path} within {timeout} s")
                time.sleep(0.02)
        self.sock.send(encode(HELLO, struct.pack("<IIQ", ROLE_READER, os.getpid(), 0),
                              version))
        self.surfaces = {}  # id -> (mmap, inode)
        self.caps = {}
        self.writer_pid = None
        self.writer_gone = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()
        for m, _ in self.surfaces.values():
            try:
                m.close()
            except BufferError:
                pass  # a caller still holds a memoryview of it
        self.surfaces.clear()

    def release(self, frame):
        try:
            self.sock.send(encode(RELEASE, struct.pack("<IIQ", frame.surface, 0, frame.seq)))
        except OSError:
            pass

    def frames(self, timeout=None):
        """Yield frames until end-of-stream or the writer goes away."""
        self.sock.settimeout(timeout)
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
            except ConnectionResetError:
                data, fds = b"", []  # a killed writer with our releases still unread
            if not data and not fds:
                self.writer_gone = True  # closed without EOS: killed or stopped
                return
            if len(data) < HEADER.size:
                raise ProtocolError("truncated message")
            magic, version, kind, length = HEADER.unpack_from(data)
            payload = data[HEADER.size:HEADER.size + length]
            if magic != MAGIC:
                raise ProtocolError(f"{self.path} is not a surfacesink (magic {magic!r})")
            if kind == ERROR:
                code = struct.unpack_from("<I", payload)[0]
                raise ProtocolError(f"writer refused us (code {code}): "
                                    f"{payload[4:].decode(errors='replace')}")
            if version != self.version:
                raise ProtocolError(f"protocol version mismatch: writer speaks {version}, "
                                    f"reader {self.version}")
            if kind == HELLO:
                _role, self.writer_pid, _session = struct.unpack_from("<IIQ", payload)
            elif kind == CAPS:
                caps_id = struct.unpack_from("<I", payload)[0]
                self.caps.pop(caps_id, None)
                self.caps[caps_id] = payload[4:].decode()
                while len(self.caps) > MAX_CAPS_IDS:  # keep the newest, like surfacesrc
                    del self.caps[next(iter(self.caps))]
            elif kind == SURFACE:
                surface, _reserved, size = struct.unpack_from("<IIQ", payload)
                if not fds:
                    raise ProtocolError(f"surface {surface} announced without an fd")
                fd = fds[0]
                for extra in fds[1:]:
                    os.close(extra)
                inode = os.fstat(fd).st_ino
                try:
                    size = safe_surface_size(fd, size)
                    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
                finally:
                    os.close(fd)
                old = self.surfaces.pop(surface, None)
                self.surfaces[surface] = (m, inode)
                if old:
                    try:
                        old[0].close()
                    except BufferError:
                        pass
            elif kind == RETIRE:
                surface = struct.unpack_from("<I", payload)[0]
                old = self.surfaces.pop(surface, None)
                if old:
                    try:
                        old[0].close()
                    except BufferError:
                        pass
            elif kind == FRAME:
                v = FRAME_RECORD.unpack_from(payload)
                f = Frame()
                (f.seq, f.surface, caps_id, f.pts, f.dts, f.duration, f.flags,
                 n_planes, f.offset, f.size) = v[:10]
                f.plane_offsets = list(v[10:10 + n_planes])
                f.strides = list(v[14:14 + n_planes])
                f.caps = self.caps.get(caps_id)
                if f.surface not in self.surfaces:
                    raise ProtocolError(f"frame {f.seq} in unknown surface {f.surface}")
                m, f.inode = self.surfaces[f.surface]
                if f.offset + f.size > len(m):
                    raise ProtocolError(f"frame {f.seq} ({f.offset}+{f.size}) lies beyond its "
                                        f"surface of {len(m)} bytes")
                f.data = memoryview(m)[f.offset:f.offset + f.size]
                yield f
            elif kind == EOS:
                return
            else:
                raise ProtocolError(f"unexpected message kind {kind}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("socket")
    ap.add_argument("--frames", type=int, default=0, help="stop after N frames (0: until EOS)")
    ap.add_argument("--timeout", type=float, default=10.0, help="connect / idle timeout (s)")
    ap.add_argument("--sleep", type=float, default=0.0, help="pretend to work S s per frame")
    ap.add_argument("--no-release", action="store_true", help="never release (a stuck reader)")
    ap.add_argument("--dump", help="write frame bytes to PREFIX-<n>.raw")
    ap.add_argument("--dump-count", type=int, default=1)
    ap.add_argument("--exit-after", type=int, default=0,
                    help="die (os._exit) while holding frame N, without releasing it")
    ap.add_argument("--protocol-version", type=int, default=PROTOCOL_VERSION)
    args = ap.parse_args()

    def out(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    n = 0
    try:
        with SurfaceReader(args.socket, args.timeout, args.protocol_version) as r:
            out({"connected": True})
            for f in r.frames(timeout=args.timeout):
                n += 1
                d = f.as_dict()
                d["first"] = list(f.data[:4])
                out(d)
                if args.dump and n <= args.dump_count:
                    with open(f"{args.dump}-{n}.raw", "wb") as fh:
                        fh.write(f.data)
                if args.exit_after and n >= args.exit_after:
                    os._exit(0)
                if args.sleep:
                    time.sleep(args.sleep)
                if not args.no_release:
                    f.data.release()
                    r.release(f)
                if args.frames and n >= args.frames:
                    break
            else:
                out({"writer_gone": True} if r.writer_gone else {"eos": True})
    except ProtocolError as e:
        out({"error": str(e)})
        return 2
    except (TimeoutError, socket.timeout) as e:
        out({"error": f"timeout: {e}"})
        return 3
    except PermissionError as e:
        out({"error": f"permission denied connecting to {args.socket}: {e.strerror} "
                      "(the socket is 0600: run the reader as the writer's user)"})
        return 4
    out({"frames": n})
    return 0


if __name__ == "__main__":
    sys.exit(main())
