"""Replication across process life: atexit, SIGTERM then restart, fork."""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from immutable_logging import ImmutableHandler, ImmutableLogger
from immutable_logging.query import iter_entries
from immutable_logging.replication.cloud import remote_streams, verify_cloud_backup
from immutable_logging.replication.local import LocalDirectoryBackend
from immutable_logging.replication.replicator import ReplicationStatus

from .helpers import sealed_replica

SCRIPT = textwrap.dedent(
    """
    import logging, logging.config, sys, time
    logging.config.dictConfig({{
        "version": 1,
        "handlers": {{"chain": {{
            "class": "immutable_logging.ImmutableHandler",
            "directory": {logs!r},
            "enable_cloud_backup": True,
            "backup_directory": {bucket!r},
            "backup_batch_size": 50,
            "backup_flush_interval": 0.2,
        }}}},
        "root": {{"handlers": ["chain"], "level": "INFO"}},
    }})
    log = logging.getLogger("lifecycle")
    count = int(sys.argv[1])
    for i in range(count if count >= 0 else 10**9):
        log.info("entry %d", i)
        if count < 0:
            time.sleep(0.001)
    """
)


def _run(tmp_path: Path, count: int) -> subprocess.Popen[bytes]:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT.format(logs=str(tmp_path / "logs"), bucket=str(tmp_path / "bucket")))
    return subprocess.Popen([sys.executable, str(script), str(count)])


def _covered(bucket: Path) -> list[int]:
    backend = LocalDirectoryBackend(bucket)
    seqs: list[int] = []
    for names in remote_streams(backend, "default").values():
        seqs += [s for n in names for s in range(n.first_seq, n.last_seq + 1)]
    return seqs


def test_normal_exit_drains_through_atexit(tmp_path: Path) -> None:
    assert _run(tmp_path, 237).wait(60) == 0
    assert _covered(tmp_path / "bucket") == list(range(1, 238))


def test_sigterm_then_restart_ships_everything_once(tmp_path: Path) -> None:
    proc = _run(tmp_path, -1)
    deadline = time.monotonic() + 30
    while len(_covered(tmp_path / "bucket")) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM
    assert _run(tmp_path, 3).wait(60) == 0  # the next start resumes from the cursor
    check = verify_cloud_backup(LocalDirectoryBackend(tmp_path / "bucket"), tmp_path / "logs",
                                "default")
    assert check["sync_status"] == "synced", check
    covered = _covered(tmp_path / "bucket")
    assert covered == list(range(1, len(covered) + 1)) and len(covered) == check["local_blocks"]


def _child(logs: str, bucket: str, barrier: Any) -> None:
    log = ImmutableLogger(logs, enable_cloud_backup=True, backup_directory=bucket)
    for i in range(40):
        log.info(f"child {os.getpid()} {i}")
    barrier.wait(30)  # both children hold their streams at once: two distinct streams
    log.shutdown()


