"""Read, search, query and summarise the entries of one tenant.

Entries are returned as plain dicts: the stored members (``seq``, ``prev``, ``hash``,
``ts``, ``level``, ``logger``, ``message``, ``metadata``, ...) plus ``stream`` and
``timestamp`` (ISO-8601, UTC). A tenant's reader only ever opens files under that tenant's
directory. Encrypted entries are decrypted when a ``decrypt`` function is given.

A stream's entries are those of its segments, then those of its ``flush`` journal that
continue the chain after them (:func:`journal_tail`): entries a writer logged but has not
written to a segment yet, such as the last ones of a process killed before it closed its
handler. They are read as the stream's next writer will append them, so a reader shows
them before that writer runs, in the same order and with the same content.

Without a key (no ``decrypt`` function), an encrypted entry is yielded *undecrypted*:
its clear members (``seq``, ``ts``, ``level``, ``levelno``, ``logger``, source location,
``host``, ``pid``, ...) plus the ``enc`` member exactly as stored, and no
``message``/``metadata``/``exc``/``stack`` (nor ``encrypted``). So counting, and reading
or querying by level, logger, time or seq, work without the key, while a search, or a
query on one of the secret fields, raises
:class:`~immutable_logging.errors.KeyUnavailableError` on such an entry instead of
silently not matching it. With a ``decrypt`` function every encrypted entry is
decrypted: a key id it lacks raises ``KeyUnavailableError``, a wrong key or a tampered
ciphertext :class:`~immutable_logging.errors.DecryptionError` (a reader given keys never
returns entries it silently left encrypted).

Query documents use MongoDB-style operators on dotted paths::

    {"level": "REVENUE", "metadata.amount": {"$gte": 1000}}

Supported: ``$eq $ne $gt $gte $lt $lte $in $nin $contains $regex $exists``; a bare value
means ``$eq``. Top-level ``$and`` / ``$or`` take lists of documents. As in MongoDB,
``true``/``false`` are not the numbers 1/0: ``{"n": 1}`` and ``{"n": {"$gte": 1}}`` do not
match ``"n": true``.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import math
import operator
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate, compress, repeat
from pathlib import Path
from typing import Any

import orjson

from .compression import READ_ERRORS
from .encryption import SECRET_FIELDS
from .entry import GENESIS_HASH, split_line
from .errors import KeyUnavailableError, QueryError, SegmentReadError
from .journal import pending_lines, read_journal
from .layout import (
    JOURNAL_FILE,
    Segment,
    last_seq_on_disk,
    list_segments,
    list_streams,
    segment_name,
    tenant_dir,
)

Entry = dict[str, Any]
Decryptor = Callable[[Entry, str, str], Entry]
Predicate = Callable[[Entry], bool]

_MISSING = object()


_SECRET_ROOTS = frozenset(SECRET_FIELDS)


def _secrets_unavailable(entry: Entry, file: str | None = None) -> KeyUnavailableError:
    """The error for an entry left undecrypted (see module doc) that a search or a query
    on ``message``/``metadata``/``exc``/``stack`` needs to look into."""
    enc = entry.get("enc")
    if isinstance(enc, str):
        kid: Any = enc.split(".", 2)[1] if enc.count(".") >= 2 else None
    else:
        kid = enc.get("kid") if isinstance(enc, Mapping) else None
    seq = entry.get("seq")
    key = f"key id {str(kid)[:80]!r}" if isinstance(kid, str) else "its key"
    return KeyUnavailableError(
        f"entry of stream {str(entry.get('stream'))[:80]!r} is encrypted and {key} is not "
        "available: searching or querying message, metadata, exc or stack needs the "
        "decryption key (level, logger, time and seq can be read without it)",
        file=file, seq=seq if isinstance(seq, int) else None)


def reads_secret_fields(document: Mapping[str, Any]) -> bool:
    """Whether a query document looks at an encrypted field (``message``, ``metadata``,
    ``exc``, ``stack`` or a path below one), in any ``$and``/``$or`` branch."""
    for key, spec in document.items():
        if key in ("$and", "$or"):
            if isinstance(spec, list) and any(
                    isinstance(part, Mapping) and reads_secret_fields(part) for part in spec):
                return True
        elif isinstance(key, str) and key.split(".", 1)[0] in _SECRET_ROOTS:
            return True
    return False


@dataclass(frozen=True)
class ReadDamage:
    """What a reader left out: a line that is no JSON entry, or the rest of a segment
    that cannot be read. ``immutable-log verify`` says more (it checks the chain too)."""

    file: str
    seq: int | None  #: the line's sequence number, when its start still says it
    detail: str

    def __str__(self) -> str:
        where = self.file if self.seq is None else f"{self.file}, seq {self.seq}"
        return f"{where}: {self.detail}"


#: A reader's list of what it left out (see :func:`iter_entries`), or None.
DamageList = list[ReadDamage] | None

_SEQ_START = re.compile(rb'\{"seq":(\d{1,20}),')


def unreadable_segment(path: str, exc: BaseException, damage: DamageList) -> None:
    """Record that the rest of segment ``path`` cannot be read in ``damage``; without a
    list, raise :class:`SegmentReadError`."""
    if damage is None:
        raise SegmentReadError(
            f"cannot read segment {path}: {exc}; run `immutable-log verify`") from exc
    damage.append(ReadDamage(path, None, f"the rest of the segment cannot be read: {exc}"))


class ChainHead:
    """The last complete line a reader has read of one stream, segment after segment: where
    the chain stood when it got there, which the journal entries it shows must continue
    (:func:`journal_tail`); and how far into which segment that was, so that a reader
    can go on from there (:meth:`StreamReader.journal`)."""

    __slots__ = ("end", "line", "segment")

    def __init__(self) -> None:
        #: None: nothing read yet (the chain starts at genesis); ``b""``: not known (a
        #: segment could not be read to its end), so no journal entry can follow it.
        self.line: bytes | None = None
        #: The number of the last segment read (0: none).
        self.segment = 0
        #: Its (uncompressed) bytes read up to the end of its last complete line; None
        #: when it was read elsewhere, whole (a sealed segment, by a worker process).
        self.end: int | None = 0

    def track(self, chunks: Iterable[bytes], segment: int, start: int = 0) -> Iterator[bytes]:
        """Pass through the chunks of segment number ``segment`` from its byte ``start``
        (a line's start; chunks hold whole lines but perhaps the last), keeping their last
        complete line and where it ends."""
        self.segment, self.end = segment, start
        position = start  # of the chunk in the segment
        for chunk in chunks:
            end = chunk.rfind(b"\n")
            if end >= 0:
                self.line = chunk[chunk.rfind(b"\n", 0, end) + 1 : end]
                self.end = position + end + 1
            position += len(chunk)
            yield chunk

    def passed(self, line: bytes | None, segment: int) -> None:
        """Segment number ``segment`` was read elsewhere (a worker process), whole; it
        ended with ``line`` (None: it was empty)."""
        if line is not None:
            self.line = line
        self.segment, self.end = segment, None

    def lost(self) -> None:
        """The rest of a segment could not be read: where the chain stands is not known."""
        self.line = b""


def journal_tail(stream_dir: Path, head: ChainHead) -> tuple[bytes, str] | None:
    """The entries of a stream's ``flush`` journal that continue the chain after ``head``,
    as one block of lines, and the name they are read under; ``(b"", "")`` for none, None
    when the stream's segments moved on past ``head`` (see below).

    These are entries a writer logged but has not written to its segment yet: a live
    writer's last 50 ms, or everything a writer killed before closing left behind. They
    are taken exactly as its next writer would append them
    (:func:`~immutable_logging.journal.pending_lines`: each checked against its own hash,
    the first linked to ``head``), so they are never entries the reader read in a segment.
    Their name is ``<stream>/.journal -> <segment>``: the journal and the segment they go
    to, whose number an encrypted entry's authentication binds. When the stream's segments
    moved past ``head`` meanwhile (a live writer wrote a batch), none are taken (the
    reader did not read those segments to their end) and None is returned.
    """
    if head.line is None:
        seq, link = 0, GENESIS_HASH
    else:
        parsed = split_line(head.line)
        if parsed is None:  # no chain entry (damage, or a segment not read to its end)
            return b"", ""
        seq, link = parsed[0], parsed[2]
    journal = stream_dir / JOURNAL_FILE
    try:
        data = read_journal(journal)
    except OSError:  # not ours to read
        return b"", ""
    if data is None:  # no journal: no writer, or one that closed
        return b"", ""
    # An entry that does not continue the chain ends the tail. It is no damage of what was
    # read: a live writer's batch write looks the same to a reader, and verify notes it.
    lines, _ = pending_lines(data, seq, link)
    # Checked even when no line continues ``head``: after a batch write the journal holds
    # later entries, and those the segments gained must be read.
    on_disk = last_seq_on_disk(stream_dir)
    if on_disk is not None and on_disk != seq:
        return None
    # The writer journals an entry only once its segment file exists, and writes the
    # batch before it opens the next one: while the chain on disk still ends at ``seq``,
    # the last segment listed is the one these entries go to.
    segments = list_segments(stream_dir)
    if not lines or not segments or on_disk is None:
        return b"", ""
    return b"".join(lines), f"{journal} -> {segment_name(segments[-1].number)}"


class StreamReader:
    """Reads one stream: its segments in order (:meth:`segment`), then the journal entries
    that continue the chain after them (:meth:`journal`); iterating it does both. The
    arguments are those of :func:`iter_entries`."""

    def __init__(
        self,
        stream_dir: Path,
        decrypt: Decryptor | None,
        line_filter: LineFilter | None,
        include_system: bool,
        need_secrets: bool,
        damage: DamageList,
    ) -> None:
        self.stream_dir = stream_dir
        self.head = ChainHead()
        self._damage = damage
        self._read = (decrypt, line_filter, include_system, need_secrets, damage)

    def __iter__(self) -> Iterator[Entry]:
        for segment in list_segments(self.stream_dir):
            yield from self.segment(segment)
        yield from self.journal()

    def segment(self, segment: Segment, start: int = 0) -> Iterator[Entry]:
        """The entries of one segment (from its byte ``start``, a line's start); an
        unreadable rest is recorded in ``damage`` (or raises :class:`SegmentReadError`
        without a list)."""
        path = str(segment.path)
        chunks = segment.chunks() if not start else _skip(segment.chunks(), start)
        try:
            yield from _entries_of(self.head.track(chunks, segment.number, start),
                                   self.stream_dir.name, path, *self._read)
        except READ_ERRORS as exc:
            self.head.lost()
            unreadable_segment(path, exc, self._damage)

    def journal(self) -> Iterator[Entry]:
        """The entries of :func:`journal_tail` after the segments read so far.

        When a live writer wrote a batch after the segments were read, the journal no
        longer continues them: the entries the segments gained are read first (from where
        the reader stopped), then the journal again, a few times at most. So a read never
        shows fewer entries than one before it: what the journal held then is in the
        segments now.
        """
        for _ in range(_CATCH_UPS):
            tail = journal_tail(self.stream_dir, self.head)
            if tail is not None:
                block, name = tail
                if block:
                    yield from _entries_of(iter((block,)), self.stream_dir.name, name,
                                           *self._read)
                return
            yield from self._catch_up()

    def _catch_up(self) -> Iterator[Entry]:
        """The entries written to the segments since the reader read them."""
        head = self.head
        for segment in list_segments(self.stream_dir):
            if segment.number > head.segment:
                yield from self.segment(segment)
            elif segment.number == head.segment and head.end is not None:
                yield from self.segment(segment, head.end)


#: How often :meth:`StreamReader.journal` reads on after a live writer's batch write.
_CATCH_UPS = 3


def _skip(chunks: Iterable[bytes], count: int) -> Iterator[bytes]:
    """``chunks`` without their first ``count`` bytes."""
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:] if count else chunk
        count = 0


def _entries_of(
    chunks: Iterator[bytes],
    stream: str,
    path: str,
    decrypt: Decryptor | None,
    line_filter: LineFilter | None,
    include_system: bool,
    need_secrets: bool = False,
    damage: DamageList = None,
) -> Iterator[Entry]:
    """The entries of a segment's chunks; see :func:`iter_entries` for ``need_secrets``
    and ``damage``."""
    loads, damaged = orjson.loads, orjson.JSONDecodeError
    for chunk in chunks:
        # In a block without encrypted lines the filter picks the candidate lines itself;
        # otherwise each plain line is tested, and encrypted lines are judged after
        # decryption.
        plain = b'"enc":' not in chunk
        if line_filter is not None and plain:
            lines: Iterable[bytes] = line_filter.lines(chunk)
        else:
            lines = io.BytesIO(chunk)
        test = line_filter.matches if line_filter is not None and not plain else None
        for raw in lines:
            if raw[-1:] != b"\n":
                continue  # an entry being written, or a torn tail
            if test is not None and b'"enc":' not in raw and not test(raw):
                continue  # cannot match
            try:
                entry = loads(raw)
            except damaged:
                entry = None
            if type(entry) is not dict:
                if damage is not None:
                    found = _SEQ_START.match(raw)
                    damage.append(ReadDamage(path, int(found.group(1)) if found else None,
                                             "the line is not a JSON entry"))
                continue
            if not include_system and "kind" in entry:
                continue
            entry["stream"] = stream
            if "enc" in entry:
                if decrypt is not None:
                    entry = decrypt(entry, stream, path)
                elif need_secrets:
                    raise _secrets_unavailable(entry, path)
                # else left undecrypted: clear members and ``enc`` (see module doc)
            yield entry


def iter_entries(
    root: str | os.PathLike[str],
    tenant: str = "default",
    *,
    decrypt: Decryptor | None = None,
    include_system: bool = False,
    line_filter: LineFilter | None = None,
    need_secrets: bool = False,
    damage: DamageList = None,
) -> Iterator[Entry]:
    """All entries of a tenant in time order, merged across streams.

    Each stream ends with the entries of its journal that continue its chain (see the
    module doc and :func:`journal_tail`).

    A line that is no JSON entry, or the rest of a segment that cannot be read, is left
    out and recorded in ``damage`` when a list is given (the reader reports it); without
    one, damaged lines are skipped and an unreadable segment raises
    :class:`~immutable_logging.errors.SegmentReadError`. ``verify`` checks the chain.
    Journal entries that do not continue the chain are left out and not recorded: they
    are no part of what was read (``verify`` notes them).

    ``line_filter(raw_line) -> bool`` may skip plain (unencrypted) lines before they are
    decoded; it must only reject lines that cannot match (see :func:`search_filter`).

    An encrypted entry is decrypted with ``decrypt`` (which raises
    :class:`~immutable_logging.errors.DecryptionError` or its subclass
    ``KeyUnavailableError`` when it cannot). Without ``decrypt`` it is yielded
    undecrypted: clear members plus the stored ``enc`` member, without
    ``message``/``metadata``/``exc``/``stack`` (see the module doc); with
    ``need_secrets=True`` (for searches and queries on those fields) it raises
    ``KeyUnavailableError`` instead.
    """
    streams = list_streams(tenant_dir(root, tenant))
    iterators: list[Iterator[Entry]] = [
        iter(StreamReader(s, decrypt, line_filter, include_system, need_secrets, damage))
        for s in streams]
    if len(iterators) == 1:
        return iterators[0]
    return heapq.merge(*iterators, key=_sort_key)


def iso_utc(ts: float, timespec: str = "auto") -> str | None:
    """``ts`` (seconds since the epoch) as ISO-8601 in UTC, or ``None`` when no date has
    it (a record's ``created`` set in milliseconds, say: the entry stays readable)."""
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec=timespec)
    except (ValueError, OverflowError, OSError):
        return None


def with_timestamp(entry: Entry) -> Entry:
    """Add ``timestamp`` (ISO-8601, UTC) derived from ``ts``; returns the entry.

    ``timestamp`` is ``None`` when ``ts`` is outside the years 1-9999."""
    ts = entry.get("ts")
    if isinstance(ts, int | float) and "timestamp" not in entry:
        entry["timestamp"] = iso_utc(ts)
    return entry


def _sort_key(entry: Entry) -> tuple[float, str, int]:
    ts = entry.get("ts")
    return (
        float(ts) if isinstance(ts, int | float) else 0.0,
        str(entry.get("stream", "")),
        int(entry.get("seq", 0)),
    )


def resolve_path(entry: Mapping[str, Any], path: str) -> Any:
    """Value at a dotted path (``metadata.user.id``), or a private sentinel if absent."""
    return _resolve_parts(entry, path.split("."))


def _resolve_parts(entry: Mapping[str, Any], parts: list[str]) -> Any:
    value: Any = entry
    for part in parts:
        if type(value) is dict:  # decoded entries: skip the (slow) ABC check
            value = value.get(part, _MISSING)
            if value is _MISSING:
                return _MISSING
        elif isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _getter(parts: list[str]) -> Callable[[Entry], Any]:
    """``entry -> value at the path`` (or ``_MISSING``), with the common depths inlined."""
    if len(parts) == 1:
        key = parts[0]
        return lambda entry: entry.get(key, _MISSING)
    if len(parts) == 2:
        outer, inner = parts

        def get(entry: Entry) -> Any:
            value = entry.get(outer)
            if type(value) is dict:
                return value.get(inner, _MISSING)
            return _resolve_parts(entry, parts)  # lists, other mappings, absent

        return get
    return lambda entry: _resolve_parts(entry, parts)


def _same(value: Any, operand: Any) -> bool:
    """JSON equality: ``true``/``false`` are not the numbers 1/0 (as in MongoDB), inside
    arrays and objects too; ``1`` equals ``1.0``; a tuple operand is an array."""
    kind, other = type(value), type(operand)
    if kind is str:
        return bool(value == operand)
    if kind is bool or other is bool:
        return kind is other and value == operand
    if kind in _ARRAYS:
        return other in _ARRAYS and len(value) == len(operand) and all(
            map(_same, value, operand))
    if isinstance(value, Mapping):
        return isinstance(operand, Mapping) and value.keys() == operand.keys() and all(
            _same(item, operand[key]) for key, item in value.items())
    return bool(value == operand)


_ARRAYS = (list, tuple)
_SCALARS = frozenset((str, int, float, type(None)))


def _scalar_key(item: Any) -> tuple[bool, Any] | None:
    """(is it a bool, the plain value) for a scalar operand (subclasses such as ``StrEnum``
    become the plain value they equal); None for anything else."""
    if item is None:
        return (False, None)
    for kind in (bool, str, int, float):  # bool first: it is an int
        if isinstance(item, kind):
            return (kind is bool, kind(item) if kind is not str else str.__str__(item))
    return None


class _Members:
    """The operand of ``$in``/``$nin``, compared as :func:`_same` compares: scalars by
    (is it a bool, value) in a set, arrays and objects one by one."""

    __slots__ = ("others", "scalars")

    def __init__(self, items: Iterable[Any]) -> None:
        scalars: set[tuple[bool, Any]] = set()
        others: list[Any] = []
        for item in items:
            key = _scalar_key(item)
            if key is None:
                others.append(item)
            else:
                scalars.add(key)
        self.scalars = frozenset(scalars)
        self.others = tuple(others)

    def __contains__(self, value: Any) -> bool:
        kind = type(value)
        if (kind is bool or kind in _SCALARS) and (kind is bool, value) in self.scalars:
            return True
        # Arrays and objects, and numbers of other types (Decimal, Fraction, numpy's)
        return any(_same(value, item) for item in self.others)


def _compare(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], bool]:
    def check(value: Any, operand: Any) -> bool:
        if value is _MISSING or value is None:
            return False
        if (type(value) is bool) is not (type(operand) is bool):
            return False  # true/false are not numbers here (nor in the line pre-filter)
        try:
            return bool(op(value, operand))
        except TypeError:  # e.g. "abc" > 5: different types never match
            return False

    return check


def _contains(value: Any, operand: Any) -> bool:
    if isinstance(value, str):
        return isinstance(operand, str) and operand in value
    if isinstance(value, list | tuple):
        return any(_same(item, operand) for item in value)
    if isinstance(value, Mapping):
        return isinstance(operand, str) and operand in value  # JSON keys are strings
    return False


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda v, o: v is not _MISSING and _same(v, o),
    "$ne": lambda v, o: v is _MISSING or not _same(v, o),
    "$gt": _compare(operator.gt),
    "$gte": _compare(operator.ge),
    "$lt": _compare(operator.lt),
    "$lte": _compare(operator.le),
    "$in": lambda v, o: v is not _MISSING and v in o,
    "$nin": lambda v, o: v is _MISSING or v not in o,
    "$contains": _contains,
    "$regex": lambda v, o: isinstance(v, str) and o.search(v) is not None,
    "$exists": lambda v, o: (v is not _MISSING) == o,
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
            operand = _Members(operand)
        elif op == "$exists":
            if not (isinstance(operand, int | float) and operand in (0, 1)):  # bools too
                raise QueryError(f"$exists for field {path!r} needs true or false (or 1/0), "
                                 f"got {operand!r}")
            operand = bool(operand)
        elif op == "$regex":
            if not isinstance(operand, str | re.Pattern):
                raise QueryError(f"$regex for field {path!r} needs a string")
            try:
                operand = re.compile(operand) if isinstance(operand, str) else operand
            except re.error as exc:
                raise QueryError(f"invalid $regex for field {path!r}: {exc}") from None
        checks.append((_OPERATORS[op], operand))

    keys = path.split(".")
    get = _getter(keys)
    if keys[0] == "timestamp":  # added by the reader: derive it first
        stored = get
        get = lambda entry: stored(with_timestamp(entry))  # noqa: E731
    if len(checks) == 1:
        check, operand = checks[0]
        return lambda entry: check(get(entry), operand)

    def predicate(entry: Entry) -> bool:
        value = get(entry)
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
    if len(predicates) == 1:
        return predicates[0]
    if len(predicates) == 2:
        first, second = predicates
        return lambda entry: first(entry) and second(entry)
    return lambda entry: all(p(entry) for p in predicates)


def _level_matches(level: str | int | None) -> Predicate | None:
    if level is None:
        return None
    if isinstance(level, str) and level.strip().isdigit():  # "25", as the CLI takes it
        level = int(level)
    if isinstance(level, bool) or not isinstance(level, int | str):
        raise QueryError(f"level must be a level name or number, got {level!r}")
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
    """Filter by level and slice: oldest first from ``offset`` (or newest first).

    Raises:
        QueryError: a ``limit`` or ``offset`` that is not an int >= 0, or a ``level`` that
            is neither a name nor a number.
    """
    for name, value in (("limit", limit), ("offset", offset)):
        if (value is not None or name == "offset") and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise QueryError(f"{name} must be an int >= 0, got {value!r}")
    match = _level_matches(level)
    selected = (e for e in entries if match is None or match(e))
    if newest_first:
        items = list(selected)[::-1]
        end = None if limit is None else offset + limit
        return [with_timestamp(e) for e in items[offset:end]]
    result: list[Entry] = []
    for index, entry in enumerate(selected):
        if index < offset:
            continue
        if limit is not None and len(result) >= limit:
            break
        result.append(with_timestamp(entry))
    return result


def text_predicate(text: str, *, case_sensitive: bool = False) -> Predicate:
    """Whether an entry's message, metadata or exception text contains ``text``
    (``str.lower()`` on both sides unless ``case_sensitive``).

    Metadata is searched in its JSON text, where ``"``, ``\\`` and control characters
    are escaped: there the text is looked for escaped the same way.
    """
    needle = text if case_sensitive else text.lower()
    try:
        escaped = orjson.dumps(needle).decode("utf-8")[1:-1]
    except orjson.JSONEncodeError:  # a lone surrogate: stored escaped by the writer anyway
        escaped = needle
    if escaped == needle:  # the common case: one haystack
        if case_sensitive:
            return lambda entry: needle in _text_of(entry)
        return lambda entry: needle in _text_of(entry).lower()

    def matches(entry: Entry) -> bool:
        plain, meta = _plain_text_of(entry), _metadata_text_of(entry)
        if not case_sensitive:
            plain, meta = plain.lower(), meta.lower()
        return needle in plain or escaped in meta or needle in meta  # also a JSON fragment

    return matches


def _text_of(entry: Entry) -> str:
    """Message, metadata (as JSON) and exception text of an entry, one per line."""
    meta = _metadata_text_of(entry)
    plain = _plain_text_of(entry)
    return f"{plain}\n{meta}" if meta else plain


def _plain_text_of(entry: Entry) -> str:
    exc = entry.get("exc")
    message = str(entry.get("message", ""))
    return f"{message}\n{exc}" if exc else message


def _metadata_text_of(entry: Entry) -> str:
    meta = entry.get("metadata")
    return orjson.dumps(meta, default=str).decode("utf-8", "replace") if meta else ""


#: A JSON number right after a key (``true``/``false`` never match a number condition).
_NUMBER_VALUE = rb"(-?[0-9][0-9.eE+-]*)"


#: Integers orjson decodes as ``int``; beyond this range it gives the nearest ``float``.
_INT_MIN, _INT_END = -(1 << 63), 1 << 64


def _number(token: bytes) -> int | float | None:
    """The value of a token matched by ``_NUMBER_VALUE``, as orjson decodes it (None when
    it is not a valid number: the decoder then decides)."""
    try:
        value = int(token)
    except ValueError:
        pass
    else:
        if _INT_MIN <= value < _INT_END:
            return value
    try:
        return float(token)
    except ValueError:
        return None


@dataclass(frozen=True)
class NumberBound:
    """A line can only match if a number right after ``key`` (the key's JSON bytes plus
    ``:``) passes every ``(operator, operand)`` check.

    A key name can occur at several depths, and also as the tail of a longer key (``"a\\"b"``
    ends in ``"b"``); the bound admits a line when any occurrence passes, so it only ever
    lets extra lines through. Inside a string value the key's closing quote would be
    escaped, so string contents never match.
    """

    key: bytes
    checks: tuple[tuple[Callable[[Any, Any], Any], Any], ...]
    pattern: re.Pattern[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", re.compile(re.escape(self.key) + _NUMBER_VALUE))

    def admits(self, token: bytes) -> bool:
        """Whether the value token of one occurrence passes every check."""
        value = _number(token)
        return value is None or all(op(value, operand) for op, operand in self.checks)

    def in_line(self, line: bytes) -> bool:
        """Whether some occurrence of the key in ``line`` has a passing value."""
        return bool(self.offsets(line))

    def offsets(self, chunk: bytes) -> list[int]:
        """Where in ``chunk`` the occurrences of the key with a passing value start.

        Done in bulk (split, int, compare over whole lists) because most lines fail: one
        Python call per line would cost more than decoding the lines that pass.
        """
        pieces = self.pattern.split(chunk)  # text, value, text, value, ..., text
        tokens = pieces[1::2]
        try:
            values = list(map(int, tokens))
        except ValueError:  # a float: one call per token
            values = []
        if len(values) != len(tokens) or (
                values and (min(values) < _INT_MIN or max(values) >= _INT_END)):
            passing = list(map(self.admits, tokens))
        else:
            passing = [True] * len(values)
            for op, operand in self.checks:
                passing = list(map(operator.and_, passing, map(op, values, repeat(operand))))
        return _passing_offsets(pieces, passing, len(self.key))


def _passing_offsets(pieces: list[bytes], passing: list[bool], key_size: int) -> list[int]:
    """Where the passing occurrences start, from ``pattern.split(chunk)`` (text, value,
    text, ...; split drops the keys) and one verdict per value."""
    if not any(passing):
        return []
    # Occurrence i starts after pieces[0..2i] and i keys.
    ends = list(accumulate(map(len, pieces)))
    return [ends[2 * i] + i * key_size for i in compress(range(len(passing)), passing)]


#: A JSON string right after a key, quotes and escapes as stored.
_STRING_VALUE = rb'("[^"\\]*(?:\\.[^"\\]*)*")'


@dataclass(frozen=True)
class StringSetBound:
    """A line can only match if a string right after ``key`` (the key's JSON bytes plus
    ``:``) is one of ``tokens``: the canonical JSON of the wanted strings, quotes included,
    as the writer stores them (an ``$in`` of strings).

    Like :class:`NumberBound`, it admits a line when any occurrence passes (the key at
    another depth, or as the tail of a longer key), so it only ever lets extra lines
    through.
    """

    key: bytes
    tokens: frozenset[bytes]
    pattern: re.Pattern[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", re.compile(re.escape(self.key) + _STRING_VALUE))

    def admits(self, token: bytes) -> bool:
        """Whether the value token of one occurrence is one of the wanted strings."""
        return token in self.tokens

    def in_line(self, line: bytes) -> bool:
        """Whether some occurrence of the key in ``line`` holds a wanted string."""
        return bool(self.offsets(line))

    def offsets(self, chunk: bytes) -> list[int]:
        """Where in ``chunk`` the occurrences of the key with a wanted string start (in
        bulk, like :meth:`NumberBound.offsets`)."""
        pieces = self.pattern.split(chunk)
        passing = list(map(self.tokens.__contains__, pieces[1::2]))
        return _passing_offsets(pieces, passing, len(self.key))


#: What a raw line must hold after a key: a passing number, or one of some strings.
Bound = NumberBound | StringSetBound


#: The UTF-8 of the only characters that ``str.lower()`` turns into ASCII letters
#: (KELVIN SIGN -> "k", LATIN CAPITAL LETTER I WITH DOT ABOVE -> "i" + U+0307): a
#: case-insensitive byte filter cannot rule out a line that holds one.
_LOWER_TO_ASCII = ("\u212a".encode(), "\u0130".encode())


def _line_around(chunk: bytes, pos: int) -> tuple[int, int]:
    """Start and end (after its newline) of the line of ``chunk`` that holds ``pos``."""
    return chunk.rfind(b"\n", 0, pos) + 1, chunk.find(b"\n", pos) + 1 or len(chunk)


@dataclass(frozen=True)
class LineFilter:
    """What a plain (unencrypted) line must contain to possibly match: every byte string
    of ``needles``, and for every bound (:class:`NumberBound`, :class:`StringSetBound`) a
    passing value.

    Used to skip decoding lines that cannot match a search or a query; it never decides a
    match by itself. ``fold_case`` compares needles ASCII case-insensitively (they are
    lower case).
    """

    needles: tuple[bytes, ...]
    fold_case: bool = False
    bounds: tuple[Bound, ...] = ()

    def __post_init__(self) -> None:
        if not self.needles and not self.bounds:
            raise QueryError("a line filter needs a needle or a number bound")

    def matches(self, raw: bytes) -> bool:
        """Whether one line passes the filter."""
        hay = raw.lower() if self.fold_case else raw
        if self.fold_case and not raw.isascii() and any(c in raw for c in _LOWER_TO_ASCII):
            # str.lower() turns these into ASCII letters: compare as the decoder will
            hay = raw.decode("utf-8", "replace").lower().encode("utf-8")
        return all(n in hay for n in self.needles) and all(b.in_line(raw) for b in self.bounds)

    def lines(self, chunk: bytes) -> Iterator[bytes]:
        """The lines of a block of whole lines that pass the filter."""
        if self.fold_case and not chunk.isascii() and any(c in chunk for c in _LOWER_TO_ASCII):
            yield from (line for line in chunk.splitlines(keepends=True) if self.matches(line))
            return
        if not self.needles:
            yield from self._bounded_lines(chunk)
            return
        hay = chunk.lower() if self.fold_case else chunk
        first, rest = self.needles[0], self.needles[1:]
        pos = hay.find(first)
        while pos >= 0:
            start, end = _line_around(hay, pos)
            if all(n in hay[start:end] for n in rest) and all(
                b.in_line(chunk[start:end]) for b in self.bounds
            ):
                yield chunk[start:end]
            pos = hay.find(first, end)

    def _bounded_lines(self, chunk: bytes) -> Iterator[bytes]:
        first, rest = self.bounds[0], self.bounds[1:]
        end = 0
        for offset in first.offsets(chunk):
            if offset < end:
                continue  # another passing occurrence in a line already taken
            start, end = _line_around(chunk, offset)
            if all(b.in_line(chunk[start:end]) for b in rest):
                yield chunk[start:end]


#: Fields the reader adds after decoding: they are never in the stored line.
_READER_FIELDS = frozenset({"stream", "timestamp", "encrypted"})

_JSON_ESCAPED = re.compile(r'["\\\x00-\x1f\x7f]')


def search_filter(text: str, *, case_sensitive: bool = False) -> LineFilter | None:
    """A raw-line pre-filter for :func:`search_entries` (None when none is safe).

    JSON stores the text unchanged unless it has quotes, backslashes or control characters;
    case-insensitive matching on bytes is only exact for ASCII text.
    """
    if not text or _JSON_ESCAPED.search(text) or (not case_sensitive and not text.isascii()):
        return None
    needle = text.encode("utf-8")
    if case_sensitive:
        return LineFilter((needle,))
    return LineFilter((needle.lower(),), fold_case=True)


_BOUND_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "$eq": operator.eq, "$gt": operator.gt, "$gte": operator.ge,
    "$lt": operator.lt, "$lte": operator.le,
}


def _is_member(value: Any, members: frozenset[int | float]) -> bool:
    return value in members


def _plain_number(value: Any) -> bool:
    """An int or a finite float (not a bool): compared with the number in a line, it gives
    what the decoded entry gives."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _members(operand: Any) -> list[Any] | None:
    """The members of an ``$in`` operand (None when it is not a collection)."""
    return list(operand) if isinstance(operand, list | tuple | set | frozenset) else None


def _number_checks(spec: Any) -> tuple[tuple[Callable[[Any, Any], Any], Any], ...]:
    """The checks of a field condition made only of number comparisons (``5``,
    ``{"$gte": 10, "$lt": 20}``, ``{"$in": [4990, 4995]}``); empty for any other
    condition."""
    if not isinstance(spec, Mapping) or not any(str(k).startswith("$") for k in spec):
        spec = {"$eq": spec}
    checks: list[tuple[Callable[[Any, Any], Any], Any]] = []
    for op, operand in spec.items():
        members = _members(operand) if op == "$in" else None
        if members is not None and all(map(_plain_number, members)):
            checks.append((_is_member, frozenset(members)))
        elif op not in _BOUND_OPERATORS or not _plain_number(operand):
            return ()
        else:
            checks.append((_BOUND_OPERATORS[op], operand))
    return tuple(checks)


def _string_tokens(spec: Any) -> frozenset[bytes] | None:
    """The stored form (canonical JSON) of the strings of an ``$in`` made only of strings;
    None for any other condition, or a string no line can hold verbatim."""
    if not isinstance(spec, Mapping) or "$in" not in spec:
        return None
    members = _members(spec["$in"])
    if members is None or not all(isinstance(m, str) for m in members):
        return None
    try:
        return frozenset(map(orjson.dumps, members))
    except orjson.JSONEncodeError:  # a lone surrogate
        return None


def query_filter(document: Mapping[str, Any]) -> LineFilter | None:
    """A raw-line pre-filter for :func:`query_entries`, from the top-level field conditions:

    * a string equality (``{"level": "REVENUE"}``, ``{"metadata.user": {"$eq": "bob"}}``)
      must appear verbatim in the canonical line;
    * number comparisons (``{"metadata.amount": {"$gte": 4000}}``, ``{"line": 42}``,
      ``{"metadata.amount": {"$in": [10, 20]}}``) need a passing number after the field's
      key (see :class:`NumberBound`);
    * an ``$in`` of strings (``{"level": {"$in": ["ERROR", "CRITICAL"]}}``) needs one of
      them after the field's key (see :class:`StringSetBound`).

    None when the query has no such condition.
    """
    needles: list[bytes] = []
    bounds: list[Bound] = []
    if not isinstance(document, Mapping):
        return None
    for key, spec in document.items():
        if not isinstance(key, str) or key.startswith("$") or key in _READER_FIELDS:
            continue
        last = key.rsplit(".", 1)[-1]
        if last.isdigit():  # a list index: no key in the line
            continue
        value = spec.get("$eq") if isinstance(spec, Mapping) else spec
        try:
            name = orjson.dumps(last)[1:-1]
            text = orjson.dumps(value) if isinstance(value, str) else None
        except orjson.JSONEncodeError:  # e.g. a lone surrogate: no line holds it verbatim
            continue
        if text is not None:
            needles.append(b'"%s":%s' % (name, text))
        elif checks := _number_checks(spec):
            bounds.append(NumberBound(b'"%s":' % name, checks))
        elif (tokens := _string_tokens(spec)) is not None:
            bounds.append(StringSetBound(b'"%s":' % name, tokens))
    return LineFilter(tuple(needles), bounds=tuple(bounds)) if needles or bounds else None


def search_entries(
    entries: Iterable[Entry], text: str, *, case_sensitive: bool = False, limit: int | None = None
) -> list[Entry]:
    """Entries whose message, metadata or exception text contains ``text``.

    Raises:
        QueryError: ``text`` is not a non-empty string.
        KeyUnavailableError: an entry was left undecrypted (it holds ``enc``; see the
            module doc), so its text cannot be searched.
    """
    if not isinstance(text, str) or not text:
        raise QueryError("search text must be a non-empty string")
    matches = text_predicate(text, case_sensitive=case_sensitive)
    found: list[Entry] = []
    for entry in entries:
        if "enc" in entry:
            raise _secrets_unavailable(entry)
        if matches(entry):
            found.append(with_timestamp(entry))
            if limit is not None and len(found) >= limit:
                break
    return found


def _needing_secrets(predicate: Predicate) -> Predicate:
    """``predicate``, raising KeyUnavailableError on an undecrypted entry."""

    def check(entry: Entry) -> bool:
        if "enc" in entry:
            raise _secrets_unavailable(entry)
        return predicate(entry)

    return check


def query_entries(
    entries: Iterable[Entry], document: Mapping[str, Any], *, limit: int | None = None
) -> list[Entry]:
    """Entries matching a query document (see module doc).

    Raises:
        QueryError: the document is malformed.
        KeyUnavailableError: the document looks at ``message``, ``metadata``, ``exc`` or
            ``stack`` (:func:`reads_secret_fields`) and an entry was left undecrypted.
    """
    predicate = compile_query(document)
    if reads_secret_fields(document):
        predicate = _needing_secrets(predicate)
    found: list[Entry] = []
    for entry in entries:
        if predicate(entry):
            found.append(with_timestamp(entry))
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
        "first_timestamp": iso_utc(first) if first is not None else None,
        "last_timestamp": iso_utc(last) if last is not None else None,
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
