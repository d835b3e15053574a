"""Run a session and stream its records as JSON Lines on a pipe: the live UI's engine process.

The live UI runs the engine in a child process so that drawing never competes with inference for
the GIL (in quick runs on a busy machine, a Python-heavy decode loop ran 1.5–2.3× slower with the UI
in the same process). Records go out on the process's original stdout; fd 1 is pointed at stderr
first, so a stray print from a library cannot corrupt the stream. Commands come in on stdin, one JSON object a line:
``{"cmd": "record", "path": P}``, ``{"cmd": "stop-record"}``, ``{"cmd": "quit"}``; end of stdin
means quit, so the engine never outlives its UI. SIGINT, SIGTERM and SIGHUP (an SSH hang-up) end
the session the same controlled way: footer written, recording closed.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
from typing import Any, TextIO

from llm_moments.engine.errors import MomentsError

_RUN_OPTIONS = (  # (dest, flag): the run options a child process needs, in the parser's terms
    ("model", "--model"), ("device", "--device"), ("dtype", "--dtype"), ("threads", "--threads"),
    ("inputs", "--inputs"), ("batch_size", "--batch-size"), ("max_new_tokens", "--max-new-tokens"),
    ("depth", "--depth"), ("steps", "--steps"), ("warmup", "--warmup"), ("sample_hz", "--sample-hz"),
    ("util_hz", "--util-hz"), ("record", "--record"),
)
_RUN_FLAGS = (("trust_remote_code", "--trust-remote-code"), ("no_text", "--no-text"),
              ("no_calibrate", "--no-calibrate"))


def to_argv(args: argparse.Namespace) -> list[str]:
    """The ``stream`` command line that runs the session ``args`` describes."""
    argv = ["stream"]
    for dest, flag in _RUN_OPTIONS:
        value = getattr(args, dest, None)
        if value is not None:
            argv += [flag, str(value)]
    for dest, flag in _RUN_FLAGS:
        if getattr(args, dest, False):
            argv.append(flag)
    return argv


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
        try:
            self.fh.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(10)


def serve(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    from llm_moments.engine.session.setup import make_monitor, prepare_session, warm_up
    from llm_moments.engine.session.runner import stream

    out_fd = os.dup(1)
    os.dup2(2, 1)  # from here on, print() goes to stderr
    out = _Out(os.fdopen(out_fd, "w", encoding="utf-8"), on_broken=lambda: stop.set())
    stop = threading.Event()
    interrupted = threading.Event()
    box: dict[str, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        interrupted.set()
        stop.set()

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
                break
            if monitor is None:
                out.put({"type": "status", "level": "warning", "message": "the session is not running yet"})
            elif name == "record":
                try:
                    monitor.start_recording(cmd.get("path", ""))
                except MomentsError as exc:
                    out.put({"type": "status", "level": "error", "message": str(exc)})
            elif name == "stop-record":
                monitor.stop_recording()
        stop.set()  # quit, or the UI closed our stdin

    threading.Thread(target=control, name="moments-stream-control", daemon=True).start()
    monitor = None
    reason, failure, code = "completed", None, 0
    try:
        out.put({"type": "loading", "message": f"loading {args.model}…"})
        texts, loaded = prepare_session(args)
        if not stop.is_set():
            out.put({"type": "loading", "message": f"warming up {args.model}…"})
            warm_up(args, loaded, texts)
        if not stop.is_set():
            monitor = make_monitor(args, loaded, [out.put])
            box["monitor"] = monitor
            monitor.start()
            if args.record:
                out.put({"type": "recording", "path": str(monitor.recorder.path)})
            stream(loaded, texts, monitor, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                   steps=args.steps, stop=stop)
    except MomentsError as exc:
        reason, failure, code = "error", str(exc), 2
    except Exception as exc:  # reported to the UI with its message; the recording is kept
        reason, failure, code = "error", f"{type(exc).__name__}: {exc}", 1
    finally:
        if interrupted.is_set() and reason == "completed":
            reason = "interrupted"
        if monitor is not None:
            monitor.stop(reason, error=failure)
        if failure:
            out.put({"type": "error", "message": failure})
        out.close()
    return code
