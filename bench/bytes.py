#!/usr/bin/env python3
"""What the live UI costs over SSH (issue #11): bytes written to the terminal per second, and how
fast a key is answered, measured on the real UI in a pseudo-terminal.

The UI runs as a user runs it (``python -m llm_moments.tui.cli``, TERM=xterm-256color, no COLORTERM:
ssh does not forward it, so Textual draws in 256 colours), on a pty of the given size; a reader
thread drains the master side as a terminal would, counts every byte with its time, and feeds a
small screen model (cursor moves, SGR, text: what Textual writes) so the bench can tell when the
screen shows an answer. For each case and size:

- steady state after start-up: bytes/s, write bursts/s (frames), the share of 1-second windows in
  which the screen's text changed (``live``: the screen visibly moves every second), the UI
  process's CPU; for the main screen, the heatmap (``m`` on narrow terminals; the wide layout shows
  it on the main screen) and the detail screen (enter on the first layer);
- key latency, at random phases of the refresh: cursor down / up, ``?`` help and ``?`` back, enter
  (detail) — the first bytes after the key, and the time until the screen shows the answer.

Cases: ``live`` (`moments run`, the embedded MiniLM), ``live-decoder`` (`--model tiny-gpt2`, random
weights), ``replay`` (a recording made first with `moments run --headless --record F --steps N`,
played at a speed that makes it last the measurement).

    .venv/bin/python bench/bytes.py [--quick] [--json FILE] [--ui-args='--refresh 1 --lean']
    .venv/bin/python bench/bytes.py --cases replay --sizes 160x48 --link-kib-s 4   # a slow link: back-off
    PYTHONPATH=/tmp/before .venv/bin/python bench/bytes.py --recording F ...   # another tree's llm_moments
                                                   # (a folder holding it as llm_moments/), same recording
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import fcntl
import json
import os
import random
import re
import select
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from rich.cells import get_character_cell_size

UI = [sys.executable, "-m", "llm_moments.tui.cli"]
HELP_MARK = "esc or ? to close"     # the help screen's border subtitle
DETAIL_MARK = "moment history"      # the detail screen's first box
TABLE_MARK = "layer ▼"              # the layer table's heading, sorted by order (the start)
HEATMAP_MARK = "layers × steps"     # the heatmap's border title


# -- a screen model: enough of a VT for what Textual writes --------------------------------------------
_TOKEN = re.compile(r"\x1b\[([0-9;?<>=$ ]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?|\r|\n|[^\x1b\r\n]+")


class Screen:
    """Characters and their SGR per cell; cursor moves (CUP), CR, LF, SGR and text. Everything else
    (modes, queries, erase) is ignored: Textual paints every cell it changes."""

    def __init__(self, cols: int, rows: int):
        self.cols, self.rows = cols, rows
        self.chars = [[" "] * cols for _ in range(rows)]
        self.sgr = [[""] * cols for _ in range(rows)]
        self.x = self.y = 0
        self.pen = ""
        self._rest = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> None:
        text = self._rest + self._utf8.decode(data)
        self._rest = ""
        cut = text.rfind("\x1b")
        if cut >= 0 and not _complete(text[cut:]):
            text, self._rest = text[:cut], text[cut:]   # a sequence split across reads
        for m in _TOKEN.finditer(text):
            tok = m.group(0)
            if m.group(2) is not None:
                self._csi(m.group(1), m.group(2))
            elif tok == "\r":
                self.x = 0
            elif tok == "\n":
                self.y = min(self.rows - 1, self.y + 1)
            elif not tok.startswith("\x1b"):
                self._text(tok)

    def _csi(self, params: str, final: str) -> None:
        if final == "H":
            parts = [int(p) if p.isdigit() else 1 for p in (params.split(";") + ["1", "1"])[:2]]
            self.y, self.x = min(self.rows, max(1, parts[0])) - 1, min(self.cols, max(1, parts[1])) - 1
        elif final == "m":
            self.pen = "" if params in ("", "0") else params

    def _text(self, text: str) -> None:
        row, sgr, y = self.chars[self.y], self.sgr[self.y], self.y
        for ch in text:
            w = 1 if ch.isascii() else get_character_cell_size(ch)
            if self.x < self.cols and w:
                row[self.x], sgr[self.x] = ch, self.pen
                if w == 2 and self.x + 1 < self.cols:
                    row[self.x + 1], sgr[self.x + 1] = "", self.pen
            self.x += w
        self.y = y

    def lines(self) -> list[str]:
        return ["".join(r) for r in self.chars]

    def find(self, text: str) -> tuple[int, int] | None:
        for y, line in enumerate(self.lines()):
            x = line.find(text)
            if x >= 0:
                return y, x
        return None


def _complete(seq: str) -> bool:
    if len(seq) < 2:
        return False
    if seq[1] == "[":
        return re.match(r"\x1b\[[0-9;?<>=$ ]*[@-~]", seq) is not None
    if seq[1] == "]":
        return "\x07" in seq or "\x1b\\" in seq
    return True


# -- the UI in a pty ------------------------------------------------------------------------------------
class PtyUI:
    """``link_bytes_per_s``: the terminal reads no faster than this, as a slow SSH link drains the pty."""

    def __init__(self, argv: list[str], cols: int, rows: int, cwd: str, link_bytes_per_s: float | None = None):
        self.link_bytes_per_s = link_bytes_per_s
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        for name in ("COLORTERM", "TEXTUAL", "NO_COLOR", "TEXTUAL_COLOR_SYSTEM"):
            env.pop(name, None)

        def controlling_tty() -> None:  # after setsid(): the pty is the UI's terminal, as sshd makes it
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                                     start_new_session=True, preexec_fn=controlling_tty)
        os.close(slave)
        self.screen = Screen(cols, rows)
        self.lock = threading.Lock()
        self.total = 0
        self.chunks: deque[tuple[float, int]] = deque(maxlen=200_000)
        self._watch: list | None = None   # [predicate, time it became true]
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.2)
                if not ready:
                    if self.proc.poll() is not None:
                        return
                    continue
                data = os.read(self.master, 1024 if self.link_bytes_per_s else 1 << 16)
            except OSError:
                return
            if not data:
                return
            t = time.monotonic()
            if self.link_bytes_per_s:
                time.sleep(len(data) / self.link_bytes_per_s)
            with self.lock:
                self.total += len(data)
                self.chunks.append((t, len(data)))
                self.screen.feed(data)
                w = self._watch
                if w is not None and w[1] is None and w[0](self.screen):
                    w[1] = t

    def has(self, pred: Callable[[Screen], bool]) -> bool:
        with self.lock:
            return bool(pred(self.screen))

    def wait(self, pred: Callable[[Screen], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.has(pred):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return True

    def press(self, key: bytes, answered: Callable[[Screen], bool], timeout: float = 3.0) -> tuple[float, float]:
        """Write ``key``; seconds until the first bytes after it, and until ``answered`` holds (inf: not
        within ``timeout``)."""
        with self.lock:
            self._watch = [answered, None]
            n0 = len(self.chunks)
        t0 = time.monotonic()
        os.write(self.master, key)
        deadline = t0 + timeout
        while time.monotonic() < deadline and self._watch[1] is None:
            time.sleep(0.005)
        with self.lock:
            done, self._watch = self._watch[1], None
            first = next((t for t, _ in list(self.chunks)[n0:] if t >= t0), None)
        return (first - t0 if first else float("inf")), (done - t0 if done else float("inf"))

    def bursts(self, t0: float, t1: float, gap_s: float = 0.015) -> int:
        """Writes separated by a pause: about one per frame drawn."""
        with self.lock:
            times = [t for t, _ in self.chunks if t0 <= t < t1]
        return sum(1 for a, b in zip([-1.0, *times], times) if b - a > gap_s)

    def cpu_s(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def close(self) -> None:
        """``q`` (on a screen where q closes that screen first: escape, then q again), then signals."""
        for keys in (b"q", b"\x1b", b"q"):
            with contextlib.suppress(OSError):
                os.write(self.master, keys)
            try:
                self.proc.wait(0.5 if keys == b"\x1b" else 5)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)   # the UI's own session: it and its engine
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)


# -- what the screen shows -----------------------------------------------------------------------------
def has_text(text: str) -> Callable[[Screen], bool]:
    return lambda s: s.find(text) is not None


def lacks_text(text: str) -> Callable[[Screen], bool]:
    return lambda s: s.find(text) is None


def cursor_on(row: int) -> Callable[[Screen], bool]:
    """The table's cursor (its own colours on the layer's name) on data row ``row`` (0: the first)."""
    def pred(s: Screen) -> bool:
        at = s.find(TABLE_MARK)
        if at is None:
            return False
        y, x = at
        if y + 2 >= s.rows:
            return False
        styles = [s.sgr[y + 1][x], s.sgr[y + 2][x]]
        return styles[row] != styles[1 - row] and styles[row] == CURSOR_SGR.get("sgr")
    return pred


CURSOR_SGR: dict[str, str] = {}


def started(s: Screen) -> bool:
    at = s.find(TABLE_MARK)
    return at is not None and "steps/s" in "".join(s.lines()[:3]) and \
        s.chars[at[0] + 1][at[1]].strip() != "" and s.find("waiting for") is None


# -- one case at one size --------------------------------------------------------------------------------
def measure_view(ui: PtyUI, seconds: float) -> dict:
    t0, b0, c0 = time.monotonic(), ui.total, ui.cpu_s()
    with ui.lock:
        prev = ui.screen.lines()
    live = changed = 0
    windows = max(1, round(seconds))
    for _ in range(windows):
        time.sleep(seconds / windows)
        with ui.lock:
            now = ui.screen.lines()
        diff = sum(a != b for la, lb in zip(prev, now) for a, b in zip(la, lb))
        live += diff > 0
        changed += diff
        prev = now
    t1 = time.monotonic()
    wall = t1 - t0
    return {"bytes_per_s": (ui.total - b0) / wall, "writes_per_s": ui.bursts(t0, t1) / wall,
            "live_pct": 100.0 * live / windows, "cells_changed_per_s": changed / wall,
            "ui_cpu_pct": 100.0 * (ui.cpu_s() - c0) / wall}


def latency(ui: PtyUI, presses: int, rng: random.Random) -> dict:
    """Each key at a random phase of the refresh; every press waits for the screen's answer first."""
    out: dict[str, dict[str, list[float]]] = {}

    def note(kind: str, first: float, done: float) -> None:
        d = out.setdefault(kind, {"first": [], "answered": []})
        d["first"].append(first)
        d["answered"].append(done)

    with ui.lock:
        at = ui.screen.find(TABLE_MARK)
        if at is not None:
            CURSOR_SGR["sgr"] = ui.screen.sgr[at[0] + 1][at[1]]   # the cursor starts on the first layer
    for i in range(presses):
        time.sleep(rng.uniform(0.25, 0.75))
        down = i % 2 == 0
        note("cursor ↓↑", *ui.press(b"\x1b[B" if down else b"\x1b[A", cursor_on(1 if down else 0)))
    if presses % 2:
        ui.press(b"\x1b[A", cursor_on(0))
    for _ in range(presses):
        time.sleep(rng.uniform(0.25, 0.75))
        note("? help", *ui.press(b"?", has_text(HELP_MARK)))
        time.sleep(rng.uniform(0.25, 0.75))
        note("? back", *ui.press(b"?", lacks_text(HELP_MARK)))
    for _ in range(max(1, presses // 2)):
        time.sleep(rng.uniform(0.25, 0.75))
        note("enter detail", *ui.press(b"\r", has_text(DETAIL_MARK)))
        time.sleep(rng.uniform(0.25, 0.75))
        ui.press(b"\x1b", lacks_text(DETAIL_MARK))
        ui.wait(has_text(TABLE_MARK), 3)
    return {kind: {what: _summary(values) for what, values in d.items()} for kind, d in out.items()}


def _summary(values: list[float]) -> dict:
    ms = sorted(v * 1e3 for v in values)
    finite = [v for v in ms if v != float("inf")]
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))] if ms else float("nan")
    return {"n": len(ms), "missed": len(ms) - len(finite), "median_ms": statistics.median(ms) if ms else float("nan"),
            "p95_ms": p95}


