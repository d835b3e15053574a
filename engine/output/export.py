"""Exports of a recording: a Chrome / Perfetto trace, CSV (one row per step × layer), one JSON document.

The JSON exports keep every string as it was recorded: ``json.dumps`` writes control and non-ASCII
characters as ``\\uXXXX`` escapes, so the files are data a terminal never obeys."""

from __future__ import annotations

import csv
import heapq
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from llm_moments.engine.analysis.roofline import Roof, place
from llm_moments.engine.analysis.scan import Scan, scan, step_chunks
from llm_moments.engine.analysis.steptable import StepTable
from llm_moments.engine.core.recording import Recording
from llm_moments.engine.output.sanitize import csv_text
from llm_moments.engine.output.units import json_safe


def chrome_trace(rec: Any) -> dict[str, Any]:
    """Trace-event JSON: each step a span, its layers spans inside it (sub-layers inside their
    parent), the clock a counter track. Times in µs from the session start.

    Spans on one track must nest strictly (a viewer mis-draws partial overlaps), so each span is
    kept inside its parent's and after its previous sibling's end: timer reads and 10 ns rounding
    are not exactly nested, and records without ``layer_start_ms`` (older ones) are laid out one
    layer after another from the step's start. The recorded times stay in the spans' args.

    The document in memory (tests, small files); ``write_export`` streams the same one to a file.
    """
    sc = scan(rec)
    return {"traceEvents": list(chrome_events(sc)), **_chrome_tail(sc.header)}


def _chrome_tail(header: dict[str, Any]) -> dict[str, Any]:
    return {"displayTimeUnit": "ms",
            "otherData": {"schema": header.get("schema"), "clock_source": (header.get("clock") or {}).get("source")}}


REORDER_STEPS = 1024   # steps held to put the trace in time order (the writer's order, give or take)


def chrome_events(sc: Scan) -> Iterator[dict[str, Any]]:
    """The trace's events one by one: metadata, the steps in time order (within ``REORDER_STEPS`` of
    the file's order: a recording is written in order) with their layers, then the clock counter (the
    samples wait in a temporary file meanwhile, not in memory)."""
    header = sc.header
    layers = header["layers"]
    yield {"name": "process_name", "ph": "M", "pid": 1, "tid": 1, "ts": 0,
           "args": {"name": f"moments: {(header.get('model') or {}).get('name')}"}}
    yield {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "ts": 0, "args": {"name": "steps and layers"}}
    heap: list[tuple[Any, int, dict[str, Any]]] = []
    seq = 0
    with tempfile.TemporaryFile("w+", encoding="utf-8") as samples:
        for r in sc.records():
            rtype = r.get("type")
            if rtype == "step":
                heapq.heappush(heap, (r["t_ns"], seq, r))
                seq += 1
                if len(heap) > REORDER_STEPS:
                    step = heapq.heappop(heap)[2]
                    yield from _step_events(layers, step, heap[0][2]["t_ns"])
            elif rtype == "sample" and r.get("clock_mhz") is not None:
                samples.write(_dumps({"name": "clock MHz", "ph": "C", "pid": 1, "tid": 1, "ts": r["t_ns"] / 1e3,
                                      "args": {"MHz": r["clock_mhz"]}}) + "\n")
        while heap:
            step = heapq.heappop(heap)[2]
            yield from _step_events(layers, step, heap[0][2]["t_ns"] if heap else None)
        samples.seek(0)
        for line in samples:
            yield json.loads(line)


def _step_events(layers: list[dict[str, Any]], step: dict[str, Any], next_t_ns: Any) -> Iterator[dict[str, Any]]:
    t0_us = step["t_ns"] / 1e3
    end_us = t0_us + max(0.0, step["wall_ms"] or 0.0) * 1e3
    if next_t_ns is not None:  # a GPU step's event time can outlast the host's next step start
        end_us = max(t0_us, min(end_us, next_t_ns / 1e3))
    variant = step.get("variant")  # a compare recording: the variant's label in the step's name and args
    yield {"name": f"{step['kind']} #{step['index']}" + (f" [{variant}]" if variant is not None else ""),
           "cat": "step", "ph": "X", "pid": 1, "tid": 1,
           "ts": t0_us, "dur": end_us - t0_us,
           "args": {"wall_ms": step.get("wall_ms"), "tokens": step.get("tokens"),
                    "clock_mhz": step.get("clock_mhz"), "cycles": step.get("cycles"),
                    "throttle": step.get("throttle_reasons"),
                    **({"variant": variant} if variant is not None else {})}}
    spans = _layout(layers, step, t0_us, end_us)
    cycles = step.get("layer_cycles") or [None] * len(layers)
    for j in sorted(spans, key=lambda j: (spans[j][0], -spans[j][1])):
        lo, hi = spans[j]
        yield {"name": layers[j]["name"], "cat": "layer" if layers[j].get("parent") is None else "sublayer",
               "ph": "X", "pid": 1, "tid": 1, "ts": lo, "dur": hi - lo,
               "args": {"ms": step["layer_ms"][j], "cycles": cycles[j]}}


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


