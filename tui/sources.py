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

from llm_moments.engine.core import recording
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

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env, bufsize=1)
        threading.Thread(target=self._read_records, name="moments-live-out", daemon=True).start()
        threading.Thread(target=self._read_stderr, name="moments-live-err", daemon=True).start()

    def _read_records(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("type") == "error":
                self._got_error = True
            self._put(record)
        code = self.proc.wait()
        if code not in (0, None) and not self._got_error:
            tail = [l for l in self._stderr_tail if l.strip()]
            detail = tail[-1].strip() if tail else f"exit status {code}"
            self._put({"type": "error", "message": f"the engine process stopped: {detail}"})

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
        real = recording.check_writable(path)  # a bad path is refused here, at once
        self._send({"cmd": "record", "path": str(real)})
        return str(real)

    def stop_recording(self) -> None:
        self._send({"cmd": "stop-record"})

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the engine to stop after the current step; it writes the footer, then exits."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            self._send({"cmd": "quit"})
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


class ReplaySource:
    """Plays a recording at ``speed`` × its own pace, with pause, single step and seek."""

    mode = "replay"
    can_record = False
    can_seek = True

    def __init__(self, path: str | Path, speed: float = 1.0, clock: Any = time.monotonic):
        if speed <= 0:
            raise MomentsError(f"--speed must be more than 0, not {speed}")
        self.rec = recording.load(path)
        self.speed = speed
        self._clock = clock
        timeline = [r for r in self.rec.steps + self.rec.samples + self.rec.others if "t_ns" in r]
        timeline.sort(key=lambda r: r["t_ns"])
        self.timeline = timeline
        self.step_positions = [i for i, r in enumerate(timeline) if r.get("type") == "step"]
        self.pos = 0                 # next record of the timeline to emit
        self.paused = False
        self._pending: list[dict[str, Any]] = [self.rec.header]
        if self.rec.warnings:  # one line that says all of it: the status line shows the newest only
            self._pending.append({"type": "status", "level": "warning",
                                  "message": "recording: " + "; ".join(self.rec.warnings)})
        first = self.step_positions[0] if self.step_positions else 0
        self.play_t_ns = timeline[first]["t_ns"] if timeline else 0
        self._last = None

    def start(self) -> None:
        self._last = self._clock()

    def _emit_until(self, pos: int) -> list[dict[str, Any]]:
        out = self.timeline[self.pos:pos]
        self.pos = pos
        return out

    def drain(self) -> list[dict[str, Any]]:
        now = self._clock()
        out, self._pending = self._pending, []
        if self._last is not None and not self.paused:
            self.play_t_ns += int((now - self._last) * 1e9 * self.speed)
        self._last = now
        if not self.paused:
            end = self.pos
            while end < len(self.timeline) and self.timeline[end]["t_ns"] <= self.play_t_ns:
                end += 1
            out += self._emit_until(end)
            if self.finished and self.rec.footer is not None and not getattr(self, "_footer_sent", False):
                self._footer_sent = True
                out.append(self.rec.footer)
        return out

    @property
    def finished(self) -> bool:
        return self.pos >= len(self.timeline)

    @property
    def steps_played(self) -> int:
        return sum(1 for p in self.step_positions if p < self.pos)

    def toggle_pause(self) -> bool:
        self.paused = not self.paused
        return self.paused

    def step(self, n: int = 1) -> None:
        """Emit up to and including the next ``n`` steps (pauses playback)."""
        self.paused = True
        self.seek_to_step(min(self.steps_played + n, len(self.step_positions)))

    def seek_to_step(self, target: int) -> None:
        """Position after ``target`` steps: forward emits the records between, backward replays from 0."""
        target = max(0, min(target, len(self.step_positions)))
        end = self.step_positions[target - 1] + 1 if target > 0 else 0
        if end < self.pos:
            self.pos = 0
            self._footer_sent = False    # played to the end again, the footer goes out again
            self._pending.append({"type": "reset"})
        self._pending += self._emit_until(end)
        if self.pos:
            self.play_t_ns = self.timeline[self.pos - 1]["t_ns"]
        elif self.timeline:              # back at the start: playback goes on from there, not from before
            self.play_t_ns = self.timeline[0]["t_ns"] - 1

    def seek(self, delta_steps: int) -> None:
        self.seek_to_step(self.steps_played + delta_steps)

    def stop(self) -> None:
        pass

    def note(self) -> str | None:
        total = len(self.step_positions)
        state = "paused" if self.paused else ("finished" if self.finished else f"{self.speed:g}×")
        return f"step {self.steps_played}/{total} · {state}"


class WatchSource(_Buffered):
    """Follows a recording another process is writing: catches up, then tails it."""

    mode = "watch"
    can_record = False
    can_seek = False

    def __init__(self, path: str | Path, poll_s: float = 0.2, idle_after_s: float = 5.0):
        super().__init__()
        self.path = Path(path)
        self.poll_s = poll_s
        self.idle_after_s = idle_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.writer_done = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="moments-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for record in recording.follow(self.path, poll_s=self.poll_s, stop=self._stop,
                                           wait_for_file_s=float("inf")):
                self._put(record)
                if record.get("type") == "footer":
                    self.writer_done = True
                    self._put({"type": "status", "level": "info",
                               "message": f"the writer ended the session ({record.get('reason')})"})
        except MomentsError as exc:
            self._put({"type": "error", "message": str(exc)})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def note(self) -> str | None:
        if self.writer_done:
            return "writer finished"
        if not self.path.exists():
            return f"waiting for {self.path} to appear"
        idle = time.monotonic() - self.last_record_at
        if idle > self.idle_after_s:
            return f"no new data for {idle:.0f} s — writer stopped?"
        return "following"
