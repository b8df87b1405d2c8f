"""Replication to S3 against a real moto_server started on 127.0.0.1 by the fixtures."""

from __future__ import annotations

import filecmp
import gzip
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from immutable_logging import ImmutableLogger
from immutable_logging.errors import RemoteIntegrityError
from immutable_logging.replication.replicator import cursor_path
from immutable_logging.replication.s3 import S3Backend

from .servers import (
    DUMMY_ACCESS_KEY,
    DUMMY_REGION,
    DUMMY_SECRET_KEY,
    MotoAuthServer,
    MotoServer,
    create_s3_bucket,
    s3_client,
)

pytest_plugins = ["tests.servers"]


def _options(server: MotoServer, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "enable_cloud_backup": True,
        "backup_max_batch_factor": 1,  # exact batch names in the assertions
        "backup_provider": "s3",
        "s3_bucket": bucket,
        "s3_region": DUMMY_REGION,
        "s3_endpoint_url": server.endpoint_url,
        "aws_access_key_id": DUMMY_ACCESS_KEY,
        "aws_secret_access_key": DUMMY_SECRET_KEY,
        **extra,
    }


def _same_tree(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir() if p.name.endswith((".log", ".gz")))
    assert names == sorted(p.name for p in b.iterdir() if p.name.endswith((".log", ".gz")))
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors


def test_10k_entries_replicated_and_restored_byte_identical(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    create_s3_bucket(moto_server, "logs")
    options = _options(moto_server, "logs", backup_batch_size=100, max_bytes=400_000)
    with ImmutableLogger(tmp_path / "logs", tenantId="acme", **options) as log:
        for i in range(10_000):
            log.info("payment %d", {"i": i, "amount": i % 997})
        assert log.flush_backup()
        status = log.sync_status()
        check = log.verify_cloud_backup()
        assert check["sync_status"] == "synced" and check["sync_percentage"] == 100.0
        assert check["local_blocks"] == check["cloud_blocks"] == 10_000
        assert check["remote_ok"] is True
        entry = log.read(limit=1, offset=4321)[0]
        found = log.restore_from_cloud(block_hash=entry["hash"])
        assert found is not None and found["metadata"] == {"i": 4321, "amount": 4321 % 997}
        restored = log.restore_from_cloud(tmp_path / "restored")
    assert restored is not None and restored["verified"] and restored["entries"] == 10_000
    # Cost: at most one PUT per 100 entries for batches (+ archives of sealed segments).
    assert status["batches_uploaded"] <= 10_000 // 100 + restored["segments"]
    stream = next((tmp_path / "logs" / "acme").iterdir()).name
    _same_tree(tmp_path / "logs" / "acme" / stream, tmp_path / "restored" / "acme" / stream)
    head = s3_client(moto_server).head_object(
        Bucket="logs", Key=f"acme/{stream}/batches/000000000001-000000000100.jsonl.gz"
    )
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"]["first-seq"] == "1" and head["Metadata"]["last-seq"] == "100"
    assert len(head["Metadata"]["last-hash"]) == 64


def test_missing_bucket_is_a_clear_error_and_local_logging_continues(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    with ImmutableLogger(tmp_path / "logs", **_options(moto_server, "not-created-yet"),
                         backup_batch_size=10) as log:
        for i in range(25):
            log.info(f"while the bucket is missing {i}")
        assert log.flush_backup() is False
        status = log.sync_status()
        assert "BucketNotFoundError" in (status["last_error"] or "")
        assert status["state"] == "retrying" and status["replicated_seq"] == 0
        assert log.verify().ok and len(log.read(limit=None)) == 25
        # The bucket appears: everything catches up, nothing twice.
        create_s3_bucket(moto_server, "not-created-yet")
        assert log.handler.replicator is not None
        log.handler.replicator._retry_at = 0.0  # skip the back-off wait in the test
        assert log.flush_backup()
        assert log.verify_cloud_backup()["sync_status"] == "synced"


def test_bad_credentials_are_reported_not_raised(
    moto_auth_server: MotoAuthServer, tmp_path: Path
) -> None:
    create_s3_bucket(moto_auth_server, "locked-down")
    options = _options(moto_auth_server, "locked-down")
    options["aws_secret_access_key"] = "definitely-wrong"
    options["aws_access_key_id"] = moto_auth_server.credentials["aws_access_key_id"]
    with ImmutableLogger(tmp_path / "logs", **options) as log:
        log.info("still logged locally")
        assert log.flush_backup() is False
        assert "BackendAuthError" in (log.sync_status()["last_error"] or "")
        assert log.read()[0]["message"] == "still logged locally"


def test_server_down_mid_stream_then_back(moto_server: MotoServer, tmp_path: Path) -> None:
    create_s3_bucket(moto_server, "flaky")
    with ImmutableLogger(tmp_path / "logs", **_options(moto_server, "flaky"),
                         backup_batch_size=50) as log:
        for i in range(120):
            log.info(f"before outage {i}")
        assert log.flush_backup()
        moto_server.stop()
        for i in range(80):
            log.info(f"during outage {i}")
        started = time.monotonic()
        assert log.flush_backup() is False
        assert time.monotonic() - started < 30, "an outage must fail fast, not hang"
        assert "BackendUnavailableError" in (log.sync_status()["last_error"] or "")
        moto_server.start()  # moto keeps nothing in memory across a restart
        create_s3_bucket(moto_server, "flaky")
        assert log.handler.replicator is not None
        log.handler.replicator._retry_at = 0.0
        # The replica is empty again. Found by the DR audit: the replicator shipped on from
        # its cursor, so the replica lacked the first 120 entries for good. The reconcile
        # after the outage sees the lost batches and ships them again from the local log.
        assert log.flush_backup()
        check = log.verify_cloud_backup()
        assert check["problems"] == [] and check["sync_status"] == "synced", check
        assert (check["missing_blocks"], check["cloud_blocks"]) == (0, 200)


def test_a_hole_in_the_bucket_is_filled_without_a_cursor(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    """A batch deleted from the bucket and the replication cursor lost: the next start
    ships the hole again from the local log and goes on (it stopped at the hole)."""
    create_s3_bucket(moto_server, "holey")
    options = _options(moto_server, "holey", backup_batch_size=10)
    with ImmutableLogger(tmp_path / "logs", **options) as log:
        for i in range(30):
            log.info(f"before {i}")
        assert log.flush_backup()
        replicator = log.handler.replicator
        assert replicator is not None
        stream, cursor = replicator.stream, cursor_path(replicator.stream_dir,
                                                        replicator.backend)
    key = f"default/{stream}/batches/000000000011-000000000020.jsonl.gz"
    s3_client(moto_server).delete_object(Bucket="holey", Key=key)
    cursor.unlink()
    with ImmutableLogger(tmp_path / "logs", **options) as log:
        assert log.handler.writer.stream == stream
        log.info("after")
        assert log.flush_backup(), log.sync_status()
        status = log.sync_status()
        check = log.verify_cloud_backup()
    assert (status["state"], status["replicated_seq"]) == ("ok", 31)
    assert check["problems"] == [] and check["sync_status"] == "synced", check
    names = sorted(o["Key"] for o in s3_client(moto_server).list_objects_v2(
        Bucket="holey", Prefix=f"default/{stream}/batches/")["Contents"])
    assert [n.rsplit("/", 1)[1][:25] for n in names] == [
        "000000000001-000000000010", "000000000011-000000000020",
        "000000000021-000000000030", "000000000031-000000000031"]


def test_object_lock_prevents_deleting_a_replicated_batch(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    create_s3_bucket(moto_server, "vault", object_lock=True)
    with ImmutableLogger(tmp_path / "logs", **_options(moto_server, "vault",
                         s3_object_lock_days=1), backup_batch_size=5) as log:
        for i in range(5):
            log.audit(f"locked {i}")
        assert log.flush_backup()
        stream = log.handler.writer.stream
    client = s3_client(moto_server)
    key = f"default/{stream}/batches/000000000001-000000000005.jsonl.gz"
    head = client.head_object(Bucket="vault", Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(ClientError) as info:
        client.delete_object(Bucket="vault", Key=key, VersionId=head["VersionId"],
                             BypassGovernanceRetention=True)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert gzip.decompress(client.get_object(Bucket="vault", Key=key)["Body"].read()).count(
        b"\n") == 5


def test_corrupted_remote_batch_is_reported_by_verify_and_restore(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    create_s3_bucket(moto_server, "plain")
    with ImmutableLogger(tmp_path / "logs", **_options(moto_server, "plain"),
                         backup_batch_size=10) as log:
        for i in range(30):
            log.info(f"entry {i}")
        assert log.flush_backup()
        stream = log.handler.writer.stream
        key = f"default/{stream}/batches/000000000011-000000000020.jsonl.gz"
        client = s3_client(moto_server)
        raw = gzip.decompress(client.get_object(Bucket="plain", Key=key)["Body"].read())
        client.put_object(Bucket="plain", Key=key,
                          Body=gzip.compress(raw.replace(b"entry 15", b"entry 99")))
        check = log.verify_cloud_backup()
        assert check["sync_status"] == "corrupted" and check["remote_ok"] is False
        assert {(p["key"], p["seq"], p["reason"]) for p in check["problems"]} >= {
            (key, 16, "hash_mismatch"),
        }
        with pytest.raises(RemoteIntegrityError, match="seq 16"):
            log.restore_from_cloud(tmp_path / "restored")


def test_constructing_with_an_unreachable_endpoint_does_no_network_io(tmp_path: Path) -> None:
    started = time.monotonic()
    backend = S3Backend("b", endpoint_url="http://127.0.0.1:9", aws_access_key_id="x",
                        aws_secret_access_key="y", region="us-east-1")
    with ImmutableLogger(tmp_path, enable_cloud_backup=True, backup_provider="s3",
                         s3_bucket="b", s3_endpoint_url="http://127.0.0.1:9",
                         backup_async=True) as log:
        log.info("x")
        assert time.monotonic() - started < 5
    assert backend.describe().startswith("s3://b")
