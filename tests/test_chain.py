from __future__ import annotations

import gzip
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from immutable_logging.chain import ChainWriter, compress_segment
from immutable_logging.entry import GENESIS_HASH, canonical_payload, split_line
from immutable_logging.errors import (
    ConfigurationError,
    ImmutableLogError,
    InvalidTenantError,
    StreamLockedError,
)
from immutable_logging.journal import pending_lines
from immutable_logging.layout import JOURNAL_FILE, list_segments, list_streams, segment_name
from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant

from .helpers import read_lines


def _payload(i: int) -> dict[str, object]:
    return {"ts": time.time(), "level": "INFO", "message": f"m{i}", "tenant": "default"}


def _append(writer: ChainWriter, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        writer.append(_payload(i))


def test_chain_links_across_rotation_and_sealed_segments_are_gzip_readonly(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path, max_bytes=5_000)
    _append(writer, 200)
    writer.close()
    segments = list_segments(writer.stream_dir)
    assert len(segments) > 3
    prev_hash = GENESIS_HASH
    expected = 1
    for seg in segments:
        lines = read_lines(seg.path)
        first = split_line(lines[0].rstrip(b"\n"))
        assert first is not None
        assert first[1] == prev_hash, "a segment's first entry commits to the previous segment"
        for line in lines:
            parsed = split_line(line.rstrip(b"\n"))
            assert parsed is not None and parsed[0] == expected
            expected += 1
            prev_hash = parsed[2]
    for seg in segments[:-1]:
        assert seg.compressed
        assert stat.S_IMODE(seg.path.stat().st_mode) == 0o444
        with gzip.open(seg.path) as handle:
            assert handle.read().endswith(b"\n")
    assert stat.S_IMODE(segments[-1].path.stat().st_mode) == 0o600
    assert verify_tenant(tmp_path).ok


def test_restart_continues_the_same_chain(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path, max_bytes=3_000)
    _append(writer, 50)
    head = writer.head
    writer.close()
    again = ChainWriter(tmp_path, max_bytes=3_000)
    assert again.stream == writer.stream
    assert (again.seq, again.head) == (50, head)
    _append(again, 50, 50)
    again.close()
    report = verify_tenant(tmp_path)
    assert report.ok and report.entries == 100


def test_restart_after_rotation_boundary(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path)
    _append(writer, 5)
    writer.rotate()
    writer.close()
    segments = list_segments(writer.stream_dir)
    assert [s.compressed for s in segments] == [True]
    again = ChainWriter(tmp_path)
    assert again.seq == 5 and again.segment_number == 2
    _append(again, 1)
    again.close()
    assert verify_tenant(tmp_path).ok


def test_time_rotation(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path, max_age=0.05)
    _append(writer, 3)
    time.sleep(0.1)
    _append(writer, 3, 3)
    writer.close()
    assert len(list_segments(writer.stream_dir)) == 2
    assert verify_tenant(tmp_path).ok


def test_torn_tail_is_moved_aside_recorded_and_chain_continues(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path)
    _append(writer, 10)
    writer.close()
    active = list_segments(writer.stream_dir)[-1].path
    torn = b'{"seq":11,"prev":"deadbeef'
    with open(active, "ab") as handle:
        handle.write(torn)
    assert not verify_tenant(tmp_path).ok

    again = ChainWriter(tmp_path)
    assert again.seq == 11  # 10 entries + the recovery entry
    _append(again, 2)
    again.close()
    kept = list((writer.stream_dir / "torn").iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == torn
    report = verify_tenant(tmp_path, parse=True)
    assert report.ok, report.problems
    assert any("torn tail recovered" in w for w in report.warnings)
    recovery = [e for e in iter_entries(tmp_path, include_system=True) if e.get("kind")]
    assert recovery[0]["event"] == "torn_tail" and recovery[0]["length"] == len(torn)
    assert [e["message"] for e in iter_entries(tmp_path)][-2:] == ["m0", "m1"]


def test_complete_damaged_last_line_is_kept_for_verify_and_logging_moves_on(
    tmp_path: Path,
) -> None:
    writer = ChainWriter(tmp_path)
    _append(writer, 4)
    writer.close()
    active = list_segments(writer.stream_dir)[-1].path
    with open(active, "ab") as handle:
        handle.write(b"garbage line\n")  # not a crash artefact: tampering or corruption
    again = ChainWriter(tmp_path)
    assert (again.seq, again.segment_number) == (4, 2)
    _append(again, 2)
    again.close()
    assert not (writer.stream_dir / "torn").exists()
    assert active.read_bytes().endswith(b"garbage line\n")
    problems = verify_tenant(tmp_path).problems
    assert (problems[0].reason, problems[0].seq, problems[0].file) == ("malformed", 5, str(active))


@pytest.mark.parametrize(("old", "new"), [(b'"m3"', b'"mX"'), (b'"m3"', b'"m3')])
def test_a_changed_last_entry_with_intact_chain_fields_is_continued_from(
    tmp_path: Path, old: bytes, new: bytes
) -> None:
    """Changed text, or no longer JSON: the next entry links to its stated hash, in the
    same segment, and verify reports that one entry (as the README says)."""
    writer = ChainWriter(tmp_path)
    _append(writer, 4)
    writer.close()
    active = list_segments(writer.stream_dir)[-1].path
    data = active.read_bytes()
    assert data.count(old) == 1
    active.write_bytes(data.replace(old, new))
    again = ChainWriter(tmp_path)
    assert (again.seq, again.segment_number) == (4, 1)
    _append(again, 2)
    again.close()
    assert len(list_segments(writer.stream_dir)) == 1
    problems = verify_tenant(tmp_path).problems
    assert [(p.reason, p.seq, p.file) for p in problems] == [("hash_mismatch", 4, str(active))]


def test_a_file_in_the_place_of_a_stream(tmp_path: Path) -> None:
    """A named stream: a ConfigurationError naming it (it was a bare FileExistsError); a
    stream slot: the next slot is taken."""
    from immutable_logging.chain import _HOST_SLUG
    from immutable_logging.errors import ConfigurationError

    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "app").write_text("not a stream")
    with pytest.raises(ConfigurationError, match=r"stream 'app': '.*/default/app' is not a"):
        ChainWriter(tmp_path, stream="app")
    (tmp_path / "default" / f"{_HOST_SLUG}.0").write_text("not a stream")
    writer = ChainWriter(tmp_path)
    assert writer.stream == f"{_HOST_SLUG}.1"
    writer.close()


def test_rotated_read_only_segment_is_not_reopened_for_writing(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path, compress=False)
    _append(writer, 3)
    writer.rotate()
    writer.close()
    again = ChainWriter(tmp_path, compress=False)
    assert again.segment_number == 2
    _append(again, 1)
    again.close()
    assert [s.number for s in list_segments(writer.stream_dir)] == [1, 2]
    assert stat.S_IMODE(list_segments(writer.stream_dir)[0].path.stat().st_mode) == 0o444
    assert verify_tenant(tmp_path).ok


def test_failed_write_leaves_no_partial_entry_and_the_chain_continues(tmp_path: Path) -> None:
    import resource

    writer = ChainWriter(tmp_path, durability="always")  # one write per entry
    _append(writer, 3)
    active = writer.stream_dir / segment_name(1)
    size = active.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    import signal

    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, hard))
    try:
        with pytest.raises(OSError):
            writer.append(_payload(99))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert writer.seq == 3 and writer.stats.write_errors == 1
    assert active.stat().st_size == size  # the partial write was cut off
    _append(writer, 2)
    writer.close()
    report = verify_tenant(tmp_path)
    assert report.ok and report.entries == 5


