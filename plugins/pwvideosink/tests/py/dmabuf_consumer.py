#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""A DMA-BUF consumer in its own process: pipewiresrc asked for video/x-raw(memory:DMABuf).

For each of COUNT buffers it prints one JSON line: whether every memory is DMA-BUF memory,
the inode of each memory's fd (the identity of the DMA-BUF, the same in every process) and
the frame size; the frame bytes (planes concatenated) go to OUT.

usage: dmabuf_consumer.py NODE CAPS COUNT OUT
"""
import json
import os
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstAllocators", "1.0")
from gi.repository import Gst, GstAllocators  # noqa: E402


def main():
    node, caps, count, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    Gst.init(None)
    pipeline = Gst.parse_launch(
        f'pipewiresrc target-object={node} stream-properties="props,media.type=Video" '
        f"! {caps} ! appsink name=sink sync=false"
    )
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    status = 0
    with open(out, "wb") as f:
        for _ in range(count):
            sample = sink.emit("try-pull-sample", 10 * Gst.SECOND)
            if sample is None:
                print("no sample within 10 s", file=sys.stderr)
                status = 1
                break
            buf = sample.get_buffer()
            inodes, dmabuf = [], True
            for i in range(buf.n_memory()):
                mem = buf.peek_memory(i)
                if GstAllocators.is_dmabuf_memory(mem):
                    fd = GstAllocators.dmabuf_memory_get_fd(mem)
                    inodes.append(os.fstat(fd).st_ino)
                else:
                    dmabuf = False
            ok, info = buf.map(Gst.MapFlags.READ)
            if not ok:
                print("could not map a buffer", file=sys.stderr)
                status = 1
                break
            data = bytes(info.data)
            buf.unmap(info)
            f.write(data)
            caps_s = sample.get_caps().to_string()
            print(json.dumps({"dmabuf": dmabuf, "inodes": inodes, "size": len(data),
                              "caps": caps_s}), flush=True)
    pipeline.set_state(Gst.State.NULL)
    return status


if __name__ == "__main__":
    sys.exit(main())
