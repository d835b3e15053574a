"""Commands that run a model headless: ``run --headless`` and ``compare``."""

from __future__ import annotations

import argparse
import sys

from llm_moments.engine.cli.common import EXIT_INTERRUPTED, EXIT_RECORDING_LOST, _Interrupts, _quietly, error
from llm_moments.engine.errors import MomentsError


def cmd_compare(args: argparse.Namespace) -> int:
    with _Interrupts() as interrupts:
        return _compare(args, interrupts)


def _compare(args: argparse.Namespace, interrupts: _Interrupts) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.text import Text

    from llm_moments.engine.analysis.compare import analyze_compare
    from llm_moments.engine.output.compare import render_compare_json, render_compare_text
    from llm_moments.engine.output.sanitize import visible
    from llm_moments.engine.session.compare import CompareSession, check_compare_options

    err = Console(stderr=True)
    texts, variants = check_compare_options(args)   # every spec checked before the model loads
    with err.status("loading model…") as status:
        import torch

        from llm_moments.engine.session.models import load_model

        if args.threads:
            torch.set_num_threads(args.threads)
        loaded = load_model(args.model, args.device, args.dtype, args.trust_remote_code)
        session = CompareSession(args, variants, loaded, texts)
        # a compiled variant compiles here (tens of seconds): the status says so, so it does not look hung
        session.warm_up(on_status=lambda line: status.update(Text(visible(line))))
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
    recorder = session.recorder   # stop() closes it and lets go of it; the line below names it
    session.stop(reason, error=failure)
    for message in dict.fromkeys(session.statuses):
        _quietly(lambda m=message: print(f"moments: {visible(m)}", file=sys.stderr))
    result = analyze_compare(session.header, session.steps, output=session.output)
    _quietly(lambda: sys.stdout.write(render_compare_json(result) if args.format == "json"
                                      else render_compare_text(result)))
    _quietly(sys.stdout.flush)
    if recorder is not None and not session.recording_lost:
        _quietly(lambda: print(f"recorded {recorder.steps_on_disk} steps to "
                               f"{visible(recorder.path)}", file=sys.stderr))
    if failure:
        return error(f"the model failed during the compare: {failure}", 1)
    if session.recording_lost and code == 0:
        _quietly(lambda: print(f"moments: {visible(session.recording_lost)}", file=sys.stderr))
        code = EXIT_RECORDING_LOST
    return code


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
            if getattr(args, "ops", None) is not None:  # ops mode (engine/core/ops.py)
                monitor.start_ops(args.ops, args.ops_steps)
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
