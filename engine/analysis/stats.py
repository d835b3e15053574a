"""Per-layer statistics of moments with numpy: a fixed-size rolling window and pure summaries.

The window is allocated once (steps × layers float64), so memory stays flat however long a session
runs; adding a step is one row copy. Percentiles are computed only when someone asks (the UI at its
own frame rate, the CLI at the end), never per step, and from the newest rows of the ring alone; the
live table's (``RollingStats.layer_arrays``) are held until a new step arrives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_moments.engine.analysis.steptable import StepTable

KINDS = ("prefill", "decode", "encode")


def _newest(ring: np.ndarray, seen: int, n: int) -> np.ndarray:
    """The newest ``n`` of the ``seen`` rows written to ``ring`` (row ``i`` of the session at
    ``i % len(ring)``), oldest first: a view when they lie in one piece of the ring, else a copy."""
    cap = len(ring)
    n = max(0, min(int(n), seen, cap))
    start = (seen - n) % cap
    if start + n <= cap:
        return ring[start:start + n]
    return np.concatenate((ring[start:], ring[:start + n - cap]))


class _WindowTable(StepTable):
    """The rolling window's ring table, read from its newest rows only: ``column()`` first puts the
    whole ring in step order (2048 rows copied to read the 256 the live table shows)."""

    def newest(self, name: str, n: int) -> np.ndarray:
        """The newest ``n`` rows of a column, oldest first (a view where the ring allows: read only)."""
        return _newest(self._cols[name], self.steps_seen, n)

    def newest_table(self, n: int) -> StepTable:
        """The newest ``n`` steps as a step table of their own (what ``take`` of them gives)."""
        out = StepTable(self.names, self.parents, self.coeffs, capacity=max(n, 1))
        out._write({name: self.newest(name, n) for name in self._cols})
        return out


class RowRing:
    """The newest ``capacity`` rows of a per-step quantity [steps, width], pushed a batch at a time and
    read back oldest first: what a live view works out once per step as the steps arrive, instead of
    for its whole window again every frame."""

    def __init__(self, capacity: int, width: int):
        self.rows = np.full((max(int(capacity), 1), width), np.nan)
        self.seen = 0     # rows pushed over the ring's life

    def push(self, rows: np.ndarray) -> None:
        m = len(rows)
        if not m:
            return
        cap = len(self.rows)
        keep = rows[-cap:]   # more than the ring holds: the newest
        self.rows[(self.seen + m - len(keep) + np.arange(len(keep))) % cap] = keep
        self.seen += m

    def newest(self, n: int) -> np.ndarray:
        """The newest ``n`` rows, oldest first (a view where the ring allows: read only)."""
        return _newest(self.rows, self.seen, n)


class RollingStats:
    """The last ``window_steps`` steps of one session: a ring step table, summarized on demand."""

    FIELDS = ("layer_ms", "layer_cycles", "wall_ms", "clock_mhz", "kind", "tokens", "t_ns")
    _COLUMN = {"layer_ms": "ms", "layer_cycles": "cycles"}

    def __init__(self, layer_names: Sequence[str], parents: Sequence[int | None], window_steps: int = 8192,
                 coeffs: np.ndarray | None = None):
        self.window = _WindowTable(layer_names, parents, coeffs, capacity=int(window_steps), ring=True)
        self.layer_names = self.window.names
        self.parents = self.window.parents
        self.n_layers = self.window.n_layers
        self.window_steps = int(window_steps)
        self.top_level = self.window.top_level
        self._layer_cache: tuple[tuple[int, int], dict[str, np.ndarray]] | None = None

    @property
    def steps_seen(self) -> int:
        """Over the whole session, not only the window."""
        return self.window.steps_seen

    def add(self, step: dict[str, Any]) -> None:
        self.window.append(step)

    def extend(self, steps: Iterable[dict[str, Any]]) -> None:
        self.window.extend(steps)

    @property
    def n_steps(self) -> int:
        """Steps held in the window."""
        return len(self.window)

    def _count(self, last: int | None) -> int:
        return self.n_steps if last is None else max(0, min(int(last), self.n_steps))

    def table(self, last: int | None = None) -> StepTable:
        """The window (or its ``last`` newest steps) as a step table of its own, oldest first."""
        return self.window.newest_table(self._count(last))

    def newest(self, field: str, last: int | None = None) -> np.ndarray:
        """One field of the newest ``last`` steps, oldest first, without a copy where the ring allows:
        read only (``arrays`` gives copies)."""
        return self.window.newest(self._COLUMN.get(field, field), self._count(last))

    def arrays(self, last: int | None = None, fields: Sequence[str] = FIELDS) -> dict[str, np.ndarray]:
        """Copies of the window in step order: layer_ms [S, L], layer_cycles, wall_ms, kind, tokens...

        Ask only for the ``fields`` you need: the per-layer ones are the big copies.
        """
        out = {}
        for f in fields:
            rows = self.newest(f, last)
            out[f] = rows.copy() if rows.base is not None else rows   # a view of the ring, or already a copy
        return out

    def layer_arrays(self, last: int) -> dict[str, np.ndarray]:
        """``layer_arrays`` of the newest ``last`` steps, worked out once per new step and then held (the
        live table asks every frame): the same arrays, read only."""
        key = (self.steps_seen, int(last))
        if self._layer_cache is None or self._layer_cache[0] != key:
            out = layer_arrays(self.newest("layer_ms", last), self.newest("layer_cycles", last),
                               self.newest("wall_ms", last))
            for arr in out.values():
                arr.flags.writeable = False
            self._layer_cache = (key, out)
        return self._layer_cache[1]

    def summary(self) -> Summary:
        return summarize_table(self.window, steps_total=self.steps_seen)


@dataclass
class LayerRow:
    name: str
    parent: int | None
    count: int
    last_ms: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    mean_cycles: float
    share: float  # of the summed step wall time, 0..1


@dataclass
class StepRow:
    kind: str
    count: int
    tokens: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float


@dataclass
class Summary:
    layers: list[LayerRow]
    steps: list[StepRow]
    steps_total: int
    steps_in_window: int
    coverage: float  # Σ top-level moments / Σ step wall time
    unattributed_ms_mean: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps_total": self.steps_total,
            "steps_in_window": self.steps_in_window,
            "coverage": self.coverage,
            "unattributed_ms_mean": self.unattributed_ms_mean,
            "layers": [vars(r) for r in self.layers],
            "steps": [vars(r) for r in self.steps],
        }


def _quiet_nan(fn, *args, **kwargs):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def column_percentiles(x: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """[len(qs), columns]: each column's percentiles ignoring NaN, exactly np.nanpercentile's numbers
    (np.percentile's for a column without NaN; an all-NaN column gives NaN), from one sort of the
    columns. numpy's sort is vectorized and several times faster than the partition np.percentile
    makes, and nanpercentile goes column by column in Python: a window of hundreds of layers, some of
    which ran in some steps only (experts), costs one sort and a few array operations."""
    s = np.sort(x, axis=0)                  # NaN sorts last: a column's k values are its first k rows
    valid = len(s) - np.isnan(s).sum(axis=0)
    out = np.full((len(qs), s.shape[1]), np.nan)
    cols = np.flatnonzero(valid)
    last = valid[cols] - 1
    for row, q in zip(out, np.true_divide(qs, 100)):
        # numpy's "linear" method (Hyndman & Fan's 7th) as numpy computes it, step by step, so the
        # numbers are its own to the bit: the virtual index, its two neighbours (the last value from
        # the end of the column on), the interpolation from the nearer side
        virtual = last * q
        below = np.floor(virtual)
        beyond = virtual >= last
        lo = s[np.where(beyond, last, below).astype(np.intp), cols]
        hi = s[np.where(beyond, last, below + 1).astype(np.intp), cols]
        gamma = virtual - np.where(beyond, -1.0, below)
        diff = hi - lo
        value = lo + diff * gamma
        near_hi = gamma >= 0.5
        value[near_hi] = (hi - diff * (1 - gamma))[near_hi]
        row[cols] = value
    return out


def layer_arrays(layer_ms: np.ndarray, layer_cycles: np.ndarray, wall_ms: np.ndarray) -> dict[str, np.ndarray]:
    """Per-layer statistics of S steps × L layers as arrays (NaN: the layer did not fire).

    count, last_ms, mean_ms, p50_ms, p99_ms, mean_cycles, share (of the summed step wall time).
    """
    n_steps, n_layers = layer_ms.shape
    if n_steps == 0:
        nan = np.full(n_layers, np.nan)
        return {"count": np.zeros(n_layers, dtype=np.int64), "last_ms": nan, "mean_ms": nan, "p50_ms": nan,
                "p99_ms": nan, "mean_cycles": nan, "share": nan}
    wall_total = float(np.nansum(wall_ms))
    missing = np.isnan(layer_ms)
    counts = n_steps - missing.sum(axis=0)
    p50, p99 = column_percentiles(layer_ms, (50, 99))
    if missing.any():
        mean = _quiet_nan(np.nanmean, layer_ms, axis=0)
        newest = n_steps - 1 - np.argmax(~missing[::-1], axis=0)  # newest step each layer fired in
        last = np.where(counts > 0, layer_ms[newest, np.arange(n_layers)], np.nan)
    else:  # the common case
        mean = layer_ms.mean(axis=0)
        last = layer_ms[-1].copy()
    cycles_missing = np.isnan(layer_cycles)
    cyc = _quiet_nan(np.nanmean, layer_cycles, axis=0) if cycles_missing.any() else layer_cycles.mean(axis=0)
    share = np.nansum(layer_ms, axis=0) / wall_total if wall_total > 0 else np.zeros(n_layers)
    return {"count": counts, "last_ms": last, "mean_ms": mean, "p50_ms": p50, "p99_ms": p99,
            "mean_cycles": cyc, "share": share}


def summarize(layer_names: Sequence[str], parents: Sequence[int | None], layer_ms: np.ndarray,
              layer_cycles: np.ndarray, wall_ms: np.ndarray, kinds: np.ndarray, tokens: np.ndarray,
              steps_total: int | None = None) -> Summary:
    """Summary of a block of steps (S steps × L layers); NaN marks a layer that did not fire."""
    n_steps = len(wall_ms)
    layer_ms = np.asarray(layer_ms, dtype=np.float64).reshape(n_steps, len(layer_names))
    layer_cycles = np.asarray(layer_cycles, dtype=np.float64).reshape(n_steps, len(layer_names))
    wall_total = float(np.nansum(wall_ms)) if n_steps else 0.0
    rows = []
    if n_steps:
        a = layer_arrays(layer_ms, layer_cycles, np.asarray(wall_ms, dtype=np.float64))
        for j, name in enumerate(layer_names):
            rows.append(LayerRow(name, parents[j], int(a["count"][j]), float(a["last_ms"][j]),
                                 float(a["mean_ms"][j]), float(a["p50_ms"][j]), float(a["p99_ms"][j]),
                                 float(a["mean_cycles"][j]), float(a["share"][j])))
    top = np.array([p is None for p in parents], dtype=bool)
    covered = np.nansum(layer_ms[:, top], axis=1) if n_steps else np.zeros(0)
    coverage = float(covered.sum() / wall_total) if wall_total > 0 else float("nan")
    unattributed = float(np.mean(wall_ms - covered)) if n_steps else float("nan")
    step_rows = []
    kinds = np.asarray(kinds)
    for kind in KINDS:
        sel = kinds == kind
        if not sel.any():
            continue
        w = np.asarray(wall_ms)[sel]
        p50, p90, p99 = np.percentile(w, [50, 90, 99])
        step_rows.append(StepRow(kind, int(sel.sum()), int(np.asarray(tokens)[sel].sum()), float(w.mean()),
                                 float(w.std()), float(p50), float(p90), float(p99)))
    return Summary(rows, step_rows, steps_total if steps_total is not None else n_steps, n_steps,
                   coverage, unattributed)


def summarize_table(table: StepTable, steps_total: int | None = None) -> Summary:
    """Summary of every step in a step table."""
    return summarize(table.names, table.parents, table.ms, table.cycles, table.wall_ms, table.kind, table.tokens,
                     steps_total=steps_total)


def summarize_recording(header: dict[str, Any], steps: list[dict[str, Any]]) -> Summary:
    """Summary of every step in a loaded recording (exact, no window)."""
    return summarize_table(StepTable.from_steps(header, steps))


class SummaryAcc:
    """The ``Summary`` of a recording of any length, folded one step table chunk at a time in bounded
    memory: counts, sums, means, std, share, coverage and the newest moment exact; p50 / p90 / p99 from
    ``sketch.QuantileSketch`` (exact while the values fit its budget, within 0.5 % after)."""

    def __init__(self, names: Sequence[str], parents: Sequence[int | None]):
        from llm_moments.engine.analysis.sketch import QuantileSketch

        self.names, self.parents = list(names), list(parents)
        n = self.n_layers = len(self.names)
        self.top = np.array([p is None for p in self.parents], dtype=bool)
        self.steps = 0
        self.ms = QuantileSketch(n)
        self.ms_sum = np.zeros(n)
        self.cycles_sum = np.zeros(n)
        self.cycles_n = np.zeros(n, dtype=np.int64)
        self.last = np.full(n, np.nan)
        self.wall_total = 0.0
        self.covered_total = 0.0
        self.unattributed_sum = 0.0
        self.kinds: dict[str, dict[str, Any]] = {}   # kind → count, tokens, Moments, QuantileSketch of wall
        self.wall_all = QuantileSketch(1)             # every step's wall time (the report's histogram)

    def add(self, table: StepTable) -> None:
        from llm_moments.engine.analysis.sketch import Moments, QuantileSketch

        m = len(table)
        if not m:
            return
        ms, cycles, wall = table.ms, table.cycles, table.wall_ms
        self.steps += m
        self.ms.add(ms)
        ran = np.isfinite(ms)
        self.ms_sum += np.where(ran, ms, 0.0).sum(axis=0)
        newest = m - 1 - np.argmax(ran[::-1], axis=0)
        hit = ran.any(axis=0)
        self.last[hit] = ms[newest[hit], np.flatnonzero(hit)]
        cyc = np.isfinite(cycles)
        self.cycles_sum += np.where(cyc, cycles, 0.0).sum(axis=0)
        self.cycles_n += cyc.sum(axis=0)
        self.wall_total += float(np.nansum(wall))
        covered = np.nansum(ms[:, self.top], axis=1)
        self.covered_total += float(covered.sum())
        self.unattributed_sum += float((wall - covered).sum())
        self.wall_all.add(wall)
        kinds, tokens = table.kind, table.tokens
        for kind in dict.fromkeys(kinds.tolist()):
            sel = kinds == kind
            k = self.kinds.get(kind)
            if k is None:
                k = self.kinds[kind] = {"count": 0, "tokens": 0, "moments": Moments(), "wall": QuantileSketch(1)}
            k["count"] += int(sel.sum())
            k["tokens"] += int(tokens[sel].sum())
            k["moments"].add(wall[sel])
            k["wall"].add(wall[sel])

    def summary(self) -> Summary:
        n = self.steps
        rows = []
        if n:
            p50, p99 = self.ms.quantiles([50, 99])
            count = self.ms.count
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(count > 0, self.ms_sum / np.maximum(count, 1), np.nan)
                cyc = np.where(self.cycles_n > 0, self.cycles_sum / np.maximum(self.cycles_n, 1), np.nan)
            share = self.ms_sum / self.wall_total if self.wall_total > 0 else np.zeros(self.n_layers)
            for j, name in enumerate(self.names):
                rows.append(LayerRow(name, self.parents[j], int(count[j]), float(self.last[j]), float(mean[j]),
                                     float(p50[j]), float(p99[j]), float(cyc[j]), float(share[j])))
        coverage = self.covered_total / self.wall_total if self.wall_total > 0 else float("nan")
        unattributed = self.unattributed_sum / n if n else float("nan")
        step_rows = []
        for kind in KINDS:
            k = self.kinds.get(kind)
            if k is None:
                continue
            p50, p90, p99 = self._wall_quantiles(k["wall"], [50, 90, 99])
            step_rows.append(StepRow(kind, k["count"], k["tokens"], k["moments"].avg, k["moments"].std,
                                     p50, p90, p99))
        return Summary(rows, step_rows, n, n, float(coverage), float(unattributed))

    @staticmethod
    def _wall_quantiles(sk: Any, qs: list[float]) -> list[float]:
        if sk.exact:   # np.percentile of the kind's wall times, NaN included, as summarize() does
            return [float(v) for v in np.percentile(sk.values()[:, 0], qs)]
        return [float(v) for v in sk.quantiles(qs)[:, 0]]
