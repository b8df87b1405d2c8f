"""Shared fixtures: every test gets a clean logging state back."""

from __future__ import annotations

import contextlib
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
    saved_level_names = dict(logging._levelToName)
    saved_name_levels = dict(logging._nameToLevel)
    yield
    for name in set(manager.loggerDict) - saved_names:
        logger = manager.loggerDict.get(name)
        if isinstance(logger, logging.Logger):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                with contextlib.suppress(Exception):
                    handler.close()
    for handler in list(root.handlers):
        if handler not in saved_root_handlers:
            root.removeHandler(handler)
            with contextlib.suppress(Exception):
                handler.close()
    root.handlers[:] = saved_root_handlers
    root.setLevel(saved_root_level)
    logging.disable(saved_disable)
    logging._levelToName.clear()
    logging._levelToName.update(saved_level_names)
    logging._nameToLevel.clear()
    logging._nameToLevel.update(saved_name_levels)


@pytest.fixture
def logger_name() -> str:
    """A logger name no other test uses."""
    return f"test.{uuid.uuid4().hex}"
