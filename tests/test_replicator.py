"""The replicator against the embedded local-directory bucket (real files both sides)."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from immutable_logging import ImmutableHandler, ImmutableLogger
from immutable_logging.chain import ChainWriter
from immutable_logging.errors import ConfigurationError, ReplicationError
from immutable_logging.layout import Segment, list_segments
from immutable_logging.replication.cloud import remote_streams, verify_cloud_backup
from immutable_logging.replication.keys import parse_batch_key
from immutable_logging.replication.local import LocalDirectoryBackend
from immutable_logging.replication.replicator import (
    ReplicationStatus,
    Replicator,
    cursor_path,
    saved_cursor,
)

from .helpers import ship_again, write_log


def _payload(i: int) -> dict[str, object]:
    return {"ts": time.time(), "level": "INFO", "message": f"m{i}", "tenant": "default"}


def _write(writer: ChainWriter, n: int) -> None:
    for i in range(n):
        writer.append(_payload(i))
    writer.flush()  # flush mode journals entries; the replicator reads the segment files


def _batches(bucket: LocalDirectoryBackend) -> list[tuple[int, int]]:
    names = [parse_batch_key(k) for k in bucket.list("default/")]
    return [(n.first_seq, n.last_seq) for n in names if n is not None]


def test_full_batches_then_partial_on_force(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    replicator = Replicator(
        bucket,
        writer.stream_dir,
        "default",
        batch_size=100,
        max_batch_factor=1,
        flush_interval=3600,
    )
    _write(writer, 250)
    assert replicator.pump() == 200  # two full batches; the partial one waits
    assert _batches(bucket) == [(1, 100), (101, 200)]
    assert replicator.pump(force=True) == 50
    assert _batches(bucket) == [(1, 100), (101, 200), (201, 250)]
    assert replicator.status.puts == 3 + 1  # + stream.json
    writer.close()


def test_a_closed_replicator_never_ships_again(tmp_path: Path) -> None:
    """After close() the handler releases the stream: whoever writes it next ships it."""
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    replicator = Replicator(bucket, writer.stream_dir, "default", batch_size=10)
    _write(writer, 15)
    assert replicator.close().replicated_seq == 15
    _write(writer, 15)
    status = replicator.close()
    assert (status.replicated_seq, _batches(bucket)) == (15, [(1, 10), (11, 15)])
    assert replicator.try_pump(force=True) is False
    with pytest.raises(ReplicationError, match="is closed"):
        replicator.pump(force=True)
    assert _batches(bucket) == [(1, 10), (11, 15)]
    writer.close()


@pytest.mark.parametrize("kept", [0, 2])
def test_batches_the_replica_lost_at_its_end_are_shipped_again(
    tmp_path: Path, kept: int
) -> None:
    """Found by the DR audit: a bucket emptied (or re-created) after its batches were
    shipped stayed without them for good; the replicator went on from its cursor."""
    writer = ChainWriter(tmp_path / "logs", max_bytes=900)  # several segments, archived
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    replicator = Replicator(bucket, writer.stream_dir, "default", batch_size=10)
    _write(writer, 25)
    writer.close()
    replicator.close()
    shipped = _batches(bucket)
    assert len(shipped) > kept + 2 and shipped[-1][1] == 25
    for key in bucket.list("default/"):
        name = parse_batch_key(key)
        if name is None or (name.first_seq, name.last_seq) not in shipped[:kept]:
            (tmp_path / "bucket" / key).unlink()  # what an emptied bucket looks like
    writer = ChainWriter(tmp_path / "logs", max_bytes=900)  # the next start
    _write(writer, 5)
    again = Replicator(bucket, writer.stream_dir, "default", batch_size=10)
    again.pump(force=True)
    assert again.status.replicated_seq == 30
    covered = sorted(s for first, last in _batches(bucket) for s in range(first, last + 1))
    assert covered == list(range(1, 31))  # all of it, once
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert check["problems"] == [] and check["sync_status"] == "synced", check
    writer.close()


def test_shipping_a_lost_end_again_leaves_the_side_objects_the_replica_holds(
    tmp_path: Path
) -> None:
    """Left from last session's review: a replica that lost only its newest batch was
    offered every side object again, each existing archive downloaded to compare."""
    class CountingBucket(LocalDirectoryBackend):
        gets: list[str] = []

        def get(self, name: str) -> bytes:
            self.gets.append(name)
            return super().get(name)

    writer = ChainWriter(tmp_path / "logs", max_bytes=900)  # several segments, archived
    bucket = CountingBucket(tmp_path / "bucket")
    _write(writer, 40)
    writer.close()
    Replicator(bucket, writer.stream_dir, "default", batch_size=10).close()
    archives = [k for k in bucket.list("default/") if "/segments/" in k]
    assert len(archives) >= 3
    last = max(k for k in bucket.list("default/") if parse_batch_key(k) is not None)
    (tmp_path / "bucket" / last).unlink()
    gone = archives[-1]  # and the newest archive
    (tmp_path / "bucket" / gone).unlink()
    bucket.gets.clear()
    writer = ChainWriter(tmp_path / "logs", max_bytes=900)
    again = Replicator(bucket, writer.stream_dir, "default", batch_size=10)
    again.pump(force=True)
    assert again.status.replicated_seq == 40 and (tmp_path / "bucket" / gone).exists()
    assert not [k for k in bucket.gets if "/segments/" in k or k.endswith("stream.json")]
    assert again.status.duplicates_skipped == 0
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert check["problems"] == [] and check["sync_status"] == "synced", check
    writer.close()


def _lose_batches(bucket: LocalDirectoryBackend, first_seqs: set[int]) -> None:
    """Remove the batch objects starting at ``first_seqs`` (and their metadata)."""
    for key in bucket.list("default/"):
        name = parse_batch_key(key)
        if name is not None and name.first_seq in first_seqs:
            path = bucket.root / key
            path.unlink()
            path.with_name(path.name + ".meta.json").unlink(missing_ok=True)


def _replicated(
    tmp_path: Path, entries: int, batch_size: int = 10, **writer_options: Any
) -> tuple[ChainWriter, LocalDirectoryBackend]:
    """A log of ``entries`` entries replicated in batches of ``batch_size`` to a local
    bucket."""
    writer = ChainWriter(tmp_path / "logs", **writer_options)
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    replicator = Replicator(bucket, writer.stream_dir, "default", batch_size=batch_size,
                            max_batch_factor=1)
    _write(writer, entries)
    replicator.close()
    return writer, bucket


def _lose_cursor(stream_dir: Path, bucket: LocalDirectoryBackend, how: str) -> None:
    """Leave the replication cursor as it is (``"kept"``), delete it (``"missing"``), make
    it unreadable (``"unreadable"``) or put back the one saved after the first 10 entries
    of the first segment (``"older"``: newer saves lost to a power cut): a reconcile must
    do the same in every case."""
    path = cursor_path(stream_dir, bucket)
    if how == "missing":
        path.unlink()
    elif how == "unreadable":
        path.write_bytes(b'{"target": "torn')
    elif how == "older":
        lines = list_segments(stream_dir)[0].path.read_bytes().splitlines(keepends=True)
        tenth = orjson.loads(lines[9])["hash"]
        saved = orjson.loads(path.read_bytes())
        saved.update(segment=1, offset=sum(map(len, lines[:10])), last_seq=10,
                     last_hash=tenth, position_hash=tenth, checkpoints_through=0)
        path.write_bytes(orjson.dumps(saved))


CURSORS = ["kept", "missing", "unreadable"]


def _start_again(writer: ChainWriter, bucket: LocalDirectoryBackend,
                 caplog: pytest.LogCaptureFixture, batch_size: int = 10,
                 max_batch_factor: int = 1) -> Replicator:
    """The next start: a new replicator of ``writer``'s stream ships everything (its
    warnings go to ``caplog``)."""
    again = Replicator(bucket, writer.stream_dir, "default", batch_size=batch_size,
                       max_batch_factor=max_batch_factor)
    with caplog.at_level(logging.WARNING, "immutable_logging.replication"):
        again.pump(force=True)
    return again


@pytest.mark.parametrize("cursor", [*CURSORS, "older"])
@pytest.mark.parametrize("lost", [{11}, {1}, {11, 21}])
def test_a_hole_in_the_replica_is_filled_again_exactly(
    tmp_path: Path, lost: set[int], cursor: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Batches lost between others the replica still holds are shipped again from the
    local log at the next start, as batches covering exactly the hole: nothing overlaps,
    and the replica verifies whole again. Without a cursor too: the reconcile from the
    remote listing stopped at the hole ("does not continue"), and replication with it."""
    writer, bucket = _replicated(tmp_path, 40)
    assert _batches(bucket) == [(1, 10), (11, 20), (21, 30), (31, 40)]
    _lose_batches(bucket, lost)
    _lose_cursor(writer.stream_dir, bucket, cursor)
    assert verify_cloud_backup(bucket, tmp_path / "logs", "default")["problems"]
    _write(writer, 5)
    again = _start_again(writer, bucket, caplog, max_batch_factor=3)
    holes = [(min(lost), max(lost) + 9)]
    assert f"lost the entries seq {holes[0][0]}-{holes[0][1]}" in caplog.text
    expected = {(1, 10), (11, 20), (21, 30), (31, 40), (41, 45)} - {(f, f + 9) for f in lost}
    expected |= set(holes)  # one batch per hole: batch_size x max_batch_factor allows it
    assert _batches(bucket) == sorted(expected)
    assert again.status.replicated_seq == 45 and again.status.failures == 0
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert check["problems"] == [] and check["sync_status"] == "synced", check
    writer.close()


