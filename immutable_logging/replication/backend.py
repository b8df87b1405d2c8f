"""The storage-backend contract every replica target implements.

A backend is a flat, bucket-like key/value store that the replicator writes *once* per key:

* :meth:`StorageBackend.put_if_absent` is a conditional write. It never overwrites: when the
  key already exists it raises :class:`~immutable_logging.errors.ObjectExistsError` and
  leaves the stored object untouched.
* :meth:`StorageBackend.get` returns the bytes or raises :class:`ObjectNotFoundError`.
* :meth:`StorageBackend.head` returns the object's metadata, or ``None`` if it is missing.
* :meth:`StorageBackend.list` yields keys in ascending (UTF-8 byte) order, following the
  server's pagination.

Keys are relative to the backend's *prefix* (``S3Backend(bucket, prefix="logs")`` stores key
``a/b`` as ``logs/a/b``). The same key and metadata rules hold for every backend, so a layout
that works on the local directory backend also works on S3 and GCS:

* a key is ``/``-separated, relative, with no empty, ``.`` or ``..`` component, no component
  starting with ``.``, no backslash or control character, not ending in ``.meta.json``
  (reserved for the local backend's sidecars), at most 1024 UTF-8 bytes including the prefix;
* metadata keys match ``[a-z0-9][a-z0-9_-]*``; values are printable ASCII without leading
  or trailing blanks; keys plus values total at most 2048 bytes (the S3 limit).

Breaking a rule raises :class:`~immutable_logging.errors.ConfigurationError` before any I/O.

Error mapping, common to all backends: a missing bucket raises
:class:`~immutable_logging.errors.BucketNotFoundError`; rejected credentials
:class:`~immutable_logging.errors.BackendAuthError`; an unreachable server (refused
connection, timeout, 5xx) :class:`~immutable_logging.errors.BackendUnavailableError`, which
a caller may retry later; anything else :class:`~immutable_logging.errors.ReplicationError`.
"""

from __future__ import annotations

import abc
import re
import threading
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from immutable_logging.errors import ConfigurationError, ReplicationError

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_METADATA_BYTES",
    "RESERVED_SUFFIX",
    "CloudClientBackend",
    "ObjectNotFoundError",
    "StorageBackend",
    "normalize_prefix",
    "sorted_names",
    "validate_key",
    "validate_metadata",
]

#: Longest object name (prefix included) in UTF-8 bytes; S3 and GCS both allow 1024.
MAX_KEY_BYTES = 1024
#: Largest total of metadata keys plus values in bytes (S3's user-metadata limit).
MAX_METADATA_BYTES = 2048
#: Keys may not end with this suffix: the local backend stores metadata sidecars under it.
RESERVED_SUFFIX = ".meta.json"

_META_KEY = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_META_VALUE = re.compile(r"[\x20-\x7e]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ObjectNotFoundError(ReplicationError):
    """The requested object does not exist (raised by :meth:`StorageBackend.get`)."""


def _check_components(text: str, what: str) -> None:
    if "\\" in text or _CONTROL.search(text):
        raise ConfigurationError(f"{what} {text!r} contains a backslash or control character")
    if text.startswith("/"):
        raise ConfigurationError(f"{what} {text!r} must be relative (no leading '/')")
    for part in text.split("/"):
        if part in ("", ".", ".."):
            raise ConfigurationError(f"{what} {text!r} has an empty, '.' or '..' component")
        if part.startswith("."):
            raise ConfigurationError(f"{what} {text!r} has a component starting with '.'")


def normalize_prefix(prefix: str) -> str:
    """Validate a backend prefix and return it without leading or trailing slashes.

    ``""`` (the default) means the bucket root. Raises
    :class:`~immutable_logging.errors.ConfigurationError` for a prefix that is not a clean
    relative path (see the key rules in this module's docstring).
    """
    if not isinstance(prefix, str):
        raise ConfigurationError(f"prefix must be a str, not {type(prefix).__name__}")
    stripped = prefix.strip("/")
    if stripped:
        _check_components(stripped, "prefix")
    return stripped


def validate_key(key: str) -> None:
    """Raise :class:`~immutable_logging.errors.ConfigurationError` unless ``key`` is valid.

    See the module docstring for the rules; they reject path traversal (``..``, absolute
    paths, backslashes) on every backend.
    """
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"object key must be a non-empty str, got {key!r}")
    _check_components(key, "object key")
    if key.endswith(RESERVED_SUFFIX):
        raise ConfigurationError(f"object key {key!r} ends with reserved {RESERVED_SUFFIX!r}")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ConfigurationError(f"object key is longer than {MAX_KEY_BYTES} bytes")


