"""structlog integration: native processor path and stdlib path, custom levels, call sites."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

structlog = pytest.importorskip("structlog")

from immutable_logging import AUDIT, REVENUE, SECURITY, SYSTEM, ImmutableHandler  # noqa: E402
from immutable_logging.integrations.structlog import (  # noqa: E402
    ChainProcessor,
    ImmutableBoundLogger,
    add_record_fields,
    event_fields,
    filter_by_level,
    level_number,
    render_to_log_kwargs,
)
from immutable_logging.query import iter_entries  # noqa: E402
from immutable_logging.verify import verify_tenant  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """structlog's configuration and the stdlib logger class are global: restore both."""
    logger_class = logging.getLoggerClass()
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
    logging.setLoggerClass(logger_class)


@pytest.fixture
def handler(tmp_path: Path) -> Iterator[ImmutableHandler]:
    """An ImmutableHandler writing to a fresh directory, closed after the test."""
    h = ImmutableHandler(tmp_path, tenant="sl")
    yield h
    h.close()


def entries(handler: ImmutableHandler) -> list[dict[str, Any]]:
    """Flush and read back every log entry of the handler's tenant, verifying the chain."""
    handler.flush()
    report = verify_tenant(handler.directory, handler.tenant, parse=True)
    assert report.ok, report.problems
    return list(iter_entries(handler.directory, handler.tenant))


def here() -> int:
    """Line number of the caller (for asserting recorded call sites)."""
    return sys._getframe(1).f_lineno


def configure_native(handler: ImmutableHandler, **options: Any) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            ChainProcessor(handler, drop=True, **options),
        ],
        wrapper_class=ImmutableBoundLogger,
        cache_logger_on_first_use=False,
    )


