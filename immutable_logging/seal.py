"""Forward-secure seals (threat-model layer 2) and signed checkpoints (layer 3).

Seals
=====
Time is cut into *epochs*. Epoch ``n`` has its own HMAC key::

    key_0     = seed                                   (32 random bytes, kept off-host)
    key_{n+1} = SHA-256(b"immutable-logging/seal-evolve/v1" || key_n)

The evolution is one-way: ``key_n`` gives every later key but no earlier one. When an
epoch ends, the writer asks :class:`ForwardSecureSealer` for a :class:`SealRecord`: an
HMAC-SHA256 tag (see :func:`seal_tag`) over the epoch number, the epoch's time range,
the range of sequence numbers it covers, the chain head after its last entry and the
stream's origin. The key is then evolved and the old one overwritten in memory and on
disk. An attacker who takes the host at time T learns only the key of the current
epoch, so cannot forge seals of earlier epochs: editing entries sealed before T is
detected by :class:`SealVerifier`, which needs only the seed.

Lessons from journald's CVE-2023-31438/31439 (forward-secure sealing that did not bind
the epoch and time): the epoch number and the time range are part of every tag, and
*every* epoch is sealed, including empty ones (``first_seq == last_seq + 1``, head
unchanged), so epoch numbers and time ranges have no gaps for an attacker to use.

Signed checkpoints
==================
A checkpoint is a C2SP signed note (https://c2sp.org/signed-note) whose text is a
C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint)::

    <origin>\\n<tree size>\\n<base64 RFC 6962 root hash>\\n
    \\n
    \u2014 <key name> <base64(4-byte key id || 64-byte Ed25519 signature)>\\n

with ``key id = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import stat
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from immutable_logging.errors import CheckpointError, ConfigurationError, SealError
from immutable_logging.fileio import atomic_write

__all__ = [
    "DEFAULT_EPOCH_SECONDS",
    "EVOLVE_LABEL",
    "ZERO_HEAD",
    "Checkpoint",
    "CheckpointSigner",
    "EpochKey",
    "ForwardSecureSealer",
    "SealRecord",
    "SealVerification",
    "SealVerifier",
    "checkpoint_key_id",
    "decode_seed",
    "derive_epoch_key",
    "derive_stream_key",
    "encode_seed",
    "encode_vkey",
    "evolve_key",
    "generate_seed",
    "generate_signing_key",
    "genesis_tag",
    "parse_and_verify_checkpoint",
    "parse_vkey",
    "private_key_to_pem",
    "seal_tag",
    "sign_checkpoint",
]

KEY_SIZE = 32
EVOLVE_LABEL = b"immutable-logging/seal-evolve/v1"
TAG_LABEL = b"immutable-logging/seal-tag/v1"
STREAM_KEY_LABEL = b"immutable-logging/stream-key/v1"
GENESIS_LABEL = b"immutable-logging/seal-genesis/v1"
STATE_FORMAT = 1
DEFAULT_EPOCH_SECONDS = 300.0
MAX_CATCHUP_EPOCHS = 4096
"""After this many elapsed epochs in one :meth:`ForwardSecureSealer.seal_due` call
(a long downtime, a clock jump), the remaining time is sealed as one long empty epoch."""
ZERO_HEAD = "0" * 64
"""The chain head before the first entry (the ``prev`` of seq 1)."""

_SEED_PREFIX = "ils1-"
_SEED_CHECK_SIZE = 4
_HEX64 = re.compile(r"[0-9a-f]{64}")
_U64_MAX = (1 << 64) - 1


# --------------------------------------------------------------------------- seeds


def generate_seed() -> bytes:
    """Return a new random 32-byte sealing seed (keep it off-host)."""
    return secrets.token_bytes(KEY_SIZE)


def _seed_check(seed: bytes) -> bytes:
    return hashlib.sha256(b"ils1" + seed).digest()[:_SEED_CHECK_SIZE]


def encode_seed(seed: bytes) -> str:
    """Encode a seed as ``ils1-<base32(seed || 4-byte checksum)>`` (lowercase, no padding).

    Raises:
        ConfigurationError: *seed* is not 32 bytes.
    """
    if not isinstance(seed, bytes | bytearray) or len(seed) != KEY_SIZE:
        raise ConfigurationError(f"a seal seed is {KEY_SIZE} bytes")
    body = base64.b32encode(bytes(seed) + _seed_check(bytes(seed))).decode("ascii")
    return _SEED_PREFIX + body.rstrip("=").lower()


def decode_seed(text: str) -> bytes:
    """Decode a seed written by :func:`encode_seed`.

    Case, surrounding whitespace and ``-``/space separators after the prefix are
    ignored, so a seed can be written down in groups.

    Raises:
        ConfigurationError: wrong prefix, bad characters, wrong length or checksum
            mismatch (a typo).
    """
    cleaned = text.strip().lower() if isinstance(text, str) else ""
    if not cleaned.startswith(_SEED_PREFIX):
        raise ConfigurationError(f"a seal seed starts with {_SEED_PREFIX!r}")
    body = re.sub(r"[\s-]", "", cleaned[len(_SEED_PREFIX) :]).upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError("seal seed is not valid base32") from exc
    if len(raw) != KEY_SIZE + _SEED_CHECK_SIZE:
        raise ConfigurationError("seal seed has the wrong length")
    if base64.b32encode(raw).decode("ascii").rstrip("=") != body:
        raise ConfigurationError("seal seed is not canonical base32 (typo?)")
    seed, check = raw[:KEY_SIZE], raw[KEY_SIZE:]
    if not hmac.compare_digest(check, _seed_check(seed)):
        raise ConfigurationError("seal seed checksum mismatch (typo?)")
    return seed


def _coerce_seed(seed: bytes | bytearray | str) -> bytes:
    if isinstance(seed, str):
        return decode_seed(seed)
    if isinstance(seed, bytes | bytearray) and len(seed) == KEY_SIZE:
        return bytes(seed)
    raise ConfigurationError(f"a seal seed is {KEY_SIZE} raw bytes or an 'ils1-' string")


# ------------------------------------------------------------------ key evolution


def evolve_key(key: bytes | bytearray) -> bytes:
    """Return ``SHA-256(EVOLVE_LABEL || key)``, the key of the next epoch."""
    h = hashlib.sha256(EVOLVE_LABEL)
    h.update(key)
    return h.digest()


def derive_epoch_key(seed: bytes | bytearray | str, epoch: int) -> bytes:
    """Return the key of *epoch* by evolving the seed *epoch* times (O(epoch))."""
    if not _is_uint(epoch):
        raise ConfigurationError(f"epoch must be a non-negative integer, got {epoch!r}")
    key = _coerce_seed(seed)
    for _ in range(epoch):
        key = evolve_key(key)
    return key


def derive_stream_key(tenant_key: bytes | bytearray, origin: str) -> bytes:
    """Return a stream's own key for the epoch of *tenant_key*.

    ``HMAC-SHA256(tenant_key, STREAM_KEY_LABEL || 0x00 || utf-8 origin)``. A stream
    starting at epoch ``n`` takes ``derive_stream_key(key_n, origin)`` as its key of epoch
    ``n`` and then evolves it with :func:`evolve_key` like any epoch key, independently of
    the tenant key; a verifier holding the seed derives both.
    """
    if not isinstance(tenant_key, bytes | bytearray) or len(tenant_key) != KEY_SIZE:
        raise ConfigurationError(f"a tenant key is {KEY_SIZE} bytes")
    if not isinstance(origin, str):
        raise ConfigurationError("origin must be a string")
    message = STREAM_KEY_LABEL + b"\x00" + origin.encode("utf-8")
    return hmac.new(bytes(tenant_key), message, hashlib.sha256).digest()


def genesis_tag(seed: bytes | bytearray | str, t0: float, epoch_seconds: float) -> str:
    """Return the hex tag that binds an epoch grid (``t0``, ``epoch_seconds``) to a seed.

    ``HMAC-SHA256(seed, GENESIS_LABEL || f64 t0 || f64 epoch_seconds)`` (big-endian).
    Made once by ``keygen`` while the seed is known; a verifier with the seed checks it,
    so whoever holds a later key cannot move the grid (and with it the time range an
    epoch number stands for).
    """
    key = _coerce_seed(seed)
    t0 = _check_time("t0", t0)
    seconds = _check_epoch_seconds(epoch_seconds)
    message = GENESIS_LABEL + struct.pack(">dd", t0, seconds)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class EpochKey:
    """The key of one epoch, kept in a ``bytearray`` that is overwritten in place.

    Erasure is best effort: CPython may keep transient copies (hash digests, hex
    strings written to the state file) until their memory is reused.
    """

    __slots__ = ("_epoch", "_key")

    def __init__(self, key: bytes | bytearray, epoch: int = 0) -> None:
        """Hold *key* (32 bytes) as the key of *epoch*."""
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
            raise ConfigurationError(f"an epoch key is {KEY_SIZE} bytes")
        if not _is_uint(epoch):
            raise ConfigurationError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._key = bytearray(key)
        self._epoch = epoch

    @property
    def epoch(self) -> int:
        """The epoch this key belongs to."""
        return self._epoch

    def advance(self) -> None:
        """Evolve to the next epoch, overwriting the current key in place."""
        self._key[:] = evolve_key(self._key)
        self._epoch += 1

    def advance_to(self, epoch: int) -> None:
        """Evolve forward until the key belongs to *epoch* (must not be in the past)."""
        if epoch < self._epoch:
            raise ConfigurationError(f"cannot go back from epoch {self._epoch} to {epoch}")
        while self._epoch < epoch:
            self.advance()

    def tag(
        self,
        t_start: float,
        t_end: float,
        first_seq: int,
        last_seq: int,
        head_hash_hex: str,
        origin: str,
    ) -> str:
        """Return :func:`seal_tag` for this key and epoch."""
        return seal_tag(
            self._key, self._epoch, t_start, t_end, first_seq, last_seq, head_hash_hex, origin
        )

    def verifies(self, record: SealRecord) -> bool:
        """True if *record* is of this key's epoch and its tag verifies."""
        return record.epoch == self._epoch and record.verify_tag(self._key)

    def hex(self) -> str:
        """The key as hexadecimal (for the state file)."""
        return self._key.hex()

    def wipe(self) -> None:
        """Overwrite the key with zeros."""
        self._key[:] = bytes(KEY_SIZE)


