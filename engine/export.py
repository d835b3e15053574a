"""Exports of a recording: a Chrome / Perfetto trace, CSV (one row per step × layer), one JSON document."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np

from .recording import Recording
from .roof import place
from .work import header_coeffs, step_work


def chrome_trace(rec: Recording) -> dict[str, Any]:
    """Trace-event JSON: each step a span, its layers spans inside it (sub-layers inside their
    parent), the clock a counter track. Times in µs from the session start."""
    layers = rec.header["layers"]
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": f"moments: {rec.header['model'].get('name')}"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "steps and layers"}},
    ]
    for step in rec.steps:
        t0_us = step["t_ns"] / 1e3
        wall_us = step["wall_ms"] * 1e3
        events.append({"name": f"{step['kind']} #{step['index']}", "cat": "step", "ph": "X", "pid": 1, "tid": 1,
                       "ts": t0_us, "dur": wall_us,
                       "args": {"tokens": step.get("tokens"), "clock_mhz": step.get("clock_mhz"),
                                "cycles": step.get("cycles"), "throttle": step.get("throttle_reasons")}})
        starts = step.get("layer_start_ms") or [None] * len(layers)
        spans: dict[int, tuple[float, float]] = {}
        for j, (ms, st) in enumerate(zip(step["layer_ms"], starts)):
            if ms is None:
                continue
            start_us = t0_us + (st if st is not None else 0.0) * 1e3
            dur_us = ms * 1e3
            parent = layers[j].get("parent")
            lo, hi = (t0_us, t0_us + wall_us) if parent is None else spans.get(parent, (t0_us, t0_us + wall_us))
            # Keep children inside their parent: timer reads are not exactly nested at µs level.
            start_us = min(max(start_us, lo), hi)
            dur_us = max(0.0, min(dur_us, hi - start_us))
            spans[j] = (start_us, start_us + dur_us)
            cycles = step["layer_cycles"][j] if step.get("layer_cycles") else None
            events.append({"name": layers[j]["name"], "cat": "layer" if parent is None else "sublayer", "ph": "X",
                           "pid": 1, "tid": 1, "ts": start_us, "dur": dur_us, "args": {"cycles": cycles}})
    for sample in rec.samples:
        clock = sample.get("clock_mhz")
        if clock is not None:
            events.append({"name": "clock MHz", "ph": "C", "pid": 1, "ts": sample["t_ns"] / 1e3,
                           "args": {"MHz": clock}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"schema": rec.header.get("schema"), "clock_source": rec.header.get("clock", {}).get("source")}}


CSV_COLUMNS = ["step", "kind", "t_ns", "step_wall_ms", "tokens", "clock_mhz", "throttle_reasons", "layer",
               "parent", "moment_ms", "start_ms", "cycles", "flops", "bytes", "flops_per_s", "roof_pct"]


def csv_rows(rec: Recording) -> list[list[Any]]:
    """One row per step × layer (a layer that did not run has empty time cells)."""
    layers = rec.header["layers"]
    coeffs = header_coeffs(rec.header)
    roof = rec.header.get("roof") or {}
    rows = []
    for step in rec.steps:
        ms = np.array([np.nan if v is None else v for v in step["layer_ms"]], dtype=float)
        if coeffs is not None and len(coeffs) == len(layers):
            flops, moved = step_work(coeffs, step)
            placed = place(flops, moved, ms, roof.get("peak_flops"), roof.get("peak_bytes_per_s"))
        else:
            flops = moved = np.full(len(layers), np.nan)
            placed = {"flops_per_s": flops, "roof_pct": flops}
        starts = step.get("layer_start_ms") or [None] * len(layers)
        for j, layer in enumerate(layers):
            rows.append([step["index"], step["kind"], step["t_ns"], step["wall_ms"], step.get("tokens"),
                         step.get("clock_mhz"), " ".join(step.get("throttle_reasons") or []), layer["name"],
                         "" if layer.get("parent") is None else layers[layer["parent"]]["name"],
                         _cell(step["layer_ms"][j]), _cell(starts[j]), _cell(step["layer_cycles"][j]),
                         _cell(flops[j]), _cell(moved[j]), _cell(placed["flops_per_s"][j]), _cell(placed["roof_pct"][j])])
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
