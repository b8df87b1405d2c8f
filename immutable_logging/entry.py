"""Turn a :class:`logging.LogRecord` into a canonical chain entry, and entry lines back.

The line format is described in ``docs/FORMAT.md``::

    {"seq":<int>,"prev":"<hex>",<payload members sorted by key>,"hash":"<hex>"}

``hash`` is the SHA-256 of the line with the ``hash`` member removed (the *hashed bytes*).
The payload is encoded by orjson with sorted keys, so the bytes are canonical.

Metadata that JSON cannot represent is converted, never rejected (see :func:`json_fallback`):

=====================  ===========================================
value                  stored as
=====================  ===========================================
``Decimal``            ``str(value)``
``set``/``frozenset``  list, sorted by ``repr`` of the items
``bytes``/bytearray    ``{"$bytes": "<base64>"}``
``Enum``               its ``.value`` (converted again if needed)
``os.PathLike``        ``os.fspath(value)``
integers > 64 bit      ``str(value)``
non-string dict keys   ``str(key)`` (``"<str> (<type>)"`` if a string key has it)
lone surrogates        ``\\udXXX`` escapes
anything else          ``repr(value)`` (or ``<unrepresentable T>``)
=====================  ===========================================
"""

from __future__ import annotations

import base64
import enum
import hashlib
import logging
import os
import socket
import sys
import traceback
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

GENESIS_HASH = "0" * 64
HASH_SUFFIX_LEN = 75  # len(',"hash":"') + 64 + len('"}')
HASH_MEMBER = b',"hash":"'
_HASH_MEMBER = HASH_MEMBER
#: ``LINE_PREFIX % (seq, prev_hash_bytes)``: how every entry line starts (a format, not a
#: function, so that the verify and replication loops pay no call per line).
LINE_PREFIX = b'{"seq":%d,"prev":"%s",'
_DUMPS_OPTS = orjson.OPT_SORT_KEYS
_sha256 = hashlib.sha256

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_INIT_ATTRS = list(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__)
STANDARD_RECORD_ATTRS = frozenset(_INIT_ATTRS) | {"message", "asctime"}  # taskName: 3.12
#: ``LogRecord.__init__`` sets these first, in this order; ``extra=`` keys come after them.
_N_INIT = len(_INIT_ATTRS)
_LAST_INIT = _INIT_ATTRS[-1]

#: Private attribute the facade uses to pass a metadata dict through ``extra=``.
METADATA_ATTR = "_immutable_metadata"
#: Attribute that integrations may set to a dict of structured fields (structlog).
FIELDS_ATTR = "_immutable_fields"

HOSTNAME = socket.gethostname()

#: Extras structlog's ``ProcessorFormatter.wrap_for_formatter`` puts on records.
_STRUCTLOG_ATTRS = frozenset({"_logger", "_name"})
#: Event-dict keys that are not fields (structlog's own bookkeeping).
_STRUCTLOG_RESERVED = frozenset(
    {"event", "exc_info", "stack_info", "positional_args", "_record", "_from_structlog"}
)
#: Names structlog gives a level besides the level's own name (``log.exception`` and
#: ``log.warn`` in older versions): an event dict's ``level`` with one of them repeats it.
_LEVEL_ALIASES = {"exception": "error", "warn": "warning", "fatal": "critical"}
_SKIPPED_EXTRAS = frozenset({METADATA_ATTR, FIELDS_ATTR})
#: Attributes that are never copied into an entry's metadata as they are.
_NOT_EXTRAS = STANDARD_RECORD_ATTRS | _SKIPPED_EXTRAS


