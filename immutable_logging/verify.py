"""Verify the hash chain of every stream of a tenant (or of a whole log directory).

Verification never trusts the files: every line is re-hashed, sequence numbers and ``prev``
links are checked across segments, and segment numbers must be contiguous. Each problem
names the file, the sequence number and a reason, once per cause. After a problem the
verifier re-syncs on the ``prev`` links (an entry that commits to the hash of the last entry
in place continues the chain; a line that does not is held until the next line tells why:
swapped, duplicated, missing entries), so independent damage further on is reported too.

Two depths: the default re-hash path checks raw bytes only; ``parse=True`` also decodes
each entry and checks that its payload is canonical JSON (a stricter, slower check).

Two optional layers (threat model layers 2 and 3), each a separate pass over the stream so
the default path keeps its speed:

* ``seed=``: every seal entry is checked with the seal seed (see
  :class:`~immutable_logging.sealing.SealChecker` for the rules and ``seal_*`` reasons);
  the stream report says from when to when the log is validated (``sealed_from``,
  ``sealed_to``) and how many trailing entries are not sealed yet.
* ``checkpoint_key=`` (a note verifier key) with ``anchors=`` (directories laid out
  ``<tenant>/<stream>/checkpoints/<size>.note``, e.g. a replica): every signed
  checkpoint, anchored or local, must verify and match the local entries
  (``checkpoint_invalid``, ``checkpoint_mismatch``, ``truncation``); an anchored stream
  missing locally is ``truncation`` too.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .checkpoint import verify_checkpoints
from .compression import READ_ERRORS
from .entry import (
    GENESIS_HASH,
    HASH_MEMBER,
    LINE_PREFIX,
    canonical_payload,
    entry_hash,
    hashed_bytes,
    split_line,
)
from .errors import (
    ChainLinkError,
    CheckpointError,
    ConfigurationError,
    DecryptionError,
    HashMismatchError,
    KeyUnavailableError,
    MalformedEntryError,
    ReorderError,
    SealError,
    SequenceGapError,
    TornTailError,
    TruncationError,
    VerificationError,
)
from .journal import pending_lines, read_journal
from .layout import (
    CHECKPOINT_DIR,
    JOURNAL_FILE,
    LOCK_FILE,
    STREAM_META,
    TORN_DIR,
    Segment,
    last_seq_on_disk,
    list_segments,
    list_streams,
    list_tenants,
    tenant_dir,
)
from .sealing import DEFAULT_TOLERANCE, SealChecker, _TenantKeys, load_grid
from .workers import in_workers, total_size, worker_count

_ERRORS: dict[str, type[VerificationError]] = {
    "hash_mismatch": HashMismatchError,
    "prev_mismatch": ChainLinkError,
    "gap": SequenceGapError,
    "missing_segment": SequenceGapError,
    "reorder": ReorderError,
    "duplicate": ReorderError,
    "malformed": MalformedEntryError,
    "non_canonical": MalformedEntryError,
    "torn_tail": TornTailError,
    "truncation": TruncationError,
    "decryption_failed": VerificationError,
    "torn_evidence_missing": TruncationError,
    "torn_evidence_altered": HashMismatchError,
    "checkpoint_invalid": CheckpointError,
    "checkpoint_mismatch": CheckpointError,
}

_RECOVERY_MARK = b'"kind":"recovery"'

#: A line that does not continue the chain, held until the next line tells why:
#: ``(seq, prev, hash, file, expected_seq)``, ``expected_seq`` being where it was read.
_Pending = tuple[int, str, str, str, int]

#: :attr:`_StreamVerifier.skipped` after an unreadable segment: how many entries it held is
#: unknown, so whatever entry comes next continues the chain (the read error is the problem).
_UNKNOWN = sys.maxsize

#: How many reported gaps and stray lines a stream's verifier remembers, to tell entries
#: that were moved from entries that are missing (older ones are forgotten).
_MOVE_MEMORY = 64


@dataclass
class _Gap:
    """A reported gap: entries ``first..last`` missing between hashes ``before`` and
    ``after`` (the ``prev`` of the entry after the gap), until they turn up further on."""

    first: int
    last: int
    before: str
    after: str
    problem: Problem


@dataclass
class _Stray:
    """A line out of place that the chain went on without, until the gap it fills turns up."""

    seq: int
    prev: str
    stored: str
    expected: int  # where it was read
    problem: Problem


@dataclass
class _Move:
    """Entries that fill a reported gap being placed after the entries that followed it:
    once they link up to the gap's end, the chain resumes at ``resume_seq``."""

    gap: _Gap
    problem: Problem  # the reorder reported for the first of them
    resume_seq: int
    resume_prev: str
    reported: int  # problems reported so far: any more while placing the run, no move


#: ``decrypt(entry, stream, file)``: raises DecryptionError when an entry fails to decrypt.
Decryptor = Callable[[dict[str, Any], str, str], dict[str, Any]]


