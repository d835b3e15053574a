"""One layer in detail: moment history, histogram, sub-layers, cycles, the clock at its slowest."""

from __future__ import annotations

import math

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

from ..render import bar, chart, fmt_cycles, fmt_mhz, fmt_ms, visible
from ..state import ViewState


class LayerDetailScreen(Screen):
    BINDINGS = [Binding("escape,backspace", "app.pop_screen", "back"),
                Binding("left", "neighbour(-1)", "previous layer"),
                Binding("right", "neighbour(1)", "next layer")]
    DEFAULT_CSS = """
    LayerDetailScreen #title { height: 1; background: $panel; padding: 0 1; text-style: bold; }
    LayerDetailScreen Static.box { border: round $primary; border-title-color: $foreground; padding: 0 1; }
    LayerDetailScreen #history { height: 7; }
    LayerDetailScreen #row { height: auto; }
    LayerDetailScreen #row > Static { width: 1fr; height: auto; }
    LayerDetailScreen #slowest { height: auto; }
    """

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with VerticalScroll():
            yield Static(id="history", classes="box")
            with Horizontal(id="row"):
                yield Static(id="histogram", classes="box")
                yield Static(id="numbers", classes="box")
            yield Static(id="children", classes="box")
            yield Static(id="slowest", classes="box")
        yield Footer()

    def on_mount(self) -> None:
        for wid, title in (("history", "moment history"), ("histogram", "distribution"),
                           ("numbers", "time and cycles"), ("children", "sub-layers (share of this layer)"),
                           ("slowest", "slowest moments and the clock then")):
            self.query_one(f"#{wid}").border_title = title
        self.show(self.app.state)

    def action_neighbour(self, delta: int) -> None:
        n = len(self.app.state.layer_names)
        if n:
            self.index = (self.index + delta) % n
            self.show(self.app.state)

    def show(self, state: ViewState) -> None:
        if not state.stats or not state.stats.n_steps:
            return
        d = state.layer_detail(self.index)
        width = max(10, self.query_one("#history", Static).content_size.width)
        # every name is plain Content with its control characters shown: never markup, never a raw ESC
        self.query_one("#title", Static).update(Content(
            f"layer {self.index}: {visible(d['name'])}" + ("" if d["parent"] is None else
                                                           f"  (in {visible(state.layer_names[d['parent']])})")))
        hist = d["history_ms"]
        fin = hist[np.isfinite(hist)]
        hi = float(fin.max()) if fin.size else 0.0
        rows = chart(hist, width, 4, hi=hi or None)
        self.query_one("#history", Static).update(Content.assemble(
            ("\n".join(rows), "$primary"), "\n",
            f"newest {min(width, hist.size)} of {d['count']} steps · 0 to {fmt_ms(hi)} ms"))
        self.query_one("#histogram", Static).update(self._histogram(fin))
        self.query_one("#numbers", Static).update(Content.assemble(
            ("moments ", "bold"), f"{d['count']}\n",
            ("mean ", "bold"), f"{fmt_ms(d['mean_ms'])} ms   ", ("p50 ", "bold"), f"{fmt_ms(d['p50_ms'])} ms   ",
            ("p99 ", "bold"), f"{fmt_ms(d['p99_ms'])} ms\n",
            ("cycles ", "bold"), f"mean {fmt_cycles(d['mean_cycles'])}  last {fmt_cycles(d['last_cycles'])}  "
            f"per token {fmt_cycles(d['cycles_per_token'])}\n",
            ("at the reference clock ", "bold"),
            f"{fmt_ms(d['mean_ms_at_ref'])} ms mean at {fmt_mhz(d['ref_clock_mhz'])}\n",
            ("clock ", "bold"), visible(state.header.get("clock", {}).get("source")), "\n",
            *self._calls(d)))
        if d["children"]:
            lines = []
            for c in d["children"]:
                share = c["share_of_parent"]
                lines.append(f"{visible(c['name'])[-32:]:<32} {fmt_ms(c['mean_ms']):>8} ms "
                             f"{bar(share, 16)} {share * 100 if not math.isnan(share) else 0:5.1f}%")
            self.query_one("#children", Static).update(Content("\n".join(lines)))
        else:
            self.query_one("#children", Static).update(
                "no sub-layers timed at this depth (run with --depth sublayers or leaves)")
        rows = [f"{'step':>7} {'kind':<8} {'moment':>10} {'clock':>10}  throttle"]
        for s in d["slowest"]:
            step = visible(s["step"]) if s["step"] is not None else "?"
            rows.append(f"{step:>7} {visible(s['kind'] or '?'):<8} {fmt_ms(s['ms']):>7} ms "
                        f"{fmt_mhz(s['clock_mhz']):>10}  {visible(' '.join(map(str, s['throttle']))) or '—'}")
        self.query_one("#slowest", Static).update(Content("\n".join(rows)))

    @staticmethod
    def _calls(d: dict) -> list:
        """Calls per step (newest, median) and, for a layer whose calls ran inside another layer's
        moment, where its time went: the parts for Content.assemble."""
        if not np.isfinite(d["calls_median"]):
            parts: list = [("calls ", "bold"), "not recorded (older file)"]
        else:
            last = f"{d['calls_last']:.0f}" if np.isfinite(d["calls_last"]) else "?"
            parts = [("calls ", "bold"), f"{last} in the newest step · typical {d['calls_median']:g} per step "
                     f"(median of {d['calls_steps']})"]
        if d["nested_calls"] > 0:
            n, where = (d["nested_last"], " in the newest such step") if d["nested_steps"] > 1 else \
                (d["nested_calls"], "")
            how = "; a call counts to the layer open when it runs" if d["attribution"] == "enclosing" else ""
            parts += ["\n", ("runs inside other layers", "bold $warning"),
                      f" ({n:.0f}×{where}, in {d['nested_steps']} steps); its time is counted there{how}"]
        return parts

    @staticmethod
    def _histogram(values: np.ndarray, bins: int = 8) -> str:
        if values.size == 0:
            return "no moments"
        counts, edges = np.histogram(values, bins=bins)
        top = max(int(counts.max()), 1)
        return "\n".join(f"{fmt_ms(edges[i]):>8}–{fmt_ms(edges[i + 1]):<8} {bar(c / top, 14)} {c}"
                         for i, c in enumerate(counts))
