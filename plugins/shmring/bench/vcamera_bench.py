# SPDX-License-Identifier: MPL-2.0
"""Benchmark (not a test): rgb24 frames from a producer to a v4l2loopback device, three ways:

  api     a Python app: vcamera.Camera(...).send(frame) N times, each once the helper passed the
          previous one on (lossless, as fast as the path goes)
  stdin   producer | pipelines/stdin-camera.sh --no-pace      (vcamera's stdin mode)
  ffmpeg  producer | ffmpeg -f rawvideo ... -i - -f v4l2 -pix_fmt yuv420p DEVICE

The producer writes the same prebuilt frame N times to stdout. Every path converts rgb24 to I420
for the device. Per run: wall time of the whole command (start-up included), frames that reached
the device (ffmpeg: all, through the pipe's back-pressure; vcamera: counted by an identity in the
helper, VCAMERA_COUNT=1 — the ring never makes the app wait, so an unthrottled producer makes the
camera skip frames: the stdin path shows that), and the
CPU time (user + system) of every process involved (getrusage of the waited-for children).
Rounds are interleaved; per size, the medians end up in the common report (scripts/bench_report.py),
the Python API first. Run in the qemu guest by plugins/shmring/bench/run.sh.
"""

import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench_report import Report, median  # noqa: E402
PY = sys.executable
DEVICE = os.environ.get("BENCH_DEVICE", "/dev/video11")
ROUNDS = int(os.environ.get("BENCH_RUNS", "3"))
SIZES = [(1280, 720, int(os.environ.get("BENCH_FRAMES_720", "300"))),
         (1920, 1080, int(os.environ.get("BENCH_FRAMES_1080", "150")))]

PRODUCER = (f"{PY} -c 'import sys; f = bytes(range(256)) * ({{w}} * {{h}} * 3 // 256); "
            f"o = sys.stdout.buffer\nfor _ in range({{n}}): o.write(f)\no.flush()'")

API_APP = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from vcamera import Camera
w, h, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
frame = bytes(range(256)) * (w * h * 3 // 256)
cam = Camera(w, h, 30, device=sys.argv[5], backend="v4l2")
for _ in range(n):
    cam.send(frame)
    # Lossless for the benchmark: wait until the helper passed the frame on (the identity's
    # line, VCAMERA_COUNT=1); a real app paces with sleep_until_next_frame() instead.
    while cam.frames_delivered < cam.frames_sent and cam._helper.running():
        time.sleep(0.0005)
cam.close()
print(json.dumps({"sent": cam.frames_sent, "delivered": cam.frames_delivered}))
"""


def run(cmd, shell=False):
    """Run ``cmd``; (wall s, cpu s of it and its children, stdout, stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    p = subprocess.run(cmd, shell=shell, capture_output=True, text=True,
                       env=dict(os.environ, VCAMERA_COUNT="1"))
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if p.returncode != 0:
        raise SystemExit(f"{cmd!r} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return wall, cpu, p.stdout, p.stderr


def api(w, h, n):
    wall, cpu, out, _ = run([PY, "-c", API_APP, os.path.join(ROOT, "plugins/shmring/python"),
                             str(w), str(h), str(n), DEVICE])
    return wall, cpu, json.loads(out.strip().splitlines()[-1])["delivered"]


def stdin(w, h, n):
    cmd = (PRODUCER.format(w=w, h=h, n=n) + f" | {ROOT}/pipelines/stdin-camera.sh --no-pace "
           f"--pixel-format rgb24 --size {w}x{h} --fps 30 --device {DEVICE}")
    wall, cpu, _, err = run(cmd, shell=True)
    line = [x for x in err.splitlines() if "frames sent" in x][-1]
    return wall, cpu, int(line.split(", ")[1].split()[0])


def ffmpeg(w, h, n):
    cmd = (PRODUCER.format(w=w, h=h, n=n) + f" | ffmpeg -v error -nostdin -f rawvideo "
           f"-pixel_format rgb24 -video_size {w}x{h} -framerate 30 -i - -f v4l2 "
           f"-pix_fmt yuv420p {DEVICE}")
    wall, cpu, _, _ = run(cmd, shell=True)
    return wall, cpu, n


def main():
    ver = open("/sys/module/v4l2loopback/version").read().strip() \
        if os.path.exists("/sys/module/v4l2loopback/version") else "?"
    paths = [("Python API (vcamera)", api), ("stdin-camera.sh --no-pace", stdin),
             ("ffmpeg -f rawvideo -i - -f v4l2", ffmpeg)]
    print(f"vcamera benchmark: v4l2loopback {ver}, rgb24 -> {DEVICE} (I420), {ROUNDS} rounds; "
          f"frames/s = frames that reached the device / wall time (start-up included)",
          file=sys.stderr, flush=True)
    for w, h, n in SIZES:
        results = {name: [] for name, _ in paths}
        for r in range(ROUNDS):
            for name, fn in paths:
                wall, cpu, delivered = fn(w, h, n)
                results[name].append((delivered / wall, cpu * 1000 / max(delivered, 1),
                                      delivered))
                print(f"  {w}x{h} round {r} {name:32s} {delivered:4d}/{n} frames in "
                      f"{wall:6.2f} s, cpu {cpu:6.2f} s", file=sys.stderr, flush=True)
        report = Report(f"app as a webcam: rgb24 {w}x{h} -> v4l2loopback {ver} (I420), {n} frames",
                        rounds=ROUNDS, columns=[name for name, _ in paths])
        for i, metric in enumerate(["frames/s", "CPU per frame (ms)", "frames delivered"]):
            report.row(metric, [median(x[i] for x in results[name]) for name, _ in paths])
        report.note("frames/s: frames that reached the device / wall time, start-up included")
        report.note("an unthrottled producer makes the ring skip frames (the app never waits): "
                    "stdin-camera.sh --no-pace delivers fewer than it was fed")
        report.print()
        print(flush=True)


if __name__ == "__main__":
    main()
