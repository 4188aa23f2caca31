# SPDX-License-Identifier: MPL-2.0
"""Your Python app as a webcam: frames go into a vcambridge shm ring, a helper pipeline
(``gst-launch-1.0 shmringsrc ! videoconvert ! v4l2loopsink`` or ``... ! pwvideosink``) turns
them into a v4l2loopback camera or a PipeWire camera node.

Standard library only (numpy optional). The names follow pyvirtualcam::

    from vcamera import Camera, PixelFormat
    with Camera(width=1280, height=720, fps=30, fmt=PixelFormat.RGB) as cam:
        print(f"sending to {cam.backend} camera {cam.device}")
        while True:
            cam.send(frame)               # bytes / bytearray / memoryview / numpy (h, w, 3) uint8
            cam.sleep_until_next_frame()

``backend``: ``"v4l2"`` (a v4l2loopback device: ``device`` is ``/dev/videoN`` or a card label;
default the first v4l2loopback device), ``"pipewire"`` (a PipeWire ``Video/Source`` node with role
Camera: ``device`` is its node name, default ``vcamera``) or ``"auto"`` (v4l2loopback if a device
exists, else PipeWire if a session runs).

The helper is started by ``Camera()`` and stopped by ``close()`` (end of stream first). What it
reports becomes a :class:`CameraError` carrying its message (no loopback device and how to load
one, no PipeWire session, a device held by a reader in another format, ...), raised by the
constructor, by the first ``send()`` (which waits until the camera accepted the format) or by the
next call after the helper failed. Wrong frame sizes/shapes raise ``ValueError`` (expected vs got).

If the app dies, even by SIGKILL, the helper goes too: it runs under a small supervisor (this file
with ``_supervise``) that watches a pipe from the app and stops ``gst-launch-1.0`` when the pipe
closes; ``gst-launch-1.0`` itself gets ``PR_SET_PDEATHSIG`` from the supervisor.

Command line (``pipelines/stdin-camera.sh`` runs the ``stdin`` mode)::

    python3 vcamera.py stdin --pixel-format rgb24 --size 1280x720 --fps 30 [--device D]
                             [--sink auto|v4l2|pipewire] [--no-pace]
    python3 vcamera.py list      # the cameras vcamera would use

Plugins: the helper uses ``GST_PLUGIN_PATH`` when it is set; otherwise, inside a vcambridge
checkout, ``target/release`` (or ``target/debug``) when the plugins are built there; otherwise the
system plugin directory (``meson install``).
"""

import collections
import enum
import fractions
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

__all__ = ["Camera", "CameraError", "PixelFormat", "find_loopback_devices", "pipewire_socket"]

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))

MODPROBE = ('sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="vcambridge" '
            'exclusive_caps=1')
INSTALL_LOOPBACK = "sudo apt install v4l2loopback-dkms"  # Debian/Ubuntu package of the module

# How long the helper may take to start and to accept the first frame (qemu TCG guests are slow).
START_TIMEOUT = float(os.environ.get("VCAMERA_START_TIMEOUT", "20"))
STOP_TIMEOUT = 5.0


class CameraError(RuntimeError):
    """The camera could not be set up or the helper pipeline failed.

    ``message`` is the helper's own error text (or ours), ``helper_output`` the helper's last
    output lines (empty when no helper ran)."""

    def __init__(self, message, helper_output=""):
        super().__init__(message)
        self.message = message
        self.helper_output = helper_output


class PixelFormat(enum.Enum):
    """Frame formats accepted by :meth:`Camera.send` (values: GStreamer format names)."""
    RGB = "RGB"      # (h, w, 3)
    BGR = "BGR"      # (h, w, 3), OpenCV's order
    GRAY = "GRAY8"   # (h, w)
    I420 = "I420"    # (h * 3 // 2, w): Y plane, then U, then V
    NV12 = "NV12"    # (h * 3 // 2, w): Y plane, then interleaved UV
    YUYV = "YUY2"    # (h, w, 2)
    UYVY = "UYVY"    # (h, w, 2)
    RGBA = "RGBA"    # (h, w, 4); the alpha channel is dropped on the way
    BGRA = "BGRA"    # (h, w, 4)
    RGBX = "RGBx"    # (h, w, 4), ffmpeg's rgb0
    BGRX = "BGRx"    # (h, w, 4), ffmpeg's bgr0


