"""The rank parts of the outputs (design §10): the per-rank section of the text / Markdown / HTML
report (a layers × ranks table of p50 moments with the culprit marked, the ranks' step times; the HTML
adds a layers × ranks heatmap), the report JSON's ``ranks`` and per-layer ``skew_ms`` /
``culprit_rank`` / ``last_share``, the rank-set exports and the rank-set diff.

**Chrome trace of a rank set.** One merged file: each rank a process track (``pid`` = rank,
``process_name`` "rank R (host)"), the ranks' times put on one clock through each header's
``clock_origin`` (step ``t_ns`` + ``clock_origin.time_ns`` − the earliest rank's: exact on one host, as
good as NTP across hosts), and a top-level ``distributedInfo`` {rank, world_size, backend, ranks} —
``rank`` the lowest rank in the file, ``ranks`` all of them. That is what Perfetto / chrome://tracing
show side by side. Holistic Trace Analysis reads one trace per rank (a folder of files, each with its
own ``distributedInfo.rank``): ``split=True`` (``moments export --split-ranks``) writes exactly that.

Every string from a recording goes through the sanitizer: ``visible`` (text), ``md_text`` / ``md_code``
(Markdown), Jinja2 autoescape + ``visible`` (HTML), ``svg._esc`` (SVG), ``csv_text`` (CSV).
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from llm_moments.engine.analysis.ranks import RankAnalysis, RankDiff
from llm_moments.engine.analysis.scan import scan, step_chunks
from llm_moments.engine.core.rankfiles import RankSet
from llm_moments.engine.output import export as ex
from llm_moments.engine.output.sanitize import visible
from llm_moments.engine.output.units import finite, fmt_ms, pct, signed_pct

CULPRIT_MARK = "*"
RULES = ("Culprit (*): the rank whose compute — moment minus time inside collectives (comm_ms) and weight loads "
         "(load_ms) — is slowest by median; a blocking collective ends together on every rank, so the fast rank's "
         "moment holds the wait and is never blamed. 'last': share of aligned steps in which the culprit's compute "
         "was the slowest. Skew: max − min of the ranks' p50 moments.")


# -- report: JSON -------------------------------------------------------------------------------------------


def ranks_list(ra: RankAnalysis) -> list[dict[str, Any]]:
    return [{"rank": r.rank, "host": r.host, "device": r.device, "file": r.file, "steps": r.steps,
             "step_p50_ms": r.step_p50_ms, "vs_worst_pct": r.vs_worst_pct} for r in ra.ranks]


def add_to_report_json(doc: dict[str, Any], ra: RankAnalysis) -> dict[str, Any]:
    """The report JSON (text.render_json's document) with ``ranks``, ``rank_session`` and, per layer,
    ``rank_p50_ms``, ``compute_p50_ms``, ``skew_ms``, ``culprit_rank``, ``last_share`` (keys: rank)."""
    doc["ranks"] = ranks_list(ra)
    doc["rank_session"] = {"base": ra.base, "session": ra.session, "world_size": ra.world_size,
                           "backend": ra.backend, "missing_ranks": ra.missing, "worst_rank": ra.worst_rank}
    by_name = {l.name: l for l in ra.layers}
    for row in doc.get("layers") or []:
        l = by_name.get(row.get("name"))
        if l is None:
            continue
        row["rank_p50_ms"] = {str(r): v for r, v in l.p50_ms.items()}
        row["compute_p50_ms"] = {str(r): v for r, v in l.compute_p50_ms.items()}
        row["skew_ms"] = l.skew_ms
        row["culprit_rank"] = l.culprit_rank
        row["last_share"] = {str(r): v for r, v in l.last_share.items()}
    return doc


def report_json(text: str, ra: RankAnalysis) -> str:
    from llm_moments.engine.output.units import json_safe

    return json.dumps(json_safe(add_to_report_json(json.loads(text), ra)), indent=2)


# -- report: cells shared by text / Markdown / HTML --------------------------------------------------------


def layer_head(ra: RankAnalysis) -> list[str]:
    return ["layer"] + [f"rank {r}" for r in ra.rank_ids] + ["skew ms", "culprit", "last"]


def layer_cells(ra: RankAnalysis) -> list[tuple[int, list[str]]]:
    """(layer index, cells after the name) of the layers × ranks p50 table; the culprit's cell marked."""
    rows = []
    for j, l in enumerate(ra.layers):
        cells = [fmt_ms(l.p50_ms.get(r)) + (CULPRIT_MARK if r == l.culprit_rank else "") for r in ra.rank_ids]
        last = l.last_share.get(l.culprit_rank) if l.culprit_rank is not None else None
        cells += [fmt_ms(l.skew_ms) if finite(l.skew_ms) else "—",
                  f"rank {l.culprit_rank}" if l.culprit_rank is not None else "—",
                  f"{pct(last, 0)}%" if finite(last) else "—"]
        rows.append((j, cells))
    return rows


RANK_HEAD = ["rank", "host", "device", "steps", "step p50 ms", "vs worst", "file"]


def rank_rows(ra: RankAnalysis) -> list[list[str]]:
    return [[str(r.rank) + (" (worst)" if r.rank == ra.worst_rank else ""), str(r.host or "?"), str(r.device or "?"),
             str(r.steps), fmt_ms(r.step_p50_ms), signed_pct(r.vs_worst_pct), r.file] for r in ra.ranks]


def intro(ra: RankAnalysis) -> str:
    found = len(ra.ranks)
    s = (f"{found} of {ra.world_size} ranks (backend {ra.backend or '?'}, session {ra.session or '?'}); "
         f"the tables above are rank {ra.rank_ids[0]}'s.")
    if ra.missing:
        s += f" Missing: rank{'s' if len(ra.missing) > 1 else ''} {', '.join(map(str, ra.missing))}."
    if not ra.has_comm:
        s += " No rank recorded time inside collectives (comm_ms): compute is the whole moment."
    return s


# -- report: text ---------------------------------------------------------------------------------------------


def render_text_section(ra: RankAnalysis) -> str:
    width = max(110, 40 + 11 * len(ra.ranks))
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, highlight=False)
    console.print(Text(visible(intro(ra))))
    console.print()
    t = Table(title="Ranks: p50 moment per layer (* culprit)", title_justify="left", show_edge=False, pad_edge=False)
    for col in layer_head(ra):
        t.add_column(col, justify="left" if col in ("layer", "culprit") else "right", no_wrap=True)
    for j, cells in layer_cells(ra):
        name = ra.layers[j].name if ra.layers[j].parent is None else "  " + ra.layers[j].name
        t.add_row(Text(visible(name)), *cells)
    console.print(t)
    console.print(Text(RULES))
    console.print()
    t = Table(title="Ranks: step time", title_justify="left", show_edge=False, pad_edge=False)
    for col in RANK_HEAD:
        t.add_column(col, justify="right" if col in ("steps", "step p50 ms", "vs worst") else "left", no_wrap=True)
    for row in rank_rows(ra):
        t.add_row(*(Text(visible(c)) for c in row))
    console.print(t)
    return buf.getvalue().rstrip() + "\n"


