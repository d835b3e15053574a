"""Compare two recordings layer by layer: is B faster than A, and is the change beyond the noise?

Layers are matched by name; steps of one kind are compared (decode by default when both have it:
mixing prefill and decode would compare the mix, not the layers). A change is called real when the
95 % bootstrap interval of the ratio of medians (B / A) excludes 1 — the noise of both runs
decides, not a fixed threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llm_moments.engine.errors import MomentsError
from llm_moments.engine.core.recording import Recording
from llm_moments.engine.analysis.steptable import StepTable

BOOTSTRAP_RESAMPLES = 400


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


def reference_clock_mhz(rec: Recording) -> float | None:
    """The GPU's max SM clock, else the CPU's nominal clock, else None."""
    clock = rec.header.get("clock") or {}
    return clock.get("sm_clock_max_mhz") or clock.get("nominal_mhz")


def _block(table: StepTable, ref_mhz: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(moments [steps, layers], cycles, the steps' wall times); with ``ref_mhz``, times are scaled to
    that clock (time × clock / reference) so runs at different boost or throttle compare fairly."""
    m, wall = table.ms, table.wall_ms
    if ref_mhz:
        clock = table.clock_mhz
        scale = np.where(np.isfinite(clock), clock, ref_mhz) / ref_mhz
        m, wall = m * scale[:, None], wall * scale
    return m, table.cycles, wall


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


def _kind(a: Recording, b: Recording, kind: str | None) -> str:
    kinds_a = {s.get("kind") for s in a.steps}
    kinds_b = {s.get("kind") for s in b.steps}
    common = kinds_a & kinds_b
    if kind is not None:
        if kind not in common:
            raise MomentsError(f"--kind {kind}: not in both recordings (A has {sorted(kinds_a)}, B has {sorted(kinds_b)})")
        return kind
    for k in ("decode", "encode", "prefill"):
        if k in common:
            return k
    raise MomentsError(f"the recordings share no step kind (A has {sorted(kinds_a)}, B has {sorted(kinds_b)})")


def compare(a: Recording, b: Recording, kind: str | None = None, seed: int = 0,
            normalize_clock: bool = False) -> Diff:
    """``normalize_clock``: compare moments scaled to A's reference clock (see reference_clock_mhz)."""
    kind = _kind(a, b, kind)
    rng = np.random.default_rng(seed)
    names_a = [l["name"] for l in a.header["layers"]]
    names_b = [l["name"] for l in b.header["layers"]]
    ref = None
    if normalize_clock:
        ref = reference_clock_mhz(a) or reference_clock_mhz(b)
        if not ref:
            raise MomentsError("--normalize-clock: neither recording knows a reference clock")
    ma, ca, wa = _block(StepTable.from_recording(a).of_kind(kind), ref)
    mb, cb, wb = _block(StepTable.from_recording(b).of_kind(kind), ref)
    r, lo, hi = ratio_interval(wa, wb, rng)
    out = Diff(kind, len(wa), len(wb), float(np.median(wa)) if wa.size else np.nan,
               float(np.median(wb)) if wb.size else np.nan, (r - 1) * 100,
               bool(np.isfinite(lo) and (lo > 1 or hi < 1)),
               only_in_a=[n for n in names_a if n not in set(names_b)],
               only_in_b=[n for n in names_b if n not in set(names_a)])
    index_b = {n: j for j, n in enumerate(names_b)}
    total_a, total_b = np.nansum(wa), np.nansum(wb)
    for i, name in enumerate(names_a):
        j = index_b.get(name)
        if j is None:
            continue
        xa, xb = ma[:, i], mb[:, j]
        r, lo, hi = ratio_interval(xa, xb, rng)
        fa, fb = xa[np.isfinite(xa)], xb[np.isfinite(xb)]
        out.layers.append(LayerDiff(
            name, _pct(fa, 50), _pct(fb, 50), _pct(fa, 99), _pct(fb, 99), _mean(ca[:, i]), _mean(cb[:, j]),
            float(np.nansum(xa) / total_a) if total_a else np.nan, float(np.nansum(xb) / total_b) if total_b else np.nan,
            (r - 1) * 100, (lo - 1) * 100, (hi - 1) * 100, bool(np.isfinite(lo) and (lo > 1 or hi < 1))))
    return out


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else np.nan


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else np.nan