# GStreamer format -> (bytes per pixel of each plane's rows as (num, den) of width, rows of each
# plane as (num, den) of height, horizontal / vertical subsampling that needs even sizes).
_PLANES = {
    "RGB": ([(3, 1)], [(1, 1)], (False, False)),
    "BGR": ([(3, 1)], [(1, 1)], (False, False)),
    "RGBA": ([(4, 1)], [(1, 1)], (False, False)),
    "BGRA": ([(4, 1)], [(1, 1)], (False, False)),
    "RGBx": ([(4, 1)], [(1, 1)], (False, False)),
    "BGRx": ([(4, 1)], [(1, 1)], (False, False)),
    "GRAY8": ([(1, 1)], [(1, 1)], (False, False)),
    "I420": ([(1, 1), (1, 2), (1, 2)], [(1, 1), (1, 2), (1, 2)], (True, True)),
    "NV12": ([(1, 1), (1, 1)], [(1, 1), (1, 2)], (True, True)),
    "YUY2": ([(2, 1)], [(1, 1)], (True, False)),
    "UYVY": ([(2, 1)], [(1, 1)], (True, False)),
}

# ffmpeg's -pixel_format names (the stdin mode) -> GStreamer format names.
FFMPEG_FORMATS = {
    "rgb24": "RGB", "bgr24": "BGR", "rgba": "RGBA", "bgra": "BGRA", "rgb0": "RGBx",
    "bgr0": "BGRx", "gray": "GRAY8", "yuv420p": "I420", "nv12": "NV12", "yuyv422": "YUY2",
    "uyvy422": "UYVY",
}

# What the v4l2loopback device gets: YUV formats pass through, the rest is converted to I420
# (what browsers and pyvirtualcam's v4l2loopback backend use).
_V4L2_PASSTHROUGH = {"I420", "NV12", "YUY2", "UYVY"}


