"""A recording as a document: Markdown, or one self-contained HTML page with inline SVG pictures.

``moments report FILE --format md|html``. Both documents carry the same content: what ran where
(model, device, clock, depth, steps), the per-layer table (moments, cycles, share, and the work
columns: achieved FLOP/s and B/s, intensity, bound, % of roof, floor), step times by kind, coverage,
the top outlier moments and the recording's warnings. The HTML page adds four pictures: each
layer's share of the step, the step-time histogram, the layers × steps heatmap and the roofline.

No dependencies beyond numpy: the SVG is built as text by the small helpers below, every piece of
text from the recording goes through ``html.escape``, and the page works offline.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from llm_moments.engine.analysis.outliers import find_outliers
from llm_moments.engine.core.recording import Recording
from llm_moments.engine.output.text import fmt3, fmt_cycles, fmt_ms
from llm_moments.engine.core.roof import place
from llm_moments.engine.analysis.stats import Summary, summarize_recording
from llm_moments.engine.core.work import header_coeffs, step_work

MAX_OUTLIERS = 20
HEATMAP_STEPS = 400
HEATMAP_TITLED_CELLS = 20000  # above this, heatmap cells go without a tooltip each (page size)

# colours: one place, used by the CSS and the pictures alike
C_TEXT, C_MUTED, C_GRID, C_AXIS = "#1a202c", "#4a5568", "#e2e8f0", "#718096"
C_BAR, C_UNATTRIBUTED, C_PREFILL, C_DECODE = "#3182ce", "#a0aec0", "#dd6b20", "#3182ce"
C_MISSING, C_TOP, C_SUB, C_ROOF = "#edf2f7", "#2b6cb0", "#90cdf4", "#c53030"
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")


# -- numbers -------------------------------------------------------------------------------------


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _g(x: Any, scale: float = 1.0) -> str:
    """A value / scale with about three significant digits; — when missing."""
    return fmt3(float(x) / scale) if _finite(x) else "—"


def _pct(x: Any, digits: int = 1) -> str:
    return f"{float(x) * 100:.{digits}f}" if _finite(x) else "—"


def _si(v: float, unit: str = "") -> str:
    """1.2e9 → '1.2 G' (axis labels and tooltips)."""
    if not _finite(v):
        return "—"
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{_g(v, scale)} {prefix}{unit}".rstrip()
    if abs(v) >= 1 or v == 0:
        return f"{_g(v)} {unit}".rstrip()
    return f"{v:.3g} {unit}".rstrip()


def _decade(k: int) -> str:
    """10^k as an axis label: 0.01, 0.1, 1, 10, 100, 1 k, 10 k ... 100 T."""
    if k < 0:
        return f"{10.0 ** k:.{-k}f}"
    prefix, rest = ("", "k", "M", "G", "T", "P", "E")[min(k // 3, 6)], k - 3 * min(k // 3, 6)
    return f"{10 ** rest} {prefix}".rstrip()


def _tick(v: float) -> str:
    """A linear axis tick: 20, 2.5, 0.25 (no trailing zeros)."""
    return f"{v:.6g}"


def _params(n: Any) -> str:
    if not _finite(n):
        return "? params"
    n = float(n)
    if n >= 1e9:
        return f"{n / 1e9:.2f} B params"
    if n >= 1e6:
        return f"{n / 1e6:.1f} M params"
    return f"{n:,.0f} params"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round ticks covering [lo, hi] (1, 2, 5 × 10^k steps)."""
    if not (_finite(lo) and _finite(hi)) or hi <= lo:
        return [lo] if _finite(lo) else []
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _short(name: str, n: int) -> str:
    """Keep the end of a long layer name (the part that tells layers apart)."""
    return name if len(name) <= n else "…" + name[-(n - 1):]


# -- what the documents show ----------------------------------------------------------------------