def csv_rows(rec: Any) -> list[list[Any]]:
    """One row per step × layer (a layer that did not run has empty time cells). Text cells (kind,
    throttle reasons, layer, parent) go through ``sanitize.csv_text``: control characters shown, and a
    ``'`` before a leading ``= + - @`` so that a spreadsheet never runs a name as a formula."""
    sc = scan(rec)
    return [row for steps, table in step_chunks(sc) for row in _csv_chunk(sc.header, steps, table)]


def _csv_chunk(header: dict[str, Any], steps: list[dict[str, Any]], table: StepTable) -> Iterator[list[Any]]:
    """The rows of one chunk of steps (``scan.step_chunks``: the table's rows are the steps)."""
    layers = header["layers"]
    n = len(layers)
    roof = Roof.of(header)
    work = table.work()
    if work is not None:
        flops, moved = work
        placed = place(flops, moved, table.ms, roof.peak_flops, roof.peak_bw)
    else:
        flops = moved = np.full((len(table), n), np.nan)
        placed = {"flops_per_s": flops, "roof_pct": flops}
    ms, start, cycles = table.ms, table.start_ms, table.cycles
    parents = ["" if l.get("parent") is None else layers[l["parent"]]["name"] for l in layers]
    names = [csv_text(layer["name"]) for layer in layers]
    parents = [csv_text(p) for p in parents]
    cells = [_cell_rows(a) for a in (ms, start, cycles, flops, moved, placed["flops_per_s"], placed["roof_pct"])]
    for i, step in enumerate(steps):
        head = [step["index"], csv_text(step["kind"]), step["t_ns"], step["wall_ms"], step.get("tokens"),
                step.get("clock_mhz"), csv_text(" ".join(map(str, step.get("throttle_reasons") or [])))]
        c_ms, c_start, c_cyc, c_fl, c_by, c_fps, c_roof = (c[i] for c in cells)
        tail = [csv_text(step.get("variant"))] if header.get("variants") else []  # a compare recording
        for j in range(n):
            yield head + [names[j], parents[j], c_ms[j], c_start[j], c_cyc[j], c_fl[j], c_by[j], c_fps[j],
                          c_roof[j], *tail]


def _cell_rows(a: np.ndarray) -> list[list[Any]]:
    """``_cell`` of every value of a [steps, layers] array, at list speed."""
    rows = np.where(np.isfinite(a), a, np.nan).tolist()
    return [["" if v != v else v for v in row] for row in rows]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else float(value)
    return value


def to_csv(rec: Any) -> str:
    buf = io.StringIO()
    write_export(rec, "csv", buf)
    return buf.getvalue()


def to_json(rec: Recording) -> dict[str, Any]:
    return {"header": rec.header, "steps": rec.steps, "samples": rec.samples, "others": rec.others,
            "footer": rec.footer, "warnings": rec.warnings}


def _dumps(obj: Any) -> str:
    """Strict JSON (no NaN: a value that is not finite becomes null)."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json.dumps(json_safe(obj), allow_nan=False)




def write_export(src: Any, fmt: str, out: IO[str]) -> None:
    """Write the export of ``src`` (a path, a Scan or a loaded Recording) to ``out`` as it is read: one
    step at a time (chrome, json) or one chunk of steps (csv); memory does not grow with the file.

    chrome: ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}`` (see chrome_trace).
    json: ``{"header", "steps", "samples", "others", "footer", "warnings"}``, one record per line;
    samples and others wait in temporary files while the steps go out.
    """
    if fmt not in ("chrome", "csv", "json"):
        raise ValueError(f"unknown export format {fmt!r}")
    sc = scan(src)
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS + (["variant"] if sc.header.get("variants") else []))
        for steps, table in step_chunks(sc):
            writer.writerows(_csv_chunk(sc.header, steps, table))
    elif fmt == "chrome":
        out.write('{"traceEvents": [')
        for k, event in enumerate(chrome_events(sc)):
            out.write((", " if k else "") + _dumps(event))
        tail = _dumps(_chrome_tail(sc.header))
        out.write("], " + tail[1:])
    else:
        _write_json(sc, out)


def _write_json(sc: Scan, out: IO[str]) -> None:
    out.write('{"header": ' + _dumps(sc.header) + ',\n"steps": [')
    first = True
    with tempfile.TemporaryFile("w+", encoding="utf-8") as samples, \
            tempfile.TemporaryFile("w+", encoding="utf-8") as others:
        held = {"sample": [samples, True], "other": [others, True]}
        for r in sc.records():
            line = _dumps(r)
            if r.get("type") == "step":
                out.write(("\n" if first else ",\n") + line)
                first = False
            else:
                slot = held["sample" if r.get("type") == "sample" else "other"]
                slot[0].write(("\n" if slot[1] else ",\n") + line)
                slot[1] = False
        out.write("\n],\n")
        for key, name in (("sample", "samples"), ("other", "others")):
            fh, empty = held[key]
            out.write(f'"{name}": [')
            fh.seek(0)
            shutil.copyfileobj(fh, out)
            out.write("],\n" if empty else "\n],\n")
    out.write('"footer": ' + _dumps(sc.footer) + ',\n"warnings": ' + _dumps(sc.warnings) + "}\n")


def export(rec: Any, fmt: str) -> str:
    """The export as one string (tests, small files); ``write_export`` streams it."""
    buf = io.StringIO()
    write_export(rec, fmt, buf)
    return buf.getvalue()
