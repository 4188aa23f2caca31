#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Writes stamped I420 frames (pattern.py) into a shm ring, paced at the frame rate, for the
benchmark's run of our agent:

    stamp_source.py --name /vcb-bench --seconds 60 &
    vcambridge-webrtc-agent --source 'shmringsrc shm-name=/vcb-bench ! videoconvert' ...

Each frame is stamped with CLOCK_REALTIME just before it is published (its capture time).
Prints one JSON line when the ring exists and one at the end; exits 0 after --seconds or on
SIGINT/SIGTERM (the ring is marked end-of-stream and removed).
"""

import argparse
import json
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "plugins", "shmring", "python"))

import shmring  # noqa: E402
from pattern import Pattern, now_ms  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--name", default="/vcb-bench", help="shm ring name (default /vcb-bench)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--seconds", type=float, default=60.0, help="stop after this long")
    a = p.parse_args()

    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))

    pat = Pattern(a.width, a.height)
    caps = f"video/x-raw,format=I420,width={a.width},height={a.height},framerate={a.fps}/1"
    period_ns = 1_000_000_000 // a.fps
    try:
        w = shmring.Writer(a.name, caps=caps, slots=4, slot_size=pat.size)
    except shmring.RingError as e:
        print(f"stamp_source: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"ring": a.name, "caps": caps, "pid": os.getpid()}), flush=True)
    n = written = late = 0
    start = time.monotonic_ns()
    end = start + int(a.seconds * 1e9)
    try:
        while not stop:
            due = start + n * period_ns
            if due >= end:
                break
            wait = due - time.monotonic_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
            elif wait < -period_ns:
                late += 1  # more than a frame behind: skip ahead, as a camera would drop
                n = (time.monotonic_ns() - start) // period_ns
                continue
            w.write(pat.frame(n, now_ms()), pts=n * period_ns, duration=period_ns)
            n += 1
            written += 1
    finally:
        w.eos()
        w.close()
    print(json.dumps({"frames": written, "skipped": late}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
