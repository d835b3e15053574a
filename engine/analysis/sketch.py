"""Bounded accumulators for streaming a recording of any length: exact sums and moments, quantiles
from a log-spaced histogram, a uniform reservoir for the bootstrap.

``QuantileSketch`` — quantiles of each of ``n`` columns (NaN: no value), in memory independent of the
number of rows:

- **exact** while the values fit ``EXACT_CELLS`` cells (rows × columns, 8 MiB of float64): the result
  is ``np.percentile`` of the values (linear interpolation), bit for bit — so a report of a short or
  ordinary recording (65 536 steps of 16 layers) is unchanged;
- **approximate** after: values go to a histogram with log-spaced bins, bin ``i`` covering
  ``(MIN_VALUE·γ^(i-1), MIN_VALUE·γ^i]`` with ``γ = (1 + α) / (1 − α)``, ``α = RELATIVE_ERROR`` (0.5 %),
  represented by ``2·MIN_VALUE·γ^i / (γ + 1)``: every order statistic is known within ±α relative
  (the DDSketch bound), and so is the interpolated percentile (a convex combination of two of them).
  Values at or below ``MIN_VALUE`` (1 ns when the unit is ms) share the lowest bin (absolute error
  ≤ ``MIN_VALUE``); results are clamped to the column's exact minimum and maximum, which are kept, so
  p0 and p100 are exact. ``MAX_VALUE`` (1e8 ms, 28 h) bounds the top bin. 3 225 bins × 8 bytes per column.

``Moments`` — count, mean and variance merged chunk by chunk (Chan et al.): exact up to rounding.

``Reservoir`` — a uniform sample of up to ``capacity`` values per column (Algorithm R, seeded,
deterministic). While a column has at most ``capacity`` values the reservoir holds all of them in
order.
"""

from __future__ import annotations

import math

import numpy as np

RELATIVE_ERROR = 0.005
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
LOG_GAMMA = math.log(GAMMA)
MIN_VALUE = 1e-6
MAX_VALUE = 1e8
N_BINS = math.ceil(math.log(MAX_VALUE / MIN_VALUE) / LOG_GAMMA) + 1
EXACT_CELLS = 1 << 20
_REP = 2 * MIN_VALUE * GAMMA ** np.arange(N_BINS, dtype=np.float64) / (GAMMA + 1)
_REP[0] = MIN_VALUE


def _quiet(fn, *args, **kwargs):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def bin_of(x: np.ndarray) -> np.ndarray:
    """Histogram bin of each (finite) value."""
    with np.errstate(divide="ignore", invalid="ignore"):
        i = np.ceil(np.log(np.maximum(x, MIN_VALUE) / MIN_VALUE) / LOG_GAMMA)
    return np.clip(i, 0, N_BINS - 1).astype(np.intp)


