"""How the UI ends when its terminal goes away (an SSH drop, ``tmux kill-session``) or a signal comes.

Two things used to keep the UI alive after a hang-up, SIGTERM included:

- Textual's writer thread ends at the first write the dead terminal refuses (EIO) and leaves its
  bounded queue (30 writes) undrained: the event loop then blocks for good in ``Queue.put`` on the
  31st write, so no timer, key or ``call_later`` runs again, a signal handler that only schedules
  work on the loop included. ``_TtyFile`` swallows those errors and reports the terminal lost.
- The SIGCONT that comes with a hang-up (the kernel sends it to the session leader, ``timeout``
  forwards one) makes Textual restart its application mode although nothing suspended it: a second
  writer and a second input thread, which spins on the dead terminal (select: readable, read: b"").
  ``HangupSafeDriver`` restarts only after its own suspend.

The driver also keeps the bytes down and watches the terminal keep up (issue #11, tui/wire.py): each
write is compacted (no reset + the same style again), and the time the writer thread spends blocked
on the terminal is metered, so the app can lower its frame rate on a link that cannot take it.

``SessionGuard`` ends the session the same way whatever the cause (SIGTERM, SIGHUP, a terminal that
is gone without any signal: its ``tcgetattr`` fails): the engine is asked to stop at once from a
thread of its own (footer ``interrupted``, recording closed), the app is asked to exit like ``q``,
and if the event loop does not get there within ``grace_s`` the process leaves with ``os._exit``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import termios
import threading
from collections.abc import Callable
from typing import Any

from textual.drivers.linux_driver import LinuxDriver

from .wire import WriteMeter, compact

EXIT_INTERRUPTED = 130  # as the headless run's
EXIT_RECORDING_LOST = 3  # as the headless run's: a write error stopped the recording


class _TtyFile:
    """The driver's output file: a write or flush the terminal refuses marks it lost, and output is
    dropped from then on, so Textual's writer thread keeps draining its queue. The time each write
    and flush blocks goes to ``meter``."""

    def __init__(self, fh: Any, on_lost: Callable[[], None], meter: WriteMeter | None = None):
        self.fh, self.on_lost, self.lost = fh, on_lost, False
        self.meter = meter or WriteMeter()

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.on_lost()

    def write(self, text: str) -> None:
        if not self.lost:
            try:
                self.meter.timed(lambda: self.fh.write(text), len(text))
            except (OSError, ValueError):
                self._lose()

    def flush(self) -> None:
        if not self.lost:
            try:
                self.meter.timed(self.fh.flush)
            except (OSError, ValueError):
                self._lose()

    def fileno(self) -> int:
        return self.fh.fileno()


class HangupSafeDriver(LinuxDriver):
    """Textual's Linux driver, with the two hang-up fixes above, compact output and a write meter."""

    def __init__(self, app: Any, **kwargs: Any):
        super().__init__(app, **kwargs)
        self.write_meter = WriteMeter()
        self._file = _TtyFile(self._file, self._terminal_lost, self.write_meter)
        self._suspended = False

    def write(self, data: str) -> None:
        super().write(compact(data))

    def queued_writes(self) -> int:
        """Frames waiting for the writer thread (Textual's queue holds 30, then the event loop blocks)."""
        writer = getattr(self, "_writer_thread", None)
        queue = getattr(writer, "_queue", None)
        return queue.qsize() if queue is not None else 0

    def _terminal_lost(self) -> None:
        guard = getattr(self._app, "session_guard", None)
        if guard is not None:
            guard.end("the terminal went away")

    def _sigtstp_application(self, *args: Any) -> None:
        self._suspended = True
        super()._sigtstp_application(*args)

    def _sigcont_application(self, *args: Any) -> None:
        if self._suspended:  # a SIGCONT with no suspend before it (a hang-up sends one) changes nothing
            self._suspended = False
            super()._sigcont_application(*args)


