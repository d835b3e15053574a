"""Rendering of a compare (engine/analysis/compare.py): a text table per step kind, or one JSON document.

Every string that comes from a model, a recording or the user (labels, options, layer names, notes)
goes through ``sanitize.visible`` on its way to the terminal; the JSON keeps strings exactly (escaped
by the encoder) and has no NaN (null instead).
"""

from __future__ import annotations

import json
import math
from typing import Any

from llm_moments.engine.output.sanitize import visible


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):   # a numpy scalar
        return _clean(obj.item())
    return obj


def render_compare_json(result: Any) -> str:
    return json.dumps(_clean(result.to_dict()), indent=2, allow_nan=False) + "\n"


def _ms(x: Any) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" if x < 100 else f"{x:.1f}"


def _cycles(x: Any) -> str:
    if x is None:
        return "—"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _ratio(e: dict[str, Any]) -> str:
    if e.get("verdict") == "no per-layer timing":
        return "no per-layer timing"
    r = e.get("ratio")
    if r is None:
        return "—"
    lo, hi = e.get("ci_low"), e.get("ci_high")
    ci = f" [{lo:.3f}–{hi:.3f}]" if lo is not None and hi is not None else ""
    return f"{r:.3f}{ci} {e.get('verdict')}"


def _bytes(n: Any) -> str:
    if not n:
        return "0 B"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def _output(o: dict[str, Any] | None) -> str:
    if not o:
        return "—"
    if o.get("measure") == "token_agreement":
        a = o.get("token_agreement")
        return "—" if a is None else f"{a * 100:.1f} % of {o.get('tokens')} generated tokens as the baseline's"
    d, p = o.get("max_abs_diff_last_hidden"), o.get("max_abs_diff_pooled")
    parts = []
    if d is not None:
        parts.append(f"max |Δ| last hidden {d:.3g}")
    if p is not None:
        parts.append(f"pooled {p:.3g}")
    return ", ".join(parts) or "—"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        out.append("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) if c < len(r) - 1 else cell.ljust(w)
                             for c, (cell, w) in enumerate(zip(r, widths))).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _rule_lines(rule: dict[str, Any]) -> list[str]:
    """The notes: how the ratio, its interval and the verdict were made, with this run's numbers."""
    if not rule:
        return ["ratio < 1: faster than the baseline."]
    m = rule.get("margin") or 0.0
    conf = ", ".join(f"{visible(label)} {rows} rows at {c * 100:.2f} % (a verdict needs ≥ "
                     f"{rule.get('min_rounds', {}).get(label)} rounds)"
                     for label, rows in (rule.get("rows") or {}).items()
                     if (c := (rule.get("row_confidence") or {}).get(label)) is not None)
    return [
        "ratio < 1: faster than the baseline. Ratio: the median over rounds of (variant / baseline), each side's "
        "value in a round the median of its steps there (paired by round: drift between rounds cancels).",
        f"Interval: the sign-test interval of that median (distribution-free), widened for the family so that a "
        f"compare of identical variants flags any row with at most {(1 - rule.get('family_confidence', 0.95)) * 100:g} "
        f"% chance: {conf or 'no rows'}.",
        f"Verdict: faster when the whole interval is below {1 - m:g}, slower when above {1 + m:g} (margin "
        f"{m * 100:g} %, --margin), else within-noise.",
    ]


def render_compare_text(result: Any) -> str:
    d = result.to_dict()
    labels: list[str] = d["variants"]
    base = d["baseline"]
    lines = [visible(f"compare: {d.get('model')} on {d.get('device')}, {d.get('rounds')} rounds, variants "
                     f"interleaved ABAB/BABA; baseline {base}; clock {d.get('clock_source')}")]
    lines.append("")
    lines.append("variants:")
    for label in labels:
        info = d["variant_info"].get(label) or {}
        mem = info.get("memory", "")
        own = info.get("own_param_bytes")
        text = (f"  {label}: {info.get('options') or '(common options)'} — {d['steps'].get(label, 0)} steps; "
                f"memory: {mem}, {_bytes(own)} of own weights; output: "
                f"{'(baseline)' if label == base else _output(d['output'].get(label))}")
        lines.append(visible(text))
        for note in info.get("notes") or []:
            lines.append(visible(f"      {note}"))
    for kind, k in d["by_kind"].items():
        lines.append("")
        lines.append(visible(f"{kind} steps — p50 ms per layer; for each variant its p50 and the ratio to {base} "
                             "(median of per-round ratios) with its interval (see the rule below)"))
        head = ["layer", f"{base} p50", "p99", "cycles"]
        for label in labels[1:]:
            head += [f"{label} p50", f"{label} / {base}"]
        rows = [[visible(h) for h in head]]
        rowsets = [("step", k["step"])] + [(r["name"] if r.get("parent") is None else "  " + r["name"], r["variants"])
                                           for r in k["layers"]]
        for name, variants in rowsets:
            b = variants.get(base) or {}
            row = [visible(name), _ms(b.get("p50_ms")), _ms(b.get("p99_ms")), _cycles(b.get("cycles_p50"))]
            for label in labels[1:]:
                e = variants.get(label)
                if e is None:
                    row += ["—", "absent"]
                else:
                    row += [_ms(e.get("p50_ms")), _ratio(e)]
            rows.append(row)
        lines += _table(rows)
        norm = [(label, (k["step"].get(label) or {}).get("ratio_clock_normalized")) for label in labels[1:]]
        norm = [(label, r) for label, r in norm if r is not None]
        if norm:
            lines.append(visible("clock-normalized step ratio: " + ", ".join(
                f"{label} {r:.3f} ({(k['step'].get(label) or {}).get('verdict_clock_normalized')})"
                for label, r in norm)))
    lines.append("")
    lines += _rule_lines(d.get("rule") or {})
    return "\n".join(lines) + "\n"