# -- report: Markdown ---------------------------------------------------------------------------------------


def markdown_section(ra: RankAnalysis) -> list[str]:
    from llm_moments.engine.output.sanitize import md_cell, md_code, md_text

    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        return (["| " + " | ".join(md_cell(h) for h in head) + " |",
                 "|" + "|".join(":---" if h in ("layer", "rank", "host", "device", "file", "culprit") else "---:"
                                for h in head) + "|"]
                + ["| " + " | ".join(r) + " |" for r in rows])

    out = ["## Ranks", "", md_text(intro(ra)), ""]
    rows = []
    for j, cells in layer_cells(ra):
        label = md_code(ra.layers[j].name) if ra.layers[j].parent is None else "↳ " + md_code(ra.layers[j].name)
        rows.append([label] + [md_cell(c) for c in cells])
    out += table(layer_head(ra), rows) + ["", md_text(RULES), ""]
    out += table(RANK_HEAD, [[md_cell(c) for c in r[:-1]] + [md_code(r[-1])] for r in rank_rows(ra)]) + [""]
    return out


# -- report: HTML ----------------------------------------------------------------------------------------------


def html_context(ra: RankAnalysis) -> dict[str, Any]:
    """What the template's rank section shows (plain values: the template escapes them)."""
    return {"intro": intro(ra), "rules": RULES, "heatmap_svg": svg_rank_heatmap(ra),
            "layer_head": layer_head(ra),
            "layer_rows": [{"sub": ra.layers[j].parent is not None, "cells": [ra.layers[j].name] + cells}
                           for j, cells in layer_cells(ra)],
            "rank_head": RANK_HEAD, "rank_rows": [{"sub": False, "cells": r} for r in rank_rows(ra)]}


