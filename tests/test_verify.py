"""The tamper corpus: every kind of damage is detected at the right sequence number."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from immutable_logging.entry import make_line, split_line
from immutable_logging.errors import (
    HashMismatchError,
    ReorderError,
    SequenceGapError,
    TornTailError,
    VerificationError,
)
from immutable_logging.layout import list_segments
from immutable_logging.verify import VerificationReport, verify_directory, verify_tenant

from .helpers import only_stream, read_lines, write_lines, write_log


@pytest.fixture
def rotated_log(tmp_path: Path, logger_name: str) -> Path:
    """A log of 600 entries spread over several sealed (gzip) segments and an active one."""
    write_log(tmp_path, logger_name, 600, max_bytes=40_000)
    segments = list_segments(only_stream(tmp_path))
    assert len(segments) >= 4
    assert all(s.compressed for s in segments[:-1])
    assert not segments[-1].compressed
    return tmp_path


def _seq_of(line: bytes) -> int:
    parsed = split_line(line.rstrip(b"\n"))
    assert parsed is not None
    return parsed[0]


def _segment_with(stream: Path, index: int = 1) -> tuple[Path, list[bytes]]:
    seg = list_segments(stream)[index]
    return seg.path, read_lines(seg.path)


def _problems(report: VerificationReport) -> list[tuple[str, int | None, str]]:
    return [(p.reason, p.seq, p.file) for p in report.problems]


def _first_problem(directory: Path) -> tuple[str, int | None, str]:
    report = verify_tenant(directory)
    assert not report.ok
    problem = report.problems[0]
    return problem.reason, problem.seq, problem.file


def test_untampered_rotated_log_verifies_clean(rotated_log: Path) -> None:
    report = verify_tenant(rotated_log)
    assert report.ok, report.problems
    assert report.entries == 600
    assert report.streams[0].last_seq == 600
    assert verify_tenant(rotated_log, parse=True).ok
    assert verify_directory(rotated_log).ok


def test_edit_one_byte_in_sealed_segment(rotated_log: Path) -> None:
    path, lines = _segment_with(only_stream(rotated_log))
    k = 5
    seq = _seq_of(lines[k])
    lines[k] = lines[k].replace(b'"event ', b'"Event ', 1)
    write_lines(path, lines)
    reason, bad_seq, file = _first_problem(rotated_log)
    assert (reason, bad_seq, file) == ("hash_mismatch", seq, str(path))
    with pytest.raises(HashMismatchError) as info:
        verify_tenant(rotated_log).raise_for_problems()
    assert info.value.seq == seq and info.value.file == str(path)
    assert f"seq {seq}" in str(info.value)


def test_edit_with_recomputed_entry_hash_breaks_next_link(rotated_log: Path) -> None:
    path, lines = _segment_with(only_stream(rotated_log))
    k = 7
    seq, prev, _, _ = split_line(lines[k].rstrip(b"\n"))  # type: ignore[misc]
    obj = orjson.loads(lines[k])
    payload = {key: v for key, v in obj.items() if key not in ("seq", "prev", "hash")}
    payload["message"] = "forged"
    lines[k] = make_line(seq, prev, orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))[0]
    write_lines(path, lines)
    reason, bad_seq, _ = _first_problem(rotated_log)
    assert (reason, bad_seq) == ("prev_mismatch", seq + 1)


def test_delete_an_entry(rotated_log: Path) -> None:
    path, lines = _segment_with(only_stream(rotated_log))
    seq = _seq_of(lines[10])
    del lines[10]
    write_lines(path, lines)
    with pytest.raises(SequenceGapError) as info:
        verify_tenant(rotated_log).raise_for_problems()
    assert info.value.seq == seq


def test_insert_a_forged_entry(rotated_log: Path) -> None:
    path, lines = _segment_with(only_stream(rotated_log), 2)
    seq, prev, _, _ = split_line(lines[3].rstrip(b"\n"))  # type: ignore[misc]
    forged = make_line(seq, prev, b'{"message":"injected","ts":1.0}')[0]
    lines.insert(3, forged)
    write_lines(path, lines)
    report = verify_tenant(rotated_log)
    assert not report.ok
    assert report.problems[0].seq == seq
    assert report.problems[0].reason in ("reorder", "prev_mismatch")


@pytest.mark.parametrize("where", ["middle", "segment boundary"])
def test_swap_two_entries(rotated_log: Path, where: str) -> None:
    """Nothing is missing: one reorder naming both entries, not gaps."""
    stream = only_stream(rotated_log)
    path, lines = _segment_with(stream, 0)
    if where == "middle":
        seq = _seq_of(lines[20])
        lines[20], lines[21] = lines[21], lines[20]
    else:  # the last entry of segment 1 and the first of segment 2
        next_path, next_lines = _segment_with(stream, 1)
        seq = _seq_of(lines[-1])
        lines[-1], next_lines[0] = next_lines[0], lines[-1]
        write_lines(next_path, next_lines)
    write_lines(path, lines)
    report = verify_tenant(rotated_log)
    assert _problems(report) == [("reorder", seq, str(path))]
    assert f"seq {seq + 1} appears before seq {seq}" in report.problems[0].detail
    assert report.entries == 600 and report.streams[0].last_seq == 600
    with pytest.raises(ReorderError):
        report.raise_for_problems()


def _moved(lines: list[bytes], start: int, count: int, to: int) -> list[bytes]:
    """``lines`` with ``lines[start:start + count]`` moved to just before ``lines[to]`` (an
    index into the original list)."""
    block = lines[start:start + count]
    rest = lines[:start] + lines[start + count:]
    at = to if to < start else to - count
    return rest[:at] + block + rest[at:]


@pytest.mark.parametrize(
    ("start", "count", "to", "expected"),
    [
        (20, 1, 24, "seq {s} appears after seq {a} instead of between seq {b} and seq {n}"),
        (20, 3, 30, "seq {s}..{e} appear after seq {a} instead of between seq {b} and seq {n}"),
        (20, 1, 10, "seq {s} appears before seq {t} instead of between seq {b} and seq {n}"),
        (20, 4, 10, "seq {t}..{u} appear after seq {e} instead of between seq {v} and seq {s}"),
        (0, 3, 8, "seq {s}..{e} appear after seq {a} instead of between seq {b} and seq {n}"),
    ],
    ids=["one later", "three later", "one earlier", "four earlier", "first three later"],
)
def test_moved_entries_are_one_reorder_not_gaps(
    rotated_log: Path, start: int, count: int, to: int, expected: str
) -> None:
    """Entries moved elsewhere in the stream: nothing is missing, so no gap is reported,
    only where they are and where they belong (their hashes link them there)."""
    stream = only_stream(rotated_log)
    path, lines = _segment_with(stream, 1)
    seqs = [_seq_of(line) for line in lines]
    write_lines(path, _moved(lines, start, count, to))
    report = verify_tenant(rotated_log)
    s, e = seqs[start], seqs[start + count - 1]
    words = {"s": s, "e": e, "b": s - 1, "n": e + 1, "a": seqs[to - 1], "t": seqs[to],
             "u": seqs[start - 1], "v": seqs[to] - 1}
    assert [(p.reason, p.file) for p in report.problems] == [("reorder", str(path))], (
        report.problems)
    assert expected.format(**words) in report.problems[0].detail
    assert report.entries == 600 and report.streams[0].last_seq == 600
    with pytest.raises(ReorderError):
        report.raise_for_problems()


def test_moved_entries_to_the_end_of_the_stream(rotated_log: Path) -> None:
    stream = only_stream(rotated_log)
    active = list_segments(stream)[-1].path
    lines = read_lines(active)
    first = _seq_of(lines[2])
    write_lines(active, _moved(lines, 2, 3, len(lines)))
    report = verify_tenant(rotated_log)
    assert _problems(report) == [("reorder", first, str(active))]
    assert f"seq {first}..{first + 2} appear after seq 600" in report.problems[0].detail
    assert report.streams[0].last_seq == 600  # the head is the true last entry
    assert report.streams[0].head == split_line(lines[-1].rstrip(b"\n"))[2]  # type: ignore[index]


def test_a_move_and_a_deletion_are_both_reported(rotated_log: Path) -> None:
    path, lines = _segment_with(only_stream(rotated_log), 1)
    moved, deleted = _seq_of(lines[10]), _seq_of(lines[40])
    lines = _moved(lines, 10, 1, 15)
    del lines[40]
    write_lines(path, lines)
    assert _problems(verify_tenant(rotated_log)) == [
        ("reorder", moved, str(path)), ("gap", deleted, str(path))]


def test_a_moved_block_missing_its_last_entry_is_out_of_place_and_a_gap(rotated_log: Path) -> None:
    """The chain goes on where it stood before the block: the block was moved, and the
    entry that should end it is missing (not the entries the block came after)."""
    path, lines = _segment_with(only_stream(rotated_log), 1)
    first, missing, after = _seq_of(lines[10]), _seq_of(lines[12]), _seq_of(lines[19])
    original = list(lines)
    lines = _moved(lines, 10, 3, 20)
    lines.remove(original[12])
    write_lines(path, lines)
    report = verify_tenant(rotated_log)
    assert _problems(report) == [("reorder", first, str(path)), ("gap", missing, str(path))]
    assert (f"seq {first}..{missing - 1} appear after seq {after} instead of between "
            f"seq {first - 1} and seq {missing}: out of place (only the first links there; "
            f"seq {missing} is missing)") in report.problems[0].detail
    assert f"1 entry missing (seq {missing}..{missing})" in report.problems[1].detail


def test_a_moved_block_with_a_hole_claims_no_move(rotated_log: Path) -> None:
    """The hashes do not link the block into place: the earlier messages stay."""
    path, lines = _segment_with(only_stream(rotated_log), 1)
    missing = _seq_of(lines[11])
    original = list(lines)
    lines = _moved(lines, 10, 3, 20)
    lines.remove(original[11])
    write_lines(path, lines)
    report = verify_tenant(rotated_log)
    assert not report.ok
    assert ("gap", missing) in [(p.reason, p.seq) for p in report.problems]
    assert not any(": moved (" in p.detail for p in report.problems)


def test_a_block_whose_first_entry_is_forged_is_not_called_moved(rotated_log: Path) -> None:
    """The block's first entry is replaced by a forgery that links to the entry before:
    a problem comes up while the block is placed, so its hashes prove no move."""
    path, lines = _segment_with(only_stream(rotated_log), 1)
    seq, prev, _, _ = split_line(lines[10].rstrip(b"\n"))  # type: ignore[misc]
    lines = _moved(lines, 13, 2, 10)
    lines[lines.index(read_lines(path)[10])] = make_line(
        seq, prev, b'{"message":"forged","ts":1.0}')[0]
    write_lines(path, lines)
    report = verify_tenant(rotated_log)
    assert not report.ok
    assert not any(": moved (" in p.detail or ": out of place (" in p.detail
                   for p in report.problems), report.problems


def test_the_last_entry_moved_back_is_a_move_and_stays_the_head(rotated_log: Path) -> None:
    stream = only_stream(rotated_log)
    active = list_segments(stream)[-1].path
    lines = read_lines(active)
    last = split_line(lines[-1].rstrip(b"\n"))
    assert last is not None
    write_lines(active, _moved(lines, len(lines) - 1, 1, len(lines) - 3))
    report = verify_tenant(rotated_log)
    assert _problems(report) == [("reorder", 600, str(active))]
    assert "seq 600 appears before seq 598 instead of after seq 599: moved" in (
        report.problems[0].detail)
    assert (report.streams[0].last_seq, report.streams[0].head) == (600, last[2])


def test_moved_across_workers_and_segments_gives_the_serial_report(
    tmp_path: Path, logger_name: str
) -> None:
    """A run being put back that ends with its segment: the next segment must not be
    taken from a worker (the report would depend on the worker count)."""
    write_log(tmp_path, logger_name, 300, max_bytes=9_000)
    stream = only_stream(tmp_path)
    segments = list_segments(stream)
    assert len(segments) == 15
    flat = [line for s in segments for line in read_lines(s.path)]
    moved = _moved(flat, 269, 3, 200)  # seq 270..272 before seq 201
    for index, segment in enumerate(segments):  # 21 lines each, as in the review
        write_lines(segment.path, moved[21 * index:21 * (index + 1)] if index < 14
                    else moved[21 * index:])
    code = (
        "import json, sys; from dataclasses import asdict; from pathlib import Path\n"
        "from immutable_logging.verify import verify_stream\n"
        "r = [verify_stream(Path(sys.argv[1]), 'default', workers=w) for w in (1, 2)]\n"
        "print(json.dumps([r[1].workers] + [[asdict(p) for p in x.problems] for x in r]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(stream)], capture_output=True,
                          text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    workers, serial, forked = json.loads(done.stdout)
    assert workers == 2 and forked == serial
    assert [p["reason"] for p in serial] == ["reorder"], serial


@pytest.mark.parametrize("count", [1, 2])
def test_a_garbage_line_inserted_is_only_malformed(rotated_log: Path, count: int) -> None:
    """The intact entries after it continue the chain: no false reorder."""
    path, lines = _segment_with(only_stream(rotated_log), 1)
    seq = _seq_of(lines[4])
    lines[4:4] = [b"garbage line\n"] * count
    write_lines(path, lines)
    report = verify_tenant(rotated_log)
    assert _problems(report) == [("malformed", seq + i, str(path)) for i in range(count)]
    assert report.entries == 600 and report.streams[0].last_seq == 600


def test_a_damaged_last_line_then_a_new_segment_is_only_malformed(
    rotated_log: Path, logger_name: str
) -> None:
    """README: a complete bad line stays for verify, logging continues in a new segment
    whose first entry commits to the last good one; that is no reorder."""
    stream = only_stream(rotated_log)
    active = list_segments(stream)[-1].path
    with open(active, "ab") as handle:
        handle.write(b"garbage line\n")
    write_log(rotated_log, f"{logger_name}.again", 3, max_bytes=40_000)
    newest = list_segments(stream)[-1].path
    assert newest != active and _seq_of(read_lines(newest)[0]) == 601
    report = verify_tenant(rotated_log)
    assert _problems(report) == [("malformed", 601, str(active))]
    assert report.entries == 603 and report.streams[0].last_seq == 603


@pytest.mark.parametrize("where", ["middle", "segment start"])
def test_a_duplicated_line_is_a_duplicate(rotated_log: Path, where: str) -> None:
    stream = only_stream(rotated_log)
    path, lines = _segment_with(stream, 1)
    if where == "middle":
        seq = _seq_of(lines[5])
        lines.insert(6, lines[5])
    else:  # the last entry of the previous segment, again
        previous = _segment_with(stream, 0)[1][-1]
        seq = _seq_of(previous)
        lines.insert(0, previous)
    write_lines(path, lines)
    report = verify_tenant(rotated_log)
    assert _problems(report) == [("duplicate", seq, str(path))]
    assert report.streams[0].last_seq == 600
    with pytest.raises(ReorderError) as info:
        report.raise_for_problems()
    assert info.value.reason == "duplicate"


@pytest.mark.parametrize("damage", ["corrupt", "cut in half"])
def test_an_unreadable_compressed_segment_is_one_problem(rotated_log: Path, damage: str) -> None:
    """Its read error only: no "sealed segment is empty", no gap before the next one."""
    gz = list_segments(only_stream(rotated_log))[1].path
    data = gz.read_bytes()
    gz.chmod(0o644)
    if damage == "corrupt":
        gz.write_bytes(data[:30] + b"\xff" * 30 + data[60:])
    else:
        gz.write_bytes(data[: len(data) // 2])
    report = verify_tenant(rotated_log)
    assert [(p.reason, p.file) for p in report.problems] == [("malformed", str(gz))]
    assert report.problems[0].detail.startswith("cannot read segment")
    assert report.streams[0].last_seq == 600


def test_a_sealed_segment_cut_mid_entry_is_one_problem(rotated_log: Path) -> None:
    path, lines = _segment_with(only_stream(rotated_log), 1)
    seq = _seq_of(lines[-1])
    lines[-1] = lines[-1][:50]
    write_lines(path, lines)
    report = verify_tenant(rotated_log)
    assert _problems(report) == [("truncation", seq, str(path))]


def test_truncate_in_the_middle(rotated_log: Path) -> None:
    stream = only_stream(rotated_log)
    path, lines = _segment_with(stream, 1)
    seq = _seq_of(lines[4])
    data = b"".join(lines)
    start = data.index(lines[4]) + 40
    end = data.index(lines[9]) + 60
    write_lines(path, [data[:start] + data[end:]])
    reason, bad_seq, _ = _first_problem(rotated_log)
    assert bad_seq == seq
    assert reason in ("hash_mismatch", "malformed")


def test_drop_a_whole_rotated_segment(rotated_log: Path) -> None:
    stream = only_stream(rotated_log)
    dropped = list_segments(stream)[1]
    first_missing = _seq_of(read_lines(dropped.path)[0])
    dropped.path.unlink()
    report = verify_tenant(rotated_log)
    assert not report.ok
    reasons = {(p.reason, p.seq) for p in report.problems}
    assert ("missing_segment", first_missing) in reasons
    assert ("gap", first_missing) in reasons


def test_drop_the_first_segment(rotated_log: Path) -> None:
    list_segments(only_stream(rotated_log))[0].path.unlink()
    reason, seq, _ = _first_problem(rotated_log)
    assert (reason, seq) == ("missing_segment", 1)


def test_torn_tail_is_reported_until_recovered(rotated_log: Path) -> None:
    stream = only_stream(rotated_log)
    active = list_segments(stream)[-1].path
    with open(active, "ab") as handle:
        handle.write(b'{"seq":601,"prev":"abc')
    with pytest.raises(TornTailError) as info:
        verify_tenant(rotated_log).raise_for_problems()
    assert info.value.seq == 601
    assert info.value.file == str(active)


def test_an_entry_being_written_while_verify_reads_is_not_a_torn_tail(
    rotated_log: Path
) -> None:
    """Found by the concurrency audit: verify run beside a writer read the active segment
    with a large write half done and reported tampering (torn_tail, exit 1)."""
    import threading
    import time

    from immutable_logging.entry import canonical_payload

    active = list_segments(only_stream(rotated_log))[-1].path
    last = split_line(read_lines(active)[-1].rstrip(b"\n"))
    assert last is not None
    line, _ = make_line(last[0] + 1, last[2], canonical_payload({"message": "x" * 50_000}))
    with open(active, "ab") as handle:
        handle.write(line[:30_000])  # what a reader may see of a write in progress

    def rest_of_the_write() -> None:
        time.sleep(0.1)
        with open(active, "ab") as handle:
            handle.write(line[30_000:])

    writer = threading.Thread(target=rest_of_the_write)
    writer.start()
    report = verify_tenant(rotated_log)
    writer.join()
    assert report.ok, [str(p) for p in report.problems]
    assert any("was being written while it was read" in w for w in report.warnings)
    assert verify_tenant(rotated_log).ok and not verify_tenant(rotated_log).warnings


def test_independent_damages_are_all_reported(rotated_log: Path) -> None:
    stream = only_stream(rotated_log)
    path0, lines0 = _segment_with(stream, 0)
    path2, lines2 = _segment_with(stream, 2)
    seq_a, seq_b = _seq_of(lines0[3]), _seq_of(lines2[6])
    lines0[3] = lines0[3].replace(b"event", b"EVENT", 1)
    del lines2[6]
    write_lines(path0, lines0)
    write_lines(path2, lines2)
    problems = verify_tenant(rotated_log).problems
    assert [(p.reason, p.seq) for p in problems] == [("hash_mismatch", seq_a), ("gap", seq_b)]


_NON_CANONICAL = {
    "key_order": lambda payload: orjson.dumps(dict(reversed(list(payload.items())))),
    "spaces": lambda payload: orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).replace(
        b'","', b'", "', 1),
    "indent": lambda payload: orjson.dumps(
        payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).replace(b"\n", b""),
    "escaped_unicode": lambda payload: orjson.dumps(
        {**payload, "message": "caf\u00e9"}, option=orjson.OPT_SORT_KEYS).replace(
        "é".encode(), b"\\u00e9"),
    "float_spelling": lambda payload: orjson.dumps(
        {**payload, "z": 1.5}, option=orjson.OPT_SORT_KEYS).replace(b'"z":1.5', b'"z":15e-1'),
    "duplicate_key": lambda payload: orjson.dumps(
        payload, option=orjson.OPT_SORT_KEYS)[:-1] + b',"level":"INFO"}',
    "nested_order": lambda payload: orjson.dumps(
        {**payload, "zz": {"a": 1, "b": 2}}, option=orjson.OPT_SORT_KEYS).replace(
        b'{"a":1,"b":2}', b'{"b":2,"a":1}'),
    "seq_in_payload": lambda payload: b'{"seq":7,' + orjson.dumps(
        payload, option=orjson.OPT_SORT_KEYS)[1:],
}


@pytest.mark.parametrize("variant", sorted(_NON_CANONICAL))
def test_parse_path_rejects_every_non_canonical_spelling(
    tmp_path: Path, logger_name: str, variant: str
) -> None:
    """Each payload decodes to a plausible entry and is correctly hashed: only the parse
    path notices, at the right entry, and the entries around it stay clean."""
    write_log(tmp_path, logger_name, 5)
    path = list_segments(only_stream(tmp_path))[-1].path
    lines = read_lines(path)
    seq, prev, _, _hashed = split_line(lines[4].rstrip(b"\n"))  # type: ignore[misc]
    obj = orjson.loads(lines[4])
    payload = {key: v for key, v in obj.items() if key not in ("seq", "prev", "hash")}
    if variant == "escaped_unicode":
        payload["message"] = "café"
    spelled = _NON_CANONICAL[variant](payload)
    assert spelled != orjson.dumps(orjson.loads(spelled), option=orjson.OPT_SORT_KEYS)
    lines[4] = make_line(seq, prev, spelled)[0]
    write_lines(path, lines)
    assert verify_tenant(tmp_path).ok  # the re-hash path cannot tell
    report = verify_tenant(tmp_path, parse=True)
    assert [(p.reason, p.seq) for p in report.problems] == [("non_canonical", 5)]
    assert report.entries == 5


def test_clean_entries_never_take_the_diagnosing_path(
    rotated_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both depths check clean entries inline; only damage goes through ``line``."""
    from immutable_logging import verify

    diagnosed: list[bytes] = []
    real_line = verify._StreamVerifier.line

    def counting_line(self: verify._StreamVerifier, raw: bytes, file: str) -> None:
        diagnosed.append(raw)
        real_line(self, raw, file)

    monkeypatch.setattr(verify._StreamVerifier, "line", counting_line)
    for parse in (False, True):
        assert verify_tenant(rotated_log, parse=parse, workers=1).ok
    assert diagnosed == []