class QuantileSketch:
    """Quantiles of ``n`` columns, exact while small, within ``RELATIVE_ERROR`` after (module docstring)."""

    def __init__(self, n_cols: int, exact_cells: int | None = None):
        self.n = int(n_cols)
        budget = EXACT_CELLS if exact_cells is None else exact_cells
        self.exact_rows = max(budget // max(self.n, 1), 0)
        self.count = np.zeros(self.n, dtype=np.int64)
        self.min = np.full(self.n, np.inf)
        self.max = np.full(self.n, -np.inf)
        self._rows: list[np.ndarray] = []
        self._held = 0
        self.hist: np.ndarray | None = None      # [n, N_BINS] once the exact budget is spent

    @property
    def exact(self) -> bool:
        return self.hist is None

    def add(self, x: np.ndarray) -> None:
        """Fold rows [m, n] in (NaN: no value in that cell)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.n)
        if not len(x):
            return
        ok = np.isfinite(x)
        self.count += ok.sum(axis=0)
        self.min = np.fmin(self.min, _quiet(np.nanmin, np.where(ok, x, np.nan), axis=0))
        self.max = np.fmax(self.max, _quiet(np.nanmax, np.where(ok, x, np.nan), axis=0))
        if self.hist is None:
            self._rows.append(np.array(x))
            self._held += len(x)
            if self._held <= self.exact_rows:
                return
            held = np.concatenate(self._rows)
            self._rows, self._held = [], 0
            self.hist = np.zeros((self.n, N_BINS), dtype=np.int64)
            self._bin(held)
        else:
            self._bin(x)

    def _bin(self, x: np.ndarray) -> None:
        ok = np.isfinite(x)
        rows, cols = np.nonzero(ok)
        flat = cols * N_BINS + bin_of(x[rows, cols])
        assert self.hist is not None
        self.hist += np.bincount(flat, minlength=self.n * N_BINS).reshape(self.n, N_BINS)

    def values(self) -> np.ndarray:
        """The rows held exactly [rows, n] (only while ``exact``)."""
        if not self._rows:
            return np.zeros((0, self.n))
        if len(self._rows) > 1:
            self._rows = [np.concatenate(self._rows)]
        return self._rows[0]

    def quantiles(self, qs: list[float] | tuple[float, ...]) -> np.ndarray:
        """[len(qs), n] percentiles (0..100) of each column; NaN for a column without values."""
        qs = list(qs)
        if self.hist is None:
            x = self.values()
            out = np.full((len(qs), self.n), np.nan)
            if not len(x):
                return out
            holes = np.isnan(x).any(axis=0)
            if (~holes).any():
                out[:, ~holes] = np.percentile(x[:, ~holes], qs, axis=0)
            if holes.any():
                out[:, holes] = _quiet(np.nanpercentile, x[:, holes], qs, axis=0)
            return out
        out = np.full((len(qs), self.n), np.nan)
        for j in range(self.n):
            n = int(self.count[j])
            if not n:
                continue
            cum = np.cumsum(self.hist[j])
            for k, q in enumerate(qs):
                h = (n - 1) * q / 100.0
                lo, hi = math.floor(h), math.ceil(h)
                v = [self.min[j] if k == 0 else self.max[j] if k == n - 1
                     else _REP[min(int(np.searchsorted(cum, k, side="right")), N_BINS - 1)] for k in (lo, hi)]
                val = v[0] + (h - lo) * (v[1] - v[0])
                out[k, j] = min(max(val, self.min[j]), self.max[j])
        return out

    def histogram(self, edges: np.ndarray, col: int = 0) -> np.ndarray:
        """Counts of column ``col`` in the bins ``edges`` (values clipped into them, like np.histogram of
        np.clip): exact while ``exact``; after, each log bin counts where its representative falls."""
        lo, hi = float(edges[0]), float(edges[-1])
        if self.hist is None:
            v = self.values()[:, col] if len(self.values()) else np.zeros(0)
            v = v[np.isfinite(v)]
            return np.histogram(np.clip(v, lo, hi), bins=edges)[0]
        h = self.hist[col]
        used = np.flatnonzero(h)
        rep = np.clip(np.clip(_REP[used], self.min[col], self.max[col]), lo, hi)
        return np.histogram(rep, bins=edges, weights=h[used])[0].astype(np.int64)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._rows) + (self.hist.nbytes if self.hist is not None else 0)


class Moments:
    """Count, mean and M2 (Σ squared deviations) of a stream of values, merged chunk by chunk."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.nan = False        # a NaN went in: mean and std are NaN, as numpy would say

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if not x.size:
            return
        if np.isnan(x).any():
            self.nan = True
            x = x[~np.isnan(x)]
            if not x.size:
                return
        nb, mb = x.size, float(x.mean())
        m2b = float(((x - mb) ** 2).sum())
        if not self.n:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    @property
    def std(self) -> float:
        if self.nan or not self.n:
            return float("nan")
        return math.sqrt(max(self.m2, 0.0) / self.n)

    @property
    def avg(self) -> float:
        return float("nan") if self.nan or not self.n else self.mean


class Reservoir:
    """A uniform sample of up to ``capacity`` finite values per column (Algorithm R, seeded)."""

    def __init__(self, n_cols: int, capacity: int, seed: int = 0):
        self.n, self.capacity = int(n_cols), int(capacity)
        self.buf = np.full((self.capacity, self.n), np.nan)
        self.seen = np.zeros(self.n, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.n)
        cap = self.capacity
        for j in range(self.n):
            v = x[:, j]
            v = v[np.isfinite(v)]
            if not v.size:
                continue
            t0 = int(self.seen[j])
            fill = min(max(cap - t0, 0), v.size)
            self.buf[t0:t0 + fill, j] = v[:fill]
            rest = v[fill:]
            if rest.size:   # item t (0-based) replaces a random slot with probability cap / (t + 1)
                t = t0 + fill + np.arange(rest.size)
                r = self.rng.integers(0, t + 1)
                keep = r < cap
                self.buf[r[keep], j] = rest[keep]   # a later item wins a slot drawn twice, as in order
            self.seen[j] += v.size

    def values(self, col: int) -> np.ndarray:
        return self.buf[:min(int(self.seen[col]), self.capacity), col]
