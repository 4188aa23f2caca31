# SPDX-License-Identifier: MPL-2.0
"""Benchmark (not a test) of the main job end to end, in the qemu guest with the real
v4l2loopback module: an RTMP publisher's H.264 into a webcam, two ways, side by side:

  main job  publisher -> pipelines/rtmp-camera.sh (rtmpflvsrc -> avdec_h264 -> v4l2loopsink)
  bridge    publisher -> nginx-rtmp -> ffmpeg -i rtmp://... -pix_fmt yuyv422 -f v4l2 DEVICE
            (the usual way: an RTMP server plus an ffmpeg that pulls from it)

Both write YUY2 at 30 fps (1280x720, then 640x360) into the same device and are read there by the same reader
(v4l2src in this process). The publisher is ffmpeg (`-f flv -i - -c copy -f flv rtmp://...`)
fed a pre-encoded 720p30 H.264 FLV file (x264 ultrafast zerolatency, made by run.sh on the host)
tag by tag at the tags' timestamps; every frame carries its index painted as 3 rows of 8 blocks
in the luma. Glass-to-glass latency of frame i = the moment the reader has frame i minus the
moment its FLV tag was handed to the publisher (one clock: this process). CPU = utime + stime
from /proc of every process involved over the measured window, per published frame:
  job:  the gst-launch-1.0 the main job runs          bridge: nginx + the pulling ffmpeg
  all:  the above + the publisher ffmpeg + this process (pacing and reading; the same for both).
The first BENCH_WARMUP seconds of every run are not measured (start-up: ffmpeg's input probe,
decoder start). Rounds alternate; medians are printed in the common report shape.
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import bench_report  # noqa: E402

DEVICE = os.environ.get("BENCH_DEVICE", "/dev/video11")
ROUNDS = int(os.environ.get("BENCH_RUNS", "3"))
WARMUP = float(os.environ.get("BENCH_WARMUP", "8"))
PUBLISH_GRACE = 1.0
# "WxH=path WxH=path": the pre-encoded stream per size (run.sh makes them).
FLVS = [(tuple(int(v) for v in size.split("x")), path)
        for size, _, path in (x.partition("=") for x in os.environ["BENCH_FLVS"].split())]
BLOCK = 40
NGINX_RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
TICK = os.sysconf("SC_CLK_TCK")
OUT = os.environ.get("VCAMBRIDGE_GUEST_OUT") or tempfile.gettempdir()


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


def wait_established(port, timeout):
    """Whether a TCP connection to 127.0.0.1:``port`` is established within ``timeout`` s."""
    want = f":{port:04X}"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[2].endswith(want) and fields[3] == "01":
                    return True
        time.sleep(0.05)
    return False


def cpu_seconds(pid):
    """utime + stime of ``pid`` (all its threads), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                if int(rest[1]) == pid:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def flv_tags(path):
    """(header bytes, [(timestamp ms, frame index or None, tag bytes incl. its back-pointer)])."""
    data = open(path, "rb").read()
    off = int.from_bytes(data[5:9], "big")
    header = data[:off + 4]
    pos, tags, index = off + 4, [], 0
    while pos + 11 <= len(data):
        kind = data[pos]
        size = int.from_bytes(data[pos + 1:pos + 4], "big")
        ts = int.from_bytes(data[pos + 4:pos + 7], "big") | data[pos + 7] << 24
        end = pos + 11 + size + 4
        frame = None
        if kind == 9 and size > 1 and data[pos + 12] == 1:  # AVC NALU (not header / end)
            frame, index = index, index + 1
        if kind == 9 and size > 1 and data[pos + 12] == 2:  # end of sequence: not sent
            break
        tags.append((ts, frame, data[pos:end]))
        pos = end
    return header, tags


def read_index(buf, stride):
    """The painted frame index from YUY2 luma, or None when the check row does not match."""
    rows = [0, 0, 0]
    for r in range(3):
        y = r * BLOCK + BLOCK // 2
        for bit in range(8):
            x = bit * BLOCK + BLOCK // 2
            if buf[y * stride + 2 * x] > 128:
                rows[r] |= 1 << bit
    if rows[2] != rows[0] ^ rows[1] ^ 0xA5:
        return None
    return rows[0] | rows[1] << 8