def test_problem_errors_are_verification_errors(rotated_log: Path) -> None:
    path, lines = _segment_with(only_stream(rotated_log))
    lines[1] = b"not json at all\n"
    write_lines(path, lines)
    with pytest.raises(VerificationError) as info:
        verify_tenant(rotated_log).raise_for_problems()
    assert info.value.reason == "malformed"
    assert info.value.file == str(path)
    assert info.value.seq == _seq_of(lines[0]) + 1


def test_every_single_byte_change_is_detected(tmp_path: Path, logger_name: str) -> None:
    import random

    write_log(tmp_path, logger_name, 40)
    path = list_segments(only_stream(tmp_path))[-1].path
    original = path.read_bytes()
    rng = random.Random(1234)
    for position in rng.sample(range(len(original)), 150):
        damaged = bytearray(original)
        damaged[position] = (damaged[position] + rng.randint(1, 255)) % 256
        path.write_bytes(bytes(damaged))
        report = verify_tenant(tmp_path)
        assert not report.ok, f"a change at byte {position} went unnoticed"
        first = original.count(b"\n", 0, position) + 1  # the seq of the damaged line
        assert report.problems[0].seq in (first, first + 1), (position, report.problems[0])
    path.write_bytes(original)
    assert verify_tenant(tmp_path).ok


