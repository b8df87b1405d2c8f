"""``ImmutableLogger``: a small facade over a stdlib logger and an :class:`ImmutableHandler`.

::

    log = ImmutableLogger("./logs", tenantId="acme")
    log.revenue("Order paid", {"amount": 1250, "currency": "EUR"})
    log.query({"level": "REVENUE", "metadata.amount": {"$gte": 1000}})
    assert log.verify().ok
    log.shutdown()

Every call goes through :mod:`logging` (a private, non-propagating logger), so records are
exactly what a ``logging.getLogger(...).info(...)`` call would produce.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from .chain import flush_live_writers
from .encryption import EntryDecryptor
from .entry import METADATA_ATTR
from .errors import ConfigurationError, ImmutableLogError
from .handler import ImmutableHandler
from .layout import DEFAULT_TENANT
from .levels import AUDIT, REVENUE, SECURITY, SYSTEM, register_level_names
from .matching import DocumentQuery, Match, TextSearch, find_entries
from .own_loggers import own_logger
from .query import (
    Entry,
    ReadDamage,
    disk_usage,
    iter_entries,
    read_entries,
    summarise,
)
from .replication.backend import StorageBackend
from .replication.cloud import find_entry, restore_tenant, verify_cloud_backup
from .replication.replicator import Replicator
from .verify import VerificationReport, verify_tenant

_log = own_logger("immutable_logging.read")

_instances = itertools.count(1)


class ImmutableLogger:
    """Tamper-evident logger for one tenant.

    Args:
        directory: the log directory (default ``./logs``).
        tenantId: tenant id (``tenant_id`` and ``tenant`` are accepted too).
        level: the lowest level written (default DEBUG).
        **handler_options: passed to :class:`ImmutableHandler` (``durability``,
            ``max_bytes``, ``max_age``, ...).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] = "./logs",
        tenantId: str | None = None,  # the seed API's spelling
        *,
        tenant_id: str | None = None,
        tenant: str | None = None,
        level: int | str = logging.DEBUG,
        **handler_options: Any,
    ) -> None:
        register_level_names()  # level may be "AUDIT"; Logger.audit() & co need install()
        self.tenant = tenantId or tenant_id or tenant or DEFAULT_TENANT
        self.directory = os.fspath(directory)
        name = f"immutable_log.{self.tenant}.{next(_instances)}"
        self.logger = logging.getLogger(name)
        self.logger.propagate = False
        self.logger.setLevel(level)  # first: a bad level must not leave a handler open
        self.handler = ImmutableHandler(self.directory, self.tenant, **handler_options)
        self.logger.addHandler(self.handler)
        self._closed = False
        #: What the last read, search, query or stats left out (damaged lines, unreadable
        #: segments); empty when nothing was.
        self.last_read_damage: list[ReadDamage] = []

    # ------------------------------------------------------------------ writing
    def log(self, level: int, message: object, metadata: Mapping[str, Any] | None = None) -> None:
        """Log ``message`` at ``level`` with a metadata dict (a non-mapping is wrapped as
        ``{"value": metadata}`` rather than rejected, so nothing is lost).

        Raises:
            ImmutableLogError: the logger was shut down (:meth:`shutdown`); the record
                would otherwise be lost. Every level method (``info``, ``revenue``, ...)
                raises it too.
        """
        self._log(level, message, metadata)

    def exception(self, message: object, metadata: Mapping[str, Any] | None = None) -> None:
        """Log at ERROR with the exception being handled (call it in an ``except``)."""
        self._log(logging.ERROR, message, metadata, exc_info=True)

    def _log(self, level: int, message: object, metadata: Mapping[str, Any] | None,
             exc_info: bool = False) -> None:
        """What every public method runs: the record's call site is their caller's."""
        if self._closed:
            raise ImmutableLogError(
                f"ImmutableLogger {self.logger.name!r} (tenant {self.tenant!r}) is shut down: "
                "the record was not written; create a new ImmutableLogger to log again"
            )
        if metadata is None:
            extra: dict[str, Any] = {}
        elif isinstance(metadata, Mapping):
            extra = {METADATA_ATTR: dict(metadata)}
        else:
            extra = {METADATA_ATTR: {"value": metadata}}
        self.logger.log(level, message, extra=extra, stacklevel=3, exc_info=exc_info)

    def debug(self, message: object, metadata: Mapping[str, Any] | None = None) -> None:
        """Log at DEBUG."""
        self._log(logging.DEBUG, message, metadata)

    def info(self, message: object, metadata: Mapping[str, Any] | None = None) -> None:
        """Log at INFO."""
        self._log(logging.INFO, message, metadata)

    def warn(self, message: object, metadata: Mapping[str, Any] | None = None) -> None:
        """Log at WARNING."""
        self._log(logging.WARNING, message, metadata)

    warning = warn

    def error(self, message: object, metadata: Mapping[str, Any] | None = None) -> None:
        """Log at ERROR."""
        self._log(logging.ERROR, message, metadata)

    def critical(self, message: object, metadata: Mapping[str, Any] | None = None) -> None:
        """Log at CRITICAL."""
        self._log(logging.CRITICAL, message, metadata)

    def audit(self, message: object, metadata: Mapping[str, Any] | None = None) -> None:
        """Log at AUDIT."""
        self._log(AUDIT, message, metadata)

    def security(self, message: object, metadata: Mapping[str, Any] | None = None) -> None:
        """Log at SECURITY."""
        self._log(SECURITY, message, metadata)

    def revenue(self, message: object, metadata: Mapping[str, Any] | None = None) -> None:
        """Log at REVENUE."""
        self._log(REVENUE, message, metadata)

    def system(self, message: object, metadata: Mapping[str, Any] | None = None) -> None:
        """Log at SYSTEM."""
        self._log(SYSTEM, message, metadata)

    # ------------------------------------------------------------------ reading
    def _decryptor(self) -> EntryDecryptor | None:
        """The decryptor of the configured keys; None without a key (encrypted entries are
        then read undecrypted, see :mod:`~immutable_logging.query`)."""
        return self.handler.decryptor if self.handler.keyring is not None else None

    def _flush_for_reading(self) -> None:
        """Hand the entries this process logged to the tenant's segment files (all its
        writers of the tenant, not only this logger's), so that a read sees them."""
        if not self._closed:
            self.handler.flush()
        flush_live_writers(self.directory, self.tenant)

    def _entries(self, damage: list[ReadDamage]) -> Iterator[Entry]:
        self._flush_for_reading()
        return iter_entries(self.directory, self.tenant, decrypt=self._decryptor(),
                            damage=damage)

    def _left_out(self, damage: list[ReadDamage]) -> None:
        """Keep what the last read left out in :attr:`last_read_damage`, and warn."""
        self.last_read_damage = damage
        if damage:
            _log.warning("%d damaged lines or unreadable segments of tenant %r were left out "
                         "of the result (first: %s); run `immutable-log verify`",
                         len(damage), self.tenant, damage[0])

    def read(
        self,
        limit: int | None = 100,
        level: str | int | None = None,
        *,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[Entry]:
        """Up to ``limit`` entries (oldest first from ``offset``, or newest first).

        Every stream of the tenant is read (this logger's and other processes'), including
        the entries that a process killed before it closed left only in its stream's journal,
        as the stream's next writer will append them (see :mod:`~immutable_logging.query`);
        so are those of :meth:`search`, :meth:`query` and :meth:`stats`.

        Damaged lines and unreadable segments are left out, listed in
        :attr:`last_read_damage` and warned about (as by :meth:`search`, :meth:`query` and
        :meth:`stats`); :meth:`verify` says what happened to them."""
        damage: list[ReadDamage] = []
        entries = read_entries(self._entries(damage), limit=limit, level=level, offset=offset,
                               newest_first=newest_first)
        self._left_out(damage)
        return entries

    def search(
        self, text: str, *, case_sensitive: bool = False, limit: int | None = None,
        workers: int | None = None,
    ) -> list[Entry]:
        """Entries whose message, metadata or exception contains ``text``.

        ``limit``: at most this many (``None``: all; a negative limit is a QueryError).
        ``workers``: see :func:`~immutable_logging.matching.find_entries`.
        """
        return self._find(TextSearch(text, case_sensitive), limit, workers)

    def query(
        self, document: Mapping[str, Any], *, limit: int | None = None,
        workers: int | None = None,
    ) -> list[Entry]:
        """Entries matching a MongoDB-style query document (see :mod:`.query`); ``limit``
        and ``workers`` as for :meth:`search`."""
        return self._find(DocumentQuery(document), limit, workers)

    def _find(self, match: Match, limit: int | None, workers: int | None) -> list[Entry]:
        self._flush_for_reading()
        damage: list[ReadDamage] = []
        found = find_entries(self.directory, self.tenant, match, decrypt=self._decryptor(),
                             limit=limit, workers=workers, damage=damage)
        self._left_out(damage)
        return found

    def stats(self) -> dict[str, Any]:
        """Entry counts by level/logger/stream, time span, disk usage and handler health."""
        damage: list[ReadDamage] = []
        result = summarise(self._entries(damage))
        self._left_out(damage)
        result.update(disk_usage(self.directory, self.tenant))
        writer = self.handler.writer
        result.update(
            {
                "tenant": self.tenant,
                "stream": writer.stream,
                "last_seq": writer.seq,
                "chain_head": writer.head,
                "handler_errors": self.handler.error_count,
            }
        )
        return result

    def verify(
        self,
        *,
        parse: bool = False,
        seed: bytes | str | None = None,
        checkpoint_key: str | None = None,
        anchors: str | os.PathLike[str] | list[str | os.PathLike[str]] | None = None,
        workers: int | None = None,
    ) -> VerificationReport:
        """Verify every stream of this tenant; see :class:`VerificationReport`.

        Args:
            parse: also check that every payload is canonical JSON.
            seed: the sealing seed printed by ``immutable-log keygen`` (kept off-host):
                also check every forward-secure seal.
            checkpoint_key: the checkpoint verifier key (vkey): check signed checkpoints,
                those under ``anchors`` (e.g. a copy of the replica) included.
            workers: worker processes for sealed segments (``1``: none; see
                :func:`~immutable_logging.verify.verify_stream`).

        With an encryption key configured, every encrypted entry is also authenticated (a
        ciphertext whose hash was recomputed after tampering is ``decryption_failed``).
        """
        self._flush_for_reading()
        return verify_tenant(
            self.directory,
            self.tenant,
            parse=parse,
            decrypt=self._decryptor(),
            seed=seed,
            checkpoint_key=checkpoint_key,
            anchors=anchors,
            workers=workers,
        )

    # ------------------------------------------------------------------ cloud backup
    def _backend(self) -> StorageBackend:
        backend = self.handler.backend
        if backend is None:
            raise ConfigurationError(
                "cloud backup is not enabled (enable_cloud_backup=True or ENABLE_CLOUD_BACKUP)"
            )
        return backend

    def sync_status(self) -> dict[str, Any]:
        """The replicator's progress: replicated and pending entries, errors, PUTs, the
        ``state`` (``"stalled"`` while a request to the bucket hangs) and the request in
        flight (``in_flight_op``, ``in_flight_seconds``); see
        :class:`~immutable_logging.replication.replicator.ReplicationStatus`."""
        replicator = self._replicator()
        replicator.pending_count()
        return replicator.status.to_dict()

    def flush_backup(self, timeout: float = 30.0) -> bool:
        """Ship everything written so far now; True when nothing is left pending."""
        replicator = self._replicator()
        self.handler.flush()
        return replicator.try_pump(force=True) and replicator.pending_count() == 0

    def _replicator(self) -> Replicator:
        """This process's replicator (in a forked child that has not logged yet, the one
        of the child's own stream, opened now: the parent's stream stays the parent's)."""
        self._backend()  # raises when cloud backup is off
        if self.handler.replicator is None and not self._closed:
            self.handler._live_writer()
        replicator = self.handler.replicator
        if replicator is None:
            raise ImmutableLogError(
                f"ImmutableLogger {self.logger.name!r} is shut down and has no replicator")
        return replicator

    def verify_cloud_backup(self) -> dict[str, Any]:
        """Compare the replica with the local log and verify the replica's chain.

        Returns ``local_blocks``, ``cloud_blocks``, ``missing_blocks``, ``sync_status``,
        ``sync_percentage`` (blocks are entries) plus ``remote_entries``,
        ``differing_blocks``, ``remote_only_blocks``, ``remote_ok`` and ``problems``; see
        :func:`~immutable_logging.replication.cloud.verify_cloud_backup` for what each
        means.
        """
        backend = self._backend()
        self._flush_for_reading()
        return verify_cloud_backup(backend, self.directory, self.tenant)

    def restore_from_cloud(
        self, directory: str | os.PathLike[str] | None = None, *, block_hash: str | None = None
    ) -> dict[str, Any] | None:
        """Rebuild this tenant's log from the replica into an empty ``directory`` (not the
        logger's own: it writes there), or, with ``block_hash``, return that single entry
        (decrypted when a key is configured; None when the replica has no such entry).

        Raises:
            ConfigurationError: no ``directory``, or the logger's own directory.
            ObjectNotFoundError, RemoteIntegrityError: see
                :func:`~immutable_logging.replication.cloud.restore_tenant`.
        """
        backend = self._backend()
        if block_hash is not None:
            decrypt = self._decryptor()
            return find_entry(backend, self.tenant, block_hash, decrypt)
        if directory is None:
            raise ConfigurationError("restore_from_cloud needs a target directory (empty)")
        if os.path.realpath(directory) == os.path.realpath(self.directory):
            raise ConfigurationError(
                f"restore_from_cloud cannot restore into {self.directory}: this logger writes "
                "its own stream there. Restore before opening a logger on it (`immutable-log "
                "restore DIR --tenant T ...` or replication.cloud.restore_tenant), or into "
                "another directory")
        return restore_tenant(backend, directory, self.tenant)

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        """Flush, sync and close. Idempotent.

        Afterwards logging calls raise :class:`ImmutableLogError`; reading, querying,
        ``stats`` and ``verify`` keep working (they read the files).
        """
        if self._closed:
            return
        self._closed = True
        self.logger.removeHandler(self.handler)
        self.handler.close()

    close = shutdown

    def __enter__(self) -> ImmutableLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()
