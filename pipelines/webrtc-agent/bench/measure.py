#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""The benchmark's measuring helper (run.sh calls it; stdlib only).

  measure.py wait-online --backend http://HOST:PORT --device ID [--timeout S]
      returns 0 once /api/devices lists ID online (the agent said hello), 1 after S seconds.

  measure.py run --label ours --agent-pid PID [--source-pid PID] --viewers K
                 --viewer-bin PATH --backend ws://HOST:PORT/ws/viewer --device ID
                 --frames N --hold S --codec vp8 --timeout T --out results.jsonl
      starts K viewers at once (each: --stamp --frames N --hold S), samples the CPU time
      (utime + stime) of the agent's process tree, and of the source's, every 0.2 s from /proc,
      and appends one JSON line to --out. The window is from the moment every viewer has decoded
      N frames to the last progress line any viewer printed before its result (so about S - 1 s);
      CPU and frame counts are interpolated to its two ends. cpu_us_per_frame = CPU time in the
      window / frames decoded per viewer in the window (the mean over viewers).

  measure.py table results.jsonl
      the per-round numbers, then per metric and viewer count: median ours, median aiortc, ratio.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "scripts"))
import bench_report  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def proc_tree(root):
    """``root`` and its descendants (pids)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(root):
    """utime + stime of ``root``'s tree (all threads), in seconds; None once root is gone."""
    total, seen = 0, False
    for p in proc_tree(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seen = seen or p == root
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / TICK if seen else None


def interp(series, t):
    """Linear interpolation in a list of (time, value), clamped at the ends."""
    if not series:
        return None
    if t <= series[0][0]:
        return series[0][1]
    for (t0, v0), (t1, v1) in zip(series, series[1:]):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return series[-1][1]


def wait_online(a):
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(a.backend.rstrip("/") + "/api/devices", timeout=2) as r:
                if any(d.get("device_id") == a.device and d.get("online")
                       for d in json.load(r)):
                    return 0
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    print(f"measure: device {a.device} not online at {a.backend} within {a.timeout} s",
          file=sys.stderr)
    return 1


class ViewerProc:
    def __init__(self, cmd):
        self.progress = []  # (monotonic time received, frames)
        self.result = None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            now = time.monotonic()
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if "result" in v:
                self.result = v["result"]
            elif "frames" in v:
                self.progress.append((now, v["frames"]))


def run(a):
    cmd = [a.viewer_bin, "--backend", a.backend, "--device", a.device, "--frames",
           str(a.frames), "--hold", str(a.hold), "--timeout", str(a.timeout), "--codec",
           a.codec, "--stamp"]
    roots = {"agent": a.agent_pid}
    if a.source_pid:
        roots["source"] = a.source_pid
    samples = {k: [] for k in roots}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    viewers = []
    try:
        viewers.extend(ViewerProc(cmd) for _ in range(a.viewers))
        limit = time.monotonic() + a.timeout + a.hold + 15
        while any(v.proc.poll() is None for v in viewers) and time.monotonic() < limit:
            now = time.monotonic()
            for k, pid in roots.items():
                c = cpu_seconds(pid)
                if c is not None:
                    samples[k].append((now, c))
            time.sleep(0.2)
    finally:
        for v in viewers:
            if v.proc.poll() is None:
                v.proc.kill()
            v.proc.wait(timeout=5)
            v.thread.join(timeout=5)

    rec = {"label": a.label, "round": a.round, "viewers": a.viewers, "codec": a.codec,
           "ok": all(v.result and v.result.get("ok") for v in viewers)}
    errors = [v.result.get("error") if v.result else "no result" for v in viewers]
    if not rec["ok"]:
        rec["errors"] = errors
    reached = []
    for v in viewers:
        t = next((t for t, f in v.progress if f >= a.frames), None)
        reached.append(t)
    if all(t is not None for t in reached) and all(len(v.progress) >= 2 for v in viewers):
        t1 = max(reached)
        t2 = min(v.progress[-1][0] for v in viewers)
        if t2 - t1 >= 1.0:
            frames = [interp(v.progress, t2) - interp(v.progress, t1) for v in viewers]
            per_viewer = statistics.mean(frames)
            cpu = {k: interp(s, t2) - interp(s, t1) for k, s in samples.items()}
            total = sum(cpu.values())
            rec.update(window_s=round(t2 - t1, 2),
                       fps_per_viewer=round(per_viewer / (t2 - t1), 1),
                       cpu_pct=round(100 * total / (t2 - t1), 1),
                       cpu_us_per_frame=round(total * 1e6 / per_viewer) if per_viewer else None)
            if "source" in cpu and per_viewer:
                rec["source_us_per_frame"] = round(cpu["source"] * 1e6 / per_viewer)
    res = [v.result for v in viewers if v.result]

    def med(key):
        vals = [r[key] for r in res if r.get(key) is not None]
        return round(statistics.median(vals), 3) if vals else None

    rec.update(first_frame_s=med("first_frame_s"), latency_ms_p50=med("latency_ms_p50"),
               latency_ms_p95=med("latency_ms_p95"),
               latency_samples=sum(r.get("latency_samples") or 0 for r in res))
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)
    return 0 if rec["ok"] else 1


