"""Exports of a recording: a Chrome / Perfetto trace, CSV (one row per step × layer), one JSON document."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np

from llm_moments.engine.core.recording import Recording
from llm_moments.engine.analysis.roofline import Roof
from llm_moments.engine.analysis.steptable import StepTable
from llm_moments.engine.analysis.roofline import place


def chrome_trace(rec: Recording) -> dict[str, Any]:
    """Trace-event JSON: each step a span, its layers spans inside it (sub-layers inside their
    parent), the clock a counter track. Times in µs from the session start.

    Spans on one track must nest strictly (a viewer mis-draws partial overlaps), so each span is
    kept inside its parent's and after its previous sibling's end: timer reads and 10 ns rounding
    are not exactly nested, and records without ``layer_start_ms`` (older ones) are laid out one
    layer after another from the step's start. The recorded times stay in the spans' args.
    """
    layers = rec.header["layers"]
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 1, "ts": 0,
         "args": {"name": f"moments: {rec.header.get('model', {}).get('name')}"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "ts": 0, "args": {"name": "steps and layers"}},
    ]
    steps = sorted(rec.steps, key=lambda s: s["t_ns"])
    for k, step in enumerate(steps):
        t0_us = step["t_ns"] / 1e3
        end_us = t0_us + max(0.0, step["wall_ms"] or 0.0) * 1e3
        if k + 1 < len(steps):  # a GPU step's event time can outlast the host's next step start
            end_us = max(t0_us, min(end_us, steps[k + 1]["t_ns"] / 1e3))
        events.append({"name": f"{step['kind']} #{step['index']}", "cat": "step", "ph": "X", "pid": 1, "tid": 1,
                       "ts": t0_us, "dur": end_us - t0_us,
                       "args": {"wall_ms": step.get("wall_ms"), "tokens": step.get("tokens"),
                                "clock_mhz": step.get("clock_mhz"), "cycles": step.get("cycles"),
                                "throttle": step.get("throttle_reasons")}})
        spans = _layout(layers, step, t0_us, end_us)
        cycles = step.get("layer_cycles") or [None] * len(layers)
        for j in sorted(spans, key=lambda j: (spans[j][0], -spans[j][1])):
            lo, hi = spans[j]
            events.append({"name": layers[j]["name"], "cat": "layer" if layers[j].get("parent") is None else "sublayer",
                           "ph": "X", "pid": 1, "tid": 1, "ts": lo, "dur": hi - lo,
                           "args": {"ms": step["layer_ms"][j], "cycles": cycles[j]}})
    for sample in rec.samples:
        clock = sample.get("clock_mhz")
        if clock is not None:
            events.append({"name": "clock MHz", "ph": "C", "pid": 1, "tid": 1, "ts": sample["t_ns"] / 1e3,
                           "args": {"MHz": clock}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"schema": rec.header.get("schema"), "clock_source": rec.header.get("clock", {}).get("source")}}


def _layout(layers: list[dict[str, Any]], step: dict[str, Any], t0_us: float,
            end_us: float) -> dict[int, tuple[float, float]]:
    """(start, end) µs of each layer that ran in ``step``, strictly nested (see chrome_trace)."""
    ms = step["layer_ms"]
    starts = step.get("layer_start_ms") or [None] * len(layers)
    n = len(layers)

    def timed_parent(j: int) -> int | None:
        # the nearest ancestor that ran (a layer whose parent did not run hangs from the grandparent)
        p = layers[j].get("parent")
        seen = 0
        while p is not None and 0 <= p < n and ms[p] is None and seen < n:
            p, seen = layers[p].get("parent"), seen + 1
        return p if p is not None and 0 <= p < n and p != j else None

    children: dict[int | None, list[int]] = {}
    for j in range(n):
        if ms[j] is not None:
            children.setdefault(timed_parent(j), []).append(j)
    spans: dict[int, tuple[float, float]] = {}
    todo: list[tuple[int | None, float, float]] = [(None, t0_us, end_us)]
    while todo:
        parent, lo, hi = todo.pop()
        kids = children.get(parent, [])
        if all(starts[j] is not None for j in kids):
            kids = sorted(kids, key=lambda j: starts[j])  # as they ran (registration order may differ)
        cursor = lo
        for j in kids:
            start = cursor if starts[j] is None else max(t0_us + starts[j] * 1e3, cursor)
            start = min(start, hi)
            stop = min(start + max(0.0, ms[j]) * 1e3, hi)
            spans[j] = (start, stop)
            cursor = stop
            if j in children:
                todo.append((j, start, stop))
    return spans


CSV_COLUMNS = ["step", "kind", "t_ns", "step_wall_ms", "tokens", "clock_mhz", "throttle_reasons", "layer",
               "parent", "moment_ms", "start_ms", "cycles", "flops", "bytes", "flops_per_s", "roof_pct"]


def csv_rows(rec: Recording) -> list[list[Any]]:
    """One row per step × layer (a layer that did not run has empty time cells)."""
    layers = rec.header["layers"]
    n = len(layers)
    table = StepTable.from_recording(rec)
    roof = Roof.of(rec.header)
    work = table.work()
    if work is not None:
        flops, moved = work
        placed = place(flops, moved, table.ms, roof.peak_flops, roof.peak_bw)
    else:
        flops = moved = np.full((len(table), n), np.nan)
        placed = {"flops_per_s": flops, "roof_pct": flops}
    ms, start, cycles = table.ms, table.start_ms, table.cycles
    parents = ["" if l.get("parent") is None else layers[l["parent"]]["name"] for l in layers]
    rows = []
    steps = (s for s in rec.steps if len(s.get("layer_ms") or ()) == n)  # the table's rows
    for i, step in enumerate(steps):
        for j, layer in enumerate(layers):
            rows.append([step["index"], step["kind"], step["t_ns"], step["wall_ms"], step.get("tokens"),
                         step.get("clock_mhz"), " ".join(step.get("throttle_reasons") or []), layer["name"],
                         parents[j], _cell(ms[i, j]), _cell(start[i, j]), _cell(cycles[i, j]), _cell(flops[i, j]),
                         _cell(moved[i, j]), _cell(placed["flops_per_s"][i, j]), _cell(placed["roof_pct"][i, j])])
    return rows


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else float(value)
    return value


def to_csv(rec: Recording) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(rec))
    return buf.getvalue()


def to_json(rec: Recording) -> dict[str, Any]:
    return {"header": rec.header, "steps": rec.steps, "samples": rec.samples, "others": rec.others,
            "footer": rec.footer, "warnings": rec.warnings}


def export(rec: Recording, fmt: str) -> str:
    if fmt == "chrome":
        return json.dumps(chrome_trace(rec))
    if fmt == "csv":
        return to_csv(rec)
    if fmt == "json":
        return json.dumps(to_json(rec), indent=1)
    raise ValueError(f"unknown export format {fmt!r}")