def json_fallback(value: Any) -> Any:
    """Convert a value orjson cannot serialise into a JSON-safe one (documented above)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__qualname__}>"


def _sanitise(value: Any, depth: int = 0) -> Any:
    """Slow path: rebuild a value so that orjson accepts it (big ints, odd keys, cycles)."""
    if depth > 64:
        return "<nested too deep>"
    if isinstance(value, str):
        return _clean_text(value)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        # String keys first: a non-string key is the one renamed when both give one name.
        items = sorted(value.items(), key=lambda kv: not isinstance(kv[0], str))
        for key, item in items:
            name = _clean_text(key if isinstance(key, str) else str(key))
            if name in result:  # e.g. {1: "a", "1": "b"}: keep both, never a duplicate
                name = _clean_text(f"{name} ({type(key).__name__})")
                while name in result:
                    name += "'"
            result[name] = _sanitise(item, depth + 1)
        return result
    if isinstance(value, list | tuple):
        return [_sanitise(v, depth + 1) for v in value]
    try:
        converted = orjson.loads(orjson.dumps(value, default=json_fallback))
    except (TypeError, orjson.JSONEncodeError):
        converted = json_fallback(value)
    if converted is value:
        return repr(value)
    return _sanitise(converted, depth + 1)


def _clean_text(text: str) -> str:
    """``text`` if it is valid Unicode, else lone surrogates as ``\\udXXX`` escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def canonical_payload(payload: Mapping[str, Any]) -> bytes:
    """Encode a payload dict canonically (sorted keys); never raises for odd values.

    NaN and infinities are written as ``null``: JSON has no literal for them, and even a
    byte search of every encoded entry for ``null`` cost 6% of the logging call.
    """
    try:
        return orjson.dumps(payload, default=json_fallback, option=_DUMPS_OPTS)
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps(_sanitise(payload), option=_DUMPS_OPTS)


def hashed_bytes(seq: int, prev: str, payload: bytes) -> bytes:
    """The bytes an entry's hash is computed over (the line without its hash member)."""
    return b'{"seq":%d,"prev":"%s",%s' % (seq, prev.encode("ascii"), payload[1:])


def make_line(seq: int, prev: str, payload: bytes) -> tuple[bytes, str]:
    """Build a complete entry line (with trailing newline) and return it with its hash."""
    body = b'{"seq":%d,"prev":"%s",%s' % (seq, prev.encode("ascii"), payload[1:])
    digest = _sha256(body).hexdigest()
    return b'%s,"hash":"%s"}\n' % (body[:-1], digest.encode("ascii")), digest


def split_line(line: bytes) -> tuple[int, str, str, bytes] | None:
    """Parse the chain fields of a line without decoding the payload.

    Returns ``(seq, prev, hash, hashed_bytes)`` or ``None`` when the line does not have the
    entry shape. ``line`` must not include the trailing newline.
    """
    if (
        len(line) < 160
        or not line.startswith(b'{"seq":')
        or line[-HASH_SUFFIX_LEN : -HASH_SUFFIX_LEN + 9] != _HASH_MEMBER
        or not line.endswith(b'"}')
    ):
        return None
    comma = line.find(b",", 7)
    if comma < 0 or line[comma : comma + 9] != b',"prev":"':
        return None
    digits = line[7:comma]
    if not digits.isdigit():
        return None
    prev = line[comma + 9 : comma + 73]
    if line[comma + 73 : comma + 75] != b'",':
        return None
    return (
        int(digits),
        prev.decode("ascii", "replace"),
        line[-66:-2].decode("ascii", "replace"),
        line[:-HASH_SUFFIX_LEN] + b"}",
    )


def entry_hash(hashed: bytes) -> str:
    """SHA-256 hex digest of an entry's hashed bytes."""
    return _sha256(hashed).hexdigest()


def format_exception(record: logging.LogRecord) -> str | None:
    """The formatted traceback of a record, cached on the record like ``Formatter`` does."""
    if record.exc_info:
        if not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        return record.exc_text
    return record.exc_text or None


def render_message(record: logging.LogRecord) -> tuple[str, dict[str, Any] | None]:
    """``record.getMessage()``, or a lossless fallback when the arguments do not fit."""
    try:
        return record.getMessage(), None
    except Exception as exc:  # a bad format string must not lose the record
        return _text_of(record.msg), {
            "_format_error": _text_of(f"{type(exc).__name__}: {_text_of(exc)}"),
            "_args": _text_of(record.args, repr),
        }


def _text_of(value: Any, convert: Any = str) -> str:
    """``convert(value)`` if that gives a str, else its ``repr``, else a placeholder: a
    message object whose ``__str__`` raises must not lose the record."""
    for attempt in (convert, repr):
        try:
            text = attempt(value)
        except Exception:
            continue
        if isinstance(text, str):
            return text
    return f"<unrepresentable {type(value).__qualname__}>"