@dataclass
class _Doc:
    rec: Recording
    header: dict[str, Any]
    names: list[str]
    parents: list[int | None]
    steps: list[dict[str, Any]]
    ms: np.ndarray                        # [steps, layers], NaN: did not run
    wall: np.ndarray                      # [steps]
    kinds: list[str]
    summary: Summary
    work: dict[str, np.ndarray] | None    # per layer: flops_per_s, bytes_per_s, intensity, roof_pct...
    work_note: str | None                 # why there are no work columns / no roofline
    has_roof: bool
    peak_flops: float | None
    peak_bw: float | None
    clock_scale: float
    outliers: list[dict[str, Any]]
    outliers_total: int
    warnings: list[str] = field(default_factory=list)

    @property
    def top(self) -> list[int]:
        return [j for j, p in enumerate(self.parents) if p is None]


def _analyze(rec: Recording) -> _Doc:
    header = rec.header
    names = [l.get("name", f"layer {j}") for j, l in enumerate(header.get("layers") or [])]
    parents = [l.get("parent") for l in header.get("layers") or []]
    n = len(names)
    steps = [s for s in rec.steps if len(s.get("layer_ms") or []) == n]
    ms = np.array([[np.nan if v is None else float(v) for v in s["layer_ms"]] for s in steps],
                  dtype=np.float64).reshape(len(steps), n)
    wall = np.array([float(s.get("wall_ms") or np.nan) for s in steps], dtype=np.float64)
    summary = summarize_recording(header, steps)
    work, note, has_roof, pf, pb, scale = _work(header, steps, ms)
    found = find_outliers(header, steps)
    found.sort(key=lambda o: o["ms"] - o["median_ms"], reverse=True)
    warnings = list(rec.warnings)
    for other in rec.others:
        if other.get("type") == "status" and other.get("level", "warning") != "info":
            msg = f"during the session: {other.get('message')}"
            if msg not in warnings:
                warnings.append(msg)
    dropped = len(rec.steps) - len(steps)
    if dropped:
        warnings.append(f"{dropped} step record(s) whose layer arrays do not match the header were left out")
    return _Doc(rec, header, names, parents, steps, ms, wall, [str(s.get("kind", "?")) for s in steps], summary,
                work, note, has_roof, pf, pb, scale, found[:MAX_OUTLIERS], len(found), warnings)


def _work(header: dict[str, Any], steps: list[dict[str, Any]], ms: np.ndarray):
    """Per-layer work over the whole recording: Σ FLOPs / Σ time of the steps where the layer ran."""
    roof = header.get("roof") or {}
    peak_flops, peak_bw = roof.get("peak_flops"), roof.get("peak_bytes_per_s")
    has_roof = bool(_finite(peak_flops) and _finite(peak_bw) and peak_flops > 0 and peak_bw > 0)
    coeffs = header_coeffs(header)
    n = ms.shape[1]
    if coeffs is None or coeffs.shape != (n, 6):
        return None, "the recording's header has no work coefficients (FLOPs and bytes per layer)", False, None, None, 1.0
    if not steps:
        return None, "no steps recorded", has_roof, peak_flops, peak_bw, 1.0
    flops, moved = np.zeros(n), np.zeros(n)
    for step, row in zip(steps, ms):
        f, b = step_work(coeffs, step)
        ran = np.isfinite(row)
        flops += np.where(ran, f, 0.0)
        moved += np.where(ran, b, 0.0)
    count = np.isfinite(ms).sum(axis=0)
    total_ms = np.nansum(ms, axis=0)
    total_ms = np.where((count > 0) & (total_ms > 0), total_ms, np.nan)
    # On a GPU the compute roof follows the SM clock: scale it by the mean sampled clock / max clock.
    max_clock = (header.get("clock") or {}).get("sm_clock_max_mhz")
    clocks = np.array([s.get("clock_mhz") for s in steps if _finite(s.get("clock_mhz"))], dtype=float)
    scale = float(clocks.mean() / max_clock) if _finite(max_clock) and max_clock and clocks.size else 1.0
    placed = place(flops, moved, total_ms, peak_flops if has_roof else None, peak_bw if has_roof else None, scale)
    runs = np.maximum(count, 1)
    placed["floor_ms"] = placed["floor_ms"] / runs  # per moment, beside the mean
    placed["flops"], placed["bytes"], placed["count"] = flops / runs, moved / runs, count
    note = None if has_roof else "the recording's header has no roof (peak FLOP/s and memory bandwidth)"
    return placed, note, has_roof, peak_flops, peak_bw, scale


