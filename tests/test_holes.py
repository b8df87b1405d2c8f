from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from immutable_logging.chain import ChainWriter
from immutable_logging.entry import GENESIS_HASH
from immutable_logging.layout import list_segments
from immutable_logging.replication.holes import Hole, LocalGap, find_holes, local_run
from immutable_logging.replication.keys import BatchName


def _names(*ranges: tuple[int, int]) -> list[BatchName]:
    return [BatchName("t", "s", first, last, f"t/s/batches/{first}-{last}")
            for first, last in ranges]


def test_find_holes_between_before_and_not_after_the_batches() -> None:
    names = _names((3, 5), (6, 10), (15, 20), (31, 40))
    assert find_holes(names) == [
        Hole(1, 2, None, names[0]), Hole(11, 14, names[1], names[2]),
        Hole(21, 30, names[2], names[3])]
    assert find_holes(_names((1, 10), (11, 20))) == []
    assert find_holes([]) == []


def test_overlapping_batches_are_no_hole() -> None:
    names = _names((1, 10), (5, 8), (9, 20), (25, 30))
    assert find_holes(names) == [Hole(21, 24, names[2], names[3])]


def _log(root: Path, entries: int, max_bytes: int = 0) -> Path:
    writer = ChainWriter(root, **({"max_bytes": max_bytes} if max_bytes else {}))
    for i in range(entries):
        writer.append({"message": f"entry {i}", "level": "INFO"})
    writer.close()
    return writer.stream_dir


def test_local_run_yields_the_chain_in_pieces_within_segments(tmp_path: Path) -> None:
    stream = _log(tmp_path, 80, max_bytes=3_000)
    assert len(list_segments(stream)) > 2
    pieces = list(local_run(stream, 7, 71, max_entries=9, max_bytes=1 << 20))
    entries = [e for piece in pieces for e in piece]
    assert [e.seq for e in entries] == list(range(7, 72))
    assert all(len(p) <= 9 and len({e.segment for e in p}) == 1 for p in pieces)
    assert all(b.prev == a.hash for a, b in itertools.pairwise(entries))
    [whole] = list(local_run(stream, 1, 3, max_entries=100, max_bytes=1 << 20))
    assert [e.seq for e in whole] == [1, 2, 3] and whole[0].prev == GENESIS_HASH
    by_bytes = list(local_run(stream, 1, 10, max_entries=100, max_bytes=1))
    assert [len(p) for p in by_bytes] == [1] * 10  # one entry more than max_bytes at most


def test_local_run_names_what_the_local_log_lacks(tmp_path: Path) -> None:
    stream = _log(tmp_path, 80, max_bytes=3_000)
    with pytest.raises(LocalGap, match="ends before seq 81"):
        list(local_run(stream, 75, 90, max_entries=100, max_bytes=1 << 20))
    list_segments(stream)[1].path.unlink()  # a segment in the middle is gone
    with pytest.raises(LocalGap, match="local chain breaks at seq"):
        list(local_run(stream, 1, 80, max_entries=100, max_bytes=1 << 20))
    first = list_segments(stream)[0].path
    first.chmod(0o644)
    first.unlink()  # the oldest entries are gone
    with pytest.raises(LocalGap, match="breaks at seq"):
        list(local_run(stream, 1, 5, max_entries=100, max_bytes=1 << 20))
