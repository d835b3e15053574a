"""What a report of a recording says, as numbers: the summary, the work per layer, the outlier moments,
the newest steps (the heatmap), the step-time distribution (the histogram) and the warnings. The
renderers (engine/output: text, Markdown, HTML) only format it.

One pass over the file, one step table chunk at a time (``scan.step_chunks``), folded into bounded
accumulators: memory does not grow with the number of steps. Exact: counts, sums, means, std, share,
coverage, work, the outlier verdicts and their total; the list keeps the ``max_outliers`` largest.
p50 / p90 / p99 and the histogram's bars come from ``sketch.QuantileSketch``: exact while the
values fit its budget (65 536 steps of 16 layers), within 0.5 % relative after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_moments.engine.analysis.outliers import OutlierDetector
from llm_moments.engine.analysis.roofline import LayerWork, Roof, WorkSums, work_of_sums
from llm_moments.engine.analysis.scan import scan, step_chunks
from llm_moments.engine.analysis.sketch import QuantileSketch
from llm_moments.engine.analysis.stats import Summary, SummaryAcc
from llm_moments.engine.analysis.steptable import StepTable

MAX_OUTLIERS = 20
TAIL_STEPS = 400          # the newest steps kept as a table (the heatmap's columns)
MAX_WARNINGS = 50         # distinct status warnings kept from the session


@dataclass
class ReportData:
    rec: Any                              # the Recording or Scan (header, footer, path, warnings)
    table: StepTable                      # the newest TAIL_STEPS steps
    summary: Summary
    work: LayerWork
    outliers: list[dict[str, Any]]        # the largest excess first, at most MAX_OUTLIERS
    outliers_total: int
    warnings: list[str] = field(default_factory=list)
    steps_total: int = 0
    walls: dict[str, QuantileSketch] = field(default_factory=dict)   # step wall times per kind
    wall_all: QuantileSketch | None = None                            # all steps' wall times

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
        return self.steps_total

    # -- the step-time distribution (the HTML histogram) --------------------------------------------------
    @property
    def wall_count(self) -> int:
        """Steps with a finite wall time."""
        return int(self.wall_all.count[0]) if self.wall_all is not None else 0

    def wall_range(self) -> tuple[float, float, float]:
        """(min, max, p99) of the finite step wall times (min and max exact)."""
        assert self.wall_all is not None and self.wall_count
        sk = self.wall_all
        if sk.exact:
            v = sk.values()[:, 0]
            p99 = float(np.percentile(v[np.isfinite(v)], 99))
        else:
            p99 = float(sk.quantiles([99])[0, 0])
        return float(sk.min[0]), float(sk.max[0]), p99

    def wall_histogram(self, edges: np.ndarray) -> dict[str, np.ndarray]:
        """Per kind, the count of steps in each bin of ``edges`` (times clipped into them)."""
        return {kind: sk.histogram(edges) for kind, sk in self.walls.items()}


class _TopOutliers:
    """The ``keep`` largest outliers by excess (ties: the earlier first) and how many there were."""

    def __init__(self, keep: int):
        self.keep, self.total, self.kept, self._seq = keep, 0, [], 0

    def add(self, found: list[dict[str, Any]]) -> None:
        self.total += len(found)
        for o in found:
            self.kept.append((-(o["ms"] - o["median_ms"]), self._seq, o))
            self._seq += 1
        if len(self.kept) > 2 * self.keep + 1024:
            self._trim()

    def _trim(self) -> None:
        self.kept.sort(key=lambda t: (t[0], t[1]))
        del self.kept[self.keep:]

    def ranked(self) -> list[dict[str, Any]]:
        self._trim()
        return [o for _, _, o in self.kept]


def analyze(src: Any, max_outliers: int = MAX_OUTLIERS) -> ReportData:
    """Everything a report of ``src`` shows: a path (read in one streaming pass) or a loaded Recording."""
    sc = scan(src)
    proto = StepTable.for_header(sc.header, capacity=1)
    acc = SummaryAcc(proto.names, proto.parents)
    sums = WorkSums(proto.n_layers)
    detector = OutlierDetector(proto.names)
    top = _TopOutliers(max_outliers)
    tail = StepTable(proto.names, proto.parents, proto.coeffs, capacity=TAIL_STEPS, ring=True)
    status: list[str] = []
    dropped = 0

    def other(r: dict[str, Any]) -> None:
        if r.get("type") == "status" and r.get("level", "warning") != "info" and len(status) < MAX_WARNINGS:
            msg = f"during the session: {r.get('message')}"
            if msg not in status:
                status.append(msg)

    for _, chunk in step_chunks(sc, other):
        dropped += chunk.dropped
        acc.add(chunk)
        if proto.coeffs is not None:
            sums.add(chunk)
        top.add(detector.push(chunk))
        tail.extend_table(chunk)
    warnings = list(sc.warnings)
    warnings += [w for w in status if w not in warnings]
    if dropped:
        warnings.append(f"{dropped} step record(s) whose layer arrays do not match the header were left out")
    return ReportData(sc if sc._rec is None else sc._rec, tail.take(slice(0, None)), acc.summary(),
                      work_of_sums(sums, proto.coeffs is not None, Roof.of(sc.header)), top.ranked(), top.total,
                      warnings, acc.steps, {k: v["wall"] for k, v in acc.kinds.items()}, acc.wall_all)
