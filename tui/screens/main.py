"""The main screen: header, layer table, clock and step panels, heatmap, status line."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from ..state import ViewState
from ..widgets.clock_panel import ClockPanel
from ..widgets.header import HeaderBar
from ..widgets.heatmap import Heatmap
from ..widgets.layer_table import LayerTable
from ..widgets.status_line import StatusLine
from ..widgets.step_panel import StepPanel

WIDE_COLUMNS = 120   # from here the panels move to a right-hand column and the heatmap shows
TALL_ROWS = 32


class MainScreen(Screen):
    DEFAULT_CSS = """
    #body { height: 1fr; }
    #left { width: 1fr; }
    #right { display: none; width: 56; }
    #bottom { height: 9; }
    #bottom > * { width: 1fr; }
    MainScreen.-wide #right { display: block; }
    MainScreen.-wide #bottom { display: none; }
    #right ClockPanel { height: 9; }
    #right StepPanel { height: 12; }
    #right Heatmap { height: 1fr; }
    MainScreen.-heatmap-only #table { display: none; }
    MainScreen.-heatmap-only #bottom-heatmap { display: block; height: 1fr; }
    #bottom-heatmap { display: none; }
    """

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield LayerTable(id="table")
                yield Heatmap(id="bottom-heatmap")
                with Horizontal(id="bottom"):
                    yield ClockPanel(id="clock-small")
                    yield StepPanel(id="steps-small")
            with Vertical(id="right"):
                yield ClockPanel(id="clock")
                yield StepPanel(id="steps")
                yield Heatmap(id="heatmap")
        yield StatusLine(id="status")
        yield Footer()

    ready = False  # set once the widgets exist: the app's timer may tick before that

    def on_mount(self) -> None:
        self.ready = True
        self.query_one(LayerTable).focus()
        self._apply_size(self.size.width, self.size.height)

    def on_resize(self, event) -> None:
        self._apply_size(event.size.width, event.size.height)

    def _apply_size(self, width: int, height: int) -> None:
        self.set_class(width >= WIDE_COLUMNS and height >= TALL_ROWS - 8, "-wide")

    @property
    def wide(self) -> bool:
        return self.has_class("-wide")

    def toggle_heatmap(self) -> None:
        """Narrow terminals: show the heatmap in place of the table (wide ones always show it)."""
        if not self.wide:
            self.toggle_class("-heatmap-only")

    def show(self, state: ViewState, note: str | None, frozen: bool, slow: bool = True, fast: bool = True,
             backoff: str | None = None) -> None:
        """Draw a frame: each widget repaints only the lines (table: cells) that changed. ``frozen``
        (paused live view) keeps table and step views still; ``slow``: the step panel and heatmap too
        (hundreds of cells: the app draws them at most SLOW_HZ); ``fast=False``: those two only."""
        if fast:
            self.query_one(HeaderBar).show(state, note)
            self.query_one(StatusLine).show(state, backoff)
            clock = self.query_one("#clock" if self.wide else "#clock-small", ClockPanel)
            clock.show(state)
        if frozen:
            return
        if fast:
            table = self.query_one(LayerTable)
            table.set_view(state.layer_view(), state.sort_key, state.no_layer_timing)
        if not slow:
            return
        self.query_one("#steps" if self.wide else "#steps-small", StepPanel).show(state)
        heatmap_id = "#heatmap" if self.wide else "#bottom-heatmap"
        heatmap = self.query_one(heatmap_id, Heatmap)
        if heatmap.display or self.has_class("-heatmap-only") or self.wide:
            cols = max(1, heatmap.size.width - 18)
            parents = state.stats.parents if state.stats else []
            heatmap.show(state.layer_names, parents, state.heatmap(cols, heatmap.values))
