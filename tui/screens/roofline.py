"""The roofline, live: one point per layer (achieved FLOP/s against arithmetic intensity) under the
machine's roof (memory slope, then the flat compute roof, which follows the SM clock on a GPU)."""

from __future__ import annotations

import math

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

from ..render import si, visible
from ..state import ViewState

LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def plot(intensity: np.ndarray, achieved: np.ndarray, labels: list[str], peak_flops: float, peak_bw: float,
         width: int, height: int) -> list[list[tuple[str, str]]]:
    """Rows of (char, style) cells: axes, roof and labelled points on log-log scales."""
    ok = np.isfinite(intensity) & np.isfinite(achieved) & (intensity > 0) & (achieved > 0)
    ridge = peak_flops / peak_bw
    xs = np.log10(np.concatenate([intensity[ok], [ridge]]))
    ys = np.log10(np.concatenate([achieved[ok], [peak_flops]]))
    x0, x1 = xs.min() - 0.5, max(xs.max(), math.log10(ridge)) + 0.5
    y0, y1 = ys.min() - 0.5, math.log10(peak_flops) + 0.3
    grid = [[(" ", "")] * width for _ in range(height)]

    def col(x: float) -> int:
        return round((x - x0) / (x1 - x0) * (width - 1))

    def row(y: float) -> int:
        return height - 1 - round((y - y0) / (y1 - y0) * (height - 1))

    for c in range(width):  # the roof
        x = x0 + c / (width - 1) * (x1 - x0)
        roof = min(math.log10(peak_flops), x + math.log10(peak_bw))
        r = row(roof)
        if 0 <= r < height:
            grid[r][c] = ("─" if roof >= math.log10(peak_flops) else "╱", "$warning")
    for i in np.flatnonzero(ok):
        r, c = row(math.log10(achieved[i])), col(math.log10(intensity[i]))
        if 0 <= r < height and 0 <= c < width:
            grid[r][c] = (labels[i], "bold $accent")
    return grid


class RooflineScreen(Screen):
    BINDINGS = [Binding("escape,f", "app.pop_screen", "back"),
                Binding("a", "toggle_all", "sub-layers too")]
    DEFAULT_CSS = """
    RooflineScreen #title { height: 1; background: $panel; padding: 0 1; text-style: bold; }
    RooflineScreen Horizontal { height: 1fr; }
    RooflineScreen #plot { width: 1fr; height: 100%; border: round $primary; padding: 0 1; }
    RooflineScreen #legend { width: 50; max-width: 55%; height: 100%; border: round $primary; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.all_layers = False

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with Horizontal():
            yield Static(id="plot")
            yield Static(id="legend")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#plot").border_title = "roofline (log-log)"
        self.query_one("#legend").border_title = "layers"
        self.call_after_refresh(self._redraw)  # once laid out: the plot needs its size

    def on_resize(self) -> None:
        self.call_after_refresh(self._redraw)

    def _redraw(self) -> None:
        self.show(self.app.state)

    def action_toggle_all(self) -> None:
        self.all_layers = not self.all_layers
        self.show(self.app.state)

    def show(self, state: ViewState) -> None:
        title = self.query_one("#title", Static)
        work = state.work
        placed = work.per_layer() if work is not None else None
        if placed is None or not work.peak_flops or not work.peak_bw:
            why = ("no steps yet" if placed is None and work is not None and work.ok else
                   "this session has no roof (no calibration or datasheet) or no work counts")
            title.update(f"roofline: {why}")
            self.query_one("#plot", Static).update("")
            return
        scale = work.clock_scale
        peak = work.peak_flops * scale
        title.update(Content(f"roof: {si(peak, 'FLOP/s')} compute (× clock {scale:.2f}), {si(work.peak_bw, 'B/s')} "
                             f"memory · ridge {peak / work.peak_bw:.1f} FLOP/B · {visible(work.roof_source)}"))
        keep = [i for i, p in enumerate(state.stats.parents) if self.all_layers or p is None]
        keep = keep[: len(LABELS)]
        labels = [""] * len(state.layer_names)
        for n, i in enumerate(keep):
            labels[i] = LABELS[n]
        mask = np.zeros(len(labels), dtype=bool)
        mask[keep] = True
        intensity = np.where(mask, placed["intensity"], np.nan)
        plot_w = max(20, self.query_one("#plot", Static).content_size.width)
        plot_h = max(6, self.query_one("#plot", Static).content_size.height - 1)
        grid = plot(intensity, placed["flops_per_s"], labels, peak, work.peak_bw, plot_w, plot_h)
        parts: list = []
        for r in grid:
            for ch, style in r:
                parts.append((ch, style) if style else ch)
            parts.append("\n")
        parts.append((f"↑ FLOP/s (top {si(peak, 'FLOP/s')})   → FLOP/byte, log scales; ╱ memory roof, "
                      f"─ compute roof", "$text-muted"))
        self.query_one("#plot", Static).update(Content.assemble(*parts))
        rows = []
        rows.append(Content.assemble(("  layer                 FLOP/s    roof  bound\n", "$text-muted")))
        for i in keep:
            bound = "mem" if placed["memory_bound"][i] else "cmp"
            pct = placed["roof_pct"][i]
            rows.append(Content.assemble((labels[i], "bold $accent"),
                                         f" {visible(state.layer_names[i])[-20:]:<20} "
                                         f"{si(placed['flops_per_s'][i], ''):>8} "
                                         f"{'—' if not np.isfinite(pct) else f'{pct:.0f}%':>5}  {bound}\n"))
        self.query_one("#legend", Static).update(Content.assemble(*rows) if rows else "")
