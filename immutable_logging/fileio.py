"""Writing a whole buffer to a file descriptor, and opening files at interpreter shutdown."""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes | bytearray) -> None:
    """``os.write`` until every byte of ``data`` is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


#: ``open``, bound at import. At interpreter shutdown the builtin is removed before the
#: objects of ``__main__`` are collected, and a record logged from a ``__del__`` then still
#: reopens the stream, reading its last segment (``logging.FileHandler`` keeps
#: ``_builtin_open`` for the same reason).
open_file = open
