"""The report's tables and sentences as plain text cells, shared by the Markdown and HTML documents
(each escapes them its own way)."""

from __future__ import annotations

from llm_moments.engine.analysis import outliers
from llm_moments.engine.analysis.report import ReportData
from llm_moments.engine.output.units import finite, fmt_cycles, fmt_ms, fmt_scaled, params, pct, si

STEP_HEAD = ["kind", "steps", "tokens", "mean ms", "std ms", "p50 ms", "p90 ms", "p99 ms"]
TEXT_COLUMNS = {"layer", "kind", "bound", "throttle reasons"}
OUTLIER_HEAD = ["step", "kind", "layer", "ms", "median ms", "× median", "clock MHz", "throttle reasons"]
WORK_NOTE = ("Work columns: Σ FLOPs (bytes) / Σ time over the steps where the layer ran; floor = the roof's "
             "time for the layer's mean work.")
TIMES_NOTE = "Times are per step the layer ran in; cycles = moment × clock; share is of the summed step time. "


def layer_head(d: ReportData) -> list[str]:
    head = ["layer", "runs", "mean ms", "p50 ms", "p99 ms", "cycles", "share %"]
    if d.work.placed is not None:
        head += ["GFLOP/s", "GB/s", "FLOP/B"]
        if d.work.has_roof:
            head += ["bound", "% of roof", "floor ms"]
    return head


def layer_rows(d: ReportData) -> list[tuple[int, list[str]]]:
    """(layer index, cells after the name and the runs) for the per-layer table."""
    rows = []
    w = d.work.placed
    for j, row in enumerate(d.summary.layers):
        cells = [fmt_ms(row.mean_ms), fmt_ms(row.p50_ms), fmt_ms(row.p99_ms), fmt_cycles(row.mean_cycles),
                 pct(row.share)]
        if w is not None:
            cells += [fmt_scaled(w["flops_per_s"][j], 1e9), fmt_scaled(w["bytes_per_s"][j], 1e9),
                      fmt_scaled(w["intensity"][j])]
            if d.work.has_roof:
                ran = w["count"][j] > 0 and finite(w["intensity"][j])
                cells += ["memory" if w["memory_bound"][j] else "compute" if ran else "—",
                          fmt_scaled(w["roof_pct"][j]), fmt_ms(w["floor_ms"][j]) if ran else "—"]
        rows.append((j, cells))
    return rows


def layer_note(d: ReportData) -> str:
    return TIMES_NOTE + (WORK_NOTE if d.work.placed is not None else f"No work columns: {d.work.note}.")


def step_rows(d: ReportData) -> list[list[str]]:
    return [[s.kind, str(s.count), str(s.tokens), fmt_ms(s.mean_ms), fmt_ms(s.std_ms), fmt_ms(s.p50_ms),
             fmt_ms(s.p90_ms), fmt_ms(s.p99_ms)] for s in d.summary.steps]


def outlier_rows(d: ReportData) -> list[list[str]]:
    rows = []
    for o in d.outliers:
        ratio = o["ms"] / o["median_ms"] if finite(o["median_ms"]) and o["median_ms"] > 0 else float("nan")
        rows.append([str(o.get("step")), str(o.get("kind")), o["layer"], fmt_ms(o["ms"]), fmt_ms(o["median_ms"]),
                     fmt_scaled(ratio), fmt_scaled(o.get("clock_mhz")),
                     ", ".join(map(str, o.get("throttle_reasons") or [])) or "—"])
    return rows


def outlier_intro(d: ReportData) -> str:
    rule = (f"more than {outliers.K_MAD:g} MADs above their layer's median over up to {outliers.HISTORY} "
            f"earlier steps of their kind")
    if not d.outliers_total:
        return (f"No outlier moments (none {rule.replace('their', 'its')}"
                + (", or too few steps to tell" if d.n_steps <= outliers.MIN_HISTORY else "") + ").")
    shown = f"the top {len(d.outliers)} of {d.outliers_total}" if d.outliers_total > len(d.outliers) else \
        f"all {d.outliers_total}"
    return f"Moments {rule}, {shown}, largest excess first."


def facts(d: ReportData) -> list[tuple[str, str]]:
    """(label, plain text) lines describing the session."""
    h = d.header
    dev, clock = h.get("device") or {}, h.get("clock") or {}
    device = dev.get("name") or dev.get("kind") or "?"
    versions = ", ".join(f"{k} {dev[k]}" for k in ("torch", "transformers", "cuda") if dev.get(k))
    clock_txt = str(clock.get("source") or "unavailable")
    extra = [str(clock[k]) for k in ("name",) if clock.get(k)]
    if finite(clock.get("nominal_mhz")):
        extra.append(f"nominal {clock['nominal_mhz']:.0f} MHz")
    if finite(clock.get("sm_clock_max_mhz")):
        extra.append(f"max {clock['sm_clock_max_mhz']:.0f} MHz")
    if extra:
        clock_txt += f" ({', '.join(extra)})"
    kinds = ", ".join(f"{s.kind} {s.count}" for s in d.summary.steps) or "none"
    out = [("device", device + (f" ({versions})" if versions else "")), ("clock", clock_txt),
           ("timer", str(h.get("timer") or "?")),
           ("depth", f"{h.get('depth') or '?'} ({len(d.names)} layers, {len(d.top)} top-level)"),
           ("steps", f"{d.n_steps}: {kinds}")]
    roof = d.work.roof
    if d.work.has_roof:
        out.append(("roof", f"{si(roof.peak_flops, 'FLOP/s')}, {si(roof.peak_bw, 'B/s')} ({roof.source or '?'})"))
    if h.get("started_at"):
        out.append(("recorded", str(h["started_at"])))
    foot = d.rec.footer
    out.append(("ended", (str(foot.get("reason")) + (f": {foot['error']}" if foot.get("error") else ""))
                if foot else "no footer (killed, or still being written)"))
    out.append(("file", str(d.rec.path)))
    return out


def coverage_text(d: ReportData) -> str:
    s = d.summary
    if not s.steps_in_window:
        return "no steps recorded"
    return (f"Coverage: {pct(s.coverage)} % of step time is inside top-level layers; unattributed "
            f"(Python between layers, launch gaps, what is not hooked) {fmt_ms(s.unattributed_ms_mean)} ms per step "
            f"on average.")


def model_bits(d: ReportData) -> tuple[str, str, bool]:
    m = d.header.get("model") or {}
    name = str(m.get("name") or "model")
    desc = ", ".join(str(x) for x in (m.get("architecture"), params(m.get("parameters")), m.get("dtype")) if x)
    return name, desc, bool(m.get("random_weights"))
