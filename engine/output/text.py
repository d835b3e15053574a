"""Summary tables as text (rich) or JSON: the headless run's ending and ``moments report``."""

from __future__ import annotations

import io
import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from llm_moments.engine.analysis.stats import Summary
from llm_moments.engine.output.sanitize import visible
from llm_moments.engine.output.units import finite, fmt_cycles, fmt_mhz, fmt_ms, json_safe, pct, share_bar, signed_pct


def _t(value: Any, style: str = "") -> Text:
    """A cell or line from the recording: control characters shown (sanitize.py), never read as markup."""
    return Text(visible(value), style=style)


def _describe(header: dict[str, Any] | None) -> str:
    """Plain text (printed as a ``Text``: no markup), every field from the recording made visible."""
    if not header:
        return ""
    m, d, c = header.get("model", {}), header.get("device", {}), header.get("clock", {})
    random = "  [RANDOM WEIGHTS]" if m.get("random_weights") else ""
    dev = d.get("name") or d.get("kind", "?")
    v = visible
    params = m.get("parameters") if finite(m.get("parameters")) else 0
    return (f"model {v(m.get('name'))} ({v(m.get('architecture'))}, {float(params) / 1e6:.1f} M params, "
            f"{v(m.get('dtype'))}){random}\ndevice {v(dev)}  timer {v(header.get('timer'))}  "
            f"clock {v(c.get('source'))}  depth {v(header.get('depth'))}")


