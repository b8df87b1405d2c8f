from __future__ import annotations

import enum
import hashlib
import logging
import sys
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from immutable_logging.entry import (
    FIELDS_ATTR,
    GENESIS_HASH,
    METADATA_ATTR,
    canonical_payload,
    hashed_bytes,
    json_fallback,
    make_line,
    record_payload,
    split_line,
)


class Color(enum.Enum):
    RED = "red"


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque 42>"


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _record(
    msg: str = "hello %s", args: tuple[object, ...] = ("x",), **extra: object
) -> logging.LogRecord:
    record = logging.LogRecord("app.mod", logging.INFO, __file__, 10, msg, args, None, "fn")
    record.__dict__.update(extra)
    return record


def test_line_round_trip_and_hash_definition() -> None:
    payload = canonical_payload({"b": 1, "a": "x"})
    assert payload == b'{"a":"x","b":1}'
    line, digest = make_line(7, GENESIS_HASH, payload)
    assert line.endswith(b"\n")
    seq, prev, stored, hashed = split_line(line[:-1])  # type: ignore[misc]
    assert (seq, prev, stored) == (7, GENESIS_HASH, digest)
    assert hashed == hashed_bytes(7, GENESIS_HASH, payload)
    assert hashlib.sha256(hashed).hexdigest() == digest
    obj = orjson.loads(line)
    assert obj == {"seq": 7, "prev": GENESIS_HASH, "a": "x", "b": 1, "hash": digest}


def test_split_line_rejects_non_entries() -> None:
    line, _ = make_line(1, GENESIS_HASH, b'{"a":1}')
    assert split_line(b"hello") is None
    assert split_line(line[:-2]) is None
    assert split_line(line[:-1].replace(b'"seq":1', b'"seq":x')) is None
    assert split_line(line[:-1].replace(b',"prev":"', b',"prev"_"')) is None


def test_record_payload_fields() -> None:
    record = _record(user_id=5, roles=["a"])
    payload = record_payload(record, "acme")
    assert payload["message"] == "hello x"
    assert payload["metadata"] == {"user_id": 5, "roles": ["a"]}
    assert payload["tenant"] == "acme"
    assert payload["level"] == "INFO" and payload["levelno"] == logging.INFO
    assert payload["logger"] == "app.mod" and payload["func"] == "fn" and payload["line"] == 10
    assert {"ts", "host", "pid", "thread", "module"} <= payload.keys()
    assert "exc" not in payload


def test_exception_text_is_recorded() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record()
        record.exc_info = sys.exc_info()
    payload = record_payload(record, "t")
    assert "ValueError: boom" in payload["exc"]
    assert "Traceback" in payload["exc"]


def test_bad_format_arguments_keep_the_record() -> None:
    payload = record_payload(_record("%d items", ("not-a-number",)), "t")
    assert payload["message"] == "%d items"
    assert "TypeError" in payload["metadata"]["_format_error"]
    assert payload["metadata"]["_args"] == "('not-a-number',)"


def test_non_json_metadata_uses_the_documented_fallback() -> None:
    meta = {
        "dec": Decimal("1.10"),
        "set": {3, 1, 2},
        "raw": b"\x00\xff",
        "color": Color.RED,
        "path": Path("/tmp/x"),
        "obj": Opaque(),
        "bad": BadRepr(),
        "big": 2**80,
        1: "int key",
    }
    data = canonical_payload({"metadata": meta})
    decoded = orjson.loads(data)["metadata"]
    assert decoded["dec"] == "1.10"
    assert decoded["set"] == [1, 2, 3]
    assert decoded["raw"] == {"$bytes": "AP8="}
    assert decoded["color"] == "red"
    assert decoded["path"] == "/tmp/x"
    assert decoded["obj"] == "<Opaque 42>"
    assert decoded["bad"] == "<unrepresentable BadRepr>"
    assert decoded["big"] == str(2**80)
    assert decoded["1"] == "int key"
    assert canonical_payload({"metadata": meta}) == data  # deterministic


@pytest.mark.parametrize("extra", [{}, {"big": 2**80}])  # plain path, slow path
def test_nan_and_infinities_are_stored_as_null_on_both_paths(extra: dict[str, object]) -> None:
    # Documented: JSON has no literal for them; looking for them in every entry (even a
    # byte search of the encoded line for null) cost 6% of the logging call.
    meta = {"nan": float("nan"), "inf": float("inf"), "nested": [1.5, -float("inf")],
            "ok": 2.5, **extra}
    decoded = orjson.loads(canonical_payload({"metadata": meta}))["metadata"]
    assert (decoded["nan"], decoded["inf"], decoded["nested"], decoded["ok"]) == (
        None, None, [1.5, None], 2.5)


def test_fallback_handles_cycles_without_raising() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    data = canonical_payload({"metadata": {"c": cyclic}})
    assert b"nested too deep" in data


