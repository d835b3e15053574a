"""What every command shares: one-line errors, reading a recording with its warnings, writing an output
safely, and the exit statuses and signal handling of a session."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

from llm_moments.engine.errors import MomentsError


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

    def __enter__(self) -> _Interrupts:
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
    with contextlib.suppress(OSError, ValueError):
        write()
