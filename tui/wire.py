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
import math
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
    """The frame rate the terminal can take: the asked-for rate halved ``step`` times (not below
    ``min_hz``), judged by the write meter's busy share read every tick (``window_s``: the meter's window).

    A rate is judged on its own writes only. After a change the writer first works off what the old rate
    left (blocked all the time meanwhile), so a rate is judged once the writer has caught up (been idle
    at some point since the change) and the meter's window has moved past that point.

    - Down: halved when the busy share, averaged over a frame period, is over ``slow_busy``, or when
      more than ``queued_max`` frames wait and no fewer than at the change: such a rate was too fast.
      Halved too when the writer has not caught up for ``calm_s`` (plus the window and a period) after
      the change: the backlog goes down too slowly, whichever rate it comes from (not held against
      the rate, then).
    - Up: doubled towards the asked-for rate when the busy share measured at this rate, scaled to the
      doubled rate, is under ``fit`` × ``slow_busy`` (room to spare) with nothing queued, measured over
      whole frame periods that, with the window, cover at least ``calm_s`` of this rate's writes.
    - A rate that was too fast is tried again only after ``retry_s`` at the rate below it, twice that
      after a second failure, and so on up to ``retry_max_s``; forgotten once it keeps up for
      ``retry_s``. A pty or an SSH channel buffers tens of KiB, which hides a link's load until the rate
      exceeds the link: the busy share reads 0 below that, and each try of a rate too fast costs seconds
      of backlog."""

    def __init__(self, hz: float, min_hz: float = 0.25, slow_busy: float = 0.5, fit: float = 0.7,
                 queued_max: int = 4, window_s: float = 2.0, calm_s: float = 5.0, retry_s: float = 30.0,
                 retry_max_s: float = 240.0):
        self.normal_hz, self.min_hz = hz, min(min_hz, hz)
        self.slow_busy, self.fit, self.queued_max = slow_busy, fit, queued_max
        self.window_s, self.calm_s, self.retry_s, self.retry_max_s = window_s, calm_s, retry_s, retry_max_s
        self.step = 0                      # hz = normal_hz / 2 ** step, min_hz at the least
        self._failed: dict[int, int] = {}  # step → times in a row its rate was too fast
        self._changed_at: float | None = None
        self._queued_then = 0              # frames waiting at the last change
        self._caught_up_at: float | None = float("-inf")   # the writer first seen idle after the last change
        self._seen: collections.deque[tuple[float, float, int]] = collections.deque()   # (now, busy, queued)
        self.busy = 0.0            # the newest observation
        self._busy_said = 0.0      # the one that made the last halving: the note stays put meanwhile

    @property
    def hz(self) -> float:
        return max(self.min_hz, self.normal_hz / 2 ** self.step)

    @hz.setter
    def hz(self, value: float) -> None:
        """A rate set from outside (a test): the nearest one the halving goes through."""
        last = math.ceil(math.log2(self.normal_hz / self.min_hz) - 1e-9)   # the step at min_hz
        self.step = min(last, max(0, round(math.log2(self.normal_hz / value))))

    def _mean(self, now: float, span: float) -> tuple[float, int]:
        """The mean busy share of the observations in the last ``span`` s, and the most frames queued."""
        recent = [(b, q) for t, b, q in self._seen if t > now - span + 1e-6]
        return sum(b for b, _ in recent) / len(recent), max(q for _, q in recent)

    def _change(self, step: int, now: float, queued: int, busy_said: float | None = None) -> bool:
        """``busy_said``: what made a halving; a step up keeps the note's number (what it still backs off from)."""
        self.step = step
        if busy_said is not None:
            self._busy_said = busy_said
        self._changed_at, self._queued_then, self._caught_up_at = now, queued, None
        return True

    def update(self, busy: float, queued: int, now: float) -> bool:
        """One observation; True when the rate changed."""
        self.busy = busy
        self._seen.append((now, busy, queued))
        while self._seen[0][0] < now - self.window_s - self.calm_s - 1 / self.min_hz:
            self._seen.popleft()
        # (+ 1e-6: a tick a hair early counts)
        since = now - self._changed_at + 1e-6 if self._changed_at is not None else float("inf")
        if self._caught_up_at is None and busy * self.window_s < min(since, self.window_s) - 1e-6:
            self._caught_up_at = now       # blocked less than all the time since the change: idle at some point
        period = 1 / self.hz
        # how long the meter's window has held this rate's writes alone
        clean = now - self._caught_up_at - self.window_s + 1e-6 if self._caught_up_at is not None else -1.0
        if clean >= period and since >= self.retry_s:
            self._failed.pop(self.step, None)   # it keeps up now
        lower = self.hz > self.min_hz
        measured = self._mean(now, period)[0] if clean >= period else busy
        if lower and ((clean >= period and measured > self.slow_busy) or
                      (since >= self.window_s + period and queued > max(self.queued_max, self._queued_then))):
            self._failed[self.step] = self._failed.get(self.step, 0) + 1
            return self._change(self.step + 1, now, queued, measured)
        if lower and self._caught_up_at is None and since >= self.window_s + period + self.calm_s:
            return self._change(self.step + 1, now, queued, busy)   # the backlog does not go down
        if self.step == 0:
            return False
        span = period * max(1, math.ceil((self.calm_s - self.window_s) / period - 1e-9))
        failed = self._failed.get(self.step - 1, 0)
        wait = min(self.retry_max_s, self.retry_s * 2 ** (failed - 1)) if failed else 0.0
        if clean < span or since < wait:
            return False
        measured, most_queued = self._mean(now, span)
        up = self.normal_hz / 2 ** (self.step - 1)
        if most_queued or measured * up / self.hz >= self.fit * self.slow_busy:
            return False   # the doubled rate would not fit with room to spare
        return self._change(self.step - 1, now, queued)

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
