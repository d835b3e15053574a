"""The compare table (Line API: only the visible rows are drawn): one step kind, the step row then one
row per layer; the baseline's p50, then for each other variant its p50, the ratio to the baseline with
its interval, and the verdict, coloured. Figures come ready-made from the compare state (the engine's
analysis); nothing here computes a statistic.

When the variants do not all fit, the intervals go first; then a window of variants, moved with
←/→. Names and labels are drawn through ``visible`` (never markup).

A frame repaints only the cells that changed (QuietLines, issue #11): the lines depend on the rows
(a new list on a new analysis, kind, clock-normalization or variants), the cursor, the first variant
shown, the scroll, the width and the theme; a frame where none of these changed draws nothing.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..compare_state import ABSENT, NO_DATA, NO_TIMING, TOO_FEW, Cell, CompareState, Row
from ..render import fmt_ms, table_styles, visible
from .keys import CURSOR_BINDINGS
from .quiet import QuietLines

NAME_MIN = 14
NAME_MAX = 40
BASE_W = 10
P50_W, RATIO_W, CI_W, VERDICT_W = 9, 6, 14, 15
FULL_W = P50_W + RATIO_W + CI_W + VERDICT_W
COMPACT_W = P50_W + RATIO_W + VERDICT_W
HEAD_ROWS = 2

# verdict → theme variable of its colour
VERDICT_COLOR = {"faster": "success", "slower": "error", "within-noise": "foreground-muted", TOO_FEW: "warning",
                 NO_TIMING: "warning", ABSENT: "foreground-muted", "n/a": "foreground-muted"}


def fmt_ratio(r: float | None) -> str:
    """A ratio in at most RATIO_W - 1 = 5 cells: 0.836, then 3 significant digits (12.3, 123), then
    whole numbers; the interval ``[lo–hi]`` then fits CI_W - 1 = 13 cells and the verdict stays put."""
    if r is None:
        return "—"
    if r < 9.9995:
        return f"{r:.3f}"
    if r < 99.95:
        return f"{r:.1f}"
    if r < 99999.5:
        return f"{r:.0f}"
    return f"{r:.0e}"


def _fit(text: str, width: int, style: Style) -> list[Segment]:
    """One line of text exactly ``width`` cells wide (a label may hold wide characters)."""
    return list(Strip([Segment(text, style)]).crop(0, width).extend_cell_length(width, style))


def layout(width: int, variants: int, name_w: int) -> tuple[int, bool, int]:
    """(variants shown at once, with intervals, name width) for a table ``width`` cells wide."""
    name_w = max(NAME_MIN, min(name_w, NAME_MAX))
    for block, full in ((FULL_W, True), (COMPACT_W, False)):
        room = width - BASE_W - block * variants
        if variants and room >= NAME_MIN:
            return variants, full, max(NAME_MIN, min(name_w, room))
    k = min(max(1, (width - BASE_W - NAME_MIN) // COMPACT_W), variants)
    return k, False, max(NAME_MIN, min(name_w, width - BASE_W - COMPACT_W * k))


class CompareTable(QuietLines, ScrollView, can_focus=True):
    DEFAULT_CSS = """
    CompareTable { background: $surface; overflow-x: hidden; }
    """
    BINDINGS = [*CURSOR_BINDINGS,
                Binding("left", "shift(-1)", "variants", show=False),
                Binding("right", "shift(1)", "variants", show=False)]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state: CompareState | None = None
        self.rows: list[Row] = []
        self.cursor = 0
        self.first = 0                 # the first variant shown when they do not all fit
        self._names: list[str] = []
        self._generation = 0           # bumps when the state or its rows change (what the lines show)
        self._painted: tuple | None = None   # the line key of the last repaint_changed

    def set_state(self, state: CompareState | None) -> None:
        # the state hands back the same rows until a new analysis, kind, normalization or set of
        # variants: then the frame has nothing to repaint here (the rounds and steps are the summary's)
        rows = state.rows() if state is not None else []
        if rows is not self.rows:
            self._names = [("  " if r.parent is not None else "") + visible(r.name) for r in rows]
        if state is not self.state or rows is not self.rows:
            self._generation += 1
        self.state, self.rows = state, rows
        self.cursor = min(self.cursor, max(len(rows) - 1, 0))
        self.virtual_size = Size(self.size.width, len(rows) + HEAD_ROWS)
        self._repaint()

    def _repaint(self) -> None:
        """Mark dirty the cells that changed, if anything the lines depend on did."""
        if self.is_mounted and self.scrollable_content_region.area:
            key = (self._line_key(), self.scrollable_content_region.height)
            if key == self._painted:
                return
            self._painted = key
        self.repaint_changed()

    def _line_key(self) -> tuple:
        """What a line's cells depend on besides its position (QuietLines)."""
        return (self._generation, self.cursor, self.first, int(self.scroll_offset.y),
                self.scrollable_content_region.width, self._styles())

    def action_cursor(self, delta: int) -> None:
        if not self.rows:
            return
        self.cursor = max(0, min(len(self.rows) - 1, self.cursor + delta))
        # line y draws row scroll_y + y - HEAD_ROWS: a region from the row's offset spanning the heading
        # rows and the row keeps the row below the heading when scrolling up and on screen scrolling down
        self.scroll_to_region(Region(0, self.cursor, 1, HEAD_ROWS + 1), animate=False, force=True)
        self._repaint()   # the two lines the cursor left and reached, at once

    def action_shift(self, delta: int) -> None:
        n = len(self.state.others) if self.state is not None else 0
        self.first = max(0, min(max(n - 1, 0), self.first + delta))
        self._repaint()

    def _styles(self) -> dict[str, Style]:
        def verdicts(v: dict[str, str]) -> dict[str, Style]:
            fg = v.get("foreground", "white")
            return {"step": Style.parse("bold"),
                    **{verdict: Style.parse(("bold " if var in ("success", "error") else "") + v.get(var, fg))
                       for verdict, var in VERDICT_COLOR.items()}}

        return table_styles(self, verdicts)

    def _window(self, width: int) -> tuple[list[str], bool, int]:
        """(the labels shown, with intervals, name width)."""
        others = self.state.others if self.state is not None else []
        longest = max((len(n) for n in self._names), default=NAME_MIN) + 2
        k, full, name_w = layout(width, len(others), longest)
        self.first = max(0, min(self.first, max(len(others) - k, 0)))
        return others[self.first:self.first + k], full, name_w

    def _line_cells(self, y: int) -> list[Segment]:
        """Line ``y`` as segments exactly ``width`` wide, in the same layout from frame to frame."""
        width = self.scrollable_content_region.width
        st = self._styles()
        s = self.state
        if s is None or not self.rows:
            text = ("  " + ("waiting for the first round's figures…" if s is None or s.labels else
                            "not a compare session")) if y == 1 else ""
            return [Segment(text.ljust(width)[:width], st["muted"] if y == 1 else st["base"])]
        labels, full, name_w = self._window(width)
        block = FULL_W if full else COMPACT_W
        if y < HEAD_ROWS:
            return self._head(y, width, labels, full, name_w, block, st)
        index = int(self.scroll_offset.y) + y - HEAD_ROWS
        if index >= len(self.rows):
            return [Segment(" " * width, st["base"])]
        row = self.rows[index]
        base = st["cursor"] if index == self.cursor else st["base"]
        if row.is_step:
            base = base + st["step"]
        name = self._names[index]
        if len(name) > name_w - 1:
            name = "…" + name[-(name_w - 2):]
        segs = [Segment(name.ljust(name_w), base), Segment(self._p50(row.base).rjust(BASE_W - 1) + " ", base)]
        for label in labels:
            segs += self._cell(row.cells.get(label) or Cell(), full, base, st, index == self.cursor)
        return list(Strip(segs).crop(0, width).extend_cell_length(width, base))

    def _head(self, y: int, width: int, labels: list[str], full: bool, name_w: int, block: int,
              st: dict[str, Style]) -> list[Segment]:
        s = self.state
        assert s is not None
        others = s.others
        if y == 0:
            kind = s.current_kind or "—"
            text = f"{kind} steps{' · clock-norm.' if s.normalized else ''}"[:name_w - 1].ljust(name_w)
            text += visible(s.baseline)[:BASE_W - 1].rjust(BASE_W - 1) + " "
            for j, label in enumerate(labels):
                hidden_right = len(others) - self.first - len(labels)
                more_left = f"← +{self.first} " if j == 0 and self.first > 0 else ""
                more_right = f"  +{hidden_right} →" if j == len(labels) - 1 and hidden_right > 0 else ""
                title = f"{more_left}{visible(label)} / {visible(s.baseline)}"
                text += (title[:block - 2 - len(more_right)] + more_right).ljust(block)
            return _fit(text, width, st["head"])
        text = "layer".ljust(name_w) + "p50 ms".rjust(BASE_W - 1) + " "
        for _ in labels:
            text += "p50 ms".rjust(P50_W - 1) + " " + "ratio".rjust(RATIO_W - 1) + " "
            if full:
                text += "interval".center(CI_W - 1) + " "
            text += "verdict".ljust(VERDICT_W)
        return _fit(text, width, st["head"])

    @staticmethod
    def _p50(c: Cell) -> str:
        if c.verdict in (ABSENT, NO_TIMING):
            return "—"
        return fmt_ms(c.p50_ms)

    def _cell(self, c: Cell, full: bool, base: Style, st: dict[str, Style], cursor: bool) -> list[Segment]:
        color = base if cursor else base + st.get(c.verdict, st["muted"])
        p50 = Segment(self._p50(c).rjust(P50_W - 1) + " ", base)
        wide = RATIO_W + (CI_W if full else 0) + VERDICT_W
        if c.verdict in (ABSENT, NO_TIMING, NO_DATA):   # words, no figures: they take the block's width
            words = c.verdict or "—"
            return [p50, Segment(" " + words[:wide - 2].ljust(wide - 1), color)]
        ratio = fmt_ratio(c.ratio)
        segs = [p50, Segment(ratio.rjust(RATIO_W - 1) + " ", color)]
        if full:
            ci = (f"[{fmt_ratio(c.ci_low)}–{fmt_ratio(c.ci_high)}]"
                  if c.ci_low is not None and c.ci_high is not None else "")
            segs.append(Segment(ci.center(CI_W - 1) + " ", base))
        segs.append(Segment(c.verdict[:VERDICT_W - 1].ljust(VERDICT_W), color))
        return segs
