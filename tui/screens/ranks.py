"""All ranks of a sharded session at once (``w``): a row per rank (host, device, clock, step p50
against the worst rank), then per layer each rank's p50 / latest moment, the skew and the culprit
rank; ``m`` shows the layers × ranks heatmap in place of the table."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

from ..state import ViewState
from ..widgets.ranks_heatmap import RankHeatmap
from ..widgets.ranks_summary import RankSummary
from ..widgets.ranks_table import RankTable
from ..widgets.status_line import StatusLine


class RanksScreen(Screen):
    DEFAULT_CSS = """
    RanksScreen RankTable { height: 1fr; }
    RanksScreen RankHeatmap { height: 1fr; display: none; }
    RanksScreen.-heatmap RankTable { display: none; }
    RanksScreen.-heatmap RankHeatmap { display: block; }
    """
    BINDINGS = [
        Binding("escape,w", "app.pop_screen", "back"),
        Binding("m", "toggle_heatmap", "heatmap"),
        Binding("l", "toggle_latest", "p50/latest"),
        Binding("h", "scale", "heat scale", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield RankSummary(id="ranks-summary")
        yield RankTable(id="ranks-table")
        yield RankHeatmap(id="ranks-heatmap")
        yield StatusLine(id="ranks-status")
        yield Footer()

    ready = False  # set once the widgets exist: the app's timer may tick before that

    def on_mount(self) -> None:
        self.ready = True
        self.query_one(RankTable).focus()
        if self.app is not None and hasattr(self.app, "state"):
            self.show(self.app.state)

    def show(self, state: ViewState, note: str | None = None) -> None:
        if not self.ready:
            return
        view = state.ranks.view() if state.ranks is not None else None
        self.query_one(RankSummary).show(view, note)
        self.query_one(StatusLine).show(state)
        if self.has_class("-heatmap"):
            self.query_one(RankHeatmap).show(view)
        else:
            self.query_one(RankTable).set_view(view)

    def _redraw(self) -> None:
        self.show(self.app.state)

    def action_toggle_heatmap(self) -> None:
        self.toggle_class("-heatmap")
        self._redraw()

    def action_toggle_latest(self) -> None:
        table = self.query_one(RankTable)
        table.latest = not table.latest
        self._redraw()

    def action_scale(self) -> None:
        self.query_one(RankHeatmap).toggle_scale()
        self._redraw()
