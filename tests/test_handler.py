from __future__ import annotations

import io
import logging
import logging.config
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from immutable_logging import ImmutableHandler, install
from immutable_logging.crypto import generate_key
from immutable_logging.errors import ConfigurationError, InvalidTenantError
from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger


def test_dictconfig_with_custom_levels(tmp_path: Path, logger_name: str) -> None:
    install()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "chain": {
                    "class": "immutable_logging.ImmutableHandler",
                    "directory": str(tmp_path),
                    "tenant": "acme",
                    "level": "INFO",
                    "durability": "flush",
                }
            },
            "loggers": {logger_name: {"handlers": ["chain"], "level": "DEBUG", "propagate": False}},
        }
    )
    logger = logging.getLogger(logger_name)
    logger.debug("below the handler level")
    logger.info("login %s", "alice", extra={"ip": "10.0.0.1"})
    logger.audit("role changed", extra={"role": "admin"})  # type: ignore[attr-defined]
    logger.handlers[0].flush()
    entries = list(iter_entries(tmp_path, "acme"))
    assert [(e["level"], e["message"]) for e in entries] == [
        ("INFO", "login alice"),
        ("AUDIT", "role changed"),
    ]
    assert entries[0]["metadata"] == {"ip": "10.0.0.1"}
    assert entries[1]["func"] == "test_dictconfig_with_custom_levels"
    assert verify_tenant(tmp_path, "acme").ok