class _Layout:
    """A frame's tight layout (what apps, ffmpeg and V4L2 use) and GStreamer's default layout
    (what the ring carries: rows padded to 4 bytes)."""

    def __init__(self, gst_format, width, height):
        if gst_format not in _PLANES:
            raise ValueError(f"unsupported format {gst_format}")
        if not (isinstance(width, int) and isinstance(height, int)) or width <= 0 or height <= 0:
            raise ValueError(f"width and height must be positive integers, got {width!r}x{height!r}")
        bpp, rows, (even_w, even_h) = _PLANES[gst_format]
        if (even_w and width % 2) or (even_h and height % 2):
            need = "an even width and height" if even_h else "an even width"
            raise ValueError(f"{gst_format} needs {need}, got {width}x{height}")
        self.format = gst_format
        self.width, self.height = width, height
        self.planes = []  # (row bytes, rows, GStreamer stride)
        for (bn, bd), (rn, rd) in zip(bpp, rows):
            row = width * bn // bd
            self.planes.append((row, height * rn // rd, (row + 3) & ~3))
        self.size = sum(r * n for r, n, _ in self.planes)
        self.gst_size = sum(s * n for _, n, s in self.planes)
        self.tight_is_gst = all(r == s for r, _, s in self.planes)

    def shape(self):
        """The numpy shape pyvirtualcam uses for this format."""
        w, h = self.width, self.height
        return {"RGB": (h, w, 3), "BGR": (h, w, 3), "RGBA": (h, w, 4), "BGRA": (h, w, 4),
                "RGBx": (h, w, 4), "BGRx": (h, w, 4), "GRAY8": (h, w),
                "I420": (h * 3 // 2, w), "NV12": (h * 3 // 2, w),
                "YUY2": (h, w, 2), "UYVY": (h, w, 2)}[self.format]

    def describe_size(self):
        return f"{self.format} {self.width}x{self.height} needs {self.size} bytes"

    def repack(self, src, dst):
        """Copy tight rows from ``src`` into GStreamer's padded rows in ``dst``."""
        si = di = 0
        for row, rows, stride in self.planes:
            for _ in range(rows):
                dst[di:di + row] = src[si:si + row]
                si += row
                di += stride


# --- where the camera is -------------------------------------------------------------------------

def find_loopback_devices():
    """[(``/dev/videoN``, card label)] of the v4l2loopback devices, lowest number first.

    v4l2loopback nodes are virtual devices (``/sys/devices/virtual/video4linux``) with the
    module's ``max_openers`` attribute; real cameras and vivid hang off a bus."""
    base = "/sys/class/video4linux"
    try:
        names = os.listdir(base)
    except OSError:
        return []
    found = []
    for n in names:
        if not re.fullmatch(r"video\d+", n):
            continue
        sysdir = os.path.join(base, n)
        real = os.path.realpath(sysdir)
        if not (os.path.exists(os.path.join(sysdir, "max_openers"))
                or "/devices/virtual/" in real):
            continue
        try:
            with open(os.path.join(sysdir, "name")) as f:
                label = f.read().strip()
        except OSError:
            label = ""
        found.append((int(n[5:]), "/dev/" + n, label))
    return [(dev, label) for _, dev, label in sorted(found)]


def pipewire_socket():
    """The socket libpipewire would connect to (``PIPEWIRE_REMOTE`` or
    ``$XDG_RUNTIME_DIR/pipewire-0``), or None without a runtime directory."""
    remote = os.environ.get("PIPEWIRE_REMOTE") or "pipewire-0"
    if remote.startswith("/"):
        return remote
    runtime = os.environ.get("PIPEWIRE_RUNTIME_DIR") or os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, remote) if runtime else None


def _no_loopback_text():
    return (f"no v4l2loopback device exists; load one with `{MODPROBE}` "
            f"(the module is in the v4l2loopback-dkms package: `{INSTALL_LOOPBACK}`)")


def select_camera(backend="auto", device=None):
    """Resolve ``backend``/``device`` to (``"v4l2"``, ``/dev/videoN``) or (``"pipewire"``, node
    name); raises CameraError naming what is missing and how to get it."""
    if backend not in ("auto", "v4l2", "pipewire"):
        raise ValueError(f"backend must be 'auto', 'v4l2' or 'pipewire', got {backend!r}")
    if backend == "pipewire":
        return "pipewire", device or "vcamera"
    loopbacks = find_loopback_devices()
    if device is not None and backend == "auto" and not str(device).startswith("/dev/") \
            and not any(label == device for _, label in loopbacks):
        # A name that is no loopback device's label: a PipeWire node name.
        return "pipewire", device
    if device is not None:
        device = str(device)
        if device.startswith("/dev/"):
            if not os.path.exists(device):
                raise CameraError(f"{device} does not exist; "
                                  + (f"the v4l2loopback devices are {_list(loopbacks)}"
                                     if loopbacks else _no_loopback_text()))
            return "v4l2", device
        for dev, label in loopbacks:
            if label == device:
                return "v4l2", dev
        raise CameraError(f"no v4l2loopback device has the card label {device!r}; "
                          + (f"the v4l2loopback devices are {_list(loopbacks)}" if loopbacks
                             else _no_loopback_text()))
    if loopbacks:
        return "v4l2", loopbacks[0][0]
    if backend == "v4l2":
        raise CameraError(_no_loopback_text())
    sock = pipewire_socket()
    if sock and os.path.exists(sock):
        return "pipewire", "vcamera"
    raise CameraError(
        f"no camera to send to: {_no_loopback_text()}; and no PipeWire session "
        + (f"(no socket at {sock}: start pipewire and wireplumber, e.g. "
           f"`systemctl --user start pipewire wireplumber`)" if sock else
           "(XDG_RUNTIME_DIR is not set: run from a desktop session or set it)"))


def _list(loopbacks):
    return ", ".join(f"{dev} ({label!r})" for dev, label in loopbacks)


def _helper_env():
    """The helper's environment: our plugins on GST_PLUGIN_PATH when it is not set."""
    env = dict(os.environ)
    if not env.get("GST_PLUGIN_PATH"):
        target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(CHECKOUT, "target")
        for profile in ("release", "debug"):
            d = os.path.join(target, profile)
            if os.path.exists(os.path.join(d, "libgstshmring.so")):
                env["GST_PLUGIN_PATH"] = d
                break
    return env


COUNTING = os.environ.get("VCAMERA_COUNT") == "1"


def _sink_launch(backend, device, gst_format):
    """The helper pipeline after ``shmringsrc``. With VCAMERA_COUNT=1 (benchmarks) an identity
    before the sink prints a line per frame, counted in ``Camera.frames_delivered``."""
    count = ["identity", "name=vcamcount", "silent=false", "!"] if COUNTING else []
    if backend == "v4l2":
        out = gst_format if gst_format in _V4L2_PASSTHROUGH else "I420"
        return ["videoconvert", "!", f"video/x-raw,format={out}", "!"] + count + [
            "v4l2loopsink", "name=vcamsink", f"device={device}", "sync=false"]
    return ["videoconvert", "!"] + count + [
        "pwvideosink", "name=vcamsink", f"node-name={device}", "sync=false"]


# --- the helper process ----------------------------------------------------------------------

_ERROR_RE = re.compile(r"^ERROR: from element (\S+): (.*)$")
_LAUNCH_NOISE = ("ERROR:", "WARNING:", "Setting pipeline", "Freeing pipeline", "Execution ended",
                 "Got EOS", "Redistribute latency", "Pipeline is", "New clock", "Interrupt:",
                 "Got message", "Waiting for EOS", "EOS on shutdown", "/GstPipeline:", "vcamera:")


class _Helper:
    """``gst-launch-1.0 -v <launch>``, supervised; its output is parsed on a thread."""

    def __init__(self, launch, ring_name=None):
        argv = ["gst-launch-1.0", "-v"] + launch
        # The supervisor watches its stdin: a pipe whose write end only this process holds.
        cmd = [sys.executable, "-S", "-u", os.path.abspath(__file__), "_supervise"]
        if ring_name:
            cmd += ["--unlink", ring_name]
        cmd += ["--"] + argv
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=_helper_env(),
                                     start_new_session=True)
        self.lines = collections.deque(maxlen=200)
        self.launch_pid = None
        self.delivered = 0  # frames past the identity named vcamcount (VCAMERA_COUNT=1)
        self.started = threading.Event()   # pipeline set to PLAYING
        self.accepted = threading.Event()  # the camera sink accepted the caps
        self.exited = threading.Event()    # output closed (helper gone)
        self.error = None
        self.missing_plugin = None
        self._error_lines = None
        self._thread = threading.Thread(target=self._read, name="vcamera-helper", daemon=True)
        self._thread.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.lines.append(line)
            self._parse(line)
        self._finish_error()
        self.exited.set()
        self.started.set()
        self.accepted.set()

    def _parse(self, line):
        if self._error_lines is not None:
            if line.startswith(_LAUNCH_NOISE):
                self._finish_error()
            else:
                self._error_lines.append(line)
                return
        m = _ERROR_RE.match(line)
        if m and self.error is None:
            self._error_lines = [m.group(2)]
            return
        if line.startswith("vcamera: helper pid "):
            self.launch_pid = int(line.split()[-1])
        elif line.startswith("Setting pipeline to PLAYING"):
            self.started.set()
        elif ":vcamcount: last-message = chain" in line:
            self.delivered += 1
        elif ":vcamsink.GstPad:sink: caps = " in line:
            self.accepted.set()
        elif "erroneous pipeline: no element" in line:
            self.missing_plugin = line.split("no element", 1)[1].strip().strip('"')

    def _finish_error(self):
        """Make the message out of an ``ERROR: from element`` block: the detailed text after the
        debug location (our elements put the full sentence there) or the short message."""
        lines, self._error_lines = self._error_lines, None
        if not lines or self.error is not None:
            return
        short = lines[0]
        detail = []
        if len(lines) > 1 and lines[1].startswith("Additional debug info"):
            rest = lines[2:]
            # The first line is "file(line): function (): /GstPipeline:...:"; the text follows
            # after it (or on the same line after the element path).
            if rest:
                tail = rest[0].split(":vcamsink:", 1)
                if len(tail) == 2 and tail[1].strip():
                    detail.append(tail[1].strip())
                for r in rest[1:]:
                    if r.strip():
                        detail.append(r.strip())
        detail = " ".join(detail)
        if detail and short.endswith(".") and len(short) < 60:
            text = detail  # GStreamer's generic sentence ("Resource not found.") says nothing
        else:
            text = short + (f" ({detail})" if detail else "")
        self.error = text

    def output(self):
        return "\n".join(self.lines)

    def wait(self, event, timeout):
        """Wait for ``event`` or an error (gst-launch may linger after posting one)."""
        deadline = time.monotonic() + timeout
        while not event.wait(0.05):
            if self.error or time.monotonic() >= deadline:
                break
        return event.is_set() or bool(self.error)

    def running(self):
        return self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT):
        """Close the watch pipe (the supervisor then stops gst-launch) and reap; kill if stuck."""
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._thread.join(2.0)