def record_metadata(record: logging.LogRecord) -> dict[str, Any]:
    """Everything the caller attached to the record: ``extra=`` keys and facade metadata."""
    attrs = record.__dict__
    extras = len(attrs) - _N_INIT
    if not extras:
        return {}
    meta: dict[str, Any] = {}
    seen = 0
    for key in reversed(attrs):  # extra= keys come after the ones __init__ sets
        if key == _LAST_INIT:
            break
        seen += 1
        if key not in _NOT_EXTRAS:
            meta[key] = attrs[key]
    if seen != extras:  # an unusual layout (attributes deleted or re-added): scan them all
        meta = {key: value for key, value in attrs.items() if key not in _NOT_EXTRAS}
    facade_meta = attrs.get(METADATA_ATTR)
    if isinstance(facade_meta, Mapping):
        meta.update(facade_meta)
    fields = attrs.get(FIELDS_ATTR)
    if isinstance(fields, Mapping):
        meta.update(fields)
    return meta


def _unwrap_structlog(record: logging.LogRecord) -> logging.LogRecord:
    """A record made by structlog's ``wrap_for_formatter`` carries the event dict as its
    message: store the event as the message and the other keys as fields instead. The
    original record (shared with other handlers) is left untouched."""
    event_dict = record.msg
    if not isinstance(event_dict, Mapping):
        return record
    copy = logging.makeLogRecord(record.__dict__)
    for name in _STRUCTLOG_ATTRS:  # structlog's, not the caller's: no fields
        del copy.__dict__[name]
    event = event_dict.get("event")
    copy.msg = "" if event is None else event
    copy.args = tuple(event_dict.get("positional_args") or ()) or None
    level = record.levelname.lower()
    copy.__dict__[FIELDS_ATTR] = {
        **(record.__dict__.get(FIELDS_ATTR) or {}),
        **{k: v for k, v in event_dict.items() if k not in _STRUCTLOG_RESERVED
           and not (k == "level" and _repeats_level(v, level))},
    }
    if not copy.exc_info:
        copy.exc_info = resolve_exc_info(event_dict.get("exc_info"))
    if not copy.stack_info and event_dict.get("stack_info"):
        copy.stack_info = _application_stack()
    return copy


def _repeats_level(value: Any, level: str) -> bool:
    """Whether an event dict's ``level`` value names ``level`` (lower case) again."""
    name = str(value).lower()
    return _LEVEL_ALIASES.get(name, name) == level


def resolve_exc_info(value: Any) -> Any:
    """An ``exc_info`` value (a tuple, an exception, or True for the exception being
    handled) as ``LogRecord.exc_info`` (None for none), like ``logging`` reads its keyword."""
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    if isinstance(value, tuple):
        return value if len(value) == 3 and isinstance(value[1], BaseException) else None
    if value:
        current = sys.exc_info()
        return current if current[1] is not None else None
    return None


def _application_stack() -> str:
    """What ``stack_info=True`` shows: the stack of the logging call, without the frames of
    logging, structlog and this package at its end."""
    machinery = tuple(
        os.path.dirname(os.path.abspath(module.__file__)) + os.sep
        for module in (logging, sys.modules.get("structlog"), sys.modules.get(__package__))
        if module is not None and module.__file__
    )
    frames = traceback.extract_stack()
    while frames and os.path.abspath(frames[-1].filename).startswith(machinery):
        frames.pop()
    return "Stack (most recent call last):\n" + "".join(
        traceback.format_list(frames)).rstrip("\n")


def record_payload(record: logging.LogRecord, tenant: str) -> dict[str, Any]:
    """Build the payload dict of a log entry from a record (see ``docs/FORMAT.md``).

    This runs for every record, so it reads the record's ``__dict__`` directly and skips
    the extra-field scan when the record has no extras.
    """
    attrs = record.__dict__
    has_extras = len(attrs) != _N_INIT
    if has_extras and "_logger" in attrs and "_name" in attrs:
        record = _unwrap_structlog(record)
        attrs = record.__dict__
    try:
        message = record.getMessage()
        format_problem = None
    except Exception:
        message, format_problem = render_message(record)
    payload: dict[str, Any] = {
        "ts": attrs["created"],
        "level": attrs["levelname"],
        "levelno": attrs["levelno"],
        "logger": attrs["name"],
        "message": message,
        "tenant": tenant,
        "host": HOSTNAME,
        "pid": attrs["process"],
        "thread": attrs["threadName"],
        "module": attrs["module"],
        "func": attrs["funcName"],
        "line": attrs["lineno"],
    }
    if has_extras or format_problem:
        meta = record_metadata(record)
        if format_problem:
            meta.update(format_problem)
        if meta:
            payload["metadata"] = meta
    if attrs["exc_info"] or attrs["exc_text"]:
        payload["exc"] = format_exception(record)
    if attrs["stack_info"]:
        payload["stack"] = attrs["stack_info"]
    return payload