def test_too_short_entries_fail_both_paths(tmp_path: Path) -> None:
    stream = tmp_path / "default" / "h.0"
    stream.mkdir(parents=True)
    (stream / "stream.json").write_text("{}")
    line, _ = make_line(1, "0" * 64, b"{}")  # an entry with an empty payload (158 bytes)
    (stream / "00000001.log").write_bytes(line)
    assert [p.reason for p in verify_tenant(tmp_path).problems] == ["malformed"]
    assert [p.reason for p in verify_tenant(tmp_path, parse=True).problems] == ["malformed"]


def test_a_rotted_hash_byte_cannot_be_chained_onto(tmp_path: Path) -> None:
    """After a stored hash with a non-ASCII byte, a next entry that "links" to its
    replacement-decoded form is no entry (the fast path must not accept it either)."""
    import hashlib

    from immutable_logging.chain import ChainWriter

    writer = ChainWriter(tmp_path, durability="none")
    for i in range(3):
        writer.append({"ts": 1.0, "level": "INFO", "message": f"m{i}" + "x" * 80})
    writer.close()
    path = list_segments(writer.stream_dir)[-1].path
    lines = read_lines(path)
    lines[2] = lines[2][:-10] + b"\xff" + lines[2][-9:]
    prev = lines[2][-67:-3].decode("ascii", "replace").encode("utf-8")  # 66 bytes
    body = b'{"seq":4,"prev":"%s","level":"INFO","message":"forged%s","ts":2.0}' % (
        prev, b"x" * 80)
    lines.append(body[:-1] + b',"hash":"%s"}\n' % hashlib.sha256(body).hexdigest().encode())
    write_lines(path, lines)
    for parse in (False, True):
        report = verify_tenant(tmp_path, parse=parse)
        assert ("hash_mismatch", 3) in [(p.reason, p.seq) for p in report.problems]
        assert ("malformed", 4) in [(p.reason, p.seq) for p in report.problems]
        assert report.entries == 3