# --------------------------------------------------------------------------- tags


def _is_uint(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U64_MAX


def _check_time(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_seal_fields(
    epoch: int, t_start: float, t_end: float, first_seq: int, last_seq: int, head: str, origin: str
) -> None:
    if not _is_uint(epoch):
        raise ConfigurationError(f"epoch must be a non-negative integer, got {epoch!r}")
    if _check_time("t_end", t_end) < _check_time("t_start", t_start):
        raise ConfigurationError(f"t_end {t_end!r} is before t_start {t_start!r}")
    if not _is_uint(first_seq) or first_seq < 1:
        raise ConfigurationError(f"first_seq must be an integer >= 1, got {first_seq!r}")
    if not _is_uint(last_seq) or last_seq < first_seq - 1:
        raise ConfigurationError(f"last_seq {last_seq!r} must be >= first_seq - 1 ({first_seq})")
    if not isinstance(head, str) or not _HEX64.fullmatch(head):
        raise ConfigurationError(f"head must be 64 lowercase hex characters, got {head!r}")
    if not isinstance(origin, str):
        raise ConfigurationError(f"origin must be a string, got {origin!r}")


def _tag_message(
    epoch: int, t_start: float, t_end: float, first_seq: int, last_seq: int, head: str, origin: str
) -> bytes:
    """Unambiguous encoding: label, fixed-width fields, then the length-prefixed origin."""
    origin_bytes = origin.encode("utf-8")
    return b"".join(
        (
            struct.pack(">H", len(TAG_LABEL)),
            TAG_LABEL,
            struct.pack(">QddQQ", epoch, t_start, t_end, first_seq, last_seq),
            bytes.fromhex(head),
            struct.pack(">I", len(origin_bytes)),
            origin_bytes,
        )
    )


def seal_tag(
    key: bytes | bytearray,
    epoch: int,
    t_start: float,
    t_end: float,
    first_seq: int,
    last_seq: int,
    head_hash_hex: str,
    origin: str,
) -> str:
    """Return the hex HMAC-SHA256 seal tag of one epoch.

    The MAC input is ``u16 len(label) || label || u64 epoch || f64 t_start ||
    f64 t_end || u64 first_seq || u64 last_seq || 32-byte head || u32 len(origin) ||
    utf-8 origin`` (big-endian; ``label = b"immutable-logging/seal-tag/v1"``). An
    empty epoch has ``first_seq == last_seq + 1`` and the unchanged head.

    Raises:
        ConfigurationError: a field is out of range (negative, non-finite, bad hex, ...).
    """
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise ConfigurationError(f"a seal key is {KEY_SIZE} bytes")
    _check_seal_fields(epoch, t_start, t_end, first_seq, last_seq, head_hash_hex, origin)
    message = _tag_message(
        epoch, float(t_start), float(t_end), first_seq, last_seq, head_hash_hex, origin
    )
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class SealRecord:
    """The seal of one epoch, written into the chain as a ``{"kind": "seal"}`` entry.

    ``first_seq..last_seq`` are the entries of the epoch; an empty epoch has
    ``first_seq == last_seq + 1`` and ``head`` is the unchanged chain head (the hash
    of entry ``last_seq``, or :data:`ZERO_HEAD` when ``last_seq == 0``).
    """

    epoch: int
    t_start: float
    t_end: float
    first_seq: int
    last_seq: int
    head: str
    tag: str
    origin: str = ""

    def __post_init__(self) -> None:
        """Validate every field (raises ConfigurationError)."""
        _check_seal_fields(
            self.epoch,
            self.t_start,
            self.t_end,
            self.first_seq,
            self.last_seq,
            self.head,
            self.origin,
        )
        if not isinstance(self.tag, str) or not _HEX64.fullmatch(self.tag):
            raise ConfigurationError("tag must be 64 lowercase hex characters")

    @property
    def empty(self) -> bool:
        """True if no entry was logged during the epoch."""
        return self.first_seq > self.last_seq

    def to_payload(self) -> dict[str, Any]:
        """Return the payload of the inline chain entry (``kind`` = ``"seal"``)."""
        return {
            "kind": "seal",
            "epoch": self.epoch,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head": self.head,
            "origin": self.origin,
            "tag": self.tag,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SealRecord:
        """Rebuild a record from a chain entry's payload (extra members are ignored).

        Raises:
            SealError: a member is missing or has a wrong type or value.
        """
        if payload.get("kind") != "seal":
            raise SealError("entry is not a seal", reason="seal_malformed")
        try:
            return cls(
                epoch=payload["epoch"],
                t_start=payload["t_start"],
                t_end=payload["t_end"],
                first_seq=payload["first_seq"],
                last_seq=payload["last_seq"],
                head=payload["head"],
                tag=payload["tag"],
                origin=payload.get("origin", ""),
            )
        except KeyError as exc:
            raise SealError(f"seal lacks member {exc.args[0]!r}", reason="seal_malformed") from exc
        except ConfigurationError as exc:
            raise SealError(f"malformed seal: {exc}", reason="seal_malformed") from exc

    def verify_tag(self, key: bytes | bytearray) -> bool:
        """True if :attr:`tag` is this record's tag under *key* (the epoch's key)."""
        expected = seal_tag(
            key,
            self.epoch,
            self.t_start,
            self.t_end,
            self.first_seq,
            self.last_seq,
            self.head,
            self.origin,
        )
        return hmac.compare_digest(expected, self.tag)


# ------------------------------------------------------------------ state file


@dataclass(frozen=True, slots=True)
class _State:
    epoch: int
    key: bytes
    epoch_start: float
    epoch_seconds: float
    origin: str


def _parse_state(raw: bytes) -> _State:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError("seal state file is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise ConfigurationError(f"seal state file is not format {STATE_FORMAT}")
    epoch, key, origin = doc.get("epoch"), doc.get("key"), doc.get("origin")
    if not _is_uint(epoch):
        raise ConfigurationError("seal state file has an invalid epoch")
    if not isinstance(key, str) or not _HEX64.fullmatch(key):
        raise ConfigurationError("seal state file has an invalid key")
    if not isinstance(origin, str):
        raise ConfigurationError("seal state file has an invalid origin")
    start = _check_time("epoch_start", doc.get("epoch_start"))
    seconds = _check_epoch_seconds(doc.get("epoch_seconds"))
    return _State(epoch, bytes.fromhex(key), start, seconds, origin)


def _check_epoch_seconds(value: object) -> float:
    seconds = _check_time("epoch_seconds", value)
    if seconds <= 0:
        raise ConfigurationError(f"epoch_seconds must be positive, got {value!r}")
    return seconds


# ---------------------------------------------------------------------- sealer


class ForwardSecureSealer:
    """Seals epochs for one stream's chain writer and keeps the evolving key on disk.

    The state file (JSON, mode 0600, rewritten atomically on every epoch change)::

        {"format": 1, "epoch": <int>, "key": "<64 hex: key of that epoch>",
         "epoch_start": <float, unix time>, "epoch_seconds": <float>, "origin": "<str>"}

    Usage by the writer, under its own lock (this class is not thread-safe)::

        if sealer.due(now):                       # a float comparison
            for rec in sealer.seal_due(now, first_seq, last_seq, head):
                append_entry(rec.to_payload())

    Call :meth:`due` before appending each entry, so that the entries of an epoch
    are exactly the ones logged before its end. The key is evolved and persisted
    *before* the records are returned: a crash before they reach the chain loses
    those seals (the verifier reports the missing epochs) but never reuses a key.
    """

    def __init__(
        self,
        state_path: str | os.PathLike[str],
        seed: bytes | bytearray | str | None = None,
        epoch_seconds: float = DEFAULT_EPOCH_SECONDS,
        clock: Callable[[], float] = time.time,
        *,
        origin: str | None = None,
    ) -> None:
        """Create a new state at epoch 0 from *seed*, or load the existing state.

        Args:
            state_path: the state file; its directory must exist.
            seed: the initial key (32 bytes or an ``ils1-`` string). Given: a new
                state is created at epoch 0 starting at ``clock()`` (an existing state
                file is an error). ``None``: the existing state is loaded.
            epoch_seconds: epoch length; on load, a different value replaces the
                stored one (the current epoch's deadline moves accordingly).
            clock: time source used for the start of epoch 0 and when ``now`` is None.
            origin: identifies the stream (tenant/stream) in every tag. On load it
                must match the stored origin if given.

        Raises:
            ConfigurationError: missing, corrupt or mismatching state, state already
                present when a seed is given, or invalid arguments.
        """
        self._path = Path(state_path)
        self._clock = clock
        self._seconds = _check_epoch_seconds(epoch_seconds)
        self._last_sealed_seq: int | None = None
        if seed is not None:
            state = self._create(_coerce_seed(seed), "" if origin is None else origin)
        else:
            state = self._load(origin)
        self._key = EpochKey(state.key, state.epoch)
        self._origin = state.origin
        self._start = state.epoch_start
        self._deadline = self._start + self._seconds
        if seed is not None or state.epoch_seconds != self._seconds:
            self._persist()

    def _create(self, seed: bytes, origin: str) -> _State:
        if not isinstance(origin, str):
            raise ConfigurationError("origin must be a string")
        if not self._path.parent.is_dir():
            raise ConfigurationError(f"directory of seal state {self._path} does not exist")
        if self._path.exists():
            raise ConfigurationError(
                f"seal state {self._path} already exists; refusing to restart at epoch 0"
            )
        return _State(0, seed, _check_time("clock()", self._clock()), self._seconds, origin)

    def _load(self, origin: str | None) -> _State:
        try:
            raw = self._path.read_bytes()
            mode = self._path.stat().st_mode
        except FileNotFoundError as exc:
            raise ConfigurationError(f"seal state {self._path} is missing (no seed)") from exc
        except OSError as exc:
            raise ConfigurationError(f"cannot read seal state {self._path}: {exc}") from exc
        state = _parse_state(raw)
        if origin is not None and origin != state.origin:
            raise ConfigurationError(
                f"seal state belongs to origin {state.origin!r}, not {origin!r}"
            )
        if stat.S_IMODE(mode) & 0o077:
            os.chmod(self._path, 0o600)
        return state

    def _persist(self) -> None:
        doc = {
            "format": STATE_FORMAT,
            "epoch": self._key.epoch,
            "key": self._key.hex(),
            "epoch_start": self._start,
            "epoch_seconds": self._seconds,
            "origin": self._origin,
        }
        atomic_write(self._path, json.dumps(doc, sort_keys=True).encode("ascii"))

    @property
    def epoch(self) -> int:
        """The current (unsealed) epoch number."""
        return self._key.epoch

    @property
    def epoch_start(self) -> float:
        """Start time of the current epoch."""
        return self._start

    @property
    def deadline(self) -> float:
        """Time at which the current epoch is due to be sealed."""
        return self._deadline

    @property
    def epoch_seconds(self) -> float:
        """Nominal length of an epoch."""
        return self._seconds

    @property
    def origin(self) -> str:
        """The origin bound into every tag."""
        return self._origin

    @property
    def state_path(self) -> Path:
        """Path of the state file."""
        return self._path

    def due(self, now: float) -> bool:
        """True if the current epoch has ended at time *now* (a single comparison)."""
        return now >= self._deadline

    def seal(self, now: float | None, first_seq: int, last_seq: int, head_hash: str) -> SealRecord:
        """Seal the current epoch now and start the next one.

        The epoch ends at ``min(now, deadline)`` (never before its start), so this
        also closes an epoch early, e.g. when the writer shuts down. Use
        :meth:`seal_due` from the logging path: it also seals elapsed empty epochs.

        Args:
            now: the current time (``None``: ``clock()``).
            first_seq: first seq of the epoch's entries.
            last_seq: last seq (``first_seq - 1`` for an empty epoch).
            head_hash: chain head (hash of entry ``last_seq``) as 64 hex.

        Raises:
            ConfigurationError: invalid arguments, or *first_seq* does not follow the
                previously sealed range.
            OSError: the state file could not be written. The key has already
                advanced in memory (it is never reused), so this epoch's seal is lost
                and the verifier will report the missing epoch.
        """
        now = self._now(now)
        t_end = min(max(now, self._start), self._deadline)
        record = self._seal_until(t_end, first_seq, last_seq, head_hash)
        self._persist()
        return record

    def seal_due(
        self, now: float | None, first_seq: int, last_seq: int, head_hash: str
    ) -> list[SealRecord]:
        """Seal every epoch that has ended by *now*: one record per epoch, in order.

        The first record covers ``first_seq..last_seq``; each further elapsed epoch is
        sealed empty (``last_seq + 1 .. last_seq``, same head). Beyond
        :data:`MAX_CATCHUP_EPOCHS` records the remaining whole epochs are sealed as one
        long empty epoch. Returns ``[]`` when nothing is due. The state file is
        written once.

        Raises:
            ConfigurationError / OSError: as :meth:`seal`.
        """
        now = self._now(now)
        records: list[SealRecord] = []
        if not self.due(now):
            return records
        records.append(self._seal_until(self._deadline, first_seq, last_seq, head_hash))
        while self.due(now) and len(records) < MAX_CATCHUP_EPOCHS:
            records.append(self._seal_until(self._deadline, last_seq + 1, last_seq, head_hash))
        if self.due(now):
            whole = math.floor((now - self._start) / self._seconds) * self._seconds
            end = max(self._start + whole, self._deadline)
            records.append(self._seal_until(end, last_seq + 1, last_seq, head_hash))
        self._persist()
        return records

    def _now(self, now: float | None) -> float:
        return _check_time("now", self._clock() if now is None else now)

    def _seal_until(self, t_end: float, first_seq: int, last_seq: int, head: str) -> SealRecord:
        """Tag the current epoch as ending at *t_end*, then evolve the key in memory."""
        if self._last_sealed_seq is not None and first_seq != self._last_sealed_seq + 1:
            raise ConfigurationError(
                f"first_seq {first_seq} does not follow last sealed seq {self._last_sealed_seq}"
            )
        start = self._start
        tag = self._key.tag(start, t_end, first_seq, last_seq, head, self._origin)
        record = SealRecord(
            self._key.epoch, start, t_end, first_seq, last_seq, head, tag, self._origin
        )
        self._key.advance()
        self._last_sealed_seq = last_seq
        self._start = t_end
        self._deadline = t_end + self._seconds
        return record

    def close(self) -> None:
        """Wipe the in-memory key; the sealer is unusable afterwards."""
        self._key.wipe()
        self._deadline = math.inf


# -------------------------------------------------------------------- verifier


@dataclass(frozen=True, slots=True)
class SealVerification:
    """What a run of valid seals proves.

    Attributes:
        epochs: number of seals checked (0: nothing is proven).
        first_epoch / last_epoch: epoch numbers of the first and last seal.
        t_start / t_end: the validated time span T1..T2.
        first_seq: first seq covered by the seals.
        last_seq: last sealed seq (entries after it are not sealed yet).
        head: chain head at ``last_seq``.
    """

    epochs: int
    first_epoch: int | None
    last_epoch: int | None
    t_start: float | None
    t_end: float | None
    first_seq: int | None
    last_seq: int | None
    head: str | None


class SealVerifier:
    """Checks a stream's seal records, in order, with the seed alone.

    Keys are derived forward from the seed and cached, so checking n consecutive
    seals costs n key evolutions in total. Records can be fed one at a time with
    :meth:`check` while scanning the chain, or all at once with :meth:`verify`.

    The caller must still check, against the chain, that each record's ``head`` is
    the hash of entry ``last_seq`` and that entries after the last seal are the
    only unsealed ones.
    """

    def __init__(
        self, seed: bytes | bytearray | str, origin: str | None = None, first_epoch: int = 0
    ) -> None:
        """Verify seals made from *seed*, starting at epoch *first_epoch*.

        Args:
            seed: the initial key (32 bytes or an ``ils1-`` string).
            origin: if given, every record must carry this origin.
            first_epoch: the epoch the first record must have (0 for a whole stream).
        """
        if not _is_uint(first_epoch):
            raise ConfigurationError(f"first_epoch must be a non-negative integer: {first_epoch!r}")
        self._seed = _coerce_seed(seed)
        self._origin = origin
        self._first_epoch = first_epoch
        self._key = EpochKey(self._seed, 0)
        self._first: SealRecord | None = None
        self._last: SealRecord | None = None
        self._count = 0

    def _key_for(self, epoch: int) -> EpochKey:
        if epoch < self._key.epoch:  # never happens for consecutive records
            self._key.wipe()
            self._key = EpochKey(self._seed, 0)
        self._key.advance_to(epoch)
        return self._key

    def check(self, record: SealRecord) -> None:
        """Check the next record.

        Raises:
            SealError: naming the epoch and a reason: ``seal_origin``,
                ``seal_epoch_gap``, ``seal_reorder``, ``seal_forged``, ``seal_time``,
                ``seal_seq`` or ``seal_head``.
        """
        if self._origin is not None and record.origin != self._origin:
            _fail(record, "seal_origin", f"origin {record.origin!r}, expected {self._origin!r}")
        self._check_epoch(record)
        if not self._key_for(record.epoch).verifies(record):
            _fail(record, "seal_forged", "tag does not verify with the epoch's key")
        prev = self._last
        if prev is None:
            if record.last_seq == 0 and record.head != ZERO_HEAD:
                _fail(record, "seal_head", "nothing logged yet but head is not the zero hash")
        else:
            _check_follows(prev, record)
        if self._first is None:
            self._first = record
        self._last = record
        self._count += 1

    def _check_epoch(self, record: SealRecord) -> None:
        expected = self._first_epoch if self._last is None else self._last.epoch + 1
        if record.epoch > expected:
            _fail(record, "seal_epoch_gap", f"epochs {expected}..{record.epoch - 1} missing")
        if record.epoch < expected:
            _fail(record, "seal_reorder", f"expected epoch {expected}: repeated or out of order")

    def result(self) -> SealVerification:
        """Summary of the records checked so far."""
        first, last = self._first, self._last
        if first is None or last is None:
            return SealVerification(0, None, None, None, None, None, None, None)
        return SealVerification(
            epochs=self._count,
            first_epoch=first.epoch,
            last_epoch=last.epoch,
            t_start=first.t_start,
            t_end=last.t_end,
            first_seq=first.first_seq,
            last_seq=last.last_seq,
            head=last.head,
        )

    def verify(self, records: Iterable[SealRecord]) -> SealVerification:
        """Check every record in order and return the summary.

        Raises:
            SealError: at the first invalid record (see :meth:`check`).
        """
        for record in records:
            self.check(record)
        return self.result()


def _fail(record: SealRecord, reason: str, detail: str) -> None:
    raise SealError(f"epoch {record.epoch}: {detail}", seq=record.first_seq, reason=reason)


def _check_follows(prev: SealRecord, record: SealRecord) -> None:
    if record.t_start != prev.t_end:
        _fail(record, "seal_time", f"starts at {record.t_start!r}, previous ended {prev.t_end!r}")
    if record.first_seq != prev.last_seq + 1:
        _fail(record, "seal_seq", f"first_seq {record.first_seq} after last_seq {prev.last_seq}")
    if record.empty and record.head != prev.head:
        _fail(record, "seal_head", "empty epoch but the chain head changed")


# ----------------------------------------------------------------- checkpoints

_SIG_TYPE_ED25519 = b"\x01"
_SIG_PREFIX = "\u2014 "
_MAX_NOTE_SIGNATURES = 100
_MAX_NOTE_CHARS = 1 << 20
_TREE_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


def _check_key_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not name
        or "+" in name
        or any(c.isspace() or ord(c) < 0x20 for c in name)
    ):
        raise ConfigurationError(f"invalid note key name {name!r} (non-empty, no spaces or '+')")
    return name


def checkpoint_key_id(key_name: str, public_key: bytes) -> bytes:
    """Return the C2SP note key id ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``."""
    _check_key_name(key_name)
    data = key_name.encode("utf-8") + b"\n" + _SIG_TYPE_ED25519 + public_key
    return hashlib.sha256(data).digest()[:4]


def _b64decode_canonical(text: str) -> bytes | None:
    """Strict standard base64; None unless *text* is the canonical encoding."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def generate_signing_key() -> bytes:
    """Return a new Ed25519 private key as its raw 32-byte seed."""
    return Ed25519PrivateKey.generate().private_bytes_raw()


def private_key_to_pem(private_key: bytes) -> bytes:
    """Serialize a raw 32-byte Ed25519 private key as unencrypted PKCS#8 PEM."""
    return _load_private_key(private_key).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def encode_vkey(key_name: str, public_key: bytes) -> str:
    """Return the note verifier key ``<name>+<hex key id>+<base64(0x01 || public key)>``."""
    if len(public_key) != KEY_SIZE:
        raise ConfigurationError("an Ed25519 public key is 32 bytes")
    key_id = checkpoint_key_id(key_name, public_key)
    encoded = base64.b64encode(_SIG_TYPE_ED25519 + public_key).decode("ascii")
    return f"{key_name}+{key_id.hex()}+{encoded}"


def parse_vkey(vkey: str) -> tuple[str, bytes]:
    """Parse a verifier key made by :func:`encode_vkey` into ``(key name, public key)``.

    Raises:
        ConfigurationError: malformed, not Ed25519, or the key id does not match.
    """
    parts = vkey.strip().split("+", 2) if isinstance(vkey, str) else []
    if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
        raise ConfigurationError("a verifier key is <name>+<8 hex key id>+<base64 key>")
    name = _check_key_name(parts[0])
    raw = _b64decode_canonical(parts[2])
    if raw is None or len(raw) != 1 + KEY_SIZE or raw[:1] != _SIG_TYPE_ED25519:
        raise ConfigurationError("verifier key is not an Ed25519 (type 0x01) key")
    if checkpoint_key_id(name, raw[1:]).hex() != parts[1]:
        raise ConfigurationError("verifier key id does not match its name and key")
    return name, raw[1:]


def _load_private_key(private_key: bytes | str | Ed25519PrivateKey) -> Ed25519PrivateKey:
    if isinstance(private_key, Ed25519PrivateKey):
        return private_key
    if isinstance(private_key, str):
        private_key = private_key.encode("ascii", "replace")
    if isinstance(private_key, bytes) and len(private_key) == KEY_SIZE:
        return Ed25519PrivateKey.from_private_bytes(private_key)
    if isinstance(private_key, bytes) and private_key.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(private_key, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"cannot load PEM private key: {exc}") from exc
        if isinstance(key, Ed25519PrivateKey):
            return key
        raise ConfigurationError("the PEM private key is not an Ed25519 key")
    raise ConfigurationError("a signing key is a raw 32-byte Ed25519 seed or a PEM key")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: origin, tree size and RFC 6962 root hash (plus optional extensions)."""

    origin: str
    tree_size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Validate the fields (raises ConfigurationError)."""
        for line in (self.origin, *self.extensions):
            if not isinstance(line, str) or not line or any(ord(c) < 0x20 for c in line):
                raise ConfigurationError(f"invalid checkpoint line {line!r}")
        if not _is_uint(self.tree_size):
            raise ConfigurationError(f"invalid tree size {self.tree_size!r}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != KEY_SIZE:
            raise ConfigurationError("a checkpoint root hash is 32 bytes")

    def body(self) -> str:
        """The note text (what is signed), ending in a newline."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        lines = [self.origin, str(self.tree_size), root, *self.extensions]
        return "\n".join(lines) + "\n"


class CheckpointSigner:
    """Signs checkpoints with an Ed25519 key under a C2SP note key name."""

    def __init__(self, private_key: bytes | str | Ed25519PrivateKey, key_name: str) -> None:
        """Load *private_key* (raw 32-byte seed, PEM bytes/str, or a key object).

        Raises:
            ConfigurationError: bad key material or key name.
        """
        self._key = _load_private_key(private_key)
        self._name = _check_key_name(key_name)
        self._public = self._key.public_key().public_bytes_raw()
        self._key_id = checkpoint_key_id(key_name, self._public)

    @property
    def key_name(self) -> str:
        """The note key name."""
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte note key id."""
        return self._key_id

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public

    @property
    def vkey(self) -> str:
        """The verifier key string to hand to verifiers (see :func:`encode_vkey`)."""
        return encode_vkey(self._name, self._public)

    def sign(self, checkpoint: Checkpoint) -> str:
        """Return the signed note of *checkpoint*."""
        body = checkpoint.body()
        signature = self._key.sign(body.encode("utf-8"))
        encoded = base64.b64encode(self._key_id + signature).decode("ascii")
        return f"{body}\n{_SIG_PREFIX}{self._name} {encoded}\n"


def sign_checkpoint(signer: CheckpointSigner, checkpoint: Checkpoint) -> str:
    """Return *checkpoint* as a signed note (same as ``signer.sign(checkpoint)``)."""
    return signer.sign(checkpoint)


def _malformed(detail: str) -> CheckpointError:
    return CheckpointError(detail, reason="checkpoint_malformed")


def _split_note(text: str | bytes) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Split a signed note into its text and ``(key name, key id, signature)`` lines."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _malformed("note is not valid UTF-8") from exc
    if not isinstance(text, str) or len(text) > _MAX_NOTE_CHARS:
        raise _malformed("note is not text or is too large")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise _malformed("note contains control characters")
    split = text.rfind("\n\n")
    if split < 0 or not text.endswith("\n"):
        raise _malformed("note has no blank line before its signatures")
    body, sig_block = text[: split + 1], text[split + 2 :]
    lines = sig_block[:-1].split("\n") if sig_block else []
    if not lines or len(lines) > _MAX_NOTE_SIGNATURES:
        raise _malformed("note has no signatures or too many")
    return body, [_parse_signature_line(line) for line in lines]


def _parse_signature_line(line: str) -> tuple[str, bytes, bytes]:
    if not line.startswith(_SIG_PREFIX):
        raise _malformed(f"bad signature line {line!r}")
    parts = line[len(_SIG_PREFIX) :].split(" ")
    if len(parts) != 2:
        raise _malformed(f"bad signature line {line!r}")
    try:
        name = _check_key_name(parts[0])
    except ConfigurationError as exc:
        raise _malformed(f"bad key name in signature line {line!r}") from exc
    raw = _b64decode_canonical(parts[1])
    if raw is None or len(raw) < 5:
        raise _malformed(f"bad signature encoding in {line!r}")
    return name, raw[:4], raw[4:]


def _parse_body(body: str) -> Checkpoint:
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise _malformed("checkpoint needs origin, tree size and root hash lines")
    origin, size, root_text, *extensions = lines
    if not _TREE_SIZE.fullmatch(size) or int(size) > _U64_MAX:
        raise _malformed(f"bad tree size {size!r}")
    root = _b64decode_canonical(root_text)
    if root is None or len(root) != KEY_SIZE:
        raise _malformed(f"bad root hash {root_text!r}")
    try:
        return Checkpoint(origin, int(size), root, tuple(extensions))
    except ConfigurationError as exc:
        raise _malformed(str(exc)) from exc


def _resolve_public_key(
    public_key: bytes | str | Ed25519PublicKey, key_name: str
) -> Ed25519PublicKey:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key
    if isinstance(public_key, str):
        name, raw = parse_vkey(public_key)
        if name != key_name:
            raise ConfigurationError(f"verifier key is for {name!r}, not {key_name!r}")
        public_key = raw
    if isinstance(public_key, bytes) and len(public_key) == KEY_SIZE:
        return Ed25519PublicKey.from_public_bytes(public_key)
    raise ConfigurationError("a public key is 32 raw bytes, a vkey string or a key object")


def parse_and_verify_checkpoint(
    text: str | bytes,
    public_key: bytes | str | Ed25519PublicKey,
    key_name: str,
    expected_origin: str | None = None,
) -> Checkpoint:
    """Verify a signed checkpoint note and return its checkpoint.

    Signature lines of other keys (other name or key id) are ignored, as the
    signed-note spec requires; every line of the given key must verify and at least
    one must be present. The text is only parsed once a signature has verified.

    Args:
        text: the note.
        public_key: raw 32-byte Ed25519 key, a vkey string, or a key object.
        key_name: the key name the note must be signed under.
        expected_origin: if given, the checkpoint's origin must equal it.

    Raises:
        CheckpointError: reason ``checkpoint_malformed``, ``checkpoint_unknown_key``
            (no signature of this key), ``checkpoint_bad_signature`` or
            ``checkpoint_origin``.
        ConfigurationError: *public_key* or *key_name* is itself invalid.
    """
    key = _resolve_public_key(public_key, _check_key_name(key_name))
    body, signatures = _split_note(text)
    key_id = checkpoint_key_id(key_name, key.public_bytes_raw())
    mine = [sig for name, kid, sig in signatures if name == key_name and kid == key_id]
    if not mine:
        raise CheckpointError(
            f"no signature by key {key_name!r} ({key_id.hex()})", reason="checkpoint_unknown_key"
        )
    for signature in mine:
        try:
            key.verify(signature, body.encode("utf-8"))
        except InvalidSignature as exc:
            raise CheckpointError(
                f"signature by {key_name!r} does not verify", reason="checkpoint_bad_signature"
            ) from exc
    checkpoint = _parse_body(body)
    if expected_origin is not None and checkpoint.origin != expected_origin:
        raise CheckpointError(
            f"origin {checkpoint.origin!r}, expected {expected_origin!r}",
            reason="checkpoint_origin",
        )
    return checkpoint