def _layer_rows(d: _Doc) -> list[tuple[int, list[str]]]:
    """(layer index, cells) for the per-layer table; the header is ``_layer_head(d)``."""
    rows = []
    w = d.work
    for j, row in enumerate(d.summary.layers):
        cells = [fmt_ms(row.mean_ms), fmt_ms(row.p50_ms), fmt_ms(row.p99_ms), fmt_cycles(row.mean_cycles),
                 _pct(row.share)]
        if w is not None:
            cells += [_g(w["flops_per_s"][j], 1e9), _g(w["bytes_per_s"][j], 1e9), _g(w["intensity"][j])]
            if d.has_roof:
                ran = w["count"][j] > 0 and _finite(w["intensity"][j])
                cells += ["memory" if w["memory_bound"][j] else "compute" if ran else "—",
                          _g(w["roof_pct"][j]), fmt_ms(w["floor_ms"][j]) if ran else "—"]
        rows.append((j, cells))
    return rows


def _layer_head(d: _Doc) -> list[str]:
    head = ["layer", "runs", "mean ms", "p50 ms", "p99 ms", "cycles", "share %"]
    if d.work is not None:
        head += ["GFLOP/s", "GB/s", "FLOP/B"]
        if d.has_roof:
            head += ["bound", "% of roof", "floor ms"]
    return head


STEP_HEAD = ["kind", "steps", "tokens", "mean ms", "std ms", "p50 ms", "p90 ms", "p99 ms"]
TEXT_COLUMNS = {"layer", "kind", "bound", "throttle reasons"}
OUTLIER_HEAD = ["step", "kind", "layer", "ms", "median ms", "× median", "clock MHz", "throttle reasons"]


def _step_rows(d: _Doc) -> list[list[str]]:
    return [[s.kind, str(s.count), str(s.tokens), fmt_ms(s.mean_ms), fmt_ms(s.std_ms), fmt_ms(s.p50_ms),
             fmt_ms(s.p90_ms), fmt_ms(s.p99_ms)] for s in d.summary.steps]


def _outlier_rows(d: _Doc) -> list[list[str]]:
    rows = []
    for o in d.outliers:
        ratio = o["ms"] / o["median_ms"] if _finite(o["median_ms"]) and o["median_ms"] > 0 else float("nan")
        rows.append([str(o.get("step")), str(o.get("kind")), o["layer"], fmt_ms(o["ms"]), fmt_ms(o["median_ms"]),
                     _g(ratio), _g(o.get("clock_mhz")), ", ".join(map(str, o.get("throttle_reasons") or [])) or "—"])
    return rows


def _facts(d: _Doc) -> list[tuple[str, str]]:
    """(label, plain text) lines describing the session."""
    h = d.header
    dev, clock = h.get("device") or {}, h.get("clock") or {}
    device = dev.get("name") or dev.get("kind") or "?"
    versions = ", ".join(f"{k} {dev[k]}" for k in ("torch", "transformers", "cuda") if dev.get(k))
    clock_txt = str(clock.get("source") or "unavailable")
    extra = [str(clock[k]) for k in ("name",) if clock.get(k)]
    if _finite(clock.get("nominal_mhz")):
        extra.append(f"nominal {clock['nominal_mhz']:.0f} MHz")
    if _finite(clock.get("sm_clock_max_mhz")):
        extra.append(f"max {clock['sm_clock_max_mhz']:.0f} MHz")
    if extra:
        clock_txt += f" ({', '.join(extra)})"
    kinds = ", ".join(f"{s.kind} {s.count}" for s in d.summary.steps) or "none"
    facts = [("device", device + (f" ({versions})" if versions else "")), ("clock", clock_txt),
             ("timer", str(h.get("timer") or "?")), ("depth", f"{h.get('depth') or '?'} ({len(d.names)} layers, "
                                                          f"{len(d.top)} top-level)"),
             ("steps", f"{len(d.steps)}: {kinds}")]
    roof = h.get("roof") or {}
    if d.has_roof:
        facts.append(("roof", f"{_si(d.peak_flops, 'FLOP/s')}, {_si(d.peak_bw, 'B/s')} ({roof.get('source') or '?'})"))
    if h.get("started_at"):
        facts.append(("recorded", str(h["started_at"])))
    foot = d.rec.footer
    facts.append(("ended", (str(foot.get("reason")) + (f": {foot['error']}" if foot.get("error") else ""))
                  if foot else "no footer (killed, or still being written)"))
    facts.append(("file", str(d.rec.path)))
    return facts