def _die_with(parent):
    def pre():
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)
    return pre


def _supervise(argv):
    """``vcamera.py _supervise [--unlink NAME] -- gst-launch-1.0 ...``: run gst-launch, stop it
    (SIGINT, then SIGKILL after 1.5 s) when stdin reaches EOF (the app closed the camera or died),
    exit with its status. Unlinks the app's ring at the end."""
    ring = None
    if argv[:1] == ["--unlink"]:
        ring, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with(os.getpid()))
    print(f"vcamera: helper pid {child.pid}", flush=True)

    def forward(sig, _frame):
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    stop_at = None
    try:
        while child.poll() is None:
            if stop_at is None:
                try:
                    r, _, _ = select.select([0], [], [], 0.1)
                except InterruptedError:
                    continue
                if r and not os.read(0, 4096):
                    child.send_signal(signal.SIGINT)  # the app is gone or closed the camera
                    stop_at = time.monotonic() + 1.5
            else:
                if time.monotonic() >= stop_at:
                    child.kill()
                    child.wait()
                    break
                time.sleep(0.02)
    finally:
        if ring:
            try:
                os.unlink("/dev/shm/" + ring.lstrip("/"))
            except OSError:
                pass
    rc = child.wait()
    return 128 - rc if rc < 0 else rc


