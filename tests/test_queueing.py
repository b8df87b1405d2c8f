from __future__ import annotations

import logging
import queue
from logging.handlers import QueueListener
from pathlib import Path

from immutable_logging import ChainQueueHandler, ImmutableHandler
from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant


def test_records_through_the_queue_keep_their_structure(tmp_path: Path, logger_name: str) -> None:
    chain = ImmutableHandler(tmp_path)
    records: queue.Queue[logging.LogRecord] = queue.Queue(-1)
    listener = QueueListener(records, chain, respect_handler_level=True)
    logger = logging.getLogger(logger_name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(ChainQueueHandler(records))
    listener.start()
    mutable = {"n": 1}
    logger.info("value %s", mutable, extra={"order": 7})
    mutable["n"] = 2  # the message was frozen when the record was queued
    try:
        raise KeyError("missing")
    except KeyError:
        logger.exception("lookup failed")
    listener.stop()
    chain.close()
    entries = list(iter_entries(tmp_path))
    assert entries[0]["message"] == "value {'n': 1}"
    assert entries[0]["metadata"] == {"order": 7}
    assert entries[0]["func"] == "test_records_through_the_queue_keep_their_structure"
    assert entries[1]["message"] == "lookup failed"
    assert "KeyError: 'missing'" in entries[1]["exc"]
    assert verify_tenant(tmp_path).ok
