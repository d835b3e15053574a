"""The live ``moments compare``'s engine process: a CompareSession whose records go out as JSON Lines.

The UI (tui/compare_live.py) runs ``python -P -m llm_moments.engine.session.compare_stream ARGS``,
ARGS built by ``compare_argv`` from the parser's own definitions (setup.add_run_options,
variants.add_compare_options: the ones the ``compare`` command is made of), so every run and compare
option reaches the child as given, variant specs as ``--variant=SPEC`` values. Protocol, signals and
exit status are ``moments stream``'s (engine/session/stream.py, whose plumbing this uses): commands
``record`` / ``stop-record`` / ``quit`` on stdin (``ops`` is refused with a status line), footer
``completed`` / ``interrupted`` whatever ends the UI.

Out go the records a recording of the compare holds (the session's header with its ``variants``,
steps tagged ``variant`` / ``round``, samples, texts, ``compare_output``, the footer) and, for the UI
only (never recorded), ``compare`` records:

    {"type": "compare", "t_ns", "rounds_done", "rounds", "order": [labels of the round now running],
     "final": bool, "analysis_round": N, "analysis": {...}}

one when the session starts and one after every round (progress: ``rounds_done`` of ``rounds``);
``analysis`` (render_compare_json's document: per variant × layer × kind p50 / p99 / cycles / ratio /
interval / verdict, clock-normalized too, and the output agreement so far) comes with it every
``ANALYSIS_EVERY_ROUNDS`` rounds, from round 1, and with the last one (``final``: after the last step,
before the footer). The statistics run between rounds, never inside a timed step, and are skipped
while the last one's cost would exceed a tenth of the time since: a long session does not spend its
time re-analysing its growing history. The UI draws what it receives and computes nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from llm_moments.engine.errors import MomentsError

ANALYSIS_EVERY_ROUNDS = 2
ANALYSIS_MAX_SHARE = 0.1     # of the session's time, at most, spent on the live statistics


def compare_options_argv(args: argparse.Namespace) -> list[str]:
    """The words that give back ``args``' compare options (``--variant`` repeated, ``--rounds``,
    ``--margin``), derived from add_compare_options' own actions (setup.options_argv)."""
    from llm_moments.engine.session.setup import options_argv
    from llm_moments.engine.session.variants import add_compare_options

    return options_argv(args, add_compare_options, "compare")


def compare_argv(args: argparse.Namespace) -> list[str]:
    """The child's arguments for the compare ``args`` describes: every run option, then every compare option."""
    from llm_moments.engine.session.setup import run_options_argv

    return [*run_options_argv(args), *compare_options_argv(args)]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        from llm_moments.engine.output.sanitize import visible

        self.exit(2, f"moments: error: {visible(message)}\n")


def parser() -> argparse.ArgumentParser:
    from llm_moments.engine.session.setup import add_run_options
    from llm_moments.engine.session.variants import add_compare_options

    p = _Parser(prog="python -m llm_moments.engine.session.compare_stream", allow_abbrev=False,
                description="(for the live UI) run a compare, records as JSON Lines on stdout, commands on stdin")
    add_run_options(p)
    add_compare_options(p)
    return p


class _Commands:
    """What the UI's ``record`` / ``stop-record`` / ``ops`` act on in a compare (stream.Serving's target)."""

    def __init__(self, session: Any):
        self.session = session

    def start_recording(self, path: Any, overwrite: bool = False) -> str:
        """Record the rest of the session to ``path`` (a bad path raises MomentsError now)."""
        from llm_moments.engine.core.recording import Recorder

        recorder = Recorder(path, overwrite=overwrite, private=not self.session.args.no_text)
        self.session.switch_recording(recorder)
        return str(recorder.path)

    def stop_recording(self) -> None:
        self.session.switch_recording(None)

    def start_ops(self, layer: Any, steps: Any = None) -> None:
        raise MomentsError("ops mode times the operators of one model's layer; a compare runs several "
                           "variants: use `moments run --ops LAYER` with the variant's options")


