"""Micro-benchmark: what seals and checkpoints cost the logging hot path.

Usage::

    .venv/bin/python benchmarks/bench_seal.py [--entries 100000] [--repeat 3] [--json]

Measured (best of ``--repeat`` runs, durability ``none`` so the chain itself is as cheap
as it gets and any overhead shows):

Rounds are interleaved and the best of each configuration is kept (shared machines drift).

* ``append``: ``ChainWriter.append`` per entry with sealing off, with a sealer attached
  (300 s epochs: the per-entry cost is the deadline check), and with 50 ms epochs (a seal
  entry, state rewrite and fdatasync every 50 ms, i.e. many seals during the run).
* ``handler``: ``ImmutableHandler.handle`` per record with sealing + checkpoints off and
  on (the checkpoint thread folding and signing every 200 ms while logging runs).
* ``append_guard_isolated_ns``: the exact guard ``append`` runs, timed alone (the
  end-to-end differences are within the noise of a shared machine).
* ``checkpoint_fold``: the background work per entry (read, re-hash, link check, Merkle
  leaf and accumulator) of one checkpoint over all entries, off the hot path.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from immutable_logging.chain import ChainWriter
from immutable_logging.checkpoint import Checkpointer
from immutable_logging.handler import ImmutableHandler
from immutable_logging.seal import CheckpointSigner, generate_signing_key
from immutable_logging.sealing import StreamSealer, init_tenant_sealing

PAYLOAD = {
    "ts": 0.0,
    "level": "INFO",
    "levelno": 20,
    "logger": "bench",
    "message": "order paid",
    "metadata": {"amount": 1250, "currency": "EUR", "user": "alice"},
    "tenant": "bench",
}


def _fresh(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def bench_append(root: Path, n: int, epoch_seconds: float | None) -> tuple[float, int]:
    """µs per ``append`` and the number of seals written."""
    _fresh(root)
    writer = ChainWriter(root, "bench", stream="s", durability="none", max_bytes=64 << 20)
    if epoch_seconds is not None:
        init_tenant_sealing(root / "bench", epoch_seconds=epoch_seconds)
        sealer = StreamSealer(root / "bench", writer.stream_dir, "bench", chain_seq=writer.seq)
        writer.set_sealer(sealer)
    append = writer.append
    payload = dict(PAYLOAD)
    start = time.perf_counter()
    for _ in range(n):
        append(payload)
    elapsed = time.perf_counter() - start
    seals = writer.stats.seals
    writer.close()
    return elapsed / n * 1e6, seals


def bench_handler(root: Path, n: int, on: bool) -> tuple[float, int]:
    """µs per ``handle`` and the number of checkpoint notes written."""
    _fresh(root)
    options: dict[str, object] = {"durability": "none", "max_bytes": 64 << 20}
    if on:
        init_tenant_sealing(root / "bench", epoch_seconds=0.05)
        options.update(checkpoint_key=generate_signing_key(), checkpoint_interval=0.2)
    handler = ImmutableHandler(root, "bench", stream="s", **options)  # type: ignore[arg-type]
    record = logging.LogRecord("bench", logging.INFO, __file__, 1, "order %s", ("paid",), None)
    handle = handler.handle
    start = time.perf_counter()
    for _ in range(n):
        handle(record)
    elapsed = time.perf_counter() - start
    handler.close()
    notes = len(list((root / "bench" / "s" / "checkpoints").glob("*.note")))
    return elapsed / n * 1e6, notes


def bench_fold(root: Path, n: int) -> float:
    """µs per entry of one checkpoint over *n* entries (background work)."""
    _fresh(root)
    writer = ChainWriter(root, "bench", stream="s", durability="none", max_bytes=8 << 20)
    for _ in range(n):
        writer.append(PAYLOAD)
    writer.close()
    signer = CheckpointSigner(generate_signing_key(), "bench")
    checkpointer = Checkpointer(writer.stream_dir, "bench", signer)
    start = time.perf_counter()
    checkpointer.update()
    return (time.perf_counter() - start) / n * 1e6


def bench_check_isolated(n: int = 2_000_000) -> tuple[float, float]:
    """ns of the exact ``append`` guard with sealing off and on, minus an empty call."""

    class Guard:
        def __init__(self, on: bool) -> None:
            self._sealer = object() if on else None
            self._seal_clock = time.time
            self._seal_deadline = float("inf")

        def guard(self) -> None:
            if self._sealer is not None and self._seal_clock() >= self._seal_deadline:
                raise AssertionError

        def empty(self) -> None:
            pass

    on, off = Guard(True), Guard(False)
    rounds = []
    for _ in range(3):
        base = timeit.timeit(on.empty, number=n)
        rounds.append(
            (
                (timeit.timeit(off.guard, number=n) - base) / n * 1e9,
                (timeit.timeit(on.guard, number=n) - base) / n * 1e9,
            )
        )
    return min(r[0] for r in rounds), min(r[1] for r in rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.entries, args.repeat)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for key, value in result.items():
            sys.stdout.write(f"{key}: {value}\n")
    return 0


def measure(n: int = 100_000, repeat: int = 5) -> dict[str, object]:
    """Run every measurement; the result is what ``--json`` prints."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-seal-"))
    runs: dict[str, Callable[[], tuple[float, int]]] = {
        "off": lambda: bench_append(tmp / "a", n, None),
        "check": lambda: bench_append(tmp / "a", n, 300.0),
        "busy": lambda: bench_append(tmp / "a", n, 0.05),
        "h_off": lambda: bench_handler(tmp / "h", n, False),
        "h_on": lambda: bench_handler(tmp / "h", n, True),
        "fold": lambda: (bench_fold(tmp / "f", n), 0),
    }
    try:
        # Interleaved rounds, best of each: a noisy machine drifts between configurations.
        results: dict[str, list[tuple[float, int]]] = {name: [] for name in runs}
        for _ in range(repeat):
            for name, run in runs.items():
                results[name].append(run())
        off, check, busy, h_off, h_on, (fold, _) = (
            min(results[name], key=lambda r: r[0]) for name in runs
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    guard_off, guard_on = bench_check_isolated()
    result = {
        "entries": n,
        "append_guard_isolated_ns": {
            "sealing_off": round(guard_off),
            "sealing_on": round(guard_on),
        },
        "append_us": {
            "sealing_off": round(off[0], 3),
            "sealer_attached_300s_epochs": round(check[0], 3),
            "sealer_50ms_epochs": round(busy[0], 3),
            "seals_written_50ms": busy[1],
        },
        "append_overhead_us": {
            "deadline_check": round(check[0] - off[0], 3),
            "with_frequent_seals": round(busy[0] - off[0], 3),
        },
        "handler_us": {
            "off": round(h_off[0], 3),
            "seal_50ms_and_checkpoint_200ms": round(h_on[0], 3),
            "overhead": round(h_on[0] - h_off[0], 3),
            "notes_written": h_on[1],
        },
        "checkpoint_fold_us_per_entry_background": round(fold, 3),
    }
    return result


if __name__ == "__main__":
    sys.exit(main())
