"""find_entries: the serial reader's results, whether sealed segments are scanned by
forked worker processes or not (compared in a fresh, single-threaded interpreter)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from immutable_logging import ImmutableHandler
from immutable_logging.crypto import generate_key
from immutable_logging.errors import QueryError
from immutable_logging.layout import list_segments, list_streams
from immutable_logging.matching import DocumentQuery, TextSearch, find_entries

from .helpers import write_log, write_log_and_kill

ROOT = Path(__file__).resolve().parent.parent

_RUN = """
import json, sys
from immutable_logging import workers as pool_module
from immutable_logging.matching import DocumentQuery, TextSearch, find_entries
from immutable_logging.query import (iter_entries, query_entries, query_filter,
                                     search_entries, search_filter)
pools = []
real_pool = pool_module.forked_pool
pool_module.forked_pool = lambda n: pools.append(n) or real_pool(n)
root, matches = sys.argv[1], json.loads(sys.argv[2])
from pathlib import Path
from immutable_logging.encryption import EntryDecryptor, build_keyring
key = sys.argv[3] if len(sys.argv) > 3 else None
# no key: None, what the facade and CLI pass (encrypted entries are read undecrypted)
decrypt = (EntryDecryptor(build_keyring(Path(root) / "default", encryption_key=key), "default")
           if key else None)
out = []
for kind, arg, limit in matches:
    match = TextSearch(arg) if kind == "search" else DocumentQuery(arg)
    result = {}
    for label, workers in (("serial", 1), ("forked", 2)):
        try:
            result[label] = find_entries(root, "default", match, decrypt=decrypt, limit=limit,
                                         workers=workers)
        except Exception as exc:
            result[label] = f"{type(exc).__name__}: {exc}"
    line_filter = search_filter(arg) if kind == "search" else query_filter(arg)
    entries = iter_entries(root, "default", decrypt=decrypt, line_filter=line_filter)
    try:
        result["reader"] = (search_entries(entries, arg, limit=limit) if kind == "search"
                            else query_entries(entries, arg, limit=limit))
    except Exception as exc:
        result["reader"] = f"{type(exc).__name__}: {exc}"
    out.append(result)
print(json.dumps({"pools": pools, "results": out}))
"""


def _run(root: Path, matches: list[tuple[str, Any, int | None]], key: str | None = None
         ) -> dict[str, Any]:
    argv = [sys.executable, "-c", _RUN, str(root), json.dumps(matches)]
    done = subprocess.run([*argv, *([key] if key else [])], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


MATCHES: list[tuple[str, Any, int | None]] = [
    ("search", "event 17", None),
    ("search", "EVENT 1", 25),
    ("search", "u3", None),
    ("search", "no such text", None),
    ("query", {"level": "INFO", "metadata.index": {"$gte": 590}}, None),
    ("query", {"metadata.user": "u5"}, 10),
    ("query", {"metadata.index": {"$in": [3, 333, 599, 777]}}, None),
    ("query", {"metadata.index": {"$gt": 100, "$lte": 105}}, None),  # number bounds only
    ("query", {"$or": [{"metadata.index": 1}, {"message": {"$regex": "^event 4[0-9]$"}}]}, None),
]


def test_forked_scan_equals_the_serial_reader(tmp_path: Path, logger_name: str) -> None:
    write_log(tmp_path, logger_name, 600, max_bytes=12_000)
    assert len(list_segments(list_streams(tmp_path / "default")[0])) >= 6
    run = _run(tmp_path, MATCHES)
    assert run["pools"] == [2] * len(MATCHES)  # workers were really forked
    for (kind, arg, _), result in zip(MATCHES, run["results"], strict=True):
        assert result["forked"] == result["serial"] == result["reader"], (kind, arg)
    counts = [len(r["serial"]) for r in run["results"]]
    assert counts[0] == 11 and counts[1] == 25 and counts[3] == 0 and counts[5] == 10


def _record(message: str, created: float) -> logging.LogRecord:
    record = logging.LogRecord("m", logging.INFO, __file__, 1, message, None, None)
    record.created = created
    return record


def test_several_streams_are_merged_entry_by_entry_never_forked(
    tmp_path: Path, logger_name: str
) -> None:
    write_log(tmp_path, f"{logger_name}.a", 600, max_bytes=12_000, stream="a")
    write_log(tmp_path, f"{logger_name}.b", 300, max_bytes=12_000, stream="b")
    # A stream whose times go backwards (threads racing for the lock): which match comes
    # first depends on the entries between them, so streams are merged, then filtered.
    handler = ImmutableHandler(tmp_path, stream="c")
    for message, created in (("skew other", 2e9), ("skew hit c", 1.0)):
        handler.handle(_record(message, created))
    handler.close()
    matches = [*MATCHES, ("search", "skew", 1), ("query", {"message": {"$regex": "hit"}}, 1)]
    run = _run(tmp_path, matches)
    assert run["pools"] == []
    for (kind, arg, _), result in zip(matches, run["results"], strict=True):
        assert result["forked"] == result["serial"] == result["reader"], (kind, arg)
    assert [e["message"] for e in run["results"][-2]["serial"]] == ["skew other"]
    assert len(run["results"][0]["serial"]) == 2 * 11


def test_encrypted_segments_are_decrypted_by_the_parent(tmp_path: Path, logger_name: str) -> None:
    key = generate_key()
    write_log(tmp_path, logger_name, 400, max_bytes=12_000, encryption_key=key)
    matches: list[tuple[str, Any, int | None]] = [
        ("search", "event 12", None), ("query", {"metadata.user": "u2"}, 5)]
    run = _run(tmp_path, matches, key)
    for result in run["results"]:
        assert result["forked"] == result["serial"] == result["reader"]
        assert result["serial"] and all(e["encrypted"] for e in result["serial"])
    keyless = _run(tmp_path, matches)
    for result in keyless["results"]:
        assert result["forked"] == result["serial"]
        # The reader yields undecrypted entries; query_entries/search_entries, which see
        # no file name, raise their own KeyUnavailableError for the same entry.
        assert result["serial"].startswith("KeyUnavailableError: cannot decrypt entry at file")
        assert result["reader"].startswith("KeyUnavailableError: cannot decrypt entry at seq 1:")


def test_keyless_clear_field_queries_match_encrypted_entries(
    tmp_path: Path, logger_name: str
) -> None:
    write_log(tmp_path, logger_name, 400, max_bytes=12_000, encryption_key=generate_key())
    matches: list[tuple[str, Any, int | None]] = [
        ("query", {"seq": {"$gt": 300, "$lte": 305}}, None),
        ("query", {"level": "INFO", "logger": logger_name}, 7),
        ("query", {"$or": [{"seq": 2}, {"metadata.user": "u2"}]}, None),
        ("search", "event 1", None),
    ]
    keyless = _run(tmp_path, matches)["results"]
    for result in keyless[:2]:
        assert result["forked"] == result["serial"] == result["reader"]
        assert all("enc" in e and "message" not in e for e in result["serial"])
    assert [e["seq"] for e in keyless[0]["serial"]] == [301, 302, 303, 304, 305]
    assert [e["seq"] for e in keyless[1]["serial"]] == [1, 2, 3, 4, 5, 6, 7]
    for result in keyless[2:]:  # they need message/metadata: never a silent "no match"
        assert result["forked"] == result["serial"]
        assert result["serial"].startswith("KeyUnavailableError")
        assert result["reader"].startswith("KeyUnavailableError")


def test_unreadable_segment_raises_what_the_serial_reader_raises(
    tmp_path: Path, logger_name: str
) -> None:
    write_log(tmp_path, logger_name, 400, max_bytes=12_000)
    damaged = list_segments(list_streams(tmp_path / "default")[0])[1].path
    data = damaged.read_bytes()
    damaged.chmod(0o600)
    damaged.write_bytes(data[: len(data) // 2])
    run = _run(tmp_path, [("search", "event", None), ("query", {"level": "INFO"}, None)])
    for result in run["results"]:
        assert result["forked"] == result["serial"]
        assert result["serial"].startswith("SegmentReadError") and str(damaged) in result["serial"]


def test_bad_input_is_a_query_error(tmp_path: Path) -> None:
    with pytest.raises(QueryError):
        TextSearch("")
    with pytest.raises(QueryError):
        DocumentQuery({"level": {"$bogus": 1}})
    with pytest.raises(QueryError):
        DocumentQuery(["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(QueryError):
        find_entries(tmp_path, "default", TextSearch("x"), limit=-1)
    assert find_entries(tmp_path, "default", TextSearch("x")) == []  # no log yet


_DAMAGE_RUN = """
import json, sys
from immutable_logging.matching import TextSearch, find_entries
out = {}
for label, workers in (("serial", 1), ("forked", 2)):
    damage = []
    found = find_entries(sys.argv[1], "default", TextSearch("event 3"), workers=workers,
                         damage=damage)
    out[label] = {"seqs": [e["seq"] for e in found], "damage": [str(d) for d in damage]}