def test_interrupted_compression_is_finished_on_open(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path, compress=False)
    _append(writer, 5)
    writer.rotate()
    _append(writer, 5, 5)
    writer.close()
    sealed = writer.stream_dir / segment_name(1)
    assert sealed.exists()
    (writer.stream_dir / ".00000001.log.gz.tmp").write_bytes(b"partial")
    again = ChainWriter(tmp_path)
    again.close()
    segments = list_segments(writer.stream_dir)
    assert segments[0].compressed and not sealed.exists()
    assert not list(writer.stream_dir.glob(".*.tmp"))
    assert verify_tenant(tmp_path).ok and verify_tenant(tmp_path).entries == 10


def test_compress_segment_is_repeatable(tmp_path: Path) -> None:
    plain = tmp_path / "00000001.log"
    plain.write_bytes(b"x\n" * 100)
    leftover = tmp_path / ".00000001.log.gz.tmp"  # a crash after the chmod of the tmp file
    leftover.write_bytes(b"partial")
    leftover.chmod(0o444)
    target = compress_segment(plain)
    assert gzip.decompress(target.read_bytes()) == b"x\n" * 100
    assert not plain.exists() and not leftover.exists()
    assert target.stat().st_mode & 0o777 == 0o444


@pytest.mark.parametrize("leftover_mode", [None, 0o644])
def test_compressed_segment_is_read_only_whatever_the_umask(
    tmp_path: Path, leftover_mode: int | None
) -> None:
    plain = tmp_path / "00000002.log"
    plain.write_bytes(b"y\n" * 50)
    if leftover_mode is not None:  # a writable leftover, e.g. of an interrupted restore
        leftover = tmp_path / ".00000002.log.gz.tmp"
        leftover.write_bytes(b"partial")
        leftover.chmod(leftover_mode)
    old = os.umask(0o077)
    try:
        target = compress_segment(plain)
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o444
    assert gzip.decompress(target.read_bytes()) == b"y\n" * 50


