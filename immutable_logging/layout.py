"""Where things live on disk: tenant and stream directories, segment files.

See ``docs/FORMAT.md``. This module only names and lists files; it never writes entries.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .compression import READ_ERRORS, inflate_blocks, open_read
from .entry import split_line
from .errors import ConfigurationError, InvalidTenantError
from .fileio import open_file

DEFAULT_TENANT = "default"
_CHUNK = 1 << 20
_MAX_LINE = 64 << 20
_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_SEGMENT_RE = re.compile(r"^(\d{8,})\.log(\.gz)?$")
STREAM_META = "stream.json"
LOCK_FILE = ".lock"
JOURNAL_FILE = ".journal"
TORN_DIR = "torn"
CHECKPOINT_DIR = "checkpoints"


def validate_tenant(tenant: object) -> str:
    """Return ``tenant`` if it is a safe directory name, else raise InvalidTenantError.

    Allowed: 1-128 characters from ``A-Z a-z 0-9 _ . -``, starting with a letter or digit,
    and never containing ``..``.
    """
    if not isinstance(tenant, str) or not tenant:
        raise InvalidTenantError(f"tenant id must be a non-empty string, got {tenant!r}")
    if ".." in tenant or not _TENANT_RE.fullmatch(tenant):
        raise InvalidTenantError(
            f"invalid tenant id {tenant!r}: use 1-128 of A-Z a-z 0-9 _ . - "
            "(starting with a letter or digit, no '..', no path separators)"
        )
    return tenant


def validate_stream_name(name: object) -> str:
    """Stream names follow the tenant rules (they are directory names too)."""
    try:
        return validate_tenant(name)
    except InvalidTenantError as exc:
        raise ConfigurationError(str(exc).replace("tenant id", "stream name")) from None


def tenant_dir(root: str | os.PathLike[str], tenant: str) -> Path:
    """The directory holding every stream of ``tenant`` under ``root``."""
    return Path(root) / validate_tenant(tenant)


def segment_name(number: int, compressed: bool = False) -> str:
    """File name of segment ``number`` (``00000001.log`` / ``00000001.log.gz``)."""
    return f"{number:08d}.log" + (".gz" if compressed else "")


@dataclass(frozen=True)
class Segment:
    """One segment file of a stream."""

    number: int
    path: Path
    compressed: bool

    def open(self, buffering: int = -1) -> IO[bytes]:
        """Open the segment for reading, decompressing if needed.

        A plain sealed segment may be compressed (and removed) between listing and
        opening; the compressed file, complete by then, is opened instead. ``buffering``
        is the read buffer of a plain segment (as for :func:`open`): a background thread
        reading while the application logs wants few, large reads, because each read
        hands the GIL over.
        """
        if self.compressed:
            return open_read(self.path)
        try:
            return open_file(self.path, "rb", buffering=buffering)
        except FileNotFoundError:
            gz = self.path.with_name(self.path.name + ".gz")
            if not gz.exists():
                raise
            return open_read(gz)

    def chunks(self) -> Iterator[bytes]:
        """The segment's content in blocks of whole lines (about 1 MiB each); only the very
        last block may end without ``\n`` (a torn tail or an entry being written).

        Compressed segments are inflated block by block in this thread
        (:mod:`~immutable_logging.compression`): iterating a ``GzipFile`` line by line costs
        several times more, and a helper thread would cost more than it saves, because it
        waits up to a GIL switch interval (5 ms) for every hand-over while this thread
        works through a block.

        Raises:
            Any of :data:`~immutable_logging.compression.READ_ERRORS`: unreadable, corrupt
            or truncated compressed data.
        """
        if self.compressed:
            yield from _whole_lines(inflate_blocks(self.path))
            return
        try:
            handle = open_file(self.path, "rb")  # closed by the `with` below
        except FileNotFoundError:
            gz = self.path.with_name(self.path.name + ".gz")
            if not gz.exists():
                raise
            yield from Segment(self.number, gz, True).chunks()
            return
        with handle:
            yield from _whole_lines(iter(lambda: handle.read(_CHUNK), b""))

    def lines(self) -> Iterator[bytes]:
        """Every line of the segment, ``\n`` included (only the last may lack it)."""
        for chunk in self.chunks():
            yield from io.BytesIO(chunk)


def _whole_lines(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Re-cut blocks at line ends. A "line" longer than 64 MiB is no entry: it is passed on
    in pieces (verify reports it) instead of being buffered without bound."""
    pending = b""
    for block in blocks:
        if pending:
            block = pending + block
        cut = block.rfind(b"\n") + 1
        if not cut and len(block) > _MAX_LINE:
            cut = len(block)
        pending = block[cut:]
        if cut:
            yield block[:cut] if pending else block
    if pending:
        yield pending


