"""Find the entries of a tenant that match a text search or a query document.

The same results as :func:`~immutable_logging.query.search_entries` and
:func:`~immutable_logging.query.query_entries` over
:func:`~immutable_logging.query.iter_entries`, but the sealed segments of a large
single-stream tenant are scanned by forked worker processes (see
:mod:`immutable_logging.workers`): each returns the matching entries of one segment, in
order, and the parent takes them in segment order, asking for a segment's result only
while it still wants entries. A segment a worker cannot finish on its own (a read error,
or encrypted entries, which only the parent may decrypt) is scanned again by the parent,
which then decrypts it or raises exactly what the serial reader raises. After the last
segment the parent reads the journal entries that continue the chain (see
:mod:`immutable_logging.query`), from where the last segment, its own or a worker's, ended.

Without the key (see :mod:`immutable_logging.query`), a query on clear fields only
(level, logger, time, seq, ...) still matches encrypted entries; a text search, or a query
on ``message``/``metadata``/``exc``/``stack``, raises
:class:`~immutable_logging.errors.KeyUnavailableError` at the first encrypted entry it
cannot decrypt.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import QueryError
from .layout import Segment, list_segments, list_streams, tenant_dir
from .query import (
    ChainHead,
    DamageList,
    Decryptor,
    Entry,
    LineFilter,
    Predicate,
    ReadDamage,
    StreamReader,
    _entries_of,
    compile_query,
    iter_entries,
    query_filter,
    reads_secret_fields,
    search_filter,
    text_predicate,
    with_timestamp,
)
from .workers import in_workers, total_size, worker_count


@dataclass(frozen=True)
class TextSearch:
    """Entries whose message, metadata or exception text contains ``text``."""

    text: str
    case_sensitive: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text:
            raise QueryError("search text must be a non-empty string")

    def line_filter(self) -> LineFilter | None:
        """A safe raw-line pre-filter (see :func:`~immutable_logging.query.search_filter`)."""
        return search_filter(self.text, case_sensitive=self.case_sensitive)

    def needs_secrets(self) -> bool:
        """Always True: the searched text is in the encrypted fields."""
        return True

    def predicate(self) -> Predicate:
        """Whether one decoded entry matches."""
        return text_predicate(self.text, case_sensitive=self.case_sensitive)


@dataclass(frozen=True)
class DocumentQuery:
    """Entries matching a MongoDB-style query document (see :mod:`.query`)."""

    document: Mapping[str, Any]

    def __post_init__(self) -> None:
        compile_query(self.document)  # raise QueryError now, not in a worker

    def line_filter(self) -> LineFilter | None:
        """A safe raw-line pre-filter (see :func:`~immutable_logging.query.query_filter`)."""
        return query_filter(self.document)

    def needs_secrets(self) -> bool:
        """Whether the document looks at an encrypted field (``message``, ``metadata``,
        ``exc``, ``stack``): then an entry that cannot be decrypted raises
        KeyUnavailableError instead of being judged on its clear fields."""
        return reads_secret_fields(self.document)

    def predicate(self) -> Predicate:
        """Whether one decoded entry matches."""
        return compile_query(self.document)


Match = TextSearch | DocumentQuery


class _Encrypted(Exception):
    """A worker met an encrypted entry: the parent must scan the segment."""


class _Damaged(Exception):
    """A worker met a damaged line: the parent scans the segment, and reports it."""


#: What a worker returns for one sealed segment: its matching entries, in order, and its
#: last complete line (None when it is empty), where the chain stands after it.
Scanned = tuple[list[Entry], bytes | None]


def _scan(segment: Segment, stream: str, match: Match) -> Scanned:
    """Worker process side: the matching entries of one sealed segment, in order."""
    predicate = match.predicate()
    found = []
    damage: list[ReadDamage] = []
    head = ChainHead()
    chunks = head.track(segment.chunks(), segment.number)
    for entry in _entries_of(chunks, stream, str(segment.path), None, match.line_filter(),
                             False, damage=damage):
        if "enc" in entry:
            raise _Encrypted
        if predicate(entry):
            found.append(entry)
    if damage:
        raise _Damaged
    return found, head.line


def _stream_matches(
    stream_dir: Path,
    segments: list[Segment],
    pending: list[Future[Scanned]],
    match: Match,
    predicate: Predicate,
    decrypt: Decryptor | None,
    damage: DamageList,
) -> Iterator[Entry]:
    """One stream's matches in order: a worker's result where it has one, else read here
    (a result is only asked for when the caller still wants entries); then the matches
    among the journal entries that continue the chain (see :class:`StreamReader`)."""
    reader = StreamReader(stream_dir, decrypt, match.line_filter(), False,
                          match.needs_secrets(), damage)
    for index, segment in enumerate(segments):
        if index < len(pending):
            try:
                found, last_line = pending[index].result()
            except Exception:  # read error, encrypted entries, a broken pool: do it here
                pass
            else:
                reader.head.passed(last_line, segment.number)
                yield from found
                continue
        yield from filter(predicate, reader.segment(segment))
    yield from filter(predicate, reader.journal())


def find_entries(
    root: str | os.PathLike[str],
    tenant: str,
    match: Match,
    *,
    decrypt: Decryptor | None = None,
    limit: int | None = None,
    workers: int | None = None,
    damage: DamageList = None,
) -> list[Entry]:
    """The first ``limit`` entries of ``tenant`` that ``match``, in reading order.

    Exactly ``search_entries``/``query_entries`` over
    :func:`~immutable_logging.query.iter_entries` (each stream's journal entries that
    continue its chain included, after its segments). ``workers``: the sealed segments of a
    tenant with one stream may be scanned by up to this many forked processes (``None``:
    one per CPU for 8 MiB or more of sealed segments; ``1``: never). A tenant with several
    streams is always read here: its streams are merged entry by entry, and which
    matches come first can depend on entries that do not match.

    An encrypted entry whose key is not available is matched on its clear fields (it is
    returned undecrypted, see :mod:`immutable_logging.query`) unless ``match`` needs the
    encrypted fields (:meth:`TextSearch.needs_secrets`, :meth:`DocumentQuery.needs_secrets`).
    ``damage``: as for :func:`~immutable_logging.query.iter_entries` (damaged lines that
    could have matched, and unreadable segments, are recorded there).

    Raises:
        QueryError: a bad search text, query document or limit.
        SegmentReadError: a segment cannot be read (only without ``damage``).
        KeyUnavailableError: ``match`` needs the encrypted fields of an entry whose key is
            not available.
        DecryptionError: an encrypted entry fails to decrypt (wrong key, tampering).
    """
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise QueryError(f"limit must be None or an int >= 0, got {limit!r}")
    streams = list_streams(tenant_dir(root, tenant))
    predicate = match.predicate()
    if len(streams) != 1:
        found: Iterator[Entry] = (
            entry for entry in iter_entries(root, tenant, decrypt=decrypt,
                                            line_filter=match.line_filter(),
                                            need_secrets=match.needs_secrets(),
                                            damage=damage)
            if predicate(entry))
        return [with_timestamp(e) for e in itertools.islice(found, limit)]
    segments = list_segments(streams[0])
    sealed = segments[:-1]  # the last segment may still grow: always read here
    count = worker_count(workers, len(sealed), total_size(s.path for s in sealed))
    with in_workers(count, _scan, sealed, streams[0].name, match) as pending:
        found = _stream_matches(streams[0], segments, pending, match, predicate, decrypt,
                                damage)
        return [with_timestamp(e) for e in itertools.islice(found, limit)]
