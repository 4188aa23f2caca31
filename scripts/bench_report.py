"""One shape for every benchmark's report (the Python twin of tests/src/bench.rs).

    from bench_report import Report, median
    r = Report("chunksink: 48 kHz F32 stereo", rounds=3, columns=["chunksink", "pw-record"])
    r.row("CPU per s of audio (ms)", [4.40, 2.43])
    r.print()

prints the title, the machine (cores, CPU model, kernel, GStreamer), the rounds, a Markdown table
with ours first and one `ours / reference` ratio column per reference, then the notes.
"""

import os
import platform
import shutil
import statistics
import subprocess


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def machine():
    cores = os.cpu_count() or 1
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gst = "unknown"
    if shutil.which("gst-launch-1.0"):
        out = subprocess.run(["gst-launch-1.0", "--version"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("GStreamer "):
                gst = line.split()[1]
    return f"{cores} cores, {model}, Linux {platform.release()}, GStreamer {gst}"


def _fmt(v):
    if v is None or v != v or v in (float("inf"), float("-inf")):
        return "-"
    if float(v).is_integer() or abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


class Report:
    def __init__(self, title, rounds, columns):
        assert columns, "a report needs at least our column"
        self.title, self.rounds, self.columns = title, rounds, list(columns)
        self.rows, self.notes = [], []

    def row(self, metric, values):
        assert len(values) == len(self.columns), "one value per column in a report row"
        self.rows.append((metric, list(values)))
        return self

    def note(self, text):
        self.notes.append(text)
        return self

    def render(self):
        ours = self.columns[0]
        header = ["metric", *self.columns, *[f"{ours} / {c}" for c in self.columns[1:]]]
        lines = [f"== {self.title} ==", f"machine: {machine()}", f"rounds: {self.rounds} (medians)",
                 "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for metric, values in self.rows:
            cells = [metric, *[_fmt(v) for v in values]]
            for ref in values[1:]:
                ok = values[0] is not None and ref not in (None, 0)
                cells.append(f"{values[0] / ref:.2f}" if ok else "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def print(self):
        print(self.render(), end="", flush=True)


def _main(argv):
    """Shell benchmarks: bench_report.py --title T --rounds N --columns ours,ref1,...
    --row 'metric=v1,v2,...' (- for none) ... [--note TEXT ...]"""
    import argparse

    p = argparse.ArgumentParser(description=_main.__doc__)
    p.add_argument("--title", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--columns", required=True)
    p.add_argument("--row", action="append", default=[])
    p.add_argument("--note", action="append", default=[])
    a = p.parse_args(argv)
    r = Report(a.title, a.rounds, a.columns.split(","))
    for row in a.row:
        metric, _, values = row.rpartition("=")
        r.row(metric, [None if v.strip() in ("-", "") else float(v) for v in values.split(",")])
    for n in a.note:
        r.note(n)
    r.print()


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
