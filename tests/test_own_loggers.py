from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from immutable_logging import ImmutableHandler
from immutable_logging.own_loggers import holding_back, own_logger, release
from immutable_logging.query import iter_entries


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def logged(logger_name: str) -> tuple[logging.Logger, _Collect]:
    logger = own_logger(f"immutable_logging.{logger_name}")
    collect = _Collect()
    logger.addHandler(collect)
    logger.propagate = False
    return logger, collect


def test_records_are_held_back_until_released_in_order(
    logged: tuple[logging.Logger, _Collect]
) -> None:
    logger, collect = logged
    with holding_back() as records:
        logger.warning("first %d", 1)
        logger.error("second")
        assert collect.messages == []
    assert [r.getMessage() for r in records] == ["first 1", "second"]
    release(records)
    assert collect.messages == ["first 1", "second"]
    assert records == []
    logger.warning("outside")
    assert collect.messages[-1] == "outside"


def test_other_threads_are_not_held_back(logged: tuple[logging.Logger, _Collect]) -> None:
    logger, collect = logged
    with holding_back() as records:
        other = threading.Thread(target=logger.warning, args=("from another thread",))
        other.start()
        other.join()
        assert collect.messages == ["from another thread"]
    assert records == []


def test_nested_holding_back_keeps_each_level(logged: tuple[logging.Logger, _Collect]) -> None:
    logger, collect = logged
    with holding_back() as outer:
        with holding_back() as inner:
            logger.warning("inner")
        logger.warning("outer")
        release(inner)  # still inside the outer hold: held back again, there
        assert collect.messages == []
    assert [r.getMessage() for r in outer] == ["outer", "inner"]
    release(outer)
    assert collect.messages == ["outer", "inner"]


def test_an_exception_ends_the_hold(logged: tuple[logging.Logger, _Collect]) -> None:
    logger, collect = logged
    with pytest.raises(RuntimeError), holding_back():
        raise RuntimeError("boom")
    logger.warning("after")
    assert collect.messages == ["after"]


def test_own_logger_adds_its_filter_once(logger_name: str) -> None:
    name = f"immutable_logging.{logger_name}"
    assert own_logger(name) is own_logger(name) is logging.getLogger(name)
    assert len(logging.getLogger(name).filters) == 1


def test_filters_see_a_held_back_record_once(logger_name: str) -> None:
    """A counting filter added before the library's own filter (an application's, set up
    before importing us) must not count a held-back record twice; one added after runs
    when the record is released."""
    name = f"immutable_logging.{logger_name}"
    logger = logging.getLogger(name)
    seen_before: list[str] = []
    seen_after: list[str] = []
    logger.addFilter(lambda record: seen_before.append(record.getMessage()) or True)
    own_logger(name)
    logger.addFilter(lambda record: seen_after.append(record.getMessage()) or True)
    collect = _Collect()
    logger.addHandler(collect)
    logger.propagate = False
    with holding_back() as records:
        logger.warning("held")
    assert (seen_before, seen_after, collect.messages) == (["held"], [], [])
    release(records)
    assert (seen_before, seen_after, collect.messages) == (["held"], ["held"], ["held"])


def test_a_filter_after_ours_can_still_drop_a_released_record(logger_name: str) -> None:
    logger = own_logger(f"immutable_logging.{logger_name}")
    logger.addFilter(lambda record: record.levelno >= logging.ERROR)
    collect = _Collect()
    logger.addHandler(collect)
    logger.propagate = False
    with holding_back() as records:
        logger.warning("dropped")
        logger.error("kept")
    release(records)
    assert collect.messages == ["kept"]


def test_our_warnings_reach_stderr_when_only_our_handler_would_get_them(
    tmp_path: Path, logger_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the DR audit: with the handler on the root logger alone (the README's
    set-up) a failing replica logged its retries and its stop to nobody; the handler
    never chains our records, and logging's last resort only runs when no handler is."""
    root = logging.getLogger()
    first, second = ImmutableHandler(tmp_path / "a"), ImmutableHandler(tmp_path / "b")
    root.handlers[:] = [first, second]  # pytest's capture handler out of the way
    ours = logging.getLogger(f"immutable_logging.{logger_name}")
    ours.warning("replica down, retrying")
    ours.info("batch shipped")  # below a warning: not for stderr
    logging.getLogger(f"botocore.{logger_name}").warning("a retry of botocore's own")
    assert capsys.readouterr().err == "replica down, retrying\n"  # once, for two handlers
    shown = _Collect()
    root.addHandler(shown)  # somebody else shows it: nothing more on stderr
    ours.error("replication stopped")
    assert capsys.readouterr().err == "" and shown.messages == ["replication stopped"]
    for handler in (first, second):
        handler.close()
        assert [e["message"] for e in iter_entries(handler.directory)] == []
