"""``ChainQueueHandler``: put an :class:`ImmutableHandler` behind a ``QueueListener``.

The stock :meth:`logging.handlers.QueueHandler.prepare` formats the record and folds the
traceback into the message. For an in-process queue feeding the chain that loses structure,
so this handler only freezes the message text and the traceback text (the record may
outlive its arguments) and keeps ``exc``/``stack``/``extra`` fields separate::

    chain = ImmutableHandler("/var/log/app", tenant="acme")
    records = queue.Queue(-1)
    listener = QueueListener(records, chain, respect_handler_level=True)
    logging.getLogger().addHandler(ChainQueueHandler(records))
    listener.start()
    atexit.register(listener.stop)      # before logging.shutdown() closes `chain`

On Python 3.12+ ``dictConfig`` can build the pair (``"class":
"immutable_logging.ChainQueueHandler", "handlers": ["chain"]``); it creates the listener
but does not start it: ``logging.getHandlerByName("queue").listener.start()``.
"""

from __future__ import annotations

import copy
import logging
import logging.handlers

from .entry import format_exception


class ChainQueueHandler(logging.handlers.QueueHandler):
    """A ``QueueHandler`` that keeps records structured for an ImmutableHandler."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Freeze the message and traceback text now; keep the rest of the record."""
        record = copy.copy(record)  # other handlers keep the original
        try:
            record.msg = record.getMessage()
            record.args = None
        except Exception:
            pass  # left as is: the chain records the format error losslessly
        if record.exc_info:
            format_exception(record)  # caches the traceback text in exc_text
            record.exc_info = None
        return record
