"""Above the compare table: the rounds (done / total, which round the ratios are from), what the
table shows and the keys that change it, the running round's order, then one line per
variant: its options, steps, memory, per-layer timing and notes, and its output against the
baseline's. Every label, option, note and name is drawn through ``visible`` (never markup).

A QuietStatic (issue #11): a frame repaints only the lines that changed (a round, a variant's steps),
not the panel; its height is laid out again only when its number of lines changes."""

from __future__ import annotations

from rich.text import Text

from ..compare_state import CompareState
from ..render import visible
from .quiet import QuietStatic


class CompareSummary(QuietStatic):
    DEFAULT_CSS = """
    CompareSummary { height: auto; max-height: 20; background: $panel; padding: 0 1;
                     text-wrap: nowrap; text-overflow: ellipsis; }
    """

    _lines = 0   # lines of the content shown: the height (auto) changes only with them

    def show(self, state: CompareState | None) -> None:
        text = self.render_text(state)
        lines = text.plain.count("\n") + 1
        layout, self._lines = lines != self._lines, lines
        self.update(text, layout=layout)

    @staticmethod
    def render_text(state: CompareState | None) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("compare ", style="bold")
        if state is None or not state.labels:
            t.append("waiting for the session…")
            return t
        t.append(f"{state.rounds_text()} · {state.ratios_text()}", style="bold")
        kinds = state.kinds
        t.append(f" · {visible(state.current_kind or '—')} steps")
        if len(kinds) > 1:
            t.append(f" (n: {' / '.join(visible(k) for k in kinds)})")
        if state.normalized and not state.has_normalized():
            t.append(" · clock-normalized: no reference clock here (l)", style="bold")
        else:
            t.append(f" · {'clock-normalized' if state.normalized else 'as timed'} (l)")
        t.append(" · main screen: ")
        t.append(visible(state.shown), style="bold")
        t.append(" (v)\n")
        order = state.order_text()
        if order:
            t.append(f"{visible(order)} · ")
        h = state.header or {}
        model, device = (h.get("model") or {}).get("name"), (h.get("device") or {}).get("kind")
        t.append(f"{visible(model)} on {visible(device)} · ratio < 1: faster than the baseline")
        for line in state.variant_lines():
            t.append("\n")
            t.append("▶ " if line.shown else "  ")
            t.append(visible(line.label), style="bold")
            if line.baseline:
                t.append(" (baseline)")
            t.append(f"  {visible(line.options) or '(common options)'} · output: {visible(line.output)} · "
                     f"{visible(line.memory)} · {line.steps} steps")
            if not line.per_layer_timing:
                t.append(" · no per-layer timing (hooks cannot fire inside a compiled graph)", style="bold")
            for note in line.notes:
                t.append(f" · {visible(note)}")
        return t
