"""Encrypting entry payloads on the way into the chain, and decrypting them on the way out.

What is encrypted: ``message``, ``metadata``, ``exc`` and ``stack``. They are replaced by
``"enc": "A256GCM.<kid>.<base64(nonce || ciphertext || tag)>"`` (entries written by
earlier versions hold the object form ``{"alg", "kid", "nonce", "ct"}``; both decrypt).
Level, time, logger, source location, host and pid stay in clear so that entries can be
filtered, counted and verified without the key. The chain hashes the ciphertext:
``verify`` never needs the key.

The AAD binds tenant, stream, segment number, sequence number and the previous entry's
hash (:func:`immutable_logging.crypto.build_aad`), so a ciphertext copied to another place
in the log, or to another tenant, fails to decrypt.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .compression import READ_ERRORS
from .crypto import (
    DEFAULT_NONCE_BLOCK,
    Key,
    Keyring,
    NonceSource,
    PayloadCipher,
    SealerParts,
    build_aad,
    decode_key_b64,
    key_from_passphrase,
)
from .entry import canonical_payload
from .errors import ConfigurationError, DecryptionError
from .fileio import make_log_directory, open_file
from .layout import Segment, list_segments, list_streams

SECRET_FIELDS = ("message", "metadata", "exc", "stack")
NONCE_STATE = ".nonces.json"
SALT_FILE = ".salt.json"
_SEGMENT_NUMBER = re.compile(r"(\d{8,})\.log(?:\.gz)?$")

KeySpec = str | bytes | Key | Keyring


def build_keyring(
    tenant_directory: Path,
    *,
    encryption_key: KeySpec | None = None,
    encryption_key_env: str | None = None,
    encryption_passphrase: str | None = None,
    previous_keys: KeySpec | tuple[KeySpec, ...] | list[KeySpec] = (),
) -> Keyring | None:
    """Build the keyring a handler or reader should use, or ``None`` for no encryption.

    Exactly one of ``encryption_key`` (base64 text, 32 raw bytes, a Key or a Keyring),
    ``encryption_key_env`` (name of an env var holding a base64 key; retired keys may be
    listed in ``IMMUTABLE_LOG_PREVIOUS_KEYS``) or ``encryption_passphrase`` (scrypt, with a
    salt stored in the tenant directory) may be given. ``previous_keys`` stay usable for
    decrypting older entries.
    """
    given = [
        x for x in (encryption_key, encryption_key_env, encryption_passphrase) if x is not None
    ]
    if len(given) > 1:
        raise ConfigurationError(
            "give only one of encryption_key, encryption_key_env, encryption_passphrase"
        )
    if not given:
        if previous_keys:
            raise ConfigurationError("previous_keys needs an active encryption key")
        return None
    if encryption_key_env is not None:
        ring = Keyring.from_env(encryption_key_env)
    elif encryption_passphrase is not None:
        make_log_directory(tenant_directory)
        ring = Keyring([key_from_passphrase(encryption_passphrase, tenant_directory / SALT_FILE)])
    elif isinstance(encryption_key, Keyring):
        ring = encryption_key
    else:
        assert encryption_key is not None
        ring = Keyring([_to_key(encryption_key, "encryption_key")])
    if isinstance(previous_keys, str | bytes | bytearray | Key | Keyring):
        previous_keys = [previous_keys]  # one key, not a sequence of characters
    for index, old in enumerate(previous_keys):
        if isinstance(old, Keyring):
            for kid in old.kids:
                key = old.get(kid)
                if key is not None:
                    ring.add(key)
        else:
            ring.add(_to_key(old, f"previous_keys[{index}]"))
    return ring


def encryption_markers(tenant_directory: Path) -> list[Path]:
    """The files that show a tenant's entries were written encrypted: its nonce state, its
    passphrase salt, or the newest segment of a stream whose last entries hold ``enc`` (a
    tenant restored from a replica has no nonce state). Empty when none does."""
    found = [path for path in (tenant_directory / NONCE_STATE, tenant_directory / SALT_FILE)
             if path.exists()]
    if found:  # enough: the streams' tails need not be read
        return found
    for stream in list_streams(tenant_directory):
        for segment in reversed(list_segments(stream)):
            tail = _tail(segment)
            if tail:
                if _ENC_MEMBER in tail:
                    found.append(segment.path)
                break
    return found


_ENC_MEMBER = b'"enc":'
_TAIL_BYTES = 64 * 1024


def _tail(segment: Segment) -> bytes:
    """The last bytes of a segment (b"" when it is empty or cannot be read)."""
    try:
        if segment.compressed:
            last = b""
            for chunk in segment.chunks():
                last = chunk
            return last[-_TAIL_BYTES:]
        with open_file(segment.path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _TAIL_BYTES))
            return handle.read()
    except READ_ERRORS:
        return b""


def _to_key(spec: str | bytes | Key, source: str) -> Key:
    if isinstance(spec, Key):
        return spec
    if isinstance(spec, str):
        return Key(decode_key_b64(spec, source=source))
    if isinstance(spec, bytes | bytearray):
        return Key(bytes(spec))
    raise ConfigurationError(
        f"{source}: an encryption key must be base64 text, 32 bytes, a Key or a Keyring, "
        f"not {type(spec).__name__}"
    )


def stream_key(key: Key, tenant: str, stream: str) -> Key:
    """The key that actually encrypts one stream: HKDF-SHA256(key, tenant, stream).

    Every stream has its own AES key, so nonce counters of different streams, hosts or
    restored copies can never collide under one key; the key id stays the configured one.
    """
    info = b"immutable-logging/stream-key/v1\x00%s\x00%s" % (
        tenant.encode("utf-8"), stream.encode("utf-8"))
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        key.material)
    return Key(derived, kid=key.kid, origin=key.origin)


def stream_keyring(keyring: Keyring, tenant: str, stream: str) -> Keyring:
    """``keyring`` with every key replaced by its stream key (same ids, same active key)."""
    keys = [k for k in (keyring.get(kid) for kid in keyring.kids) if k is not None]
    active = keyring.active
    return Keyring(
        [stream_key(k, tenant, stream) for k in keys],
        active=active.kid if active is not None else None,
    )


class EntryEncryptor:
    """The chain writer's payload transform: encrypt the secret fields of each entry.

    The secret fields are replaced by ``"enc": "A256GCM.<kid>.<base64(nonce||ct||tag)>"``
    (:meth:`PayloadCipher.encrypt_text`), bound by the AAD to the entry's position.
    Install :attr:`transform` as the writer's ``payload_transform`` (calling the instance
    does the same, one call slower).
    """

    def __init__(self, keyring: Keyring, tenant_directory: Path, tenant: str, stream: str,
                 *, nonce_block: int = DEFAULT_NONCE_BLOCK) -> None:
        if keyring.active is None:
            raise ConfigurationError("the encryption keyring has no active key")
        self._master = keyring
        self._tenant, self._stream = tenant, stream
        self._nonces = NonceSource(tenant_directory / NONCE_STATE, block_size=nonce_block)
        self.transform: Callable[[dict[str, Any], int, str, int], bytes] = (
            self._build_transform()
        )

    def _stream_sealer(self) -> tuple[Key | None, SealerParts]:
        """The active key and what encrypts under its stream key."""
        active = self._master.active
        cipher = PayloadCipher(stream_keyring(self._master, self._tenant, self._stream),
                               self._nonces)
        return active, cipher.sealer_parts(self._tenant, self._stream)

    def _build_transform(self) -> Callable[[dict[str, Any], int, str, int], bytes]:
        master = self._master
        active, (counter, aad_format, encrypt, prefix) = self._stream_sealer()
        fields = SECRET_FIELDS
        b2a = binascii.b2a_base64
        head = b'{"enc":"' + prefix.encode("ascii")  # the kid is [A-Za-z0-9_.:-]: no escapes

        def transform(payload: dict[str, Any], seq: int, prev: str, segment: int) -> bytes:
            nonlocal active, counter, aad_format, encrypt, prefix, head
            if "exc" in payload or "stack" in payload:
                secret = {name: payload.pop(name) for name in fields if name in payload}
            elif "metadata" in payload:  # the common case: message and metadata
                secret = {"metadata": payload.pop("metadata")}
                if "message" in payload:
                    secret["message"] = payload.pop("message")
            elif "message" in payload:
                secret = {"message": payload.pop("message")}
            else:
                return canonical_payload(payload)
            if master._active is not active:  # the keyring was rotated: use the new key
                active, (counter, aad_format, encrypt, prefix) = self._stream_sealer()
                head = b'{"enc":"' + prefix.encode("ascii")
            # PayloadCipher.sealer_parts spelled out: this runs for every entry.
            # NonceCounter.next() inlined: its state is re-read on every call, so a block
            # refill or a fork (which invalidates the state) is always seen.
            it, end = counter._state
            n = next(it)
            nonce = n.to_bytes(12, "big") if n < end else counter._refill()
            aad = aad_format % (segment, seq, prev.encode("ascii"))
            sealed = b2a(nonce + encrypt(nonce, canonical_payload(secret), aad), newline=False)
            public = canonical_payload(payload)
            if public[2:3] > b"e":  # the first key sorts after "enc": put it in front
                return b'%s%s",%s' % (head, sealed, public[1:])
            if public == b"{}":
                return b'%s%s"}' % (head, sealed)
            payload["enc"] = prefix + sealed.decode("ascii")  # somewhere in the middle
            return canonical_payload(payload)

        return transform

    def __call__(self, payload: dict[str, Any], seq: int, prev: str, segment: int) -> bytes:
        return self.transform(payload, seq, prev, segment)


class EntryDecryptor:
    """Decrypt entries read back from a tenant's segments (a ``query.Decryptor``)."""

    def __init__(self, keyring: Keyring | None, tenant: str) -> None:
        self._keyring = keyring if keyring is not None else Keyring()
        self._tenant = tenant
        self._ciphers: dict[str, tuple[tuple[str, ...], PayloadCipher]] = {}

    def _cipher(self, stream: str) -> PayloadCipher:
        kids = self._keyring.kids
        cached = self._ciphers.get(stream)
        if cached is None or cached[0] != kids:
            cached = (kids, PayloadCipher(stream_keyring(self._keyring, self._tenant, stream)))
            self._ciphers[stream] = cached
        return cached[1]

    def __call__(self, entry: dict[str, Any], stream: str, file: str) -> dict[str, Any]:
        seq = entry.get("seq")
        prev = entry.get("prev")
        match = _SEGMENT_NUMBER.search(file)
        if not isinstance(seq, int) or not isinstance(prev, str) or match is None:
            raise DecryptionError("entry lacks seq/prev or lives outside a segment file",
                                  file=file, seq=seq if isinstance(seq, int) else None)
        enc = entry.get("enc")
        if not isinstance(enc, str | Mapping):
            raise DecryptionError("'enc' member is neither a string nor an object",
                                  file=file, seq=seq)
        aad = build_aad(self._tenant, stream, int(match.group(1)), seq, prev)
        plaintext = self._cipher(stream).decrypt(enc, aad, file=file, seq=seq)
        try:
            secret = orjson.loads(plaintext)
        except orjson.JSONDecodeError:
            raise DecryptionError("decrypted payload is not JSON", file=file, seq=seq) from None
        if not isinstance(secret, dict):
            raise DecryptionError("decrypted payload is not an object", file=file, seq=seq)
        del entry["enc"]
        entry.update(secret)
        entry["encrypted"] = True
        return entry


def keyring_from_cli_env(
    tenant_directory: Path, key_env: str | None, passphrase_env: str | None
) -> Keyring | None:
    """Keyring for the CLI: a base64 key or a passphrase named by environment variables."""
    if key_env is not None:
        return Keyring.from_env(key_env)
    if passphrase_env is not None:
        passphrase = os.environ.get(passphrase_env)
        if not passphrase:
            raise ConfigurationError(f"environment variable {passphrase_env} is not set")
        if not (tenant_directory / SALT_FILE).exists():
            raise ConfigurationError(f"no passphrase salt in {tenant_directory}")
        return Keyring([key_from_passphrase(passphrase, tenant_directory / SALT_FILE)])
    return None