def _coverage_text(d: _Doc) -> str:
    s = d.summary
    if not s.steps_in_window:
        return "no steps recorded"
    return (f"Coverage: {_pct(s.coverage)} % of step time is inside top-level layers; unattributed "
            f"(Python between layers, launch gaps, what is not hooked) {fmt_ms(s.unattributed_ms_mean)} ms per step "
            f"on average.")


def _model_bits(d: _Doc) -> tuple[str, str, bool]:
    m = d.header.get("model") or {}
    name = str(m.get("name") or "model")
    desc = ", ".join(str(x) for x in (m.get("architecture"), _params(m.get("parameters")), m.get("dtype")) if x)
    return name, desc, bool(m.get("random_weights"))


# -- Markdown --------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_code(text: str) -> str:
    """A name as inline code: Markdown shows it as is ('<' included)."""
    text = str(text).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


def _md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A pipe table: text columns left-aligned, numbers right-aligned."""
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |",
             "|" + "|".join(":---" if h in TEXT_COLUMNS else "---:" for h in head) + "|"]
    lines += ["| " + " | ".join(rows_cell for rows_cell in row) + " |" for row in rows]
    return lines


def render_markdown(rec: Recording) -> str:
    """The recording as a Markdown document (GitHub-flavoured tables)."""
    d = _analyze(rec)
    name, desc, random = _model_bits(d)
    out = [f"# moments report: {_md_cell(name)}", "",
           f"**{_md_cell(desc)}**" + (" — **RANDOM WEIGHTS** (timings only; outputs are noise)" if random else ""),
           ""]
    out += [f"- **{label}:** {_md_cell(text)}" for label, text in _facts(d)]
    out += ["", "## Moments per layer", ""]
    if not d.steps:
        out += ["No steps recorded.", ""]
    else:
        rows = []
        for j, cells in _layer_rows(d):
            label = _md_code(d.names[j]) if d.parents[j] is None else "↳ " + _md_code(d.names[j])
            rows.append([label, str(d.summary.layers[j].count)] + [_md_cell(c) for c in cells])
        out += _md_table(_layer_head(d), rows) + [""]
        out += ["Times are per step the layer ran in; cycles = moment × clock; share is of the summed step time. "
                + ("Work columns: Σ FLOPs (bytes) / Σ time over the steps where the layer ran; floor = the roof's "
                   "time for the layer's mean work." if d.work is not None else f"No work columns: {d.work_note}."),
                ""]
        if d.work is not None and not d.has_roof:
            out += [f"No roofline: {d.work_note}.", ""]
    out += ["## Step time by kind", ""]
    out += (_md_table(STEP_HEAD, [[_md_cell(c) for c in r] for r in _step_rows(d)]) if d.summary.steps
            else ["No steps recorded."])
    out += ["", _coverage_text(d), "", "## Outlier moments", ""]
    out += _md_outliers(d)
    out += ["", "## Warnings", ""]
    out += [f"- {_md_cell(w)}" for w in d.warnings] or ["None."]
    return "\n".join(out).rstrip() + "\n"


def _outlier_intro(d: _Doc) -> str:
    if not d.outliers_total:
        return ("No outlier moments (none more than 5 MADs above its layer's rolling median"
                + (", or too few steps to tell" if len(d.steps) <= 16 else "") + ").")
    shown = f"the top {len(d.outliers)} of {d.outliers_total}" if d.outliers_total > len(d.outliers) else \
        f"all {d.outliers_total}"
    return (f"Moments more than 5 MADs above their layer's rolling median (64 steps), {shown}, "
            f"largest excess first.")


def _md_outliers(d: _Doc) -> list[str]:
    lines = [_outlier_intro(d)]
    if d.outliers:
        rows = [[_md_cell(r[0]), _md_cell(r[1]), _md_code(r[2])] + [_md_cell(c) for c in r[3:]]
                for r in _outlier_rows(d)]
        lines += [""] + _md_table(OUTLIER_HEAD, rows)
    return lines


# -- SVG helpers -------------------------------------------------------------------------------------


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


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


# -- pictures ---------------------------------------------------------------------------------------


def svg_share_bars(d: _Doc) -> str:
    """Each top-level layer's share of the summed step time, plus what no layer covered."""
    rows = [(d.names[j], d.summary.layers[j].share, d.summary.layers[j].mean_ms, False) for j in d.top]
    un = 1 - d.summary.coverage if _finite(d.summary.coverage) else float("nan")
    if _finite(un) and un > 0:
        rows.append(("(unattributed)", un, d.summary.unattributed_ms_mean, True))
    label_w = min(max((_text_w(_short(r[0], 34)) for r in rows), default=60) + 12, 240)
    bar_h, gap, top, plot_w = 14, 4, 8, 420
    width, height = label_w + plot_w + 60, top + len(rows) * (bar_h + gap) + 8
    top_share = max((r[1] for r in rows if _finite(r[1])), default=0) or 1.0
    body = []
    for i, (name, share, mean_ms, unattributed) in enumerate(rows):
        y = top + i * (bar_h + gap)
        body.append(_text(label_w - 8, y + bar_h - 3, _short(name, 34), "end",
                          fill=C_MUTED if unattributed else None))
        w = plot_w * share / top_share if _finite(share) else 0
        tip = f"{name}: {_pct(share, 2)} % of step time, mean {fmt_ms(mean_ms)} ms"
        body.append(_rect(label_w, y, w, bar_h, C_UNATTRIBUTED if unattributed else C_BAR, tip,
                          class_="unattributed" if unattributed else "bar"))
        body.append(_text(label_w + w + 4, y + bar_h - 3, f"{_pct(share)} %" if _finite(share) else "did not run"))
    return _svg(width, height, body, "share of step time per top-level layer")


