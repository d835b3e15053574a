"""Finding every rank's recording of a multi-rank session (design §10).

Under torch.distributed each rank records to its own file: ``record="run.jsonl"`` gives
``run.rank0.jsonl``, ``run.rank1.jsonl``, … (``recording.rank_record_path``). A reader given the base
name (``run.jsonl``, which does not exist itself) or any rank's file (``run.rank1.jsonl``) finds them
all with ``find_ranks``:

- the siblings named ``{stem}.rank{R}{suffix}`` in the same folder (a directory listing matched with a
  regular expression: a name with ``[`` or ``*`` in it is never read as a pattern);
- each one's header is read and checked (a bad one is one ``RecordingError`` line naming the file):
  it must carry ``dist`` with the rank its name says, and all of them one ``dist.session`` id — files
  of two sessions side by side (a stale ``run.rank3.jsonl`` of an earlier, larger run) are refused
  with one line, never merged;
- the world size is the headers' ``dist.world_size``; the ranks in ``range(world_size)`` without a
  file are ``missing``, said in one warning line (``RankSet.warnings``); what was found is analysed.

A path that exists and carries no rank tag is a plain recording (``find_ranks`` gives None), even if
its header has ``dist``: what a user names is what is read. So is a ``*.rank{R}*`` file whose header
has no ``dist`` (a single session that happens to be named so).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_moments.engine.core.recording import RecordingError, read_header

_TAG = re.compile(r"^(?P<stem>.+?)\.rank(?P<rank>\d{1,7})(?P<suffix>\.[^.]*)?$")


def split_rank(path: str | os.PathLike) -> tuple[Path, int | None]:
    """(base, rank) of a path: ``run.rank1.jsonl`` → (``run.jsonl``, 1); ``run.jsonl`` → (``run.jsonl``, None).
    The inverse of ``recording.rank_record_path`` (the tag sits before the last extension, if any)."""
    p = Path(path).expanduser()
    m = _TAG.match(p.name)
    if m is None:
        return p, None
    return p.with_name(m["stem"] + (m["suffix"] or "")), int(m["rank"])


def rank_files(base: str | os.PathLike) -> dict[int, Path]:
    """{rank: path} of the files next to ``base`` named ``{stem}.rank{R}{suffix}``, by rank."""
    base = Path(base).expanduser()
    suffix = base.suffix
    stem = base.name[:-len(suffix)] if suffix else base.name
    pattern = re.compile(re.escape(stem) + r"\.rank(\d{1,7})" + re.escape(suffix))
    folder = base.parent if str(base.parent) else Path(".")
    found: dict[int, Path] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                m = pattern.fullmatch(entry.name)
                if m is not None:
                    try:
                        if not entry.is_file():
                            continue
                    except OSError:
                        continue
                    found[int(m[1])] = folder / entry.name
    except OSError:
        return {}
    return dict(sorted(found.items()))


def _ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → "0–2, 5, 7–8"."""
    out, i = [], 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        out.append(str(ranks[i]) if i == j else f"{ranks[i]}–{ranks[j]}")
        i = j + 1
    return ", ".join(out)


@dataclass
class RankSet:
    """The recordings of one multi-rank session: one file per rank found, their headers, what is missing."""

    base: Path                                   # run.jsonl (need not exist)
    files: dict[int, Path]                       # rank → file, by rank
    headers: dict[int, dict[str, Any]]           # rank → checked header
    world_size: int
    session: str | None
    missing: list[int] = field(default_factory=list)

    @property
    def ranks(self) -> list[int]:
        return list(self.files)

    @property
    def primary(self) -> int:
        """The lowest rank found: its file is the one a single-file view shows."""
        return self.ranks[0]

    @property
    def backend(self) -> str | None:
        return (self.headers[self.primary].get("dist") or {}).get("backend")

    def dist(self, rank: int) -> dict[str, Any]:
        return self.headers[rank].get("dist") or {}

    def host(self, rank: int) -> str | None:
        host = self.dist(rank).get("host")
        return None if host is None else str(host)

    def device(self, rank: int) -> str | None:
        dev = self.headers[rank].get("device") or {}
        name = dev.get("name") or dev.get("kind")
        return None if name is None else str(name)

    @property
    def warnings(self) -> list[str]:
        """One line when ranks are missing (world size from the headers against the files found)."""
        if not self.missing:
            return []
        n = len(self.missing)
        suffix = self.base.suffix
        stem = self.base.name[:-len(suffix)] if suffix else self.base.name
        return [f"{len(self.files)} of {self.world_size} ranks found: rank{'s' if n > 1 else ''} "
                f"{_ranges(self.missing)} missing (no {stem[:200]}.rank{self.missing[0]}{suffix}"
                f"{' …' if n > 1 else ''}); the merged view covers rank{'s' if len(self.files) > 1 else ''} "
                f"{_ranges(self.ranks)}"]


def _short(value: Any, n: int = 24) -> str:
    s = str(value)
    return s if len(s) <= n else s[:n] + "…"


def find_ranks(path: str | os.PathLike) -> RankSet | None:
    """The rank set ``path`` names (the base name or any rank's file), or None for a plain recording
    (or a name nothing matches: the caller's reader then says there is no such recording). Raises
    ``RecordingError`` (one line) for a rank file that cannot be read, one whose header disagrees with
    its name, and files of more than one session."""
    p = Path(path).expanduser()
    base, tagged = split_rank(p)
    if p.exists():
        if tagged is None or p.is_dir():
            return None
        dist = read_header(p).get("dist")
        if not isinstance(dist, dict) or "rank" not in dist:
            return None   # named like a rank file, but a single session
    files = rank_files(base)
    if not files:
        return None
    headers: dict[int, dict[str, Any]] = {}
    for rank, f in files.items():
        header = read_header(f)
        dist = header.get("dist")
        if not isinstance(dist, dict) or type(dist.get("rank")) is not int:
            raise RecordingError(f"{f} holds no rank of a multi-rank session (its header has no dist rank): "
                                 f"move it away from the other rank files or pass it alone under another name")
        if dist["rank"] != rank:
            raise RecordingError(f"{f} is named rank {rank} but its header says rank {_short(dist['rank'])}")
        headers[rank] = header
    sessions: dict[str, int] = {}
    for rank, header in headers.items():
        sessions.setdefault(str(header["dist"].get("session")), rank)
    if len(sessions) > 1:
        (s0, r0), (s1, r1) = list(sessions.items())[:2]
        raise RecordingError(
            f"{base}: the rank files belong to {len(sessions)} different sessions ({files[r0].name}: session "
            f"{_short(s0)}; {files[r1].name}: session {_short(s1)}); move the stale ones away and try again")
    sizes = [h["dist"].get("world_size") for h in headers.values()]
    world = max([s for s in sizes if type(s) is int and 0 < s <= 1 << 20] or [0])
    world = max(world, max(files) + 1)
    missing = [r for r in range(world) if r not in files]
    session = headers[next(iter(headers))]["dist"].get("session")
    return RankSet(base, files, headers, world, None if session is None else str(session), missing)


def rank_paths(path: str | os.PathLike) -> list[Path]:
    """Every file to read for ``path``: its ranks' files (by rank) or the path itself (for replay / watch:
    the UI shows the first and may offer the others)."""
    rs = find_ranks(path)
    return list(rs.files.values()) if rs is not None else [Path(path).expanduser()]


__all__ = ["RankSet", "find_ranks", "rank_files", "rank_paths", "split_rank"]