class _Analyst:
    """The ``compare`` records: progress after every round, the statistics every few rounds."""

    def __init__(self, session: Any, put: Any, every_rounds: int = ANALYSIS_EVERY_ROUNDS):
        self.session, self.put, self.every = session, put, max(1, every_rounds)
        self.labels = [v.label for v in session.variants]
        self.rounds = session.args.rounds
        self.done = 0
        self.analysed_round: int | None = None
        self.cost_s = 0.0
        self.analysed_at = time.monotonic()

    def order(self, r: int) -> list[str]:
        """The order the variants run in round ``r`` (CompareSession.run: reversed on odd rounds)."""
        return list(self.labels) if r % 2 == 0 else self.labels[::-1]

    def _record(self, final: bool = False) -> dict[str, Any]:
        return {"type": "compare", "t_ns": self.session._now_ns(), "rounds_done": self.done,
                "rounds": self.rounds, "order": self.order(self.done), "final": final}

    def _analysis(self, output: dict[str, Any]) -> dict[str, Any]:
        from llm_moments.engine.analysis.compare import analyze_compare
        from llm_moments.engine.output.compare import render_compare_json

        t0 = time.monotonic()
        with self.session._lock:
            steps = list(self.session.steps)
        result = analyze_compare(self.session.header, steps, output=output)
        doc = json.loads(render_compare_json(result))   # exactly what `compare --format json` prints
        self.analysed_at = time.monotonic()
        self.cost_s = self.analysed_at - t0
        self.analysed_round = self.done
        return {"analysis_round": self.done, "analysis": doc}

    def start(self) -> None:
        self.put(self._record())

    def _add_analysis(self, rec: dict[str, Any], output: dict[str, Any]) -> None:
        try:
            rec.update(self._analysis(output))
        except Exception as exc:  # the session and its recording matter more than the live figures
            self.put({"type": "status", "level": "warning",
                      "message": f"the compare's statistics failed: {type(exc).__name__}: {exc}"})

    def on_round(self, done: int) -> None:
        self.done = done
        rec = self._record()
        since = time.monotonic() - self.analysed_at
        due = self.analysed_round is None or done - self.analysed_round >= self.every
        if due and self.cost_s <= ANALYSIS_MAX_SHARE * since:
            self.session.flush()   # the round's last steps are resolved by the monitors' workers
            with self.session._lock:
                output = self.session.agreement.result()
            self._add_analysis(rec, output)
        self.put(rec)

    def final(self) -> None:
        """Every step is in; the session's output agreement is known (CompareSession.stop)."""
        rec = self._record(final=True)
        self._add_analysis(rec, self.session.output)
        self.put(rec)


def serve_compare(args: argparse.Namespace, stdin: Any = None) -> int:
    from llm_moments.engine.session.compare import CompareSession, check_compare_options
    from llm_moments.engine.session.stream import EXIT_RECORDING_LOST, Serving

    io = Serving(stdin)
    out, stop = io.out, io.stop
    session = analyst = None
    reason, failure, code = "completed", None, 0
    try:
        out.put({"type": "loading", "message": f"loading {args.model}…"})
        texts, variants = check_compare_options(args)
        import torch

        from llm_moments.engine.session.models import load_model

        if args.threads:
            torch.set_num_threads(args.threads)
        loaded = load_model(args.model, args.device, args.dtype, args.trust_remote_code)
        session = CompareSession(args, variants, loaded, texts, listeners=[out.put])
        out.put({"type": "loading", "message": f"warming up {len(variants)} variants of {args.model}…"})
        session.warm_up(on_status=lambda line: out.put({"type": "loading", "message": line}))
        io.loaded()
        if not stop.is_set():
            session.start()
            io.target = _Commands(session)
            if session.recorder is not None:
                out.put({"type": "recording", "path": str(session.recorder.path)})
            analyst = _Analyst(session, out.put)
            analyst.start()
            session.run(stop, on_round=analyst.on_round)
    except MomentsError as exc:
        reason, failure, code = "error", str(exc), 2
    except Exception as exc:  # reported to the UI with its message; the recording is kept
        reason, failure, code = "error", f"{type(exc).__name__}: {exc}", 1
    finally:
        reason, code = io.end_reason(reason, code)
        if session is not None:
            final = analyst.final if analyst is not None and session.header is not None else None
            session.stop(reason, error=failure, before_footer=final)
            if session.recording_lost and code == 0:
                code = EXIT_RECORDING_LOST
        if failure:
            out.put({"type": "error", "message": failure})
        out.close()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    return serve_compare(args)


if __name__ == "__main__":
    sys.exit(main())
