"""Sources of a multi-rank session: live (``moments run --tp N``), replay and watch of rank files.

Each gives every record of every rank tagged with ``rank`` through one ``drain()`` (one fetch per
frame, whatever the rank count); the state (tui/state.py) shows the primary rank on the usual
screens and all of them on the merged one. No record crosses between ranks: live, each rank streams
on its own pipe (engine/session/launch.py); replay and watch read each rank's own file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from llm_moments.engine.core.rankfiles import RankSet


def _tagged(records: list[dict[str, Any]], rank: int) -> list[dict[str, Any]]:
    for record in records:
        record["rank"] = rank
    return records


class RankLiveSource:
    """N engine processes, one per rank (``engine.session.launch.RankGroup``)."""

    mode = "live"
    can_record = True
    can_seek = False
    primary_rank = 0

    def __init__(self, args: argparse.Namespace, group: Any = None):
        from llm_moments.engine.session.launch import RankGroup, launch_device, world_size

        self.n = world_size(args)
        self.group = group if group is not None else RankGroup(args, device=launch_device(args))

    def start(self) -> None:
        self.group.start()

    def drain(self) -> list[dict[str, Any]]:
        return self.group.drain()

    @property
    def recording_lost(self) -> str | None:
        return self.group.recording_lost

    @property
    def exit_code(self) -> int | None:
        return self.group.exit_code() if self.group.done() else None

    def start_recording(self, path: str) -> str:
        from llm_moments.engine.errors import MomentsError
        from llm_moments.engine.session.launch import check_rank_records

        check_rank_records(path, self.n)          # every rank's file, refused here, at once
        base = str(Path(path).expanduser().resolve())
        if self.group.send({"cmd": "record", "path": base}) < self.n:
            raise MomentsError("not every rank is running: not recording")
        return base

    def stop_recording(self) -> None:
        self.group.send({"cmd": "stop-record"})

    def stop(self, timeout_s: float = 30.0, interrupted: bool = False) -> None:
        self.group.stop(timeout_s=timeout_s, interrupted=interrupted)

    def note(self) -> str | None:
        running = len(self.group.running)
        if self.group.procs and running < self.n:
            return f"{running} of {self.n} ranks running"
        return None


def _missing_status(rs: RankSet) -> list[dict[str, Any]]:
    return [{"type": "status", "level": "warning", "message": w} for w in rs.warnings]


class _RankFiles:
    """Sources of one kind over every rank's file, drained together (each record tagged ``rank``)."""

    def __init__(self, rs: RankSet, subs: dict[int, Any]):
        self.rs = rs
        self.primary_rank = rs.primary
        self.subs = subs
        self._pending = _missing_status(rs)

    def start(self) -> None:
        for s in self.subs.values():
            s.start()

    def drain(self) -> list[dict[str, Any]]:
        out, self._pending = self._pending, []
        for r, s in self.subs.items():
            out += _tagged(s.drain(), r)
        return out

    def stop(self) -> None:
        for s in self.subs.values():
            s.stop()


class RankReplaySource(_RankFiles):
    """Every rank's recording played together (each a ``ReplaySource``): pause, step, seek and speed
    apply to all of them; steps line up by index, each file at its own recorded pace."""

    mode = "replay"
    can_record = False
    can_seek = True

    def __init__(self, rs: RankSet, speed: float = 1.0):
        from .sources import ReplaySource

        super().__init__(rs, {r: ReplaySource(f, speed=speed) for r, f in rs.files.items()})
        self.rec = self.subs[rs.primary].rec
        self.paused = False

    @property
    def speed(self) -> float:
        return self.subs[self.primary_rank].speed

    @speed.setter
    def speed(self, value: float) -> None:
        for s in self.subs.values():
            s.speed = value

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.subs.values())

    def toggle_pause(self) -> bool:
        self.paused = not self.paused
        for s in self.subs.values():
            s.paused = self.paused
        return self.paused

    def step(self, n: int = 1) -> None:
        self.paused = True
        for s in self.subs.values():
            s.step(n)

    def seek(self, delta_steps: int) -> None:
        for s in self.subs.values():
            s.seek(delta_steps)

    def seek_to_step(self, target: int) -> None:
        for s in self.subs.values():
            s.seek_to_step(target)

    def note(self) -> str | None:
        return f"{self.subs[self.primary_rank].note()} · {len(self.subs)} ranks"


class RankWatchSource(_RankFiles):
    """Follows every rank's recording (one ``WatchSource`` each, its own thread and file)."""

    mode = "watch"
    can_record = False
    can_seek = False

    def __init__(self, rs: RankSet, poll_s: float = 0.2):
        from .sources import WatchSource

        super().__init__(rs, {r: WatchSource(f, poll_s=poll_s) for r, f in rs.files.items()})

    def note(self) -> str | None:
        notes = {r: s.note() for r, s in self.subs.items()}
        primary = notes[self.primary_rank]
        others = [f"rank {r}: {n}" for r, n in notes.items() if r != self.primary_rank and n != primary]
        return " · ".join([primary or "", *others[:2]] + ([f"{len(self.subs)} ranks"] if not others else []))


__all__ = ["RankLiveSource", "RankReplaySource", "RankWatchSource"]
