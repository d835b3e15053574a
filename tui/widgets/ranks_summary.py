"""One row per rank: host, device, its newest clock sample, steps, step p50 against the worst rank's,
and whether it still runs. Host and device names come from the ranks' headers: shown inert (visible)."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.widgets import Static

from ..rank_state import RankView, clock_text
from ..render import fmt_ms, visible


class RankSummary(Static):
    DEFAULT_CSS = """
    RankSummary { height: auto; max-height: 12; background: $panel; padding: 0 1; }
    """

    def show(self, view: RankView | None, note: str | None = None) -> None:
        self.update(self.render_text(view, note))

    @staticmethod
    def render_text(view: RankView | None, note: str | None = None) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        if view is None:
            t.append("waiting for the ranks…")
            return t
        n = len(view.ranks)
        world = view.world_size or n
        t.append(f"{n} of {world} ranks", style="bold")
        if view.missing:
            t.append(f" (missing: {', '.join(map(str, view.missing[:8]))}{' …' if len(view.missing) > 8 else ''})",
                     style="bold")
        t.append("  culprit = slowest median compute (moment − collective waits"
                 f"{'' if view.has_comm else ', none recorded here'})")
        if note:
            t.append(f"  · {visible(note)}")
        t.append("\n")
        t.append(f"{'rank':<10}{'host':<16}{'device':<22}{'clock':<22}{'steps':>7}{'step p50':>11}"
                 f"{'vs worst':>10}  state", style="bold")
        for k, r in enumerate(view.ranks):
            t.append("\n")
            worst = " (worst)" if r == view.worst_rank and n > 1 else ""
            host = visible(view.hosts[k] or "—")[:15]
            dev = visible(view.devices[k] or "—")[:21]
            p50 = view.step_p50_ms[k]
            vs = view.vs_worst_pct[k]
            state = view.ended[k] or "running"
            t.append(f"{f'{r}{worst}':<10}{host:<16}{dev:<22}{clock_text(view.clocks[k])[:21]:<22}"
                     f"{view.steps[k]:>7}{(fmt_ms(p50) + ' ms') if np.isfinite(p50) else '—':>11}"
                     f"{(f'{vs:+.1f}%') if np.isfinite(vs) else '—':>10}  ")
            t.append(state, style="bold" if view.ended[k] not in (None, "completed") else "")
        return t
