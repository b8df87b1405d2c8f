"""Forward-secure sealing wired into the chain: key state, the writer hook, the checker."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path

import orjson
import pytest

from immutable_logging.chain import ChainWriter
from immutable_logging.errors import ConfigurationError
from immutable_logging.handler import ImmutableHandler
from immutable_logging.layout import list_streams
from immutable_logging.query import iter_entries
from immutable_logging.seal import (
    decode_seed,
    derive_epoch_key,
    derive_stream_key,
    encode_seed,
    evolve_key,
    generate_seed,
)
from immutable_logging.sealing import (
    STREAM_STATE,
    TENANT_STATE,
    EpochGrid,
    StreamSealer,
    init_tenant_sealing,
    load_grid,
)
from immutable_logging.verify import verify_tenant

from .helpers import only_stream
from .seal_helpers import START, E, FakeClock, Keys, entries, log_epochs, open_handler


def seals(stream: Path) -> list[dict[str, object]]:
    return [e for e in entries(stream) if e.get("kind") == "seal"]


def test_keygen_state_holds_key_1_never_the_seed(tmp_path: Path) -> None:
    clock = FakeClock()
    seed, grid = init_tenant_sealing(tmp_path / "t", epoch_seconds=E, clock=clock)
    path = tmp_path / "t" / TENANT_STATE
    doc = json.loads(path.read_bytes())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert doc["epoch"] == 1 and doc["key"] == evolve_key(seed).hex()
    assert seed.hex() not in path.read_text()
    assert grid.t0 == START - E and grid.epoch_at(clock()) == 1
    assert grid.verifies(seed) and not grid.verifies(generate_seed())
    with pytest.raises(ConfigurationError, match="already exists"):
        init_tenant_sealing(tmp_path / "t", clock=clock)


def test_grid_epoch_boundaries_are_exact() -> None:
    grid = EpochGrid(0.1, 0.3, "0" * 64)
    for n in range(200):
        assert grid.epoch_at(grid.start(n)) == n
        assert grid.epoch_at(grid.start(n + 1) - 1e-9) == n
    assert grid.epoch_at(-5.0) == 0


def test_each_epoch_sealed_inline_and_verifies(tmp_path: Path) -> None:
    clock = FakeClock()
    keys = Keys(tmp_path, "acme", clock)
    handler, logger = open_handler(tmp_path, "acme", clock, "seal.inline")
    log_epochs(handler, logger, clock, epochs=4, per_epoch=3)
    logger.info("trailing 1")
    logger.info("trailing 2")
    handler.close()
    stream = only_stream(tmp_path, "acme")
    all_entries = entries(stream)
    found = [e for e in all_entries if e.get("kind") == "seal"]
    assert [s["epoch"] for s in found] == [1, 2, 3, 4]
    for seal in found:
        seq = seal["seq"]
        assert seal["last_seq"] == seq - 1
        assert seal["head"] == all_entries[seq - 2]["hash"]
        assert seal["t_end"] - seal["t_start"] == E
        assert seal["origin"] == f"acme/{stream.name}"
    assert found[0]["first_seq"] == 1
    report = verify_tenant(tmp_path, "acme", seed=keys.seed)
    assert report.ok, report.problems
    s = report.streams[0]
    assert s.sealed_from == keys.grid.start(1) and s.sealed_to == keys.grid.start(5)
    assert s.unsealed_trailing == 2
    # the default path knows nothing of seals
    plain = verify_tenant(tmp_path, "acme").streams[0]
    assert plain.ok and plain.unsealed_trailing is None


def test_idle_epochs_sealed_by_background_thread(tmp_path: Path) -> None:
    keys = Keys(tmp_path, "idle", FakeClock(time.time()), epoch_seconds=0.2)
    handler = ImmutableHandler(tmp_path, "idle")
    try:
        time.sleep(0.9)
    finally:
        handler.close()
    stream = only_stream(tmp_path, "idle")
    assert len(seals(stream)) >= 2
    report = verify_tenant(tmp_path, "idle", seed=keys.seed)
    assert report.ok, report.problems
    assert report.streams[0].unsealed_trailing == 0


def test_close_does_not_seal_partial_epoch_restart_seals_downtime(tmp_path: Path) -> None:
    clock = FakeClock()
    keys = Keys(tmp_path, "r", clock)
    handler, logger = open_handler(tmp_path, "r", clock, "seal.restart")
    log_epochs(handler, logger, clock, epochs=2)
    clock.advance(10)
    logger.info("before stop")
    handler.close()
    stream = only_stream(tmp_path, "r")
    assert len(seals(stream)) == 2
    report = verify_tenant(tmp_path, "r", seed=keys.seed)
    assert report.ok and report.streams[0].unsealed_trailing == 1
    clock.advance(10 * E)  # downtime
    handler, logger = open_handler(tmp_path, "r", clock, "seal.restart")
    logger.info("after restart")
    handler.close()
    span = seals(stream)[-1]
    assert span["epoch"] == 3 and span["t_end"] - span["t_start"] == 10 * E
    report = verify_tenant(tmp_path, "r", seed=keys.seed)
    assert report.ok, report.problems
    assert report.streams[0].unsealed_trailing == 1


def test_stream_key_state_evolves_and_old_keys_are_gone(tmp_path: Path) -> None:
    clock = FakeClock()
    keys = Keys(tmp_path, "k", clock)
    handler, logger = open_handler(tmp_path, "k", clock, "seal.keys")
    stream = handler.writer.stream_dir
    origin = f"k/{stream.name}"
    state = json.loads((stream / STREAM_STATE).read_bytes())
    k1 = derive_stream_key(derive_epoch_key(keys.seed, 1), origin)
    assert state["epoch"] == 1 and state["key"] == k1.hex()
    log_epochs(handler, logger, clock, epochs=3)
    state = json.loads((stream / STREAM_STATE).read_bytes())
    assert state["epoch"] == 4 and state["key"] == evolve_key(evolve_key(evolve_key(k1))).hex()
    assert stat.S_IMODE((stream / STREAM_STATE).stat().st_mode) == 0o600
    tenant_state = json.loads((tmp_path / "k" / TENANT_STATE).read_bytes())
    assert tenant_state["epoch"] == 4
    assert tenant_state["key"] == derive_epoch_key(keys.seed, 4).hex()
    raw_seed = decode_seed(keys.seed).hex()
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.name.endswith(".gz"):
            assert raw_seed not in path.read_bytes().decode("latin-1")
    handler.close()


def test_tenant_state_never_moves_backwards(tmp_path: Path) -> None:
    clock = FakeClock()
    keys = Keys(tmp_path, "b", clock)
    clock.advance(10 * E)
    handler, _ = open_handler(tmp_path, "b", clock, "seal.back1", stream="s1")
    handler.close()
    assert json.loads((tmp_path / "b" / TENANT_STATE).read_bytes())["epoch"] == 11
    clock.t = START  # a clock that jumped back
    writer = ChainWriter(tmp_path, "b", stream="s2")
    sealer = StreamSealer(tmp_path / "b", writer.stream_dir, "b", chain_seq=0, clock=clock)
    assert sealer.epoch == 11
    writer.close()
    assert json.loads((tmp_path / "b" / TENANT_STATE).read_bytes())["epoch"] == 11
    del keys


def test_two_streams_share_the_tenant_seed(tmp_path: Path) -> None:
    clock = FakeClock()
    keys = Keys(tmp_path, "multi", clock)
    h1, l1 = open_handler(tmp_path, "multi", clock, "seal.m1", stream="w1")
    log_epochs(h1, l1, clock, epochs=2)
    h2, l2 = open_handler(tmp_path, "multi", clock, "seal.m2", stream="w2")
    for _ in range(3):
        clock.advance(E)
        l1.info("one")
        l2.info("two")
    h1.close()
    h2.close()
    report = verify_tenant(tmp_path, "multi", seed=keys.seed)
    assert report.ok, report.problems
    assert [s.sealed_from for s in report.streams] == [keys.grid.start(1), keys.grid.start(3)]
    # a seal copied from one stream into the other is refused (origin binds the stream)
    w1, w2 = (tmp_path / "multi" / n for n in ("w1", "w2"))
    assert {s["origin"] for s in seals(w1)} == {"multi/w1"}
    assert {s["origin"] for s in seals(w2)} == {"multi/w2"}


def test_wrong_seed_is_reported(tmp_path: Path) -> None:
    clock = FakeClock()
    Keys(tmp_path, "w", clock)
    handler, logger = open_handler(tmp_path, "w", clock, "seal.wrong")
    log_epochs(handler, logger, clock, epochs=2)
    handler.close()
    report = verify_tenant(tmp_path, "w", seed=encode_seed(generate_seed()))
    reasons = {p.reason for p in report.problems}
    assert "seal_grid" in reasons and "seal_forged" in reasons


def test_handler_seal_options(tmp_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(ConfigurationError, match="no seal state"):
        ImmutableHandler(tmp_path, "o", seal=True)
    seed = encode_seed(generate_seed())
    handler = ImmutableHandler(
        tmp_path, "o", seal_seed=seed, seal_epoch_seconds=60, seal_clock=clock
    )
    assert handler.sealing and handler.writer.sealer is not None
    handler.close()
    grid = load_grid(tmp_path / "o")
    assert grid is not None and grid.epoch_seconds == 60 and grid.t0 == START - 60
    # same seed again: accepted; another seed: refused; other epoch length: refused
    ImmutableHandler(tmp_path, "o", seal_seed=seed, seal_clock=clock).close()
    with pytest.raises(ConfigurationError, match="does not match"):
        ImmutableHandler(tmp_path, "o", seal_seed=encode_seed(generate_seed()))
    with pytest.raises(ConfigurationError, match="seal_epoch_seconds"):
        ImmutableHandler(tmp_path, "o", seal_epoch_seconds=30)
    off = ImmutableHandler(tmp_path, "o", seal=False)
    assert not off.sealing and off.writer.sealer is None
    off.close()


def test_sealing_off_writes_no_seal_state(tmp_path: Path) -> None:
    handler = ImmutableHandler(tmp_path, "plain")
    assert handler.writer.sealer is None
    handler.close()
    stream = only_stream(tmp_path, "plain")
    assert not (stream / STREAM_STATE).exists()


def test_seals_with_encryption_and_rotation(tmp_path: Path) -> None:
    clock = FakeClock()
    keys = Keys(tmp_path, "enc", clock)
    key = os.urandom(32)
    handler, logger = open_handler(
        tmp_path, "enc", clock, "seal.enc", encryption_key=key, max_bytes=2000
    )
    log_epochs(handler, logger, clock, epochs=3, per_epoch=6)
    handler.close()
    stream = only_stream(tmp_path, "enc")
    assert len(list(stream.glob("*.log.gz"))) >= 2
    assert all("enc" not in s and "tag" in s for s in seals(stream))
    report = verify_tenant(tmp_path, "enc", seed=keys.seed)
    assert report.ok, report.problems


def test_existing_stream_adopted_on_first_seal_reports_old_entries(tmp_path: Path) -> None:
    clock = FakeClock()
    writer = ChainWriter(tmp_path, "late", stream="s")
    writer.append({"message": "before sealing existed", "ts": START - 5 * E})
    writer.close()
    keys = Keys(tmp_path, "late", clock)
    handler, logger = open_handler(tmp_path, "late", clock, "seal.late", stream="s")
    log_epochs(handler, logger, clock, epochs=2)
    handler.close()
    report = verify_tenant(tmp_path, "late", seed=keys.seed)
    assert [(p.reason, p.seq) for p in report.problems] == [("seal_entry_time", 1)]


def test_stream_state_of_another_origin_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    Keys(tmp_path, "x", clock)
    handler, _ = open_handler(tmp_path, "x", clock, "seal.origin", stream="a")
    handler.close()
    other = tmp_path / "x" / "b"
    other.mkdir()
    (other / STREAM_STATE).write_bytes((tmp_path / "x" / "a" / STREAM_STATE).read_bytes())
    with pytest.raises(ConfigurationError, match="belongs to origin"):
        ImmutableHandler(tmp_path, "x", stream="b", seal_clock=clock)


def test_report_json_carries_seal_fields(tmp_path: Path) -> None:
    clock = FakeClock()
    keys = Keys(tmp_path, "j", clock)
    handler, logger = open_handler(tmp_path, "j", clock, "seal.json")
    log_epochs(handler, logger, clock, epochs=1)
    handler.close()
    data = verify_tenant(tmp_path, "j", seed=keys.seed).to_dict()
    stream = data["streams"][0]
    assert stream["sealed_to"] == keys.grid.start(2) and stream["unsealed_trailing"] == 0
    assert orjson.dumps(data)
    assert list_streams(tmp_path / "j")
    logging.getLogger("seal.json").handlers.clear()


_KILLED_WHILE_SEALING = """
import logging, os, signal, sys, time
from immutable_logging import ImmutableHandler
from immutable_logging.chain import ChainWriter
from immutable_logging.sealing import StreamSealer
root, seed, where = sys.argv[1], sys.argv[2], sys.argv[3]
offset = [0.0]
handler = ImmutableHandler(root, stream="s", seal_seed=seed, seal_epoch_seconds=60,
                           seal_clock=lambda: time.time() + offset[0])
