"""Writing a whole buffer to a file descriptor, replacing a file atomically, making a
directory entry durable, creating a log directory, opening files at interpreter shutdown,
and releasing a file lock."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from pathlib import Path

from .errors import ConfigurationError

if sys.platform != "win32":
    import fcntl


def write_all(fd: int, data: bytes | bytearray) -> None:
    """``os.write`` until every byte of ``data`` is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """``fsync`` a directory, so that files created, renamed or removed in it stay so
    after a power cut (a no-op on Windows, where directories cannot be opened)."""
    if sys.platform == "win32":  # pragma: no cover
        return
    fd = os.open(os.fspath(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TMP_NAMES = itertools.count()


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync dir).

    ``durable=False`` skips both fsyncs: readers still see the old or the new content,
    never a mix, but a power cut may leave the old one (or, rarely, an empty file). A
    failure removes the temp file.
    """
    # Unique per call: two threads (two replicators of a stream, say) must not share it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_TMP_NAMES)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def not_a_directory(path: Path) -> Path | None:
    """What is in the way of ``path`` as a directory: the first of its parents (from the
    root) or itself that exists and is no directory (a file, a dangling symbolic link);
    None when there is none."""
    return next((part for part in (*reversed(path.parents), path)
                 if os.path.lexists(part) and not part.is_dir()), None)


def make_log_directory(path: Path) -> None:
    """``mkdir -p`` with mode 0700 for a tenant directory and its parents.

    Raises:
        ConfigurationError: a file is in the way (``path`` or one of its parents is not a
            directory); the message names it.
        OSError: any other failure (permissions, a full or read-only file system).
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (FileExistsError, NotADirectoryError):
        blocker = not_a_directory(path) or path
        what = "a dangling symbolic link" if blocker.is_symlink() else "a file"
        raise ConfigurationError(
            f"cannot use {str(path)!r} as a log directory: {str(blocker)!r} is {what}, "
            "not a directory") from None


#: ``open``, bound at import. At interpreter shutdown the builtin is removed before the
#: objects of ``__main__`` are collected, and a record logged from a ``__del__`` then still
#: reopens the stream, reading its last segment (``logging.FileHandler`` keeps
#: ``_builtin_open`` for the same reason).
open_file = open


def unlock_and_close(fd: int) -> None:
    """Release the ``flock`` held through ``fd`` and close it. Closing alone is not enough:
    a child forked while the lock was held has a copy of the descriptor, and the lock
    lasts until the last copy is closed (the child's exit), blocking every other process
    and thread that waits for it until then."""
    if sys.platform != "win32":
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
