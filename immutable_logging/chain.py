"""The append-only chain writer: one stream, its segments, recovery and rotation.

A :class:`ChainWriter` owns one *stream* (``<root>/<tenant>/<host>.<slot>``), guarded by an
``flock`` on the stream's lock file, so several processes logging into one directory each
get their own stream. Entries are appended as canonical lines (``docs/FORMAT.md``) and
chained with SHA-256, across segment rotation.

Durability modes (``durability=``):

``none``
    buffered; bytes reach the OS when the buffer fills, on :meth:`flush` or :meth:`close`.
``flush``
    every entry is in the OS before ``append`` returns, so it survives a crash of the
    process (like ``FileHandler``): it is copied into the stream's memory-mapped journal
    (:mod:`~immutable_logging.journal`), and the segment file receives the entries in
    batches, at :meth:`~ChainWriter.flush` and :meth:`~ChainWriter.close`, and at the
    latest ``JOURNAL_WRITE_INTERVAL`` (50 ms) after they were appended. The next writer of
    a crashed stream appends what its journal holds. Where the journal cannot be created
    (no ``mmap``/``posix_fallocate``), and in a process started by ``fork``, each entry is
    written on its own.
``group``
    entries are buffered and ``fdatasync``'ed at most every ``group_interval_ms`` by the
    appending thread; an idle-time flusher thread bounds the lag when no entries arrive.
``always``
    every entry is written and ``fdatasync``'ed before ``append`` returns.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import math
import mmap
import os
import queue
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from .compression import compress_fd
from .entry import GENESIS_HASH, HOSTNAME, canonical_payload, make_line, split_line
from .errors import ConfigurationError, ImmutableLogError, StreamLockedError
from .fileio import atomic_write, fsync_dir, make_log_directory, open_file
from .journal import JOURNAL_BYTES, Journal, pending_lines, read_journal
from .layout import (
    JOURNAL_FILE,
    LOCK_FILE,
    STREAM_META,
    TORN_DIR,
    Segment,
    list_segments,
    read_tail,
    segment_name,
    tenant_dir,
    validate_stream_name,
)
from .locks import owned_rlock
from .own_loggers import own_logger

_log = own_logger("immutable_logging.chain")

DURABILITY_MODES = ("none", "flush", "group", "always")
MAX_STREAM_SLOTS = 4096
#: In ``none``/``group`` mode, refuse new entries once this many buffers are pending.
_MAX_PENDING_FACTOR = 64
#: In ``flush`` mode, the longest time an appended entry waits in the journal before the
#: idle-time flusher writes it to the segment file.
JOURNAL_WRITE_INTERVAL = 0.05
_HOST_SLUG = re.sub(r"[^A-Za-z0-9_-]", "-", HOSTNAME)[:64] or "host"

#: A hook that turns a payload into the bytes to chain (encryption). It receives
#: ``(payload, seq, prev_hash, segment_number)`` and returns the canonical JSON of the
#: payload to store, as :func:`~immutable_logging.entry.canonical_payload` encodes it.
PayloadTransform = Callable[[dict[str, Any], int, str, int], bytes]


class EpochSealer(Protocol):
    """What :meth:`ChainWriter.set_sealer` needs (implemented by ``sealing.StreamSealer``)."""

    @property
    def deadline(self) -> float:
        """Time at which the current epoch must be sealed."""

    def seal(self, now: float, last_seq: int, head: str) -> dict[str, Any]:
        """Seal everything up to entry *last_seq*; return the seal entry's payload."""

    def commit(self) -> None:
        """The seal entry is chained: move the sealer's key and state on."""

    def close(self) -> None:
        """Wipe key material."""


@dataclass
class TornTail:
    """Bytes found after the last complete entry of a segment, moved aside on open."""

    segment: str
    offset: int
    length: int
    moved_to: str
    sha256: str


@dataclass
class WriterStats:
    """Counters of a writer's life, for ``stats()`` and benchmarks."""

    entries: int = 0
    bytes: int = 0
    writes: int = 0
    syncs: int = 0
    rotations: int = 0
    max_sync_lag_ms: float = 0.0
    write_errors: int = 0
    seals: int = 0
    seal_errors: int = 0
    torn_tails: list[TornTail] = field(default_factory=list)


def compress_segment(plain: Path) -> Path:
    """gzip a sealed plain segment to ``N.log.gz`` atomically, make it read-only, and
    remove the plain file. Safe to repeat after a crash at any point.

    It usually runs in the compressor thread, where each system call hands the GIL over
    (see :data:`compression.DEFLATE_CHUNK`), so it makes as few calls as it can."""
    target = plain.with_name(plain.name + ".gz")
    tmp = plain.with_name(f".{plain.name}.gz.tmp")
    source = os.open(plain, os.O_RDONLY | os.O_CLOEXEC)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            out = os.open(tmp, flags, 0o600)
        except PermissionError:  # a read-only leftover of a crash (or a real problem)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            out = os.open(tmp, flags, 0o600)  # raises again if the problem is real
        try:
            compress_fd(source, out)
            os.fchmod(out, 0o444)  # whatever the umask or a leftover's mode
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(source)
    os.replace(tmp, target)
    fsync_dir(plain.parent)
    os.unlink(plain)
    return target


def threads_can_start() -> bool:
    """False while the interpreter finalizes: a thread started then never runs, and on
    Python 3.11 ``Thread.start()`` waits for it forever. A writer opened then (a record
    logged from ``__del__`` after ``logging.shutdown()``) starts none: the handler opens
    it with ``always``, a sealed segment is gzipped by the next writer, an idle epoch is
    sealed by the next entry."""
    return not sys.is_finalizing()