def validate_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Check object metadata against the portable rules and return a plain ``dict`` copy."""
    if not isinstance(metadata, Mapping):
        raise ConfigurationError(f"metadata must be a mapping, not {type(metadata).__name__}")
    result: dict[str, str] = {}
    total = 0
    for name, value in metadata.items():
        if not isinstance(name, str) or not _META_KEY.match(name):
            raise ConfigurationError(
                f"metadata key {name!r} must be lowercase ASCII [a-z0-9][a-z0-9_-]*"
            )
        if not isinstance(value, str) or not _META_VALUE.match(value):
            raise ConfigurationError(f"metadata value of {name!r} must be printable ASCII")
        if value != value.strip():
            raise ConfigurationError(
                f"metadata value of {name!r} has leading or trailing blanks (S3 drops them)"
            )
        total += len(name) + len(value)
        result[name] = value
    if total > MAX_METADATA_BYTES:
        raise ConfigurationError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    return result


class StorageBackend(abc.ABC):
    """A bucket-like store written once per key (see the module docstring for the rules).

    The public methods validate their arguments, add the prefix, and delegate to the
    ``_put_if_absent`` / ``_get`` / ``_head`` / ``_list`` hooks, which receive full object
    names. Implementations must be safe to call from several threads. Backends are context
    managers; leaving the ``with`` block calls :meth:`close`.
    """

    def __init__(self, prefix: str = "") -> None:
        self._prefix = normalize_prefix(prefix)

    @property
    def prefix(self) -> str:
        """The normalized key prefix (no leading or trailing slash; ``""`` for none)."""
        return self._prefix

    # ------------------------------------------------------------------ public API

    def put_if_absent(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        """Store ``data`` under ``key`` with ``metadata`` unless the key already exists.

        Raises :class:`~immutable_logging.errors.ObjectExistsError` when the key exists (the
        stored object is left as it was). Because transports retry, an ``ObjectExistsError``
        can also mean that an earlier attempt of this very call succeeded: a caller that
        must know compares the stored bytes with :meth:`get`.
        """
        validate_key(key)
        clean = validate_metadata(metadata)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ConfigurationError(f"data must be bytes, not {type(data).__name__}")
        self._put_if_absent(self._name(key), bytes(data), clean)

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``; :class:`ObjectNotFoundError` if missing."""
        validate_key(key)
        return self._get(self._name(key))

    def head(self, key: str) -> dict[str, str] | None:
        """Return the metadata stored with ``key``, or ``None`` if there is no such object."""
        validate_key(key)
        return self._head(self._name(key))

    def list(self, prefix: str = "", *, page_size: int | None = None) -> Iterator[str]:
        """Yield the keys starting with ``prefix`` (a plain string prefix), sorted by bytes.

        Keys are relative to the backend prefix. ``page_size`` bounds the number of keys
        fetched per request (``None``: the server's default, 1000 on S3 and GCS); pages are
        requested lazily as the iterator is consumed.
        """
        if not isinstance(prefix, str):
            raise ConfigurationError(f"list prefix must be a str, not {type(prefix).__name__}")
        directory, _, _ = prefix.rpartition("/")
        if directory or prefix.startswith("/"):
            _check_components(directory or "/", "list prefix")
        if "\\" in prefix or _CONTROL.search(prefix):
            raise ConfigurationError(f"list prefix {prefix!r} has a backslash or control char")
        if page_size is not None and not 1 <= page_size <= 1000:
            raise ConfigurationError("page_size must be between 1 and 1000")
        base = f"{self._prefix}/" if self._prefix else ""
        for name in self._list(base + prefix, page_size):
            if name.startswith(base):
                yield name[len(base) :]

    @abc.abstractmethod
    def describe(self) -> str:
        """A human-readable location such as ``s3://bucket/prefix``; never has secrets."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release clients and connections. Idempotent; a later call reopens lazily."""

    # ------------------------------------------------------------------ hooks

    @abc.abstractmethod
    def _put_if_absent(self, name: str, data: bytes, metadata: dict[str, str]) -> None:
        """Conditionally write the object ``name`` (full name, prefix included)."""

    @abc.abstractmethod
    def _get(self, name: str) -> bytes:
        """Read the object ``name``; raise :class:`ObjectNotFoundError` if missing."""

    @abc.abstractmethod
    def _head(self, name: str) -> dict[str, str] | None:
        """Return the metadata of ``name`` or ``None``."""

    @abc.abstractmethod
    def _list(self, name_prefix: str, page_size: int | None) -> Iterator[str]:
        """Yield full object names starting with ``name_prefix``, in byte order."""

    # ------------------------------------------------------------------ helpers

    def _name(self, key: str) -> str:
        name = f"{self._prefix}/{key}" if self._prefix else key
        if len(name.encode("utf-8")) > MAX_KEY_BYTES:
            raise ConfigurationError(f"object name {name!r} is longer than {MAX_KEY_BYTES} bytes")
        return name

    def _location(self, scheme: str, bucket: str) -> str:
        return f"{scheme}://{bucket}/{self._prefix}" if self._prefix else f"{scheme}://{bucket}"

    def __enter__(self) -> StorageBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class CloudClientBackend(StorageBackend):
    """Shared parts of the S3 and GCS backends: a bucket, an optional endpoint, and an SDK
    client that is created lazily and, when the backend created it, closed by :meth:`close`.

    Subclasses set ``scheme`` and, in ``__init__``, ``bucket``, ``endpoint_url``,
    ``_client`` and ``_owns_client``.
    """

    scheme = ""
    bucket: str
    endpoint_url: str | None
    _client: Any
    _owns_client: bool

    def __init__(self, prefix: str = "") -> None:
        super().__init__(prefix)
        self._lock = threading.Lock()

    def describe(self) -> str:
        """``<scheme>://bucket[/prefix]`` (plus the endpoint when one is configured)."""
        location = self._location(self.scheme, self.bucket)
        return f"{location} at {self.endpoint_url}" if self.endpoint_url else location

    def _get_client(self) -> Any:
        """The SDK client, created on first use (never in a constructor)."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    @abc.abstractmethod
    def _make_client(self) -> Any:
        """Create the SDK client (imported lazily by the subclass)."""

    def close(self) -> None:
        """Close the client this backend created (a later call creates a new one)."""
        with self._lock:
            client = self._client
            if client is not None and self._owns_client:
                self._client = None
                client.close()


def sorted_names(names: list[str]) -> list[str]:
    """Sort object names the way S3 and GCS list them (by UTF-8 bytes)."""
    return sorted(names, key=lambda n: n.encode("utf-8"))
