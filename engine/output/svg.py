"""The report's pictures as inline SVG text: each top-level layer's share of the step, the step-time
histogram, the layers × steps heatmap and the roofline. Every piece of text goes through ``_esc``."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from llm_moments.engine.analysis.report import ReportData
from llm_moments.engine.output.sanitize import visible
from llm_moments.engine.output.units import finite, fmt_ms, fmt_scaled, pct, si

HEATMAP_STEPS = 400
HEATMAP_TITLED_CELLS = 20000  # above this, heatmap cells go without a tooltip each (page size)

# colours: one place, used by the page's CSS and the pictures alike
C_TEXT, C_MUTED, C_GRID, C_AXIS = "#1a202c", "#4a5568", "#e2e8f0", "#718096"
C_BAR, C_UNATTRIBUTED, C_PREFILL, C_DECODE = "#3182ce", "#a0aec0", "#dd6b20", "#3182ce"
C_MISSING, C_TOP, C_SUB, C_ROOF = "#edf2f7", "#2b6cb0", "#90cdf4", "#c53030"
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")


def _decade(k: int) -> str:
    """10^k as an axis label: 0.01, 0.1, 1, 10, 100, 1 k, 10 k ... 100 T."""
    if k < 0:
        return f"{10.0 ** k:.{-k}f}"
    prefix, rest = ("", "k", "M", "G", "T", "P", "E")[min(k // 3, 6)], k - 3 * min(k // 3, 6)
    return f"{10 ** rest} {prefix}".rstrip()


def _tick(v: float) -> str:
    """A linear axis tick: 20, 2.5, 0.25 (no trailing zeros)."""
    return f"{v:.6g}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round ticks covering [lo, hi] (1, 2, 5 × 10^k steps)."""
    if not (finite(lo) and finite(hi)) or hi <= lo:
        return [lo] if finite(lo) else []
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _short(name: str, n: int) -> str:
    """Keep the end of a long layer name (the part that tells layers apart)."""
    return name if len(name) <= n else "…" + name[-(n - 1):]


def _esc(text: Any) -> str:
    """Text as SVG/XML character data: control characters made visible (sanitize.py; XML forbids most
    of them anyway), then ``& < > " '`` escaped."""
    return html.escape(visible(text), quote=True)


def _n(v: float) -> str:
    """A coordinate: at most two decimals, no trailing zeros."""
    s = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _title(text: str | None) -> str:
    return f"<title>{_esc(text)}</title>" if text else ""


def _attrs(**kw: Any) -> str:
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{_esc(v)}"' for k, v in kw.items() if v is not None)


def _rect(x: float, y: float, w: float, h: float, fill: str, title: str | None = None, **kw: Any) -> str:
    tag = f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(max(w, 0))}" height="{_n(max(h, 0))}" fill="{fill}"{_attrs(**kw)}'
    return f"{tag}>{_title(title)}</rect>" if title else tag + "/>"


def _text(x: float, y: float, text: str, anchor: str = "start", **kw: Any) -> str:
    return (f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}"{_attrs(**kw)}>{_esc(text)}</text>')


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str = C_AXIS, **kw: Any) -> str:
    return f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" stroke="{stroke}"{_attrs(**kw)}/>'


def _circle(cx: float, cy: float, r: float, fill: str, title: str | None = None, **kw: Any) -> str:
    return f'<circle cx="{_n(cx)}" cy="{_n(cy)}" r="{_n(r)}" fill="{fill}"{_attrs(**kw)}>{_title(title)}</circle>'


