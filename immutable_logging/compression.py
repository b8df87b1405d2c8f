"""gzip for sealed segments and replica batches.

The format is plain gzip (RFC 1952), readable by ``gzip``/``zcat``. The work is done by
ISA-L (the ``isal`` package) when it is installed, which inflates JSON lines about 3-4x
and deflates them about 5x faster than zlib, else by the standard library's zlib. Either
one reads what the other wrote. Both release the GIL while they work.

Damaged data raises ``OSError`` (not gzip at all), ``EOFError`` (truncated) or the
backend's error for corrupt deflate data (``zlib.error``, or ISA-L's ``IsalError``);
:data:`READ_ERRORS` names them all for ``except`` clauses.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

from .fileio import open_file, write_all

_gzip: Any  # the gzip module of the backend
_zlib: Any  # its zlib module
try:
    from isal import igzip as _isal_gzip
    from isal import isal_zlib as _isal_zlib

    _gzip, _zlib, BACKEND = _isal_gzip, _isal_zlib, "isal"
except ImportError:  # no wheel for this platform: the standard library does the same job
    _gzip, _zlib, BACKEND = gzip, zlib, "zlib"

#: Compression level of sealed segments and batches: the fastest of either backend. Logs
#: are compressed once per byte ever written, so speed matters more than the last 10 %.
LEVEL = 1
#: Largest block :func:`inflate_blocks` yields: a crafted file cannot balloon memory, and
#: blocks of 1 MiB stay in malloc's heap (4 MiB blocks are mapped and faulted in afresh
#: each time, which made re-cutting them at line ends cost as much as inflating them).
BLOCK_LIMIT = 1 << 20
#: Compressed bytes read at a time: JSON lines inflate ~7x, so a read seldom needs more
#: than one ``decompress`` call (each extra call copies the unconsumed input).
_READ_SIZE = 128 << 10

#: Bytes deflated per step by :func:`compress_fd`. It runs in a background thread, and
#: each step costs that thread GIL hand-overs (read, deflate and write release the GIL).
#: While the logging thread is busy, every hand-over waits up to the interpreter's switch
#: interval (5 ms), and meanwhile each GIL release of the logging thread wakes the waiter.
#: With 128 KiB steps, gzipping a 16 MiB segment made sustained logging 40 % slower for
#: as long as it ran; a default-sized segment is now one step.
DEFLATE_CHUNK = 16 << 20

#: What reading damaged or truncated gzip data may raise.
READ_ERRORS: tuple[type[BaseException], ...] = tuple(
    dict.fromkeys((OSError, EOFError, zlib.error, _zlib.error)))


def compress(data: bytes) -> bytes:
    """``data`` as one gzip member (mtime 0, so equal input gives equal output)."""
    return cast(bytes, _gzip.compress(data, compresslevel=LEVEL, mtime=0))


def decompress(data: bytes) -> bytes:
    """Every member of gzip ``data``, concatenated.

    Raises:
        Any of :data:`READ_ERRORS`.
    """
    return cast(bytes, _gzip.decompress(data))


def open_read(path: Path) -> IO[bytes]:
    """A file object reading the decompressed content of the gzip file ``path``.

    The file is opened with :data:`~immutable_logging.fileio.open_file`: ``gzip.open``
    looks ``builtins.open`` up, which is gone at interpreter shutdown.
    """
    raw = open_file(path, "rb")
    try:
        handle = _gzip.GzipFile(fileobj=raw, mode="rb")
    except BaseException:
        raw.close()
        raise
    handle.myfileobj = raw  # closed with it, as when GzipFile opens the file itself
    return cast(IO[bytes], handle)


def compress_fd(source: int, target: int, chunk: int = DEFLATE_CHUNK) -> None:
    """Write what the file descriptor ``source`` holds, from its offset to its end, to the
    descriptor ``target`` as one gzip member (mtime 0), ``chunk`` bytes at a time.

    File descriptors and ``os`` calls, not file objects: this runs in a background thread
    where every system call costs a GIL hand-over (see :data:`DEFLATE_CHUNK`), and file
    objects make several calls (``fstat``, ``isatty``, an extra ``read``) per step.
    """
    deflater = _zlib.compressobj(LEVEL, zlib.DEFLATED, 31)
    pending = b""
    while data := os.read(source, chunk):
        if pending:
            write_all(target, pending)
        pending = deflater.compress(data)
    write_all(target, pending + deflater.flush())


def inflate_blocks(path: Path) -> Iterator[bytes]:
    """The decompressed content of the gzip file ``path`` (any number of members), in
    blocks of at most :data:`BLOCK_LIMIT` bytes.

    Raises:
        Any of :data:`READ_ERRORS`.
    """
    with open_file(path, "rb") as raw:
        inflater = _zlib.decompressobj(wbits=31)
        while chunk := raw.read(_READ_SIZE):
            while chunk:
                data = inflater.decompress(chunk, BLOCK_LIMIT)
                chunk = inflater.unconsumed_tail
                if inflater.eof and inflater.unused_data:  # a further gzip member
                    chunk = inflater.unused_data + chunk
                    inflater = _zlib.decompressobj(wbits=31)
                if data:
                    yield data
        if not inflater.eof:
            raise EOFError(f"{path}: compressed segment is truncated")
        tail = inflater.flush()
        if tail:
            yield tail
