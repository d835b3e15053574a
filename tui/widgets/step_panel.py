"""Step panel: step-time history (prefill and decode told apart) and the step-time distribution."""

from __future__ import annotations

import numpy as np
from textual.content import Content

from ..render import bar, fmt3, spark, visible
from ..state import ViewState
from .quiet import QuietStatic

KIND_STYLE = {"prefill": "$accent", "decode": "$primary", "encode": "$primary"}


class StepPanel(QuietStatic):
    DEFAULT_CSS = """
    StepPanel { border: round $primary; border-title-color: $foreground; padding: 0 1; height: 100%; }
    """

    def on_mount(self) -> None:
        self.border_title = "steps"

    def show(self, state: ViewState) -> None:
        self.update(self.content(state, max(10, self.content_size.width), max(3, self.content_size.height)),
                    layout=False)

    def content(self, state: ViewState, width: int, height: int) -> Content:
        wall, kinds = state.step_history(last=width)
        if wall.size == 0:
            return Content("no steps yet")
        parts: list = []
        # One character per step, coloured by kind, on a shared scale so prefill spikes stand out.
        line = spark(wall, width, lo=0.0, hi=float(np.nanmax(wall)))
        pad = width - len(wall)
        parts.append(line[:pad])
        for ch, kind in zip(line[pad:], kinds):
            parts.append((ch, KIND_STYLE.get(kind, "")))
        parts.append("\n")
        dist = state.step_distribution(bins=max(2, min(12, height - 2 - len(state.step_distribution()["by_kind"]))))
        for kind, d in dist["by_kind"].items():
            parts.append((f"{visible(kind):<8}", KIND_STYLE.get(kind, "") + " bold"))
            line = f"{d['count']:>5}× p50 {fmt3(d['p50'])} p90 {fmt3(d['p90'])} p99 {fmt3(d['p99'])} ms"
            if len(line) + 8 > width:
                line = f" {d['count']}× p50 {fmt3(d['p50'])} p99 {fmt3(d['p99'])} ms"
            extra = f" mean {fmt3(d['mean'])}±{fmt3(d['std'])}"
            parts.append(line + (extra if len(line) + len(extra) + 8 <= width else "") + "\n")
        counts, edges = dist["counts"], dist["edges"]
        under, over = dist.get("under", 0), dist.get("over", 0)
        # the steps outside p1–p99 get a row each, when there are any and room for a bin beside them
        rows = max(0, height - 1 - len(dist["by_kind"]))
        tails = [t for t in (("under", under), ("over", over)) if t[1]] if rows > 2 else []
        rows -= len(tails)
        if rows and counts.size:
            # Merge bins to fit the rows we have.
            groups = [g for g in np.array_split(np.arange(counts.size), min(rows, counts.size)) if g.size]
            label_w = 15
            bar_w = max(4, width - label_w - 6)
            top = max([int(counts[g].sum()) for g in groups] + [n for _, n in tails]) or 1
            rows_out = [(f"{fmt3(edges[g[0]])}–{fmt3(edges[g[-1] + 1])} ms", int(counts[g].sum())) for g in groups]
            for side, n in tails:
                label = f"< {fmt3(edges[0])} ms" if side == "under" else f"> {fmt3(edges[-1])} ms"
                rows_out.insert(0 if side == "under" else len(rows_out), (label, n))
            for label, n in rows_out:
                parts.append(f"{label:>{label_w}} ")
                parts.append((bar(n / top, bar_w), "$secondary"))
                parts.append(f" {n}\n")
        return Content.assemble(*parts).rstrip()
