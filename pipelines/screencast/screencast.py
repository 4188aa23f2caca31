#!/usr/bin/python3
"""Screen cast of a GNOME session -> another Wayland compositor, full screen (issue 11).

Run through pipelines/screencast-to-wayland.sh; `--help` is the reference. One process holds one
D-Bus connection for the whole run (Mutter closes a screen-cast session as soon as the connection
that created it goes away) and owns the GStreamer pipeline
`pipewiresrc path=NODE ! [tee !] videoconvert ! waylandsink display=TARGET fullscreen=true`.

Needs /usr/bin/python3 with gi (python3-gi, gir1.2-gstreamer-1.0, gir1.2-gst-plugins-base-1.0).
"""

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstAllocators", "1.0")
from gi.repository import Gio, GLib, Gst, GstAllocators  # noqa: E402

TAG = "[screencast]"
MUTTER_NAME = "org.gnome.Mutter.ScreenCast"
MUTTER_PATH = "/org/gnome/Mutter/ScreenCast"
MUTTER_IFACE = "org.gnome.Mutter.ScreenCast"
PORTAL_NAME = "org.freedesktop.portal.Desktop"
PORTAL_PATH = "/org/freedesktop/portal/desktop"
PORTAL_IFACE = "org.freedesktop.portal.ScreenCast"
CALL_TIMEOUT_MS = 5000
# How long to wait for a first frame before trying the shared-memory fallback pipeline.
FIRST_FRAME_FALLBACK_S = 1.0

HELP_EPILOG = """\
routes:
  Mutter (default when org.gnome.Mutter.ScreenCast is on the session bus): CreateSession ->
  RecordMonitor(--monitor, default the primary) or RecordVirtual(--virtual WxH) -> Start; the
  PipeWire node id comes from the stream's PipeWireStreamAdded signal. The session lives as long
  as this process's D-Bus connection.
  Portal (--portal, and the default when Mutter's API is absent): org.freedesktop.portal.ScreenCast
  CreateSession -> SelectSources(monitor, persist_mode=2, restore_token) -> Start ->
  OpenPipeWireRemote; pipewiresrc gets the fd. The restore token is kept in
  $XDG_STATE_HOME/vcambridge/screencast-restore-token (~/.local/state/...), so a restart does not
  ask again. UNTESTED here (no portal backend that screencasts without a GPU on these machines).

buffers:
  pipewiresrc takes DMA-BUF when Mutter and waylandsink can share them, shared memory (memfd)
  otherwise; PipeWire's format negotiation decides. If no frame arrives within 1 s of the stream
  being linked, or the pipeline fails to negotiate, the pipeline is rebuilt once in shared-memory
  mode (pipewiresrc always-copy=true, videoconvert to a wl_shm format) and keeps that mode.

recovery:
  Mutter/the portal gone (NameOwnerChanged), the session Closed, or the screen-cast node gone:
  a message, the pipeline stopped, a new session as soon as the API is on the bus again.
  The target compositor gone (its socket hangs up or waylandsink fails): a message, then the
  target socket is polled every 250 ms and the pipeline rebuilt on the same node when it is back.

--also (repeatable), one capture, several consumers through a tee:
  ring:NAME      shmringsink shm-name=NAME (read with shmringsrc shm-name=NAME or
                 plugins/shmring/python/shmring.py)
  camera[:NAME]  pwvideosink node-name=NAME (default vcambridge-screen), a PipeWire camera node
                 on the PipeWire this process uses (the private one with --start-headless)
  An --also branch that fails ends the run (status 1) with the element's message.

--start-headless WxH:
  Starts dbus-daemon, pipewire, wireplumber and a headless compositor (gnome-shell --headless
  when installed, else mutter --headless --no-x11) with a virtual monitor of WxH, in a private
  0700 XDG_RUNTIME_DIR with its own session bus, then waits (at most --start-timeout) for
  org.gnome.Mutter.ScreenCast. Clients go to the printed WAYLAND_DISPLAY. Everything started is
  stopped on exit. If Mutter's API is already on the session bus, that session is used and
  nothing is started.

statistics (every --stats-interval s, one line on stderr):
  [screencast] stats in=N out=N rate_in=F rate_out=F dropped=N sink_dropped=N size=WxH
  format=F buffers=dmabuf|memfd|memory node=ID latency_ms=P50 [ring:NAME=N ...]
  in/out count frames (cumulative, this process) leaving pipewiresrc / reaching waylandsink;
  dropped = in - out (leaky queue or renegotiation); latency = Mutter's frame timestamp to the
  buffer reaching waylandsink (median of the interval).

exit: 0 on SIGINT/SIGTERM (everything started is stopped within 2 s), 1 on a fatal error
(no API within --start-timeout, an --also branch failing, a missing element), 2 on bad flags.
"""


def log(msg):
    print(f"{TAG} {msg}", file=sys.stderr, flush=True)