def configure_stdlib() -> None:
    structlog.configure(
        processors=[
            filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            render_to_log_kwargs,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=ImmutableBoundLogger,
        cache_logger_on_first_use=False,
    )


def stdlib_logger(name: str, handler: ImmutableHandler, level: int = logging.DEBUG) -> None:
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


# --------------------------------------------------------------------------- native path
def test_native_fields_are_hashed_as_metadata_fields(handler: ImmutableHandler) -> None:
    configure_native(handler)
    log = structlog.get_logger().bind(request_id="r-1", logger="payments")
    line = here() + 1
    log.info("order paid", order_id=42, amount=Decimal("12.50"), tags={"b", "a"}, name="bob")

    [entry] = entries(handler)
    assert entry["message"] == "order paid"
    assert entry["level"] == "INFO" and entry["levelno"] == logging.INFO
    assert entry["logger"] == "payments"
    assert entry["metadata"] == {
        "request_id": "r-1",
        "order_id": 42,
        "amount": "12.50",
        "tags": ["a", "b"],
        "name": "bob",
    }
    assert entry["func"] == "test_native_fields_are_hashed_as_metadata_fields"
    assert entry["line"] == line
    assert entry["module"] == "test_integrations_structlog"
    assert "exc" not in entry


def test_native_custom_levels_with_bound_logger(handler: ImmutableHandler) -> None:
    configure_native(handler)
    log = structlog.get_logger()
    log.audit("a", k=1)
    log.security("s")
    log.revenue("r", amount=3)
    log.system("y")
    log.log(AUDIT, "via log %s", "number")
    log.log(SECURITY, "sec via log")

    got = [(e["level"], e["levelno"], e["message"]) for e in entries(handler)]
    assert got == [
        ("AUDIT", AUDIT, "a"),
        ("SECURITY", SECURITY, "s"),
        ("REVENUE", REVENUE, "r"),
        ("SYSTEM", SYSTEM, "y"),
        ("AUDIT", AUDIT, "via log number"),
        ("SECURITY", SECURITY, "sec via log"),
    ]
    # add_log_level's "level" repeats the entry level: not stored as a field.
    assert entries(handler)[0]["metadata"] == {"k": 1}


def test_native_custom_levels_with_generic_bound_logger(handler: ImmutableHandler) -> None:
    structlog.configure(
        processors=[ChainProcessor(handler, drop=True)],
        wrapper_class=structlog.BoundLogger,
        cache_logger_on_first_use=False,
    )
    log = structlog.get_logger()
    log.audit("generic audit", who="alice")
    log.msg("level from the event key", level="revenue")
    log.msg("no level at all")

    got = [(e["level"], e["message"], e.get("metadata")) for e in entries(handler)]
    assert got == [
        ("AUDIT", "generic audit", {"who": "alice"}),
        ("REVENUE", "level from the event key", None),
        ("INFO", "no level at all", None),
    ]


def test_native_exception_is_rendered_into_exc(handler: ImmutableHandler) -> None:
    configure_native(handler)
    log = structlog.get_logger()
    try:
        {}["missing"]
    except KeyError:
        log.exception("lookup failed", key="missing")
    try:
        raise ValueError("explicit")
    except ValueError as exc:
        log.warning("with instance", exc_info=exc)
    log.error("no exception", exc_info=False)

    first, second, third = entries(handler)
    assert first["level"] == "ERROR"
    assert "KeyError: 'missing'" in first["exc"]
    assert "Traceback (most recent call last)" in first["exc"]
    assert first["metadata"] == {"key": "missing"}
    assert "ValueError: explicit" in second["exc"]
    assert "metadata" not in second  # exc_info is never a field
    assert "exc" not in third


def test_native_stack_info(handler: ImmutableHandler) -> None:
    configure_native(handler)
    structlog.get_logger().info("where am I", stack_info=True)
    [entry] = entries(handler)
    assert entry["stack"].startswith("Stack (most recent call last):")
    assert "test_native_stack_info" in entry["stack"]
    assert "metadata" not in entry


def test_native_passthrough_keeps_other_output(handler: ImmutableHandler) -> None:
    structlog.configure(
        processors=[ChainProcessor(handler), structlog.processors.JSONRenderer(sort_keys=True)],
        wrapper_class=ImmutableBoundLogger,
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    log = structlog.get_logger()
    rendered = log.info("both outputs", user="u1")
    rendered_audit = log.audit("audit too", user="u2")

    assert json.loads(rendered) == {"event": "both outputs", "user": "u1"}
    assert json.loads(rendered_audit) == {"event": "audit too", "user": "u2"}
    got = [(e["level"], e["message"], e["metadata"]) for e in entries(handler)]
    assert got == [("INFO", "both outputs", {"user": "u1"}), ("AUDIT", "audit too", {"user": "u2"})]


def test_native_level_thresholds(handler: ImmutableHandler) -> None:
    handler.setLevel(logging.INFO)
    configure_native(handler, level=SYSTEM)
    log = structlog.get_logger()
    log.debug("below handler level")
    log.info("below processor level")
    log.system("kept")
    log.audit("kept too")
    assert [e["message"] for e in entries(handler)] == ["kept", "kept too"]


def test_native_positional_args_and_bad_format(handler: ImmutableHandler) -> None:
    configure_native(handler)
    log = structlog.get_logger()
    log.info("%s paid %d", "bob", 3)
    log.info("%(who)s", {"who": "carol"})
    log.info("%d broken", "not a number")
    first, second, third = entries(handler)
    assert first["message"] == "bob paid 3"
    assert second["message"] == "carol"
    assert third["message"] == "%d broken"
    assert third["metadata"]["_format_error"].startswith("TypeError")


# --------------------------------------------------------------------------- stdlib path
def test_stdlib_render_to_log_kwargs(handler: ImmutableHandler, logger_name: str) -> None:
    configure_stdlib()
    stdlib_logger(logger_name, handler)  # created after LoggerFactory: structlog's class
    log = structlog.get_logger(logger_name).bind(tenant_user="t-9")
    line = here() + 1
    log.info("user %s logged in", "alice", name="n", module="m", message="x", ip="10.0.0.1")

    [entry] = entries(handler)
    assert entry["logger"] == logger_name
    assert entry["message"] == "user alice logged in"
    # Keys that are LogRecord attributes do not collide: they are fields.
    assert entry["metadata"] == {
        "tenant_user": "t-9",
        "name": "n",
        "module": "m",
        "message": "x",
        "ip": "10.0.0.1",
    }
    assert entry["func"] == "test_stdlib_render_to_log_kwargs"
    assert entry["line"] == line
    assert entry["module"] == "test_integrations_structlog"


def test_stdlib_call_site_with_plain_logger(handler: ImmutableHandler, logger_name: str) -> None:
    stdlib_logger(logger_name, handler)  # a plain logging.Logger (e.g. made by dictConfig)
    assert type(logging.getLogger(logger_name)) is logging.Logger
    configure_stdlib()
    log = structlog.get_logger(logger_name)
    lines = [here() + 1]
    log.info("plain info")
    lines.append(here() + 1)
    log.audit("plain audit")
    lines.append(here() + 1)
    log.warning("plain warning", n=1)

    got = [(e["func"], e["line"], e["level"]) for e in entries(handler)]
    func = "test_stdlib_call_site_with_plain_logger"
    assert got == [(func, lines[0], "INFO"), (func, lines[1], "AUDIT"), (func, lines[2], "WARNING")]


def test_stdlib_custom_levels_and_filter(handler: ImmutableHandler, logger_name: str) -> None:
    configure_stdlib()
    stdlib_logger(logger_name, handler, level=REVENUE)
    log = structlog.get_logger(logger_name)
    line = here() + 1
    log.audit("dropped: below REVENUE")
    log.system("dropped too")
    log.revenue("kept", amount=10)
    log.security("kept", actor="mallory")
    log.log(AUDIT, "dropped by level number")
    log.log(SECURITY, "kept by number")

    got = [(e["level"], e["levelno"], e["message"], e.get("metadata")) for e in entries(handler)]
    assert got == [
        ("REVENUE", REVENUE, "kept", {"amount": 10}),
        ("SECURITY", SECURITY, "kept", {"actor": "mallory"}),
        ("SECURITY", SECURITY, "kept by number", None),
    ]
    assert entries(handler)[0]["line"] == line + 2
    # structlog's own filter and BoundLogger.log do not know the custom levels.
    with pytest.raises(KeyError):
        structlog.stdlib.filter_by_level(logging.getLogger(logger_name), "audit", {})
    with pytest.raises(KeyError):
        structlog.stdlib.BoundLogger(logging.getLogger(logger_name), [], {}).log(AUDIT, "x")


def test_stdlib_exception(handler: ImmutableHandler, logger_name: str) -> None:
    configure_stdlib()
    stdlib_logger(logger_name, handler)
    log = structlog.get_logger(logger_name)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("division failed", divisor=0)
    [entry] = entries(handler)
    assert entry["level"] == "ERROR"
    assert "ZeroDivisionError: division by zero" in entry["exc"]
    assert entry["metadata"] == {"divisor": 0}


def test_stdlib_processor_formatter_on_another_handler(
    handler: ImmutableHandler, logger_name: str
) -> None:
    configure_stdlib()
    stdlib_logger(logger_name, handler)
    stream = io.StringIO()
    console = logging.StreamHandler(stream)
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[add_record_fields],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
        )
    )
    logging.getLogger(logger_name).addHandler(console)
    structlog.get_logger(logger_name).audit("shown twice", order=7)

    rendered = json.loads(stream.getvalue())
    assert rendered == {"event": "shown twice", "order": 7}
    [entry] = entries(handler)
    assert (entry["message"], entry["metadata"], entry["level"]) == (
        "shown twice",
        {"order": 7},
        "AUDIT",
    )