#: Listings of a stream directory that :func:`list_segments` merges when numbers are missing.
_LISTINGS = 3


def list_segments(stream_dir: Path) -> list[Segment]:
    """Segments of a stream in order. When both ``N.log`` and ``N.log.gz`` exist (a crash
    while sealing) the compressed file wins: it only appears once complete.

    A directory read while an entry is renamed in it may miss that entry (``readdir`` over
    several calls): ``N.log.gz`` appearing and ``N.log`` going away meanwhile left segment
    N out, and a live stream seemed to skip it. When numbers are missing the directory is
    read again and the listings merged (:meth:`Segment.open` finds ``N.log.gz`` when
    ``N.log`` is gone); a number missing from every listing is really missing.
    """
    found: dict[int, Segment] = {}
    for _ in range(_LISTINGS):
        try:
            names = os.listdir(stream_dir)
        except FileNotFoundError:
            return []
        for name in names:
            match = _SEGMENT_RE.match(name)
            if not match:
                continue
            number = int(match.group(1))
            compressed = match.group(2) is not None
            if number in found and found[number].compressed:
                continue
            found[number] = Segment(number, stream_dir / name, compressed)
        if not found or max(found) - min(found) + 1 == len(found):
            break
    return [found[n] for n in sorted(found)]


def list_streams(tdir: Path) -> list[Path]:
    """Stream directories of a tenant, sorted by name."""
    try:
        entries = sorted(os.scandir(tdir), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):  # no tenant (a file in the way)
        return []
    return [Path(e.path) for e in entries if e.is_dir() and _is_stream_dir(Path(e.path))]


def _is_stream_dir(path: Path) -> bool:
    """A stream directory has its ``stream.json``, its lock file or segments: deleting
    ``stream.json`` must not hide a stream from ``verify``."""
    if (path / STREAM_META).exists() or (path / LOCK_FILE).exists():
        return True
    try:
        return any(_SEGMENT_RE.match(name) for name in os.listdir(path))
    except OSError:
        return False


def list_tenants(root: Path) -> list[str]:
    """Tenant ids that have a directory under ``root``."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [e.name for e in entries if e.is_dir() and _TENANT_RE.fullmatch(e.name)]


def iter_segment_lines(segment: Segment) -> Iterator[tuple[bytes, bool]]:
    """Yield ``(line_without_newline, complete)`` for every line of a segment.

    Only the very last line can be incomplete (no trailing newline): a torn tail, or an
    entry still being written.
    """
    for line in segment.lines():
        if line.endswith(b"\n"):
            yield line[:-1], True
        else:
            yield line, False


def read_tail(path: Path, size: int) -> tuple[int, bytes | None]:
    """Return ``(end_of_last_complete_line, last_complete_line)`` of a file.

    Reads backwards in growing chunks, so a large segment costs only its tail.
    """
    chunk = 1 << 16
    pos = size
    buf = b""
    with open_file(path, "rb") as handle:
        while True:
            start = max(0, pos - chunk)
            handle.seek(start)
            buf = handle.read(pos - start) + buf
            pos = start
            nl_last = buf.rfind(b"\n")
            if nl_last >= 0:
                nl_prev = buf.rfind(b"\n", 0, nl_last)
                if nl_prev >= 0 or pos == 0:
                    return pos + nl_last + 1, buf[nl_prev + 1 : nl_last]
            elif pos == 0:
                return 0, None
            chunk *= 2


def last_seq_on_disk(stream_dir: Path) -> int | None:
    """Seq of the last complete entry of a stream's segments: 0 when there is none, None
    when the last segment with data cannot be read (reading it in full says why)."""
    for seg in reversed(list_segments(stream_dir)):
        last: bytes | None = b""
        try:
            if seg.compressed:
                for chunk in seg.chunks():
                    lines = chunk.split(b"\n")[:-1]  # the part after the last newline is torn
                    if lines:
                        last = lines[-1]
            else:  # the active segment: only its tail is read
                last = read_tail(seg.path, os.stat(seg.path).st_size)[1]
        except READ_ERRORS:
            return None
        parsed = split_line(last) if last else None
        if parsed is not None:
            return parsed[0]
    return 0
