"""Header: model (with a mark when weights are random), device, dtype, depth, state and rates."""

from __future__ import annotations

import math

from rich.text import Text

from llm_moments.engine.core.overhead import estimate_pct, fmt_pct

from ..render import fmt_ms, visible
from ..state import ViewState
from .quiet import QuietStatic


def overhead_pct(state: ViewState) -> float | None:
    """The monitor's own cost as a share of a step: the newest measured figure (``overhead`` records),
    else the header's estimate at start, else that estimate over the step p50 seen so far."""
    o = state.overhead
    if not isinstance(o, dict):
        return None
    pct = o.get("est_pct")
    if isinstance(pct, (int, float)) and math.isfinite(pct):
        return float(pct)
    pair, hooks = o.get("hook_pair_us"), o.get("hooks_per_step")
    if not isinstance(pair, (int, float)) or not isinstance(hooks, (int, float)):
        return None
    p50, _ = state.step_percentiles()
    worker = o.get("worker_us_per_step")
    return estimate_pct(pair, hooks, worker if isinstance(worker, (int, float)) else None,
                        p50 if math.isfinite(p50) else None)


def overhead_text(state: ViewState) -> str | None:
    """'monitor ≈ 0.7 % of a step' (None when the session does not say)."""
    pct = overhead_pct(state)
    return None if pct is None else f"monitor ≈ {fmt_pct(pct)} of a step"


class HeaderBar(QuietStatic):
    DEFAULT_CSS = """
    HeaderBar { height: 2; background: $panel; color: $foreground; padding: 0 1; }
    """

    def show(self, state: ViewState, note: str | None = None) -> None:
        self.update(self.render_text(state, note), layout=False)

    @staticmethod
    def state_word(state: ViewState) -> str:
        if state.error:
            return "error"
        if state.mode == "replay":
            return "replay"
        if state.footer is not None and state.mode == "live":
            return "ended"
        words = ["watch"] if state.mode == "watch" else []
        words.append("paused" if state.paused else ("running" if state.mode == "live" else ""))
        if state.recording_path:
            words.append("● rec")
        return " ".join(w for w in words if w)

    def render_text(self, state: ViewState, note: str | None) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        h = state.header
        if h is None:
            t.append("llm-moments ", style="bold")
            t.append(visible(state.loading or state.error or "waiting for the session…"))
            return t
        m, d = h.get("model", {}), h.get("device", {})
        t.append(visible(m.get("name")), style="bold")
        if m.get("random_weights"):
            t.append(" [RANDOM WEIGHTS]", style="bold reverse")
        dev = d.get("name") or ("CPU" if d.get("kind") == "cpu" else d.get("kind"))
        t.append(f"  {visible(dev)}  {visible(m.get('dtype'))}  depth {visible(h.get('depth'))}  ")
        word = self.state_word(state)
        t.append(f" {word} ", style="reverse bold")
        t.append("\n")
        sps, tps = state.rates()
        p50, p99 = state.step_percentiles()
        t.append(f"steps {state.steps_total}  {sps:.1f} steps/s  {tps:.0f} tok/s  "
                 f"step p50 {fmt_ms(p50)} ms  p99 {fmt_ms(p99)} ms")
        clock = h.get("clock", {}).get("source")
        t.append(f"  clock {visible(clock)}")
        if state.ranks is not None and len(state.ranks.headers) > 1:   # a sharded session: this is one rank
            t.append(f"  · rank {state.ranks.primary} of {len(state.ranks.headers)} (w: all ranks)", style="bold")
        cost = overhead_text(state)
        if cost:
            t.append(f"  · {cost}", style="dim")
        if note:
            t.append(f"  · {visible(note)}")
        if state.recording_path:
            t.append(f"  · rec {visible(state.recording_path)}")
        return t
