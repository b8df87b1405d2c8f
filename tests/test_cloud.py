"""Restoring a tenant from the replica and comparing the replica with the local log
(``replication/cloud.py``), against the embedded local-directory bucket."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest

from immutable_logging import ImmutableLogger
from immutable_logging.chain import ChainWriter
from immutable_logging.compression import DEFLATE_CHUNK
from immutable_logging.errors import (
    BackendUnavailableError,
    ConfigurationError,
    RemoteIntegrityError,
)
from immutable_logging.layout import list_segments, list_streams
from immutable_logging.replication.cloud import (
    remote_streams,
    restore_tenant,
    verify_cloud_backup,
)
from immutable_logging.replication.local import RESERVED_SUFFIX, LocalDirectoryBackend
from immutable_logging.replication.replicator import Replicator

from .helpers import (
    assert_sync_fields_agree,
    read_lines,
    sealed_replica,
    ship_again,
    write_lines,
)

_PAD = "x" * 200


def _replicated_log(tmp_path: Path, entries: int) -> tuple[ChainWriter, LocalDirectoryBackend]:
    """A tenant ``default`` of ``entries`` entries in several gzip'ed segments, shipped in
    batches of 100 to a local bucket."""
    writer = ChainWriter(tmp_path / "logs", max_bytes=256 * 1024)
    for i in range(entries):
        writer.append({"ts": time.time(), "level": "INFO", "message": f"m{i} {_PAD}",
                       "tenant": "default"})
    writer.close()
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    Replicator(bucket, writer.stream_dir, "default", batch_size=100,
               max_batch_factor=1).pump(force=True)
    return writer, bucket


def _two_streams(tmp_path: Path) -> tuple[LocalDirectoryBackend, list[str]]:
    """Streams ``a`` and ``b`` of tenant ``default`` (300 entries each, several segments),
    shipped to a local bucket; and the stream names in the order restore moves them."""
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    for stream in ("a", "b"):
        writer = ChainWriter(tmp_path / "logs", stream=stream, max_bytes=16 * 1024)
        for i in range(300):
            writer.append({"ts": time.time(), "level": "INFO", "message": f"{stream}{i} {_PAD}",
                           "tenant": "default"})
        writer.close()
        Replicator(bucket, writer.stream_dir, "default", batch_size=100,
                   max_batch_factor=1).pump(force=True)
    order = list(remote_streams(bucket, "default"))
    assert sorted(order) == ["a", "b"]
    return bucket, order


class _ObstacleBucket(LocalDirectoryBackend):
    """A bucket read while another process makes ``obstacle`` (a plain directory holding a
    file) when the first batch of ``stream`` is downloaded: after restore looked at the
    target, before it moves the restored streams there."""

    def __init__(self, root: Path, stream: str, obstacle: Path) -> None:
        super().__init__(root)
        self._stream, self._obstacle = stream, obstacle

    def get(self, key: str) -> bytes:
        if f"/{self._stream}/batches/" in key and not self._obstacle.exists():
            self._obstacle.mkdir(parents=True)
            (self._obstacle / "notes.txt").write_text("not a stream")
        return super().get(key)


def _contents(stream_dir: Path) -> dict[str, bytes]:
    return {s.path.name: b"".join(s.chunks()) for s in list_segments(stream_dir)}


def test_restore_holds_one_batch_in_memory_not_the_tenant(tmp_path: Path) -> None:
    """Found by the DR audit: restore held every entry of the tenant in memory (300k
    entries took 367 MiB). It writes each batch once it is checked now."""
    writer, bucket = _replicated_log(tmp_path, 20_000)
    original = _contents(writer.stream_dir)
    total = sum(len(data) for data in original.values())
    assert total > 5_000_000 and len(original) > 10
    tracemalloc.start()
    try:
        result = restore_tenant(bucket, tmp_path / "restored", "default")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["verified"], result["problems"]
    assert (result["entries"], result["segments"]) == (20_000, len(original))
    restored_dir = tmp_path / "restored" / "default" / writer.stream
    assert _contents(restored_dir) == original
    sealed = list_segments(restored_dir)[:-1]
    assert all(s.compressed and not os.stat(s.path).st_mode & 0o222 for s in sealed)
    assert not list_segments(restored_dir)[-1].compressed
    # gzip'ing a segment reads it in one step of up to DEFLATE_CHUNK bytes, as the writer
    # does: a bound that does not grow with the tenant
    assert peak < DEFLATE_CHUNK + total / 4, (peak, total)
    assert [p.name for p in (tmp_path / "restored").iterdir()] == ["default"]


def test_restore_writes_a_segment_in_few_system_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: restore wrote every entry with its own write(2) (20k calls for
    20k entries). The entries of a segment are gathered and written together now."""
    writer, bucket = _replicated_log(tmp_path, 2000)
    original = _contents(writer.stream_dir)
    writes = 0
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        nonlocal writes
        writes += 1
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    result = restore_tenant(bucket, tmp_path / "restored", "default")
    monkeypatch.undo()
    assert result["verified"], result["problems"]
    assert _contents(tmp_path / "restored" / "default" / writer.stream) == original
    assert result["segments"] == len(original) > 1
    assert writes < 50, writes  # gzip, stream.json and the like; not one per entry


