"""JSON Lines recordings (schema ``moments/1``): a crash-safe writer, a tolerant reader, a follower.

One JSON object per line. The writer flushes after every step so that a process killed at any point
leaves a file whose complete lines all load; the reader keeps everything before a cut-off last line
and refuses a newer major schema with one clear line.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

from llm_moments.engine.errors import MomentsError

SCHEMA = "moments/1"
SCHEMA_MAJOR = 1


class RecordingError(MomentsError):
    """A file that cannot be read as a recording (not JSON Lines, no header, newer schema)."""


def check_writable(path: str | os.PathLike, what: str = "record to", example: str = "run.jsonl") -> Path:
    """Fail early (before a model loads) if ``path`` cannot be created; return it resolved."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise MomentsError(f"cannot {what} {p}: it is a directory; give a file name such as {p / example}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise MomentsError(f"cannot {what} {p}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise MomentsError(f"cannot {what} {p}: permission denied")
    return p


class Recorder:
    """Writes one session to a JSON Lines file.

    Opened before the model loads (so a bad path fails fast), the header is written once the layers
    are known. Only one thread writes (the monitor's worker); steps and footers flush, samples ride
    along with the next flush.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = check_writable(path)
        try:
            self._fh: IO[str] | None = open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise MomentsError(f"cannot record to {self.path}: {exc.strerror or exc}") from None
        self.header_written = False
        self.steps_written = 0
        self.closed = False

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def write(self, record: dict[str, Any], flush: bool | None = None) -> None:
        """Append one record; ``flush`` None: flush unless it is a sample (callers that batch pass False)."""
        if self._fh is None:
            return
        self._fh.write(json.dumps(record, separators=(",", ":"), allow_nan=False, default=_json_default))
        self._fh.write("\n")
        rtype = record.get("type")
        if rtype == "header":
            self.header_written = True
        elif rtype == "step":
            self.steps_written += 1
        # Samples ride along with the next flush; everything else reaches the disk at once.
        if flush or (flush is None and rtype != "sample"):
            self._fh.flush()

    def close(self, footer: dict[str, Any] | None = None) -> None:
        """Write the footer (if a header went out) and close; remove the file if nothing was written."""
        if self._fh is None:
            return
        if footer is not None and self.header_written:
            self.write(footer, flush=True)
        self._fh.close()
        self._fh = None
        self.closed = True
        if not self.header_written:
            # The session never started (the model failed to load): leave no empty file behind.
            try:
                self.path.unlink()
            except OSError:
                pass


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays reach the writer from statistics; keep the writer free of numpy imports.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


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

    @property
    def layer_names(self) -> list[str]:
        return [layer["name"] for layer in self.header["layers"]]

    @property
    def truncated(self) -> bool:
        """True when the writer did not end the session (killed, or still writing)."""
        return self.footer is None


def check_header(record: Any, where: str) -> dict[str, Any]:
    """Validate a header record; raise RecordingError with one line if it is not one we can read."""
    if not isinstance(record, dict) or record.get("type") != "header":
        raise RecordingError(f"{where} is not a moments recording: its first line is not a header")
    schema = str(record.get("schema", ""))
    name, _, version = schema.partition("/")
    if name != "moments" or not version.split(".")[0].isdigit():
        raise RecordingError(f"{where} is not a moments recording: unknown schema {schema!r}")
    major = int(version.split(".")[0])
    if major != SCHEMA_MAJOR:
        raise RecordingError(
            f"{where} uses schema {schema}, this moments reads {SCHEMA}: "
            + ("upgrade llm-moments to read it" if major > SCHEMA_MAJOR else "it is too old to read")
        )
    if not isinstance(record.get("layers"), list):
        raise RecordingError(f"{where} is not a moments recording: its header has no layer list")
    return record


def load(path: str | os.PathLike) -> Recording:
    """Read a whole recording. A cut-off last line is dropped with a warning; a bad line elsewhere too."""
    p = Path(path).expanduser()
    try:
        fh = open(p, "r", encoding="utf-8")
    except FileNotFoundError:
        raise RecordingError(f"no such recording: {p}") from None
    except IsADirectoryError:
        raise RecordingError(f"{p} is a directory, not a recording") from None
    except OSError as exc:
        raise RecordingError(f"cannot read {p}: {exc.strerror or exc}") from None
    with fh:
        try:
            lines = fh.read().split("\n")
        except UnicodeDecodeError:
            raise RecordingError(f"{p} is not a moments recording: it is not text") from None
    ends_with_newline = lines[-1] == ""
    if ends_with_newline:
        lines.pop()
    if not lines:
        raise RecordingError(f"{p} is empty: nothing was recorded")
    rec: Recording | None = None
    for lineno, line in enumerate(lines, 1):
        is_last = lineno == len(lines)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if rec is None:
                raise RecordingError(f"{p} is not a moments recording: line 1 is not JSON") from None
            if is_last and not ends_with_newline:
                rec.warnings.append(f"the last line ({lineno}) is cut off; kept the {lineno - 1} lines before it")
            else:
                rec.warnings.append(f"line {lineno} is not valid JSON; skipped")
            continue
        if rec is None:
            rec = Recording(path=p, header=check_header(obj, str(p)))
            continue
        _file_record(rec, obj)
    assert rec is not None
    if rec.footer is None:
        rec.warnings.append("no footer: the session did not end cleanly (killed, or still being written)")
    return rec


def _file_record(rec: Recording, obj: Any) -> None:
    if not isinstance(obj, dict):
        rec.warnings.append("a line that is not a JSON object was skipped")
        return
    rtype = obj.get("type")
    if rtype == "step":
        rec.steps.append(obj)
    elif rtype == "sample":
        rec.samples.append(obj)
    elif rtype == "footer":
        rec.footer = obj
    else:
        rec.others.append(obj)


def follow(
    path: str | os.PathLike,
    *,
    poll_s: float = 0.1,
    stop: Any = None,
    idle_timeout_s: float | None = None,
    wait_for_file_s: float = 0.0,
) -> Iterator[dict[str, Any]]:
    """Yield records from a file another process is still writing, catching up with what is there.

    Only complete lines are yielded; a partial last line waits for its newline. Ends after the
    footer, when ``stop`` (a threading.Event) is set, or when the file has not grown for
    ``idle_timeout_s`` seconds (None: wait for ever). The first record yielded is the checked header.
    """
    p = Path(path).expanduser()
    deadline = time.monotonic() + wait_for_file_s
    while True:
        try:
            fh = open(p, "r", encoding="utf-8")
            break
        except FileNotFoundError:
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                raise RecordingError(f"no such recording: {p}") from None
            time.sleep(poll_s)
        except OSError as exc:
            raise RecordingError(f"cannot read {p}: {exc.strerror or exc}") from None
    with fh:
        pending = ""
        header_seen = False
        last_growth = time.monotonic()
        while stop is None or not stop.is_set():
            chunk = fh.read()
            if chunk:
                last_growth = time.monotonic()
                pending += chunk
                *complete, pending = pending.split("\n")
                for line in complete:
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError:
                        if not header_seen:
                            raise RecordingError(f"{p} is not a moments recording: line 1 is not JSON") from None
                        continue
                    if not header_seen:
                        check_header(obj, str(p))
                        header_seen = True
                    yield obj
                    if isinstance(obj, dict) and obj.get("type") == "footer":
                        return
                continue
            if idle_timeout_s is not None and time.monotonic() - last_growth > idle_timeout_s:
                return
            time.sleep(poll_s)
