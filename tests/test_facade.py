"""The seed's validation cases, through the ImmutableLogger facade."""

from __future__ import annotations

import itertools
import logging
import re
import threading
from pathlib import Path

import pytest

from immutable_logging import ImmutableLogger
from immutable_logging.crypto import Key, Keyring, decode_key_b64, generate_key
from immutable_logging.errors import (
    DecryptionError,
    ImmutableLogError,
    InvalidTenantError,
    KeyUnavailableError,
    QueryError,
)
from immutable_logging.layout import list_segments, list_streams

from .helpers import read_lines, write_lines, write_log_and_kill


@pytest.fixture
def log(tmp_path: Path) -> ImmutableLogger:
    logger = ImmutableLogger(tmp_path, tenantId="acme")
    yield logger  # type: ignore[misc]
    logger.shutdown()


def test_basic_logging_all_levels(log: ImmutableLogger) -> None:
    for method in ("info", "warn", "error", "critical", "audit", "security", "revenue", "system"):
        getattr(log, method)(f"{method} message", {"kind": method})
    entries = log.read()
    assert [e["level"] for e in entries] == [
        "INFO", "WARNING", "ERROR", "CRITICAL", "AUDIT", "SECURITY", "REVENUE", "SYSTEM",
    ]
    assert entries[0]["message"] == "info message"
    assert entries[0]["metadata"] == {"kind": "info"}
    assert entries[0]["tenant"] == "acme"
    assert entries[0]["func"] == "test_basic_logging_all_levels"
    assert [e["seq"] for e in entries] == list(range(1, 9))


def test_chain_verifies(log: ImmutableLogger) -> None:
    for i in range(50):
        log.info(f"entry {i}")
    report = log.verify()
    assert report.ok and report.entries == 50
    entries = log.read(limit=None)
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))


def test_tamper_is_detected(log: ImmutableLogger, tmp_path: Path) -> None:
    for i in range(10):
        log.revenue("payment", {"amount": i})
    log.handler.flush()
    stream = list_streams(tmp_path / "acme")[0]
    path = list_segments(stream)[-1].path
    lines = read_lines(path)
    lines[4] = lines[4].replace(b'"amount":4', b'"amount":9')
    write_lines(path, lines)
    report = log.verify()
    assert not report.ok
    assert [(p.reason, p.seq, p.file) for p in report.problems] == [
        ("hash_mismatch", 5, str(path))
    ]


def test_search(log: ImmutableLogger) -> None:
    log.info("User login", {"user": "Alice"})
    log.info("User logout", {"user": "bob"})
    log.error("Payment failed", {"reason": "card declined"})
    assert [e["message"] for e in log.search("user")] == ["User login", "User logout"]
    assert [e["message"] for e in log.search("DECLINED")] == ["Payment failed"]
    assert [e["message"] for e in log.search("alice")] == ["User login"]
    assert log.search("Alice", case_sensitive=True)[0]["metadata"]["user"] == "Alice"
    assert log.search("nothing-like-this") == []
    with pytest.raises(QueryError):
        log.search("")


def test_query_operators(log: ImmutableLogger) -> None:
    for amount in (10, 500, 1000, 2500):
        log.revenue("sale", {"amount": amount, "tags": ["web", f"t{amount}"], "sku": f"S-{amount}"})
    log.info("not revenue", {"amount": 5000})

    def amounts(doc: dict[str, object]) -> list[int]:
        return [e["metadata"]["amount"] for e in log.query(doc)]

    assert amounts({"level": "REVENUE", "metadata.amount": {"$gte": 1000}}) == [1000, 2500]
    assert amounts({"level": "REVENUE", "metadata.amount": {"$gt": 10, "$lt": 2500}}) == [500, 1000]
    assert amounts({"metadata.amount": {"$lte": 500}}) == [10, 500]
    assert amounts({"metadata.amount": {"$eq": 2500}}) == [2500]
    assert amounts({"level": {"$ne": "REVENUE"}}) == [5000]
    assert amounts({"metadata.amount": {"$in": [10, 5000]}}) == [10, 5000]
    assert amounts({"metadata.tags": {"$contains": "t500"}}) == [500]
    assert amounts({"message": {"$contains": "not"}}) == [5000]
    assert amounts({"metadata.sku": {"$regex": r"^S-\d{4}$"}}) == [1000, 2500]
    assert amounts({"metadata.missing": {"$exists": False}, "level": "INFO"}) == [5000]
    assert amounts({"$or": [{"metadata.amount": 10}, {"metadata.amount": 5000}]}) == [10, 5000]
    for bad in ({"metadata.amount": {"$bogus": 1}}, {"x": {"$in": 5}}, {"x": {"$regex": "("}}):
        with pytest.raises(QueryError):
            log.query(bad)