def parse_size(text):
    try:
        w, h = text.lower().split("x")
        w, h = int(w), int(h)
        if w <= 0 or h <= 0:
            raise ValueError
        return w, h
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 1280x720), got {text!r}")


def parse_also(text):
    kind, _, arg = text.partition(":")
    if kind == "ring":
        if not arg:
            raise argparse.ArgumentTypeError("ring needs a shm name: --also ring:/sc")
        return ("ring", arg)
    if kind == "camera":
        return ("camera", arg or "vcambridge-screen")
    raise argparse.ArgumentTypeError(f"unknown --also {text!r}: use ring:NAME or camera[:NAME]")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="screencast-to-wayland.sh",
        description="Show the screen of the GNOME session on the current D-Bus session bus on "
        "another Wayland compositor, full screen, through a PipeWire screen cast.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=HELP_EPILOG,
    )
    p.add_argument("--display", metavar="NAME",
                   help="target Wayland display: a socket name in $XDG_RUNTIME_DIR or an absolute "
                   "path (default: $WAYLAND_DISPLAY)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--monitor", metavar="CONNECTOR", default="",
                     help="record this monitor (e.g. Meta-0); default: the primary monitor")
    src.add_argument("--virtual", metavar="WxH", type=parse_size,
                     help="record a new virtual monitor of this size (Mutter route only)")
    p.add_argument("--portal", action="store_true",
                   help="use org.freedesktop.portal.ScreenCast even when Mutter's API is there "
                   "(untested here)")
    p.add_argument("--start-headless", metavar="WxH", type=parse_size,
                   help="start a private headless GNOME (+ PipeWire) first; see below")
    p.add_argument("--compositor", choices=["auto", "mutter", "gnome-shell"], default="auto",
                   help="what --start-headless starts (auto: gnome-shell when installed)")
    p.add_argument("--start-timeout", metavar="S", type=float, default=30.0,
                   help="bound on waiting for the screen-cast API after --start-headless "
                   "(default 30)")
    p.add_argument("--also", metavar="ring:NAME|camera[:NAME]", type=parse_also, action="append",
                   default=[], help="also send the frames to another consumer (repeatable)")
    p.add_argument("--cursor", choices=["hidden", "embedded", "metadata"], default="embedded",
                   help="cursor mode of the screen cast (default embedded)")
    p.add_argument("--stats-interval", metavar="S", type=float, default=5.0,
                   help="seconds between statistics lines (default 5; 0 = none)")
    p.add_argument("--node", metavar="ID", type=int,
                   help="show this existing PipeWire node (a session another program holds, "
                   "e.g. the benchmark); no screen-cast session is made")
    p.add_argument("--no-fullscreen", action="store_true",
                   help="a normal window instead of full screen")
    return p.parse_args(argv)


CURSOR_MODES = {"hidden": 0, "embedded": 1, "metadata": 2}


