"""Outlier moments seen so far: the step, the layer, the time against its median, and the clock and
throttle reasons at that moment — why a moment was slow, where the data can tell."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from ..render import cell, fmt_mhz, fmt_ms
from ..state import ViewState


class OutliersScreen(Screen):
    BINDINGS = [Binding("escape,o", "app.pop_screen", "back")]
    DEFAULT_CSS = """
    OutliersScreen #title { height: 1; background: $panel; padding: 0 1; text-style: bold; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield DataTable(id="outliers", zebra_stripes=True, cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col in ("step", "kind", "layer", "moment ms", "median ms", "× median", "clock", "throttle"):
            table.add_column(col, key=col)
        self._shown = -1
        self.show(self.app.state)

    def show(self, state: ViewState) -> None:
        log = state.outlier_log
        title = self.query_one("#title", Static)
        if log is None:
            title.update("outliers: no session yet")
            return
        title.update(f"outlier moments: {log.total} seen (newest first; a moment > median + 5 × 1.48 MAD of its "
                     f"layer's recent history)")
        if log.total == self._shown:
            return  # DataTable updates are costly: only when the list changed (a few rows, rarely)
        self._shown = log.total
        table = self.query_one(DataTable)
        table.clear()
        for e in reversed(log.entries):
            ratio = e["ms"] / e["median_ms"] if e["median_ms"] else float("nan")
            # cells from the recording are plain Text: a str cell would be read as markup
            table.add_row(cell(e["step"]), cell(e["kind"] or "?"), cell(e["layer"]), fmt_ms(e["ms"]),
                          fmt_ms(e["median_ms"]), f"{ratio:.1f}×", fmt_mhz(e["clock_mhz"]),
                          cell(" ".join(map(str, e["throttle_reasons"] or ())) or "—"))