def svg_histogram(d: _Doc) -> str:
    """Step wall times: prefill in one colour, decode / encode in another, stacked per bin."""
    wall = d.wall[np.isfinite(d.wall)]
    kinds = np.array(d.kinds)[np.isfinite(d.wall)]
    lo, hi = float(wall.min()), float(wall.max())
    p99 = float(np.percentile(wall, 99))
    overflow = hi > 3 * p99 and p99 > lo  # a few huge steps would squash the rest into one bar
    top_edge = p99 * 1.05 if overflow else hi
    if top_edge <= lo:  # every step took the same time: one bar in the middle
        pad = max(abs(lo) * 0.05, 1e-3)
        lo, top_edge = lo - pad, top_edge + pad
    n_bins = int(min(40, max(8, math.sqrt(len(wall)) * 2)))
    edges = np.linspace(lo, top_edge, n_bins + 1)
    groups = [("prefill", C_PREFILL)] + [(k, C_DECODE) for k in ("decode", "encode", "?") if k in set(kinds)]
    counts = {}
    for kind, _ in groups:
        w = np.clip(wall[kinds == kind], lo, top_edge)
        counts[kind] = np.histogram(w, bins=edges)[0]
    stacked = sum(counts.values())
    yticks = _nice_ticks(0, max(int(stacked.max()), 1), 4)
    ymax = yticks[-1] if yticks[-1] >= stacked.max() else yticks[-1] + (yticks[-1] - yticks[-2])
    yticks = _nice_ticks(0, ymax, 4)
    ml, mr, mt, mb, pw, ph = 60, 16, 26, 40, 620, 200
    x_of = lambda v: ml + (v - lo) / (top_edge - lo) * pw  # noqa: E731
    y_of = lambda c: mt + ph - c / ymax * ph  # noqa: E731
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


