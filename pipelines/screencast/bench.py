#!/usr/bin/python3
"""Benchmark (not a test): the bridge vs the bare `pipewiresrc ! waylandsink` one-liner on the
same Mutter screen-cast node, in one run.

    /usr/bin/python3 pipelines/screencast/bench.py [--rounds 3] [--seconds 8] [--size 1280x720]

Starts a private headless mutter (+ PipeWire, wireplumber, bus; screencast.py's
HeadlessSession), an animating 30 fps client on it, a headless weston as the target, and holds
one screen-cast session itself (RecordMonitor, primary). Then, alternating for --rounds:

  bridge  screencast.py --node N (the real helper: videoconvert, stats probes, sync=false)
  bare    `pipewiresrc path=N ! waylandsink fullscreen=true` (defaults, so sync=true), run by a
          tiny runner below with the same two probes the bridge has (frame count, latency)

Each consumer runs --seconds; the first 2 s are skipped. Reported per consumer (medians over
rounds): frames/s reaching waylandsink, process CPU (utime+stime from /proc) per frame, and
latency = Mutter's frame timestamp (the buffer PTS, PipeWire clock) to the moment the frame is
handed to the Wayland surface: arrival at waylandsink's sink pad, plus for sync=true the wait
until the buffer's render time (the pipeline latency reported by pipewiresrc).
Mutter's own CPU is not counted (it is the same for both).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import screencast as sc  # noqa: E402

sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts"))
import bench_report  # noqa: E402
from gi.repository import Gio, GLib  # noqa: E402

BARE_RUNNER = r'''
import sys, time, gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst, GLib
Gst.init(None)
p = Gst.parse_launch(f"pipewiresrc path={sys.argv[1]} ! waylandsink name=out display={sys.argv[2]}")
hid = GLib.log_set_handler("GStreamer-Wayland", GLib.LogLevelFlags.LEVEL_CRITICAL, lambda *a: None, None)
p.get_by_name("out").set_property("fullscreen", True)
GLib.log_remove_handler("GStreamer-Wayland", hid)
n, lats, lat_cfg = 0, [], [None]
def probe(pad, info):
    global n
    n += 1
    b = info.get_buffer()
    c = p.get_clock()
    if c is not None and b.pts != Gst.CLOCK_TIME_NONE:
        if lat_cfg[0] is None:
            q = Gst.Query.new_latency()
            lat_cfg[0] = q.parse_latency()[1] if p.query(q) else 0
        lat = c.get_time() - p.get_base_time() - b.pts
        lats.append(max(lat, lat_cfg[0]) / 1e6)
    return Gst.PadProbeReturn.OK
p.get_by_name("out").get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, probe)
p.set_state(Gst.State.PLAYING)
loop = GLib.MainLoop()
def tick():
    l = sorted(lats); lats.clear()
    print(f"[bare] stats out={n} latency_ms={l[len(l)//2] if l else -1:.1f}", file=sys.stderr, flush=True)
    return True
GLib.timeout_add(1000, tick)
GLib.unix_signal_add(GLib.PRIORITY_HIGH, 2, lambda: loop.quit())
loop.run()
p.set_state(Gst.State.NULL)
'''


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(argv, env, seconds, warmup=2.0):
    """Run a consumer, return (fps, cpu ms per frame, median latency ms) after the warm-up."""
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    import threading
    t = threading.Thread(target=lambda: [lines.append((time.monotonic(), ln))
                                         for ln in proc.stderr], daemon=True)
    t.start()
    time.sleep(warmup)

    def last_out():
        for _, ln in reversed(lines):
            if " stats " in ln:
                return int(ln.split("out=")[1].split()[0])
        return 0

    t0, c0, f0 = time.monotonic(), cpu_seconds(proc.pid), last_out()
    time.sleep(seconds)
    t1, c1, f1 = time.monotonic(), cpu_seconds(proc.pid), last_out()
    lats = [float(ln.split("latency_ms=")[1].split()[0]) for at, ln in lines
            if at >= t0 and "latency_ms=" in ln and not ln.split("latency_ms=")[1].startswith(("-", " "))]
    proc.send_signal(2)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    frames = max(f1 - f0, 1)
    lats = [x for x in lats if x >= 0]
    return (frames / (t1 - t0), (c1 - c0) * 1000 / frames,
            statistics.median(lats) if lats else float("nan"))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--size", type=sc.parse_size, default=(1280, 720))
    args = ap.parse_args()
    w, h = args.size
    hs = sc.HeadlessSession(args.size, "mutter")
    weston = client = None
    try:
        hs.start(30)
        conn = Gio.DBusConnection.new_for_address_sync(
            hs.bus_address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
            | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION, None, None)
        deadline = time.monotonic() + 30
        while not sc.Bridge.has_name(conn, sc.MUTTER_NAME):
            if time.monotonic() > deadline:
                raise SystemExit("mutter's screen-cast API did not appear within 30 s")
            time.sleep(0.1)
        env = dict(hs.env)
        client = subprocess.Popen(
            ["gst-launch-1.0", "-q", "videotestsrc", "pattern=smpte", "horizontal-speed=4", "!",
             "video/x-raw,width=640,height=360,framerate=30/1", "!", "waylandsink"],
            env={**env, "WAYLAND_DISPLAY": hs.wayland_display}, stderr=subprocess.DEVNULL)
        weston = subprocess.Popen(
            ["weston", "--backend=headless-backend.so", "--use-pixman",
             "--shell=desktop-shell.so", "--idle-time=0", "--no-config", "--socket=weston-bench",
             f"--width={w}", f"--height={h}"], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        target = os.path.join(hs.dir, "weston-bench")
        while not sc.socket_alive(target):
            time.sleep(0.05)
        # One session held here, its node shown by both consumers in turn.
        call = lambda path, iface, method, params: conn.call_sync(  # noqa: E731
            sc.MUTTER_NAME, path, iface, method, params, None, Gio.DBusCallFlags.NONE, 5000,
            None)
        (session,) = call(sc.MUTTER_PATH, sc.MUTTER_IFACE, "CreateSession",
                          GLib.Variant("(a{sv})", ({},))).unpack()
        (stream,) = call(session, "org.gnome.Mutter.ScreenCast.Session", "RecordMonitor",
                         GLib.Variant("(sa{sv})", ("", {"cursor-mode": GLib.Variant("u", 1)}))
                         ).unpack()
        node = []
        conn.signal_subscribe(sc.MUTTER_NAME, "org.gnome.Mutter.ScreenCast.Stream",
                              "PipeWireStreamAdded", stream, None, Gio.DBusSignalFlags.NONE,
                              lambda *a: node.append(a[5].unpack()[0]), None)
        call(session, "org.gnome.Mutter.ScreenCast.Session", "Start", None)
        ctx = GLib.MainContext.default()
        deadline = time.monotonic() + 10
        while not node and time.monotonic() < deadline:
            ctx.iteration(False)
            time.sleep(0.02)
        if not node:
            raise SystemExit("no PipeWireStreamAdded within 10 s")
        node = node[0]
        cenv = {**env, "PIPEWIRE_RUNTIME_DIR": hs.dir}
        bridge_argv = ["/usr/bin/python3", os.path.join(HERE, "screencast.py"), "--node",
                       str(node), "--display", target, "--stats-interval", "1"]
        bare_argv = ["/usr/bin/python3", "-c", BARE_RUNNER, str(node), target]
        res = {"bridge": [], "bare": []}
        for r in range(args.rounds):
            for name, argv in (("bridge", bridge_argv), ("bare", bare_argv)):
                fps, cpu, lat = measure(argv, cenv, args.seconds)
                res[name].append((fps, cpu, lat))
                print(f"round {r + 1} {name:6s}: {fps:5.1f} fps, CPU {cpu:6.2f} ms/frame, "
                      f"latency {lat:5.1f} ms", flush=True)
        med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in res.items()}
        b, o = med["bridge"], med["bare"]
        print()
        report = bench_report.Report(
            f"screencast bridge: mutter node {node}, {w}x{h}, {args.seconds:.0f} s per round",
            args.rounds, ["bridge", "pipewiresrc ! waylandsink"])
        report.row("frames/s into waylandsink", [b[0], o[0]])
        report.row("CPU per frame (ms)", [b[1], o[1]])
        report.row("latency, frame timestamp to surface (ms)", [b[2], o[2]])
        report.note("mutter's own CPU is not counted (the same for both)")
        report.print()
    finally:
        for p in (client, weston):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    p.kill()
        hs.stop(time.monotonic() + 2)


if __name__ == "__main__":
    main()
