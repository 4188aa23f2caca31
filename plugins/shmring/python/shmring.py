# SPDX-License-Identifier: MPL-2.0
"""Read and write vcambridge shared-memory rings (layout version 1) from plain Python.

Standard library only (numpy optional: ``Frame.array()``). The layout is specified in
plugins/shmring/README.md; the Rust implementation is plugins/shmring/src/ring.rs.

Reader::

    import shmring
    with shmring.Reader("/vcam0", timeout=5.0) as r:
        frame = r.read(timeout=1.0)      # None on timeout, raises EndOfStream at writer EOS
        print(frame.seq, frame.pts, frame.caps, len(frame.data))

Writer::

    with shmring.Writer("/vcam0", caps="video/x-raw,format=RGBA,width=64,height=48,framerate=30/1",
                        slots=8, slot_size=64 * 48 * 4) as w:
        w.write(b"\\x00" * (64 * 48 * 4), pts=0, duration=33_333_333)

Waiting: a reader sleeps on the ring's futex (the low 32 bits of ``write_seq``) through a
``syscall(SYS_futex)`` made with ctypes when it could map the ring read-write (same user as the
writer, the default 0600 mode). With only read permission (or on an architecture whose futex
syscall number is unknown) it polls ``write_seq`` every ``poll_interval`` seconds (0.5 ms).
Writers always FUTEX_WAKE after publishing, so Rust/C readers never poll.

Memory ordering: Python stores 8-byte aligned fields with single ``struct.pack_into`` calls and
relies on the CPU's store order (x86-64 TSO) for the seqlock; readers re-check the slot
sequence after copying, so a torn or overwritten frame is dropped, never returned.

Leases: the ``Writer`` honors readers' pins and leases (it skips a slot a reader holds, never
waits) and says so in the header, so ``shmringsrc`` hands the slots themselves downstream
(zero copy). Taking a slot against a reader's lease needs a full memory barrier between two
accesses (Dekker's order), which Python can only get from libatomic (``libatomic.so.1``, part
of every GCC install: sequentially consistent exchange and load through ctypes). Without it, or
with ``honor_leases=False``, the writer ignores pins as before and readers copy.
"""

import ctypes
import errno
import os
import platform
import stat
import struct
import time

MAGIC = b"VCSHMRNG"
LAYOUT_VERSION = 1
HEADER_SIZE = 4096
SLOT_HEADER_SIZE = 64
ALIGN = 64
CAPS_OFFSET = 256
CAPS_CAPACITY = HEADER_SIZE - CAPS_OFFSET
# Limits shared with the Rust code (ring.rs): a header claiming more is refused, so a hostile
# writer can never make a reader map or allocate more than a real ring holds.
MAX_SLOT_COUNT = 1024
MAX_SLOT_SIZE = 1 << 32

OFF_MAGIC = 0
OFF_VERSION = 8
OFF_HEADER_SIZE = 12
OFF_SLOT_COUNT = 16
OFF_SLOT_HEADER_SIZE = 20
OFF_SLOT_SIZE = 24
OFF_SLOT_STRIDE = 32
OFF_TOTAL_SIZE = 40
OFF_WRITER_PID = 48
OFF_STATE = 52
OFF_GENERATION = 56
OFF_WRITE_SEQ = 64
OFF_LEASE_GENERATION = 72  # u64: = generation when the writer honors pins and leases
OFF_CAPS_SEQ = 128
OFF_CAPS_ID = 136
OFF_CAPS_LEN = 144
OFF_CAPS_CAPACITY = 148

SLOT_SEQ = 0
SLOT_PTS = 8
SLOT_DTS = 16
SLOT_DURATION = 24
SLOT_CAPS_ID = 32
SLOT_SIZE = 40
SLOT_FLAGS = 48
SLOT_READER_PIN = 52  # u32: CLOCK_MONOTONIC ms until which a reader pins (copy) or leases the slot
SLOT_PUBLISH_TIME = 56

PIN_MS = 100  # a pin holds at most this long; writers skip pinned slots when they can
LEASE_HORIZON_MS = 2000  # writers honor pins/leases at most this far ahead (more is garbage)

NO_TIME = 0xFFFFFFFFFFFFFFFF

STATE_INIT, STATE_LIVE, STATE_EOS, STATE_CLOSED = 0, 1, 2, 3

FLAG_DISCONT = 1 << 0
FLAG_DELTA_UNIT = 1 << 1
FLAG_HEADER = 1 << 2
FLAG_GAP = 1 << 3
FLAG_DROPPABLE = 1 << 4
FLAG_MARKER = 1 << 5

