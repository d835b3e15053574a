"""Live analysis beside the moments, without Textual: the work of each layer on the roofline and the
log of outlier moments. Both are the engine's (engine/analysis: roofline.layer_work and the one
OutlierDetector), fed from the state's step table; this module only keeps what the screens read."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from llm_moments.engine.analysis.outliers import OutlierDetector
from llm_moments.engine.analysis.roofline import LayerWork, Roof, WorkSums, layer_work, work_of_sums
from llm_moments.engine.analysis.stats import RollingStats, RowRing
from llm_moments.engine.analysis.steptable import StepTable, layer_gaps


class LiveWork:
    """Work per layer over the newest ``window`` steps of the rolling stats, placed on the roofline;
    computed when asked, at most once per new step. Each step's FLOPs and bytes are worked out once, as
    it arrives (``push``, with the batch the stats took), so a frame sums the window, nothing more."""

    def __init__(self, header: dict[str, Any], stats: RollingStats, window: int = 256):
        self.roof = Roof.of(header)
        self.stats = stats
        self.window = window
        self._cache: tuple[int, LayerWork] | None = None
        has_work = stats.window.coeffs is not None
        self._flops = RowRing(window, stats.n_layers) if has_work else None
        self._bytes = RowRing(window, stats.n_layers) if has_work else None

    @property
    def ok(self) -> bool:
        """The session has work coefficients for its layers."""
        return self.stats.window.coeffs is not None

    peak_flops = property(lambda self: self.roof.peak_flops)
    peak_bw = property(lambda self: self.roof.peak_bw)
    roof_source = property(lambda self: self.roof.source)

    def push(self, table: StepTable) -> None:
        """The work of a batch of new steps: the batch the rolling stats took, in the same order."""
        if self._flops is None or self._bytes is None or not len(table):
            return
        flops, moved = table.work()
        self._flops.push(flops)
        self._bytes.push(moved)

    def result(self) -> LayerWork:
        seen = self.stats.steps_seen
        if self._cache is None or self._cache[0] != seen:
            self._cache = (seen, self._compute())
        return self._cache[1]

    def _compute(self) -> LayerWork:
        if self._flops is None:
            return work_of_sums(WorkSums(self.stats.n_layers), False, self.roof)
        if self._flops.seen != self.stats.steps_seen:   # steps came in some other way: the whole formula
            return layer_work(self.stats.table(last=self.window), self.roof)
        sums = WorkSums(self.stats.n_layers)
        sums.add(_NewestSteps(self, min(self.window, self.stats.n_steps)))
        return work_of_sums(sums, True, self.roof)

    @property
    def clock_scale(self) -> float:
        """The compute roof follows the SM clock on a GPU (sampled clock / max clock)."""
        return self.result().clock_scale

    def per_layer(self) -> dict[str, np.ndarray] | None:
        """Σ work / Σ time over the window, per layer, placed on the roofline (None: no work or no steps)."""
        return self.result().placed


class _NewestSteps:
    """What ``WorkSums.add`` reads of a step table (its length, ``ms``, ``clock_mhz``, ``work()``) for
    the newest ``n`` steps of the live window, the work taken from ``LiveWork``'s rings: the very sums
    ``layer_work(stats.table(last=n))`` makes, without copying the window into a table first."""

    def __init__(self, live: LiveWork, n: int):
        assert live._flops is not None and live._bytes is not None
        self.n = n
        self.ms = live.stats.newest("layer_ms", n)
        self.clock_mhz = live.stats.newest("clock_mhz", n)
        self._work = live._flops.newest(n), live._bytes.newest(n)

    def __len__(self) -> int:
        return self.n

    def work(self) -> tuple[np.ndarray, np.ndarray]:
        return self._work


class LiveGaps:
    """The gap before each top-level layer (``steptable.layer_gaps``, a per-step quantity) of the
    newest ``window`` steps, worked out once per step as the steps arrive (``push``, with the batch
    the rolling stats took) rather than for the whole window every frame."""

    def __init__(self, stats: RollingStats, window: int = 256):
        self.stats = stats
        self.window = window
        self.rows = RowRing(window, stats.n_layers)

    def push(self, table: StepTable) -> None:
        if len(table):
            self.rows.push(layer_gaps(table.start_ms, table.ms, table.parents))

    def newest(self, last: int) -> np.ndarray | None:
        """[steps, layers] gaps of the newest ``last`` steps (a copy); None when the ring cannot give
        them (more steps than it holds, or steps it did not see)."""
        if last > self.window or self.rows.seen != self.stats.steps_seen:
            return None
        return np.array(self.rows.newest(min(last, self.stats.n_steps)))


class OutlierLog:
    """Outlier moments as they arrive (the engine's detector, fed one batch of steps at a time), the
    newest ``keep`` of them for the ``o`` screen and the table's ``!``."""

    def __init__(self, names: list[str], keep: int = 200):
        self.names = names
        self.detector = OutlierDetector(list(names))
        self.entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self.total = 0

    def push(self, table: StepTable) -> None:
        found = self.detector.push(table)
        self.total += len(found)
        self.entries.extend(found)

    def newest_mask(self, step_index: Any, n_layers: int) -> np.ndarray:
        """Layers whose moment in step ``step_index`` was logged as an outlier (the table's "!")."""
        mask = np.zeros(n_layers, dtype=bool)
        for entry in reversed(self.entries):
            if entry["step"] != step_index:
                break
            mask[entry["layer_index"]] = True
        return mask