class Stamp(logging.Filter):  # records carry the seal clock's time
    def filter(self, record):
        record.created = time.time() + offset[0]
        return True
handler.addFilter(Stamp())
logger = logging.getLogger("sealed.app")
logger.propagate = False
logger.addHandler(handler)
for i in range(5):
    logger.warning("m%d", i)

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if where == "before_chaining":  # the seal computed, its entry not chained yet
    real = ChainWriter._append_system
    def append_system(self, payload):
        if payload.get("kind") == "seal":
            die()
        return real(self, payload)
    ChainWriter._append_system = append_system
else:  # the seal entry chained (in the journal), the evolved key not saved yet
    StreamSealer.commit = die
offset[0] += 60
logger.warning("after the epoch")  # this call seals the ended epoch first
"""


@pytest.mark.parametrize("where", ["before_chaining", "after_chaining"])
def test_a_writer_killed_while_sealing_leaves_no_seal_gap(tmp_path: Path, where: str) -> None:
    import signal
    import subprocess
    import sys

    seed = encode_seed(generate_seed())
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_WHILE_SEALING, str(tmp_path), seed, where],
        capture_output=True, timeout=60,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    # The next writer of the stream seals on; a later epoch is sealed too.
    clock = FakeClock(time.time() + 60)
    handler, logger = open_handler(tmp_path, "default", clock, f"sealed.reopened.{where}",
                                   stream="s", seal_seed=seed, seal_epoch_seconds=60)
    logger.warning("reopened")
    clock.advance(60)
    logger.warning("one epoch later")
    logger.removeHandler(handler)
    handler.close()
    report = verify_tenant(tmp_path, seed=seed)
    assert report.ok, [str(p) for p in report.problems]
    seals = [e for e in iter_entries(tmp_path, include_system=True) if e.get("kind") == "seal"]
    epochs = [e["epoch"] for e in seals]
    assert len(epochs) == len(set(epochs)) >= 2  # no epoch sealed twice, none missing


_DISK_FULL_AT_THE_SEAL = """
import logging, os, resource, signal, sys, time
from immutable_logging import ImmutableHandler
root, seed, mode = sys.argv[1:4]
handler = ImmutableHandler(root, stream="s", seal_seed=seed, seal_epoch_seconds=1.0,
                           durability=mode)
