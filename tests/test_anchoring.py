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
from immutable_logging.errors import ConfigurationError
from immutable_logging.layout import list_segments, list_streams
from immutable_logging.replication.local import LocalDirectoryBackend
from immutable_logging.seal import CheckpointSigner, generate_signing_key
from immutable_logging.verify import verify_tenant


def test_replicated_checkpoints_detect_a_full_local_rewrite(tmp_path: Path) -> None:
    logs, bucket = tmp_path / "logs", tmp_path / "bucket"
    private = generate_signing_key()
    vkey = CheckpointSigner(private, "immutable-logging").vkey
    with ImmutableLogger(logs, tenantId="acme", checkpoint_key=private,
                         enable_cloud_backup=True, backup_directory=str(bucket),
                         backup_batch_size=5) as log:
        for i in range(8):
            log.info(f"payment {i}", {"amount": i})
        log.handler.checkpoint()
        for i in range(8, 12):
            log.info(f"payment {i}", {"amount": i})
        log.handler.checkpoint()
        assert log.flush_backup()
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
