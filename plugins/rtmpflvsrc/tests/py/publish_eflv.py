#!/usr/bin/env python3
"""Publish a solid-colour test stream over RTMP with a real libavformat FLV muxer (PyAV).

FFmpeg >= 6.1 writes Enhanced RTMP (veovera) FourCC tags for HEVC (hvc1), AV1 (av01),
VP9 (vp09) and, from 7.1 on, Opus. The `av` wheels on PyPI carry FFmpeg 8 with libx265,
SVT-AV1 and libvpx, which makes this a real Enhanced-RTMP publisher for the rtmpflvsrc tests.

Usage: publish_eflv.py URL --vcodec hevc --frames 30 [--acodec opus] [--size 320x240]
       [--rate 30] [--color 3050F0] [--realtime]
Writes one line "published video=N audio=M" to stdout on success; exits 2 on a muxer/network error.
"""

import argparse
import sys
import time

import av
import numpy as np

VIDEO_ENCODERS = {
    "h264": ("libx264", {"preset": "ultrafast", "tune": "zerolatency"}),
    "hevc": ("libx265", {"preset": "ultrafast", "tune": "zerolatency", "x265-params": "log-level=error"}),
    "av1": ("libsvtav1", {"preset": "12", "svtav1-params": "pred-struct=1:lp=2"}),
    "vp9": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}),
}
AUDIO_ENCODERS = {"aac": ("aac", 44100, 1024), "opus": ("libopus", 48000, 960)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--vcodec", choices=sorted(VIDEO_ENCODERS), default="hevc")
    p.add_argument("--acodec", choices=["none"] + sorted(AUDIO_ENCODERS), default="none")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--size", default="320x240")
    p.add_argument("--rate", type=int, default=30)
    p.add_argument("--color", default="3050F0", help="RRGGBB")
    p.add_argument("--gop", type=int, default=30)
    p.add_argument("--realtime", action="store_true", help="pace frames at --rate")
    a = p.parse_args()

    width, height = (int(v) for v in a.size.lower().split("x"))
    rgb = bytes.fromhex(a.color)
    image = np.empty((height, width, 3), np.uint8)
    image[:, :] = (rgb[0], rgb[1], rgb[2])

    try:
        out = av.open(a.url, "w", format="flv", timeout=(10.0, 10.0))
    except Exception as e:  # connection refused, rejected publish, ...
        print(f"open {a.url}: {e}", file=sys.stderr)
        return 2

    name, opts = VIDEO_ENCODERS[a.vcodec]
    vs = out.add_stream(name, rate=a.rate)
    vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
    vs.codec_context.gop_size = a.gop
    vs.codec_context.max_b_frames = 0
    vs.options = opts
    vs.codec_context.options = opts

    astream = None
    if a.acodec != "none":
        aname, arate, asamples = AUDIO_ENCODERS[a.acodec]
        astream = out.add_stream(aname, rate=arate, layout="mono")
        astream.codec_context.bit_rate = 64000

    sent_v = 0
    sent_a = 0
    audio_pts = 0
    start = time.monotonic()
    try:
        for i in range(a.frames):
            if a.realtime:
                delay = start + i / a.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for pkt in vs.encode(frame):
                out.mux(pkt)
            if astream is not None:
                _, arate, asamples = AUDIO_ENCODERS[a.acodec]
                # Keep the audio up to the end of this video frame.
                while audio_pts < (i + 1) * arate // a.rate:
                    t = (np.arange(asamples) + audio_pts) / arate
                    samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
                    af = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
                    af.sample_rate = arate
                    af.pts = audio_pts
                    for pkt in astream.encode(af):
                        out.mux(pkt)
                        sent_a += 1
                    audio_pts += asamples
            sent_v += 1
        for pkt in vs.encode(None):
            out.mux(pkt)
        if astream is not None:
            for pkt in astream.encode(None):
                out.mux(pkt)
                sent_a += 1
        out.close()
    except Exception as e:
        print(f"publishing to {a.url} failed after {sent_v} frames: {e}", file=sys.stderr)
        return 2
    print(f"published video={sent_v} audio={sent_a}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