def build_tables(summary: Summary, header: dict[str, Any] | None = None) -> list[Any]:
    layers = Table(title="Moments per layer", title_justify="left", show_edge=False, pad_edge=False)
    for col, justify in (("layer", "left"), ("calls", "right"), ("mean ms", "right"), ("p50 ms", "right"),
                         ("p99 ms", "right"), ("cycles", "right"), ("share", "right"), ("", "left")):
        layers.add_column(col, justify=justify, no_wrap=True)
    for row in summary.layers:
        name = row.name if row.parent is None else "  " + row.name
        layers.add_row(_t(name), str(row.count), fmt_ms(row.mean_ms), fmt_ms(row.p50_ms), fmt_ms(row.p99_ms),
                       fmt_cycles(row.mean_cycles), f"{row.share * 100:5.1f}%",
                       share_bar(row.share) if row.parent is None else "")
    steps = Table(title="Step time by kind", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("kind", "steps", "tokens", "mean ms", "std ms", "p50 ms", "p90 ms", "p99 ms"):
        steps.add_column(col, justify="left" if col == "kind" else "right", no_wrap=True)
    for s in summary.steps:
        steps.add_row(_t(s.kind), str(s.count), str(s.tokens), fmt_ms(s.mean_ms), fmt_ms(s.std_ms),
                      fmt_ms(s.p50_ms), fmt_ms(s.p90_ms), fmt_ms(s.p99_ms))
    window = (f" (statistics over the last {summary.steps_in_window} of {summary.steps_total} steps)"
              if summary.steps_in_window < summary.steps_total else "")
    foot = (f"coverage {summary.coverage * 100:.1f}% of step time in top-level layers; unattributed "
            f"{fmt_ms(summary.unattributed_ms_mean)} ms/step{window}"
            if summary.steps_in_window else "no steps recorded")
    head = _describe(header)
    return ([Text(head)] if head else []) + [layers, steps, foot]


def outlier_table(outliers: list[dict[str, Any]], total: int) -> list[Any]:
    """The report's outlier moments (engine/analysis/outliers.py), largest excess first."""
    if not total:
        return ["no outlier moments"]
    table = Table(title=f"Outlier moments ({len(outliers)} of {total}, largest excess first)", title_justify="left",
                  show_edge=False, pad_edge=False)
    for col in ("step", "kind", "layer", "ms", "median ms", "clock", "throttle"):
        table.add_column(col, justify="left" if col in ("kind", "layer", "throttle") else "right", no_wrap=True)
    for o in outliers:
        table.add_row(_t(o["step"]), _t(o["kind"]), _t(o["layer"]), fmt_ms(o["ms"]), fmt_ms(o["median_ms"]),
                      fmt_mhz(o["clock_mhz"]), _t(" ".join(map(str, o["throttle_reasons"] or ())) or "—"))
    return [table]


def render_text(summary: Summary, header: dict[str, Any] | None = None, width: int = 110,
                color: bool = False, outliers: tuple[list[dict[str, Any]], int] | None = None) -> str:
    """The summary tables; with ``outliers`` (list, total), the report's outlier moments after them."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system="standard" if color else None,
                      force_terminal=color, highlight=False)
    parts = build_tables(summary, header) + (outlier_table(*outliers) if outliers is not None else [])
    for part in parts:
        console.print(part)
        console.print()
    return buf.getvalue().rstrip() + "\n"


def render_json(summary: Summary, header: dict[str, Any] | None = None,
                outliers: list[dict[str, Any]] | None = None) -> str:
    doc = {"model": (header or {}).get("model"), "device": (header or {}).get("device"),
           "clock": (header or {}).get("clock"), **summary.to_dict()}
    if outliers is not None:
        doc["outliers"] = outliers
    return json.dumps(json_safe(doc), indent=2)


def _share(x: float) -> str:
    return f"{pct(x)}%" if finite(x) else "—"


def render_diff(diff: Any, name_a: str, name_b: str, fmt: str = "text") -> str:
    """The layer-by-layer comparison as a table (text / md) or JSON."""
    if fmt == "json":
        return json.dumps(json_safe({"a": name_a, "b": name_b, **diff.to_dict()}), indent=2) + "\n"
    head = ["layer", "A p50 ms", "B p50 ms", "change", "95% interval", "A p99", "B p99", "A cycles", "B cycles",
            "A share", "B share", ""]
    rows = []
    for l in diff.layers:
        verdict = ("faster" if l.change_pct < 0 else "slower") if l.significant else "noise"
        rows.append([l.name, fmt_ms(l.a_p50_ms), fmt_ms(l.b_p50_ms), signed_pct(l.change_pct),
                     f"{signed_pct(l.ci_low_pct)} … {signed_pct(l.ci_high_pct)}",
                     fmt_ms(l.a_p99_ms), fmt_ms(l.b_p99_ms),
                     fmt_cycles(l.a_cycles), fmt_cycles(l.b_cycles), _share(l.a_share), _share(l.b_share), verdict])
    step_verdict = ("faster" if diff.step_change_pct < 0 else "slower") if diff.step_significant else "within noise"
    summary = (f"{diff.kind} steps: A {diff.a_steps} (p50 {fmt_ms(diff.a_step_p50_ms)} ms), "
               f"B {diff.b_steps} (p50 {fmt_ms(diff.b_step_p50_ms)} ms): "
               f"{signed_pct(diff.step_change_pct)} {step_verdict}")
    if fmt == "md":
        from llm_moments.engine.output.sanitize import md_code, md_text

        missing = [f"only in {ab} ({md_code(name, False)}): " + ", ".join(md_code(n, False) for n in only)
                   for ab, name, only in (("A", name_a, diff.only_in_a), ("B", name_b, diff.only_in_b)) if only]
        lines = [f"**A** {md_code(name_a, False)} vs **B** {md_code(name_b, False)} — {md_text(summary)}", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(md_text(c) for c in r) + " |" for r in rows]
        return "\n".join(lines + [""] + missing) + "\n"
    missing = [f"only in {ab} ({visible(name)}): {', '.join(visible(n) for n in only)}"
               for ab, name, only in (("A", name_a, diff.only_in_a), ("B", name_b, diff.only_in_b)) if only]
    table = Table(title=_t(f"A {name_a}  vs  B {name_b}"), title_justify="left", show_edge=False, pad_edge=False)
    for col in head:
        table.add_column(col, justify="left" if col in ("layer", "") else "right", no_wrap=True)
    for r in rows:
        style = {"faster": "green", "slower": "red"}.get(r[-1])
        table.add_row(_t(r[0]), *r[1:], style=style)
    buf = io.StringIO()
    console = Console(file=buf, width=160, color_system=None, highlight=False)
    console.print(table)
    console.print(Text(visible(summary)))
    for m in missing:
        console.print(Text(m))
    return buf.getvalue()
