from __future__ import annotations

import os
from pathlib import Path

import pytest

from immutable_logging import fileio
from immutable_logging.errors import ConfigurationError
from immutable_logging.fileio import write_all


def test_short_writes_are_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    calls = []

    def short_write(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data[:7]))  # never more than 7 bytes at a time

    monkeypatch.setattr(fileio.os, "write", short_write)
    data = bytes(range(256)) * 3
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_all(fd, bytearray(data))
        write_all(fd, b"")
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert len(calls) == -(-len(data) // 7)


def test_atomic_write_replaces_the_whole_file_with_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old content, longer than the new one")
    fileio.atomic_write(target, b"new", 0o640)
    assert target.read_bytes() == b"new"
    assert (target.stat().st_mode & 0o777) == 0o640 & ~_umask()
    fileio.atomic_write(target, b"newer", durable=False)
    assert target.read_bytes() == b"newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp file left


def test_a_failed_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    """The temp file of a write that could not be put in place is removed, not left for
    the directory's readers (stream directories are listed)."""
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_bytes(b"x")  # a non-empty directory cannot be replaced
    with pytest.raises(OSError):
        fileio.atomic_write(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_make_log_directory_names_the_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    for wanted in (tmp_path / "file", tmp_path / "file" / "tenant", tmp_path / "file" / "a" / "b"):
        with pytest.raises(ConfigurationError, match=r"'[^']*/file' is a file, not a direc"):
            fileio.make_log_directory(wanted)
    fileio.make_log_directory(tmp_path / "new" / "tenant")
    fileio.make_log_directory(tmp_path / "new" / "tenant")  # already there: fine
    assert (tmp_path / "new" / "tenant").stat().st_mode & 0o777 == 0o700


def test_make_log_directory_names_a_dangling_link_as_such(tmp_path: Path) -> None:
    (tmp_path / "logs").symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigurationError, match=r"/logs' is a dangling symbolic link, not"):
        fileio.make_log_directory(tmp_path / "logs" / "default")
