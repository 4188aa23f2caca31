#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Write the seed corpus of the surface wire fuzz targets (valid message sequences of each role).

    python3 make_seeds.py     # rewrites corpus/wire_from_reader/* and corpus/wire_from_writer/*
"""
import os
import struct

HEADER = struct.Struct("<4sHHI")
HELLO, CAPS, SURFACE, FRAME, RETIRE, EOS, RELEASE, ERROR = range(1, 9)
FRAME_RECORD = struct.Struct("<QIIQQQIIQQ4Q4i")
NO_TIME = (1 << 64) - 1
HERE = os.path.dirname(os.path.abspath(__file__))


def msg(kind, payload=b"", version=1):
    return HEADER.pack(b"VCSF", version, kind, len(payload)) + payload


def datagrams(*msgs):
    return b"".join(struct.pack("<H", len(m)) + m for m in msgs)


def frame(seq, surface, caps_id, size, planes=()):
    offs = [p[0] for p in planes] + [0] * (4 - len(planes))
    strides = [p[1] for p in planes] + [0] * (4 - len(planes))
    return msg(FRAME, FRAME_RECORD.pack(seq, surface, caps_id, seq * 33_333_333, NO_TIME,
                                        33_333_333, 0, len(planes), 0, size, *offs, *strides))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


hello_r = msg(HELLO, struct.pack("<IIQ", 1, 4242, 0))
release = msg(RELEASE, struct.pack("<IIQ", 1, 0, 1))
write("wire_from_reader", "hello_release", datagrams(hello_r, release, release))
write("wire_from_reader", "error", datagrams(hello_r, msg(ERROR, struct.pack("<I", 3) + b"bye")))
write("wire_from_reader", "other_version", datagrams(msg(HELLO, struct.pack("<IIQ", 1, 1, 0), 2)))

# Writer role: 24-byte header (surface size, shift, planes, default size, plane needs).
caps = b"video/x-raw, format=(string)BGRx, width=(int)64, height=(int)48, framerate=(fraction)30/1"
head_bgrx = struct.pack("<QBBI", 12288, 0, 1, 12288) + bytes([48, 32]) + bytes(8)
hello_w = msg(HELLO, struct.pack("<IIQ", 0, 4242, 0x1234))
surface = msg(SURFACE, struct.pack("<IIQ", 1, 0, 12288))
write("wire_from_writer", "stream", head_bgrx + datagrams(
    hello_w, msg(CAPS, struct.pack("<I", 1) + caps), surface, frame(1, 1, 1, 12288),
    frame(2, 1, 1, 12288, [(0, 256)]), msg(RETIRE, struct.pack("<I", 1)), msg(EOS)))
write("wire_from_writer", "small_frame", head_bgrx + datagrams(
    hello_w, msg(CAPS, struct.pack("<I", 1) + caps), surface, frame(1, 1, 1, 100),
    frame(2, 1, 1, 12288, [(8000, 256)])))
head_i420 = struct.pack("<QBBI", 4608, 0, 3, 4608) + bytes([48, 8, 24, 4, 24, 4]) + bytes(4)
write("wire_from_writer", "i420_planes", head_i420 + datagrams(
    hello_w, msg(CAPS, struct.pack("<I", 7) + caps.replace(b"BGRx", b"I420")),
    frame(1, 1, 7, 4608, [(0, 64), (3072, 32), (3840, 32)])))
write("wire_from_writer", "caps_ids", head_bgrx + datagrams(
    *[msg(CAPS, struct.pack("<I", i) + caps) for i in range(20)]))
