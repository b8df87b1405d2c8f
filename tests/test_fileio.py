from __future__ import annotations

import os
from pathlib import Path

import pytest

from immutable_logging import fileio
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