def test_fork_children_replicate_their_own_streams(tmp_path: Path, logger_name: str) -> None:
    handler = ImmutableHandler(tmp_path / "logs", enable_cloud_backup=True,
                               backup_directory=str(tmp_path / "bucket"))
    import logging

    logger = logging.getLogger(logger_name)
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.info("parent before fork")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    children = [ctx.Process(target=_child, args=(str(tmp_path / "logs"),
                                                  str(tmp_path / "bucket"), barrier))
                for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    logger.info("parent after fork")
    handler.close()
    backend = LocalDirectoryBackend(tmp_path / "bucket")
    check = verify_cloud_backup(backend, tmp_path / "logs", "default")
    assert check["sync_status"] == "synced", check
    assert check["local_blocks"] == 2 + 2 * 40
    streams = {k: [(n.first_seq, n.last_seq) for n in v]
               for k, v in remote_streams(backend, "default").items()}
    assert len(streams) == 3, (streams, check["streams"])


def test_an_encrypted_tenant_restored_from_the_replica_stays_encrypted(tmp_path: Path) -> None:
    """The recovery path: after a restore the tenant has no nonce state, yet a handler
    opened on it without the key must still refuse to write in clear; and a passphrase
    tenant must decrypt with its passphrase (its salt travels with the replica)."""
    from immutable_logging.crypto import generate_key
    from immutable_logging.replication.cloud import restore_tenant

    bucket = tmp_path / "bucket"
    backup = {"enable_cloud_backup": True, "backup_directory": str(bucket)}
    with ImmutableLogger(tmp_path / "logs", tenantId="keyed", encryption_key=generate_key(),
                         **backup) as log:
        log.info("card", {"pan": "4111"})
    with ImmutableLogger(tmp_path / "logs", tenantId="phrase",
                         encryption_passphrase="correct horse", **backup) as log:
        log.info("by passphrase")
    restored = tmp_path / "restored"
    for tenant in ("keyed", "phrase"):
        restore_tenant(LocalDirectoryBackend(bucket), restored, tenant)
    assert not (restored / "keyed" / ".nonces.json").exists()
    keyless = ImmutableHandler(restored, "keyed")
    assert "holds encrypted entries" in (keyless.cleartext_refusal or "")
    keyless.close()
    with ImmutableLogger(restored, tenantId="phrase",
                         encryption_passphrase="correct horse") as log:
        assert [e["message"] for e in log.read()] == ["by passphrase"]


def test_a_leftover_salt_in_the_target_is_refused_before_anything_is_written(
    tmp_path: Path
) -> None:
    """Found by the DR audit: a target whose tenant directory already held another salt
    (a handler opened there with a passphrase) failed halfway, blaming the replica and
    leaving a stream.json behind, so that a second try refused "holds streams"."""
    from immutable_logging.errors import ConfigurationError
    from immutable_logging.replication.cloud import restore_tenant

    bucket = tmp_path / "bucket"
    with ImmutableLogger(tmp_path / "logs", tenantId="p", encryption_passphrase="horse",
                         enable_cloud_backup=True, backup_directory=str(bucket)) as log:
        log.info("by passphrase")
    restored = tmp_path / "restored"
    ImmutableHandler(restored, "p", encryption_passphrase="horse", stream="x").close()
    shutil.rmtree(restored / "p" / "x")  # its salt stays
    with pytest.raises(ConfigurationError, match=r"\.salt\.json holds another passphrase salt"):
        restore_tenant(LocalDirectoryBackend(bucket), restored, "p")
    assert sorted(p.name for p in (restored / "p").iterdir()) == [".salt.json"]
    (restored / "p" / ".salt.json").unlink()
    assert restore_tenant(LocalDirectoryBackend(bucket), restored, "p")["verified"]
    with ImmutableLogger(restored, tenantId="p", encryption_passphrase="horse") as log:
        assert [e["message"] for e in log.read()] == ["by passphrase"]


def test_close_keeps_the_stream_until_its_last_entries_are_shipped(tmp_path: Path) -> None:
    """Found by a stress audit: close() released the stream before the replicator's final
    pump, so a process starting meanwhile took the same stream and shipped it too
    (overlapping batches, a corrupted replica)."""
    from immutable_logging.chain import ChainWriter

    handler = ImmutableHandler(tmp_path / "logs", tenant="t", enable_cloud_backup=True,
                               backup_directory=str(tmp_path / "bucket"),
                               backup_flush_interval=60)
    logger = logging.getLogger(f"close-handover-{id(handler)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for i in range(30):
        logger.info("entry %d", i)
    replicator = handler.replicator
    assert replicator is not None
    final_pump = replicator.close
    taken: list[str] = []

    def another_process_starts(timeout: float = 10.0) -> ReplicationStatus:
        other = ChainWriter(tmp_path / "logs", "t")  # as a restarted worker would
        taken.append(other.stream)
        other.close()
        return final_pump(timeout)

    replicator.close = another_process_starts  # type: ignore[method-assign]
    handler.close()
    logger.removeHandler(handler)
    assert taken and taken[0] != handler.writer.stream
    assert handler.last_replication_status is not None
    assert handler.last_replication_status.pending_entries == 0


def test_closing_while_a_thread_logs_leaves_one_replicator_and_a_sound_replica(
    tmp_path: Path
) -> None:
    """close() used to read the writer and replicator while a logging thread reopened
    them: close() raised 'cannot join thread before it is started', a replicator thread
    outlived close(), or two replicators shipped one stream."""
    for attempt in range(8):
        root, bucket = tmp_path / f"logs{attempt}", tmp_path / f"bucket{attempt}"
        handler = ImmutableHandler(root, tenant="t", enable_cloud_backup=True,
                                   backup_directory=str(bucket), backup_batch_size=5,
                                   backup_flush_interval=0.05)
        logger = logging.getLogger(f"close-race-{attempt}-{id(handler)}")
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
        stop = threading.Event()
        before = set(threading.enumerate())

        def spin(log: logging.Logger = logger, done: threading.Event = stop) -> None:
            while not done.is_set():
                log.info("x")

        thread = threading.Thread(target=spin)
        thread.start()
        time.sleep(0.1)
        handler.close()
        stop.set()
        thread.join(10)
        handler.close()
        logger.removeHandler(handler)
        leaked = [t.name for t in threading.enumerate() if t not in before]
        assert leaked == [], (attempt, leaked)
        result = verify_cloud_backup(LocalDirectoryBackend(bucket), root, "t")
        assert (result["sync_status"], result["problems"]) == ("synced", []), attempt


def _replica_down_while_a_thread_logs(handler: ImmutableHandler, log: logging.Logger) -> None:
    """Make the replica fail, and log from another thread while close() ships."""
    from immutable_logging.errors import ReplicationError

    def unreachable(*args: Any, **kwargs: Any) -> None:
        raise ReplicationError("bucket unreachable")

    handler.backend._put_if_absent = unreachable  # type: ignore[union-attr, method-assign]
    replicator = handler.replicator
    assert replicator is not None
    final_pump = replicator.close

    def close_with_a_thread_logging(timeout: float = 10.0) -> ReplicationStatus:
        threading.Thread(target=lambda: log.info("logged while close() runs"),
                         daemon=True).start()
        time.sleep(0.3)  # that thread holds the MemoryHandler's lock from here on
        return final_pump(timeout)

    replicator.close = close_with_a_thread_logging  # type: ignore[method-assign]


def test_close_logs_nothing_under_a_lock_a_logging_thread_waits_for(tmp_path: Path) -> None:
    """Found by review: close() held the handler's open lock while the replicator logged
    its warnings. A MemoryHandler on the root forwarding to the handler, held by a thread
    that waited for that lock to reopen the writer, deadlocked them both."""
    import logging.handlers

    handler = ImmutableHandler(tmp_path / "logs", "t", enable_cloud_backup=True,
                               backup_directory=str(tmp_path / "bucket"),
                               backup_flush_interval=60, backup_batch_size=1000)
    memory = logging.handlers.MemoryHandler(capacity=1, flushLevel=logging.INFO,
                                            target=handler)
    root = logging.getLogger()
    root.addHandler(memory)
    log = logging.getLogger(f"memory-app-{id(handler)}")
    log.setLevel(logging.INFO)
    log.info("before close")
    _replica_down_while_a_thread_logs(handler, log)
    done = threading.Event()
    closer = threading.Thread(target=lambda: (handler.close(), done.set()), daemon=True)
    closer.start()
    assert done.wait(20), "close() deadlocked"
    root.removeHandler(memory)
    handler.close()
    messages = [e["message"] for e in iter_entries(tmp_path / "logs", "t")]
    assert "before close" in messages and "logged while close() runs" in messages


def _sleep_a_while() -> None:
    time.sleep(2)


def test_a_child_forked_while_close_ships_does_not_keep_the_stream(tmp_path: Path) -> None:
    """close() keeps the stream locked while it ships; a child forked then inherited the
    lock for its whole life, so the parent's next writer got another stream."""
    from immutable_logging.chain import ChainWriter

    handler = ImmutableHandler(tmp_path, "t", enable_cloud_backup=True,
                               backup_directory=str(tmp_path / "bucket"),
                               backup_flush_interval=60)
    handler.writer.append({"message": "x"})
    replicator = handler.replicator
    assert replicator is not None
    final_pump = replicator.close
    children: list[Any] = []

    def close_and_fork(timeout: float = 10.0) -> ReplicationStatus:
        child = multiprocessing.get_context("fork").Process(target=_sleep_a_while)
        child.start()
        children.append(child)
        return final_pump(timeout)

    replicator.close = close_and_fork  # type: ignore[method-assign]
    handler.close()
    writer = ChainWriter(tmp_path, "t")
    try:
        assert children[0].is_alive() and writer.stream == handler.writer.stream
    finally:
        writer.close()
        children[0].join()


def test_closing_again_after_another_writer_took_the_stream_ships_nothing(
    tmp_path: Path
) -> None:
    """Found by the DR audit: close() and then logging.shutdown() at exit (a second close)
    shipped the stream again after it was released: when another process had taken it,
    two replicators shipped one stream and the replica could no longer be restored."""
    options: dict[str, Any] = {"enable_cloud_backup": True,
                               "backup_directory": str(tmp_path / "bucket"),
                               "backup_batch_size": 5, "backup_flush_interval": 60}
    first = ImmutableHandler(tmp_path / "logs", tenant="t", **options)
    logger = logging.getLogger(f"double-close-{id(first)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(first)
    for i in range(12):
        logger.info("first %d", i)
    first.close()
    logger.removeHandler(first)
    shipped = first.last_replication_status
    assert shipped is not None and shipped.replicated_seq == 12
    puts = shipped.puts
    second = ImmutableHandler(tmp_path / "logs", tenant="t", **options)  # the next process
    assert second.writer.stream == first.writer.stream
    logger.addHandler(second)
    for i in range(23):
        logger.info("second %d", i)
    second.flush()
    first.close()  # what logging.shutdown() does at the first process's exit
    assert first.replicator is not None and first.replicator.status.puts == puts
    second.close()
    logger.removeHandler(second)
    assert second.last_replication_status is not None
    assert second.last_replication_status.entries_uploaded == 23  # its own, all of them
    result = verify_cloud_backup(LocalDirectoryBackend(tmp_path / "bucket"), tmp_path / "logs",
                                 "t")
    assert result["problems"] == [] and result["sync_status"] == "synced", result
    assert sorted(_covered_tenant(tmp_path / "bucket", "t")) == list(range(1, 36))


def _covered_tenant(bucket: Path, tenant: str) -> list[int]:
    backend = LocalDirectoryBackend(bucket)
    return [s for names in remote_streams(backend, tenant).values()
            for n in names for s in range(n.first_seq, n.last_seq + 1)]


def test_a_tenant_restored_with_seals_says_it_is_no_longer_sealed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the DR audit: the seal state never leaves its host, so a handler on a
    restored tenant wrote unsealed entries without a word; and passing the seed again made
    a new epoch grid under which verify --seed failed the restored seals."""
    from immutable_logging.cli import main
    from immutable_logging.errors import ConfigurationError
    from immutable_logging.seal import generate_seed
    from immutable_logging.sealing import init_tenant_sealing
    from immutable_logging.verify import verify_tenant

    seed = generate_seed()
    bucket = sealed_replica(tmp_path, seed, count=6, pause=0.03)
    assert verify_tenant(tmp_path / "logs", "s", seed=seed).ok
    restored = tmp_path / "restored"
    assert main(["restore", str(restored), "--tenant", "s", "--backup-directory",
                 str(bucket)], out=io.StringIO()) == 0
    assert "new entries are NOT sealed" in capsys.readouterr().err
    caplog.set_level(logging.ERROR, logger="immutable_logging")
    for options in ({}, {"seal_seed": seed}):
        handler = ImmutableHandler(restored, "s", **options)  # type: ignore[arg-type]
        assert handler.sealing is False
        handler.close()
        assert sum("new entries are NOT sealed" in r.getMessage() for r in caplog.records) == 1
        caplog.clear()
    assert not (restored / "s" / ".seal-state.json").exists()
    with pytest.raises(ConfigurationError, match="NOT sealed"):
        ImmutableHandler(restored, "s", seal=True, seal_seed=seed)
    with pytest.raises(ConfigurationError, match="NOT sealed"):
        init_tenant_sealing(restored / "s", seed)
    report = verify_tenant(restored, "s", seed=seed)
    assert report.ok, [str(p) for p in report.problems]
    assert ImmutableHandler(restored, "s", seal=False).sealing is False  # asked: no error
    assert not [r for r in caplog.records if "NOT sealed" in r.getMessage()]


def test_restoring_seals_into_a_tenant_with_a_seal_state_is_refused(tmp_path: Path) -> None:
    """Left from last session's review: with keygen run in the target first, restore gave
    a log whose restored seals and new seals used two epoch grids."""
    from immutable_logging.errors import ConfigurationError
    from immutable_logging.replication.cloud import restore_tenant
    from immutable_logging.seal import generate_seed
    from immutable_logging.sealing import init_tenant_sealing

    bucket = sealed_replica(tmp_path, generate_seed())
    with ImmutableLogger(tmp_path / "logs", tenantId="plain", enable_cloud_backup=True,
                         backup_directory=str(bucket)) as log:
        log.info("never sealed")
    target = tmp_path / "restored"
    for tenant in ("s", "plain"):
        init_tenant_sealing(target / tenant, generate_seed())
    with pytest.raises(ConfigurationError, match=r"seal-state\.json holds a seal state "
                       r"\(keygen ran there\), and the replica's log holds seals"):
        restore_tenant(LocalDirectoryBackend(bucket), target, "s")
    assert sorted(p.name for p in target.iterdir()) == ["plain", "s"]  # no staging left
    assert sorted(p.name for p in (target / "s").iterdir()) == [
        ".seal-state.json", ".seal-state.lock"]  # as keygen left it
    # without seals in the replica, a seal state made first is the one new entries use
    assert restore_tenant(LocalDirectoryBackend(bucket), target, "plain")["verified"]


def test_a_record_with_a_kind_field_is_no_seal(tmp_path: Path) -> None:
    """Found by review: restore took any line holding "kind":"seal" (an extra field of an
    ordinary record) for a seal entry, and marked the tenant as restored from seals."""
    from immutable_logging.replication.cloud import restore_tenant

    bucket = tmp_path / "bucket"
    with ImmutableLogger(tmp_path / "logs", tenantId="k", enable_cloud_backup=True,
                         backup_directory=str(bucket)) as log:
        log.info("not a seal", {"kind": "seal"})
    result = restore_tenant(LocalDirectoryBackend(bucket), tmp_path / "new", "k")
    assert result["sealed_streams"] == []
    assert not (tmp_path / "new" / "k" / ".seals-restored.json").exists()
