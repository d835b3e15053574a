"""Live analysis beside the moments, without Textual: work and roofline per layer, and the log of
outlier moments. Fed by the state reducer one step at a time, read once per frame."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from llm_moments.engine.core.roof import place
from llm_moments.engine.analysis.stats import column_median, robust_outliers
from llm_moments.engine.core.work import header_coeffs, step_work


class WorkTracker:
    """FLOPs and bytes of each layer in the recent steps, and where the layers sit on the roofline."""

    def __init__(self, header: dict[str, Any], window: int = 256):
        self.coeffs = header_coeffs(header)
        roof = header.get("roof") or {}
        self.peak_flops = roof.get("peak_flops")
        self.peak_bw = roof.get("peak_bytes_per_s")
        self.roof_source = roof.get("source")
        self.max_clock_mhz = (header.get("clock") or {}).get("sm_clock_max_mhz")
        n = len(header["layers"])
        self.ok = self.coeffs is not None and len(self.coeffs) == n
        self.window = window
        self._flops = np.zeros((window, n))
        self._bytes = np.zeros((window, n))
        self._ms = np.full((window, n), np.nan)
        self._clock = np.full(window, np.nan)
        self.count = 0

    def add(self, step: dict[str, Any]) -> None:
        if not self.ok:
            return
        row = self.count % self.window
        self._flops[row], self._bytes[row] = step_work(self.coeffs, step)
        self._ms[row] = [np.nan if v is None else v for v in step["layer_ms"]]
        clock = step.get("clock_mhz")
        self._clock[row] = np.nan if clock is None else clock
        self.count += 1

    @property
    def clock_scale(self) -> float:
        """The compute roof follows the SM clock on a GPU (sampled clock / max clock)."""
        if not self.max_clock_mhz or self.count == 0:
            return 1.0
        n = min(self.count, self.window)
        clocks = self._clock[:n]
        clocks = clocks[np.isfinite(clocks)]
        return float(np.mean(clocks) / self.max_clock_mhz) if clocks.size else 1.0

    def per_layer(self) -> dict[str, np.ndarray] | None:
        """Σ work / Σ time over the window, per layer, placed on the roofline."""
        if not self.ok or self.count == 0:
            return None
        n = min(self.count, self.window)
        ms = self._ms[:n]
        ran = np.isfinite(ms)
        flops = np.where(ran, self._flops[:n], 0).sum(axis=0)
        moved = np.where(ran, self._bytes[:n], 0).sum(axis=0)
        total_ms = np.where(ran, ms, 0).sum(axis=0)
        total_ms = np.where(total_ms > 0, total_ms, np.nan)
        placed = place(flops, moved, total_ms, self.peak_flops, self.peak_bw, self.clock_scale)
        steps_ran = np.maximum(ran.sum(axis=0), 1)
        placed["floor_ms"] = placed["floor_ms"] / steps_ran  # per moment, like the other columns
        placed["flops"] = flops / steps_ran
        placed["bytes"] = moved / steps_ran
        return placed


class OutlierLog:
    """Outlier moments as they arrive: each frame checks the steps that came since the last one
    against each layer's recent median and MAD (one median per frame, not one per step)."""

    CHUNK = 64      # new steps judged against one median
    HISTORY = 128   # steps of history behind each chunk

    def __init__(self, names: list[str], keep: int = 200, k_mad: float = 5.0, min_history: int = 16):
        self.names = names
        self.entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self.k_mad = k_mad
        self.min_history = min_history
        self.checked = 0  # steps of the session already looked at
        self.total = 0

    def newest_mask(self, step_index: Any, n_layers: int) -> np.ndarray:
        """Layers whose moment in step ``step_index`` was logged as an outlier (the table's "!")."""
        mask = np.zeros(n_layers, dtype=bool)
        for entry in reversed(self.entries):
            if entry["step"] != step_index:
                break
            mask[entry["layer_index"]] = True
        return mask

    def update(self, history: np.ndarray, meta: list[tuple], steps_seen: int) -> None:
        """``history``: [S, L] newest last (S ≥ the new steps); ``meta`` aligned (index, kind, clock, reasons)."""
        new = min(steps_seen - self.checked, len(history))
        self.checked = steps_seen
        if new <= 0:
            return
        offset = len(meta) - len(history)  # meta row of history row 0
        kinds = np.array([meta[offset + i][1] if 0 <= offset + i < len(meta) else None for i in range(len(history))],
                         dtype=object)
        # A prefill is judged against prefills, a decode step against decode steps. New steps go in
        # chunks, each against the steps of its kind just before it: one median and MAD per layer
        # per chunk (broadcast over its rows), so a catch-up of thousands of steps stays cheap.
        for kind in set(kinds[len(history) - new:]):
            rows = np.flatnonzero(kinds == kind)
            fresh_rows = rows[rows >= len(history) - new]
            fresh_rows = fresh_rows[np.searchsorted(rows, fresh_rows) >= self.min_history]
            for c in range(0, len(fresh_rows), self.CHUNK):
                chunk = fresh_rows[c:c + self.CHUNK]
                before = rows[rows < chunk[0]][-self.HISTORY:]
                self._judge(history, before, chunk, meta, offset)

    def _judge(self, history: np.ndarray, before: np.ndarray, chunk: np.ndarray, meta: list, offset: int) -> None:
        past, fresh = history[before], history[chunk]
        mask = robust_outliers(past, fresh, k_mad=self.k_mad)
        if mask.any():
            median = column_median(past)
            for r, j in zip(*np.nonzero(mask)):
                at = offset + int(chunk[r])
                index, kind, clock, reasons = meta[at] if 0 <= at < len(meta) else (None, None, None, ())
                self.total += 1
                self.entries.append({"step": index, "kind": kind, "layer": self.names[j], "layer_index": int(j),
                                     "ms": float(fresh[r, j]),
                                     "median_ms": float(median[j]), "clock_mhz": clock,
                                     "throttle_reasons": list(reasons)})
