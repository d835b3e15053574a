"""What the UI sends down the wire to its terminal, and how fast the terminal takes it (issue #11: a
live screen over SSH).

- ``compact``: Rich ends every segment with a reset and starts the next with its full style, so a
  run of one style (a table row's cells, padding, a heatmap run) repeats ``ESC[0m ESC[38;5;188;48;5;16m``
  between pieces that look alike. A reset followed by the very style that was on before it (moves
  between them paint nothing) is dropped: the same screen, a third fewer bytes.
- ``WriteMeter``: the share of recent wall time the writer thread spent blocked writing to the
  terminal. A slow link fills sshd's buffers, then the pty's, then ``write`` blocks.
- ``BackOff``: lowers the frame rate while the terminal cannot keep up and brings it back, step by
  step, once it has caught up; its ``note`` is what the status line says meanwhile.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable
from typing import Any

RESET = "\x1b[0m"
_SEQ = re.compile(r"\x1b\[([0-9;:]*)([mH])")


def compact(text: str) -> str:
    """``text`` with each ``reset, [moves], SGR X`` dropped where X is the style in force before the
    reset. Only a single full SGR right after a reset counts as known (Rich writes exactly that);
    anything else leaves the style unknown until the next reset, and nothing is dropped meanwhile."""
    out: list[str] = []
    pen: str | None = None      # the SGR in force; "" after a reset; None: unknown (start, compound)
    pending = False             # a reset not written yet: the next SGR may make it unneeded
    pos = 0
    for m in _SEQ.finditer(text):
        if m.start() > pos:     # text, or escapes that are not SGR / CUP (they leave the style alone)
            if pending:
                out.append(RESET)
                pending, pen = False, ""
            out.append(text[pos:m.start()])
        pos = m.end()
        params, final = m.groups()
        if final == "H":
            out.append(m.group(0))          # a move paints nothing: a pending reset can wait
        elif params in ("", "0"):
            pending = True
        elif pending and params == pen:
            pending = False                 # reset + the same style again: neither is needed
        else:
            if pending:
                out.append(RESET)
                pending, pen = False, ""
            out.append(m.group(0))
            pen = params if pen == "" else None
    if pos < len(text):
        if pending:
            out.append(RESET)
            pending = False
        out.append(text[pos:])
    if pending:
        out.append(RESET)
    return "".join(out)


class WriteMeter:
    """Time spent in the terminal's ``write`` / ``flush`` (the writer thread), as a share of the last
    ``window_s`` seconds of wall time, the write still blocked now included (one frame can take
    seconds on a slow link). Thread-safe: the writer adds, the event loop reads."""

    def __init__(self, window_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.window_s, self.clock = window_s, clock
        self._spans: collections.deque[tuple[float, float]] = collections.deque(maxlen=4096)
        self._lock = threading.Lock()
        self._blocked_since: float | None = None
        self.bytes_written = 0

    def timed(self, call: Callable[[], object], nbytes: int = 0) -> None:
        t0 = self.clock()
        with self._lock:
            self._blocked_since = t0
        try:
            call()
        finally:
            t1 = self.clock()
            with self._lock:
                self._blocked_since = None
                self._spans.append((t0, t1))
                self.bytes_written += nbytes

    def busy(self, now: float | None = None) -> float:
        """0 … 1: how much of the last window the writer was blocked on the terminal."""
        now = self.clock() if now is None else now
        start = now - self.window_s
        with self._lock:
            while self._spans and self._spans[0][1] <= start:
                self._spans.popleft()
            spent = sum(min(t1, now) - max(t0, start) for t0, t1 in self._spans if t1 > start)
            if self._blocked_since is not None:
                spent += max(0.0, now - max(self._blocked_since, start))
        return max(0.0, min(1.0, spent / self.window_s))


class BackOff:
    """The frame rate the terminal can take. Halved (down to ``min_hz``) while the writer is blocked
    more than ``slow_busy`` of the time or writes queue up, at most once per ``hold_s``; doubled back
    towards the asked-for rate after ``calm_s`` with the writer idle below ``calm_busy`` — after
    ``retry_s`` for a rate that was too fast the last time, so that a link that takes 1 frame/s is
    not pushed to 2 and backed off again every few seconds."""

    def __init__(self, hz: float, min_hz: float = 0.25, slow_busy: float = 0.5, calm_busy: float = 0.15,
                 queued_max: int = 4, hold_s: float = 2.0, calm_s: float = 5.0, retry_s: float = 30.0):
        self.normal_hz, self.hz, self.min_hz = hz, hz, min(min_hz, hz)
        self.slow_busy, self.calm_busy, self.queued_max = slow_busy, calm_busy, queued_max
        self.hold_s, self.calm_s, self.retry_s = hold_s, calm_s, retry_s
        self._too_fast_hz = float("inf")   # the lowest rate the terminal did not keep up with
        self._changed_at: float | None = None
        self._calm_since: float | None = None
        self.busy = 0.0            # the newest observation
        self._busy_said = 0.0      # the one that made the last change: the note stays put between changes

    def update(self, busy: float, queued: int, now: float) -> bool:
        """One observation; True when the rate changed."""
        self.busy = busy
        since = now - self._changed_at if self._changed_at is not None else float("inf")
        if busy > self.slow_busy or queued > self.queued_max:
            self._calm_since = None
            if self.hz > self.min_hz and since >= self.hold_s:
                if since >= self.calm_s:   # a fair trial; sooner, it is the backlog of the faster rate
                    self._too_fast_hz = min(self._too_fast_hz, self.hz)
                self.hz = max(self.min_hz, self.hz / 2)
                self._changed_at, self._busy_said = now, busy
                return True
            return False
        if self.hz >= self.normal_hz or busy > self.calm_busy or queued:
            self._calm_since = None
            return False
        if self._calm_since is None:
            self._calm_since = now
        up = min(self.normal_hz, self.hz * 2)
        wait = self.retry_s if up >= self._too_fast_hz else self.calm_s
        if now - self._calm_since >= wait and since >= wait:
            self.hz = up
            self._changed_at = self._calm_since = now   # the next step up after calm_s more
            if up >= self._too_fast_hz:
                self._too_fast_hz = float("inf")         # it keeps up now: the link got faster
            return True
        return False

    @property
    def backed_off(self) -> bool:
        return self.hz < self.normal_hz

    @property
    def note(self) -> str | None:
        if not self.backed_off:
            return None
        return (f"redrawing every {fmt_period(1 / self.hz)} instead of {fmt_period(1 / self.normal_hz)} "
                f"(writes blocked {self._busy_said * 100:.0f} % of the time); back to normal once it keeps up")


def fmt_period(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:g} s"


def set_colors(console: Any, system: str) -> None:
    """Draw with ``system`` colours whatever the terminal says: "standard" (16) has the shortest codes
    (``ESC[37;40m`` against ``ESC[38;5;188;48;5;16m``). Rich has no public setter: its console keeps
    the system in ``_color_system``; if that ever changes, the terminal's own colours stay."""
    from rich.console import COLOR_SYSTEMS

    now, wanted = getattr(console, "_color_system", None), COLOR_SYSTEMS.get(system)
    if now is not None and wanted is not None and now in (COLOR_SYSTEMS["256"], COLOR_SYSTEMS["truecolor"]) \
            and wanted < now:   # fewer colours only: never colours on a terminal that has none
        console._color_system = wanted
