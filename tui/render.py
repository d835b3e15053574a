"""Small text renderings shared by widgets: sparklines, bars, histograms, colour ramps, units."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from rich.markup import escape as _escape_markup
from rich.style import Style
from rich.text import Text
from textual.color import Color

# robust scales: pure numpy in engine/analysis/scales.py (the state computes them too, without Textual)
from llm_moments.engine.analysis.scales import ChartScale, Histogram, chart_scale, robust_histogram

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
    "table_styles",
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


def table_styles(widget, extra) -> dict[str, Style]:
    """A Line API table's Rich styles from the theme — base, head, cursor, muted, and ``extra(v)``'s —
    built once per theme (``render_line`` asks for them on every line)."""
    v = palette(widget.app)
    cached = getattr(widget, "_theme_styles", None)
    if cached is not None and cached[0] is v:
        return cached[1]
    fg = v.get("foreground", "white")
    styles = {
        "base": Style.parse(f"{fg} on {v.get('surface', 'black')}"),
        "head": Style.parse(f"bold {fg} on {v.get('panel', 'black')}"),
        "cursor": Style.parse(f"bold {fg} on {v.get('accent', 'blue')}"),
        "muted": Style.parse(v.get("foreground-muted", "grey50")),
        **extra(v),
    }
    widget._theme_styles = (v, styles)
    return styles


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


