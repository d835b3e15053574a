"""Commands over recordings: ``report``, ``diff`` and ``export`` (one file, a rank set, or a compare
recording's variants)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llm_moments.engine.cli.common import _check_output, _open_output, _warn, _write_out
from llm_moments.engine.errors import MomentsError


def cmd_report(args: argparse.Namespace) -> int:
    from llm_moments.engine.analysis.report import analyze
    from llm_moments.engine.output.text import render_json, render_text

    if args.output is not None:  # before the recording is read: a bad OUT costs nothing
        _check_output(args.output, args.force)
    src: Any = args.file
    variant_src = _compare_source(args.file, getattr(args, "variant", None), report=args)
    if isinstance(variant_src, int):
        return variant_src
    if variant_src is not None:
        src = variant_src
    rs = _rank_set(args.file) if src is args.file else None
    if rs is not None:
        return _report_ranks(args, rs)
    data = analyze(src)   # one streaming pass: memory does not grow with the recording
    rec = data.rec
    _warn(args.file, rec.warnings)
    if args.format in ("md", "html"):
        from llm_moments.engine.output.html import render_html
        from llm_moments.engine.output.markdown import render_markdown

        out = (render_html if args.format == "html" else render_markdown)(rec, data)
    elif args.format == "json":
        out = render_json(data.summary, rec.header, outliers=data.outliers)
    else:
        out = render_text(data.summary, rec.header, outliers=(data.outliers, data.outliers_total))
    _write_out(out, getattr(args, "output", None), getattr(args, "force", False), args.file)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from llm_moments.engine.analysis.diff import compare
    from llm_moments.engine.analysis.scan import scan
    from llm_moments.engine.output.text import render_diff

    ca, cb = _compare_side(args.a), _compare_side(args.b)
    rsa = _rank_set(args.a) if ca is None else None
    rsb = _rank_set(args.b) if cb is None else None
    if rsa is not None or rsb is not None:
        return _diff_ranks(args, rsa, rsb)
    a = ca if ca is not None else scan(args.a)   # streamed: memory does not grow with the recordings
    b = cb if cb is not None else scan(args.b)
    diff = compare(a, b, kind=args.kind, normalize_clock=args.normalize_clock)
    _warn(args.a, a.warnings)
    _warn(args.b, b.warnings)
    sys.stdout.write(render_diff(diff, args.a, args.b, args.format))
    return 0


def _compare_source(path: str, label: str | None, report: Any = None) -> Any:
    """A compare recording (header ``variants``): with ``label``, a Scan of that variant's steps only;
    without, ``report`` prints the per-variant comparison here (returns its exit status). None: an
    ordinary recording (``--variant`` on one is an error)."""
    from llm_moments.engine.analysis.compare import from_scan, only_variant, variant_labels
    from llm_moments.engine.analysis.scan import scan

    if _is_rank_set(path):
        if label is not None:
            raise MomentsError("--variant: a multi-rank session is not a compare recording")
        return None
    sc = scan(path)
    labels = variant_labels(sc.header)
    if not labels:
        if label is not None:
            raise MomentsError(f"--variant {label}: {path} is not a compare recording (no variants)")
        return None
    if label is not None:
        return only_variant(sc, label)
    if report is None:
        return None
    if report.format not in ("text", "json"):
        raise MomentsError(f"{path} is a compare recording of {len(labels)} variants: --format {report.format} "
                           "reports one of them: add --variant LABEL")
    from llm_moments.engine.output.compare import render_compare_json, render_compare_text

    result = from_scan(sc)
    _warn(path, sc.warnings)
    out = render_compare_json(result) if report.format == "json" else render_compare_text(result)
    _write_out(out, getattr(report, "output", None), getattr(report, "force", False), path)
    return 0


def _compare_side(spec: str) -> Any:
    """``diff`` of a compare recording: ``FILE#LABEL`` is one variant's steps; a compare recording
    without a label is refused (its variants' steps mixed would be no one's)."""
    import os.path

    from llm_moments.engine.analysis.compare import only_variant, variant_labels
    from llm_moments.engine.analysis.scan import scan

    path, label = spec, None
    if not os.path.exists(spec) and "#" in spec:
        path, _, label = spec.rpartition("#")
    if label is None:
        if _is_rank_set(spec):
            return None
        labels = variant_labels(scan(spec).header)
        if labels:
            raise MomentsError(f"{spec} holds the variants {', '.join(labels)} of one compare: name one as "
                               f"{spec}#LABEL (moments report {spec} compares them all)")
        return None
    return only_variant(path, label)


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm_moments.engine.analysis.scan import scan
    from llm_moments.engine.output.export import write_export
    from llm_moments.engine.output.sanitize import visible

    suffix = {"chrome": ".trace.json", "csv": ".csv", "json": ".json"}[args.format]
    rs = _rank_set(args.file)
    if rs is not None:
        return _export_ranks(args, rs, suffix)
    output = args.output if args.output is not None else str(Path(args.file).with_suffix("")) + suffix
    path = None if output == "-" else _check_output(output, args.force)  # before any work
    sc = scan(args.file)   # streamed out record by record: memory does not grow with the recording
    if path is None:
        write_export(sc, args.format, sys.stdout)
        _warn(args.file, sc.warnings)
        return 0
    # A new file, created exclusively (never through a symlink); with --force the old one is replaced
    # only once the export is complete. A failed export leaves no half-written OUT.
    with _open_output(path, args.force, args.file) as fh:
        write_export(sc, args.format, fh)
    _warn(args.file, sc.warnings)
    print(f"wrote {visible(path)}", file=sys.stderr)
    return 0


def _is_rank_set(path: str) -> bool:
    """Whether ``path`` names a rank set, saying nothing (the command that reads it warns once)."""
    from llm_moments.engine.core.rankfiles import find_ranks

    return find_ranks(path) is not None


def _rank_set(path: str) -> Any:
    """The rank set ``path`` names (engine/core/rankfiles.py), its missing-rank warning printed once;
    None for a plain recording."""
    from llm_moments.engine.core.rankfiles import find_ranks

    rs = find_ranks(path)
    if rs is not None:
        _warn(path, rs.warnings)
    return rs


def _warn_files(pairs: list[tuple[str, str]]) -> None:
    from llm_moments.engine.output.sanitize import visible

    for path, warning in pairs:
        print(visible(f"moments: warning: {path}: {warning}"), file=sys.stderr)


def _report_ranks(args: argparse.Namespace, rs: Any) -> int:
    """The report of the lowest rank's file with the merged per-rank section; every rank file read once."""
    from llm_moments.engine.analysis.ranks import RankScan
    from llm_moments.engine.analysis.report import analyze
    from llm_moments.engine.output import ranks as out_ranks
    from llm_moments.engine.output.text import render_json, render_text

    sc = RankScan(rs)
    data = analyze(sc)
    ra = sc.result()
    primary = str(rs.files[rs.primary])
    _warn(primary, data.rec.warnings)
    _warn(args.file, ra.warnings[len(rs.warnings):])
    if args.format == "html":
        from llm_moments.engine.output.html import render_html

        out = render_html(data.rec, data, ra)
    elif args.format == "md":
        from llm_moments.engine.output.markdown import render_markdown

        out = render_markdown(data.rec, data, ra)
    elif args.format == "json":
        out = out_ranks.report_json(render_json(data.summary, data.rec.header, outliers=data.outliers), ra)
    else:
        out = (render_text(data.summary, data.rec.header, outliers=(data.outliers, data.outliers_total))
               + "\n" + out_ranks.render_text_section(ra))
    _write_out(out, getattr(args, "output", None), getattr(args, "force", False), primary)
    return 0


