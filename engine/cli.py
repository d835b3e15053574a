"""Headless command line: ``moments run --headless`` and ``moments report``.

The parser is built here so the UI's entry point (tui/cli.py) extends it rather than repeating it;
this module never imports the UI. ``python -m llm_moments.engine`` runs the same commands without Textual.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any, Callable, Sequence

from llm_moments import __version__
from llm_moments.engine.errors import MomentsError

EPILOG = """\
A step is one forward of the model (a prefill, one decode token, or one encoder batch); a moment is
one layer's time inside a step; cycles = moment time x the clock the processor ran at (GPU SM clock
from NVML; on CPU the CPU clock, labelled nominal when that is all the OS tells).
"""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def rate_hz(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def add_run_options(p: argparse.ArgumentParser) -> None:
    from llm_moments.engine.session.presets import PRESETS  # torch-free: --help stays instant

    presets = "; ".join(f"{k}: {v['about']}" for k, v in PRESETS.items())
    g = p.add_argument_group("model")
    g.add_argument("--model", default="minilm", metavar="NAME|DIR|ORG/ID",
                   help=f"preset, local Hugging Face model directory, or Hub id already in the local cache "
                        f"(never downloaded). Presets: {presets}. Default: minilm")
    g.add_argument("--device", default="auto", help="auto (first CUDA GPU, else CPU), cpu, cuda or cuda:N")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="weights' dtype; auto: float32 on CPU, bfloat16 (or float16) on GPU")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model directory's own Python code to run (off by default)")
    g.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's)")
    g = p.add_argument_group("inputs")
    g.add_argument("--inputs", default=None, metavar="FILE",
                   help="one text per line, or JSON Lines with a \"text\" field; - for stdin. "
                        "Default: built-in sample texts, looped")
    g.add_argument("--batch-size", type=positive_int, default=1, help="texts per step (default 1)")
    g.add_argument("--max-new-tokens", type=positive_int, default=32,
                   help="decoders: tokens generated per batch, each a decode step after the prefill (default 32)")
    g = p.add_argument_group("measurement")
    g.add_argument("--depth", default="blocks", choices=["blocks", "sublayers", "leaves"],
                   help="blocks: embeddings, each transformer block, final norm/head (default); "
                        "sublayers: also attention, MLP and norms inside blocks; leaves: every leaf module")
    g.add_argument("--steps", type=positive_int, default=None,
                   help="stop after this many steps (a batch is finished first). Headless default 64; "
                        "live: until you quit")
    g.add_argument("--warmup", type=non_negative_int, default=1,
                   help="batches run before measuring, unhooked (default 1)")
    g.add_argument("--sample-hz", type=rate_hz, default=10.0, help="clock samples per second, at most 20 (default 10)")
    g.add_argument("--util-hz", type=rate_hz, default=5.0, help="utilization samples per second, at most 10 (default 5)")
    g.add_argument("--no-calibrate", action="store_true",
                   help="skip the roofline calibration (a matmul and a copy, ~2 s, cached per device)")
    g = p.add_argument_group("recording")
    g.add_argument("--record", default=None, metavar="FILE", help="write the session to FILE (JSON Lines, moments/1)")
    g.add_argument("--no-text", action="store_true", help="keep prompts and generated text out of the recording")


def build_parser(prog: str = "moments", headless_only: bool = True) -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(
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
    rep.add_argument("-o", "--output", default=None, metavar="OUT", help="write to OUT instead of stdout")
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
    exp = sub.add_parser("export", help="convert a recording: Chrome/Perfetto trace, CSV, JSON",
                         description="chrome: trace-event JSON (open in Perfetto or chrome://tracing) with steps "
                                     "and layers as nested spans and the clock as a counter; csv: one row per "
                                     "step x layer; json: the whole recording as one JSON document.")
    exp.add_argument("file", metavar="FILE", help="a recording (.jsonl)")
    exp.add_argument("--format", required=True, choices=["chrome", "csv", "json"])
    exp.add_argument("-o", "--output", default=None, metavar="OUT",
                     help="output file (default: FILE with .trace.json / .csv / .json)")
    return parser, sub


def error(message: str, code: int = 2) -> int:
    print(f"moments: error: {message}", file=sys.stderr)
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

    rec = recording.load(path)
    for warning in rec.warnings:
        print(f"moments: warning: {path}: {warning}", file=sys.stderr)
    return rec


def _write_out(text: str, output: str | None) -> None:
    from pathlib import Path

    if output is None:
        sys.stdout.write(text)
        return
    from llm_moments.engine.core.recording import check_writable

    path = check_writable(output, what="write to", example="out" + (Path(output).suffix or ".txt"))
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    from llm_moments.engine.output.text import render_json, render_text
    from llm_moments.engine.analysis.stats import summarize_recording

    rec = _load(args.file)
    if args.format in ("md", "html"):
        from llm_moments.engine.output.report_doc import render_html, render_markdown

        out = (render_html if args.format == "html" else render_markdown)(rec)
    else:
        summary = summarize_recording(rec.header, rec.steps)
        out = render_json(summary, rec.header) if args.format == "json" else render_text(summary, rec.header)
    _write_out(out, getattr(args, "output", None))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from llm_moments.engine.analysis.diff import compare
    from llm_moments.engine.output.text import render_diff

    diff = compare(_load(args.a), _load(args.b), kind=args.kind, normalize_clock=args.normalize_clock)
    sys.stdout.write(render_diff(diff, args.a, args.b, args.format))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm_moments.engine.output.export import export

    rec = _load(args.file)
    suffix = {"chrome": ".trace.json", "csv": ".csv", "json": ".json"}[args.format]
    output = args.output or str(Path(args.file).with_suffix("")) + suffix
    if output == "-":
        sys.stdout.write(export(rec, args.format))
        return 0
    _write_out(export(rec, args.format), output)
    return 0


def cmd_run_headless(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llm_moments.engine.output.text import render_json, render_text
    from llm_moments.engine.session.runner import stream
    from llm_moments.engine.session.setup import make_monitor, prepare_session, warm_up

    err = Console(stderr=True)
    steps = args.steps or 64
    with err.status("loading model…"):
        texts, loaded = prepare_session(args)
        if loaded.info.get("random_weights"):
            err.print(f"[yellow]{args.model}: random weights — timings are real, outputs are noise[/]")
        warm_up(args, loaded, texts)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True)
    task = progress.add_task("measuring steps", total=steps)

    def on_record(record: dict) -> None:
        if record.get("type") == "step":
            progress.advance(task)
        elif record.get("type") == "status":
            progress.console.print(f"[yellow]moments: {record['message']}[/]")

    monitor = make_monitor(args, loaded, [on_record])
    reason, code, failure = "completed", 0, None
    # SIGTERM ends the session like Ctrl+C: the footer is written and the summary printed.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        with progress:
            monitor.start()
            stream(loaded, texts, monitor, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                   steps=steps)
    except KeyboardInterrupt:
        reason, code = "interrupted", 130
    except MomentsError:
        monitor.stop("error")
        raise
    except Exception as exc:
        reason, code, failure = "error", 1, f"{type(exc).__name__}: {exc}"
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    monitor.stop(reason, error=failure)
    summary = monitor.summary()
    sys.stdout.write(render_json(summary, monitor.header) if args.format == "json"
                     else render_text(summary, monitor.header))
    if args.record:
        err.print(f"recorded {monitor.steps_recorded} steps to {args.record}")
    if failure:
        return error(f"the model failed during the session: {failure} (the recording is kept)", 1)
    if reason == "interrupted":
        print("moments: interrupted; the summary covers the steps before it", file=sys.stderr)
    return code


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = build_parser("moments")
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run` is the default command: no arguments, or options only (`python -m llm_moments.engine --model X`).
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    commands = {"report": cmd_report, "diff": cmd_diff, "export": cmd_export}
    if args.command in commands:
        return guarded(lambda: commands[args.command](args))
    if args.command == "stream":
        from llm_moments.engine.session.stream import serve

        return guarded(lambda: serve(args))
    return guarded(lambda: cmd_run_headless(args))
