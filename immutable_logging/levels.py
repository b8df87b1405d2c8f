"""Custom levels AUDIT, SECURITY, REVENUE and SYSTEM, and the logger methods for them.

All four sit at or above ``INFO`` so that the usual ``INFO`` threshold keeps them::

    SYSTEM = 21   AUDIT = 25   REVENUE = 26   SECURITY = 35

Nothing changes the :mod:`logging` module until :func:`install` is called. ``install()`` is
idempotent: it registers the level names and adds ``Logger.audit``, ``Logger.security``,
``Logger.revenue`` and ``Logger.system`` (and the same on ``LoggerAdapter``). The methods
report the caller's ``funcName``/``lineno``, exactly like ``Logger.info``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

SYSTEM = 21
AUDIT = 25
REVENUE = 26
SECURITY = 35

CUSTOM_LEVELS: dict[str, int] = {
    "SYSTEM": SYSTEM,
    "AUDIT": AUDIT,
    "REVENUE": REVENUE,
    "SECURITY": SECURITY,
}


def register_level_names() -> None:
    """Register the four level names with :func:`logging.addLevelName` (idempotent)."""
    for name, value in CUSTOM_LEVELS.items():
        if logging.getLevelName(value) != name:
            logging.addLevelName(value, name)


def _make_logger_method(level: int) -> Callable[..., None]:
    def method(self: logging.Logger, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            # One extra frame (this method) sits between the caller and Logger._log.
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            self._log(level, msg, args, **kwargs)

    return method


def _make_adapter_method(level: int) -> Callable[..., None]:
    def method(self: logging.LoggerAdapter[Any], msg: object, *args: Any, **kwargs: Any) -> None:
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
        self.log(level, msg, *args, **kwargs)

    return method


def install() -> None:
    """Register the custom level names and add ``audit/security/revenue/system`` methods.

    Safe to call any number of times; existing attributes of the same name that were not
    added by this function are left alone.
    """
    register_level_names()
    for name, value in CUSTOM_LEVELS.items():
        attr = name.lower()
        for cls, factory in (
            (logging.Logger, _make_logger_method),
            (logging.LoggerAdapter, _make_adapter_method),
        ):
            existing = getattr(cls, attr, None)
            if existing is not None and not getattr(existing, "_immutable_logging_level", None):
                continue
            method = factory(value)
            method.__name__ = attr
            method.__qualname__ = f"{cls.__name__}.{attr}"
            method.__doc__ = f"Log ``msg % args`` at level {name} ({value})."
            method._immutable_logging_level = value  # type: ignore[attr-defined]
            setattr(cls, attr, method)
