"""The flush-mode journal: entries survive a killed process and are appended exactly once."""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import orjson
import pytest

from immutable_logging import ImmutableLogger
from immutable_logging.chain import ChainWriter
from immutable_logging.journal import JOURNAL_BYTES, pending_lines, read_journal
from immutable_logging.layout import JOURNAL_FILE, segment_name
from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant

from .helpers import read_lines

_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from immutable_logging.chain import ChainWriter
    root, stream, steps = sys.argv[1], sys.argv[2], sys.argv[3:]
    writer = ChainWriter(root, stream=stream)
    n = 0
    for step in steps:
        if step == "flush":
            writer.flush()
            continue
        for _ in range(int(step)):
            n += 1
            writer.append({"message": f"m{n}", "level": "INFO"})
    os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit, no buffers written
    """
)


def _killed_writer(root: Path, *steps: str) -> Path:
    """Run a writer in a child process that appends (and flushes) as told, then is killed.

    Each step is a number of entries to append or ``flush``. Returns the stream directory.
    """
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(root), "s", *steps],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    return root / "default" / "s"


def _messages(root: Path) -> list[str]:
    return [e["message"] for e in iter_entries(root) if "message" in e]


def _recovery_events(root: Path) -> list[dict[str, object]]:
    return [e for e in iter_entries(root, include_system=True) if e.get("kind") == "recovery"]


def test_entries_of_a_killed_process_are_appended_by_the_next_writer(tmp_path: Path) -> None:
    stream_dir = _killed_writer(tmp_path, "40")
    segment = stream_dir / segment_name(1)
    # The batch had not been written: the entries were only in the journal (the page cache).
    assert not segment.exists() or read_lines(segment) == []
    assert (stream_dir / JOURNAL_FILE).stat().st_mode & 0o777 == 0o400
    before = verify_tenant(tmp_path)  # nothing lost: verify says where the entries are
    assert before.ok and before.entries == 0
    assert "40 entries (seq 1-40) are in the journal but not yet in a segment" in (
        before.warnings[0])
    writer = ChainWriter(tmp_path, stream="s")
    assert writer.seq == 41  # 40 entries + the record of the recovery
    writer.close()
    assert _messages(tmp_path) == [f"m{i}" for i in range(1, 41)]
    [event] = _recovery_events(tmp_path)
    assert (event["event"], event["entries"], event["first_seq"], event["last_seq"]) == (
        "journal_replay", 40, 1, 40)
    report = verify_tenant(tmp_path)
    assert report.ok and report.entries == 41, report.problems
    assert [w.split(": ", 1)[1] for w in report.warnings] == [
        "seq 41: 40 entries (seq 1-40) appended from the journal of a writer that stopped "
        "without closing"
    ]
    assert not (stream_dir / JOURNAL_FILE).exists()  # a clean close leaves no journal


def test_written_batches_are_not_appended_twice(tmp_path: Path) -> None:
    # 30 entries reach the segment, the journal starts again at offset 0 with 2 more:
    # its bytes after them are the older entries 3-30, which must not be taken.
    stream_dir = _killed_writer(tmp_path, "30", "flush", "2")
    assert len(read_lines(stream_dir / segment_name(1))) == 30
    ChainWriter(tmp_path, stream="s").close()
    assert _messages(tmp_path) == [f"m{i}" for i in range(1, 33)]
    [event] = _recovery_events(tmp_path)
    assert (event["entries"], event["first_seq"]) == (2, 31)
    assert verify_tenant(tmp_path).ok


def test_a_kill_after_the_batch_write_appends_nothing(tmp_path: Path) -> None:
    _killed_writer(tmp_path, "25", "flush")  # written, then killed before the next entry
    writer = ChainWriter(tmp_path, stream="s")
    assert writer.seq == 25
    writer.close()
    assert _recovery_events(tmp_path) == []
    assert _messages(tmp_path) == [f"m{i}" for i in range(1, 26)]


def test_a_batch_write_cut_short_is_completed_from_the_journal(tmp_path: Path) -> None:
    stream_dir = _killed_writer(tmp_path, "20")
    journal = (stream_dir / JOURNAL_FILE).read_bytes()
    lines, _ = pending_lines(journal, 0, "0" * 64)
    assert len(lines) == 20
    # a crash in the middle of the batch write: 7 whole entries and half of the 8th
    (stream_dir / segment_name(1)).write_bytes(b"".join(lines[:7]) + lines[7][:50])
    ChainWriter(tmp_path, stream="s").close()
    assert _messages(tmp_path) == [f"m{i}" for i in range(1, 21)]
    events = {e["event"]: e for e in _recovery_events(tmp_path)}
    assert events["torn_tail"]["length"] == 50
    assert (events["journal_replay"]["entries"], events["journal_replay"]["first_seq"]) == (13, 8)
    assert verify_tenant(tmp_path).ok


def test_a_journal_that_does_not_continue_the_chain_is_kept_and_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stream_dir = _killed_writer(tmp_path, "10", "flush", "5")
    segment = stream_dir / segment_name(1)
    segment.write_bytes(b"".join(read_lines(segment)[:7]))  # entries 8-10 removed
    assert "entry 11 at byte 0 does not continue the chain after entry 7" in (
        verify_tenant(tmp_path).warnings[0])
    with caplog.at_level(logging.ERROR, logger="immutable_logging.chain"):
        writer = ChainWriter(tmp_path, stream="s")
    writer.close()
    assert "does not continue the chain" in caplog.text
    [event] = _recovery_events(tmp_path)
    assert event["event"] == "journal_mismatch"
    assert "entry 11" in str(event["reason"])
    kept = (stream_dir / str(event["moved_to"])).read_bytes()
    first = orjson.loads(kept.split(b"\n", 1)[0])
    assert first["seq"] == 11
    lines, reason = pending_lines(kept, 10, first["prev"])
    assert reason is None and len(lines) == 5  # the evidence: entries 11-15, intact
    assert _messages(tmp_path) == [f"m{i}" for i in range(1, 8)]
    report = verify_tenant(tmp_path)
    assert report.ok and "did not continue the chain" in report.warnings[0]
    (stream_dir / str(event["moved_to"])).chmod(0o600)
    (stream_dir / str(event["moved_to"])).unlink()
    assert [p.reason for p in verify_tenant(tmp_path).problems] == ["torn_evidence_missing"]


def test_flush_mode_entries_reach_the_segment_without_a_flush_call(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path)
    try:
        writer.append({"message": "idle"})
        segment = writer.stream_dir / segment_name(1)
        deadline = time.monotonic() + 5.0
        while not (segment.exists() and read_lines(segment)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(read_lines(segment)) == 1, "the journal flusher must write idle entries"
    finally:
        writer.close()


def test_an_entry_larger_than_the_journal_keeps_its_place(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path)
    writer.append({"message": "before"})
    writer.append({"message": "x" * (JOURNAL_BYTES + 10)})
    writer.append({"message": "after"})
    writer.close()
    assert [len(m) for m in _messages(tmp_path)] == [6, JOURNAL_BYTES + 10, 5]
    assert verify_tenant(tmp_path).ok


def test_a_failing_batch_write_keeps_entries_until_the_journal_is_full(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path, stream="s")
    writer.append({"message": "first"})
    writer.flush()
    segment = writer.stream_dir / segment_name(1)
    size = segment.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, hard))
    big = "y" * 20_000
    refused = 0
    try:
        writer.append({"message": big})
        with pytest.raises(OSError):
            writer.flush()  # the batch cannot be written: it stays in the journal
        assert writer.seq == 2 and segment.stat().st_size == size
        for _ in range(3 * JOURNAL_BYTES // len(big)):
            before = writer.seq
            try:
                writer.append({"message": big})
            except OSError:  # only a refusal raises: the entry was not chained
                assert writer.seq == before
                refused += 1
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    # Once the journal is full an entry that cannot be written is refused, not chained;
    # until then every entry was chained and kept.
    assert refused > 0
    assert JOURNAL_BYTES // (len(big) + 400) <= writer.seq - 1 <= JOURNAL_BYTES // len(big)
    assert segment.stat().st_size == size
    writer.close()
    report = verify_tenant(tmp_path)
    assert report.ok and report.entries == writer.seq
    assert _messages(tmp_path) == ["first"] + [big] * (writer.seq - 1)


def test_without_mmap_support_each_entry_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr("immutable_logging.journal.os.posix_fallocate", unsupported)
    with caplog.at_level(logging.WARNING, logger="immutable_logging.chain"):
        writer = ChainWriter(tmp_path)
    assert "no journal" in caplog.text
    writer.append({"message": "at once"})
    assert len(read_lines(writer.stream_dir / segment_name(1))) == 1
    assert not (writer.stream_dir / JOURNAL_FILE).exists()
    writer.close()


def test_the_default_handler_loses_nothing_when_the_process_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import logging, os, signal, sys
        from immutable_logging import ImmutableHandler
        logger = logging.getLogger("killed.app")
        logger.addHandler(ImmutableHandler(sys.argv[1]))
        logger.setLevel(logging.INFO)
        for i in range(100):
            logger.info("order %d", i)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=60)
    assert result.returncode == -signal.SIGKILL
    log = ImmutableLogger(tmp_path)
    try:
        messages = [e["message"] for e in log.read(limit=None) if e.get("logger") == "killed.app"]
        assert messages == [f"order {i}" for i in range(100)]
        assert log.verify().ok
    finally:
        log.shutdown()


def test_close_does_not_wait_for_a_flusher_queued_behind_it(tmp_path: Path) -> None:
    # Another thread holds the writer's lock (a slow append or seal) until the flusher's
    # 50 ms wait has run out; close() queues on the lock before the flusher does.
    for trial in range(3):
        writer = ChainWriter(tmp_path / str(trial))
        writer.append({"message": "one"})  # starts a batch: the flusher wakes in 50 ms
        holding = threading.Event()

        def hold(writer: ChainWriter = writer, holding: threading.Event = holding) -> None:
            with writer._lock:
                holding.set()
                time.sleep(0.08)

        holder = threading.Thread(target=hold)
        holder.start()
        holding.wait()
        time.sleep(0.01)
        started = time.monotonic()
        writer.close(timeout=2.0)
        holder.join()
        assert time.monotonic() - started < 1.0, "close() waited for the flusher's timeout"
        assert writer._flusher is not None and not writer._flusher.is_alive()


def test_entries_of_a_writer_nobody_closed_are_in_its_segment_after_exit(
    tmp_path: Path,
) -> None:
    script = textwrap.dedent(
        """
        import sys
        from immutable_logging.chain import ChainWriter
        writer = ChainWriter(sys.argv[1], stream="s")
        for i in range(10):
            writer.append({"message": f"m{i + 1}"})
        sys.exit(0)  # no close(): the interpreter's exit writes the batch
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    assert len(read_lines(tmp_path / "default" / "s" / segment_name(1))) == 10
    report = verify_tenant(tmp_path)
    assert report.ok and report.entries == 10 and report.warnings == []