def test_a_failed_close_never_leaves_the_descriptor_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = ChainWriter(tmp_path)
    _append(writer, 2)
    real_close = os.close

    def failing_close(fd: int) -> None:
        real_close(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("immutable_logging.chain.os.close", failing_close)
    with pytest.raises(ImmutableLogError, match="Input/output error"):
        writer.close()
    monkeypatch.undo()
    other = tmp_path / "other-file"  # likely gets the number the segment had
    fd = os.open(other, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(ImmutableLogError, match="closed"):
            writer.append(_payload(3))
    finally:
        os.close(fd)
    assert other.read_bytes() == b""
    assert [e["seq"] for e in iter_entries(tmp_path)] == [1, 2]


def test_second_process_slot_and_fixed_stream_lock(tmp_path: Path) -> None:
    first = ChainWriter(tmp_path)
    second = ChainWriter(tmp_path)
    assert first.stream != second.stream
    assert first.stream.endswith(".0") and second.stream.endswith(".1")
    fixed = ChainWriter(tmp_path, stream="api")
    with pytest.raises(StreamLockedError):
        ChainWriter(tmp_path, stream="api")
    for w in (first, second, fixed):
        _append(w, 3)
        w.close()
    assert len(list_streams(tmp_path / "default")) == 3
    report = verify_tenant(tmp_path)
    assert report.ok and report.entries == 9


def test_always_writes_and_syncs_each_entry_before_append_returns(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path, durability="always")
    _append(writer, 3)
    active = list_segments(writer.stream_dir)[-1].path
    assert len(read_lines(active)) == 3
    assert writer.written_seq == 3
    assert writer.stats.syncs == 3
    writer.close()


def test_flush_mode_entries_are_in_the_journal_before_append_returns(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path, durability="flush")
    _append(writer, 3)
    journal = (writer.stream_dir / JOURNAL_FILE).read_bytes()  # a shared mapping: the OS
    assert len(pending_lines(journal, 0, GENESIS_HASH)[0]) == 3
    writer.flush()
    assert len(read_lines(writer.stream_dir / segment_name(1))) == 3
    assert writer.written_seq == 3
    writer.close()


def test_buffered_mode_writes_on_flush(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path, durability="none")
    _append(writer, 3)
    active = writer.stream_dir / segment_name(1)
    assert active.stat().st_size == 0
    writer.flush()
    assert len(read_lines(active)) == 3
    writer.close()


def test_group_commit_syncs_idle_data_and_bounds_the_buffer(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path, durability="group", group_interval_ms=5, buffer_bytes=4096)
    _append(writer, 2)
    active = writer.stream_dir / segment_name(1)
    deadline = time.monotonic() + 5.0
    while len(read_lines(active)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(read_lines(active)) == 2, "the idle flusher must write and sync pending entries"
    assert writer.stats.syncs >= 1
    _append(writer, 200)  # ~25 KB: the 4 KiB buffer must be flushed repeatedly
    assert writer.stats.writes >= 5
    writer.close()
    assert verify_tenant(tmp_path).entries == 202


def test_close_is_idempotent_and_append_after_close_fails(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path)
    _append(writer, 1)
    writer.close()
    writer.close()
    with pytest.raises(Exception, match="closed"):
        writer.append(_payload(9))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"durability": "sometimes"},
        {"group_interval_ms": 0},
        {"max_bytes": -1},
        {"max_age": 0},
        {"buffer_bytes": 0},
        {"stream": "../x"},
    ],
)
def test_bad_configuration_is_rejected(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        ChainWriter(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_settings_are_reported_and_read_only(tmp_path: Path) -> None:
    # append() works out what it reads per entry from the settings once: an assignment
    # on a live writer would change nothing, so it must fail instead of being ignored.
    writer = ChainWriter(tmp_path, durability="none", group_interval_ms=20, max_bytes=4_000,
                         max_age=60.0, buffer_bytes=1_000)
    try:
        assert (writer.durability, writer.group_interval, writer.max_bytes, writer.max_age,
                writer.buffer_bytes) == ("none", 0.02, 4_000, 60.0, 1_000)
        for name, value in [("durability", "flush"), ("group_interval", 1.0),
                            ("max_bytes", 10), ("max_age", None), ("buffer_bytes", 1)]:
            with pytest.raises(AttributeError):
                setattr(writer, name, value)
        _append(writer, 50)  # the settings in force are still the constructor's
        writer.flush()
        assert len(list_segments(writer.stream_dir)) > 1
        assert writer.stats.writes > 1
    finally:
        writer.close()


@pytest.mark.parametrize(
    "tenant", ["", "..", "a/b", "../etc", "a\\b", ".hidden", "x" * 129, "a..b"]
)
def test_tenant_ids_are_validated(tmp_path: Path, tenant: str) -> None:
    with pytest.raises(InvalidTenantError):
        ChainWriter(tmp_path, tenant)
    assert not any(p.name != "default" for p in tmp_path.iterdir())


def test_files_have_private_modes(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path)
    _append(writer, 1)
    writer.close()
    assert stat.S_IMODE(os.stat(writer.stream_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(writer.stream_dir / ".lock").st_mode) == 0o600


def _three_entries_then(tmp_path: Path, tail: bytes) -> ChainWriter:
    """A closed writer of three entries whose active segment then got ``tail`` appended."""
    writer = ChainWriter(tmp_path)
    _append(writer, 3)
    writer.close()
    with open(list_segments(writer.stream_dir)[-1].path, "ab") as handle:
        handle.write(tail)
    return writer


def test_deleting_or_editing_moved_aside_torn_tails_is_detected(tmp_path: Path) -> None:
    writer = _three_entries_then(tmp_path, b'{"seq":4,"prev":"torn')
    ChainWriter(tmp_path).close()
    kept = next((writer.stream_dir / "torn").iterdir())
    report = verify_tenant(tmp_path)
    assert report.ok and any("torn tail recovered" in w for w in report.warnings)
    kept.chmod(0o600)
    kept.write_bytes(b"something else")
    problems = verify_tenant(tmp_path).problems
    assert [(p.reason, p.seq) for p in problems] == [("torn_evidence_altered", 4)]
    kept.unlink()
    problems = verify_tenant(tmp_path).problems
    assert [(p.reason, p.seq, p.file) for p in problems] == [
        ("torn_evidence_missing", 4, str(kept))
    ]


def test_entries_stay_in_order_when_a_seal_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import immutable_logging.chain as chain_module

    class EveryHourSealer:
        def __init__(self) -> None:
            self.deadline = time.time() + 3600

        def seal(self, now: float, last_seq: int, head: str) -> dict[str, object]:
            self.pending = now + 3600
            return {"kind": "seal", "last_seq": last_seq, "head": head, "ts": now}

        def commit(self) -> None:
            self.deadline = self.pending

        def close(self) -> None:
            pass

    clock = [time.time()]
    writer = ChainWriter(tmp_path, stream="s")
    writer.set_sealer(EveryHourSealer(), lambda: clock[0])  # type: ignore[arg-type]
    _append(writer, 2)
    clock[0] += 7200
    real_write = os.write
    failed: list[bool] = []

    def enospc_once(fd: int, data: bytes) -> int:
        if not failed and b'"kind":"seal"' in bytes(data):
            failed.append(True)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(chain_module.os, "write", enospc_once)
    _append(writer, 1)  # the seal's write fails; the entry after it must not overtake it
    monkeypatch.undo()
    _append(writer, 1)
    writer.close()
    assert failed
    report = verify_tenant(tmp_path)
    assert report.ok, report.problems
    assert report.entries == 5


def test_reopening_twice_after_a_damaged_line_works(tmp_path: Path) -> None:
    _three_entries_then(tmp_path, b"damaged\n")
    ChainWriter(tmp_path).close()  # nothing appended: the damaged segment is now sealed
    again = ChainWriter(tmp_path)
    assert again.seq == 3
    _append(again, 1)
    again.close()
    assert verify_tenant(tmp_path).entries == 4


def test_an_empty_payload_is_refused_and_the_chain_goes_on(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path)
    _append(writer, 1)
    with pytest.raises(ImmutableLogError, match="at least one payload member"):
        writer.append({})
    _append(writer, 1, start=1)
    writer.close()
    assert [e["seq"] for e in iter_entries(tmp_path)] == [1, 2]
    assert verify_tenant(tmp_path, parse=True).ok


def test_a_writer_that_fails_to_open_releases_its_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next writer takes the same stream, not the next slot (the lock used to leak)."""
    writer = ChainWriter(tmp_path, "t")
    writer.append({"message": "one"})
    writer.close()

    def fail() -> None:
        raise OSError("recovery failed")

    monkeypatch.setattr(ChainWriter, "_recover", lambda self: fail())
    with pytest.raises(OSError, match="recovery failed"):
        ChainWriter(tmp_path, "t")
    monkeypatch.undo()
    again = ChainWriter(tmp_path, "t")
    assert again.stream == writer.stream and again.seq == 1
    again.close()


@pytest.mark.parametrize("durability", ["none", "flush", "group", "always"])
def test_an_append_made_from_inside_the_writer_is_chained_after_the_interrupted_one(
    tmp_path: Path, durability: str
) -> None:
    """Found by the concurrency audit: a signal handler (or a finalizer) logging while its
    thread was inside append() re-entered the writer's RLock, chaining its entry between
    reading and updating the chain head: two entries with one seq, batches written twice."""
    writer = ChainWriter(tmp_path, durability=durability, max_bytes=2_000)

    def transform(payload: dict[str, Any], seq: int, prev: str, segment: int) -> bytes:
        if payload["message"] in ("m3", "m9"):  # a signal arrives: the writer's lock is held
            assert writer.append({"message": f"signal during {payload['message']}"}) == (0, "")
        return canonical_payload(payload)

    writer.payload_transform = transform
    for i in range(12):
        writer.append(_payload(i))
    writer.close()
    messages = [e["message"] for e in iter_entries(tmp_path)]
    assert messages == ([f"m{i}" for i in range(4)] + ["signal during m3"]
                        + [f"m{i}" for i in range(4, 10)] + ["signal during m9"]
                        + [f"m{i}" for i in range(10, 12)])
    assert verify_tenant(tmp_path).ok


def test_many_payloads_kept_during_one_write_are_appended_without_recursion(
    tmp_path: Path
) -> None:
    """Found by review: draining called append() per kept payload, one level deeper each
    time: 600 of them raised RecursionError and lost the ones popped."""
    writer = ChainWriter(tmp_path, durability="none")
    calls = []

    def transform(payload: dict[str, Any], seq: int, prev: str, segment: int) -> bytes:
        if not calls:
            calls.append(1)
            for i in range(1500):  # a storm of signal handlers, all inside this write
                writer.append({"message": f"kept {i}"})
            writer.flush()  # from inside a write: does nothing
        return canonical_payload(payload)

    writer.payload_transform = transform
    writer.append({"message": "interrupted"})
    with pytest.raises(ImmutableLogError, match="from inside one of its writes"):
        writer.payload_transform = lambda p, s, h, g: (writer.close(), b"{}")[1]
        writer.append({"message": "closes"})
    assert not writer.closed  # the stream stays open and locked
    writer.payload_transform = None
    writer.close()
    messages = [e["message"] for e in iter_entries(tmp_path)]
    assert messages == ["interrupted"] + [f"kept {i}" for i in range(1500)]
    assert verify_tenant(tmp_path).ok


def test_a_kept_payload_refused_for_itself_does_not_fail_every_later_append(
    tmp_path: Path
) -> None:
    writer = ChainWriter(tmp_path, durability="none")

    def transform(payload: dict[str, Any], seq: int, prev: str, segment: int) -> bytes:
        if payload.get("message") == "first":
            writer.append({})  # kept; refused when appended: no member
        return canonical_payload(payload)

    writer.payload_transform = transform
    with pytest.raises(ImmutableLogError, match="at least one payload member"):
        writer.append({"message": "first"})
    writer.append({"message": "second"})  # no longer poisoned by the refused one
    writer.close()
    assert [e["message"] for e in iter_entries(tmp_path)] == ["first", "second"]
