"""Live analysis beside the moments, without Textual: the work of each layer on the roofline and the
log of outlier moments. Both are the engine's (engine/analysis: roofline.layer_work and the one
OutlierDetector), fed from the state's step table; this module only keeps what the screens read."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from llm_moments.engine.analysis.outliers import OutlierDetector
from llm_moments.engine.analysis.roofline import LayerWork, Roof, layer_work
from llm_moments.engine.analysis.stats import RollingStats
from llm_moments.engine.analysis.steptable import StepTable


class LiveWork:
    """Work per layer over the newest ``window`` steps of the rolling stats, placed on the roofline;
    computed when asked, at most once per new step."""

    def __init__(self, header: dict[str, Any], stats: RollingStats, window: int = 256):
        self.roof = Roof.of(header)
        self.stats = stats
        self.window = window
        self._cache: tuple[int, LayerWork] | None = None

    @property
    def ok(self) -> bool:
        """The session has work coefficients for its layers."""
        return self.stats.window.coeffs is not None

    peak_flops = property(lambda self: self.roof.peak_flops)
    peak_bw = property(lambda self: self.roof.peak_bw)
    roof_source = property(lambda self: self.roof.source)

    def result(self) -> LayerWork:
        seen = self.stats.steps_seen
        if self._cache is None or self._cache[0] != seen:
            self._cache = (seen, layer_work(self.stats.table(last=self.window), self.roof))
        return self._cache[1]

    @property
    def clock_scale(self) -> float:
        """The compute roof follows the SM clock on a GPU (sampled clock / max clock)."""
        return self.result().clock_scale

    def per_layer(self) -> dict[str, np.ndarray] | None:
        """Σ work / Σ time over the window, per layer, placed on the roofline (None: no work or no steps)."""
        return self.result().placed


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