def svg_rank_heatmap(ra: RankAnalysis) -> str:
    """Layers (rows) × ranks (columns); colour = the rank's p50 moment relative to the layer's fastest
    rank (linear, 1× … the largest ratio); the culprit's cell outlined."""
    from llm_moments.engine.output import svg

    layers, ranks = ra.layers, ra.rank_ids
    ratios = []
    for l in layers:
        fin = [v for v in l.p50_ms.values() if finite(v) and v > 0]
        lo = min(fin) if fin else math.nan
        ratios.append({r: (l.p50_ms[r] / lo if finite(l.p50_ms.get(r)) and finite(lo) and lo > 0 else math.nan)
                       for r in ranks})
    top = max([v for row in ratios for v in row.values() if finite(v)] or [1.0])
    top = max(top, 1.0 + 1e-9)
    label_w = min(max((svg._text_w(svg._short(l.name, 28)) for l in layers), default=40) + 10, 200)
    row_h = max(4.0, min(16.0, 420.0 / max(len(layers), 1)))
    cw = max(8.0, min(60.0, 700.0 / max(len(ranks), 1)))
    mt = 22
    body = ['<g shape-rendering="crispEdges">']
    for i, r in enumerate(ranks):
        body.append(svg._text(label_w + (i + 0.5) * cw, mt - 6, str(r), "middle"))
    for k, l in enumerate(layers):
        y = mt + k * row_h
        for i, r in enumerate(ranks):
            v = ratios[k][r]
            colour = svg._viridis((v - 1.0) / (top - 1.0)) if finite(v) else svg.C_MISSING
            tip = f"{l.name} · rank {r} · " + (f"p50 {fmt_ms(l.p50_ms[r])} ms ({v:.2f}× the fastest rank), "
                                               f"compute {fmt_ms(l.compute_p50_ms.get(r))} ms" if finite(v)
                                               else "did not run")
            extra = {"stroke": svg.C_ROOF, "stroke_width": "1.5"} if r == l.culprit_rank else {}
            body.append(svg._rect(label_w + i * cw, y, cw - 1, row_h - 0.5, colour, tip, class_="cell", **extra))
        if row_h >= 9 or k % max(1, math.ceil(11 / row_h)) == 0:
            body.append(f'<text x="{svg._n(label_w - 6)}" y="{svg._n(y + row_h / 2 + 4)}" text-anchor="end">'
                        f"{svg._title(l.name)}{svg._esc(svg._short(l.name, 28))}</text>")
    body.append("</g>")
    bottom = mt + row_h * len(layers) + 16
    body.append(svg._text(label_w, bottom, f"rank (columns) · colour: p50 moment ÷ the layer's fastest rank, "
                          f"1× to {top:.2f}× · red outline: culprit (slowest compute)", fill=svg.C_MUTED))
    return svg._svg(max(label_w + cw * len(ranks) + 12, label_w + 560), bottom + 10, body,
                    "heatmap of p50 moments: layers by ranks")


# -- exports -----------------------------------------------------------------------------------------------------


def _offsets_ns(rs: RankSet) -> dict[int, int]:
    """Per rank, what to add to its ``t_ns`` to put every rank on the earliest rank's clock."""
    wall = {}
    for r, h in rs.headers.items():
        t = (h.get("clock_origin") or {}).get("time_ns")
        wall[r] = t if type(t) is int else None
    known = [t for t in wall.values() if t is not None]
    if len(known) < len(wall):   # a rank without a clock origin: no shift for anyone (each from its start)
        return dict.fromkeys(wall, 0)
    t0 = min(known)
    return {r: t - t0 for r, t in wall.items()}


def _rank_events(rs: RankSet, rank: int, offset_ns: int, warnings: list[tuple[str, str]]):
    """One rank's trace events (export.chrome_events) moved to process ``rank`` and the common clock."""
    sc = scan(rs.files[rank])
    shift = offset_ns / 1e3
    host = rs.host(rank)
    for ev in ex.chrome_events(sc):
        ev["pid"] = rank
        if ev.get("ph") == "M":
            if ev.get("name") == "process_name":
                ev["args"] = {"name": f"rank {rank} ({host or '?'})"}
                yield ev
                yield {"name": "process_sort_index", "ph": "M", "pid": rank, "tid": 1, "ts": 0,
                       "args": {"sort_index": rank}}
                continue
        elif "ts" in ev:
            ev["ts"] = ev["ts"] + shift
        yield ev
    warnings += [(str(rs.files[rank]), w) for w in sc.warnings]


def write_chrome(rs: RankSet, out: IO[str], ranks: list[int] | None = None,
                 warnings: list[tuple[str, str]] | None = None) -> None:
    """The Chrome trace of ``ranks`` (default: all) as one document: a process per rank (module docstring).
    For one rank, ``distributedInfo`` is exactly HTA's {rank, world_size, backend}."""
    ranks = rs.ranks if ranks is None else ranks
    offsets = _offsets_ns(rs)
    out.write('{"traceEvents": [')
    k = 0
    for r in ranks:
        for ev in _rank_events(rs, r, offsets[r], warnings if warnings is not None else []):
            out.write((", " if k else "") + ex._dumps(ev))
            k += 1
    info: dict[str, Any] = {"rank": ranks[0], "world_size": rs.world_size, "backend": rs.backend}
    if len(ranks) > 1:
        info["ranks"] = list(ranks)
    tail = ex._chrome_tail(rs.headers[ranks[0]])
    tail["otherData"]["session"] = rs.session
    tail["distributedInfo"] = info
    out.write("], " + ex._dumps(tail)[1:])