# --- the camera --------------------------------------------------------------------------------

_counter = 0


class Camera:
    """A virtual camera fed by :meth:`send`. See the module documentation."""

    def __init__(self, width, height, fps, *, fmt=PixelFormat.RGB, device=None, backend="auto",
                 print_fps=False, **kwargs):
        global _counter
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if not isinstance(fmt, PixelFormat):
            raise ValueError(f"fmt must be a PixelFormat, got {fmt!r}")
        if not fps or fps <= 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        self._helper = None
        self._writer = None
        self._closed = False
        self._layout = _Layout(fmt.value, width, height)
        self._fmt = fmt
        self._fps = fps
        rate = fractions.Fraction(fps).limit_denominator(1001)
        self._period = 1.0 / float(fps)
        self._period_ns = int(round(1e9 / float(fps)))
        self._backend, self._device = select_camera(backend, device)
        self._frames_sent = 0
        self._t0 = None
        self._next = None
        self._print_fps = print_fps
        self._fps_window = collections.deque(maxlen=max(2, int(fps * 2) + 1))
        self._last_print = time.monotonic()
        self._scratch = None if self._layout.tight_is_gst else bytearray(self._layout.gst_size)

        import shmring  # beside this file
        _counter += 1
        self._ring_name = f"/vcamera-{os.getpid()}-{_counter}"
        caps = (f"video/x-raw,format={fmt.value},width={width},height={height},"
                f"framerate={rate.numerator}/{rate.denominator}")
        self._writer = shmring.Writer(self._ring_name, caps=caps, slots=4,
                                      slot_size=self._layout.gst_size)
        launch = ["shmringsrc", f"shm-name={self._ring_name}", "timeout=0", "!"]
        launch += _sink_launch(self._backend, self._device, fmt.value)
        try:
            self._helper = _Helper(launch, ring_name=self._ring_name)
            if not self._helper.wait(self._helper.started, START_TIMEOUT):
                raise CameraError(f"the helper pipeline did not start within {START_TIMEOUT:.0f} s",
                                  self._helper.output())
            self._check()
        except BaseException:
            self.close()
            raise

    # pyvirtualcam's properties
    @property
    def width(self):
        return self._layout.width

    @property
    def height(self):
        return self._layout.height

    @property
    def fps(self):
        return self._fps

    @property
    def fmt(self):
        return self._fmt

    @property
    def device(self):
        """``/dev/videoN`` (v4l2) or the PipeWire node name."""
        return self._device

    @property
    def backend(self):
        return self._backend

    @property
    def frames_sent(self):
        return self._frames_sent

    @property
    def current_fps(self):
        """Frames per second over the last two seconds of send() calls."""
        w = self._fps_window
        if len(w) < 2 or w[-1] == w[0]:
            return 0.0
        return (len(w) - 1) / (w[-1] - w[0])

    @property
    def helper_pids(self):
        """(supervisor pid, gst-launch pid) of the helper, for monitoring."""
        h = self._helper
        return (h.proc.pid, h.launch_pid) if h else (None, None)

    @property
    def frames_delivered(self):
        """Frames the helper passed to the camera sink (only with VCAMERA_COUNT=1, else None)."""
        return self._helper.delivered if (self._helper and COUNTING) else None

    @property
    def helper_output(self):
        return self._helper.output() if self._helper else ""

    def _fail(self, message):
        raise CameraError(f"{self._backend} camera {self._device}: {message}",
                          self._helper.output() if self._helper else "")

    def _check(self):
        """Raise CameraError if the helper reported an error or is gone."""
        if self._closed:
            raise CameraError("the camera is closed")
        h = self._helper
        if h.error:
            self._fail(h.error)
        if not h.running() or h.exited.is_set():
            h.exited.wait(2.0)  # let the reader thread collect the last lines
            if h.error:
                self._fail(h.error)
            if h.missing_plugin:
                self._fail(f"GStreamer has no element {h.missing_plugin!r}: build the vcambridge "
                           f"plugins (cargo build --release) and set GST_PLUGIN_PATH to "
                           f"target/release, or install them (meson install)")
            self._fail(f"the helper pipeline exited (status {h.proc.poll()}); its output:\n"
                       + "\n".join(list(h.lines)[-15:]))

    def send(self, frame):
        """Publish one frame: bytes-like of the tight frame size, or a uint8 numpy array of
        pyvirtualcam's shape ((h, w, 3) for RGB/BGR, (h, w) for GRAY, (h*3//2, w) for I420/NV12,
        (h, w, 2) for YUYV/UYVY)."""
        self._check()
        lay = self._layout
        if hasattr(frame, "__array_interface__") and hasattr(frame, "shape"):
            shape = tuple(frame.shape)
            if shape != lay.shape():
                raise ValueError(f"frame shape {shape} does not match {self._fmt.name} "
                                 f"{lay.width}x{lay.height}: expected {lay.shape()}")
            if str(frame.dtype) != "uint8":
                raise ValueError(f"frame dtype is {frame.dtype}, expected uint8")
            if not frame.flags["C_CONTIGUOUS"]:
                frame = frame.copy()
        try:
            data = memoryview(frame).cast("B")
        except TypeError as e:
            raise ValueError(f"frame must be bytes, bytearray, memoryview or a numpy array "
                             f"({e})") from None
        if len(data) != lay.size:
            raise ValueError(f"frame has {len(data)} bytes; {self._fmt.name} "
                             f"{lay.width}x{lay.height} needs {lay.size} bytes "
                             f"(numpy shape {lay.shape()})")
        if self._scratch is not None:
            lay.repack(data, self._scratch)
            data = self._scratch
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        self._writer.write(data, pts=int((now - self._t0) * 1e9), duration=self._period_ns)
        self._frames_sent += 1
        self._fps_window.append(now)
        if self._frames_sent == 1:
            # The first frame: wait until the camera took the format (or said why not).
            if not self._helper.wait(self._helper.accepted, START_TIMEOUT):
                self._fail(f"the camera did not accept {self._fmt.name} {lay.width}x{lay.height} "
                           f"within {START_TIMEOUT:.0f} s")
            self._check()
        if self._print_fps and now - self._last_print >= 1.0:
            self._last_print = now
            print(f"{self.current_fps:.1f} fps", flush=True)

    def sleep_until_next_frame(self):
        """Sleep until the next frame is due (``fps`` after the previous one, on a schedule that
        does not drift; after a stall longer than a frame the schedule restarts from now)."""
        now = time.monotonic()
        if self._t0 is None:
            return
        if self._next is None:
            self._next = self._t0
        self._next += self._period
        if self._next < now - self._period:
            self._next = now  # we fell behind: don't try to catch up with a burst
        delay = self._next - now
        if delay > 0:
            time.sleep(delay)
        self._check()

    def close(self):
        """End the stream, stop the helper (bounded) and remove the ring. Never raises."""
        if self._closed:
            return
        self._closed = True
        h = self._helper
        if h is not None:
            if self._writer is not None and h.running():
                try:
                    self._writer.eos()  # the helper drains the ring, ends and exits
                except Exception:
                    pass
                try:
                    h.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
            h.stop()
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# --- command line --------------------------------------------------------------------------------