_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine().lower())


class RingError(Exception):
    """The ring cannot be used; the message names the shm path and what to do."""


class EndOfStream(Exception):
    """The writer signalled end of stream and every frame has been read."""


def align_up(v):
    return (v + ALIGN - 1) // ALIGN * ALIGN


def canonical_name(name):
    """``vcam0`` is ``/vcam0`` (as for ``multiprocessing.shared_memory`` and ``shm_open``)."""
    return name if name.startswith("/") or not name else "/" + name


def shm_path(name):
    return "/dev/shm" + canonical_name(name)


def validate_name(name):
    """Raise RingError unless ``name`` is a POSIX shm name; return its canonical form."""
    rest = name[1:] if name.startswith("/") else name
    if rest in ("", ".", ".."):
        raise RingError(f"shm name {name!r} needs a name (for example \"vcam0\" or \"/vcam0\")")
    if "/" in rest:
        raise RingError(f"shm name {name!r} may contain a '/' only at the start "
                        f"(for example \"/vcam0\")")
    if "\0" in rest:
        raise RingError(f"shm name {name!r} contains a NUL byte")
    if len(rest.encode()) > 254:
        raise RingError(f"shm name {name!r} is too long, at most 255 bytes are allowed")
    return canonical_name(name)


def pid_alive(pid):
    if pid <= 0 or pid > 0x7FFFFFFF:  # 0 is never a writer; the field is a u32 from the peer
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_libc = None


def _syscall():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc.syscall


_atomic = None
_SEQ_CST = 5  # __ATOMIC_SEQ_CST


def _atomics():
    """libatomic's sequentially consistent 8-byte exchange and 4-byte load, or None where
    libatomic is missing (the writer then does not honor leases)."""
    global _atomic
    if _atomic is None:
        _atomic = False
        try:
            lib = ctypes.CDLL("libatomic.so.1")
            xchg = getattr(lib, "__atomic_exchange_8")
            xchg.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
            xchg.restype = ctypes.c_uint64
            load = getattr(lib, "__atomic_load_4")
            load.argtypes = [ctypes.c_void_p, ctypes.c_int]
            load.restype = ctypes.c_uint32
            _atomic = (xchg, load)
        except (OSError, AttributeError):
            pass
    return _atomic or None


def _now_ms():
    """CLOCK_MONOTONIC in ms, low 32 bits (the clock of pins and leases)."""
    return (time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1_000_000) & 0xFFFFFFFF


def _lease_left(pin, now_ms):
    """Milliseconds left of the pin or lease ``pin`` at ``now_ms`` (u32 ms), if the writer
    honors it: 0 = none, more than LEASE_HORIZON_MS ahead = garbage, in the past = expired."""
    left = (pin - now_ms) & 0xFFFFFFFF
    return left if pin != 0 and 0 < left <= LEASE_HORIZON_MS else None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _futex_wait(addr, expected, timeout):
    ts = _Timespec(int(timeout), int((timeout - int(timeout)) * 1e9))
    _syscall()(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(_FUTEX_WAIT),
               ctypes.c_uint32(expected & 0xFFFFFFFF), ctypes.byref(ts), None, ctypes.c_int(0))


def _futex_wake(addr):
    _syscall()(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(_FUTEX_WAKE),
               ctypes.c_int(0x7FFFFFFF), None, None, ctypes.c_int(0))


class Frame:
    """One frame: payload bytes plus the writer's metadata (times in ns, None if unset)."""

    __slots__ = ("seq", "pts", "dts", "duration", "caps_id", "caps", "flags", "publish_time", "data")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    def array(self, shape=None, dtype="uint8"):
        """The payload as a numpy array (needs numpy)."""
        import numpy as np

        a = np.frombuffer(self.data, dtype=dtype)
        return a.reshape(shape) if shape is not None else a

    def __repr__(self):
        return f"Frame(seq={self.seq}, pts={self.pts}, size={len(self.data)}, caps_id={self.caps_id})"


def _view(buf, size, path):
    """The first ``size`` bytes of the writable buffer ``buf`` as a flat byte memoryview."""
    mv = memoryview(buf)
    if mv.readonly:
        raise RingError(f"read(into=...) needs a writable buffer for a frame of {path}")
    if mv.format != "B" or mv.ndim != 1:
        try:
            mv = mv.cast("B")
        except TypeError as e:
            raise RingError(f"read(into=...) needs a contiguous buffer: {e}") from e
    if mv.nbytes < size:
        raise RingError(f"read(into=...): the buffer holds {mv.nbytes} bytes, the frame of "
                        f"{path} has {size}")
    return mv[:size]


