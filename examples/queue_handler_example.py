"""Log through a ``QueueHandler`` so the application thread never waits for the chain's I/O.

The :class:`~immutable_logging.ImmutableHandler` sits behind a
:class:`logging.handlers.QueueListener` thread. Run::

    python examples/queue_handler_example.py [LOG_DIR]

``LOG_DIR`` defaults to ``$IMMUTABLE_LOG_DIR`` or a new temporary directory; the script logs
from several threads, stops the listener, verifies the chain and prints a JSON summary.

**Python 3.11** (what this script does): ``dictConfig`` cannot wire a ``QueueHandler`` to
other handlers, so build the pair by hand and *start the listener yourself*::

    chain = ImmutableHandler("/var/log/app", tenant="acme")
    q: queue.Queue[logging.LogRecord] = queue.Queue(-1)
    listener = QueueListener(q, chain, respect_handler_level=True)
    logging.getLogger().addHandler(ChainQueueHandler(q))
    listener.start()
    atexit.register(listener.stop)   # runs before logging.shutdown() closes `chain`

**Python 3.12+**: ``dictConfig`` accepts ``handlers`` (and ``listener``/``queue``) for a
``QueueHandler``; it creates the ``QueueListener`` but does **not** start it::

    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "chain": {
                "class": "immutable_logging.ImmutableHandler",
                "directory": "/var/log/app",
                "tenant": "acme",
            },
            "queue": {
                "class": "immutable_logging.ChainQueueHandler",
                "handlers": ["chain"],
                "respect_handler_level": True,
            },
        },
        "root": {"handlers": ["queue"], "level": "INFO"},
    }
    logging.config.dictConfig(LOGGING)
    queue_handler = logging.getHandlerByName("queue")
    queue_handler.listener.start()
    atexit.register(queue_handler.listener.stop)

Why :class:`ChainQueueHandler` rather than the plain ``QueueHandler``: the stock
``QueueHandler.prepare`` formats the record and clears ``exc_info``/``exc_text``/
``stack_info``, so the traceback ends up inside the chained ``message`` instead of the
entry's own ``exc``/``stack`` members. The queue here is in-process (nothing is pickled), so
:class:`ChainQueueHandler` only freezes the message (``msg % args``, done now, not later in the
listener thread) and the traceback text, and keeps everything else, ``extra=`` fields included.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import sys
import tempfile
import threading

import immutable_logging
from immutable_logging import ChainQueueHandler, ImmutableHandler
from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant

TENANT = "queue-demo"
THREADS = 4
PER_THREAD = 250


def setup(directory: str) -> tuple[logging.handlers.QueueListener, ImmutableHandler]:
    """Attach a ChainQueueHandler to the ``app`` logger and start the listener (3.11 form)."""
    chain = ImmutableHandler(directory, tenant=TENANT)
    records: queue.Queue[logging.LogRecord] = queue.Queue(-1)
    listener = logging.handlers.QueueListener(records, chain, respect_handler_level=True)
    app = logging.getLogger("app")
    app.setLevel(logging.DEBUG)
    app.propagate = False
    app.addHandler(ChainQueueHandler(records))
    listener.start()
    return listener, chain


def main(argv: list[str]) -> int:
    """Log from several threads through the queue, stop, verify; print a summary."""
    directory = argv[1] if len(argv) > 1 else os.environ.get("IMMUTABLE_LOG_DIR")
    directory = directory or tempfile.mkdtemp(prefix="immutable-queue-")
    immutable_logging.install()
    listener, chain = setup(directory)
    log = logging.getLogger("app.worker")

    def work(worker: int) -> None:
        for i in range(PER_THREAD):
            log.audit("job %d of worker %d done", i, worker, extra={"worker": worker, "job": i})  # type: ignore[attr-defined]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        raise ConnectionError("broker unreachable")
    except ConnectionError:
        log.exception("publishing failed", extra={"queue": "events"})

    listener.stop()  # drains the queue into the chain
    chain.close()

    report = verify_tenant(directory, TENANT, parse=True)
    entries = list(iter_entries(directory, TENANT))
    with_exc = sum(1 for e in entries if "exc" in e)
    print(
        json.dumps(
            {
                "directory": directory,
                "tenant": TENANT,
                "entries": len(entries),
                "with_exc": with_exc,
                "verified": report.ok,
            }
        )
    )
    return 0 if report.ok and len(entries) == THREADS * PER_THREAD + 1 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
