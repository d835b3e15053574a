"""Per-layer statistics of moments with numpy: a fixed-size rolling window and pure summaries.

The window is allocated once (steps × layers float64), so memory stays flat however long a session
runs; adding a step is one row copy. Percentiles are computed only when someone asks (the UI at its
own frame rate, the CLI at the end), never per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

KINDS = ("prefill", "decode", "encode")
_KIND_CODE = {k: i for i, k in enumerate(KINDS)}


def _nan_array(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


class RollingStats:
    """The last ``window_steps`` steps of one session, as arrays aligned with the header's layers."""

    def __init__(self, layer_names: Sequence[str], parents: Sequence[int | None], window_steps: int = 8192):
        self.layer_names = list(layer_names)
        self.parents = list(parents)
        self.n_layers = len(self.layer_names)
        self.window_steps = int(window_steps)
        self.top_level = np.array([p is None for p in self.parents], dtype=bool)
        self._layer_ms = np.full((self.window_steps, self.n_layers), np.nan)
        self._cycles = np.full((self.window_steps, self.n_layers), np.nan)
        self._wall_ms = np.full(self.window_steps, np.nan)
        self._clock_mhz = np.full(self.window_steps, np.nan)
        self._kind = np.full(self.window_steps, -1, dtype=np.int8)
        self._tokens = np.zeros(self.window_steps, dtype=np.int64)
        self._t_ns = np.zeros(self.window_steps, dtype=np.int64)
        self.steps_seen = 0  # over the whole session, not only the window

    def add(self, step: dict[str, Any]) -> None:
        row = self.steps_seen % self.window_steps
        self._layer_ms[row] = _nan_array(step["layer_ms"])
        self._cycles[row] = _nan_array(step["layer_cycles"])
        self._wall_ms[row] = step["wall_ms"]
        clock = step.get("clock_mhz")
        self._clock_mhz[row] = np.nan if clock is None else clock
        self._kind[row] = _KIND_CODE.get(step.get("kind", ""), -1)
        self._tokens[row] = step.get("tokens") or 0
        self._t_ns[row] = step.get("t_ns") or 0
        self.steps_seen += 1

    def extend(self, steps: Iterable[dict[str, Any]]) -> None:
        for step in steps:
            self.add(step)

    @property
    def n_steps(self) -> int:
        """Steps held in the window."""
        return min(self.steps_seen, self.window_steps)

    def _order(self, last: int | None = None) -> np.ndarray:
        """Row indices of the window, oldest first (optionally only the ``last`` newest)."""
        n = self.n_steps
        if self.steps_seen <= self.window_steps:
            idx = np.arange(n)
        else:
            start = self.steps_seen % self.window_steps
            idx = (np.arange(n) + start) % self.window_steps
        return idx if last is None else idx[max(len(idx) - last, 0):]  # idx[-0:] would be all

    FIELDS = ("layer_ms", "layer_cycles", "wall_ms", "clock_mhz", "kind", "tokens", "t_ns")

    def arrays(self, last: int | None = None, fields: Sequence[str] = FIELDS) -> dict[str, np.ndarray]:
        """Copies of the window in step order: layer_ms [S, L], layer_cycles, wall_ms, kind, tokens...

        Ask only for the ``fields`` you need: the per-layer ones are the big copies.
        """
        idx = self._order(last)
        source = {"layer_ms": self._layer_ms, "layer_cycles": self._cycles, "wall_ms": self._wall_ms,
                  "clock_mhz": self._clock_mhz, "tokens": self._tokens, "t_ns": self._t_ns}
        out = {f: source[f][idx] for f in fields if f != "kind"}
        if "kind" in fields:
            out["kind"] = np.array(KINDS + ("?",))[self._kind[idx]]  # -1 → "?"
        return out

    def summary(self) -> "Summary":
        a = self.arrays()
        return summarize(self.layer_names, self.parents, a["layer_ms"], a["layer_cycles"], a["wall_ms"],
                         a["kind"], a["tokens"], steps_total=self.steps_seen)

    def outliers(self, k_mad: float = 5.0, min_history: int = 16, min_excess_ms: float = 0.005,
                 history_steps: int = 256) -> np.ndarray:
        """Mask of layers whose newest moment is far above their own recent median (robust z by MAD)."""
        if self.n_steps < min_history + 1:
            return np.zeros(self.n_layers, dtype=bool)
        idx = self._order()
        newest_row = idx[-1]
        same_kind = idx[:-1][self._kind[idx[:-1]] == self._kind[newest_row]][-history_steps:]
        if len(same_kind) < min_history:  # a prefill is judged against prefills only
            return np.zeros(self.n_layers, dtype=bool)
        history, newest = self._layer_ms[same_kind], self._layer_ms[newest_row]
        return robust_outliers(history, newest, k_mad=k_mad, min_excess_ms=min_excess_ms)


def robust_outliers(history: np.ndarray, newest: np.ndarray, k_mad: float = 5.0,
                    min_excess_ms: float = 0.005) -> np.ndarray:
    """True where ``newest`` exceeds the column median by more than k × 1.4826 × MAD (and a floor)."""
    med = column_median(history)
    mad = column_median(np.abs(history - med)) * 1.4826
    with np.errstate(invalid="ignore"):
        excess = newest - med
        return np.nan_to_num(excess > np.maximum(k_mad * mad, min_excess_ms), nan=False).astype(bool)


def column_median(x: np.ndarray) -> np.ndarray:
    """Median of each column ignoring NaN; nanmedian (~30× slower) only for columns that need it."""
    holes = np.isnan(x).any(axis=0)
    out = np.empty(x.shape[1])
    if (~holes).any():
        out[~holes] = np.median(x[:, ~holes], axis=0)
    if holes.any():
        out[holes] = _quiet_nan(np.nanmedian, x[:, holes], axis=0)
    return out


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
    if missing.any():
        mean = _quiet_nan(np.nanmean, layer_ms, axis=0)
        # nanpercentile is an order of magnitude slower: only for the columns that need it
        holes = missing.any(axis=0)
        p50, p99 = np.empty(n_layers), np.empty(n_layers)
        if (~holes).any():
            p50[~holes], p99[~holes] = np.percentile(layer_ms[:, ~holes], [50, 99], axis=0)
        p50[holes], p99[holes] = _quiet_nan(np.nanpercentile, layer_ms[:, holes], [50, 99], axis=0)
        newest = n_steps - 1 - np.argmax(~missing[::-1], axis=0)  # newest step each layer fired in
        last = np.where(counts > 0, layer_ms[newest, np.arange(n_layers)], np.nan)
    else:  # the common case
        mean = layer_ms.mean(axis=0)
        p50, p99 = np.percentile(layer_ms, [50, 99], axis=0)
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


def summarize_recording(header: dict[str, Any], steps: list[dict[str, Any]]) -> Summary:
    """Summary of every step in a loaded recording (exact, no window)."""
    names = [layer["name"] for layer in header["layers"]]
    parents = [layer.get("parent") for layer in header["layers"]]
    n = len(names)
    steps = [s for s in steps if len(s.get("layer_ms") or []) == n]
    layer_ms = np.array([_nan_array(s["layer_ms"]) for s in steps]).reshape(len(steps), n)
    cycles = np.array([_nan_array(s["layer_cycles"]) for s in steps]).reshape(len(steps), n)
    wall = np.array([s["wall_ms"] for s in steps], dtype=np.float64)
    kinds = np.array([s.get("kind", "?") for s in steps])
    tokens = np.array([s.get("tokens") or 0 for s in steps], dtype=np.int64)
    return summarize(names, parents, layer_ms, cycles, wall, kinds, tokens)
