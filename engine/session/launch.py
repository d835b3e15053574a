"""``moments run --tp N`` / ``--pp N``: start N local ranks and show them as one session.

**Process layout.** The parent (the headless CLI, or the live UI) starts one engine process per rank,
each the same ``python -P -m llm_moments.engine stream <run options>`` child the live UI runs for
one process (engine/session/stream.py), told its place by the environment: ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``LOCAL_WORLD_SIZE`` and ``MOMENTS_LAUNCH`` (a private temporary folder holding the
``FileStore`` the ranks meet through, and a preset's weights saved once by rank 0). Each child joins
the world (gloo on CPU, nccl with one GPU per rank), loads the model with transformers'
``DistributedConfig(tp_size=…, pp_size=…)``, and runs the session under its own ``Monitor``, which
records ``run.rank{R}.jsonl``.

**How records reach the parent.** Every rank writes its records as JSON lines on its own stdout
pipe; the parent reads each pipe on a thread of its own, tags each record with ``rank`` and puts it
in one buffer, which the UI drains once per frame (one fetch per frame, whatever the rank count).
No record crosses between ranks: the only cross-rank traffic the monitor adds is one 1-integer
``all_reduce`` per *batch* (never per step) on which all ranks agree to stop together, so a
Ctrl+C never leaves one rank inside a collective its peers have left.

**Ending.** A quit (``q``, Ctrl+C, SIGTERM, SIGHUP on the parent) is sent to every rank on its stdin;
the ranks agree at the next batch boundary and each writes its footer (``interrupted`` when it was
not the user's plain quit). The children run in sessions of their own, so a terminal's signals reach
the parent only. A rank that dies (killed, crashed) is said in one ``error`` record (``died``) and
the other ranks are stopped: asked first, then SIGINT, then killed after ``STOP_GRACE_S``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_moments.engine.errors import MomentsError
from llm_moments.engine.session.launch_checks import (
    LAUNCH_ENV,
    check_launch,
    check_rank_records,
    in_child,
    launch_device,
    world_size,
)

STOP_GRACE_S = 20.0        # after a quit: then SIGINT, then (after as long again) SIGKILL
DEATH_EXITS = (0, 3, 130)  # exit statuses of a controlled end (completed, recording lost, interrupted)


# -- the parent: N children, one buffer ---------------------------------------------------------------


def _death(code: int | None, tail: list[str]) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    lines = [l.strip() for l in tail if l.strip()]
    return lines[-1] if lines else f"exit status {code}"


class RankGroup:
    """N engine processes, one per rank; their records, tagged with ``rank``, in one buffer.

    ``drain()`` never blocks; ``send(cmd)`` goes to every running rank; ``stop()`` ends them all (the
    footer says ``interrupted`` when asked so), waiting at most ``STOP_GRACE_S`` before SIGINT and as
    long again before SIGKILL. ``argv`` replaces the engine command (tests start fake ranks).
    """

    def __init__(self, args: argparse.Namespace, python: str = sys.executable, argv: list[str] | None = None,
                 device: str = "cpu", grace_s: float = STOP_GRACE_S):
        from llm_moments.engine.session.stream import to_argv

        self.n = world_size(args)
        self.argv = argv if argv is not None else [python, "-P", "-m", "llm_moments.engine", *to_argv(args)]
        self.device = device
        self.grace_s = grace_s
        self.folder: Path | None = None
        self.procs: dict[int, subprocess.Popen] = {}
        self.exit_codes: dict[int, int] = {}
        self.tails: dict[int, collections.deque[str]] = {}
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.stopping = False
        self.died: int | None = None              # the first rank that died
        self.errors: dict[int, str] = {}          # rank → its error record's message
        self.recording_lost: str | None = None
        self.recording_paths: dict[int, str] = {}
        self.last_record_at = time.monotonic()
        self.on_record: Callable[[dict[str, Any]], None] | None = None

    # -- start -------------------------------------------------------------------------------------
    def env(self, rank: int) -> dict[str, str]:
        assert self.folder is not None
        env = dict(os.environ)
        env.update(PYTHONUNBUFFERED="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(self.n),
                   LOCAL_WORLD_SIZE=str(self.n), GROUP_RANK="0", ROLE_RANK=str(rank),
                   **{LAUNCH_ENV: json.dumps({"dir": str(self.folder), "device": self.device})})
        if self.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""   # transformers shards on the machine's accelerator: none here
        for key in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
            env.pop(key, None)
        return env

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="moments-ranks-"))
        for r in range(self.n):
            self.procs[r] = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                encoding="utf-8", errors="replace", env=self.env(r), bufsize=1, start_new_session=True)
            self.tails[r] = collections.deque(maxlen=20)
        for r in range(self.n):
            for target, name in ((self._read, "out"), (self._read_err, "err")):
                t = threading.Thread(target=target, args=(r,), name=f"moments-rank{r}-{name}", daemon=True)
                t.start()
                self._threads.append(t)

    def _put(self, record: dict[str, Any]) -> None:
        self._buffer.append(record)
        self.last_record_at = time.monotonic()
        if self.on_record is not None:
            self.on_record(record)

    def _read(self, r: int) -> None:
        proc = self.procs[r]
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(record, dict):
                    continue
                record["rank"] = r
                rtype = record.get("type")
                if rtype == "error":
                    self.errors.setdefault(r, str(record.get("message")))
                elif record.get("recording_lost"):
                    self.recording_lost = f"rank {r}: {record.get('message') or 'recording stopped'}"
                elif rtype == "recording":
                    self.recording_paths[r] = str(record.get("path"))
                self._put(record)
        except (OSError, ValueError):
            pass
        code = self.exit_codes[r] = proc.wait()
        if code in DEATH_EXITS or self.stopping:
            return
        # A rank ended on its own, not as asked: its peers would wait for it inside a collective.
        with self._lock:
            first = self.died is None
            if first:
                self.died = r
        others = [k for k in self.procs if k != r and self.procs[k].poll() is None]
        if r not in self.errors:   # a failure it reported itself is shown already
            msg = f"rank {r} died: {_death(code, list(self.tails[r]))}"
            if first and others:
                msg += f"; stopping rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))}"
            if r in self.recording_paths:
                msg += f" (its recording {self.recording_paths[r]} keeps the steps before, without a footer)"
            self._put({"type": "error", "rank": r, "died": True, "message": msg})
        if first:
            threading.Thread(target=self.stop, kwargs={"interrupted": True}, daemon=True).start()

    def _read_err(self, r: int) -> None:
        proc = self.procs[r]
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                self.tails[r].append(line)
        except (OSError, ValueError):
            pass

    # -- use ---------------------------------------------------------------------------------------
    def drain(self) -> list[dict[str, Any]]:
        out = []
        buf = self._buffer
        while buf:
            out.append(buf.popleft())
        return out

    @property
    def running(self) -> list[int]:
        return [r for r, p in self.procs.items() if p.poll() is None]

    def done(self) -> bool:
        return bool(self.procs) and all(p.poll() is not None for p in self.procs.values()) \
            and not any(t.is_alive() for t in self._threads)

    def send(self, cmd: dict[str, Any]) -> int:
        """Write ``cmd`` to every running rank; returns how many took it."""
        sent = 0
        line = json.dumps(cmd) + "\n"
        with self._lock:
            for p in self.procs.values():
                if p.poll() is None and p.stdin is not None:
                    try:
                        p.stdin.write(line)
                        p.stdin.flush()
                        sent += 1
                    except (BrokenPipeError, OSError, ValueError):
                        pass
        return sent

    def ask_stop(self, interrupted: bool = False) -> None:
        """Ask every rank to stop (returns at once); ``stop`` waits."""
        self.stopping = True
        self.send({"cmd": "quit", "reason": "interrupted"} if interrupted else {"cmd": "quit"})
        with self._lock:
            for p in self.procs.values():
                with contextlib.suppress(OSError, ValueError):
                    if p.stdin is not None:
                        p.stdin.close()

    def stop(self, timeout_s: float | None = None, interrupted: bool = False) -> None:
        with self._stop_lock:
            if not self.procs:
                return
            grace = self.grace_s if timeout_s is None else timeout_s
            self.ask_stop(interrupted)
            for sig in (signal.SIGINT, signal.SIGKILL):
                deadline = time.monotonic() + grace
                for p in self.procs.values():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(max(0.0, deadline - time.monotonic()))
                left = [p for p in self.procs.values() if p.poll() is None]
                if not left:
                    break
                for p in left:
                    with contextlib.suppress(OSError):
                        p.send_signal(sig)
                grace = min(grace, 10.0)
            for p in self.procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            for t in self._threads:
                t.join(5)
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)

    def exit_code(self) -> int:
        """One status for the group: 1 when a rank died or failed; else 130 when any was interrupted;
        else 3 when a rank's recording was lost; else 0."""
        codes = list(self.exit_codes.values())
        if self.died is not None or any(c not in DEATH_EXITS for c in codes) or self.errors:
            return 1
        if 130 in codes:
            return 130
        if 3 in codes:
            return 3
        return 0


