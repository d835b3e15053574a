"""Work per layer over a block of steps, placed on the roofline: the report's work columns and
roofline chart, and the UI's GFLOP/s / % of roof columns and ``f`` screen, from one function.

Per layer: Σ FLOPs / Σ time and Σ bytes / Σ time over the steps where the layer ran; the compute
roof follows the SM clock on a GPU (mean sampled clock of the steps / the header's max clock).
Sums add up chunk by chunk (``WorkSums.add``), so a long recording need not be held at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_moments.engine.analysis.steptable import StepTable

NO_WORK = "the recording's header has no work coefficients (FLOPs and bytes per layer)"
NO_ROOF = "the recording's header has no roof (peak FLOP/s and memory bandwidth)"


def _positive(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x)) and float(x) > 0
    except (TypeError, ValueError):
        return False


@dataclass
class Roof:
    peak_flops: float | None
    peak_bw: float | None
    source: str | None
    max_clock_mhz: float | None

    @classmethod
    def of(cls, header: dict[str, Any]) -> Roof:
        roof = header.get("roof") or {}
        return cls(roof.get("peak_flops"), roof.get("peak_bytes_per_s"), roof.get("source"),
                   (header.get("clock") or {}).get("sm_clock_max_mhz"))

    @property
    def known(self) -> bool:
        return _positive(self.peak_flops) and _positive(self.peak_bw)


@dataclass
class WorkSums:
    """Additive per-layer sums of a block of steps."""

    n_layers: int
    flops: np.ndarray = field(init=False)
    bytes: np.ndarray = field(init=False)
    ms: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)
    clock_sum: float = 0.0
    clock_n: int = 0
    steps: int = 0

    def __post_init__(self) -> None:
        self.flops, self.bytes, self.ms = (np.zeros(self.n_layers) for _ in range(3))
        self.count = np.zeros(self.n_layers, dtype=np.int64)

    def add(self, table: StepTable) -> bool:
        """Fold a table's steps in; False when it has no work coefficients."""
        work = table.work()
        if work is None:
            return False
        ms = table.ms
        ran = np.isfinite(ms)
        self.flops += np.where(ran, work[0], 0.0).sum(axis=0)
        self.bytes += np.where(ran, work[1], 0.0).sum(axis=0)
        self.ms += np.where(ran, ms, 0.0).sum(axis=0)
        self.count += ran.sum(axis=0)
        clocks = table.clock_mhz
        clocks = clocks[np.isfinite(clocks)]
        self.clock_sum += float(clocks.sum())
        self.clock_n += int(clocks.size)
        self.steps += len(table)
        return True

    def clock_scale(self, roof: Roof) -> float:
        """Mean sampled clock / max clock (1 without either)."""
        if not _positive(roof.max_clock_mhz) or not self.clock_n:
            return 1.0
        return self.clock_sum / self.clock_n / float(roof.max_clock_mhz)

    def place(self, roof: Roof) -> dict[str, np.ndarray]:
        """Per layer: flops_per_s, bytes_per_s, intensity, roof_pct, floor_ms, memory_bound (and the
        mean flops, bytes per run, and count of runs); the floor is per run, like the mean moment."""
        total_ms = np.where((self.count > 0) & (self.ms > 0), self.ms, np.nan)
        known = roof.known
        placed = place(self.flops, self.bytes, total_ms, roof.peak_flops if known else None,
                       roof.peak_bw if known else None, self.clock_scale(roof))
        runs = np.maximum(self.count, 1)
        placed["floor_ms"] = placed["floor_ms"] / runs
        placed["flops"], placed["bytes"], placed["count"] = self.flops / runs, self.bytes / runs, self.count.copy()
        return placed


@dataclass
class LayerWork:
    """What the report and the UI show about work: the placed arrays, or why there are none."""

    placed: dict[str, np.ndarray] | None
    roof: Roof
    clock_scale: float
    note: str | None            # why there are no work columns / no roofline

    @property
    def has_roof(self) -> bool:
        """Work counted and a roof to place it under."""
        return self.placed is not None and self.roof.known


def layer_work(table: StepTable, roof: Roof) -> LayerWork:
    """Work of every layer over the table's steps (see the module docstring)."""
    sums = WorkSums(table.n_layers)
    if table.coeffs is not None:
        sums.add(table)
    return work_of_sums(sums, table.coeffs is not None, roof)


def work_of_sums(sums: WorkSums, has_coeffs: bool, roof: Roof) -> LayerWork:
    """``layer_work`` from sums folded chunk by chunk (``WorkSums.add``)."""
    if not has_coeffs:
        return LayerWork(None, roof, 1.0, NO_WORK)
    if not sums.steps:
        return LayerWork(None, roof, 1.0, "no steps recorded")
    return LayerWork(sums.place(roof), roof, sums.clock_scale(roof), None if roof.known else NO_ROOF)


def place(flops: np.ndarray, moved: np.ndarray, ms: np.ndarray, peak_flops: float | None,
          peak_bw: float | None, clock_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Roofline numbers per layer: achieved FLOP/s and B/s, intensity, bound, % of roof, floor ms."""
    with np.errstate(divide="ignore", invalid="ignore"):
        seconds = ms / 1e3
        achieved_flops = flops / seconds
        achieved_bw = moved / seconds
        intensity = flops / moved
        out = {"flops_per_s": achieved_flops, "bytes_per_s": achieved_bw, "intensity": intensity}
        if peak_flops and peak_bw:
            compute = peak_flops * clock_scale
            attainable = np.minimum(compute, intensity * peak_bw)
            out["roof_pct"] = achieved_flops / attainable * 100
            out["floor_ms"] = np.maximum(flops / compute, moved / peak_bw) * 1e3
            out["memory_bound"] = intensity < compute / peak_bw
        else:
            nan = np.full(np.shape(flops), np.nan)
            out["roof_pct"], out["floor_ms"] = nan, nan
            out["memory_bound"] = np.zeros(np.shape(flops), dtype=bool)
    return out
