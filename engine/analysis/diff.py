"""Compare two recordings layer by layer: is B faster than A, and is the change beyond the noise?

Layers are matched by name; steps of one kind are compared (decode by default when both have it:
mixing prefill and decode would compare the mix, not the layers). A change is called real when the
95 % bootstrap interval of the ratio of medians (B / A) excludes 1 — the noise of both runs
decides, not a fixed threshold.

Each recording is read once, in chunks, into bounded accumulators (per kind: quantile sketches,
uniform reservoirs of ``RESERVOIR`` values per layer, sums): memory does not grow with the files.
Up to ``RESERVOIR`` steps of the kind (and 65 536 steps × 16 layers for p50 / p99) the result is the
exact one; beyond, p50 / p99 are within 0.5 % relative and the interval is bootstrapped from the
reservoir, its spread scaled to the full count (``sampled_interval``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llm_moments.engine.analysis.scan import Scan, scan, step_chunks
from llm_moments.engine.analysis.sketch import QuantileSketch, Reservoir
from llm_moments.engine.analysis.steptable import StepTable
from llm_moments.engine.errors import MomentsError

BOOTSTRAP_RESAMPLES = 400
RESERVOIR = 4096          # values per layer and kind kept for the bootstrap (all of them up to this many)


@dataclass
class LayerDiff:
    name: str
    a_p50_ms: float
    b_p50_ms: float
    a_p99_ms: float
    b_p99_ms: float
    a_cycles: float
    b_cycles: float
    a_share: float
    b_share: float
    change_pct: float          # of p50, B against A
    ci_low_pct: float          # 95 % bootstrap interval of the change
    ci_high_pct: float
    significant: bool


@dataclass
class Diff:
    kind: str
    a_steps: int
    b_steps: int
    a_step_p50_ms: float
    b_step_p50_ms: float
    step_change_pct: float
    step_significant: bool
    layers: list[LayerDiff] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reference_clock_mhz(rec: Any) -> float | None:
    """The GPU's max SM clock, else the CPU's nominal clock, else None (of a Recording or a Scan)."""
    clock = rec.header.get("clock") or {}
    return clock.get("sm_clock_max_mhz") or clock.get("nominal_mhz")


def _scale(table: StepTable, ref_mhz: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(moments [steps, layers], cycles, the steps' wall times); with ``ref_mhz``, times are scaled to
    that clock (time × clock / reference) so runs at different boost or throttle compare fairly."""
    m, wall = table.ms, table.wall_ms
    if ref_mhz:
        clock = table.clock_mhz
        scale = np.where(np.isfinite(clock), clock, ref_mhz) / ref_mhz
        m, wall = m * scale[:, None], wall * scale
    return m, table.cycles, wall


_block = _scale