def _svg(width: float, height: float, body: Iterable[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" height="{_n(height)}" '
            f'viewBox="0 0 {_n(width)} {_n(height)}" role="img" aria-label="{_esc(label)}" '
            f'font-family="Helvetica, Arial, sans-serif" font-size="11" fill="{C_TEXT}">'
            + "".join(body) + "</svg>")


def _text_w(text: str, size: float = 11) -> float:
    return len(text) * size * 0.6


def _mix(c1: str, c2: str, t: float) -> str:
    a = [int(c1[i:i + 2], 16) for i in (1, 3, 5)]
    b = [int(c2[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(a, b))


def _viridis(t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(t), len(VIRIDIS) - 2)
    return _mix(VIRIDIS[i], VIRIDIS[i + 1], t - i)


def svg_share_bars(d: ReportData) -> str:
    """Each top-level layer's share of the summed step time, plus what no layer covered."""
    rows = [(d.names[j], d.summary.layers[j].share, d.summary.layers[j].mean_ms, False) for j in d.top]
    un = 1 - d.summary.coverage if finite(d.summary.coverage) else float("nan")
    if finite(un) and un > 0:
        rows.append(("(unattributed)", un, d.summary.unattributed_ms_mean, True))
    label_w = min(max((_text_w(_short(r[0], 34)) for r in rows), default=60) + 12, 240)
    bar_h, gap, top, plot_w = 14, 4, 8, 420
    width, height = label_w + plot_w + 60, top + len(rows) * (bar_h + gap) + 8
    top_share = max((r[1] for r in rows if finite(r[1])), default=0) or 1.0
    body = []
    for i, (name, share, mean_ms, unattributed) in enumerate(rows):
        y = top + i * (bar_h + gap)
        body.append(_text(label_w - 8, y + bar_h - 3, _short(name, 34), "end",
                          fill=C_MUTED if unattributed else None))
        w = plot_w * share / top_share if finite(share) else 0
        tip = f"{name}: {pct(share, 2)} % of step time, mean {fmt_ms(mean_ms)} ms"
        body.append(_rect(label_w, y, w, bar_h, C_UNATTRIBUTED if unattributed else C_BAR, tip,
                          class_="unattributed" if unattributed else "bar"))
        body.append(_text(label_w + w + 4, y + bar_h - 3, f"{pct(share)} %" if finite(share) else "did not run"))
    return _svg(width, height, body, "share of step time per top-level layer")


def svg_histogram(d: ReportData) -> str:
    """Step wall times: prefill in one colour, decode / encode in another, stacked per bin."""
    lo, hi, p99 = d.wall_range()  # over every step (a sketch past its exact budget: see analysis/report.py)
    overflow = hi > 3 * p99 and p99 > lo  # a few huge steps would squash the rest into one bar
    top_edge = p99 * 1.05 if overflow else hi
    if top_edge <= lo:  # every step took the same time: one bar in the middle
        pad = max(abs(lo) * 0.05, 1e-3)
        lo, top_edge = lo - pad, top_edge + pad
    n_bins = int(min(40, max(8, math.sqrt(d.wall_count) * 2)))
    edges = np.linspace(lo, top_edge, n_bins + 1)
    by_kind = d.wall_histogram(edges)
    groups = [("prefill", C_PREFILL)] + [(k, C_DECODE) for k in ("decode", "encode", "?") if k in by_kind]
    counts = {kind: by_kind.get(kind, np.zeros(n_bins, dtype=np.int64)) for kind, _ in groups}
    stacked = sum(counts.values())
    yticks = _nice_ticks(0, max(int(stacked.max()), 1), 4)
    ymax = yticks[-1] if yticks[-1] >= stacked.max() else yticks[-1] + (yticks[-1] - yticks[-2])
    yticks = _nice_ticks(0, ymax, 4)
    ml, mr, mt, mb, pw, ph = 60, 16, 26, 40, 620, 200
    x_of = lambda v: ml + (v - lo) / (top_edge - lo) * pw
    y_of = lambda c: mt + ph - c / ymax * ph
    body = []
    for t in yticks:
        if t == int(t):
            body += [_line(ml, y_of(t), ml + pw, y_of(t), C_GRID), _text(ml - 5, y_of(t) + 4, f"{int(t)}", "end")]
    bw = pw / n_bins
    for b in range(n_bins):
        base = 0
        for kind, colour in groups:
            c = int(counts[kind][b])
            if not c:
                continue
            last = overflow and b == n_bins - 1
            rng = f"{fmt_ms(edges[b])}–{fmt_ms(edges[b + 1])} ms" + (" and above" if last else "")
            body.append(_rect(x_of(edges[b]) + 0.5, y_of(base + c), bw - 1, c / ymax * ph, colour,
                              f"{kind}: {c} step{'s' * (c != 1)} in {rng}", class_="bar"))
            base += c
    body.append(_line(ml, mt + ph, ml + pw, mt + ph))
    for t in _nice_ticks(lo, top_edge, 6):
        body += [_line(x_of(t), mt + ph, x_of(t), mt + ph + 4), _text(x_of(t), mt + ph + 16, _tick(t), "middle")]
    body.append(_text(ml + pw / 2, mt + ph + 32, "step time (ms)" + (f"; last bar: ≥ {fmt_ms(edges[-2])} ms, "
                                                                       f"up to {fmt_ms(hi)} ms" if overflow else ""),
                      "middle", fill=C_MUTED))
    body.append(_text(12, mt + ph / 2, "steps", "middle", fill=C_MUTED, transform=f"rotate(-90 12 {_n(mt + ph / 2)})"))
    x = ml
    for kind, colour in groups:
        if counts[kind].sum():
            body += [_rect(x, 6, 10, 10, colour), _text(x + 14, 15, f"{kind} ({int(counts[kind].sum())})")]
            x += 30 + _text_w(f"{kind} ({int(counts[kind].sum())})")
    return _svg(ml + pw + mr, mt + ph + mb, body, "histogram of step times")


def svg_heatmap(d: ReportData) -> str:
    """Top-level layers (rows) × the last steps (columns); colour = moment time on a log scale."""
    top = d.top
    first = max(len(d.table) - HEATMAP_STEPS, 0)  # d.table: the newest steps only
    m = d.table.ms[first:, top]
    n_steps, n_rows = m.shape
    positive = m[np.isfinite(m) & (m > 0)]
    lo, hi = (float(positive.min()), float(positive.max())) if positive.size else (1e-3, 1.0)
    if hi <= lo:
        hi = lo * 1.01
    llo, lhi = math.log10(lo), math.log10(hi)
    label_w = min(max((_text_w(_short(d.names[j], 28)) for j in top), default=40) + 10, 200)
    row_h = max(3.0, min(16.0, 360.0 / max(n_rows, 1)))
    label_every = max(1, math.ceil(11 / row_h))
    pw = 760.0
    cw = pw / max(n_steps, 1)
    mt, strip = 18, 5
    grid_top = mt + strip + 3
    ph = row_h * n_rows
    legend_y = grid_top + ph + 34
    titled = n_steps * n_rows <= HEATMAP_TITLED_CELLS
    body = ['<g shape-rendering="crispEdges">']
    kinds, indices = d.table.kind[first:], [int(k) if k >= 0 else None for k in d.table.index[first:]]
    for i, kind in enumerate(kinds):  # prefill marks above the grid
        if kind == "prefill":
            body.append(_rect(label_w + i * cw, mt, cw + 0.3, strip, C_PREFILL, f"step {indices[i]}: prefill",
                              class_="kind"))
    for r, j in enumerate(top):
        y = grid_top + r * row_h
        for i in range(n_steps):
            v = m[i, r]
            ran = math.isfinite(v)
            colour = _viridis((math.log10(max(v, lo)) - llo) / (lhi - llo)) if ran else C_MISSING
            tip = None
            if titled:
                tip = (f"{d.names[j]} · step {indices[i]} ({kinds[i]}) · "
                       + (f"{fmt_ms(v)} ms" if ran else "did not run"))
            body.append(_rect(label_w + i * cw, y, cw + 0.3, row_h + 0.3, colour, tip, class_="cell"))
    body.append("</g>")
    for r, j in enumerate(top):
        if r % label_every == 0:
            y = grid_top + r * row_h + row_h / 2 + 4
            body.append(f'<text x="{_n(label_w - 6)}" y="{_n(y)}" text-anchor="end">{_title(d.names[j])}'
                        f"{_esc(_short(d.names[j], 28))}</text>")
    axis_y = grid_top + ph
    column = {k: i for i, k in enumerate(indices)}
    known = [k for k in column if k is not None]
    if known:
        for t in _nice_ticks(min(known), max(known), 6):
            i = column.get(int(t))
            if i is not None:
                x = label_w + (i + 0.5) * cw
                body += [_line(x, axis_y, x, axis_y + 4), _text(x, axis_y + 15, str(int(t)), "middle")]
    body.append(_text(label_w + pw, 12, f"last {n_steps} of {d.n_steps} steps · orange marks: prefill", "end",
                      fill=C_MUTED, font_size="10"))
    body.append(_text(label_w + pw / 2, axis_y + 28, "step", "middle", fill=C_MUTED))
    # legend: the log colour scale with decade ticks (or its two ends), and the "did not run" grey
    lx, lw = label_w, 300
    body.append('<defs><linearGradient id="moments-heat-scale" x1="0" x2="1" y1="0" y2="0">'
                + "".join(f'<stop offset="{_n(k / (len(VIRIDIS) - 1))}" stop-color="{c}"/>'
                          for k, c in enumerate(VIRIDIS)) + "</linearGradient></defs>")
    body.append(_rect(lx, legend_y, lw, 10, "url(#moments-heat-scale)", f"log scale {fmt_ms(lo)}–{fmt_ms(hi)} ms",
                      class_="legend"))
    decades = [k for k in range(math.ceil(llo - 1e-9), math.floor(lhi + 1e-9) + 1)]
    marks = [(float(k), _decade(k)) for k in decades] if len(decades) >= 2 else [(llo, fmt_ms(lo)), (lhi, fmt_ms(hi))]
    for lv, text in marks:
        x = lx + (lv - llo) / (lhi - llo) * lw
        body += [_line(x, legend_y + 10, x, legend_y + 14), _text(x, legend_y + 25, text, "middle")]
    body.append(_text(lx + lw + 12, legend_y + 9, "moment (ms), log scale", fill=C_MUTED))
    body.append(_rect(lx + lw + 160, legend_y, 14, 10, C_MISSING, stroke=C_AXIS, stroke_width="0.5"))
    body.append(_text(lx + lw + 178, legend_y + 9, "did not run"))
    return _svg(label_w + pw + 12, legend_y + 32, body, "heatmap of moments: layers by steps")


def svg_roofline(d: ReportData) -> tuple[str, list[str]]:
    """Log-log roofline: intensity (FLOP/B) vs achieved FLOP/s; returns the SVG and the layers left off."""
    w = d.work.placed
    assert w is not None and d.work.has_roof
    compute = float(d.work.roof.peak_flops) * d.work.clock_scale
    bw = float(d.work.roof.peak_bw)
    ridge = compute / bw
    pts, left_off = [], []
    for j, name in enumerate(d.names):
        x, y = w["intensity"][j], w["flops_per_s"][j]
        if finite(x) and finite(y) and x > 0 and y > 0:
            pts.append((j, float(x), float(y)))
        elif d.parents[j] is None:
            left_off.append(name)
    xs = [p[1] for p in pts] + [ridge]
    ys = [p[2] for p in pts] + [compute]
    x_lo, x_hi = math.floor(math.log10(min(xs) / 2)), math.ceil(math.log10(max(xs) * 2))
    y_lo, y_hi = math.floor(math.log10(min(ys) / 2)), math.ceil(math.log10(max(ys) * 2))
    ml, mr, mt, mb, pw, ph = 64, 28, 16, 44, 600, 340
    X = lambda v: ml + (math.log10(v) - x_lo) / (x_hi - x_lo) * pw
    Y = lambda v: mt + ph - (math.log10(v) - y_lo) / (y_hi - y_lo) * ph
    body = []
    for k in range(x_lo, x_hi + 1):
        body += [_line(X(10 ** k), mt, X(10 ** k), mt + ph, C_GRID),
                 _text(X(10 ** k), mt + ph + 15, _decade(k), "middle")]
    for k in range(y_lo, y_hi + 1):
        body += [_line(ml, Y(10 ** k), ml + pw, Y(10 ** k), C_GRID),
                 _text(ml - 6, Y(10 ** k) + 4, _decade(k), "end")]
    body.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="{C_AXIS}"/>')
    body.append(_text(ml + pw / 2, mt + ph + 32, "arithmetic intensity (FLOP / byte)", "middle", fill=C_MUTED))
    body.append(_text(14, mt + ph / 2, "achieved FLOP/s", "middle", fill=C_MUTED,
                      transform=f"rotate(-90 14 {_n(mt + ph / 2)})"))
    # the roof: bandwidth × intensity up to the ridge, then flat at the compute peak (clipped to the plot)
    x0 = max(10.0 ** x_lo, 10.0 ** y_lo / bw)
    roof_pts = [(x0, bw * x0), (ridge, compute), (10.0 ** x_hi, compute)]
    body.append(f'<polyline fill="none" stroke="{C_ROOF}" stroke-width="2" class="roof" points="'
                + " ".join(f"{_n(X(a))},{_n(Y(b))}" for a, b in roof_pts) + f'">{_title("roof")}</polyline>')
    body.append(_line(X(ridge), Y(compute), X(ridge), mt + ph, C_ROOF, stroke_dasharray="3 3", stroke_opacity="0.5"))
    mem_label = f"memory {si(bw, 'B/s')}"
    angle = math.degrees(math.atan2(Y(compute) - Y(x0 * bw), X(ridge) - X(x0)))
    lx = X(x0) + (X(ridge) - X(x0)) * 0.2
    ly = Y(x0 * bw) + (Y(compute) - Y(x0 * bw)) * 0.2 - 6
    body.append(_text(lx, ly, mem_label, fill=C_ROOF, transform=f"rotate({_n(angle)} {_n(lx)} {_n(ly)})"))
    scaled = f" at {d.work.clock_scale * 100:.0f} % clock" if abs(d.work.clock_scale - 1) > 1e-3 else ""
    body.append(_text(ml + pw - 4, Y(compute) - 6, f"compute {si(compute, 'FLOP/s')}{scaled}", "end", fill=C_ROOF))
    # points: sub-layers first (lighter, beneath), then top-level ones with labels
    placed_boxes: list[tuple[float, float, float, float]] = []
    for sub in (True, False):
        for j, x, y in pts:
            if (d.parents[j] is not None) != sub:
                continue
            bound = "memory" if w["memory_bound"][j] else "compute"
            tip = (f"{d.names[j]}\nintensity {fmt_scaled(x)} FLOP/B"
                   f"\nachieved {si(y, 'FLOP/s')}, {si(w['bytes_per_s'][j], 'B/s')}"
                   f"\n{fmt_scaled(w['roof_pct'][j])} % of roof, {bound} bound"
                   f"\nfloor {fmt_ms(w['floor_ms'][j])} ms per run")
            body.append(_circle(X(x), Y(y), 3.5 if sub else 5, C_SUB if sub else C_TOP, tip,
                                class_="pt sub" if sub else "pt top", stroke="#fff", stroke_width="1"))
    body += _point_labels(d, [p for p in pts if d.parents[p[0]] is None], X, Y, (ml, mt, ml + pw, mt + ph),
                          placed_boxes)
    return _svg(ml + pw + mr, mt + ph + mb, body, "roofline of the layers"), left_off


def _point_labels(d: ReportData, pts: list[tuple[int, float, float]], X, Y, frame, boxes) -> list[str]:
    """Labels for top-level points: points on top of each other share one label ('h.0 … h.5 (6)')."""
    clusters: list[list[tuple[int, float, float]]] = []
    for p in pts:
        for c in clusters:
            if math.hypot(X(c[0][1]) - X(p[1]), Y(c[0][2]) - Y(p[2])) < 7:
                c.append(p)
                break
        else:
            clusters.append([p])
    out = []
    x0, y0, x1, y1 = frame
    for c in sorted(clusters, key=lambda c: -len(c)):
        first, last = d.names[c[0][0]], d.names[c[-1][0]]
        label = _short(first, 26) if len(c) == 1 else f"{_short(first, 22)} … {last.rsplit('.', 1)[-1]} ({len(c)})"
        px, py = X(c[0][1]), Y(c[0][2])
        tw, th = _text_w(label, 10), 11
        choice = None
        for dx, dy, anchor in ((8, 4, "start"), (-8, 4, "end"), (0, -9, "middle"), (0, 16, "middle"),
                               (8, -8, "start"), (8, 14, "start"), (-8, -8, "end"), (-8, 14, "end")):
            bx = px + dx - (tw if anchor == "end" else tw / 2 if anchor == "middle" else 0)
            box = (bx, py + dy - th + 2, bx + tw, py + dy + 2)
            inside = box[0] >= x0 and box[2] <= x1 and box[1] >= y0 and box[3] <= y1
            clear = all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in boxes)
            if inside and clear:
                choice = (px + dx, py + dy, anchor, box)
                break
        if choice is None:  # crowded: put it to the right anyway, the tooltip holds the details
            choice = (px + 8, py + 4, "start", (px + 8, py - 5, px + 8 + tw, py + 6))
        boxes.append(choice[3])
        out.append(_text(choice[0], choice[1], label, choice[2], font_size="10", class_="label"))
    return out