def run_case(name: str, argv: list[str], cols: int, rows: int, args: argparse.Namespace, cwd: str) -> dict:
    link = args.link_kib_s * 1024 if args.link_kib_s else None
    ui = PtyUI(argv, cols, rows, cwd, link_bytes_per_s=link)
    result: dict = {"case": name, "size": f"{cols}x{rows}", "argv": argv[len(UI):], "views": {}}
    try:
        if not ui.wait(started, args.start_timeout):
            with ui.lock:
                tail = [line.rstrip() for line in ui.screen.lines() if line.strip()][-4:]
            raise RuntimeError(f"{name} {cols}x{rows}: the UI did not start: {tail}")
        time.sleep(args.settle)
        result["views"]["main"] = measure_view(ui, args.seconds)
        with ui.lock:
            status = ui.screen.lines()[-2].strip()
        result["status_line"] = status   # on a slow link: the back-off says so here
        if link:
            print(f"  status line: {status}", file=sys.stderr, flush=True)
        if cols < 120:   # the wide layout (≥ 120 columns) shows the heatmap on the main screen
            ui.press(b"m", has_text(HEATMAP_MARK))
            time.sleep(0.5)
            result["views"]["heatmap"] = measure_view(ui, args.seconds)
            ui.press(b"m", has_text(TABLE_MARK))
        ui.press(b"\r", has_text(DETAIL_MARK))
        time.sleep(0.5)
        result["views"]["detail"] = measure_view(ui, args.seconds)
        ui.press(b"\x1b", has_text(TABLE_MARK))
        time.sleep(0.5)
        result["latency"] = latency(ui, args.presses, random.Random(f"{name}{cols}"))
    finally:
        ui.close()
    return result