class _Compressor:
    """One background thread that gzips sealed segments off the logging thread."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Path | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def submit(self, plain: Path) -> None:
        if not threads_can_start():  # the next writer's recovery gzips it
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="immutable-logging-compress", daemon=True
            )
            self._thread.start()
        self._jobs.put(plain)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                compress_segment(job)
            except OSError as exc:  # the plain sealed file stays valid and readable
                self.errors.append(f"{job}: {exc}")
                _log.warning("could not compress sealed segment %s: %s", job, exc)
            finally:
                self._jobs.task_done()

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every submitted segment is compressed, then stop the thread."""
        if self._thread is None:
            return
        self._jobs.put(None)
        self._thread.join(timeout)
        self._thread = None


_LIVE_WRITERS: weakref.WeakSet[ChainWriter] = weakref.WeakSet()
#: True in a process started by ``fork``: there ``flush`` writes each entry (no journal),
#: because such processes often end with ``os._exit`` (multiprocessing's workers do), which
#: skips every exit hook and would leave the last batch only in the journal of a stream
#: that no writer may ever open again.
_FORKED_CHILD = False


def flush_live_writers(root: str | os.PathLike[str], tenant: str) -> None:
    """Write the pending entries of every open writer of this process under ``root`` /
    ``tenant`` to their segment files, so that a reader in this process sees them.

    ``flush`` mode keeps the newest entries in the journal for up to
    ``JOURNAL_WRITE_INTERVAL``; readers in other processes see them after that. A writer
    whose write fails keeps its entries (its handler reports the failure on its own).
    """
    tdir = os.path.realpath(tenant_dir(root, tenant))
    _write_pending(
        w for w in list(_LIVE_WRITERS) if os.path.realpath(w.stream_dir.parent) == tdir
    )


def _write_pending(writers: Iterable[ChainWriter]) -> None:
    """:meth:`ChainWriter.flush` each open writer that holds unwritten entries (one with
    none has nothing to hand over: no write, no sync); a failure keeps its entries."""
    for writer in writers:
        if not writer.closed and (writer._buf or writer._reentered):
            with contextlib.suppress(Exception):
                writer.flush()


def _after_fork_in_child() -> None:
    global _FORKED_CHILD
    _FORKED_CHILD = True
    for writer in list(_LIVE_WRITERS):
        writer._abandon_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


_exit_started = False


def exit_started() -> bool:
    """True once the interpreter's exit handlers reached this module's: nothing writes the
    buffer or journal batch of a writer opened after that (``logging.shutdown`` has run or
    runs next, and no later hook closes what a record logged then opens)."""
    return _exit_started


@atexit.register
def _write_pending_at_exit() -> None:
    """At interpreter exit, write what open writers hold (``flush`` mode's journal batch, a
    ``none`` buffer) to their segments, as ``logging.shutdown`` does for handlers: entries of
    a writer nobody closed are then in its segment files, not only in its journal."""
    global _exit_started
    _exit_started = True
    _write_pending(list(_LIVE_WRITERS))


