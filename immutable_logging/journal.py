"""The write-ahead journal of ``durability="flush"``: entries in the page cache, no syscall.

``flush`` promises that an entry survives a crash of the process once ``append`` returns.
One ``write`` per entry keeps that promise but costs a system call per log record. The
journal keeps it for the price of a memory copy: each entry is copied into a shared,
memory-mapped file (``<stream>/.journal``), which is the kernel's page cache, so the bytes
outlive the process. The segment file receives the entries in batches. When a writer
opens the stream again after a crash, it appends the journal's entries that continue the
chain (:func:`pending_lines`); each is checked against its own hash first.

The journal holds exactly the entries buffered for the segment, from offset 0; after each
batch write the writer starts again at offset 0. Bytes after the current batch are older
entries (lower sequence numbers) or zeros, so a scan stops at the first line that is not
the next entry of the chain.

The file is created with :func:`os.posix_fallocate`, so copies into the mapping need no
new disk space (except on copy-on-write file systems such as btrfs and ZFS), and made
read-only (``0400``) once mapped. Truncating the journal of a live writer from outside all
the same (as root, or after a ``chmod``) would fault the writer's next copy (``SIGBUS``),
as for any memory-mapped file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import stat
from pathlib import Path

from .entry import split_line

#: Size of the journal file; a larger entry is written straight to the segment instead.
JOURNAL_BYTES = 1 << 20


class Journal:
    """A shared memory mapping of ``path``, ``capacity`` bytes long (see module doc).

    Raises:
        OSError: the file cannot be created, allocated or mapped (for example on a file
            system without ``mmap`` support); the writer then writes each entry instead.
    """

    def __init__(self, path: Path, capacity: int = JOURNAL_BYTES) -> None:
        self.path = path
        self.capacity = capacity
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a leftover is read-only; the writer replayed it already
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        mapping: mmap.mmap | None = None
        try:
            os.posix_fallocate(fd, 0, capacity)
            mapping = mmap.mmap(fd, capacity)  # MAP_SHARED: the page cache itself
            # Read-only from now on: the mapping keeps its write access, but another
            # process (not root) can no longer truncate the file under it.
            os.fchmod(fd, 0o400)
        except BaseException:
            if mapping is not None:
                mapping.close()
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        os.close(fd)  # the mapping keeps the file open
        self.map = mapping

    def close(self, *, remove: bool) -> None:
        """Unmap; with ``remove`` also delete the file (every entry reached its segment)."""
        self.map.close()
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def read_journal(path: Path) -> bytes | None:
    """The bytes of the journal at ``path`` (at most :data:`JOURNAL_BYTES`, its size), or
    None when there is none: no such file, or no regular file there (a FIFO or device
    would block or never end a read, a symbolic link is no writer's journal).

    Raises:
        OSError: there is one, but it cannot be read (permissions, I/O).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        left = JOURNAL_BYTES
        while left and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def pending_lines(data: bytes, seq: int, head: str) -> tuple[list[bytes], str | None]:
    """The entries of a journal's ``data`` that continue a chain ending at ``(seq, head)``.

    Returns the complete lines (with their newline) to append, and a reason when the
    journal holds an intact entry that should come next but does not fit (a sequence
    number after a gap, or a ``prev`` that is not ``head``): then nothing after it is
    taken, and the caller keeps a copy of the journal.
    """
    lines: list[bytes] = []
    expected = seq + 1
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            break
        parsed = split_line(data[start:end])
        if parsed is None:
            break
        line_seq, prev, digest, hashed = parsed
        if hashlib.sha256(hashed).hexdigest() != digest:
            break  # a torn copy over older bytes, or damage: not an entry
        if line_seq < expected:
            if lines:
                break  # an older round's entry after this round's: the end of the batch
            start = end + 1  # already in the segment (a crash after the batch write)
            continue
        if line_seq != expected or prev != head:
            return lines, (
                f"entry {line_seq} at byte {start} does not continue the chain after "
                f"entry {expected - 1} ({head[:16]}..)"
            )
        lines.append(data[start : end + 1])
        expected += 1
        head = digest
        start = end + 1
    return lines, None