def test_a_damaged_replica_leaves_nothing_behind(tmp_path: Path) -> None:
    """The entries before the damage were already written (into a staging directory):
    they are removed with it, and an existing root keeps only what it held."""
    _, bucket = _replicated_log(tmp_path, 1000)
    keys = sorted(k for k in bucket.list("default/") if "/batches/" in k)
    damaged = tmp_path / "bucket" / keys[5]
    raw = gzip.decompress(damaged.read_bytes()).replace(b"m520 ", b"m999 ")
    os.chmod(damaged, 0o644)
    damaged.write_bytes(gzip.compress(raw))
    root = tmp_path / "restored"
    (root / "other").mkdir(parents=True)
    with pytest.raises(RemoteIntegrityError, match=rf"object {keys[5]}, seq 501: hash_mismatch"):
        restore_tenant(bucket, root, "default")
    assert [p.name for p in root.iterdir()] == ["other"]
    with pytest.raises(RemoteIntegrityError):
        restore_tenant(bucket, tmp_path / "new", "default")
    assert not (tmp_path / "new").exists()


def test_a_bucket_failing_mid_stream_leaves_nothing_behind(tmp_path: Path) -> None:
    """A download failing while a segment's entries are gathered (some written, some not
    yet): the error propagates, the open segment is closed unwritten, nothing is left."""

    class FailingBucket(LocalDirectoryBackend):
        batches = 0

        def get(self, key: str) -> bytes:
            if "/batches/" in key:
                self.batches += 1
                if self.batches == 15:
                    raise BackendUnavailableError(f"{key}: connection reset")
            return super().get(key)

    _replicated_log(tmp_path, 2000)
    with pytest.raises(BackendUnavailableError, match="connection reset"):
        restore_tenant(FailingBucket(tmp_path / "bucket"), tmp_path / "restored", "default")
    assert not (tmp_path / "restored").exists()


def test_a_batch_put_in_an_earlier_segment_is_refused(tmp_path: Path) -> None:
    """Segment numbers are part of each encrypted entry's AAD and of the layout: a batch
    whose metadata puts it before the segment already being restored is refused, not
    written into the wrong file."""
    _, bucket = _replicated_log(tmp_path, 3000)
    keys = sorted(k for k in bucket.list("default/") if "/batches/" in k)
    sidecar = tmp_path / "bucket" / (keys[-1] + RESERVED_SUFFIX)  # the batch's metadata
    meta = json.loads(sidecar.read_text())
    assert int(meta["segment"]) > 1
    meta["segment"] = "1"
    os.chmod(sidecar, 0o644)
    sidecar.write_text(json.dumps(meta))
    first = keys[-1].rsplit("/", 1)[-1].split("-")[0].lstrip("0")
    with pytest.raises(RemoteIntegrityError, match=rf"seq {first}: segment_order: batch "
                       rf"metadata puts entry {first} in segment 1, after entries of segment"):
        restore_tenant(bucket, tmp_path / "restored", "default")
    assert not (tmp_path / "restored").exists()


