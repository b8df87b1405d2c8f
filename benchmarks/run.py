"""`make bench`: throughput and latency of immutable_logging against stdlib FileHandler.

Every logging figure is a ratio against ``logging.FileHandler`` measured in the same run,
rounds interleaved, median of ``--rounds`` (default 5). Prints one table and writes JSON to
``benchmarks/results/latest.json``.

    python -m benchmarks.run [--rounds 5] [--records 30000] [--big 1000000] [--quick]
                             [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from immutable_logging import ImmutableHandler, ImmutableLogger
from immutable_logging.chain import ChainWriter
from immutable_logging.crypto import generate_key
from immutable_logging.matching import DocumentQuery, Match, TextSearch, find_entries
from immutable_logging.replication.local import LocalDirectoryBackend
from immutable_logging.replication.replicator import Replicator
from immutable_logging.verify import verify_tenant

META = {"ip": "10.0.0.1", "roles": ["admin", "user"], "session": "a1b2c3d4e5f6",
        "user_id": 98765}
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s %(meta)s"
RESULTS = Path(__file__).resolve().parent / "results"
HandlerFactory = Callable[[Path], logging.Handler]


def _file_handler(directory: Path) -> logging.Handler:
    handler = logging.FileHandler(directory / "plain.log")
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def _time_logging(factory: HandlerFactory, records: int) -> tuple[float, logging.Handler]:
    """End-to-end µs per ``logger.info(..., extra=...)`` call, including close()."""
    directory = Path(tempfile.mkdtemp(prefix="bench-"))
    handler = factory(directory)
    logger = logging.getLogger(f"bench.{time.perf_counter_ns()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    info = logger.info
    # Earlier scenarios leave dirty pages and garbage behind: write them back and collect
    # them now, so that kernel writeback and the cyclic GC do not land in this timed run.
    os.sync()
    gc.collect()
    started = time.perf_counter()
    for i in range(records):
        info("User login %s", i, extra={"meta": META})
    handler.close()
    elapsed = time.perf_counter() - started
    logger.removeHandler(handler)
    shutil.rmtree(directory, ignore_errors=True)
    return elapsed / records * 1e6, handler


#: No scenario rotates inside a timed run (FileHandler never does): rotation and the
#: background gzip of sealed segments are measured by their own row.
_NO_ROTATION = 1 << 40
#: Pairs whose difference is what encryption adds per entry.
ENCRYPTION_PAIRS = {
    "durability=flush": ("ImmutableHandler durability=flush (default)",
                         "ImmutableHandler + AES-256-GCM (flush)"),
    "durability=none": ("ImmutableHandler durability=none",
                        "ImmutableHandler + AES-256-GCM, durability=none"),
}


def bench_logging(rounds: int, records: int) -> dict[str, Any]:
    key = generate_key()
    big = _NO_ROTATION
    scenarios: dict[str, HandlerFactory] = {
        "FileHandler (baseline)": _file_handler,
        "ImmutableHandler durability=flush (default)": lambda d: ImmutableHandler(
            d, max_bytes=big),
        "ImmutableHandler durability=none": lambda d: ImmutableHandler(
            d, durability="none", max_bytes=big),
        "ImmutableHandler durability=group (10 ms)": lambda d: ImmutableHandler(
            d, durability="group", max_bytes=big),
        "ImmutableHandler + AES-256-GCM (flush)": lambda d: ImmutableHandler(
            d, encryption_key=key, max_bytes=big),
        "ImmutableHandler + AES-256-GCM, durability=none": lambda d: ImmutableHandler(
            d, encryption_key=key, durability="none", max_bytes=big),
        "ImmutableHandler + replication (local bucket)": lambda d: ImmutableHandler(
            d, enable_cloud_backup=True, backup_directory=str(d / "bucket"), max_bytes=big),
        "ImmutableHandler, 1 MiB segments (rotation + gzip)": lambda d: ImmutableHandler(
            d, max_bytes=1 << 20),
    }
    samples: dict[str, list[float]] = {name: [] for name in scenarios}
    lags: list[float] = []
    for _ in range(rounds):
        for name, factory in scenarios.items():  # interleaved: one of each per round
            micros, handler = _time_logging(factory, records)
            samples[name].append(micros)
            if "group" in name and isinstance(handler, ImmutableHandler):
                lags.append(handler.writer.stats.max_sync_lag_ms)
    base = statistics.median(samples["FileHandler (baseline)"])
    rows: dict[str, Any] = {
        name: {
            "us_per_record": statistics.median(values),
            "records_per_s": 1e6 / statistics.median(values),
            "ratio_vs_filehandler": statistics.median(values) / base,
            "runs_us": [round(v, 3) for v in values],
        }
        for name, values in samples.items()
    }
    rows["ImmutableHandler durability=group (10 ms)"]["max_durability_lag_ms"] = max(lags)
    for label, (plain, encrypted) in ENCRYPTION_PAIRS.items():
        # per round, so both halves of a difference come from the same moment
        added = [e - p for p, e in zip(samples[plain], samples[encrypted], strict=True)]
        rows[encrypted]["encryption_adds_us"] = statistics.median(added)
        rows[encrypted]["encryption_adds_vs"] = label
    return rows


def bench_facade_latency(records: int) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="bench-facade-"))
    log = ImmutableLogger(directory, tenantId="bench")
    timings = []
    clock = time.perf_counter_ns
    for i in range(records):
        started = clock()
        log.info("facade call", {"i": i, "user": "alice"})
        timings.append(clock() - started)
    log.shutdown()
    shutil.rmtree(directory, ignore_errors=True)
    timings.sort()
    return {
        "p50_us": timings[len(timings) // 2] / 1e3,
        "p99_us": timings[int(len(timings) * 0.99)] / 1e3,
        "max_us": timings[-1] / 1e3,
    }


def _build_big_log(directory: Path, entries: int) -> None:
    writer = ChainWriter(directory, "big", durability="none", max_bytes=16 * 1024 * 1024)
    for i in range(entries):
        level = "REVENUE" if i % 10 == 0 else "INFO"
        writer.append({
            "ts": 1795355355.2 + i * 0.001, "level": level,
            "levelno": 26 if level == "REVENUE" else 20, "logger": "app.auth",
            "message": f"User login {i}", "metadata": {**META, "amount": i % 5000},
            "tenant": "big", "host": "bench", "pid": 1, "thread": "MainThread",
            "module": "auth", "func": "login", "line": 42,
        })
    writer.close()


def _timed(func: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = func()
    return time.perf_counter() - started, result


def bench_big(entries: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="bench-big-"))
    try:
        build_s, _ = _timed(lambda: _build_big_log(directory, entries))
        rows: dict[str, Any] = {"entries": entries, "build_s": build_s,
                                # worker processes are only forked from one thread
                                "threads_alive": threading.active_count()}
        for label, parse in (("re-hash", False), ("parse + canonical", True)):
            for workers in (1, None):
                seconds, report = _timed(lambda p=parse, w=workers: verify_tenant(
                    directory, "big", parse=p, workers=w))
                assert report.ok and report.entries == entries
                rows[f"verify ({label}), workers={workers or 'auto'}"] = {
                    "seconds": seconds, "entries_per_s": entries / seconds,
                    "worker_processes": report.streams[0].workers}
        needle = f"User login {entries - 1}"
        matches: dict[str, Match] = {
            "search (1 hit)": TextSearch(needle),
            "query level+amount": DocumentQuery(
                {"level": "REVENUE", "metadata.amount": {"$gte": 4000}}),
            "query amount>=4990 (number filter)": DocumentQuery(
                {"metadata.amount": {"$gte": 4990}}),
            "query amount $in (number filter)": DocumentQuery(
                {"metadata.amount": {"$in": [4990, 4995, 4999]}}),
            # $regex has no raw-line pre-filter: every entry is decoded and tested
            "query message $regex (full parse)": DocumentQuery(  # the last 10 entries
                {"message": {"$regex": f"login {entries // 10 - 1}[0-9]$"}}),
        }
        for label, match in matches.items():
            for workers in (1, None):
                seconds, found = _timed(lambda m=match, w=workers: find_entries(
                    directory, "big", m, workers=w))
                rows[f"{label}, workers={workers or 'auto'}"] = {
                    "seconds": seconds, "hits": len(found)}
        return rows
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _replicate(backend_factory: Callable[[], Any], entries: int, batch: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="bench-repl-"))
    try:
        writer = ChainWriter(directory, "r", durability="none")
        for i in range(entries):
            writer.append({"ts": time.time(), "level": "INFO", "message": f"m{i}",
                           "metadata": META})
        writer.close()
        replicator = Replicator(backend_factory(), writer.stream_dir, "r", batch_size=batch)
        seconds, shipped = _timed(lambda: replicator.pump(force=True))
        assert shipped == entries
        status = replicator.status
        return {
            "entries": entries,
            "seconds": seconds,
            "entries_per_s": entries / seconds,
            "batch_puts": status.batches_uploaded,
            "total_puts": status.puts,
            "puts_per_100_entries": 100 * status.batches_uploaded / entries,
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def bench_replication(entries: int) -> dict[str, Any]:
    bucket = Path(tempfile.mkdtemp(prefix="bench-bucket-"))
    rows = {"local bucket": _replicate(lambda: LocalDirectoryBackend(bucket), entries, 100)}
    shutil.rmtree(bucket, ignore_errors=True)
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from immutable_logging.replication.s3 import S3Backend
        from tests.servers import MotoServer, create_s3_bucket
    except ImportError as exc:  # moto not installed: report, do not fail the run
        rows["moto S3"] = {"skipped": str(exc)}
        return rows
    with MotoServer() as server:
        create_s3_bucket(server, "bench")
        rows["moto S3"] = _replicate(lambda: S3Backend(
            "bench", endpoint_url=server.endpoint_url, region="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing"),
            min(entries, 20_000), 100)
    return rows


def _print_table(results: dict[str, Any]) -> None:
    print(f"\nimmutable_logging benchmarks — {results['machine']}")
    print(f"{'scenario':52} {'µs/rec':>8} {'rec/s':>10} {'x FileHandler':>14}")
    for name, row in results["logging"].items():
        extra = (f"  lag max {row['max_durability_lag_ms']:.1f} ms"
                 if "max_durability_lag_ms" in row else "")
        if "encryption_adds_us" in row:
            extra = (f"  {row['encryption_adds_us']:+.2f} µs/entry over "
                     f"{row['encryption_adds_vs']}")
        print(f"{name:52} {row['us_per_record']:8.2f} {row['records_per_s']:10,.0f} "
              f"{row['ratio_vs_filehandler']:14.2f}{extra}")
    lat = results["facade_latency"]
    print(f"{'facade log call latency':52} p50 {lat['p50_us']:.1f} µs, p99 {lat['p99_us']:.1f} µs")
    big = results["big_log"]
    print(f"\n{big['entries']:,} entries (gzip'ed 16 MiB segments; workers=auto forks one "
          f"process per CPU when the caller runs one thread: {big['threads_alive']} now):")
    for name, row in big.items():
        if isinstance(row, dict):
            rate = f", {row['entries_per_s']:,.0f} entries/s" if "entries_per_s" in row else ""
            hits = f", {row['hits']} hits" if "hits" in row else ""
            used = (f" ({row['worker_processes']} worker processes)"
                    if row.get("worker_processes") else "")
            print(f"  {name:48} {row['seconds']:6.2f} s{rate}{hits}{used}")
    print("\nreplication (pump from disk):")
    for name, row in results["replication"].items():
        if "skipped" in row:
            print(f"  {name:20} skipped: {row['skipped']}")
        else:
            print(f"  {name:20} {row['entries_per_s']:10,.0f} entries/s, "
                  f"{row['puts_per_100_entries']:.2f} batch PUTs per 100 entries "
                  f"({row['total_puts']} PUTs in all)")
    seal = results["seal"]
    print(f"\nseals + checkpoints ({seal['entries']:,} entries): "
          f"append guard {seal['append_guard_isolated_ns']} ns; "
          f"append µs {seal['append_us']}; handler µs {seal['handler_us']}; "
          f"checkpoint fold {seal['checkpoint_fold_us_per_entry_background']} µs/entry "
          "(background thread)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--replication", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json",
                        help="where to write the results (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.records, args.big, args.replication = 1, 2_000, 20_000, 2_000
    results: dict[str, Any] = {
        "machine": f"{platform.python_implementation()} {platform.python_version()}, "
                   f"{os.cpu_count()} CPUs, {platform.machine()}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    results["logging"] = bench_logging(args.rounds, args.records)
    results["facade_latency"] = bench_facade_latency(args.records)
    results["big_log"] = bench_big(args.big)
    results["replication"] = bench_replication(args.replication)
    from benchmarks.bench_seal import measure as bench_seal

    results["seal"] = bench_seal(args.replication, 1 if args.quick else 3)
    _print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