logger = logging.getLogger("a")
logger.setLevel(logging.INFO)
logger.addHandler(handler)
for i in range(20):
    logger.info("before %d %s", i, "z" * 300)
handler.flush()
writer = handler.writer
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
size = os.path.getsize(writer.stream_dir / "00000001.log")
resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))  # disk full
time.sleep(writer.sealer.deadline - time.time() + 0.3)  # the seal is chained, not written
assert writer.stats.seals == 1 and writer.stats.seal_errors >= 1 and writer.sealer.epoch == 1
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("mode", ["always", "none"])
def test_a_seal_that_never_reached_the_disk_leaves_its_key(tmp_path: Path, mode: str) -> None:
    # The key moves on only once the seal entry is written: a writer that dies with its
    # seal still buffered (disk full) leaves the epoch to be sealed again, not a gap.
    import signal
    import subprocess
    import sys

    seed = encode_seed(generate_seed())
    result = subprocess.run([sys.executable, "-c", _DISK_FULL_AT_THE_SEAL, str(tmp_path), seed,
                             mode], capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    handler = ImmutableHandler(tmp_path, stream="s", seal_seed=seed, durability=mode)
    handler.close()
    report = verify_tenant(tmp_path, seed=seed)
    assert report.ok, [str(p) for p in report.problems]
    seals = [e["epoch"] for e in iter_entries(tmp_path, include_system=True)
             if e.get("kind") == "seal"]
    assert seals and len(seals) == len(set(seals))


_SEAL_FAILING_BEHIND_A_MEMORY_HANDLER = """
import logging, logging.handlers, os, resource, signal, sys, threading, time
from immutable_logging import ImmutableHandler
root, seed = sys.argv[1:3]
logging.raiseExceptions = False
chained = ImmutableHandler(root, stream="s", seal_seed=seed, seal_epoch_seconds=0.3,
                           durability="none", max_bytes=3000, buffer_bytes=100_000)
logging.getLogger().addHandler(logging.handlers.MemoryHandler(capacity=1, target=chained))
app = logging.getLogger("app")
app.setLevel(logging.INFO)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.RLIM_INFINITY))  # disk full
progress = [0]
def log_forever():
    while True:
        app.info("entry %d %s", progress[0], "x" * 150)
        progress[0] += 1
        time.sleep(0.0005)
threading.Thread(target=log_forever, daemon=True).start()
time.sleep(1.5)
before = progress[0]
time.sleep(1.0)
print(before, progress[0], chained.writer.stats.seal_errors, flush=True)
os._exit(0)  # a deadlocked thread would block any clean exit
"""


def test_a_seal_that_cannot_be_chained_is_retried_once_a_second_and_never_deadlocks(
    tmp_path: Path,
) -> None:
    # A MemoryHandler in front of ours on the root logger: logging a sealing failure while
    # holding the writer lock deadlocked with an application thread holding its lock.
    import subprocess
    import sys

    seed = encode_seed(generate_seed())
    result = subprocess.run(
        [sys.executable, "-c", _SEAL_FAILING_BEHIND_A_MEMORY_HANDLER, str(tmp_path), seed],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    before, after, errors = map(int, result.stdout.split())
    assert after > before, "the application's logging thread deadlocked"
    assert 1 <= errors <= 5  # one try a second, not one per millisecond


_KILLED_IN_COMMIT = """
import logging, os, signal, sys, time
from immutable_logging import ImmutableHandler
from immutable_logging.sealing import StreamSealer
root, seed = sys.argv[1:3]
handler = ImmutableHandler(root, stream="s", seal_seed=seed, seal_epoch_seconds=1.0)
logger = logging.getLogger("a")
logger.setLevel(logging.INFO)
logger.addHandler(handler)
logger.info("before")
StreamSealer.commit = lambda self: os.kill(os.getpid(), signal.SIGKILL)
time.sleep(3)  # the sealer thread chains and writes the seal, then dies in commit()
"""


def test_a_seal_far_behind_the_end_of_the_stream_is_still_adopted(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    seed = encode_seed(generate_seed())
    result = subprocess.run([sys.executable, "-c", _KILLED_IN_COMMIT, str(tmp_path), seed],
                            capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    unsealed = ImmutableHandler(tmp_path, stream="s", seal=False)  # e.g. a maintenance job
    for i in range(1200):  # about 500 KB after the seal
        unsealed.handle(logging.LogRecord("job", logging.INFO, __file__, 1, "unsealed %d %s",
                                          (i, "y" * 200), None))
    unsealed.close()
    handler = ImmutableHandler(tmp_path, stream="s", seal_seed=seed)
    handler.close()
    report = verify_tenant(tmp_path, seed=seed)
    assert report.ok, [str(p) for p in report.problems]
    seals = [e["epoch"] for e in iter_entries(tmp_path, include_system=True)
             if e.get("kind") == "seal"]
    assert seals[0] == 1 and len(seals) == len(set(seals))
