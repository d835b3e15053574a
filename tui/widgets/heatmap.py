"""Heatmap of layers × recent steps (colour = moment time): a slow layer is a bright row, a slow
step a bright column. ``v`` shows the gaps instead: the time before each top-level layer since the
previous one ended (launch gaps, Python between layers; steptable.layer_gaps). Line API: only
visible rows are drawn, and a frame repaints only the lines that changed (QuietLines)."""

from __future__ import annotations

import numpy as np
from rich.segment import Segment
from textual.geometry import Size
from textual.strip import Strip

from ..render import visible
from .heat import HeatView
from .quiet import QuietLines

NAME_W = 16


class Heatmap(QuietLines, HeatView):
    DEFAULT_CSS = """
    Heatmap { border: round $primary; border-title-color: $foreground; background: $surface; overflow-x: hidden; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.names: list[str] = []
        self.parents: list[int | None] = []
        self.levels = np.zeros((0, 0), dtype=np.int16)   # -1: the layer did not run
        self.per_layer = False
        self.top_only = True
        self.values = "moments"   # or "gaps": ViewState.heatmap(last, values)
        self._generation = 0      # bumps with every new matrix

    def on_mount(self) -> None:
        self._title()

    def _title(self) -> None:
        scale = "each layer's own range" if self.per_layer else "log scale, all layers"
        what = "gap before each layer" if self.values == "gaps" else "layers × steps"
        title = f"{what} ({scale})"
        if title != self.border_title:   # each assignment repaints the whole widget
            self.border_title = title

    def toggle_values(self) -> None:
        self.values = "gaps" if self.values == "moments" else "moments"
        self._title()

    def toggle_scale(self) -> None:
        self.per_layer = not self.per_layer
        self._title()

    def show(self, names: list[str], parents: list[int | None], matrix: np.ndarray) -> None:
        keep = [i for i, p in enumerate(parents) if p is None] if self.top_only else list(range(len(names)))
        self.names = [visible(names[i]) for i in keep]  # drawn as Segments, written as they are
        m = matrix[keep] if matrix.size else np.zeros((len(keep), 0))
        self.levels = self._quantize(m)
        self._generation += 1
        self.virtual_size = Size(self.size.width, len(self.names))
        self.repaint_changed()

    def _line_key(self) -> tuple:
        return (self._generation, int(self.scroll_offset.y), self.scrollable_content_region.width,
                self._heat_styles())

    def _line_cells(self, y: int) -> list[Segment]:
        width = self.scrollable_content_region.width
        base, missing, _, heat = self._heat_styles()
        row = int(self.scroll_offset.y) + y
        if row >= len(self.names):
            return [Segment(" " * width, base)]
        name = self.names[row]
        if len(name) > NAME_W - 1:
            name = "…" + name[-(NAME_W - 2):]
        segs = [Segment(name.ljust(NAME_W), base)]
        cells = max(0, width - NAME_W)
        levels = self.levels[row, -cells:] if cells else self.levels[row, :0]
        pad = cells - len(levels)
        if pad > 0:
            segs.append(Segment(" " * pad, base))
        # One segment per run of equal levels: far fewer segments than cells.
        if len(levels):
            edges = np.flatnonzero(np.diff(levels)) + 1
            for run in np.split(levels, edges):
                level = int(run[0])
                if level < 0:
                    segs.append(Segment("·" * len(run), missing))
                else:
                    segs.append(Segment(" " * len(run), heat[level]))
        return list(Strip(segs, width).crop(0, width).extend_cell_length(width, base))
