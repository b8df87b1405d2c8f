"""Cloud-backup settings: keyword arguments, with the seed's environment variables as defaults.

Environment variables (a keyword argument always wins):

=====================  =====================================  ===================
variable               keyword                                default
=====================  =====================================  ===================
ENABLE_CLOUD_BACKUP    ``enable_cloud_backup``                false
BACKUP_PROVIDER        ``backup_provider``                    ``local``
BACKUP_BATCH_SIZE      ``backup_batch_size``                  100
S3_BUCKET              ``s3_bucket``
S3_REGION              ``s3_region``
GCS_BUCKET             ``gcs_bucket``
GCS_PROJECT_ID         ``gcs_project_id``
=====================  =====================================  ===================

Further keywords: ``backup_async`` (default True), ``backup_flush_interval`` (seconds a
partial batch may wait, default 5), ``backup_directory`` (the local bucket directory,
default ``<log directory>-backup``), ``backup_prefix``, ``aws_access_key_id``,
``aws_secret_access_key``, ``s3_endpoint_url``, ``s3_sse`` (``AES256`` default,
``aws:kms``, ``aws:kms:dsse``, or None or ``"none"`` for no SSE header), ``s3_kms_key_id``,
``s3_object_lock_days``, ``gcs_endpoint_url``, ``gcs_credentials``, ``backup_close_timeout``
(seconds ``close()`` may spend shipping), ``backup_max_batch_factor`` (while a backlog
waits, batches may hold up to this many times ``backup_batch_size`` entries: fewer PUTs,
never more; 1 keeps every batch exact), ``backup_stall_after`` (seconds one request may hang
before the replication status says ``"stalled"``, default 10).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigurationError
from .replication.backend import StorageBackend
from .replication.replicator import DEFAULT_MAX_BATCH_FACTOR, DEFAULT_STALL_AFTER
from .replication.s3 import SSE_VALUES

PROVIDERS = ("local", "s3", "gcs")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

_ENV = {
    "enable_cloud_backup": "ENABLE_CLOUD_BACKUP",
    "backup_provider": "BACKUP_PROVIDER",
    "backup_batch_size": "BACKUP_BATCH_SIZE",
    "s3_bucket": "S3_BUCKET",
    "s3_region": "S3_REGION",
    "gcs_bucket": "GCS_BUCKET",
    "gcs_project_id": "GCS_PROJECT_ID",
}


def _sse_option(value: Any) -> str | None:
    """``s3_sse`` as the S3 backend takes it: the text ``"none"`` (or ``""``) is None, as
    settings files cannot spell None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if value not in SSE_VALUES:
        raise ConfigurationError(
            f"s3_sse must be one of {', '.join(SSE_VALUES)} or None (also spelt 'none': "
            f"no server-side encryption header), not {value!r}"
        )
    return str(value)