def test_a_hole_across_segments_is_filled_one_segment_per_batch(tmp_path: Path) -> None:
    writer, bucket = _replicated(tmp_path, 60, batch_size=5, max_bytes=3_000)
    shipped = _batches(bucket)
    inner = {first for first, last in shipped[1:-1]}
    _lose_batches(bucket, inner)  # everything but the first and the last batch
    again = Replicator(bucket, writer.stream_dir, "default", batch_size=100,
                       max_batch_factor=1)
    again.pump(force=True)
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert check["problems"] == [] and check["sync_status"] == "synced", check
    refilled = [k for k in bucket.list("default/") if (n := parse_batch_key(k)) is not None
                and n.first_seq in range(shipped[0][1] + 1, shipped[-1][0])]
    segments = [bucket.head(k)["segment"] for k in refilled]  # type: ignore[index]
    assert len(set(segments)) == len(segments) > 1  # more than one segment: one batch each
    writer.close()


@pytest.mark.parametrize("cursor", CURSORS)
def test_a_hole_the_local_log_cannot_fill_is_left_to_verify(
    tmp_path: Path, cursor: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries that do not link to the batches around the hole (the replica is not quite
    this log's) are not shipped into it: the hole stays, reported, with the cursor or
    without it."""
    writer, bucket = _replicated(tmp_path, 30)
    _lose_batches(bucket, {11})
    _lose_cursor(writer.stream_dir, bucket, cursor)
    [after] = [k for k in bucket.list("default/")
               if (n := parse_batch_key(k)) is not None and n.first_seq == 21]
    sidecar = bucket.root / (after + ".meta.json")
    meta = orjson.loads(sidecar.read_bytes())
    meta["prev-hash"] = "0" * 64
    sidecar.chmod(0o644)
    sidecar.write_bytes(orjson.dumps(meta))
    again = _start_again(writer, bucket, caplog)
    assert "local log cannot ship them again" in caplog.text
    assert "seq 20 does not link to batch" in caplog.text
    assert _batches(bucket) == [(1, 10), (21, 30)]
    assert (again.status.state, again.status.replicated_seq) == ("ok", 30)
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert check["problems"] and check["missing_blocks"] == 10
    writer.close()


@pytest.mark.parametrize("cursor", CURSORS)
def test_a_hole_whose_local_entries_are_gone_stays_and_later_entries_ship(
    tmp_path: Path, cursor: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The oldest segment deleted locally (retention) and a batch of it lost by the
    replica: the hole cannot be filled and stays, with a warning, while the entries
    written since are shipped, with the cursor or without it."""
    writer, bucket = _replicated(tmp_path, 40, batch_size=5, max_bytes=3_000)
    oldest = list_segments(writer.stream_dir)[0]
    assert oldest.compressed and len(list_segments(writer.stream_dir)) > 2
    oldest.path.unlink()
    _lose_batches(bucket, {6})  # entries 6-10, in the deleted segment
    _lose_cursor(writer.stream_dir, bucket, cursor)
    _write(writer, 5)
    again = _start_again(writer, bucket, caplog, batch_size=5)
    assert "lost the entries seq 6-10" in caplog.text
    assert "the local log cannot ship them again" in caplog.text
    assert (again.status.state, again.status.replicated_seq) == ("ok", 45)
    assert (6, 10) not in _batches(bucket) and _batches(bucket)[-1] == (41, 45)
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert [p["reason"] for p in check["problems"]] == ["gap", "missing_locally"], check
    writer.close()


def test_without_a_cursor_batches_past_a_hole_must_still_be_this_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Moving past a hole checks nothing across it, so the local entries that end the
    batches after it must be the replicated ones: another log with the same stream name
    (a fresh disk, the bucket of the old one) is not taken for its continuation."""
    writer, bucket = _replicated(tmp_path, 40)
    _lose_batches(bucket, {11})
    other = ChainWriter(tmp_path / "other-logs")
    _write(other, 50)
    assert other.stream == writer.stream
    again = Replicator(bucket, other.stream_dir, "default", batch_size=10,
                       max_batch_factor=1)
    with caplog.at_level(logging.WARNING, "immutable_logging.replication"):
        assert again.try_pump(force=True) is False
    assert again.status.state == "stopped" and again.status.replicated_seq == 0
    assert "differs from the replicated one" in str(again.status.last_error)
    assert "local entry seq 11 does not link to batch" in caplog.text  # nothing filled
    assert _batches(bucket) == [(1, 10), (21, 30), (31, 40)]
    writer.close()
    other.close()


@pytest.mark.parametrize("cursor", CURSORS)
def test_batches_repeating_replicated_entries_do_not_stop_replication(
    tmp_path: Path, cursor: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two shippers cut the same entries into other batches (a request still in flight when
    close() gave up landed later): 11-20 and 16-25 over 11-15, 16-20 and 21-25. Without a
    cursor the reconcile met 16-25 after 11-20 and stopped replication ("overlaps the
    replicated chain")."""
    writer, bucket = _replicated(tmp_path, 30, batch_size=5)
    for first, last in ((11, 20), (16, 25)):
        ship_again(bucket, writer.stream_dir, first, last)
    _lose_cursor(writer.stream_dir, bucket, cursor)
    _write(writer, 5)
    again = _start_again(writer, bucket, caplog, batch_size=5)
    status = again.status
    assert (status.state, status.replicated_seq, status.failures) == ("ok", 35, 0)
    assert _batches(bucket)[-1] == (31, 35) and len(_batches(bucket)) == 9
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert check["problems"] == [] and check["sync_status"] == "synced", check
    writer.close()


@pytest.mark.parametrize("cursor", CURSORS)
def test_an_overlapping_batch_of_another_log_stops_replication(
    tmp_path: Path, cursor: str
) -> None:
    """The cursor moves past a batch over the replicated entries only as far as the local
    entry that ends it is the one it holds."""
    writer, bucket = _replicated(tmp_path, 30)
    other = ChainWriter(tmp_path / "other-logs")
    _write(other, 35)
    other.close()
    assert other.stream == writer.stream
    ship_again(bucket, other.stream_dir, 21, 35)
    _lose_cursor(writer.stream_dir, bucket, cursor)
    _write(writer, 10)
    again = Replicator(bucket, writer.stream_dir, "default", batch_size=10,
                       max_batch_factor=1)
    assert again.try_pump(force=True) is False
    assert again.status.state == "stopped"
    assert "differs from the replicated one" in str(again.status.last_error)
    assert _batches(bucket) == [(1, 10), (11, 20), (21, 30), (21, 35)]  # nothing shipped
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert {"overlap", "differs_from_local"} <= {p["reason"] for p in check["problems"]}
    writer.close()


@pytest.mark.parametrize("cursor", [*CURSORS, "older"])
@pytest.mark.parametrize("lost", [{11, 31}, {1, 31}, {1, 21, 31}, {1, 11, 31}])
def test_holes_and_a_lost_end_are_all_shipped_again(
    tmp_path: Path, lost: set[int], cursor: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by review: a replica that lost batches between others it holds *and* its
    newest batches got the holes filled but not the end, with the cursor kept: the
    replicator went on from its cursor with the status "ok", and the replica lacked the
    end for good. Whatever the replica lost, the next start ships it all again, once."""
    writer, bucket = _replicated(tmp_path, 40)
    _lose_batches(bucket, lost)
    _lose_cursor(writer.stream_dir, bucket, cursor)
    _write(writer, 5)
    again = _start_again(writer, bucket, caplog, max_batch_factor=3)
    status = again.status
    assert (status.state, status.replicated_seq, status.failures) == ("ok", 45, 0)
    shipped = _batches(bucket)
    assert [s for first, last in shipped for s in range(first, last + 1)] == list(
        range(1, 46))  # every entry once, in order: nothing overlaps
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert check["problems"] == [] and check["sync_status"] == "synced", check
    writer.close()


def _counts(status: ReplicationStatus) -> tuple[str, int, int, int]:
    """What ``status`` says of progress: state, replicated, local and pending entries."""
    return status.state, status.replicated_seq, status.local_seq, status.pending_entries


def _another_log(tmp_path: Path, writer: ChainWriter, shared: int, entries: int) -> ChainWriter:
    """Another log of ``entries`` entries under ``writer``'s stream name, in
    ``tmp_path/other``, whose first ``shared`` entries are ``writer``'s (a copy of its
    stream taken then, written on differently)."""
    import shutil

    other = tmp_path / "other" / "default" / writer.stream
    lines = list_segments(writer.stream_dir)[0].path.read_bytes().splitlines(keepends=True)
    if shared:
        other.mkdir(parents=True)
        (other / list_segments(writer.stream_dir)[0].path.name).write_bytes(
            b"".join(lines[:shared]))
        shutil.copy(writer.stream_dir / "stream.json", other / "stream.json")
    log = ChainWriter(tmp_path / "other", stream=writer.stream)
    assert log.seq == shared
    _write(log, entries - shared)
    return log


@pytest.mark.parametrize(("shared", "entries", "lost", "replicated"), [
    (0, 50, {11}, 0),  # stops on the local entry seq 10 (at the first batch end)
    (0, 50, set(), 0),
    (10, 50, set(), 10),  # seq 10 is this log's, seq 20 is not
    (10, 50, {21}, 10),
    (0, 30, set(), 0),  # stops in the reconcile: the local log ends before the replica
])
def test_a_stopped_replicator_counts_the_local_log_and_only_its_own_entries(
    tmp_path: Path, shared: int, entries: int, lost: set[int], replicated: int
) -> None:
    """Found by review: replication stopped at its start (another log's batches under the
    stream's name) showed ``local_seq`` and ``pending_entries`` 0 (the status was not
    updated on failure, and nothing had read the local log), and the cursor was saved past
    the other log's batches, so ``sync_status()`` then counted them as replicated."""
    writer, bucket = _replicated(tmp_path, 40)
    _lose_batches(bucket, lost)
    other = _another_log(tmp_path, writer, shared, entries)
    shipped = _batches(bucket)
    again = Replicator(bucket, other.stream_dir, "default", batch_size=10,
                       max_batch_factor=1)
    assert again.try_pump(force=True) is False
    expected = ("stopped", replicated, entries, entries - replicated)
    assert _counts(again.status) == expected
    assert again.pending_count() == entries - replicated
    saved = saved_cursor(other.stream_dir, bucket)
    assert (saved.last_seq if saved else 0) == replicated  # never into the other log
    assert (_counts(again.close()), _batches(bucket)) == (expected, shipped)
    writer.close()
    other.close()


@pytest.mark.parametrize("cursor", CURSORS)
def test_a_lost_end_beside_another_logs_batches_stops_replication(
    tmp_path: Path, cursor: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica of another log with the stream's name (a bucket restored from the old
    disk's) lost batches in the middle and at the end: shipping the end again starts from
    the batches the replica holds, which must be this log's, with the cursor or without."""
    import shutil

    theirs, their_bucket = _replicated(tmp_path / "theirs", 40)
    writer, bucket = _replicated(tmp_path, 40)  # its cursor says 40 are replicated
    shutil.rmtree(bucket.root)
    shutil.copytree(their_bucket.root, bucket.root)
    assert theirs.stream == writer.stream
    _lose_batches(bucket, {11, 31})
    _lose_cursor(writer.stream_dir, bucket, cursor)
    _write(writer, 10)
    again = Replicator(bucket, writer.stream_dir, "default", batch_size=10,
                       max_batch_factor=1)
    with caplog.at_level(logging.WARNING, "immutable_logging.replication"):
        assert again.try_pump(force=True) is False
    assert _counts(again.status) == ("stopped", 0, 50, 50)
    assert "differs from the replicated one" in str(again.status.last_error)
    assert "local entry seq 11 does not link to batch" in caplog.text  # nothing filled
    assert _batches(bucket) == [(1, 10), (21, 30)]
    writer.close()
    theirs.close()


def test_the_facade_and_the_handler_show_a_stop_at_the_start_as_it_is(
    tmp_path: Path
) -> None:
    """``sync_status()`` and ``last_replication_status`` of a logger whose bucket holds
    another log's batches under its stream's name: nothing of this log is replicated."""
    writer, bucket = _replicated(tmp_path, 40)
    write_log(tmp_path / "other", "other-log", 50)
    with ImmutableLogger(tmp_path / "other", enable_cloud_backup=True, backup_async=False,
                         backup_directory=str(bucket.root)) as log:
        assert log.handler.writer.stream == writer.stream
        log.info("one more")
        assert _counts(ReplicationStatus(**log.sync_status())) == ("stopped", 0, 51, 51)
    closed = log.handler.last_replication_status
    assert closed is not None and _counts(closed) == ("stopped", 0, 51, 51)
    assert _batches(bucket) == [(1, 10), (11, 20), (21, 30), (31, 40)]
    writer.close()


def test_time_based_flush_of_a_partial_batch(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    replicator = Replicator(
        bucket,
        writer.stream_dir,
        "default",
        batch_size=100,
        max_batch_factor=1,
        flush_interval=0.05,
    )
    _write(writer, 10)
    assert replicator.pump() == 0
    time.sleep(0.1)
    assert replicator.pump() == 10
    writer.close()


def test_batches_never_span_segments_and_archives_are_uploaded(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path / "logs", max_bytes=3_000)
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    replicator = Replicator(
        bucket, writer.stream_dir, "default", batch_size=1000, max_batch_factor=1
    )
    _write(writer, 100)
    writer.close()
    replicator.pump(force=True)
    metas = [
        bucket.head(f"default/{writer.stream}/batches/{a:012d}-{b:012d}.jsonl.gz")
        for a, b in _batches(bucket)
    ]
    assert len({m["segment"] for m in metas if m}) == len(metas) > 3
    archives = list(bucket.list(f"default/{writer.stream}/segments/"))
    assert len(archives) == len(metas) - 1  # every sealed segment, not the active one
    assert _batches(bucket)[-1][1] == 100


def test_an_archive_gzipped_by_another_library_is_the_same_archive(tmp_path: Path) -> None:
    """Found by the DR audit: a log restored on a host without ISA-L has its sealed
    segments gzip'ed by zlib, to other bytes than the replica's archives; the restored
    host's replicator took them for tampering and stopped replication for good."""
    writer = ChainWriter(tmp_path / "logs", max_bytes=3_000)
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    _write(writer, 60)
    writer.close()
    Replicator(bucket, writer.stream_dir, "default", batch_size=1000).close()
    archives = list(bucket.list(f"default/{writer.stream}/segments/"))
    assert len(archives) >= 2
    for segment in list_segments(writer.stream_dir):
        if segment.compressed:  # the same content, compressed by stdlib zlib at level 1
            segment.path.chmod(0o600)
            segment.path.write_bytes(gzip.compress(gzip.decompress(segment.path.read_bytes()),
                                                   compresslevel=1, mtime=0))
    cursor_path(writer.stream_dir, bucket).unlink()  # as in a restored directory
    writer = ChainWriter(tmp_path / "logs", max_bytes=3_000)  # logging goes on there
    _write(writer, 5)
    again = Replicator(bucket, writer.stream_dir, "default", batch_size=1000)
    status = again.close()
    assert status.state == "ok" and status.last_error is None
    assert status.duplicates_skipped >= len(archives) and status.replicated_seq == 65
    remote = tmp_path / "bucket" / archives[0]  # another content: still refused
    remote.chmod(0o600)
    remote.write_bytes(gzip.compress(b"not the same log\n"))
    cursor_path(writer.stream_dir, bucket).unlink()
    _write(writer, 5)
    third = Replicator(bucket, writer.stream_dir, "default", batch_size=1000)
    status = third.close()
    assert status.state == "stopped" and "already exists with different content" in (
        status.last_error or "")
    writer.close()


def test_resume_from_cursor_after_restart_without_duplicates(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    first = Replicator(bucket, writer.stream_dir, "default", batch_size=50, max_batch_factor=1)
    _write(writer, 120)
    first.pump()
    assert _batches(bucket) == [(1, 50), (51, 100)]
    _write(writer, 30)
    second = Replicator(
        bucket, writer.stream_dir, "default", batch_size=50, max_batch_factor=1
    )  # "restart"
    assert second.cursor.last_seq == 100
    second.pump(force=True)
    assert _batches(bucket) == [(1, 50), (51, 100), (101, 150)]
    writer.close()


def test_crash_between_upload_and_cursor_save_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    replicator = Replicator(bucket, writer.stream_dir, "default", batch_size=40, max_batch_factor=1)
    _write(writer, 100)
    saved = cursor_path(writer.stream_dir, bucket)
    replicator.pump()
    state_after_first = saved.read_bytes()
    replicator.pump(force=True)
    # Simulate a crash right after the uploads: the cursor on disk is an old one.
    saved.write_bytes(state_after_first)
    restarted = Replicator(bucket, writer.stream_dir, "default", batch_size=40, max_batch_factor=1)
    assert restarted.cursor.last_seq == 80
    _write(writer, 5)
    restarted.pump(force=True)
    assert _batches(bucket) == [(1, 40), (41, 80), (81, 100), (101, 105)]
    assert restarted.cursor.last_seq == 105
    writer.close()


def test_cursor_lost_entirely_reconciles_with_remote(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    _write(writer, 60)
    Replicator(bucket, writer.stream_dir, "default", batch_size=25, max_batch_factor=1).pump(
        force=True
    )
    cursor_path(writer.stream_dir, bucket).unlink()
    _write(writer, 10)
    again = Replicator(bucket, writer.stream_dir, "default", batch_size=25, max_batch_factor=1)
    again.pump(force=True)
    assert _batches(bucket) == [(1, 25), (26, 50), (51, 60), (61, 70)]
    writer.close()


@pytest.mark.parametrize("content", [b"", b'{"target": "file:///x", "segm'])
def test_cursor_torn_by_a_power_cut_reconciles_with_remote(tmp_path: Path, content: bytes) -> None:
    """Cursor saves between batches are not fsync'ed: after a power cut the file may be
    stale, empty or cut short; the next start reconciles and nothing is lost or doubled."""
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    _write(writer, 60)
    first = Replicator(bucket, writer.stream_dir, "default", batch_size=25, max_batch_factor=1)
    first.pump(force=True)
    cursor_path(writer.stream_dir, bucket).write_bytes(content)
    _write(writer, 10)
    again = Replicator(bucket, writer.stream_dir, "default", batch_size=25, max_batch_factor=1)
    again.pump(force=True)
    assert _batches(bucket) == [(1, 25), (26, 50), (51, 60), (61, 70)]
    # only the new entries travel again (stream.json is re-offered and found identical)
    assert (again.status.batches_uploaded, again.status.entries_uploaded) == (1, 10)
    writer.close()


def test_async_handler_ships_in_background_and_close_drains(
    tmp_path: Path, logger_name: str
) -> None:
    handler = ImmutableHandler(
        tmp_path / "logs",
        enable_cloud_backup=True,
        backup_directory=str(tmp_path / "bucket"),
        backup_batch_size=10,
        backup_flush_interval=0.2,
    )
    logger = logging.getLogger(logger_name)
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    for i in range(35):
        logger.info("async %d", i)
    deadline = time.monotonic() + 10
    assert handler.replicator is not None
    while handler.replicator.cursor.last_seq < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert handler.replicator.cursor.last_seq >= 30, "full batches ship without close()"
    handler.close()
    status = handler.last_replication_status
    assert status is not None and status.pending_entries == 0 and status.replicated_seq == 35
    handler.close()  # idempotent


def test_sync_mode_uploads_before_the_call_returns(tmp_path: Path) -> None:
    with ImmutableLogger(
        tmp_path / "logs",
        enable_cloud_backup=True,
        backup_async=False,
        backup_directory=str(tmp_path / "bucket"),
    ) as log:
        log.audit("first")
        assert log.sync_status()["replicated_seq"] == 1
        log.audit("second")
        assert log.sync_status()["replicated_seq"] == 2
        assert log.verify_cloud_backup()["sync_status"] == "synced"


def test_env_vars_configure_backup_and_keywords_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENABLE_CLOUD_BACKUP", "true")
    monkeypatch.setenv("BACKUP_PROVIDER", "local")
    monkeypatch.setenv("BACKUP_BATCH_SIZE", "7")
    with ImmutableLogger(tmp_path / "logs", backup_directory=str(tmp_path / "b")) as log:
        assert log.handler.backup.backup_batch_size == 7
        assert log.handler.replicator is not None
    with ImmutableLogger(
        tmp_path / "logs2", backup_batch_size=3, backup_directory=str(tmp_path / "b2")
    ) as log:
        assert log.handler.backup.backup_batch_size == 3
    monkeypatch.setenv("BACKUP_BATCH_SIZE", "zero")
    with pytest.raises(ConfigurationError):
        ImmutableLogger(tmp_path / "logs3")
    monkeypatch.setenv("BACKUP_BATCH_SIZE", "5")
    monkeypatch.setenv("BACKUP_PROVIDER", "s3")
    with pytest.raises(ConfigurationError, match="S3_BUCKET"):
        ImmutableLogger(tmp_path / "logs4")
    monkeypatch.setenv("ENABLE_CLOUD_BACKUP", "maybe")
    with pytest.raises(ConfigurationError):
        ImmutableLogger(tmp_path / "logs5")


def test_unknown_backup_option_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="s3_buckt"):
        ImmutableHandler(tmp_path, s3_buckt="typo")


def test_local_chain_diverging_from_replica_stops_replication(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    _write(writer, 20)
    Replicator(bucket, writer.stream_dir, "default", batch_size=10, max_batch_factor=1).pump(
        force=True
    )
    writer.close()
    # Rewrite the local log with recomputed hashes (a full rewrite) and keep logging.
    import shutil

    shutil.rmtree(writer.stream_dir)
    rewritten = ChainWriter(tmp_path / "logs", stream=writer.stream)
    _write(rewritten, 25)
    replicator = Replicator(
        bucket, rewritten.stream_dir, "default", batch_size=10, max_batch_factor=1
    )
    assert replicator.try_pump(force=True) is False
    assert replicator.status.state == "stopped"
    assert "differs from the replicated one" in (replicator.status.last_error or "")
    rewritten.close()


@pytest.mark.parametrize("body", [gzip.compress(b"somebody else's bytes\n"), b"not gzip at all"])
def test_an_object_taken_after_reconciling_stops_replication(tmp_path: Path, body: bytes) -> None:
    """Another writer takes the next batch's key after this replicator reconciled: whether
    or not that object is even gzip, replication stops; it never retries forever."""
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    replicator = Replicator(bucket, writer.stream_dir, "default", batch_size=5,
                            max_batch_factor=1)
    _write(writer, 5)
    assert replicator.try_pump(force=True) is True
    bucket.put_if_absent(f"default/{writer.stream}/batches/000000000006-000000000010.jsonl.gz",
                         body, {})
    _write(writer, 5)
    assert replicator.try_pump(force=True) is False
    assert replicator.status.state == "stopped"
    assert "already exists with different content" in (replicator.status.last_error or "")
    assert _batches(bucket) == [(1, 5), (6, 10)]
    writer.close()


def test_remote_streams_lists_by_stream(tmp_path: Path) -> None:
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    for stream in ("a.0", "a.1"):
        writer = ChainWriter(tmp_path / "logs", stream=stream)
        _write(writer, 3)
        writer.close()
        Replicator(bucket, writer.stream_dir, "default", max_batch_factor=1).pump(force=True)
    assert sorted(remote_streams(bucket, "default")) == ["a.0", "a.1"]
    raw = bucket.get("default/a.0/batches/000000000001-000000000003.jsonl.gz")
    assert gzip.decompress(raw).count(b"\n") == 3


def test_backlog_ships_in_larger_batches_never_more_puts(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    _write(writer, 2_550)
    replicator = Replicator(
        bucket,
        writer.stream_dir,
        "default",
        batch_size=100,
        max_batch_factor=10,
        flush_interval=3600,
    )
    replicator.pump()
    batches = _batches(bucket)
    sizes = [last - first + 1 for first, last in batches]
    assert sizes[0] == 1_000 and all(size % 100 == 0 for size in sizes)
    assert len(batches) <= 2_550 // 100  # at most one PUT per batch_size entries
    replicator.pump(force=True)
    assert _batches(bucket)[-1][1] == 2_550
    assert sum(b - a + 1 for a, b in _batches(bucket)) == 2_550
    writer.close()


def test_verify_cloud_backup_notices_a_locally_truncated_or_deleted_stream(
    tmp_path: Path,
) -> None:
    import shutil

    from immutable_logging.replication.cloud import verify_cloud_backup

    writer = ChainWriter(tmp_path / "logs", max_bytes=2_000)
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    _write(writer, 40)
    writer.close()
    Replicator(bucket, writer.stream_dir, "default", batch_size=10).pump(force=True)
    assert verify_cloud_backup(bucket, tmp_path / "logs", "default")["sync_status"] == "synced"
    from immutable_logging.layout import list_segments

    list_segments(writer.stream_dir)[-1].path.unlink()  # the newest entries cut off locally
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert check["sync_status"] == "corrupted"
    assert [p["reason"] for p in check["problems"]] == ["missing_locally"]
    shutil.rmtree(writer.stream_dir)
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert [p["reason"] for p in check["problems"]] == ["missing_locally"]


@pytest.mark.parametrize("damage", ["batch deleted", "line repeated", "overlapping batch"])
def test_a_damaged_replica_is_reported_once_per_cause(tmp_path: Path, damage: str) -> None:
    """Found by the DR audit: a deleted batch was reported twice (the second a bogus
    "seq 21 where 11 was expected"), a repeated line counted as one more entry (201 of
    200 local entries, 100.5 %), and an extra batch 11-15 made the real 11-20 the overlap,
    so that entries 16..20 were said to be missing from the replica. (An extra batch that
    repeats entries present, as this one does, is now no problem at all: see
    test_cloud.py.)"""
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    _write(writer, 30)
    writer.close()
    Replicator(bucket, writer.stream_dir, "default", batch_size=10,
               max_batch_factor=1).close()
    key = f"default/{writer.stream}/batches/000000000011-000000000020.jsonl.gz"
    path = tmp_path / "bucket" / key
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    if damage == "batch deleted":
        path.unlink()
    elif damage == "line repeated":
        path.chmod(0o600)
        path.write_bytes(gzip.compress(b"".join(lines[:5] + lines[4:])))
    else:
        bucket.put_if_absent(key.replace("000000000020", "000000000015"),
                             gzip.compress(b"".join(lines[:5])), {"segment": "1"})
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    reasons = sorted(p["reason"] for p in check["problems"])
    expected = {"batch deleted": ["gap"],
                "line repeated": ["count_mismatch", "hash_mismatch", "reorder"],
                "overlapping batch": []}[damage]
    assert reasons == expected, check["problems"]
    assert check["cloud_blocks"] == (20 if damage == "batch deleted" else 30)
    assert check["missing_blocks"] == (10 if damage == "batch deleted" else 0)


def test_torn_tail_evidence_is_replicated_and_restored(tmp_path: Path) -> None:
    from immutable_logging.layout import list_segments
    from immutable_logging.replication.cloud import restore_tenant

    writer = ChainWriter(tmp_path / "logs")
    _write(writer, 5)
    writer.close()
    with open(list_segments(writer.stream_dir)[-1].path, "ab") as handle:
        handle.write(b'{"seq":6,"pr')
    again = ChainWriter(tmp_path / "logs")
    _write(again, 2)
    again.close()
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    Replicator(bucket, again.stream_dir, "default").pump(force=True)
    restored = restore_tenant(bucket, tmp_path / "restored", "default")
    assert restored["verified"], restored["problems"]
    assert list((tmp_path / "restored" / "default" / again.stream / "torn").iterdir())


def test_close_respects_its_timeout_with_a_slow_backend(tmp_path: Path) -> None:
    class SlowBucket(LocalDirectoryBackend):
        def _put_if_absent(self, name: str, data: bytes, metadata: dict[str, str]) -> None:
            time.sleep(0.2)
            super()._put_if_absent(name, data, metadata)

    writer = ChainWriter(tmp_path / "logs")
    _write(writer, 300)
    writer.close()
    replicator = Replicator(SlowBucket(tmp_path / "bucket"), writer.stream_dir, "default",
                            batch_size=10, max_batch_factor=1)
    replicator._latest_seq = 300
    started = time.monotonic()
    status = replicator.close(timeout=1.0)
    assert time.monotonic() - started < 3.0  # the deadline plus at most one slow batch
    assert 0 < status.pending_entries < 300  # shipped some, the rest waits on disk
    assert status.state == "pending"  # not "ok": nothing ships them until the next start
    again = Replicator(LocalDirectoryBackend(tmp_path / "bucket"), writer.stream_dir,
                       "default")
    again._latest_seq = 300
    status = again.close(timeout=10.0)
    assert (status.state, status.pending_entries, status.replicated_seq) == ("ok", 0, 300)


def _payload_less(previous: bytes) -> bytes:
    """A correctly linked and hashed entry with no payload: shorter than any real entry."""
    seq = int(previous[7:previous.index(b",")]) + 1
    body = b'{"seq":%d,"prev":"%s"}' % (seq, previous[-67:-3])
    return body[:-1] + b',"hash":"%s"}\n' % hashlib.sha256(body).hexdigest().encode()


def _other_prev(line: bytes) -> bytes:
    """The line with the first hex digit of its prev hash changed (same shape)."""
    at = line.index(b'"prev":"') + 8
    return line[:at] + (b"1" if line[at:at + 1] == b"0" else b"0") + line[at + 1:]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda lines: lines[:40] + lines[41:], "breaks at seq 42 (expected seq 41)"),
    (lambda lines: [*lines[:40], b"garbage\n", *lines[41:]], "is malformed"),
    (lambda lines: [*lines[:40], _other_prev(lines[40]), *lines[41:]], "breaks at seq 41"),
    (lambda lines: [*lines[:40], _payload_less(lines[39]), *lines[41:]], "is malformed"),
    (lambda lines: [*lines[:40], lines[40][:-10] + b"\xff" + lines[40][-9:], *lines[41:]],
     "is malformed"),  # a byte of the stored hash rotted
])
def test_a_local_chain_broken_mid_segment_stops_replication_before_the_break(
    tmp_path: Path, damage: Any, message: str,
) -> None:
    writer = ChainWriter(tmp_path / "logs", durability="none")
    _write(writer, 100)
    writer.close()
    path = next(writer.stream_dir.glob("*.log"))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(damage(lines)))
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    replicator = Replicator(bucket, writer.stream_dir, "default", batch_size=10,
                            max_batch_factor=1)
    assert replicator.try_pump(force=True) is False
    assert replicator.status.state == "stopped"
    assert message in (replicator.status.last_error or "")
    assert replicator.cursor.last_seq == 40  # everything before the break, nothing after
    assert _batches(bucket)[-1][1] == 40


def test_byte_bounds_of_read_ahead_and_batches(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    for i in range(120):  # entries of ~1-9 KB, one of 30 KB (larger than a batch may be)
        size = 30_000 if i == 57 else 1_000 + (i * 797) % 8_000
        writer.append({"ts": 1.0, "message": f"m{i}", "blob": "x" * size})
    writer.close()
    replicator = Replicator(bucket, writer.stream_dir, "default", batch_size=100,
                            max_pending_bytes=60_000, max_batch_bytes=20_000)
    largest_entry = 31_000
    seen: list[tuple[int, int]] = []
    ship = replicator._ship

    def checked_ship(entries: list[Any]) -> None:
        held = replicator._pending_bytes
        assert held == sum(len(e.line) for e in replicator._pending)  # the running sum
        assert held < 60_000 + largest_entry
        size = sum(len(e.line) for e in entries)
        assert len(entries) == 1 or size < 20_000 + largest_entry
        seen.append((len(entries), size))
        ship(entries)

    replicator._ship = checked_ship  # type: ignore[method-assign]
    assert replicator.pump(force=True) == 120
    assert replicator._pending_bytes == 0
    assert len(seen) > 120 * 4_500 // 20_000  # the byte bound cut the batches, not the count
    assert max(size for n, size in seen if n > 1) >= 20_000  # ... only once it was reached
    shipped = [parse_batch_key(k) for k in bucket.list("default/")]
    ranges = sorted((n.first_seq, n.last_seq) for n in shipped if n is not None)
    assert ranges[0][0] == 1 and ranges[-1][1] == 120
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))


def test_read_ahead_bytes_restart_from_zero_when_a_reconcile_drops_them(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path / "logs")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    slow = Replicator(bucket, writer.stream_dir, "default", batch_size=50, max_batch_factor=1,
                      flush_interval=3600, max_pending_bytes=20_000)
    _write(writer, 30)
    assert slow.pump() == 0 and slow._pending_bytes > 0  # a partial batch waits
    other = Replicator(bucket, writer.stream_dir, "default", batch_size=50)
    assert other.pump(force=True) == 30  # another replicator shipped those entries
    slow._needs_reconcile = True  # as after a failed PUT
    _write(writer, 200)  # more than max_pending_bytes: a stale count would stall reading
    assert slow.pump(force=True) == 200
    assert slow._pending_bytes == 0
    assert _batches(bucket)[-1][1] == 230
    writer.close()


def test_a_read_ahead_held_at_its_byte_bound_ships_without_waiting(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path / "logs")
    for i in range(300):  # 20 KB entries: the 1 MiB read-ahead holds ~50, fewer than a batch
        writer.append({"ts": 1.0, "message": f"m{i}", "blob": "x" * 20_000})
    writer.flush()
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    replicator = Replicator(bucket, writer.stream_dir, "default", batch_size=100,
                            flush_interval=3600, max_pending_bytes=1 << 20)
    shipped = replicator.pump()  # no force, no waiting: every batch the bound allows
    assert 300 - 60 < shipped < 300
    assert replicator.pump(force=True) == 300 - shipped
    writer.close()


def test_a_read_error_midway_keeps_the_read_ahead_count_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = ChainWriter(tmp_path / "logs")
    for i in range(50):
        writer.append({"ts": 1.0, "message": f"m{i}", "blob": "x" * 1_000})
    writer.flush()
    failures = [1]

    class FlakyReader(io.BufferedReader):
        def __iter__(self) -> Iterator[bytes]:
            for n, line in enumerate(iter(self.readline, b"")):
                if n == 20 and failures:
                    failures.pop()
                    raise OSError(5, "Input/output error")
                yield line

    monkeypatch.setattr(Segment, "open",
                        lambda self, buffering=-1: FlakyReader(io.FileIO(self.path, "rb")))
    replicator = Replicator(LocalDirectoryBackend(tmp_path / "bucket"), writer.stream_dir,
                            "default", batch_size=100, flush_interval=3600)
    assert not replicator.try_pump()
    assert "Input/output error" in str(replicator.status.last_error)
    assert replicator._pending_bytes == sum(len(e.line) for e in replicator._pending) > 0
    replicator._retry_at = 0.0  # skip the back-off
    assert replicator.try_pump(force=True)
    assert replicator.cursor.last_seq == 50 and replicator._pending_bytes == 0
    writer.close()


@pytest.mark.parametrize("deleted", [1, 2])
def test_a_local_log_rolled_back_after_replication_stops_replication(
    tmp_path: Path, deleted: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Segments deleted (or an older disk snapshot restored) after their entries were
    replicated: the log goes on from an earlier seq. The replicator must say so, not read
    on from a position that means nothing any more and report all is well."""
    writer = ChainWriter(tmp_path / "logs", max_bytes=2_000, compress=False)
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    _write(writer, 60)
    first = Replicator(bucket, writer.stream_dir, "default", batch_size=10, max_batch_factor=1)
    first.close()
    assert first.status.replicated_seq == 60 and first.status.state == "ok"
    writer.close()
    for seg in list_segments(writer.stream_dir)[-deleted:]:
        seg.path.unlink()
    rolled_back = ChainWriter(tmp_path / "logs", stream=writer.stream, max_bytes=2_000,
                              compress=False)
    assert rolled_back.seq < 60
    _write(rolled_back, 15)
    shipped = _batches(bucket)
    replicator = Replicator(bucket, rolled_back.stream_dir, "default", batch_size=10,
                            max_batch_factor=1)
    assert replicator.try_pump(force=True) is False
    assert replicator.status.state == "stopped"
    assert "rolled back or rewritten" in (replicator.status.last_error or "")
    with caplog.at_level(logging.WARNING, logger="immutable_logging.replication"):
        status = replicator.close()
    assert status.state == "stopped"
    assert "shipped at the next start" not in caplog.text
    assert "is stopped" in caplog.text
    assert _batches(bucket) == shipped  # the replica keeps the original entries
    rolled_back.close()


def test_the_read_position_check_passes_after_a_plain_restart_and_rotation(
    tmp_path: Path,
) -> None:
    # The position is checked at every start: a log that was only appended to (across
    # rotations and gzip of the cursor's segment) must replicate on as before.
    writer = ChainWriter(tmp_path / "logs", max_bytes=2_000)
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    _write(writer, 30)
    Replicator(bucket, writer.stream_dir, "default", batch_size=10, max_batch_factor=1).close()
    _write(writer, 40)  # rotates: the cursor's segment is sealed and gzip'ed
    writer.close()
    again = Replicator(bucket, writer.stream_dir, "default", batch_size=10, max_batch_factor=1)
    assert again.cursor.position_hash
    assert again.try_pump(force=True) is True
    assert again.status.state == "ok" and again.status.replicated_seq == 70


@pytest.mark.parametrize("logged_after", [25, 50])
def test_an_older_disk_snapshot_restored_with_its_cursor_stops_replication(
    tmp_path: Path, logged_after: int
) -> None:
    """The snapshot holds an old cursor that matches it: only the remote tells how far the
    log had come. New, different entries must not be skipped as 'already replicated'."""
    import shutil

    logs = tmp_path / "logs"
    writer = ChainWriter(logs, compress=False)
    bucket = LocalDirectoryBackend(tmp_path / "bucket")

    def replicator() -> Replicator:
        return Replicator(bucket, writer.stream_dir, "default", batch_size=10,
                          max_batch_factor=1)

    _write(writer, 30)
    replicator().close()
    writer.close()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(writer.stream_dir, snapshot)
    writer = ChainWriter(logs, stream=writer.stream, compress=False)
    _write(writer, 40)
    replicator().close()
    writer.close()
    assert _batches(bucket)[-1] == (61, 70)
    shutil.rmtree(writer.stream_dir)
    shutil.copytree(snapshot, writer.stream_dir)  # the cursor file comes back with it
    writer = ChainWriter(logs, stream=writer.stream, compress=False)
    assert writer.seq == 30
    _write(writer, logged_after)  # seq 31.. again, other entries
    shipped = _batches(bucket)
    again = replicator()
    assert again.try_pump(force=True) is False
    assert again.status.state == "stopped"
    error = again.status.last_error or ""
    if logged_after < 40:  # the local log ends before the replica's last entry
        assert f"ends at seq {30 + logged_after}" in error and "up to seq 70" in error
    else:  # caught at the first remote batch end it holds (seq 40)
        assert "local entry seq 40" in error and "differs from the replicated one" in error
    assert _batches(bucket) == shipped
    writer.close()


def test_a_replica_missing_a_batch_of_another_log_moves_no_cursor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another log with the same stream name meets a replica that also lost a batch: the
    reconcile stops on the missing batch. The cursor must stay where it was, so that
    the status counts every entry as not replicated and no cursor into the other log
    is saved."""
    logs, bucket = tmp_path / "logs", tmp_path / "bucket"
    with ImmutableLogger(logs, tenantId="acme", enable_cloud_backup=True,
                         backup_directory=str(bucket), backup_batch_size=7) as log:
        for i in range(30):
            log.audit(f"event {i}")
            if i % 7 == 6:
                assert log.flush_backup()
        assert log.flush_backup()
    batches = sorted(bucket.rglob("*.jsonl.gz"))
    assert len(batches) >= 3
    batches[2].chmod(0o600)
    batches[2].unlink()
    with ImmutableLogger(tmp_path / "other", tenantId="acme", enable_cloud_backup=True,
                         backup_directory=str(bucket), backup_batch_size=7) as log:
        for i in range(12):
            log.audit(f"other {i}")
        assert not log.flush_backup()
        status = log.handler.replicator.status  # type: ignore[union-attr]
    assert (status.state, status.replicated_seq, status.pending_entries) == ("stopped", 0, 12)
    assert "12 entries are not replicated" in caplog.text


class _HangingBucket(LocalDirectoryBackend):
    """The local bucket, whose first batch PUT (``op="put"``) or first LIST (``op="list"``)
    blocks until the test releases it, as a request to a black-holed endpoint does."""

    def __init__(self, root: Path, op: str) -> None:
        super().__init__(root)
        self.op = op
        self.entered = threading.Event()
        self.release = threading.Event()

    def _hang(self, op: str) -> None:
        if op == self.op and not self.release.is_set():
            self.entered.set()
            assert self.release.wait(10), "the test never released the request"

    def _put_if_absent(self, name: str, data: bytes, metadata: dict[str, str]) -> None:
        if "/batches/" in name:
            self._hang("put")
        super()._put_if_absent(name, data, metadata)

    def _list(self, name_prefix: str, page_size: int | None) -> Iterator[str]:
        self._hang("list")
        yield from super()._list(name_prefix, page_size)


def _poll(replicator: Replicator, done: Callable[[ReplicationStatus], bool]) -> ReplicationStatus:
    deadline = time.monotonic() + 5
    status = replicator.status
    while not done(status) and time.monotonic() < deadline:
        time.sleep(0.01)
        status = replicator.status
    return status


@pytest.mark.parametrize("op", ["put", "list"])
def test_a_request_that_hangs_shows_as_stalled_while_it_hangs(tmp_path: Path, op: str) -> None:
    """The shipping thread is blocked in the request: the status must say so by itself."""
    writer = ChainWriter(tmp_path / "logs")
    bucket = _HangingBucket(tmp_path / "bucket", op)
    replicator = Replicator(bucket, writer.stream_dir, "default", batch_size=10,
                            max_batch_factor=1, flush_interval=0.05, stall_after=0.2)
    writer.add_commit_listener(replicator.notify)
    replicator.start()
    try:
        _write(writer, 25)
        assert bucket.entered.wait(5)
        status = replicator.status
        assert status.in_flight_op == op and status.in_flight_seconds is not None
        if status.in_flight_seconds < 0.2:
            assert status.state == "ok"
        status = _poll(replicator, lambda s: s.state == "stalled")
        assert status.state == "stalled" and status.in_flight_op == op
        assert status.in_flight_seconds is not None and status.in_flight_seconds >= 0.2
        _write(writer, 5)  # logging goes on: the status shows how far behind the replica is
        status = replicator.status
        assert (status.state, status.replicated_seq, status.local_seq,
                status.pending_entries) == ("stalled", 0, 30, 30)
        later = _poll(replicator, lambda s: (s.in_flight_seconds or 0)
                      > (status.in_flight_seconds or 0))
        assert later.in_flight_seconds is not None and status.in_flight_seconds is not None
        assert later.in_flight_seconds > status.in_flight_seconds  # the age keeps growing
        assert status.to_dict()["state"] == "stalled"  # as the facade's sync_status() says
        bucket.release.set()
        status = _poll(replicator, lambda s: s.replicated_seq == 30 and s.in_flight_op is None)
        assert (status.state, status.in_flight_op, status.in_flight_seconds) == ("ok", None, None)
        assert (status.replicated_seq, status.pending_entries) == (30, 0)
    finally:
        bucket.release.set()
        status = replicator.close()
        writer.close()
    assert (status.state, status.replicated_seq, status.failures) == ("ok", 30, 0)
    assert _batches(bucket) == [(1, 10), (11, 20), (21, 30)]


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), True, "10"])
def test_stall_after_must_be_a_positive_number(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="stall_after must be a positive number"):
        Replicator(LocalDirectoryBackend(tmp_path / "bucket"), tmp_path / "logs" / "s",
                   "default", stall_after=value)


