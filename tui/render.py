"""Small text renderings shared by widgets: sparklines, bars, histograms, colour ramps, units."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.markup import escape as _escape_markup
from rich.text import Text
from textual.color import Color

# every string from a recording, a model or the engine is drawn through ``visible`` (control
# characters shown, engine/output/sanitize.py) and never as markup: widgets build Content / Text
# from plain parts; a DataTable cell is a ``cell`` (plain Text); where a string goes through markup
# (Static.update(str), border titles, notify) it passes ``safe_markup``
from llm_moments.engine.output.sanitize import visible

# the one set of unit formatters (engine/output/units.py), re-exported for the widgets
from llm_moments.engine.output.units import bar, fmt3, fmt_cycles, fmt_mhz, fmt_ms, na, si

__all__ = [
    "OVER_MARK",
    "ChartScale",
    "Histogram",
    "bar",
    "cell",
    "chart",
    "chart_scale",
    "fmt3",
    "fmt_cycles",
    "fmt_mhz",
    "fmt_ms",
    "na",
    "palette",
    "ramp",
    "robust_histogram",
    "safe_markup",
    "si",
    "spark",
    "visible",
]


def safe_markup(text: object) -> str:
    """Text for a place that reads markup: control characters shown, ``[`` escaped (literal)."""
    return _escape_markup(visible(text))


def cell(text: object) -> Text:
    """A DataTable cell from the recording: plain Text (a str cell would be read as markup)."""
    return Text(visible(text))


SPARK = "▁▂▃▄▅▆▇█"


def spark(values: Sequence[float] | np.ndarray, width: int, lo: float | None = None,
          hi: float | None = None) -> str:
    """The newest ``width`` values as block characters (NaN: a space), scaled to lo..hi."""
    v = np.asarray(values, dtype=np.float64)[-width:] if width > 0 else np.zeros(0)
    if v.size == 0:
        return " " * max(width, 0)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return " " * width
    lo = float(finite.min()) if lo is None else lo
    hi = float(finite.max()) if hi is None else hi
    span = hi - lo
    chars = []
    for x in v:
        if not math.isfinite(x):
            chars.append(" ")
        elif span <= 0:
            chars.append(SPARK[3])
        else:
            chars.append(SPARK[min(7, max(0, int((x - lo) / span * 7.999)))])
    return "".join(chars).rjust(width)


def ramp(low: str, high: str, fraction: float) -> str:
    """Hex colour between two theme colours (for the heatmap)."""
    a, b = Color.parse(low), Color.parse(high)
    return a.blend(b, max(0.0, min(1.0, fraction))).hex


_palette_cache: dict[tuple[str, int], dict[str, str]] = {}


def palette(app) -> dict[str, str]:
    """The theme's variables as plain #rrggbb (alpha blended over the background) for Rich styles.

    Line API widgets paint Segments, which need concrete colours; cached per theme.
    """
    variables = app.theme_variables
    key = (app.theme, id(variables))
    cached = _palette_cache.get(key)
    if cached is not None:
        return cached
    background = Color.parse(variables.get("background", "#000000"))
    out = {}
    for name, value in variables.items():
        try:
            color = Color.parse(value)
        except Exception:
            continue
        out[name] = (background + color).hex6 if color.a < 1 else color.hex6
    _palette_cache.clear()
    _palette_cache[key] = out
    return out


OVER_MARK = "▲"   # a value above a chart's scale: drawn at the top, counted and labelled beside


def chart(values: Sequence[float] | np.ndarray, width: int, height: int, hi: float | None = None) -> list[str]:
    """A bar chart of the newest ``width`` values, ``height`` rows tall (top row first), from 0.

    A value above ``hi`` (a robust scale, ``chart_scale``) is a full bar topped by ``OVER_MARK``."""
    v = np.asarray(values, dtype=np.float64)[-width:] if width > 0 else np.zeros(0)
    finite = v[np.isfinite(v)]
    top = float(finite.max()) if hi is None and finite.size else (hi or 0.0)
    rows = []
    with np.errstate(invalid="ignore", over="ignore"):
        levels = np.where(np.isfinite(v), np.minimum(v / top, 2.0) * height * 8 if top > 0 else 0, 0).astype(int)
        over = np.isfinite(v) & (v > top * (1 + 1e-9)) if top > 0 else np.zeros(v.shape, dtype=bool)
    for r in range(height - 1, -1, -1):
        line = []
        for lv, ov in zip(levels, over):
            if ov and r == height - 1:
                line.append(OVER_MARK)
                continue
            part = lv - r * 8
            line.append("█" if part >= 8 else (" " if part <= 0 else SPARK[part - 1]))
        rows.append("".join(line).rjust(width))
    return rows


# -- robust scales: one hiccup among thousands of moments must not set the scale ---------------------


@dataclass
class ChartScale:
    """A chart's top, and the values above it (outliers: drawn as ``OVER_MARK``, never the scale)."""

    hi: float            # the scale's top: the largest value at or below the fence (0 for no values)
    fence: float         # values above this are outliers
    over: int            # how many values are above the fence
    over_max: float      # the largest of them (NaN when none)


def chart_scale(values: Sequence[float] | np.ndarray, lo_q: float = 0.5, hi_q: float = 99.5) -> ChartScale:
    """The scale of a history chart from the p0.5–p99.5 range rather than the extremes.

    Fence = p99.5 + max(10 % of p99.5, half the p0.5–p99.5 spread): what lies above it is an outlier,
    counted and labelled; the chart's top is the largest value below the fence, so a steady series fills
    the chart. With few values (a percentile is then the extreme itself) nothing is fenced off."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return ChartScale(0.0, 0.0, 0, math.nan)
    p_lo, p_hi = np.percentile(finite, [lo_q, hi_q])
    fence = float(p_hi + max(0.1 * abs(p_hi), 0.5 * (p_hi - p_lo)))
    above = finite > fence
    n_over = int(above.sum())
    if n_over == 0:
        return ChartScale(float(finite.max()), fence, 0, math.nan)
    return ChartScale(float(finite[~above].max()) if n_over < finite.size else fence, fence, n_over,
                      float(finite[above].max()))


@dataclass
class Histogram:
    """Bins over a robust range, with what falls below / above it counted on its own."""

    edges: np.ndarray    # bins + 1 edges (log-spaced when ``log``)
    counts: np.ndarray
    under: int           # values below edges[0]
    over: int            # values above edges[-1]
    under_min: float     # the smallest of them (NaN when none)
    over_max: float      # the largest of them (NaN when none)
    log: bool

    @property
    def populated(self) -> int:
        return int((self.counts > 0).sum())


def robust_histogram(values: Sequence[float] | np.ndarray, bins: int = 10, lo_q: float = 1.0,
                     hi_q: float = 99.0, log_span: float = 8.0) -> Histogram:
    """``bins`` bins over p1–p99 (log-spaced when p99 / p1 > ``log_span``: prefill and decode together),
    plus an underflow and an overflow count: extremes are shown, never the range."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return Histogram(np.zeros(0), np.zeros(0, dtype=np.int64), 0, 0, math.nan, math.nan, False)
    if finite.size < 100:  # p1 / p99 of a few values are the extremes themselves: take the range
        lo_q, hi_q = 0.0, 100.0
    lo, hi = (float(x) for x in np.percentile(finite, [lo_q, hi_q]))
    if hi <= lo:  # one value (or nearly): a narrow range around it
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    log = lo > 0 and hi / lo > log_span
    edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
    inside = finite[(finite >= lo) & (finite <= hi)]
    counts, _ = np.histogram(inside, bins=edges)
    below, above = finite[finite < lo], finite[finite > hi]
    return Histogram(edges, counts, int(below.size), int(above.size),
                     float(below.min()) if below.size else math.nan,
                     float(above.max()) if above.size else math.nan, log)