class Reader:
    """v4l2src on DEVICE; records when each painted frame index first arrives."""

    def __init__(self, w, h):
        self.w, self.h = w, h
        self.arrivals = {}
        self.unreadable = 0
        self.samples = 0
        self.pipeline = None

    def start(self, timeout):
        """Reads DEVICE once a writer has given it a format (retried until ``timeout``)."""
        end = time.monotonic() + timeout
        last = ""
        while time.monotonic() < end:
            p = Gst.parse_launch(
                f"v4l2src device={DEVICE} ! video/x-raw,format=YUY2,width={self.w},height={self.h} "
                "! appsink name=sink sync=false max-buffers=4 drop=false emit-signals=true")
            p.get_by_name("sink").connect("new-sample", self._sample)
            p.set_state(Gst.State.PLAYING)
            # Running means: samples arrive before an error does.
            until = time.monotonic() + 5
            msg = None
            while time.monotonic() < until and self.samples == 0:
                msg = p.get_bus().timed_pop_filtered(50 * Gst.MSECOND, Gst.MessageType.ERROR)
                if msg is not None:
                    break
            if self.samples > 0 and msg is None:
                self.pipeline = p
                return
            last = msg.parse_error()[0].message if msg else "no frame within 5 s"
            p.set_state(Gst.State.NULL)
            time.sleep(0.3)
        raise SystemExit(f"the reader could not read {DEVICE} within {timeout} s: {last}")

    def _sample(self, sink):
        now = time.monotonic()
        s = sink.emit("pull-sample")
        self.samples += 1
        buf = s.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            try:
                i = read_index(info.data, self.w * 2)
            finally:
                buf.unmap(info)
            if i is None:
                self.unreadable += 1
            elif i not in self.arrivals:
                self.arrivals[i] = now
        return Gst.FlowReturn.OK

    def stop(self):
        if self.pipeline is not None:
            self.pipeline.set_state(Gst.State.NULL)


def publish(url, header, tags, sent, stop):
    """ffmpeg -c copy to ``url``, fed the FLV tags at their timestamps; ``sent[i]`` = when frame
    i's tag was written. Returns the publisher's Popen (still running while tags are fed)."""
    pub = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-probesize", "32",
         "-analyzeduration", "0", "-fflags", "nobuffer", "-f", "flv", "-i", "-", "-c", "copy",
         "-f", "flv", "-flvflags", "no_duration_filesize", url],
        stdin=subprocess.PIPE, stderr=open(os.path.join(OUT, "publisher.log"), "a"))

    def feed():
        try:
            # The header, metadata, sequence header and first frame at once (ffmpeg opens its
            # output only after it has seen a frame); the next frames only once ffmpeg has
            # connected and published (+ a grace for the RTMP handshake under TCG), as an
            # encoder streams once connected: its start-up must not count as latency.
            first = next(i for i, t in enumerate(tags) if t[1] is not None)
            pub.stdin.write(header + b"".join(t[2] for t in tags[:first + 1]))
            pub.stdin.flush()
            sent[0] = time.monotonic()
            port = int(url.split(":")[2].split("/")[0])
            if not wait_established(port, 30):
                log(f"the publisher did not connect to port {port} within 30 s")
                return
            time.sleep(PUBLISH_GRACE)
            rest = tags[first + 1:]
            t0 = time.monotonic() - rest[0][0] / 1000.0
            sent["t0"] = t0
            for ts, frame, tag in rest:
                if stop.is_set():
                    break
                delay = t0 + ts / 1000.0 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pub.stdin.write(tag)
                pub.stdin.flush()
                if frame is not None:
                    sent[frame] = time.monotonic()
            pub.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    threading.Thread(target=feed, daemon=True).start()
    return pub


def stop_proc(p, sig=signal.SIGTERM, timeout=5):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def measure(name, size, header, tags, consumer_pids_fn, url):
    """One run: reader, publisher, window after warm-up; returns the figures."""
    reader, sent, stop = Reader(*size), {}, threading.Event()
    pub = publish(url, header, tags, sent, stop)
    try:
        # The reader starts once frames are being published (a writer gives the device its
        # format); the warm-up covers that wait.
        until = time.monotonic() + 60
        def pacing():
            return "t0" in sent and len(sent) >= 3

        while not pacing() and time.monotonic() < until and pub.poll() is None:
            time.sleep(0.05)
        if not pacing():
            raise SystemExit(f"{name}: the publisher sent no frame within 60 s")
        reader.start(40)
        # The window: from WARMUP s after the first frame to 1 s before the last one; CPU is
        # sampled at its two ends.
        start = sent["t0"]
        last_ts = tags[-1][0] / 1000.0
        if start + WARMUP + 3 > start + last_ts - 1:
            raise SystemExit(f"{name}: the stream is too short for a {WARMUP} s warm-up")
        time.sleep(max(0.0, start + WARMUP - time.monotonic()))
        pids = consumer_pids_fn()
        me = os.getpid()
        c0 = {p: cpu_seconds(p) for p in pids + [pub.pid, me]}
        f0 = len(sent)
        t0 = time.monotonic()
        time.sleep(max(1.0, start + last_ts - 1 - t0))
        c1 = {p: cpu_seconds(p) for p in c0}
        f1 = len(sent)
        t1 = time.monotonic()
    finally:
        stop.set()
        stop_proc(pub)
        reader.stop()
    frames = max(1, f1 - f0)
    job = sum(c1[p] - c0[p] for p in pids)
    everything = sum(c1[p] - c0[p] for p in c0)
    sent.pop("t0", None)
    lat = sorted((reader.arrivals[i] - sent[i]) * 1000.0
                 for i in sent if i in reader.arrivals and t0 <= sent[i] <= t1)
    in_window = [i for i in sent if t0 <= sent[i] <= t1]
    delivered = sum(1 for i in in_window if i in reader.arrivals)
    res = {
        "name": name, "size": "%dx%d" % size, "frames": frames, "delivered": delivered, "unreadable": reader.unreadable,
        "cpu_job_ms": job * 1000.0 / frames, "cpu_all_ms": everything * 1000.0 / frames,
        "lat_p50": statistics.median(lat) if lat else None,
        "lat_p95": lat[int(0.95 * (len(lat) - 1))] if lat else None,
    }
    log(json.dumps(res))
    return res


