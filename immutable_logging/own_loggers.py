"""The library's own loggers, and holding back what they log while one of our locks is held.

A log call made while a lock is held can deadlock: the record goes to every handler on
the root logger, and a handler that forwards to ours (``logging.handlers.MemoryHandler``,
say) may be held by another thread that is waiting for the very lock we hold. Code that
must run under such a lock and may log (opening a writer again after ``close()`` or a
fork: torn tails, journal replay, adopted seals) runs inside :func:`holding_back`, and
hands the records on with :func:`release` once the lock is released.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_holding = threading.local()


class _HoldBack(logging.Filter):
    """Keep this thread's records aside while it is inside :func:`holding_back`."""

    def filter(self, record: logging.LogRecord) -> bool:
        held: list[logging.LogRecord] | None = getattr(_holding, "records", None)
        if held is None:
            return True
        held.append(record)
        return False


_HOLD_BACK = _HoldBack()


def own_logger(name: str) -> logging.Logger:
    """The logger ``name`` (one of ``immutable_logging.*``), able to hold records back."""
    logger = logging.getLogger(name)
    if _HOLD_BACK not in logger.filters:
        logger.addFilter(_HOLD_BACK)
    return logger


@contextmanager
def holding_back() -> Iterator[list[logging.LogRecord]]:
    """Hold back what our loggers log on this thread; yields the list that receives them.

    Pass the list to :func:`release` after leaving the lock. Nested uses each keep
    their own records.
    """
    outer = getattr(_holding, "records", None)
    records: list[logging.LogRecord] = []
    _holding.records = records
    try:
        yield records
    finally:
        _holding.records = outer


def release(records: list[logging.LogRecord]) -> None:
    """Hand held-back records to their loggers' handlers, as if logged now (on this
    thread; inside an outer :func:`holding_back` they are held back again).

    The logger's filters that ran before the record was held back do not run again
    (a counting or rate-limiting filter sees each record once); those after it do.
    """
    while records:
        record = records.pop(0)
        logger = logging.getLogger(record.name)
        if logger.disabled:
            continue
        filters = logger.filters
        after = filters[filters.index(_HOLD_BACK) + 1:] if _HOLD_BACK in filters else filters
        passed = True
        for item in [_HOLD_BACK, *after]:  # as logging.Filterer.filter does
            check: Any = item.filter if hasattr(item, "filter") else item
            verdict = check(record)
            if not verdict:
                passed = False
                break
            if isinstance(verdict, logging.LogRecord):  # Python 3.12: a filter may swap it
                record = verdict
        if passed:
            logger.callHandlers(record)


#: Set on a record of ours once :func:`report_unheard` gave it to ``logging.lastResort``.
_REPORTED = "_immutable_logging_reported"


def report_unheard(record: logging.LogRecord, silent: type[logging.Handler]) -> None:
    """Give a warning (or worse) of our own loggers to ``logging.lastResort`` (stderr) when
    only ``silent`` handlers would get it: they never chain our records, so with the
    handler on the root logger alone (the usual set-up) a failing replica went unseen.
    ``logging`` itself does the same for a record no handler gets.
    """
    last = logging.lastResort
    if (last is None or record.levelno < max(logging.WARNING, last.level)
            or _REPORTED in record.__dict__
            or not (record.name == "immutable_logging"
                    or record.name.startswith("immutable_logging."))):
        return
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:  # the handlers Logger.callHandlers visits
        for handler in logger.handlers:
            if not isinstance(handler, silent) and record.levelno >= handler.level:
                return  # someone else shows it
        logger = logger.parent if logger.propagate else None
    record.__dict__[_REPORTED] = True
    last.handle(record)
