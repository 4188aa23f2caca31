#!/usr/bin/python3
"""A WebRTC viewer built on GStreamer's webrtcbin: an implementation independent of Chromium's.

Watches a device through the backend's viewer WebSocket (the protocol in the README: watch_request
→ watch_accepted → signal_offer → signal_answer, trickled ice_candidate) and decodes what arrives.
Prints JSON lines on stdout and a final {"result": {...}} line; exits 0 when --frames frames were
decoded within --timeout seconds.

  /usr/bin/python3 gst_viewer.py --backend ws://127.0.0.1:8000/ws/viewer --device cam1 \
      [--frames 90] [--timeout 30] [--codec vp8|h264] [--relay]
"""
import argparse
import asyncio
import json
import sys
import time
import urllib.parse

import aiohttp
import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import Gst, GstSdp, GstWebRTC  # noqa: E402

CAPS = {
    "vp8": "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
    "h264": "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
    "packetization-mode=(string)1,profile-level-id=(string)42e01f",
}


def say(**o):
    print(json.dumps(o), flush=True)


class Viewer:
    def __init__(self, args, loop, ws):
        self.args, self.loop, self.ws = args, loop, ws
        self.session_id = None
        self.frames = 0
        self.color = None
        self.first_frame = None
        self.t0 = time.monotonic()
        self.pipe = None
        self.webrtc = None
        self.pending = []

    def send(self, kind, payload):
        msg = json.dumps({"type": kind, "payload": payload})
        self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.ws.send_str(msg)))

    def start(self, ice_servers):
        self.pipe = Gst.Pipeline.new("viewer")
        w = Gst.ElementFactory.make("webrtcbin", "w")
        w.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        if self.args.relay:
            w.set_property("ice-transport-policy", GstWebRTC.WebRTCICETransportPolicy.RELAY)
        for s in ice_servers:
            urls = s["urls"] if isinstance(s["urls"], list) else [s["urls"]]
            for u in urls:
                scheme, _, rest = u.partition(":")
                rest = rest.split("?")[0]
                if scheme == "stun":
                    w.set_property("stun-server", "stun://" + rest)
                elif scheme == "turn" and s.get("username"):
                    user = urllib.parse.quote(s["username"], safe="")
                    cred = urllib.parse.quote(s["credential"], safe="")
                    w.emit("add-turn-server", f"turn://{user}:{cred}@{rest}")
        self.pipe.add(w)
        self.webrtc = w
        w.connect("on-negotiation-needed", self.on_negotiation_needed)
        w.connect("on-ice-candidate", self.on_ice_candidate)
        w.connect("pad-added", self.on_pad_added)
        w.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
               Gst.Caps.from_string(CAPS[self.args.codec]))
        self.pipe.set_state(Gst.State.PLAYING)

    def on_negotiation_needed(self, w):
        def created(promise, _):
            offer = promise.get_reply().get_value("offer")
            w.emit("set-local-description", offer, None)
            self.send("signal_offer", {"session_id": self.session_id,
                                       "sdp": {"type": "offer", "sdp": offer.sdp.as_text()}})
        w.emit("create-offer", None, Gst.Promise.new_with_change_func(created, None))

    def on_ice_candidate(self, w, mline, cand):
        self.send("ice_candidate", {"session_id": self.session_id,
                                    "candidate": {"candidate": cand, "sdpMid": None,
                                                  "sdpMLineIndex": mline}})

    def on_pad_added(self, w, pad):
        if pad.direction != Gst.PadDirection.SRC:
            return
        bin_ = Gst.parse_bin_from_description(
            "decodebin ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink emit-signals=true sync=false",
            True)
        self.pipe.add(bin_)
        bin_.sync_state_with_parent()
        pad.link(bin_.get_static_pad("sink"))
        bin_.get_by_name("sink").connect("new-sample", self.on_sample)

    def on_sample(self, sink):
        sample = sink.emit("pull-sample")
        self.frames += 1
        if self.first_frame is None:
            self.first_frame = time.monotonic() - self.t0
        s = sample.get_caps().get_structure(0)
        wdt, hgt = s.get_value("width"), s.get_value("height")
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            stride = (wdt * 3 + 3) & ~3
            off = (hgt // 2) * stride + (wdt // 2) * 3
            self.color = list(info.data[off:off + 3])
            buf.unmap(info)
        return Gst.FlowReturn.OK

    def answer(self, sdp):
        ok, msg = GstSdp.SDPMessage.new_from_text(sdp)
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        self.webrtc.emit("set-remote-description", desc, None)
        for mline, cand in self.pending:
            self.webrtc.emit("add-ice-candidate", mline, cand)
        self.pending = None

    def candidate(self, c):
        if not c.get("candidate"):
            return
        mline = c.get("sdpMLineIndex") or 0
        if self.pending is not None:
            self.pending.append((mline, c["candidate"]))
        else:
            self.webrtc.emit("add-ice-candidate", mline, c["candidate"])


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--codec", choices=sorted(CAPS), default="vp8")
    p.add_argument("--relay", action="store_true")
    args = p.parse_args()
    Gst.init(None)
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + args.timeout
    result = {"ok": False}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(args.backend) as ws:
            v = Viewer(args, loop, ws)
            await ws.send_str(json.dumps({"type": "watch_request", "payload": {"device_id": args.device}}))
            while time.monotonic() < deadline and v.frames < args.frames:
                try:
                    msg = await asyncio.wait_for(ws.receive(), timeout=0.2)
                except asyncio.TimeoutError:
                    msg = None
                if msg is not None:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        result["error"] = f"viewer WebSocket ended: {msg.type}"
                        break
                    m = json.loads(msg.data)
                    kind, pl = m.get("type"), m.get("payload") or {}
                    if kind == "watch_accepted":
                        v.session_id = pl["session_id"]
                        v.start(pl.get("ice_servers") or [])
                    elif kind == "signal_answer":
                        v.answer(pl["sdp"]["sdp"])
                    elif kind == "ice_candidate":
                        v.candidate(pl["candidate"])
                    elif kind == "error":
                        result["error"] = f"backend error: {pl}"
                        break
                    elif kind == "watch_end":
                        result["error"] = "the device ended the session"
                        break
                if v.pipe is not None:
                    bus = v.pipe.get_bus()
                    while True:
                        bm = bus.pop_filtered(Gst.MessageType.ERROR)
                        if bm is None:
                            break
                        err, dbg = bm.parse_error()
                        say(gst_error=f"{bm.src.get_path_string()}: {err.message}", debug=dbg)
            result.update(ok=v.frames >= args.frames, frames=v.frames, color=v.color,
                          first_frame_s=v.first_frame, session_id=v.session_id)
            if v.session_id:
                await ws.send_str(json.dumps({"type": "watch_end", "payload": {"session_id": v.session_id}}))
            if v.pipe is not None:
                v.pipe.set_state(Gst.State.NULL)
    say(result=result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