# -- headless ----------------------------------------------------------------------------------------


def run_headless(args: argparse.Namespace, interrupts: Any) -> int:
    """``moments run --tp N --headless``: the ranks' progress, then the merged summary (the report of
    the lowest rank with the per-rank section), from their recordings (a temporary set without
    --record). Exit status as ``RankGroup.exit_code``; 2 on a user error before anything starts."""
    import copy

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llm_moments.engine.output.sanitize import visible
    from llm_moments.engine.session.setup import check_run_options

    err = Console(stderr=True)
    check_run_options(args)
    device = launch_device(args)
    args = copy.copy(args)
    args.steps = args.steps or 64
    temp = None
    if args.record is None:
        temp = tempfile.mkdtemp(prefix="moments-run-")
        args.record = str(Path(temp) / "run.jsonl")
    n = world_size(args)
    group = RankGroup(args, device=device)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True)
    task = progress.add_task(f"measuring steps ({n} ranks)", total=args.steps)
    headers: set[int] = set()
    said_random = False
    interrupts.running = True     # from here a signal asks the ranks to stop; their footers say so
    asked = False
    try:
        group.start()
        with progress:
            while not group.done():
                if interrupts.stop.is_set() and not asked:
                    asked = True
                    progress.console.print("moments: stopping the ranks…", style="yellow", markup=False)
                    group.ask_stop(interrupted=True)
                for rec in group.drain():
                    rtype, r = rec.get("type"), rec.get("rank")
                    if rtype == "step" and r == 0:
                        progress.advance(task)
                    elif rtype == "header":
                        headers.add(r)
                        if not said_random and (rec.get("model") or {}).get("random_weights"):
                            said_random = True
                            progress.console.print(f"{visible(args.model)}: random weights — timings are real, "
                                                   "outputs are noise", style="yellow", markup=False, highlight=False)
                    elif rtype == "loading" and r == 0:
                        progress.update(task, description=f"{visible(rec.get('message'))} ({n} ranks)")
                    elif rtype == "status" and (r == 0 or rec.get("level") == "error"):
                        progress.console.print(f"moments: rank {r}: {visible(rec.get('message'))}", style="yellow",
                                               markup=False, highlight=False, soft_wrap=True)
                    elif rtype == "error":
                        progress.console.print(f"moments: {'' if rec.get('died') else f'rank {r}: '}"
                                               f"{visible(rec.get('message'))}", style="red", markup=False,
                                               highlight=False, soft_wrap=True)
                    if rtype == "header" and len(headers) == n:
                        progress.update(task, description=f"measuring steps ({n} ranks)")
                time.sleep(0.05)
    finally:
        group.stop(interrupted=asked)
    code = group.exit_code()
    if asked and code == 0:
        code = 130
    _print_merged(args, err, temp is not None)
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)
    if code == 130:
        err.print("moments: interrupted; the summary covers the steps before it", markup=False, highlight=False)
    return code


