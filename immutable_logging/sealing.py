"""Forward-secure sealing of chain streams: key state on disk, the writer's sealer, the checker.

This module wires the primitives of :mod:`immutable_logging.seal` into the chain
(``docs/FORMAT.md``, "Seals"). Its three parts:

Epoch grid and tenant key (``<root>/<tenant>/.seal-state.json``)
    ``keygen`` draws a seed and fixes a wall-clock grid: epoch ``n`` covers
    ``[t0 + n*E, t0 + (n+1)*E)``. The state file holds ``key_F`` of the newest epoch ``F``
    any writer of the tenant reached (``key_{n+1} = SHA-256(label || key_n)``), the grid
    and the grid's *genesis tag* (an HMAC under the seed, so a verifier with the seed can
    trust the grid). ``t0`` is set one epoch in the past, so the file starts at ``key_1``
    and the seed itself never touches the disk. Writers advance the file (``flock`` on
    ``.seal-state.lock`` + atomic rewrite) as time passes; it never moves backwards.

Stream keys (``<stream>/.seal-key.json``)
    A stream that starts sealing in epoch ``n`` derives its own key
    ``K_n = HMAC(key_n, origin)`` and evolves it one way, epoch by epoch, with every seal.
    A stream therefore never depends on tenant keys that other writers already erased:
    after a restart it seals its trailing entries and the downtime under the key of its
    own oldest unsealed epoch, which is all its state file ever held.

Seals
    :class:`StreamSealer` is the chain writer's hook. When an epoch boundary passes it
    returns one seal payload covering every entry since the previous seal (the previous
    seal entry included), for the time range from its epoch's start to the current
    epoch's start: normally one epoch, a longer *span* after downtime. The key evolves
    by the number of epochs covered, the stream state is rewritten atomically and the
    tenant file is advanced, but only once the seal entry is written and synced
    (:meth:`StreamSealer.commit`). A crash before that leaves no seal and the old key (the
    epoch is sealed again) or the seal in the chain and the old key: the next writer then
    finds the seal, checks its tag and moves the key on. In that window the disk holds the
    key of an epoch next to its seal, until the stream is opened again.

:class:`SealChecker` verifies a stream's seals with the seed alone (see its docstring for
every rule and problem reason).
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compression import READ_ERRORS
from .entry import split_line
from .errors import ConfigurationError, ImmutableLogError, SealError
from .fileio import atomic_write, make_log_directory, unlock_and_close
from .layout import list_segments
from .own_loggers import own_logger
from .seal import (
    DEFAULT_EPOCH_SECONDS,
    ZERO_HEAD,
    EpochKey,
    SealRecord,
    _coerce_seed,
    decode_seed,
    derive_stream_key,
    evolve_key,
    generate_seed,
    genesis_tag,
)

__all__ = [
    "STREAM_STATE",
    "TENANT_STATE",
    "EpochGrid",
    "SealChecker",
    "StreamSealer",
    "init_tenant_sealing",
    "load_grid",
    "sealing_configured",
]

_log = own_logger("immutable_logging.sealing")

TENANT_STATE = ".seal-state.json"
TENANT_LOCK = ".seal-state.lock"
STREAM_STATE = ".seal-key.json"
#: Written by a restore whose log holds seals: the seal state never leaves its host, so
#: the restored tenant has none (see :func:`restored_seals_note`).
SEALS_RESTORED = ".seals-restored.json"
STATE_FORMAT = 1
DEFAULT_TOLERANCE = 60.0
"""Seconds an entry's ``ts`` may lie outside the epoch that seals it (a record is created
before the writer appends it; a queue in between may delay it)."""

#: ``problem(reason, file, seq, detail)``, how :class:`SealChecker` reports.
ProblemSink = Callable[[str, str, "int | None", str], None]


# ------------------------------------------------------------------------ the grid


@dataclass(frozen=True)
class EpochGrid:
    """A tenant's epoch schedule: epoch ``n`` covers ``[t0 + n*E, t0 + (n+1)*E)``."""

    t0: float
    epoch_seconds: float
    genesis: str

    def start(self, epoch: int) -> float:
        """Start time of *epoch* (always computed as ``t0 + epoch * E``)."""
        return self.t0 + epoch * self.epoch_seconds

    def epoch_at(self, when: float) -> int:
        """The epoch containing time *when* (0 for times before ``t0``)."""
        n = max(0, math.floor((when - self.t0) / self.epoch_seconds))
        while n > 0 and self.start(n) > when:  # float rounding at a boundary
            n -= 1
        while self.start(n + 1) <= when:
            n += 1
        return n

    def verifies(self, seed: bytes) -> bool:
        """True if the genesis tag binds this grid to *seed*."""
        try:
            expected = genesis_tag(seed, self.t0, self.epoch_seconds)
        except ConfigurationError:
            return False
        return hmac.compare_digest(expected, self.genesis)

    def to_json(self) -> dict[str, Any]:
        """The grid members as stored in state files and seal entries."""
        return {"t0": self.t0, "epoch_seconds": self.epoch_seconds, "genesis": self.genesis}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> EpochGrid:
        """Read the grid members of a state file or seal entry.

        Raises:
            ConfigurationError: a member is missing or invalid.
        """
        t0, seconds, genesis = doc.get("t0"), doc.get("epoch_seconds"), doc.get("genesis")
        if (
            isinstance(t0, bool)
            or not isinstance(t0, int | float)
            or not math.isfinite(t0)
            or isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds <= 0
            or not isinstance(genesis, str)
            or len(genesis) != 64
        ):
            raise ConfigurationError("missing or invalid epoch grid (t0, epoch_seconds, genesis)")
        return cls(float(t0), float(seconds), genesis)


