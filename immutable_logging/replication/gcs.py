"""Google Cloud Storage backend built on google-cloud-storage.

``google.cloud.storage`` is imported, and the client created, on first use: constructing a
:class:`GCSBackend` never touches the network (not even to look up default credentials).

Writes are conditional (``ifGenerationMatch=0``; GCS answers ``412 Precondition Failed``
when the object exists) and carry the metadata as the object's custom metadata. Requests
use a short timeout (5 s connect, 10 s read) and a retry budget of 5 s in total, so an
outage fails fast with :class:`~immutable_logging.errors.BackendUnavailableError` and the
replicator can retry later from its cursor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from immutable_logging.errors import (
    BackendAuthError,
    BackendUnavailableError,
    BucketNotFoundError,
    ConfigurationError,
    ObjectExistsError,
    RemoteIntegrityError,
    ReplicationError,
)
from immutable_logging.replication.backend import CloudClientBackend, ObjectNotFoundError

__all__ = ["GCSBackend"]

_UNAVAILABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class GCSBackend(CloudClientBackend):
    """A write-once replica in a Google Cloud Storage bucket.

    Args:
        bucket: the bucket name (it must exist; it is never created).
        prefix: key prefix inside the bucket.
        project: the Google Cloud project (inferred from the credentials when ``None``).
        credentials: a ``google.auth`` credentials object; ``None`` means Application
            Default Credentials, or anonymous access when ``endpoint_url`` is given.
        endpoint_url: an API endpoint such as a fake-gcs-server URL.
        client: a ready ``google.cloud.storage.Client`` to use instead of creating one; the
            connection arguments above are then ignored and :meth:`close` leaves it open.
        connect_timeout: seconds to wait for a TCP connection.
        read_timeout: seconds to wait for a response on an open connection.
        retry_timeout: total seconds spent retrying transient failures of one call.

    Nothing here does network I/O; the client is created on first use.
    """

    scheme = "gs"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        project: str | None = None,
        credentials: Any = None,
        endpoint_url: str | None = None,
        client: Any = None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        retry_timeout: float = 5.0,
    ) -> None:
        super().__init__(prefix)
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise ConfigurationError(f"invalid GCS bucket name {bucket!r}")
        if connect_timeout <= 0 or read_timeout <= 0 or retry_timeout < 0:
            raise ConfigurationError("timeouts must be positive")
        self.bucket = bucket
        self.project = project
        self.endpoint_url = endpoint_url
        self._credentials = credentials
        self._timeout = (connect_timeout, read_timeout)
        self._retry_timeout = retry_timeout
        self._client: Any = client
        self._owns_client = client is None
        self._retry: Any = None
        self._bucket_checked = False


    # ------------------------------------------------------------------ hooks

    def _put_if_absent(self, name: str, data: bytes, metadata: dict[str, str]) -> None:
        try:
            blob = self._bucket().blob(name)
            blob.metadata = metadata
            blob.upload_from_string(
                data,
                content_type="application/octet-stream",
                if_generation_match=0,
                timeout=self._timeout,
                retry=self._retry,
            )
        except Exception as exc:
            mapped = self._map_error(exc, name, "put")
            if isinstance(mapped, ObjectNotFoundError):  # uploading into a missing bucket
                mapped = BucketNotFoundError(f"bucket {self.bucket!r} does not exist")
            raise mapped from exc

    def _get(self, name: str) -> bytes:
        try:
            data: bytes = (
                self._bucket()
                .blob(name)
                .download_as_bytes(timeout=self._timeout, retry=self._retry)
            )
        except Exception as exc:
            mapped = self._map_error(exc, name, "get")
            if isinstance(mapped, ObjectNotFoundError):
                self._check_bucket()
            raise mapped from exc
        self._bucket_checked = True
        return data

    def _head(self, name: str) -> dict[str, str] | None:
        try:
            blob = self._bucket().get_blob(name, timeout=self._timeout, retry=self._retry)
        except Exception as exc:
            raise self._map_error(exc, name, "head") from exc
        if blob is None:
            self._check_bucket()
            return None
        self._bucket_checked = True
        return {str(k): str(v) for k, v in (blob.metadata or {}).items()}

    def _list(self, name_prefix: str, page_size: int | None) -> Iterator[str]:
        try:
            client = self._get_client()
            blobs = client.list_blobs(
                self.bucket,
                prefix=name_prefix or None,
                page_size=page_size,
                fields="items(name),nextPageToken",
                timeout=self._timeout,
                retry=self._retry,
            )
            for page in blobs.pages:
                for blob in page:
                    yield str(blob.name)
        except Exception as exc:
            mapped = self._map_error(exc, name_prefix, "list")
            if isinstance(mapped, ObjectNotFoundError):  # listing a missing bucket
                mapped = BucketNotFoundError(f"bucket {self.bucket!r} does not exist")
            raise mapped from exc

    # ------------------------------------------------------------------ helpers

    def _make_client(self) -> Any:
        try:
            from google.cloud import storage
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ConfigurationError(
                "GCSBackend needs google-cloud-storage: pip install 'immutable-logging[gcs]'"
            ) from exc
        kwargs: dict[str, Any] = {}
        credentials = self._credentials
        if self.endpoint_url is not None:
            kwargs["client_options"] = {"api_endpoint": self.endpoint_url}
            if credentials is None:
                from google.auth.credentials import AnonymousCredentials

                credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
                kwargs["project"] = self.project  # None: no project, fine for object I/O
        if credentials is not None:
            kwargs["credentials"] = credentials
        if self.project is not None:
            kwargs["project"] = self.project
        try:
            return storage.Client(**kwargs)
        except Exception as exc:
            raise self._map_error(exc, "", "client setup") from exc

    def _ensure_retry(self) -> None:
        if self._retry is None:
            from google.cloud.storage.retry import DEFAULT_RETRY

            self._retry = DEFAULT_RETRY.with_delay(
                initial=0.2, maximum=2.0, multiplier=2.0
            ).with_timeout(self._retry_timeout)

    def _bucket(self) -> Any:
        client = self._get_client()
        self._ensure_retry()
        return client.bucket(self.bucket)

    def _check_bucket(self) -> None:
        """Raise BucketNotFoundError if the bucket is missing (checked once per backend)."""
        if self._bucket_checked:
            return
        try:
            exists = self._bucket().exists(timeout=self._timeout, retry=self._retry)
        except Exception as exc:
            raise self._map_error(exc, "", "bucket lookup") from exc
        if not exists:
            raise BucketNotFoundError(f"bucket {self.bucket!r} does not exist")
        self._bucket_checked = True

    def _map_error(self, exc: BaseException, name: str, operation: str) -> ReplicationError:
        """Translate a google-cloud / google-auth / requests exception into our errors."""
        if isinstance(exc, ReplicationError):
            return exc
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        where = f"gs://{self.bucket}/{name}"
        text = f"GCS {operation} {where} failed: {type(exc).__name__}: {exc}"
        if isinstance(exc, gexc.RetryError):
            cause = exc.cause
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
            return BackendUnavailableError(
                f"GCS {operation} {where}: gave up after {self._retry_timeout} s: {detail}"
            )
        if isinstance(exc, gexc.PreconditionFailed):
            return ObjectExistsError(f"{where} already exists")
        if isinstance(exc, gexc.NotFound):
            # The callers know which: an upload or a listing can only miss the bucket.
            return ObjectNotFoundError(f"{where} does not exist")
        if isinstance(exc, (gexc.Unauthorized, gexc.Forbidden)):
            return BackendAuthError(text)
        if isinstance(exc, (auth_exc.DefaultCredentialsError, auth_exc.RefreshError)):
            return BackendAuthError(text)
        if isinstance(exc, auth_exc.TransportError):
            return BackendUnavailableError(text)
        if isinstance(exc, gexc.GoogleAPICallError):
            code = exc.code
            if isinstance(code, int) and code in _UNAVAILABLE_STATUS:
                return BackendUnavailableError(text)
            return ReplicationError(text)
        try:  # google-cloud-storage >= 3 has its own classes, 2.x used resumable_media's
            from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
        except ImportError:  # pragma: no cover - google-cloud-storage 2.x
            from google.resumable_media import DataCorruption, InvalidResponse

        if isinstance(exc, DataCorruption):
            return RemoteIntegrityError(f"GCS {operation} {where}: checksum mismatch: {exc}")
        if isinstance(exc, InvalidResponse):
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status == 412:
                return ObjectExistsError(f"{where} already exists")
            if status in (401, 403):
                return BackendAuthError(text)
            if status in _UNAVAILABLE_STATUS:
                return BackendUnavailableError(text)
            return ReplicationError(text)
        import requests

        if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError)):
            return BackendUnavailableError(text)
        if isinstance(exc, OSError):
            return BackendUnavailableError(text)
        return ReplicationError(text)
