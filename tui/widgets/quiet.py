"""Widgets that repaint only what changed (issue #11: few bytes over SSH).

Textual writes every repainted cell to the terminal, changed or not, and repaints a whole widget on
``refresh()``, ``Static.update`` and every ``border_title`` assignment.

- ``QuietStatic.update`` skips content identical to what is shown, and otherwise marks dirty only the
  lines whose rendering changed (the others keep their cached strips): a panel where one figure moved
  costs one line, not the panel.
- ``QuietLines`` (Line API scroll views: the layer table, the heatmap) keeps the cells it drew on each
  visible line; ``repaint_changed`` marks dirty only the span from the first to the last cell that
  differs, and each line is written as runs of one style, its colour codes once per run.
"""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len
from rich.segment import Segment
from textual.geometry import Region
from textual.strip import Strip
from textual.visual import Visual
from textual.widgets import Static


class QuietStatic(Static):
    _partial = False   # the refresh that ``update`` asks for may be cut down to the changed lines

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last: Any = None
        self._strips: tuple[Any, list] | None = None   # (size, strips) of the newest content
        self._title_set: str | None = None

    def update(self, content: Any = "", *, layout: bool = True) -> None:
        last = self._last
        if last is not None and type(last) is type(content) and (
                last.is_same(content) if hasattr(content, "is_same") else last == content):
            return
        self._last = content
        self._partial = True
        try:
            super().update(content, layout=layout)
        finally:
            self._partial = False

    def set_title(self, title: str) -> None:
        """``border_title``, set only when it changes (each assignment repaints the whole widget)."""
        if title != self._title_set:
            self._title_set = title
            self.border_title = title

    def refresh(self, *regions: Region, repaint: bool = True, layout: bool = False,
                recompose: bool = False) -> QuietStatic:
        if self._partial and not regions and repaint and not recompose:
            lines = self._changed_lines(layout)
            if lines is not None:
                if not lines:
                    return self
                width = self.size.width
                return super().refresh(*(Region(0, y, width, 1) for y in lines))
        elif not regions:
            self._strips = None   # repainted for another reason (size, theme, title): compare afresh
        return super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)

    def _changed_lines(self, layout: bool) -> list[int] | None:
        """The lines whose strips differ from the previous content's, or None for a full repaint (first
        draw, a new size, a height of its own that changes with the content)."""
        if not self.is_mounted or not self.size.area:
            self._strips = None
            return None
        size = self.size
        width, height = self.styles.width, self.styles.height
        auto_width = width is not None and width.is_auto
        auto_height = height is not None and height.is_auto
        if layout and (auto_width or (auto_height and self.visual.get_height(self.styles, size.width) != size.height)):
            self._strips = None
            return None   # a box sized by its content: the layout changes
        strips = Visual.to_strips(self, self.visual, size.width, size.height, self.visual_style)
        before, self._strips = self._strips, (size, strips)
        if before is None or before[0] != size or len(before[1]) != len(strips):
            return None
        return [y for y, (a, b) in enumerate(zip(before[1], strips)) if a != b]


class QuietLines:
    """A mixin for a Line API ScrollView that defines ``_line_cells(y)`` (a visible line as a list of
    segments exactly as wide as the view, in the same layout from frame to frame) and ``_line_key()``
    (what the lines depend on besides their position)."""

    _drawn: dict[int, list[Segment]]      # visible line → the cells last drawn there
    _fresh: dict[int, list[Segment]]      # lines the diff computed and marked dirty, not drawn yet
    _fresh_key: tuple

    def _line_cells(self, y: int) -> list[Segment]:
        raise NotImplementedError

    def _line_key(self) -> tuple:
        raise NotImplementedError

    def repaint_changed(self) -> None:
        """Mark dirty the span of each visible line whose cells differ from what was drawn there."""
        region = self.scrollable_content_region
        if not self.is_mounted or not region.area:
            self.refresh()
            return
        if not hasattr(self, "_drawn"):
            self._drawn, self._fresh, self._fresh_key = {}, {}, ()
        key = self._line_key()
        if key != self._fresh_key:
            self._fresh, self._fresh_key = {}, key
        dirty = []
        for y in range(region.height):
            cells = self._line_cells(y)
            span = changed_span(self._drawn.get(y), cells, region.width)
            if span is not None:
                self._fresh[y] = cells
                dirty.append(Region(span[0], y, span[1] - span[0], 1))
        if dirty:
            self.refresh(*dirty)

    def render_line(self, y: int) -> Strip:
        if not hasattr(self, "_drawn"):
            self._drawn, self._fresh, self._fresh_key = {}, {}, ()
        cells = self._fresh.pop(y, None) if self._fresh and self._fresh_key == self._line_key() else None
        if cells is None:
            cells = self._line_cells(y)
        self._drawn[y] = cells
        # one segment per run of a style: the colour codes are written once per run, not per cell
        return Strip(cells, self.scrollable_content_region.width).simplify()


def changed_span(before: list[Segment] | None, after: list[Segment], width: int) -> tuple[int, int] | None:
    """The columns [x1, x2) from the first to the last cell that differs; None when none does; the
    whole line when the segments do not line up (another layout) or nothing was drawn there yet."""
    if before is None or len(before) != len(after):
        return (0, width)
    x = 0
    first = last = None
    for a, b in zip(before, after):
        n = cell_len(b.text)
        if a != b:
            if cell_len(a.text) != n:
                return (0, width)
            first = x if first is None else first
            last = x + n
        x += n
    return None if first is None else (first, last)
