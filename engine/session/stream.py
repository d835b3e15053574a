"""Run a session and stream its records as JSON Lines on a pipe: the live UI's engine process.

The live UI runs the engine in a child process so that drawing never competes with inference for
the GIL (in quick runs on a busy machine, a Python-heavy decode loop ran 1.5–2.3× slower with the UI
in the same process). Records go out on the process's original stdout; fd 1 is pointed at stderr
first, so a stray print from a library cannot corrupt the stream. Commands come in on stdin, one JSON object a line:
``{"cmd": "record", "path": P}``, ``{"cmd": "stop-record"}``, ``{"cmd": "ops", "layer": I, "steps": N}``
(ops mode, engine/core/ops.py), ``{"cmd": "quit"}`` (footer
``completed``) or ``{"cmd": "quit", "reason": "interrupted"}`` (the UI got a signal or lost its
terminal). End of stdin without a quit, or a broken stdout pipe, means the UI is gone: an
``interrupted`` end, so the engine never outlives its UI. SIGINT, SIGTERM and SIGHUP, once or
repeated, end the session the same controlled way: footer ``interrupted``, recording closed.

One rank of ``moments run --tp N`` / ``--pp N`` runs here too (engine/session/launch.py: the
launcher's environment says which): it joins the world, loads its shard, agrees with the other ranks
once per batch whether to stop, tags nothing (the launcher adds ``rank``) and exits without the
interpreter's teardown once its footer and records are out.

Exit status: 0, 130 when interrupted, 3 when a write error stopped the recording (the session went
on; the status record that said so carries ``recording_lost``), 1 or 2 on an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import sys
import threading
from typing import Any, TextIO

from llm_moments.engine.errors import MomentsError

EXIT_RECORDING_LOST = 3


def to_argv(args: argparse.Namespace) -> list[str]:
    """The ``stream`` command line that runs the session ``args`` describes: every run option, derived
    from the parser's own definition (engine.session.setup.add_run_options), never a hand-kept list."""
    from llm_moments.engine.session.setup import run_options_argv

    return ["stream", *run_options_argv(args)]


class _Out:
    """Writes records from any thread through one writer thread; flushes whenever it catches up."""

    def __init__(self, fh: TextIO, on_broken: Any):
        self.fh, self.on_broken = fh, on_broken
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.broken = False
        self.thread = threading.Thread(target=self._run, name="moments-stream-out", daemon=True)
        self.thread.start()

    def put(self, record: dict[str, Any]) -> None:
        self.q.put(record)

    def _run(self) -> None:
        while True:
            record = self.q.get()
            if record is None:
                break
            if self.broken:
                continue
            try:
                self.fh.write(json.dumps(record, separators=(",", ":")) + "\n")
                if self.q.empty():
                    self.fh.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.broken = True  # the UI is gone: end the session properly
                self.on_broken()
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self.fh.flush()

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(10)


def serve(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    from llm_moments.engine.session.runner import stream
    from llm_moments.engine.session.setup import make_monitor, prepare_session, warm_up

    out_fd = os.dup(1)
    os.dup2(2, 1)  # from here on, print() goes to stderr
    stop = threading.Event()
    interrupted = threading.Event()

    def ui_gone() -> None:  # our stdout pipe broke: nobody reads the session any more
        interrupted.set()
        stop.set()

    out = _Out(os.fdopen(out_fd, "w", encoding="utf-8"), on_broken=ui_gone)
    box: dict[str, Any] = {"loading": True}

    def end_now_if_loading() -> None:
        # Loading a model or warming it up cannot be cut short, and nothing is recorded yet (the
        # recording opens with the monitor): leave at once rather than keep a hung-up UI waiting.
        if box["loading"]:
            os._exit(130)

    def on_signal(signum: int, frame: Any) -> None:
        interrupted.set()
        stop.set()
        end_now_if_loading()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def control() -> None:
        for line in stdin or sys.stdin:
            try:
                cmd = json.loads(line)
            except json.JSONDecodeError:
                continue
            name = cmd.get("cmd")
            monitor = box.get("monitor")
            if name == "quit":
                if cmd.get("reason") == "interrupted":  # the UI's terminal went, or it got a signal
                    interrupted.set()
                stop.set()
                end_now_if_loading()
                return
            if monitor is None:
                out.put({"type": "status", "level": "warning", "message": "the session is not running yet"})
            elif name == "record":
                try:
                    monitor.start_recording(cmd.get("path", ""))
                except MomentsError as exc:
                    out.put({"type": "status", "level": "error", "message": str(exc)})
            elif name == "stop-record":
                monitor.stop_recording()
            elif name == "ops":  # ops mode on one layer for the next N steps (engine/core/ops.py)
                try:
                    monitor.start_ops(cmd.get("layer"), cmd.get("steps"))
                except MomentsError as exc:
                    out.put({"type": "status", "level": "error", "message": str(exc)})
        interrupted.set()  # stdin closed without a quit: the UI is gone (killed, or it crashed)
        stop.set()
        end_now_if_loading()

    threading.Thread(target=control, name="moments-stream-control", daemon=True).start()
    monitor = None
    ctx = None   # one rank of `moments run --tp N` (engine/session/launch.py): the world it joined
    reason, failure, code = "completed", None, 0
    try:
        from llm_moments.engine.session import rank

        out.put({"type": "loading", "message": f"loading {args.model}…"})
        ctx = rank.join_world(args)
        if ctx is None:
            texts, loaded = prepare_session(args)
        else:   # every rank takes the same steps: no early exits between collectives
            from llm_moments.engine.session.setup import check_run_options

            texts = check_run_options(args)
            loaded = rank.load_sharded(args, ctx)
        if ctx is not None or not stop.is_set():
            out.put({"type": "loading", "message": f"warming up {args.model}…"})
            box["step_ms"] = warm_up(args, loaded, texts)
        box["loading"] = False  # from here an end is a controlled one: footer written
        agree = None if ctx is None else (lambda wish: rank.agree_stop(ctx, wish))
        if not (agree(stop.is_set()) if agree is not None else stop.is_set()):
            monitor = make_monitor(args, loaded, [out.put], step_ms_hint=box.get("step_ms"))
            box["monitor"] = monitor
            monitor.start()
            if getattr(args, "ops", None) is not None:
                monitor.start_ops(args.ops, args.ops_steps)
            if args.record:
                out.put({"type": "recording", "path": str(monitor.recorder.path)})
            stream(loaded, texts, monitor, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                   steps=args.steps, stop=stop, agree=agree)
    except MomentsError as exc:
        reason, failure, code = "error", str(exc), 2
    except Exception as exc:  # reported to the UI with its message; the recording is kept
        reason, failure, code = "error", f"{type(exc).__name__}: {exc}", 1
    finally:
        if interrupted.is_set() and reason == "completed":
            reason, code = "interrupted", 130
        if monitor is not None:
            monitor.stop(reason, error=failure)
            if monitor.recording_lost and code == 0:
                code = EXIT_RECORDING_LOST
        if failure:
            out.put({"type": "error", "message": failure})
        out.close()
        if ctx is not None:
            from llm_moments.engine.session.rank import leave_world

            leave_world(ctx)
    if ctx is not None:
        # A rank's recording is closed and its records are out: skip the interpreter's teardown of
        # torch and transformers (seconds on a busy machine), which the launcher would wait for.
        for fh in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                fh.flush()
        os._exit(code)
    return code