def _print_merged(args: argparse.Namespace, err: Any, temporary: bool) -> None:
    """The merged summary of the rank files, as ``moments report run.jsonl`` prints it."""
    from llm_moments.engine.analysis.ranks import RankScan
    from llm_moments.engine.analysis.report import analyze
    from llm_moments.engine.core.rankfiles import find_ranks
    from llm_moments.engine.core.recording import RecordingError
    from llm_moments.engine.output import ranks as out_ranks
    from llm_moments.engine.output.sanitize import visible
    from llm_moments.engine.output.text import render_json, render_text

    try:
        rs = find_ranks(args.record)
    except (RecordingError, MomentsError) as exc:
        err.print(f"moments: no merged summary: {visible(exc)}", markup=False, highlight=False)
        return
    if rs is None:
        err.print("moments: no rank recorded a step: no summary", markup=False, highlight=False)
        return
    try:
        sc = RankScan(rs)
        data = analyze(sc)
        ra = sc.result()
    except (RecordingError, MomentsError, ValueError) as exc:
        err.print(f"moments: no merged summary: {visible(exc)}", markup=False, highlight=False)
        return
    if args.format == "json":
        text = out_ranks.report_json(render_json(data.summary, data.rec.header, outliers=data.outliers), ra)
    else:
        text = (render_text(data.summary, data.rec.header, outliers=(data.outliers, data.outliers_total))
                + "\n" + out_ranks.render_text_section(ra))
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(text)
        sys.stdout.flush()
    if not temporary:
        names = ", ".join(visible(p.name) for p in rs.files.values())
        with contextlib.suppress(OSError, ValueError):
            print(f"recorded {len(rs.files)} ranks to {names} (in {visible(rs.base.parent)})", file=sys.stderr)


__all__ = ["LAUNCH_ENV", "RankGroup", "check_launch", "check_rank_records", "in_child", "launch_device",
           "run_headless", "world_size"]