class ChainWriter:
    """Append entries to one hash-chained stream of a tenant.

    Args:
        root: the log directory (tenants are sub-directories).
        tenant: tenant id (validated).
        stream: a fixed stream name; by default the first free ``<host>.<slot>``.
        durability: ``none``, ``flush``, ``group`` or ``always`` (see module doc).
        group_interval_ms: for ``group``, the longest time between ``fdatasync`` calls.
        max_bytes: rotate the active segment once it reaches this size (0 = never).
        max_age: rotate the active segment once it is this many seconds old (None = never).
        buffer_bytes: size of the write buffer for ``none`` and ``group``; in ``flush``
            mode, the batch size (at most a quarter of the journal).
        compress: gzip sealed segments (in a background thread).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        tenant: str = "default",
        *,
        stream: str | None = None,
        durability: str = "flush",
        group_interval_ms: float = 10.0,
        max_bytes: int = 16 * 1024 * 1024,
        max_age: float | None = None,
        buffer_bytes: int = 256 * 1024,
        compress: bool = True,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise ConfigurationError(
                f"durability must be one of {', '.join(DURABILITY_MODES)}, got {durability!r}"
            )
        if group_interval_ms <= 0:
            raise ConfigurationError("group_interval_ms must be > 0")
        if max_bytes < 0:
            raise ConfigurationError("max_bytes must be >= 0 (0 disables size rotation)")
        if max_age is not None and max_age <= 0:
            raise ConfigurationError("max_age must be > 0 seconds or None")
        if buffer_bytes < 1:
            raise ConfigurationError("buffer_bytes must be >= 1")
        self.tenant = tenant
        # Fixed for the writer's life (read-only properties below): append() works out
        # what it reads on every entry from them once.
        self._durability = durability
        self._group_interval = group_interval_ms / 1000.0
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._buffer_bytes = buffer_bytes
        self._rotate_at: float = max_bytes or math.inf
        self._write_through = durability in ("flush", "always")
        self._grouped = durability == "group"
        self._max_pending = _MAX_PENDING_FACTOR * buffer_bytes
        self._batch_bytes = min(buffer_bytes, JOURNAL_BYTES // 4)  # flush mode
        # flush mode: the journal's mapping, its size and the end of the current batch
        self._journal: Journal | None = None
        self._jmap: mmap.mmap | None = None
        self._jcap = 0
        self._jpos = 0
        self._timed = max_age is not None  # or a sealer attached: rotation/seal deadlines
        self.compress = compress
        self.payload_transform: PayloadTransform | None = None
        self.stats = WriterStats()
        self._lock = owned_rlock()
        #: Payloads appended by the thread that is inside the writer (see append()).
        self._reentered: list[dict[str, Any]] = []
        self._buf = bytearray()
        self._first_unsynced: float | None = None
        self._last_sync = time.monotonic()
        self._fd: int | None = None
        self._closed = False
        self._compressor = _Compressor()
        self._flusher: threading.Thread | None = None
        self._flusher_stop = threading.Event()
        self._batch_started = threading.Event()  # flush mode: wakes the journal flusher
        self._commit_listeners: list[Callable[[int], None]] = []
        self._damaged_tail = False
        self._file_end = 0
        # Sealing (issue 3): off unless set_sealer() attaches one.
        self._sealer: EpochSealer | None = None
        self._seal_clock: Callable[[], float] = time.time
        self._seal_deadline = math.inf  # a copy of the sealer's, read on every append
        self._seal_unwritten = False  # a chained seal entry has not reached the OS yet
        # Messages of sealing failures, logged by the sealer thread without the lock.
        self._deferred_logs: list[tuple[int, str, tuple[Any, ...]]] = []
        self._sealer_thread: threading.Thread | None = None

        tdir = tenant_dir(root, tenant)
        make_log_directory(tdir)
        self.root = Path(root)
        self.stream_dir, self._lock_fd = self._acquire_stream(tdir, stream)
        self.stream = self.stream_dir.name
        self.seq = 0
        self.head = GENESIS_HASH
        self.written_seq = 0
        self.segment_number = 1
        self._segment_size = 0
        self._segment_deadline: float | None = None
        try:
            self._recover()
            if durability == "flush" and not _FORKED_CHILD and threads_can_start():
                self._open_journal()
            _LIVE_WRITERS.add(self)
            if (durability == "group" or self._journal is not None) and threads_can_start():
                self._start_flusher()  # may fail too (no new thread at shutdown on 3.12)
        except BaseException:  # release the stream: the next writer must find it free
            self._release_after_failed_open()
            raise

    # ------------------------------------------------------------------ opening
    def _release_after_failed_open(self) -> None:
        """The constructor failed after taking the stream: close what it opened."""
        self._closed = True
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self.release_stream()
        journal, self._journal, self._jmap = self._journal, None, None
        if journal is not None:
            with contextlib.suppress(OSError):
                journal.close(remove=False)

    def _acquire_stream(self, tdir: Path, requested: str | None) -> tuple[Path, int]:
        if requested is not None:
            names: list[str] | range = [validate_stream_name(requested)]
        else:
            names = range(MAX_STREAM_SLOTS)
        for item in names:
            name = item if isinstance(item, str) else f"{_HOST_SLUG}.{item}"
            sdir = tdir / name
            try:
                sdir.mkdir(exist_ok=True, mode=0o700)
            except FileExistsError:  # something that is no directory is in the way
                if isinstance(item, int):
                    continue  # the next slot
                raise ConfigurationError(
                    f"cannot use stream {name!r}: {str(sdir)!r} is not a directory") from None
            fd = os.open(sdir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, b"%d\n" % os.getpid())
                meta = sdir / STREAM_META
                if not meta.exists():
                    atomic_write(
                        meta,
                        orjson.dumps({"format": 1, "tenant": self.tenant, "stream": name,
                                      "created": time.time()}),
                        0o644,
                    )
            except BaseException:  # release the stream: the next writer must find it free
                os.close(fd)
                raise
            return sdir, fd
        where = f"stream {requested!r}" if requested else f"all {MAX_STREAM_SLOTS} stream slots"
        raise StreamLockedError(f"{where} of {tdir} are locked by other processes")

    def _recover(self) -> None:
        """Find the chain head, finish interrupted sealing, move a torn tail aside, append
        what a crashed writer left in the journal, and record what was repaired."""
        torn_events = self._recover_segments()
        events = [
            {
                "kind": "recovery",
                "event": "torn_tail",
                "segment": event.segment,
                "offset": event.offset,
                "length": event.length,
                "moved_to": event.moved_to,
                "sha256": event.sha256,
            }
            for event in torn_events
        ]
        events += self._replay_journal()
        for event in events:
            self.append({**event, "tenant": self.tenant, "ts": time.time()})

    def _recover_segments(self) -> list[TornTail]:
        for leftover in self.stream_dir.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        segments = list_segments(self.stream_dir)
        for seg in segments:
            plain = self.stream_dir / segment_name(seg.number)
            if seg.compressed and plain.exists():
                plain.unlink()  # the .gz is complete (it only appears after fsync+rename)
        if not segments:
            return []
        *sealed, last = segments
        for seg in sealed:
            if not seg.compressed:
                if self.compress:
                    compress_segment(seg.path)
                else:
                    os.chmod(seg.path, 0o444)
        if last.compressed or not os.access(last.path, os.W_OK) or _is_read_only(last.path):
            # Sealed already (rotate() ran, or a crash came before the next segment).
            if not last.compressed and self.compress:
                compress_segment(last.path)
            self._head_from_sealed(list_segments(self.stream_dir))
            self.segment_number = last.number + 1
            return []
        self.segment_number = last.number
        torn_events = self._repair_active(last)
        if self.seq == 0 and sealed:
            self._head_from_sealed(sealed)
        self.written_seq = self.seq
        size = os.path.getsize(last.path)
        if self._damaged_tail:
            # Never write after a damaged entry: seal the segment as it is (verify keeps
            # reporting the damage) and continue the chain in a new segment.
            os.chmod(last.path, 0o444)
            self.segment_number = last.number + 1
        elif size:
            self._open_active()
        return torn_events

    def _replay_journal(self) -> list[dict[str, Any]]:
        """Append the entries a crashed ``flush`` writer left only in its journal.

        Returns the recovery events to record in the chain.
        """
        path = self.stream_dir / JOURNAL_FILE
        data = read_journal(path)
        if data is None:
            return []
        events: list[dict[str, Any]] = []
        lines, anomaly = pending_lines(data, self.seq, self.head)
        if lines:
            first = self.seq + 1
            if self._fd is None:
                self._open_active()
            assert self._fd is not None
            blob = b"".join(lines)
            last = split_line(lines[-1][:-1])
            assert last is not None  # pending_lines only returns entries that parse
            self._write(blob, last[0])
            os.fsync(self._fd)
            self.seq, self.head = last[0], last[2]
            self._segment_size += len(blob)
            self.stats.entries += len(lines)
            events.append(
                {"kind": "recovery", "event": "journal_replay", "entries": len(lines),
                 "first_seq": first, "last_seq": self.seq}
            )
            _log.warning(
                "appended %d entries (seq %d-%d) that a stopped writer left in the journal "
                "of %s", len(lines), first, self.seq, self.stream_dir,
            )
        if anomaly is not None:
            moved_to, digest = self._keep_evidence(f"journal.{time.time_ns()}.bin", data)
            events.append(
                {"kind": "recovery", "event": "journal_mismatch", "reason": anomaly,
                 "moved_to": moved_to, "sha256": digest}
            )
            _log.error(
                "the journal of %s holds an entry that does not continue the chain (%s); "
                "it was not appended, and the journal is kept at %s",
                self.stream_dir, anomaly, moved_to,
            )
        path.unlink()
        return events

    def _open_journal(self) -> None:
        try:
            journal = Journal(self.stream_dir / JOURNAL_FILE)
        except (OSError, ValueError) as exc:
            _log.warning(
                "no journal for %s (%s): each entry is written to the segment on its own",
                self.stream_dir, exc,
            )
            return
        self._journal = journal
        self._jmap = journal.map
        self._jcap = journal.capacity

    def _head_from_sealed(self, segments: list[Segment]) -> None:
        """Continue after the last entry that parses (a damaged line stays for verify)."""
        for seg in reversed(segments):
            parsed = None
            for line in seg.lines():
                if line.endswith(b"\n"):
                    parsed = split_line(line[:-1]) or parsed
            if parsed is not None:
                self.seq, self.head = parsed[0], parsed[2]
                self.written_seq = self.seq
                return

    def _repair_active(self, seg: Segment) -> list[TornTail]:
        """Move a torn tail (bytes after the last newline) aside and find the chain head.

        A crash can only leave a line without its newline (every entry is one ``O_APPEND``
        write). A *complete* line whose chain fields cannot be read (:func:`split_line`) is
        damage, not a crash: it stays where it is for ``verify`` to report, the head is the
        last entry whose chain fields can be read, and new entries go to a new segment. A
        last line with intact chain fields is the head even if the rest of it was changed:
        the next entry links to its stated hash, and ``verify`` reports that line alone.
        """
        events: list[TornTail] = []
        size = os.path.getsize(seg.path)
        if size == 0:
            return events
        good_end, last_line = read_tail(seg.path, size)
        if good_end < size:
            events.append(self._move_aside(seg, good_end, size))
        if last_line is None:
            return events
        parsed = split_line(last_line)
        if parsed is None:
            self._damaged_tail = True
            _log.error(
                "the last entry of %s is damaged (not a crash artefact); it is kept for "
                "`immutable-log verify` and logging continues in a new segment",
                seg.path,
            )
            for line in seg.lines():
                candidate = split_line(line.rstrip(b"\n")) if line.endswith(b"\n") else None
                if candidate is not None:
                    parsed = candidate
        if parsed is not None:
            self.seq, self.head = parsed[0], parsed[2]
        return events

    def _move_aside(self, seg: Segment, start: int, end: int) -> TornTail:
        with open_file(seg.path, "rb") as handle:
            handle.seek(start)
            data = handle.read(end - start)
        moved_to, digest = self._keep_evidence(f"{seg.path.name}.{start}.torn", data)
        os.chmod(seg.path, 0o600)
        os.truncate(seg.path, start)
        fd = os.open(seg.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        event = TornTail(
            segment=seg.path.name,
            offset=start,
            length=len(data),
            moved_to=moved_to,
            sha256=digest,
        )
        self.stats.torn_tails.append(event)
        _log.warning(
            "torn tail in %s at byte %d (%d bytes) moved to %s; the chain continues",
            seg.path,
            start,
            len(data),
            self.stream_dir / moved_to,
        )
        return event

    def _keep_evidence(self, name: str, data: bytes) -> tuple[str, str]:
        """Keep ``data`` (a torn tail, a journal) read-only under ``torn/`` for verify;
        return its path relative to the stream and its SHA-256, for the recovery entry."""
        torn_dir = self.stream_dir / TORN_DIR
        torn_dir.mkdir(exist_ok=True, mode=0o700)
        target = torn_dir / name
        atomic_write(target, data, 0o400)
        return str(target.relative_to(self.stream_dir)), hashlib.sha256(data).hexdigest()

    def _open_active(self) -> None:
        path = self.stream_dir / segment_name(self.segment_number)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # The real size, never an assumption: a later failed write is cut back to it.
        self._segment_size = self._file_end = os.fstat(self._fd).st_size
        self._segment_deadline = (
            time.monotonic() + self._max_age if self._max_age is not None else None
        )

    # ------------------------------------------------------------------ appending
    def add_commit_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(last_seq_written)`` whenever buffered entries reach the OS."""
        self._commit_listeners.append(listener)

    def append(self, payload: dict[str, Any]) -> tuple[int, str]:
        """Chain one payload; return its ``(seq, hash)``.

        A call made by the thread that is already inside this writer (a signal handler,
        or a finalizer the garbage collector runs, logging in the middle of a write) would
        chain its entry in the middle of another one: its payload is kept and appended as
        soon as the interrupted call returns, and ``(0, "")`` is returned for it.

        Raises:
            ImmutableLogError: the writer is closed, or the payload has no member.
            OSError: writing failed. With ``always`` (and ``flush`` without a journal)
                the entry is not chained and nothing of it stays in the file. With
                ``flush`` it is chained and stays in the journal for a later write, unless
                the journal was full: then it is refused. With ``none``/``group`` it is
                chained and stays buffered for a later write, unless the buffer already
                held ``64 x buffer_bytes`` of unwritten entries: then it is refused.
        """
        # _inside() spelled out: this runs for every entry, and a call costs more than it
        if self._lock._is_owned():
            self._reentered.append(payload)
            return 0, ""
        try:
            return self._append(payload)
        finally:
            if self._reentered:
                self._append_reentered()

    def _inside(self) -> bool:
        """Whether this thread is inside the writer already (holds its lock): a call now
        comes from a signal handler or a finalizer that interrupted it."""
        return self._lock._is_owned()

    def _append_reentered(self) -> None:
        """Append the payloads kept by :meth:`append`, in order (in one loop: one level of
        calls however many there are). Nothing while this thread is inside the writer;
        a payload whose write fails (OSError) before it is chained is kept for the next
        try; one refused for itself (an empty payload, a transform's error) is not, or it
        would fail every later call."""
        while self._reentered and not self._inside():
            try:
                payload = self._reentered.pop(0)
            except IndexError:  # another thread (or a signal handler) took the last one
                return
            seq = self.seq
            try:
                self._append(payload)
            except OSError:
                if self.seq == seq:  # not chained: it must not be lost
                    self._reentered.insert(0, payload)
                raise

    def _append(self, payload: dict[str, Any]) -> tuple[int, str]:
        with self._lock:
            if self._fd is None or self._segment_size >= self._rotate_at or self._timed:
                self._prepare_segment()
            seq = self.seq + 1
            if self.payload_transform is None:
                data = canonical_payload(payload)
            else:
                data = self.payload_transform(payload, seq, self.head, self.segment_number)
            if len(data) <= 2:  # b"{}" would make a line that is not JSON
                raise ImmutableLogError("an entry needs at least one payload member")
            line, digest = make_line(seq, self.head, data)
            if self._jmap is not None:  # flush: into the journal, to the segment in batches
                self._journal_entry(line, seq)
                self.seq = seq
                self.head = digest
                self._segment_size += len(line)
                self.stats.entries += 1
                if len(self._buf) >= self._batch_bytes:
                    # The entry is chained and in the journal: a failed write (counted in
                    # stats.write_errors) is retried and logged by the flusher, and only a
                    # full journal refuses entries.
                    with contextlib.suppress(OSError):
                        self._write_buffer()
                return seq, digest
            write_through = self._write_through  # flush without a journal / always
            if write_through:
                if self._buf:  # an earlier entry (a seal) whose write failed: keep the order
                    self._write(bytes(self._buf) + line, seq)
                    self._buf = bytearray()
                else:
                    self._write(line, seq)  # raises before the chain moves on
            else:
                buf = self._buf
                if len(buf) >= self._max_pending:
                    # Writes keep failing: refuse (the handler reports it) rather than grow.
                    self._write_buffer()
                    buf = self._buf
                if not buf:
                    self._first_unsynced = time.monotonic()
                buf += line
            self.seq = seq
            self.head = digest
            self._segment_size += len(line)
            self.stats.entries += 1
            if write_through:
                if self._durability == "always":
                    self._sync()
            elif len(buf) >= self._buffer_bytes:
                self._write_buffer()
                if self._grouped:
                    self._sync()
            elif self._grouped and time.monotonic() - self._last_sync >= self._group_interval:
                self._write_buffer()
                self._sync()
            return seq, digest

    def _prepare_segment(self) -> None:
        """Before an entry when something may be due: the closed check, an ended seal
        epoch, rotation by size or age, opening the active segment. Lock held."""
        if self._closed:
            raise ImmutableLogError(f"writer for {self.stream_dir} is closed")
        if self._sealer is not None and self._seal_clock() >= self._seal_deadline:
            self._seal_due()
        if self._fd is not None and (
            self._segment_size >= self._rotate_at
            or (
                self._segment_deadline is not None
                and time.monotonic() >= self._segment_deadline
            )
        ):
            self._rotate()
        if self._fd is None:
            self._open_active()

    def _write(self, data: bytes | bytearray, last_seq: int) -> None:
        """Write whole entries; on failure cut the file back to the last entry boundary."""
        fd = self._fd
        assert fd is not None
        size = len(data)
        try:
            written = os.write(fd, data)
            while written < size:  # short write: finish it
                written += os.write(fd, memoryview(data)[written:])
        except OSError:
            self.stats.write_errors += 1
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._file_end)  # no half entry is ever left behind
            raise
        self._file_end += size
        stats = self.stats
        stats.writes += 1
        stats.bytes += size
        self.written_seq = last_seq
        if self._seal_unwritten:  # the oldest pending entry was a seal: it is written now
            self._seal_written()
        if self._commit_listeners:
            for listener in self._commit_listeners:
                listener(last_seq)

    def _write_buffer(self) -> None:
        if self._buf:
            self._write(self._buf, self.seq)  # on failure the entries stay buffered
            self._buf = bytearray()
            self._jpos = 0  # the journal's entries are in the segment now

    def _journal_entry(self, line: bytes, seq: int) -> None:
        """``flush`` mode: copy entry ``seq`` into the journal and the batch. Lock held.

        A full journal is written to the segment first; an entry larger than the journal
        is written on its own. Either write raises before the chain moves on.
        """
        jmap = self._jmap
        assert jmap is not None
        pos = self._jpos
        end = pos + len(line)
        if end > self._jcap:
            self._write_buffer()
            pos, end = 0, len(line)
            if end > self._jcap:
                self._write(line, seq)
                return
        jmap[pos:end] = line
        self._jpos = end
        if not self._buf:
            self._batch_started.set()  # the flusher writes the batch within 50 ms
        self._buf += line

    def _sync(self) -> None:
        if self._fd is None:
            return
        os.fdatasync(self._fd)
        now = time.monotonic()
        if self._first_unsynced is not None:
            lag = (now - self._first_unsynced) * 1000.0
            if lag > self.stats.max_sync_lag_ms:
                self.stats.max_sync_lag_ms = lag
            self._first_unsynced = None
        self._last_sync = now
        self.stats.syncs += 1

    def _rotate(self) -> None:
        self._write_buffer()
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        plain = self.stream_dir / segment_name(self.segment_number)
        os.chmod(plain, 0o444)
        fsync_dir(self.stream_dir)
        if self.compress:
            self._compressor.submit(plain)
        self.segment_number += 1
        self.stats.rotations += 1

    # ------------------------------------------------------------------ sealing
    def set_sealer(
        self, sealer: EpochSealer | None, clock: Callable[[], float] = time.time
    ) -> None:
        """Attach a forward-secure sealer (``None`` detaches and wipes the current one).

        Epochs that ended before now are sealed at once (a restart after downtime). Then
        ``append`` seals each ended epoch before the entry that finds it ended, and a
        background thread seals epochs that end while nothing is logged.
        """
        with self._lock:
            if self._closed:
                raise ImmutableLogError(f"writer for {self.stream_dir} is closed")
            if self._sealer is not None:
                self._sealer.close()
            self._sealer = sealer
            self._seal_unwritten = False  # the old sealer's seal: adopted at the next open
            self._seal_clock = clock
            self._timed = sealer is not None or self._max_age is not None
            if sealer is None:
                self._seal_deadline = math.inf
                return
            self._seal_deadline = sealer.deadline
            self._seal_due()
        if self._sealer_thread is None and threads_can_start():
            self._sealer_thread = threading.Thread(
                target=self._seal_idle, name="immutable-logging-seal", daemon=True
            )
            self._sealer_thread.start()

    @property
    def sealer(self) -> EpochSealer | None:
        """The attached sealer, if any."""
        return self._sealer

    def seal_if_due(self) -> bool:
        """Seal the current epoch if it has ended; return True if a seal was written."""
        with self._lock:
            if self._closed or self._sealer is None:
                return False
            return self._seal_due()

    def _seal_due(self) -> bool:
        """Chain the seal entry of the ended epoch(s) and write it. Lock held.

        The sealer's key moves on (:meth:`EpochSealer.commit`) only once the seal entry is
        written and synced (:meth:`_seal_written`); until then no other epoch is sealed. A
        seal that cannot be chained changes nothing and is tried again a second later. A
        failure is counted and logged by the sealer thread (never under this lock), not
        raised: the entry being logged must not be lost because sealing failed.
        """
        sealer = self._sealer
        assert sealer is not None
        now = self._seal_clock()
        if now < self._seal_deadline or self._seal_unwritten:
            return False
        try:
            payload = sealer.seal(now, self.seq, self.head)
            self._append_system(payload)
        except Exception as exc:  # nothing chained, the key unchanged: retry in a second
            self.stats.seal_errors += 1
            self._seal_deadline = now + 1.0
            self._defer_log(logging.ERROR, "sealing %s failed: %s; retrying in 1 s",
                            self.stream_dir, exc)
            return False
        self._seal_unwritten = True
        self._seal_deadline = math.inf  # no new seal before this one is written
        self.stats.seals += 1
        try:
            self._write_buffer()  # _write() calls _seal_written()
        except OSError as exc:  # chained; written with the next batch, then committed
            self.stats.seal_errors += 1
            self._defer_log(logging.ERROR, "writing the seal of %s failed: %s; the seal key "
                            "moves on once it is written", self.stream_dir, exc)
        return True

    def _seal_written(self) -> None:
        """The pending seal entry reached the OS: sync it, then let the sealer erase the
        sealed epoch's key. Lock held."""
        self._seal_unwritten = False
        sealer = self._sealer
        if sealer is None:  # detached or closed: the next writer adopts it from the chain
            return
        try:
            self._sync()
        except OSError as exc:
            self.stats.seal_errors += 1
            self._defer_log(logging.ERROR, "syncing the seal of %s failed: %s",
                            self.stream_dir, exc)
        try:
            sealer.commit()
        except Exception as exc:
            self.stats.seal_errors += 1
            self._defer_log(logging.ERROR, "saving the seal state of %s failed: %s",
                            self.stream_dir, exc)
        self._seal_deadline = sealer.deadline

    def _defer_log(self, level: int, msg: str, *args: Any) -> None:
        """Keep a message for :meth:`_emit_deferred_logs`. Logging under the writer lock
        could deadlock: a handler (ours behind a ``MemoryHandler``, say) may be held by a
        thread that waits for this lock."""
        self._deferred_logs.append((level, msg, args))

    def _emit_deferred_logs(self, *, to_stderr: bool = False) -> None:
        """Log the deferred messages; call without the writer lock."""
        with self._lock:
            items, self._deferred_logs = self._deferred_logs, []
        for level, msg, args in items:
            if to_stderr:  # at close(), which logging.shutdown() calls under a handler lock
                with contextlib.suppress(Exception):
                    sys.stderr.write(f"immutable_logging: {msg % args}\n")
            else:
                _log.log(level, msg, *args)

    def _append_system(self, payload: dict[str, Any]) -> None:
        """Chain a system entry into the buffer (no payload transform). Lock held."""
        if self._fd is not None and self._segment_size >= self._rotate_at:
            self._rotate()
        if self._fd is None:
            self._open_active()
        line, digest = make_line(self.seq + 1, self.head, canonical_payload(payload))
        if self._jmap is not None:
            self._journal_entry(line, self.seq + 1)
        else:
            if not self._buf:
                self._first_unsynced = time.monotonic()
            self._buf += line
        self.seq += 1
        self.head = digest
        self._segment_size += len(line)
        self.stats.entries += 1

    def _seal_idle(self) -> None:
        while True:
            if self._deferred_logs:
                self._emit_deferred_logs()
            if self._sealer is None:
                return
            # The writer's deadline: the sealer's, a retry a second after a failure, or
            # none while a chained seal waits to be written.
            wait = min(max(self._seal_deadline - self._seal_clock(), 0.0) + 0.001, 5.0)
            if self._flusher_stop.wait(wait):
                return
            if self._sealer is not None and self._seal_clock() >= self._seal_deadline:
                self.seal_if_due()

    def rotate(self) -> None:
        """Seal the active segment now (if it holds entries). Called from inside a write
        (a signal handler), it does nothing: the interrupted write must finish first."""
        if self._inside():
            return
        with self._lock:
            if self._fd is not None and self._segment_size:
                self._rotate()
        self._append_reentered()

    # ------------------------------------------------------------------ durability
    def flush(self) -> None:
        """Hand buffered entries to the OS (and ``fdatasync`` them in ``group``/``always``).

        Called from inside a write (a signal handler), it does nothing: the interrupted
        write must finish first, and hands the entries over itself or at the next call.
        """
        self._write_out(self._durability in ("group", "always"))

    def sync(self) -> None:
        """Make every appended entry durable on disk, whatever the durability mode (from
        inside a write, as :meth:`flush`, nothing)."""
        self._write_out(True)

    def _write_out(self, sync: bool) -> None:
        """:meth:`flush` (``sync`` as the durability mode says) and :meth:`sync`."""
        if self._inside():
            return
        while True:  # a loop, not a call per round: a signal storm cannot deepen the stack
            self._append_reentered()  # logged by a signal handler or finalizer meanwhile
            with self._lock:
                if self._fd is not None:
                    self._write_buffer()
                    if sync:
                        self._sync()
            if not self._reentered:  # else logged while this round wrote: hand it over too
                return

    def _start_flusher(self) -> None:
        name = "group-commit" if self._grouped else "journal"
        self._flusher = threading.Thread(
            target=self._flush_idle, name=f"immutable-logging-{name}", daemon=True
        )
        self._flusher.start()

    def _flush_idle(self) -> None:
        """``group``: write and sync idle entries; ``flush``: write the journal's batch."""
        if not self._grouped:
            self._write_journaled()
            return
        interval = self._group_interval
        while not self._flusher_stop.wait(interval):
            if self._buf and time.monotonic() - self._last_sync >= interval:
                failure: OSError | None = None
                with self._lock:
                    if not self._closed and self._buf:
                        try:
                            self._write_buffer()
                            self._sync()
                        except OSError as exc:  # entries stay buffered; retried next time
                            failure = exc
                if failure is not None:  # logged without the lock: see _write_journaled
                    _log.warning("group commit of %s failed: %s", self.stream_dir, failure)

    def _write_journaled(self) -> None:
        """Write each batch ``JOURNAL_WRITE_INTERVAL`` after its first entry; sleep while
        no entry is pending (no periodic wake-ups of an idle process)."""
        while True:
            self._batch_started.wait()
            if self._flusher_stop.wait(JOURNAL_WRITE_INTERVAL):
                return
            failure: OSError | None = None
            with self._lock:
                if self._closed:  # close() ran while we waited for the lock: it set the
                    return  # events already, so clearing one now would wait forever
                self._batch_started.clear()  # the next entry into an empty batch sets it
                if not self._buf:
                    continue
                try:
                    self._write_buffer()
                except OSError as exc:  # the entries stay in the journal; retried
                    self._batch_started.set()
                    failure = exc
            if failure is not None:
                # Never log while holding the writer lock: a handler of that record may
                # wait for a thread that waits for this lock.
                _log.warning("writing the batch of %s failed: %s; the entries stay in the "
                             "journal", self.stream_dir, failure)

    def close(self, timeout: float | None = 30.0, *, keep_stream: bool = False) -> None:
        """Write and sync everything, finish compressing sealed segments, release the lock.

        With ``keep_stream`` the stream stays locked until :meth:`release_stream`: the
        handler ships and signs the last entries first, so that no other writer (another
        process) takes the stream and starts its own replicator meanwhile. Idempotent.
        """
        if self._inside():
            # A signal handler closing the writer in the middle of a write would cut it
            # short; the stream stays open and locked (release_stream() keeps it too).
            raise ImmutableLogError(
                f"close() of {self.stream_dir} called from inside one of its writes (a "
                "signal handler or a finalizer): the writer stays open")
        pending: BaseException | None = None
        if not self._closed:
            try:
                self._append_reentered()
            except Exception as exc:  # closing goes on; the failure is raised at the end
                pending = exc
        with self._lock:
            if self._closed:
                return
            if self._sealer is not None:  # whole epochs that ended; never a partial one
                self._seal_due()
                self._sealer.close()
                self._sealer = None
            self._closed = True
            self._flusher_stop.set()
            self._batch_started.set()
            failure: OSError | None = None
            if self._fd is not None:
                try:
                    self._write_buffer()
                    os.fsync(self._fd)
                except OSError as exc:
                    failure = exc
                fd, self._fd = self._fd, None  # never written again, even if close fails
                try:
                    os.close(fd)
                except OSError as exc:
                    failure = failure or exc
            journal, self._journal, self._jmap = self._journal, None, None
            if journal is not None:  # keep it while it holds entries the segment lacks
                journal.close(remove=failure is None and not self._buf)
        if self._flusher is not None:
            self._flusher.join(timeout)
        if self._sealer_thread is not None:
            self._sealer_thread.join(timeout)
        if self._deferred_logs:
            self._emit_deferred_logs(to_stderr=True)
        self._compressor.drain(timeout)
        if not keep_stream:
            self.release_stream()  # else still in _LIVE_WRITERS: a fork child releases it
        if self._reentered and failure is None:
            count, self._reentered = len(self._reentered), []
            raise ImmutableLogError(
                f"closing {self.stream_dir}: {count} entries logged by a signal handler or "
                "a finalizer while close() ran were not written") from pending
        if pending is not None and failure is None:
            raise ImmutableLogError(
                f"closing {self.stream_dir}: an entry logged by a signal handler or a "
                f"finalizer could not be written: {pending}") from pending
        if failure is not None:
            lost = self.seq - self.written_seq
            where = (
                "; they are kept in the journal, and the stream's next writer appends them"
                if journal is not None and self._buf else ""
            )
            raise ImmutableLogError(
                f"closing {self.stream_dir}: {failure}; the last {lost} entries could not be "
                f"written{where}"
            ) from failure

    def release_stream(self) -> None:
        """Unlock the stream (after ``close(keep_stream=True)``). Idempotent. A writer
        that is not closed (its close() refused, see there) keeps it: another writer must
        never take a stream that is still written."""
        if not self._closed:
            return
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        _LIVE_WRITERS.discard(self)

    # The settings are fixed at construction: append() works out what it needs from them
    # once, so an assignment would silently change nothing. Open a new writer instead.
    @property
    def durability(self) -> str:
        """``none``, ``flush``, ``group`` or ``always`` (read-only)."""
        return self._durability

    @property
    def group_interval(self) -> float:
        """For ``group``: the longest time between ``fdatasync`` calls, in seconds
        (read-only)."""
        return self._group_interval

    @property
    def max_bytes(self) -> int:
        """Size at which the active segment rotates; 0 = never (read-only)."""
        return self._max_bytes

    @property
    def max_age(self) -> float | None:
        """Age in seconds at which the active segment rotates; None = never (read-only)."""
        return self._max_age

    @property
    def buffer_bytes(self) -> int:
        """Size of the write buffer for ``none`` and ``group``, and of the batches of
        ``flush`` (up to a quarter of the journal) (read-only)."""
        return self._buffer_bytes

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or the writer was abandoned after ``fork``)."""
        return self._closed

    def _abandon_after_fork(self) -> None:
        """In a forked child: drop the parent's buffer and descriptors without writing.

        The parent still owns the stream; the child must open a new writer (stream).
        Closing the inherited lock descriptor does not release the parent's ``flock``.
        """
        self._closed = True
        self._buf = bytearray()
        if self._journal is not None:  # unmap our copy; the parent's mapping is its own
            with contextlib.suppress(Exception):
                self._journal.map.close()
        self._journal = self._jmap = None
        self._lock = owned_rlock()
        self._reentered = []  # the parent appends what it kept
        self._flusher = None
        if self._sealer is not None:  # the parent keeps sealing its stream: wipe our copy
            self._sealer.close()
        self._sealer = None
        self._sealer_thread = None
        self._compressor = _Compressor()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self.release_stream()


def _is_read_only(path: Path) -> bool:
    """True when the owner-write bit is off (how the writer marks a sealed segment)."""
    return not os.stat(path).st_mode & 0o200

