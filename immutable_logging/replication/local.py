"""A directory that behaves like a write-once bucket (the embedded default replica).

Layout under ``root``: object ``a/b`` is the file ``root/<prefix>/a/b`` (mode 0444) and its
metadata is the sidecar ``root/<prefix>/a/b.meta.json`` (mode 0444, a JSON object). Hidden
names (``.*``) are never objects: they hold temporary files and the lock file
``root/.immutable-logging.lock``.

A write goes: data and sidecar to private temporary files, ``fsync`` both, then, holding an
exclusive ``flock`` on the root's lock file, check the key is absent, rename the sidecar into
place, and ``os.link`` the data to its final name (which fails if the name exists, so even a
writer ignoring the lock cannot overwrite), then ``fsync`` the directory. The metadata is
therefore durable before the object becomes visible, a reader never sees a partial object,
and of two concurrent writers of one key (threads or processes) exactly one succeeds while
the other gets :class:`~immutable_logging.errors.ObjectExistsError`. A crash leaves at most
hidden temporary files or a sidecar without its object; the next writer of that key simply
replaces such a sidecar.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from immutable_logging.errors import (
    BackendAuthError,
    BackendUnavailableError,
    BucketNotFoundError,
    ConfigurationError,
    ObjectExistsError,
    RemoteIntegrityError,
    ReplicationError,
)
from immutable_logging.fileio import write_all
from immutable_logging.replication.backend import (
    RESERVED_SUFFIX,
    ObjectNotFoundError,
    StorageBackend,
    sorted_names,
)

__all__ = ["LOCK_NAME", "LocalDirectoryBackend"]

#: Name of the lock file in the root directory.
LOCK_NAME = ".immutable-logging.lock"

_NAME_MAX = 255
_UNAVAILABLE = {errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.ESTALE, errno.EROFS, errno.ENODEV}


class LocalDirectoryBackend(StorageBackend):
    """A local (or mounted) directory acting as a write-once bucket.

    Args:
        root: the directory playing the bucket.
        prefix: key prefix inside ``root`` (a sub-directory path).
        create: create ``root`` on the first write when it is missing. With ``False`` a
            missing ``root`` raises :class:`~immutable_logging.errors.BucketNotFoundError`,
            like a missing bucket.
        fsync: ``fsync`` files and directories (turn off only for throwaway test data).

    The constructor does no I/O. Keys containing ``..``, absolute paths or backslashes are
    rejected with :class:`~immutable_logging.errors.ConfigurationError`, and a path that
    would resolve outside ``root`` through a symlink is refused too.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        prefix: str = "",
        *,
        create: bool = True,
        fsync: bool = True,
    ) -> None:
        super().__init__(prefix)
        self._root = Path(os.path.abspath(os.fspath(root)))
        self._create = create
        self._fsync = fsync

    @property
    def root(self) -> Path:
        """The absolute root directory."""
        return self._root

    def describe(self) -> str:
        """``file:///absolute/root[/prefix]``."""
        base = self._root.as_uri()
        return f"{base}/{self.prefix}" if self.prefix else base

    # ------------------------------------------------------------------ hooks

    def _put_if_absent(self, name: str, data: bytes, metadata: dict[str, str]) -> None:
        try:
            self._require_root(for_write=True)
            path = self._path(name)
            if os.path.isdir(path):
                raise ReplicationError(f"{self._where(name)} is a directory, not an object")
            if os.path.lexists(path):
                raise ObjectExistsError(f"{self._where(name)} already exists")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as exc:
                raise ReplicationError(
                    f"cannot store {self._where(name)}: a parent path is an object"
                ) from exc
            meta_bytes = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
            token = uuid.uuid4().hex
            data_tmp = path.parent / f".tmp-{token}"
            meta_tmp = path.parent / f".tmp-{token}.meta"
            try:
                self._write_private(data_tmp, data)
                self._write_private(meta_tmp, meta_bytes)
                with self._locked():
                    if os.path.lexists(path):
                        raise ObjectExistsError(f"{self._where(name)} already exists")
                    os.replace(meta_tmp, self._sidecar(path))
                    try:
                        os.link(data_tmp, path)
                    except FileExistsError as exc:
                        raise ObjectExistsError(f"{self._where(name)} already exists") from exc
                    self._sync_dir(path.parent)
            finally:
                for tmp in (data_tmp, meta_tmp):
                    tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise self._map_os_error(exc, name) from exc

    def _get(self, name: str) -> bytes:
        try:
            if not self._require_root(for_write=False):
                raise ObjectNotFoundError(f"{self._where(name)} does not exist")
            path = self._path(name)
            try:
                with open(path, "rb") as fh:
                    return fh.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
                raise ObjectNotFoundError(f"{self._where(name)} does not exist") from exc
        except OSError as exc:
            raise self._map_os_error(exc, name) from exc

    def _head(self, name: str) -> dict[str, str] | None:
        try:
            if not self._require_root(for_write=False):
                return None
            path = self._path(name)
            if not path.is_file():
                return None
            try:
                raw = self._sidecar(path).read_bytes()
            except FileNotFoundError:
                return {}  # copied in by hand, without a sidecar
            try:
                meta = json.loads(raw)
            except ValueError as exc:
                raise RemoteIntegrityError(
                    f"metadata sidecar of {self._where(name)} is not JSON"
                ) from exc
            if not isinstance(meta, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
            ):
                raise RemoteIntegrityError(
                    f"metadata sidecar of {self._where(name)} is not a str->str object"
                )
            return dict(meta)
        except OSError as exc:
            raise self._map_os_error(exc, name) from exc

    def _list(self, name_prefix: str, page_size: int | None) -> Iterator[str]:
        try:
            names = self._collect(name_prefix)
        except OSError as exc:
            raise self._map_os_error(exc, name_prefix) from exc
        yield from names

    # ------------------------------------------------------------------ helpers

    def _collect(self, name_prefix: str) -> list[str]:
        if not self._require_root(for_write=False):
            return []
        directory = name_prefix.rpartition("/")[0]
        start = self._root / directory if directory else self._root
        if not start.is_dir():
            return []
        self._check_inside(start)
        names: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = os.path.relpath(dirpath, self._root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            for filename in filenames:
                if filename.startswith(".") or filename.endswith(RESERVED_SUFFIX):
                    continue
                name = rel_dir + filename
                if name.startswith(name_prefix):
                    names.append(name)
        return sorted_names(names)

    def _require_root(self, *, for_write: bool) -> bool:
        """True if the root exists; create it or raise BucketNotFoundError as configured."""
        if self._root.is_dir():
            return True
        if os.path.lexists(self._root):
            if self._root.is_dir():  # made meanwhile by another process
                return True
            raise ConfigurationError(f"{self._root} exists but is not a directory")
        if not self._create:
            raise BucketNotFoundError(f"directory {self._root} does not exist")
        if for_write:
            self._root.mkdir(parents=True, exist_ok=True)
            return True
        return False

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if any(len(os.fsencode(part)) + len(RESERVED_SUFFIX) > _NAME_MAX for part in parts):
            raise ConfigurationError(
                f"a component of {name!r} is too long for a file name (with its sidecar)"
            )
        path = self._root.joinpath(*parts)
        self._check_inside(path.parent)
        return path

    def _check_inside(self, directory: Path) -> None:
        real_root = os.path.realpath(self._root)
        real = os.path.realpath(directory)
        if os.path.commonpath([real_root, real]) != real_root:
            raise ConfigurationError(f"{directory} resolves outside {self._root} (symlink)")

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + RESERVED_SUFFIX)

    def _write_private(self, path: Path, data: bytes) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        try:
            write_all(fd, data)
            if self._fsync:
                os.fsync(fd)
            os.fchmod(fd, 0o444)
        finally:
            os.close(fd)

    def _sync_dir(self, directory: Path) -> None:
        if not self._fsync:
            return
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _locked(self) -> _FileLock:
        return _FileLock(self._root / LOCK_NAME)

    def _where(self, name: str) -> str:
        return f"{self._root.as_uri()}/{name}"

    def _map_os_error(self, exc: OSError, name: str) -> ReplicationError:
        where = self._where(name)
        if isinstance(exc, PermissionError):
            return BackendAuthError(f"permission denied on {where}: {exc}")
        if exc.errno in _UNAVAILABLE:
            return BackendUnavailableError(f"storage unavailable for {where}: {exc}")
        return ReplicationError(f"I/O error on {where}: {exc}")


class _FileLock:
    """An exclusive ``flock`` on a file, held for the duration of a ``with`` block."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> None:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self._fd)
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
