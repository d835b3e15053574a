"""Headless command line: ``moments run --headless`` and ``moments report``.

The parser is built here so the UI's entry point (tui/cli.py) extends it rather than repeating it;
this module never imports the UI. ``python -m llm_moments.engine`` runs the same commands without Textual.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import IO, Any, Callable, Iterator, Sequence

from llm_moments.engine import __version__
from llm_moments.engine.errors import MomentsError
# The run options live with the session set-up (one definition: the live child's argv is derived from it).
from llm_moments.engine.session.setup import add_run_options, non_negative_int, positive_int, rate_hz  # noqa: F401

EPILOG = """\
A step is one forward of the model (a prefill, one decode token, or one encoder batch); a moment is
one layer's time inside a step; cycles = moment time x the clock the processor ran at (GPU SM clock
from NVML; on CPU the CPU clock, labelled nominal when that is all the OS tells).

Exit status: 0 done; 1 the model failed; 2 a usage or input error; 3 the session ran but a write
error (disk full, EIO) stopped its recording, which keeps every step before the error; 130
interrupted (SIGINT, SIGTERM, SIGHUP, or the terminal went away): the recording ends with an
"interrupted" footer and the summary covers the steps before it.
"""


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line on stderr, like every other error, and exit 2 (``--help`` has the rest)."""

    def error(self, message: str) -> Any:
        from llm_moments.engine.output.sanitize import visible

        self.exit(2, f"moments: error: {visible(message)} (see {self.prog} --help)\n")


