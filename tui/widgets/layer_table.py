"""The layer table: one row per layer, drawn with Textual's Line API.

Only the visible lines are rendered, from array snapshots taken once per frame (DataTable's
per-cell updates would cost most of a core with hundreds of live rows: Textualize/textual#6457).
A frame repaints only the span of each line whose cells changed since they were drawn, and a line is
written as runs of one style (issue #11: Textual writes every repainted cell to the terminal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..render import bar, fmt_cycles, fmt_ms, spark, table_styles, visible
from ..state import LayerView
from .keys import CURSOR_BINDINGS
from .quiet import QuietLines


@dataclass(frozen=True)
class Column:
    key: str          # sort key, or "" when the column does not sort
    title: str
    width: int
    priority: int     # lower survives narrower terminals


COLUMNS = [
    Column("", "", 2, 0),
    Column("last", "last ms", 9, 1),
    Column("mean", "mean ms", 9, 4),
    Column("p50", "p50 ms", 9, 1),
    Column("p99", "p99 ms", 9, 2),
    Column("cycles", "cycles", 10, 1),
    Column("share", "share", 7, 0),
    Column("flops", "GFLOP/s", 9, 2),
    Column("roof", "roof%", 7, 2),
    Column("", "gap ms", 9, 4),      # mean gap before a top-level layer (launch gaps, Python between)
    Column("", "", 9, 3),            # share bar
    Column("", "recent", 13, 3),     # sparkline
]
NAME_MIN = 16


class LayerTable(QuietLines, ScrollView, can_focus=True):
    """Rows in the state's sort order; the cursor follows a layer, not a row position."""

    DEFAULT_CSS = """
    LayerTable { background: $surface; overflow-x: hidden; }
    """
    BINDINGS = [*CURSOR_BINDINGS, Binding("enter", "open", "detail")]

    class Selected(Message):
        """A layer was chosen (enter or double click)."""

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    class SortRequested(Message):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.view: LayerView | None = None
        self.sort_key = "order"
        self.cursor_layer = 0
        self.no_timing = False
        self._columns: list[Column] = []
        self._name_width = NAME_MIN
        self._generation = 0   # bumps with every new view
        self._layout_width = -1

    # -- data -------------------------------------------------------------------------------------
    def set_view(self, view: LayerView | None, sort_key: str, no_timing: bool = False) -> None:
        # the state hands back the same view until a step arrives or the sort changes: nothing to repaint
        if view is not self.view or sort_key != self.sort_key or no_timing != self.no_timing:
            self._generation += 1
        self.view, self.sort_key, self.no_timing = view, sort_key, no_timing
        rows = len(view.names) if view is not None else 0
        self.virtual_size = Size(self.size.width, rows + 1)
        self.repaint_changed()

    def _line_key(self) -> tuple:
        """What a line's cells depend on besides its position (QuietLines)."""
        return (self._generation, self.cursor_layer, self.sort_key, self.no_timing, int(self.scroll_offset.y),
                self.scrollable_content_region.width, self._styles())

    @property
    def cursor_row(self) -> int:
        if self.view is None:
            return 0
        where = np.flatnonzero(self.view.order == self.cursor_layer)
        return int(where[0]) if where.size else 0

    def action_cursor(self, delta: int) -> None:
        if self.view is None:
            return
        row = max(0, min(len(self.view.names) - 1, self.cursor_row + delta))
        self.cursor_layer = int(self.view.order[row])
        self.scroll_to_region(Region(0, row, 1, 2), animate=False, force=True)   # the heading + the row
        self.repaint_changed()   # the two lines the cursor left and reached, at once

    def action_open(self) -> None:
        if self.view is not None:
            self.post_message(self.Selected(self.cursor_layer))

    # -- layout -----------------------------------------------------------------------------------
    def _layout(self, width: int) -> None:
        if width == self._layout_width:
            return   # asked for every line; the columns change only with the width
        self._layout_width = width
        chosen = [c for c in COLUMNS if c.priority == 0]
        for prio in range(1, 5):
            extra = [c for c in COLUMNS if c.priority == prio]
            used = sum(c.width for c in chosen + extra)
            if width - used >= NAME_MIN + 2:
                chosen += extra
        self._columns = [c for c in COLUMNS if c in chosen]
        self._name_width = max(NAME_MIN, width - sum(c.width for c in self._columns))

    def _styles(self) -> dict[str, Style]:
        return table_styles(self, lambda v: {
            "slow": Style.parse(f"bold {v.get('warning', 'yellow')}"),
            "outlier": Style.parse(f"bold {v.get('error', 'red')}"),
            "bar": Style.parse(v.get("primary", "blue")),
        })

    # -- rendering --------------------------------------------------------------------------------
    def _line_cells(self, y: int) -> list[Segment]:
        """Line ``y`` as one segment per cell (the diff compares them), exactly ``width`` wide."""
        width = self.scrollable_content_region.width
        self._layout(width)
        styles = self._styles()
        if y == 0:
            return self._header_strip(width, styles)
        row = int(self.scroll_offset.y) + y - 1
        view = self.view
        if view is None or row >= len(view.names):
            if view is None and y == 1:
                return [Segment("  waiting for the first step…".ljust(width)[:width], styles["muted"])]
            return [Segment(" " * width, styles["base"])]
        return self._row_strip(int(view.order[row]), width, styles)

    def _header_strip(self, width: int, styles: dict[str, Style]) -> list[Segment]:
        parts = []
        for col in self._columns[:1]:
            parts.append(" " * col.width)
        title = "layer" + (" ▼" if self.sort_key == "order" else "")
        parts.append(title.ljust(self._name_width)[: self._name_width])
        for col in self._columns[1:]:
            t = col.title + ("▼" if col.key and col.key == self.sort_key else "")
            parts.append(t.rjust(col.width - 1) + " " if col.key else t.ljust(col.width))
        return [Segment("".join(parts).ljust(width)[:width], styles["head"])]

    def _row_strip(self, i: int, width: int, styles: dict[str, Style]) -> list[Segment]:
        v = self.view
        assert v is not None
        selected = i == self.cursor_layer
        base = styles["cursor"] if selected else styles["base"]
        segs: list[Segment] = []
        child = v.parents[i] is not None
        mark = "!" if v.outlier[i] else ("▲" if v.slowest[i] else " ")
        mark_style = styles["outlier"] if v.outlier[i] else (styles["slow"] if v.slowest[i] else base)
        segs.append(Segment(mark + " ", base + mark_style if not selected else base))
        name = ("  " if child else "") + visible(v.names[i])  # a Segment is written as is: no ESC in it
        if len(name) > self._name_width - 1:
            name = "…" + name[-(self._name_width - 2):]
        name_style = base + styles["slow"] if v.slowest[i] and not selected else base
        segs.append(Segment(name.ljust(self._name_width), name_style))
        for col in self._columns[1:]:
            text, style = self._cell(col, i, styles)
            segs.append(Segment(text, base + style if style and not selected else base))
        return list(Strip(segs, width).crop(0, width).extend_cell_length(width, base))

    def _cell(self, col: Column, i: int, styles: dict[str, Style]) -> tuple[str, Style | None]:
        v = self.view
        w = col.width
        if self.no_timing and col.key in ("last", "mean", "p50", "p99", "cycles", "share", "flops", "roof"):
            return "—".rjust(w - 1) + " ", styles["muted"]
        if col.key == "last":
            return fmt_ms(v.last_ms[i]).rjust(w - 1) + " ", styles["outlier"] if v.outlier[i] else None
        if col.key == "mean":
            return fmt_ms(v.mean_ms[i]).rjust(w - 1) + " ", None
        if col.key == "p50":
            return fmt_ms(v.p50_ms[i]).rjust(w - 1) + " ", None
        if col.key == "p99":
            return fmt_ms(v.p99_ms[i]).rjust(w - 1) + " ", None
        if col.key == "cycles":
            return fmt_cycles(v.cycles[i]).rjust(w - 1) + " ", None
        if col.key == "flops":
            f = v.flops_per_s[i] if v.flops_per_s is not None else np.nan
            return (f"{f / 1e9:.1f}" if np.isfinite(f) else "—").rjust(w - 1) + " ", None
        if col.key == "roof":
            r = v.roof_pct[i] if v.roof_pct is not None else np.nan
            bound = "m" if v.memory_bound is not None and v.memory_bound[i] else "c"
            return (f"{r:.0f}%{bound}" if np.isfinite(r) else "—").rjust(w - 1) + " ", None
        if col.key == "share":
            s = v.share[i]
            return (f"{s * 100:5.1f}%" if not math.isnan(s) else "—").rjust(w - 1) + " ", None
        if col.title == "gap ms":
            g = v.gap_ms[i] if v.gap_ms is not None else np.nan
            return (fmt_ms(g) if np.isfinite(g) else "").rjust(w - 1) + " ", styles["muted"]
        if col.title == "recent":
            recent = v.recent_ms[i]
            finite = recent[np.isfinite(recent)]
            if not finite.size:
                return " " * w, None
            # Scaled to the row's own range, but never narrower than 25 % of its minimum, so a
            # few per cent of jitter stays small and a real jump stands out.
            lo = float(finite.min())
            hi = max(float(finite.max()), lo * 1.25)
            return spark(recent, w - 1, lo=lo, hi=hi) + " ", styles["bar"]
        # the share bar: top-level layers against the step, sub-layers dimmed
        return bar(v.share[i], w - 1) + " ", styles["muted"] if v.parents[i] is not None else styles["bar"]

    # -- mouse ------------------------------------------------------------------------------------
    def on_click(self, event) -> None:
        if event.y == 0:
            x = event.x
            edge = self._columns[0].width if self._columns else 0
            if x < edge + self._name_width:
                self.post_message(self.SortRequested("order"))
                return
            edge += self._name_width
            for col in self._columns[1:]:
                if edge <= x < edge + col.width and col.key:
                    self.post_message(self.SortRequested(col.key))
                    return
                edge += col.width
            return
        if self.view is None:
            return
        row = int(self.scroll_offset.y) + event.y - 1
        if 0 <= row < len(self.view.names):
            self.cursor_layer = int(self.view.order[row])
            self.repaint_changed()
            if event.chain >= 2:
                self.post_message(self.Selected(self.cursor_layer))