@dataclass
class Problem:
    """One verification failure: where (file, seq) and why (reason, detail)."""

    reason: str
    file: str
    seq: int | None
    detail: str

    def to_error(self) -> VerificationError:
        """The matching :class:`VerificationError` subclass for this problem."""
        cls = _ERRORS.get(self.reason) or (
            SealError if self.reason.startswith("seal_") else VerificationError
        )
        return cls(self.detail, file=self.file, seq=self.seq, reason=self.reason)

    def __str__(self) -> str:
        return str(self.to_error())


@dataclass
class StreamReport:
    """Verification result of one stream."""

    tenant: str
    stream: str
    path: str
    segments: int = 0
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: str = GENESIS_HASH
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Filled only when verifying with a seal seed / a checkpoint key:
    sealed_from: float | None = None
    sealed_to: float | None = None
    sealed_seq: int | None = None
    unsealed_trailing: int | None = None
    checkpoints_verified: int | None = None
    #: Worker processes that verified sealed segments (0: all in this process).
    workers: int = 0
    #: With a decryptor: entries not authenticated because no key with their key id was
    #: given, by key id. Not a problem (the chain still covers them), but not checked.
    keys_missing: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


@dataclass
class VerificationReport:
    """Verification result of one or more tenants."""

    streams: list[StreamReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every stream verified clean."""
        return all(s.ok for s in self.streams)

    @property
    def problems(self) -> list[Problem]:
        """Every problem of every stream."""
        return [p for s in self.streams for p in s.problems]

    @property
    def warnings(self) -> list[str]:
        """Notable but valid events (recovered torn tails, journals of stopped writers)."""
        return [w for s in self.streams for w in s.warnings]

    @property
    def entries(self) -> int:
        """Number of entries read."""
        return sum(s.entries for s in self.streams)

    @property
    def keys_missing(self) -> dict[str, int]:
        """Entries not authenticated for want of their key, by key id (all streams)."""
        missing: dict[str, int] = {}
        for stream in self.streams:
            for kid, count in stream.keys_missing.items():
                missing[kid] = missing.get(kid, 0) + count
        return missing

    def raise_for_problems(self) -> None:
        """Raise the first problem as a :class:`VerificationError` subclass."""
        problems = self.problems
        if problems:
            raise problems[0].to_error()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (used by ``immutable-log verify --json``)."""
        return {
            "ok": self.ok,
            "entries": self.entries,
            "streams": [
                {**asdict(s), "problems": [asdict(p) for p in s.problems], "ok": s.ok}
                for s in self.streams
            ],
        }


def _expected_head(seq: int, prev: str) -> bytes | None:
    """What the line of entry ``seq`` must start with when the previous entry's hash is
    ``prev``; None (every line goes to the diagnosing slow path) unless ``prev`` is a
    64-character ASCII hash."""
    if len(prev) != 64 or not prev.isascii():
        return None
    return LINE_PREFIX % (seq, prev.encode("ascii"))


def _canonical_payload_at(raw: bytes, start: int) -> bool:
    """Whether the entry line ``raw`` (newline included) decodes to a JSON object whose
    payload (every member but seq/prev/hash), encoded canonically, is exactly the bytes
    from ``start`` (just after ``"prev":"...",``) to the hash member: what
    :meth:`_StreamVerifier._check_canonical` accepts, for a line that starts as expected."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    if type(obj) is not dict:
        return False
    for name in ("seq", "prev", "hash"):
        obj.pop(name, None)
    if not obj:
        return False
    try:
        payload = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # let the diagnosing path decide
        return False
    return len(payload) - 2 == len(raw) - 76 - start and raw.startswith(payload[1:-1], start)


class _StreamVerifier:
    """State machine over the lines of one stream."""

    def __init__(self, report: StreamReport, parse: bool, decrypt: Decryptor | None) -> None:
        self.report = report
        self.parse = parse or decrypt is not None
        self.decrypt = decrypt
        self.expected_seq = 1
        self.prev = GENESIS_HASH
        #: Damaged lines (or unreadable data) since the last entry in place: they may have
        #: held that many entries, so an entry up to that far past ``expected_seq`` goes on
        #: from there (its link cannot be checked; the damage is the problem reported).
        self.skipped = 0
        #: A line that did not continue the chain, until the next line tells why.
        self.pending: _Pending | None = None
        #: Gaps and stray lines reported, and a run of entries being put back: entries that
        #: were moved are reported once, as moved, not as missing and out of place.
        self.gaps: list[_Gap] = []
        self.strays: list[_Stray] = []
        self.moved: _Move | None = None
        self.reported = 0  # problems ever reported (replacing one does not count)

    def problem(self, reason: str, file: str, seq: int | None, detail: str) -> Problem:
        found = Problem(reason, file, seq, detail)
        self.report.problems.append(found)
        self.reported += 1
        return found

    def block(self, block: bytes, file: str) -> None:
        """Verify a block of whole lines. The common case (a well-formed entry that links to
        the previous one) is checked inline with bytes slicing; anything else goes through
        :meth:`line`, which diagnoses it. With ``parse`` the inline check also requires a
        canonical payload (:func:`_canonical_payload_at`)."""
        if self.decrypt is not None or not self.prev:
            for raw in io.BytesIO(block):
                self.line(raw[:-1], file)
            return
        parse = self.parse
        sha256 = hashlib.sha256
        expected = self.expected_seq
        head = None if self.pending else _expected_head(expected, self.prev)
        count = 0
        stored = b""
        for raw in io.BytesIO(block):
            # A line is {"seq":N,"prev":"<64 hex>",<payload>,"hash":"<64 hex>"}\n, and the
            # hash covers the line without its last 76 bytes, plus "}".
            if (
                head is not None
                and raw.startswith(head)
                and len(raw) > 160  # as split_line: no entry is shorter
                and raw.endswith(
                    HASH_MEMBER
                    + (digest := sha256(raw[:-76] + b"}").hexdigest().encode())
                    + b'"}\n'
                )
                and (not parse or _canonical_payload_at(raw, len(head)))
            ):
                stored = digest
                expected += 1
                head = LINE_PREFIX % (expected, stored)
                count += 1
                continue
            self._commit_fast(count, expected, stored)
            count, stored = 0, b""
            self.line(raw[:-1], file)
            expected = self.expected_seq
            # A held line is placed by the next one: that goes through the slow path too.
            head = None if self.pending else _expected_head(expected, self.prev)
        self._commit_fast(count, expected, stored)

    def _commit_fast(self, count: int, expected: int, stored: bytes) -> None:
        if count:
            report = self.report
            if report.first_seq is None:
                report.first_seq = expected - count
            report.entries += count
            report.last_seq = expected - 1
            report.head = self.prev = stored.decode("ascii")
            self.expected_seq = expected
            self.skipped = 0

    def line(self, raw: bytes, file: str) -> None:
        parsed = split_line(raw)
        if parsed is None:
            self.damaged("malformed", file, "line is not a chain entry")
            return
        seq, prev, stored, hashed = parsed
        self.report.entries += 1
        if entry_hash(hashed) != stored:
            self.problem("hash_mismatch", file, seq, "entry bytes do not match the stored hash")
        elif stored == self.prev and self.pending is None:
            # The entry just placed, again (its own checks were made the first time).
            self.problem("duplicate", file, seq, f"seq {seq} appears twice in a row")
            return
        if self.parse:
            self._check_canonical(raw, hashed, seq, prev, file)
        self._place(seq, prev, stored, file)

    def damaged(self, reason: str, file: str, detail: str, skipped: int = 1) -> None:
        """A line (or data) that holds no readable entry where the chain stands: the next
        ``skipped`` entries may be in it, so one of them continuing the chain is no gap."""
        self.settle()
        at = None if self.skipped >= _UNKNOWN else self.expected_seq + self.skipped
        self.problem(reason, file, at, detail)  # None: after data that could not be read
        self.skipped = min(self.skipped + skipped, _UNKNOWN)

    def settle(self) -> None:
        """Place a held line for want of a line that tells more (the stream or its lines
        end, damage follows)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            self._misplaced(pending)
        if self.moved is not None:
            self._put_back()
        for stray in self.strays:
            if (stray.seq, stray.prev) == (self.expected_seq, self.prev) and not self.skipped:
                # Where the chain stops, the entry that continues it was seen earlier: it
                # was moved back (the stream's last entry, say), not left out.
                self._stray_was_moved(stray, f"after seq {stray.seq - 1}")
                self._adopt(stray.seq, stray.stored)
                break

    def _place(self, seq: int, prev: str, stored: str, file: str) -> None:
        """Put a parsed entry on the chain, or hold it while it does not continue it."""
        pending, self.pending = self.pending, None
        if pending is None and self.moved is not None and (
            seq != self.expected_seq or prev != self.prev
        ):
            self._put_back((seq, prev))
        if pending is not None:
            if seq == self.expected_seq and prev == self.prev:
                self._adopt(seq, stored)
                if pending[0] == self.expected_seq and pending[1] == self.prev:
                    self.problem(
                        "reorder", pending[3], seq,
                        f"seq {pending[0]} appears before seq {seq} (the two entries are "
                        "swapped)",
                    )
                    self._adopt(pending[0], pending[2])
                else:
                    self._stray(pending)
                return
            # This line goes on from the held one, or tells nothing: the held line is where
            # the chain goes on (a gap, a reorder...), as if no line followed it.
            self._misplaced(pending)
            if seq == pending[0] + 1 and prev == pending[2]:
                self._adopt(seq, stored)
                return
        expected = self.expected_seq
        if seq == expected and prev == self.prev:
            self._adopt(seq, stored)
        elif expected < seq <= expected + self.skipped:
            self._adopt(seq, stored)  # after damaged lines that may have held seq..seq-1
        else:
            self.pending = (seq, prev, stored, file, expected)

    def _adopt(self, seq: int, stored: str) -> None:
        report = self.report
        if report.first_seq is None or seq < report.first_seq:
            report.first_seq = seq  # the lowest: entries moved to the front come later
        report.last_seq = seq
        report.head = stored
        self.expected_seq = seq + 1
        self.prev = stored
        self.skipped = 0

    def _misplaced(self, pending: _Pending) -> None:
        """The chain goes on from a line that does not continue it: say how it breaks."""
        seq, prev, stored, file, _ = pending
        expected = self.expected_seq
        if seq > expected:
            first = expected + self.skipped  # the damaged lines may have held the others
            missing = seq - first
            if missing > 0 and not (self.skipped == 0 and self._moved_earlier(seq, prev)):
                gap = self._gap(file, first, seq - 1)
                if self.skipped == 0:
                    _remember(self.gaps, _Gap(first, seq - 1, self.prev, prev, gap))
        elif seq < expected:
            reorder = self._out_of_order(file, seq, expected)
            if self.moved is None:
                for open_gap in self.gaps:
                    if open_gap.first == seq and open_gap.before == prev:
                        self.moved = _Move(open_gap, reorder, expected, self.prev,
                                           self.reported)
                        break
        elif prev != self.prev:
            self._link_broken(file, seq)
        self._adopt(seq, stored)

    def _stray(self, pending: _Pending) -> None:
        """A line out of place that the chain went on without (inserted, copied, moved)."""
        seq, prev, stored, file, expected = pending
        if seq == expected:
            self._link_broken(file, seq)
            return
        for gap in self.gaps:
            if self.moved is not None and gap is self.moved.gap:
                continue  # being filled by the run placed since a rewind
            if gap.first == gap.last == seq and gap.before == prev and gap.after == stored:
                # The one entry a gap lacked, after the entries that followed it.
                self.gaps.remove(gap)
                self._replace(gap.problem, _moved_later(gap, file, expected - 1))
                report = self.report
                if report.first_seq is None or seq < report.first_seq:
                    report.first_seq = seq
                return
        reorder = self._out_of_order(file, seq, expected)
        _remember(self.strays, _Stray(seq, prev, stored, expected, reorder))

    def _out_of_order(self, file: str, seq: int, expected: int) -> Problem:
        return self.problem(
            "reorder", file, seq, f"seq {seq} appears where seq {expected} was expected"
        )

    def _moved_earlier(self, seq: int, prev: str) -> bool:
        """Whether the one entry missing before ``seq`` (whose hash is ``prev``) is a stray
        line seen earlier that links into the gap: then that line was moved, and its
        reorder problem says so instead of a gap being reported."""
        missing = self.expected_seq
        if seq != missing + 1:
            return False
        for stray in self.strays:
            if stray.seq == missing and stray.prev == self.prev and stray.stored == prev:
                self._stray_was_moved(stray, _place(missing, missing))
                return True
        return False

    def _stray_was_moved(self, stray: _Stray, belongs: str) -> None:
        """``stray`` was moved back from where it ``belongs``: its reorder says so."""
        self.strays = [s for s in self.strays if s is not stray]
        self._replace(stray.problem, Problem(
            "reorder", stray.problem.file, stray.seq,
            f"seq {stray.seq} appears before seq {stray.expected} instead of {belongs}: "
            "moved (the hashes link it there)",
        ))

    def _gap(self, file: str, first: int, last: int) -> Problem:
        """Report entries ``first..last`` missing before entry ``last + 1``."""
        missing = last - first + 1
        return self.problem(
            "gap", file, first,
            f"{missing} entr{'y' if missing == 1 else 'ies'} missing (seq {first}..{last}) "
            f"before seq {last + 1}",
        )

    def _put_back(self, next_entry: tuple[int, str] | None = None) -> None:
        """The run of entries placed since a rewind ends here, before ``next_entry``
        (seq, prev), if any. If no problem came up while it was placed and it filled its
        gap exactly, report one move instead of the gap and the reorder; if it filled the
        start of its gap and the chain then goes on where it stood before the run, report
        it out of place and a smaller gap. Either way, resume the chain where it stood
        before the run; otherwise leave everything as reported."""
        move, self.moved = self.moved, None
        assert move is not None
        gap = move.gap
        if self.skipped or self.reported != move.reported:
            return  # damage or another problem among the run: its hashes prove nothing
        moved_to = move.problem.file
        last_placed = self.expected_seq - 1
        if last_placed == gap.last and self.prev == gap.after:
            self._replace(gap.problem, _moved_later(gap, moved_to, move.resume_seq - 1))
        elif (gap.first <= last_placed < gap.last
              and next_entry == (move.resume_seq, move.resume_prev)):
            moved = _Gap(gap.first, last_placed, gap.before, self.prev, gap.problem)
            self._replace(gap.problem, _moved_later(moved, moved_to, move.resume_seq - 1,
                                                    partly=True))
            self._gap(gap.problem.file, last_placed + 1, gap.last)
        else:
            return
        self.gaps = [g for g in self.gaps if g is not gap]
        self._replace(move.problem, None)
        self.expected_seq, self.prev = move.resume_seq, move.resume_prev
        self.report.last_seq, self.report.head = move.resume_seq - 1, move.resume_prev

    def _replace(self, old: Problem, new: Problem | None) -> None:
        """Put ``new`` in the place of ``old`` (this very object), or remove ``old``."""
        problems = self.report.problems
        for index, problem in enumerate(problems):
            if problem is old:
                if new is None:
                    del problems[index]
                else:
                    problems[index] = new
                return

    def _link_broken(self, file: str, seq: int) -> None:
        self.problem(
            "prev_mismatch", file, seq,
            "entry does not commit to the previous entry's hash "
            "(an entry was inserted, removed or replaced before it)",
        )

    def _check_canonical(self, raw: bytes, hashed: bytes, seq: int, prev: str, file: str) -> None:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.problem("malformed", file, seq, f"invalid JSON: {exc}")
            return
        if not isinstance(obj, dict):
            self.problem("malformed", file, seq, "entry is not a JSON object")
            return
        payload = {k: v for k, v in obj.items() if k not in ("seq", "prev", "hash")}
        if not payload or hashed_bytes(seq, prev, canonical_payload(payload)) != hashed:
            self.problem("non_canonical", file, seq, "payload is not canonical JSON")
            return
        if self.decrypt is not None and "enc" in payload:
            try:
                self.decrypt(dict(obj), self.report.stream, file)
            except KeyUnavailableError:
                # Not tampering (the chain covers the key id) and not a reason to stop:
                # counted, and noted once per key id (verify_stream).
                kid = _key_id(payload.get("enc"))
                missing = self.report.keys_missing
                missing[kid] = missing.get(kid, 0) + 1
            except DecryptionError as exc:
                self.problem("decryption_failed", file, seq, exc.detail)


def verify_stream(
    stream_dir: Path,
    tenant: str,
    *,
    parse: bool = False,
    decrypt: Decryptor | None = None,
    workers: int | None = None,
) -> StreamReport:
    """Verify one stream directory (``decrypt`` also authenticates encrypted entries).

    ``workers``: sealed segments may be verified by up to this many forked processes
    (``None``: one per CPU for logs of at least
    :data:`~immutable_logging.workers.PARALLEL_MIN_BYTES`; ``1``: never). The report is
    the same either way; see :mod:`immutable_logging.workers` for when forking is done.
    """
    report = StreamReport(tenant=tenant, stream=stream_dir.name, path=str(stream_dir))
    segments = list_segments(stream_dir)
    report.segments = len(segments)
    state = _StreamVerifier(report, parse, decrypt)
    recoveries: list[dict[str, Any]] = []
    meta_missing = not (stream_dir / STREAM_META).exists()
    if meta_missing and not _only_creation_leftovers(stream_dir):
        state.problem("malformed", str(stream_dir / STREAM_META), None,
                      "the stream's stream.json is missing")
    elif meta_missing:  # what a process stopped while creating the stream leaves
        report.warnings.append(
            f"{stream_dir}: no stream.json and no entries: a process stopped while creating "
            "this stream (or everything in it was deleted); the next writer that takes it "
            "completes it")
    expected_number = segments[0].number if segments else 1
    if segments and segments[0].number != 1:
        state.problem(
            "missing_segment", str(segments[0].path), 1,
            f"segments 1..{segments[0].number - 1} are missing",
        )
    sealed = segments[:-1]  # the last segment may still grow: always checked here
    count = 0 if decrypt is not None else worker_count(
        workers, len(sealed), total_size(s.path for s in sealed))
    with in_workers(count, _verify_alone, sealed, parse, tenant, stream_dir.name) as pending:
        report.workers = count if pending else 0
        for index, segment in enumerate(segments):
            name = str(segment.path)
            if segment.number != expected_number:
                state.problem(
                    "missing_segment", name, state.expected_seq,
                    f"segment(s) {expected_number}..{segment.number - 1} missing before this one",
                )
            expected_number = segment.number + 1
            is_last = index == len(segments) - 1
            done = _collect(pending[index], state, recoveries) if index < len(pending) else None
            empty = done if done is not None else _verify_segment(
                state, segment, is_last, recoveries)
            if empty and not is_last:
                state.problem("truncation", name, state.expected_seq, "sealed segment is empty")
    state.settle()
    _check_torn_evidence(stream_dir, recoveries, state)
    _check_journal(stream_dir, state)
    for kid, count in report.keys_missing.items():
        report.warnings.append(
            f"{report.path}: {count} entr{'y' if count == 1 else 'ies'} under key id {kid} "
            "not authenticated: no key with that id was given")
    return report


def _moved_later(gap: _Gap, file: str, after: int, partly: bool = False) -> Problem:
    """The problem that replaces ``gap`` once its entries turned up after seq ``after``
    (``partly``: only the start of what the gap lacked, the rest is missing)."""
    one = gap.first == gap.last
    entries = f"seq {gap.first} appears" if one else f"seq {gap.first}..{gap.last} appear"
    why = (f"out of place (only the first links there; seq {gap.last + 1} is missing)"
           if partly else f"moved (the hashes link {'it' if one else 'them'} there)")
    return Problem(
        "reorder", file, gap.first,
        f"{entries} after seq {after} instead of {_place(gap.first, gap.last)}: {why}",
    )


def _place(first: int, last: int) -> str:
    """Where entries ``first..last`` belong, in words."""
    if first == 1:
        return f"before seq {last + 1}"
    return f"between seq {first - 1} and seq {last + 1}"


def _key_id(enc: Any) -> str:
    """The key id of an ``enc`` member (text or object form), or ``"?"``."""
    if isinstance(enc, str):
        parts = enc.split(".")
        return ".".join(parts[1:-1]) or "?"
    if isinstance(enc, dict):
        return str(enc.get("kid", "?"))
    return "?"


def _remember(items: list[Any], item: Any) -> None:
    items.append(item)
    if len(items) > _MOVE_MEMORY:
        del items[0]


def _only_creation_leftovers(stream_dir: Path) -> bool:
    """True when a stream directory holds only what creating it leaves before stream.json
    exists: the lock file and temporary files (no segment, journal, seal or checkpoint)."""
    try:
        names = os.listdir(stream_dir)
    except OSError:
        return False
    return all(name == LOCK_FILE or (name.startswith(".") and name.endswith(".tmp"))
               for name in names)


def _check_journal(stream_dir: Path, state: _StreamVerifier) -> None:
    """Report entries that are in the stream's ``flush`` journal but not in a segment."""
    path = stream_dir / JOURNAL_FILE
    try:
        data = read_journal(path)
    except OSError:  # not readable here: the writer's next open reports what it holds
        return
    if data is None:  # no journal: no writer, or one that closed cleanly
        return
    lines, reason = pending_lines(data, state.expected_seq - 1, state.prev)
    if lines:
        first = state.expected_seq
        state.report.warnings.append(
            f"{path}: {len(lines)} entries (seq {first}-{first + len(lines) - 1}) are in the "
            "journal but not yet in a segment: a running writer writes them within "
            "50 ms; if it stopped without closing, its stream's next writer appends them"
        )
    if reason is not None:
        now = last_seq_on_disk(stream_dir)
        if now is not None and now > state.expected_seq - 1:
            # A live writer wrote on after the segments were read: its journal holds
            # later entries, not ones that break the chain.
            state.report.warnings.append(
                f"{stream_dir}: written while verify ran (now at seq {now}): entries after "
                f"seq {state.expected_seq - 1} and the journal are not verified yet")
            return
        state.report.warnings.append(
            f"{path}: the journal holds an entry that does not continue the chain ({reason}); "
            "the stream's next writer keeps the journal under torn/ and does not append it"
        )



def _verify_segment(
    state: _StreamVerifier, segment: Segment, is_last: bool, recoveries: list[dict[str, Any]]
) -> bool:
    """Verify one segment's lines onto ``state``; True when the segment was empty (an
    unreadable one is not: its read error is the problem)."""
    name = str(segment.path)
    empty = True
    read = 0
    try:
        for block in segment.chunks():
            empty = False
            read += len(block)
            cut = block.rfind(b"\n") + 1
            if cut:
                state.block(block[:cut] if cut < len(block) else block, name)
                if _RECOVERY_MARK in block:
                    recoveries.extend(_recovery_entries(block[:cut]))
            if cut < len(block):
                raw = block[cut:]
                if is_last and not segment.compressed and _being_written(segment.path, read):
                    state.report.warnings.append(
                        f"{name}: its last entry was being written while it was read "
                        f"({len(raw)} bytes so far): not verified yet")
                elif is_last and not segment.compressed:
                    state.damaged(
                        "torn_tail", name,
                        f"last line is incomplete ({len(raw)} bytes without newline): a "
                        "crash mid-write; the writer moves it aside on next open",
                    )
                else:
                    state.damaged(
                        "truncation", name, "sealed segment ends in the middle of an entry"
                    )
    except READ_ERRORS as exc:
        state.damaged("malformed", name, f"cannot read segment: {exc}", _UNKNOWN)
        return False
    return empty


#: How long a torn-looking active segment is watched for the rest of its last entry.
_WRITE_GRACE = 0.25


def _being_written(path: Path, read: int) -> bool:
    """Whether the active segment, read up to byte ``read`` with its last line incomplete,
    is still being written: it grows (or is cut back to an entry boundary by a failed
    write) within :data:`_WRITE_GRACE`. A reader catches a large write half done; a line
    torn by a crash stays as it is."""
    deadline = time.monotonic() + _WRITE_GRACE
    while True:
        try:
            if os.stat(path).st_size != read:
                return True
        except FileNotFoundError:  # sealed (compressed) meanwhile: it was being written
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


@dataclass
class _SegmentResult:
    """A sealed segment verified on its own, from the position its first entry claims."""

    start: tuple[int, str] | None  # (seq, prev) of the first entry, None if unreadable
    report: StreamReport
    expected_seq: int
    prev: str
    skipped: int
    pending: _Pending | None
    recoveries: list[dict[str, Any]]
    empty: bool


def _verify_alone(segment: Segment, parse: bool, tenant: str, stream: str) -> _SegmentResult:
    """Worker process side: verify ``segment`` assuming its first entry is in place."""
    report = StreamReport(tenant=tenant, stream=stream, path="")
    state = _StreamVerifier(report, parse, None)
    start = _first_position(segment)
    recoveries: list[dict[str, Any]] = []
    empty = True
    if start is not None:
        state.expected_seq, state.prev = start
        empty = _verify_segment(state, segment, False, recoveries)
    return _SegmentResult(start, report, state.expected_seq, state.prev, state.skipped,
                          state.pending, recoveries, empty)


def _first_position(segment: Segment) -> tuple[int, str] | None:
    try:
        with segment.open() as handle:
            first = handle.readline(1 << 20)
    except READ_ERRORS:
        return None
    parsed = split_line(first[:-1]) if first.endswith(b"\n") else None
    return None if parsed is None else (parsed[0], parsed[1])


def _collect(
    future: Future[_SegmentResult], state: _StreamVerifier, recoveries: list[dict[str, Any]]
) -> bool | None:
    """Fold a worker's result into ``state`` if it started where ``state`` stands.

    Returns the segment's emptiness, or None when the segment must be verified here: the
    worker failed, or the segment does not continue the chain exactly (then the serial
    pass produces the diagnosis, so the report never depends on the worker count).
    """
    try:
        done = future.result()
    except Exception:  # a broken pool, a killed worker: fall back to the serial pass
        return None
    if (
        done.start is None
        or state.pending is not None  # the segment's first line tells what the held one is
        or done.start != (state.expected_seq, state.prev)
        or done.report.problems  # moved entries are told apart across segments
        or state.moved is not None  # a run being put back ends in a later segment
    ):
        return None
    report, part = state.report, done.report
    report.problems.extend(part.problems)
    report.warnings.extend(part.warnings)
    report.entries += part.entries
    if part.last_seq is not None:
        if report.first_seq is None:
            report.first_seq = part.first_seq
        report.last_seq = part.last_seq
        report.head = part.head
    state.expected_seq, state.prev = done.expected_seq, done.prev
    state.skipped, state.pending = done.skipped, done.pending
    recoveries.extend(done.recoveries)
    return done.empty


def _recovery_entries(block: bytes) -> Iterator[dict[str, Any]]:
    for raw in io.BytesIO(block):
        if _RECOVERY_MARK in raw:
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # the chain check reports the line
            if isinstance(entry, dict) and entry.get("kind") == "recovery":
                yield entry


def _check_torn_evidence(
    stream_dir: Path, recoveries: list[dict[str, Any]], state: _StreamVerifier
) -> None:
    """Every torn tail (or journal) the writer moved aside must still be in ``torn/``,
    unchanged; entries appended from a stopped writer's journal are reported."""
    report = state.report
    referenced: set[str] = set()
    for entry in recoveries:
        moved_to = str(entry.get("moved_to", ""))
        seq = entry.get("seq") if isinstance(entry.get("seq"), int) else None
        if entry.get("event") == "journal_replay":
            report.warnings.append(
                f"{report.path}: seq {seq}: {entry.get('entries')} entries (seq "
                f"{entry.get('first_seq')}-{entry.get('last_seq')}) appended from the journal "
                "of a writer that stopped without closing"
            )
            continue
        target = stream_dir / moved_to
        if not moved_to.startswith(TORN_DIR + "/") or ".." in moved_to:
            state.problem("malformed", str(stream_dir), seq,
                          f"recovery entry points outside torn/: {moved_to!r}")
            continue
        referenced.add(moved_to)
        try:
            digest = hashlib.sha256(target.read_bytes()).hexdigest()
        except OSError:
            state.problem("torn_evidence_missing", str(target), seq,
                          "the torn tail this recovery entry moved aside is gone")
            continue
        if digest != entry.get("sha256"):
            state.problem("torn_evidence_altered", str(target), seq,
                          "the torn tail moved aside no longer matches its recorded sha256")
            continue
        if entry.get("event") == "journal_mismatch":
            report.warnings.append(
                f"{report.path}: seq {seq}: the journal of a stopped writer held entries that "
                f"did not continue the chain ({entry.get('reason')}); they were not appended "
                f"and the journal is kept at {moved_to}"
            )
            continue
        report.warnings.append(
            f"{report.path}: seq {seq}: torn tail recovered ({entry.get('length')} bytes of "
            f"{entry.get('segment')} at byte {entry.get('offset')} kept at {moved_to})"
        )
    torn = stream_dir / TORN_DIR
    if torn.is_dir():
        for name in sorted(os.listdir(torn)):
            if f"{TORN_DIR}/{name}" not in referenced:
                report.warnings.append(
                    f"{report.path}: {TORN_DIR}/{name} has no recovery entry (the writer "
                    "stopped between moving it aside and recording it)"
                )


def check_seals(
    stream_dir: Path,
    tenant: str,
    report: StreamReport,
    seed: bytes | str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    tenant_keys: _TenantKeys | None = None,
) -> None:
    """Check a stream's seals with the seed; add problems and the sealed range to *report*."""

    def problem(reason: str, file: str, seq: int | None, detail: str) -> None:
        report.problems.append(Problem(reason, file, seq, detail))

    grid = None
    try:
        grid = load_grid(stream_dir.parent)
    except Exception as exc:  # a damaged tenant state: the seals carry the grid too
        report.warnings.append(f"{stream_dir.parent}: unreadable seal state ({exc})")
    checker = SealChecker(
        seed, tenant, stream_dir, problem, grid=grid, tolerance=tolerance,
        tenant_keys=tenant_keys,
    )
    last_seal_seq = 0
    last_seq = 0
    for segment in list_segments(stream_dir):
        name = str(segment.path)
        try:
            with segment.open() as handle:
                for raw in handle:
                    if not raw.endswith(b"\n"):
                        break
                    parsed = split_line(raw[:-1])
                    if parsed is None:
                        continue  # the chain pass reports it
                    seq, _, digest, _ = parsed
                    try:
                        obj = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        obj = None
                    if not isinstance(obj, dict):
                        obj = None
                    checker.entry(seq, digest, obj, name)
                    if obj is not None and obj.get("kind") == "seal":
                        last_seal_seq = seq
                    last_seq = seq
        except READ_ERRORS:
            continue  # the chain pass reports it
    summary = checker.finish(max(0, last_seq - last_seal_seq))
    report.sealed_from = summary.sealed_from
    report.sealed_to = summary.sealed_to
    report.sealed_seq = summary.sealed_seq if summary.seals else None
    report.unsealed_trailing = summary.unsealed_trailing


def verify_tenant(
    root: str | os.PathLike[str],
    tenant: str = "default",
    *,
    parse: bool = False,
    decrypt: Decryptor | None = None,
    seed: bytes | str | None = None,
    checkpoint_key: str | None = None,
    anchors: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    workers: int | None = None,
) -> VerificationReport:
    """Verify every stream of one tenant.

    Args:
        workers: worker processes for sealed segments (see :func:`verify_stream`).
        seed: the seal seed (``ils1-...`` text or 32 bytes): also check every seal.
        checkpoint_key: a note verifier key (``name+id+base64``): also check signed
            checkpoints, the stream's own and those under *anchors*.
        anchors: one or more directories holding checkpoints made elsewhere, laid out
            ``<tenant>/<stream>/checkpoints/<size>.note``.
        tolerance: seconds an entry's time may lie outside the epoch that seals it.

    With ``decrypt``, entries under a key id that was not given are not authenticated:
    they are counted in ``keys_missing`` (and noted), not reported as problems.

    Raises:
        ConfigurationError: ``anchors`` without ``checkpoint_key``, or an anchors
            directory that does not exist (checks silently skipped would pass a rewrite).
    """
    anchor_list = _anchor_list(anchors)
    if anchor_list and checkpoint_key is None:
        raise ConfigurationError(
            "anchors are checked only with checkpoint_key, the note verifier key of the "
            "checkpoints they hold")
    for anchor in anchor_list:
        if not anchor.is_dir():
            raise ConfigurationError(f"no such anchors directory: {anchor}")
    tdir = tenant_dir(root, tenant)
    streams = list_streams(tdir)
    report = VerificationReport(
        [verify_stream(s, tenant, parse=parse, decrypt=decrypt, workers=workers)
         for s in streams]
    )
    if seed is not None:
        keys = _TenantKeys(_seed_bytes(seed))
        for stream_dir, stream_report in zip(streams, report.streams, strict=True):
            check_seals(
                stream_dir, tenant, stream_report, seed, tolerance=tolerance, tenant_keys=keys
            )
    if checkpoint_key is not None:
        for stream_dir, stream_report in zip(streams, report.streams, strict=True):

            def problem(
                reason: str, file: str, seq: int | None, detail: str,
                target: StreamReport = stream_report,
            ) -> None:
                target.problems.append(Problem(reason, file, seq, detail))

            stream_report.checkpoints_verified = verify_checkpoints(
                stream_dir, tenant, checkpoint_key, anchor_list, problem
            )
        report.streams.extend(_missing_streams(tenant, {s.name for s in streams}, anchor_list))
    return report


def _seed_bytes(seed: bytes | str) -> bytes:
    from .seal import _coerce_seed

    return _coerce_seed(seed)


def _anchor_list(
    anchors: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None,
) -> list[Path]:
    if anchors is None:
        return []
    if isinstance(anchors, str | os.PathLike):
        return [Path(anchors)]
    return [Path(a) for a in anchors]


def _missing_streams(tenant: str, local: set[str], anchors: list[Path]) -> list[StreamReport]:
    """Reports for streams that anchors know but the local log lacks (deleted streams)."""
    missing: list[StreamReport] = []
    for anchor in anchors:
        tdir = anchor / tenant
        if not tdir.is_dir():
            continue
        for sdir in sorted(tdir.iterdir()):
            notes = sdir / CHECKPOINT_DIR
            if sdir.name in local or not notes.is_dir() or not any(notes.glob("*.note")):
                continue
            report = StreamReport(tenant=tenant, stream=sdir.name, path=str(sdir))
            report.problems.append(
                Problem(
                    "truncation", str(notes), None,
                    f"anchored checkpoints exist for stream {sdir.name!r}, which is missing "
                    "from the local log",
                )
            )
            missing.append(report)
            local.add(sdir.name)
    return missing


def verify_directory(
    root: str | os.PathLike[str],
    tenants: Iterable[str] | None = None,
    *,
    parse: bool = False,
    workers: int | None = None,
) -> VerificationReport:
    """Verify every stream of every tenant under ``root`` (or of the given tenants)."""
    report = VerificationReport()
    for tenant in tenants if tenants is not None else list_tenants(Path(root)):
        report.streams.extend(verify_tenant(root, tenant, parse=parse, workers=workers).streams)
    return report