@dataclass
class BackupConfig:
    """Validated cloud-backup settings (see the module doc for every option)."""

    enable_cloud_backup: bool = False
    backup_provider: str = "local"
    backup_async: bool = True
    backup_batch_size: int = 100
    backup_flush_interval: float = 5.0
    backup_max_batch_factor: int = DEFAULT_MAX_BATCH_FACTOR
    backup_close_timeout: float = 10.0
    backup_stall_after: float = DEFAULT_STALL_AFTER
    backup_directory: str | None = None
    backup_prefix: str = ""
    s3_bucket: str | None = None
    s3_region: str | None = None
    s3_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    s3_sse: str | None = "AES256"
    s3_kms_key_id: str | None = None
    s3_object_lock_days: int | None = None
    gcs_bucket: str | None = None
    gcs_project_id: str | None = None
    gcs_endpoint_url: str | None = None
    gcs_credentials: Any = None

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        *,
        log_directory: str,
        environ: Mapping[str, str] | None = None,
    ) -> BackupConfig:
        """Build from keyword options, filling the gaps from environment variables."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(f"unknown option(s): {', '.join(unknown)}")
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in _ENV.items():
            if options.get(name) is None and env.get(var) not in (None, ""):
                values[name] = env[var]
        # None means "not given" only where an environment variable could fill it in
        # (s3_sse=None, for example, really means: no server-side encryption header).
        values.update({k: v for k, v in options.items() if v is not None or k not in _ENV})
        config = cls(**values)
        config._normalise(log_directory)
        return config

    def _normalise(self, log_directory: str) -> None:
        self.enable_cloud_backup = as_bool(self.enable_cloud_backup, "enable_cloud_backup")
        self.backup_async = as_bool(self.backup_async, "backup_async")
        self.backup_batch_size = as_int(self.backup_batch_size, "backup_batch_size", 1)
        self.backup_max_batch_factor = as_int(
            self.backup_max_batch_factor, "backup_max_batch_factor", 1
        )
        provider = str(self.backup_provider).lower()
        if provider not in PROVIDERS:
            raise ConfigurationError(
                f"backup_provider must be one of {', '.join(PROVIDERS)}, got {provider!r}"
            )
        self.backup_provider = provider
        self.backup_flush_interval = as_positive(self.backup_flush_interval,
                                                 "backup_flush_interval")
        self.backup_close_timeout = as_positive(self.backup_close_timeout,
                                                "backup_close_timeout")
        self.backup_stall_after = as_positive(self.backup_stall_after, "backup_stall_after")
        self.s3_sse = _sse_option(self.s3_sse)
        if self.s3_object_lock_days is not None:
            self.s3_object_lock_days = as_int(self.s3_object_lock_days, "s3_object_lock_days", 1)
        if self.backup_directory is None:
            self.backup_directory = os.path.abspath(log_directory).rstrip("/") + "-backup"
        if self.enable_cloud_backup:
            if provider == "s3" and not self.s3_bucket:
                raise ConfigurationError("backup_provider 's3' needs s3_bucket (or S3_BUCKET)")
            if provider == "gcs" and not self.gcs_bucket:
                raise ConfigurationError("backup_provider 'gcs' needs gcs_bucket (or GCS_BUCKET)")

    def build_backend(self) -> StorageBackend:
        """The storage backend these settings describe (no network I/O happens here)."""
        if self.backup_provider == "s3":
            from .replication.s3 import S3Backend

            assert self.s3_bucket is not None
            return S3Backend(
                self.s3_bucket,
                prefix=self.backup_prefix,
                region=self.s3_region,
                endpoint_url=self.s3_endpoint_url,
                aws_access_key_id=self.aws_access_key_id,
                aws_secret_access_key=self.aws_secret_access_key,
                sse=self.s3_sse,  # type: ignore[arg-type]
                kms_key_id=self.s3_kms_key_id,
                object_lock_days=self.s3_object_lock_days,
            )
        if self.backup_provider == "gcs":
            from .replication.gcs import GCSBackend

            assert self.gcs_bucket is not None
            return GCSBackend(
                self.gcs_bucket,
                prefix=self.backup_prefix,
                project=self.gcs_project_id,
                credentials=self.gcs_credentials,
                endpoint_url=self.gcs_endpoint_url,
            )
        from .replication.local import LocalDirectoryBackend

        assert self.backup_directory is not None
        return LocalDirectoryBackend(self.backup_directory, prefix=self.backup_prefix)


def as_bool(value: Any, name: str) -> bool:
    """An option that is a switch: a bool, or text such as ``"false"``/``"1"``/``"on"``
    (from an environment variable or an INI/YAML ``LOGGING`` setting).

    Raises:
        ConfigurationError: anything else, naming the option.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")


def as_int(value: Any, name: str, minimum: int) -> int:
    """An option that is a whole number ``>= minimum`` (an int, a whole float or its
    decimal text; never a bool).

    Raises:
        ConfigurationError: anything else, naming the option.
    """
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}") from None
    fractional = isinstance(value, float) and value != number
    if isinstance(value, bool) or number < minimum or fractional:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def as_positive(value: Any, name: str) -> float:
    """An option that is a finite number ``> 0`` (or its decimal text; never a bool).

    Raises:
        ConfigurationError: anything else (NaN and infinity included), naming the option.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
    return number
