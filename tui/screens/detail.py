"""One layer in detail: moment history, histogram, sub-layers, cycles, the clock at its slowest.

Scales are robust (tui/render.py): the history chart's top comes from p0.5–p99.5 and the histogram's
bins span p1–p99, so one 80 ms hiccup among thousands of 0.8 ms moments is a marked, labelled outlier
(``▲``, an overflow count) instead of the scale that flattens everything else. ``w`` switches the
graph at the bottom between the clock and the power drawn (GPU) over the same recent samples.
``b`` (live sessions) turns ops mode on for this layer for a few steps (engine/core/ops.py): the
operators it ran, their calls, time and share of the layer, and what the mode cost while it was on.
"""

from __future__ import annotations

import math

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

from ..render import (
    OVER_MARK,
    bar,
    chart,
    chart_scale,
    fmt_cycles,
    fmt_mhz,
    fmt_ms,
    na,
    robust_histogram,
    spark,
    visible,
)
from ..state import ViewState
from ..widgets.quiet import QuietStatic


class LayerDetailScreen(Screen):
    BINDINGS = [Binding("escape,backspace", "app.pop_screen", "back"),
                Binding("left", "neighbour(-1)", "previous layer"),
                Binding("right", "neighbour(1)", "next layer"),
                Binding("w", "switch_graph", "clock / power"),
                Binding("b", "ops", "ops breakdown", show=False)]
    OPS_STEPS = 8
    DEFAULT_CSS = """
    LayerDetailScreen #title { height: 1; background: $panel; padding: 0 1; text-style: bold; }
    LayerDetailScreen Static.box { border: round $primary; border-title-color: $foreground; padding: 0 1; }
    LayerDetailScreen #history { height: 7; }
    LayerDetailScreen #row { height: auto; }
    LayerDetailScreen #row > Static { width: 1fr; height: auto; }
    LayerDetailScreen #slowest { height: auto; }
    LayerDetailScreen #clockgraph { height: auto; }
    LayerDetailScreen #ops { height: auto; display: none; }
    LayerDetailScreen #ops.-on { display: block; }
    """

    GRAPHS = ("clock", "power")

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.graph = "clock"
        self._ops_asked = False

    def compose(self) -> ComposeResult:
        # QuietStatic: a frame repaints only the lines that changed (issue #11: few bytes over SSH)
        yield QuietStatic(id="title")
        with VerticalScroll():
            yield QuietStatic(id="history", classes="box")
            with Horizontal(id="row"):
                yield QuietStatic(id="histogram", classes="box")
                yield QuietStatic(id="numbers", classes="box")
            yield QuietStatic(id="children", classes="box")
            yield QuietStatic(id="ops", classes="box")
            yield QuietStatic(id="slowest", classes="box")
            yield QuietStatic(id="clockgraph", classes="box")
        yield Footer()

    def on_mount(self) -> None:
        for wid, title in (("history", "moment history"), ("histogram", "distribution"),
                           ("numbers", "time and cycles"), ("children", "sub-layers (share of this layer)"),
                           ("slowest", "slowest moments and the clock then"),
                           ("ops", "operators (b: ops mode)")):
            self.query_one(f"#{wid}").border_title = title
        self.show(self.app.state)

    def action_neighbour(self, delta: int) -> None:
        n = len(self.app.state.layer_names)
        if n:
            self.index = (self.index + delta) % n
            self.show(self.app.state)

    def action_ops(self) -> None:
        start = getattr(self.app.source, "start_ops", None)
        if start is None or not getattr(self.app.source, "can_record", False):
            self.app.notify(f"ops mode is for live sessions; this is a {self.app.state.mode}", severity="warning")
            return
        try:
            start(self.index, self.OPS_STEPS)
        except Exception as exc:  # the engine is gone: say so, never crash the UI
            self.app.notify(str(exc), severity="error")
            return
        self._ops_asked = True
        self.show(self.app.state)
        self.app.notify(f"ops mode on for {self.OPS_STEPS} steps: this layer runs several times slower while on",
                        timeout=4)

    def action_switch_graph(self) -> None:
        self.graph = self.GRAPHS[(self.GRAPHS.index(self.graph) + 1) % len(self.GRAPHS)]
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
        # the scale from p0.5–p99.5 of the whole history: an outlier is marked and labelled, not the scale
        scale = chart_scale(fin)
        rows = chart(hist, width, 4, hi=scale.hi or None)
        over: list = []
        if scale.over:
            over = [" · ", (f"{OVER_MARK} {scale.over} above the scale, up to {fmt_ms(scale.over_max)} ms",
                            "bold $warning")]
        self.query_one("#history", Static).update(Content.assemble(
            ("\n".join(rows), "$primary"), "\n",
            f"newest {min(width, hist.size)} of {d['count']} steps · 0 to {fmt_ms(scale.hi)} ms", *over))
        self.query_one("#histogram", Static).update(self._histogram(fin, fence=scale.fence))
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
        ops_box = self.query_one("#ops", Static)
        ops_box.set_class(self.index in state.ops or self._ops_asked, "-on")  # shown once asked for
        ops_box.update(self._ops(state.ops.get(self.index), d["p50_ms"]))
        rows = [f"{'step':>7} {'kind':<8} {'moment':>10} {'clock':>10}  throttle"]
        for s in d["slowest"]:
            step = visible(s["step"]) if s["step"] is not None else "?"
            rows.append(f"{step:>7} {visible(s['kind'] or '?'):<8} {fmt_ms(s['ms']):>7} ms "
                        f"{fmt_mhz(s['clock_mhz']):>10}  {visible(' '.join(map(str, s['throttle']))) or '—'}")
        self.query_one("#slowest", Static).update(Content("\n".join(rows)))
        self._clock_graph(state, width)

    def _clock_graph(self, state: ViewState, width: int) -> None:
        """The clock, or (``w``) the power drawn, over the newest samples: what the moments ran at."""
        box = self.query_one("#clockgraph", QuietStatic)
        gpu = any("sm_clock_mhz" in s for s in list(state.samples)[-4:])
        if self.graph == "power":
            values = state.clock_history("power_w", last=width)
            box.set_title("power (w: clock)")
            if not values:
                box.update("power not reported by this device (NVML power is GPU only)")
                return
            box.update(Content.assemble((spark(values, width, lo=0), "$secondary"), "\n",
                                        f"now {na(values[-1], unit=' W')} · max {na(max(values), unit=' W')} "
                                        f"· newest {len(values)} samples"))
            return
        key = "sm_clock_mhz" if gpu else "clock_mhz"
        values = state.clock_history(key, last=width)
        box.set_title(("SM clock" if gpu else "clock") + " (w: power)")
        if not values:
            box.update("no clock samples")
            return
        box.update(Content.assemble((spark(values, width), "$primary"), "\n",
                                    f"now {fmt_mhz(values[-1])} · {fmt_mhz(min(values))} to {fmt_mhz(max(values))} "
                                    f"· newest {len(values)} samples"))

    @staticmethod
    def _ops(record: dict | None, usual_ms: float) -> Content | str:
        """The newest ops record of this layer: op, calls, time, share of the layer, FLOPs and GFLOP/s
        where the op has a FLOP formula ("—" where not: unknown, not zero); the mode's cost."""
        if not record:
            return "waiting for the operator times (ops mode starts with the next step)"
        from llm_moments.engine.core.ops import slowdown

        from ..render import fmt3, si

        span = record.get("layer_ms")
        ops = [o for o in record.get("ops") or [] if isinstance(o, dict)]
        lines = [f"{'operator':<28} {'calls':>6} {'ms':>9} {'share':>7} {'FLOPs':>9} {'GFLOP/s':>8}"]
        for o in ops[:20]:
            ms = o.get("ms")
            ms = float(ms) if isinstance(ms, (int, float)) and not isinstance(ms, bool) else math.nan
            share = ms / span if isinstance(span, (int, float)) and span > 0 else math.nan
            flops = o.get("flops")
            flops = float(flops) if isinstance(flops, (int, float)) and not isinstance(flops, bool) else math.nan
            rate = flops / (ms * 1e6) if math.isfinite(flops) and ms > 0 else math.nan  # FLOP per ms → GFLOP/s
            lines.append(f"{visible(o.get('name'))[-28:]:<28} {visible(o.get('calls')):>6} {fmt_ms(ms):>9} "
                         f"{share * 100 if math.isfinite(share) else 0:6.1f}% {si(flops):>9} {fmt3(rate):>8}")
        if len(ops) > 20:
            lines.append(f"… {len(ops) - 20} more")
        total = sum(float(o["ms"]) for o in ops if isinstance(o.get("ms"), (int, float)))
        factor = slowdown(record, usual_ms)
        cost = (f"ops mode: this layer runs ~{factor:.1f}× slower while on" if factor is not None
                else "ops mode: this layer runs several times slower while on")
        return Content.assemble(Content("\n".join(lines)), "\n",
                                f"step {visible(record.get('step'))} · Σ ops {fmt_ms(total)} ms of "
                                f"{fmt_ms(span)} ms with the mode on · ", (cost, "$warning"))

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
    def _histogram(values: np.ndarray, bins: int = 10, fence: float = math.inf) -> Content | str:
        """Bins over p1–p99 (log-spaced for a wide spread), the values below and above counted in
        their own rows; those above the chart's fence are outliers, marked with their largest value."""
        if values.size == 0:
            return "no moments"
        h = robust_histogram(values, bins=bins)
        top = max(int(h.counts.max()) if h.counts.size else 0, h.under, h.over, 1)
        lines: list = [f"{'< ' + fmt_ms(h.edges[0]):>17} {bar(h.under / top, 14)} {h.under}\n"]
        lines += [f"{fmt_ms(h.edges[i]):>8}–{fmt_ms(h.edges[i + 1]):<8} {bar(c / top, 14)} {c}\n"
                  for i, c in enumerate(h.counts)]
        lines.append(f"{'> ' + fmt_ms(h.edges[-1]):>17} {bar(h.over / top, 14)} {h.over}")
        outliers = int((values > fence).sum())
        if outliers:
            lines += ["\n", (f"{OVER_MARK} {outliers} outlier{'s' if outliers > 1 else ''}, up to "
                            f"{fmt_ms(float(values.max()))} ms", "bold $warning")]
        if h.log:
            lines += ["\n", ("log-spaced bins", "$text-muted")]
        return Content.assemble(*lines)
