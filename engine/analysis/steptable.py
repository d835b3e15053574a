"""The step table: a session's steps as numpy arrays, steps × layers, the one input of every analysis.

Per layer and step (float64, NaN where the layer did not run or the field is unknown): ``ms``,
``cycles``, ``calls`` (``layer_calls``, absent in older recordings: NaN), ``start_ms``, ``positions``
and ``context`` (what each layer computed and attended over, core/work.py's ``work_inputs``; NaN
without work coefficients: ``work()`` turns them into FLOPs and bytes). Per step: ``index``, ``kind``,
``t_ns``, ``wall_ms``, ``tokens``, ``batch``, ``seq_len``, ``past_len`` (0: not recorded),
``clock_mhz`` (NaN: unknown), ``hooks_fired``, ``throttle`` (tuples).

Records become arrays in exactly one place, ``_convert``: the JSON ``null`` of a layer that did not
run becomes NaN there and nowhere else. A table is filled in bounded chunks (``extend`` converts
``CHUNK`` records at a time, so a caller streaming a file never holds more than one chunk of record
dicts), either growing (a recording) or as a ring of the newest ``capacity`` steps (the live window).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any

import numpy as np

from llm_moments.engine.core.work import apply_work, header_coeffs, work_inputs

LAYER_FIELDS = {"ms": "layer_ms", "cycles": "layer_cycles", "calls": "layer_calls", "start_ms": "layer_start_ms"}
STEP_FIELDS = {"index": np.int64, "kind": "<U8", "t_ns": np.int64, "wall_ms": np.float64, "tokens": np.int64,
               "batch": np.int64, "seq_len": np.int64, "past_len": np.int64, "clock_mhz": np.float64,
               "hooks_fired": bool, "throttle": object}
WORK_FIELDS = ("positions", "context")  # per layer and step, from the header's work columns (core/work.py)
CHUNK = 4096
_ROWS = frozenset({list, tuple})
_KINDS = frozenset({"prefill", "decode", "encode"})  # any other kind (the reader refuses it) goes through str()


def _convert(steps: Sequence[dict[str, Any]], n_layers: int,
             coeffs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Records → arrays: the one None → NaN conversion of the project."""
    m = len(steps)

    def column(key: str) -> list[Any]:
        return [s.get(key) for s in steps]

    def layer(key: str) -> np.ndarray:
        rows = column(key)
        if rows.count(None) == m:  # a field this recording does not have
            return np.full((m, n_layers), np.nan)
        try:  # the usual chunk: every row a list of n numbers (or None: NaN) → one C conversion
            if set(map(type, rows)) <= _ROWS and set(map(len, rows)) == {n_layers}:
                try:
                    arr = np.fromiter(chain.from_iterable(rows), np.float64, m * n_layers)
                except TypeError:  # a None among them
                    arr = np.array(rows, dtype=np.float64)
                return _measured(arr.reshape(m, n_layers))
        except (TypeError, ValueError, OverflowError):
            pass
        rows = [r if type(r) in (list, tuple) and len(r) == n_layers else (None,) * n_layers for r in rows]
        try:
            arr = np.array(rows, dtype=np.float64).reshape(m, n_layers)  # None → NaN
        except (TypeError, ValueError, OverflowError):  # a record the reader did not check: row by row
            arr = np.array([_float_row(r, n_layers) for r in rows], dtype=np.float64).reshape(m, n_layers)
        return _measured(arr)

    def step(key: str, dtype: Any, default: Any) -> np.ndarray:
        values = column(key)
        if None in values:
            values = [default if v is None else v for v in values]
        try:
            out = np.array(values, dtype=dtype)
        except (TypeError, ValueError, OverflowError):
            out = np.array([_scalar(v, dtype, default) for v in values], dtype=dtype)
        return _measured(out) if out.dtype == np.float64 else out

    kinds = column("kind")
    try:
        known = set(kinds) <= _KINDS
    except TypeError:  # a list or a map where the kind is
        known = False
    out = {name: layer(key) for name, key in LAYER_FIELDS.items()}
    kind = np.array(kinds if known else [str(k or "?") for k in kinds], "<U8")
    out.update(index=step("index", np.int64, -1), kind=kind,
               t_ns=step("t_ns", np.int64, 0), wall_ms=step("wall_ms", np.float64, np.nan),
               tokens=step("tokens", np.int64, 0), batch=step("batch", np.int64, 0),
               seq_len=step("seq_len", np.int64, 0), past_len=step("past_len", np.int64, 0),
               clock_mhz=step("clock_mhz", np.float64, np.nan),
               hooks_fired=np.array([v is not False for v in column("hooks_fired")], dtype=bool))
    throttle = np.empty(m, dtype=object)
    throttle[:] = [tuple(r) if type(r) in (list, tuple) else () for r in column("throttle_reasons")]
    out["throttle"] = throttle
    if coeffs is not None:  # what each layer computed: positions, and the keys its attention spanned
        _, out["positions"], out["context"] = work_inputs(coeffs, steps)
    else:
        out["positions"] = out["context"] = np.full((m, n_layers), np.nan)
    return out