def test_a_request_hanging_past_close_starts_no_other_one(tmp_path: Path) -> None:
    """close() gives up waiting for a request that hangs and the handler releases the
    stream: the shipping thread, once the request returns, must not go on shipping (the
    writer that takes the stream next ships it, and two shippers make overlapping
    batches)."""
    writer = ChainWriter(tmp_path / "logs")
    bucket = _HangingBucket(tmp_path / "bucket", "put")
    replicator = Replicator(bucket, writer.stream_dir, "default", batch_size=10,
                            max_batch_factor=1, flush_interval=0.05)
    writer.add_commit_listener(replicator.notify)
    replicator.start()
    thread = replicator._thread
    assert thread is not None
    try:
        _write(writer, 25)
        assert bucket.entered.wait(5)
        status = replicator.close(timeout=0.2)
        assert (status.state, status.replicated_seq, status.pending_entries) == (
            "pending", 0, 25)
    finally:
        bucket.release.set()
        thread.join(10)
        writer.close()
    assert not thread.is_alive()
    assert _batches(bucket) == [(1, 10)]  # the request under way, and nothing after it
    # What it left ships from the next start, continuing the replica.
    writer = ChainWriter(tmp_path / "logs")
    try:
        again = Replicator(bucket, writer.stream_dir, "default", batch_size=10,
                           max_batch_factor=1)
        status = again.close()
    finally:
        writer.close()
    assert (status.state, status.replicated_seq) == ("ok", 25)
    assert _batches(bucket) == [(1, 10), (11, 20), (21, 25)]