METRICS = [
    ("cpu_us_per_frame", "CPU per frame, µs"),
    ("cpu_pct", "CPU, % of one core"),
    ("first_frame_s", "first frame, s"),
    ("latency_ms_p50", "glass-to-glass p50, ms"),
    ("latency_ms_p95", "glass-to-glass p95, ms"),
    ("fps_per_viewer", "fps per viewer"),
]


def table(a):
    recs = []
    with open(a.results) as f:
        for line in f:
            if line.strip():
                recs.append(json.loads(line))
    if not recs:
        print("no results")
        return 1
    print("raw, per round (CPU of ours includes stamp_source.py: source µs/frame in brackets):")
    print(f"{'agent':7} {'round':>5} {'viewers':>7} {'ok':>3} {'µs/frame':>14} {'CPU %':>6} "
          f"{'fps':>5} {'1st s':>6} {'p50 ms':>7} {'p95 ms':>7}")
    for r in recs:
        src = f" [{r['source_us_per_frame']}]" if r.get("source_us_per_frame") is not None else ""
        print(f"{r['label']:7} {r['round']:>5} {r['viewers']:>7} {'y' if r['ok'] else 'n':>3} "
              f"{str(r.get('cpu_us_per_frame')) + src:>14} {str(r.get('cpu_pct')):>6} "
              f"{str(r.get('fps_per_viewer')):>5} {str(r.get('first_frame_s')):>6} "
              f"{str(r.get('latency_ms_p50')):>7} {str(r.get('latency_ms_p95')):>7}")
        if not r["ok"]:
            print(f"        errors: {r.get('errors')}")
    print()
    viewers = sorted({r["viewers"] for r in recs})
    report = bench_report.Report(
        f"WebRTC agent vs aiortc ({a.title})" if a.title else "WebRTC agent vs aiortc",
        max(r["round"] for r in recs), ["vcambridge-webrtc-agent", "aiortc"])
    for key, name in METRICS:
        for k in viewers:
            vals = []
            for label in ("ours", "aiortc"):
                xs = [r[key] for r in recs
                      if r["label"] == label and r["viewers"] == k and r.get(key) is not None]
                vals.append(statistics.median(xs) if xs else None)
            report.row(f"{name}, {k} viewer{'s' if k > 1 else ''}", vals)
    report.note("CPU of ours includes stamp_source.py (the raw rounds above show it apart)")
    report.print()
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait-online")
    w.add_argument("--backend", required=True)
    w.add_argument("--device", required=True)
    w.add_argument("--timeout", type=float, default=15)
    r = sub.add_parser("run")
    r.add_argument("--label", required=True)
    r.add_argument("--round", type=int, default=1)
    r.add_argument("--agent-pid", type=int, required=True)
    r.add_argument("--source-pid", type=int)
    r.add_argument("--viewers", type=int, default=1)
    r.add_argument("--viewer-bin", required=True)
    r.add_argument("--backend", required=True)
    r.add_argument("--device", required=True)
    r.add_argument("--frames", type=int, default=60)
    r.add_argument("--hold", type=float, default=10)
    r.add_argument("--codec", default="vp8")
    r.add_argument("--timeout", type=float, default=20)
    r.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("results")
    t.add_argument("--title", default="")
    a = p.parse_args()
    return {"wait-online": wait_online, "run": run, "table": table}[a.cmd](a)


if __name__ == "__main__":
    raise SystemExit(main())
