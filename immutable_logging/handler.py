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

import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .chain import ChainWriter, exit_started, threads_can_start
from .checkpoint import DEFAULT_KEY_NAME, Checkpointer, load_signing_key
from .config import BackupConfig, as_bool, as_int, as_positive
from .encryption import (
    EntryDecryptor,
    EntryEncryptor,
    KeySpec,
    build_keyring,
    encryption_markers,
)
from .entry import record_payload
from .errors import ConfigurationError, ImmutableLogError, StreamLockedError
from .fileio import make_log_directory
from .layout import validate_tenant
from .levels import register_level_names
from .locks import owned_rlock
from .own_loggers import holding_back, own_logger, release, report_unheard
from .replication.replicator import ReplicationStatus, Replicator
from .seal import CheckpointSigner
from .sealing import (
    StreamSealer,
    check_seed_matches,
    init_tenant_sealing,
    load_grid,
    restored_seals_note,
    sealing_configured,
)

_log = own_logger("immutable_logging.handler")
#: ``Handler.handle`` returns the record that passed since Python 3.12, ``True`` before.
_HANDLE_RETURNS_RECORD = sys.version_info >= (3, 12)
_FILTERER_FILTER = logging.Filterer.filter

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

    Numbers and switches may be given as text (``"600"``, ``"false"``), as INI or YAML
    logging settings give them; any other value is a :class:`ConfigurationError` naming
    the option.

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
        buffer_bytes: write buffer size for ``none``/``group``; batch size of ``flush``
            (at most 256 KiB).
        encryption_key: AES-256 key (base64 text, 32 bytes, a ``Key`` or ``Keyring``):
            encrypt message, metadata and exception text of every entry.
        encryption_key_env: name of an env var holding the base64 key instead.
        encryption_passphrase: derive the key with scrypt (salt kept in the tenant dir).
        previous_keys: retired keys (one, or a list), kept for reading older entries.
        allow_cleartext: write cleartext entries into a tenant that holds encrypted ones.
            Without it, a handler opened on such a tenant with no key refuses every entry
            (each goes to :meth:`handleError` and is counted; see
            :attr:`cleartext_refusal`), so that a key missing at a restart cannot silently
            turn encryption off. Reading and verifying need no key.
        seal: seal every epoch with the tenant's forward-secure key (issue 3). Default: on
            when the tenant has a seal state (``immutable-log keygen``); ``True`` without
            one is an error; ``False`` turns sealing off.
        seal_seed: bootstrap only: create the tenant's seal state from this seed
            (``ils1-...``) when it has none. If a state exists, the seed must be the one
            that made it (checked against the state's genesis tag). A seed left in the
            application's configuration defeats forward security: prefer ``keygen``.
        seal_epoch_seconds: epoch length when ``seal_seed`` creates the state (default
            300); if given, it must equal an existing state's.
        seal_clock: time source for epochs (tests inject one; default ``time.time``).
        checkpoint_key: Ed25519 key that signs checkpoints: raw 32 bytes, base64 of them,
            PEM text, or the path of a PEM file. Enables signed checkpoints.
        checkpoint_key_name: the note key name (default ``immutable-logging``); the
            verifier key printed by ``keygen`` carries it.
        checkpoint_interval: seconds between background checkpoints (default 60; one is
            also written at close and by :meth:`checkpoint`).
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
        previous_keys: KeySpec | tuple[KeySpec, ...] | list[KeySpec] = (),
        allow_cleartext: bool = False,
        seal: bool | None = None,
        seal_seed: str | bytes | None = None,
        seal_epoch_seconds: float | None = None,
        seal_clock: Callable[[], float] | None = None,
        checkpoint_key: str | bytes | os.PathLike[str] | Ed25519PrivateKey | None = None,
        checkpoint_key_name: str = DEFAULT_KEY_NAME,
        checkpoint_interval: float = 60.0,
        **backup_options: Any,
    ) -> None:
        register_level_names()  # first: level may be "AUDIT" and the like
        super().__init__(level)
        if not directory:
            raise ConfigurationError("directory must be a non-empty path")
        self.directory = os.fspath(directory)
        self.tenant = validate_tenant(tenant)
        # dictConfig, Django and INI settings hand over text as often as numbers: "10" and
        # "false" mean what they say, anything else is an error naming the option.
        self._writer_options: dict[str, Any] = {
            "stream": stream,
            "durability": durability,
            "group_interval_ms": as_positive(group_interval_ms, "group_interval_ms"),
            "max_bytes": as_int(max_bytes, "max_bytes", 0),
            "max_age": None if max_age is None else as_positive(max_age, "max_age"),
            "compress": as_bool(compress, "compress"),
            "buffer_bytes": as_int(buffer_bytes, "buffer_bytes", 1),
        }
        allow_cleartext = as_bool(allow_cleartext, "allow_cleartext")
        seal = None if seal is None else as_bool(seal, "seal")
        if seal_epoch_seconds is not None:
            seal_epoch_seconds = as_positive(seal_epoch_seconds, "seal_epoch_seconds")
        make_log_directory(Path(self.directory) / self.tenant)  # a file in the way: say so
        self.keyring = build_keyring(
            Path(self.directory) / self.tenant,
            encryption_key=encryption_key,
            encryption_key_env=encryption_key_env,
            encryption_passphrase=encryption_passphrase,
            previous_keys=previous_keys,
        )
        # A tenant with encrypted entries and no key: a key missing at a restart must not
        # silently turn encryption off. The handler opens (reading and verifying need no
        # key) but refuses every entry, loudly; see _refuse_cleartext.
        self.cleartext_refusal: str | None = None
        if self.keyring is None and not allow_cleartext:
            markers = encryption_markers(Path(self.directory) / self.tenant)
            if markers:
                self.cleartext_refusal = (
                    f"tenant {self.tenant!r} in {self.directory} holds encrypted entries "
                    f"({markers[0]} exists) but no encryption key is configured: entries "
                    "are refused rather than written in clear. Give its key "
                    "(encryption_key, encryption_key_env or encryption_passphrase), or pass "
                    "allow_cleartext=True to add cleartext entries deliberately"
                )
                _log.error("%s", self.cleartext_refusal)
        self.decryptor = EntryDecryptor(self.keyring, self.tenant)
        self.error_count = 0
        self._open_lock = owned_rlock()
        # --- cloud backup: the replicator ships this process's stream from disk.
        self.backup = BackupConfig.from_options(backup_options, log_directory=self.directory)
        self.backend = self.backup.build_backend() if self.backup.enable_cloud_backup else None
        self.replicator: Replicator | None = None
        self.last_replication_status: ReplicationStatus | None = None
        # --- seals and checkpoints (issue 3)
        self._seal_clock: Callable[[], float] = seal_clock or time.time
        self.sealing = self._configure_sealing(seal, seal_seed, seal_epoch_seconds)
        checkpoint_interval = as_positive(checkpoint_interval, "checkpoint_interval")
        self._signer: CheckpointSigner | None = None
        if checkpoint_key is not None:
            self._signer = load_signing_key(checkpoint_key, checkpoint_key_name)
        self.checkpoint_interval = float(checkpoint_interval)
        self.checkpointer: Checkpointer | None = None
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_stop = threading.Event()
        self._checkpoint_thread: threading.Thread | None = None
        self.writer = self._open_writer()
        try:
            self._start_checkpointing()
        except BaseException:
            self.close()
            raise

    def _open_writer(self, reopening: bool = False) -> ChainWriter:
        options = dict(self._writer_options)
        threads = threads_can_start()
        if not threads or exit_started():
            # No flusher will ever write a buffer or a journal batch (finalizing), or
            # nothing closes this writer (logging.shutdown ran): write each entry through.
            options["durability"] = "always"
        try:
            writer = ChainWriter(self.directory, self.tenant, **options)
        except StreamLockedError:
            if not reopening or options["stream"] is None:
                raise
            # After fork the parent keeps the fixed stream: the child gets its own.
            options["stream"] = f"{options['stream']}-{os.getpid()}"
            writer = ChainWriter(self.directory, self.tenant, **options)
        if self.cleartext_refusal is not None:
            writer.payload_transform = self._refuse_cleartext
        if self.keyring is not None:
            try:
                writer.payload_transform = EntryEncryptor(
                    self.keyring, Path(self.directory) / self.tenant, self.tenant, writer.stream
                ).transform
            except BaseException:
                writer.close()
                raise
        try:
            self._attach_seals_and_checkpoints(writer)
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
                max_batch_factor=self.backup.backup_max_batch_factor,
                stall_after=self.backup.backup_stall_after,
            )
            writer.add_commit_listener(self.replicator.notify)
            if self.backup.backup_async and threads:  # else shipped by the next start
                self.replicator.start()
        return writer

    def _refuse_cleartext(self, payload: dict[str, Any], seq: int, prev: str,
                          segment: int) -> bytes:
        """The writer's payload transform while :attr:`cleartext_refusal` is set: the entry
        is refused before the chain moves on."""
        raise ConfigurationError(self.cleartext_refusal)

    # ------------------------------------------------------------ seals and checkpoints
    def _configure_sealing(
        self, seal: bool | None, seed: str | bytes | None, epoch_seconds: float | None
    ) -> bool:
        tdir = Path(self.directory) / self.tenant
        restored = restored_seals_note(tdir) if seal is not False else None
        if restored is not None:
            if seal:  # asked for explicitly: a new state would break the restored seals
                raise ConfigurationError(restored)
            _log.error("%s", restored)  # never silently unsealed
            return False
        if seed is not None and seal is not False:
            if sealing_configured(tdir):
                check_seed_matches(tdir, seed)
            else:
                init_tenant_sealing(tdir, seed, epoch_seconds or 300.0, self._seal_clock)
        enabled = sealing_configured(tdir) if seal is None else seal
        if enabled:
            grid = load_grid(tdir)
            if grid is None:
                raise ConfigurationError(
                    f"seal=True but {tdir} has no seal state: run `immutable-log keygen` "
                    "or pass seal_seed"
                )
            if epoch_seconds is not None and epoch_seconds != grid.epoch_seconds:
                raise ConfigurationError(
                    f"seal_epoch_seconds={epoch_seconds} but the tenant's seal state uses "
                    f"{grid.epoch_seconds}"
                )
        return enabled

    def _attach_seals_and_checkpoints(self, writer: ChainWriter) -> None:
        if self.sealing:
            sealer = StreamSealer(
                Path(self.directory) / self.tenant,
                writer.stream_dir,
                self.tenant,
                chain_seq=writer.seq,
                clock=self._seal_clock,
            )
            writer.set_sealer(sealer, self._seal_clock)
        if self._signer is not None:
            self.checkpointer = Checkpointer(writer.stream_dir, self.tenant, self._signer)

    def _start_checkpointing(self) -> None:
        thread = self._checkpoint_thread
        if (self._signer is None or (thread is not None and thread.is_alive()
                                     and not self._checkpoint_stop.is_set())
                or not threads_can_start()):
            return
        # Each thread has its own stop event: one stopped by close() ends even when a
        # reopened writer starts the next one at once.
        stop = self._checkpoint_stop = threading.Event()
        self._checkpoint_thread = threading.Thread(
            target=self._checkpoint_loop, args=(stop,), name="immutable-logging-checkpoint",
            daemon=True,
        )
        self._checkpoint_thread.start()

    def _checkpoint_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.checkpoint_interval):
            try:
                self.checkpoint()
            except Exception as exc:  # keep going: the next run re-reads from disk
                self.error_count += 1
                _log.error("checkpoint of %s failed: %s", self.directory, exc)

    def checkpoint(self) -> Path | None:
        """Write a signed checkpoint of everything logged so far and return the note's
        path (None when checkpoints are off or nothing was logged since the last one)."""
        checkpointer = self.checkpointer
        if checkpointer is None:
            return None
        writer = self.writer
        if not writer.closed:
            writer.flush()
        with self._checkpoint_lock:
            return checkpointer.update()

    def _close_checkpointing(self, stop: threading.Event, thread: threading.Thread | None,
                             checkpointer: Checkpointer | None) -> None:
        """Stop the background thread and write the final checkpoint (writer closed)."""
        stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(30.0)
        if checkpointer is not None:
            try:
                with self._checkpoint_lock:
                    checkpointer.update()
            except Exception as exc:
                self.error_count += 1
                _log.error("final checkpoint of %s failed: %s", self.directory, exc)

    def _at_fork_reinit(self) -> None:
        # Called by logging in a forked child: a lock held by another parent thread at fork
        # time would never be released in the child.
        super()._at_fork_reinit()  # type: ignore[misc]  # exists at runtime, not in typeshed
        self._open_lock = owned_rlock()
        # The parent's stream stays the parent's: its replicator and checkpointer must not
        # ship or sign it from here. Logging here opens the child's own stream, with its own.
        self.replicator = None
        self.checkpointer = None

    def _live_writer(self) -> ChainWriter:
        """The writer, opened again if it was closed (``close()``, or abandoned by a fork).

        What opening logs (a torn tail moved aside, a journal replayed, a seal adopted) is
        logged once ``_open_lock`` is released: see :mod:`.own_loggers`.
        """
        writer = self.writer
        if writer.closed:
            if self._open_lock._is_owned():
                # A signal handler (or a finalizer) logging while this very thread opens
                # the writer: waiting would deadlock, opening twice would leak a stream.
                raise ImmutableLogError(
                    "a record logged while its own thread reopens the writer cannot be "
                    "written (a signal handler or finalizer logging at that moment)")
            records: list[logging.LogRecord] = []
            try:
                with holding_back() as records, self._open_lock:
                    writer = self.writer
                    if writer.closed:
                        writer = self.writer = self._open_writer(reopening=True)
                        self._start_checkpointing()
            finally:
                release(records)
        return writer

    def handle(self, record: logging.LogRecord) -> Any:  # bool; the record since 3.12
        """:meth:`logging.Handler.handle`, with the handler lock taken directly when there
        are no filters and ``filter`` is not overridden (the per-record path saves three
        Python calls). Records of the excluded loggers (ours, boto, google, urllib3) are
        dropped before the handler lock is taken."""
        try:
            excluded = record.name.startswith(EXCLUDED_LOGGERS) and _is_excluded(record.name)
        except (AttributeError, TypeError):  # a record made by hand, named None or bytes
            excluded = False
        if excluded:
            # Before the handler lock: our own threads log while holding a writer lock,
            # and an application thread may hold this lock while it waits for that one.
            report_unheard(record, ImmutableHandler)
            return False
        if self.writer.closed:
            # Open it again before taking the handler lock, so that what opening logs
            # never reaches other handlers while this one is locked. A failure is left
            # to emit(), which tries again and reports it through handleError().
            with contextlib.suppress(Exception):
                self._live_writer()
        if self.filters or type(self).filter is not _FILTERER_FILTER:
            return super().handle(record)  # filters, or a subclass's own filter()
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self.emit(record)
        return record if _HANDLE_RETURNS_RECORD else True

    def emit(self, record: logging.LogRecord) -> None:
        """Chain the record. Never raises: errors go to :meth:`handleError`."""
        try:
            name = record.name
            if isinstance(name, str) and name.startswith(EXCLUDED_LOGGERS) and (
                    _is_excluded(name)):
                return
            writer = self.writer
            if writer.closed:
                writer = self._live_writer()
            try:
                seq, _ = writer.append(record_payload(record, self.tenant))
            except ImmutableLogError:
                if not writer.closed:
                    raise
                # close() ran between the check and the append: the record goes to the
                # writer opened after it (the payload again: a transform may have used it)
                writer = self._live_writer()
                seq, _ = writer.append(record_payload(record, self.tenant))
            replicator = self.replicator
            # seq 0: logged from inside a write (a signal handler), appended after it; the
            # interrupted call ships it
            if replicator is not None and not self.backup.backup_async and seq:
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
        writer = self.__dict__.get("writer")
        if writer is not None and not writer.closed:  # None: the constructor failed
            try:
                writer.flush()
            except Exception:  # the entries stay buffered and are retried; never raise
                self._report_failure("flush")

    def sync(self) -> None:
        """Make every entry written so far durable on disk."""
        writer = self.writer
        if not writer.closed:
            writer.sync()

    def close(self) -> None:
        """Flush, sync and release the stream. Idempotent.

        A record logged after ``close()`` (``logging.shutdown()`` runs it at exit, and
        threads may still log) opens a writer again: of the same stream once ``close()``
        has released it, of another one while ``close()`` still ships and signs. It never
        waits for ``close()``; the next ``close()`` closes that writer.
        """
        if "writer" not in self.__dict__:  # the constructor failed: nothing was opened
            super().close()  # logging.shutdown() at exit calls flush() and close()
            return
        try:
            # What this close() closes, taken together: a thread logging meanwhile opens
            # a writer (another stream: this one stays locked below), a replicator and a
            # checkpointer of its own, which the next close() closes. Nothing else runs
            # under _open_lock: what closing logs, and a record logged meanwhile, must
            # never wait for this close().
            with self._open_lock:
                writer, replicator = self.writer, self.replicator
                checkpointer, self.checkpointer = self.checkpointer, None  # idempotent
                stop, thread = self._checkpoint_stop, self._checkpoint_thread
            try:
                # The stream stays locked until its last entries are signed and shipped:
                # a writer of another process taking it meanwhile would start a second
                # replicator of the stream (overlapping batches).
                writer.close(keep_stream=True)
            except Exception:
                self._report_failure("close")
            try:
                self._close_checkpointing(stop, thread, checkpointer)
                if replicator is not None:
                    self.last_replication_status = replicator.close(
                        self.backup.backup_close_timeout
                    )
            finally:
                writer.release_stream()
        finally:
            super().close()

    def _report_failure(self, action: str) -> None:
        """Count a failure outside emit() and print it like handleError() would."""
        self.error_count += 1
        if logging.raiseExceptions and sys.stderr:
            sys.stderr.write(f"--- immutable_logging: {action} of {self!r} failed ---\n")
            traceback.print_exc(file=sys.stderr)

    def __repr__(self) -> str:
        writer = self.__dict__.get("writer")
        where = f"{getattr(self, 'directory', '?')}/{getattr(self, 'tenant', '?')}"
        stream = writer.stream if writer is not None else "(not opened)"
        return f"<ImmutableHandler {where}/{stream} ({logging.getLevelName(self.level)})>"


def _is_excluded(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in EXCLUDED_LOGGERS)
