from __future__ import annotations

import inspect
import logging

import pytest

from immutable_logging import levels


def test_levels_are_at_or_above_info_and_distinct() -> None:
    values = list(levels.CUSTOM_LEVELS.values())
    assert all(v >= logging.INFO for v in values)
    assert len(set(values)) == len(values)


def test_install_is_explicit_and_idempotent(logger_name: str) -> None:
    levels.install()
    first = logging.Logger.audit  # type: ignore[attr-defined]
    levels.install()
    assert logging.Logger.audit is not None  # type: ignore[attr-defined]
    assert first.__name__ == "audit"
    for name, value in levels.CUSTOM_LEVELS.items():
        assert logging.getLevelName(value) == name
        assert logging.getLevelName(name) == value


@pytest.mark.parametrize("method", ["audit", "security", "revenue", "system"])
def test_logger_methods_report_caller_location(logger_name: str, method: str) -> None:
    levels.install()
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(logger_name)
    logger.addHandler(Capture())
    logger.setLevel(logging.INFO)
    line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
    getattr(logger, method)("hello %s", "world")
    assert len(records) == 1
    record = records[0]
    assert record.getMessage() == "hello world"
    assert record.levelname == method.upper()
    assert record.funcName == "test_logger_methods_report_caller_location"
    assert record.lineno == line
    assert record.filename == "test_levels.py"


def test_adapter_methods_and_thresholds(logger_name: str) -> None:
    levels.install()
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(logger_name)
    logger.addHandler(Capture())
    logger.setLevel(logging.WARNING)
    adapter = logging.LoggerAdapter(logger, {"k": 1})
    adapter.audit("dropped below WARNING")  # type: ignore[attr-defined]
    line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
    adapter.security("kept")  # type: ignore[attr-defined]
    assert [r.getMessage() for r in records] == ["kept"]
    assert records[0].lineno == line
    assert records[0].funcName == "test_adapter_methods_and_thresholds"
