#!/usr/bin/python3
"""Capture PipeWire audio devices into WAV chunk files (chunksink); run by audio-capture.sh.

  audio-capture.sh --list
  audio-capture.sh --device NAME|SERIAL|DESCRIPTION-SUBSTRING [--device ...] [options]

Devices are PipeWire sources and sink monitors (a sink given to --device means its monitor),
found through GstDeviceMonitor. Each device gets one pipewiresrc ! chunksink stream; with several
devices each writes into DIR/<node name>/, with one into DIR itself. Chunk files and the
index.jsonl line format are described in plugins/chunksink/README.md.

When a device disappears its stream stops (the chunk being written is sealed); when it comes
back capture resumes in a new chunk and the index records a "restart" gap. Ctrl-C (SIGINT) or
SIGTERM seals every chunk and exits with status 0.

Options:
  --list                 print the capture devices (kind, node name, serial, rate, channels,
                         description) and exit
  --device D             node name, object serial, or a case-insensitive substring of the
                         description (repeat for several devices)
  --dir DIR              where the chunks go (default ./capture)
  --chunk-seconds S      audio per chunk file (default 10)
  --chunk-bytes N        bytes per chunk file instead (header included)
  --format F             S16LE, S24LE, S32LE, F32LE (default), F64LE, U8
  --rate HZ              sample rate (default: the device's; PipeWire resamples otherwise)
  --max-chunks N         keep only the newest N chunks per device (default: all)
  --wait                 wait for devices that are not there yet (otherwise: an error)
  --seconds S            stop by itself after S seconds
"""

import argparse
import os
import re
import signal
import sys
import time

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402

FORMATS = ["U8", "S16LE", "S24LE", "S32LE", "F32LE", "F64LE"]


def log(msg):
    print(f"[audio-capture] {msg}", flush=True)


def fail(msg):
    print(f"audio-capture: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


class Device:
    """A capture device seen by the monitor."""

    def __init__(self, gst_device):
        props = gst_device.get_properties()
        self.gst = gst_device
        self.klass = gst_device.get_device_class()
        self.monitor = "Sink" in self.klass
        self.name = props.get_string("node.name") if props else None
        serial = None
        if props:
            for key in ("object.serial", "node.id"):
                if props.has_field(key):
                    serial = str(props.get_value(key))
                    break
        self.serial = serial
        self.description = gst_device.get_display_name()
        self.rate, self.channels = None, None
        # A node that takes any rate (a null sink) runs at the graph's rate.
        self.any_rate = False
        caps = gst_device.get_caps()
        if caps:
            for i in range(caps.get_size()):
                s = caps.get_structure(i)
                ok, rate = s.get_int("rate")
                if ok and self.rate is None:
                    self.rate = rate
                elif not ok and s.has_field("rate"):
                    self.any_rate = True
                ok, ch = s.get_int("channels")
                if ok and self.channels is None:
                    self.channels = ch

    def kind(self):
        return "monitor" if self.monitor else "source"

    def matches(self, query):
        q = query.lower()
        return (
            query == self.name
            or query == self.serial
            or (self.description is not None and q in self.description.lower())
        )


def start_monitor():
    mon = Gst.DeviceMonitor.new()
    mon.add_filter("Audio/Source", None)
    mon.add_filter("Audio/Sink", None)
    if not mon.start():
        fail("cannot start the device monitor (is PipeWire running for this user?)")
    return mon


def devices(mon):
    out = []
    for d in mon.get_devices() or []:
        dev = Device(d)
        # Only PipeWire nodes: they have a node.name that pipewiresrc can target.
        if dev.name:
            out.append(dev)
    return out


def print_list(devs):
    if not devs:
        print("no PipeWire capture devices (sources or sink monitors)")
        return
    rows = [("KIND", "NODE NAME", "SERIAL", "RATE", "CH", "DESCRIPTION")]
    for d in devs:
        rows.append(
            (
                d.kind(),
                d.name,
                d.serial or "-",
                str(d.rate or ("any" if d.any_rate else "-")),
                str(d.channels or "-"),
                d.description or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])


def find(devs, query):
    """The one device matching query, None if none; fails on an ambiguous substring."""
    exact = [d for d in devs if query in (d.name, d.serial)]
    if exact:
        return exact[0]
    hits = [d for d in devs if d.matches(query)]
    if len(hits) > 1:
        names = ", ".join(f"{d.name} ({d.description})" for d in hits)
        fail(f"--device {query!r} matches several devices: {names}; give the node name")
    return hits[0] if hits else None


class Capture:
    """One device's pipewiresrc ! chunksink stream, rebuilt whenever the device returns."""

    def __init__(self, query, directory, args, on_error):
        self.query = query
        self.directory = directory
        self.args = args
        self.on_error = on_error
        self.device = None
        self.pipeline = None

    def start(self, dev):
        self.device = dev
        a = self.args
        os.makedirs(self.directory, exist_ok=True)
        src = Gst.ElementFactory.make("pipewiresrc")
        src.set_property("target-object", dev.name)
        props = "props,node.dont-reconnect=true"
        if dev.monitor:
            props += ",stream.capture.sink=true"
        src.set_property("stream-properties", Gst.Structure.from_string(props)[0])
        caps = f"audio/x-raw,format={a.format},layout=interleaved"
        if a.rate:
            caps += f",rate={a.rate}"
            if dev.rate and dev.rate != a.rate:
                log(f"{dev.name}: device runs at {dev.rate} Hz; PipeWire resamples to {a.rate} Hz")
        capsfilter = Gst.ElementFactory.make("capsfilter")
        capsfilter.set_property("caps", Gst.Caps.from_string(caps))
        sink = Gst.ElementFactory.make("chunksink")
        if sink is None:
            fail("the chunksink element is missing: build it (cargo build --release -p "
                 "gst-plugin-chunksink) or set GST_PLUGIN_PATH")
        sink.set_property("directory", self.directory)
        sink.set_property("device", dev.name)
        if a.chunk_bytes:
            sink.set_property("chunk-size", a.chunk_bytes)
        else:
            sink.set_property("chunk-duration", int(a.chunk_seconds * Gst.SECOND))
        if a.max_chunks:
            sink.set_property("max-chunks", a.max_chunks)
        p = Gst.Pipeline.new(f"capture-{dev.name}")
        for e in (src, capsfilter, sink):
            p.add(e)
        src.link(capsfilter)
        capsfilter.link(sink)
        bus = p.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self.on_message)
        self.pipeline = p
        if p.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self.stop("failed to start")
            return
        log(f"capturing {dev.name} ({dev.description}) into {self.directory}")

    def stop(self, why):
        p, self.pipeline = self.pipeline, None
        if p is None:
            return
        # NULL seals the chunk being written (chunksink stop) and joins its I/O thread.
        p.get_bus().remove_signal_watch()
        p.set_state(Gst.State.NULL)
        log(f"{self.device.name if self.device else self.query}: stopped ({why}); chunk sealed")

    def on_message(self, bus, msg):
        if msg.type == Gst.MessageType.ELEMENT:
            s = msg.get_structure()
            if s and s.get_name() == "chunk-full":
                log(
                    f"{self.device.name}: chunk {s.get_value('index')} sealed "
                    f"({s.get_value('sealed')}): {s.get_value('path')} "
                    f"{s.get_value('sample-count')} samples"
                )
        elif msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            self.on_error(self, f"{err.message} ({dbg})")
        elif msg.type == Gst.MessageType.EOS:
            self.stop("end of stream")


