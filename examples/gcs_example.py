"""Replicate the chain to Google Cloud Storage with the facade, then restore one entry.

Run against GCS (application default credentials)::

    GCS_BUCKET=my-audit-logs GCS_PROJECT_ID=my-project python examples/gcs_example.py [LOG_DIR]

or against a local emulator (the tests use fake-gcs-server)::

    GCS_ENDPOINT_URL=http://127.0.0.1:4443 GCS_BUCKET=logs GCS_PROJECT_ID=test \\
        python examples/gcs_example.py

The bucket must exist (without it the script says so and exits 2). Uploads use
``if_generation_match=0``, so an object is never overwritten. A replica holds one log
per tenant and stream name, so the fresh temporary log directory of each run is
replicated under its own prefix (the directory's name); a LOG_DIR given on the command
line is replicated without one. Prints a JSON summary; exit status 0 means the replica
is complete and the entry fetched by hash from it is the one that was logged.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from immutable_logging import ImmutableLogger
from immutable_logging.errors import BucketNotFoundError, ReplicationError

TENANT = "gcs-demo"


def main() -> int:
    directory = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("IMMUTABLE_LOG_DIR")
    prefix = ""
    if not directory:  # a new log each run: keep its replica apart from earlier runs'
        directory = tempfile.mkdtemp(prefix="gcs-example-")
        prefix = Path(directory).name
    if not os.environ.get("GCS_BUCKET"):
        sys.stderr.write("set GCS_BUCKET (and GCS_PROJECT_ID / GCS_ENDPOINT_URL as needed)\n")
        return 2
    with ImmutableLogger(
        directory,
        tenantId=TENANT,
        enable_cloud_backup=True,
        backup_provider="gcs",  # GCS_BUCKET / GCS_PROJECT_ID come from the environment
        gcs_endpoint_url=os.environ.get("GCS_ENDPOINT_URL"),
        backup_prefix=prefix,
        backup_batch_size=25,
    ) as log:
        for i in range(120):
            log.audit("document viewed", {"doc": f"D-{i}", "user": "alice"})
        log.security("export blocked", {"doc": "D-7", "user": "mallory"})
        wanted = log.search("export blocked")[0]
        synced = log.flush_backup()
        try:
            check = log.verify_cloud_backup()
            fetched = log.restore_from_cloud(block_hash=wanted["hash"])
        except BucketNotFoundError as exc:
            sys.stderr.write(f"{exc}: create the bucket first; the log in {directory} keeps "
                             "every entry and ships it at the next start\n")
            return 2
        except ReplicationError as exc:  # unreachable, refused credentials, damaged replica
            sys.stderr.write(f"checking the replica failed: {exc}\n")
            return 1
    summary = {
        "directory": directory,
        "synced": synced,
        "sync_status": check["sync_status"],
        "cloud_blocks": check["cloud_blocks"],
        "fetched_message": fetched["message"] if fetched else None,
    }
    print(json.dumps(summary))
    ok = synced and check["sync_status"] == "synced" and fetched is not None and (
        fetched["hash"] == wanted["hash"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
