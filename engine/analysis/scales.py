"""Robust scales for charts and histograms: one hiccup among thousands of moments must not set the scale.

Pure numpy, shared by the UI's widgets (through tui/render.py) and its state (the step panel's
distribution), which imports no Textual.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class ChartScale:
    """A chart's top, and the values above it (outliers: drawn as ``OVER_MARK``, never the scale)."""

    hi: float            # the scale's top: the largest value at or below the fence (0 for no values)
    fence: float         # values above this are outliers
    over: int            # how many values are above the fence
    over_max: float      # the largest of them (NaN when none)


def chart_scale(values: Sequence[float] | np.ndarray, lo_q: float = 0.5, hi_q: float = 99.5) -> ChartScale:
    """The scale of a history chart from the p0.5–p99.5 range rather than the extremes.

    Fence = p99.5 + max(10 % of p99.5, half the p0.5–p99.5 spread): what lies above it is an outlier,
    counted and labelled; the chart's top is the largest value below the fence, so a steady series fills
    the chart. With few values (a percentile is then the extreme itself) nothing is fenced off."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return ChartScale(0.0, 0.0, 0, math.nan)
    p_lo, p_hi = np.percentile(finite, [lo_q, hi_q])
    fence = float(p_hi + max(0.1 * abs(p_hi), 0.5 * (p_hi - p_lo)))
    above = finite > fence
    n_over = int(above.sum())
    if n_over == 0:
        return ChartScale(float(finite.max()), fence, 0, math.nan)
    return ChartScale(float(finite[~above].max()) if n_over < finite.size else fence, fence, n_over,
                      float(finite[above].max()))


@dataclass
class Histogram:
    """Bins over a robust range, with what falls below / above it counted on its own."""

    edges: np.ndarray    # bins + 1 edges (log-spaced when ``log``)
    counts: np.ndarray
    under: int           # values below edges[0]
    over: int            # values above edges[-1]
    under_min: float     # the smallest of them (NaN when none)
    over_max: float      # the largest of them (NaN when none)
    log: bool

    @property
    def populated(self) -> int:
        return int((self.counts > 0).sum())


def robust_histogram(values: Sequence[float] | np.ndarray, bins: int = 10, lo_q: float = 1.0,
                     hi_q: float = 99.0, log_span: float = 8.0) -> Histogram:
    """``bins`` bins over p1–p99 (log-spaced when p99 / p1 > ``log_span``: prefill and decode together),
    plus an underflow and an overflow count: extremes are shown, never the range."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return Histogram(np.zeros(0), np.zeros(0, dtype=np.int64), 0, 0, math.nan, math.nan, False)
    if finite.size < 100:  # p1 / p99 of a few values are the extremes themselves: take the range
        lo_q, hi_q = 0.0, 100.0
    lo, hi = (float(x) for x in np.percentile(finite, [lo_q, hi_q]))
    if hi <= lo:  # one value (or nearly): a narrow range around it
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    log = lo > 0 and hi / lo > log_span
    edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
    inside = finite[(finite >= lo) & (finite <= hi)]
    counts, _ = np.histogram(inside, bins=edges)
    below, above = finite[finite < lo], finite[finite > hi]
    return Histogram(edges, counts, int(below.size), int(above.size),
                     float(below.min()) if below.size else math.nan,
                     float(above.max()) if above.size else math.nan, log)