def make_recording(folder: str, steps: int, depth: str) -> str:
    path = os.path.join(folder, "bench-bytes.jsonl")
    subprocess.run([*UI, "run", "--headless", "--record", path, "--steps", str(steps), "--depth", depth],
                   check=True, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def recorded_span_s(path: str) -> float:
    first = last = None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if '"type": "step"' in line or '"type":"step"' in line:
                t = json.loads(line)["t_ns"]
                first = t if first is None else first
                last = t
    return ((last or 0) - (first or 0)) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 s per view, 6 presses per key, live and replay")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--cases", default=None, help="comma-separated: live, live-decoder, replay (default all)")
    ap.add_argument("--sizes", default="80x24,160x48")
    ap.add_argument("--seconds", type=float, default=None, help="per view (default 10; quick 3)")
    ap.add_argument("--presses", type=int, default=None, help="per key (default 20; quick 6)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after start-up before measuring")
    ap.add_argument("--depth", default="blocks", choices=("blocks", "sublayers", "leaves"))
    ap.add_argument("--ui-args", default="", help="added to every UI command, e.g. '--refresh 1 --lean'")
    ap.add_argument("--record-steps", type=int, default=None,
                    help="steps in the replay's recording (default 2400; quick 600)")
    ap.add_argument("--recording", metavar="FILE", default=None,
                    help="replay this recording instead of making one (the same file before and after a change)")
    ap.add_argument("--link-kib-s", type=float, default=None,
                    help="a slow link: the terminal reads at most this many KiB/s (the UI should back off)")
    ap.add_argument("--start-timeout", type=float, default=120.0)
    args = ap.parse_args()
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.presses = args.presses or (6 if args.quick else 20)
    cases = (args.cases or ("live,replay" if args.quick else "live,live-decoder,replay")).split(",")
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    extra = shlex.split(args.ui_args)
    load0 = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="moments-bytes-") as folder:
        replay_argv = None
        if "replay" in cases:
            if args.recording:
                path, span_s = os.path.abspath(args.recording), recorded_span_s(args.recording)
            else:
                path = make_recording(folder, args.record_steps or (600 if args.quick else 2400), args.depth)
                span_s = recorded_span_s(path)
            # slow enough that the recording outlasts one size's measurement (start-up, views, presses)
            views = 3 if min(c for c, _ in sizes) < 120 else 2
            need_s = 10 + args.settle + views * (args.seconds + 1) + args.presses * 2.5
            speed = max(1 / 16, min(1.0, span_s / need_s))
            replay_argv = [*UI, "replay", path, "--speed", f"{speed:.4g}", *extra]
            print(f"… replay: {span_s:.0f} s recorded, played at × {speed:.3g} ({span_s / speed:.0f} s)",
                  file=sys.stderr, flush=True)
        for case in cases:
            argv = {"live": [*UI, "run", "--depth", args.depth, *extra],
                    "live-decoder": [*UI, "run", "--model", "tiny-gpt2", "--depth", args.depth, *extra],
                    "replay": replay_argv}.get(case)
            if argv is None:
                ap.error(f"unknown case {case!r}")
            for cols, rows in sizes:
                print(f"… {case} {cols}x{rows}", file=sys.stderr, flush=True)
                results.append(run_case(case, argv, cols, rows, args, folder))
    report(results, load0, os.getloadavg()[0])
    if args.json:
        Path(args.json).write_text(json.dumps({"load_before": load0, "ui_args": args.ui_args, "depth": args.depth,
                                               "results": results}, indent=1) + "\n")
    return 0