def test_rotation_keeps_everything_readable_and_verifiable(tmp_path: Path) -> None:
    with ImmutableLogger(tmp_path, tenantId="rot", max_bytes=4_000) as log:
        for i in range(300):
            log.info(f"rotating {i}", {"i": i})
        assert len(list_segments(list_streams(tmp_path / "rot")[0])) > 5
        assert len(log.read(limit=None)) == 300
        assert log.verify().ok


def test_multi_tenant_isolation(tmp_path: Path) -> None:
    a = ImmutableLogger(tmp_path, tenantId="tenant-a")
    b = ImmutableLogger(tmp_path, tenantId="tenant-b")
    a.info("secret of a", {"k": "a"})
    b.info("secret of b", {"k": "b"})
    assert [e["message"] for e in a.read()] == ["secret of a"]
    assert [e["message"] for e in b.search("secret")] == ["secret of b"]
    assert a.stats()["total_entries"] == 1
    assert (tmp_path / "tenant-a").is_dir() and (tmp_path / "tenant-b").is_dir()
    # Damage in tenant b does not make tenant a fail verification.
    b.handler.flush()
    path = list_segments(list_streams(tmp_path / "tenant-b")[0])[-1].path
    write_lines(path, [read_lines(path)[0].replace(b"secret", b"public")])
    assert a.verify().ok and not b.verify().ok
    a.shutdown()
    b.shutdown()
    with pytest.raises(InvalidTenantError):
        ImmutableLogger(tmp_path, tenantId="../tenant-a")


def test_stats(log: ImmutableLogger) -> None:
    log.info("a")
    log.info("b")
    log.audit("c")
    stats = log.stats()
    assert stats["total_entries"] == 3
    assert stats["by_level"] == {"INFO": 2, "AUDIT": 1}
    assert stats["last_seq"] == 3
    assert stats["segments"] == 1 and stats["bytes_on_disk"] > 0
    assert stats["handler_errors"] == 0
    assert stats["first_timestamp"] <= stats["last_timestamp"]


