"""Batches a replica lost between others it still holds, and the local entries that fill
them again.

A hole is a run of sequence numbers no batch of the replica covers, between two batches
it holds (or before the first one). The local log still holds those entries (unless its
segments were removed): shipped again as batches that cover exactly the hole, they
overlap nothing, and the replica's chain is whole again. The replicator does this when it
reconciles (at its start and after a failure); see :meth:`Replicator._fill_holes`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, NamedTuple

from ..compression import READ_ERRORS
from ..entry import split_line
from ..layout import Segment, list_segments
from .keys import BatchName


class LocalEntry(NamedTuple):
    """One entry of the local log, as the replicator ships it."""

    seq: int
    prev: str
    hash: str
    segment: int
    end: int  # offset in the (uncompressed) segment just after this entry's line
    line: bytes


class Hole(NamedTuple):
    """Sequence numbers ``first_seq..last_seq`` that no batch covers, between the batch
    ``before`` (None: the hole starts at seq 1) and the batch ``after``."""

    first_seq: int
    last_seq: int
    before: BatchName | None
    after: BatchName


class LocalGap(Exception):
    """The local log does not hold a hole's entries as one unbroken run of its chain."""


def find_holes(names: Sequence[BatchName]) -> list[Hole]:
    """The holes between the batches ``names`` (sorted by first sequence number, as the
    zero-padded keys list). Overlapping batches are no hole (verify reports them)."""
    holes: list[Hole] = []
    covered, before = 0, None
    for name in names:
        if name.first_seq > covered + 1:
            holes.append(Hole(covered + 1, name.first_seq - 1, before, name))
        if name.last_seq > covered:
            covered, before = name.last_seq, name
    return holes


def local_run(
    stream_dir: Path, first: int, last: int, *, max_entries: int, max_bytes: int
) -> Iterator[list[LocalEntry]]:
    """The local entries ``first..last`` in pieces: each within one segment, of at most
    ``max_entries`` entries and about ``max_bytes`` bytes (one entry more at most).

    Raises:
        LocalGap: an entry of the run is missing, malformed or does not continue the
            chain of the one before it (checked as the pieces are read).
    """
    expected_seq, expected_prev = first, ""
    piece: list[LocalEntry] = []
    size = 0
    for segment in _segments_from(stream_dir, first):
        end = 0
        try:
            handle = segment.open()
        except READ_ERRORS as exc:
            raise LocalGap(f"segment {segment.number} cannot be read: {exc}") from None
        with handle:
            for line in _lines(handle, segment):
                end += len(line)
                parsed = split_line(line[:-1]) if line.endswith(b"\n") else None
                if parsed is None:
                    raise LocalGap(f"segment {segment.number} holds a malformed or torn entry "
                                   f"at byte {end - len(line)}")
                seq, prev, digest, _ = parsed
                if seq < first:
                    continue
                if seq != expected_seq or (expected_prev and prev != expected_prev):
                    raise LocalGap(f"the local chain breaks at seq {seq} in segment "
                                   f"{segment.number} (expected seq {expected_seq})")
                piece.append(LocalEntry(seq, prev, digest, segment.number, end, line))
                size += len(line)
                expected_seq, expected_prev = seq + 1, digest
                if seq == last:
                    yield piece
                    return
                if len(piece) >= max_entries or size >= max_bytes:
                    yield piece
                    piece, size = [], 0
        if piece:  # a batch never spans segments
            yield piece
            piece, size = [], 0
    raise LocalGap(f"the local log ends before seq {expected_seq}")


def _lines(handle: IO[bytes], segment: Segment) -> Iterator[bytes]:
    """The lines of an open segment; a read error is a :class:`LocalGap`."""
    try:
        yield from handle
    except READ_ERRORS as exc:
        raise LocalGap(f"segment {segment.number} cannot be read: {exc}") from None


def _segments_from(stream_dir: Path, seq: int) -> list[Segment]:
    """The segments from the one that holds ``seq`` on (from the first one when no first
    line says; reading a segment's first line is cheap, also gzip'ed)."""
    segments = list_segments(stream_dir)
    start = 0
    for index, segment in enumerate(segments):
        first = _first_seq(segment)
        if first is None:
            continue
        if first > seq:
            break
        start = index
    return segments[start:]


def _first_seq(segment: Segment) -> int | None:
    try:
        with segment.open() as handle:
            parsed = split_line(handle.readline()[:-1])
    except READ_ERRORS:
        return None
    return None if parsed is None else parsed[0]
