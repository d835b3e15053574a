"""A live ``moments compare`` (``c``; the monitor opens here): the variants, the rounds, and per step
kind a table of each layer's p50 per variant with its ratio to the baseline, interval and verdict.

The figures are the engine's (engine/session/compare_stream.py redoes its analysis every few rounds;
the screen says which round they are from); the screen only draws them. It reads the compare state
from the app's source (``source.compare_state``, tui/compare_live.py) and chooses which variant the
main screen shows (``v``), so that the main screen's table never mixes variants.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

from ..render import visible
from ..widgets.compare_summary import CompareSummary
from ..widgets.compare_table import CompareTable
from ..widgets.status_line import StatusLine


class CompareScreen(Screen):
    DEFAULT_CSS = """
    CompareScreen CompareTable { height: 1fr; }
    """
    BINDINGS = [
        Binding("escape,c", "app.pop_screen", "back"),
        Binding("n", "next_kind", "step kind"),
        Binding("l", "toggle_clock", "clock-normalized"),
        Binding("v", "next_variant", "main shows"),
    ]

    ready = False  # set once the widgets exist: the app's timer may tick before that

    def compose(self) -> ComposeResult:
        yield CompareSummary(id="compare-summary")
        yield CompareTable(id="compare-table")
        yield StatusLine(id="compare-status")
        yield Footer()

    def on_mount(self) -> None:
        self.ready = True
        self.query_one(CompareTable).focus()
        self._redraw()

    @property
    def compare_state(self) -> Any:
        return getattr(self.app.source, "compare_state", None)

    def show(self, state: Any, note: str | None = None) -> None:
        """A frame: the compare state's figures, the app state's status line."""
        if not self.ready:
            return
        cs = self.compare_state
        self.query_one(CompareSummary).show(cs)
        self.query_one(CompareTable).set_state(cs)
        if state is not None:   # "slow terminal" here too when the app backs off (tui/wire.py)
            self.query_one(StatusLine).show(state, backoff=self.app.backoff.note)

    def _redraw(self) -> None:
        self.show(getattr(self.app, "state", None))

    def action_next_kind(self) -> None:
        cs = self.compare_state
        if cs is not None and cs.next_kind() is not None:
            self._redraw()

    def action_toggle_clock(self) -> None:
        cs = self.compare_state
        if cs is not None:
            cs.toggle_normalized()
            self._redraw()

    def action_next_variant(self) -> None:
        cs = self.compare_state
        switch = getattr(self.app.source, "show_variant", None)
        label = cs.next_label() if cs is not None else None
        if label is None or switch is None or not switch(label):
            return
        self.app.notify(f"main screen: variant {visible(label)}", timeout=3, markup=False)
        self._redraw()