print(json.dumps(out))
"""


def test_a_damaged_line_in_a_sealed_segment_is_reported_by_forked_scans_too(
    tmp_path: Path, logger_name: str
) -> None:
    """A worker process cannot hand its damage list back: the segment is scanned again in
    the parent, which records it."""
    import gzip

    write_log(tmp_path, logger_name, 600, max_bytes=12_000)
    sealed = list_segments(list_streams(tmp_path / "default")[0])[1]
    assert sealed.compressed
    lines = gzip.decompress(sealed.path.read_bytes()).splitlines(keepends=True)
    seq = json.loads(lines[3])["seq"]
    lines[3] = lines[3].replace(b'"message"', b'{message"', 1)
    sealed.path.chmod(0o644)
    sealed.path.write_bytes(gzip.compress(b"".join(lines)))
    done = subprocess.run([sys.executable, "-c", _DAMAGE_RUN, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["forked"] == result["serial"]
    assert result["serial"]["damage"] == [
        f"{sealed.path}, seq {seq}: the line is not a JSON entry"]
    assert seq not in result["serial"]["seqs"] and len(result["serial"]["seqs"]) > 10


def test_forked_scans_end_with_the_journal_of_a_killed_writer(
    tmp_path: Path, logger_name: str
) -> None:
    """The journal's entries follow the sealed segments the workers scanned: the parent
    takes where the chain stands from the last worker's segment (the active one is empty:
    its entries are only in the journal)."""
    stream_dir = write_log_and_kill(tmp_path, logger_name, 200, max_bytes=6_000)
    segments = list_segments(stream_dir)
    assert len(segments) >= 4 and segments[-1].path.stat().st_size == 0
    matches: list[tuple[str, Any, int | None]] = [
        ("query", {"metadata.index": {"$gte": 195}}, None),
        ("search", "event 19", None),
        ("search", "event", 200),
    ]
    run = _run(tmp_path, matches)
    assert run["pools"] == [2] * len(matches)
    for (kind, arg, _), result in zip(matches, run["results"], strict=True):
        assert result["forked"] == result["serial"] == result["reader"], (kind, arg)
    late, nineteen, every = (r["serial"] for r in run["results"])
    assert [e["seq"] for e in late] == [196, 197, 198, 199, 200]
    assert [e["metadata"]["index"] for e in nineteen] == [19, *range(190, 200)]
    assert [e["seq"] for e in every] == list(range(1, 201))
