"""``ImmutableHandler``: the :class:`logging.Handler` that writes records into the chain.

Configure it like any handler, e.g. with :func:`logging.config.dictConfig`::

    "handlers": {
        "chain": {
            "class": "immutable_logging.ImmutableHandler",
            "directory": "/var/log/myapp",
            "tenant": "acme",
            "durability": "flush",
        }
    }

The handler never raises into the application: a failure goes through
:meth:`logging.Handler.handleError` (printed to stderr when ``logging.raiseExceptions``) and is
counted in :attr:`ImmutableHandler.error_count`. Records of this package's own loggers and of
the cloud client libraries (boto3, botocore, s3transfer, urllib3, google, grpc) are never
written: they would feed replication back into itself.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from .chain import ChainWriter
from .config import BackupConfig
from .encryption import EntryDecryptor, EntryEncryptor, KeySpec, build_keyring
from .entry import record_payload
from .errors import ConfigurationError, StreamLockedError
from .layout import validate_tenant
from .levels import register_level_names
from .replication.replicator import ReplicationStatus, Replicator

#: Logger name prefixes whose records the handler never writes.
EXCLUDED_LOGGERS = (
    "immutable_logging",
    "boto3",
    "botocore",
    "s3transfer",
    "urllib3",
    "google",
    "grpc",
)


class ImmutableHandler(logging.Handler):
    """Write every record as a hash-chained entry under ``directory/tenant``.

    Args:
        directory: the log directory (created if missing).
        tenant: tenant id; each tenant has its own directory and streams.
        level: the handler level.
        stream: a fixed stream name (default: the first free ``<host>.<slot>``).
        durability: ``none``, ``flush`` (default), ``group`` or ``always``.
        group_interval_ms: for ``group``, the longest time between syncs.
        max_bytes: rotate segments at this size (default 16 MiB; 0 = never).
        max_age: rotate segments after this many seconds (default: never).
        compress: gzip sealed segments (default True).
        buffer_bytes: write buffer size for ``none``/``group``.
        encryption_key: AES-256 key (base64 text, 32 bytes, a ``Key`` or ``Keyring``):
            encrypt message, metadata and exception text of every entry.
        encryption_key_env: name of an env var holding the base64 key instead.
        encryption_passphrase: derive the key with scrypt (salt kept in the tenant dir).
        previous_keys: retired keys, kept for reading older entries.
        **backup_options: cloud backup settings (``enable_cloud_backup``,
            ``backup_provider``, ``backup_async``, ``backup_batch_size``, ``s3_bucket``, ...;
            see :mod:`immutable_logging.config`). Environment variables fill the gaps.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] = "logs",
        tenant: str = "default",
        level: int | str = logging.NOTSET,
        *,
        stream: str | None = None,
        durability: str = "flush",
        group_interval_ms: float = 10.0,
        max_bytes: int = 16 * 1024 * 1024,
        max_age: float | None = None,
        compress: bool = True,
        buffer_bytes: int = 256 * 1024,
        encryption_key: KeySpec | None = None,
        encryption_key_env: str | None = None,
        encryption_passphrase: str | None = None,
        previous_keys: tuple[KeySpec, ...] | list[KeySpec] = (),
        **backup_options: Any,
    ) -> None:
        super().__init__(level)
        register_level_names()
        if not directory:
            raise ConfigurationError("directory must be a non-empty path")
        self.directory = os.fspath(directory)
        self.tenant = validate_tenant(tenant)
        self._writer_options: dict[str, Any] = {
            "stream": stream,
            "durability": durability,
            "group_interval_ms": group_interval_ms,
            "max_bytes": max_bytes,
            "max_age": max_age,
            "compress": compress,
            "buffer_bytes": buffer_bytes,
        }
        self.keyring = build_keyring(
            Path(self.directory) / self.tenant,
            encryption_key=encryption_key,
            encryption_key_env=encryption_key_env,
            encryption_passphrase=encryption_passphrase,
            previous_keys=previous_keys,
        )
        self.decryptor = EntryDecryptor(self.keyring, self.tenant)
        self.error_count = 0
        self._open_lock = threading.Lock()
        # --- cloud backup: the replicator ships this process's stream from disk.
        self.backup = BackupConfig.from_options(backup_options, log_directory=self.directory)
        self.backend = self.backup.build_backend() if self.backup.enable_cloud_backup else None
        self.replicator: Replicator | None = None
        self.last_replication_status: ReplicationStatus | None = None
        self.writer = self._open_writer()

    def _open_writer(self, reopening: bool = False) -> ChainWriter:
        options = dict(self._writer_options)
        try:
            writer = ChainWriter(self.directory, self.tenant, **options)
        except StreamLockedError:
            if not reopening or options["stream"] is None:
                raise
            # After fork the parent keeps the fixed stream: the child gets its own.
            options["stream"] = f"{options['stream']}-{os.getpid()}"
            writer = ChainWriter(self.directory, self.tenant, **options)
        if self.keyring is not None:
            try:
                writer.payload_transform = EntryEncryptor(
                    self.keyring, Path(self.directory) / self.tenant, self.tenant, writer.stream
                )
            except BaseException:
                writer.close()
                raise
        if self.backend is not None:
            self.replicator = Replicator(
                self.backend,
                writer.stream_dir,
                self.tenant,
                batch_size=self.backup.backup_batch_size,
                flush_interval=self.backup.backup_flush_interval,
            )
            writer.add_commit_listener(self.replicator.notify)
            if self.backup.backup_async:
                self.replicator.start()
        return writer

    def _at_fork_reinit(self) -> None:
        # Called by logging in a forked child: a lock held by another parent thread at fork
        # time would never be released in the child.
        super()._at_fork_reinit()  # type: ignore[misc]  # exists at runtime, not in typeshed
        self._open_lock = threading.Lock()

    def _live_writer(self) -> ChainWriter:
        writer = self.writer
        if writer.closed:
            with self._open_lock:
                writer = self.writer
                if writer.closed:
                    writer = self.writer = self._open_writer(reopening=True)
        return writer

    def emit(self, record: logging.LogRecord) -> None:
        """Chain the record. Never raises: errors go to :meth:`handleError`."""
        try:
            if record.name.startswith(EXCLUDED_LOGGERS) and _is_excluded(record.name):
                return
            writer = self.writer
            if writer.closed:
                writer = self._live_writer()
            writer.append(record_payload(record, self.tenant))
            replicator = self.replicator
            if replicator is not None and not self.backup.backup_async:
                writer.flush()
                if not replicator.try_pump(force=True):
                    self.error_count += 1  # the entry is on disk; it ships on a later call
        except RecursionError:  # same policy as logging.StreamHandler
            raise
        except Exception:
            self.error_count += 1
            self.handleError(record)

    def flush(self) -> None:
        """Hand buffered entries to the OS (and sync them for ``group``/``always``)."""
        writer = self.writer
        if not writer.closed:
            try:
                writer.flush()
            except Exception:
                self.error_count += 1
                raise

    def sync(self) -> None:
        """Make every entry written so far durable on disk."""
        writer = self.writer
        if not writer.closed:
            writer.sync()

    def close(self) -> None:
        """Flush, sync and release the stream. Idempotent."""
        try:
            self.writer.close()
            if self.replicator is not None:
                self.last_replication_status = self.replicator.close(
                    self.backup.backup_close_timeout
                )
        finally:
            super().close()

    def __repr__(self) -> str:
        return (
            f"<ImmutableHandler {self.directory}/{self.tenant}/{self.writer.stream} "
            f"({logging.getLevelName(self.level)})>"
        )


def _is_excluded(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in EXCLUDED_LOGGERS)