def test_verify_cloud_backup_compares_entry_by_entry(tmp_path: Path) -> None:
    _, bucket = _replicated_log(tmp_path, 500)
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert (check["sync_status"], check["cloud_blocks"], check["remote_entries"]) == (
        "synced", 500, 500)
    [stream_dir] = list_streams(tmp_path / "logs" / "default")
    assert check["streams"] == {stream_dir.name: {"local": 500, "cloud": 500,
                                                  "remote_entries": 500, "differing": 0,
                                                  "remote_only": 0}}


_FIELDS = ("local_blocks", "cloud_blocks", "missing_blocks", "remote_entries",
           "differing_blocks", "remote_only_blocks", "sync_percentage", "sync_status",
           "remote_ok")


def _append(writer: ChainWriter, count: int, text: str) -> None:
    for i in range(count):
        writer.append({"ts": time.time(), "level": "INFO", "message": f"{text}{i}",
                       "tenant": "default"})


def _situation(tmp_path: Path, situation: str) -> LocalDirectoryBackend:
    """33 entries of tenant ``default`` in ``tmp_path/logs``, replicated in batches of 10
    to a local bucket, then changed into ``situation``."""
    logs, bucket = tmp_path / "logs", LocalDirectoryBackend(tmp_path / "bucket")
    writer = ChainWriter(logs)
    _append(writer, 33, "m")
    writer.flush()
    if situation != "replica empty":
        Replicator(bucket, writer.stream_dir, "default", batch_size=10,
                   max_batch_factor=1).close()
    if situation == "behind":
        _append(writer, 7, "later")
    writer.close()
    if situation in ("local lost", "diverged"):  # (a new log, same stream name)
        shutil.rmtree(logs / "default")
    if situation == "diverged":
        other = ChainWriter(logs)
        _append(other, 12, "other")
        other.close()
    elif situation == "replica ahead":  # the local log rolled back to seq 20
        segment = list_segments(writer.stream_dir)[-1].path
        write_lines(segment, read_lines(segment)[:20])
    elif situation == "altered entry":  # seq 15's bytes changed, its hash kept
        [batch] = (tmp_path / "bucket").rglob("*000000000011-000000000020.jsonl.gz")
        raw = gzip.decompress(batch.read_bytes())
        batch.chmod(0o600)
        batch.write_bytes(gzip.compress(raw.replace(b'"m14"', b'"m99"')))
    return bucket


@pytest.mark.parametrize(("situation", "expected", "reasons"), [
    ("in sync", (33, 33, 0, 33, 0, 0, 100.0, "synced", True), []),
    ("behind", (40, 33, 7, 33, 0, 0, 82.5, "partial", True), []),
    ("replica empty", (33, 0, 33, 0, 0, 0, 0.0, "not_synced", True), []),
    ("local lost", (0, 0, 0, 33, 0, 33, 0.0, "local_lost", True), ["missing_locally"]),
    ("replica ahead", (20, 20, 0, 33, 0, 13, 60.6, "corrupted", True), ["missing_locally"]),
    ("diverged", (12, 0, 12, 33, 12, 21, 0.0, "corrupted", True),
     ["differs_from_local", "missing_locally"]),
    ("altered entry", (33, 32, 1, 32, 0, 0, 96.96, "corrupted", False),
     ["hash_mismatch", "hash_mismatch"]),
])
def test_verify_cloud_backup_fields_agree_in_every_situation(
    tmp_path: Path, situation: str, expected: tuple[object, ...], reasons: list[str]
) -> None:
    """Found by review: with the local log lost, the result said 100 % synced next to
    "corrupted", and an entry altered in the replica counted as held by it. Each field
    means one thing: the counts add up, the percentage is of every entry either side
    holds, and the state follows from them (see ``assert_sync_fields_agree``)."""
    bucket = _situation(tmp_path, situation)
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert tuple(check[field] for field in _FIELDS) == expected, check
    assert sorted(p["reason"] for p in check["problems"]) == reasons
    assert_sync_fields_agree(check)