_STDIN_HELP = """\
usage: vcamera.py stdin --pixel-format FMT --size WxH --fps N [--device D]
                        [--sink auto|v4l2|pipewire] [--no-pace]

Raw frames on stdin (back to back, tightly packed, as `ffmpeg -f rawvideo` writes them) to a camera.
  --pixel-format FMT  (-pix_fmt, -pixel_format) {fmts}
  --size WxH          (-s, -video_size) frame size, e.g. 1280x720
  --fps N             (-r, -framerate) frame rate: 30, 29.97 or 30000/1001
  --device D          /dev/videoN or card label (v4l2), node name (pipewire); default: the first
                      v4l2loopback device, else the PipeWire node "vcamera"
  --sink KIND         auto (default: v4l2loopback if a device exists, else PipeWire), v4l2, pipewire
  --no-pace           pass frames on as they arrive (ffmpeg's behaviour; if the producer is faster
                      than the camera, the camera shows the newest frame and skips the others);
                      by default frames go out at --fps at most and a faster producer is held
                      back by the pipe
Ends when stdin ends (exit 0) or on Ctrl-C/SIGTERM (exit 0); a camera error ends it with status 1
and the reason on stderr."""


def _usage_error(message):
    print(f"stdin-camera: {message}", file=sys.stderr)
    sys.exit(2)


