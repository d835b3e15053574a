"""Heatmap of layers × recent steps (colour = moment time): a slow layer is a bright row, a slow
step a bright column. ``v`` shows the gaps instead: the time before each top-level layer since the
previous one ended (launch gaps, Python between layers; steptable.layer_gaps). Line API: only
visible rows are drawn."""

from __future__ import annotations

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..render import palette, ramp, visible

NAME_W = 16
LEVELS = 16


class Heatmap(ScrollView):
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

    def on_mount(self) -> None:
        self._title()

    def _title(self) -> None:
        scale = "each layer's own range" if self.per_layer else "log scale, all layers"
        what = "gap before each layer" if self.values == "gaps" else "layers × steps"
        self.border_title = f"{what} ({scale})"

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
        self.virtual_size = Size(self.size.width, len(self.names))
        self.refresh()

    def _quantize(self, m: np.ndarray) -> np.ndarray:
        out = np.full(m.shape, -1, dtype=np.int16)
        ok = np.isfinite(m) & (m > 0)
        if not ok.any():
            return out
        x = np.where(ok, np.log(np.where(ok, m, 1.0)), np.nan)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
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

    def _palette_styles(self) -> tuple[Style, Style, list[Style]]:
        """Base, missing and one style per heat level; rebuilt only when the theme changes."""
        v = palette(self.app)
        key = (v.get("heat-low"), v.get("heat-high"), v.get("surface"), v.get("foreground"))
        if getattr(self, "_styles_key", None) != key:
            low, high = v.get("heat-low", "#202040"), v.get("heat-high", "#ff6000")
            self._styles_key = key
            self._styles = (
                Style.parse(f"{v.get('foreground', 'white')} on {v.get('surface', 'black')}"),
                Style.parse(f"{v.get('foreground-muted', 'grey37')} on {v.get('surface', 'black')}"),
                [Style(bgcolor=ramp(low, high, i / (LEVELS - 1))) for i in range(LEVELS)],
            )
        return self._styles

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base, missing, heat = self._palette_styles()
        row = int(self.scroll_offset.y) + y
        if row >= len(self.names):
            return Strip.blank(width, base)
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
        return Strip(segs, width)
