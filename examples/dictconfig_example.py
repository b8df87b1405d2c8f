"""Configure :class:`immutable_logging.ImmutableHandler` with :func:`logging.config.dictConfig`.

Run::

    python examples/dictconfig_example.py [LOG_DIR]

``LOG_DIR`` defaults to ``$IMMUTABLE_LOG_DIR`` or a new temporary directory. The script logs a
few records (custom levels included), closes the handlers, verifies the chain and prints a
JSON summary. Exit status 0 means the chain verified.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
import tempfile
from typing import Any

import immutable_logging
from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant

TENANT = "dictconfig-demo"


def logging_config(directory: str) -> dict[str, Any]:
    """The dictConfig dict: one chained handler (plus a console handler) for ``app``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "chain": {
                "class": "immutable_logging.ImmutableHandler",
                "directory": directory,
                "tenant": TENANT,
                "durability": "flush",
                "level": "DEBUG",
            },
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "level": "WARNING",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "app": {"handlers": ["chain", "console"], "level": "DEBUG", "propagate": False},
        },
    }


def main(argv: list[str]) -> int:
    """Configure, log, shut down, verify; print a summary. Returns the exit status."""
    directory = argv[1] if len(argv) > 1 else os.environ.get("IMMUTABLE_LOG_DIR")
    directory = directory or tempfile.mkdtemp(prefix="immutable-dictconfig-")
    immutable_logging.install()  # AUDIT/SECURITY/REVENUE/SYSTEM methods on every logger
    logging.config.dictConfig(logging_config(directory))

    log = logging.getLogger("app.billing")
    log.info("invoice created", extra={"invoice": "INV-1", "amount_cents": 1250})
    log.audit("invoice approved by %s", "alice", extra={"invoice": "INV-1"})  # type: ignore[attr-defined]
    log.revenue("invoice paid", extra={"invoice": "INV-1", "amount_cents": 1250})  # type: ignore[attr-defined]
    try:
        raise TimeoutError("payment gateway timed out")
    except TimeoutError:
        log.exception("retrying payment", extra={"invoice": "INV-2"})

    logging.shutdown()  # flushes and closes the chain handler (releases its stream)

    report = verify_tenant(directory, TENANT, parse=True)
    levels: dict[str, int] = {}
    for entry in iter_entries(directory, TENANT):
        levels[entry["level"]] = levels.get(entry["level"], 0) + 1
    print(
        json.dumps(
            {
                "directory": directory,
                "tenant": TENANT,
                "entries": report.entries,
                "streams": len(report.streams),
                "levels": levels,
                "verified": report.ok,
            }
        )
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