def _pool_job(i: int) -> int:
    logger = logging.getLogger("test.journal.pool")
    for k in range(5):
        logger.info("job %d line %d", i, k)
    return os.getpid()


def test_forked_pool_workers_that_end_with_os_exit_lose_nothing(tmp_path: Path) -> None:
    # multiprocessing's fork workers end with os._exit: no atexit, no logging.shutdown.
    # A writer opened in a forked process therefore writes each entry (no journal).
    import multiprocessing

    from immutable_logging import ImmutableHandler

    logger = logging.getLogger("test.journal.pool")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = ImmutableHandler(tmp_path)
    logger.addHandler(handler)
    try:
        logger.info("parent")
        with multiprocessing.get_context("fork").Pool(2) as pool:
            pids = set(pool.map(_pool_job, range(6)))
        assert len(pids) >= 1
    finally:
        logger.removeHandler(handler)
        handler.close()
    jobs = [e["message"] for e in iter_entries(tmp_path) if e["message"].startswith("job")]
    assert sorted(jobs) == sorted(f"job {i} line {k}" for i in range(6) for k in range(5))
    report = verify_tenant(tmp_path)
    assert report.ok and report.warnings == [], (report.problems, report.warnings)


def test_a_journal_that_is_no_regular_file_is_no_journal(tmp_path: Path) -> None:
    """Readers used to read `.journal` whole: a FIFO there hung `read`, `stats` and
    `verify` (and the next writer's open), and a huge file was read into memory whole."""
    writer = ChainWriter(tmp_path, stream="s")
    writer.append({"message": "m1", "level": "INFO"})
    writer.close()
    journal = writer.stream_dir / JOURNAL_FILE
    os.mkfifo(journal)
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.extend(
        [_messages(tmp_path), verify_tenant(tmp_path).ok, ChainWriter(tmp_path, stream="s")]),
        daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading a FIFO named .journal blocked"
    assert done[:2] == [["m1"], True]
    reopened = done[2]
    assert isinstance(reopened, ChainWriter)
    reopened.close()
    assert read_journal(journal) is None  # the writer made its own journal, then removed it
    journal.write_bytes(b"x" * (3 * JOURNAL_BYTES))
    data = read_journal(journal)
    assert data is not None and len(data) == JOURNAL_BYTES
    journal.unlink()
    journal.symlink_to(tmp_path / "elsewhere")
    assert read_journal(journal) is None