# -------------------------------------------------------------------- tenant state


@contextlib.contextmanager
def _tenant_lock(tdir: Path) -> Iterator[None]:
    fd = os.open(tdir / TENANT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        unlock_and_close(fd)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise ConfigurationError(f"{what} {path} is not format {STATE_FORMAT}")
    return doc


def _read_key(doc: Mapping[str, Any], path: Path) -> tuple[int, bytes]:
    epoch, key = doc.get("epoch"), doc.get("key")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ConfigurationError(f"{path} has an invalid epoch")
    try:
        raw = bytes.fromhex(key) if isinstance(key, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigurationError(f"{path} has an invalid key")
    return epoch, raw


def sealing_configured(tdir: str | os.PathLike[str]) -> bool:
    """True if the tenant directory has a seal state (``keygen`` ran for it)."""
    return (Path(tdir) / TENANT_STATE).exists()


def restored_seals_note(tdir: str | os.PathLike[str]) -> str | None:
    """What to tell the operator of a tenant restored from a replica with seals and no
    seal state of its own (None for any other tenant)."""
    tdir = Path(tdir)
    if sealing_configured(tdir) or not (tdir / SEALS_RESTORED).exists():
        return None
    return (
        f"{tdir} was restored from a replica of a sealed log, and the seal state never "
        "leaves its host: new entries are NOT sealed. The restored seals stay verifiable "
        "(`immutable-log verify --seed`); a new seal state for this tenant would give the "
        "restored epochs another grid, so seal_seed is not used here: log into another "
        "tenant or directory to seal again"
    )


def load_grid(tdir: str | os.PathLike[str]) -> EpochGrid | None:
    """The tenant's epoch grid from its state file, or None without one (not verified)."""
    try:
        doc = _read_json(Path(tdir) / TENANT_STATE, "seal state")
    except FileNotFoundError:
        return None
    return EpochGrid.from_json(doc)


def init_tenant_sealing(
    tdir: str | os.PathLike[str],
    seed: bytes | str | None = None,
    epoch_seconds: float = DEFAULT_EPOCH_SECONDS,
    clock: Callable[[], float] = time.time,
) -> tuple[bytes, EpochGrid]:
    """Create a tenant's seal state; return ``(seed, grid)``. The caller shows the seed once.

    The grid starts one epoch ago (``t0 = now - E``), so the file stores ``key_1`` and the
    seed is never written to disk.

    Raises:
        ConfigurationError: a state already exists (restarting at epoch 0 would let the
            new key forge the old seals' replacements), the tenant was restored from a
            sealed replica (:func:`restored_seals_note`), or bad arguments.
    """
    tdir = Path(tdir)
    restored = restored_seals_note(tdir)
    if restored is not None:
        raise ConfigurationError(restored)
    raw_seed = generate_seed() if seed is None else _coerce_seed(seed)
    if isinstance(epoch_seconds, bool) or not isinstance(epoch_seconds, int | float):
        raise ConfigurationError("epoch_seconds must be a number")
    if not math.isfinite(epoch_seconds) or epoch_seconds <= 0:
        raise ConfigurationError(f"epoch_seconds must be positive, got {epoch_seconds!r}")
    make_log_directory(tdir)
    seconds = float(epoch_seconds)
    t0 = float(clock()) - seconds
    grid = EpochGrid(t0, seconds, genesis_tag(raw_seed, t0, seconds))
    with _tenant_lock(tdir):
        path = tdir / TENANT_STATE
        if path.exists():
            raise ConfigurationError(
                f"{path} already exists: this tenant is sealed with another seed"
            )
        key = evolve_key(raw_seed)
        _write_tenant(path, 1, key, grid)
    return raw_seed, grid


def _write_tenant(path: Path, epoch: int, key: bytes, grid: EpochGrid) -> None:
    doc = {"format": STATE_FORMAT, "epoch": epoch, "key": key.hex(), **grid.to_json()}
    atomic_write(path, json.dumps(doc, sort_keys=True).encode("ascii"))


def _tenant_key_at(tdir: Path, epoch: int) -> tuple[int, bytes]:
    """Evolve the tenant key to ``max(epoch, file epoch)``, persisting it; return both."""
    path = tdir / TENANT_STATE
    with _tenant_lock(tdir):
        doc = _read_json(path, "seal state")
        file_epoch, key = _read_key(doc, path)
        grid = EpochGrid.from_json(doc)
        target = max(epoch, file_epoch)
        holder = EpochKey(key, file_epoch)
        holder.advance_to(target)
        new_key = bytes.fromhex(holder.hex())
        holder.wipe()
        if target > file_epoch:
            _write_tenant(path, target, new_key, grid)
    return target, new_key


def _advance_tenant(tdir: Path, epoch: int) -> None:
    """Move the tenant key forward to *epoch* if the file is behind (never backwards)."""
    path = tdir / TENANT_STATE
    with _tenant_lock(tdir):
        doc = _read_json(path, "seal state")
        file_epoch, key = _read_key(doc, path)
        if file_epoch >= epoch:
            return
        holder = EpochKey(key, file_epoch)
        holder.advance_to(epoch)
        _write_tenant(path, epoch, bytes.fromhex(holder.hex()), EpochGrid.from_json(doc))
        holder.wipe()


def check_seed_matches(tdir: str | os.PathLike[str], seed: bytes | str) -> None:
    """Raise ConfigurationError unless *seed* made the tenant's existing seal state."""
    grid = load_grid(tdir)
    if grid is not None and not grid.verifies(_coerce_seed(seed)):
        raise ConfigurationError(
            f"seal_seed does not match the seal state of {tdir} (genesis tag differs)"
        )


# ---------------------------------------------------------------------- the sealer


#: How a seal entry's line shows its kind (canonical JSON: no spaces).
SEAL_MARKER = b'"kind":"seal"'


def seal_payload(line: bytes) -> dict[str, Any] | None:
    """The payload of an entry line that is a seal entry (its own ``kind``, not a member
    named so deeper inside an entry), else None."""
    if SEAL_MARKER not in line:
        return None
    try:
        payload = json.loads(line)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) and payload.get("kind") == "seal" else None


def _last_seal_payload(stream_dir: Path, after_seq: int) -> dict[str, Any] | None:
    """The payload of the stream's last seal entry after entry ``after_seq``, or None.

    Reads segments backwards, newest first, and stops at the segment that starts at or
    before ``after_seq + 1``: a seal the sealer has not committed comes after the entries
    it already sealed, so at most about one epoch of entries is read.
    """
    for segment in reversed(list_segments(stream_dir)):
        try:
            with segment.open() as handle:
                data = handle.read()
        except READ_ERRORS:
            continue  # unreadable: the verifier reports it
        end = len(data)
        while (hit := data.rfind(SEAL_MARKER, 0, end)) >= 0:
            start = data.rfind(b"\n", 0, hit) + 1
            stop = data.find(b"\n", hit)
            end = start
            parsed = split_line(data[start : stop if stop >= 0 else len(data)])
            if parsed is None:
                continue  # a damaged or torn line: the verifier reports it
            if parsed[0] <= after_seq:
                return None  # back at what the last committed seal covers: none pending
            payload = seal_payload(data[start : stop if stop >= 0 else len(data)])
            if payload is not None:
                return payload
        first = split_line(data[: max(data.find(b"\n"), 0)])
        if first is not None and first[0] <= after_seq + 1:
            return None
    return None


class StreamSealer:
    """Seals one stream's epochs for its :class:`~immutable_logging.chain.ChainWriter`.

    Not thread-safe: the writer calls it under its own lock.

    Args:
        tdir: the tenant directory (holding ``.seal-state.json``).
        stream_dir: the stream directory (its ``.seal-key.json`` is created if missing).
        tenant: tenant id; the origin bound into every tag is ``"<tenant>/<stream>"``.
        chain_seq: the stream's last seq when the writer opened it.
        clock: time source (injectable for tests).

    Raises:
        ConfigurationError: the tenant has no seal state, or the stream's state belongs
            to another origin or grid.
    """

    def __init__(
        self,
        tdir: str | os.PathLike[str],
        stream_dir: str | os.PathLike[str],
        tenant: str,
        *,
        chain_seq: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tdir = Path(tdir)
        self._path = Path(stream_dir) / STREAM_STATE
        self._clock = clock
        self.tenant = tenant
        self.origin = f"{tenant}/{Path(stream_dir).name}"
        grid = load_grid(self._tdir)
        if grid is None:
            raise ConfigurationError(
                f"no seal state in {self._tdir}: run `immutable-log keygen` or pass seal_seed"
            )
        self.grid = grid
        self._persist_failed = False
        self._pending: tuple[int, int] | None = None  # (end epoch, last seq) of seal()
        if self._path.exists():
            self._load(chain_seq)
            self._adopt_chained_seal(Path(stream_dir))
        else:
            self._create(chain_seq)
        self._deadline = grid.start(self._key.epoch + 1)

    def _load(self, chain_seq: int) -> None:
        doc = _read_json(self._path, "stream seal state")
        epoch, key = _read_key(doc, self._path)
        if doc.get("origin") != self.origin:
            raise ConfigurationError(
                f"{self._path} belongs to origin {doc.get('origin')!r}, not {self.origin!r}"
            )
        if EpochGrid.from_json(doc) != self.grid:
            raise ConfigurationError(
                f"{self._path} was made under another seal state than {self._tdir}"
            )
        created = doc.get("created_seq", 0)
        self._created_seq = created if isinstance(created, int) and created >= 0 else 0
        sealed, first = doc.get("sealed_seq"), doc.get("first_epoch")
        if not isinstance(sealed, int) or sealed < 0 or not isinstance(first, int):
            raise ConfigurationError(f"{self._path} has an invalid sealed_seq or first_epoch")
        if sealed > chain_seq:
            _log.warning(
                "stream %s: the chain ends at seq %d but seq %d was already sealed: "
                "sealed entries were removed (verification will report it)",
                self.origin, chain_seq, sealed,
            )
            sealed = chain_seq
        self._key = EpochKey(key, epoch)
        self.sealed_seq = sealed
        self.first_epoch = first

    def _adopt_chained_seal(self, stream_dir: Path) -> None:
        """Move past an epoch whose seal is in the chain but whose key state was not saved.

        :meth:`commit` saves the evolved key only after the seal entry was chained, so a
        crash in between leaves the seal in the chain (the journal replays it) and the
        state at its epoch: sealing that epoch again would repeat it. The seal is adopted
        only if its tag verifies under the saved key.
        """
        payload = _last_seal_payload(stream_dir, max(self.sealed_seq, self._created_seq))
        if payload is None:
            return
        try:
            record = SealRecord.from_payload(payload)
        except SealError:
            return  # the verifier reports a malformed seal
        if record.origin != self.origin or not self._key.verifies(record):
            return  # an older epoch's seal (the normal case), or not ours
        end_epoch = self.grid.epoch_at(record.t_end)
        self._key.advance_to(end_epoch)
        self.sealed_seq = max(self.sealed_seq, record.last_seq)
        self._persist()
        with contextlib.suppress(OSError, ConfigurationError):
            _advance_tenant(self._tdir, end_epoch)
        _log.warning(
            "stream %s: the seal of epoch %d is in the chain but the key state was saved "
            "before it (the writer stopped in between); the key moved on to epoch %d",
            self.origin, record.epoch, end_epoch,
        )

    def _create(self, chain_seq: int) -> None:
        now = self._clock()
        epoch, tenant_key = _tenant_key_at(self._tdir, self.grid.epoch_at(now))
        self._key = EpochKey(derive_stream_key(tenant_key, self.origin), epoch)
        # Entries already in the stream are adopted by the first seal; if they are older
        # than its epoch the verifier says so (seal_entry_time).
        self.sealed_seq = 0
        self.first_epoch = epoch
        self._created_seq = chain_seq  # a seal of this state comes after this entry
        self._persist()

    def _persist(self) -> None:
        doc = {
            "format": STATE_FORMAT,
            "epoch": self._key.epoch,
            "key": self._key.hex(),
            "origin": self.origin,
            "sealed_seq": self.sealed_seq,
            "first_epoch": self.first_epoch,
            "created_seq": self._created_seq,
            **self.grid.to_json(),
        }
        atomic_write(self._path, json.dumps(doc, sort_keys=True).encode("ascii"))

    @property
    def epoch(self) -> int:
        """The stream's current (unsealed) epoch."""
        return self._key.epoch

    @property
    def deadline(self) -> float:
        """Time at which the current epoch ends and must be sealed."""
        return self._deadline

    def seal(self, now: float, last_seq: int, head: str) -> dict[str, Any]:
        """Seal everything since the previous seal, up to the start of the epoch of *now*.

        Nothing changes until :meth:`commit`: call it once the entry is chained.

        Args:
            now: the current time (must be past :attr:`deadline`).
            last_seq: seq of the chain's last entry (the seal entry will be ``last_seq+1``).
            head: hash of that entry.

        Returns:
            The payload of the seal entry to append.
        """
        grid = self.grid
        epoch = self._key.epoch
        end_epoch = max(grid.epoch_at(now), epoch + 1)
        first_seq = min(self.sealed_seq, last_seq) + 1
        if last_seq == 0:
            head = ZERO_HEAD
        start, end = grid.start(epoch), grid.start(end_epoch)
        tag = self._key.tag(start, end, first_seq, last_seq, head, self.origin)
        record = SealRecord(epoch, start, end, first_seq, last_seq, head, tag, self.origin)
        self._pending = (end_epoch, last_seq)
        return {**record.to_payload(), "ts": now, "tenant": self.tenant, **grid.to_json()}

    def commit(self) -> None:
        """The seal entry of the last :meth:`seal` is in the chain: evolve the key past its
        epoch (the old key is gone from memory and disk) and save the state.

        Called only once the entry is written and synced, so that a crash before it leaves
        either no seal and the old key (the epoch is sealed again) or the seal in the chain
        (adopted when the stream is opened again), never a saved key without its seal.

        Raises:
            ImmutableLogError: saving the stream or tenant state failed (the key moved on in
                memory all the same, so it is never used twice).
        """
        if self._pending is None:
            return
        end_epoch, last_seq = self._pending
        self._pending = None
        self._key.advance_to(end_epoch)
        self.sealed_seq = last_seq
        self._deadline = self.grid.start(end_epoch + 1)
        failures = []
        try:
            self._persist()
            self._persist_failed = False
        except OSError as exc:  # the key moved on in memory anyway: it is never reused
            self._persist_failed = True
            failures.append(f"could not persist stream seal state {self._path}: {exc}")
        try:
            _advance_tenant(self._tdir, end_epoch)
        except (OSError, ConfigurationError) as exc:
            failures.append(f"could not advance tenant seal state in {self._tdir}: {exc}")
        if failures:  # raised, not logged: the writer calls this under its lock
            raise ImmutableLogError("; ".join(failures))

    def close(self) -> None:
        """Wipe the in-memory key (the state file keeps the current epoch's key)."""
        self._key.wipe()
        self._deadline = math.inf


# --------------------------------------------------------------------- the checker


class _TenantKeys:
    """Tenant keys derived from the seed, cached so many streams cost one evolution pass."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._cache: dict[int, bytes] = {}

    def key(self, epoch: int) -> bytes:
        if epoch not in self._cache:
            base = max((e for e in self._cache if e <= epoch), default=None)
            key = self._seed if base is None else self._cache[base]
            for _ in range(epoch - (0 if base is None else base)):
                key = evolve_key(key)
            self._cache[epoch] = key
        return self._cache[epoch]


@dataclass
class SealSummary:
    """What the seals of one stream prove."""

    sealed_from: float | None = None
    sealed_to: float | None = None
    sealed_seq: int = 0
    seals: int = 0
    unsealed_trailing: int = 0


class SealChecker:
    """Checks one stream's seal entries with the seed alone, fed entry by entry in order.

    Rules, each with its problem reason (``file`` and ``seq`` name the entry):

    * ``seal_malformed``: a seal entry lacks members or has bad values.
    * ``seal_origin``: the seal names another ``<tenant>/<stream>``.
    * ``seal_grid``: the seal's epoch grid is not the one the seed's genesis tag binds.
    * ``seal_epoch_gap`` / ``seal_reorder``: epochs must follow on from the stream's first
      seal without gaps (a gap is an epoch whose seal was removed: truncation, stripped
      seals resealed with a later key) or repeats.
    * ``seal_time``: the time range is not ``[start(epoch), start(epoch + k))``, k >= 1.
    * ``seal_forged``: the tag does not verify with the stream key of that epoch.
    * ``seal_seq``: the seal does not cover exactly the entries since the previous seal
      entry (the first seal starts at the stream's first entry) up to the entry before it.
    * ``seal_head``: ``head`` is not the hash of entry ``last_seq`` (the chain was
      rewritten with recomputed hashes).
    * ``seal_entry_time``: an entry's ``ts`` lies outside the time range of the seal that
      covers it (beyond ``tolerance``): old entries resealed with a newer key.
    * ``seal_missing``: unsealed entries span an epoch boundary, which a running writer
      always seals (seals stripped); or a stream has entries, no seals and no grid.
    * ``truncation``: the stream's key state is at a later epoch than its last seal
      covers: seals (and the entries before them) were cut off the end.
    * ``seal_state``: the stream's key state does not derive from the seed.
    """

    def __init__(
        self,
        seed: bytes | str,
        tenant: str,
        stream_dir: Path,
        problem: ProblemSink,
        *,
        grid: EpochGrid | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
        tenant_keys: _TenantKeys | None = None,
    ) -> None:
        self._seed = decode_seed(seed) if isinstance(seed, str) else _coerce_seed(seed)
        self._keys = tenant_keys or _TenantKeys(self._seed)
        self._problem = problem
        self._stream_dir = stream_dir
        self.origin = f"{tenant}/{stream_dir.name}"
        self._tolerance = tolerance
        if grid is not None and not grid.verifies(self._seed):
            problem(
                "seal_grid", str(stream_dir.parent / TENANT_STATE), None,
                "the tenant's epoch grid is not bound to this seed (wrong seed, or the "
                "state was replaced)",
            )
            grid = None
        self.grid = grid
        self.summary = SealSummary()
        self._key: EpochKey | None = None
        self._stream_key0: tuple[int, bytes] | None = None
        self._expected_epoch: int | None = None
        self._expected_first: int | None = None
        self._prev_hash = ZERO_HEAD
        self._last_seal_seq: int | None = None
        self._last_seal_end: float | None = None
        self._last_file = ""
        self._pending: list[tuple[float, int, str]] = []  # (ts, seq, file): min and max

    # -- feeding
    def entry(self, seq: int, entry_hash: str, obj: Mapping[str, Any] | None, file: str) -> None:
        """Feed the next entry (``obj`` is its decoded JSON, None if undecodable)."""
        if self._expected_first is None:
            self._expected_first = seq
        self._last_file = file
        if obj is not None and obj.get("kind") == "seal":
            self._seal(seq, obj, file)
        else:
            ts = obj.get("ts") if obj is not None else None
            if isinstance(ts, int | float) and not isinstance(ts, bool):
                self._note_ts(float(ts), seq, file)
        self._prev_hash = entry_hash

    def _note_ts(self, ts: float, seq: int, file: str) -> None:
        pending = self._pending
        if not pending:
            pending.extend([(ts, seq, file), (ts, seq, file)])
        elif ts < pending[0][0]:
            pending[0] = (ts, seq, file)
        elif ts > pending[1][0]:
            pending[1] = (ts, seq, file)

    def _seal(self, seq: int, obj: Mapping[str, Any], file: str) -> None:
        problem = self._problem
        try:
            record = SealRecord.from_payload(obj)
        except SealError as exc:
            problem("seal_malformed", file, seq, exc.detail)
            return
        grid = self._check_grid(obj, seq, file)
        if record.origin != self.origin:
            problem("seal_origin", file, seq, f"origin {record.origin!r}, expected {self.origin!r}")
        expected = self._expected_epoch
        if expected is not None and record.epoch > expected:
            problem(
                "seal_epoch_gap", file, seq,
                f"epoch {record.epoch} follows epoch {expected - 1}: the seals of epochs "
                f"{expected}..{record.epoch - 1} are missing (entries were cut, or seals "
                "were replaced using a later key)",
            )
        elif expected is not None and record.epoch < expected:
            problem("seal_reorder", file, seq, f"epoch {record.epoch} where {expected} was due")
        span = 1
        if grid is not None:
            span = self._check_time(record, grid, seq, file)
        if not self._tag_ok(record):
            problem("seal_forged", file, seq, f"epoch {record.epoch}: tag does not verify")
        expected_first = self._expected_first if self._last_seal_seq is None else (
            self._last_seal_seq
        )
        if record.last_seq != seq - 1 or record.first_seq != expected_first:
            problem(
                "seal_seq", file, seq,
                f"seal covers seq {record.first_seq}..{record.last_seq}, expected "
                f"{expected_first}..{seq - 1}",
            )
        elif record.head != self._prev_hash:
            problem(
                "seal_head", file, seq,
                f"epoch {record.epoch} sealed head {record.head[:16]}.. but entry "
                f"{record.last_seq} hashes to {self._prev_hash[:16]}..: the entries it "
                "covers were rewritten",
            )
        self._check_pending(record.t_start, record.t_end)
        summary = self.summary
        if summary.sealed_from is None:
            summary.sealed_from = record.t_start
        summary.sealed_to = record.t_end
        summary.sealed_seq = record.last_seq
        summary.seals += 1
        self._expected_epoch = record.epoch + span
        self._last_seal_seq = seq
        self._last_seal_end = record.t_end
        self._pending = []
        # The seal entry itself is covered by the next seal: its ts is the sealing time.
        ts = obj.get("ts")
        if isinstance(ts, int | float) and not isinstance(ts, bool):
            self._note_ts(float(ts), seq, file)

    def _check_grid(self, obj: Mapping[str, Any], seq: int, file: str) -> EpochGrid | None:
        try:
            grid = EpochGrid.from_json(obj)
        except ConfigurationError as exc:
            self._problem("seal_grid", file, seq, str(exc))
            return self.grid
        if self.grid is None:
            if not grid.verifies(self._seed):
                self._problem(
                    "seal_grid", file, seq, "epoch grid is not bound to the seed (genesis tag)"
                )
                return None
            self.grid = grid
        elif grid != self.grid:
            self._problem("seal_grid", file, seq, "epoch grid differs from the tenant's")
        return self.grid

    def _check_time(self, record: SealRecord, grid: EpochGrid, seq: int, file: str) -> int:
        span = round((record.t_end - grid.t0) / grid.epoch_seconds) - record.epoch
        if record.t_start != grid.start(record.epoch) or span < 1 or (
            record.t_end != grid.start(record.epoch + span)
        ):
            self._problem(
                "seal_time", file, seq,
                f"epoch {record.epoch} claims [{record.t_start}, {record.t_end}), which is "
                "not its slot of the epoch grid",
            )
            return max(span, 1)
        return span

    def _tag_ok(self, record: SealRecord) -> bool:
        if self._stream_key0 is None:
            self._stream_key0 = (
                record.epoch,
                derive_stream_key(self._keys.key(record.epoch), self.origin),
            )
        first_epoch, key0 = self._stream_key0
        if record.epoch < first_epoch:
            return False
        if self._key is None or record.epoch < self._key.epoch:
            if self._key is not None:
                self._key.wipe()
            self._key = EpochKey(key0, first_epoch)
        self._key.advance_to(record.epoch)
        return self._key.verifies(record)

    def _check_pending(self, t_start: float, t_end: float) -> None:
        if not self._pending:
            return
        (lo, lo_seq, lo_file), (hi, hi_seq, hi_file) = self._pending
        tol = self._tolerance
        if lo < t_start - tol:
            self._problem(
                "seal_entry_time", lo_file, lo_seq,
                f"entry time {lo} is before its seal's epoch [{t_start}, {t_end}): an older "
                "entry was sealed with a newer key",
            )
        if hi > t_end + tol:
            self._problem(
                "seal_entry_time", hi_file, hi_seq,
                f"entry time {hi} is after the end of its seal's epoch [{t_start}, {t_end})",
            )

    # -- end of stream
    def finish(self, entries_after_last_seal: int) -> SealSummary:
        """Check the unsealed tail and the stream's key state; return the summary."""
        summary = self.summary
        summary.unsealed_trailing = entries_after_last_seal
        if self._pending:
            self._check_tail()
        self._check_state()
        return summary

    def _check_tail(self) -> None:
        (lo, lo_seq, lo_file), (hi, hi_seq, hi_file) = self._pending
        grid, tol = self.grid, self._tolerance
        if grid is None:
            self._problem(
                "seal_missing", lo_file, lo_seq,
                "the stream has entries but no seal and no verifiable epoch grid",
            )
            return
        if self._last_seal_end is not None:
            limit = self._last_seal_end + grid.epoch_seconds
            if lo < self._last_seal_end - tol:
                self._problem(
                    "seal_entry_time", lo_file, lo_seq,
                    f"unsealed entry time {lo} is before the end of the last seal",
                )
        else:
            limit = grid.start(grid.epoch_at(lo + tol) + 1)
        if hi >= limit + tol:
            self._problem(
                "seal_missing", hi_file, hi_seq,
                f"unsealed entries span the epoch boundary at {limit}, which a running "
                "writer seals: seals after "
                + (f"seq {self._last_seal_seq}" if self._last_seal_seq else "the start")
                + " were removed",
            )

    def _check_state(self) -> None:
        path = self._stream_dir / STREAM_STATE
        try:
            doc = _read_json(path, "stream seal state")
            epoch, key = _read_key(doc, path)
            first = doc.get("first_epoch")
        except FileNotFoundError:
            return  # a copy without the key state (replica): nothing more to check
        except ConfigurationError as exc:
            self._problem("seal_state", str(path), None, str(exc))
            return
        if not isinstance(first, int) or first < 0 or first > epoch:
            self._problem("seal_state", str(path), None, "invalid first_epoch")
            return
        derived = derive_stream_key(self._keys.key(first), self.origin)
        holder = EpochKey(derived, first)
        holder.advance_to(epoch)
        ok = hmac.compare_digest(holder.hex(), key.hex())
        holder.wipe()
        if not ok:
            self._problem(
                "seal_state", str(path), None,
                "the stream's key state does not derive from the seed (replaced or corrupt)",
            )
            return
        if self._stream_key0 is not None and self._stream_key0[0] != first:
            self._problem(
                "seal_missing", str(path), None,
                f"the stream began sealing in epoch {first} but its first seal is of epoch "
                f"{self._stream_key0[0]}: its earlier seals were removed",
            )
        expected = self._expected_epoch
        if expected is None:
            if epoch > first:
                self._problem(
                    "seal_missing", str(path), None,
                    f"the stream sealed epochs {first}..{epoch - 1} but no seal is left",
                )
        elif epoch > expected:
            self._problem(
                "truncation", self._last_file, self._last_seal_seq,
                f"the stream's key is at epoch {epoch} but its seals stop before epoch "
                f"{expected}: seals and entries were cut off the end",
            )