def test_structlog_wrap_for_formatter_records_are_structured(
    handler: ImmutableHandler, logger_name: str
) -> None:
    structlog.configure(
        processors=[structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    stdlib_logger(logger_name, handler)
    structlog.get_logger(logger_name).info("plain structlog", user="u1")
    [entry] = entries(handler)
    assert entry["message"] == "plain structlog"
    assert entry["metadata"] == {"user": "u1"}


def test_wrap_for_formatter_keeps_exceptions_stacks_and_drops_the_level_field(
    handler: ImmutableHandler, logger_name: str
) -> None:
    """Found by the API audit: exc_info=True and stack_info=True were dropped, and the
    level key of add_log_level was stored as a field."""
    structlog.configure(
        processors=[structlog.stdlib.add_log_level,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    stdlib_logger(logger_name, handler)
    log = structlog.get_logger(logger_name)
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        log.exception("failed", order=1)
        log.error("failed again", exc_info=True)
    log.info("with stack", stack_info=True)
    failed, again, stacked = entries(handler)
    assert failed["metadata"] == {"order": 1} and "ZeroDivisionError: boom" in failed["exc"]
    assert "metadata" not in again and "ZeroDivisionError: boom" in again["exc"]
    assert stacked["stack"].startswith("Stack (most recent call last):")
    last_frame = stacked["stack"].splitlines()[-2]  # the application's line, nothing after
    assert __file__ in last_frame and "test_wrap_for_formatter_keeps" in last_frame


def test_log_with_a_number_that_has_no_name(
    handler: ImmutableHandler, logger_name: str
) -> None:
    """log(33) passed the method name 'level 33', read back as INFO: below a WARNING
    threshold it was dropped (stdlib way), and stored at INFO (native way)."""
    configure_stdlib()
    stdlib_logger(logger_name, handler, level=logging.WARNING)
    structlog.get_logger(logger_name).log(33, "stdlib way")
    structlog.get_logger(logger_name).log(15, "below the threshold")
    configure_native(handler)
    structlog.get_logger(logger_name).log(45, "native way")
    assert [(e["levelno"], e["message"]) for e in entries(handler)] == [
        (33, "stdlib way"), (45, "native way")]


def test_async_methods_record_the_coroutine_as_call_site(
    handler: ImmutableHandler, logger_name: str
) -> None:
    """structlog runs ainfo() & co in a thread pool: a stdlib logger then recorded the
    pool's frame (func '<lambda>', thread 'asyncio_0') as the call site."""
    import asyncio

    configure_stdlib()
    stdlib_logger(logger_name, handler)
    log = structlog.get_logger(logger_name)
    lines = []

    async def serve() -> None:
        lines.append(here() + 1)
        await log.ainfo("async info", user="u")
        lines.append(here() + 1)
        await log.aaudit("async audit")
        try:
            raise KeyError("k")
        except KeyError:
            lines.append(here() + 1)
            await log.aexception("async exception")

    asyncio.run(serve())
    got = [(e["func"], e["line"], e["thread"], e["level"]) for e in entries(handler)]
    assert got == [("serve", lines[0], "MainThread", "INFO"),
                   ("serve", lines[1], "MainThread", "AUDIT"),
                   ("serve", lines[2], "MainThread", "ERROR")]
    assert "KeyError" in entries(handler)[2]["exc"]


# --------------------------------------------------------------------------- helpers
def test_level_number_and_event_fields() -> None:
    assert level_number("audit") == AUDIT
    assert level_number("exception") == logging.ERROR
    assert level_number("msg", {"level": "security"}) == SECURITY
    assert level_number("msg", {"level": 26}) == REVENUE
    assert level_number("msg", {"level": "nonsense"}) == logging.INFO
    fields = event_fields(
        {"event": "e", "level": "info", "logger": "x", "exc_info": True, "k": 1},
        method_name="info",
        logger_name="x",
    )
    assert fields == {"k": 1}
    # A level that does not repeat the entry's level is user data: kept.
    assert event_fields({"level": "audit"}, method_name="info") == {"level": "audit"}
    assert event_fields({"logger": "other"}, logger_name="x") == {"logger": "other"}