def _parse_stdin_args(args):
    opts = {"pixel_format": None, "size": None, "fps": None, "device": None, "sink": "auto",
            "pace": True}
    names = {"--pixel-format": "pixel_format", "-pix_fmt": "pixel_format",
             "-pixel_format": "pixel_format", "--size": "size", "-s": "size",
             "-video_size": "size", "--fps": "fps", "-r": "fps", "-framerate": "fps",
             "--device": "device", "--sink": "sink"}
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-h", "--help"):
            print(_STDIN_HELP.format(fmts=", ".join(FFMPEG_FORMATS)))
            sys.exit(0)
        if a == "--no-pace":
            opts["pace"] = False
            i += 1
            continue
        key, val = (a.split("=", 1) + [None])[:2] if a.startswith("--") else (a, None)
        if key not in names:
            _usage_error(f"unknown option {a} (see --help)")
        if val is None:
            if i + 1 >= len(args):
                _usage_error(f"{key} needs a value (see --help)")
            val = args[i + 1]
            i += 1
        opts[names[key]] = val
        i += 1
    for k, flag in (("pixel_format", "--pixel-format"), ("size", "--size"), ("fps", "--fps")):
        if opts[k] is None:
            _usage_error(f"{flag} is required (see --help)")
    if opts["pixel_format"] not in FFMPEG_FORMATS:
        _usage_error(f"unknown pixel format {opts['pixel_format']!r}; known: "
                         + ", ".join(FFMPEG_FORMATS))
    m = re.fullmatch(r"(\d+)x(\d+)", opts["size"])
    if not m:
        _usage_error(f"--size must be WxH (e.g. 1280x720), got {opts['size']!r}")
    opts["width"], opts["height"] = int(m.group(1)), int(m.group(2))
    try:
        rate = fractions.Fraction(opts["fps"]).limit_denominator(1001)
        if rate <= 0:
            raise ValueError
    except (ValueError, ZeroDivisionError):
        _usage_error(f"--fps must be a positive number or N/D, got {opts['fps']!r}")
    opts["rate"] = rate
    if opts["sink"] not in ("auto", "v4l2", "pipewire"):
        _usage_error(f"--sink must be auto, v4l2 or pipewire, got {opts['sink']!r}")
    return opts


