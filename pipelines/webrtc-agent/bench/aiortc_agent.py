#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""A device agent built on aiortc, the benchmark's reference point for vcambridge-webrtc-agent.

It speaks the same device protocol (pipelines/webrtc-backend/README.md) and sends the same
stamped frames (pattern.py), made in this process and stamped when the track produces them:

    aiortc_agent.py --backend ws://127.0.0.1:8000/ws/device --device-id cam2 [--codec vp8|h264]

One camera track, shared through aiortc's MediaRelay; one RTCPeerConnection (and so one
encoder) per viewer, as aiortc works. Every answer carries all candidates (aiortc gathers
before answering); the viewer's trickled candidates are added with addIceCandidate. Logs go to
stderr; one JSON line per session event on stdout. Exits 0 on SIGINT/SIGTERM.
"""

import argparse
import asyncio
import fractions
import json
import logging
import os
import signal
import sys
import time

import av
from aiortc import (RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender,
                    RTCSessionDescription, VideoStreamTrack)
from aiortc.contrib.media import MediaRelay
from aiortc.sdp import candidate_from_sdp
from websockets.asyncio.client import connect

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pattern import Pattern, now_ms  # noqa: E402

log = logging.getLogger("aiortc-agent")
CLOCK_RATE = 90_000


def emit(**kw):
    print(json.dumps(kw), flush=True)


class StampedTrack(VideoStreamTrack):
    """The camera: frame n of pattern.py at n / fps, stamped with the time it is produced."""

    def __init__(self, width, height, fps):
        super().__init__()
        self.pattern = Pattern(width, height)
        self.fps = fps
        self.n = 0
        self.t0 = None

    async def recv(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        else:
            self.n += 1
            wait = self.t0 + self.n / self.fps - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = av.VideoFrame.from_ndarray(self.pattern.frame(self.n, now_ms()), format="yuv420p")
        frame.pts = self.n * CLOCK_RATE // self.fps
        frame.time_base = fractions.Fraction(1, CLOCK_RATE)
        return frame


def ice_servers(entries):
    out = []
    for s in entries or []:
        urls = s.get("urls")
        if not urls:
            continue
        out.append(RTCIceServer(urls=urls, username=s.get("username"),
                                credential=s.get("credential")))
    return out


class Agent:
    def __init__(self, args):
        self.args = args
        self.camera = StampedTrack(args.width, args.height, args.fps)
        self.relay = MediaRelay()
        self.sessions = {}  # session_id -> RTCPeerConnection
        self.early = {}  # session_id -> [candidate payload] before the offer was applied
        self.ice = {}  # session_id -> ice servers from watch_request
        self.ws = None
        self.mime = "video/H264" if args.codec == "h264" else "video/VP8"

    async def send(self, kind, payload):
        if self.ws is not None:
            await self.ws.send(json.dumps({"type": kind, "payload": payload}))

    async def close_session(self, sid, reason, tell_backend):
        pc = self.sessions.pop(sid, None)
        self.early.pop(sid, None)
        self.ice.pop(sid, None)
        if pc is None:
            return
        emit(event="ended", session_id=sid, reason=reason)
        if tell_backend:
            await self.send("watch_end", {"session_id": sid})
        await pc.close()

    async def on_offer(self, sid, sdp):
        if sid in self.sessions:
            await self.close_session(sid, "new offer", False)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(self.ice.get(sid))))
        self.sessions[sid] = pc

        @pc.on("connectionstatechange")
        async def _state():
            emit(event="connection", session_id=sid, state=pc.connectionState)
            if pc.connectionState == "failed" and self.sessions.get(sid) is pc:
                await self.close_session(sid, "connection failed", True)

        t0 = time.monotonic()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        sender = pc.addTrack(self.relay.subscribe(self.camera, buffered=False))
        codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs
                  if c.mimeType == self.mime]
        for t in pc.getTransceivers():
            if t.sender is sender:
                t.setCodecPreferences(codecs)
        answer = await pc.createAnswer()
        # aiortc answers an actpass offer as DTLS client and its client offers only ECDSA
        # cipher suites; GStreamer's DTLS server (webrtcbin 1.22) has an RSA certificate, so
        # that handshake fails ("no shared cipher"). As DTLS server (setup:passive) aiortc uses
        # its ECDSA certificate, which webrtcbin's client accepts.
        answer = RTCSessionDescription(
            sdp=answer.sdp.replace("a=setup:active", "a=setup:passive"), type="answer")
        await pc.setLocalDescription(answer)
        if self.sessions.get(sid) is not pc:
            return  # ended while gathering
        await self.send("signal_answer", {"session_id": sid, "sdp": {
            "type": "answer", "sdp": pc.localDescription.sdp}})
        emit(event="answered", session_id=sid, answer_s=round(time.monotonic() - t0, 3))
        for c in self.early.pop(sid, []):
            await self.add_candidate(pc, c)

    async def add_candidate(self, pc, c):
        line = c.get("candidate") or ""
        if not line:
            return  # end of candidates
        cand = candidate_from_sdp(line.split(":", 1)[1] if line.startswith("candidate:") else line)
        cand.sdpMid = c.get("sdpMid")
        cand.sdpMLineIndex = c.get("sdpMLineIndex")
        await pc.addIceCandidate(cand)

    async def handle(self, msg):
        kind, p = msg.get("type"), msg.get("payload") or {}
        sid = p.get("session_id")
        if kind == "watch_request":
            if len(self.sessions) >= self.args.max_sessions:
                await self.send("watch_end", {"session_id": sid})
                return
            self.ice[sid] = p.get("ice_servers") or []
            emit(event="watch_request", session_id=sid)
        elif kind == "signal_offer":
            await self.on_offer(sid, p["sdp"]["sdp"])
        elif kind == "ice_candidate":
            pc = self.sessions.get(sid)
            if pc is None or pc.remoteDescription is None:
                self.early.setdefault(sid, []).append(p.get("candidate") or {})
            else:
                await self.add_candidate(pc, p.get("candidate") or {})
        elif kind == "watch_end":
            await self.close_session(sid, "watch_end from the backend", False)

    async def heartbeat(self, interval):
        while True:
            await asyncio.sleep(interval)
            await self.send("heartbeat", {})

    async def run(self, stop):
        async with connect(self.args.backend, max_size=1 << 16) as ws:
            self.ws = ws
            await ws.send(json.dumps({"type": "hello",
                                      "payload": {"device_id": self.args.device_id}}))
            ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if ack.get("type") != "hello_ack":
                raise SystemExit(f"aiortc_agent: the backend answered hello with {ack}")
            interval = ack["payload"].get("heartbeat_interval") or 10
            emit(event="hello_ack", device_id=self.args.device_id)
            beat = asyncio.ensure_future(self.heartbeat(interval))
            reader = asyncio.ensure_future(self.read(ws))
            done, _ = await asyncio.wait([stop, reader], return_when=asyncio.FIRST_COMPLETED)
            beat.cancel()
            reader.cancel()
            for sid in list(self.sessions):
                await self.close_session(sid, "agent stopping", True)
            self.ws = None

    async def read(self, ws):
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            try:
                await self.handle(msg)
            except Exception as e:  # one bad session must not end the agent
                log.exception("handling %s failed", msg.get("type"))
                sid = (msg.get("payload") or {}).get("session_id")
                if sid:
                    await self.close_session(sid, f"error: {e}", True)


async def main_async(args):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await Agent(args).run(stop)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", default="ws://127.0.0.1:8000/ws/device")
    p.add_argument("--device-id", required=True)
    p.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--max-sessions", type=int, default=8)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        stream=sys.stderr)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
