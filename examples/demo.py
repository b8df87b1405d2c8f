"""`make demo`: log through dictConfig and the facade, verify, tamper with a copy, catch it.

Usage: python examples/demo.py [DIRECTORY]   (default: ./demo-logs, recreated each run)
"""

from __future__ import annotations

import logging
import logging.config
import shutil
import sys
from pathlib import Path

from immutable_logging import ImmutableLogger, install
from immutable_logging.cli import main as cli
from immutable_logging.layout import list_segments, list_streams


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)))


def log_with_dictconfig(directory: Path) -> None:
    """The way an application adds the handler: one entry in its logging config."""
    install()  # logger.audit / .security / .revenue / .system
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "chain": {
                    "class": "immutable_logging.ImmutableHandler",
                    "directory": str(directory),
                    "tenant": "shop",
                    "max_bytes": 8_000,  # tiny segments so the demo shows rotation
                },
            },
            "root": {"handlers": ["chain"], "level": "INFO"},
        }
    )
    log = logging.getLogger("shop.checkout")
    for order in range(1, 41):
        log.info("order %d placed", order, extra={"order_id": order, "items": order % 4 + 1})
        if order % 10 == 0:
            log.revenue(  # type: ignore[attr-defined]
                "order %d paid", order, extra={"amount": order * 37, "currency": "EUR"}
            )
    logging.getLogger("shop.admin").audit(  # type: ignore[attr-defined]
        "role granted", extra={"user": "alice", "role": "admin"}
    )
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("refund failed")
    logging.shutdown()


def log_with_facade(directory: Path, bucket: Path) -> None:
    """The facade, replicating to the embedded local-directory bucket."""
    with ImmutableLogger(directory, tenantId="billing", enable_cloud_backup=True,
                         backup_provider="local", backup_directory=str(bucket),
                         backup_batch_size=10) as log:
        for n in range(25):
            log.revenue("Invoice paid", {"amount": 90 + 50 * n, "customer": f"C{n}"})
        log.security("Failed login", {"user": "mallory", "ip": "203.0.113.9"})
        big = log.query({"level": "REVENUE", "metadata.amount": {"$gte": 1000}})
        print(f"facade query found {len(big)} invoice(s) >= 1000, first: {big[0]['metadata']}")
        print(f"facade stats: {log.stats()['by_level']}")
        log.flush_backup()
        backup = log.verify_cloud_backup()
        print(f"cloud backup ({bucket}): {backup['cloud_blocks']}/{backup['local_blocks']} "
              f"entries, {backup['sync_status']} ({backup['sync_percentage']}%)")
        restored = log.restore_from_cloud(directory.with_name(directory.name + "-restored"))
        assert restored is not None
        print(f"restored from the bucket: {restored['entries']} entries, "
              f"verified: {restored['verified']}")


def tamper(copy: Path) -> None:
    stream = list_streams(copy / "shop")[0]
    sealed = list_segments(stream)[0]  # a rotated, gzip'ed, read-only segment
    import gzip

    with gzip.open(sealed.path, "rb") as handle:
        lines = handle.read().splitlines(keepends=True)
    lines[3] = lines[3].replace(b"order 4 placed", b"order 4 cancel")
    sealed.path.chmod(0o600)
    with gzip.open(sealed.path, "wb") as handle:
        handle.write(b"".join(lines))
    print(f"edited one entry of {sealed.path} ('placed' -> 'cancel')")


def run(directory: Path) -> int:
    bucket = directory.with_name(directory.name + "-bucket")
    for old in (directory, bucket, directory.with_name(directory.name + "-restored")):
        if old.exists():
            shutil.rmtree(old)
    banner("1. log through logging.config.dictConfig (tenant 'shop')")
    log_with_dictconfig(directory)
    banner("2. the ImmutableLogger facade (tenant 'billing'), replicated to a local bucket")
    log_with_facade(directory, bucket)
    banner("3. immutable-log stats / query")
    cli(["stats", str(directory), "--tenant", "shop"])
    cli(["query", str(directory), '{"level": "REVENUE", "metadata.amount": {"$gte": 1000}}'])
    banner("4. immutable-log verify (original) and sync-status (replica)")
    clean = cli(["verify", str(directory)])
    cli(["sync-status", str(directory), "--tenant", "billing", "--backup-directory", str(bucket)])
    banner("5. tamper with a copy, then verify it")
    copy = directory.with_name(directory.name + "-tampered")
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(directory, copy)
    tamper(copy)
    tampered = cli(["verify", str(copy)])
    banner("result")
    print(f"original: exit {clean} (0 = verified), tampered copy: exit {tampered} (1 = caught)")
    return 0 if (clean, tampered) == (0, 1) else 1


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo-logs")))
