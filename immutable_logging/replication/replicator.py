"""Ship a stream's entries from the local chain to a storage backend, in sealed batches.

The local chain is the durable queue. The writer only *notifies* the replicator that bytes
reached the OS; the replicator reads complete entry lines back from the segment files,
groups them into batches of ``batch_size`` entries (a batch never spans two segments),
uploads each batch with a conditional write, then persists a cursor atomically. A batch is
also shipped when its oldest entry has waited ``flush_interval`` seconds, when its segment
is sealed, and on ``close()``.

Resuming: after a crash, an outage or an ambiguous failure the replicator lists the remote
batches once and moves its cursor past every batch that continues the chain, so nothing is
lost and nothing is uploaded twice. Batches the replica lost between others it holds (a
hole) are shipped again from the local log, the same whether the cursor was saved or
lost; so are batches it lost at its end, also together with holes. A batch found under
the same name with different bytes, or one of another log, stops replication for the
stream with :class:`RemoteIntegrityError`.

:class:`Replicator` is a :class:`logging.handlers.QueueListener`: its queue carries wake-up
notifications (never records), its thread wakes on each one or every ``tick`` seconds.

Health: :attr:`Replicator.status` is computed when it is read, so a request that hangs
(a network black hole blocks the thread until the client's own timeout) shows while it
hangs, as ``state == "stalled"`` once it has been in flight ``stall_after`` seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from logging.handlers import QueueListener
from pathlib import Path
from typing import IO, Any

import orjson

from ..checkpoint import list_notes
from ..compression import READ_ERRORS, compress, decompress
from ..encryption import SALT_FILE
from ..entry import GENESIS_HASH, HASH_MEMBER, LINE_PREFIX, split_line
from ..errors import (
    ConfigurationError,
    ObjectExistsError,
    RemoteIntegrityError,
    ReplicationError,
)
from ..fileio import atomic_write
from ..layout import (
    CHECKPOINT_DIR,
    STREAM_META,
    TORN_DIR,
    last_seq_on_disk,
    list_segments,
    segment_name,
)
from ..locks import owned_rlock
from ..own_loggers import own_logger
from .backend import StorageBackend
from .holes import Hole, LocalEntry, LocalGap, find_holes, local_run
from .keys import (
    BatchName,
    batch_key,
    batches_prefix,
    checkpoint_key,
    parse_batch_key,
    salt_key,
    segment_key,
    stream_meta_key,
    torn_key,
)

_log = own_logger("immutable_logging.replication")

_WAKE = object()
_TICK = object()
MAX_BACKOFF = 60.0
#: Default ``max_batch_factor``. The thread is woken once that many batches could be
#: filled, and every wake-up and batch costs it a few dozen system calls, each a GIL
#: hand-over that slows a busy logging thread (see ``_READ_BUFFER``). With 10, logging
#: through the default handler with replication to the local bucket cost 45 us per
#: record against 40 with 50 and 36 with 100 (FileHandler: 19.9); 50 keeps a backlog's
#: read-ahead near 10,000 entries (about 5 MB).
DEFAULT_MAX_BATCH_FACTOR = 50
#: Read buffer for new entries of the active segment. The thread reads while the
#: application logs; each read hands the GIL over and, while the logging thread is busy,
#: waits up to the switch interval (5 ms) to get it back: 8 KiB reads made reading 1,000
#: entries take ~50 hand-overs.
_READ_BUFFER = 1 << 20
#: Default byte bounds of the read-ahead and of one batch (besides the entry counts), so
#: that large entries cannot make a backlog hold unbounded memory.
MAX_PENDING_BYTES = 32 << 20
MAX_BATCH_BYTES = 16 << 20
#: Default ``stall_after``: seconds one backend request may be in flight before the status
#: says ``"stalled"``. A batch PUT takes well under a second when the bucket is reachable;
#: a black-holed connection blocks until the client's own timeout (tens of seconds with
#: boto3's defaults).
DEFAULT_STALL_AFTER = 10.0


@dataclass
class Cursor:
    """What has been replicated durably: everything up to ``last_seq``."""

    target: str
    segment: int = 1
    offset: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS_HASH
    #: Hash of the entry that ends at ``segment``/``offset`` (the read position). It is
    #: ``last_hash`` unless a reconcile moved ``last_seq`` past remote batches, which
    #: leaves the position where it was. Empty in cursors written before it existed.
    position_hash: str = ""
    archived_through: int = 0
    checkpoints_through: int = 0
    meta_uploaded: bool = False
    salt_uploaded: bool = False
    torn_uploaded: list[str] = field(default_factory=list)


@dataclass
class ReplicationStatus:
    """A snapshot of a replicator's progress and health, taken when it is read.

    ``state``: ``"ok"`` (the last pump succeeded), ``"retrying"`` (the backend failed; the
    replicator tries again with a backoff), ``"stalled"`` (a backend request has been in
    flight for the replicator's ``stall_after`` seconds or more and has not returned: the
    bucket or the network hangs, nothing ships meanwhile; it goes back to ``"ok"`` or
    ``"retrying"`` once the request returns), ``"stopped"`` (the replica and the local log
    disagree: nothing more is shipped), or ``"pending"`` (returned by ``close()`` when
    its time ran out first: ``pending_entries`` wait on disk for the next start).

    ``local_seq`` and ``pending_entries`` count what was written up to the read, so they
    grow while shipping is held up; after a failure ``local_seq`` is the local log's last
    seq on disk (or a later one written since), also when nothing was read yet.
    ``replicated_seq`` counts what is known to be this log's in the replica: once stopped,
    not the remote batches whose local entries were not (all) found to be the replicated
    ones. ``in_flight_op`` (``"put"``, ``"get"``, ``"head"`` or ``"list"``) and
    ``in_flight_seconds`` describe the backend request under way at the read (both
    ``None`` when there is none).
    """

    target: str
    stream: str
    replicated_seq: int
    local_seq: int
    pending_entries: int
    batches_uploaded: int = 0
    entries_uploaded: int = 0
    puts: int = 0
    duplicates_skipped: int = 0
    failures: int = 0
    last_error: str | None = None
    state: str = "ok"
    extra: dict[str, Any] = field(default_factory=dict)
    in_flight_op: str | None = None
    in_flight_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def cursor_path(stream_dir: Path, backend: StorageBackend) -> Path:
    """Where the cursor for ``backend`` is kept in a stream directory."""
    digest = hashlib.sha256(backend.describe().encode()).hexdigest()[:12]
    return stream_dir / f".replica-{digest}.json"


def _read_cursor(path: Path) -> Cursor:
    """The cursor saved at ``path`` (raises OSError, JSONDecodeError or TypeError)."""
    return Cursor(**orjson.loads(path.read_bytes()))


def saved_cursor(stream_dir: Path, backend: StorageBackend) -> Cursor | None:
    """The cursor a replicator of ``stream_dir`` saved for ``backend``; None when there is
    none (or it is unreadable, or for another replica)."""
    try:
        cursor = _read_cursor(cursor_path(stream_dir, backend))
    except (OSError, orjson.JSONDecodeError, TypeError):
        return None
    return cursor if cursor.target == backend.describe() else None


class Replicator(QueueListener):
    """Replicate one stream directory of one tenant to ``backend``.

    Args:
        backend: where to upload.
        stream_dir: the stream directory (``<root>/<tenant>/<stream>``).
        tenant: the tenant id (part of every object name).
        batch_size: entries per batch (at most one PUT per ``batch_size`` entries).
            While a backlog waits, batches grow to multiples of it (at most
            ``max_batch_factor`` times), so a fast producer needs fewer PUTs, never more.
        flush_interval: seconds a partial batch may wait before it is shipped (plus up to
            one ``tick``: the thread notices new entries at a wake-up or a tick).
        tick: how often the thread wakes without a notification.
        max_pending: entries read ahead from disk at most (bounds memory after an outage).
        max_pending_bytes: bytes of entries read ahead at most (whichever bound is hit
            first; one entry is always taken).
        max_batch_bytes: a batch stops growing once its entries reach this many bytes
            (so a batch holds at most this plus one entry).
        stall_after: seconds a backend request may be in flight before :attr:`status`
            says ``"stalled"`` (a finite number > 0, else :class:`ConfigurationError`).
    """

    def __init__(
        self,
        backend: StorageBackend,
        stream_dir: Path,
        tenant: str,
        *,
        batch_size: int = 100,
        flush_interval: float = 5.0,
        tick: float | None = None,
        max_pending: int | None = None,
        max_batch_factor: int = DEFAULT_MAX_BATCH_FACTOR,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        stall_after: float = DEFAULT_STALL_AFTER,
    ) -> None:
        if (isinstance(stall_after, bool) or not isinstance(stall_after, (int, float))
                or not math.isfinite(stall_after) or stall_after <= 0):
            raise ConfigurationError(
                f"stall_after must be a positive number of seconds, got {stall_after!r}")
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        super().__init__(self._queue)
        #: The process that ships this stream: a forked child holds a copy of this object
        #: but not the stream (its writer was abandoned at the fork), so it ships nothing.
        self._pid = os.getpid()
        self.backend = backend
        self.stream_dir = Path(stream_dir)
        self.stream = self.stream_dir.name
        self.tenant = tenant
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.tick = tick if tick is not None else min(1.0, flush_interval / 2)
        self.max_batch_factor = max(1, max_batch_factor)
        self.max_pending = max_pending or max(2 * self.max_batch_factor * batch_size, 2000)
        self.max_pending_bytes = max(1, max_pending_bytes)
        self.max_batch_bytes = max(1, max_batch_bytes)
        self.stall_after = float(stall_after)
        #: (operation, time.monotonic() at its start) of the backend request under way, or
        #: None. Replaced as a whole (one atomic store), read by :attr:`status` from any
        #: thread while the thread that made the request is blocked in it.
        self._in_flight: tuple[str, float] | None = None
        self._lock = owned_rlock()
        self._signaled = False
        self._woken_at = 0  # seq of the notification that last woke the thread
        # Woken once the largest batch could be filled: a fast producer gets few, large
        # PUTs (each costs a few fsyncs); a slow one is served by the tick.
        self._wake_every = self.batch_size * self.max_batch_factor
        self._pending: list[LocalEntry] = []
        self._pending_bytes = 0  # sum of len(line) over _pending
        self._pending_since: float | None = None
        self._read_segment = 0
        self._read_offset = 0
        self._latest_seq = 0
        self._needs_reconcile = True
        #: last-hash of remote batches a reconcile moved past: the local entries skipped
        #: on re-reading must have them (see _take).
        self._remote_hashes: dict[int, str] = {}
        #: (last_seq, last_hash) the cursor goes back to if replication stops before the
        #: local entries ending the remote batches a reconcile moved past were all found
        #: to be the replicated ones: where it was, or the last batch end found so (see
        #: _take). None when nothing is left to compare.
        self._unchecked_from: tuple[int, str] | None = None
        #: The local log's last seq, read from disk at the last failure (None before one):
        #: the status counts the entries written before this process too, which nothing
        #: has read yet when replication fails at its start.
        self._local_end: int | None = None
        self._retry_at = 0.0
        self._consecutive_failures = 0
        self._fatal: str | None = None
        self._broken: RemoteIntegrityError | None = None
        self._started = False
        #: Set once close() has shipped: the stream may belong to another process since.
        self._closed = False
        self._close_lock = threading.Lock()
        #: The thread running close(), once it started: no other thread starts a request
        #: after that (the shipping thread, blocked in one past close()'s timeout, would
        #: otherwise go on shipping after the stream was released to another writer).
        self._closer: int | None = None
        self._cursor_file = cursor_path(self.stream_dir, backend)
        self.cursor = self._load_cursor()
        #: The progress record the shipping thread updates; :attr:`status` reads it.
        self._status = ReplicationStatus(
            target=backend.describe(),
            stream=self.stream,
            replicated_seq=self.cursor.last_seq,
            local_seq=0,
            pending_entries=0,
        )

    @property
    def status(self) -> ReplicationStatus:
        """A snapshot of progress and health, computed now (safe from any thread).

        It does not wait for the shipping thread: while that thread is blocked in a
        backend request, the snapshot shows the request (``in_flight_op``,
        ``in_flight_seconds``), the entries written meanwhile (``local_seq``,
        ``pending_entries``) and, past ``stall_after`` seconds, ``state == "stalled"``.
        Later changes do not alter a snapshot already taken.
        """
        live = self._status
        in_flight = self._in_flight  # one read: the op and its start belong together
        local, pending = self._backlog(live.replicated_seq)
        op: str | None = None
        age: float | None = None
        state = live.state
        if in_flight is not None:
            op, started = in_flight
            age = max(0.0, time.monotonic() - started)
            if age >= self.stall_after and state in ("ok", "retrying"):
                state = "stalled"
        return dataclasses.replace(
            live, local_seq=local, pending_entries=pending, state=state,
            extra=dict(live.extra), in_flight_op=op, in_flight_seconds=age,
        )

    def _head(self, key: str) -> dict[str, str]:
        """The metadata of object ``key`` (empty when it has none or is gone), as a request
        in flight (see :attr:`status`)."""
        with self._request("head"):
            return self.backend.head(key) or {}

    @contextlib.contextmanager
    def _request(self, op: str) -> Iterator[None]:
        """Mark a backend request ``op`` as in flight for its duration (see :attr:`status`)."""
        self._in_flight = (op, time.monotonic())
        try:
            yield
        finally:
            self._in_flight = None

    # ------------------------------------------------------------------ cursor
    def _load_cursor(self) -> Cursor:
        target = self.backend.describe()
        try:
            cursor = _read_cursor(self._cursor_file)
        except FileNotFoundError:
            return Cursor(target=target)
        except (orjson.JSONDecodeError, TypeError) as exc:
            _log.warning("replication cursor %s unreadable (%s); reconciling with the remote",
                         self._cursor_file, exc)
            return Cursor(target=target)
        if cursor.target != target:
            return Cursor(target=target)
        return cursor

    def _save_cursor(self, durable: bool = False) -> None:
        """Persist the cursor; fsync'ed only when ``durable`` (close, reconcile).

        The cursor is a hint: after a power cut an older (or unreadable) cursor only means
        the next start reconciles with the remote, which moves it past every batch already
        there, so nothing is lost or duplicated. Skipping two fsyncs per batch keeps the
        replicator from stalling the application's own writes.
        """
        atomic_write(self._cursor_file, orjson.dumps(asdict(self.cursor)), 0o600,
                     durable=durable)

    # ------------------------------------------------------------------ listener
    def start(self) -> None:
        """Start the background thread (asynchronous mode)."""
        self._started = True
        super().start()

    def notify(self, seq: int) -> None:
        """Commit listener: entries up to ``seq`` reached the OS.

        The thread is woken once ``batch_size * max_batch_factor`` entries have been
        written since the last wake-up; fewer are shipped by the periodic tick (full
        batches at once, a partial one after ``flush_interval``). Waking for every write
        made the thread re-read the segment for a handful of entries and ship many small
        batches (each with a few fsyncs), which slowed the application's own writes.
        """
        self._latest_seq = seq
        if self._started and not self._signaled and seq - self._woken_at >= self._wake_every:
            self._signaled = True
            self._woken_at = seq
            self._queue.put_nowait(_WAKE)

    def dequeue(self, block: bool) -> Any:
        """Next notification, or a tick when none arrives within ``tick`` seconds."""
        try:
            return self._queue.get(block, timeout=self.tick)
        except queue.Empty:
            return _TICK

    def prepare(self, record: Any) -> Any:
        """Notifications are not records: nothing to prepare."""
        return record

    def handle(self, record: Any) -> None:
        """Wake-up: ship what is ready, unless backing off after a failure."""
        self._signaled = False
        self.try_pump()

    def try_pump(self, force: bool = False, deadline: float | None = None) -> bool:
        """Pump unless backing off; failures are recorded, never raised. True if caught up."""
        if (self._fatal is not None or time.monotonic() < self._retry_at or self._forked()
                or self._closed):
            return False
        try:
            self.pump(force=force, deadline=deadline)
        except Exception as exc:  # never let the listener thread die silently
            self._record_failure(exc)
            return False
        self._consecutive_failures = 0
        return not self._pending

    def _record_failure(self, exc: BaseException) -> None:
        self._read_local_end()
        self._update_status()
        status = self._status
        status.failures += 1
        status.last_error = f"{type(exc).__name__}: {exc}"
        self._needs_reconcile = True
        if isinstance(exc, RemoteIntegrityError):
            self._fatal = status.last_error
            status.state = "stopped"
            _log.error("replication of %s stopped: %s", self.stream_dir, exc)
            return
        status.state = "retrying"
        self._consecutive_failures += 1
        delay = min(MAX_BACKOFF, 0.5 * 2 ** min(self._consecutive_failures, 10))
        self._retry_at = time.monotonic() + delay
        _log.warning("replication of %s failed (%s); retrying in %.1f s; entries stay on disk",
                     self.stream_dir, exc, delay)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread, waiting at most ``timeout`` seconds for it."""
        thread = self._thread
        if thread is not None:
            self.enqueue_sentinel()
            thread.join(timeout)
            self._thread = None
        self._started = False

    def close(self, timeout: float = 10.0) -> ReplicationStatus:
        """Stop the thread and ship everything pending, within about ``timeout`` seconds.

        What cannot be shipped stays on disk and is shipped at the next start (unless
        replication is stopped: ``state == "stopped"``); the returned status says how many
        entries are pending. Idempotent. In a forked child it does nothing: the parent
        ships the stream (shipping it from here too made overlapping batches). A second
        ``close()`` only returns the status: once the handler released the stream, another
        process may have taken it and ship it itself. For the same reason the shipping
        thread starts no request once ``close()`` has begun; one it is blocked in when the
        time runs out may still complete afterwards (a batch the next start then finds in
        the replica and continues from).
        """
        if self._forked():
            return self.status
        with self._close_lock:
            if not self._closed:
                self._close(timeout)
                self._closed = True
        return self.status

    def _close(self, timeout: float) -> None:
        self._closer = threading.get_ident()
        deadline = time.monotonic() + timeout
        self.stop(timeout)
        self._retry_at = 0.0
        while time.monotonic() < deadline:
            if self.try_pump(force=True, deadline=deadline) or self._fatal is not None:
                break
            if self._status.state == "retrying":
                break  # the backend is failing: do not hold up the application's exit
        with contextlib.suppress(OSError):  # a failed save only costs a reconcile
            self._save_cursor(durable=True)
        self._update_status()
        if self._status.pending_entries and self._status.state == "ok":
            self._status.state = "pending"  # nothing ships them until the next start
        if self._fatal is not None:
            _log.error(
                "replication of %s to %s is stopped: the replica and the local log disagree "
                "(logged when it was found); %d entries are not replicated",
                self.stream_dir, self.backend.describe(), self._status.pending_entries,
            )
        elif self._status.pending_entries:
            _log.warning(
                "%d entries of %s not yet replicated to %s; they stay on disk and are "
                "shipped at the next start",
                self._status.pending_entries, self.stream_dir, self.backend.describe(),
            )

    def _forked(self) -> bool:
        return os.getpid() != self._pid

    def _backlog(self, replicated: int) -> tuple[int, int]:
        """The local sequence number known now, and how many entries after ``replicated``
        wait to be shipped."""
        floor = replicated if self._local_end is None else self._local_end
        local = max(self._latest_seq, floor)
        return local, max(0, local - replicated)

    def _read_local_end(self) -> None:
        """Read the local log's last seq from disk (see ``_local_end``); never raises."""
        with contextlib.suppress(OSError):
            end = last_seq_on_disk(self.stream_dir)
            if end is not None:
                self._local_end = end

    def _update_status(self) -> None:
        status = self._status
        status.replicated_seq = self.cursor.last_seq
        status.local_seq, status.pending_entries = self._backlog(status.replicated_seq)

    # ------------------------------------------------------------------ pumping
    def pump(self, force: bool = False, deadline: float | None = None) -> int:
        """Ship every batch that is ready (all of them with ``force``); return entries shipped.

        With a ``deadline`` (``time.monotonic()`` value) no new batch is started after it.
        Raises ReplicationError subclasses; :meth:`try_pump` is the non-raising form.
        """
        if self._forked():
            raise ReplicationError(
                f"replicator of {self.stream_dir} belongs to process {self._pid}: a forked "
                "child does not ship its parent's stream")
        if self._closed:
            raise ReplicationError(
                f"replicator of {self.stream_dir} is closed: the stream was released, and "
                "the process that writes it now ships it")
        if self._lock._is_owned():
            return 0  # called from inside a pump (a signal handler): that pump ships it
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            return 0  # another pump holds the lock past the deadline
        try:
            return self._pump_locked(force, deadline)
        except RemoteIntegrityError:
            self._fall_back_to_checked()
            raise
        finally:
            self._lock.release()

    def _read_again_from_cursor(self) -> None:
        """Drop the entries read but not shipped; read on from the cursor's position."""
        self._pending.clear()
        self._pending_bytes = 0
        self._pending_since = None
        self._read_segment, self._read_offset = self.cursor.segment, self.cursor.offset

    def _fall_back_to_checked(self) -> None:
        """Replication stops: move the cursor back from remote batches a reconcile moved
        past but whose local entries were not all found to be the replicated ones (see
        ``_unchecked_from``), and save it. The status then counts as replicated only what
        is known to be this log's, and a saved cursor never points into another log."""
        checked, self._unchecked_from = self._unchecked_from, None
        if checked is None:
            return
        cursor = self.cursor
        cursor.last_seq, cursor.last_hash = checked
        self._remote_hashes.clear()
        self._read_again_from_cursor()
        self._needs_reconcile = True
        with contextlib.suppress(OSError):  # a failed save only costs a reconcile
            self._save_cursor(durable=True)

    def _closing_elsewhere(self) -> bool:
        """Whether close() runs in another thread: this one must start no request."""
        closer = self._closer
        return closer is not None and closer != threading.get_ident()

    def _pump_locked(self, force: bool, deadline: float | None) -> int:
        if self._closing_elsewhere():
            return 0
        if self._needs_reconcile:
            self._reconcile()
        self._broken = None
        self._fill()
        shipped = 0
        while self._pending:
            first_segment = self._pending[0].segment
            run = size = 0
            limit = min(self._batch_limit(), len(self._pending))
            while (
                run < limit
                and self._pending[run].segment == first_segment
                and size < self.max_batch_bytes
            ):
                size += len(self._pending[run].line)
                run += 1
            full = (
                run >= self.batch_size
                or size >= self.max_batch_bytes
                or self._pending_bytes >= self.max_pending_bytes  # reading waits for room
            )
            segment_done = run < len(self._pending) or self._is_sealed(first_segment)
            waited = (
                self._pending_since is not None
                and time.monotonic() - self._pending_since >= self.flush_interval
            )
            if not (full or force or segment_done or waited or self._broken):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self._closing_elsewhere():  # close() ships the rest, or leaves it on disk
                return shipped
            self._ship(self._pending[:run])
            del self._pending[:run]
            self._pending_bytes -= size
            shipped += run
            self._pending_since = time.monotonic() if self._pending else None
            if len(self._pending) < self.batch_size and self._broken is None:
                self._fill()
        if self._broken is not None:  # the entries before the damage are shipped; stop
            raise self._broken
        self._ship_side_objects()
        if self._status.state != "stopped":
            self._status.state = "ok"
        self._update_status()
        return shipped

    def _batch_limit(self) -> int:
        """``batch_size``, or a multiple of it (up to ``max_batch_factor``) while a backlog
        is waiting: fewer, larger PUTs let replication catch up with a fast producer."""
        batches_waiting = len(self._pending) // self.batch_size
        return self.batch_size * max(1, min(batches_waiting, self.max_batch_factor))

    def _is_sealed(self, segment: int) -> bool:
        return any(s.number > segment for s in list_segments(self.stream_dir))

    def _fill(self) -> None:
        """Read complete entries after the read position into the pending list.

        Damage in the local chain stops the reading (kept in ``_broken``): the entries
        before it are still shipped, then the pump raises it.
        """
        try:
            self._fill_pending()
        except RemoteIntegrityError as exc:
            self._broken = exc

    def _fill_pending(self) -> None:
        if len(self._pending) >= self.max_pending or self._pending_bytes >= self.max_pending_bytes:
            return
        if self._read_segment == 0:
            self._read_segment, self._read_offset = self.cursor.segment, self.cursor.offset
        for seg in list_segments(self.stream_dir):
            if seg.number < self._read_segment:
                continue
            if seg.number > self._read_segment:
                self._read_segment, self._read_offset = seg.number, 0
            with seg.open(buffering=_READ_BUFFER) as handle:
                if self._read_offset:
                    handle.seek(self._read_offset)
                if self._take_lines(handle, seg.number):
                    return

    def _take_lines(self, handle: IO[bytes], segment: int) -> bool:
        """Take the complete lines of ``handle`` (positioned at the read offset); True when
        the pending list is full. The common line, the entry right after the last one
        taken, is recognised by its expected prefix; anything else goes through
        :meth:`_take`, which skips replicated entries or explains the damage."""
        pending, limit, byte_limit = self._pending, self.max_pending, self.max_pending_bytes
        held = self._pending_bytes
        offset = self._read_offset
        head = b""
        try:
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # being written (or torn): not an entry yet
                offset += len(line)
                if not head and pending:
                    last = pending[-1]
                    head = LINE_PREFIX % (last.seq + 1, last.hash.encode())
                if (
                    head
                    and line.startswith(head)
                    and len(line) > 160  # as split_line: no entry is shorter
                    and line[-76:-67] == HASH_MEMBER
                    and line.endswith(b'"}\n')
                    and (digest := line[-67:-3]).isascii()
                ):
                    last = pending[-1]
                    pending.append(LocalEntry(last.seq + 1, last.hash, digest.decode(), segment,
                                            offset, line))
                    held += len(line)
                    head = LINE_PREFIX % (last.seq + 2, digest)
                else:
                    self._pending_bytes = held
                    self._take(line, segment, offset)
                    held = self._pending_bytes
                    head = b""
                self._read_offset = offset
                if len(pending) >= limit or held >= byte_limit:
                    self._latest_seq = max(self._latest_seq, pending[-1].seq)
                    return True
        finally:  # also when reading fails midway (EIO, a truncated .gz)
            self._pending_bytes = held
        if pending:
            self._latest_seq = max(self._latest_seq, pending[-1].seq)
        return False

    def _take(self, line: bytes, segment: int, end: int) -> None:
        parsed = split_line(line[:-1])
        if parsed is None or not (parsed[1].isascii() and parsed[2].isascii()):
            raise RemoteIntegrityError(
                f"local entry in segment {segment} of {self.stream_dir} at byte {end - len(line)}"
                " is malformed; run `immutable-log verify` before replicating"
            )
        seq, prev, digest, _ = parsed
        cursor = self.cursor
        if seq <= cursor.last_seq:
            expected = cursor.last_hash if seq == cursor.last_seq else (
                self._remote_hashes.get(seq))
            if expected is None:
                return
            if digest != expected:
                raise RemoteIntegrityError(
                    f"local entry seq {seq} of {self.stream_dir} differs from the replicated one "
                    "(the local log or the replica was changed)"
                )
            if self._unchecked_from is not None:  # the entries up to here are this log's
                self._unchecked_from = None if seq == cursor.last_seq else (seq, digest)
            return
        self._remote_hashes.clear()  # past the entries a reconcile skipped
        expected_prev = self._pending[-1].hash if self._pending else cursor.last_hash
        expected_seq = (self._pending[-1].seq if self._pending else cursor.last_seq) + 1
        if seq != expected_seq or prev != expected_prev:
            raise RemoteIntegrityError(
                f"local chain of {self.stream_dir} breaks at seq {seq} (expected seq "
                f"{expected_seq}); run `immutable-log verify`"
            )
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(LocalEntry(seq, prev, digest, segment, end, line))
        self._pending_bytes += len(line)
        self._latest_seq = max(self._latest_seq, seq)

    def _make_durable(self, segment: int) -> None:
        """``fdatasync`` a plain segment before its entries leave the host: the replica must
        never hold entries that a power cut could still take from the local log."""
        path = self.stream_dir / segment_name(segment)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # compressed meanwhile: sealed segments are synced before they are sealed
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _ship(self, entries: list[LocalEntry]) -> None:
        self._make_durable(entries[-1].segment)
        self._put_batch(entries)
        last = entries[-1]
        cursor = self.cursor
        cursor.segment, cursor.offset = last.segment, last.end
        cursor.last_seq, cursor.last_hash = last.seq, last.hash
        cursor.position_hash = last.hash
        self._save_cursor()
        self._update_status()  # progress shows batch by batch, also within a long backlog

    def _put_batch(self, entries: list[LocalEntry]) -> None:
        """Upload ``entries`` (of one segment) as the batch object named by their range."""
        first, last = entries[0], entries[-1]
        raw = b"".join(e.line for e in entries)
        key = batch_key(self.tenant, self.stream, first.seq, last.seq)
        metadata = {
            "first-seq": str(first.seq),
            "last-seq": str(last.seq),
            "first-hash": first.hash,
            "last-hash": last.hash,
            "prev-hash": first.prev,
            "segment": str(first.segment),
            "entries": str(len(entries)),
            "content-sha256": hashlib.sha256(raw).hexdigest(),
            "created": f"{time.time():.6f}",
            "format": "1",
        }
        self._put(key, compress(raw), metadata, raw)
        self._status.batches_uploaded += 1
        self._status.entries_uploaded += len(entries)

    def _put(self, key: str, data: bytes, metadata: dict[str, str], raw: bytes | None,
             *, gzipped: bool = False) -> None:
        """Write ``key`` once. An existing object is a duplicate (skipped) when it holds the
        same thing: the same ``raw`` content once inflated (a batch), the same inflated
        content as ``data`` when ``gzipped`` (a segment archive: another gzip library, as
        on a host restored without ISA-L, compresses it to other bytes), else the same
        bytes."""
        self._status.puts += 1
        try:
            with self._request("put"):
                self.backend.put_if_absent(key, data, metadata)
        except ObjectExistsError:
            with self._request("get"):
                existing = self.backend.get(key)
            if gzipped and existing != data:
                with contextlib.suppress(*READ_ERRORS):
                    raw = decompress(data)
            try:
                same = (
                    decompress(existing) == raw if raw is not None else existing == data
                )
            except READ_ERRORS:  # not even gzip: somebody else's object all the same
                same = False
            if not same:
                raise RemoteIntegrityError(
                    f"{self.backend.describe()}: object {key} already exists with different "
                    "content"
                ) from None
            self._status.duplicates_skipped += 1

    def _ship_side_objects(self) -> None:
        cursor = self.cursor
        changed = False
        if not cursor.meta_uploaded:
            meta = self.stream_dir / STREAM_META
            if meta.exists():
                self._put(stream_meta_key(self.tenant, self.stream), meta.read_bytes(), {}, None)
                cursor.meta_uploaded = changed = True
        if not cursor.salt_uploaded:
            # Without it a passphrase-encrypted log restored from the replica could never
            # be decrypted again (the salt is not secret).
            salt = self.stream_dir.parent / SALT_FILE
            if salt.exists():
                self._put(salt_key(self.tenant, self.stream), salt.read_bytes(), {}, None)
                cursor.salt_uploaded = changed = True
        for seg in list_segments(self.stream_dir):
            if not cursor.archived_through < seg.number < cursor.segment:
                continue
            if not seg.compressed:
                break  # not compressed yet: archive in order, never skip one
            self._put(
                segment_key(self.tenant, self.stream, seg.number),
                seg.path.read_bytes(),
                {"segment": str(seg.number), "format": "1"},
                None,
                gzipped=True,
            )
            cursor.archived_through = seg.number
            changed = True
        torn = self.stream_dir / TORN_DIR
        if torn.is_dir():
            for name in sorted(os.listdir(torn)):
                if name not in cursor.torn_uploaded:
                    self._put(torn_key(self.tenant, self.stream, name),
                              (torn / name).read_bytes(), {"format": "1"}, None)
                    cursor.torn_uploaded.append(name)
                    changed = True
        for size, note in list_notes(self.stream_dir / CHECKPOINT_DIR):
            if cursor.checkpoints_through < size <= cursor.last_seq:
                self._put(
                    checkpoint_key(self.tenant, self.stream, size),
                    note.read_bytes(),
                    {"tree-size": str(size), "format": "1"},
                    None,
                )
                cursor.checkpoints_through = size
                changed = True
        if changed:
            self._save_cursor()

    def _check_position(self) -> None:
        """The local log must still hold, where the cursor says, the entry that ends there.

        If it does not, the local log was rolled back (segments deleted, a disk snapshot
        restored) or rewritten after those entries were replicated. Reading on from the
        cursor would then ship nothing, or stop later with a misleading reason, while the
        status said all was well.
        """
        cursor = self.cursor
        if not cursor.position_hash or cursor.offset == 0:
            return
        expected = HASH_MEMBER + cursor.position_hash.encode("ascii") + b'"}\n'
        found = b""
        for seg in list_segments(self.stream_dir):
            if seg.number == cursor.segment:
                try:
                    with seg.open() as handle:
                        if cursor.offset >= len(expected):
                            handle.seek(cursor.offset - len(expected))
                            found = handle.read(len(expected))
                except READ_ERRORS:
                    found = b""
                break
        if found != expected:
            raise RemoteIntegrityError(
                f"the local log {self.stream_dir} no longer holds the replicated entry that "
                f"ended at byte {cursor.offset} of segment {segment_name(cursor.segment)} "
                f"(entries up to seq {cursor.last_seq} are in {self.backend.describe()}): it "
                "was rolled back or rewritten after replication. The replica keeps the "
                "original entries; `immutable-log restore` rebuilds the log from it"
            )

    def _check_local_end(self) -> None:
        """After moving past remote batches: the local log must reach their last entry.

        The cursor itself may be an old one that matches the local log (a disk snapshot
        restored with it, or the cursor lost): only the remote tells how far the log had
        come. A local log that ends before that lost entries after they were replicated
        (the replicator syncs them locally before shipping). Entries it holds up to there
        are compared with the remote at every batch end (:meth:`_take`).
        """
        end = last_seq_on_disk(self.stream_dir)
        if end is not None and end < self.cursor.last_seq:
            raise RemoteIntegrityError(
                f"the local log {self.stream_dir} ends at seq {end} but "
                f"{self.backend.describe()} holds its entries up to seq "
                f"{self.cursor.last_seq}: it was rolled back (an older disk snapshot "
                "restored, segments deleted) or lost entries after replication. The "
                "replica keeps them; `immutable-log restore` rebuilds the log from it"
            )

    def _ship_again_what_the_replica_lost(self, names: list[BatchName]) -> None:
        """The replica must still hold entries up to where the cursor says. If it lost its
        newest batches (a bucket emptied or re-created, an emulator restarted, a backup
        directory unmounted), also with others between those it still holds, the cursor
        starts again from nothing, as if it were lost: the reconcile moves it past the
        batches the replica still holds (checked as after a lost cursor),
        :meth:`_fill_holes` ships what the holes between them lack, and the entries after
        the last of them are read and shipped again from the local log.

        A replica that lost only batches between others it still holds (a hole, up to the
        cursor's end) keeps its cursor: :meth:`_fill_holes` ships exactly what the hole
        lacks.
        """
        cursor = self.cursor
        held = max((name.last_seq for name in names), default=0)  # the replica's end
        if held >= cursor.last_seq:
            return
        _log.warning(
            "%s no longer holds the entries of %s after seq %d (it held them up to seq %d): "
            "the replica was emptied or lost objects; shipping them again from the local log",
            self.backend.describe(), self.stream_dir, held, cursor.last_seq,
        )
        first = min((seg.number for seg in list_segments(self.stream_dir)), default=1)
        # The entries are offered again from there, and the side objects the replica no
        # longer lists (one LIST, not a download of each existing archive to compare).
        with self._request("list"):
            present = set(self.backend.list(f"{self.tenant}/{self.stream}/"))
        self.cursor = Cursor(target=cursor.target, segment=first,
                             **self._side_objects_held(cursor, present))
        self._remote_hashes.clear()
        self._unchecked_from = None
        self._read_again_from_cursor()  # from the start of segment ``first``
        self._save_cursor(durable=True)

    def _side_objects_held(self, old: Cursor, present: set[str]) -> dict[str, Any]:
        """The side-object fields of ``old`` still true of the replica, whose keys of this
        stream are ``present``: archives and checkpoints in order up to the first one it
        lost, the torn tails, ``stream.json`` and the salt it still holds."""
        tenant, stream = self.tenant, self.stream
        archived = 0
        for seg in list_segments(self.stream_dir):
            if (seg.number > old.archived_through
                    or segment_key(tenant, stream, seg.number) not in present):
                break
            archived = seg.number
        checkpoints = 0
        for size, _ in list_notes(self.stream_dir / CHECKPOINT_DIR):
            if (size > old.checkpoints_through
                    or checkpoint_key(tenant, stream, size) not in present):
                break
            checkpoints = size
        return {
            "archived_through": archived,
            "checkpoints_through": checkpoints,
            "meta_uploaded": old.meta_uploaded and stream_meta_key(tenant, stream) in present,
            "salt_uploaded": old.salt_uploaded and salt_key(tenant, stream) in present,
            "torn_uploaded": [n for n in old.torn_uploaded
                              if torn_key(tenant, stream, n) in present],
        }

    def _reconcile(self) -> None:
        """Check the read position, then move the cursor past remote batches that continue
        it (after a crash/outage), and fill the holes up to there (:meth:`_fill_holes`).

        A batch that starts after the next sequence number continues the chain past a hole
        (batches the replica lost): the cursor moves past it as past the batches below a
        saved cursor, whether the cursor was lost, unreadable or older than the hole. What
        links across the hole is checked where it can be, as with a saved cursor: the
        entries that fill it must link to the batches on both sides (else the hole stays,
        with a warning), and the local entries that end the remote batches are compared
        with them when the local log is read again (:meth:`_take`). One that differs stops
        replication, and the cursor goes back to the last batch end found to match, or to
        where it was (:meth:`_fall_back_to_checked`).

        A batch that starts before the next sequence number and reaches past it repeats
        entries of the batches before it: a request still in flight when a ``close()``
        gave up landed after the stream's next writer shipped the same entries cut
        otherwise. The cursor moves past it too, checked the same way at its end (readers
        of the replica check its repeated entries: see
        :func:`~immutable_logging.replication.cloud.load_remote_stream`).
        """
        self._check_position()
        with self._request("list"):  # the listing pages are fetched while it is consumed
            names = [name for name in map(parse_batch_key, self.backend.list(
                batches_prefix(self.tenant, self.stream))) if name is not None]
        self._ship_again_what_the_replica_lost(names)
        cursor = self.cursor
        start = cursor.last_seq, cursor.last_hash
        added: list[tuple[int, str | None]] = []  # (seq, the remote hash known before)
        try:
            for name in names:
                key = name.key
                if name.last_seq <= cursor.last_seq:
                    continue
                meta = self._head(key)
                joined = name.first_seq == cursor.last_seq + 1  # else after a hole, or over
                if "last-hash" not in meta or (
                        meta.get("prev-hash") != cursor.last_hash and joined):
                    raise RemoteIntegrityError(
                        f"{self.backend.describe()}: batch {key} does not link to the "
                        f"replicated entry seq {cursor.last_seq}"
                    )
                added.append((name.last_seq, self._remote_hashes.get(name.last_seq)))
                cursor.last_seq, cursor.last_hash = name.last_seq, meta["last-hash"]
                self._remote_hashes[name.last_seq] = meta["last-hash"]
            if added:
                self._check_local_end()
        except RemoteIntegrityError:
            # The remote batches are not (all) this log's: the cursor stays where it was,
            # so the status counts every local entry after it as not replicated, and a
            # saved cursor never points into another log.
            cursor.last_seq, cursor.last_hash = start
            for seq, before in reversed(added):
                if before is None:
                    self._remote_hashes.pop(seq, None)
                else:
                    self._remote_hashes[seq] = before
            raise
        if added and self._unchecked_from is None:
            self._unchecked_from = start
        if added:
            # Entries up to last_seq are remote already: re-read from the last position and
            # let _take skip them (and check the hash of the last one).
            self._read_again_from_cursor()
            self._save_cursor(durable=True)
        elif self._pending and self._pending[0].seq != cursor.last_seq + 1:
            self._pending.clear()
            self._pending_bytes = 0
            self._read_segment, self._read_offset = cursor.segment, cursor.offset
        self._fill_holes(names)
        self._needs_reconcile = False

    def _fill_holes(self, names: list[BatchName]) -> None:
        """Ship again, from the local log, the batches the replica lost between others it
        still holds (up to the cursor): as batches that cover exactly each hole, so they
        overlap nothing (see :mod:`.holes`). A hole the local log cannot fill so (its
        entries gone, or they do not link to the batches around the hole) is left as it
        is, with a warning; ``verify_cloud_backup()`` and ``sync-status`` report it."""
        upto = self.cursor.last_seq
        for hole in find_holes([name for name in names if name.last_seq <= upto]):
            try:
                shipped = self._fill_hole(hole)
            except LocalGap as exc:
                _log.warning(
                    "%s lost the entries seq %d-%d of %s, and the local log cannot ship them "
                    "again: %s", self.backend.describe(), hole.first_seq, hole.last_seq,
                    self.stream_dir, exc)
                continue
            _log.warning(
                "%s lost the entries seq %d-%d of %s between batches it still holds: shipped "
                "them again from the local log (%d batches)", self.backend.describe(),
                hole.first_seq, hole.last_seq, self.stream_dir, shipped)

    def _fill_hole(self, hole: Hole) -> int:
        """Upload the local entries of ``hole`` once they are known to link to the batches
        around it; return the number of batches. Raises :class:`LocalGap`."""
        prev: str | None = GENESIS_HASH
        if hole.before is not None:
            prev = self._head(hole.before.key).get("last-hash")
        after = self._head(hole.after.key).get("prev-hash")
        if prev is None or after is None:
            raise LocalGap("the batches around the hole carry no hashes")

        def pieces() -> Iterator[list[LocalEntry]]:
            return local_run(self.stream_dir, hole.first_seq, hole.last_seq,
                             max_entries=self.batch_size * self.max_batch_factor,
                             max_bytes=self.max_batch_bytes)

        last = None  # read once to check both ends before anything is uploaded
        for piece in pieces():
            if last is None and piece[0].prev != prev:
                raise LocalGap(f"local entry seq {hole.first_seq} does not link to batch "
                               f"{hole.before.key if hole.before else '(start)'}")
            last = piece[-1]
        if last is None or last.hash != after:
            raise LocalGap(f"local entry seq {hole.last_seq} does not link to batch "
                           f"{hole.after.key}")
        count = 0
        for piece in pieces():
            self._put_batch(piece)
            count += 1
        return count

    def pending_count(self) -> int:
        """Entries known to be written locally but not yet replicated."""
        self._update_status()
        return self._status.pending_entries


def replicate_stream_once(
    backend: StorageBackend, stream_dir: Path, tenant: str, *, batch_size: int = 100
) -> ReplicationStatus:
    """Ship everything of one stream now, in the calling thread; raises on failure."""
    replicator = Replicator(backend, stream_dir, tenant, batch_size=batch_size)
    replicator.pump(force=True)
    replicator._save_cursor(durable=True)
    return replicator.status
