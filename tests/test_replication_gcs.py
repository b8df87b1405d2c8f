"""Replication to GCS against a real fake-gcs-server started on 127.0.0.1 by the fixtures."""

from __future__ import annotations

import gzip
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from immutable_logging import ImmutableLogger
from immutable_logging.replication.cloud import remote_streams
from immutable_logging.replication.gcs import GCSBackend

from .servers import GCS_PROJECT, FakeGcsServer, create_gcs_bucket, gcs_client

pytest_plugins = ["tests.servers"]


def _options(server: FakeGcsServer, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "enable_cloud_backup": True,
        "backup_max_batch_factor": 1,  # exact batch names in the assertions
        "backup_provider": "gcs",
        "gcs_bucket": bucket,
        "gcs_project_id": GCS_PROJECT,
        "gcs_endpoint_url": server.endpoint_url,
        **extra,
    }


def test_replicate_verify_and_restore(fake_gcs_server: FakeGcsServer, tmp_path: Path) -> None:
    create_gcs_bucket(fake_gcs_server, "gcs-logs")
    with ImmutableLogger(tmp_path / "logs", tenantId="t1", **_options(fake_gcs_server, "gcs-logs"),
                         max_bytes=50_000) as log:
        for i in range(1_500):
            log.security("event", {"i": i})
        assert log.flush_backup()
        check = log.verify_cloud_backup()
        assert (check["sync_status"], check["cloud_blocks"]) == ("synced", 1_500)
        restored = log.restore_from_cloud(tmp_path / "restored")
    assert restored is not None and restored["verified"] and restored["entries"] == 1_500
    blob = gcs_client(fake_gcs_server).bucket("gcs-logs").get_blob(
        f"t1/{log.handler.writer.stream}/batches/000000000001-000000000100.jsonl.gz")
    assert blob.metadata["last-seq"] == "100"


def test_server_killed_mid_stream_then_restarted_all_synced_no_duplicates(
    fake_gcs_server_persistent: FakeGcsServer, tmp_path: Path
) -> None:
    server = fake_gcs_server_persistent
    create_gcs_bucket(server, "dr")
    with ImmutableLogger(tmp_path / "logs", **_options(server, "dr"), backup_batch_size=100,
                         backup_flush_interval=0.2) as log:
        replicator = log.handler.replicator
        assert replicator is not None

        def produce(start: int, count: int) -> None:
            for i in range(start, start + count):
                log.info("dr %d", {"i": i})

        writer = threading.Thread(target=produce, args=(0, 3_000))
        writer.start()
        deadline = time.monotonic() + 20
        while replicator.cursor.last_seq < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stop()  # killed while batches are being shipped
        writer.join()
        produce(3_000, 1_000)
        assert replicator.cursor.last_seq < 4_000
        server.start()
        replicator._retry_at = 0.0
        assert log.flush_backup()
        check = log.verify_cloud_backup()
    assert check["sync_status"] == "synced" and check["sync_percentage"] == 100.0
    assert check["local_blocks"] == check["cloud_blocks"] == check["remote_entries"] == 4_000
    assert check["problems"] == []  # no overlap, no duplicate, no gap
    backend = GCSBackend("dr", project=GCS_PROJECT, endpoint_url=server.endpoint_url)
    names = next(iter(remote_streams(backend, "default").values()))
    covered = [seq for n in names for seq in range(n.first_seq, n.last_seq + 1)]
    assert covered == list(range(1, 4_001)), "every entry exactly once"


@pytest.mark.parametrize("body", [gzip.compress(b"somebody else's bytes\n"), b"not gzip at all"])
def test_conflicting_remote_object_stops_replication(
    fake_gcs_server: FakeGcsServer, tmp_path: Path, body: bytes
) -> None:
    create_gcs_bucket(fake_gcs_server, "conflict")
    with ImmutableLogger(tmp_path / "logs", **_options(fake_gcs_server, "conflict"),
                         backup_batch_size=5) as log:
        stream = log.handler.writer.stream
        gcs_client(fake_gcs_server).bucket("conflict").blob(
            f"default/{stream}/batches/000000000001-000000000005.jsonl.gz"
        ).upload_from_string(body)
        for i in range(5):
            log.info(f"mine {i}")
        assert log.flush_backup() is False
        status = log.sync_status()
        assert status["state"] == "stopped"
        error = status["last_error"] or ""
        assert error.startswith("RemoteIntegrityError")
        assert "000000000001-000000000005.jsonl.gz" in error
        assert log.verify().ok
