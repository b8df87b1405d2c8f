"""Restoring a tenant from the replica and comparing the replica with the local log
(``replication/cloud.py``), against the embedded local-directory bucket."""

from __future__ import annotations

import gzip
import json
import os
import time
import tracemalloc
from pathlib import Path

import pytest

from immutable_logging.chain import ChainWriter
from immutable_logging.compression import DEFLATE_CHUNK
from immutable_logging.errors import RemoteIntegrityError
from immutable_logging.layout import list_segments, list_streams
from immutable_logging.replication.cloud import restore_tenant, verify_cloud_backup
from immutable_logging.replication.local import RESERVED_SUFFIX, LocalDirectoryBackend
from immutable_logging.replication.replicator import Replicator

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
                                                  "remote_entries": 500}}
