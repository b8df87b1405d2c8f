"""Shared fixtures: every test gets a clean logging state back."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_logging_state() -> Iterator[None]:
    """Snapshot the logging module's global state and restore it after the test."""
    root = logging.getLogger()
    saved_root_handlers = list(root.handlers)
    saved_root_level = root.level
    manager = logging.Logger.manager
    saved_names = set(manager.loggerDict)
    saved_disable = manager.disable
    saved_level_names = dict(logging._levelToName)  # noqa: SLF001
    saved_name_levels = dict(logging._nameToLevel)  # noqa: SLF001
    yield
    for name in set(manager.loggerDict) - saved_names:
        logger = manager.loggerDict.get(name)
        if isinstance(logger, logging.Logger):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                try:
                    handler.close()
                except Exception:
                    pass
    for handler in list(root.handlers):
        if handler not in saved_root_handlers:
            root.removeHandler(handler)
            try:
                handler.close()
            except Exception:
                pass
    root.handlers[:] = saved_root_handlers
    root.setLevel(saved_root_level)
    logging.disable(saved_disable)
    logging._levelToName.clear()  # noqa: SLF001
    logging._levelToName.update(saved_level_names)  # noqa: SLF001
    logging._nameToLevel.clear()  # noqa: SLF001
    logging._nameToLevel.update(saved_name_levels)  # noqa: SLF001


@pytest.fixture
def logger_name() -> str:
    """A logger name no other test uses."""
    return f"test.{uuid.uuid4().hex}"