def test_concurrency_8_threads_x_5000(log: ImmutableLogger) -> None:
    def work(t: int) -> None:
        for i in range(5000):
            log.info("concurrent", {"t": t, "i": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = log.verify()
    assert report.ok and report.entries == 40_000
    pairs = {(e["metadata"]["t"], e["metadata"]["i"]) for e in log.read(limit=None)}
    assert len(pairs) == 40_000


def test_read_filters(log: ImmutableLogger) -> None:
    for i in range(10):
        log.info(f"info {i}")
        if i % 3 == 0:
            log.audit(f"audit {i}")
    assert [e["message"] for e in log.read(level="AUDIT")] == [
        "audit 0", "audit 3", "audit 6", "audit 9",
    ]
    assert [e["message"] for e in log.read(limit=2, level="audit")] == ["audit 0", "audit 3"]
    assert [e["message"] for e in log.read(limit=2, offset=1, level="AUDIT")] == [
        "audit 3", "audit 6",
    ]
    assert [e["message"] for e in log.read(limit=3, newest_first=True)] == [
        "audit 9", "info 9", "info 8",
    ]
    assert len(log.read(limit=None)) == 14
    with pytest.raises(QueryError):
        log.read(limit=-1)


def test_performance_smoke_10k(log: ImmutableLogger) -> None:
    """The seed's performance case; timing targets live in benchmarks/, not here."""
    for i in range(10_000):
        log.info("perf", {"i": i})
    assert log.verify().entries == 10_000
    assert len(log.search("perf", limit=5)) == 5


def test_non_mapping_metadata_is_kept(log: ImmutableLogger) -> None:
    log.info("odd", [1, 2])  # type: ignore[arg-type]
    assert log.read()[0]["metadata"] == {"value": [1, 2]}


def test_shutdown_is_idempotent(tmp_path: Path) -> None:
    log = ImmutableLogger(tmp_path)
    log.info("x")
    log.shutdown()
    log.shutdown()
    assert [e["message"] for e in log.read()] == ["x"]


def test_verify_with_seal_seed_reports_the_validated_span(tmp_path: Path) -> None:
    from immutable_logging.seal import encode_seed, generate_seed

    from .seal_helpers import ClockFilter, FakeClock

    clock = FakeClock()
    seed = encode_seed(generate_seed())
    log = ImmutableLogger(tmp_path, tenantId="sealed", seal_seed=seed, seal_epoch_seconds=60,
                          seal_clock=clock)
    log.logger.addFilter(ClockFilter(clock))
    for minute in range(5):
        log.audit(f"minute {minute}")
        clock.advance(60)
    log.audit("not sealed yet")
    report = log.verify(seed=seed)
    assert report.ok, report.problems
    stream = report.streams[0]
    assert stream.sealed_from is not None and stream.sealed_to is not None
    assert stream.sealed_to - stream.sealed_from >= 4 * 60
    assert stream.unsealed_trailing == 1
    assert not log.verify(seed=encode_seed(generate_seed())).ok  # the wrong seed
    log.shutdown()


def test_search_and_query_limits(tmp_path: Path) -> None:
    with ImmutableLogger(tmp_path) as log:
        for i in range(5):
            log.info(f"hello {i}", {"i": i})
        assert log.search("hello", limit=0) == [] and log.query({"metadata.i": 1}, limit=0) == []
        assert [e["message"] for e in log.search("hello", limit=2)] == ["hello 0", "hello 1"]
        assert len(log.search("hello", workers=1)) == 5
        for bad in (-1, 1.5):
            with pytest.raises(QueryError):
                log.search("hello", limit=bad)  # type: ignore[arg-type]
            with pytest.raises(QueryError):
                log.query({"metadata.i": 1}, limit=bad)  # type: ignore[arg-type]


def test_logging_after_shutdown_raises_naming_the_logger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = ImmutableLogger(tmp_path, tenantId="closed")
    log.info("before", {"n": 1})
    log.shutdown()
    calls = [getattr(log, name) for name in (
        "debug", "info", "warn", "warning", "error", "critical", "audit", "security",
        "revenue", "system")]
    calls.append(lambda message, metadata=None: log.log(logging.ERROR, message, metadata))
    for call in calls:
        with pytest.raises(ImmutableLogError, match=re.escape(repr(log.logger.name))):
            call("after", {"n": 2})
    assert capsys.readouterr().err == ""  # nothing went to logging's lastResort either
    log.shutdown()  # still idempotent
    # Reading works from disk after shutdown, and nothing after it was written.
    assert [e["message"] for e in log.read()] == ["before"]
    assert [e["message"] for e in log.query({"metadata.n": {"$gte": 1}})] == ["before"]
    assert log.stats()["total_entries"] == 1
    assert log.verify().ok


def _write_encrypted(directory: Path, key: str) -> None:
    with ImmutableLogger(directory, tenantId="enc", encryption_key=key) as log:
        log.info("hello", {"user": "ann"})
        log.revenue("sale", {"amount": 1250})
        log.audit("login", {"user": "bob"})
        log.revenue("refund", {"amount": -50})
        log.error("boom")


def test_keyless_stats_read_and_level_query_on_an_encrypted_log(tmp_path: Path) -> None:
    key = generate_key()
    _write_encrypted(tmp_path, key)
    for options in ({}, {"allow_cleartext": True}):  # no key (reading needs no opt-in)
        with ImmutableLogger(tmp_path, tenantId="enc", **options) as log:
            stats = log.stats()
            assert stats["total_entries"] == 5
            assert stats["by_level"] == {"INFO": 1, "REVENUE": 2, "AUDIT": 1, "ERROR": 1}
            revenue = log.read(level="REVENUE")
            assert [e["seq"] for e in revenue] == [2, 4]
            assert all("message" not in e and e["enc"].startswith("A256GCM.") for e in revenue)
            assert [e["seq"] for e in log.read(level=26, newest_first=True)] == [4, 2]
            assert [e["seq"] for e in log.query({"level": "REVENUE"})] == [2, 4]
            assert [e["seq"] for e in log.query({"level": {"$in": ["AUDIT", "ERROR"]},
                                                 "seq": {"$gt": 3}})] == [5]
            assert len(log.read()) == 5
            for document in ({"message": "sale"}, {"level": "REVENUE", "metadata.amount": 1}):
                with pytest.raises(KeyUnavailableError):
                    log.query(document)
            with pytest.raises(KeyUnavailableError):
                log.search("sale")
    # A reader given keys never returns entries it silently left encrypted: a keyring
    # without the entries' key id is an error, not "no key".
    with ImmutableLogger(tmp_path, tenantId="enc", encryption_key=generate_key()) as log:
        for action in (log.stats, log.read, lambda: log.query({"level": "REVENUE"})):
            with pytest.raises(KeyUnavailableError):
                action()
    with ImmutableLogger(tmp_path, tenantId="enc", encryption_key=key) as log:
        assert [e["message"] for e in log.query({"level": "REVENUE"})] == ["sale", "refund"]
        assert log.stats()["by_level"]["REVENUE"] == 2
    # The entries' key id with other key material: authentication fails, never skipped.
    impostor = Keyring([Key(b"\x01" * 32, kid=Key(decode_key_b64(key)).kid)])
    with ImmutableLogger(tmp_path, tenantId="enc", encryption_key=impostor) as log:
        for action in (log.stats, lambda: log.read(level="REVENUE"),
                       lambda: log.query({"level": "REVENUE"}), lambda: log.search("sale")):
            with pytest.raises(DecryptionError) as error:
                action()
            assert not isinstance(error.value, KeyUnavailableError) and error.value.seq == 1


def _log_directly(log: ImmutableLogger) -> None:
    log.log(logging.WARNING, "direct")  # the call site to record


def test_log_exception_and_a_bad_level_behave_like_the_level_methods(tmp_path: Path) -> None:
    """Found by the API audit: log() recorded its caller's caller, there was no way to
    record an exception, and a bad level left the handler (and its stream) open."""
    with pytest.raises(ValueError, match="bogus"):
        ImmutableLogger(tmp_path, tenantId="f", level="bogus")
    with ImmutableLogger(tmp_path, tenantId="f") as log:
        _log_directly(log)
        try:
            raise KeyError("missing")
        except KeyError:
            log.exception("lookup failed", {"key": "missing"})
        direct, failed = log.read()
    assert (direct["func"], direct["level"]) == ("_log_directly", "WARNING")
    assert failed["func"] == "test_log_exception_and_a_bad_level_behave_like_the_level_methods"
    assert failed["level"] == "ERROR" and "KeyError: 'missing'" in failed["exc"]
    assert [p.name for p in (tmp_path / "f").iterdir() if p.is_dir()] == ["vm.0"]


def test_creating_a_facade_does_not_add_logger_methods() -> None:
    """The README: Logger.audit() and the like come only from an explicit install()."""
    import subprocess
    import sys

    script = ("import logging, tempfile\n"
              "from immutable_logging import ImmutableLogger\n"
              "with ImmutableLogger(tempfile.mkdtemp(), level='AUDIT') as log:\n"
              "    log.audit('kept')\n"
              "    assert len(log.read()) == 1\n"
              "print(hasattr(logging.Logger, 'audit'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "False", "")


def test_reads_name_what_they_leave_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from immutable_logging.layout import list_segments, list_streams

    with ImmutableLogger(tmp_path, tenantId="dmg") as log:
        for i in range(4):
            log.info(f"paid {i}")
        log.handler.flush()
        segment = list_segments(list_streams(tmp_path / "dmg")[0])[0].path
        lines = segment.read_bytes().splitlines(keepends=True)
        lines[1] = b'{"seq":2,"message":"paid 1"\n'  # cut short: no JSON any more
        segment.write_bytes(b"".join(lines))
        with caplog.at_level(logging.WARNING, "immutable_logging.read"):
            assert [e["message"] for e in log.read()] == ["paid 0", "paid 2", "paid 3"]
        assert [str(d) for d in log.last_read_damage] == [
            f"{segment}, seq 2: the line is not a JSON entry"]
        assert "1 damaged lines or unreadable segments of tenant 'dmg' were left out" in (
            caplog.text)
        assert len(log.search("paid")) == 3 and len(log.last_read_damage) == 1
        assert log.stats()["total_entries"] == 3 and len(log.last_read_damage) == 1
        assert len(log.query({"message": {"$regex": "^paid"}})) == 3  # no pre-filter
        assert len(log.last_read_damage) == 1
        log.query({"level": "INFO"})  # the damaged line lacks it: it could not have matched
        assert log.last_read_damage == []


def test_reads_include_what_a_killed_process_left_in_its_journal(
    tmp_path: Path, logger_name: str
) -> None:
    key = generate_key()
    # 20 entries reached the segment; the other 10 were only in the journal at the kill.
    write_log_and_kill(tmp_path, logger_name, 30, stream="app", written=20,
                       encryption_key=key)
    # This logger writes its own stream: "app" stays as the killed process left it.
    with ImmutableLogger(tmp_path, encryption_key=key) as log:
        entries = log.read(limit=None)
        assert [e["metadata"]["index"] for e in entries] == list(range(30))
        assert {e["stream"] for e in entries} == {"app"} and all(e["encrypted"] for e in entries)
        assert [e["seq"] for e in log.search("event 2")] == [3, *range(21, 31)]
        assert [e["message"] for e in log.query({"metadata.index": {"$gte": 28}})] == [
            "event 28", "event 29"]
        stats = log.stats()
        assert (stats["total_entries"], stats["by_stream"]) == (30, {"app": 30})
        assert log.last_read_damage == []
