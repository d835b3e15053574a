"""The recording writer: a crash-safe, exclusive-create JSON Lines writer and the checks of where it writes.

Re-exported by ``engine.core.recording`` (the reader and follower live there). A recording is created
exclusively and never through a symlink (``engine.core.files``); an existing file is replaced only
when asked (``--force``, ``overwrite=True``); one that may hold prompts and outputs is 0600.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from pathlib import Path
from typing import IO, Any

from llm_moments.engine.core import files
from llm_moments.engine.errors import MomentsError

_SPECIAL_ROOTS = ("/proc", "/sys", "/dev")

FORCE_HINT = "add --force to replace it, or give another name"
API_HINT = "pass overwrite=True to replace it, or give another name"


def check_writable(path: str | os.PathLike, what: str = "record to", example: str = "run.jsonl",
                   regular: bool = False, force: bool = False, hint: str = FORCE_HINT) -> Path:
    """Fail early (before a model loads) if ``path`` cannot be created; return it (``~`` expanded).

    An empty path, a directory, a missing folder, a symlink (never followed, ``force`` or not), a
    block device or socket, and an unwritable folder are refused; so is an existing file unless
    ``force`` (then it will be replaced, see ``engine.core.files``). ``hint`` says how to replace.
    An output (not ``regular``) may be a character device or a FIFO (``/dev/null``): nothing there
    is overwritten.

    ``regular``: the target must be a regular file on an ordinary file system (a recording): a file
    under /proc, /sys or /dev is refused too (``/dev/full`` fails every write, a ``/proc`` file takes
    nothing, and neither would ever hold a recording).
    """
    if not str(path).strip():
        raise MomentsError(f"cannot {what} an empty path: give a file name such as {example}")
    p = Path(path).expanduser()
    if p.is_dir():
        raise MomentsError(f"cannot {what} {p}: it is a directory; give a file name such as {p / example}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise MomentsError(f"cannot {what} {p}: folder {parent} does not exist")
    if regular:
        real = p.resolve()
        if (real.exists() and not real.is_file()) or any(
                real == Path(root) or Path(root) in real.parents for root in _SPECIAL_ROOTS):
            raise MomentsError(f"cannot {what} {p}: not a regular file (a recording needs one; "
                               f"give a file name such as {example})")
    if not regular and files.is_stream(p):  # an output to /dev/null or a named pipe overwrites nothing
        return p
    try:
        exists = files.check_replaceable(p)
    except files.NotRegular as exc:
        raise MomentsError(f"cannot {what} {p}: {exc.strerror}; give a file name such as {example}") from None
    if exists and not force:
        raise MomentsError(f"cannot {what} {p}: it already exists ({hint})")
    if not os.access(parent, os.W_OK) or (exists and not os.access(p, os.W_OK)):
        raise MomentsError(f"cannot {what} {p}: permission denied")
    return p


def check_record_path(path: str | os.PathLike, force: bool = False, hint: str = FORCE_HINT) -> Path:
    """``check_writable`` for a recording: also refuses special files (see there)."""
    return check_writable(path, regular=True, force=force, hint=hint)


def rank_record_path(path: str | os.PathLike, rank: int) -> Path:
    """The file one rank of a multi-rank session records to: ``run.jsonl`` → ``run.rank{R}.jsonl``
    (R = global rank; the tag goes before the last extension; a path already tagged stays)."""
    p = Path(path).expanduser()
    if re.search(r"\.rank\d+$", p.stem):
        return p
    return p.with_name(f"{p.stem}.rank{rank}{p.suffix}")


class RecordingLost(MomentsError):
    """A write to the recording failed (disk full, EIO): the file was closed after its last complete
    step. Raised once, by the write or flush that failed; the message says how many steps are on disk."""

    def __init__(self, message: str, steps: int, path: Path):
        super().__init__(message)
        self.steps, self.path = steps, path


class Recorder:
    """Writes one session to a JSON Lines file.

    Opened before the model loads (so a bad path fails fast), the header is written once the layers
    are known. Only one thread writes (the monitor's worker). Records are kept in memory until the
    next flush; steps and footers flush (unless the caller batches), samples ride along with the next
    flush.

    A failed write (disk full, EIO, a file-size limit) never leaves a torn file behind: the file is cut
    back to the end of the last flush that succeeded (complete lines only), a footer with reason
    ``error`` is tried, the file is closed, and ``RecordingLost`` is raised once; later writes are
    no-ops. ``steps_on_disk`` counts the steps the file holds.

    The file is created exclusively, never through a symlink (``engine.core.files``): an existing file
    is an error unless ``overwrite`` (then a regular file is replaced by a new inode, never truncated
    in place). ``private`` (default): mode 0600, for recordings that may hold prompts and outputs;
    else 0666 minus the umask. ``hint``: how the error message says to replace an existing file.

    ``fh``: a binary file object to write to instead of opening ``path`` (tests inject failing ones).
    """

    def __init__(self, path: str | os.PathLike, fh: IO[bytes] | None = None, *, overwrite: bool = False,
                 private: bool = True, hint: str = API_HINT):
        self.path = check_record_path(path, force=overwrite or fh is not None, hint=hint)
        self._ident: tuple[int, int] | None = None  # (device, inode) of the file we created
        if fh is None:
            try:
                fd = files.create(self.path, force=overwrite, mode=files.PRIVATE if private else files.PUBLIC)
            except files.FileExists:
                raise MomentsError(f"cannot record to {self.path}: it already exists ({hint})") from None
            except OSError as exc:
                raise MomentsError(f"cannot record to {self.path}: {exc.strerror or exc}") from None
            st = os.fstat(fd)
            self._ident = (st.st_dev, st.st_ino)
            fh = os.fdopen(fd, "wb", buffering=0)
        self._fh: IO[bytes] | None = fh
        self._pending: list[bytes] = []
        self._pending_steps = 0
        self._good_bytes = 0          # the file's length after the last flush that succeeded
        self.header_written = False
        self.steps_written = 0        # steps handed to write()
        self.steps_on_disk = 0        # steps in the file (flushed)
        self.closed = False
        self.lost: str | None = None  # why the recording stopped early, once it did

    def flush(self) -> None:
        """Write what is pending; raises RecordingLost (once) if the file refuses it."""
        if self._fh is None or not self._pending:
            return
        data = b"".join(self._pending)
        view = memoryview(data)
        try:
            while view:
                n = self._fh.write(view)
                if n is None:  # a non-blocking sink: nothing was taken
                    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
                view = view[n:]
        except (OSError, ValueError) as exc:
            self._fail(exc)
        self._good_bytes += len(data)
        self._pending.clear()
        self.steps_on_disk += self._pending_steps
        self._pending_steps = 0

    def write(self, record: dict[str, Any], flush: bool | None = None) -> None:
        """Append one record; ``flush`` None: flush unless it is a sample (callers that batch pass False)."""
        if self._fh is None:
            return
        line = json.dumps(record, separators=(",", ":"), allow_nan=False, default=_json_default) + "\n"
        self._pending.append(line.encode("utf-8"))
        rtype = record.get("type")
        if rtype == "header":
            self.header_written = True
        elif rtype == "step":
            self.steps_written += 1
            self._pending_steps += 1
        # Samples ride along with the next flush; everything else reaches the disk at once.
        if flush or (flush is None and rtype != "sample"):
            self.flush()

    def _fail(self, exc: BaseException) -> None:
        """The file refused a write: keep its complete lines, try a footer, close, say so once."""
        fh, self._fh = self._fh, None
        self._pending.clear()
        self._pending_steps = 0
        self.closed = True
        why = _why(exc)
        steps = self.steps_on_disk
        if not self.header_written or self._good_bytes == 0:
            steps = 0
        try:  # a partial line may have gone out: cut the file back to its last complete record
            fh.truncate(self._good_bytes)
            if self._good_bytes:  # a footer, so readers know why it ends here; may itself not fit
                fh.seek(self._good_bytes)
                footer = (json.dumps({"type": "footer", "steps": steps, "reason": "error",
                                      "error": f"recording stopped: {why}"}, separators=(",", ":"))
                          + "\n").encode("utf-8")
                # A size limit can take part of it and refuse the rest: a torn footer is cut off again.
                if fh.write(footer) != len(footer):
                    fh.truncate(self._good_bytes)
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError):
                fh.truncate(self._good_bytes)
        with contextlib.suppress(OSError, ValueError):
            fh.close()
        if self._good_bytes == 0:
            self.lost = f"recording stopped: {why}; nothing was recorded to {self.path}"
        elif steps == 0:
            self.lost = f"recording stopped: {why} after 0 steps; {self.path} holds only its header"
        else:
            self.lost = (f"recording stopped: {why} after {steps} step{'' if steps == 1 else 's'}; "
                         f"{'they are' if steps != 1 else 'it is'} safely in {self.path}")
        raise RecordingLost(self.lost, steps, self.path) from None

    def close(self, footer: dict[str, Any] | None = None) -> None:
        """Write the footer (if a header went out) and close; remove the file if nothing was written.

        Never raises: a failure here is reported through ``lost`` (the caller that stops a session
        cannot do anything else about it)."""
        if self._fh is None:
            return
        try:
            if footer is not None and self.header_written:
                self.write(footer, flush=True)
            else:
                self.flush()
        except RecordingLost:
            return
        with contextlib.suppress(OSError, ValueError):
            self._fh.close()
        self._fh = None
        self.closed = True
        if not self.header_written:
            # The session never started (the model failed to load): leave no empty file behind
            # (only the file we created: not one that took its name since).
            files.remove_if_ours(self.path, self._ident)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    if isinstance(exc, OSError) and (exc.errno or exc.strerror):
        text = os.strerror(exc.errno) if exc.errno else exc.strerror  # "Input/output error", "File too large"
        return text[0].lower() + text[1:]
    return f"{type(exc).__name__}: {exc}"


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays reach the writer from statistics; keep the writer free of numpy imports.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