def ratio_interval(a: np.ndarray, b: np.ndarray, rng: np.random.Generator,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float, float]:
    """(median(b)/median(a), low, high): the ratio and its 95 % bootstrap interval."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2 or np.median(a) <= 0:
        return np.nan, np.nan, np.nan
    ma = np.median(a[rng.integers(0, a.size, (resamples, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, (resamples, b.size))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = mb / ma
    lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
    return float(np.median(b) / np.median(a)), float(lo), float(hi)


def sampled_interval(a: np.ndarray, n_a: int, med_a: float, b: np.ndarray, n_b: int, med_b: float,
                     rng: np.random.Generator, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float, float]:
    """``ratio_interval`` from uniform reservoirs ``a``, ``b`` of ``n_a``, ``n_b`` values whose medians are
    ``med_a``, ``med_b``. A reservoir that holds every value gives exactly ``ratio_interval``; a smaller
    one is bootstrapped at its own size and the spread of its resampled medians scaled by √(size / n)
    (a median's standard error goes as 1 / √n) around the median of all the values."""
    if a.size >= n_a and b.size >= n_b:
        return ratio_interval(a, b, rng, resamples)
    if a.size < 2 or b.size < 2 or not med_a > 0:
        return np.nan, np.nan, np.nan

    def medians(x: np.ndarray, n: int, med: float) -> np.ndarray:
        boot = np.median(x[rng.integers(0, x.size, (resamples, x.size))], axis=1)
        return med + (boot - np.median(x)) * math.sqrt(x.size / max(n, x.size))

    ma, mb = medians(a, n_a, med_a), medians(b, n_b, med_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = mb / ma
    lo, hi = np.nanpercentile(ratios, [2.5, 97.5])
    return float(med_b / med_a), float(lo), float(hi)


class _Side:
    """One recording folded chunk by chunk, per step kind: wall times and moments (possibly scaled to
    a reference clock) into quantile sketches, uniform reservoirs and sums; cycles into sums."""

    def __init__(self, names: list[str], reservoir: int, seed: int):
        self.names, self.n = names, len(names)
        self.reservoir, self.seed = reservoir, seed
        self.kinds: dict[str, dict[str, Any]] = {}
        self.raw_kinds: set[Any] = set()

    def _kind(self, kind: str) -> dict[str, Any]:
        k = self.kinds.get(kind)
        if k is None:
            seed = self.seed + 7919 * (len(self.kinds) + 1)
            k = self.kinds[kind] = {
                "steps": 0, "wall": QuantileSketch(1), "wall_res": Reservoir(1, self.reservoir, seed),
                "wall_sum": 0.0, "ms": QuantileSketch(self.n), "ms_res": Reservoir(self.n, self.reservoir, seed + 1),
                "ms_sum": np.zeros(self.n), "cyc_sum": np.zeros(self.n), "cyc_n": np.zeros(self.n, dtype=np.int64)}
        return k

    def add(self, steps: list[dict[str, Any]], table: StepTable, ref: float | None) -> None:
        self.raw_kinds.update(s.get("kind") for s in steps)
        m, cyc, wall = _scale(table, ref)
        kinds = table.kind
        for kind in dict.fromkeys(kinds.tolist()):
            sel = kinds == kind
            k = self._kind(kind)
            k["steps"] += int(sel.sum())
            k["wall"].add(wall[sel])
            k["wall_res"].add(wall[sel])
            k["wall_sum"] += float(np.nansum(wall[sel]))
            k["ms"].add(m[sel])
            k["ms_res"].add(m[sel])
            k["ms_sum"] += np.nansum(m[sel], axis=0)
            c = cyc[sel]
            ok = np.isfinite(c)
            k["cyc_sum"] += np.where(ok, c, 0.0).sum(axis=0)
            k["cyc_n"] += ok.sum(axis=0)


def _fold(sc: Scan, ref: float | None, reservoir: int, seed: int) -> _Side:
    side = _Side([l["name"] for l in sc.header["layers"]], reservoir, seed)
    for steps, table in step_chunks(sc):
        side.add(steps, table, ref)
    return side


def _kind(a: _Side, b: _Side, kind: str | None) -> str:
    kinds_a, kinds_b = a.raw_kinds, b.raw_kinds
    common = kinds_a & kinds_b
    if kind is not None:
        if kind not in common:
            raise MomentsError(f"--kind {kind}: not in both recordings (A has {sorted(kinds_a, key=str)}, "
                               f"B has {sorted(kinds_b, key=str)})")
        return kind
    for k in ("decode", "encode", "prefill"):
        if k in common:
            return k
    raise MomentsError(f"the recordings share no step kind (A has {sorted(kinds_a, key=str)}, "
                       f"B has {sorted(kinds_b, key=str)})")


def compare(a: Any, b: Any, kind: str | None = None, seed: int = 0,
            normalize_clock: bool = False, reservoir: int = RESERVOIR) -> Diff:
    """A and B: paths, Scans or loaded Recordings, each read in one streaming pass (memory does not
    grow with them). ``normalize_clock``: compare moments scaled to A's reference clock (see
    reference_clock_mhz). Exact: step counts, cycles, shares; p50 / p99 within the quantile sketch's
    bound (exact up to its budget); the interval from ``reservoir`` values per layer (see sampled_interval)."""
    sa, sb = scan(a), scan(b)
    ref = None
    if normalize_clock:
        ref = reference_clock_mhz(sa) or reference_clock_mhz(sb)
        if not ref:
            raise MomentsError("--normalize-clock: neither recording knows a reference clock")
    A, B = _fold(sa, ref, reservoir, seed + 1), _fold(sb, ref, reservoir, seed + 2)
    return compare_sides(A, B, kind, seed)


def compare_sides(A: _Side, B: _Side, kind: str | None = None, seed: int = 0) -> Diff:
    """The comparison of two folded sides (``_fold``, or ``_Side.add`` chunk by chunk: analysis/ranks.py
    folds each rank and the merged view of a rank set in one pass)."""
    kind = _kind(A, B, kind)
    rng = np.random.default_rng(seed)
    names_a, names_b = A.names, B.names
    ka, kb = A._kind(kind), B._kind(kind)   # empty when only dropped steps had the kind
    med_wa = float(ka["wall"].quantiles([50])[0, 0])
    med_wb = float(kb["wall"].quantiles([50])[0, 0])
    r, lo, hi = sampled_interval(ka["wall_res"].values(0), int(ka["wall"].count[0]), med_wa,
                                 kb["wall_res"].values(0), int(kb["wall"].count[0]), med_wb, rng)
    out = Diff(kind, ka["steps"], kb["steps"], med_wa, med_wb, (r - 1) * 100,
               bool(np.isfinite(lo) and (lo > 1 or hi < 1)),
               only_in_a=[n for n in names_a if n not in set(names_b)],
               only_in_b=[n for n in names_b if n not in set(names_a)])
    index_b = {n: j for j, n in enumerate(names_b)}
    total_a, total_b = ka["wall_sum"], kb["wall_sum"]
    qa, qb = ka["ms"].quantiles([50, 99]), kb["ms"].quantiles([50, 99])
    with np.errstate(invalid="ignore", divide="ignore"):
        cyc_a = np.where(ka["cyc_n"] > 0, ka["cyc_sum"] / np.maximum(ka["cyc_n"], 1), np.nan)
        cyc_b = np.where(kb["cyc_n"] > 0, kb["cyc_sum"] / np.maximum(kb["cyc_n"], 1), np.nan)
    for i, name in enumerate(names_a):
        j = index_b.get(name)
        if j is None:
            continue
        r, lo, hi = sampled_interval(ka["ms_res"].values(i), int(ka["ms"].count[i]), float(qa[0, i]),
                                     kb["ms_res"].values(j), int(kb["ms"].count[j]), float(qb[0, j]), rng)
        out.layers.append(LayerDiff(
            name, float(qa[0, i]), float(qb[0, j]), float(qa[1, i]), float(qb[1, j]), float(cyc_a[i]), float(cyc_b[j]),
            float(ka["ms_sum"][i] / total_a) if total_a else np.nan,
            float(kb["ms_sum"][j] / total_b) if total_b else np.nan,
            (r - 1) * 100, (lo - 1) * 100, (hi - 1) * 100, bool(np.isfinite(lo) and (lo > 1 or hi < 1))))
    return out
