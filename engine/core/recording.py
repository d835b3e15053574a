"""JSON Lines recordings (schema ``moments/1``): reading them.

One JSON object per line. The writer (core/writer.py) flushes after every step so that a process
killed at any point leaves a file whose complete lines all load; the reader checks every line (strict
JSON, each record against the header: core/validate.py), skips and counts the bad ones wherever they
are (a cut-off last line too), and refuses a bad header or a newer major schema with one clear line.
``iter_records`` / ``RecordReader`` stream a file in bounded memory; core/follow.py tails one that is
being written. The writer's and the checks' names are importable from here as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from llm_moments.engine.core.validate import (  # noqa: F401  (the names readers have always found here)
    MAX_LAYERS,
    MAX_LINE_BYTES,
    MAX_NUMBER,
    MAX_PROBLEMS,
    MAX_T_NS,
    READ_BATCH,
    READ_BATCH_BYTES,
    SCHEMA,
    SCHEMA_MAJOR,
    STEP_KINDS,
    BadLine,
    RecordingError,
    _parse,
    check_header,
    check_record,
    check_records,
    parse_line,
)

# The writer (and the checks of where it writes) lives in engine/core/writer.py; these names stay here.
from llm_moments.engine.core.writer import (  # noqa: F401
    API_HINT,
    FORCE_HINT,
    Recorder,
    RecordingLost,
    check_record_path,
    check_writable,
    rank_record_path,
)


@dataclass
class Recording:
    """A loaded recording: header, steps, samples, other records, footer and what was wrong with it."""

    path: Path
    header: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)
    footer: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    skipped: int = 0                     # lines that were not loaded (bad JSON, bad values, cut off)

    @property
    def layer_names(self) -> list[str]:
        return [layer["name"] for layer in self.header["layers"]]

    @property
    def truncated(self) -> bool:
        """True when the writer did not end the session (killed, or still writing)."""
        return self.footer is None


# -- the streaming reader ------------------------------------------------------------------------------------


@dataclass
class ReadStats:
    """What a reader has seen so far; updated as it goes (a running count)."""

    lines: int = 0                       # lines read, the header's included
    records: int = 0                     # records yielded (not the header)
    skipped: int = 0                     # bad lines skipped
    problems: list[tuple[int, str]] = field(default_factory=list)  # the first MAX_PROBLEMS: (line, reason)
    cut_off: bool = False                # the last line had no newline and could not be read
    footer: dict[str, Any] | None = None
    ended_at_header: int | None = None   # line of a second header (another session): reading stopped there

    def skip(self, lineno: int, reason: str) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append((lineno, reason))

    def warnings(self) -> list[str]:
        """The warnings a command prints: one per kind of trouble, each one line."""
        out = []
        bad = [(n, why) for n, why in self.problems if not (self.cut_off and n == self.lines)]
        n_bad = self.skipped - (1 if self.cut_off else 0)
        if n_bad:
            named = "; ".join(f"line {n}: {why}" for n, why in bad)
            more = f"; and {n_bad - len(bad)} more" if n_bad > len(bad) else ""
            out.append(f"skipped {n_bad} bad line{'' if n_bad == 1 else 's'} ({named}{more})")
        if self.cut_off:
            out.append(f"the last line ({self.lines}) is cut off; kept the {self.lines - 1} lines before it")
        if self.ended_at_header is not None:
            out.append(f"line {self.ended_at_header} starts another session (a second header); "
                       f"read the first session only")
        if self.footer is None and self.ended_at_header is None:
            out.append("no footer: the session did not end cleanly (killed, or still being written)")
        return out


def _open(path: str | os.PathLike) -> tuple[Path, IO[bytes]]:
    p = Path(path).expanduser()
    try:
        return p, open(p, "rb")
    except FileNotFoundError:
        raise RecordingError(f"no such recording: {p}") from None
    except IsADirectoryError:
        raise RecordingError(f"{p} is a directory, not a recording") from None
    except OSError as exc:
        raise RecordingError(f"cannot read {p}: {exc.strerror or exc}") from None


def _read_line(fh: IO[bytes]) -> tuple[bytes | None, bool] | None:
    """(line without its newline, whether it had one); None at the end. Too long: (None, ...)
    after skipping to the next newline."""
    line = fh.readline(MAX_LINE_BYTES + 1)
    if not line:
        return None
    if line.endswith(b"\n"):
        return line[:-1], True
    if len(line) <= MAX_LINE_BYTES:
        return line, False  # the last line, cut off (or not yet finished)
    while True:  # skip the rest of an overlong line
        more = fh.readline(MAX_LINE_BYTES)
        if not more or more.endswith(b"\n"):
            return None, more.endswith(b"\n")


class RecordReader:
    """Streams one recording: the header is checked when it opens (``RecordingError``, one line),
    then iterating yields every usable record after it, in file order, skipping and counting
    (``stats``) the lines that are not; memory stays bounded by one line."""

    def __init__(self, path: str | os.PathLike, stats: ReadStats | None = None):
        self.path, self._fh = _open(path)
        self.stats = stats if stats is not None else ReadStats()
        try:
            self.header = self._read_header()
        except BaseException:
            self._fh.close()
            raise

    def _read_header(self) -> dict[str, Any]:
        p = self.path
        try:
            got = _read_line(self._fh)
        except OSError as exc:
            raise RecordingError(f"cannot read {p}: {exc.strerror or exc}") from None
        if got is None:
            raise RecordingError(f"{p} is empty: nothing was recorded")
        self.stats.lines += 1
        raw, _ = got
        if raw is None:
            raise RecordingError(f"{p} is not a moments recording: line 1 is longer than {MAX_LINE_BYTES >> 20} MiB")
        if not raw.strip():
            raise RecordingError(f"{p} is not a moments recording: line 1 is empty")
        try:
            obj = parse_line(raw)
        except BadLine as exc:
            if "UTF-8" in str(exc) or b"\x00" in raw:
                raise RecordingError(f"{p} is not a moments recording: it is not text") from None
            if str(exc).startswith("not valid JSON"):
                raise RecordingError(f"{p} is not a moments recording: line 1 is not JSON") from None
            raise RecordingError(f"{p} is not a moments recording: line 1: {exc}") from None
        return check_header(obj, str(p))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stats, n_layers, fh = self.stats, len(self.header["layers"]), self._fh
        lineno = stats.lines
        try:
            while True:
                # A batch of lines (bounded in lines and bytes), parsed, then checked together
                # (``check_records``); then walked in file order, so the counts, the skipped lines and
                # where a second header stops the reading are what one line at a time would give.
                entries: list[tuple[int, bool, int, str | None]] = []  # (line, cut off, record or -1, reason)
                objs: list[Any] = []
                finite: list[bool] = []
                failed: str | None = None
                size = 0
                at_end = False
                while len(entries) < READ_BATCH and size < READ_BATCH_BYTES:
                    try:
                        got = _read_line(fh)
                    except OSError as exc:
                        failed = f"cannot read: {exc.strerror or exc}"
                        break
                    if got is None:
                        at_end = True
                        break
                    lineno += 1
                    raw, complete = got
                    if raw is None:
                        entries.append((lineno, False, -1, f"longer than {MAX_LINE_BYTES >> 20} MiB"))
                        size += MAX_LINE_BYTES
                        continue
                    size += len(raw)
                    if not raw.strip():
                        entries.append((lineno, False, -1, None))
                        continue
                    try:
                        obj, fin = _parse(raw)
                    except BadLine as exc:
                        entries.append((lineno, not complete, -1, str(exc) if complete else "cut off"))
                        continue
                    entries.append((lineno, not complete, len(objs), None))
                    objs.append(obj)
                    finite.append(fin)
                problems = check_records(objs, n_layers, finite)
                for line, cut, k, reason in entries:
                    stats.lines = line
                    if k >= 0:
                        obj, reason = objs[k], problems[k]
                        if reason is None:
                            if obj["type"] == "header":
                                stats.ended_at_header = line
                                return
                            if obj["type"] == "footer":
                                stats.footer = obj
                            stats.records += 1
                            yield obj
                            continue
                    if reason is not None:
                        if cut:
                            stats.cut_off = True
                        stats.skip(line, reason)
                if failed is not None:
                    stats.skip(stats.lines + 1, failed)
                    return
                if at_end:
                    return
        finally:
            self._fh.close()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The checked header of a recording (``RecordingError``, one line, if it has none we can read)."""
    with RecordReader(path) as reader:
        return reader.header


def iter_records(path: str | os.PathLike, stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Every usable record after the header, validated against it, one at a time (bounded memory).
    Pass a ``ReadStats`` to see the running count of skipped lines and, at the end, ``stats.warnings()``.
    The header is checked first: a bad one raises ``RecordingError`` when iteration starts."""
    reader = RecordReader(path, stats)
    yield from reader


def load(path: str | os.PathLike) -> Recording:
    """Read a whole recording. Bad lines anywhere are skipped and counted (a warning names the first
    few); a cut-off last line too; a bad or missing header raises RecordingError with one line."""
    reader = RecordReader(path)
    rec = Recording(path=reader.path, header=reader.header)
    for obj in reader:
        _file_record(rec, obj)
    rec.skipped = reader.stats.skipped
    rec.warnings = reader.stats.warnings()
    return rec


def _file_record(rec: Recording, obj: dict[str, Any]) -> None:
    rtype = obj.get("type")
    if rtype == "step":
        rec.steps.append(obj)
    elif rtype == "sample":
        rec.samples.append(obj)
    elif rtype == "footer":
        rec.footer = obj
    else:
        rec.others.append(obj)