def build_parser(prog: str = "moments", headless_only: bool = True) -> tuple[argparse.ArgumentParser, Any]:
    parser = OneLineParser(
        prog=prog, description="Watch where a language model's inference time goes, layer by layer: each "
        "layer's moment (its time inside one step) beside the clock cycles it took.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"llm-moments {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run a model and time every layer (the default command)",
                         description="Run a model over a stream of inputs and time every layer of every step.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--headless", action="store_true",
                     help="no UI: a progress bar, then a summary table" + (" (always, here)" if headless_only else ""))
    run.add_argument("--format", default="text", choices=["text", "json"], help="summary format (headless)")
    add_run_options(run)
    stream = sub.add_parser("stream", help="(for the live UI) run a session, records as JSON Lines on stdout",
                            description="Run a session and write every record as a JSON line on stdout; "
                                        "read commands (record, stop-record, quit) as JSON lines on stdin. "
                                        "The live monitor runs its engine this way, in a process of its own.")
    add_run_options(stream)
    rep = sub.add_parser("report", help="print the summary of a recording",
                         description="Print per-layer and per-step statistics of a recording.")
    rep.add_argument("file", metavar="FILE", help="a recording (.jsonl) written by --record or the Python API")
    rep.add_argument("--format", default="text", choices=["text", "json", "md", "html"],
                     help="text (default), json, md (markdown), or html (a report with pictures)")
    rep.add_argument("-o", "--output", default=None, metavar="OUT",
                     help="write to OUT instead of stdout (a new file; an existing one only with --force)")
    rep.add_argument("--force", action="store_true",
                     help="replace an existing OUT (a regular file only; a symlink is never followed)")
    rep.add_argument("--variant", default=None, metavar="LABEL",
                     help="a compare recording: the report of this variant's steps only (without it: the "
                          "per-variant comparison, text or json)")
    dif = sub.add_parser("diff", help="compare two recordings layer by layer",
                         description="Per layer p50 / p99 moment, cycles and share of A and B side by side, "
                                     "with the change and whether it is beyond the noise of the two runs "
                                     "(95 % bootstrap interval of the ratio of medians). Layers match by name.")
    dif.add_argument("a", metavar="A", help="the recording before the change")
    dif.add_argument("b", metavar="B", help="the recording after the change")
    dif.add_argument("--kind", default=None, choices=["prefill", "decode", "encode"],
                     help="step kind to compare (default: decode, else encode, else prefill)")
    dif.add_argument("--format", default="text", choices=["text", "json", "md"], help="output format")
    dif.add_argument("--normalize-clock", action="store_true",
                     help="compare moments scaled to one reference clock (time × clock / max clock), so runs at "
                          "different boost or throttle compare fairly")
    _add_compare_parser(sub)
    exp = sub.add_parser("export", help="convert a recording: Chrome/Perfetto trace, CSV, JSON",
                         description="chrome: trace-event JSON (open in Perfetto or chrome://tracing) with steps "
                                     "and layers as nested spans and the clock as a counter; csv: one row per "
                                     "step x layer; json: the whole recording as one JSON document.")
    exp.add_argument("file", metavar="FILE", help="a recording (.jsonl)")
    exp.add_argument("--format", required=True, choices=["chrome", "csv", "json"])
    exp.add_argument("-o", "--output", default=None, metavar="OUT",
                     help="output file (default: FILE with .trace.json / .csv / .json; - for stdout); a new "
                          "file: an existing one only with --force")
    exp.add_argument("--force", action="store_true",
                     help="replace an existing OUT (a regular file only; a symlink is never followed)")
    exp.add_argument("--split-ranks", action="store_true",
                     help="a multi-rank session: one output per rank (OUT with .rank{R} before its suffix; a "
                          "chrome trace per rank is Holistic Trace Analysis's layout) instead of one merged file")
    return parser, sub


def _add_compare_parser(sub: Any) -> None:
    from llm_moments.engine.session.compare import add_compare_options

    cmp_ = sub.add_parser("compare", help="run variants of one model interleaved and compare them layer by layer",
                          description="One session, several variants of the same model (dtype, attention, threads, "
                                      "batch size, int8, dropped blocks, cache, compile) run interleaved on the same "
                                      "inputs, order alternated per round (ABAB/BABA). Per layer and variant: p50, "
                                      "p99, cycles, the ratio to the baseline (median of per-round ratios) with a "
                                      "sign-test interval at 95 % for all rows together, and a verdict beyond the "
                                      "--margin; what each variant costs in output and in memory.",
                          epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp_.add_argument("--headless", action="store_true", help="no UI (compare is headless for now)")
    cmp_.add_argument("--format", default="text", choices=["text", "json"], help="summary format")
    add_run_options(cmp_)
    add_compare_options(cmp_)


def cmd_compare(args: argparse.Namespace) -> int:
    with _Interrupts() as interrupts:
        return _compare(args, interrupts)


def _compare(args: argparse.Namespace, interrupts: _Interrupts) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llm_moments.engine.analysis.compare import analyze_compare
    from llm_moments.engine.output.compare import render_compare_json, render_compare_text
    from llm_moments.engine.output.sanitize import visible
    from llm_moments.engine.session.compare import CompareSession, check_compare_options

    err = Console(stderr=True)
    texts, variants = check_compare_options(args)   # every spec checked before the model loads
    with err.status("loading model…"):
        import torch

        from llm_moments.engine.session.models import load_model

        if args.threads:
            torch.set_num_threads(args.threads)
        loaded = load_model(args.model, args.device, args.dtype, args.trust_remote_code)
        session = CompareSession(args, variants, loaded, texts)
        session.warm_up()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True)
    task = progress.add_task("rounds", total=args.rounds)
    interrupts.running = True
    reason, code, failure = "completed", 0, None
    session.start()
    try:
        with progress:
            session.run(interrupts.stop, on_round=lambda n: progress.update(task, completed=n))
    except KeyboardInterrupt:
        reason, code = "interrupted", EXIT_INTERRUPTED
    except MomentsError:
        session.stop("error")
        raise
    except Exception as exc:
        reason, code, failure = "error", 1, f"{type(exc).__name__}: {exc}"
    if interrupts.signum is not None and reason == "completed":
        reason, code = "interrupted", EXIT_INTERRUPTED
    session.stop(reason, error=failure)
    for message in dict.fromkeys(session.statuses):
        _quietly(lambda m=message: print(f"moments: {visible(m)}", file=sys.stderr))
    result = analyze_compare(session.header, session.steps, output=session.output)
    _quietly(lambda: sys.stdout.write(render_compare_json(result) if args.format == "json"
                                      else render_compare_text(result)))
    _quietly(sys.stdout.flush)
    if session.recorder is not None and not session.recording_lost:
        _quietly(lambda: print(f"recorded {session.recorder.steps_on_disk} steps to "
                               f"{visible(session.recorder.path)}", file=sys.stderr))
    if failure:
        return error(f"the model failed during the compare: {failure}", 1)
    if session.recording_lost and code == 0:
        _quietly(lambda: print(f"moments: {visible(session.recording_lost)}", file=sys.stderr))
        code = EXIT_RECORDING_LOST
    return code


def error(message: str, code: int = 2) -> int:
    """One line on stderr; what it quotes from files, models or users shows its control characters."""
    from llm_moments.engine.output.sanitize import visible

    print(f"moments: error: {visible(message)}", file=sys.stderr)
    return code


def guarded(fn: Callable[[], int]) -> int:
    """Run a command: user errors are one line on stderr; unexpected ones too, unless MOMENTS_DEBUG=1."""
    try:
        return fn()
    except MomentsError as exc:
        return error(str(exc))
    except KeyboardInterrupt:
        print("moments: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("MOMENTS_DEBUG"):
            raise
        return error(f"{type(exc).__name__}: {exc} (set MOMENTS_DEBUG=1 for the traceback)", 1)


def _load(path: str):
    from llm_moments.engine.core import recording
    from llm_moments.engine.output.sanitize import visible

    rec = recording.load(path)
    for warning in rec.warnings:
        print(visible(f"moments: warning: {path}: {warning}"), file=sys.stderr)
    return rec


def _warn(path: str, warnings: list[str]) -> None:
    """The reader's warnings about a recording read in a streaming pass (known once it is read)."""
    from llm_moments.engine.output.sanitize import visible

    for warning in warnings:
        print(visible(f"moments: warning: {path}: {warning}"), file=sys.stderr)


def _check_output(output: str, force: bool) -> Any:
    """An output path checked before any work: not empty, not a directory, not a symlink or special
    file, and new unless ``force``."""
    from pathlib import Path

    from llm_moments.engine.core.recording import check_writable

    return check_writable(output, what="write to", example="out" + (Path(output).suffix or ".txt"), force=force)


def _output_mode(source: str) -> int:
    """An output is never readable by more people than the recording it comes from: its permission
    bits (owner read/write added; the umask applies on top)."""
    try:
        return (os.stat(source).st_mode & 0o666) | 0o600
    except OSError:
        return 0o600


@contextlib.contextmanager
def _open_output(path: Any, force: bool, source: str) -> Iterator[IO[str]]:
    """``engine.core.files.output`` (exclusive create; with --force an atomic replace; never through a
    symlink) with its errors as one line."""
    from llm_moments.engine.core import files

    try:
        with files.output(path, force=force, mode=_output_mode(source)) as fh:
            yield fh
    except files.FileExists:
        raise MomentsError(f"cannot write to {path}: it already exists (add --force to replace it, "
                           "or give another name)") from None
    except files.NotRegular as exc:
        raise MomentsError(f"cannot write to {path}: {exc.strerror}") from None
    except MomentsError:
        raise
    except OSError as exc:
        raise MomentsError(f"cannot write to {path}: {exc.strerror or exc}") from None


def _write_out(text: str, output: str | None, force: bool = False, source: str = "") -> None:
    if output is None:
        sys.stdout.write(text)
        return
    from llm_moments.engine.output.sanitize import visible

    path = _check_output(output, force)
    with _open_output(path, force, source) as fh:
        fh.write(text)
    print(f"wrote {visible(path)}", file=sys.stderr)


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
    from llm_moments.engine.output.text import render_diff

    from llm_moments.engine.analysis.scan import scan

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

    if _rank_set(path) is not None:
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
        if _rank_set(spec) is not None:
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


# -- multi-rank sessions (design §10): FILE is the base name (run.jsonl) or any rank's file -------------


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


EXIT_INTERRUPTED = 130      # a signal (SIGINT, SIGTERM, SIGHUP) ended the session; the footer says so
EXIT_RECORDING_LOST = 3     # the session ran, but a write error (disk full, EIO) stopped its recording


class _Interrupts:
    """SIGINT, SIGTERM and SIGHUP all end a headless session the same controlled way.

    While the model loads, the first one raises KeyboardInterrupt (nothing is recorded yet). Once the
    session runs, it only sets ``stop``: the runner stops after the current step (a generate() call
    stops at its next token), the footer says ``interrupted`` and the summary is printed. Any signal
    after the first is ignored, so a second Ctrl+C or a SIGTERM right behind a SIGHUP cannot cut the
    footer off. Handlers can only be set from the main thread; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.signum: int | None = None
        self.running = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _on_signal(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        self.stop.set()
        if first and not self.running:
            raise KeyboardInterrupt


def _quietly(write: Callable[[], Any]) -> None:
    """Terminal output after a hang-up or into a closed pipe fails: the session's end must not."""
    try:
        write()
    except (OSError, ValueError):
        pass


def cmd_run_headless(args: argparse.Namespace) -> int:
    """Exit status: 0; 130 when a signal ended the session; 3 when a write error stopped the
    recording (the session carried on to the end); 1 when the model failed; 2 on a user error."""
    with _Interrupts() as interrupts:
        if getattr(args, "tp", 1) * getattr(args, "pp", 1) > 1:   # N local ranks: engine/session/launch.py
            from llm_moments.engine.session.launch import run_headless

            return run_headless(args, interrupts)
        return _run_headless(args, interrupts)


def _run_headless(args: argparse.Namespace, interrupts: _Interrupts) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llm_moments.engine.output.sanitize import visible
    from llm_moments.engine.output.text import render_json, render_text
    from llm_moments.engine.session.runner import stream
    from llm_moments.engine.session.setup import make_monitor, prepare_session, warm_up

    err = Console(stderr=True)
    steps = args.steps or 64
    with err.status("loading model…"):
        texts, loaded = prepare_session(args)
        if loaded.info.get("random_weights"):
            err.print(f"{visible(args.model)}: random weights — timings are real, outputs are noise", style="yellow",
                      markup=False, highlight=False)
        step_ms = warm_up(args, loaded, texts)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True)
    task = progress.add_task("measuring steps", total=steps)

    def on_record(record: dict) -> None:
        if record.get("type") == "step":
            progress.advance(task)
        elif record.get("type") == "status":  # one line each, never wrapped, never read as markup
            progress.console.print(f"moments: {visible(record.get('message'))}", style="yellow", markup=False,
                                   highlight=False, soft_wrap=True)

    interrupts.running = True  # from here a signal stops the session at the next step
    monitor = make_monitor(args, loaded, [on_record], step_ms_hint=step_ms)
    reason, code, failure = "completed", 0, None
    try:
        with progress:
            monitor.start()
            if monitor.overhead:  # what the depth costs here, before the first measured step
                from llm_moments.engine.core.overhead import cost_line

                progress.console.print(f"moments: {cost_line(monitor.overhead)}", markup=False, highlight=False,
                                       soft_wrap=True)
            stream(loaded, texts, monitor, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                   steps=steps, stop=interrupts.stop)
    except KeyboardInterrupt:
        reason, code = "interrupted", EXIT_INTERRUPTED
    except MomentsError:
        monitor.stop("error")
        raise
    except Exception as exc:
        if not (isinstance(exc, OSError) and interrupts.signum is not None):  # else: the progress bar
            reason, code, failure = "error", 1, f"{type(exc).__name__}: {exc}"  # on a terminal that hung up
    if interrupts.signum is not None and reason == "completed":
        reason, code = "interrupted", EXIT_INTERRUPTED
    monitor.stop(reason, error=failure)
    summary = monitor.summary()
    _quietly(lambda: sys.stdout.write(render_json(summary, monitor.header) if args.format == "json"
                                      else render_text(summary, monitor.header)))
    _quietly(sys.stdout.flush)
    recorder = monitor.recorder
    if recorder is not None and not monitor.recording_lost:
        _quietly(lambda: print(f"recorded {recorder.steps_on_disk} steps to {visible(recorder.path)}", file=sys.stderr))
    if failure:
        return error(f"the model failed during the session: {failure} (the recording is kept)", 1)
    if reason == "interrupted":
        _quietly(lambda: print("moments: interrupted; the summary covers the steps before it", file=sys.stderr))
    if monitor.recording_lost and code == 0:  # its one line was printed when it happened
        code = EXIT_RECORDING_LOST
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = build_parser("moments")
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run` is the default command: no arguments, or options only (`python -m llm_moments.engine --model X`).
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    commands = {"report": cmd_report, "diff": cmd_diff, "export": cmd_export, "compare": cmd_compare}
    if args.command in commands:
        return guarded(lambda: commands[args.command](args))
    if args.command == "stream":
        from llm_moments.engine.session.stream import serve

        return guarded(lambda: serve(args))
    return guarded(lambda: cmd_run_headless(args))
