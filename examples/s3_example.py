"""Replicate the chain to S3 and restore it: the disaster-recovery round trip.

Run against AWS (credentials from the standard boto3 chain)::

    S3_BUCKET=my-audit-logs S3_REGION=eu-west-1 python examples/s3_example.py [LOG_DIR]

or against any S3-compatible endpoint (the tests use a local moto_server)::

    S3_ENDPOINT_URL=http://127.0.0.1:5000 S3_BUCKET=logs AWS_ACCESS_KEY_ID=test \\
        AWS_SECRET_ACCESS_KEY=test python examples/s3_example.py

The bucket must exist (without it the script says so and exits 2). A replica holds one
log per tenant and stream name, so the fresh temporary log directory of each run is
replicated under its own prefix (the directory's name); a LOG_DIR given on the command
line is replicated without one. The script logs through ``dictConfig`` with cloud backup
on (the seed's ``ENABLE_CLOUD_BACKUP``/``BACKUP_PROVIDER``/``S3_BUCKET``/``S3_REGION``
variables work too), ships everything, checks the replica with ``verify_cloud_backup``,
restores the log into a fresh directory and prints a JSON summary. Exit status 0 means
the restored log verified.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
import tempfile
from pathlib import Path

import immutable_logging
from immutable_logging import ImmutableHandler
from immutable_logging.errors import BucketNotFoundError, ReplicationError
from immutable_logging.replication.cloud import restore_tenant, verify_cloud_backup

TENANT = "s3-demo"


def main() -> int:
    directory = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("IMMUTABLE_LOG_DIR")
    prefix = ""
    if not directory:  # a new log each run: keep its replica apart from earlier runs'
        directory = tempfile.mkdtemp(prefix="s3-example-")
        prefix = Path(directory).name
    bucket = os.environ.get("S3_BUCKET")
    if not bucket:
        sys.stderr.write("set S3_BUCKET (and S3_REGION / S3_ENDPOINT_URL as needed)\n")
        return 2
    immutable_logging.install()
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"chain": {
            "class": "immutable_logging.ImmutableHandler",
            "directory": directory,
            "tenant": TENANT,
            "enable_cloud_backup": True,
            "backup_provider": "s3",
            "s3_bucket": bucket,
            "s3_region": os.environ.get("S3_REGION"),
            "s3_endpoint_url": os.environ.get("S3_ENDPOINT_URL"),
            "backup_prefix": prefix,
            "backup_batch_size": 50,
        }},
        "loggers": {"payments": {"handlers": ["chain"], "level": "INFO", "propagate": False}},
    })
    log = logging.getLogger("payments")
    for i in range(240):
        log.info("payment %d accepted", i, extra={"amount": i * 3, "currency": "EUR"})
    total = sum(i * 3 for i in range(240))
    log.revenue("daily total", extra={"amount": total})  # type: ignore[attr-defined]
    handler = log.handlers[0]
    assert isinstance(handler, ImmutableHandler) and handler.backend is not None
    backend = handler.backend
    handler.close()  # ships what is pending (also what logging.shutdown() does at exit)
    restored_dir = Path(directory).with_name(Path(directory).name + "-restored")
    try:
        check = verify_cloud_backup(backend, directory, TENANT)
        restored = restore_tenant(backend, restored_dir, TENANT)
    except BucketNotFoundError as exc:
        sys.stderr.write(f"{exc}: create the bucket first; the log in {directory} keeps "
                         "every entry and ships it at the next start\n")
        return 2
    except ReplicationError as exc:  # unreachable, refused credentials, damaged replica
        sys.stderr.write(f"checking the replica failed: {exc}\n")
        return 1
    summary = {
        "directory": directory,
        "replica": backend.describe(),
        "sync_status": check["sync_status"],
        "cloud_blocks": check["cloud_blocks"],
        "restored_entries": restored["entries"],
        "restored_verified": restored["verified"],
    }
    print(json.dumps(summary))
    return 0 if check["sync_status"] == "synced" and restored["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