def test_a_corrupt_compressed_segment_is_reported_with_a_seal_seed_too(
    rotated_log: Path,
) -> None:
    """The seal pass skips what it cannot read; the chain pass reports it."""
    gz = list_segments(only_stream(rotated_log))[0].path
    damaged = bytearray(gz.read_bytes())
    damaged[30:60] = b"\xff" * 30
    gz.chmod(0o644)
    gz.write_bytes(bytes(damaged))
    plain = verify_tenant(rotated_log)
    sealed = verify_tenant(rotated_log, seed=b"k" * 32)
    assert not plain.ok and plain.problems[0].reason == "malformed"
    assert [p.reason for p in sealed.problems][:len(plain.problems)] == [
        p.reason for p in plain.problems]


_FORKED = """
import json, sys
from immutable_logging.verify import verify_tenant
out = []
for root in sys.argv[1:]:
    report = verify_tenant(root, workers=2)
    out.append([report.streams[0].workers, [[p.reason, p.seq, p.file] for p in report.problems]])
print(json.dumps(out))
"""


def test_forked_workers_carry_held_lines_and_damage_across_segments(
    tmp_path: Path, logger_name: str
) -> None:
    """A line held at the end of a segment, or damage there, is settled by the next segment
    the same way whether segments were verified by forked workers or serially."""

    def swap(stream: Path) -> tuple[str, int | None, Path]:
        (a, lines_a), (b, lines_b) = _segment_with(stream, 0), _segment_with(stream, 1)
        seq = _seq_of(lines_a[-1])
        lines_a[-1], lines_b[0] = lines_b[0], lines_a[-1]
        write_lines(a, lines_a)
        write_lines(b, lines_b)
        return "reorder", seq, a

    def garbage_at_end(stream: Path) -> tuple[str, int | None, Path]:
        path, lines = _segment_with(stream, 1)
        write_lines(path, [*lines, b"garbage line\n"])
        return "malformed", _seq_of(lines[-1]) + 1, path

    def garbage_for_last(stream: Path) -> tuple[str, int | None, Path]:
        path, lines = _segment_with(stream, 1)
        write_lines(path, [*lines[:-1], b"garbage line\n"])
        return "malformed", _seq_of(lines[-1]), path

    def gzip_cut_in_half(stream: Path) -> tuple[str, int | None, Path]:
        path = list_segments(stream)[1].path
        data = path.read_bytes()
        path.chmod(0o644)
        path.write_bytes(data[: len(data) // 2])
        return "malformed", None, path  # at the entry after the last one read

    def duplicate_at_start(stream: Path) -> tuple[str, int | None, Path]:
        path, lines = _segment_with(stream, 2)
        previous = _segment_with(stream, 1)[1][-1]
        write_lines(path, [previous, *lines])
        return "duplicate", _seq_of(previous), path

    expected = []
    roots = []
    tampers = (swap, garbage_at_end, garbage_for_last, gzip_cut_in_half, duplicate_at_start)
    for number, tamper in enumerate(tampers):
        root = tmp_path / f"log{number}"
        write_log(root, f"{logger_name}.{number}", 600, max_bytes=40_000)
        reason, seq, path = tamper(only_stream(root))
        serial = [list(p) for p in _problems(verify_tenant(root, workers=1))]
        if seq is None:
            seq = serial[0][1] if len(serial) == 1 else -1
        expected.append([[reason, seq, str(path)]])
        roots.append(str(root))
        assert serial == expected[-1]
    # A fresh interpreter has one thread, so workers are really forked there.
    done = subprocess.run(
        [sys.executable, "-c", _FORKED, *roots], capture_output=True, text=True,
        timeout=300, check=True, cwd=Path(__file__).resolve().parent.parent,
    )
    assert json.loads(done.stdout) == [[2, problems] for problems in expected]


def test_a_missing_stream_json_is_damage_unless_the_stream_was_never_written(
    rotated_log: Path, tmp_path: Path
) -> None:
    stream = only_stream(rotated_log)
    (stream / "stream.json").unlink()
    report = verify_tenant(rotated_log)
    assert [(p.reason, p.file) for p in report.problems] == [
        ("malformed", str(stream / "stream.json"))]
    # A process stopped while creating a stream leaves its lock and the temporary file
    # of stream.json, and no entry: nothing was tampered with.
    interrupted = tmp_path / "fresh" / "default" / "vm.7"
    interrupted.mkdir(parents=True)
    (interrupted / ".lock").write_text("123\n")
    (interrupted / ".stream.json.123.tmp").write_text("")
    report = verify_tenant(tmp_path / "fresh")
    assert report.ok and report.entries == 0
    assert any("a process stopped while creating this stream" in w for w in report.warnings)
    # A stream that was written (a seal key, checkpoints, a cursor) and then wiped is not.
    (interrupted / ".replica-1234.json").write_text("{}")
    assert [p.reason for p in verify_tenant(tmp_path / "fresh").problems] == ["malformed"]


def test_a_journal_written_on_while_verify_ran_is_not_said_to_break_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the concurrency audit: verify beside a live flush writer read the
    segments, then a journal the writer had moved on with, and said the journal did not
    continue the chain (the next writer would keep it under torn/): 13 of 14 runs."""
    from immutable_logging import verify as verify_module
    from immutable_logging.chain import ChainWriter

    writer = ChainWriter(tmp_path, durability="flush")
    for i in range(10):
        writer.append({"message": f"m{i}"})
    writer.flush()
    for i in range(10, 15):
        writer.append({"message": f"m{i}"})  # in the journal only
    check_journal = verify_module._check_journal

    def writer_moves_on(stream_dir: Path, state: Any) -> None:
        writer.flush()  # 11..15 to the segment; the journal starts again at offset 0
        for i in range(15, 18):
            writer.append({"message": f"m{i}"})
        check_journal(stream_dir, state)

    monkeypatch.setattr(verify_module, "_check_journal", writer_moves_on)
    report = verify_tenant(tmp_path)
    writer.close()
    assert report.ok
    assert not [w for w in report.warnings if "does not continue the chain" in w]
    assert any("written while verify ran (now at seq 15)" in w for w in report.warnings)