def report(results: list[dict], load0: float, load1: float) -> None:
    print(f"\nbytes the UI writes, steady state (load average {load0:.2f} before, {load1:.2f} after); live %: "
          "seconds in which the screen's text changed; changed: cells per second\n")
    print(f"{'case':<13} {'size':<7} {'view':<8} {'KiB/s':>7} {'writes/s':>8} {'live %':>6} "
          f"{'changed':>8} {'UI CPU %':>8}")
    for r in results:
        for view, v in r["views"].items():
            print(f"{r['case']:<13} {r['size']:<7} {view:<8} {v['bytes_per_s'] / 1024:7.1f} "
                  f"{v['writes_per_s']:8.1f} {v['live_pct']:6.0f} {v['cells_changed_per_s']:8.0f} "
                  f"{v['ui_cpu_pct']:8.0f}")
    print("\nkey latency, ms: first bytes after the key / the screen shows the answer (median, p95; missed)\n")
    print(f"{'case':<13} {'size':<7} {'key':<13} {'first p50':>9} {'p95':>6} {'answer p50':>10} {'p95':>6} "
          f"{'missed':>6}")
    for r in results:
        for kind, d in r.get("latency", {}).items():
            f, a = d["first"], d["answered"]
            print(f"{r['case']:<13} {r['size']:<7} {kind:<13} {f['median_ms']:9.0f} {f['p95_ms']:6.0f} "
                  f"{a['median_ms']:10.0f} {a['p95_ms']:6.0f} {a['missed']:>3}/{a['n']}")


if __name__ == "__main__":
    sys.exit(main())
