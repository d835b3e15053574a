"""What the two heatmaps share (layers × steps, layers × ranks): values → colour levels, and the
theme's styles for them, rebuilt only when the theme changes."""

from __future__ import annotations

import warnings

import numpy as np
from rich.style import Style
from textual.scroll_view import ScrollView

from ..render import palette, ramp

LEVELS = 16


class HeatView(ScrollView):
    """A scroll view drawing a matrix as colour levels; ``per_layer``: each row's own range, else one
    log scale for all."""

    per_layer: bool

    def _quantize(self, m: np.ndarray) -> np.ndarray:
        """Levels 0 … LEVELS−1 on a log scale; −1 where a value is missing or not positive."""
        out = np.full(m.shape, -1, dtype=np.int16)
        ok = np.isfinite(m) & (m > 0)
        if not ok.any():
            return out
        x = np.where(ok, np.log(np.where(ok, m, 1.0)), np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # rows that are all NaN
            if self.per_layer:
                lo = np.nanmin(x, axis=1, keepdims=True)
                hi = np.nanmax(x, axis=1, keepdims=True)
            else:
                lo, hi = np.nanmin(x), np.nanmax(x)
            span = np.where(hi - lo > 0, hi - lo, 1.0)
            q = np.floor((x - lo) / span * (LEVELS - 1) + 0.5)
        out[ok] = q[ok].astype(np.int16)
        return out

    def _heat_styles(self) -> tuple[Style, Style, Style, list[Style]]:
        """Base, missing, heading and one style per level."""
        v = palette(self.app)
        key = (v.get("heat-low"), v.get("heat-high"), v.get("surface"), v.get("foreground"))
        if getattr(self, "_heat_key", None) != key:
            low, high = v.get("heat-low", "#202040"), v.get("heat-high", "#ff6000")
            self._heat_key = key
            self._heat_cache = (
                Style.parse(f"{v.get('foreground', 'white')} on {v.get('surface', 'black')}"),
                Style.parse(f"{v.get('foreground-muted', 'grey37')} on {v.get('surface', 'black')}"),
                Style.parse(f"bold {v.get('foreground', 'white')} on {v.get('panel', 'black')}"),
                [Style(bgcolor=ramp(low, high, i / (LEVELS - 1))) for i in range(LEVELS)],
            )
        return self._heat_cache
