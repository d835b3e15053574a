"""A recording as one self-contained HTML page (``moments report FILE --format html``): the Markdown
document's content plus four pictures (share bars, step histogram, heatmap, roofline), rendered from
the Jinja2 template ``templates/report.html.j2`` (package data) with autoescape: every piece of text
from the recording is escaped (its control characters shown, sanitize.py); the inline SVG, escaped by
svg.py, is the only markup passed through.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from llm_moments.engine.analysis.report import ReportData, analyze
from llm_moments.engine.output import report_rows as rr
from llm_moments.engine.output import svg
from llm_moments.engine.output.sanitize import visible

TEMPLATES = Path(__file__).parent / "templates"


def _finalize(value: Any) -> Any:
    """Every value the template prints: text shows its control characters (sanitize.py) before the
    autoescape; markup marked safe (the SVG pictures, escaped by svg.py) passes as it is."""
    if isinstance(value, markupsafe.Markup) or not isinstance(value, str):
        return value
    return visible(value)


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, finalize=_finalize)
    return env.get_template("report.html.j2")


def context(d: ReportData, ranks: Any = None) -> dict[str, Any]:
    """What the template shows, as plain values (the template escapes them); ``ranks``: the per-rank
    section of a multi-rank session (output/ranks.py)."""
    from llm_moments.engine import __version__

    name, desc, random = rr.model_bits(d)
    layers = None
    if d.n_steps:
        layers = {"share_svg": svg.svg_share_bars(d), "head": rr.layer_head(d), "note": rr.layer_note(d),
                  "rows": [{"sub": d.parents[j] is not None,
                            "cells": [d.names[j], str(d.summary.layers[j].count)] + cells}
                           for j, cells in rr.layer_rows(d)]}
    has_wall = d.n_steps and d.wall_count > 0
    steps = {"histogram_svg": svg.svg_histogram(d) if has_wall else None, "head": rr.STEP_HEAD,
             "rows": [{"sub": False, "cells": r} for r in rr.step_rows(d)], "coverage": rr.coverage_text(d)}
    roofline: dict[str, Any] = {"svg": None, "why": d.work.note or "nothing to place", "left_off": [], "caption": ""}
    if d.work.placed is not None and d.work.has_roof:
        roofline["svg"], roofline["left_off"] = svg.svg_roofline(d)
        subs = " dark: top-level layers, light: sub-layers." if len(d.top) < len(d.names) else ""
        roofline["caption"] = ("Each layer's Σ FLOPs / Σ time against its arithmetic intensity; the red line is the "
                               "roof (memory bandwidth × intensity, then the compute peak); hover a point for its "
                               "numbers;" + subs)
    return {
        "name": name, "desc": desc, "random": random, "facts": rr.facts(d), "n_steps": d.n_steps,
        "c": {"text": svg.C_TEXT, "muted": svg.C_MUTED, "grid": svg.C_GRID},
        "text_columns": rr.TEXT_COLUMNS, "layers": layers, "steps": steps,
        "heatmap_svg": svg.svg_heatmap(d) if d.n_steps and d.top else None,
        "roofline": roofline,
        "outliers": {"intro": rr.outlier_intro(d), "head": rr.OUTLIER_HEAD,
                     "rows": [{"sub": False, "cells": r} for r in rr.outlier_rows(d)]},
        "warnings": d.warnings, "version": __version__, "schema": d.header.get("schema"),
        "ranks": _ranks_context(ranks),
    }


def _ranks_context(ranks: Any) -> dict[str, Any] | None:
    if ranks is None:
        return None
    from llm_moments.engine.output.ranks import html_context

    return html_context(ranks)


def render_html(rec: Any, data: ReportData | None = None, ranks: Any = None) -> str:
    """The recording as one self-contained HTML page (inline CSS and SVG, nothing fetched)."""
    return _template().render(**context(data or analyze(rec), ranks)).rstrip() + "\n"
