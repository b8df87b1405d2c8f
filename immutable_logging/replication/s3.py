"""Amazon S3 (and S3-compatible) backend built on boto3.

``boto3`` is imported, and the client created, on first use: constructing an
:class:`S3Backend` never touches the network, so an application starts even when S3 is
unreachable, and the ``s3`` extra is only needed when this backend is used.

Writes are conditional (``If-None-Match: *``; S3 answers ``412 PreconditionFailed`` when the
key exists), carry a SHA-256 checksum that S3 verifies, ask for server-side encryption
(``AES256`` by default, or ``aws:kms``) and, when ``object_lock_days`` is set, an Object
Lock retention (``COMPLIANCE`` by default) on a bucket created with Object Lock enabled.

Timeouts are short (5 s connect, 10 s read, 2 attempts) so that an outage fails fast with
:class:`~immutable_logging.errors.BackendUnavailableError` and the replicator can retry
later from its cursor instead of blocking.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from typing import Any, Literal

from immutable_logging.errors import (
    BackendAuthError,
    BackendUnavailableError,
    BucketNotFoundError,
    ConfigurationError,
    ObjectExistsError,
    ReplicationError,
)
from immutable_logging.replication.backend import CloudClientBackend, ObjectNotFoundError

__all__ = ["S3Backend"]

_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "403",
        "401",
    }
)
_UNAVAILABLE_STATUS = frozenset({500, 502, 503, 504})
#: Server-side encryption modes ``sse`` accepts besides None (no header).
SSE_VALUES = ("AES256", "aws:kms", "aws:kms:dsse")


class S3Backend(CloudClientBackend):
    """A write-once replica in an S3 bucket.

    Args:
        bucket: the bucket name (it must exist; it is never created).
        prefix: key prefix inside the bucket.
        region: AWS region of the bucket (boto3's default chain when ``None``).
        endpoint_url: an S3-compatible endpoint (moto, MinIO, ...); path-style addressing
            is used with it.
        aws_access_key_id: access key (boto3's default credential chain when ``None``).
        aws_secret_access_key: secret key matching ``aws_access_key_id``.
        aws_session_token: optional session token for temporary credentials.
        sse: server-side encryption to request: ``"AES256"`` (default), ``"aws:kms"``,
            ``"aws:kms:dsse"`` or ``None`` (bucket default only).
        kms_key_id: KMS key for ``aws:kms`` (the account's default S3 key when ``None``).
        object_lock_days: when set, every object gets an Object Lock retention of that many
            days (the bucket must have Object Lock enabled, or S3 refuses the write).
        object_lock_mode: ``"COMPLIANCE"`` (default; nobody can delete the version before
            the date) or ``"GOVERNANCE"``.
        connect_timeout: seconds to wait for a TCP connection.
        read_timeout: seconds to wait for data on an open connection.
        max_attempts: total attempts per request, retries included (botocore "standard").
        client: a ready boto3 S3 client to use instead of creating one (it is not closed by
            :meth:`close`); the connection arguments above are then ignored.

    Nothing here does network I/O; the client is created on first use.
    """

    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        sse: Literal["AES256", "aws:kms", "aws:kms:dsse"] | None = "AES256",
        kms_key_id: str | None = None,
        object_lock_days: int | None = None,
        client: Any = None,
        *,
        aws_session_token: str | None = None,
        object_lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE",
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_attempts: int = 2,
    ) -> None:
        super().__init__(prefix)
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise ConfigurationError(f"invalid S3 bucket name {bucket!r}")
        if sse is not None and sse not in SSE_VALUES:
            raise ConfigurationError(f"sse must be one of {SSE_VALUES} or None, not {sse!r}")
        if kms_key_id is not None and (sse is None or not sse.startswith("aws:kms")):
            raise ConfigurationError("kms_key_id needs sse='aws:kms' (or 'aws:kms:dsse')")
        if object_lock_days is not None and (
            isinstance(object_lock_days, bool)
            or not isinstance(object_lock_days, int)
            or object_lock_days < 1
        ):
            raise ConfigurationError("object_lock_days must be a positive int or None")
        if object_lock_mode not in ("COMPLIANCE", "GOVERNANCE"):
            raise ConfigurationError("object_lock_mode must be 'COMPLIANCE' or 'GOVERNANCE'")
        if (aws_access_key_id is None) != (aws_secret_access_key is None):
            raise ConfigurationError("give both aws_access_key_id and aws_secret_access_key")
        if connect_timeout <= 0 or read_timeout <= 0 or max_attempts < 1:
            raise ConfigurationError("timeouts must be positive and max_attempts >= 1")
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url
        self.sse = sse
        self.kms_key_id = kms_key_id
        self.object_lock_days = object_lock_days
        self.object_lock_mode = object_lock_mode
        self._access_key = aws_access_key_id
        self._secret_key = aws_secret_access_key
        self._session_token = aws_session_token
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_attempts = max_attempts
        self._client: Any = client
        self._owns_client = client is None
        self._bucket_checked = False


    # ------------------------------------------------------------------ hooks

    def _put_if_absent(self, name: str, data: bytes, metadata: dict[str, str]) -> None:
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": name,
            "Body": data,
            "Metadata": metadata,
            "IfNoneMatch": "*",
            "ChecksumAlgorithm": "SHA256",
            "ContentType": "application/octet-stream",
        }
        if self.sse is not None:
            params["ServerSideEncryption"] = self.sse
            if self.kms_key_id is not None:
                params["SSEKMSKeyId"] = self.kms_key_id
        if self.object_lock_days is not None:
            params["ObjectLockMode"] = self.object_lock_mode
            params["ObjectLockRetainUntilDate"] = _dt.datetime.now(_dt.UTC) + _dt.timedelta(
                days=self.object_lock_days
            )
        try:
            self._get_client().put_object(**params)
        except Exception as exc:
            raise self._map_error(exc, name, "put") from exc

    def _get(self, name: str) -> bytes:
        try:
            response = self._get_client().get_object(Bucket=self.bucket, Key=name)
            body = response["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            return data
        except Exception as exc:
            raise self._map_error(exc, name, "get") from exc

    def _head(self, name: str) -> dict[str, str] | None:
        try:
            response = self._get_client().head_object(Bucket=self.bucket, Key=name)
        except Exception as exc:
            if self._status(exc) == 404:
                # HEAD has no body: "no such key" and "no such bucket" look alike.
                self._check_bucket()
                return None
            raise self._map_error(exc, name, "head") from exc
        self._bucket_checked = True
        metadata: dict[str, str] = response.get("Metadata", {})
        return {str(k).lower(): str(v) for k, v in metadata.items()}

    def _list(self, name_prefix: str, page_size: int | None) -> Iterator[str]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": name_prefix}
        if page_size is not None:
            params["MaxKeys"] = page_size
        while True:
            try:
                response = self._get_client().list_objects_v2(**params)
            except Exception as exc:
                raise self._map_error(exc, name_prefix, "list") from exc
            for item in response.get("Contents", ()):
                yield str(item["Key"])
            token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token

    # ------------------------------------------------------------------ helpers

    def _make_client(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ConfigurationError(
                "S3Backend needs boto3: pip install 'immutable-logging[s3]'"
            ) from exc
        config = Config(
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            retries={"max_attempts": self._max_attempts, "mode": "standard"},
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        session = boto3.session.Session(
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            aws_session_token=self._session_token,
            region_name=self.region,
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    def _check_bucket(self) -> None:
        """Raise BucketNotFoundError if the bucket is missing (checked once per backend)."""
        if self._bucket_checked:
            return
        try:
            self._get_client().head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if self._status(exc) == 404:
                raise BucketNotFoundError(f"bucket {self.bucket!r} does not exist") from exc
            raise self._map_error(exc, "", "head bucket") from exc
        self._bucket_checked = True

    @staticmethod
    def _status(exc: BaseException) -> int | None:
        response = getattr(exc, "response", None)
        if not isinstance(response, dict):
            return None
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None

    def _map_error(self, exc: BaseException, name: str, operation: str) -> ReplicationError:
        """Translate a boto3/botocore exception into this package's error hierarchy."""
        if isinstance(exc, ReplicationError):
            return exc
        from botocore import exceptions as bce

        where = f"s3://{self.bucket}/{name}"
        if isinstance(exc, bce.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            message = str(error.get("Message", ""))
            status = self._status(exc)
            text = f"S3 {operation} {where} failed: {code} (HTTP {status}) {message}".rstrip()
            if code in ("PreconditionFailed", "412") or status == 412:
                return ObjectExistsError(f"{where} already exists")
            if code == "NoSuchBucket":
                return BucketNotFoundError(f"bucket {self.bucket!r} does not exist: {text}")
            if code in ("NoSuchKey", "404") or status == 404:
                return ObjectNotFoundError(f"{where} does not exist")
            if code in _AUTH_CODES or status in (401, 403):
                return BackendAuthError(text)
            if status in _UNAVAILABLE_STATUS or code in ("SlowDown", "RequestTimeout"):
                return BackendUnavailableError(text)
            return ReplicationError(text)
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return BackendAuthError(f"no usable AWS credentials for {where}: {exc}")
        if isinstance(
            exc,
            (
                bce.EndpointConnectionError,
                bce.ConnectTimeoutError,
                bce.ReadTimeoutError,
                bce.ConnectionClosedError,
                bce.HTTPClientError,
            ),
        ):
            return BackendUnavailableError(f"S3 {operation} {where}: endpoint unreachable: {exc}")
        if isinstance(exc, bce.ParamValidationError):
            return ReplicationError(f"S3 {operation} {where}: invalid request: {exc}")
        if isinstance(exc, bce.BotoCoreError):
            return ReplicationError(f"S3 {operation} {where} failed: {exc}")
        if isinstance(exc, OSError):
            return BackendUnavailableError(f"S3 {operation} {where}: {exc}")
        return ReplicationError(f"S3 {operation} {where} failed: {type(exc).__name__}: {exc}")
