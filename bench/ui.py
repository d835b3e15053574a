#!/usr/bin/env python3
"""Cost of the live UI (issues #3 and #11), measured within one process run.

1. Frames: a synthetic source feeds steps of --layers layers (500: a 70B model at `sublayers`) as
   fast as a small model would (200 steps/s), as JSON lines decoded on a thread of their own like
   the live source's; the app (headless driver: compositor and Line API rendering run, only the
   terminal write is skipped) draws on its timer (12 Hz; 30 Hz and 2 Hz beside it). Reports frames/s
   delivered, the UI thread's CPU time per frame (so the frame rate it could sustain is 1 / that),
   and where that time goes: state.apply, layer_view, heatmap, panels (header and step panel data),
   rendering (the rest: widgets, layout, compositor; table_lines is the layer table's part of it).
2. Slowdown: a real model decodes in an engine process of its own under a Monitor the whole time,
   as `moments` runs it; the UI in this process is switched on (B) and off (A) in alternating
   phases (ABAB / BABA), and the median decode step time of each phase is compared: median over
   pairs of B/A, with an A/A figure beside it.
3. The UI process's CPU share while it shows the live session: with the synthetic source (part 1,
   every run: % of a core, the feed's decoding included) and with the real model (part 2).

    .venv/bin/python bench/ui.py [--quick] [--json FILE] [--layers 500]
    .venv/bin/python bench/ui.py --frames-only [--runs 160x48@12,160x48@2]     # parts 1 and 3, ~1 min
    .venv/bin/python bench/ui.py --ranks 8 [--seconds 4]    # the merged view: 8 ranks × --layers only
    # before / after, alternating runs (ABAB) against another tree of the package:
    mkdir -p /tmp/old/llm_moments && git archive HEAD | tar -x -C /tmp/old/llm_moments
    .venv/bin/python bench/ui.py --baseline /tmp/old --runs 160x48@12 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

from ui_sources import SyntheticRankSource, SyntheticSource

from llm_moments.tui.app import MomentsApp
from llm_moments.tui.state import ViewState
from llm_moments.tui.widgets.heatmap import Heatmap
from llm_moments.tui.widgets.layer_table import LayerTable


# -- 1. frames with many layer rows ------------------------------------------------------------------
class CpuSplit:
    """The UI thread's CPU time by part of a frame: thread-CPU timers around the state's per-frame
    methods and the heatmap's levels; "rendering" is the rest (the widgets' show, Textual's layout and
    compositor, the Line API rows). ``table_lines`` (the layer table's render_line) is part of it."""

    PARTS = {"state.apply": [(ViewState, "apply")],
             "layer_view": [(ViewState, "layer_view")],
             "heatmap": [(ViewState, "heatmap"), (Heatmap, "show")],
             "panels": [(ViewState, name) for name in ("rates", "step_percentiles", "step_history",
                                                       "step_distribution", "clock_history")],
             "table_lines": [(LayerTable, "render_line")]}
    OUTSIDE_RENDERING = ("state.apply", "layer_view", "heatmap", "panels")

    def __init__(self) -> None:
        self.ns = dict.fromkeys(self.PARTS, 0)
        self.calls = dict.fromkeys(self.PARTS, 0)
        self._depth = 0
        self._saved: list[tuple[type, str, object]] = []

    def __enter__(self) -> CpuSplit:
        for part, targets in self.PARTS.items():
            for cls, name in targets:
                original = getattr(cls, name, None)
                if original is None:   # another version of the UI, without it: counted in rendering
                    continue
                self._saved.append((cls, name, cls.__dict__.get(name)))
                setattr(cls, name, self._timed(part, original))
        return self

    def __exit__(self, *exc) -> None:
        for cls, name, own in self._saved:
            if own is None:
                delattr(cls, name)   # it was inherited: inherit it again
            else:
                setattr(cls, name, own)

    def _timed(self, part: str, fn):
        def timed(*args, **kwargs):
            if self._depth:   # inside another timed part: counted there
                return fn(*args, **kwargs)
            self._depth += 1
            self.calls[part] += 1
            t0 = time.thread_time_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                self.ns[part] += time.thread_time_ns() - t0
                self._depth -= 1
        return timed

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        return dict(self.ns), dict(self.calls)

    def per_frame(self, since: tuple[dict[str, int], dict[str, int]], cpu_s: float,
                  frames: int) -> tuple[dict[str, float], dict[str, float]]:
        """(ms per frame by part, calls per frame by part)."""
        ns0, calls0 = since
        frames = max(frames, 1)
        ms = {part: (self.ns[part] - ns0[part]) / 1e6 / frames for part in self.PARTS}
        ms["rendering"] = cpu_s * 1e3 / frames - sum(ms[p] for p in self.OUTSIDE_RENDERING)
        return ms, {part: (self.calls[part] - calls0[part]) / frames for part in self.PARTS}


async def measure_frames(seconds: float, refresh_hz: float, size: tuple[int, int], n_layers: int) -> dict:
    """Frames drawn while ``n_layers`` rows stream at 200 steps/s: frames/s, the UI thread's CPU per
    frame and its split, and the whole process's CPU share (the feed's JSON decode included)."""
    source = SyntheticSource(n_layers)
    app = MomentsApp(source, refresh_hz=refresh_hz)
    try:
        with CpuSplit() as split:
            async with app.run_test(size=size) as pilot:
                await pilot.pause(2.0)  # mount, the prefill steps, first frames
                f0, c0, p0, s0 = app.frames, time.thread_time(), time.process_time(), split.snapshot()
                t0 = time.perf_counter()
                await asyncio.sleep(seconds)
                frames, cpu, wall = app.frames - f0, time.thread_time() - c0, time.perf_counter() - t0
                process_cpu = time.process_time() - p0
                parts, calls = split.per_frame(s0, cpu, frames)
                steps = app.state.steps_total
    finally:
        source.stop()
    return {"size": f"{size[0]}x{size[1]}", "refresh_hz": refresh_hz, "rows": source.n_layers,
            "steps_per_s": source.steps_per_s, "steps_folded": steps, "frames_per_s": frames / wall,
            "ui_cpu_ms_per_frame": cpu / max(frames, 1) * 1e3, "sustainable_fps": frames / cpu if cpu else float("inf"),
            "process_cpu_share": process_cpu / wall, "split_ms_per_frame": parts,
            "table_lines_rendered_per_frame": calls["table_lines"]}


def print_frames(r: dict) -> None:
    split = "  ".join(f"{k} {v:.1f}" for k, v in r["split_ms_per_frame"].items())
    print(f"frames {r['rows']} rows {r['size']:>7} @ {r['refresh_hz']:>4.0f} Hz: {r['frames_per_s']:5.1f} frames/s, "
          f"{r['ui_cpu_ms_per_frame']:5.1f} ms UI CPU/frame (sustainable {r['sustainable_fps']:.0f}/s), process "
          f"{r['process_cpu_share'] * 100:.0f} % of a core; ms/frame: {split} "
          f"({r['table_lines_rendered_per_frame']:.0f} table lines/frame)", file=sys.stderr)


# -- 1b. the merged view of several ranks --------------------------------------------------------------
async def measure_rank_frames(seconds: float, refresh_hz: float, size: tuple[int, int], ranks: int,
                              screen: str = "ranks", n_layers: int = 300) -> dict:
    """Frames of the merged view (``w``; ``screen="heatmap"``: its layers × ranks heatmap) or of the
    main screen (the primary rank) while ``ranks`` ranks stream."""
    source = SyntheticRankSource(ranks, n_layers)
    app = MomentsApp(source, refresh_hz=refresh_hz)
    async with app.run_test(size=size) as pilot:
        await pilot.pause(1.0)
        if screen in ("ranks", "heatmap"):
            await pilot.press("w")
            if screen == "heatmap":
                await pilot.press("m")
            await pilot.pause(0.5)
        f0, c0, t0 = app.frames, time.thread_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        frames, cpu, wall = app.frames - f0, time.thread_time() - c0, time.perf_counter() - t0
        culprits = app.state.ranks.view().culprit if app.state.ranks is not None else None
    found = int((culprits == 3).sum()) if culprits is not None else 0
    return {"size": f"{size[0]}x{size[1]}", "refresh_hz": refresh_hz, "ranks": ranks, "rows": source.n_layers,
            "screen": screen, "steps_per_s_per_rank": source.steps_per_s, "frames_per_s": frames / wall,
            "ui_cpu_ms_per_frame": cpu / max(frames, 1) * 1e3,
            "sustainable_fps": frames / cpu if cpu else float("inf"),
            "culprit_rank3_layers": found, "slow_layers": int(source.slow.sum())}


async def rank_frames(args) -> list[dict]:
    out = []
    for screen in ("ranks", "heatmap", "main"):
        for hz in (12.0, 30.0):
            r = await measure_rank_frames(args.seconds, hz, (160, 48), args.ranks, screen, args.layers)
            out.append(r)
            print(f"{args.ranks} ranks × {r['rows']} layers, {screen:>7} {r['size']} @ {hz:>4.0f} Hz: "
                  f"{r['frames_per_s']:5.1f} frames/s, {r['ui_cpu_ms_per_frame']:5.1f} ms UI CPU/frame "
                  f"(sustainable {r['sustainable_fps']:.0f}/s); culprit rank 3 on {r['culprit_rank3_layers']} "
                  f"of {r['slow_layers']} slow layers", file=sys.stderr)
    return out


# -- 2. slowdown of inference with the UI running -----------------------------------------------------
class SharedLive:
    """One engine process for the whole measurement; apps come and go on top of it."""

    mode, can_record, can_seek = "live", False, False

    def __init__(self, live):
        self.live = live
        self.header = None

    def start(self) -> None:
        if self.header is not None:
            self.live._buffer.appendleft(self.header)  # a fresh app needs the header first

    def drain(self):
        return self.live.drain()

    def stop(self) -> None:
        pass

    def note(self):
        return None


async def slowdown(model_name: str, pairs: int, phase_s: float, threads: int) -> dict:
    """The real set-up: the engine in its own process (as `moments` runs it), the UI here."""
    from llm_moments.engine.cli import build_parser
    from llm_moments.tui.sources import LiveSource

    parser, _ = build_parser()
    args = parser.parse_args(["run", "--model", model_name, "--threads", str(threads), "--max-new-tokens", "64",
                              "--no-text"])
    live = LiveSource(args)
    live.start()
    shared = SharedLive(live)
    step_times: list[tuple[float, float]] = []

    def collect(records):
        now = time.perf_counter()
        for r in records:
            if r.get("type") == "header":
                shared.header = r
            elif r.get("type") == "step" and r.get("kind") == "decode":
                step_times.append((now, r["wall_ms"]))
        return records

    original_drain = live.drain
    live.drain = lambda: collect(original_drain())
    while shared.header is None:  # model load and warm-up
        live.drain()
        await asyncio.sleep(0.2)

    async def phase(with_ui: bool) -> tuple[float, float]:
        t0 = time.perf_counter()
        c0 = time.process_time()
        if with_ui:
            app = MomentsApp(shared)
            async with app.run_test(size=(160, 48)):
                await asyncio.sleep(phase_s)
        else:
            end = t0 + phase_s
            while time.perf_counter() < end:  # a headless consumer of the same pipe, at 10 Hz
                live.drain()
                await asyncio.sleep(0.1)
        t1 = time.perf_counter()
        cpu = time.process_time() - c0
        walls = [w for t, w in step_times if t0 + 0.5 <= t <= t1]  # skip the switch-over
        return (statistics.median(walls) if walls else float("nan")), cpu / (t1 - t0)

    await phase(False)  # warm-up
    ratios, aa, ui_share = [], [], []
    for k in range(pairs):
        order = (False, True) if k % 2 == 0 else (True, False)
        res = {}
        for with_ui in order:
            res[with_ui] = await phase(with_ui)
        ratios.append(res[True][0] / res[False][0])
        ui_share.append(res[True][1])
        a1, _ = await phase(False)
        a2, _ = await phase(False)
        aa.append(a2 / a1)
        print(f"pair {k + 1}/{pairs}: UI/plain {ratios[-1]:.3f}  A/A {aa[-1]:.3f}", file=sys.stderr)
    live.stop()
    return {"model": model_name, "threads": threads, "pairs": pairs, "phase_s": phase_s,
            "median_ratio": statistics.median(ratios), "ratios": ratios,
            "aa_median": statistics.median(aa), "ui_process_cpu_share": statistics.median(ui_share)}


FRAME_RUNS = "80x24@12,160x48@12,160x48@30,160x48@2"


def frame_runs(spec: str) -> list[tuple[tuple[int, int], float]]:
    """"160x48@12,80x24@2" → [((160, 48), 12.0), ((80, 24), 2.0)]; ValueError on anything else."""
    out = []
    for item in spec.split(","):
        size, hz = item.strip().split("@")
        w, h = (int(v) for v in size.split("x"))
        if w < 40 or h < 12 or not 0 < float(hz) <= 120:
            raise ValueError(item)
        out.append(((w, h), float(hz)))
    return out


def baseline(args) -> dict:
    """The frames runs alternately with the package from ``args.baseline`` (A) and this tree (B), each
    in a process of its own (A B B A, B A A B ...): per-frame UI CPU of each, and B / A per run."""
    import subprocess
    import tempfile

    rows: dict[str, dict[str, list]] = {}
    for k in range(args.rounds):
        for which in (("A", "B") if k % 2 == 0 else ("B", "A")):
            env = dict(os.environ)
            if which == "A":
                env["PYTHONPATH"] = os.pathsep.join(p for p in (args.baseline, env.get("PYTHONPATH")) if p)
            with tempfile.NamedTemporaryFile(suffix=".json") as fh:
                subprocess.run([sys.executable, __file__, "--frames-only", "--runs", args.runs, "--layers",
                                str(args.layers), "--seconds", str(args.seconds), "--json", fh.name],
                               env=env, check=True, stdout=subprocess.DEVNULL)
                for r in json.load(fh)["frames"]:
                    key = f"{r['size']}@{r['refresh_hz']:g}"
                    rows.setdefault(key, {"A": [], "B": []})[which].append(r)
    out = {}
    for key, got in rows.items():
        cpu = {w: [r["ui_cpu_ms_per_frame"] for r in got[w]] for w in "AB"}
        ratio = statistics.median(b / a for a, b in zip(cpu["A"], cpu["B"]))
        out[key] = {"A_ms": cpu["A"], "B_ms": cpu["B"], "B_over_A": ratio,
                    "A_split": got["A"][-1]["split_ms_per_frame"], "B_split": got["B"][-1]["split_ms_per_frame"]}
        print(f"{args.layers} rows {key}: UI CPU/frame baseline {statistics.median(cpu['A']):.1f} ms, this tree "
              f"{statistics.median(cpu['B']):.1f} ms: ×{ratio:.2f} (median of {len(cpu['A'])} pairs)")
    return out


async def main_async(args) -> dict:
    out = {"frames": []}
    for size, hz in frame_runs(args.runs):
        r = await measure_frames(args.seconds, hz, size, args.layers)
        out["frames"].append(r)
        print_frames(r)
    if not args.frames_only:
        out["slowdown"] = await slowdown(args.model, args.pairs, args.phase_s, args.threads)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short phases, 2 pairs: a smoke run")
    p.add_argument("--model", default="tiny-gpt2")
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--phase-s", type=float, default=4.0)
    p.add_argument("--seconds", type=float, default=4.0, help="length of each frame measurement")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the model (the UI gets the other core)")
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--layers", type=int, default=500, metavar="N", help="layer rows of the synthetic sources")
    p.add_argument("--frames-only", action="store_true", help="parts 1 and 3 only (no model, no slowdown pairs)")
    p.add_argument("--runs", default=FRAME_RUNS, metavar="WxH@HZ,...", help="frame runs: size and timer rate")
    p.add_argument("--baseline", default=None, metavar="DIR",
                   help="before / after: a folder holding another llm_moments package, run alternately with this one")
    p.add_argument("--rounds", type=int, default=4, help="--baseline: pairs of runs")
    p.add_argument("--ranks", type=int, default=0, metavar="N",
                   help="measure only the merged view of N synthetic ranks × --layers layers (frames/s at 160x48)")
    args = p.parse_args()
    try:
        frame_runs(args.runs)
    except ValueError:
        print(f"bench/ui.py: --runs takes WxH@HZ items separated by commas, e.g. 160x48@12; not {args.runs!r}",
              file=sys.stderr)
        return 2
    if args.layers < 8:
        print("bench/ui.py: --layers must be at least 8", file=sys.stderr)
        return 2
    if args.ranks:
        rows = asyncio.run(rank_frames(args))
        print("\n| measurement | value | target |\n|---|---|---|")
        for r in rows:
            print(f"| frames/s, {r['ranks']} ranks × {r['rows']} layers, {r['screen']} screen, {r['size']}, timer "
                  f"{r['refresh_hz']:.0f} Hz | {r['frames_per_s']:.1f} (UI CPU {r['ui_cpu_ms_per_frame']:.1f} ms/frame "
                  f"→ sustainable {r['sustainable_fps']:.0f}/s) | ≥ 10 |")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"rank_frames": rows}, fh, indent=2)
        return 0
    if args.quick:
        args.pairs, args.phase_s, args.seconds = 2, 1.5, 1.5
    if args.baseline:
        if not os.path.isdir(os.path.join(args.baseline, "llm_moments")):
            print(f"bench/ui.py: --baseline {args.baseline!r} holds no llm_moments package", file=sys.stderr)
            return 2
        return _dump(args, {"baseline": baseline(args)})
    out = asyncio.run(main_async(args))
    print("\n| measurement | value | target |\n|---|---|---|")
    for r in out["frames"]:
        split = ", ".join(f"{k} {v:.1f}" for k, v in r["split_ms_per_frame"].items() if k != "table_lines")
        print(f"| frames/s, {r['rows']} rows, {r['size']}, timer {r['refresh_hz']:.0f} Hz | {r['frames_per_s']:.1f} "
              f"(UI CPU {r['ui_cpu_ms_per_frame']:.1f} ms/frame → sustainable {r['sustainable_fps']:.0f}/s; {split}) | "
              f"≥ 15 sustainable: {'pass' if r['sustainable_fps'] >= 15 else 'FAIL'} |")
        share = r["process_cpu_share"]
        print(f"| UI process CPU, {r['rows']} rows live at {r['refresh_hz']:.0f} Hz, {r['size']} | "
              f"{share * 100:.0f} % of a core | < 50 %: {'pass' if share < 0.5 else 'FAIL'} |")
    if "slowdown" not in out:
        return _dump(args, out)
    s = out["slowdown"]
    verdict = "PASS" if s["median_ratio"] <= 1.05 else "FAIL"
    print(f"| decode step time with UI / without ({s['model']}, {s['threads']} thread, {s['pairs']} pairs) | "
          f"{s['median_ratio']:.3f} (A/A {s['aa_median']:.3f}) | ≤ 1.05 {verdict} |")
    print(f"| UI process CPU while live (engine in its own process) | "
          f"{s['ui_process_cpu_share'] * 100:.1f} % of a core | report |")
    return _dump(args, out)


def _dump(args, out: dict) -> int:
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