def _read_frame(fd, buf):
    """Fill ``buf`` from ``fd``; returns the number of bytes read (less only at EOF)."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        try:
            n = os.readv(fd, [view[got:]])
        except InterruptedError:
            continue
        if n == 0:
            break
        got += n
    return got


def _stdin_main(args):
    o = _parse_stdin_args(args)
    fmt = PixelFormat(FFMPEG_FORMATS[o["pixel_format"]])
    rate = o["rate"]
    stopping = []

    def stop(sig, _frame):
        stopping.append(sig)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    cam = None
    try:
        cam = Camera(o["width"], o["height"], rate, fmt=fmt, device=o["device"],
                     backend=o["sink"])
        where = (f"v4l2loopback {cam.device}" if cam.backend == "v4l2"
                 else f"PipeWire camera node {cam.device!r}")
        print(f"stdin-camera: {o['pixel_format']} {cam.width}x{cam.height} @ {float(rate):g} fps "
              f"-> {where}" + (" (pick it in the browser)" if cam.backend == "v4l2" else ""),
              file=sys.stderr, flush=True)
        frame = bytearray(cam._layout.size)
        while True:
            got = _read_frame(0, frame)
            if got < len(frame):
                if got:
                    print(f"stdin-camera: stdin ended inside a frame ({got} of {len(frame)} "
                          f"bytes): do --size and --pixel-format match the producer?",
                          file=sys.stderr)
                break
            cam.send(frame)
            if o["pace"]:
                cam.sleep_until_next_frame()
        cam.close()
        delivered = cam.frames_delivered
        print(f"stdin-camera: {cam.frames_sent} frames sent"
              + (f", {delivered} delivered" if delivered is not None else ""), file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        return 0
    except (CameraError, ValueError) as e:
        print(f"stdin-camera: {e}", file=sys.stderr)
        return 1
    finally:
        if cam is not None:
            cam.close()


def _list_main():
    loopbacks = find_loopback_devices()
    for dev, label in loopbacks:
        print(f"v4l2 {dev} {label}")
    sock = pipewire_socket()
    if sock and os.path.exists(sock):
        print(f"pipewire {sock}")
    if not loopbacks and not (sock and os.path.exists(sock)):
        print(f"no camera: {_no_loopback_text()}; no PipeWire socket at {sock}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_supervise"]:
        return _supervise(argv[1:])
    if argv[:1] == ["stdin"]:
        return _stdin_main(argv[1:])
    if argv[:1] == ["list"]:
        return _list_main()
    print("usage: vcamera.py stdin --help | vcamera.py list\n(import it: from vcamera import "
          "Camera, PixelFormat)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