def terminal_alive(fd: int) -> bool:
    """False once the terminal on ``fd`` was hung up (EIO) or is otherwise not a terminal any more."""
    try:
        termios.tcgetattr(fd)
    except (termios.error, OSError):
        return False
    return True


class SessionGuard:
    """Ends the session on SIGTERM, SIGHUP or a lost terminal, whether or not the event loop runs."""

    def __init__(self, app: Any, source: Any, *, grace_s: float = 3.0, poll_s: float = 0.25,
                 stop_timeout_s: float = 5.0, fds: tuple[int, ...] = (0, 2),
                 exit: Callable[[int], None] = os._exit):
        self.app, self.source = app, source
        self.grace_s, self.poll_s, self.stop_timeout_s = grace_s, poll_s, stop_timeout_s
        self.fds = fds
        self._exit = exit
        self.why: str | None = None          # why the session is ending, once it is
        self.app_done = threading.Event()    # app.run() returned
        self._lock = threading.RLock()  # end() may run in a signal handler that interrupted end()
        self._old: dict[int, Any] = {}

    # -- set-up -----------------------------------------------------------------------------------
    def install(self) -> SessionGuard:
        self.app.session_guard = self
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # SIGINT: a `kill -INT`, not the key
            self._old[sig] = signal.signal(sig, self._on_signal)
        ttys = [fd for fd in self.fds if _isatty(fd)]
        if ttys:
            threading.Thread(target=self._watch, args=(ttys,), name="moments-tty-watch", daemon=True).start()
        return self

    def done(self) -> None:
        """app.run() returned: from here on the main thread finishes the session itself. The handlers
        stay until ``restore``: a second signal while the engine writes its footer changes nothing."""
        self.app_done.set()

    def restore(self) -> None:
        """The session is over: the signals' previous handlers come back."""
        self.app_done.set()
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    # -- causes -----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.end(f"{signal.Signals(signum).name}")

    def _watch(self, fds: list[int]) -> None:
        while not self.app_done.wait(self.poll_s):
            if not all(terminal_alive(fd) for fd in fds):
                self.end("the terminal went away")
                return

    # -- the one way out --------------------------------------------------------------------------
    def end(self, why: str) -> None:
        """Safe from any thread and from a signal handler; only the first call does anything."""
        with self._lock:
            if self.why is not None or self.app_done.is_set():
                return
            self.why = why
        threading.Thread(target=self._finish, name="moments-ending", daemon=True).start()

    def _finish(self) -> None:
        # The recording first, without the event loop: it may be stuck on the dead terminal.
        with contextlib.suppress(Exception):
            stop_source(self.source, self.stop_timeout_s)
        with contextlib.suppress(Exception):  # then the app, the way q does it (a no-op if the loop is stuck)
            self.app.call_later(self.app.exit)
        if self.app_done.wait(self.grace_s):
            return
        _restore_terminal(self.app)
        self._exit(EXIT_INTERRUPTED)


def stop_source(source: Any, timeout_s: float) -> None:
    if getattr(source, "mode", None) == "live":
        source.stop(timeout_s=timeout_s, interrupted=True)
    else:  # replay and watch sources: nothing to interrupt
        source.stop()


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _restore_terminal(app: Any) -> None:
    """Best effort, for a SIGTERM on a live terminal whose app could not exit: cooked mode, main screen."""
    driver = getattr(app, "_driver", None)
    fd = getattr(driver, "fileno", 0)
    attrs = getattr(driver, "attrs_before", None)
    try:
        if attrs is not None and terminal_alive(fd):
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            os.write(sys.__stderr__.fileno(), b"\x1b[<u\x1b[?1000l\x1b[?1003l\x1b[?1015l\x1b[?1006l"
                                             b"\x1b[?2004l\x1b[?7h\x1b[?1049l\x1b[?25h\x1b[?1004l")
    except (OSError, termios.error, AttributeError, ValueError):
        pass
