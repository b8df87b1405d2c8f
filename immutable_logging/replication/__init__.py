"""Replication of sealed log batches to write-once storage backends.

The backends share one contract, :class:`StorageBackend` (conditional write-once
``put_if_absent``, ``get``, ``head``, sorted and paginated ``list``). They import their
cloud SDKs lazily, so importing this package never needs boto3 or google-cloud-storage.
"""

from __future__ import annotations

from immutable_logging.replication.backend import ObjectNotFoundError, StorageBackend
from immutable_logging.replication.gcs import GCSBackend
from immutable_logging.replication.local import LocalDirectoryBackend
from immutable_logging.replication.s3 import S3Backend

__all__ = [
    "GCSBackend",
    "LocalDirectoryBackend",
    "ObjectNotFoundError",
    "S3Backend",
    "StorageBackend",
]
