"""Where the UI's records come from. Live, replay and watch share one small interface.

A source fills a buffer from its own thread (the engine's worker, a file follower) or from a file
in memory; the UI calls ``drain()`` on its own timer and folds the batch into its state. Nothing a
source does waits for the UI, and ``drain`` never blocks.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from llm_moments.engine.core import recording
from llm_moments.engine.core.follow import follow
from llm_moments.engine.errors import MomentsError


class Source(Protocol):
    mode: str             # "live" | "replay" | "watch"
    can_record: bool
    can_seek: bool

    def start(self) -> None: ...
    def drain(self) -> list[dict[str, Any]]: ...
    def stop(self) -> None: ...
    def note(self) -> str | None: ...


class _Buffered:
    """A thread-safe buffer (deque appends and pops are atomic) and the drain that empties it."""

    def __init__(self) -> None:
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self.last_record_at = time.monotonic()

    def _put(self, record: dict[str, Any]) -> None:
        self._buffer.append(record)
        self.last_record_at = time.monotonic()

    def drain(self) -> list[dict[str, Any]]:
        out = []
        buf = self._buffer
        while buf:
            out.append(buf.popleft())
        return out


class LiveSource(_Buffered):
    """Runs the session in an engine process of its own (``python -P -m llm_moments.engine stream``).

    The UI reads its records from a pipe, exactly like following a file, so drawing never competes
    with inference for the GIL. Recording is switched by commands on the child's stdin; quitting
    asks the child to stop, which writes the footer and closes the recording.
    """

    mode = "live"
    can_record = True
    can_seek = False

    def __init__(self, args: Any, python: str = sys.executable):
        super().__init__()
        from llm_moments.engine.session.stream import to_argv

        # -P: the current directory is not put on sys.path, so a folder there can never shadow ours.
        self.argv = [python, "-P", "-m", "llm_moments.engine", *to_argv(args)]
        self.proc: subprocess.Popen | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._got_error = False
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self.recording_lost: str | None = None  # the engine's line when a write error stopped the recording
        self.exit_code: int | None = None       # the engine process's, once it ended
        self.recording_path_seen: str | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env, bufsize=1)
        threading.Thread(target=self._read_records, name="moments-live-out", daemon=True).start()
        threading.Thread(target=self._read_stderr, name="moments-live-err", daemon=True).start()

    def _read_records(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in _lines(self.proc.stdout):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("type") == "error":
                self._got_error = True
            elif record.get("recording_lost"):
                self.recording_lost = record.get("message") or "recording stopped"
            if record.get("type") == "recording":
                self.recording_path_seen = record.get("path")
            self._put(record)
        code = self.exit_code = self.proc.wait()
        # 0: it ended as asked; 130: interrupted (a signal, or we asked so); 3: the recording was lost
        # and said so already. Anything else is a death the UI must show.
        if code not in (0, 3, 130, None) and not self._got_error:
            self._put({"type": "error", "message": f"the engine process stopped: {self._death(code)}"})

    def _death(self, code: int) -> str:
        tail = [l for l in self._stderr_tail if l.strip()]
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            what = f"killed by {name}"
        else:
            what = tail[-1].strip() if tail else f"exit status {code}"
        if self.recording_path_seen:  # the UI never writes the engine's file: say what it holds
            what += f"; the recording {self.recording_path_seen} keeps every step up to here, without a footer"
        return what

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr_tail.append(line)

    def _send(self, cmd: dict[str, Any]) -> None:
        with self._lock:
            if self.proc is None or self.proc.poll() is not None or self.proc.stdin is None:
                raise MomentsError("the engine process is not running")
            try:
                self.proc.stdin.write(json.dumps(cmd) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                raise MomentsError("the engine process is not running") from None

    def start_recording(self, path: str) -> str:
        real = recording.check_record_path(path)  # a bad path is refused here, at once
        self._send({"cmd": "record", "path": str(real)})
        return str(real)

    def stop_recording(self) -> None:
        self._send({"cmd": "stop-record"})

    def start_ops(self, layer: int, steps: int = 8) -> None:
        """Ops mode on ``layer`` for the next ``steps`` steps (engine/core/ops.py): ``ops`` records come back."""
        self._send({"cmd": "ops", "layer": int(layer), "steps": int(steps)})

    def stop(self, timeout_s: float = 30.0, interrupted: bool = False) -> None:
        """Ask the engine to stop after the current step; it writes the footer, then exits.

        ``interrupted``: the session did not end by the user's choice (a signal, a lost terminal);
        the footer says so. Safe from several threads at once: the later caller waits for the first.
        """
        with self._stop_lock:
            self._stop(timeout_s, interrupted)

    def _stop(self, timeout_s: float, interrupted: bool) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            self._send({"cmd": "quit", "reason": "interrupted"} if interrupted else {"cmd": "quit"})
            proc.stdin.close()
        except (MomentsError, OSError, ValueError):
            pass
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # still a controlled end: footer written
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def note(self) -> str | None:
        return None


def _lines(fh: Any):
    """The lines of a pipe until it ends, or until it is closed or fails under us (no traceback)."""
    try:
        yield from fh
    except (OSError, ValueError):
        return


MAX_SPEED = 1000.0


def check_speed(speed: Any) -> float:
    """A replay speed: a finite number, more than 0, at most MAX_SPEED (MomentsError otherwise)."""
    try:
        value = float(speed)
    except (TypeError, ValueError, OverflowError):
        value = float("nan")
    if not (0 < value <= MAX_SPEED):  # NaN fails too
        raise MomentsError(f"--speed must be a number more than 0 and at most {MAX_SPEED:g}, not {speed}")
    return value


class ReplaySource:
    """Plays a recording at ``speed`` × its own pace, with pause, single step and seek.

    The file is never held whole (``replay_file.ReplayFile``: an index of byte offsets every 1024
    steps, blocks parsed on demand), so memory does not grow with the recording. A drain emits at most
    ``MAX_DRAIN`` records (the rest follows on the next ones); a seek further than ``SEEK_WINDOW``
    steps, or backwards, starts the UI over (a ``reset``) and replays the ``SEEK_WINDOW`` steps before
    the target, which is more than the UI's statistics window holds.
    """

    mode = "replay"
    can_record = False
    can_seek = True
    MAX_DRAIN = 50_000
    SEEK_WINDOW = 4096

    def __init__(self, path: str | Path, speed: float = 1.0, clock: Any = time.monotonic):
        from .replay_file import ReplayFile

        speed = check_speed(speed)
        self.file = ReplayFile(path)        # every record checked when its block is read
        self.rec = self.file.rec            # header, footer, warnings
        self.speed = speed
        self._clock = clock
        self.block, self.pos = 0, 0          # next record to emit: position ``pos`` of block ``block``
        self.paused = False
        self._pending: list[dict[str, Any]] = [self.rec.header]
        if self.rec.warnings:  # one line that says all of it: the status line shows the newest only
            self._pending.append({"type": "status", "level": "warning",
                                  "message": "recording: " + "; ".join(self.rec.warnings)})
        self._skipped_said = 0
        self._footer_sent = False
        records, steps = self.file.block(0)
        first = int(np.searchsorted(steps, 1, side="left")) - 1 if steps[-1] else 0
        self.play_t_ns = records[first]["t_ns"] if records else 0
        self._last = None

    def start(self) -> None:
        self._last = self._clock()

    def _emit(self, until_t_ns: float | None = None, to: tuple[int, int] | None = None,
              limit: int | None = None) -> list[dict[str, Any]]:
        """Records from the current position on, while ``t_ns <= until_t_ns`` or up to position ``to``."""
        out: list[dict[str, Any]] = []
        f = self.file
        while self.block < f.n_blocks:
            records, _ = f.block(self.block)
            stop = len(records)
            if to is not None and to[0] == self.block:
                stop = to[1]
            i = self.pos
            while i < stop and (until_t_ns is None or records[i]["t_ns"] <= until_t_ns) \
                    and (limit is None or len(out) < limit):
                out.append(records[i])
                i += 1
            self.pos = i
            if i < len(records) or self.block == f.n_blocks - 1 or (to is not None and to[0] == self.block):
                break
            self.block, self.pos = self.block + 1, 0
        if f.skipped > self._skipped_said:
            self._skipped_said = f.skipped
            out.append({"type": "status", "level": "warning",
                        "message": f"recording: skipped {f.skipped} bad line{'' if f.skipped == 1 else 's'}"})
        return out

    def drain(self) -> list[dict[str, Any]]:
        now = self._clock()
        out, self._pending = self._pending, []
        if self._last is not None and not self.paused:
            self.play_t_ns += int((now - self._last) * 1e9 * self.speed)
        self._last = now
        if not self.paused:
            out += self._emit(until_t_ns=self.play_t_ns, limit=self.MAX_DRAIN)
            if self.finished and self.rec.footer is not None and not self._footer_sent:
                self._footer_sent = True
                out.append(self.rec.footer)
        return out

    @property
    def finished(self) -> bool:
        f = self.file
        return self.block >= f.n_blocks - 1 and self.pos >= len(f.block(f.n_blocks - 1)[0])

    @property
    def steps_played(self) -> int:
        _, steps = self.file.block(self.block)
        return self.file.base(self.block) + int(steps[min(self.pos, len(steps) - 1)])

    def toggle_pause(self) -> bool:
        self.paused = not self.paused
        return self.paused

    def step(self, n: int = 1) -> None:
        """Emit up to and including the next ``n`` steps (pauses playback)."""
        self.paused = True
        self.seek_to_step(min(self.steps_played + n, self.file.total))

    def seek_to_step(self, target: int) -> None:
        """Position after ``target`` steps: forward emits the records between; backward, or further
        than SEEK_WINDOW steps, starts over from the SEEK_WINDOW steps before the target."""
        f = self.file
        target = max(0, min(target, f.total))
        played = self.steps_played
        to = f.locate(target)
        if to < (self.block, self.pos) or target - played > self.SEEK_WINDOW:
            self._footer_sent = False    # played to the end again, the footer goes out again
            self._pending.append({"type": "reset"})
            self.block, self.pos = f.locate(max(target - self.SEEK_WINDOW, 0))
            if target <= self.SEEK_WINDOW:
                self.block, self.pos = 0, 0
            to = f.locate(target)
        self._pending += self._emit(to=to)
        if (self.block, self.pos) > (0, 0):
            records, _ = f.block(self.block)
            b, i = (self.block, self.pos - 1) if self.pos else (self.block - 1, None)
            recs = records if b == self.block else f.block(b)[0]
            self.play_t_ns = recs[i if i is not None else len(recs) - 1]["t_ns"]
        else:                            # back at the start: playback goes on from there, not from before
            records, _ = f.block(0)
            if records:
                self.play_t_ns = records[0]["t_ns"] - 1

    def seek(self, delta_steps: int) -> None:
        self.seek_to_step(self.steps_played + delta_steps)

    def stop(self) -> None:
        pass

    def note(self) -> str | None:
        total = self.file.total
        state = "paused" if self.paused else ("finished" if self.finished else f"{self.speed:g}×")
        return f"step {self.steps_played}/{total} · {state}"


class WatchSource(_Buffered):
    """Follows a recording another process is writing: catches up, then tails it.

    The file is watched while it is followed (``follow(restart=True)``): truncated, replaced
    by another session or deleted, the status line says so; a new session starts the UI over from
    its header (a ``reset`` record first), never mixing two sessions. Bad lines are skipped and counted.
    """

    mode = "watch"
    can_record = False
    can_seek = False
    MAX_BUFFER = 50_000     # records read ahead of the UI at most

    def __init__(self, path: str | Path, poll_s: float = 0.2, idle_after_s: float = 5.0):
        super().__init__()
        self.path = Path(path)
        self.poll_s = poll_s
        self.idle_after_s = idle_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.writer_done = False
        self.stats = recording.ReadStats()
        self.event: str | None = None      # the last change seen: deleted / replaced / truncated / new-session
        self.sessions = 0                  # headers seen
        self._skipped_said = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="moments-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for record in follow(self.path, poll_s=self.poll_s, stop=self._stop,
                                           wait_for_file_s=float("inf"), restart=True, stats=self.stats):
                rtype = record.get("type")
                if rtype == "follow":
                    self.event = record["event"]
                    if record.get("reset"):
                        self.writer_done = False
                        self._put({"type": "reset"})
                    self._put({"type": "status", "level": "warning", "message": record["message"]})
                    continue
                if rtype == "header":
                    self.sessions += 1
                    if self.event == "deleted":
                        self.event = None
                self._put(record)
                self._say_skipped()
                while len(self._buffer) > self.MAX_BUFFER and not self._stop.is_set():
                    time.sleep(0.01)   # catching up on a big file: wait for the UI, hold a bounded batch
                if rtype == "footer":
                    self.writer_done = True
                    self._put({"type": "status", "level": "info",
                               "message": f"the writer ended the session ({record.get('reason')})"})
        except MomentsError as exc:
            self._put({"type": "error", "message": str(exc)})
        except Exception as exc:  # never a traceback from the follower's thread
            self._put({"type": "error", "message": f"watch stopped: {type(exc).__name__}: {exc}"})

    def _say_skipped(self) -> None:
        stats = self.stats
        if stats.skipped > self._skipped_said:
            self._skipped_said = stats.skipped
            line, why = stats.problems[-1] if stats.problems else (None, "")
            first = f" (line {line}: {why})" if line is not None else ""
            lines = f"{stats.skipped} bad line{'' if stats.skipped == 1 else 's'}"
            self._put({"type": "status", "level": "warning", "message": f"{self.path}: skipped {lines}{first}"})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def note(self) -> str | None:
        if self.event == "deleted":
            return "file deleted — waiting for a new session"
        if self.writer_done:
            return "writer finished"
        if not self.path.exists():
            return f"waiting for {self.path} to appear"
        idle = time.monotonic() - self.last_record_at
        if idle > self.idle_after_s:
            return f"no new data for {idle:.0f} s — writer stopped?"
        if self.event in ("replaced", "truncated", "new-session") and idle < 5:
            return f"file {self.event.replace('new-session', 'has a new session')} — following the new session"
        return "following"
