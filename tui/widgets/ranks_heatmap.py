"""Layers × ranks heatmap: colour = each rank's median compute of the layer (moment − waits), so
the culprit rank is the bright cell of its row. Scale: each layer's own range (default) or one log
scale for all (``h``). Line API: only the visible rows are drawn."""

from __future__ import annotations

import numpy as np
from rich.segment import Segment
from textual.geometry import Size
from textual.strip import Strip

from ..rank_state import RankView
from ..render import visible
from .heat import HeatView

NAME_W = 24


class RankHeatmap(HeatView):
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

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base, missing, head, heat = self._heat_styles()
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
