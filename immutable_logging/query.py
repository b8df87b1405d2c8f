"""Read, search, query and summarise the entries of one tenant.

Entries are returned as plain dicts: the stored members (``seq``, ``prev``, ``hash``,
``ts``, ``level``, ``logger``, ``message``, ``metadata``, ...) plus ``stream`` and
``timestamp`` (ISO-8601, UTC). A tenant's reader only ever opens files under that tenant's
directory. Encrypted entries are decrypted when a ``decrypt`` function is given.

Query documents use MongoDB-style operators on dotted paths::

    {"level": "REVENUE", "metadata.amount": {"$gte": 1000}}

Supported: ``$eq $ne $gt $gte $lt $lte $in $nin $contains $regex $exists``; a bare value
means ``$eq``. Top-level ``$and`` / ``$or`` take lists of documents.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from .errors import QueryError
from .layout import iter_segment_lines, list_segments, list_streams, tenant_dir

Entry = dict[str, Any]
Decryptor = Callable[[Entry, str, str], Entry]
Predicate = Callable[[Entry], bool]

_MISSING = object()


def _iter_stream(stream_dir: Path, decrypt: Decryptor | None) -> Iterator[Entry]:
    stream = stream_dir.name
    for segment in list_segments(stream_dir):
        for raw, complete in iter_segment_lines(segment):
            if not complete:
                continue  # an entry being written, or a torn tail
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # damaged lines are verify's business, not the reader's
            if not isinstance(entry, dict):
                continue
            entry["stream"] = stream
            if decrypt is not None and "enc" in entry:
                entry = decrypt(entry, stream, str(segment.path))
            yield entry


def iter_entries(
    root: str | os.PathLike[str],
    tenant: str = "default",
    *,
    decrypt: Decryptor | None = None,
    include_system: bool = False,
) -> Iterator[Entry]:
    """All entries of a tenant in time order, merged across streams."""
    streams = list_streams(tenant_dir(root, tenant))
    iterators = [_iter_stream(s, decrypt) for s in streams]
    merged: Iterable[Entry] = (
        iterators[0] if len(iterators) == 1 else heapq.merge(*iterators, key=_sort_key)
    )
    for entry in merged:
        if not include_system and "kind" in entry:
            continue
        ts = entry.get("ts")
        if isinstance(ts, int | float):
            entry["timestamp"] = datetime.fromtimestamp(ts, UTC).isoformat()
        yield entry


def _sort_key(entry: Entry) -> tuple[float, str, int]:
    ts = entry.get("ts")
    return (
        float(ts) if isinstance(ts, int | float) else 0.0,
        str(entry.get("stream", "")),
        int(entry.get("seq", 0)),
    )


def resolve_path(entry: Mapping[str, Any], path: str) -> Any:
    """Value at a dotted path (``metadata.user.id``), or a private sentinel if absent."""
    value: Any = entry
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def check(value: Any, operand: Any) -> bool:
        if value is _MISSING or value is None:
            return False
        try:
            return op(value, operand)
        except TypeError:  # e.g. "abc" > 5: different types never match
            return False

    return check


def _contains(value: Any, operand: Any) -> bool:
    if isinstance(value, str):
        return isinstance(operand, str) and operand in value
    if isinstance(value, list | tuple):
        return operand in value
    if isinstance(value, Mapping):
        return operand in value
    return False


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda v, o: v is not _MISSING and v == o,
    "$ne": lambda v, o: v is _MISSING or v != o,
    "$gt": _compare(lambda v, o: bool(v > o)),
    "$gte": _compare(lambda v, o: bool(v >= o)),
    "$lt": _compare(lambda v, o: bool(v < o)),
    "$lte": _compare(lambda v, o: bool(v <= o)),
    "$in": lambda v, o: v is not _MISSING and v in o,
    "$nin": lambda v, o: v is _MISSING or v not in o,
    "$contains": _contains,
    "$regex": lambda v, o: isinstance(v, str) and o.search(v) is not None,
    "$exists": lambda v, o: (v is not _MISSING) == bool(o),
}


def _field_predicate(path: str, spec: Any) -> Predicate:
    if not isinstance(spec, Mapping) or not any(str(k).startswith("$") for k in spec):
        spec = {"$eq": spec}
    checks: list[tuple[Callable[[Any, Any], bool], Any]] = []
    for op, operand in spec.items():
        if op not in _OPERATORS:
            raise QueryError(
                f"unknown operator {op!r} for field {path!r}; supported: {', '.join(_OPERATORS)}"
            )
        if op in ("$in", "$nin"):
            if not isinstance(operand, list | tuple | set | frozenset):
                raise QueryError(f"{op} for field {path!r} needs a list, got {operand!r}")
        elif op == "$regex":
            if not isinstance(operand, str | re.Pattern):
                raise QueryError(f"$regex for field {path!r} needs a string")
            try:
                operand = re.compile(operand) if isinstance(operand, str) else operand
            except re.error as exc:
                raise QueryError(f"invalid $regex for field {path!r}: {exc}") from None
        checks.append((_OPERATORS[op], operand))

    def predicate(entry: Entry) -> bool:
        value = resolve_path(entry, path)
        return all(check(value, operand) for check, operand in checks)

    return predicate


def _combine(parts: list[Predicate], how: Callable[[Iterable[bool]], bool]) -> Predicate:
    return lambda entry: how(p(entry) for p in parts)


def compile_query(document: Mapping[str, Any]) -> Predicate:
    """Compile a query document into a predicate; raise QueryError when it is malformed."""
    if not isinstance(document, Mapping):
        raise QueryError(f"a query must be a mapping, got {type(document).__name__}")
    predicates: list[Predicate] = []
    for key, spec in document.items():
        if key in ("$and", "$or"):
            if not isinstance(spec, list) or not spec:
                raise QueryError(f"{key} needs a non-empty list of query documents")
            parts = [compile_query(part) for part in spec]
            predicates.append(_combine(parts, all if key == "$and" else any))
        elif not isinstance(key, str) or not key or key.startswith("$"):
            raise QueryError(f"invalid field name {key!r} in query")
        else:
            predicates.append(_field_predicate(key, spec))
    return lambda entry: all(p(entry) for p in predicates)


def _level_matches(level: str | int | None) -> Predicate | None:
    if level is None:
        return None
    if isinstance(level, int):
        return lambda e: e.get("levelno") == level
    wanted = level.upper()
    return lambda e: e.get("level") == wanted


def read_entries(
    entries: Iterable[Entry],
    *,
    limit: int | None = 100,
    level: str | int | None = None,
    offset: int = 0,
    newest_first: bool = False,
) -> list[Entry]:
    """Filter by level and slice: oldest first from ``offset`` (or newest first)."""
    if limit is not None and limit < 0:
        raise QueryError("limit must be >= 0")
    if offset < 0:
        raise QueryError("offset must be >= 0")
    match = _level_matches(level)
    selected = (e for e in entries if match is None or match(e))
    if newest_first:
        items = list(selected)[::-1]
        end = None if limit is None else offset + limit
        return items[offset:end]
    result: list[Entry] = []
    for index, entry in enumerate(selected):
        if index < offset:
            continue
        if limit is not None and len(result) >= limit:
            break
        result.append(entry)
    return result


def _text_of(entry: Entry) -> str:
    parts = [str(entry.get("message", ""))]
    meta = entry.get("metadata")
    if meta:
        parts.append(orjson.dumps(meta, default=str).decode("utf-8", "replace"))
    exc = entry.get("exc")
    if exc:
        parts.append(str(exc))
    return "\n".join(parts)


def search_entries(
    entries: Iterable[Entry], text: str, *, case_sensitive: bool = False, limit: int | None = None
) -> list[Entry]:
    """Entries whose message, metadata or exception text contains ``text``."""
    if not isinstance(text, str) or not text:
        raise QueryError("search text must be a non-empty string")
    needle = text if case_sensitive else text.lower()
    found: list[Entry] = []
    for entry in entries:
        haystack = _text_of(entry)
        if needle in (haystack if case_sensitive else haystack.lower()):
            found.append(entry)
            if limit is not None and len(found) >= limit:
                break
    return found


def query_entries(
    entries: Iterable[Entry], document: Mapping[str, Any], *, limit: int | None = None
) -> list[Entry]:
    """Entries matching a query document (see module doc)."""
    predicate = compile_query(document)
    found: list[Entry] = []
    for entry in entries:
        if predicate(entry):
            found.append(entry)
            if limit is not None and len(found) >= limit:
                break
    return found


def summarise(entries: Iterable[Entry]) -> dict[str, Any]:
    """Counts by level, logger and stream, and the time span covered."""
    by_level: Counter[str] = Counter()
    by_logger: Counter[str] = Counter()
    by_stream: Counter[str] = Counter()
    first: float | None = None
    last: float | None = None
    total = 0
    for entry in entries:
        total += 1
        by_level[str(entry.get("level"))] += 1
        by_logger[str(entry.get("logger"))] += 1
        by_stream[str(entry.get("stream"))] += 1
        ts = entry.get("ts")
        if isinstance(ts, int | float):
            first = ts if first is None or ts < first else first
            last = ts if last is None or ts > last else last
    return {
        "total_entries": total,
        "by_level": dict(by_level),
        "by_logger": dict(by_logger),
        "by_stream": dict(by_stream),
        "first_timestamp": datetime.fromtimestamp(first, UTC).isoformat() if first else None,
        "last_timestamp": datetime.fromtimestamp(last, UTC).isoformat() if last else None,
    }


def disk_usage(root: str | os.PathLike[str], tenant: str) -> dict[str, int]:
    """Bytes and segment files of a tenant on disk."""
    total = 0
    segments = 0
    for stream in list_streams(tenant_dir(root, tenant)):
        for segment in list_segments(stream):
            segments += 1
            with contextlib.suppress(FileNotFoundError):
                total += segment.path.stat().st_size
    return {"bytes_on_disk": total, "segments": segments}