def _number(v: Any) -> float:
    """A JSON number as a float; anything else (text, a list, a bool, a huge integer) is NaN."""
    if type(v) is float or type(v) is int:
        try:
            return float(v)
        except OverflowError:
            return np.nan
    return np.nan


def _float_row(row: Sequence[Any], n: int) -> list[float]:
    return [_number(v) for v in row] if len(row) == n else [np.nan] * n


def _scalar(v: Any, dtype: Any, default: Any) -> Any:
    x = _number(v)
    if dtype is np.float64:
        return x
    return default if not np.isfinite(x) or abs(x) >= 2 ** 62 else int(x)


def _measured(arr: np.ndarray) -> np.ndarray:
    """Values the reader would refuse (infinite, negative times) become NaN: unknown, never a number."""
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        arr[bad] = np.nan
    return arr


class StepTable:
    """Steps × layers of one session (see the module docstring). Columns read in step order."""

    def __init__(self, names: Sequence[str], parents: Sequence[int | None], coeffs: np.ndarray | None = None,
                 capacity: int = 256, ring: bool = False):
        self.names = list(names)
        self.parents = list(parents)
        self.n_layers = len(self.names)
        self.top_level = np.array([p is None for p in self.parents], dtype=bool)
        ok = coeffs is not None and np.ndim(coeffs) == 2 and np.shape(coeffs)[0] == self.n_layers \
            and np.shape(coeffs)[1] >= 6
        self.coeffs = np.asarray(coeffs, dtype=np.float64) if ok else None
        self.ring = ring
        self.steps_seen = 0       # appended over the table's life (a ring keeps the newest ``capacity``)
        self.dropped = 0          # records whose layer_ms did not match the layer list
        self._cap = max(int(capacity), 1)
        self._cols = self._alloc(self._cap)

    @classmethod
    def for_header(cls, header: dict[str, Any], **kwargs: Any) -> StepTable:
        layers = header.get("layers") or []
        return cls([l.get("name", f"layer {j}") for j, l in enumerate(layers)], [l.get("parent") for l in layers],
                   header_coeffs(header), **kwargs)

    @classmethod
    def from_steps(cls, header: dict[str, Any], steps: Iterable[dict[str, Any]]) -> StepTable:
        table = cls.for_header(header)
        table.extend(steps)
        return table

    @classmethod
    def from_recording(cls, rec: Any) -> StepTable:
        """From a loaded ``Recording`` (header + steps)."""
        return cls.from_steps(rec.header, rec.steps)

    # -- filling ------------------------------------------------------------------------------------
    def _alloc(self, cap: int) -> dict[str, np.ndarray]:
        cols = {name: np.full((cap, self.n_layers), np.nan) for name in (*LAYER_FIELDS, *WORK_FIELDS)}
        for name, dtype in STEP_FIELDS.items():
            cols[name] = np.zeros(cap, dtype=dtype)
        return cols

    def extend(self, steps: Iterable[dict[str, Any]]) -> int:
        """Append step records, converted ``CHUNK`` at a time; returns how many were kept."""
        kept, chunk = 0, []
        for s in steps:
            ms = s.get("layer_ms")
            if type(ms) not in (list, tuple) or len(ms) != self.n_layers:
                self.dropped += 1
                continue
            chunk.append(s)
            if len(chunk) >= CHUNK:
                kept += self._write(_convert(chunk, self.n_layers, self.coeffs))
                chunk = []
        if chunk:
            kept += self._write(_convert(chunk, self.n_layers, self.coeffs))
        return kept

    def append(self, step: dict[str, Any]) -> None:
        self.extend((step,))

    def extend_table(self, other: StepTable) -> None:
        """Append another table's steps (same layers), e.g. one converted batch into the live window."""
        if len(other):
            self._write({name: other.column(name) for name in self._cols})

    def _write(self, cols: dict[str, np.ndarray]) -> int:
        m = len(cols["wall_ms"])
        if self.ring:
            rows = (self.steps_seen + np.arange(m)) % self._cap
            keep = slice(max(m - self._cap, 0), m)   # more than the ring holds: the newest only
            for name, arr in self._cols.items():
                arr[rows[keep]] = cols[name][keep]
        else:
            need = self.steps_seen + m
            if need > self._cap:
                cap = max(need, 2 * self._cap)
                grown = self._alloc(cap)
                for name, arr in self._cols.items():
                    grown[name][:self.steps_seen] = arr[:self.steps_seen]
                self._cols, self._cap = grown, cap
            for name, arr in self._cols.items():
                arr[self.steps_seen:need] = cols[name]
        self.steps_seen += m
        return m

    # -- reading ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return min(self.steps_seen, self._cap) if self.ring else self.steps_seen

    def _order(self) -> np.ndarray | slice:
        n = len(self)
        if not self.ring or self.steps_seen <= self._cap:
            return slice(0, n)
        return (np.arange(n) + self.steps_seen % self._cap) % self._cap

    def column(self, name: str) -> np.ndarray:
        """One column in step order, oldest first (a view when the table has not wrapped)."""
        return self._cols[name][self._order()]

    def __getattr__(self, name: str) -> np.ndarray:
        cols = self.__dict__.get("_cols")
        if cols is not None and name in cols:
            return self.column(name)
        raise AttributeError(name)

    def take(self, rows: np.ndarray | slice) -> StepTable:
        """A new (growing) table of the selected steps: a bool mask, indices or a slice, in step order."""
        out = StepTable(self.names, self.parents, self.coeffs, capacity=1)
        out._write({name: self.column(name)[rows] for name in self._cols})
        return out

    def tail(self, n: int) -> StepTable:
        return self.take(slice(max(len(self) - n, 0), len(self)))

    def of_kind(self, kind: str) -> StepTable:
        return self.take(self.column("kind") == kind)

    @property
    def gap_ms(self) -> np.ndarray:
        """[steps, layers] gap before each top-level layer (``layer_gaps``: start − previous end)."""
        return layer_gaps(self.start_ms, self.ms, self.parents)

    def work(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(FLOPs, bytes) [steps, layers]: core/work.py's formula over the header's coefficients and the
        ``positions`` / ``context`` worked out when the steps were added; None without coefficients."""
        if self.coeffs is None:
            return None
        batch = np.maximum(self.batch, 1).astype(np.float64)
        return apply_work(self.coeffs, batch, self.positions, self.context)


def layer_gaps(start_ms: np.ndarray, ms: np.ndarray, parents: Sequence[int | None]) -> np.ndarray:
    """Gap before each top-level layer, [steps, layers] ms: its start − the end of the top-level layer
    that ran before it in the same step (the first one: its start − the step's start, 0 ms). Launch
    gaps and Python between layers: the launch-bound decode signature. NaN for sub-layers, for a layer
    that did not run and where starts were not recorded. Layers are ordered by start, not header order."""
    start = np.asarray(start_ms, dtype=np.float64)
    dur = np.asarray(ms, dtype=np.float64)
    out = np.full(start.shape, np.nan)
    if start.ndim != 2 or not start.size:
        return out
    top = np.array([p is None for p in parents], dtype=bool)
    st = np.where(top & np.isfinite(start) & np.isfinite(dur), start, np.nan)
    order = np.argsort(np.where(np.isnan(st), np.inf, st), axis=1, kind="stable")
    s_sorted = np.take_along_axis(st, order, axis=1)
    end_sorted = s_sorted + np.take_along_axis(dur, order, axis=1)
    prev_end = np.zeros_like(s_sorted)
    prev_end[:, 1:] = end_sorted[:, :-1]
    gap_sorted = s_sorted - prev_end
    np.put_along_axis(out, order, gap_sorted, axis=1)
    out[:, ~top] = np.nan
    return out