def _log_of(tmp_path: Path, text: str) -> ChainWriter:
    """Stream ``s`` of tenant ``default`` under ``tmp_path``: 30 entries in one segment."""
    writer = ChainWriter(tmp_path, stream="s")
    for i in range(30):
        writer.append({"ts": time.time(), "level": "INFO", "message": f"{text} {i}",
                       "tenant": "default"})
    writer.close()
    return writer


def test_batches_repeating_entries_already_present_are_no_problem(tmp_path: Path) -> None:
    """Each repeated entry equals the one taken: nothing is reported, and a batch reaching
    past the others (16-25 over 16-20 and 21-25) is taken from where they stop. They were
    each an "overlap" problem, which made restore refuse the replica."""
    writer = _log_of(tmp_path / "logs", "event")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    Replicator(bucket, writer.stream_dir, "default", batch_size=5,
               max_batch_factor=1).pump(force=True)
    for first, last in ((11, 20), (16, 25), (6, 8), (28, 30)):
        ship_again(bucket, writer.stream_dir, first, last)
    names = remote_streams(bucket, "default")["s"]
    assert len(names) == 10
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    assert check["problems"] == []
    assert (check["sync_status"], check["cloud_blocks"]) == ("synced", 30)
    restored = restore_tenant(bucket, tmp_path / "restored", "default")
    assert restored["verified"], restored["problems"]
    [segment] = list_segments(tmp_path / "restored" / "default" / "s")
    [local] = list_segments(writer.stream_dir)
    assert list(segment.lines()) == list(local.lines())


def test_a_batch_differing_from_the_entries_it_repeats_is_an_overlap(tmp_path: Path) -> None:
    writer = _log_of(tmp_path / "logs", "event")
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    Replicator(bucket, writer.stream_dir, "default", batch_size=10,
               max_batch_factor=1).pump(force=True)
    other = _log_of(tmp_path / "other", "forged")  # a chain of its own, linked in itself
    ship_again(bucket, other.stream_dir, 5, 10)
    ship_again(bucket, other.stream_dir, 25, 30)
    check = verify_cloud_backup(bucket, tmp_path / "logs", "default")
    overlaps = [(p["seq"], p["detail"]) for p in check["problems"]]
    assert overlaps == [
        (5, "batch overlaps entries already present (up to seq 10) and differs from them"),
        (25, "batch overlaps entries already present (up to seq 30) and differs from them")]
    assert check["cloud_blocks"] == 30
    with pytest.raises(RemoteIntegrityError, match="seq 5: overlap"):
        restore_tenant(bucket, tmp_path / "restored", "default")


@pytest.mark.parametrize("extra", ["forged entries", "not entries", "another segment"])
def test_a_repeating_batch_is_checked_whole(tmp_path: Path, extra: str) -> None:
    """Found by review: a batch named 5-10 holding the real entries 5..10 and then forged
    entries 11'.. linked to 10 was taken for a mere repeat: the replica verified as
    synced, and `restore --block-hash` handed out a forged entry. Its line count, and the
    segment its metadata names, are checked too now."""
    logs, fork = tmp_path / "logs", tmp_path / "fork"
    writer = ChainWriter(logs, stream="s")
    for i in range(10):
        writer.append({"ts": 1.0, "level": "INFO", "message": f"real {i}", "tenant": "t"})
    writer.close()
    shutil.copytree(logs, fork)
    forked = ChainWriter(fork, stream="s")
    for i in range(3):
        forked.append({"ts": 2.0, "level": "INFO", "message": f"FORGED {i}", "tenant": "t"})
    forked.close()
    writer = ChainWriter(logs, stream="s")
    for i in range(10, 30):
        writer.append({"ts": 2.0, "level": "INFO", "message": f"real {i}", "tenant": "t"})
    writer.close()
    bucket = LocalDirectoryBackend(tmp_path / "bucket")
    Replicator(bucket, writer.stream_dir, "default", batch_size=10,
               max_batch_factor=1).pump(force=True)
    real = read_lines(list_segments(writer.stream_dir)[0].path)
    tail = {"forged entries": read_lines(list_segments(forked.stream_dir)[0].path)[10:],
            "not entries": [b"garbage\n"], "another segment": []}[extra]
    bucket.put_if_absent("default/s/batches/000000000005-000000000010.jsonl.gz",
                         gzip.compress(b"".join(real[4:10] + tail)),
                         {"segment": "7" if extra == "another segment" else "1"})
    check = verify_cloud_backup(bucket, logs, "default")
    assert [(p["seq"], p["reason"]) for p in check["problems"]] == [(5, "overlap")]
    assert check["sync_status"] == "corrupted" and check["cloud_blocks"] == 30


