"""The merged per-layer table of several ranks (Line API: only the visible rows are drawn).

One row per layer: each rank's p50 (or latest) moment, the culprit rank's cell marked ``*`` and
highlighted, the skew (max − min of the ranks' p50 moments) and the culprit rank (slowest median
compute: moment − time inside collectives − weight loads; engine.analysis.ranks rules).
"""

from __future__ import annotations

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..rank_state import RankView
from ..render import fmt_ms, table_styles, visible
from .keys import CURSOR_BINDINGS

RANK_W = 10
TAIL_W = 10 + 9      # skew, culprit
NAME_MIN = 14


class RankTable(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    RankTable { background: $surface; overflow-x: hidden; }
    """
    BINDINGS = CURSOR_BINDINGS

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.view: RankView | None = None
        self.latest = False          # show each rank's latest moment instead of its p50
        self.cursor = 0
        self._names: list[str] = []

    def set_view(self, view: RankView | None) -> None:
        if view is not None and (self.view is None or self.view.names is not view.names):
            self._names = [("  " if p is not None else "") + visible(n) for n, p in zip(view.names, view.parents)]
        self.view = view
        self.virtual_size = Size(self.size.width, (len(view.names) if view else 0) + 1)
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        if self.view is None:
            return
        self.cursor = max(0, min(len(self.view.names) - 1, self.cursor + delta))
        self.scroll_to_region(Region(0, self.cursor, 1, 2), animate=False, force=True)   # the heading + the row
        self.refresh()

    def _styles(self) -> dict[str, Style]:
        return table_styles(self, lambda v: {"culprit": Style.parse(f"bold {v.get('warning', 'yellow')}")})

    def _shown_ranks(self, width: int) -> tuple[int, int]:
        """(ranks that fit, name width)."""
        R = len(self.view.ranks) if self.view else 0
        fit = max(1, (width - NAME_MIN - TAIL_W) // RANK_W)
        k = min(R, fit)
        return k, max(NAME_MIN, width - k * RANK_W - TAIL_W)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        st = self._styles()
        v = self.view
        if v is None:
            text = "  waiting for the ranks…" if y == 1 else ""
            return Strip([Segment(text.ljust(width), st["muted"] if y == 1 else st["base"])], width)
        k, name_w = self._shown_ranks(width)
        if y == 0:
            what = "latest" if self.latest else "p50"
            head = f"layer ({what} ms{', * culprit' if name_w > 28 else ''})"[:name_w].ljust(name_w)
            head += "".join(f"rank {r}".rjust(RANK_W - 1) + " " for r in v.ranks[:k])
            more = len(v.ranks) - k
            head += "skew ms".rjust(9) + " " + ("culprit" + (f" +{more}" if more else "")).rjust(8)
            return Strip([Segment(head.ljust(width)[:width], st["head"])], width)
        row = int(self.scroll_offset.y) + y - 1
        if row >= len(v.names):
            return Strip.blank(width, st["base"])
        base = st["cursor"] if row == self.cursor else st["base"]
        name = self._names[row]
        if len(name) > name_w - 1:
            name = "…" + name[-(name_w - 2):]
        segs = [Segment(name.ljust(name_w), base)]
        values = v.latest_ms if self.latest else v.p50_ms
        culprit = int(v.culprit[row])
        for j, r in enumerate(v.ranks[:k]):
            x = values[j, row]
            mark = "*" if r == culprit else " "
            text = (fmt_ms(x) if np.isfinite(x) else "—").rjust(RANK_W - 2) + mark + " "
            segs.append(Segment(text, base + st["culprit"] if r == culprit and row != self.cursor else base))
        skew = v.skew_ms[row]
        segs.append(Segment((fmt_ms(skew) if np.isfinite(skew) else "—").rjust(9) + " ", base))
        segs.append(Segment((f"rank {culprit}" if culprit >= 0 else "—").rjust(8) + " ",
                            base + st["culprit"] if culprit >= 0 and row != self.cursor else base))
        return Strip(segs, width).crop(0, width).extend_cell_length(width, base)
