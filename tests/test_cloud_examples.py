"""examples/s3_example.py and examples/gcs_example.py against the real local servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .servers import (
    DUMMY_ACCESS_KEY,
    DUMMY_REGION,
    DUMMY_SECRET_KEY,
    GCS_PROJECT,
    FakeGcsServer,
    MotoServer,
    create_gcs_bucket,
    create_s3_bucket,
)

pytest_plugins = ["tests.servers"]
ROOT = Path(__file__).resolve().parent.parent


def _start(script: str, log_dir: Path | None,
           extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run an example; without ``log_dir`` it logs into a new temporary directory."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "GCS_", "S3_")) and k != "IMMUTABLE_LOG_DIR"}
    env.update(extra_env)
    argv = [sys.executable, str(ROOT / "examples" / script)]
    if log_dir is not None:
        argv.append(str(log_dir))
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def _run(script: str, log_dir: Path | None, extra_env: dict[str, str]) -> dict[str, Any]:
    """Run an example that must succeed; return its JSON summary."""
    proc = _start(script, log_dir, extra_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_s3_example(moto_server: MotoServer, tmp_path: Path) -> None:
    create_s3_bucket(moto_server, "example-logs")
    summary = _run("s3_example.py", tmp_path / "logs", {
        "S3_BUCKET": "example-logs", "S3_REGION": DUMMY_REGION,
        "S3_ENDPOINT_URL": moto_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
    })
    assert summary["sync_status"] == "synced" and summary["cloud_blocks"] == 241
    assert summary["restored_entries"] == 241 and summary["restored_verified"] is True
    assert summary["replica"].startswith("s3://example-logs")


def test_gcs_example(fake_gcs_server: FakeGcsServer, tmp_path: Path) -> None:
    create_gcs_bucket(fake_gcs_server, "example-logs")
    summary = _run("gcs_example.py", tmp_path / "logs", {
        "GCS_BUCKET": "example-logs", "GCS_PROJECT_ID": GCS_PROJECT,
        "GCS_ENDPOINT_URL": fake_gcs_server.endpoint_url,
    })
    assert summary["synced"] is True and summary["sync_status"] == "synced"
    assert summary["cloud_blocks"] == 121 and summary["fetched_message"] == "export blocked"


def test_the_examples_run_again_against_the_same_bucket(
    moto_server: MotoServer, fake_gcs_server: FakeGcsServer, tmp_path: Path
) -> None:
    """Each run without LOG_DIR logs into a new temporary directory: its stream has the
    same name as the last run's, so it must be replicated apart from it."""
    create_s3_bucket(moto_server, "rerun-logs")
    create_gcs_bucket(fake_gcs_server, "rerun-logs")
    s3_env = {"S3_BUCKET": "rerun-logs", "S3_REGION": DUMMY_REGION,
              "S3_ENDPOINT_URL": moto_server.endpoint_url, "TMPDIR": str(tmp_path),
              "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY}
    gcs_env = {"GCS_BUCKET": "rerun-logs", "GCS_PROJECT_ID": GCS_PROJECT,
               "GCS_ENDPOINT_URL": fake_gcs_server.endpoint_url, "TMPDIR": str(tmp_path)}
    for _ in range(2):
        s3 = _run("s3_example.py", None, s3_env)
        assert s3["sync_status"] == "synced" and s3["restored_verified"] is True
        gcs = _run("gcs_example.py", None, gcs_env)
        assert gcs["sync_status"] == "synced" and gcs["cloud_blocks"] == 121


def test_the_examples_name_a_missing_bucket_without_a_traceback(
    moto_server: MotoServer, fake_gcs_server: FakeGcsServer, tmp_path: Path
) -> None:
    s3 = _start("s3_example.py", tmp_path / "s3-logs", {
        "S3_BUCKET": "no-such-bucket", "S3_REGION": DUMMY_REGION,
        "S3_ENDPOINT_URL": moto_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
    })
    gcs = _start("gcs_example.py", tmp_path / "gcs-logs", {
        "GCS_BUCKET": "no-such-bucket", "GCS_PROJECT_ID": GCS_PROJECT,
        "GCS_ENDPOINT_URL": fake_gcs_server.endpoint_url,
    })
    for proc, logs in ((s3, tmp_path / "s3-logs"), (gcs, tmp_path / "gcs-logs")):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "bucket 'no-such-bucket' does not exist" in proc.stderr
        assert f"create the bucket first; the log in {logs} keeps every entry" in proc.stderr
