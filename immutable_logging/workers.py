"""Worker processes for per-segment work that is independent (verifying sealed segments).

Sealed segments can be checked one by one and the results stitched together in order,
so on a multi-core machine a large log is verified by several processes at once. Worker
processes are *forked*, and only from a process that runs a single thread: forking a
process with other threads can deadlock the child, and the other start methods would
re-import the caller's ``__main__``. Anywhere else the work runs in the calling process,
with the same results.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Below this many bytes of segment files, forking costs more than it saves.
PARALLEL_MIN_BYTES = 8 * 1024 * 1024


def usable_cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(requested: int | None, items: int, total_bytes: int) -> int:
    """How many worker processes to use for ``items`` pieces of work; 0 = none.

    ``requested``: ``None`` decides automatically (every usable CPU, for at least
    :data:`PARALLEL_MIN_BYTES` of input), ``0`` or ``1`` never forks, ``N`` uses up to N.
    """
    if requested is not None and requested <= 1:
        return 0
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return 0
    if requested is None:
        if total_bytes < PARALLEL_MIN_BYTES:
            return 0
        requested = usable_cpus()
    count = min(requested, items)
    return count if count >= 2 else 0


def forked_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` forked processes (see the module docstring for when)."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


@contextlib.contextmanager
def in_workers(
    workers: int, func: Callable[..., T], items: Sequence[Any], *args: Any
) -> Iterator[list[Future[T]]]:
    """Futures of ``func(item, *args)`` for every item, run by ``workers`` forked processes.

    Yields ``[]`` (do everything in this process) when ``workers`` is 0 or forking fails
    (a process limit...). A future may also fail later (a killed worker): callers redo
    that piece themselves. The pool is shut down on exit, pending work cancelled.
    """
    if not workers:
        yield []
        return
    pool = forked_pool(workers)
    try:
        try:
            futures = [pool.submit(func, item, *args) for item in items]
        except (OSError, RuntimeError):
            futures = []
        yield futures
    finally:
        pool.shutdown(cancel_futures=True)


def total_size(paths: Iterable[Path]) -> int:
    """Bytes in ``paths`` (a file that vanished counts 0)."""
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total
