"""structlog writing into the chain, both ways.

See :mod:`immutable_logging.integrations.structlog`.

Run::

    python examples/structlog_example.py [LOG_DIR]

``LOG_DIR`` defaults to ``$IMMUTABLE_LOG_DIR`` or a new temporary directory. Tenant
``structlog-native`` gets events written by :class:`ChainProcessor` (native structlog);
tenant ``structlog-stdlib`` gets them through a stdlib logger and :func:`render_to_log_kwargs`.
Both verify, and the structured fields are ``metadata`` fields of the entries.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from decimal import Decimal

import structlog

from immutable_logging import ImmutableHandler
from immutable_logging.integrations.structlog import (
    ChainProcessor,
    ImmutableBoundLogger,
    filter_by_level,
    render_to_log_kwargs,
)
from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant

NATIVE = "structlog-native"
STDLIB = "structlog-stdlib"


def business_logic(log: ImmutableBoundLogger) -> None:
    """The same calls for both configurations."""
    log = log.bind(request_id="req-7")
    log.info("cart checked out", items=3, total=Decimal("59.90"))
    log.audit("discount overridden", approver="bob", percent=15)
    log.revenue("order paid", order_id=1001, amount=Decimal("50.91"), currency="EUR")
    log.security("password reset requested", user="carol", ip="192.0.2.10")
    try:
        raise PermissionError("token expired")
    except PermissionError:
        log.exception("refund rejected", order_id=1001)


def run_native(directory: str) -> None:
    """Native structlog: ChainProcessor writes the event dict into the handler."""
    handler = ImmutableHandler(directory, tenant=NATIVE)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", key="at"),
            ChainProcessor(handler, drop=True),
        ],
        wrapper_class=ImmutableBoundLogger,
        cache_logger_on_first_use=False,
    )
    business_logic(structlog.get_logger().bind(logger="shop.native"))
    handler.close()


def run_stdlib(directory: str) -> None:
    """structlog -> stdlib logger -> ImmutableHandler (fields via ``_immutable_fields``)."""
    handler = ImmutableHandler(directory, tenant=STDLIB)
    structlog.configure(
        processors=[
            filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            render_to_log_kwargs,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=ImmutableBoundLogger,
        cache_logger_on_first_use=False,
    )
    stdlib_logger = logging.getLogger("shop.stdlib")
    stdlib_logger.setLevel(logging.INFO)
    stdlib_logger.addHandler(handler)
    stdlib_logger.propagate = False
    business_logic(structlog.get_logger("shop.stdlib"))
    stdlib_logger.removeHandler(handler)
    handler.close()


def summary(directory: str, tenant: str) -> dict[str, object]:
    """Verification result and the shape of the entries of one tenant."""
    report = verify_tenant(directory, tenant, parse=True)
    entries = list(iter_entries(directory, tenant))
    return {
        "entries": len(entries),
        "verified": report.ok,
        "levels": [e["level"] for e in entries],
        "fields": sorted({k for e in entries for k in e.get("metadata", {})}),
    }


def main(argv: list[str]) -> int:
    """Run both configurations, verify both tenants, print a JSON summary."""
    directory = argv[1] if len(argv) > 1 else os.environ.get("IMMUTABLE_LOG_DIR")
    directory = directory or tempfile.mkdtemp(prefix="immutable-structlog-")
    run_native(directory)
    run_stdlib(directory)
    result = {"directory": directory, NATIVE: summary(directory, NATIVE),
              STDLIB: summary(directory, STDLIB)}
    print(json.dumps(result))
    return 0 if all(result[t]["verified"] for t in (NATIVE, STDLIB)) else 1  # type: ignore[index]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