def svg_heatmap(d: _Doc) -> str:
    """Top-level layers (rows) × the last steps (columns); colour = moment time on a log scale."""
    top = d.top
    first = max(len(d.steps) - HEATMAP_STEPS, 0)
    m = d.ms[first:, top]
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
    for i, step in enumerate(d.steps[first:]):  # prefill marks above the grid
        if step.get("kind") == "prefill":
            body.append(_rect(label_w + i * cw, mt, cw + 0.3, strip, C_PREFILL, f"step {step.get('index')}: prefill",
                              class_="kind"))
    for r, j in enumerate(top):
        y = grid_top + r * row_h
        for i in range(n_steps):
            v = m[i, r]
            ran = math.isfinite(v)
            colour = _viridis((math.log10(max(v, lo)) - llo) / (lhi - llo)) if ran else C_MISSING
            tip = None
            if titled:
                step = d.steps[first + i]
                tip = (f"{d.names[j]} · step {step.get('index')} ({step.get('kind')}) · "
                       + (f"{fmt_ms(v)} ms" if ran else "did not run"))
            body.append(_rect(label_w + i * cw, y, cw + 0.3, row_h + 0.3, colour, tip, class_="cell"))
    body.append("</g>")
    for r, j in enumerate(top):
        if r % label_every == 0:
            y = grid_top + r * row_h + row_h / 2 + 4
            body.append(f'<text x="{_n(label_w - 6)}" y="{_n(y)}" text-anchor="end">{_title(d.names[j])}'
                        f"{_esc(_short(d.names[j], 28))}</text>")
    axis_y = grid_top + ph
    column = {step.get("index"): i for i, step in enumerate(d.steps[first:])}
    indices = [k for k in column if isinstance(k, int)]
    if indices:
        for t in _nice_ticks(min(indices), max(indices), 6):
            i = column.get(int(t))
            if i is not None:
                x = label_w + (i + 0.5) * cw
                body += [_line(x, axis_y, x, axis_y + 4), _text(x, axis_y + 15, str(int(t)), "middle")]
    body.append(_text(label_w + pw, 12, f"last {n_steps} of {len(d.steps)} steps · orange marks: prefill", "end",
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


def svg_roofline(d: _Doc) -> tuple[str, list[str]]:
    """Log-log roofline: intensity (FLOP/B) vs achieved FLOP/s; returns the SVG and the layers left off."""
    w = d.work
    assert w is not None and d.has_roof
    compute = float(d.peak_flops) * d.clock_scale
    bw = float(d.peak_bw)
    ridge = compute / bw
    pts, left_off = [], []
    for j, name in enumerate(d.names):
        x, y = w["intensity"][j], w["flops_per_s"][j]
        if _finite(x) and _finite(y) and x > 0 and y > 0:
            pts.append((j, float(x), float(y)))
        elif d.parents[j] is None:
            left_off.append(name)
    xs = [p[1] for p in pts] + [ridge]
    ys = [p[2] for p in pts] + [compute]
    x_lo, x_hi = math.floor(math.log10(min(xs) / 2)), math.ceil(math.log10(max(xs) * 2))
    y_lo, y_hi = math.floor(math.log10(min(ys) / 2)), math.ceil(math.log10(max(ys) * 2))
    ml, mr, mt, mb, pw, ph = 64, 28, 16, 44, 600, 340
    X = lambda v: ml + (math.log10(v) - x_lo) / (x_hi - x_lo) * pw  # noqa: E731
    Y = lambda v: mt + ph - (math.log10(v) - y_lo) / (y_hi - y_lo) * ph  # noqa: E731
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
    mem_label = f"memory {_si(bw, 'B/s')}"
    angle = math.degrees(math.atan2(Y(compute) - Y(x0 * bw), X(ridge) - X(x0)))
    lx = X(x0) + (X(ridge) - X(x0)) * 0.2
    ly = Y(x0 * bw) + (Y(compute) - Y(x0 * bw)) * 0.2 - 6
    body.append(_text(lx, ly, mem_label, fill=C_ROOF, transform=f"rotate({_n(angle)} {_n(lx)} {_n(ly)})"))
    scaled = f" at {d.clock_scale * 100:.0f} % clock" if abs(d.clock_scale - 1) > 1e-3 else ""
    body.append(_text(ml + pw - 4, Y(compute) - 6, f"compute {_si(compute, 'FLOP/s')}{scaled}", "end", fill=C_ROOF))
    # points: sub-layers first (lighter, beneath), then top-level ones with labels
    placed_boxes: list[tuple[float, float, float, float]] = []
    for sub in (True, False):
        for j, x, y in pts:
            if (d.parents[j] is not None) != sub:
                continue
            tip = (f"{d.names[j]}\nintensity {_g(x)} FLOP/B\nachieved {_si(y, 'FLOP/s')}, {_si(w['bytes_per_s'][j], 'B/s')}"
                   f"\n{_g(w['roof_pct'][j])} % of roof, {'memory' if w['memory_bound'][j] else 'compute'} bound"
                   f"\nfloor {fmt_ms(w['floor_ms'][j])} ms per run")
            body.append(_circle(X(x), Y(y), 3.5 if sub else 5, C_SUB if sub else C_TOP, tip,
                                class_="pt sub" if sub else "pt top", stroke="#fff", stroke_width="1"))
    body += _point_labels(d, [p for p in pts if d.parents[p[0]] is None], X, Y, (ml, mt, ml + pw, mt + ph),
                          placed_boxes)
    return _svg(ml + pw + mr, mt + ph + mb, body, "roofline of the layers"), left_off


def _point_labels(d: _Doc, pts: list[tuple[int, float, float]], X, Y, frame, boxes) -> list[str]:
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


# -- HTML -------------------------------------------------------------------------------------------

CSS = f"""
body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: {C_TEXT}; background: #fff; margin: 0; line-height: 1.45; }}
main {{ max-width: 1120px; margin: 0 auto; padding: 20px 28px 40px; }}
h1 {{ font-size: 1.6em; margin: 0.4em 0 0.1em; }}
h2 {{ font-size: 1.2em; margin: 1.6em 0 0.5em; border-bottom: 1px solid {C_GRID}; padding-bottom: 0.2em; }}
.sub-title {{ color: {C_MUTED}; margin: 0 0 0.8em; }}
.badge {{ display: inline-block; background: #c53030; color: #fff; font-weight: 600; font-size: 0.8em;
  padding: 1px 8px; border-radius: 10px; letter-spacing: 0.03em; vertical-align: middle; }}
dl.facts {{ display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0.6em 0; font-size: 0.92em; }}
dl.facts dt {{ color: {C_MUTED}; }}
dl.facts dd {{ margin: 0; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 8px 0 12px; }}
th, td {{ border: 1px solid {C_GRID}; padding: 3px 8px; white-space: nowrap; }}
th {{ background: #f7fafc; font-weight: 600; text-align: left; }}
td.n, th.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.sub td {{ color: {C_MUTED}; }}
tr.sub td:first-child {{ padding-left: 22px; }}
tbody tr:hover {{ background: #f7fafc; }}
code {{ font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.95em; }}
.note {{ color: {C_MUTED}; font-size: 0.92em; }}
.scroll {{ overflow-x: auto; }}
figure {{ margin: 10px 0 14px; }}
figure svg {{ max-width: 100%; height: auto; }}
figcaption {{ color: {C_MUTED}; font-size: 0.88em; }}
ul.warnings li {{ color: #975a16; }}
footer {{ color: {C_MUTED}; font-size: 0.85em; margin-top: 2em; }}
"""


def _html_table(head: Sequence[str], rows: Iterable[tuple[str, Sequence[str]]]) -> str:
    """``rows``: (tr class, cells already escaped); numbers right-aligned, text columns left."""
    num = ['' if h in TEXT_COLUMNS else ' class="n"' for h in head]
    out = ['<div class="scroll"><table><thead><tr>']
    out += [f"<th{num[i]}>{_esc(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for cls, cells in rows:
        tr = f'<tr class="{cls}">' if cls else "<tr>"
        out.append(tr + "".join(f"<td{num[i]}>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_esc(caption)}</figcaption></figure>"


def render_html(rec: Recording) -> str:
    """The recording as one self-contained HTML page (inline CSS and SVG, nothing fetched)."""
    from llm_moments import __version__

    d = _analyze(rec)
    name, desc, random = _model_bits(d)
    p: list[str] = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                    '<meta name="viewport" content="width=device-width, initial-scale=1">',
                    f"<title>moments: {_esc(name)}</title><style>{CSS}</style></head><body><main>",
                    f"<h1>{_esc(name)}</h1>",
                    f'<p class="sub-title">{_esc(desc)}'
                    + (' <span class="badge" title="timings only; the outputs are noise">RANDOM WEIGHTS</span>'
                       if random else "") + "</p>",
                    '<dl class="facts">' + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in _facts(d))
                    + "</dl>"]
    # layers
    p.append('<section id="layers"><h2>Moments per layer</h2>')
    if not d.steps:
        p.append('<p class="note">No steps recorded.</p>')
    else:
        p.append(_figure(svg_share_bars(d), "Share of the summed step time per top-level layer; grey: time no "
                                            "top-level layer covered."))
        rows = []
        for j, cells in _layer_rows(d):
            sub = d.parents[j] is not None
            rows.append(("sub" if sub else "", [f"<code>{_esc(d.names[j])}</code>", str(d.summary.layers[j].count)]
                         + [_esc(c) for c in cells]))
        p.append(_html_table(_layer_head(d), rows))
        p.append('<p class="note">Times are per step the layer ran in; cycles = moment × clock; share is of the '
                 "summed step time. "
                 + (_esc("Work columns: Σ FLOPs (bytes) / Σ time over the steps where the layer ran; floor = the "
                         "roof's time for the layer's mean work.") if d.work is not None
                    else _esc(f"No work columns: {d.work_note}.")) + "</p>")
    p.append("</section>")
    # steps
    p.append('<section id="steps"><h2>Step time</h2>')
    if d.steps and np.isfinite(d.wall).any():
        p.append(_figure(svg_histogram(d), f"Step times of all {len(d.steps)} steps; hover a bar for its count."))
        p.append(_html_table(STEP_HEAD, [("", [_esc(c) for c in r]) for r in _step_rows(d)]))
    else:
        p.append('<p class="note">No steps recorded.</p>')
    p.append(f'<p>{_esc(_coverage_text(d))}</p></section>')
    # heatmap
    p.append('<section id="heatmap"><h2>Moments over time</h2>')
    if d.steps and d.top:
        p.append(_figure(svg_heatmap(d), "Top-level layers (rows) over the most recent steps (columns); colour is "
                                         "the moment's time on a log scale; pale grey: the layer did not run."))
    else:
        p.append('<p class="note">No steps recorded.</p>')
    p.append("</section>")
    # roofline
    p.append('<section id="roofline"><h2>Roofline</h2>')
    if d.work is None or not d.has_roof:
        p.append(f'<p class="note">No roofline: {_esc(d.work_note or "nothing to place")}.</p>')
    else:
        svg, left_off = svg_roofline(d)
        subs = " dark: top-level layers, light: sub-layers." if len(d.top) < len(d.names) else ""
        p.append(_figure(svg, "Each layer's Σ FLOPs / Σ time against its arithmetic intensity; the red line is the "
                              "roof (memory bandwidth × intensity, then the compute peak); hover a point for its "
                              "numbers;" + subs))
        if left_off:
            p.append(f'<p class="note">Not on the chart (no FLOPs counted, or never ran): '
                     f'{", ".join(f"<code>{_esc(n)}</code>" for n in left_off)}.</p>')
    p.append("</section>")
    # outliers
    p.append(f'<section id="outliers"><h2>Outlier moments</h2><p>{_esc(_outlier_intro(d))}</p>')
    if d.outliers:
        rows = [("", [_esc(r[0]), _esc(r[1]), f"<code>{_esc(r[2])}</code>"] + [_esc(c) for c in r[3:]])
                for r in _outlier_rows(d)]
        p.append(_html_table(OUTLIER_HEAD, rows))
    p.append("</section>")
    p.append('<section id="warnings"><h2>Warnings</h2>')
    p.append('<ul class="warnings">' + "".join(f"<li>{_esc(w)}</li>" for w in d.warnings) + "</ul>"
             if d.warnings else "<p>None.</p>")
    p.append(f"</section><footer>llm-moments {_esc(__version__)} · schema {_esc(d.header.get('schema'))}</footer>")
    p.append("</main></body></html>")
    return "\n".join(p) + "\n"
