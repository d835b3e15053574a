#!/usr/bin/env python3
"""Cost of the live UI (issue #3), measured within one process run.

1. Frames: a synthetic source feeds steps of 300 layers as fast as a small model would (200
   steps/s); the app (headless driver: compositor and Line API rendering run, only the terminal
   write is skipped) draws at --refresh-hz. Reports frames/s delivered and the UI thread's CPU time
   per frame, so the frame rate the UI could sustain is 1 / that.
2. Slowdown: a real model decodes in an engine process of its own under a Monitor the whole time,
   as `moments` runs it; the UI in this process is switched on (B) and off (A) in alternating
   phases (ABAB / BABA), and the median decode step time of each phase is compared: median over
   pairs of B/A, with an A/A figure beside it.
3. The UI process's CPU share while it shows the live session.

    .venv/bin/python bench/ui.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time


import numpy as np  # noqa: E402

from llm_moments.tui.app import MomentsApp  # noqa: E402
from llm_moments.tui.sources import _Buffered  # noqa: E402
from llm_moments.tui.widgets.layer_table import LayerTable  # noqa: E402


# -- 1. frames with 300 rows -------------------------------------------------------------------------
class SyntheticSource(_Buffered):
    """Steps of ``n_layers`` layers at ``steps_per_s``, made on demand at each drain."""

    mode, can_record, can_seek = "live", False, False

    def __init__(self, n_layers: int = 300, steps_per_s: float = 200.0):
        super().__init__()
        self.n_layers, self.steps_per_s = n_layers, steps_per_s
        self.rng = np.random.default_rng(0)
        self.base = self.rng.uniform(0.02, 2.0, n_layers)
        self.t0 = time.perf_counter()
        self.made = 0
        layers = [{"name": f"model.layers.{i // 4}.part{i % 4}" if i % 4 else f"model.layers.{i // 4}",
                   "parent": None if i % 4 == 0 else i - i % 4} for i in range(n_layers)]
        self._put({"type": "header", "schema": "moments/1", "model": {"name": "synthetic-300", "dtype": "bf16"},
                   "device": {"kind": "cuda", "name": "synthetic"}, "clock": {"source": "nvml",
                   "sm_clock_max_mhz": 1980}, "depth": "sublayers", "layers": layers})

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def drain(self):
        due = int((time.perf_counter() - self.t0) * self.steps_per_s)
        for i in range(self.made, due):
            ms = self.base * self.rng.uniform(0.9, 1.1, self.n_layers)
            t_ns = int(i / self.steps_per_s * 1e9)
            self._put({"type": "step", "index": i, "kind": "decode", "t_ns": t_ns,
                       "wall_ms": float(ms[::4].sum()) * 1.02, "tokens": 1, "layer_ms": ms.tolist(),
                       "layer_cycles": (ms * 1.98e6).tolist(), "clock_mhz": 1980.0, "hooks_fired": True,
                       "throttle_reasons": []})
            if i % 10 == 0:
                self._put({"type": "sample", "t_ns": t_ns, "sm_clock_mhz": 1980, "mem_clock_mhz": 3201,
                           "gpu_util_pct": 97, "mem_util_pct": 40, "power_w": 430.0, "temp_c": 55,
                           "throttle_reasons": [], "clock_mhz": 1980})
        self.made = max(self.made, due)
        return super().drain()

    def stop(self) -> None:
        pass

    def note(self):
        return None


async def measure_frames(seconds: float, refresh_hz: float, size: tuple[int, int]) -> dict:
    source = SyntheticSource()
    app = MomentsApp(source, refresh_hz=refresh_hz)
    lines = {"n": 0}
    original = LayerTable.render_line

    def counting(self, y):
        lines["n"] += 1
        return original(self, y)

    LayerTable.render_line = counting
    try:
        async with app.run_test(size=size) as pilot:
            await pilot.pause(1.0)  # mount, first frames
            f0, c0, t0, l0 = app.frames, time.thread_time(), time.perf_counter(), lines["n"]
            await asyncio.sleep(seconds)
            frames, cpu, wall = app.frames - f0, time.thread_time() - c0, time.perf_counter() - t0
            rendered = lines["n"] - l0
    finally:
        LayerTable.render_line = original
    return {"size": f"{size[0]}x{size[1]}", "refresh_hz": refresh_hz, "rows": source.n_layers,
            "steps_per_s": source.steps_per_s, "frames_per_s": frames / wall,
            "ui_cpu_ms_per_frame": cpu / max(frames, 1) * 1e3, "sustainable_fps": frames / cpu if cpu else float("inf"),
            "table_lines_rendered_per_frame": rendered / max(frames, 1)}


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


async def main_async(args) -> dict:
    out = {"frames": []}
    for size in ((80, 24), (160, 48)):
        for hz in (12.0, 30.0):
            r = await measure_frames(args.seconds, hz, size)
            out["frames"].append(r)
            print(f"frames {r['size']:>7} @ {hz:>4.0f} Hz: {r['frames_per_s']:5.1f} frames/s, "
                  f"{r['ui_cpu_ms_per_frame']:5.1f} ms UI CPU/frame (sustainable {r['sustainable_fps']:.0f}/s), "
                  f"{r['table_lines_rendered_per_frame']:.0f} table lines drawn/frame", file=sys.stderr)
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
    args = p.parse_args()
    if args.quick:
        args.pairs, args.phase_s, args.seconds = 2, 1.5, 1.5
    out = asyncio.run(main_async(args))
    s = out["slowdown"]
    print("\n| measurement | value | target |\n|---|---|---|")
    for r in out["frames"]:
        print(f"| frames/s, {r['rows']} rows, {r['size']}, timer {r['refresh_hz']:.0f} Hz | {r['frames_per_s']:.1f} "
              f"(UI CPU {r['ui_cpu_ms_per_frame']:.1f} ms/frame → sustainable {r['sustainable_fps']:.0f}/s) | ≥ 10 |")
    verdict = "PASS" if s["median_ratio"] <= 1.05 else "FAIL"
    print(f"| decode step time with UI / without ({s['model']}, {s['threads']} thread, {s['pairs']} pairs) | "
          f"{s['median_ratio']:.3f} (A/A {s['aa_median']:.3f}) | ≤ 1.05 {verdict} |")
    print(f"| UI process CPU while live (engine in its own process) | {s['ui_process_cpu_share'] * 100:.1f} % of a core | report |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
