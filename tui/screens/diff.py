"""Two recordings side by side (``moments replay A --compare B``): per layer p50 / p99, cycles and
share, the change and whether it is beyond the noise of either run."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from llm_moments.engine.analysis.diff import Diff
from llm_moments.engine.output.units import signed_pct as _pct

from ..render import cell, fmt_cycles, fmt_ms, visible


class DiffScreen(Screen):
    BINDINGS = [Binding("escape,d", "app.pop_screen", "back")]
    DEFAULT_CSS = """
    DiffScreen #title { height: auto; background: $panel; padding: 0 1; }
    """

    def __init__(self, diff: Diff, name_a: str, name_b: str) -> None:
        super().__init__()
        self.diff, self.name_a, self.name_b = diff, name_a, name_b

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield DataTable(id="diff", zebra_stripes=True, cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        d = self.diff
        verdict = ("faster" if d.step_change_pct < 0 else "slower") if d.step_significant else "within noise"
        lines = [f"A {visible(self.name_a)}  vs  B {visible(self.name_b)} · {visible(d.kind)} steps: "
                 f"A {d.a_steps}, B {d.b_steps} · step p50 {fmt_ms(d.a_step_p50_ms)} → {fmt_ms(d.b_step_p50_ms)} ms "
                 f"({_pct(d.step_change_pct)}, {verdict})"]
        if d.only_in_a or d.only_in_b:
            lines.append(f"unmatched: {len(d.only_in_a)} layer(s) only in A, {len(d.only_in_b)} only in B")
        self.query_one("#title", Static).update(Content("\n".join(lines)))  # plain: names are never markup
        table = self.query_one(DataTable)
        for col in ("layer", "A p50", "B p50", "change", "95% interval", "A p99", "B p99", "A cycles", "B cycles",
                    "A share", "B share", "verdict"):
            table.add_column(col, key=col)
        for l in d.layers:
            verdict = ("faster" if l.change_pct < 0 else "slower") if l.significant else "noise"
            table.add_row(cell(l.name), fmt_ms(l.a_p50_ms), fmt_ms(l.b_p50_ms), _pct(l.change_pct),
                          f"{_pct(l.ci_low_pct)} … {_pct(l.ci_high_pct)}", fmt_ms(l.a_p99_ms), fmt_ms(l.b_p99_ms),
                          fmt_cycles(l.a_cycles), fmt_cycles(l.b_cycles), f"{l.a_share * 100:.1f}%",
                          f"{l.b_share * 100:.1f}%", verdict)
        for name in d.only_in_a:
            table.add_row(cell(name), *["—"] * 10, "only in A")
        for name in d.only_in_b:
            table.add_row(cell(name), *["—"] * 10, "only in B")
