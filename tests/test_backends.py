"""Contract tests of the storage backends against real servers.

The same tests run over the local directory backend, S3 (a real ``moto_server`` process)
and GCS (a real ``fake-gcs-server`` process); backend-specific tests follow.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from immutable_logging.errors import (
    BackendAuthError,
    BackendUnavailableError,
    BucketNotFoundError,
    ConfigurationError,
    ObjectExistsError,
    ReplicationError,
)
from immutable_logging.replication import (
    GCSBackend,
    LocalDirectoryBackend,
    ObjectNotFoundError,
    S3Backend,
    StorageBackend,
)
from tests.servers import (
    DUMMY_ACCESS_KEY,
    DUMMY_REGION,
    DUMMY_SECRET_KEY,
    FakeGcsServer,
    MotoAuthServer,
    MotoServer,
    ServerProcess,
    create_gcs_bucket,
    create_s3_bucket,
    s3_client,
)

pytest_plugins = ["tests.servers"]

BUCKET = "replica-bucket"
KINDS = ["local", "s3", "gcs"]
REMOTE_KINDS = ["s3", "gcs"]
HASH = "ab" * 32


@dataclass
class Target:
    """A backend kind with a fresh, empty bucket and a factory for backends on it."""

    kind: str
    factory: Callable[..., StorageBackend]
    server: ServerProcess | None
    recreate_bucket: Callable[[], None]
    made: list[StorageBackend] = field(default_factory=list)

    def make(self, prefix: str = "", **kwargs: Any) -> StorageBackend:
        backend = self.factory(prefix, **kwargs)
        self.made.append(backend)
        return backend


def _local_target(tmp_path: Path) -> Target:
    root = tmp_path / "bucket"
    root.mkdir()

    def factory(prefix: str, bucket: str | None = None, **kw: Any) -> StorageBackend:
        path = root if bucket is None else tmp_path / bucket
        return LocalDirectoryBackend(path, prefix, create=bucket is None, **kw)

    return Target("local", factory, None, lambda: root.mkdir(exist_ok=True))


def _s3_target(server: MotoServer) -> Target:
    def factory(prefix: str, bucket: str = BUCKET, **kw: Any) -> StorageBackend:
        kw.setdefault("aws_access_key_id", DUMMY_ACCESS_KEY)
        kw.setdefault("aws_secret_access_key", DUMMY_SECRET_KEY)
        return S3Backend(
            bucket, prefix, region=DUMMY_REGION, endpoint_url=server.endpoint_url, **kw
        )

    def recreate() -> None:
        create_s3_bucket(server, BUCKET)

    recreate()
    return Target("s3", factory, server, recreate)


def _gcs_target(server: FakeGcsServer) -> Target:
    def factory(prefix: str, bucket: str = BUCKET, **kw: Any) -> StorageBackend:
        return GCSBackend(bucket, prefix, endpoint_url=server.endpoint_url, **kw)

    def recreate() -> None:
        create_gcs_bucket(server, BUCKET)

    recreate()
    return Target("gcs", factory, server, recreate)


def _target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    kind = request.param
    if kind == "local":
        target = _local_target(tmp_path)
    elif kind == "s3":
        target = _s3_target(request.getfixturevalue("moto_server"))
    else:
        target = _gcs_target(request.getfixturevalue("fake_gcs_server"))
    yield target
    for backend in target.made:
        backend.close()


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """Each backend kind over an empty bucket."""
    yield from _target(request, tmp_path)


@pytest.fixture(params=REMOTE_KINDS)
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """The backends that talk to a server."""
    yield from _target(request, tmp_path)


ALL_BYTES = bytes(range(256)) * 4
META = {"first-seq": "1", "last_seq": "100", "hash": HASH, "stream": "host-1.0"}


# ------------------------------------------------------------------ contract tests


def test_put_get_head_round_trip(target: Target) -> None:
    backend = target.make()
    key = "default/host-1.0/batches/00000000000000000001-00000000000000000100.jsonl.gz"
    assert backend.head(key) is None
    backend.put_if_absent(key, ALL_BYTES, META)
    assert backend.get(key) == ALL_BYTES
    assert backend.head(key) == META
    assert list(backend.list()) == [key]


def test_empty_object_without_metadata(target: Target) -> None:
    backend = target.make()
    backend.put_if_absent("empty", b"", {})
    assert backend.get("empty") == b""
    assert backend.head("empty") == {}


def test_missing_object(target: Target) -> None:
    backend = target.make()
    backend.put_if_absent("present", b"x", {})
    assert backend.head("absent") is None
    with pytest.raises(ObjectNotFoundError) as info:
        backend.get("absent")
    assert isinstance(info.value, ReplicationError)
    assert not isinstance(info.value, BucketNotFoundError)


def test_conditional_write_never_overwrites(target: Target) -> None:
    backend = target.make()
    backend.put_if_absent("obj", b"original", {"v": "1"})
    with pytest.raises(ObjectExistsError):
        backend.put_if_absent("obj", b"tampered", {"v": "2"})
    with pytest.raises(ObjectExistsError):  # a second backend instance is refused too
        target.make().put_if_absent("obj", b"tampered", {"v": "3"})
    assert backend.get("obj") == b"original"
    assert backend.head("obj") == {"v": "1"}
    assert list(backend.list()) == ["obj"]


def test_concurrent_writers_exactly_one_wins(target: Target) -> None:
    """Six writers race on one key; exactly one succeeds, the others see ObjectExistsError.

    Not run against moto: its ``If-None-Match`` check and the write are two separate steps
    (moto/s3/responses.py), so a lost race there would be moto's, not ours. AWS S3
    evaluates the condition atomically.
    """
    if target.kind == "s3":
        pytest.skip("moto's If-None-Match check is not atomic with the write")
    backends = [target.make() for _ in range(6)]
    barrier = threading.Barrier(len(backends))
    outcomes: list[str] = []

    def write(index: int) -> str:
        barrier.wait()
        try:
            backends[index].put_if_absent("race", f"writer-{index}".encode(), {"w": str(index)})
        except ObjectExistsError:
            return "exists"
        return f"writer-{index}"

    with ThreadPoolExecutor(len(backends)) as pool:
        outcomes = list(pool.map(write, range(len(backends))))
    winners = [o for o in outcomes if o != "exists"]
    assert len(winners) == 1, outcomes
    stored = backends[0].get("race")
    assert stored.decode() == winners[0]
    assert backends[0].head("race") == {"w": winners[0].split("-")[1]}


def test_list_sorted_with_prefix_and_small_pages(target: Target) -> None:
    backend = target.make()
    batch_keys = [f"t/s/batches/{n:08d}-{n + 9:08d}.jsonl.gz" for n in range(1, 301, 10)]
    other_keys = ["t/s/checkpoints/10.note", "t/s/checkpoints/9.note", "t/u/batches/x", "z"]
    for key in reversed(batch_keys + other_keys):
        backend.put_if_absent(key, key.encode(), {})
    assert list(backend.list("t/s/batches/", page_size=7)) == sorted(batch_keys)
    everything = sorted(batch_keys + other_keys)
    assert list(backend.list(page_size=3)) == everything
    assert list(backend.list()) == everything
    # a plain string prefix, not only whole path components
    assert list(backend.list("t/s/batches/0000010")) == [
        k for k in batch_keys if k.startswith("t/s/batches/0000010")
    ]
    assert list(backend.list("t/s/checkpoints/")) == [
        "t/s/checkpoints/10.note",
        "t/s/checkpoints/9.note",
    ]
    assert list(backend.list("nothing/")) == []
    assert list(backend.list("t/s/batches/", page_size=1000))[:2] == sorted(batch_keys)[:2]


def test_list_more_than_one_server_page(target: Target) -> None:
    """1001 objects: S3 and GCS return at most 1000 keys per page by default."""
    backend = target.make("p", **({"fsync": False} if target.kind == "local" else {}))
    keys = [f"k/{i:05d}" for i in range(1001)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: backend.put_if_absent(k, b"", {}), keys))
    listed = list(backend.list("k/"))
    assert listed == keys
    assert sum(1 for _ in backend.list("k/", page_size=400)) == 1001


def test_prefix_isolation_and_describe(target: Target) -> None:
    tenant_a = target.make("tenants/a/")
    tenant_b = target.make("/tenants/b")
    root = target.make()
    assert tenant_a.prefix == "tenants/a"
    tenant_a.put_if_absent("obj", b"A", {"t": "a"})
    tenant_b.put_if_absent("obj", b"B", {"t": "b"})  # same key, other prefix: no conflict
    assert tenant_a.get("obj") == b"A"
    assert tenant_b.head("obj") == {"t": "b"}
    assert list(tenant_a.list()) == ["obj"]
    assert list(root.list()) == ["tenants/a/obj", "tenants/b/obj"]
    assert root.get("tenants/a/obj") == b"A"
    scheme = {"local": "file", "s3": "s3", "gcs": "gs"}[target.kind]
    assert tenant_a.describe().startswith(f"{scheme}://")
    assert "tenants/a" in tenant_a.describe()
    assert "secret" not in tenant_a.describe().lower()
    assert tenant_a.describe() in repr(tenant_a)


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../escape",
    "a/../../b",
    "a/./b",
    "a//b",
    "a/",
    "a\\..\\b",
    ".hidden",
    "a/.tmp",
    "obj.meta.json",
    "nul\x00byte",
    "new\nline",
    "k" * 1025,
]


def test_bad_keys_rejected_before_any_io(target: Target) -> None:
    backend = target.make()
    for key in BAD_KEYS:
        with pytest.raises(ConfigurationError):
            backend.put_if_absent(key, b"x", {})
        with pytest.raises(ConfigurationError):
            backend.get(key)
        with pytest.raises(ConfigurationError):
            backend.head(key)
    assert list(backend.list()) == []


BAD_METADATA: list[Any] = [
    {"Upper": "x"},
    {"spaced key": "x"},
    {"-lead": "x"},
    {"k": "caf\u00e9"},
    {"k": " padded"},
    {"k": "line\nbreak"},
    {"k": 1},
    {"k": "v" * 2100},
    [("k", "v")],
]


def test_bad_metadata_rejected_before_any_io(target: Target) -> None:
    backend = target.make()
    for metadata in BAD_METADATA:
        with pytest.raises(ConfigurationError):
            backend.put_if_absent("obj", b"x", metadata)
    assert backend.head("obj") is None
    with pytest.raises(ConfigurationError):
        backend.put_if_absent("obj", "text", {})  # type: ignore[arg-type]
    assert list(backend.list()) == []


def test_bad_prefixes_rejected(target: Target) -> None:
    for prefix in ("../up", "a/../b", "a\\b", ".hidden"):
        with pytest.raises(ConfigurationError):
            target.make(prefix)
    backend = target.make()
    for list_prefix in ("../", "a/../b/", "/abs", "a//b"):
        with pytest.raises(ConfigurationError):
            list(backend.list(list_prefix))
    with pytest.raises(ConfigurationError):
        list(backend.list(page_size=0))


def test_missing_bucket(target: Target) -> None:
    backend = target.make(bucket="no-such-bucket")
    with pytest.raises(BucketNotFoundError):
        backend.put_if_absent("k", b"x", {})
    with pytest.raises(BucketNotFoundError):
        backend.get("k")
    with pytest.raises(BucketNotFoundError):
        backend.head("k")
    with pytest.raises(BucketNotFoundError):
        list(backend.list())


def test_close_is_idempotent_and_reopens(target: Target) -> None:
    backend = target.make()
    with backend as entered:
        assert entered is backend
        backend.put_if_absent("a", b"1", {})
    backend.close()
    backend.close()
    backend.put_if_absent("b", b"2", {})  # a closed backend reopens its client lazily
    assert list(backend.list()) == ["a", "b"]


# ------------------------------------------------------------------ outages


def test_server_down_fails_fast_then_recovers(remote: Target) -> None:
    assert remote.server is not None
    backend = remote.make(retry_timeout=1.0) if remote.kind == "gcs" else remote.make()
    backend.put_if_absent("before", b"1", {})
    remote.server.stop()
    calls: list[Callable[[], object]] = [
        lambda: backend.put_if_absent("during", b"2", {}),
        lambda: backend.get("before"),
        lambda: backend.head("before"),
        lambda: list(backend.list()),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            call()
        assert time.monotonic() - started < 10
    remote.server.start()  # same port: the backend's endpoint is valid again
    remote.recreate_bucket()  # both servers keep their data in memory
    backend.put_if_absent("after", b"3", {})
    assert list(backend.list()) == ["after"]


def test_default_timeouts_fail_fast(remote: Target) -> None:
    """With the default settings too, an outage costs seconds, not minutes."""
    assert remote.server is not None
    backend = remote.make()
    remote.server.stop()
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError):
        backend.put_if_absent("k", b"x", {})
    assert time.monotonic() - started < 10


def test_server_killed_mid_listing(remote: Target) -> None:
    assert remote.server is not None
    backend = remote.make(retry_timeout=1.0) if remote.kind == "gcs" else remote.make()
    for i in range(12):
        backend.put_if_absent(f"k{i:02d}", b"", {})
    pages = backend.list(page_size=5)
    first = [next(pages) for _ in range(5)]
    assert first == [f"k{i:02d}" for i in range(5)]
    remote.server.stop()
    with pytest.raises(BackendUnavailableError):
        list(pages)


def test_unreachable_endpoint_is_unavailable() -> None:
    """A closed port on localhost: connection refused, reported as unavailable."""
    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    backends: list[StorageBackend] = [
        S3Backend(
            BUCKET,
            endpoint_url=url,
            region=DUMMY_REGION,
            aws_access_key_id="a",
            aws_secret_access_key="b",
        ),
        GCSBackend(BUCKET, endpoint_url=url, retry_timeout=0.5),
    ]
    for backend in backends:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            backend.head("k")
        assert time.monotonic() - started < 10


def test_gcs_filesystem_server_keeps_data_across_restart(
    fake_gcs_server_persistent: FakeGcsServer,
) -> None:
    server = fake_gcs_server_persistent
    create_gcs_bucket(server, BUCKET)
    backend = GCSBackend(BUCKET, "p", endpoint_url=server.endpoint_url)
    backend.put_if_absent("kept", b"data", {"m": "1"})
    server.stop()
    with pytest.raises(BackendUnavailableError):
        GCSBackend(BUCKET, endpoint_url=server.endpoint_url, retry_timeout=0.2).get("p/kept")
    server.start()
    assert backend.get("kept") == b"data"
    assert backend.head("kept") == {"m": "1"}
    with pytest.raises(ObjectExistsError):
        backend.put_if_absent("kept", b"other", {})
    backend.close()


# ------------------------------------------------------------------ constructors


def test_constructors_do_no_network_io_and_import_no_sdk() -> None:
    """Fresh interpreter: constructing against a black-hole address is instant."""
    code = textwrap.dedent(
        """
        import sys, time
        start = time.monotonic()
        from immutable_logging.replication import GCSBackend, S3Backend
        url = "http://127.0.0.1:9"  # nothing listens: only a connection attempt would notice
        backends = [
            S3Backend("bucket", "p", endpoint_url=url, sse="aws:kms", kms_key_id="k",
                      object_lock_days=30),
            S3Backend("bucket"),
            GCSBackend("bucket", "p", endpoint_url=url),
            GCSBackend("bucket", project="proj"),
        ]
        descriptions = [b.describe() for b in backends]
        for backend in backends:
            backend.close()
        elapsed = time.monotonic() - start
        loaded = sorted(m for m in ("boto3", "botocore", "google.cloud.storage")
                        if m in sys.modules)
        print(elapsed, loaded, descriptions)
        assert elapsed < 2.0, elapsed
        assert not loaded, loaded
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_"))}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_constructor_argument_validation() -> None:
    with pytest.raises(ConfigurationError):
        S3Backend("")
    with pytest.raises(ConfigurationError):
        S3Backend("b", sse="DES")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        S3Backend("b", sse="AES256", kms_key_id="k")
    with pytest.raises(ConfigurationError):
        S3Backend("b", object_lock_days=0)
    with pytest.raises(ConfigurationError):
        S3Backend("b", aws_access_key_id="only-the-id")
    with pytest.raises(ConfigurationError):
        GCSBackend("a/b")
    assert S3Backend("b", "x/y").describe() == "s3://b/x/y"
    assert GCSBackend("b").describe() == "gs://b"


