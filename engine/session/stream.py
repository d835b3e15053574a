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

``moments compare`` in the live UI runs its child through the same plumbing (``Serving``):
engine/session/compare_stream.py.

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


class Serving:
    """The protocol's plumbing for one child: the record pipe (``out``), the signals, and the thread
    that reads the UI's commands. ``target`` is what ``record`` / ``stop-record`` / ``ops`` act on once
    the session runs (a Monitor, or a compare's CompareSession: both have ``start_recording``,
    ``stop_recording`` and ``start_ops``); until ``loaded()`` an end leaves at once."""

    def __init__(self, stdin: Any = None):
        out_fd = os.dup(1)
        os.dup2(2, 1)  # from here on, print() goes to stderr
        self.stop = threading.Event()
        self.interrupted = threading.Event()
        self.out = _Out(os.fdopen(out_fd, "w", encoding="utf-8"), on_broken=self._ui_gone)
        self.loading = True
        self.target: Any = None
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        threading.Thread(target=self._control, args=(stdin,), name="moments-stream-control", daemon=True).start()

    def loaded(self) -> None:
        """From here an end is a controlled one: footer written."""
        self.loading = False

    def _ui_gone(self) -> None:  # our stdout pipe broke: nobody reads the session any more
        self.interrupted.set()
        self.stop.set()

    def _end_now_if_loading(self) -> None:
        # Loading a model or warming it up cannot be cut short, and nothing is recorded yet (the
        # recording opens with the monitor): leave at once rather than keep a hung-up UI waiting.
        if self.loading:
            os._exit(130)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.interrupted.set()
        self.stop.set()
        self._end_now_if_loading()

    def _control(self, stdin: Any) -> None:
        out = self.out
        for line in stdin or sys.stdin:
            try:
                cmd = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(cmd, dict):
                continue
            name = cmd.get("cmd")
            target = self.target
            if name == "quit":
                if cmd.get("reason") == "interrupted":  # the UI's terminal went, or it got a signal
                    self.interrupted.set()
                self.stop.set()
                self._end_now_if_loading()
                return
            if target is None:
                out.put({"type": "status", "level": "warning", "message": "the session is not running yet"})
                if name == "record":   # the UI marked itself recording on asking: say no file is open
                    out.put({"type": "recording", "path": None})
                continue
            try:
                if name == "record":
                    target.start_recording(cmd.get("path", ""))
                elif name == "stop-record":
                    target.stop_recording()
                elif name == "ops":  # ops mode on one layer for the next N steps (engine/core/ops.py)
                    target.start_ops(cmd.get("layer"), cmd.get("steps"))
            except MomentsError as exc:
                out.put({"type": "status", "level": "error", "message": str(exc)})
        self.interrupted.set()  # stdin closed without a quit: the UI is gone (killed, or it crashed)
        self.stop.set()
        self._end_now_if_loading()

    def end_reason(self, reason: str, code: int) -> tuple[str, int]:
        """A session that ran to its end while the UI went away or a signal came is ``interrupted``."""
        if self.interrupted.is_set() and reason == "completed":
            return "interrupted", 130
        return reason, code


def serve(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    from llm_moments.engine.session.runner import stream
    from llm_moments.engine.session.setup import make_monitor, prepare_session, warm_up

    io = Serving(stdin)
    out, stop = io.out, io.stop
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
        step_ms = None
        if ctx is not None or not stop.is_set():
            out.put({"type": "loading", "message": f"warming up {args.model}…"})
            step_ms = warm_up(args, loaded, texts)
        io.loaded()
        agree = None if ctx is None else (lambda wish: rank.agree_stop(ctx, wish))
        if not (agree(stop.is_set()) if agree is not None else stop.is_set()):
            monitor = make_monitor(args, loaded, [out.put], step_ms_hint=step_ms)
            io.target = monitor
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
        reason, code = io.end_reason(reason, code)
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