def test_a_file_in_the_place_of_the_tenant_is_refused_before_anything_is_downloaded(
    tmp_path: Path
) -> None:
    """It was a bare FileExistsError, after the whole replica was downloaded and staged."""
    _, bucket = _replicated_log(tmp_path, 10)
    root = tmp_path / "restored"
    root.mkdir()
    (root / "default").write_text("not a directory")
    with pytest.raises(ConfigurationError, match=r"/restored/default' is not a directory"):
        restore_tenant(bucket, root, "default")
    assert sorted(p.name for p in root.iterdir()) == ["default"]


def test_something_in_the_way_of_a_stream_is_refused_before_anything_is_written(
    tmp_path: Path
) -> None:
    """Found by review: a plain directory (not a stream) where the second stream of the
    replica goes failed the second move, with the first stream already moved into place:
    an error, and a half-restored tenant. It is refused before anything is written now."""
    bucket, order = _two_streams(tmp_path)
    root = tmp_path / "restored"
    obstacle = root / "default" / order[1]
    obstacle.mkdir(parents=True)
    (obstacle / "notes.txt").write_text("not a stream")
    assert list_streams(root / "default") == []
    with pytest.raises(ConfigurationError, match=rf"{obstacle} is in the way of stream "
                       rf"'{order[1]}' of the replica"):
        restore_tenant(bucket, root, "default")
    assert [p.name for p in root.iterdir()] == ["default"]  # no staging directory left
    assert [p.name for p in (root / "default").iterdir()] == [order[1]]
    assert [p.name for p in obstacle.iterdir()] == ["notes.txt"]
    (obstacle / "notes.txt").unlink()
    obstacle.rmdir()
    result = restore_tenant(bucket, root, "default")
    assert result["verified"], result["problems"]
    assert (result["streams"], result["entries"]) == (2, 600)
    assert [p.name for p in list_streams(root / "default")] == ["a", "b"]


def test_a_move_that_fails_takes_back_the_streams_moved_before(tmp_path: Path) -> None:
    """Found by review: when moving the second stream into place failed (here a directory
    another process made there meanwhile: a real ENOTEMPTY), the first one stayed in the
    target while the error propagated. What was moved is moved out again now."""
    bucket, order = _two_streams(tmp_path)
    root = tmp_path / "restored"
    obstacle = root / "default" / order[1]
    racing = _ObstacleBucket(tmp_path / "bucket", order[1], obstacle)
    with pytest.raises(OSError, match=str(obstacle)) as caught:
        restore_tenant(racing, root, "default")
    assert not isinstance(caught.value, ConfigurationError)  # it failed moving, not before
    assert [p.name for p in (root / "default").iterdir()] == [order[1]]  # no stream of ours
    assert [p.name for p in obstacle.iterdir()] == ["notes.txt"]
    assert [p.name for p in root.iterdir()] == ["default"]  # no staging directory left
    assert caught.value.__notes__ == [
        f"restore of tenant 'default' failed: what was already moved into {root / 'default'}"
        " was moved out again, nothing is left there"]
    (obstacle / "notes.txt").unlink()
    obstacle.rmdir()
    result = restore_tenant(bucket, root, "default")
    assert result["verified"], result["problems"]
    assert (result["streams"], result["entries"]) == (2, 600)
    segments = sum(len(list_segments(p)) for p in list_streams(root / "default"))
    assert result["segments"] == segments > 2


