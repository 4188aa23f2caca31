# SPDX-License-Identifier: MPL-2.0
"""The benchmark's frames, shared by stamp_source.py (our agent) and aiortc_agent.py.

An I420 frame: a scrolling gradient with a fixed noise texture (so encoders have detail and
motion to work on), and in the top 32 rows the capture time as 48 bits, MSB first, of
milliseconds since the Unix epoch: 2 rows of 24 blocks of 16x16 px from (0,0), white = 1.
"""

import time

import numpy as np

STAMP_BITS = 48
BLOCK = 16
SCROLL_PX = 4  # horizontal scroll per frame


def now_ms():
    """CLOCK_REALTIME in whole milliseconds (what the viewer compares against)."""
    return time.clock_gettime_ns(time.CLOCK_REALTIME) // 1_000_000


class Pattern:
    """Makes frame ``n`` of a ``width`` x ``height`` I420 sequence stamped with a time."""

    def __init__(self, width=640, height=480):
        if width < BLOCK * 24 or height < BLOCK * 2 or width % 2 or height % 2:
            raise ValueError(f"{width}x{height}: need an even size of at least 384x32")
        self.width, self.height = width, height
        rng = np.random.default_rng(1234)
        x = np.arange(width)
        y = np.arange(height)[:, None]
        tex = rng.integers(0, 48, size=(height, width), dtype=np.int32)
        self.y_src = ((x + y // 2) * 256 // width * 3 // 4 + tex).clip(0, 255).astype(np.uint8)
        cx = np.arange(width // 2)
        cy = np.arange(height // 2)[:, None]
        self.u_src = (cx * 512 // width + cy * 0).astype(np.uint8)
        self.v_src = ((cy * 256 // height + cx * 256 // width) % 256).astype(np.uint8)
        self.size = width * height * 3 // 2

    def frame(self, n, stamp_ms):
        """Frame ``n`` as one contiguous I420 array (Y plane, then U, then V) of shape
        (height * 3 / 2, width), the layout PyAV's ``yuv420p`` and GStreamer's I420 share."""
        w, h = self.width, self.height
        s = (n * SCROLL_PX) % w  # the texture wraps around: no jump, no scene cut
        out = np.empty((h * 3 // 2, w), dtype=np.uint8)
        out[:h, :w - s] = self.y_src[:, s:]
        out[:h, w - s:] = self.y_src[:, :s]
        chroma = out[h:].reshape(-1)
        cw, cs = w // 2, s // 2
        u = chroma[:w * h // 4].reshape(h // 2, cw)
        v = chroma[w * h // 4:].reshape(h // 2, cw)
        u[:, :cw - cs] = self.u_src[:, cs:]
        u[:, cw - cs:] = self.u_src[:, :cs]
        v[:, :cw - cs] = self.v_src[:, cs:]
        v[:, cw - cs:] = self.v_src[:, :cs]
        self.stamp(out, stamp_ms)
        return out

    def stamp(self, out, stamp_ms):
        """Writes ``stamp_ms`` into the top 32 rows of an I420 frame made by ``frame``."""
        w, h = self.width, self.height
        bits = [(stamp_ms >> (STAMP_BITS - 1 - i)) & 1 for i in range(STAMP_BITS)]
        row = np.repeat(np.array(bits, dtype=np.uint8) * 255, BLOCK).reshape(2, 24 * BLOCK)
        out[:BLOCK, :24 * BLOCK] = row[0]
        out[BLOCK:2 * BLOCK, :24 * BLOCK] = row[1]
        chroma = out[h:].reshape(-1)
        cw = w // 2
        u = chroma[:w * h // 4].reshape(h // 2, cw)
        v = chroma[w * h // 4:].reshape(h // 2, cw)
        u[:BLOCK, :12 * BLOCK] = 128
        v[:BLOCK, :12 * BLOCK] = 128


def read_stamp(y_plane):
    """The time stamped into a Y plane (for self-checks)."""
    v = 0
    for i in range(STAMP_BITS):
        r, c = divmod(i, 24)
        v = (v << 1) | int(y_plane[r * BLOCK + 8, c * BLOCK + 8] > 128)
    return v
