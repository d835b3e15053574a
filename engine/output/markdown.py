"""A recording as a Markdown document (``moments report FILE --format md``): what ran where, the
per-layer table with the work columns, step times by kind, coverage, the outlier moments, warnings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from llm_moments.engine.analysis.report import ReportData, analyze
from llm_moments.engine.output import report_rows as rr
from llm_moments.engine.output.sanitize import md_cell, md_code, md_text


def md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A pipe table: text columns left-aligned, numbers right-aligned (cells already escaped)."""
    lines = ["| " + " | ".join(md_cell(h) for h in head) + " |",
             "|" + "|".join(":---" if h in rr.TEXT_COLUMNS else "---:" for h in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _outliers(d: ReportData) -> list[str]:
    lines = [md_text(rr.outlier_intro(d))]
    if d.outliers:
        rows = [[md_cell(r[0]), md_cell(r[1]), md_code(r[2])] + [md_cell(c) for c in r[3:]]
                for r in rr.outlier_rows(d)]
        lines += [""] + md_table(rr.OUTLIER_HEAD, rows)
    return lines


def render_markdown(rec, data: ReportData | None = None, ranks: Any = None) -> str:
    """The recording as a Markdown document (GitHub-flavoured tables); ``ranks`` (analysis/ranks.py's
    RankAnalysis of a multi-rank session) adds its per-rank section before the warnings."""
    d = data or analyze(rec)
    name, desc, random = rr.model_bits(d)
    out = [f"# moments report: {md_cell(name)}", "",
           f"**{md_cell(desc)}**" + (" — **RANDOM WEIGHTS** (timings only; outputs are noise)" if random else ""),
           ""]
    out += [f"- **{label}:** {md_cell(text)}" for label, text in rr.facts(d)]
    out += ["", "## Moments per layer", ""]
    if not d.n_steps:
        out += ["No steps recorded.", ""]
    else:
        rows = []
        for j, cells in rr.layer_rows(d):
            label = md_code(d.names[j]) if d.parents[j] is None else "↳ " + md_code(d.names[j])
            rows.append([label, str(d.summary.layers[j].count)] + [md_cell(c) for c in cells])
        out += md_table(rr.layer_head(d), rows) + ["", md_text(rr.layer_note(d)), ""]
        if d.work.placed is not None and not d.work.has_roof:
            out += [f"No roofline: {md_text(d.work.note)}.", ""]
    out += ["## Step time by kind", ""]
    out += (md_table(rr.STEP_HEAD, [[md_cell(c) for c in r] for r in rr.step_rows(d)]) if d.summary.steps
            else ["No steps recorded."])
    out += ["", md_text(rr.coverage_text(d)), "", "## Outlier moments", ""]
    out += _outliers(d)
    if ranks is not None:
        from llm_moments.engine.output.ranks import markdown_section

        out += [""] + markdown_section(ranks)
    out += ["", "## Warnings", ""]
    out += [f"- {md_cell(w)}" for w in d.warnings] or ["None."]
    return "\n".join(out).rstrip() + "\n"