def test_a_failed_move_takes_back_the_passphrase_salt_too(tmp_path: Path) -> None:
    """The passphrase salt is staged and moved in before the streams (a restored log is
    never in place without it, as it was when it was written after them), and moved out
    again with them when a move fails."""
    bucket = tmp_path / "bucket"
    with ImmutableLogger(tmp_path / "logs", tenantId="p", encryption_passphrase="horse",
                         enable_cloud_backup=True, backup_directory=str(bucket)) as log:
        log.info("by passphrase")
    [stream] = remote_streams(LocalDirectoryBackend(bucket), "p")
    root = tmp_path / "restored"
    obstacle = root / "p" / stream
    with pytest.raises(OSError, match=str(obstacle)) as caught:
        restore_tenant(_ObstacleBucket(bucket, stream, obstacle), root, "p")
    assert [p.name for p in (root / "p").iterdir()] == [stream]  # no .salt.json
    assert "was moved out again" in caught.value.__notes__[0]
    (obstacle / "notes.txt").unlink()
    obstacle.rmdir()
    assert restore_tenant(LocalDirectoryBackend(bucket), root, "p")["verified"]
    assert (root / "p" / ".salt.json").exists()
    with ImmutableLogger(root, tenantId="p", encryption_passphrase="horse") as log:
        assert [e["message"] for e in log.read()] == ["by passphrase"]


def test_a_failed_move_puts_back_the_seals_note_an_earlier_restore_left(
    tmp_path: Path
) -> None:
    """A restore of a sealed replica replaces the note an earlier restore left (its streams
    removed since) by moving it aside; when a move fails, it is put back as it was."""
    from immutable_logging.seal import generate_seed
    from immutable_logging.sealing import SEALS_RESTORED

    bucket = sealed_replica(tmp_path, generate_seed())
    [stream] = remote_streams(LocalDirectoryBackend(bucket), "s")
    root = tmp_path / "restored"
    note = root / "s" / SEALS_RESTORED
    note.parent.mkdir(parents=True)
    note.write_bytes(b'{"from": "an earlier restore"}')
    obstacle = root / "s" / stream
    with pytest.raises(OSError, match=str(obstacle)):
        restore_tenant(_ObstacleBucket(bucket, stream, obstacle), root, "s")
    assert sorted(p.name for p in (root / "s").iterdir()) == [SEALS_RESTORED, stream]
    assert note.read_bytes() == b'{"from": "an earlier restore"}'
    assert [p.name for p in root.iterdir()] == ["s"]  # no staging directory left
    (obstacle / "notes.txt").unlink()
    obstacle.rmdir()
    result = restore_tenant(LocalDirectoryBackend(bucket), root, "s")
    assert result["verified"] and result["sealed_streams"] == [stream]
    assert json.loads(note.read_bytes())["streams"] == [stream]
    assert [p.name for p in root.iterdir()] == ["s"]


@pytest.mark.parametrize("stream", ["bad name", "-x", "a..b"])
def test_a_replica_stream_with_an_impossible_name_is_refused(
    tmp_path: Path, stream: str
) -> None:
    """A stream name comes from the replica's keys, which anyone with write access to the
    bucket may choose; restore makes directories of them, so one no writer could have made
    is damage, named before anything is written."""
    bucket, _ = _two_streams(tmp_path)
    [key] = [k for k in bucket.list("default/a/batches/")][:1]
    meta = bucket.head(key)
    assert meta is not None
    bucket.put_if_absent(key.replace("/a/", f"/{stream}/", 1), bucket.get(key), meta)
    with pytest.raises(RemoteIntegrityError, match=f"stream named {stream!r}"):
        restore_tenant(bucket, tmp_path / "restored", "default")
    assert not (tmp_path / "restored").exists()
