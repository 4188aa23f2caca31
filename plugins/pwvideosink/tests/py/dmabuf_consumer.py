#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""A DMA-BUF consumer in its own process: pipewiresrc asked for video/x-raw(memory:DMABuf).

For each of COUNT buffers it prints one JSON line: whether every memory is DMA-BUF memory,
the inode of each memory's fd (the identity of the DMA-BUF, the same in every process) and
the frame size; the frame bytes (planes concatenated) go to OUT.

Each frame is read as it arrives, on the streaming thread (appsink's new-sample), the way a
DMA-BUF consumer imports or copies a frame before the next one: PipeWire 0.3.65 gives a
consumer no way to hand a buffer back to a producer in another process (the producer takes
it back in the next graph cycle whatever the consumer still does with it), so a consumer
that queues DMA-BUFs and reads them later may read a newer frame upstream wrote into it.

usage: dmabuf_consumer.py NODE CAPS COUNT OUT
"""
import json
import os
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstAllocators", "1.0")
from gi.repository import Gst, GstAllocators  # noqa: E402


def main():
    node, caps, count, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    Gst.init(None)
    pipeline = Gst.parse_launch(
        f'pipewiresrc target-object={node} stream-properties="props,media.type=Video" '
        f"! {caps} ! appsink name=sink sync=false emit-signals=true"
    )
    sink = pipeline.get_by_name("sink")
    f = open(out, "wb")
    state = {"n": 0, "error": None}
    done = threading.Event()

    def on_sample(appsink):
        sample = appsink.emit("pull-sample")
        if sample is None or done.is_set():
            return Gst.FlowReturn.OK
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
            state["error"] = "could not map a buffer"
            done.set()
            return Gst.FlowReturn.ERROR
        data = bytes(info.data)
        buf.unmap(info)
        f.write(data)
        caps_s = sample.get_caps().to_string()
        print(json.dumps({"dmabuf": dmabuf, "inodes": inodes, "size": len(data),
                          "caps": caps_s}), flush=True)
        state["n"] += 1
        if state["n"] >= count:
            done.set()
        return Gst.FlowReturn.OK

    sink.connect("new-sample", on_sample)
    pipeline.set_state(Gst.State.PLAYING)
    # Frames come every 33 ms: 10 s without reaching COUNT means the stream stalled.
    last, status = -1, 0
    while not done.wait(10):
        if state["n"] == last:
            state["error"] = f"no sample within 10 s (after {last})"
            break
        last = state["n"]
    pipeline.set_state(Gst.State.NULL)
    f.close()
    if state["error"]:
        print(state["error"], file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
