"""Small helpers shared by tests: write a log through the real handler, edit files."""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from immutable_logging.handler import ImmutableHandler
from immutable_logging.layout import list_segments, list_streams
from immutable_logging.replication.backend import StorageBackend


def write_log(
    directory: Path, name: str, count: int, tenant: str = "default", **options: Any
) -> ImmutableHandler:
    """Log ``count`` INFO records through a real handler; return the (closed) handler."""
    handler = ImmutableHandler(directory, tenant, **options)
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        for i in range(count):
            logger.info("event %d", i, extra={"index": i, "user": f"u{i % 7}"})
    finally:
        logger.removeHandler(handler)
        handler.close()
    return handler


_KILLED_APP = """
import json, logging, os, signal, sys
from immutable_logging import ImmutableHandler, chain
# Batches are written by size and at rotation only, never by the 50 ms timer: the last
# batch is in the journal alone when the kill comes, however slow the machine.
chain.JOURNAL_WRITE_INTERVAL = 3600.0
directory, tenant, name, count, written, options = sys.argv[1:]
handler = ImmutableHandler(directory, tenant, **json.loads(options))
logger = logging.getLogger(name)
logger.propagate = False
logger.setLevel(logging.DEBUG)
logger.addHandler(handler)
count, written = int(count), int(written)
for i in range(count):
    if written and i == written:
        handler.flush()
    logger.info("event %d", i, extra={"index": i, "user": f"u{i % 7}"})
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit: nothing more is written
"""


def write_log_and_kill(
    directory: Path, name: str, count: int, tenant: str = "default", *, written: int = 0,
    **options: Any,
) -> Path:
    """Log ``count`` records as :func:`write_log` does, in a child process that is then
    killed (SIGKILL) before it closes its handler; return the stream directory.

    The handler runs with the default ``durability="flush"``, so the entries logged since
    its last batch write (the flush after the first ``written`` records, or a rotation)
    are only in the stream's journal. ``options`` (JSON values) go to the handler; pass
    ``stream`` to know the stream's name.
    """
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_APP, str(directory), tenant, name, str(count),
         str(written), json.dumps(options)],
        capture_output=True, timeout=120, cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    stream = options.get("stream")
    return directory / tenant / stream if stream else only_stream(directory, tenant)


def only_stream(directory: Path, tenant: str = "default") -> Path:
    streams = list_streams(directory / tenant)
    assert len(streams) == 1, streams
    return streams[0]


def read_lines(path: Path) -> list[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        return handle.read().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    """Rewrite a (possibly read-only, possibly gzip) segment: what an attacker would do."""
    os.chmod(path, 0o600)
    data = b"".join(lines)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def active_segment(stream: Path) -> Path:
    return list_segments(stream)[-1].path


def nonces_of_forked_child(draw: Callable[[], bytes], count: int = 5) -> list[bytes]:
    """The 12-byte nonces ``draw()`` returns in a forked child, ``count`` calls."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_fd)
            os.write(write_fd, b"".join(draw() for _ in range(count)))
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        child = fh.read()
    os.waitpid(pid, 0)
    return [child[i : i + 12] for i in range(0, len(child), 12)]


def sealed_replica(
    tmp_path: Path, seed: str, count: int = 4, pause: float = 0.06
) -> Path:
    """Log ``count`` entries of tenant ``s`` under ``tmp_path/logs``, sealed with ``seed`` in
    50 ms epochs (``pause`` seconds apart, so that seal entries are written), replicated to
    the local bucket ``tmp_path/bucket``; return the bucket."""
    from immutable_logging import ImmutableLogger

    bucket = tmp_path / "bucket"
    with ImmutableLogger(tmp_path / "logs", tenantId="s", seal_seed=seed,
                         seal_epoch_seconds=0.05, enable_cloud_backup=True,
                         backup_directory=str(bucket)) as log:
        for i in range(count):
            log.info(f"sealed {i}")
            time.sleep(pause)  # epochs pass: seal entries
    return bucket


def assert_sync_fields_agree(result: dict[str, Any]) -> None:
    """The counts, percentage and state of a ``verify_cloud_backup()`` result (or of one
    tenant of ``sync-status --json``) say one thing, whatever the situation."""
    local, cloud, remote = result["local_blocks"], result["cloud_blocks"], result["remote_entries"]
    differing, remote_only = result["differing_blocks"], result["remote_only_blocks"]
    assert local == cloud + result["missing_blocks"], result
    assert remote == cloud + differing + remote_only, result
    for total, per_stream in [(local, "local"), (cloud, "cloud"), (remote, "remote_entries"),
                              (differing, "differing"), (remote_only, "remote_only")]:
        assert total == sum(s[per_stream] for s in result["streams"].values()), result
    known = local + remote_only
    assert result["sync_percentage"] == (10_000 * cloud // known / 100 if known else 100.0)
    state = result["sync_status"]
    assert (state == "synced") == (result["sync_percentage"] == 100.0
                                   and not result["problems"]), result
    assert (state == "local_lost") == (result["remote_ok"] and local == 0 < remote), result
    assert (state == "corrupted") == (bool(result["problems"]) and state != "local_lost")
    assert result["remote_ok"] or state == "corrupted", result
    if state == "partial":
        assert 0 < cloud < local and not result["problems"], result
    if state == "not_synced":
        assert cloud == remote == 0 < local and not result["problems"], result


def ship_again(bucket: StorageBackend, stream_dir: Path, first: int, last: int,
               tenant: str = "default") -> None:
    """Ship the local entries ``first..last`` of ``stream_dir`` once more, as one batch per
    segment, as a second shipper of the stream would: a request still in flight when
    ``close()`` gave up lands after the next writer shipped the same entries cut into
    other batches."""
    from immutable_logging.replication.holes import local_run
    from immutable_logging.replication.replicator import Replicator

    replicator = Replicator(bucket, stream_dir, tenant)
    for piece in local_run(stream_dir, first, last, max_entries=1000, max_bytes=1 << 20):
        replicator._put_batch(piece)
