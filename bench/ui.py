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
    .venv/bin/python bench/ui.py --ranks 8 [--seconds 4]    # the merged view: 8 ranks × 300 layers only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import numpy as np

from llm_moments.tui.app import MomentsApp
from llm_moments.tui.sources import _Buffered
from llm_moments.tui.widgets.layer_table import LayerTable


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


# -- 1b. the merged view of several ranks --------------------------------------------------------------
class SyntheticRankSource(_Buffered):
    """``ranks`` ranks of ``n_layers`` layers, each at ``steps_per_s``, tagged with ``rank`` as the
    launcher tags them; rank 3 computes some layers 30 % slower, the others wait for it (comm_ms)."""

    mode, can_record, can_seek = "live", False, False
    primary_rank = 0

    def __init__(self, ranks: int = 8, n_layers: int = 300, steps_per_s: float = 100.0):
        super().__init__()
        self.ranks, self.n_layers, self.steps_per_s = ranks, n_layers, steps_per_s
        self.rng = np.random.default_rng(0)
        self.base = self.rng.uniform(0.02, 2.0, n_layers)
        self.slow = self.rng.random(n_layers) < 0.1
        self.t0 = time.perf_counter()
        self.made = 0
        layers = [{"name": f"model.layers.{i // 4}.part{i % 4}" if i % 4 else f"model.layers.{i // 4}",
                   "parent": None if i % 4 == 0 else i - i % 4} for i in range(n_layers)]
        for r in range(ranks):
            self._put({"type": "header", "schema": "moments/1", "rank": r,
                       "model": {"name": "synthetic-300", "dtype": "bf16"},
                       "device": {"kind": "cuda", "name": f"synthetic GPU {r}"},
                       "clock": {"source": "nvml", "sm_clock_max_mhz": 1980}, "depth": "sublayers",
                       "dist": {"rank": r, "world_size": ranks, "host": f"node-{r // 4}", "backend": "nccl",
                                "session": "bench"}, "layers": layers})

    def start(self) -> None:
        self.t0 = time.perf_counter()

    VARIANTS = 16   # distinct steps per rank, made once: the feed itself must not eat the UI's CPU

    def _variants(self) -> list[list[dict]]:
        out = []
        for _ in range(self.VARIANTS):
            compute = self.base * self.rng.uniform(0.9, 1.1, (self.ranks, self.n_layers))
            if self.ranks > 3:
                compute[3, self.slow] *= 1.3
            done = compute.max(axis=0) + 0.01               # a collective ends when the slowest arrives
            row = []
            for r in range(self.ranks):
                wait = np.where(self.slow, done - compute[r], 0.0)
                row.append({"type": "step", "rank": r, "kind": "decode", "wall_ms": float(done[::4].sum()) * 1.02,
                            "tokens": 1, "layer_ms": done.tolist(), "layer_cycles": (done * 1.98e6).tolist(),
                            "comm_ms": wait.tolist(), "clock_mhz": 1980.0, "hooks_fired": True,
                            "throttle_reasons": []})
            out.append(row)
        return out

    def drain(self):
        if not hasattr(self, "_made_variants"):
            self._made_variants = self._variants()
        due = int((time.perf_counter() - self.t0) * self.steps_per_s)
        for i in range(self.made, due):
            t_ns = int(i / self.steps_per_s * 1e9)
            row = self._made_variants[i % self.VARIANTS]
            for r in range(self.ranks):
                self._put({**row[r], "index": i, "t_ns": t_ns})
                if i % 10 == 0:
                    self._put({"type": "sample", "rank": r, "t_ns": t_ns, "sm_clock_mhz": 1980 - r, "gpu_util_pct": 97,
                               "power_w": 430.0, "throttle_reasons": [], "clock_mhz": 1980 - r})
        self.made = max(self.made, due)
        return super().drain()

    def stop(self) -> None:
        pass

    def note(self):
        return None


async def measure_rank_frames(seconds: float, refresh_hz: float, size: tuple[int, int], ranks: int,
                              screen: str = "ranks") -> dict:
    """Frames of the merged view (``w``; ``screen="heatmap"``: its layers × ranks heatmap) or of the
    main screen (the primary rank) while ``ranks`` ranks stream."""
    source = SyntheticRankSource(ranks)
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
            r = await measure_rank_frames(args.seconds, hz, (160, 48), args.ranks, screen)
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
    p.add_argument("--ranks", type=int, default=0, metavar="N",
                   help="measure only the merged view of N synthetic ranks × 300 layers (frames/s at 160x48)")
    args = p.parse_args()
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
    out = asyncio.run(main_async(args))
    s = out["slowdown"]
    print("\n| measurement | value | target |\n|---|---|---|")
    for r in out["frames"]:
        print(f"| frames/s, {r['rows']} rows, {r['size']}, timer {r['refresh_hz']:.0f} Hz | {r['frames_per_s']:.1f} "
              f"(UI CPU {r['ui_cpu_ms_per_frame']:.1f} ms/frame → sustainable {r['sustainable_fps']:.0f}/s) | ≥ 10 |")
    verdict = "PASS" if s["median_ratio"] <= 1.05 else "FAIL"
    print(f"| decode step time with UI / without ({s['model']}, {s['threads']} thread, {s['pairs']} pairs) | "
          f"{s['median_ratio']:.3f} (A/A {s['aa_median']:.3f}) | ≤ 1.05 {verdict} |")
    print(f"| UI process CPU while live (engine in its own process) | "
          f"{s['ui_process_cpu_share'] * 100:.1f} % of a core | report |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
