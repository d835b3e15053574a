"""Outlier moments: the one detector, used by the report (text, Markdown, HTML), the UI's outlier log
(the ``o`` screen) and the layer table's ``!`` marks.

The definition, in full: steps are judged within their kind (a prefill against prefills: a prefill is
many times a decode step). Number a kind's steps 0, 1, 2 ... in order; step ``p`` is judged once
``p >= MIN_HISTORY``, against a reference: the ``HISTORY`` steps of its kind before the start ``b`` of
its block. Blocks are ``EARLY_BLOCK`` steps long while the history fills (``p < HISTORY``: a reference
of 16 steps is too noisy to judge 32 more by), ``BLOCK`` after: ``b = max(p // size × size, MIN_HISTORY)``.
A moment is an outlier when it exceeds the reference's median (per layer, ignoring steps where the layer
did not run) by more than ``K_MAD × 1.4826 × MAD`` and by at least ``MIN_EXCESS_MS``.

Blocks make it cheap (one median per layer per ``BLOCK`` steps) and, being fixed by position, make the
verdict independent of how the steps arrive: a whole file at once, or a live session frame by frame.
The detector keeps only ``HISTORY + BLOCK`` rows per kind, so its memory is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_moments.engine.analysis.steptable import StepTable

HISTORY = 64
BLOCK = 32
EARLY_BLOCK = 8
MIN_HISTORY = 16
K_MAD = 5.0
MIN_EXCESS_MS = 0.005
MAD_SIGMA = 1.4826


def column_median(x: np.ndarray) -> np.ndarray:
    """Median of each column ignoring NaN (np.nanmedian's numbers) from one sort: numpy's sort is
    vectorized, while nanmedian goes through the columns with holes one by one (~6× slower at 64×500)."""
    s = np.sort(x, axis=0)                          # NaN sorts last
    k = len(s) - np.isnan(s).sum(axis=0)            # finite values per column
    out = np.full(x.shape[1], np.nan)
    cols = np.flatnonzero(k)
    lo, hi = (k[cols] - 1) // 2, k[cols] // 2
    out[cols] = (s[lo, cols] + s[hi, cols]) / 2     # np.median: the mean of the middle one or two
    return out


def reference(history: np.ndarray, k_mad: float = K_MAD,
              min_excess_ms: float = MIN_EXCESS_MS) -> tuple[np.ndarray, np.ndarray]:
    """(median, allowed excess) per layer of a block of reference steps [S, L]."""
    med = column_median(history)
    mad = column_median(np.abs(history - med)) * MAD_SIGMA
    return med, np.maximum(k_mad * mad, min_excess_ms)


def exceeds(rows: np.ndarray, med: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """True where a moment is above the median by more than allowed (NaN: never)."""
    with np.errstate(invalid="ignore"):
        return np.nan_to_num((rows - med) > allowed, nan=False).astype(bool)


def robust_outliers(history: np.ndarray, newest: np.ndarray, k_mad: float = K_MAD,
                    min_excess_ms: float = MIN_EXCESS_MS) -> np.ndarray:
    """The test alone: True where ``newest`` is far above the columns of ``history``."""
    return exceeds(newest, *reference(history, k_mad, min_excess_ms))


@dataclass
class _Kind:
    seen: int = 0                              # steps of this kind judged so far
    rows: np.ndarray | None = None             # the newest HISTORY + BLOCK of them
    block: int = -1                            # block start of the cached reference
    med: np.ndarray | None = None
    allowed: np.ndarray | None = None


@dataclass
class OutlierDetector:
    """Streams a session's steps (``push`` one step table chunk after another, in order)."""

    names: list[str]
    history: int = HISTORY
    block: int = BLOCK
    early_block: int = EARLY_BLOCK
    min_history: int = MIN_HISTORY
    k_mad: float = K_MAD
    min_excess_ms: float = MIN_EXCESS_MS
    kinds: dict[str, _Kind] = field(default_factory=dict)

    def reset(self) -> None:
        self.kinds.clear()

    def push(self, table: StepTable) -> list[dict[str, Any]]:
        """Outliers among the table's steps, in step order (layers in order within a step)."""
        if not len(table):
            return []
        ms, kinds = table.ms, table.kind
        found: list[tuple[int, int, float]] = []   # (row, layer, median)
        for kind in dict.fromkeys(kinds.tolist()):
            rows = np.flatnonzero(kinds == kind)
            st = self.kinds.setdefault(kind, _Kind())
            new = ms[rows]
            held = new if st.rows is None else np.vstack([st.rows, new])
            first = st.seen + len(rows) - len(held)          # kind position of held[0]
            pos = np.arange(st.seen, st.seen + len(rows))
            size = np.where(pos < self.history, self.early_block, self.block)
            start = np.maximum(pos // size * size, self.min_history)
            judged = pos >= self.min_history
            for b in dict.fromkeys(start[judged].tolist()):
                sel = np.flatnonzero(judged & (start == b))
                if st.block != b:
                    ref = held[max(0, b - self.history) - first:b - first]
                    st.med, st.allowed = reference(ref, self.k_mad, self.min_excess_ms)
                    st.block = b
                for r, j in zip(*np.nonzero(exceeds(new[sel], st.med, st.allowed))):
                    found.append((int(rows[sel[r]]), int(j), float(st.med[j])))
            st.seen += len(rows)
            st.rows = held[-(self.history + self.block):].copy()
        found.sort()
        index, clock, throttle = table.index, table.clock_mhz, table.throttle
        return [{"step": int(index[r]) if index[r] >= 0 else None, "kind": str(kinds[r]), "layer": self.names[j],
                 "layer_index": j, "ms": float(ms[r, j]), "median_ms": med,
                 "clock_mhz": float(clock[r]) if np.isfinite(clock[r]) else None,
                 "throttle_reasons": list(throttle[r])} for r, j, med in found]


def outliers_of(table: StepTable, chunk: int = 4096, **params: Any) -> list[dict[str, Any]]:
    """Every outlier of a whole table, fed to the detector in chunks as a live session would be."""
    detector = OutlierDetector(table.names, **params)
    out: list[dict[str, Any]] = []
    for lo in range(0, len(table), chunk):
        out += detector.push(table.take(slice(lo, lo + chunk)))
    return out


def find_outliers(header: dict[str, Any], steps: list[dict[str, Any]], **params: Any) -> list[dict[str, Any]]:
    """Outliers of step records under ``header`` (see the module docstring for the definition)."""
    return outliers_of(StepTable.from_steps(header, steps), **params)
