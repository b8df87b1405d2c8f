"""structlog integration: structlog events become chain entries with their fields hashed as
structured ``metadata`` (never a stringified message).

Two ways to wire structlog to the chain; pick one.

**1. Native structlog** -- :class:`ChainProcessor` writes the event dict straight into an
:class:`~immutable_logging.ImmutableHandler` (no stdlib logger involved). ``event`` becomes the
entry's ``message``, every other key a ``metadata`` field, ``exc_info`` the ``exc`` member;
``func``/``line`` are the application's call site::

    import structlog
    from immutable_logging import ImmutableHandler
    from immutable_logging.integrations.structlog import ChainProcessor, ImmutableBoundLogger

    handler = ImmutableHandler("/var/log/app", tenant="acme")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.TimeStamper(fmt="iso"),   # optional, stored as a field
            ChainProcessor(handler),                        # put it before the renderer
            structlog.dev.ConsoleRenderer(),                # or ChainProcessor(handler, drop=True)
        ],
        wrapper_class=ImmutableBoundLogger,
    )
    log = structlog.get_logger("payments")
    log.audit("refund approved", order_id=42, amount=Decimal("9.99"))

Do not put ``format_exc_info``/``dict_tracebacks`` before :class:`ChainProcessor`: it renders
``exc_info`` itself (into the entry's ``exc`` member).

**2. Through the standard library** -- structlog hands the event to a stdlib logger and the
record reaches :class:`~immutable_logging.ImmutableHandler` like any other record. Finish the
structlog chain with :func:`render_to_log_kwargs` (a drop-in replacement for
``structlog.stdlib.render_to_log_kwargs``): it passes the fields as
``extra={"_immutable_fields": {...}}``, which the handler stores as ``metadata`` (so field
names such as ``name`` or ``module`` never collide with :class:`logging.LogRecord`
attributes). Use ``structlog.stdlib.LoggerFactory()`` so ``func``/``line`` are the caller's::

    structlog.configure(
        processors=[
            filter_by_level,                                # knows AUDIT & co.
            structlog.contextvars.merge_contextvars,
            render_to_log_kwargs,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=ImmutableBoundLogger,
    )

Other handlers can still render with ``structlog.stdlib.ProcessorFormatter``: add
:func:`add_record_fields` to its ``foreign_pre_chain`` and the fields show up in the
rendered output too::

    console.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[add_record_fields],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.dev.ConsoleRenderer()],
    ))

**Custom levels.** structlog only knows the stdlib level names (``log.log(25, ...)`` raises
``KeyError`` in ``structlog.stdlib.BoundLogger``). :class:`ImmutableBoundLogger` adds
``audit()``, ``security()``, ``revenue()`` and ``system()`` and accepts any number in
``log()``; it works for both ways above. structlog's generic ``structlog.BoundLogger``
(native way) hands ``log.audit(...)`` to the processors too (:class:`ChainProcessor` maps
the method name and writes the entry), but then calls ``audit`` on the wrapped logger, which
``PrintLogger`` and the like do not have: use ``ChainProcessor(handler, drop=True)`` as the
last processor, or :class:`ImmutableBoundLogger`. Where a method name has no level
(``log.msg(...)``), a ``level="audit"`` key chooses the level. The ``level`` key written by
``add_log_level`` is not stored as a field (it repeats the entry's ``level``); neither is
``logger`` when it repeats the entry's ``logger``. Its async methods (``ainfo()``,
``aaudit()``, ...) log in the calling coroutine, not in structlog's thread pool, so that the
call site is the application's on both ways (with ``backup_async=False`` or
``durability="always"`` each call then waits for its upload or fsync in the event loop).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from types import FrameType
from typing import Any

import structlog
import structlog.contextvars
import structlog.stdlib
from structlog.exceptions import DropEvent

from ..entry import FIELDS_ATTR, resolve_exc_info
from ..levels import AUDIT, REVENUE, SECURITY, SYSTEM, register_level_names

__all__ = [
    "LEVELS",
    "RESERVED_KEYS",
    "ChainProcessor",
    "ImmutableBoundLogger",
    "add_record_fields",
    "event_fields",
    "filter_by_level",
    "level_number",
    "render_to_log_kwargs",
]

EventDict = MutableMapping[str, Any]

#: Method names structlog users log with, and their level numbers (custom levels included).
LEVELS: dict[str, int] = {
    "notset": logging.NOTSET,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "system": SYSTEM,
    "audit": AUDIT,
    "revenue": REVENUE,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "security": SECURITY,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}

_CUSTOM_NAMES: dict[int, str] = {SYSTEM: "system", AUDIT: "audit", REVENUE: "revenue",
                                 SECURITY: "security"}
_STD_NAMES: dict[int, str] = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}

#: Event-dict keys that are never stored as metadata fields: they become entry members
#: (``event`` -> ``message``, ``exc_info`` -> ``exc``, ``stack_info`` -> ``stack``), control
#: logging (``stacklevel``, ``positional_args``) or are ProcessorFormatter internals.
RESERVED_KEYS = frozenset(
    {"event", "exc_info", "stack_info", "stacklevel", "positional_args", "_record",
     "_from_structlog"}
)

#: Module-name prefixes skipped when looking for the application's call site.
_IGNORED_MODULES = ("structlog", "logging", __name__)


def level_number(method_name: str, event_dict: Mapping[str, Any] | None = None) -> int:
    """The level number of a structlog call.

    The method name wins (``info`` -> 20, ``audit`` -> 25, ...). For methods without a level
    (``msg``) the event dict's ``level`` key decides (a name such as ``"audit"`` or a
    number); otherwise ``INFO``.
    """
    known = LEVELS.get(method_name)
    if known is not None:
        return known
    if method_name.startswith("level ") and method_name[6:].isdigit():
        return int(method_name[6:])  # what log(33, ...) passes for a number with no name
    level = event_dict.get("level") if event_dict is not None else None
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str):
        by_name = LEVELS.get(level.lower())
        if by_name is not None:
            return by_name
        registered = logging.getLevelName(level.upper())
        if isinstance(registered, int):
            return registered
    return logging.INFO


def _level_aliases(method_name: str, levelno: int) -> set[str]:
    names = {method_name.lower(), logging.getLevelName(levelno).lower()}
    if method_name == "exception":
        names.add("error")
    if method_name == "warn":
        names.add("warning")
    return names


def event_fields(
    event_dict: Mapping[str, Any],
    *,
    method_name: str = "info",
    levelno: int | None = None,
    logger_name: str | None = None,
) -> dict[str, Any]:
    """The structured fields of an event dict: every key except :data:`RESERVED_KEYS`.

    ``level`` is left out when it repeats the entry's level, ``logger`` when it equals
    ``logger_name``. Values are kept as they are; the handler converts what JSON cannot
    represent (``Decimal``, ``bytes``, ...) as described in :mod:`immutable_logging.entry`.
    """
    if levelno is None:
        levelno = level_number(method_name, event_dict)
    fields: dict[str, Any] = {}
    for key, value in event_dict.items():
        if key in RESERVED_KEYS:
            continue
        if key == "level" and str(value).lower() in _level_aliases(method_name, levelno):
            continue
        if key == "logger" and logger_name is not None and value == logger_name:
            continue
        fields[key] = value
    return fields


def _render_message(event: Any, args: Any) -> tuple[str, dict[str, Any]]:
    """``event % positional_args`` like the stdlib, never raising."""
    message = "" if event is None else str(event)
    if not args:
        return message, {}
    if isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
        args = args[0]
    try:
        return message % args, {}
    except Exception as exc:  # a bad format string must not lose the event
        return message, {"_format_error": f"{type(exc).__name__}: {exc}", "_args": repr(args)}


def _starts_with_module(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _caller_frame(ignores: Sequence[str]) -> FrameType | None:
    """The first frame outside structlog, logging, this module and ``ignores``.

    Under structlog's async methods (``await log.ainfo(...)``) processors run in a thread
    pool; structlog then records the calling frame in a context variable, used here.
    """
    async_stack = getattr(structlog.contextvars, "_ASYNC_CALLING_STACK", None)
    frame: FrameType | None = None
    if async_stack is not None:
        frame = async_stack.get(None)
    if frame is None:
        frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if not _starts_with_module(name, ignores):
            return frame
        frame = frame.f_back
    return None


class ChainProcessor:
    """structlog processor that writes each event into an ImmutableHandler's chain.

    Args:
        handler: the :class:`~immutable_logging.ImmutableHandler` (any :class:`logging.Handler`
            works: it receives a regular :class:`logging.LogRecord`).
        logger_name: the entry's ``logger`` when the event has no ``logger`` key and the
            wrapped logger has no ``name``.
        level: events below this level are not written (the handler's level applies too).
        drop: raise :class:`structlog.DropEvent` after writing, so nothing else runs (use it
            when the chain is the only output and this is the last processor). By default
            the event dict is returned unchanged for the next processor.
        additional_ignores: module-name prefixes to skip when locating the call site (for
            your own logging wrappers).

    The record's ``message`` is ``event`` (``%``-formatted with ``positional_args`` if any),
    ``metadata`` holds the other keys (see :func:`event_fields`), ``exc`` the formatted
    ``exc_info`` (``log.exception(...)`` implies ``exc_info=True``), ``stack`` the stack for
    ``stack_info=True``. Writing never raises into the application: the handler reports
    failures through :meth:`logging.Handler.handleError`.
    """

    def __init__(
        self,
        handler: logging.Handler,
        *,
        logger_name: str = "structlog",
        level: int = logging.NOTSET,
        drop: bool = False,
        additional_ignores: Iterable[str] = (),
    ) -> None:
        register_level_names()
        self.handler = handler
        self.logger_name = logger_name
        self.level = level
        self.drop = drop
        self._ignores = (*_IGNORED_MODULES, *additional_ignores)

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        """Write ``event_dict`` to the chain; return it unchanged (or drop it)."""
        levelno = level_number(method_name, event_dict)
        if levelno >= self.level and levelno >= self.handler.level:
            self.handler.handle(self.make_record(logger, method_name, event_dict, levelno))
        if self.drop:
            raise DropEvent
        return event_dict

    def make_record(
        self, logger: Any, method_name: str, event_dict: Mapping[str, Any], levelno: int
    ) -> logging.LogRecord:
        """Build the :class:`logging.LogRecord` for one event (fields in ``_immutable_fields``)."""
        named = event_dict.get("logger")
        wrapped_name = getattr(logger, "name", None)
        if isinstance(named, str) and named:
            name = named
        elif isinstance(wrapped_name, str) and wrapped_name:
            name = wrapped_name
        else:
            name = self.logger_name
        message, problems = _render_message(
            event_dict.get("event"), event_dict.get("positional_args")
        )
        fields = event_fields(
            event_dict, method_name=method_name, levelno=levelno, logger_name=name
        )
        fields.update(problems)
        exc_value = event_dict.get("exc_info", True if method_name == "exception" else None)
        exc_info = resolve_exc_info(exc_value)
        frame = _caller_frame(self._ignores)
        if frame is not None:
            pathname, lineno, func = frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name
        else:
            pathname, lineno, func = "(unknown file)", 0, "(unknown function)"
        sinfo = None
        if event_dict.get("stack_info") and frame is not None:
            sinfo = "Stack (most recent call last):\n" + "".join(
                traceback.format_stack(frame)
            ).rstrip("\n")
        record = logging.LogRecord(
            name, levelno, pathname, lineno, message, None, exc_info, func, sinfo
        )
        setattr(record, FIELDS_ATTR, fields)
        return record


def _method_name(level: int) -> str:
    """The method name processors see for a level number (``"level 33"`` when it has no
    name: :func:`level_number` reads the number back)."""
    name = _CUSTOM_NAMES.get(level) or _STD_NAMES.get(level)
    return name if name is not None else str(logging.getLevelName(level)).lower()


def render_to_log_kwargs(
    logger: Any, method_name: str, event_dict: EventDict
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Final processor for the stdlib way: turn the event into stdlib logging arguments.

    ``event`` becomes the message (with ``positional_args`` as the ``%`` arguments),
    ``exc_info``/``stack_info``/``stacklevel`` become the logging keyword arguments, and
    every other key goes to ``extra={"_immutable_fields": {...}}``, which
    :class:`~immutable_logging.ImmutableHandler` stores as ``metadata``. Unlike structlog's
    own ``render_to_log_kwargs`` no field can collide with a LogRecord attribute.
    """
    levelno = level_number(method_name, event_dict)
    kwargs: dict[str, Any] = {}
    for key in ("exc_info", "stack_info", "stacklevel"):
        if key in event_dict:
            kwargs[key] = event_dict[key]
    logger_name = getattr(logger, "name", None)
    fields = event_fields(
        event_dict,
        method_name=method_name,
        levelno=levelno,
        logger_name=logger_name if isinstance(logger_name, str) else None,
    )
    kwargs["extra"] = {FIELDS_ATTR: fields}
    event = event_dict.get("event")
    args = event_dict.get("positional_args") or ()
    return ("" if event is None else event, *args), kwargs


def add_record_fields(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """``ProcessorFormatter`` ``foreign_pre_chain`` processor: copy the ``_immutable_fields``
    of the record being formatted into the event dict (existing keys win), so handlers
    rendering with structlog show the same fields the chain stores."""
    record = event_dict.get("_record")
    fields = getattr(record, FIELDS_ATTR, None)
    if isinstance(fields, Mapping):
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    return event_dict


def filter_by_level(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """Like ``structlog.stdlib.filter_by_level`` but knows AUDIT, SECURITY, REVENUE, SYSTEM
    (structlog's raises ``KeyError`` for them). Drops the event when the stdlib logger is
    disabled or would not log at this level."""
    levelno = level_number(method_name, event_dict)
    if getattr(logger, "disabled", False) or levelno < logger.getEffectiveLevel():
        raise DropEvent
    return event_dict


class ImmutableBoundLogger(structlog.stdlib.BoundLogger):
    """``structlog.stdlib.BoundLogger`` with the custom levels of :mod:`immutable_logging`.

    Adds :meth:`audit`, :meth:`security`, :meth:`revenue` and :meth:`system`, and makes
    :meth:`log` accept any level number (``log.log(AUDIT, "...")``). Processors receive the
    lower-case level name as ``method_name``. When the wrapped logger is a stdlib logger the
    record is logged with ``Logger.log(level, ...)`` and reports the application's call
    site (``funcName``/``lineno``) for every method, whether the logger came from
    ``structlog.stdlib.LoggerFactory`` or is a plain :class:`logging.Logger` created
    earlier (by ``dictConfig``, say); ``install()`` is not needed for that. With a non-stdlib
    wrapped logger (native way) the wrapped logger's method of that name, or ``msg``, is
    called with the processors' result.
    """

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at DEBUG (10)."""
        return self._log_at("debug", logging.DEBUG, event, args, kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at INFO (20)."""
        return self._log_at("info", logging.INFO, event, args, kw)

    def warning(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at WARNING (30)."""
        return self._log_at("warning", logging.WARNING, event, args, kw)

    warn = warning

    def error(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at ERROR (40)."""
        return self._log_at("error", logging.ERROR, event, args, kw)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at ERROR with ``exc_info=True`` unless given."""
        kw.setdefault("exc_info", True)
        return self._log_at("exception", logging.ERROR, event, args, kw)

    def critical(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at CRITICAL (50)."""
        return self._log_at("critical", logging.CRITICAL, event, args, kw)

    def fatal(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at CRITICAL (50)."""
        return self._log_at("critical", logging.CRITICAL, event, args, kw)

    def audit(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at AUDIT (25)."""
        return self._log_at("audit", AUDIT, event, args, kw)

    def security(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at SECURITY (35)."""
        return self._log_at("security", SECURITY, event, args, kw)

    def revenue(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at REVENUE (26)."""
        return self._log_at("revenue", REVENUE, event, args, kw)

    def system(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at SYSTEM (21)."""
        return self._log_at("system", SYSTEM, event, args, kw)

    def log(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at any level number, custom levels included (no ``KeyError``)."""
        return self._log_at(_method_name(level), level, event, args, kw)

    # The async methods log right here, in the calling coroutine, instead of structlog's
    # thread pool: a stdlib logger would otherwise report the pool's frames as the call
    # site. Chaining an entry takes microseconds; the event loop does not notice.
    async def adebug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """:meth:`debug`, awaitable."""
        return self._log_at("debug", logging.DEBUG, event, args, kw)

    async def ainfo(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """:meth:`info`, awaitable."""
        return self._log_at("info", logging.INFO, event, args, kw)

    async def awarning(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """:meth:`warning`, awaitable."""
        return self._log_at("warning", logging.WARNING, event, args, kw)

    async def aerror(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """:meth:`error`, awaitable."""
        return self._log_at("error", logging.ERROR, event, args, kw)

    async def aexception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """:meth:`exception`, awaitable."""
        kw.setdefault("exc_info", True)
        return self._log_at("exception", logging.ERROR, event, args, kw)

    async def acritical(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """:meth:`critical`, awaitable."""
        return self._log_at("critical", logging.CRITICAL, event, args, kw)

    afatal = acritical

    async def aaudit(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """:meth:`audit`, awaitable."""
        return self._log_at("audit", AUDIT, event, args, kw)

    async def asecurity(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """:meth:`security`, awaitable."""
        return self._log_at("security", SECURITY, event, args, kw)

    async def arevenue(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """:meth:`revenue`, awaitable."""
        return self._log_at("revenue", REVENUE, event, args, kw)

    async def asystem(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """:meth:`system`, awaitable."""
        return self._log_at("system", SYSTEM, event, args, kw)

    async def alog(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """:meth:`log`, awaitable."""
        return self._log_at(_method_name(level), level, event, args, kw)

    def _log_at(
        self,
        method_name: str,
        levelno: int,
        event: str | None,
        args: tuple[Any, ...],
        kw: dict[str, Any],
    ) -> Any:
        # Called directly by the public methods above: exactly two frames of this module
        # sit between the application and the wrapped logger (see ``stacklevel`` below).
        if args:
            kw["positional_args"] = args
        try:
            out_args, out_kw = self._process_event(method_name, event, kw)
        except DropEvent:
            return None
        target = self._logger
        if isinstance(target, logging.Logger | logging.LoggerAdapter):
            call_kw = dict(out_kw)
            # Skip _log_at and the public method: correct for logging.Logger and for
            # structlog's LoggerFactory loggers alike.
            call_kw["stacklevel"] = int(call_kw.get("stacklevel", 1)) + 2
            return target.log(levelno, *out_args, **call_kw)
        method = getattr(target, method_name, None) or target.msg
        return method(*out_args, **out_kw)