# ------------------------------------------------------------------ S3 specifics


def _s3(server: MotoServer, bucket: str = BUCKET, **kw: Any) -> S3Backend:
    return S3Backend(
        bucket,
        region=DUMMY_REGION,
        endpoint_url=server.endpoint_url,
        aws_access_key_id=DUMMY_ACCESS_KEY,
        aws_secret_access_key=DUMMY_SECRET_KEY,
        **kw,
    )


def test_s3_put_asks_for_sse_and_checksum(moto_server: MotoServer) -> None:
    create_s3_bucket(moto_server, BUCKET)
    backend = _s3(moto_server)
    backend.put_if_absent("enc", b"secret", {"a": "b"})
    client = s3_client(moto_server)
    head = client.head_object(Bucket=BUCKET, Key="enc", ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"] == {"a": "b"}
    assert head["ContentType"] == "application/octet-stream"
    assert "ChecksumSHA256" in head
    client.close()
    backend.close()


def test_s3_sse_kms(moto_server: MotoServer) -> None:
    create_s3_bucket(moto_server, BUCKET)
    backend = _s3(moto_server, sse="aws:kms", kms_key_id="alias/log-replica")
    backend.put_if_absent("kms", b"secret", {})
    client = s3_client(moto_server)
    head = client.head_object(Bucket=BUCKET, Key="kms")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == "alias/log-replica"
    client.close()
    backend.close()


def test_s3_object_lock_compliance_blocks_deleting_the_version(moto_server: MotoServer) -> None:
    create_s3_bucket(moto_server, "locked-bucket", object_lock=True)
    backend = _s3(moto_server, "locked-bucket", object_lock_days=2)
    backend.put_if_absent("checkpoints/10.note", b"signed note", {"tree-size": "10"})
    client = s3_client(moto_server)
    head = client.head_object(Bucket="locked-bucket", Key="checkpoints/10.note")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    until = head["ObjectLockRetainUntilDate"]
    expected = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    assert abs((until - expected).total_seconds()) < 120
    version = head["VersionId"]
    for extra in ({}, {"BypassGovernanceRetention": True}):
        with pytest.raises(client.exceptions.ClientError) as info:
            client.delete_object(
                Bucket="locked-bucket", Key="checkpoints/10.note", VersionId=version, **extra
            )
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert info.value.response["Error"]["Code"] == "AccessDenied"
    assert backend.get("checkpoints/10.note") == b"signed note"
    with pytest.raises(ObjectExistsError):
        backend.put_if_absent("checkpoints/10.note", b"forged", {})
    client.close()
    backend.close()


def test_s3_object_lock_on_bucket_without_lock_is_refused(moto_server: MotoServer) -> None:
    create_s3_bucket(moto_server, BUCKET)
    backend = _s3(moto_server, object_lock_days=1)
    with pytest.raises(ReplicationError) as info:
        backend.put_if_absent("k", b"x", {})
    assert type(info.value) is ReplicationError
    assert "InvalidRequest" in str(info.value)
    assert backend.head("k") is None
    backend.close()


def test_s3_bad_credentials(moto_auth_server: MotoAuthServer) -> None:
    server = moto_auth_server
    good = S3Backend(
        BUCKET,
        region=DUMMY_REGION,
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.credentials["aws_access_key_id"],
        aws_secret_access_key=server.credentials["aws_secret_access_key"],
    )
    create_s3_bucket(server, BUCKET)
    good.put_if_absent("k", b"x", {"m": "1"})
    assert good.get("k") == b"x"
    assert good.head("k") == {"m": "1"}
    assert list(good.list()) == ["k"]
    unknown_key = _s3(server)
    wrong_secret = S3Backend(
        BUCKET,
        region=DUMMY_REGION,
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.credentials["aws_access_key_id"],
        aws_secret_access_key="not-the-secret",
    )
    for backend in (unknown_key, wrong_secret):
        with pytest.raises(BackendAuthError):
            backend.put_if_absent("k2", b"x", {})
        with pytest.raises(BackendAuthError):
            backend.get("k")
        with pytest.raises(BackendAuthError):
            backend.head("k")
        with pytest.raises(BackendAuthError):
            list(backend.list())
        backend.close()
    assert list(good.list()) == ["k"]
    good.close()


def test_s3_error_mapping_of_status_codes() -> None:
    """Codes a local server cannot produce on demand (throttling, 5xx, KMS denial)."""
    from botocore.exceptions import ClientError

    backend = S3Backend(BUCKET)

    def mapped(code: str, status: int) -> ReplicationError:
        response: Any = {
            "Error": {"Code": code, "Message": "m"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        return backend._map_error(ClientError(response, "PutObject"), "k", "put")

    assert isinstance(mapped("SlowDown", 503), BackendUnavailableError)
    assert isinstance(mapped("InternalError", 500), BackendUnavailableError)
    assert isinstance(mapped("AccessDenied", 403), BackendAuthError)
    assert isinstance(mapped("ExpiredToken", 400), BackendAuthError)
    assert isinstance(mapped("PreconditionFailed", 412), ObjectExistsError)
    assert isinstance(mapped("NoSuchBucket", 404), BucketNotFoundError)
    other = mapped("ConditionalRequestConflict", 409)
    assert type(other) is ReplicationError
    assert "ConditionalRequestConflict" in str(other)


# ------------------------------------------------------------------ GCS specifics


def test_gcs_rejected_credentials(fake_gcs_server: FakeGcsServer) -> None:
    """fake-gcs-server ignores credentials, so make the token refresh itself fail.

    The OAuth token endpoint is a real HTTP server (fake-gcs-server) that has no such
    route; google-auth reports a ``RefreshError`` and the backend a ``BackendAuthError``.
    """
    from google.oauth2.credentials import Credentials

    create_gcs_bucket(fake_gcs_server, BUCKET)
    credentials = Credentials(  # type: ignore[no-untyped-call]
        token=None,
        refresh_token="revoked",
        token_uri=f"{fake_gcs_server.endpoint_url}/oauth2/v4/token",
        client_id="client",
        client_secret="secret",
    )
    backend = GCSBackend(
        BUCKET,
        project="test-project",
        credentials=credentials,
        endpoint_url=fake_gcs_server.endpoint_url,
        retry_timeout=1.0,
    )
    with pytest.raises(BackendAuthError):
        backend.put_if_absent("k", b"x", {})
    with pytest.raises(BackendAuthError):
        list(backend.list())
    backend.close()


def test_gcs_error_mapping_of_status_codes() -> None:
    """Responses fake-gcs-server never sends (it does no authorization)."""
    from google.api_core import exceptions as gexc

    backend = GCSBackend(BUCKET)

    def mapped(exc: Exception) -> ReplicationError:
        return backend._map_error(exc, "k", "put")

    errors: Any = gexc  # the module is untyped
    assert isinstance(mapped(errors.Forbidden("denied")), BackendAuthError)
    assert isinstance(mapped(errors.Unauthorized("bad token")), BackendAuthError)
    assert isinstance(mapped(errors.ServiceUnavailable("later")), BackendUnavailableError)
    assert isinstance(mapped(errors.TooManyRequests("slow down")), BackendUnavailableError)
    assert isinstance(mapped(errors.PreconditionFailed("exists")), ObjectExistsError)
    assert type(mapped(errors.BadRequest("bad"))) is ReplicationError


# ------------------------------------------------------------------ local specifics


def test_local_files_are_read_only_with_sidecar(tmp_path: Path) -> None:
    backend = LocalDirectoryBackend(tmp_path / "bucket", "pre")
    backend.put_if_absent("a/b", b"payload", {"k": "v"})
    obj = tmp_path / "bucket" / "pre" / "a" / "b"
    sidecar = obj.with_name("b.meta.json")
    assert stat.S_IMODE(obj.stat().st_mode) == 0o444
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o444
    assert json.loads(sidecar.read_bytes()) == {"k": "v"}
    assert sorted(p.name for p in obj.parent.iterdir()) == ["b", "b.meta.json"]
    assert backend.describe() == (tmp_path / "bucket").as_uri() + "/pre"


def test_local_crash_leftovers_are_ignored_and_replaced(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    backend = LocalDirectoryBackend(root)
    backend.put_if_absent("d/first", b"1", {})
    # what a crash between the sidecar rename and the link leaves behind
    (root / "d" / "second.meta.json").write_text('{"stale": "yes"}')
    (root / "d" / ".tmp-0123").write_bytes(b"partial")
    assert list(backend.list()) == ["d/first"]
    assert backend.head("d/second") is None
    backend.put_if_absent("d/second", b"2", {"fresh": "yes"})
    assert backend.head("d/second") == {"fresh": "yes"}
    assert list(backend.list()) == ["d/first", "d/second"]


def test_local_symlink_escape_refused(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not read")
    (root / "link").symlink_to(outside, target_is_directory=True)
    backend = LocalDirectoryBackend(root)
    with pytest.raises(ConfigurationError):
        backend.put_if_absent("link/x", b"x", {})
    with pytest.raises(ConfigurationError):
        backend.get("link/secret")
    with pytest.raises(ConfigurationError):
        list(backend.list("link/"))
    assert not (outside / "x").exists()


def test_local_missing_root_behaves_as_empty_then_is_created(tmp_path: Path) -> None:
    root = tmp_path / "later" / "bucket"
    backend = LocalDirectoryBackend(root)
    assert not root.exists()  # the constructor did nothing
    assert list(backend.list()) == []
    assert backend.head("k") is None
    with pytest.raises(ObjectNotFoundError):
        backend.get("k")
    backend.put_if_absent("k", b"v", {})
    assert root.is_dir()


def test_local_component_too_long_for_a_file_name(tmp_path: Path) -> None:
    backend = LocalDirectoryBackend(tmp_path / "bucket")
    with pytest.raises(ConfigurationError):
        backend.put_if_absent("d/" + "x" * 250, b"", {})
    backend.put_if_absent("d/" + "x" * 245, b"", {})


def test_local_key_that_is_a_directory(tmp_path: Path) -> None:
    backend = LocalDirectoryBackend(tmp_path / "bucket")
    backend.put_if_absent("a/b", b"1", {})
    with pytest.raises(ReplicationError) as info:
        backend.put_if_absent("a", b"2", {})
    assert not isinstance(info.value, ObjectExistsError)
    with pytest.raises(ReplicationError):
        backend.put_if_absent("a/b/c", b"3", {})
    assert list(backend.list()) == ["a/b"]


def test_local_concurrent_processes_exactly_one_wins(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    go = tmp_path / "go"
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from immutable_logging.errors import ObjectExistsError
        from immutable_logging.replication import LocalDirectoryBackend
        backend = LocalDirectoryBackend({str(root)!r})
        while not os.path.exists({str(go)!r}):
            time.sleep(0.001)
        try:
            backend.put_if_absent("race", sys.argv[1].encode(), {{"w": sys.argv[1]}})
        except ObjectExistsError:
            sys.exit(3)
        """
    )
    cwd = Path(__file__).resolve().parent.parent
    procs = [subprocess.Popen([sys.executable, "-c", code, f"p{i}"], cwd=cwd) for i in range(4)]
    time.sleep(0.5)
    go.touch()
    codes = [p.wait(30) for p in procs]
    assert sorted(codes) == [0, 3, 3, 3], codes
    winner = f"p{codes.index(0)}"
    backend = LocalDirectoryBackend(root)
    assert backend.get("race") == winner.encode()
    assert backend.head("race") == {"w": winner}
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp-")] == []