def set_pdeathsig():
    """In a child: die with SIGTERM when the helper dies, even by SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def socket_alive(path):
    """Does something accept connections on this Unix socket?"""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class HeadlessSession:
    """dbus-daemon + pipewire + wireplumber + headless mutter/gnome-shell in a private 0700
    runtime dir. Children get their own session (a terminal's Ctrl-C reaches only the helper,
    which stops them in order) and PR_SET_PDEATHSIG (they die with the helper)."""

    def __init__(self, size, compositor):
        self.size = size
        self.compositor = compositor
        self.dir = tempfile.mkdtemp(prefix="vcb-screencast-")
        os.chmod(self.dir, 0o700)
        self.children = []  # (name, Popen), in start order
        self.bus_address = None
        self.env = dict(os.environ)
        for k in ("WAYLAND_DISPLAY", "DISPLAY", "PIPEWIRE_REMOTE", "PIPEWIRE_RUNTIME_DIR",
                  "G_DEBUG", "DBUS_SESSION_BUS_ADDRESS"):
            self.env.pop(k, None)
        self.env["XDG_RUNTIME_DIR"] = self.dir
        self.env["XDG_SESSION_TYPE"] = "wayland"

    def _spawn(self, name, argv, **kw):
        logf = open(os.path.join(self.dir, f"{name}.log"), "ab")
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=set_pdeathsig, **kw)
        logf.close()
        self.children.append((name, proc))
        log(f"started {name} (pid {proc.pid})")
        return proc

    def log_tail(self, name, lines=15):
        try:
            with open(os.path.join(self.dir, f"{name}.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def _wait(self, what, proc, name, timeout, ready):
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited (status {proc.returncode}) while starting:\n"
                                   f"{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready within {timeout:.0f} s:\n{self.log_tail(name)}")
            time.sleep(0.05)

    def start(self, timeout):
        w, h = self.size
        bus_path = os.path.join(self.dir, "bus")
        self.bus_address = f"unix:path={bus_path}"
        dbus = self._spawn("dbus-daemon", ["dbus-daemon", "--session", "--nofork", "--nopidfile",
                                           f"--address={self.bus_address}"])
        self._wait("dbus-daemon", dbus, "dbus-daemon", timeout, lambda: socket_alive(bus_path))
        self.env["DBUS_SESSION_BUS_ADDRESS"] = self.bus_address
        pw = self._spawn("pipewire", ["pipewire"])
        pw_sock = os.path.join(self.dir, "pipewire-0")
        self._wait("pipewire", pw, "pipewire", timeout, lambda: socket_alive(pw_sock))
        self._spawn("wireplumber", ["wireplumber"])
        comp = self.compositor
        if comp == "auto":
            comp = "gnome-shell" if shutil.which("gnome-shell") else "mutter"
        if not shutil.which(comp):
            raise RuntimeError(f"{comp} is not installed (apt-get install {comp})")
        argv = [comp, "--headless", "--no-x11", "--wayland-display", "mutter-0",
                "--virtual-monitor", f"{w}x{h}"]
        if comp == "gnome-shell":
            argv.insert(1, "--wayland")
        self.compositor_name = comp
        self._spawn(comp, argv)
        self.wayland_display = os.path.join(self.dir, "mutter-0")

    def pipewire_dir(self):
        return self.dir

    def check_alive(self):
        """Name of a child that has exited, or None."""
        for name, proc in self.children:
            if proc.poll() is not None:
                return name
        return None

    def stop(self, deadline):
        """SIGTERM everything (newest first), SIGKILL what is left at `deadline`, reap, remove
        the runtime dir."""
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                try:
                    proc.terminate()
                except OSError:
                    pass
        for name, proc in reversed(self.children):
            left = deadline - time.monotonic()
            try:
                proc.wait(timeout=max(left, 0.01))
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {proc.pid}) ignored SIGTERM, killing it")
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Stats:
    """Counters touched from streaming threads (GIL-atomic int updates), read by the main loop."""

    def __init__(self):
        self.frames_in = 0
        self.frames_out = 0
        self.branch = {}
        self.latencies = []
        self.buffer_kind = "-"
        self.recheck = True  # read the buffer type and caps from the next buffer
        self.last = (time.monotonic(), 0, 0)
        self.lock = threading.Lock()


class Bridge:
    def __init__(self, args):
        self.args = args
        self.loop = GLib.MainLoop()
        self.exit_code = 0
        self.stopping = False
        self.headless = None
        self.conn = None
        self.route = None
        self.name_watch = None
        self.session_path = None
        self.stream_path = None
        self.node_id = None
        self.pw_fd = None  # portal: fd from OpenPipeWireRemote (kept for reconnections)
        self.signal_subs = []
        self.pipeline = None
        self.shm_fallback = False
        self.first_frame_timer = None
        self.target_watch = None
        self.target_sock = None
        self.retry_source = None
        self.stats = Stats()
        self.caps_text = ("-", "-")
        self.api_lost_at = None

    # ----- start-up -------------------------------------------------------------------------

    def target_path(self):
        name = self.args.display or os.environ.get("WAYLAND_DISPLAY")
        if not name:
            raise SystemExit(f"{TAG} no target display: pass --display NAME or set WAYLAND_DISPLAY")
        if os.path.isabs(name):
            return name
        rt = os.environ.get("XDG_RUNTIME_DIR")
        if not rt:
            raise SystemExit(f"{TAG} XDG_RUNTIME_DIR is not set: pass --display as an absolute "
                             "path (e.g. /run/user/1000/wayland-0)")
        return os.path.join(rt, name)

    def connect_bus(self):
        addr = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        if self.args.start_headless:
            try:
                existing = Gio.bus_get_sync(Gio.BusType.SESSION, None) if addr else None
            except GLib.Error:
                existing = None
            if existing and self.has_name(existing, MUTTER_NAME):
                log("Mutter's screen-cast API is already on the session bus: using it, "
                    "starting nothing")
                return existing
            self.headless = HeadlessSession(self.args.start_headless, self.args.compositor)
            self.headless.start(self.args.start_timeout)
            # pipewiresrc (and pwvideosink) in this process use the private PipeWire.
            os.environ["PIPEWIRE_RUNTIME_DIR"] = self.headless.pipewire_dir()
            os.environ.pop("PIPEWIRE_REMOTE", None)
            conn = Gio.DBusConnection.new_for_address_sync(
                self.headless.bus_address,
                Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
                | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION, None, None)
            self.wait_for_name(conn, MUTTER_NAME, self.args.start_timeout)
            log(f"headless {self.headless.compositor_name} is up; its clients go to "
                f"WAYLAND_DISPLAY={self.headless.wayland_display}")
            log(f"private session: XDG_RUNTIME_DIR={self.headless.dir} "
                f"DBUS_SESSION_BUS_ADDRESS={self.headless.bus_address}")
            return conn
        if not addr:
            raise SystemExit(f"{TAG} no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is unset): "
                             "run inside the GNOME session, or use --start-headless WxH")
        return Gio.bus_get_sync(Gio.BusType.SESSION, None)

    @staticmethod
    def has_name(conn, name):
        try:
            r = conn.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "NameHasOwner",
                               GLib.Variant("(s)", (name,)), GLib.VariantType("(b)"),
                               Gio.DBusCallFlags.NONE, CALL_TIMEOUT_MS, None)
            return r.unpack()[0]
        except GLib.Error:
            return False

    def wait_for_name(self, conn, name, timeout):
        deadline = time.monotonic() + timeout
        while not self.has_name(conn, name):
            dead = self.headless.check_alive() if self.headless else None
            if dead:
                raise RuntimeError(f"{dead} exited before {name} appeared:\n"
                                   f"{self.headless.log_tail(dead)}")
            if time.monotonic() > deadline:
                tail = self.headless.log_tail(self.headless.compositor_name) if self.headless else ""
                raise RuntimeError(f"{name} did not appear on the bus within {timeout:.0f} s"
                                   + (f"; compositor log:\n{tail}" if tail else ""))
            if self.stopping:
                return
            # Let SIGINT/SIGTERM handlers run between polls.
            GLib.MainContext.default().iteration(False)
            time.sleep(0.05)

    def run(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, self.on_signal, sig)
        self.target = self.target_path()
        if self.args.node is not None:
            self.conn = None
            return self.run_loop_node()
        try:
            self.conn = self.connect_bus()
        except RuntimeError as e:
            log(f"error: {e}")
            self.shutdown_children()
            return 1
        if self.stopping:
            self.shutdown_children()
            return 0
        self.route = "portal" if self.args.portal else None
        if self.route is None:
            self.route = "mutter" if self.has_name(self.conn, MUTTER_NAME) or not self.has_name(
                self.conn, PORTAL_NAME) else "portal"
        if self.route == "portal" and self.args.virtual:
            log("error: --virtual needs Mutter's API (the portal has no virtual monitors)")
            return 2
        name = MUTTER_NAME if self.route == "mutter" else PORTAL_NAME
        log(f"route: {self.route} ({name}); target: {self.target}")
        self.name_watch = Gio.bus_watch_name_on_connection(
            self.conn, name, Gio.BusNameWatcherFlags.NONE, self.on_api_appeared,
            self.on_api_vanished)
        if not self.has_name(self.conn, name):
            log(f"waiting for {name} on the session bus")
        if self.args.stats_interval > 0:
            GLib.timeout_add(int(self.args.stats_interval * 1000), self.print_stats)
        if self.headless:
            GLib.timeout_add(500, self.check_headless)
        self.loop.run()
        return self.exit_code

    def run_loop_node(self):
        log(f"route: existing PipeWire node {self.args.node}; target: {self.target}")
        self.route = "node"
        self.node_id = self.args.node
        if self.args.stats_interval > 0:
            GLib.timeout_add(int(self.args.stats_interval * 1000), self.print_stats)
        self.start_pipeline()
        self.loop.run()
        return self.exit_code

    def check_headless(self):
        dead = self.headless.check_alive() if self.headless else None
        if dead and not self.stopping:
            log(f"error: {dead} (started by --start-headless) exited:\n{self.headless.log_tail(dead)}")
            self.exit_code = 1
            self.begin_shutdown()
            return False
        return not self.stopping

    # ----- the screen-cast API --------------------------------------------------------------

    def on_api_appeared(self, conn, name, owner):
        if self.stopping:
            return
        if self.api_lost_at is not None:
            log(f"{name} is back (owner {owner}): starting a new session")
        try:
            if self.route == "mutter":
                self.mutter_start_session()
            else:
                self.portal_start_session()
        except GLib.Error as e:
            log(f"starting a screen-cast session failed: {e.message}; retrying in 1 s")
            self.close_session()
            self.schedule(1000, self.retry_session)

    def retry_session(self):
        if not self.stopping and self.session_path is None and self.has_name(
                self.conn, MUTTER_NAME if self.route == "mutter" else PORTAL_NAME):
            self.on_api_appeared(self.conn, "the screen-cast API", "")
        return False

    def on_api_vanished(self, conn, name):
        if self.stopping:
            return
        if self.session_path is not None or self.pipeline is not None:
            log(f"{name} went away (the compositor stopped or restarted): screen cast "
                "stopped; a new session starts as soon as it is back")
        self.api_lost_at = time.monotonic()
        self.stop_pipeline()
        self.forget_session()

    def call(self, path, iface, method, params, reply_type=None, name=None):
        r = self.conn.call_sync(name or MUTTER_NAME, path, iface, method, params,
                                GLib.VariantType(reply_type) if reply_type else None,
                                Gio.DBusCallFlags.NONE, CALL_TIMEOUT_MS, None)
        return r.unpack() if r is not None else None

    def mutter_start_session(self):
        (self.session_path,) = self.call(MUTTER_PATH, MUTTER_IFACE, "CreateSession",
                                         GLib.Variant("(a{sv})", ({},)), "(o)")
        self.subscribe(MUTTER_NAME, "org.gnome.Mutter.ScreenCast.Session", "Closed",
                       self.session_path, self.on_session_closed)
        props = {"cursor-mode": GLib.Variant("u", CURSOR_MODES[self.args.cursor])}
        siface = "org.gnome.Mutter.ScreenCast.Session"
        if self.args.virtual:
            (self.stream_path,) = self.call(self.session_path, siface, "RecordVirtual",
                                            GLib.Variant("(a{sv})", (props,)), "(o)")
        else:
            try:
                (self.stream_path,) = self.call(self.session_path, siface, "RecordMonitor",
                                                GLib.Variant("(sa{sv})", (self.args.monitor, props)),
                                                "(o)")
            except GLib.Error as e:
                if self.args.monitor:
                    known = ", ".join(self.mutter_connectors()) or "none found"
                    log(f"error: cannot record monitor {self.args.monitor!r}: {e.message} "
                        f"(connectors: {known})")
                    self.exit_code = 1
                    self.begin_shutdown()
                    return
                raise
        self.subscribe(MUTTER_NAME, "org.gnome.Mutter.ScreenCast.Stream", "PipeWireStreamAdded",
                       self.stream_path, self.on_stream_added)
        self.call(self.session_path, siface, "Start", None)
        what = f"virtual monitor {self.args.virtual[0]}x{self.args.virtual[1]}" if \
            self.args.virtual else f"monitor {self.args.monitor or '(primary)'}"
        log(f"session {self.session_path} started, recording {what}")

    def mutter_connectors(self):
        try:
            r = self.call("/org/gnome/Mutter/DisplayConfig", "org.gnome.Mutter.DisplayConfig",
                          "GetCurrentState", None, name="org.gnome.Mutter.DisplayConfig")
            return [m[0][0] for m in r[1]]
        except (GLib.Error, IndexError, TypeError):
            return []

    def subscribe(self, sender, iface, member, path, cb):
        sid = self.conn.signal_subscribe(sender, iface, member, path, None,
                                         Gio.DBusSignalFlags.NONE,
                                         lambda c, s, p, i, m, params, _data: cb(params), None)
        self.signal_subs.append(sid)

    def on_stream_added(self, params):
        (node,) = params.unpack()
        log(f"PipeWire node {node} for the screen cast")
        self.node_id = node
        self.start_pipeline()

    def on_session_closed(self, _params):
        if self.stopping:
            return
        log("Mutter closed the screen-cast session (stream ended): starting a new one in 1 s")
        self.stop_pipeline()
        self.forget_session()
        self.schedule(1000, self.retry_session)

    def forget_session(self):
        for sid in self.signal_subs:
            self.conn.signal_unsubscribe(sid)
        self.signal_subs = []
        self.session_path = None
        self.stream_path = None
        self.node_id = None
        if self.pw_fd is not None:
            os.close(self.pw_fd)
            self.pw_fd = None

    def close_session(self):
        """Ask the compositor to stop our session (best effort), then forget it."""
        if self.session_path is not None and self.conn is not None:
            try:
                if self.route == "mutter":
                    self.conn.call_sync(MUTTER_NAME, self.session_path,
                                        "org.gnome.Mutter.ScreenCast.Session", "Stop", None, None,
                                        Gio.DBusCallFlags.NONE, 500, None)
                else:
                    self.conn.call_sync(PORTAL_NAME, self.session_path,
                                        "org.freedesktop.portal.Session", "Close", None, None,
                                        Gio.DBusCallFlags.NONE, 500, None)
            except GLib.Error:
                pass
        self.forget_session()

    # ----- portal route (untested here: no portal backend screencasts without a GPU) ---------

    def token_file(self):
        state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return os.path.join(state, "vcambridge", "screencast-restore-token")

    def portal_request(self, method, params_fn, on_response):
        """Call a portal method that answers through a Request object's Response signal."""
        token = f"vcb{os.getpid()}_{int(time.monotonic() * 1000)}"
        sender = self.conn.get_unique_name()[1:].replace(".", "_")
        req_path = f"/org/freedesktop/portal/desktop/request/{sender}/{token}"

        def response(params):
            code, results = params.unpack()
            if code != 0:
                log(f"portal {method} was refused or cancelled (response {code})")
                self.close_session()
                self.schedule(5000, self.retry_session)
                return
            on_response(results)

        self.subscribe(PORTAL_NAME, "org.freedesktop.portal.Request", "Response", req_path,
                       response)
        self.call(PORTAL_PATH, PORTAL_IFACE, method, params_fn(token), "(o)", name=PORTAL_NAME)

    def portal_start_session(self):
        def created(results):
            self.session_path = results["session_handle"]
            opts = {"handle_token": None, "types": GLib.Variant("u", 1),
                    "multiple": GLib.Variant("b", False),
                    "cursor_mode": GLib.Variant("u", {0: 1, 1: 2, 2: 4}[
                        CURSOR_MODES[self.args.cursor]]),
                    "persist_mode": GLib.Variant("u", 2)}
            try:
                with open(self.token_file()) as f:
                    opts["restore_token"] = GLib.Variant("s", f.read().strip())
            except OSError:
                pass

            def sel_params(token):
                opts["handle_token"] = GLib.Variant("s", token)
                return GLib.Variant("(oa{sv})", (self.session_path, opts))

            self.portal_request("SelectSources", sel_params, selected)

        def selected(_results):
            self.portal_request(
                "Start",
                lambda token: GLib.Variant("(osa{sv})", (self.session_path, "", {
                    "handle_token": GLib.Variant("s", token)})),
                started)

        def started(results):
            token = results.get("restore_token")
            if token:
                path = self.token_file()
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(token)
            streams = results.get("streams") or []
            if not streams:
                log("portal Start returned no stream")
                return
            node = streams[0][0]
            r, fds = self.conn.call_with_unix_fd_list_sync(
                PORTAL_NAME, PORTAL_PATH, PORTAL_IFACE, "OpenPipeWireRemote",
                GLib.Variant("(oa{sv})", (self.session_path, {})), GLib.VariantType("(h)"),
                Gio.DBusCallFlags.NONE, CALL_TIMEOUT_MS, None, None)
            self.pw_fd = fds.get(r.unpack()[0])
            self.node_id = node
            log(f"portal session {self.session_path}: PipeWire node {node} (fd {self.pw_fd})")
            self.start_pipeline()

        self.portal_request(
            "CreateSession",
            lambda token: GLib.Variant("(a{sv})", ({
                "handle_token": GLib.Variant("s", token),
                "session_handle_token": GLib.Variant("s", token + "s")},)),
            created)

    # ----- the pipeline ---------------------------------------------------------------------

    def describe_pipeline(self):
        src = f"pipewiresrc name=src path={self.node_id} client-name=vcambridge-screencast"
        if self.pw_fd is not None:
            src += f" fd={self.pw_fd}"
        if self.shm_fallback:
            src += " always-copy=true"
        caps = ""
        if self.args.virtual:
            w, h = self.args.virtual
            caps = f" ! video/x-raw,width={w},height={h}"
        out = (f"videoconvert name=outconv ! waylandsink name=out display=\"{self.target}\" "
               "sync=false")
        if not self.args.also:
            return f"{src}{caps} ! {out}"
        d = f"{src}{caps} ! tee name=t t. ! queue name=outq leaky=downstream max-size-buffers=2 ! {out}"
        for i, (kind, arg) in enumerate(self.args.also):
            q = f" t. ! queue leaky=downstream max-size-buffers=2 ! videoconvert ! "
            if kind == "ring":
                d += q + f"shmringsink name=also{i} shm-name=\"{arg}\" sync=false"
            else:
                d += q + (f"pwvideosink name=also{i} node-name=\"{arg}\" "
                          f"node-description=\"vcambridge screen\" sync=false")
        return d

    def start_pipeline(self):
        if self.stopping or self.node_id is None or self.pipeline is not None:
            return
        if not socket_alive(self.target):
            log(f"target display {self.target} is not there: waiting for it")
            self.schedule(250, self.wait_target)
            return
        desc = self.describe_pipeline()
        try:
            pipeline = Gst.parse_launch(desc)
        except GLib.Error as e:
            log(f"error: cannot build `{desc}`: {e.message}")
            self.exit_code = 1
            self.begin_shutdown()
            return
        self.pipeline = pipeline
        self.watch_target()
        bus = pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self.on_message)
        src = pipeline.get_by_name("src")
        out = pipeline.get_by_name("out")
        if not self.args.no_fullscreen:
            # waylandsink 1.22 applies fullscreen when it makes its window, but setting the
            # property before that logs a CRITICAL (gst_wl_window_ensure_fullscreen on NULL);
            # setting it later is not honoured by weston. Set it now, that message silenced.
            hid = GLib.log_set_handler("GStreamer-Wayland", GLib.LogLevelFlags.LEVEL_CRITICAL,
                                       lambda *_a: None, None)
            out.set_property("fullscreen", True)
            GLib.log_remove_handler("GStreamer-Wayland", hid)
        src.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, self.probe_in)
        out.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self.probe_out)
        for i, (kind, arg) in enumerate(self.args.also):
            label = f"{kind}:{arg}"
            self.stats.branch.setdefault(label, 0)
            pipeline.get_by_name(f"also{i}").get_static_pad("sink").add_probe(
                Gst.PadProbeType.BUFFER, self.probe_branch, label)
        self.frames_at_start = self.stats.frames_in
        self.out_this_pipeline = 0
        self.started_at = time.monotonic()
        pipeline.set_state(Gst.State.PLAYING)
        log(f"pipeline: {desc}")
        if not self.shm_fallback:
            self.first_frame_timer = self.schedule(int(FIRST_FRAME_FALLBACK_S * 1000 + 2000),
                                                   self.check_first_frame)

    def check_first_frame(self):
        # No frame 3 s after start (1 s after a link normally takes ~2 s on a cold start):
        # maybe DMA-BUF negotiation failed silently; shared memory needs no agreement.
        self.first_frame_timer = None
        if self.pipeline is not None and self.stats.frames_in == self.frames_at_start:
            if self.route == "mutter" and self.args.virtual is None:
                # Mutter sends no frame while nothing changes: that is not a failure.
                return False
            log("no frame yet: rebuilding in shared-memory mode")
            self.fallback_to_shm()
        return False

    def fallback_to_shm(self):
        if self.shm_fallback:
            return False
        self.shm_fallback = True
        self.stop_pipeline()
        self.start_pipeline()
        return True

    def stop_pipeline(self):
        if self.first_frame_timer is not None:
            GLib.source_remove(self.first_frame_timer)
            self.first_frame_timer = None
        self.unwatch_target()
        if self.pipeline is None:
            return
        p, self.pipeline = self.pipeline, None
        p.get_bus().remove_signal_watch()
        p.set_state(Gst.State.NULL)

    def on_message(self, bus, msg):
        if self.pipeline is None or self.stopping:
            return
        t = msg.type
        if t == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            who = msg.src.get_name() if msg.src else "?"
            self.on_pipeline_error(who, err, dbg)
        elif t == Gst.MessageType.EOS:
            log("the screen-cast stream ended (EOS): restarting the session")
            self.restart_session()
        elif t == Gst.MessageType.WARNING:
            err, _ = msg.parse_warning()
            log(f"warning from {msg.src.get_name() if msg.src else '?'}: {err.message}")

    def on_pipeline_error(self, who, err, dbg):
        negotiation = err.matches(Gst.StreamError.quark(), Gst.StreamError.FORMAT) or \
            "not-negotiated" in (dbg or "") or "no more input formats" in (err.message or "")
        if negotiation and not self.shm_fallback:
            log(f"negotiation failed ({err.message}): falling back to shared memory")
            self.fallback_to_shm()
            return
        if who.startswith("also"):
            log(f"error: --also branch {who}: {err.message}")
            self.exit_code = 1
            self.begin_shutdown()
            return
        if who in ("out", "outconv") or not socket_alive(self.target):
            log(f"the target compositor went away ({err.message}): waiting for {self.target}")
            self.stop_pipeline()
            self.schedule(250, self.wait_target)
            return
        log(f"the screen-cast stream failed ({who}: {err.message}): starting a new session")
        self.restart_session()

    def restart_session(self):
        self.stop_pipeline()
        if self.route == "node":
            self.schedule(1000, lambda: self.start_pipeline() and False)
            return
        self.close_session()
        self.schedule(1000, self.retry_session)

    # ----- the target compositor ------------------------------------------------------------

    def watch_target(self):
        """Hold a second, idle connection to the target socket: a hang-up means it is gone."""
        self.unwatch_target()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.target)
        except OSError:
            s.close()
            return
        self.target_sock = s
        self.target_watch = GLib.io_add_watch(s.fileno(), GLib.PRIORITY_DEFAULT,
                                              GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR,
                                              self.on_target_event)

    def unwatch_target(self):
        if self.target_watch is not None:
            GLib.source_remove(self.target_watch)
            self.target_watch = None
        if self.target_sock is not None:
            self.target_sock.close()
            self.target_sock = None

    def on_target_event(self, fd, cond):
        try:
            data = self.target_sock.recv(4096, socket.MSG_DONTWAIT) if cond & GLib.IO_IN else b""
        except OSError:
            data = b""
        if data and not cond & (GLib.IO_HUP | GLib.IO_ERR):
            return True  # the compositor sent something (it never should to a silent client)
        self.target_watch = None
        if self.stopping:
            return False
        log(f"the target compositor went away ({self.target} hung up): waiting for it")
        self.stop_pipeline()
        self.schedule(250, self.wait_target)
        return False

    def wait_target(self):
        if self.stopping or self.pipeline is not None:
            return False
        if socket_alive(self.target):
            log(f"target display {self.target} is back: reconnecting")
            self.start_pipeline()
            return False
        return True

    # ----- statistics -----------------------------------------------------------------------

    def probe_in(self, pad, info):
        self.stats.frames_in += 1
        if self.stats.recheck:
            self.stats.recheck = False
            self.stats.buffer_kind = self.buffer_kind(info.get_buffer())
            caps = pad.get_current_caps()
            if caps:
                s = caps.get_structure(0)
                self.caps_text = (f"{s.get_value('width')}x{s.get_value('height')}",
                                  s.get_value("format"))
        return Gst.PadProbeReturn.OK

    @staticmethod
    def buffer_kind(buf):
        if buf.n_memory() == 0:
            return "-"
        mem = buf.peek_memory(0)
        if GstAllocators.is_dmabuf_memory(mem):
            return "dmabuf"
        if GstAllocators.is_fd_memory(mem):
            return "memfd"
        return "memory"

    def probe_out(self, pad, info):
        self.stats.frames_out += 1
        self.out_this_pipeline += 1
        p = self.pipeline
        buf = info.get_buffer()
        if p is not None and buf.pts != Gst.CLOCK_TIME_NONE:
            clock = p.get_clock()
            if clock is not None:
                lat = clock.get_time() - p.get_base_time() - buf.pts
                if 0 <= lat < 10 * Gst.SECOND:
                    with self.stats.lock:
                        self.stats.latencies.append(lat / 1e6)
        return Gst.PadProbeReturn.OK

    def probe_branch(self, pad, info, label):
        self.stats.branch[label] = self.stats.branch.get(label, 0) + 1
        return Gst.PadProbeReturn.OK

    def print_stats(self):
        if self.stopping:
            return False
        st = self.stats
        now = time.monotonic()
        t0, in0, out0 = st.last
        dt = max(now - t0, 1e-3)
        with st.lock:
            lats, st.latencies = sorted(st.latencies), []
        lat = f"{lats[len(lats) // 2]:.1f}" if lats else "-"
        sink_dropped = 0
        if self.pipeline is not None:
            out = self.pipeline.get_by_name("out")
            stats = out.get_property("stats") if out else None
            if stats is not None:
                sink_dropped = stats.get_value("dropped") or 0
        branches = "".join(f" {k}={v}" for k, v in st.branch.items())
        size, fmt = self.caps_text
        node = self.node_id if self.node_id is not None else "-"
        log(f"stats in={st.frames_in} out={st.frames_out} "
            f"rate_in={(st.frames_in - in0) / dt:.1f} rate_out={(st.frames_out - out0) / dt:.1f} "
            f"dropped={st.frames_in - st.frames_out} sink_dropped={sink_dropped} size={size} "
            f"format={fmt} buffers={st.buffer_kind} node={node} latency_ms={lat}{branches}")
        st.last = (now, st.frames_in, st.frames_out)
        st.recheck = True  # re-read the buffer type from the next buffer
        return True

    # ----- helpers and shutdown -------------------------------------------------------------

    def schedule(self, ms, fn):
        return GLib.timeout_add(ms, fn)

    def on_signal(self, sig):
        log(f"{signal.Signals(sig).name}: stopping")
        self.begin_shutdown()
        return GLib.SOURCE_REMOVE

    def begin_shutdown(self):
        if self.stopping:
            return
        self.stopping = True
        deadline = time.monotonic() + 1.8
        # A watchdog: whatever blocks (a wedged sink, a D-Bus call), the process and its
        # children are gone 1.9 s after the signal.
        def watchdog():
            log("shutdown took too long: killing what is left")
            if self.headless:
                for _, proc in self.headless.children:
                    try:
                        proc.kill()
                    except OSError:
                        pass
                shutil.rmtree(self.headless.dir, ignore_errors=True)
            os._exit(self.exit_code)
        timer = threading.Timer(1.9, watchdog)
        timer.daemon = True
        timer.start()
        self.stop_pipeline()
        self.close_session()
        self.shutdown_children(deadline)
        timer.cancel()
        self.loop.quit()

    def shutdown_children(self, deadline=None):
        if self.headless:
            self.headless.stop(deadline or time.monotonic() + 1.5)
            self.headless = None


def main(argv):
    args = parse_args(argv)
    Gst.init(None)
    missing = [e for e in ("pipewiresrc", "waylandsink", "videoconvert", "tee", "queue")
               if Gst.ElementFactory.find(e) is None]
    for kind, _ in args.also:
        e = {"ring": "shmringsink", "camera": "pwvideosink"}[kind]
        if Gst.ElementFactory.find(e) is None:
            missing.append(e)
    if missing:
        log(f"error: GStreamer elements missing: {', '.join(missing)} (gstreamer1.0-pipewire, "
            "gstreamer1.0-plugins-bad for waylandsink; shmringsink/pwvideosink: build this "
            "repository, cargo build --release, or set GST_PLUGIN_PATH)")
        return 1
    return Bridge(args).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
