"""Following a recording another process is writing (``moments watch``): catching up, then reading
what is appended, and noticing truncation, replacement, deletion and a new session.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from llm_moments.engine.core.recording import (
    MAX_LINE_BYTES,
    BadLine,
    ReadStats,
    RecordingError,
    check_header,
    check_record,
    parse_line,
)

# -- following a file that is being written ----------------------------------------------------------


def _header_from_line(raw: bytes, where: str) -> dict[str, Any]:
    try:
        obj = parse_line(raw)
    except BadLine as exc:
        if "UTF-8" in str(exc):
            raise RecordingError(f"{where} is not a moments recording: it is not text") from None
        raise RecordingError(f"{where} is not a moments recording: line 1 is not JSON") from None
    return check_header(obj, where)


def _change(p: Path, fh: IO[bytes], ident: tuple[int, int], offset: int, consumed: int,
            probe: bytes) -> str | None:
    """What happened to the file at ``p`` since it was opened as ``fh``: "deleted", "replaced" (another
    file at the path), "truncated" (shorter than what was read, or its start rewritten), or None."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return "deleted"
    except OSError:
        return None
    if (st.st_dev, st.st_ino) != ident:
        return "replaced"
    if st.st_size < offset:
        return "truncated"
    try:  # cut and rewritten past our offset between two looks: its first line or a line end moved
        fd = fh.fileno()
        if probe and os.pread(fd, len(probe), 0) != probe:
            return "truncated"
        if consumed and os.pread(fd, 1, consumed - 1) != b"\n":
            return "truncated"
    except OSError:
        return None
    return None


_CHANGE_WORDS = {
    "deleted": "was deleted; waiting for a new session to appear there",
    "replaced": "was replaced by another file; following the new session from its header",
    "truncated": "was truncated (rewritten); following the new session from its header",
    "new-session": "holds a new session (a second header); following it from its header",
}


def follow(
    path: str | os.PathLike,
    *,
    poll_s: float = 0.1,
    stop: Any = None,
    idle_timeout_s: float | None = None,
    wait_for_file_s: float = 0.0,
    restart: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield records from a file another process is still writing, catching up with what is there.

    Only complete lines are yielded; a partial last line waits for its newline. Every line is checked
    like ``iter_records`` does (bad ones are skipped and counted in ``stats``). The first record yielded
    is the checked header (a bad one raises RecordingError, one line). Ends after the footer, when
    ``stop`` (a threading.Event) is set, or when the file has not grown for ``idle_timeout_s`` seconds
    (None: wait for ever).

    The file is watched while it is followed: deleted, replaced by another file (a new inode or
    device), truncated (shorter than what was read, or its first line rewritten) or given a second
    header (a new session appended). ``restart`` False: that raises RecordingError. ``restart`` True:
    it yields ``{"type": "follow", "event": "deleted" | "replaced" | "truncated" | "new-session",
    "reset": bool, "message": ...}`` (``reset``: the records before belong to another session) and
    goes on with the new session's header, waiting for the path to reappear after a deletion; the
    footer does not end it then (a new session may follow).
    """
    p = Path(path).expanduser()
    stats = stats if stats is not None else ReadStats()
    deadline = time.monotonic() + wait_for_file_s

    def open_file(wait_s: float) -> IO[bytes] | None:
        until = time.monotonic() + wait_s
        while True:
            try:
                return open(p, "rb")
            except FileNotFoundError:
                if time.monotonic() >= until or (stop is not None and stop.is_set()):
                    return None
                time.sleep(poll_s)
            except IsADirectoryError:
                raise RecordingError(f"{p} is a directory, not a recording") from None
            except OSError as exc:
                raise RecordingError(f"cannot read {p}: {exc.strerror or exc}") from None

    fh = open_file(max(deadline - time.monotonic(), 0.0))
    if fh is None:
        raise RecordingError(f"no such recording: {p}")

    def event(kind: str, reset: bool) -> dict[str, Any]:
        return {"type": "follow", "event": kind, "reset": reset, "message": f"{p} {_CHANGE_WORDS[kind]}"}

    try:
        while True:  # one file (and session) per pass
            st = os.fstat(fh.fileno())
            ident = (st.st_dev, st.st_ino)
            header: dict[str, Any] | None = None
            n_layers = 0
            pending = b""
            overlong = False
            offset = consumed = lineno = 0
            probe = b""
            ended = False           # the footer came: only a new session is of interest now
            changed: str | None = None
            last_growth = time.monotonic()
            while changed is None:
                if stop is not None and stop.is_set():
                    return
                try:
                    chunk = fh.read(1 << 20)
                except OSError:
                    chunk = b""
                if not chunk:
                    changed = _change(p, fh, ident, offset, consumed, probe)
                    if changed is not None:
                        break
                    if idle_timeout_s is not None and time.monotonic() - last_growth > idle_timeout_s:
                        return
                    time.sleep(poll_s)
                    continue
                last_growth = time.monotonic()
                offset += len(chunk)
                pending += chunk
                *complete, pending = pending.split(b"\n")
                if not complete and len(pending) > MAX_LINE_BYTES and not overlong:
                    overlong, pending = True, b""
                for raw in complete:
                    consumed += len(raw) + 1
                    lineno += 1
                    if overlong:
                        overlong = False
                        stats.lines += 1
                        stats.skip(lineno, f"longer than {MAX_LINE_BYTES >> 20} MiB")
                        continue
                    if not raw.strip():
                        continue
                    stats.lines += 1
                    if header is None:
                        header = _header_from_line(raw, str(p))
                        n_layers = len(header["layers"])
                        probe = raw[:4096]
                        yield header
                        continue
                    try:
                        obj = parse_line(raw)
                    except BadLine as exc:
                        stats.skip(lineno, str(exc))
                        continue
                    if type(obj) is dict and obj.get("type") == "header":
                        if not restart:
                            stats.ended_at_header = lineno
                            return
                        header = check_header(obj, f"{p} (line {lineno})")
                        n_layers, ended = len(header["layers"]), False
                        yield event("new-session", True)
                        yield header
                        continue
                    if ended:
                        continue
                    problem = check_record(obj, n_layers)
                    if problem is not None:
                        stats.skip(lineno, problem)
                        continue
                    stats.records += 1
                    yield obj
                    if obj["type"] == "footer":
                        stats.footer = obj
                        if not restart:
                            return
                        ended = True
            if stop is not None and stop.is_set():
                return
            if not restart:
                raise RecordingError(f"{p} was {changed} while it was being followed")
            if changed == "truncated":
                fh.seek(0)
                yield event("truncated", True)
                continue
            fh.close()
            if changed == "deleted":
                yield event("deleted", False)
            fh = None
            while fh is None:  # the same path again: a new file, from its start
                if stop is not None and stop.is_set():
                    return
                fh = open_file(poll_s)
            yield event("replaced", True)
    finally:
        if fh is not None:
            fh.close()