def write_rank_export(rs: RankSet, fmt: str, out: IO[str], warnings: list[tuple[str, str]] | None = None) -> None:
    """The export of a whole rank set, each rank's file streamed once, in rank order.

    chrome: ``write_chrome`` (one process per rank); csv: the single-file columns after a ``rank``
    column; json: ``{"base", "session", "world_size", "backend", "missing_ranks", "ranks": [{"rank",
    "host", "file", "recording": <the single-file JSON export>}]}``. ``warnings`` gets (file, warning)
    of each rank file read (known once it is written)."""
    warnings = warnings if warnings is not None else []
    if fmt == "chrome":
        write_chrome(rs, out, warnings=warnings)
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["rank", *ex.CSV_COLUMNS])
        for r in rs.ranks:
            sc = scan(rs.files[r])
            for steps, table in step_chunks(sc):
                writer.writerows([r, *row] for row in ex._csv_chunk(sc.header, steps, table))
            warnings += [(str(rs.files[r]), w) for w in sc.warnings]
    elif fmt == "json":
        out.write("{" + ", ".join(f"{json.dumps(k)}: {ex._dumps(v)}" for k, v in (
            ("base", str(rs.base)), ("session", rs.session), ("world_size", rs.world_size),
            ("backend", rs.backend), ("missing_ranks", rs.missing))) + ',\n"ranks": [\n')
        for k, r in enumerate(rs.ranks):
            sc = scan(rs.files[r])
            out.write(("," if k else "") + "{" + f'"rank": {r}, "host": {ex._dumps(rs.host(r))}, '
                      f'"file": {ex._dumps(str(rs.files[r]))}, "recording": ')
            ex._write_json(sc, out)
            out.write("}\n")
            warnings += [(str(rs.files[r]), w) for w in sc.warnings]
        out.write("]}\n")
    else:
        raise ValueError(f"unknown export format {fmt!r}")


def split_name(output: str, rank: int, suffix: str) -> str:
    """``run.trace.json`` → ``run.rank1.trace.json`` (the rank tag before the export's own suffix)."""
    if suffix and output.endswith(suffix) and len(output) > len(suffix):
        return output[:-len(suffix)] + f".rank{rank}" + suffix
    return output + f".rank{rank}"


def write_split(rs: RankSet, fmt: str, rank: int, out: IO[str], warnings: list[tuple[str, str]] | None = None) -> None:
    """One rank's export of a rank set (``--split-ranks``): chrome with its own distributedInfo, HTA's layout."""
    warnings = warnings if warnings is not None else []
    if fmt == "chrome":
        write_chrome(rs, out, [rank], warnings)
    else:
        sc = scan(rs.files[rank])
        ex.write_export(sc, fmt, out)
        warnings += [(str(rs.files[rank]), w) for w in sc.warnings]


# -- diff ------------------------------------------------------------------------------------------------------


def render_rank_diff(d: RankDiff, name_a: str, name_b: str, fmt: str = "text") -> str:
    """The merged comparison, then one per rank pair (text / md), or all of it as JSON."""
    from llm_moments.engine.output.text import render_diff
    from llm_moments.engine.output.units import json_safe

    if fmt == "json":
        return json.dumps(json_safe({"a": name_a, "b": name_b, **d.to_dict()}), indent=2) + "\n"
    md = fmt == "md"
    parts = [("## merged: every rank's steps pooled\n\n" if md else "merged: every rank's steps pooled\n")
             + render_diff(d.merged, name_a, name_b, fmt)]
    for r, diff in d.per_rank.items():
        parts.append((f"## rank {r}\n\n" if md else f"rank {r}\n") + render_diff(diff, f"{name_a} rank {r}",
                                                                                   f"{name_b} rank {r}", fmt))
    notes = list(d.notes)
    for side, only in (("A", d.only_in_a), ("B", d.only_in_b)):
        if only:
            notes.append(f"ranks only in {side}: {', '.join(map(str, only))} (no pair to compare)")
    if notes:
        if md:
            from llm_moments.engine.output.sanitize import md_text

            parts.append("\n".join(f"- {md_text(n)}" for n in notes) + "\n")
        else:
            parts.append("\n".join(visible(n) for n in notes) + "\n")
    return "\n".join(parts)

