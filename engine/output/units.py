"""The one set of unit formatters: CLI text, Markdown, HTML and the terminal UI all write numbers
through these. A missing value (None, NaN, inf) is "—" (or "n/a" where a device does not report it).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "bar",
    "finite",
    "fmt3",
    "fmt_cycles",
    "fmt_mhz",
    "fmt_ms",
    "fmt_scaled",
    "na",
    "params",
    "pct",
    "share_bar",
    "si",
    "signed_pct",
]


def finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_ms(ms: float | None) -> str:
    """Milliseconds: 123.5, 1.235, 0.0123."""
    if not finite(ms):
        return "—"
    if ms >= 100:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.3f}"
    return f"{ms:.4f}"


def fmt3(x: float | None) -> str:
    """A number to about three significant digits (compact tables and panels); — when missing."""
    if not finite(x):
        return "—"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return "0" if a == 0 else f"{x:.3g}"


def fmt_scaled(x: Any, scale: float = 1.0) -> str:
    """x / scale to three significant digits (1.2e9 with scale 1e9: "1.20")."""
    return fmt3(float(x) / scale) if finite(x) else "—"


def fmt_cycles(c: float | None) -> str:
    """Cycles with an SI suffix: 1.23 M, 456 k; "n/a" without a clock."""
    if not finite(c):
        return "n/a"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(c) >= scale:
            return f"{c / scale:.2f} {unit}"
    return f"{c:.0f}"


def na(value: float | None, fmt: str = "{:.0f}", unit: str = "") -> str:
    """A value with its unit, or "n/a" when the device does not report it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value) + unit


def fmt_mhz(mhz: float | None) -> str:
    return na(mhz, "{:.0f}", " MHz")


def si(v: float | None, unit: str = "") -> str:
    """1.2e9 → "1.20 G" + unit (axis labels, tooltips, roof figures)."""
    if not finite(v):
        return "—"
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{fmt_scaled(v, scale)} {prefix}{unit}".rstrip()
    if abs(v) >= 1 or v == 0:
        return f"{fmt3(v)} {unit}".rstrip()
    return f"{v:.3g} {unit}".rstrip()


def pct(fraction: Any, digits: int = 1) -> str:
    """A fraction as a percentage number without the sign: 0.123 → "12.3"."""
    return f"{float(fraction) * 100:.{digits}f}" if finite(fraction) else "—"


def signed_pct(x: float | None) -> str:
    """A change in per cent: "+3.0%", "-12.5%"."""
    return f"{x:+.1f}%" if finite(x) else "—"


def params(n: Any) -> str:
    if not finite(n):
        return "? params"
    n = float(n)
    if n >= 1e9:
        return f"{n / 1e9:.2f} B params"
    if n >= 1e6:
        return f"{n / 1e6:.1f} M params"
    return f"{n:,.0f} params"


def bar(fraction: float | None, width: int) -> str:
    """A horizontal bar of ``width`` cells filled to ``fraction`` (eighths of a cell)."""
    if width <= 0:
        return ""
    if not finite(fraction):
        return " " * width
    cells = max(0.0, min(1.0, fraction)) * width
    full = int(cells)
    rest = int((cells - full) * 8)
    return ("█" * full + ("▏▎▍▌▋▊▉"[rest - 1] if rest and full < width else "")).ljust(width)


def share_bar(share: float | None, width: int = 10) -> str:
    """The summary table's share bar; empty for a layer that never ran."""
    return bar(share, width) if finite(share) else ""


def json_safe(x: Any) -> Any:
    """NaN / inf (a layer that never fired) become null, in nested dicts and lists: JSON has no NaN."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
