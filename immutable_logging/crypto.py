"""AES-256-GCM payload encryption, key sources, key ids and nonce management.

This module is pure: it performs no logging and knows nothing about segments or
handlers. The chain writer encrypts with :meth:`PayloadCipher.sealer_parts` (the AAD
of :func:`build_aad`, the compact form of :meth:`PayloadCipher.encrypt_text`) per record;
readers and the verifier call :meth:`PayloadCipher.decrypt`.

Keys
    A :class:`Key` is 32 bytes of key material plus a short key id (``kid``). Keys come
    from an environment variable holding base64 (:func:`key_from_env`), from a
    passphrase stretched with scrypt (:func:`key_from_passphrase`, salt persisted in a
    salt file) or from raw bytes (:func:`key_from_bytes`). A :class:`Keyring` holds
    several keys with one *active* key used for encryption; older keys stay available
    for decryption, which is how keys are rotated. Per-tenant keys are separate
    keyrings, looked up through a :class:`KeyringResolver`.

Nonces
    GCM breaks catastrophically if a nonce ever repeats under one key, so nonces are
    never random alone. A nonce is ``prefix(4 random bytes) || counter(8 bytes, big
    endian)``. Counters are handed out in blocks that are *reserved on disk before use*
    by :class:`NonceSource` (state file rewritten with tmp + fsync + ``os.replace``,
    under an ``flock`` so several processes may share one state file). After a crash
    the next process starts at the first counter that was never reserved, so a counter
    value is never used twice for one key id. The random prefix, drawn again for every
    block, is defence in depth against a state file that is lost, restored from a backup
    or not shared between two writers using the same key.

AAD
    :func:`build_aad` binds tenant, stream, segment, sequence number and previous hash
    into the GCM additional data, so a ciphertext copied to any other position fails
    to decrypt instead of silently appearing there.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import itertools
import json
import os
import re
import secrets
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from immutable_logging.errors import (
    ConfigurationError,
    DecryptionError,
    ImmutableLogError,
    KeyUnavailableError,
)
from immutable_logging.fileio import fsync_dir, open_file, unlock_and_close, write_all

if sys.platform != "win32":
    import fcntl

__all__ = [
    "AAD_PREFIX",
    "ALG",
    "DEFAULT_KEY_ENV",
    "DEFAULT_NONCE_BLOCK",
    "DEFAULT_PREVIOUS_KEYS_ENV",
    "KEY_SIZE",
    "NONCE_SIZE",
    "SCRYPT_DEFAULTS",
    "Key",
    "Keyring",
    "KeyringResolver",
    "NonceCounter",
    "NonceSource",
    "PayloadCipher",
    "SealerParts",
    "aad_builder",
    "aad_format",
    "build_aad",
    "decode_key_b64",
    "generate_key",
    "key_from_bytes",
    "key_from_env",
    "key_from_passphrase",
    "key_id",
]

#: Algorithm name stored in the ``alg`` member of an encrypted payload.
ALG: Final = "A256GCM"
#: Key size in bytes (AES-256).
KEY_SIZE: Final = 32
#: GCM nonce size in bytes (96 bits).
NONCE_SIZE: Final = 12
#: GCM tag size in bytes (appended to the ciphertext).
TAG_SIZE: Final = 16
#: Environment variable read by :func:`key_from_env` by default.
DEFAULT_KEY_ENV: Final = "IMMUTABLE_LOG_KEY"
#: Environment variable with retired (decrypt-only) keys, read by :meth:`Keyring.from_env`.
DEFAULT_PREVIOUS_KEYS_ENV: Final = "IMMUTABLE_LOG_PREVIOUS_KEYS"
#: Counters reserved per state-file rewrite.
DEFAULT_NONCE_BLOCK: Final = 1 << 16
#: scrypt parameters used when a salt file is created.
SCRYPT_DEFAULTS: Final[Mapping[str, int]] = {"n": 1 << 15, "r": 8, "p": 1}
#: Domain/version prefix of every AAD built by :func:`build_aad`.
AAD_PREFIX: Final = "immutable-logging/aad/v1\x00"

_KID_DOMAIN: Final = b"immutable-logging/kid/v1"
_KID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_COUNTER_LIMIT: Final = 1 << 64
_SALT_SIZE: Final = 16
_STATE_FORMAT: Final = 1
_SALT_FORMAT: Final = 1
_AAD_FMT: Final = AAD_PREFIX + "%d:%s%d:%s%d,%d,%s"
_GEN_HINT: Final = (
    "generate one with: python -c \"import base64, os; "
    'print(base64.b64encode(os.urandom(32)).decode())"'
)

_b2a = binascii.b2a_base64
_a2b = binascii.a2b_base64


# --------------------------------------------------------------------------- keys


def key_id(material: bytes | bytearray | memoryview) -> str:
    """Return the stable key id of ``material``.

    The id is the first 8 bytes, as 16 lowercase hex digits, of
    ``SHA256(b"immutable-logging/kid/v1" || material)``. It identifies a key without
    revealing anything useful about it.
    """
    return hashlib.sha256(_KID_DOMAIN + bytes(material)).digest()[:8].hex()


def _check_kid(kid: object) -> str:
    if not isinstance(kid, str) or _KID_RE.fullmatch(kid) is None:
        raise ConfigurationError(
            f"invalid key id {kid!r}: expected 1-64 characters from [A-Za-z0-9_.:-], "
            "starting with a letter or digit"
        )
    return kid


class Key:
    """One AES-256 key, its key id, and its ``AESGCM`` object (built once).

    The material is never shown by ``repr``. Instances are immutable.
    """

    __slots__ = ("_aead", "_material", "kid", "origin")

    kid: str
    #: Where the key came from when that explains a key id nobody expected (a key from a
    #: passphrase names its salt file); None otherwise. Error messages quote it.
    origin: str | None
    _material: bytes
    _aead: AESGCM

    def __init__(
        self,
        material: bytes | bytearray | memoryview,
        *,
        kid: str | None = None,
        origin: str | None = None,
    ) -> None:
        """Wrap ``material`` (exactly 32 bytes); ``kid`` defaults to :func:`key_id`."""
        if not isinstance(material, bytes | bytearray | memoryview):
            raise ConfigurationError(
                f"key material must be bytes, not {type(material).__name__}"
            )
        raw = bytes(material)
        if len(raw) != KEY_SIZE:
            raise ConfigurationError(
                f"an AES-256 key must be exactly {KEY_SIZE} bytes, got {len(raw)}"
            )
        object.__setattr__(self, "kid", key_id(raw) if kid is None else _check_kid(kid))
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "_material", raw)
        object.__setattr__(self, "_aead", AESGCM(raw))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Key objects are immutable")

    @property
    def material(self) -> bytes:
        """The raw 32 key bytes (handle with care)."""
        return self._material

    @property
    def aead(self) -> AESGCM:
        """The ``AESGCM`` object of this key, constructed once."""
        return self._aead

    def same_material(self, other: Key) -> bool:
        """Whether ``other`` holds the same key bytes (constant-time comparison)."""
        return hmac.compare_digest(self._material, other._material)

    def __repr__(self) -> str:
        return f"Key(kid={self.kid!r})"


def generate_key() -> str:
    """Return a fresh random key as base64 text, suitable for ``IMMUTABLE_LOG_KEY``."""
    return base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode("ascii")


def decode_key_b64(text: str, *, source: str = "key") -> bytes:
    """Decode base64 key text into exactly 32 bytes.

    Whitespace is ignored, the URL-safe alphabet and missing padding are accepted.
    ``source`` names where the text came from, for error messages (which never contain
    the key text itself).

    Raises:
        ConfigurationError: empty text, invalid base64, or not 32 bytes.
    """
    if not isinstance(text, str):
        raise ConfigurationError(f"{source} must be a base64 string, not {type(text).__name__}")
    compact = "".join(text.split())
    if not compact:
        raise ConfigurationError(f"{source} is empty; expected base64 of {KEY_SIZE} bytes; "
                                 + _GEN_HINT)
    compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            f"{source} is not valid base64; expected base64 of {KEY_SIZE} random bytes; "
            + _GEN_HINT
        ) from None
    if len(raw) != KEY_SIZE:
        hint = ""
        if re.fullmatch(r"[0-9a-fA-F]{64}", compact.rstrip("=")):
            hint = " (it looks like hex: base64-encode the 32 raw bytes instead)"
        raise ConfigurationError(
            f"{source} decodes to {len(raw)} bytes, an AES-256 key needs exactly "
            f"{KEY_SIZE}{hint}; " + _GEN_HINT
        )
    return raw


def key_from_bytes(material: bytes | bytearray | memoryview, *, kid: str | None = None) -> Key:
    """Build a :class:`Key` from 32 raw bytes.

    Raises:
        ConfigurationError: not bytes, or not exactly 32 bytes, or a bad ``kid``.
    """
    return Key(material, kid=kid)


def key_from_env(
    var: str = DEFAULT_KEY_ENV,
    *,
    kid: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Key:
    """Read a base64-encoded 32-byte key from the environment variable ``var``.

    Args:
        var: the variable name, ``IMMUTABLE_LOG_KEY`` by default.
        kid: explicit key id; derived from the key when omitted.
        environ: mapping to read instead of ``os.environ`` (tests, configuration).

    Raises:
        ConfigurationError: the variable is missing or empty, is not base64, or does not
            decode to exactly 32 bytes.
    """
    env = os.environ if environ is None else environ
    value = env.get(var)
    if value is None:
        raise ConfigurationError(
            f"environment variable {var} is not set; it must hold a base64 AES-256 key; "
            + _GEN_HINT
        )
    return Key(decode_key_b64(value, source=f"environment variable {var}"), kid=kid)


# ------------------------------------------------------------------ passphrase / scrypt


def _write_file_durably(path: str, data: bytes, *, exclusive: bool) -> bool:
    """Write ``data`` to ``path`` via a temporary file, fsync'ed, then published.

    With ``exclusive`` the file is published with ``os.link`` and an existing file is
    left alone (returns False); otherwise ``os.replace`` overwrites atomically.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
            tmp = ""
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    fsync_dir(directory)
    return True