def run_main_job(size, header, tags):
    port = free_port()
    log_file = open(os.path.join(OUT, "main-job.log"), "a")
    script = subprocess.Popen(
        [os.path.join(ROOT, "pipelines", "rtmp-camera.sh"), "--sink", "v4l2", "--device", DEVICE,
         "--no-build", "--profile", "release", "--port", str(port), "--size", "%dx%d" % size],
        stdout=log_file, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        wait_listening(port, 120, "the main job")  # 7 gst-inspect runs first: slow under TCG

        def pids():
            gst = [c for c in children(script.pid) if comm(c).startswith("gst-launch")]
            if not gst:
                raise SystemExit("the main job runs no gst-launch-1.0 (see main-job.log)")
            return gst
        return measure("main job", size, header, tags, pids,
                       f"rtmp://127.0.0.1:{port}/live/bench")
    finally:
        stop_proc(script, signal.SIGINT, 10)


def run_bridge(size, header, tags):
    port = free_port()
    d = tempfile.mkdtemp(prefix="nginx-rtmp-")
    os.makedirs(os.path.join(d, "logs"))
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(f"load_module {NGINX_RTMP_MODULE};\nworker_processes 1;\n"
                "events { worker_connections 128; }\n"
                f"rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n"
                "application live { live on; } } }\n")
    nginx = subprocess.Popen(
        ["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf"), "-g",
         f"daemon off; master_process off; pid {d}/pid; error_log {d}/error.log warn;"])
    bridge = None
    try:
        wait_listening(port, 10, "nginx-rtmp")
        url = f"rtmp://127.0.0.1:{port}/live/bench"
        bridge = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-i", url,
             "-pix_fmt", "yuyv422", "-f", "v4l2", DEVICE],
            stderr=open(os.path.join(OUT, "bridge.log"), "a"))
        return measure("bridge", size, header, tags, lambda: [nginx.pid, bridge.pid], url)
    finally:
        if bridge is not None:
            stop_proc(bridge)
        stop_proc(nginx)


def main():
    Gst.init(None)
    streams = [(size, *flv_tags(path), path) for size, path in FLVS]
    for size, header, tags, path in streams:
        frames = sum(1 for t in tags if t[1] is not None)
        log(f"{path}: {size[0]}x{size[1]}, {frames} frames, {tags[-1][0] / 1000.0:.1f} s")
    log(f"device {DEVICE}; {ROUNDS} rounds, warm-up {WARMUP} s")
    res = {}
    for r in range(ROUNDS):
        for size, header, tags, _ in streams:
            for name, fn in (("main job", run_main_job), ("bridge", run_bridge)):
                res.setdefault((size, name), []).append(fn(size, header, tags))

    for size, _, _, _ in streams:
        def med(name, key):
            return bench_report.median([x[key] for x in res[(size, name)]])

        def pct(name):
            return med(name, "delivered") * 100.0 / med(name, "frames")

        report = bench_report.Report(
            f"the main job end to end: ffmpeg publishes {size[0]}x{size[1]}@30 H.264 over RTMP "
            f"into {DEVICE} (qemu guest, TCG, real v4l2loopback)",
            ROUNDS, ["main job", "nginx-rtmp + ffmpeg -f v4l2"])
        for metric, key in (("CPU per frame, job / bridge processes (ms)", "cpu_job_ms"),
                            ("CPU per frame, everything incl. publisher and reader (ms)",
                             "cpu_all_ms"),
                            ("glass-to-glass latency p50 (ms)", "lat_p50"),
                            ("glass-to-glass latency p95 (ms)", "lat_p95")):
            report.row(metric, [med("main job", key), med("bridge", key)])
        report.row("frames read / published in the window (%)", [pct("main job"), pct("bridge")])
        report.note("TCG emulation: absolute figures are several times a real CPU's; compare "
                    "ratios. CPU is per published frame; a path that falls behind also reads "
                    "fewer of them (last row) and its latency grows with its backlog")
        report.print()
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
