"""Layers × ranks heatmap: colour = each rank's median compute of the layer (moment − waits), so
the culprit rank is the bright cell of its row. Scale: each layer's own range (default) or one log
scale for all (``h``). Line API: only the visible rows are drawn."""

from __future__ import annotations

import warnings

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..rank_state import RankView
from ..render import palette, ramp, visible

NAME_W = 24
LEVELS = 16


class RankHeatmap(ScrollView):
    DEFAULT_CSS = """
    RankHeatmap { border: round $primary; border-title-color: $foreground; background: $surface; overflow-x: hidden; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.per_layer = True
        self.ranks: list[int] = []
        self.names: list[str] = []
        self.levels = np.zeros((0, 0), dtype=np.int16)
        self._title()

    def _title(self) -> None:
        scale = "each layer's own range" if self.per_layer else "log scale, all layers"
        self.border_title = f"layers × ranks: median compute ({scale}; h: scale)"

    def toggle_scale(self) -> None:
        self.per_layer = not self.per_layer
        self._title()

    def show(self, view: RankView | None) -> None:
        if view is None:
            return
        self.ranks = list(view.ranks)
        if len(self.names) != len(view.names):
            self.names = [("  " if p is not None else "") + visible(n) for n, p in zip(view.names, view.parents)]
        self.levels = self._quantize(view.compute_ms.T)      # [layers, ranks]
        self.virtual_size = Size(self.size.width, len(self.names) + 1)
        self.refresh()

    def _quantize(self, m: np.ndarray) -> np.ndarray:
        out = np.full(m.shape, -1, dtype=np.int16)
        ok = np.isfinite(m) & (m > 0)
        if not ok.any():
            return out
        x = np.where(ok, np.log(np.where(ok, m, 1.0)), np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if self.per_layer:
                lo = np.nanmin(x, axis=1, keepdims=True)
                hi = np.nanmax(x, axis=1, keepdims=True)
            else:
                lo, hi = np.nanmin(x), np.nanmax(x)
            span = np.where(hi - lo > 0, hi - lo, 1.0)
            q = np.floor((x - lo) / span * (LEVELS - 1) + 0.5)
        out[ok] = q[ok].astype(np.int16)
        return out

    def _styles(self) -> tuple[Style, Style, Style, list[Style]]:
        v = palette(self.app)
        key = (v.get("heat-low"), v.get("heat-high"), v.get("surface"), v.get("foreground"))
        if getattr(self, "_styles_key", None) != key:
            low, high = v.get("heat-low", "#202040"), v.get("heat-high", "#ff6000")
            self._styles_key = key
            self._style_cache = (
                Style.parse(f"{v.get('foreground', 'white')} on {v.get('surface', 'black')}"),
                Style.parse(f"{v.get('foreground-muted', 'grey37')} on {v.get('surface', 'black')}"),
                Style.parse(f"bold {v.get('foreground', 'white')} on {v.get('panel', 'black')}"),
                [Style(bgcolor=ramp(low, high, i / (LEVELS - 1))) for i in range(LEVELS)],
            )
        return self._style_cache

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base, missing, head, heat = self._styles()
        R = len(self.ranks)
        cell = max(1, min(8, (width - NAME_W) // max(R, 1)))
        if y == 0:
            text = "layer".ljust(NAME_W) + "".join(str(r).center(cell)[:cell] for r in self.ranks)
            return Strip([Segment(text.ljust(width)[:width], head)], width)
        row = int(self.scroll_offset.y) + y - 1
        if row >= len(self.names):
            return Strip.blank(width, base)
        name = self.names[row]
        if len(name) > NAME_W - 1:
            name = "…" + name[-(NAME_W - 2):]
        segs = [Segment(name.ljust(NAME_W), base)]
        for k in range(min(R, (width - NAME_W) // cell)):
            level = int(self.levels[row, k]) if row < self.levels.shape[0] else -1
            segs.append(Segment("·" * cell, missing) if level < 0 else Segment(" " * cell, heat[level]))
        return Strip(segs, width).crop(0, width).extend_cell_length(width, base)