def _time(v):
    return None if v == NO_TIME else v


def _raw_time(v):
    return NO_TIME if v is None else int(v)


class _Mapped:
    def _u32(self, off):
        return struct.unpack_from("<I", self.mm, off)[0]

    def _u64(self, off):
        return struct.unpack_from("<Q", self.mm, off)[0]

    def _put32(self, off, v):
        struct.pack_into("<I", self.mm, off, v)

    def _put64(self, off, v):
        struct.pack_into("<Q", self.mm, off, v)

    def _slot(self, n):
        return HEADER_SIZE + (n % self.slot_count) * self.slot_stride

    @property
    def write_seq(self):
        return self._u64(OFF_WRITE_SEQ)

    @property
    def generation(self):
        return self._u64(OFF_GENERATION)

    @property
    def state(self):
        return self._u32(OFF_STATE)

    @property
    def writer_pid(self):
        return self._u32(OFF_WRITER_PID)

    def read_caps(self):
        """(caps_id, caps string) or None."""
        for _ in range(100):
            s1 = self._u64(OFF_CAPS_SEQ)
            if s1 & 1:
                time.sleep(0)
                continue
            cid = self._u64(OFF_CAPS_ID)
            n = min(self._u32(OFF_CAPS_LEN), CAPS_CAPACITY)
            raw = bytes(self.mm[CAPS_OFFSET:CAPS_OFFSET + n])
            if self._u64(OFF_CAPS_SEQ) == s1:
                return None if cid == 0 else (cid, raw.decode("utf-8", "replace"))
        return None


def _check_header(mm, size, name):
    path = shm_path(name)
    if size < HEADER_SIZE:
        raise RingError(f"{path} is only {size} bytes, not a vcambridge shm ring; pick another "
                        f"shm-name or remove it (rm {path})")
    magic = bytes(mm[0:8])
    if magic == b"\0" * 8:
        return None  # being created
    if magic != MAGIC:
        raise RingError(f"{path} is not a vcambridge shm ring (magic {magic!r}); another program "
                        f"uses this name: pick another shm-name or remove the file (rm {path})")
    version = struct.unpack_from("<I", mm, OFF_VERSION)[0]
    if version != LAYOUT_VERSION:
        raise RingError(f"{path}: ring layout version {version}, this module speaks version "
                        f"{LAYOUT_VERSION}; use a reader and writer of the same release")
    state = struct.unpack_from("<I", mm, OFF_STATE)[0]
    if state == STATE_INIT:
        return None  # being (re-)initialised: wait
    header_size, slot_count, slot_header = struct.unpack_from("<III", mm, OFF_HEADER_SIZE)
    slot_size, slot_stride, total = struct.unpack_from("<QQQ", mm, OFF_SLOT_SIZE)
    caps_capacity, = struct.unpack_from("<I", mm, OFF_CAPS_CAPACITY)
    # Python integers do not wrap: the sums below are exact.
    if (header_size != HEADER_SIZE or slot_header != SLOT_HEADER_SIZE or
            not 2 <= slot_count <= MAX_SLOT_COUNT or
            slot_size == 0 or slot_size % ALIGN or slot_size > MAX_SLOT_SIZE or
            slot_stride != SLOT_HEADER_SIZE + slot_size or
            total != HEADER_SIZE + slot_stride * slot_count or caps_capacity != CAPS_CAPACITY):
        raise RingError(f"{path}: inconsistent ring header (slot count {slot_count}, slot size "
                        f"{slot_size}, stride {slot_stride}, total {total}); remove it "
                        f"(rm {path}) and restart the writer")
    if size < total:
        raise RingError(f"{path} is {size} bytes, the ring header says {total}; remove it "
                        f"(rm {path}) and restart the writer")
    if state == STATE_CLOSED:
        return None  # left by its writer: wait for the next one
    return slot_count, slot_size, slot_stride