def test_handler_never_raises_and_counts_errors(
    tmp_path: Path, logger_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = ImmutableHandler(tmp_path)
    logger = _logger(logger_name, handler)
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)

    def broken(payload: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(handler.writer, "append", broken)
    logger.info("lost?")
    assert handler.error_count == 1
    assert "disk full" in stderr.getvalue(), "the failure must be reported, not swallowed"
    monkeypatch.undo()
    logger.info("after")
    handler.close()
    assert [e["message"] for e in iter_entries(tmp_path)] == ["after"]


def test_own_and_cloud_client_loggers_never_feed_back(tmp_path: Path, logger_name: str) -> None:
    handler = ImmutableHandler(tmp_path)
    root_child = _logger(logger_name, handler)
    for name in ("immutable_logging.replication", "botocore.hooks", "urllib3.connectionpool",
                 "google.auth", "boto3", "s3transfer.tasks"):
        other = _logger(name, handler)
        other.info("noise from %s", name)
        other.removeHandler(handler)
    root_child.info("kept")
    _logger("googleapis_client_of_app", handler).info("app logger with similar prefix")
    handler.close()
    assert [e["message"] for e in iter_entries(tmp_path)] == [
        "kept",
        "app logger with similar prefix",
    ]


def test_eight_threads_times_5000_records(tmp_path: Path, logger_name: str) -> None:
    handler = ImmutableHandler(tmp_path, durability="none")
    logger = _logger(logger_name, handler)

    def work(t: int) -> None:
        for i in range(5000):
            logger.info("t%d i%d", t, i, extra={"t": t, "i": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler.close()
    report = verify_tenant(tmp_path)
    assert report.ok and report.entries == 40_000
    seen = {(e["metadata"]["t"], e["metadata"]["i"]) for e in iter_entries(tmp_path)}
    assert len(seen) == 40_000


def test_invalid_tenant_rejected_at_construction(tmp_path: Path) -> None:
    with pytest.raises(InvalidTenantError):
        ImmutableHandler(tmp_path, "../other")


def test_emit_after_close_reopens_like_filehandler(tmp_path: Path, logger_name: str) -> None:
    handler = ImmutableHandler(tmp_path)
    logger = _logger(logger_name, handler)
    logger.info("one")
    handler.close()
    logger.info("two")
    handler.close()
    assert [e["message"] for e in iter_entries(tmp_path)] == ["one", "two"]
    assert verify_tenant(tmp_path).ok


_LOG_FROM_DEL = """
import logging, sys
from immutable_logging import ImmutableHandler
from immutable_logging.crypto import generate_key
from immutable_logging.seal import generate_seed

handler = ImmutableHandler(sys.argv[1], tenant="app", max_bytes=600, seal_seed=generate_seed(),
                           encryption_key=generate_key() if sys.argv[2] == "enc" else None,
                           durability=sys.argv[3])
logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)

class Connection:
    def __del__(self):
        logging.getLogger("db").info("connection closed")

conn = Connection()  # collected at interpreter shutdown, after logging.shutdown()
for i in range(5):
    logging.info("work %d", i)
"""


@pytest.mark.parametrize(("encryption", "durability"),
                         [("plain", "flush"), ("enc", "group"), ("plain", "none")])
def test_a_record_logged_at_interpreter_shutdown_is_chained(
    tmp_path: Path, encryption: str, durability: str
) -> None:
    """logging.shutdown() closes the handler at exit; a __del__ that logs afterwards made
    it reopen the stream while the interpreter finalized: the new flusher thread never
    started (Python 3.11 hangs in Thread.start()), and reading the last segment found no
    builtin open(). FileHandler writes such a record: so do we, in the same stream."""
    script = _LOG_FROM_DEL
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), encryption,
                           durability], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    stream = tmp_path / "app" / "vm.0"
    assert sorted(p.name for p in (tmp_path / "app").iterdir() if p.is_dir()) == ["vm.0"]
    assert any(p.name.endswith(".gz") for p in stream.iterdir())  # rotated and reopened
    entries = [e for e in iter_entries(tmp_path, "app") if "message" in e or "enc" in e]
    assert len(entries) == 6 and entries[-1]["logger"] == "db"
    report = verify_tenant(tmp_path, "app")
    assert report.ok, report.problems


_LOG_FROM_EARLY_ATEXIT = """
import atexit, sys
atexit.register(lambda: logging.getLogger("app").info("from an early atexit hook"))
import logging  # its shutdown hook runs before the one registered above
from immutable_logging import ImmutableHandler

handler = ImmutableHandler(sys.argv[1], durability=sys.argv[2])
logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
logging.getLogger("app").info("work")
"""


@pytest.mark.parametrize("durability", ["none", "group", "flush", "always"])
def test_a_record_logged_after_logging_shutdown_is_written(
    tmp_path: Path, durability: str
) -> None:
    """Found by the concurrency audit: a record logged after logging.shutdown() (an atexit
    hook registered before logging was imported) reopened a buffered writer that nothing
    closed: with none/group it was lost, with flush it stayed in the journal only."""
    done = subprocess.run([sys.executable, "-c", _LOG_FROM_EARLY_ATEXIT, str(tmp_path),
                           durability], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    messages = [e["message"] for e in iter_entries(tmp_path) if "message" in e]
    assert messages == ["work", "from an early atexit hook"]
    report = verify_tenant(tmp_path)
    assert report.ok and not report.warnings, (report.problems, report.warnings)


def test_a_record_logged_during_close_neither_waits_nor_is_lost(
    tmp_path: Path, logger_name: str
) -> None:
    """close() marks the writer closed before it releases the stream. A thread logging in
    between must not wait for close() (which ships and signs for seconds, and whose own
    warnings may need that thread's locks: a deadlock), nor lose its record: it goes to a
    writer of its own, which the next close() closes."""
    handler = ImmutableHandler(tmp_path)
    logger = _logger(logger_name, handler)
    logger.info("before")
    writer = handler.writer
    drain = writer._compressor.drain  # runs after the writer is closed, before the release
    logged = threading.Event()

    def drain_while_another_thread_logs(timeout: float | None = None) -> None:
        thread.start()
        assert logged.wait(5)  # the logging thread did not wait for this close()
        drain(timeout)

    def log_during_close() -> None:
        logger.info("during close")
        logged.set()

    thread = threading.Thread(target=log_during_close)
    writer._compressor.drain = drain_while_another_thread_logs  # type: ignore[method-assign]
    before = set(threading.enumerate())
    handler.close()
    thread.join(5)
    assert handler.writer is not writer and not handler.writer.closed
    handler.close()
    assert [t for t in threading.enumerate() if t not in before and t is not thread] == []
    assert sorted(e["message"] for e in iter_entries(tmp_path)) == ["before", "during close"]
    assert handler.error_count == 0
    assert verify_tenant(tmp_path).ok


def test_handle_keeps_filters_lock_and_result_of_logging_handler(
    tmp_path: Path, logger_name: str
) -> None:
    handler = ImmutableHandler(tmp_path)
    reference = logging.StreamHandler(io.StringIO())
    record = logging.LogRecord(logger_name, logging.INFO, __file__, 1, "kept", None, None)
    assert handler.handle(record) == reference.handle(record)  # no filters: the fast path
    # emit runs under the handler lock, like logging.Handler.handle: a holder blocks it
    handler.acquire()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (handler.handle(record), done.set()))
    thread.start()
    assert not done.wait(0.2)
    handler.release()
    thread.join(5)
    assert done.is_set()
    dropped = logging.LogRecord(logger_name, logging.INFO, __file__, 2, "dropped", None, None)
    for h in (handler, reference):
        h.addFilter(lambda r: r.getMessage() != "dropped")
    assert handler.handle(dropped) == reference.handle(dropped)
    assert handler.handle(record) == reference.handle(record)
    handler.close()
    assert [e["message"] for e in iter_entries(tmp_path)] == ["kept", "kept", "kept"]


def test_a_subclass_filter_method_is_honoured(tmp_path: Path, logger_name: str) -> None:
    class Redacting(ImmutableHandler):
        def filter(self, record: logging.LogRecord) -> bool:
            return "secret" not in record.getMessage()

    handler = Redacting(tmp_path)
    logger = _logger(logger_name, handler)
    logger.info("a secret value")
    logger.info("public")
    handler.close()
    assert [e["message"] for e in iter_entries(tmp_path)] == ["public"]


def test_a_failed_constructor_leaves_nothing_behind_at_exit(tmp_path: Path) -> None:
    # logging registers every handler at Handler.__init__ and flushes and closes it at
    # exit: a half-built one (bad settings) used to print an AttributeError traceback.
    script = (
        "import sys\n"
        "from immutable_logging import ImmutableHandler, ImmutableLogger\n"
        "from immutable_logging.errors import ConfigurationError\n"
        "kept = []  # the tracebacks keep the half-built handlers alive until exit\n"
        "for make in (lambda: ImmutableLogger(sys.argv[1], max_bytes=-5),\n"
        "             lambda: ImmutableHandler(sys.argv[1], max_age=0)):\n"
        "    try:\n"
        "        make()\n"
        "    except ConfigurationError as exc:\n"
        "        kept.append(exc)\n"
        "        print('refused:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    assert done.stdout.count("refused:") == 2
    assert done.stderr == ""


def test_an_encrypted_tenant_opened_without_its_key_refuses_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key missing at a restart (an unset environment variable) must not silently turn
    encryption off: nothing is written in clear, and every refusal is reported."""
    key = generate_key()
    first = ImmutableHandler(tmp_path, "acme", encryption_key=key)
    first.handle(logging.LogRecord("t.enc", logging.INFO, __file__, 1, "secret", None, None))
    first.close()
    assert first.error_count == 0 and first.cleartext_refusal is None

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in (tmp_path / "acme").glob("*/*.log"))

    before = on_disk()
    keyless = ImmutableHandler(tmp_path, "acme")
    assert "holds encrypted entries" in (keyless.cleartext_refusal or "")
    for text in ("in clear 1", "in clear 2"):
        keyless.handle(logging.LogRecord("t.enc", logging.INFO, __file__, 1, text, None, None))
    keyless.close()
    assert keyless.error_count == 2
    assert capsys.readouterr().err.count("holds encrypted entries") >= 2
    assert on_disk() == before  # the refused entries left no trace
    assert verify_tenant(tmp_path, "acme").ok

    ImmutableHandler(tmp_path, "other").close()  # a tenant without encrypted entries
    assert ImmutableHandler(tmp_path, "acme", encryption_key=key).cleartext_refusal is None
    deliberate = ImmutableHandler(tmp_path, "acme", allow_cleartext=True)
    deliberate.handle(logging.LogRecord("t.enc", logging.INFO, __file__, 1, "in clear", None,
                                        None))
    deliberate.close()
    assert deliberate.error_count == 0
    assert b'"message":"in clear"' in on_disk()
    assert verify_tenant(tmp_path, "acme").ok


def test_a_passphrase_tenant_opened_without_its_passphrase_refuses_entries(
    tmp_path: Path,
) -> None:
    ImmutableHandler(tmp_path, "acme", encryption_passphrase="correct horse").close()
    keyless = ImmutableHandler(tmp_path, "acme")
    assert "holds encrypted entries" in (keyless.cleartext_refusal or "")
    keyless.close()


def test_our_own_loggers_never_wait_for_the_handler_lock(tmp_path: Path) -> None:
    # The journal flusher or the sealer thread logs while holding the writer's lock; an
    # application thread may hold the handler's lock while it waits for that writer lock.
    handler = ImmutableHandler(tmp_path)
    try:
        holding, release = threading.Event(), threading.Event()

        def app_thread() -> None:
            with handler.lock:  # type: ignore[union-attr]
                holding.set()
                release.wait(5.0)

        holder = threading.Thread(target=app_thread)
        holder.start()
        holding.wait()
        record = logging.LogRecord("immutable_logging.chain", logging.WARNING, __file__, 1,
                                   "writing the batch failed", None, None)
        done = threading.Event()
        ours = threading.Thread(target=lambda: (handler.handle(record), done.set()))
        ours.start()
        finished = done.wait(2.0)
        release.set()
        holder.join()
        ours.join()
        assert finished, "a record of our own logger waited for the handler lock"
    finally:
        handler.close()


@pytest.mark.parametrize("with_filter", [False, True])
def test_reopening_logs_only_after_our_locks_are_released(
    tmp_path: Path, logger_name: str, with_filter: bool
) -> None:
    # Opening the writer again (after close() or a fork) may log: here, a torn tail is
    # moved aside. Those records reach every handler on the root logger; one that forwards
    # to ours (a MemoryHandler held by another thread) would deadlock if they came while
    # our handler lock or open lock was held.
    handler = ImmutableHandler(tmp_path, durability="always")
    if with_filter:  # Handler.handle takes the lock itself: the path with filters
        handler.addFilter(lambda record: True)
    logger = _logger(logger_name, handler)
    logger.info("before the crash")
    handler.close()
    [segment] = (tmp_path / "default").glob("*/*.log")
    with open(segment, "ab") as torn:
        torn.write(b'{"seq":2,"prev":"')

    free_when_logged: list[tuple[str, bool, bool]] = []

    def lock_is_free(lock: threading.Lock | threading.RLock) -> bool:
        taken: list[bool] = []

        def try_lock() -> None:
            taken.append(lock.acquire(timeout=1.0))
            if taken[0]:
                lock.release()

        probe = threading.Thread(target=try_lock)
        probe.start()
        probe.join()
        return taken[0]

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name.startswith("immutable_logging"):
                free_when_logged.append((
                    record.getMessage(),
                    lock_is_free(handler.lock),  # type: ignore[arg-type]
                    lock_is_free(handler._open_lock),
                ))

    logging.getLogger().addHandler(Probe())
    logger.info("after the crash")
    handler.close()
    assert [m for m, _, _ in free_when_logged if "torn tail" in m], free_when_logged
    assert all(handler_free and open_free for _, handler_free, open_free in free_when_logged), (
        free_when_logged)
    assert [e.get("message") for e in iter_entries(tmp_path)
            if e.get("kind") != "recovery"] == ["before the crash", "after the crash"]


@pytest.mark.parametrize(("options", "message"), [
    ({"group_interval_ms": "ten"}, "group_interval_ms must be a positive number, got 'ten'"),
    ({"group_interval_ms": float("nan")}, "group_interval_ms must be a positive number"),
    ({"max_age": float("inf")}, "max_age must be a positive number"),
    ({"max_bytes": True}, "max_bytes must be an integer >= 0, got True"),
    ({"max_bytes": 1.5}, "max_bytes must be an integer >= 0, got 1.5"),
    ({"max_bytes": None}, "max_bytes must be an integer, got None"),
    ({"buffer_bytes": "0"}, "buffer_bytes must be an integer >= 1, got '0'"),
    ({"checkpoint_interval": "0"}, "checkpoint_interval must be a positive number"),
    ({"seal_epoch_seconds": -1}, "seal_epoch_seconds must be a positive number"),
    ({"allow_cleartext": "maybe"}, "allow_cleartext must be true or false, got 'maybe'"),
    ({"seal": "perhaps"}, "seal must be true or false"),
    ({"compress": 2}, "compress must be true or false, got 2"),
    ({"backup_batch_size": float("inf")}, "backup_batch_size must be an integer, got inf"),
    ({"backup_flush_interval": float("nan")}, "backup_flush_interval must be a positive"),
    ({"backup_stall_after": "soon"}, "backup_stall_after must be a positive"),
    ({"encryption_key": generate_key(), "previous_keys": ["not a key!"]}, "previous_keys[0]"),
])
def test_a_bad_option_value_is_a_configuration_error_naming_it(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        ImmutableHandler(tmp_path, **options)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_backup_stall_after_reaches_the_replicator(tmp_path: Path) -> None:
    handler = ImmutableHandler(tmp_path / "logs", enable_cloud_backup=True,
                               backup_directory=str(tmp_path / "bucket"),
                               backup_stall_after="0.25")  # as text, from a settings file
    try:
        assert handler.replicator is not None and handler.replicator.stall_after == 0.25
    finally:
        handler.close()


@pytest.mark.parametrize("options", [{}, {"encryption_passphrase": "pw"}, {"seal": True}])
def test_a_file_given_as_the_directory_is_a_configuration_error(
    tmp_path: Path, options: dict[str, object]
) -> None:
    """It was a bare NotADirectoryError from deep inside the stream set-up."""
    (tmp_path / "app.log").write_text("an old log file")
    for directory in (tmp_path / "app.log", tmp_path / "app.log" / "logs"):
        with pytest.raises(ConfigurationError, match="is a file, not a directory"):
            ImmutableHandler(directory, **options)  # type: ignore[arg-type]
    assert (tmp_path / "app.log").read_text() == "an old log file"


def test_options_given_as_text_mean_what_they_say(tmp_path: Path, logger_name: str) -> None:
    """dictConfig, Django and INI settings often hold text: "false" used to be true (a
    non-empty string), so allow_cleartext="false" wrote cleartext into an encrypted
    tenant, and "600" failed with a bare TypeError."""
    key = generate_key()
    encrypted = ImmutableHandler(tmp_path, "t", encryption_key=key)
    _logger(logger_name, encrypted).info("card 4111-1111-1111-1111")
    encrypted.close()
    logging.getLogger(logger_name).removeHandler(encrypted)
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"chain": {
            "class": "immutable_logging.ImmutableHandler", "directory": str(tmp_path),
            "tenant": "t", "allow_cleartext": "false", "level": "AUDIT",
            "max_bytes": "600", "compress": "false", "durability": "group",
            "group_interval_ms": "5",
        }},
        "loggers": {logger_name: {"handlers": ["chain"], "level": "DEBUG"}},
    })
    handler = logging.getLogger(logger_name).handlers[0]
    assert isinstance(handler, ImmutableHandler) and handler.cleartext_refusal is not None
    assert handler.level == 25
    writer = handler.writer
    assert (writer.compress, writer.max_bytes, writer.durability) == (False, 600, "group")
    handler.close()
    direct = ImmutableHandler(tmp_path / "direct", level="AUDIT",  # no install() needed
                              encryption_key=generate_key(), previous_keys=key)
    assert direct.level == 25 and direct.keyring is not None
    assert len(direct.keyring.kids) == 2  # one key given as text, not 44 characters
    direct.close()


def test_a_record_without_a_name_is_chained_not_raised(tmp_path: Path) -> None:
    """StreamHandler takes such a record (made by hand); handle() used to raise an
    AttributeError into the caller."""
    handler = ImmutableHandler(tmp_path)
    record = logging.makeLogRecord({"msg": "no name", "levelno": 20, "levelname": "INFO"})
    record.name = None  # type: ignore[assignment]
    handler.handle(record)
    handler.emit(record)
    record.name = b"bytes"  # type: ignore[assignment]
    handler.handle(record)
    handler.close()
    assert handler.error_count == 0
    assert [e["message"] for e in iter_entries(tmp_path)] == ["no name"] * 3


@pytest.mark.parametrize(("durability", "encrypted"), [
    ("flush", False), ("flush", True), ("none", False), ("group", False), ("always", False)])
def test_records_logged_by_a_signal_handler_are_chained_once_each(
    tmp_path: Path, logger_name: str, durability: str, encrypted: bool
) -> None:
    """Found by the concurrency audit: a SIGALRM handler that logs, firing while the main
    thread was inside the writer (rotating, writing a batch), forked the chain (two
    entries with one seq), wrote batches twice and, encrypted, left entries that did not
    decrypt."""
    import signal

    options: dict[str, object] = {"durability": durability, "max_bytes": 20_000}
    if encrypted:
        options["encryption_key"] = generate_key()
    handler = ImmutableHandler(tmp_path, **options)  # type: ignore[arg-type]
    log = _logger(logger_name, handler)
    ticks: list[int] = []
    busy: list[bool] = []

    def on_alarm(signum: int, frame: object) -> None:
        if busy:  # a signal storm on a slow machine must not nest handlers without end
            return
        busy.append(True)
        try:
            ticks.append(len(ticks))
            log.info("tick %d", ticks[-1])
        finally:
            busy.pop()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        for i in range(3000 if durability != "always" else 300):
            log.info("work %d", i)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    handler.close()
    assert ticks and handler.error_count == 0
    report = verify_tenant(tmp_path, decrypt=handler.decryptor if encrypted else None)
    assert report.ok, [str(p) for p in report.problems]
    messages = [e["message"] for e in iter_entries(tmp_path, decrypt=handler.decryptor)]
    works = [m for m in messages if m.startswith("work")]
    assert works == [f"work {i}" for i in range(len(works))] and len(works) in (300, 3000)
    assert sorted(m for m in messages if m.startswith("tick")) == sorted(
        f"tick {i}" for i in ticks)


def test_a_record_logged_while_its_thread_reopens_the_writer_does_not_deadlock(
    tmp_path: Path, logger_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal handler logging while its own thread reopened the writer (after close()
    or a fork) waited for the lock that thread held: a hang. It is refused instead,
    through handleError, and counted."""
    handler = ImmutableHandler(tmp_path)
    log = _logger(logger_name, handler)
    log.info("before")
    handler.close()
    open_writer = handler._open_writer

    def signal_arrives(reopening: bool = False) -> Any:
        log.info("from a signal handler")  # as if a signal arrived right now
        return open_writer(reopening)

    monkeypatch.setattr(handler, "_open_writer", signal_arrives)
    monkeypatch.setattr(logging, "raiseExceptions", False)  # handleError stays quiet
    done = threading.Event()
    worker = threading.Thread(target=lambda: (log.info("after"), done.set()), daemon=True)
    worker.start()
    assert done.wait(10), "deadlocked"
    handler.close()
    assert handler.error_count == 1
    assert [e["message"] for e in iter_entries(tmp_path)] == ["before", "after"]