def main():
    ap = argparse.ArgumentParser(
        prog="audio-capture.sh",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--device", action="append", default=[])
    ap.add_argument("--dir", default="capture")
    ap.add_argument("--chunk-seconds", type=float, default=10.0)
    ap.add_argument("--chunk-bytes", type=int, default=0)
    ap.add_argument("--format", default="F32LE", choices=FORMATS)
    ap.add_argument("--rate", type=int, default=0)
    ap.add_argument("--max-chunks", type=int, default=0)
    ap.add_argument("--wait", action="store_true")
    ap.add_argument("--seconds", type=float, default=0)
    a = ap.parse_args()
    if a.chunk_seconds <= 0:
        fail("--chunk-seconds must be > 0")

    Gst.init(None)
    if Gst.ElementFactory.find("pipewiresrc") is None:
        fail("pipewiresrc is missing: apt-get install gstreamer1.0-pipewire")
    mon = start_monitor()
    devs = devices(mon)
    # The provider may still be adding nodes right after start: wait (at most 1 s) until two
    # reads 100 ms apart agree.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        time.sleep(0.1)
        again = devices(mon)
        if [d.name for d in again] == [d.name for d in devs]:
            break
        devs = again
    if a.list:
        print_list(devs)
        return 0
    if not a.device:
        fail("say which device to capture: --device NAME (see --list)")

    loop = GLib.MainLoop()
    exit_code = [0]
    captures = []
    several = len(a.device) > 1
    for q in a.device:
        d = os.path.join(a.dir, re.sub(r"[^A-Za-z0-9._-]", "_", q)) if several else a.dir
        captures.append(Capture(q, d, a, None))

    def on_error(cap, text):
        log(f"{cap.query}: error: {text}")
        cap.stop("error")
        # A device that vanished comes back through the monitor; anything else is fatal.
        if cap.device is not None and find(devices(mon), cap.device.name) is not None:
            exit_code[0] = 1
            loop.quit()

    for c in captures:
        c.on_error = on_error
        dev = find(devs, c.query)
        if dev is None:
            if not a.wait:
                fail(f"no capture device matches {c.query!r}; --list shows them, --wait waits")
            log(f"waiting for a device matching {c.query!r}")
        else:
            c.start(dev)

    def on_monitor(bus, msg):
        # Re-read the device list instead of parsing the message: on GStreamer 1.22 PyGObject
        # frees the device of parse_device_added/removed twice (a crash at exit).
        if msg.type not in (Gst.MessageType.DEVICE_ADDED, Gst.MessageType.DEVICE_REMOVED):
            return True
        present = {d.name: d for d in devices(mon)}
        for c in captures:
            if c.pipeline is not None and c.device and c.device.name not in present:
                c.stop("device gone")
            elif c.pipeline is None:
                dev = find(list(present.values()), c.query)
                if dev is not None:
                    log(f"{dev.name} appeared")
                    c.start(dev)
        return True

    mbus = mon.get_bus()
    mbus.add_watch(GLib.PRIORITY_DEFAULT, on_monitor)

    def quit_all(*_):
        for c in captures:
            c.stop("stopping")
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, quit_all)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, quit_all)
    if a.seconds > 0:
        GLib.timeout_add(int(a.seconds * 1000), quit_all)
    loop.run()
    for c in captures:
        c.stop("stopping")
    return exit_code[0]


if __name__ == "__main__":
    code = main()
    # Every pipeline is in NULL (chunks sealed) by now. Skip the device monitor's teardown: with
    # GStreamer 1.22's PipeWire device provider it intermittently aborts ("double free or
    # corruption") at exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
