"""The synthetic live sources of bench/ui.py: one session of many layers, several ranks of one."""

from __future__ import annotations

import json
import threading
import time

import numpy as np

from llm_moments.tui.sources import _Buffered


def synthetic_header(n_layers: int, name: str) -> dict:
    """A header as a real session sends it: blocks of four (a block and three sub-layers), work
    coefficients and a roof, so the GFLOP/s and roof% columns are computed as in a real session."""
    layers = [{"name": f"model.layers.{i // 4}.part{i % 4}" if i % 4 else f"model.layers.{i // 4}",
               "parent": None if i % 4 == 0 else i - i % 4} for i in range(n_layers)]
    coeffs = [[2.4e7, 4096.0 if i % 4 == 1 else 0.0, 2.4e7, 1.6e4, 1024.0 if i % 4 == 1 else 0.0, 0, -1, -1]
              for i in range(n_layers)]
    return {"type": "header", "schema": "moments/1", "model": {"name": name, "dtype": "bf16"},
            "device": {"kind": "cuda", "name": "synthetic"}, "depth": "sublayers", "layers": layers,
            "clock": {"source": "nvml", "sm_clock_max_mhz": 1980},
            "roof": {"peak_flops": 9.9e14, "peak_bytes_per_s": 4.8e12, "source": "synthetic"},
            "work": {"columns": ["a", "b", "w", "c", "d", "last_only", "head", "cache_layer"], "layers": coeffs}}


SAMPLE = json.dumps({"type": "sample", "t_ns": -2, "sm_clock_mhz": 1980, "mem_clock_mhz": 3201, "gpu_util_pct": 97,
                     "mem_util_pct": 40, "power_w": 430.0, "temp_c": 55, "throttle_reasons": [],
                     "clock_mhz": 1980}).replace('"t_ns": -2', '"t_ns": {t}')


class SyntheticSource(_Buffered):
    """Steps of ``n_layers`` layers at ``steps_per_s``, as a live session delivers them: JSON lines
    decoded on a thread of their own (LiveSource's reader does the same), so the decode counts in the
    process's CPU, not in the UI thread's. Each step is a whole record (moments, cycles, calls, starts,
    shape), two layers fire only every other step (the NaN paths), and ``prefill_steps`` arrive at once
    first: the rolling window (2048 steps) has wrapped, as in any session longer than ten seconds."""

    mode, can_record, can_seek = "live", False, False
    VARIANTS = 32   # distinct steps, encoded once: making them must not eat the process's CPU

    def __init__(self, n_layers: int = 500, steps_per_s: float = 200.0, prefill_steps: int = 2500):
        super().__init__()
        self.n_layers, self.steps_per_s, self.prefill_steps = n_layers, steps_per_s, prefill_steps
        rng = np.random.default_rng(0)
        base = rng.uniform(0.02, 2.0, n_layers)
        holes = np.zeros(n_layers, dtype=bool)
        holes[[5, n_layers // 2 + 1]] = True
        tops = np.arange(n_layers) % 4 == 0
        self._lines = []
        for v in range(self.VARIANTS):
            ms = base * rng.uniform(0.9, 1.1, n_layers)
            ends = np.cumsum(np.where(tops, ms + 0.01, 0.0))     # top-level layers one after another
            ran = (~holes | (v % 2 == 0)).tolist()
            layer_ms = [round(float(x), 5) if r else None for x, r in zip(ms, ran)]
            starts = [round(float(x), 5) if r else None for x, r in zip(np.where(tops, ends - ms, ends), ran)]
            step = {"type": "step", "index": -1, "kind": "decode", "t_ns": -2, "wall_ms": float(ms[::4].sum()) * 1.02,
                    "host_ms": 0.0, "tokens": 1, "batch": 1, "seq_len": 1, "past_len": 100 + v, "layer_ms": layer_ms,
                    "layer_cycles": [None if x is None else int(x * 1.98e6) for x in layer_ms],
                    "layer_calls": [int(r) for r in ran], "layer_start_ms": starts, "clock_mhz": 1980.0,
                    "clock_samples": 1, "throttle_reasons": [], "hooks_fired": True}
            line = json.dumps(step).replace('"index": -1', '"index": {i}', 1).replace('"t_ns": -2', '"t_ns": {t}', 1)
            self._lines.append(line)
        self._put(synthetic_header(n_layers, f"synthetic-{n_layers}"))
        self._stop = threading.Event()
        self.made = 0

    def start(self) -> None:
        threading.Thread(target=self._feed, name="synthetic-feed", daemon=True).start()

    def _feed(self) -> None:
        t0 = time.perf_counter() - self.prefill_steps / self.steps_per_s
        while not self._stop.is_set():
            due = int((time.perf_counter() - t0) * self.steps_per_s)
            for i in range(self.made, due):
                t_ns = int(i / self.steps_per_s * 1e9)
                line = self._lines[i % self.VARIANTS].replace("{i}", str(i), 1).replace("{t}", str(t_ns), 1)
                self._put(json.loads(line))
                if i % 10 == 0:
                    self._put(json.loads(SAMPLE.replace("{t}", str(t_ns), 1)))
            self.made = max(self.made, due)
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()

    def note(self):
        return None


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