class Reader(_Mapped):
    """Reads frames from ring ``name``; waits up to ``timeout`` s for a writer to appear.

    Like shmringsrc: a reader that had to wait for the writer (started first, or following a
    restart) starts at the oldest frame still in the ring; otherwise at frame 0 of a ring that has
    not wrapped yet, or else at the newest frame; skips frames it was too slow for (``dropped`` counts them);
    follows writer restarts (``generation`` changes) by re-opening the name.
    """

    def __init__(self, name, timeout=10.0, poll_interval=0.0005):
        name = validate_name(name)
        self.name = name
        self.path = shm_path(name)
        self.poll_interval = poll_interval
        self.mm = None
        self.dropped = 0
        self.restarts = 0
        self._caps = None
        self._open(timeout)

    # -- attach --
    def _try_open(self):
        # O_NONBLOCK: a FIFO planted at the name must not block the open.
        flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, os.O_RDWR | flags)
            writable = True
        except PermissionError:
            try:
                fd = os.open(self.path, os.O_RDONLY | flags)
            except PermissionError as e:
                st = os.stat(self.path)
                raise RingError(f"permission denied opening {self.path} for reading: it is owned "
                                f"by uid {st.st_uid} with mode {st.st_mode & 0o7777:04o}, we run as "
                                f"uid {os.getuid()}; run as the writer's user or give the writer "
                                f"a wider mode (e.g. mode=0644)") from e
            writable = False
        except FileNotFoundError:
            return False
        import mmap

        keep = False
        try:
            st = os.fstat(fd)
            size = st.st_size
            if not stat.S_ISREG(st.st_mode):
                raise RingError(f"{self.path} is not a regular file; another program uses this "
                                f"name: pick another shm-name or remove it (rm {self.path})")
            if size == 0:
                return False
            if size < HEADER_SIZE:
                head = os.pread(fd, 8, 0)
                raise RingError(f"{self.path} is not a vcambridge shm ring ({size} bytes, magic "
                                f"{head!r}); pick another shm-name or remove it (rm {self.path})")
            # Validate the header against the object's real size before mapping: map only the
            # ring it describes, never what a hostile header claims.
            geo = _check_header(os.pread(fd, HEADER_SIZE, 0), size, self.name)
            if geo is None:
                return False
            total = HEADER_SIZE + geo[2] * geo[0]
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            try:
                mm = mmap.mmap(fd, total, mmap.MAP_SHARED, prot)
            except (OSError, OverflowError, MemoryError) as e:
                raise RingError(f"cannot map the {total} byte ring {self.path}: {e}") from e
            if _check_header(mm, total, self.name) != geo:
                mm.close()
                return False  # re-initialised meanwhile: try again
            self.ino = st.st_ino
            keep = True
        finally:
            if not keep:
                os.close(fd)
        self._close_map()
        self.fd = fd
        self.total = total
        self.mm = mm
        self.slot_count, self.slot_size, self.slot_stride = geo
        self.writable = writable
        self._futex_obj = None
        self.futex_addr = None
        if writable and _SYS_FUTEX is not None:
            self._futex_obj = ctypes.c_char.from_buffer(mm)
            self.futex_addr = ctypes.addressof(self._futex_obj) + OFF_WRITE_SEQ
        self.attached_generation = self.generation
        return True

    def _open(self, timeout, waited=False):
        deadline = time.monotonic() + timeout
        while not self._try_open():
            if time.monotonic() >= deadline:
                raise RingError(f"no writer appeared at {self.path} within {timeout} s (start a "
                                f"writer with shm-name={self.name})")
            waited = True
            time.sleep(0.01)
        w = self.write_seq
        if waited:
            # We were waiting for this writer: everything it wrote that is still there is new.
            self.next = max(w - (self.slot_count - 1), 0)
        elif w < self.slot_count:
            self.next = 0
        else:
            self.next = max(w - 1, 0)
        self._caps = None
        self.last_progress = time.monotonic()

    def _close_map(self):
        if self.mm is not None:
            self._futex_obj = None
            self.mm.close()
            self.mm = None
            os.close(self.fd)
            self.fd = None

    def _check_intact(self):
        """Raise RingError if another process truncated the mapped ring (an access past the
        new end would kill this process with SIGBUS; Python cannot survive that)."""
        size = os.fstat(self.fd).st_size
        if size < self.total:
            raise RingError(f"{self.path} shrank to {size} bytes while mapped ({self.total} "
                            f"bytes): another process truncated the ring; stop that process, "
                            f"then restart the writer (it re-creates the ring)")

    def close(self):
        self._close_map()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def uses_futex(self):
        return self.futex_addr is not None

    def _wait(self, value, timeout):
        if self.futex_addr is not None:
            _futex_wait(self.futex_addr, value, min(timeout, 0.1))
        else:
            time.sleep(min(self.poll_interval, timeout))

    def _name_still_ours(self):
        try:
            return os.stat(self.path).st_ino == self.ino
        except OSError:
            return False

    def writer_alive(self):
        """Is the process that writes the ring still running?"""
        return self.mm is not None and pid_alive(self.writer_pid)

    def caps(self):
        """The caps string of the most recent frame read (or the ring's current caps)."""
        if self._caps is None:
            c = self.read_caps()
            return c[1] if c else None
        return self._caps[1]

    def read(self, timeout=10.0, into=None):
        """The next frame, or None if none arrived within ``timeout`` seconds (then
        ``writer_alive()`` tells a crashed writer from a paused one).

        ``into``: a preallocated writable buffer (bytearray, numpy array, ...) of at least the
        frame size; the payload is copied there and ``Frame.data`` is a memoryview of it (valid
        until the next read into the same buffer). Without it every frame is a new ``bytes``.

        Raises EndOfStream after the writer's EOS, RingError for unusable rings or when the
        writer left and no new one appeared within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self.mm is None:
                self._open(max(deadline - now, 0), waited=True)
                continue
            gen = self.generation
            state = self.state
            w = self.write_seq
            if state == STATE_INIT or (gen != self.attached_generation and state != STATE_CLOSED):
                self.restarts += 1
                self._close_map()
                continue
            n = self.next
            if w <= n:
                if state == STATE_EOS:
                    raise EndOfStream(self.path)
                if state == STATE_CLOSED or (now - self.last_progress > 0.5 and
                                             not self._name_still_ours()):
                    self.restarts += 1
                    self._close_map()
                    continue
                if now >= deadline:
                    return None
                self._wait(w, deadline - now)
                continue
            self._check_intact()
            off = self._slot(n)
            s1 = self._u64(off + SLOT_SEQ)
            if w - n >= self.slot_count or s1 > 2 * n + 2:
                # Lapped by the writer: continue at the newest frame.
                newest = w - 1
                skipped = newest - n if newest > n else 1
                self.next = newest if newest > n else n + 1
                self.dropped += skipped
                continue
            if s1 != 2 * n + 2:
                # The writer skipped this frame number (not a gap in the stream).
                self.next = n + 1
                continue
            pts, dts, dur, caps_id, size, flags_pt = struct.unpack_from("<QQQQQQ", self.mm, off + 8)
            flags = flags_pt & 0xFFFFFFFF
            publish = self._u64(off + SLOT_PUBLISH_TIME)
            if size > self.slot_size:
                self.next += 1
                self.dropped += 1
                continue
            # Ask the writer to leave the slot alone while we copy (a hint: the seqlock below
            # still decides whether the copy is good).
            # Never shorten a longer hold of another reader (a zero-copy lease of shmringsrc).
            pin = 0
            if self.writable:
                pin = ((_now_ms() + PIN_MS) & 0xFFFFFFFF) or 1
                if _lease_left(self._u32(off + SLOT_READER_PIN), pin) is not None:
                    pin = 0
                else:
                    self._put32(off + SLOT_READER_PIN, pin)
            start = off + SLOT_HEADER_SIZE
            try:
                if into is None:
                    data = self.mm[start:start + size]
                else:
                    data = _view(into, size, self.path)
                    with memoryview(self.mm) as src:
                        data[:] = src[start:start + size]
            except MemoryError as e:
                raise RingError(f"cannot allocate {size} bytes for a frame of {self.path} "
                                f"(out of memory)") from e
            finally:
                if pin and self._u32(off + SLOT_READER_PIN) == pin:
                    self._put32(off + SLOT_READER_PIN, 0)
            if self._u64(off + SLOT_SEQ) != s1:
                self.dropped += 1
                continue
            self.next = n + 1
            if self._caps is None or self._caps[0] != caps_id:
                c = self.read_caps()
                if c is None or c[0] != caps_id:
                    self.dropped += 1
                    continue
                self._caps = c
            self.last_progress = time.monotonic()
            return Frame(seq=n, pts=_time(pts), dts=_time(dts), duration=_time(dur),
                         caps_id=caps_id, caps=self._caps[1], flags=flags,
                         publish_time=publish, data=data)


class Writer(_Mapped):
    """Creates (or reclaims) ring ``name`` and publishes frames; never waits for readers."""

    def __init__(self, name, caps=None, slots=8, slot_size=1 << 20, mode=0o600,
                 honor_leases=None):
        """``honor_leases``: None (default) honors readers' pins and leases when libatomic is
        there (see the module docstring), True requires it (RingError without), False never
        (readers copy every frame)."""
        name = validate_name(name)
        atomics = _atomics() if honor_leases is not False else None
        if honor_leases is True and atomics is None:
            raise RingError("honor_leases=True needs libatomic.so.1 (apt install libatomic1)")
        if not 2 <= slots <= MAX_SLOT_COUNT:
            raise RingError(f"slots must be 2..{MAX_SLOT_COUNT}")
        if slot_size > MAX_SLOT_SIZE:
            raise RingError(f"slot_size {slot_size} is too large (at most {MAX_SLOT_SIZE})")
        self.name = name
        self.path = shm_path(name)
        self.slot_count = slots
        self.slot_size = align_up(max(slot_size, 1))
        self.slot_stride = SLOT_HEADER_SIZE + self.slot_size
        self.total = HEADER_SIZE + self.slot_stride * slots
        self.mm = None
        self._futex_obj = None
        self._atomics = atomics
        self.generation_ = self._create(mode)
        self.next = 0
        self.caps_id = 0
        if caps is not None:
            self.set_caps(caps)

    def _create(self, mode):
        import mmap

        generation = 1
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            except FileExistsError:
                fd = None
            if fd is None:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)
                except FileNotFoundError:
                    continue
                except PermissionError as e:
                    raise RingError(f"permission denied opening the existing {self.path} for "
                                    f"writing; remove it (rm {self.path}) or run as its owner") from e
                # Reuse only our own regular file (fstat on the open fd); another user's object
                # is refused, one with a wider mode than asked for is replaced.
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    os.close(fd)
                    raise RingError(f"{self.path} exists and is not a regular file; pick another "
                                    f"shm-name or remove it (rm {self.path})")
                if st.st_uid != os.geteuid():
                    os.close(fd)
                    raise RingError(f"{self.path} already exists and is owned by uid {st.st_uid} "
                                    f"(mode {st.st_mode & 0o7777:04o}), not by this writer's uid "
                                    f"{os.geteuid()}; its owner could read the frames and "
                                    f"truncate the ring, so it is not reused: pick another "
                                    f"shm-name or remove it (rm {self.path})")
                wider = st.st_mode & 0o7777 & ~mode != 0
                size = st.st_size
                if size == 0 and wider:
                    os.unlink(self.path)
                    os.close(fd)
                    continue
                if size > 0:
                    if size < HEADER_SIZE:
                        os.close(fd)
                        raise RingError(f"{self.path} exists and is not a vcambridge shm ring "
                                        f"({size} bytes); pick another name or rm {self.path}")
                    old = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                    try:
                        if bytes(old[0:8]) != MAGIC:
                            raise RingError(f"{self.path} exists and is not a vcambridge shm ring "
                                            f"(magic {bytes(old[0:8])!r}); pick another name or "
                                            f"rm {self.path}")
                        version = struct.unpack_from("<I", old, OFF_VERSION)[0]
                        if version != LAYOUT_VERSION:
                            raise RingError(f"{self.path} holds a shm ring of layout version "
                                            f"{version}, this writer speaks version "
                                            f"{LAYOUT_VERSION}; rm {self.path}")
                        pid, state = struct.unpack_from("<II", old, OFF_WRITER_PID)
                        if pid != os.getpid() and pid_alive(pid) and state != STATE_CLOSED:
                            raise RingError(f"{self.path} is in use by another writer (pid {pid})")
                        generation = struct.unpack_from("<Q", old, OFF_GENERATION)[0] + 1
                        count, = struct.unpack_from("<I", old, OFF_SLOT_COUNT)
                        ssize, = struct.unpack_from("<Q", old, OFF_SLOT_SIZE)
                        # Re-initialise in place only with the identical geometry.
                        if wider or (size, count, ssize) != (self.total, self.slot_count,
                                                             self.slot_size):
                            os.unlink(self.path)
                            struct.pack_into("<I", old, OFF_STATE, STATE_CLOSED)
                            struct.pack_into("<Q", old, OFF_GENERATION, generation)
                            self._wake_map(old)
                            old.close()
                            os.close(fd)
                            continue
                    except RingError:
                        old.close()
                        os.close(fd)
                        raise
                    old.close()
            try:
                os.fchmod(fd, mode)
                if os.fstat(fd).st_size != self.total:
                    os.ftruncate(fd, self.total)
                try:
                    # Reserve the memory now (a full /dev/shm fails here, not with SIGBUS later).
                    os.posix_fallocate(fd, 0, self.total)
                except OSError as e:
                    os.unlink(self.path)
                    raise RingError(f"cannot reserve {self.total} bytes for {self.path} ({e}); "
                                    f"is /dev/shm full? (df /dev/shm)") from e
                self.mm = mmap.mmap(fd, self.total, mmap.MAP_SHARED,
                                    mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
            if _SYS_FUTEX is not None or self._atomics is not None:
                self._futex_obj = ctypes.c_char.from_buffer(self.mm)
            self._initialize(generation)
            return generation
        raise RingError(f"{self.path} keeps changing under us (another writer racing?)")

    @staticmethod
    def _wake_map(mm):
        if _SYS_FUTEX is None:
            return
        obj = ctypes.c_char.from_buffer(mm)
        _futex_wake(ctypes.addressof(obj) + OFF_WRITE_SEQ)
        del obj

    def _wake(self):
        if self._futex_obj is not None and _SYS_FUTEX is not None:
            _futex_wake(ctypes.addressof(self._futex_obj) + OFF_WRITE_SEQ)

    @property
    def honors_leases(self):
        """Readers' pins and leases are honored (the header says so: readers may lease)."""
        return self._atomics is not None

    def _initialize(self, generation):
        self._put32(OFF_STATE, STATE_INIT)
        self._put64(OFF_GENERATION, generation)
        self._put32(OFF_VERSION, LAYOUT_VERSION)
        self._put32(OFF_HEADER_SIZE, HEADER_SIZE)
        self._put32(OFF_SLOT_COUNT, self.slot_count)
        self._put32(OFF_SLOT_HEADER_SIZE, SLOT_HEADER_SIZE)
        struct.pack_into("<QQQ", self.mm, OFF_SLOT_SIZE, self.slot_size, self.slot_stride, self.total)
        self._put32(OFF_WRITER_PID, os.getpid())
        self._put64(OFF_WRITE_SEQ, 0)
        self._put64(OFF_LEASE_GENERATION, 0)
        self._put64(OFF_CAPS_SEQ, 0)
        self._put64(OFF_CAPS_ID, 0)
        self._put32(OFF_CAPS_LEN, 0)
        self._put32(OFF_CAPS_CAPACITY, CAPS_CAPACITY)
        zero = bytes(SLOT_HEADER_SIZE)
        for i in range(self.slot_count):
            off = HEADER_SIZE + i * self.slot_stride
            self.mm[off:off + SLOT_HEADER_SIZE] = zero
        self.mm[0:8] = MAGIC
        self._put32(OFF_STATE, STATE_LIVE)
        if self._atomics is not None:
            self._put64(OFF_LEASE_GENERATION, generation)
        self._wake()

    def set_caps(self, caps):
        raw = caps.encode()
        if len(raw) > CAPS_CAPACITY:
            raise RingError(f"caps string of {len(raw)} bytes does not fit ({CAPS_CAPACITY} max)")
        s = self._u64(OFF_CAPS_SEQ)
        self._put64(OFF_CAPS_SEQ, s | 1)
        self.caps_id = self._u64(OFF_CAPS_ID) + 1
        self.mm[CAPS_OFFSET:CAPS_OFFSET + len(raw)] = raw
        self._put32(OFF_CAPS_LEN, len(raw))
        self._put64(OFF_CAPS_ID, self.caps_id)
        self._put64(OFF_CAPS_SEQ, (s | 1) + 1)
        return self.caps_id

    def write(self, data, pts=None, dts=None, duration=None, flags=0):
        """Publish ``data`` (bytes-like, at most slot_size) as the next frame; returns its seq."""
        data = memoryview(data).cast("B")
        if len(data) > self.slot_size:
            raise RingError(f"{len(data)} byte frame does not fit the {self.slot_size} byte slots")
        n = self._claim()
        off = self._slot(n)
        self.mm[off + SLOT_HEADER_SIZE:off + SLOT_HEADER_SIZE + len(data)] = data
        struct.pack_into("<QQQQQIIQ", self.mm, off + 8, _raw_time(pts), _raw_time(dts),
                         _raw_time(duration), self.caps_id, len(data), flags, 0,
                         time.clock_gettime_ns(time.CLOCK_MONOTONIC))
        self._put64(off + SLOT_SEQ, 2 * n + 2)
        self._put64(OFF_WRITE_SEQ, n + 1)
        self._wake()
        return n

    def _claim(self):
        """Take the next frame number whose slot no reader holds and mark it in progress (slot
        seq 2n+1); numbers of held slots are skipped (never published). If every slot is held,
        the one whose hold ends first is taken anyway: a reader never makes the writer wait."""
        if self._atomics is None:
            n = self.next
            self._put64(self._slot(n) + SLOT_SEQ, 2 * n + 1)
            self.next = n + 1
            return n
        xchg, load = self._atomics
        base = ctypes.addressof(self._futex_obj)
        now_ms = _now_ms()
        fallback = None  # (ms left, frame number) of the hold that ends first
        for n in range(self.next, self.next + self.slot_count):
            off = self._slot(n)
            # Dekker's order against a reader's lease: seq odd, then read the pin, both
            # sequentially consistent (the reader stores its lease, then re-reads the seq).
            old = xchg(base + off + SLOT_SEQ, 2 * n + 1, _SEQ_CST)
            left = _lease_left(load(base + off + SLOT_READER_PIN, _SEQ_CST), now_ms)
            if left is None:
                self.next = n + 1
                return n
            # Held: nothing was written, the frame there is intact again.
            xchg(base + off + SLOT_SEQ, old, _SEQ_CST)
            if fallback is None or left < fallback[0]:
                fallback = (left, n)
        n = fallback[1]
        xchg(base + self._slot(n) + SLOT_SEQ, 2 * n + 1, _SEQ_CST)
        self.next = n + 1
        return n

    def eos(self):
        """Signal end of stream: readers finish once they have read everything."""
        self._put32(OFF_STATE, STATE_EOS)
        self._wake()

    def close(self, unlink=True):
        """Leave the ring (state closed unless EOS was signalled) and remove the name."""
        if self.mm is None:
            return
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self.state != STATE_EOS:
            self._put32(OFF_STATE, STATE_CLOSED)
        self._wake()
        self._futex_obj = None
        self.mm.close()
        self.mm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def unlink(name):
    """Remove ring ``name`` (readers keep their mapping)."""
    validate_name(name)
    try:
        os.unlink(shm_path(name))
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise


def _main(argv=None):
    """Command line: ``python3 shmring.py read NAME [--out FILE] [--max N] [--timeout S]
    [--sleep S] [--into]`` reads frames (optionally appending payloads to FILE, sleeping S s per
    frame to act as a slow reader, into one preallocated buffer) until EOS, N frames or a
    timeout, then prints a JSON summary (with ``fps`` between the first and the last frame);
    ``python3 shmring.py info NAME`` prints the header as JSON."""
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(prog="shmring.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    rd = sub.add_parser("read")
    rd.add_argument("name")
    rd.add_argument("--out")
    rd.add_argument("--max", type=int, default=0)
    rd.add_argument("--timeout", type=float, default=10.0)
    rd.add_argument("--sleep", type=float, default=0.0)
    rd.add_argument("--into", action="store_true",
                    help="read into one preallocated buffer (numpy if installed, else bytearray)")
    info = sub.add_parser("info")
    info.add_argument("name")
    a = p.parse_args(argv)
    try:
        if a.cmd == "info":
            r = Reader(a.name, timeout=0)
            print(json.dumps({"generation": r.generation, "writer_pid": r.writer_pid,
                              "state": r.state, "write_seq": r.write_seq,
                              "slot_count": r.slot_count, "slot_size": r.slot_size,
                              "caps": r.caps()}))
            return 0
        print(json.dumps({"waiting": not os.path.exists(shm_path(a.name))}), flush=True)
        r = Reader(a.name, timeout=a.timeout)
        out = open(a.out, "wb") if a.out else None
        summary = {"frames": 0, "seqs": [], "caps": [], "pts": [], "eos": False, "timeout": False}
        into = None
        if a.into:
            try:
                import numpy as np

                into = np.empty(r.slot_size, dtype=np.uint8)
                summary["into"] = "numpy"
            except ImportError:
                into = bytearray(r.slot_size)
                summary["into"] = "bytearray"
        print(json.dumps({"attached": True, "futex": r.uses_futex}), flush=True)
        first = last = None
        try:
            while not a.max or summary["frames"] < a.max:
                f = r.read(timeout=a.timeout, into=into)
                last = time.monotonic()
                first = first or last
                if f is None:
                    summary["timeout"] = True
                    summary["writer_alive"] = r.writer_alive()
                    break
                summary["frames"] += 1
                summary["seqs"].append(f.seq)
                summary["pts"].append(f.pts)
                if not summary["caps"] or summary["caps"][-1] != f.caps:
                    summary["caps"].append(f.caps)
                if out:
                    out.write(f.data)
                    out.flush()
                if a.sleep:
                    time.sleep(a.sleep)
        except EndOfStream:
            summary["eos"] = True
        summary.update(dropped=r.dropped, restarts=r.restarts, write_seq=r.write_seq
                       if r.mm is not None else None)
        if summary["frames"] > 1 and last > first:
            # Frames per second between the first frame and the last one.
            summary["fps"] = (summary["frames"] - 1) / (last - first)
        if out:
            out.close()
        print(json.dumps(summary), flush=True)
        return 0
    except RingError as e:
        print(f"shmring: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(_main())
