"""Worker processes for verification: when they are used, and that they never change a
report (the tamper corpus verified serially and by forked workers gives equal reports)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from immutable_logging import workers
from immutable_logging.entry import make_line, split_line
from immutable_logging.layout import list_segments

from .helpers import only_stream, read_lines, write_lines, write_log


def test_worker_count_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "usable_cpus", lambda: 4)
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    big = workers.PARALLEL_MIN_BYTES
    assert workers.worker_count(None, 10, big) == 4
    assert workers.worker_count(None, 3, big) == 3  # never more workers than work
    assert workers.worker_count(None, 10, big - 1) == 0  # too small to be worth a fork
    assert workers.worker_count(None, 1, big) == 0
    assert workers.worker_count(1, 10, big) == 0 and workers.worker_count(0, 10, big) == 0
    assert workers.worker_count(2, 10, 0) == 2  # asked for explicitly: no size threshold
    assert workers.worker_count(8, 5, 0) == 5
    monkeypatch.setattr(workers, "usable_cpus", lambda: 1)
    assert workers.worker_count(None, 10, big) == 0


def test_never_forks_a_process_with_other_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "active_count", lambda: 2)
    assert workers.worker_count(4, 10, workers.PARALLEL_MIN_BYTES) == 0


def _seq(line: bytes) -> int:
    parsed = split_line(line.rstrip(b"\n"))
    assert parsed is not None
    return parsed[0]


def _edit(index: int, change: Callable[[list[bytes]], list[bytes]]) -> Callable[[Path], None]:
    def apply(stream: Path) -> None:
        path = list_segments(stream)[index].path
        write_lines(path, change(read_lines(path)))
    return apply


def _forge_first(lines: list[bytes]) -> list[bytes]:
    seq, prev, _, _ = split_line(lines[0].rstrip(b"\n"))  # type: ignore[misc]
    return [make_line(seq, prev, b'{"message":"forged","ts":1.0}')[0], *lines[1:]]


def _drop(index: int) -> Callable[[Path], None]:
    return lambda stream: list_segments(stream)[index].path.unlink()


def _truncate_gzip(stream: Path) -> None:
    path = list_segments(stream)[2].path
    data = path.read_bytes()
    path.chmod(0o600)
    path.write_bytes(data[: len(data) // 2])


TAMPERS: dict[str, Callable[[Path], None]] = {
    "clean": lambda stream: None,
    "byte edit": _edit(1, lambda ls: [ls[0], ls[1].replace(b"event", b"EVENT", 1), *ls[2:]]),
    "first line of a segment edited": _edit(2, lambda ls: [ls[0].replace(b"event", b"Event"),
                                                           *ls[1:]]),
    "first line forged with its own hash": _edit(3, _forge_first),
    "first line deleted": _edit(1, lambda ls: ls[1:]),
    "last line deleted": _edit(1, lambda ls: ls[:-1]),
    "lines swapped": _edit(0, lambda ls: [*ls[:5], ls[6], ls[5], *ls[7:]]),
    "malformed line": _edit(2, lambda ls: [*ls[:3], b"not an entry\n", *ls[4:]]),
    "segment emptied": _edit(1, lambda ls: []),
    "segment dropped": _drop(2),
    "first segment dropped": _drop(0),
    "gzip truncated": _truncate_gzip,
    "two segments swapped in content": lambda stream: _swap_contents(stream, 1, 2),
    "entry moved three places later": _edit(1, lambda ls: [*ls[:4], *ls[5:8], ls[4], *ls[8:]]),
    "lines moved to the end of the next segment": lambda stream: _move_lines(stream, 1, -3, 3),
    "lines moved into the next segment": lambda stream: _move_lines(stream, 1, 5, 10),
}


def _move_lines(stream: Path, index: int, start: int, count: int) -> None:
    """Move ``count`` lines of segment ``index`` from ``start`` to the next segment: to
    its middle, or to its end if ``start`` is negative."""
    segments = list_segments(stream)
    here, there = read_lines(segments[index].path), read_lines(segments[index + 1].path)
    block = here[start:start + count] if start >= 0 else here[start:]
    write_lines(segments[index].path, [line for line in here if line not in block])
    at = len(there) if start < 0 else len(there) // 2
    write_lines(segments[index + 1].path, there[:at] + block + there[at:])


def _swap_contents(stream: Path, a: int, b: int) -> None:
    segments = list_segments(stream)
    lines_a, lines_b = read_lines(segments[a].path), read_lines(segments[b].path)
    write_lines(segments[a].path, lines_b)
    write_lines(segments[b].path, lines_a)


_COMPARE = """
import json, sys
from dataclasses import asdict
from pathlib import Path
from immutable_logging.verify import verify_stream
out = {}
for stream in sys.argv[1:]:
    serial = verify_stream(Path(stream), "default", workers=1)
    forked = verify_stream(Path(stream), "default", workers=2)
    out[stream] = [serial.workers, forked.workers, asdict(serial), asdict(forked)]
print(json.dumps(out))
"""


def test_forked_workers_give_the_serial_report_for_every_tamper(
    tmp_path: Path, logger_name: str
) -> None:
    streams = {}
    for number, (name, tamper) in enumerate(TAMPERS.items()):
        root = tmp_path / f"log{number}"
        write_log(root, f"{logger_name}.{number}", 400, max_bytes=12_000)
        stream = only_stream(root)
        assert len(list_segments(stream)) >= 6
        tamper(stream)
        streams[str(stream)] = name
    # A fresh interpreter has one thread, so workers are really forked there.
    done = subprocess.run(
        [sys.executable, "-c", _COMPARE, *streams], capture_output=True, text=True,
        timeout=300, check=True, cwd=Path(__file__).resolve().parent.parent,
    )
    results = json.loads(done.stdout)
    for stream, name in streams.items():
        serial_workers, forked_workers, serial, forked = results[stream]
        assert (serial_workers, forked_workers) == (0, 2), name
        serial.pop("workers")
        forked.pop("workers")
        assert forked == serial, name
        assert bool(serial["problems"]) == (name != "clean"), name


def test_a_failing_fork_falls_back_to_this_process(
    tmp_path: Path, logger_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from immutable_logging.matching import TextSearch, find_entries
    from immutable_logging.verify import verify_stream

    write_log(tmp_path, logger_name, 300, max_bytes=12_000)
    stream = only_stream(tmp_path)
    serial = verify_stream(stream, "default", workers=1)
    found = find_entries(tmp_path, "default", TextSearch("event 1"), workers=1)

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(threading, "active_count", lambda: 1)  # so a fork is attempted
    monkeypatch.setattr("os.fork", no_fork)
    report = verify_stream(stream, "default", workers=2)
    assert report.workers == 0 and report.ok and report.entries == serial.entries == 300
    assert find_entries(tmp_path, "default", TextSearch("event 1"), workers=2) == found
    assert len(found) == 111