def _diff_ranks(args: argparse.Namespace, rsa: Any, rsb: Any) -> int:
    from llm_moments.engine.analysis.ranks import diff_ranks
    from llm_moments.engine.output.ranks import render_rank_diff

    d = diff_ranks(rsa if rsa is not None else args.a, rsb if rsb is not None else args.b, kind=args.kind,
                   normalize_clock=args.normalize_clock)
    _warn_files(d.warnings)
    sys.stdout.write(render_rank_diff(d, args.a, args.b, args.format))
    return 0


def _export_ranks(args: argparse.Namespace, rs: Any, suffix: str) -> int:
    """A rank set's export: one merged file (a process / ``rank`` column / section per rank) or, with
    --split-ranks, one file per rank."""
    from pathlib import Path

    from llm_moments.engine.output import ranks as out_ranks
    from llm_moments.engine.output.sanitize import visible

    output = args.output if args.output is not None else str(rs.base.with_suffix("")) + suffix
    warnings: list[tuple[str, str]] = []
    source = str(rs.files[rs.primary])
    if args.split_ranks:
        if output == "-":
            raise MomentsError("--split-ranks writes one file per rank: give -o OUT, not -")
        outs = {r: _check_output(out_ranks.split_name(output, r, suffix), args.force) for r in rs.ranks}
        for r, path in outs.items():
            with _open_output(path, args.force, str(rs.files[r])) as fh:
                out_ranks.write_split(rs, args.format, r, fh, warnings)
            print(f"wrote {visible(path)}", file=sys.stderr)
        _warn_files(warnings)
        return 0
    if output == "-":
        out_ranks.write_rank_export(rs, args.format, sys.stdout, warnings)
        _warn_files(warnings)
        return 0
    path = _check_output(output, args.force)
    with _open_output(path, args.force, source) as fh:
        out_ranks.write_rank_export(rs, args.format, fh, warnings)
    _warn_files(warnings)
    print(f"wrote {visible(Path(path))}", file=sys.stderr)
    return 0
