"""A re-entrant lock that can tell whether the calling thread holds it.

``threading.RLock`` (the C implementation and the Python one) has ``_is_owned()``, which
``threading.Condition`` relies on, but typeshed does not list it. The writer, the handler
and the replicator ask it to notice a call re-entering from a signal handler or a
finalizer on the thread that already holds the lock (waiting would deadlock).
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Protocol, cast


class OwnedRLock(Protocol):
    """What the package uses of a ``threading.RLock``, ``_is_owned`` included."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...

    def __enter__(self) -> bool: ...

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None: ...

    def _is_owned(self) -> bool:
        """Whether the calling thread holds the lock."""


def owned_rlock() -> OwnedRLock:
    """A new ``threading.RLock``, typed so that ``_is_owned()`` needs no ``type: ignore``."""
    return cast(OwnedRLock, threading.RLock())
