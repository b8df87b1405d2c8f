"""Small helpers shared by tests: write a log through the real handler, edit files."""

from __future__ import annotations

import gzip
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from immutable_logging.handler import ImmutableHandler
from immutable_logging.layout import list_segments, list_streams


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
