"""Writing a whole buffer to a file descriptor."""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes | bytearray) -> None:
    """``os.write`` until every byte of ``data`` is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
