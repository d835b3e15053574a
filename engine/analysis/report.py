"""What a report of a recording says, as numbers: the step table, the summary, the work per layer,
the outlier moments and the warnings. The renderers (engine/output: text, Markdown, HTML) only format it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llm_moments.engine.analysis.outliers import outliers_of
from llm_moments.engine.analysis.roofline import LayerWork, Roof, layer_work
from llm_moments.engine.analysis.stats import Summary, summarize_table
from llm_moments.engine.analysis.steptable import StepTable

MAX_OUTLIERS = 20


@dataclass
class ReportData:
    rec: Any                              # the Recording (header, footer, path)
    table: StepTable
    summary: Summary
    work: LayerWork
    outliers: list[dict[str, Any]]        # the largest excess first, at most MAX_OUTLIERS
    outliers_total: int
    warnings: list[str] = field(default_factory=list)

    @property
    def header(self) -> dict[str, Any]:
        return self.rec.header

    @property
    def names(self) -> list[str]:
        return self.table.names

    @property
    def parents(self) -> list[int | None]:
        return self.table.parents

    @property
    def top(self) -> list[int]:
        return [j for j, p in enumerate(self.parents) if p is None]

    @property
    def n_steps(self) -> int:
        return len(self.table)


def analyze(rec: Any, max_outliers: int = MAX_OUTLIERS) -> ReportData:
    """Everything a report of ``rec`` (a loaded Recording) shows."""
    table = StepTable.from_recording(rec)
    found = outliers_of(table)
    ranked = sorted(found, key=lambda o: o["ms"] - o["median_ms"], reverse=True)
    warnings = list(rec.warnings)
    for other in rec.others:
        if other.get("type") == "status" and other.get("level", "warning") != "info":
            msg = f"during the session: {other.get('message')}"
            if msg not in warnings:
                warnings.append(msg)
    if table.dropped:
        warnings.append(f"{table.dropped} step record(s) whose layer arrays do not match the header were left out")
    return ReportData(rec, table, summarize_table(table), layer_work(table, Roof.of(rec.header)),
                      ranked[:max_outliers], len(found), warnings)
