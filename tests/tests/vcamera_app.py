# SPDX-License-Identifier: MPL-2.0
"""A test app using plugins/shmring/python/vcamera.py the way a user would. Prints one JSON
object per line (events); the Rust tests in vcamera.rs / vcamera_guest.rs drive it.

  stream   open the camera, print "ready"; send --warmup-color frames at --fps until the file
           --go exists (bounded), then exactly --frames frames of --color paced with
           sleep_until_next_frame(), then --tail frames of --end-color; print "done" with the
           send times; close
  forever  open, print "ready", send frames at --fps until the helper fails (prints "error")
  errors   the error cases that need a working camera (frame size/shape/dtype), one event each
"""

import argparse
import json
import sys
import time

from vcamera import Camera, CameraError, PixelFormat


def emit(**kw):
    print(json.dumps(kw), flush=True)


def color_frame(w, h, rgb):
    return bytes(rgb) * (w * h)


def open_camera(a):
    w, h = map(int, a.size.split("x"))
    cam = Camera(w, h, a.fps, fmt=PixelFormat[a.fmt], device=a.device or None,
                 backend=a.backend)
    return cam, w, h


def stream(a):
    cam, w, h = open_camera(a)
    warm = color_frame(w, h, a.warmup_color)
    cam.send(warm)  # returns once the camera accepted the format
    emit(event="ready", backend=cam.backend, device=cam.device, pids=list(cam.helper_pids),
         ring=cam._ring_name)
    cam.sleep_until_next_frame()
    deadline = time.monotonic() + 60
    import os
    while not os.path.exists(a.go) and time.monotonic() < deadline:
        cam.send(warm)
        cam.sleep_until_next_frame()
    frame = color_frame(w, h, a.color)
    times = []
    for _ in range(a.frames):
        cam.send(frame)
        times.append(time.monotonic())
        cam.sleep_until_next_frame()
    end = color_frame(w, h, a.end_color)
    for _ in range(a.tail):
        cam.send(end)
        cam.sleep_until_next_frame()
    emit(event="done", frames=len(times), span=times[-1] - times[0],
         intervals_max=max(b - a for a, b in zip(times, times[1:])),
         frames_sent=cam.frames_sent)
    t = time.monotonic()
    cam.close()
    emit(event="closed", close_seconds=time.monotonic() - t)


def forever(a):
    cam, w, h = open_camera(a)
    frame = color_frame(w, h, a.warmup_color)
    cam.send(frame)
    emit(event="ready", backend=cam.backend, device=cam.device, pids=list(cam.helper_pids),
         ring=cam._ring_name)
    try:
        while True:
            cam.send(frame)
            cam.sleep_until_next_frame()
    except CameraError as e:
        emit(event="error", type=type(e).__name__, message=str(e))
        sys.exit(3)


def errors(a):
    cam, w, h = open_camera(a)

    def case(name, fn):
        try:
            fn()
            emit(event="case", name=name, raised=None)
        except Exception as e:  # report whatever it was
            emit(event="case", name=name, raised=type(e).__name__, message=str(e))

    case("short_bytes", lambda: cam.send(bytes(10)))
    case("good_bytes", lambda: cam.send(bytes(w * h * 3)))
    case("not_bytes", lambda: cam.send(12345))
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        case("numpy_rgba", lambda: cam.send(np.zeros((h, w, 4), np.uint8)))
        case("numpy_transposed", lambda: cam.send(np.zeros((w, h, 3), np.uint8)))
        case("numpy_float", lambda: cam.send(np.zeros((h, w, 3), np.float32)))
        case("numpy_good", lambda: cam.send(np.zeros((h, w, 3), np.uint8)))
        case("numpy_strided", lambda: cam.send(np.zeros((h, w * 2, 3), np.uint8)[:, ::2]))
    case("odd_i420", lambda: Camera(63, 48, 30, fmt=PixelFormat.I420, backend=a.backend,
                                     device=a.device or None))
    cam.close()
    case("closed", lambda: cam.send(bytes(w * h * 3)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["stream", "forever", "errors"])
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="")
    p.add_argument("--size", default="320x240")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--fmt", default="RGB")
    rgb = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--warmup-color", type=rgb, default=[20, 60, 220])
    p.add_argument("--color", type=rgb, default=[200, 40, 90])
    p.add_argument("--end-color", type=rgb, default=[30, 200, 40])
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--tail", type=int, default=10)
    p.add_argument("--go", default="/nonexistent")
    a = p.parse_args()
    try:
        {"stream": stream, "forever": forever, "errors": errors}[a.mode](a)
    except CameraError as e:
        emit(event="error", type=type(e).__name__, message=str(e))
        sys.exit(3)


if __name__ == "__main__":
    main()
