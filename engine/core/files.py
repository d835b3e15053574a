"""Files written and read safely: never overwrite unless asked, never follow a symlink, bounded reads.

Writing (recordings, ``report -o``, ``export``, the UI's screenshot):

- a new file is created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``): an existing file, or a
  symlink planted where the file goes (dangling or not), makes the create fail instead of being
  written through;
- replacing an existing file (``--force``, ``overwrite=True``) is allowed only for a regular file;
  the new content goes to a fresh temporary file in the same folder (created exclusively too) that
  is renamed over the old one, so a link in its place is replaced, never followed;
- the mode is given at creation (``PRIVATE`` 0600 for files that may hold prompts and outputs,
  else ``PUBLIC`` 0666 minus the umask, as ``open()`` does).

Reading (``--inputs``, ``--theme FILE``, a model's ``config.json``): only a regular file, at most
``limit`` bytes; ``/dev/zero``, a FIFO or a socket is refused before a byte is read (the open never
blocks: ``O_NONBLOCK``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

PRIVATE = 0o600
PUBLIC = 0o666  # masked by the umask, like open()

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC


class FileExists(OSError):
    """The target exists and replacing it was not asked for."""


class NotRegular(OSError):
    """The target (or the file to read) is a symlink, a device, a FIFO, a socket or a directory."""


class TooLarge(OSError):
    """A file to read is larger than its cap."""


def create_exclusive(path: str | os.PathLike, mode: int = PUBLIC) -> int:
    """A new file at ``path`` (never an existing one, never through a symlink); returns its fd."""
    try:
        return os.open(path, _CREATE, mode)
    except FileExistsError:
        raise FileExists(errno.EEXIST, "it already exists", str(path)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegular(errno.ELOOP, "it is a symbolic link", str(path)) from None
        raise


def check_replaceable(path: str | os.PathLike) -> bool:
    """True if ``path`` exists (and is a regular file that may be replaced); False if it does not.
    A symlink, a directory or a special file raises ``NotRegular``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise NotRegular(errno.ELOOP, "it is a symbolic link (never followed)", str(path))
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular(errno.EINVAL, "it is not a regular file", str(path))
    return True


def is_stream(path: str | os.PathLike) -> bool:
    """A character device or a FIFO (not followed): an output may go there (``-o /dev/null``, a named
    pipe), since writing to it overwrites nothing; it is opened without creating or truncating."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)


def _temp_beside(path: Path, mode: int) -> tuple[int, Path]:
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return create_exclusive(tmp, mode), tmp
        except FileExists:
            continue
    raise FileExists(errno.EEXIST, "no free temporary name beside it", str(path))


def create(path: str | os.PathLike, *, force: bool = False, mode: int = PUBLIC) -> int:
    """A file at ``path`` opened for writing, returned as an fd.

    ``force`` False: exclusive create (``FileExists`` if anything is there). ``force`` True: an
    existing regular file is replaced at once by a new, empty inode (rename of a temporary file made
    beside it), so a reader of the old file keeps the old content and nothing is written through a
    link; a symlink or special file there raises ``NotRegular``."""
    p = Path(path)
    if not force:
        return create_exclusive(p, mode)
    check_replaceable(p)
    fd, tmp = _temp_beside(p, mode)
    try:
        os.replace(tmp, p)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return fd


def same_file(path: str | os.PathLike, fd: int) -> bool:
    """Whether ``path`` (not followed) is still the file open as ``fd``."""
    try:
        a, b = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def remove_if_ours(path: str | os.PathLike, ident: tuple[int, int] | None) -> None:
    """Unlink ``path`` only if it is still the file we created (device, inode)."""
    if ident is None:
        return
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == ident:
            os.unlink(path)
    except OSError:
        pass


@contextlib.contextmanager
def output(path: str | os.PathLike, *, force: bool = False, mode: int = PUBLIC,
           encoding: str = "utf-8") -> Iterator[IO[str]]:
    """A text file to write a whole output into (``report -o``, ``export``).

    Without ``force`` the target is created exclusively up front (an existing file fails before any
    work) and removed again if the writing fails. With ``force`` the content goes to a temporary file
    beside it, renamed over the target only when complete: a failed write leaves the old file as it
    was. Neither ever writes through a symlink. A character device or FIFO (``/dev/null``, a named
    pipe) is written as it is: nothing there can be overwritten."""
    p = Path(path)
    if is_stream(p):
        fh = os.fdopen(os.open(p, os.O_WRONLY | _NOFOLLOW | _CLOEXEC), "w", encoding=encoding, newline="")
        with fh:
            yield fh
        return
    if force:
        check_replaceable(p)
        fd, target = _temp_beside(p, mode)
    else:
        fd, target = create_exclusive(p, mode), p
    st = os.fstat(fd)
    ident = (st.st_dev, st.st_ino)
    fh = os.fdopen(fd, "w", encoding=encoding, newline="")
    try:
        yield fh
        fh.close()
        if force:
            os.replace(target, p)
    except BaseException:
        with contextlib.suppress(OSError, ValueError):
            fh.close()
        remove_if_ours(target, ident)
        raise


def create_unique(folder: str | os.PathLike, stem: str, suffix: str, mode: int = PUBLIC,
                  tries: int = 1000) -> tuple[int, Path]:
    """A new file ``folder/stem{suffix}``, else ``stem-1{suffix}``, ``stem-2{suffix}``…: never an existing
    name, never through a symlink. Returns (fd, path)."""
    d = Path(folder)
    for n in range(tries):
        p = d / (f"{stem}{suffix}" if n == 0 else f"{stem}-{n}{suffix}")
        try:
            return create_exclusive(p, mode), p
        except FileExists:
            continue
        except NotRegular:  # ELOOP cannot come with O_EXCL, but a link there is taken all the same
            continue
    raise FileExists(errno.EEXIST, f"{tries} names taken", str(d / f"{stem}{suffix}"))


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Raises FileNotFoundError, IsADirectoryError, ``NotRegular`` (a device, FIFO or socket: nothing is
    read, and the open does not wait for a FIFO's writer), ``TooLarge``, or the OSError of the open."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(errno.EINVAL, "not a regular file", str(path))
        if st.st_size > limit:
            raise TooLarge(errno.EFBIG, f"larger than {human_bytes(limit)}", str(path))
        chunks, size = [], 0
        while True:  # st_size may be 0 (a /proc file) or grow while we read: the cap holds anyway
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise TooLarge(errno.EFBIG, f"larger than {human_bytes(limit)}", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_stream(fh: IO[bytes], limit: int, where: str = "stdin") -> bytes:
    """At most ``limit`` bytes from a binary stream (stdin); ``TooLarge`` if there is more."""
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(errno.EFBIG, f"larger than {human_bytes(limit)}", where)
    return data


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"
