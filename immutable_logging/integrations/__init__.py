"""Integrations with other logging libraries.

Each integration lives in its own sub-module and imports its third-party library lazily (only
when the sub-module itself is imported), so ``import immutable_logging`` never requires them:

* :mod:`immutable_logging.integrations.structlog` -- structlog processors and a bound logger
  with ``audit()``/``security()``/``revenue()``/``system()`` methods
  (``pip install immutable-logging[structlog]``).

Django, Flask and :func:`logging.config.dictConfig` need no integration code: they configure
:class:`immutable_logging.ImmutableHandler` like any other handler (see ``examples/``).
"""

from __future__ import annotations

__all__: list[str] = []