def test_json_fallback_direct() -> None:
    assert json_fallback(frozenset({"b", "a"})) == ["a", "b"]


def test_metadata_from_custom_record_factories_is_kept() -> None:
    class EarlyAttrRecord(logging.LogRecord):
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.request_id = "r-1"  # set before LogRecord.__init__: not at the end
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.region = "eu"

    record = EarlyAttrRecord("app", logging.INFO, __file__, 1, "m", None, None)
    record.__dict__["order"] = 7
    assert record_payload(record, "t")["metadata"] == {
        "request_id": "r-1", "region": "eu", "order": 7,
    }
    plain = logging.LogRecord("app", logging.INFO, __file__, 1, "m", None, None)
    plain.message = "formatted by another handler"  # Formatter-added attributes are not extras
    plain.asctime = "2026-01-01"
    assert "metadata" not in record_payload(plain, "t")


def test_metadata_survives_an_init_attribute_moved_to_the_end() -> None:
    record = _record(request_id="r-2")
    last_init = list(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__)[-1]
    value = record.__dict__.pop(last_init)
    record.__dict__[last_init] = value  # now after the extra: the fast scan must notice
    assert record_payload(record, "t")["metadata"] == {"request_id": "r-2"}


def test_facade_metadata_and_fields_merge_over_extras() -> None:
    record = _record(a=1, b=2)
    record.__dict__[METADATA_ATTR] = {"b": "facade", "c": 3}
    record.__dict__[FIELDS_ATTR] = {"c": "field"}
    assert record_payload(record, "t")["metadata"] == {"a": 1, "b": "facade", "c": "field"}
    reordered = logging.getLogger("app").makeRecord(
        "app", logging.INFO, __file__, 1, "m", None, None, extra={METADATA_ATTR: {"u": "a"}})
    for name in ("process", "args"):  # moved after the facade attribute
        reordered.__dict__[name] = reordered.__dict__.pop(name)
    assert record_payload(reordered, "t")["metadata"] == {"u": "a"}
    only_facade = _record()
    only_facade.__dict__[METADATA_ATTR] = {"k": "v"}
    assert record_payload(only_facade, "t")["metadata"] == {"k": "v"}


def test_lone_surrogates_and_colliding_keys_are_kept() -> None:
    data = canonical_payload(
        {"message": "surrogate \ud800 here", "metadata": {1: "a", "1": "b", "\udcff": 2}}
    )
    decoded = orjson.loads(data)
    assert decoded["message"] == "surrogate \\ud800 here"
    # the string key keeps its name; the int key that also reads "1" is the one renamed
    assert decoded["metadata"] == {"1": "b", "1 (int)": "a", "\\udcff": 2}
    assert data.count(b'"1"') == 1  # never two members with the same name


def test_a_message_whose_str_fails_keeps_the_record() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text")

        def __repr__(self) -> str:
            return "<Broken>"

    class NotText:
        def __str__(self) -> int:  # type: ignore[override]
            return 5

    for msg, stored in ((Broken(), "<Broken>"), (NotText(), repr(NotText)[8:-2])):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, msg, None, None)
        payload = record_payload(record, "t")
        assert stored in payload["message"]  # its repr
        assert payload["metadata"]["_format_error"].startswith(("RuntimeError", "TypeError"))


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="taskName is a record attribute")
def test_an_extra_named_taskname_is_kept_before_python_312() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.__dict__["taskName"] = "job-7"
    assert record_payload(record, "t")["metadata"] == {"taskName": "job-7"}


def test_extras_named_like_structlogs_are_kept_on_ordinary_records() -> None:
    """Extras called ``_logger`` and ``_name`` were always dropped; only the pair that
    structlog's ``wrap_for_formatter`` adds (with an event dict as message) is bookkeeping."""
    record = _record(_name="billing", _logger="api")
    assert record_payload(record, "t")["metadata"] == {"_name": "billing", "_logger": "api"}
    wrapped = _record("%s", None, _name="billing", _logger=object())
    wrapped.msg = {"event": "paid", "order": 7}
    payload = record_payload(wrapped, "t")
    assert (payload["message"], payload["metadata"]) == ("paid", {"order": 7})


@pytest.mark.parametrize(("level", "value", "kept"), [
    (logging.ERROR, "exception", False), (logging.ERROR, "error", False),
    (logging.WARNING, "warn", False), (logging.CRITICAL, "fatal", False),
    (logging.INFO, "exception", True), (logging.INFO, "warn", True),
    (logging.DEBUG, "info", True),
])
def test_a_structlog_level_field_is_dropped_only_when_it_names_the_records_level(
    level: int, value: str, kept: bool
) -> None:
    record = _record("%s", None, _name="svc", _logger=object())
    record.levelno, record.levelname = level, logging.getLevelName(level)
    record.msg = {"event": "e", "level": value}
    assert record_payload(record, "t").get("metadata") == ({"level": value} if kept else None)