def _check_scrypt_params(n: object, r: object, p: object) -> tuple[int, int, int]:
    for name, value in (("n", n), ("r", r), ("p", p)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigurationError(f"scrypt parameter {name} must be a positive int, "
                                     f"got {value!r}")
    assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
    if n < 2 or n & (n - 1) or n > 1 << 24:
        raise ConfigurationError(f"scrypt parameter n must be a power of two in [2, 2**24], "
                                 f"got {n}")
    if r * p >= 1 << 30 or 128 * n * r * p > 1 << 32:
        raise ConfigurationError(f"scrypt parameters n={n}, r={r}, p={p} are out of range")
    return n, r, p


def _read_salt_file(path: str) -> tuple[bytes, int, int, int]:
    try:
        with open_file(path, "rb") as fh:
            doc = json.loads(fh.read())
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("format") != _SALT_FORMAT or doc.get("kdf") != "scrypt":
            raise ValueError(f"unsupported format/kdf {doc.get('format')!r}/{doc.get('kdf')!r}")
        if doc.get("length") != KEY_SIZE:
            raise ValueError(f"unsupported key length {doc.get('length')!r}")
        salt_b64 = doc.get("salt")
        if not isinstance(salt_b64, str):
            raise ValueError("salt is missing")
        salt = base64.b64decode(salt_b64, validate=True)
        if len(salt) < _SALT_SIZE:
            raise ValueError(f"salt is {len(salt)} bytes, at least {_SALT_SIZE} required")
        n, r, p = doc.get("n"), doc.get("r"), doc.get("p")
    except (OSError, ValueError, binascii.Error) as exc:
        raise ConfigurationError(
            f"scrypt salt file {path} is unreadable or corrupt ({exc}); it is needed to "
            "re-derive the key: restore it from a backup rather than deleting it"
        ) from None
    return (salt, *_check_scrypt_params(n, r, p))


def key_from_passphrase(
    passphrase: str | bytes,
    salt_path: str | os.PathLike[str],
    *,
    n: int | None = None,
    r: int | None = None,
    p: int | None = None,
    kid: str | None = None,
) -> Key:
    """Derive a key from ``passphrase`` with scrypt, using the salt stored at ``salt_path``.

    On first use the salt file is created (16 random bytes, mode 0600, written durably
    and published atomically, so concurrent first uses agree on one salt) together with
    the scrypt parameters (default ``n=2**15, r=8, p=1``). Later calls reuse the stored
    salt and parameters, so the same passphrase always gives the same key. Passing
    ``n``/``r``/``p`` that differ from the stored ones is an error, because it would
    silently derive a different key.

    Salt file (JSON, one line)::

        {"format":1,"kdf":"scrypt","length":32,"n":32768,"p":1,"r":8,"salt":"<b64>"}

    Raises:
        ConfigurationError: empty passphrase, bad parameters, or a corrupt salt file.
    """
    if isinstance(passphrase, str):
        secret = passphrase.encode("utf-8")
    elif isinstance(passphrase, bytes | bytearray):
        secret = bytes(passphrase)
    else:
        raise ConfigurationError(
            f"passphrase must be str or bytes, not {type(passphrase).__name__}"
        )
    if not secret:
        raise ConfigurationError("the encryption passphrase is empty")
    path = os.fspath(salt_path)
    wanted = {"n": n, "r": r, "p": p}
    if not os.path.exists(path):
        params = {k: (SCRYPT_DEFAULTS[k] if v is None else v) for k, v in wanted.items()}
        _check_scrypt_params(params["n"], params["r"], params["p"])
        doc = {
            "format": _SALT_FORMAT,
            "kdf": "scrypt",
            "length": KEY_SIZE,
            "salt": base64.b64encode(secrets.token_bytes(_SALT_SIZE)).decode("ascii"),
            **params,
        }
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        try:
            _write_file_durably(path, data, exclusive=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot create scrypt salt file {path}: {exc}") from None
    salt, sn, sr, sp = _read_salt_file(path)
    stored = {"n": sn, "r": sr, "p": sp}
    for name, value in wanted.items():
        if value is not None and value != stored[name]:
            raise ConfigurationError(
                f"scrypt parameter {name}={value} differs from {name}={stored[name]} stored "
                f"in {path}; the key would differ. Omit it to use the stored value"
            )
    material = Scrypt(salt=salt, length=KEY_SIZE, n=sn, r=sr, p=sp).derive(secret)
    return Key(material, kid=kid, origin=f"derived from the passphrase and the salt in {path}")


# ------------------------------------------------------------------------- keyrings


class Keyring:
    """Keys by key id, with one *active* key used for encryption.

    Every key in the ring can decrypt. Rotating means adding a new key and activating
    it; entries written earlier still name their old ``kid`` and keep decrypting as long
    as the old key stays in the ring.
    """

    def __init__(self, keys: Iterable[Key] = (), *, active: str | None = None) -> None:
        """Hold ``keys``; the active key is ``active`` or, if omitted, the first key."""
        self._lock = threading.Lock()
        self._keys: dict[str, Key] = {}
        self._active: Key | None = None
        for key in keys:
            self.add(key)
            if self._active is None and active is None:
                self._active = key
        if active is not None:
            self.activate(active)

    @classmethod
    def from_env(
        cls,
        var: str = DEFAULT_KEY_ENV,
        previous_var: str = DEFAULT_PREVIOUS_KEYS_ENV,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> Keyring:
        """Build a keyring from the environment.

        ``var`` holds the active key (base64); ``previous_var``, if set, holds retired
        keys (base64, separated by commas or whitespace) that stay usable for decryption.

        Raises:
            ConfigurationError: ``var`` is missing, or any key is malformed.
        """
        env = os.environ if environ is None else environ
        ring = cls([key_from_env(var, environ=env)])
        for i, text in enumerate(env.get(previous_var, "").replace(",", " ").split()):
            ring.add(Key(decode_key_b64(text, source=f"key #{i + 1} in {previous_var}")))
        return ring

    def add(self, key: Key, *, activate: bool = False) -> Key:
        """Add ``key`` (idempotent) and optionally make it the active key.

        Raises:
            ConfigurationError: another key with the same id is already present.
        """
        if not isinstance(key, Key):
            raise ConfigurationError(f"expected a Key, got {type(key).__name__}")
        with self._lock:
            existing = self._keys.get(key.kid)
            if existing is not None and not existing.same_material(key):
                raise ConfigurationError(
                    f"key id {key.kid!r} is already used by a different key"
                )
            if existing is None:
                self._keys[key.kid] = key
                existing = key
            if activate:
                self._active = existing
        return existing

    def activate(self, kid: str) -> None:
        """Make the key ``kid`` the one used for new encryptions.

        Raises:
            KeyUnavailableError: no key with that id is in the ring.
        """
        with self._lock:
            key = self._keys.get(kid)
            if key is None:
                raise KeyUnavailableError(
                    f"cannot activate key id {kid!r}: not in the keyring"
                )
            self._active = key

    @property
    def active(self) -> Key | None:
        """The key used for encryption, or None if the ring is empty."""
        return self._active

    @property
    def kids(self) -> tuple[str, ...]:
        """Ids of all keys in the ring, in insertion order."""
        return tuple(self._keys)

    def get(self, kid: str) -> Key | None:
        """The key with id ``kid``, or None."""
        return self._keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        active = None if self._active is None else self._active.kid
        return f"Keyring(kids={list(self._keys)!r}, active={active!r})"


class KeyringResolver:
    """Maps tenant ids to their own :class:`Keyring`, with an optional default ring."""

    def __init__(
        self, tenants: Mapping[str, Keyring] | None = None, *, default: Keyring | None = None
    ) -> None:
        """Use ``tenants`` (tenant id -> keyring) and ``default`` for every other tenant."""
        self._tenants: dict[str, Keyring] = dict(tenants or {})
        self.default = default

    def set(self, tenant: str, keyring: Keyring) -> None:
        """Give ``tenant`` its own keyring."""
        self._tenants[tenant] = keyring

    def get(self, tenant: str) -> Keyring | None:
        """The tenant's keyring, else the default, else None (tenant not encrypted)."""
        return self._tenants.get(tenant, self.default)

    def resolve(self, tenant: str) -> Keyring:
        """Like :meth:`get` but raises :class:`KeyUnavailableError` instead of None."""
        ring = self.get(tenant)
        if ring is None:
            raise KeyUnavailableError(f"no keyring is configured for tenant {tenant!r}")
        return ring


# --------------------------------------------------------------------------- nonces


_EXHAUSTED_END: Final = -1
_live_sources: weakref.WeakSet[NonceSource] = weakref.WeakSet()


def _after_fork_in_child() -> None:  # pragma: no cover - exercised in a forked child
    for source in list(_live_sources):
        source._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class NonceCounter:
    """Hands out the 96-bit nonces of one key id; obtained from :meth:`NonceSource.counter`.

    :meth:`next` is the hot path: ``next()`` on an ``itertools.count`` (atomic under the
    GIL, so concurrent threads never get the same value) plus ``int.to_bytes``. Only
    when the reserved block is used up does it take a lock and reserve the next block.
    """

    __slots__ = ("__weakref__", "_lock", "_source", "_state", "kid")

    def __init__(self, source: NonceSource, kid: str) -> None:
        """Internal: use :meth:`NonceSource.counter`."""
        self.kid = kid
        self._source = source
        self._lock = threading.Lock()
        self._state: tuple[itertools.count[int], int] = (itertools.count(0), _EXHAUSTED_END)

    def next(self, _next: Callable[[itertools.count[int]], int] = next) -> bytes:
        """Return a 12-byte nonce never returned before for this key id."""
        it, end = self._state
        n = _next(it)
        if n < end:
            return n.to_bytes(12, "big")
        return self._refill()

    def _refill(self) -> bytes:
        with self._lock:
            while True:
                it, end = self._state
                n = next(it)
                if n < end:
                    return n.to_bytes(12, "big")
                start, stop = self._source._reserve(self.kid)
                base = secrets.randbits(32) << 64
                self._state = (itertools.count(base + start), base + stop)

    def _invalidate(self) -> None:
        self._lock = threading.Lock()
        self._state = (itertools.count(0), _EXHAUSTED_END)


class NonceSource:
    """Persistent, crash-safe nonce counters, one per key id, in one state file.

    Counters are reserved ``block_size`` at a time: the state file is rewritten
    atomically (tmp + fsync + ``os.replace`` + directory fsync), under an exclusive
    ``flock`` on ``<state_path>.lock``, *before* any counter of the block is used. A new
    process (or a new ``NonceSource`` on the same file) therefore always starts at the
    first never-reserved counter: after a crash the rest of the block is skipped, never
    reused. Several processes may share one state file. In a forked child all blocks are
    dropped, so parent and child never share one.

    Use one state file for every writer of a key (e.g. ``<log dir>/nonces.json``), not one
    per stream: counters are only coordinated through the file.

    State file (JSON)::

        {"format":1,"keys":{"<kid>":{"next":<first counter never reserved>}}}

    Raises:
        ConfigurationError: (at construction) the state file is corrupt or its directory
            does not exist; (on reservation) a key's 2**64 counters are used up.
    """

    def __init__(self, state_path: str | os.PathLike[str], *, block_size: int = DEFAULT_NONCE_BLOCK
                 ) -> None:
        """Open (or prepare to create) the state file at ``state_path``."""
        if not isinstance(block_size, int) or isinstance(block_size, bool) or not (
            1 <= block_size <= 1 << 32
        ):
            raise ConfigurationError(f"nonce block_size must be an int in [1, 2**32], "
                                     f"got {block_size!r}")
        self.path = os.path.abspath(os.fspath(state_path))
        self.block_size = block_size
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise ConfigurationError(f"directory of nonce state file {self.path} does not exist")
        self._load()  # fail fast on a corrupt file
        self._lock = threading.Lock()
        self._counters: dict[str, NonceCounter] = {}
        _live_sources.add(self)

    def counter(self, kid: str) -> NonceCounter:
        """The (shared) :class:`NonceCounter` of key id ``kid``."""
        counter = self._counters.get(kid)
        if counter is None:
            with self._lock:
                counter = self._counters.setdefault(kid, NonceCounter(self, kid))
        return counter

    def next_nonce(self, kid: str) -> bytes:
        """Convenience: ``self.counter(kid).next()``."""
        return self.counter(kid).next()

    def _load(self) -> dict[str, int]:
        try:
            with open_file(self.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigurationError(f"cannot read nonce state file {self.path}: {exc}") from None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != _STATE_FORMAT:
                raise ValueError("unsupported format")
            keys = doc.get("keys")
            if not isinstance(keys, dict):
                raise ValueError("'keys' is not an object")
            out: dict[str, int] = {}
            for kid, entry in keys.items():
                nxt = entry.get("next") if isinstance(entry, dict) else None
                if not isinstance(nxt, int) or isinstance(nxt, bool) or not (
                    0 <= nxt <= _COUNTER_LIMIT
                ):
                    raise ValueError(f"bad counter for key id {kid!r}")
                out[kid] = nxt
        except ValueError as exc:
            # Never start over from zero: that could reuse nonces.
            raise ConfigurationError(
                f"nonce state file {self.path} is corrupt ({exc}); refusing to guess "
                "counters. Restore it, or rotate to a new key and remove the file"
            ) from None
        return out

    def _reserve(self, kid: str) -> tuple[int, int]:
        """Reserve the next block for ``kid`` on disk; return ``(start, stop)`` counters."""
        with self._lock:
            lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                              0o600)
            try:
                if sys.platform != "win32":
                    fcntl.flock(lock_fd, fcntl.LOCK_EX)
                state = self._load()
                start = state.get(kid, 0)
                stop = start + self.block_size
                if stop > _COUNTER_LIMIT:
                    raise ImmutableLogError(
                        f"nonce counters of key id {kid!r} are exhausted; rotate the key"
                    )
                state[kid] = stop
                doc = {"format": _STATE_FORMAT,
                       "keys": {k: {"next": v} for k, v in sorted(state.items())}}
                data = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
                _write_file_durably(self.path, data, exclusive=False)
            finally:
                unlock_and_close(lock_fd)
        return start, stop

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        for counter in self._counters.values():
            counter._invalidate()

    def __repr__(self) -> str:
        return f"NonceSource({self.path!r}, block_size={self.block_size})"


# ------------------------------------------------------------------------------ AAD


def build_aad(tenant: str, stream: str, segment: int, seq: int, prev_hash_hex: str) -> bytes:
    """Encode an entry's position as GCM additional authenticated data.

    Layout (UTF-8, ``surrogatepass``)::

        "immutable-logging/aad/v1\\0" len(tenant) ":" tenant len(stream) ":" stream
        segment "," seq "," prev_hash_hex

    Lengths are in code points and integers in canonical decimal; the last field runs to
    the end. The encoding is therefore injective: a ciphertext copied to another tenant,
    stream, segment, sequence number or chain position fails authentication.
    """
    return (_AAD_FMT % (len(tenant), tenant, len(stream), stream, segment, seq,
                        prev_hash_hex)).encode("utf-8", "surrogatepass")


def aad_format(tenant: str, stream: str) -> bytes:
    """The bytes format ``f`` with ``f % (segment, seq, prev_hash_hex_bytes)`` equal to
    ``build_aad(tenant, stream, segment, seq, prev_hash_hex)``: the tenant/stream part is
    encoded once, so the per-record work is a single ``%``-format."""
    prefix = f"{AAD_PREFIX}{len(tenant)}:{tenant}{len(stream)}:{stream}".encode(
        "utf-8", "surrogatepass"
    )
    return prefix.replace(b"%", b"%%") + b"%d,%d,%s"


def aad_builder(tenant: str, stream: str) -> Callable[[int, int, str], bytes]:
    """Return ``f(segment, seq, prev_hash_hex)`` equal to ``build_aad(tenant, stream, ...)``.

    About half the cost of :func:`build_aad` (see :func:`aad_format`). Use one per stream
    writer.
    """
    fmt = aad_format(tenant, stream)

    def build(segment: int, seq: int, prev_hash_hex: str) -> bytes:
        return fmt % (segment, seq, prev_hash_hex.encode("utf-8", "surrogatepass"))

    return build


# --------------------------------------------------------------------------- cipher


def _b64_field(enc: Mapping[str, Any], name: str) -> bytes:
    value = enc.get(name)
    if not isinstance(value, (str, bytes)):
        raise ValueError(f"member {name!r} is missing or not a string")
    try:
        return _a2b(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"member {name!r} is not valid base64") from None


#: What an encrypting cipher caches per active key: kid, AESGCM.encrypt, the nonce
#: counter's ``next`` and the compact text prefix ``"A256GCM.<kid>."``.
_Sealer = tuple[str, Callable[[bytes, bytes, bytes | None], bytes], Callable[[], bytes], str]


def _split_enc_text(enc: str) -> tuple[str, str, str]:
    """Split the compact form ``"A256GCM.<kid>.<b64>"`` into alg, kid and the base64 part."""
    alg, dot, rest = enc.partition(".")
    kid, dot2, b64 = rest.rpartition(".")
    if not dot or not dot2:
        raise ValueError("expected 'A256GCM.<kid>.<base64>'")
    return alg, kid, b64


class SealerParts(NamedTuple):
    """See :meth:`PayloadCipher.sealer_parts`."""

    counter: NonceCounter
    aad_format: bytes
    encrypt: Callable[[bytes, bytes, bytes | None], bytes]
    prefix: str


class PayloadCipher:
    """Encrypts and decrypts entry payloads with AES-256-GCM.

    Encryption uses the keyring's active key (re-read on every call, so
    :meth:`Keyring.activate` takes effect at once) and the nonce counter of its key id.
    Decryption picks the key named by the payload's ``kid``. A cipher made without a
    ``nonce_source`` can only decrypt (readers, the verifier).
    """

    def __init__(self, keyring: Keyring, nonce_source: NonceSource | None = None) -> None:
        """Use ``keyring`` for keys and ``nonce_source`` for nonces."""
        self.keyring = keyring
        self.nonce_source = nonce_source
        self._cached_key: Key | None = None
        self._enc: _Sealer | None = None

    def _prepare(self, key: Key | None) -> _Sealer:
        if key is None:
            raise ConfigurationError("cannot encrypt: the keyring has no active key")
        if self.nonce_source is None:
            raise ConfigurationError("cannot encrypt: this cipher has no NonceSource")
        enc = (key.kid, key.aead.encrypt, self.nonce_source.counter(key.kid).next,
               f"{ALG}.{key.kid}.")
        self._enc = enc
        self._cached_key = key
        return enc

    def _sealer(self) -> _Sealer:
        """The cached sealer of the active key (re-read, so activate() takes effect)."""
        key = self.keyring._active
        enc = self._enc
        if key is not self._cached_key or enc is None:
            enc = self._prepare(key)
        return enc

    def encrypt(self, plaintext: bytes, aad: bytes) -> dict[str, str]:
        """Encrypt ``plaintext`` bound to ``aad`` (see :func:`build_aad`).

        Returns ``{"alg": "A256GCM", "kid": ..., "nonce": b64, "ct": b64}`` where ``ct``
        is the ciphertext followed by the 16-byte tag. :meth:`encrypt_text` is the
        shorter form the chain writer stores.

        Raises:
            ConfigurationError: no active key, or no nonce source.
        """
        kid, seal, next_nonce, _ = self._sealer()
        nonce = next_nonce()
        return {
            "alg": ALG,
            "kid": kid,
            "nonce": _b2a(nonce, newline=False).decode("ascii"),
            "ct": _b2a(seal(nonce, plaintext, aad), newline=False).decode("ascii"),
        }

    def encrypt_text(self, plaintext: bytes, aad: bytes) -> str:
        """Encrypt like :meth:`encrypt`, in the compact text form the chain stores.

        ``"A256GCM.<kid>.<base64(nonce || ciphertext || tag)>"``: one string, about 40
        bytes shorter per entry than the object form, and cheaper to build and encode.
        The key id may contain dots; the base64 part never does.

        Raises:
            ConfigurationError: no active key, or no nonce source.
        """
        _, seal, next_nonce, prefix = self._sealer()
        nonce = next_nonce()
        return prefix + _b2a(nonce + seal(nonce, plaintext, aad), newline=False).decode("ascii")

    def sealer_parts(self, tenant: str, stream: str) -> SealerParts:
        """What one stream writer needs to encrypt entries inline, bound once.

        For the key active *now*: ``encrypt_text(plaintext, build_aad(tenant, stream,
        segment, seq, prev))`` equals::

            nonce = parts.counter.next()
            aad = parts.aad_format % (segment, seq, prev.encode("ascii"))
            parts.prefix + base64(nonce + parts.encrypt(nonce, plaintext, aad))

        (``prev`` is a hex digest). Ask again after the active key changes.

        Raises:
            ConfigurationError: no active key, or no nonce source.
        """
        kid, seal, _, prefix = self._sealer()
        assert self.nonce_source is not None  # _prepare checked it
        return SealerParts(self.nonce_source.counter(kid), aad_format(tenant, stream), seal,
                           prefix)

    def decrypt(
        self,
        enc: Mapping[str, Any] | str,
        aad: bytes,
        *,
        file: str | None = None,
        seq: int | None = None,
    ) -> bytes:
        """Decrypt what :meth:`encrypt_text` or :meth:`encrypt` produced, checking ``aad``.

        Returns the plaintext only if authentication succeeds; never partial output.

        Raises:
            KeyUnavailableError: no key with the payload's ``kid`` is configured.
            DecryptionError: malformed ``enc``, wrong key, corrupted ciphertext, tag or
                nonce, or an AAD mismatch (entry moved). Both name ``file`` and ``seq``.
        """
        try:
            b64: str | None = None
            alg: Any
            kid: Any
            if isinstance(enc, str):
                alg, kid, b64 = _split_enc_text(enc)
            elif isinstance(enc, Mapping):
                alg, kid = enc.get("alg"), enc.get("kid")
            else:
                raise ValueError(f"expected a string or an object, got {type(enc).__name__}")
            if alg != ALG:
                raise ValueError(f"unsupported alg {str(alg)[:40]!r}, expected {ALG!r}")
            if not isinstance(kid, str) or not kid:
                raise ValueError("member 'kid' is missing or not a string")
            if b64 is not None:
                try:
                    raw = _a2b(b64, strict_mode=True)
                except (binascii.Error, ValueError):
                    raise ValueError("the base64 part is not valid base64") from None
                nonce, ct = raw[:NONCE_SIZE], raw[NONCE_SIZE:]
            else:
                assert isinstance(enc, Mapping)
                nonce = _b64_field(enc, "nonce")
                ct = _b64_field(enc, "ct")
            if len(nonce) != NONCE_SIZE:
                raise ValueError(f"nonce is {len(nonce)} bytes, expected {NONCE_SIZE}")
            if len(ct) < TAG_SIZE:
                raise ValueError(f"ciphertext is {len(ct)} bytes, shorter than the tag")
        except ValueError as exc:
            raise DecryptionError(f"malformed 'enc' member: {exc}", file=file, seq=seq) from None
        key = self.keyring._keys.get(kid)
        if key is None:
            if not len(self.keyring):
                detail = f"no decryption key is configured (entry uses key id {kid[:80]!r})"
            else:
                detail = (f"no key with id {kid[:80]!r} is configured "
                          f"(configured: {', '.join(self.keyring.kids)})")
                detail += "".join(
                    f"; key {k.kid} is {k.origin}: a wrong passphrase, or a salt file other "
                    "than the one the entry was written with, derives a key with another id"
                    for k in self.keyring._keys.values() if k.origin is not None)
            raise KeyUnavailableError(detail, file=file, seq=seq)
        try:
            return key._aead.decrypt(nonce, ct, aad)
        except InvalidTag:
            raise DecryptionError(
                f"authentication failed with key {kid!r}: wrong key material, corrupted "
                "ciphertext/tag/nonce, or the entry was moved (AAD mismatch)",
                file=file, seq=seq,
            ) from None
