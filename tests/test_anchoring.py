"""End to end: checkpoints replicated to the bucket are the anchors that catch a rewrite."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import orjson
import pytest

from immutable_logging import ImmutableLogger
from immutable_logging.cli import main
from immutable_logging.entry import GENESIS_HASH, canonical_payload, make_line
from immutable_logging.errors import ConfigurationError, RemoteIntegrityError
from immutable_logging.layout import list_segments, list_streams
from immutable_logging.replication.cloud import restore_tenant, verify_cloud_backup
from immutable_logging.replication.local import LocalDirectoryBackend
from immutable_logging.seal import CheckpointSigner, generate_signing_key
from immutable_logging.verify import verify_tenant


def _replicate_with_checkpoints(logs: Path, bucket: Path) -> str:
    """Log 12 entries with checkpoints at 8 and 12, shipped in batches of 4; the vkey."""
    private = generate_signing_key()
    with ImmutableLogger(logs, tenantId="acme", checkpoint_key=private,
                         enable_cloud_backup=True, backup_directory=str(bucket),
                         backup_batch_size=4, backup_max_batch_factor=1) as log:
        for i in range(8):
            log.info(f"payment {i}", {"amount": i})
        log.handler.checkpoint()
        for i in range(8, 12):
            log.info(f"payment {i}", {"amount": i})
        log.handler.checkpoint()
        assert log.flush_backup()
    return CheckpointSigner(private, "immutable-logging").vkey


def test_replicated_checkpoints_detect_a_full_local_rewrite(tmp_path: Path) -> None:
    logs, bucket = tmp_path / "logs", tmp_path / "bucket"
    vkey = _replicate_with_checkpoints(logs, bucket)
    notes = sorted(LocalDirectoryBackend(bucket).list("acme/"))
    notes = [n for n in notes if n.endswith(".note")]
    assert len(notes) >= 2, notes  # every checkpoint reached the replica, in size order
    assert verify_tenant(logs, "acme", checkpoint_key=vkey, anchors=[bucket]).ok

    # The attacker rewrites entry 3 and recomputes the whole chain, and removes the local
    # checkpoints: the chain verifies, the anchored checkpoints do not.
    stream = list_streams(logs / "acme")[0]
    segment = list_segments(stream)[0].path
    rebuilt, prev = [], GENESIS_HASH
    for raw in segment.read_bytes().splitlines():
        entry = orjson.loads(raw)
        seq = entry.pop("seq")
        entry.pop("prev")
        entry.pop("hash")
        if entry.get("message") == "payment 3":
            entry["message"] = "payment 3000"
        line, prev = make_line(seq, prev, canonical_payload(entry))
        rebuilt.append(line)
    segment.chmod(0o600)
    segment.write_bytes(b"".join(rebuilt))
    shutil.rmtree(stream / "checkpoints")
    assert verify_tenant(logs, "acme").ok
    report = verify_tenant(logs, "acme", checkpoint_key=vkey, anchors=[bucket])
    assert not report.ok
    assert {p.reason for p in report.problems} == {"checkpoint_mismatch"}


def test_anchors_that_cannot_be_checked_are_an_error(tmp_path: Path) -> None:
    """A misspelt anchors directory, or anchors without the key that checks them, would
    silently skip the check that catches a full rewrite."""
    logs = tmp_path / "logs"
    vkey = CheckpointSigner(generate_signing_key(), "immutable-logging").vkey
    with ImmutableLogger(logs, tenantId="acme") as log:
        log.info("one entry")
    with pytest.raises(ConfigurationError, match="no such anchors directory"):
        verify_tenant(logs, "acme", checkpoint_key=vkey, anchors=[tmp_path / "nope"])
    with pytest.raises(ConfigurationError, match="only with checkpoint_key"):
        verify_tenant(logs, "acme", anchors=[tmp_path])
    assert main(["verify", str(logs), "--checkpoint-key", vkey, "--anchors",
                 str(tmp_path / "nope")], io.StringIO()) == 2
    assert main(["verify", str(logs), "--anchors", str(tmp_path)], io.StringIO()) == 2
    assert main(["verify", str(logs), "--checkpoint-key", vkey, "--anchors", str(tmp_path)],
                io.StringIO()) == 0


def test_a_restored_log_keeps_its_signed_checkpoints(tmp_path: Path) -> None:
    """Found by the DR audit: restore left the checkpoints out, so verify --checkpoint-key
    of the restored log checked none."""
    vkey = _replicate_with_checkpoints(tmp_path / "logs", tmp_path / "bucket")
    result = restore_tenant(LocalDirectoryBackend(tmp_path / "bucket"), tmp_path / "new", "acme")
    assert result["verified"] and result["entries"] == 12
    report = verify_tenant(tmp_path / "new", "acme", checkpoint_key=vkey)
    assert report.ok and [s.checkpoints_verified for s in report.streams] == [2]


@pytest.mark.parametrize("lost", [1, 3])
def test_a_replica_that_lost_its_newest_batches_is_not_restored(
    tmp_path: Path, lost: int
) -> None:
    """Found by the DR audit: with its last batches (or all of them) deleted, the replica
    restored "verified: OK" to a shorter log. The checkpoints it holds say how far the log
    had come; sync-status also reads the replicator's cursor."""
    _replicate_with_checkpoints(tmp_path / "logs", tmp_path / "bucket")
    backend = LocalDirectoryBackend(tmp_path / "bucket")
    batches = sorted(k for k in backend.list("acme/") if "/batches/" in k)
    assert len(batches) == 3
    for key in batches[-lost:]:
        (tmp_path / "bucket" / key).unlink()
    end = 12 - 4 * lost
    with pytest.raises(RemoteIntegrityError, match=rf"truncation: .*checkpoints/000000000012"
                       rf"\.note in the replica says entries up to seq 12 were shipped, but "
                       rf"the replica's batches of the stream end at seq {end}"):
        restore_tenant(backend, tmp_path / "new", "acme")
    assert not (tmp_path / "new").exists()  # nothing written
    check = verify_cloud_backup(backend, tmp_path / "logs", "acme")
    assert check["sync_status"] == "corrupted" and check["remote_ok"] is False
    [problem] = [p for p in check["problems"] if p["reason"] == "truncation"]
    assert problem["seq"] == end + 1 and "replication cursor" in problem["detail"]
    out = io.StringIO()
    assert main(["sync-status", str(tmp_path / "logs"), "--backup-directory",
                 str(tmp_path / "bucket")], out=out) == 1
    stream = list_streams(tmp_path / "logs" / "acme")[0].name
    assert f"truncation: object acme/{stream}, seq {end + 1}:" in out.getvalue()
