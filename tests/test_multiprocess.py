"""Several processes logging into one directory (gunicorn-style workers), and fork safety.

Each process must write its own stream (``<host>.<slot>``, flock-guarded); no process may
corrupt another's; verification and reading cover every stream.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from immutable_logging import ImmutableHandler
from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant

WORKERS = 4
PER_WORKER = 10_000
TENANT = "mp"


def _worker(directory: str, worker: int, count: int, barrier: Any, durability: str) -> None:
    """A 'gunicorn worker': its own handler on the shared directory, started together."""
    handler = ImmutableHandler(directory, tenant=TENANT, durability=durability)
    logger = logging.getLogger(f"mp.worker.{worker}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    barrier.wait(timeout=60)  # every worker holds its stream lock before anyone logs
    for i in range(count):
        logger.info("request %d handled", i, extra={"worker": worker, "i": i})
    barrier.wait(timeout=60)  # nobody releases its stream while others still log
    handler.close()
    if handler.error_count:
        raise SystemExit(f"worker {worker}: {handler.error_count} handler errors")


def _by_stream(directory: Path) -> dict[str, list[dict[str, Any]]]:
    streams: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in iter_entries(directory, TENANT):
        streams[entry["stream"]].append(entry)
    for entries in streams.values():
        entries.sort(key=lambda e: e["seq"])
    return streams


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("start_method", "durability"), [("fork", "flush"), ("spawn", "flush"), ("fork", "group")]
)
def test_worker_processes_get_their_own_streams(
    tmp_path: Path, start_method: str, durability: str
) -> None:
    ctx = multiprocessing.get_context(start_method)
    barrier = ctx.Barrier(WORKERS)
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path), n, PER_WORKER, barrier, durability))
        for n in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(90)
    assert [p.exitcode for p in procs] == [0] * WORKERS

    report = verify_tenant(tmp_path, TENANT, parse=True)
    assert report.ok, report.problems[:5]
    assert len(report.streams) == WORKERS
    assert report.entries == WORKERS * PER_WORKER
    assert all(s.entries == PER_WORKER and s.first_seq == 1 for s in report.streams)
    assert all(s.last_seq == PER_WORKER for s in report.streams)

    streams = _by_stream(tmp_path)
    assert sum(len(v) for v in streams.values()) == WORKERS * PER_WORKER
    workers_seen = set()
    for name, entries in streams.items():
        # One process per stream, and that process wrote nowhere else.
        assert len({e["pid"] for e in entries}) == 1, name
        [worker] = {e["metadata"]["worker"] for e in entries}
        workers_seen.add(worker)
        assert [e["metadata"]["i"] for e in entries] == list(range(PER_WORKER))
        assert [e["seq"] for e in entries] == list(range(1, PER_WORKER + 1))
        assert entries[0]["prev"] == "0" * 64
        assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))
    assert workers_seen == set(range(WORKERS))
    assert len({e[0]["pid"] for e in streams.values()}) == WORKERS


def test_restarted_worker_continues_a_free_stream(tmp_path: Path) -> None:
    """A worker restarted after the others exited takes the first free slot and continues it."""
    ctx = multiprocessing.get_context("fork")
    for round_ in range(2):
        barrier = ctx.Barrier(2)
        procs = [
            ctx.Process(target=_worker, args=(str(tmp_path), n + 2 * round_, 100, barrier, "flush"))
            for n in range(2)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
    report = verify_tenant(tmp_path, TENANT, parse=True)
    assert report.ok, report.problems
    assert len(report.streams) == 2  # the second round reused both slots
    assert sorted(s.last_seq for s in report.streams) == [200, 200]
    assert report.entries == 400


# --------------------------------------------------------------------------- inherited handler
def _inherited_child(logger_name: str, child: int, count: int) -> None:
    """Log through the handler inherited from the parent, then close it."""
    logger = logging.getLogger(logger_name)
    for i in range(count):
        logger.info("child %d entry %d", child, i, extra={"who": f"child-{child}", "i": i})
    for handler in logger.handlers:
        handler.close()
        if isinstance(handler, ImmutableHandler) and handler.error_count:
            raise SystemExit(f"child {child}: {handler.error_count} handler errors")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("durability", ["flush", "none", "group"])
def test_fork_with_open_handler_in_parent(
    tmp_path: Path, logger_name: str, durability: str
) -> None:
    children, per_child, before, during, after = 3, 2000, 500, 2000, 100
    handler = ImmutableHandler(tmp_path, tenant=TENANT, durability=durability)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for i in range(before):  # with "none"/"group" these sit in the buffer at fork time
        logger.info("parent before %d", i, extra={"who": "parent", "i": i})
    parent_stream = handler.writer.stream

    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_inherited_child, args=(logger_name, n, per_child))
        for n in range(children)
    ]
    for proc in procs:
        proc.start()
    for i in range(before, before + during):  # the parent keeps logging meanwhile
        logger.info("parent during %d", i, extra={"who": "parent", "i": i})
    for proc in procs:
        proc.join(60)
    assert [p.exitcode for p in procs] == [0] * children
    for i in range(before + during, before + during + after):
        logger.info("parent after %d", i, extra={"who": "parent", "i": i})
    assert handler.writer.stream == parent_stream  # the parent never switched streams
    handler.close()
    assert handler.error_count == 0

    report = verify_tenant(tmp_path, TENANT, parse=True)
    assert report.ok, report.problems[:5]
    assert len(report.streams) == children + 1
    parent_total = before + during + after
    assert report.entries == parent_total + children * per_child  # nothing lost or doubled

    streams = _by_stream(tmp_path)
    parent_entries = streams.pop(parent_stream)
    assert {e["pid"] for e in parent_entries} == {os.getpid()}
    assert [e["metadata"]["i"] for e in parent_entries] == list(range(parent_total))
    assert [e["seq"] for e in parent_entries] == list(range(1, parent_total + 1))
    child_pids = {p.pid for p in procs}
    owners: Counter[str] = Counter()
    for name, entries in streams.items():
        [pid] = {e["pid"] for e in entries}
        assert pid in child_pids, name
        [who] = {e["metadata"]["who"] for e in entries}
        owners[who] += 1
        assert [e["metadata"]["i"] for e in entries] == list(range(per_child))
        assert entries[0]["seq"] == 1 and entries[0]["prev"] == "0" * 64
    assert owners == Counter({f"child-{n}": 1 for n in range(children)})


def _exit_like_a_worker(logger_name: str, log_one: bool) -> None:
    if log_one:
        logging.getLogger(logger_name).info("from the child")
    logging.shutdown()  # what a normal exit runs: it closes the inherited handler


@pytest.mark.parametrize("child_logs", [False, True])
def test_a_forked_child_never_ships_its_parents_stream(
    tmp_path: Path, logger_name: str, child_logs: bool
) -> None:
    """Found by a stress audit: a child exiting normally closed the parent's replicator
    copy, which shipped the parent's stream from the child; its batches overlapped the
    parent's, and the replica was reported corrupted."""
    from immutable_logging.replication.cloud import verify_cloud_backup
    from immutable_logging.replication.local import LocalDirectoryBackend

    bucket = tmp_path / "bucket"
    handler = ImmutableHandler(tmp_path / "logs", tenant=TENANT, enable_cloud_backup=True,
                               backup_directory=str(bucket), backup_batch_size=10,
                               backup_flush_interval=60, checkpoint_key=bytes(32))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for i in range(25):
        logger.info("parent %d", i)
    handler.flush()
    replicator = handler.replicator
    assert replicator is not None
    replicator.pump()  # ships 1..20; 21..25 wait for a fuller batch
    shipped = sorted(p.name for p in bucket.rglob("*.jsonl.gz"))
    notes = sorted(p.name for p in (tmp_path / "logs").rglob("*.note"))
    child = multiprocessing.get_context("fork").Process(
        target=_exit_like_a_worker, args=(logger_name, child_logs))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    parent_stream = handler.writer.stream
    assert sorted(p.name for p in bucket.rglob(f"{parent_stream}/**/*.jsonl.gz")) == shipped
    assert sorted(p.name for p in (tmp_path / "logs" / TENANT / parent_stream).rglob(
        "*.note")) == notes  # nor did it sign a checkpoint of it
    for i in range(25, 40):
        logger.info("parent %d", i)
    handler.close()
    result = verify_cloud_backup(LocalDirectoryBackend(bucket), tmp_path / "logs", TENANT)
    assert (result["sync_status"], result["problems"]) == ("synced", [])
    assert result["cloud_blocks"] == 40 + child_logs  # the child's own stream is shipped


def _ask_the_replica(facade: Any, results: Any) -> None:
    results.put((facade.sync_status()["stream"], facade.flush_backup()))


def test_a_forked_child_asks_the_facade_about_its_own_replication(tmp_path: Path) -> None:
    """Found by review: in a child that had not logged, sync_status() and flush_backup()
    failed with a bare AssertionError (the parent's replicator is dropped at the fork)."""
    from immutable_logging import ImmutableLogger

    with ImmutableLogger(tmp_path / "logs", tenantId=TENANT, enable_cloud_backup=True,
                         backup_directory=str(tmp_path / "bucket")) as log:
        log.info("parent")
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        child = ctx.Process(target=_ask_the_replica, args=(log, results))
        child.start()
        stream, caught_up = results.get(timeout=60)
        child.join(60)
        assert child.exitcode == 0 and caught_up is True
        assert stream != log.handler.writer.stream  # the child's own stream
