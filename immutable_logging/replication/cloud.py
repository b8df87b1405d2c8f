"""Check a replica against the local log, and rebuild a log (or one entry) from a replica.

The replica is never trusted: every batch is decompressed, every line re-hashed, sequence
numbers and ``prev`` links are checked across batches, and object metadata must agree with
the content. Problems name the object key, the sequence number and a reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from ..chain import compress_segment
from ..compression import READ_ERRORS, decompress
from ..encryption import SALT_FILE
from ..entry import GENESIS_HASH, entry_hash, split_line
from ..errors import ConfigurationError, RemoteIntegrityError
from ..fileio import atomic_write, fsync_dir, make_log_directory, not_a_directory, write_all
from ..layout import (
    CHECKPOINT_DIR,
    STREAM_META,
    TORN_DIR,
    list_segments,
    list_streams,
    segment_name,
    tenant_dir,
    validate_stream_name,
)
from ..sealing import SEALS_RESTORED, TENANT_STATE, seal_payload, sealing_configured
from ..verify import verify_tenant
from .backend import ObjectNotFoundError, StorageBackend
from .keys import (
    BatchName,
    batches_prefix,
    parse_batch_key,
    parse_checkpoint_key,
    salt_key,
    stream_meta_key,
    torn_prefix,
)
from .replicator import cursor_path, saved_cursor

Decryptor = Callable[[dict[str, Any], str, str], dict[str, Any]]


@dataclass
class RemoteProblem:
    """A defect of the replica: which object, which entry, why."""

    key: str
    seq: int | None
    reason: str
    detail: str


#: Takes each entry of a replica's stream as it is checked: seq, hash, segment number, line.
LineSink = Callable[[int, str, int, bytes], None]


@dataclass
class RemoteStream:
    """What checking one stream of the replica found (its entries went to a sink)."""

    stream: str
    entries: int = 0
    problems: list[RemoteProblem] = field(default_factory=list)
    batches: int = 0


def replica_tenants(backend: StorageBackend) -> list[str]:
    """The tenants the replica holds batches of (one listing of the whole replica)."""
    return sorted({name.tenant for name in map(parse_batch_key, backend.list())
                   if name is not None})


def remote_streams(
    backend: StorageBackend, tenant: str, keys: Iterable[str] | None = None
) -> dict[str, list[BatchName]]:
    """Batch names of every stream of ``tenant`` in the replica, in sequence order (from
    ``keys``, the tenant's listing, when the caller has it already)."""
    streams: dict[str, list[BatchName]] = defaultdict(list)
    for key in backend.list(batches_prefix(tenant)) if keys is None else keys:
        name = parse_batch_key(key)
        if name is not None and name.tenant == tenant:
            streams[name.stream].append(name)
    for names in streams.values():
        # Of two batches starting at one seq the longer comes first: the other one is
        # reported as the overlap, and nothing it lacks is taken for missing.
        names.sort(key=lambda n: (n.first_seq, -n.last_seq))
    return dict(streams)


def shipped_ends(
    backend: StorageBackend, tenant: str, root: str | os.PathLike[str] | None = None,
    keys: Iterable[str] | None = None,
) -> dict[str, tuple[int, str]]:
    """How far each stream of ``tenant`` is known to have been shipped, and the evidence:
    the signed checkpoints in the replica (one is shipped after the entries it covers)
    and, with the local log's ``root``, the replicators' saved cursors. ``keys`` is the
    tenant's listing when the caller has it already.

    A batch shipped after the batches were listed can make these reach further than the
    listing: :func:`lost_ends` lists again before it reports anything.
    """
    ends: dict[str, tuple[int, str]] = {}
    if root is not None:
        for stream_dir in list_streams(tenant_dir(root, tenant)):
            cursor = saved_cursor(stream_dir, backend)
            if cursor is not None and cursor.last_seq:
                ends[stream_dir.name] = (
                    cursor.last_seq, f"the replication cursor {cursor_path(stream_dir, backend)}")
    for key in backend.list(f"{tenant}/") if keys is None else keys:
        parsed = parse_checkpoint_key(key)
        if parsed is not None and parsed[0] == tenant and parsed[2] > ends.get(parsed[1],
                                                                               (0, ""))[0]:
            ends[parsed[1]] = (parsed[2], f"the signed checkpoint {key} in the replica")
    return ends


def lost_ends(
    backend: StorageBackend, tenant: str, shipped: dict[str, tuple[int, str]],
    streams: dict[str, list[BatchName]],
) -> list[RemoteProblem]:
    """A ``truncation`` problem for every stream whose batches end before what
    :func:`shipped_ends` says was shipped: the replica lost its newest entries (a hash
    chain cannot tell a lost end from an end)."""
    problems: list[RemoteProblem] = []
    for stream, (reached, evidence) in sorted(shipped.items()):
        if reached <= max((n.last_seq for n in streams.get(stream, [])), default=0):
            continue
        # Listed again: a batch shipped while the replica was being read is there now.
        end = max((n.last_seq for n in remote_streams(backend, tenant).get(stream, [])),
                  default=0)
        if reached > end:
            problems.append(RemoteProblem(
                f"{tenant}/{stream}", end + 1, "truncation",
                f"{evidence} says entries up to seq {reached} were shipped, but the "
                f"replica's batches of the stream end at seq {end}: it lost its newest "
                "entries"))
    return problems


def load_remote_stream(
    backend: StorageBackend, stream: str, names: list[BatchName], sink: LineSink | None = None
) -> RemoteStream:
    """Download and check every batch of a stream, in order (never raises for bad content).

    Each entry taken goes to ``sink`` as soon as its batch is checked, so that no more than
    one batch is held in memory, however long the stream.

    A batch that overlaps entries already taken (two shippers of the stream cut the same
    entries into different batches: a request still in flight when ``close()`` gave up
    lands after the next writer shipped) is no problem when its repeated entries are the
    ones taken: its newer entries, if any, are taken too. One that differs from them is an
    ``overlap`` problem, and none of its entries is taken."""
    result = RemoteStream(stream)
    expected_seq, prev, prev_segment = 1, GENESIS_HASH, 0
    # (hash, segment) of the entries a later batch repeats up to
    remembered: dict[int, tuple[str, int]] = {}
    wanted = _repeated_ends(names)
    take = sink
    if wanted:
        def take(seq: int, digest: str, segment: int, line: bytes) -> None:
            if seq in wanted:
                remembered[seq] = digest, segment
            if sink is not None:
                sink(seq, digest, segment, line)
    for name in names:
        result.batches += 1
        if name.first_seq > expected_seq:
            result.problems.append(RemoteProblem(
                name.key, expected_seq, "gap",
                f"entries {expected_seq}..{name.first_seq - 1} are not in the replica"))
            expected_seq, prev = name.first_seq, ""  # one problem for one gap
        try:
            raw = decompress(backend.get(name.key))
        except READ_ERRORS as exc:
            result.problems.append(RemoteProblem(name.key, name.first_seq, "corrupt_object",
                                                 f"cannot decompress: {exc}"))
            if name.last_seq >= expected_seq:
                expected_seq, prev = name.last_seq + 1, ""
            continue
        meta = backend.head(name.key) or {}
        segment = int(meta["segment"]) if meta.get("segment", "").isdigit() else 0
        if meta.get("content-sha256") not in (None, hashlib.sha256(raw).hexdigest()):
            result.problems.append(RemoteProblem(name.key, name.first_seq, "hash_mismatch",
                                                 "object content does not match its metadata"))
        if name.first_seq < expected_seq:
            last_repeated = min(expected_seq - 1, name.last_seq)
            known = ((prev, prev_segment) if last_repeated == expected_seq - 1
                     else remembered.get(last_repeated))
            newer = _newer_than_repeated(result, name, raw, segment, expected_seq, known)
            if newer is None or name.last_seq < expected_seq:  # differs, or only repeats
                continue
            name, raw = newer
        expected_seq, prev = _check_batch(result, name, raw, segment, expected_seq, prev, take)
        prev_segment = segment
    return result


def _repeated_ends(names: list[BatchName]) -> set[int]:
    """The last seqs of the batches (in listing order) that end before an earlier batch
    does: checking them needs the hash of the entry taken at that seq."""
    wanted: set[int] = set()
    reach = 0
    for name in names:
        if name.last_seq < reach:
            wanted.add(name.last_seq)
        reach = max(reach, name.last_seq)
    return wanted


def _newer_than_repeated(
    result: RemoteStream, name: BatchName, raw: bytes, segment: int, expected_seq: int,
    known: tuple[str, int] | None,
) -> tuple[BatchName, bytes] | None:
    """A batch starting before ``expected_seq``: the part after the entries it repeats
    (``name`` and content), or None after reporting an ``overlap`` problem.

    It must hold as many lines as its name says. Its repeated lines must be chain
    entries, numbered and linked one after the other, and the last one must have the hash
    and the segment (``segment``, from the batch's metadata) of the entry taken at its seq
    (``known``; None or an empty hash when that is not known): the hash chain then makes
    every repeated line equal to the one taken.
    """
    lines = raw.splitlines(keepends=True)
    if len(lines) != name.last_seq - name.first_seq + 1:
        result.problems.append(RemoteProblem(
            name.key, name.first_seq, "overlap",
            f"batch overlaps entries already present (up to seq {expected_seq - 1}) and "
            f"holds {len(lines)} entries, its name says {name.last_seq - name.first_seq + 1}"))
        return None
    repeated = min(expected_seq, name.last_seq + 1) - name.first_seq
    digest: str | None = None
    for offset, line in enumerate(lines[:repeated]):
        parsed = split_line(line[:-1]) if line.endswith(b"\n") else None
        if (parsed is None or parsed[0] != name.first_seq + offset
                or (digest is not None and parsed[1] != digest)
                or entry_hash(parsed[3]) != parsed[2]):
            digest = None
            break
        digest = parsed[2]
    comparable = known is not None and bool(known[0])
    if not comparable or (digest, segment) != known:
        result.problems.append(RemoteProblem(
            name.key, name.first_seq, "overlap",
            f"batch overlaps entries already present (up to seq {expected_seq - 1}) and "
            + ("differs from them" if comparable else "cannot be compared with them")))
        return None
    return replace(name, first_seq=expected_seq), b"".join(lines[repeated:])


def _check_batch(
    result: RemoteStream, name: BatchName, raw: bytes, segment: int, expected_seq: int,
    prev: str, sink: LineSink | None,
) -> tuple[int, str]:
    lines = raw.splitlines(keepends=True)
    for line in lines:
        parsed = split_line(line.rstrip(b"\n")) if line.endswith(b"\n") else None
        if parsed is None:
            result.problems.append(RemoteProblem(name.key, expected_seq, "malformed",
                                                 "line is not a chain entry"))
            expected_seq, prev = expected_seq + 1, ""
            continue
        seq, entry_prev, digest, hashed = parsed
        altered = entry_hash(hashed) != digest
        if altered:
            result.problems.append(RemoteProblem(name.key, seq, "hash_mismatch",
                                                 "entry bytes do not match the stored hash"))
        elif seq != expected_seq:
            result.problems.append(RemoteProblem(name.key, seq, "gap" if seq > expected_seq
                                                 else "reorder",
                                                 f"seq {seq} where {expected_seq} was expected"))
        elif prev and entry_prev != prev:
            result.problems.append(RemoteProblem(name.key, seq, "prev_mismatch",
                                                 "entry does not link to the previous entry"))
        if seq < expected_seq:  # a repeated or older entry: counted once, not as a new one
            continue
        if not altered:  # bytes that do not match their hash are no copy of the entry
            result.entries += 1
            if sink is not None:
                sink(seq, digest, segment, line)
        expected_seq, prev = seq + 1, digest
    if len(lines) != name.last_seq - name.first_seq + 1:
        result.problems.append(RemoteProblem(
            name.key, name.first_seq, "count_mismatch",
            f"object holds {len(lines)} entries, its name says "
            f"{name.last_seq - name.first_seq + 1}"))
    return max(expected_seq, name.last_seq + 1), prev


@dataclass
class _SeqSpan:
    """How many sequence numbers were seen, and the first and last of them."""

    count: int = 0
    first: int = 0
    last: int = 0

    def add(self, seq: int) -> None:
        if not self.count:
            self.first = seq
        self.count, self.last = self.count + 1, seq


@dataclass
class _Comparison:
    """A replica's stream compared entry by entry with the local hashes of the stream."""

    hashes: dict[int, str]
    matched: int = 0
    differing: _SeqSpan = field(default_factory=_SeqSpan)
    only_remote: _SeqSpan = field(default_factory=_SeqSpan)

    def take(self, seq: int, digest: str, segment: int, line: bytes) -> None:
        """A :data:`LineSink`: compare one entry of the replica."""
        local_digest = self.hashes.get(seq)
        if local_digest == digest:
            self.matched += 1
        elif local_digest is not None:
            self.differing.add(seq)
        else:
            self.only_remote.add(seq)


def _local_hashes(root: str | os.PathLike[str], tenant: str) -> dict[str, dict[int, str]]:
    found: dict[str, dict[int, str]] = {}
    for stream_dir in list_streams(tenant_dir(root, tenant)):
        hashes: dict[int, str] = {}
        for segment in list_segments(stream_dir):
            with segment.open() as handle:
                for line in handle:
                    parsed = split_line(line.rstrip(b"\n")) if line.endswith(b"\n") else None
                    if parsed is not None:
                        hashes[parsed[0]] = parsed[2]
        found[stream_dir.name] = hashes
    return found


def verify_cloud_backup(
    backend: StorageBackend, root: str | os.PathLike[str], tenant: str
) -> dict[str, Any]:
    """Compare the replica with the local log and verify the replica's own chain.

    Blocks are entries, compared by sequence number and hash, stream by stream; an entry
    of the replica whose bytes do not match its hash counts as not held by it. Returns:

    * ``local_blocks``: entries the local log holds;
    * ``remote_entries``: entries the replica holds;
    * ``cloud_blocks``: entries both hold, identical;
    * ``missing_blocks``: local entries the replica does not hold identically
      (``local_blocks - cloud_blocks``: not shipped yet, lost by the replica, or differing);
    * ``differing_blocks``: sequence numbers both hold with different entries;
    * ``remote_only_blocks``: replica entries the local log lacks (it lost them), so that
      ``remote_entries == cloud_blocks + differing_blocks + remote_only_blocks``;
    * ``sync_percentage``: ``cloud_blocks`` as a share of every entry known to either
      side (``local_blocks + remote_only_blocks``), rounded down to 0.01, so 100.0 means
      all of them (and 100.0 when neither side holds any);
    * ``sync_status``: :func:`sync_state` of the above;
    * ``remote_ok``: the replica's own chain verifies (no problem found in it alone);
    * ``problems`` (key, seq, reason, detail), ``streams`` (the counts per stream:
      ``local``, ``cloud``, ``remote_entries``, ``differing``, ``remote_only``) and
      ``target`` (the replica).
    """
    local = _local_hashes(root, tenant)
    keys = list(backend.list(f"{tenant}/"))  # one listing for the batches and checkpoints
    shipped = shipped_ends(backend, tenant, root, keys)
    names = remote_streams(backend, tenant, keys)
    compared = {stream: _Comparison(local.get(stream, {})) for stream in names}
    remote = {stream: load_remote_stream(backend, stream, n, compared[stream].take)
              for stream, n in names.items()}
    problems = [p for r in remote.values() for p in r.problems]
    problems += lost_ends(backend, tenant, shipped, names)
    remote_ok = not problems  # what follows compares the replica with the local log
    per_stream: dict[str, dict[str, int]] = {}
    for stream in sorted(set(local) | set(remote)):
        comparison = compared.get(stream) or _Comparison(local[stream])
        differing, only_remote = comparison.differing, comparison.only_remote
        if differing.count:  # one problem per stream, not one per entry
            problems.append(RemoteProblem(
                f"{tenant}/{stream}", differing.first, "differs_from_local",
                f"{differing.count} entr{'y' if differing.count == 1 else 'ies'} (first at "
                f"seq {differing.first}, last at seq {differing.last}) differ between the "
                "replica and the local log: one of them was altered, or they are two "
                "different logs with the same stream name"))
        if only_remote.count:
            problems.append(RemoteProblem(
                f"{tenant}/{stream}", only_remote.first, "missing_locally",
                f"{only_remote.count} entries (seq {only_remote.first}..{only_remote.last}) "
                "are in the replica but not in the local log: it was truncated or deleted "
                "locally"))
        per_stream[stream] = {
            "local": len(comparison.hashes),
            "cloud": comparison.matched,
            "remote_entries": remote[stream].entries if stream in remote else 0,
            "differing": differing.count,
            "remote_only": only_remote.count,
        }
    local_blocks, cloud_blocks, remote_entries, differing_blocks, remote_only_blocks = (
        sum(counts[name] for counts in per_stream.values())
        for name in ("local", "cloud", "remote_entries", "differing", "remote_only"))
    known = local_blocks + remote_only_blocks
    return {
        "local_blocks": local_blocks,
        "cloud_blocks": cloud_blocks,
        "missing_blocks": local_blocks - cloud_blocks,
        "sync_status": sync_state(local_blocks, cloud_blocks, remote_entries, remote_ok,
                                  bool(problems)),
        "sync_percentage": 10_000 * cloud_blocks // known / 100 if known else 100.0,
        "remote_entries": remote_entries,
        "differing_blocks": differing_blocks,
        "remote_only_blocks": remote_only_blocks,
        "remote_ok": remote_ok,
        "problems": [asdict(p) for p in problems],
        "streams": per_stream,
        "target": backend.describe(),
    }


def sync_state(local: int, cloud: int, remote: int, remote_ok: bool, problems: bool) -> str:
    """The ``sync_status`` of a comparison (see :func:`verify_cloud_backup`), from the
    entries the local log holds (``local``), those both hold identically (``cloud``), those
    the replica holds (``remote``), whether the replica verifies on its own, and whether
    any problem was found:

    * ``"corrupted"``: a problem: the replica is damaged (``remote_ok`` is false), it and
      the local log differ, or the local log lost some of the replica's entries;
    * ``"local_lost"``: the local log holds none of the tenant's entries, the replica
      holds some and verifies (restoring from it rebuilds the log);
    * ``"synced"``: both hold the same entries (also when neither holds any);
    * ``"partial"``: the replica holds the local log's first entries, not all of them;
    * ``"not_synced"``: the replica holds none of the local log's entries.
    """
    if remote_ok and not local and remote:
        return "local_lost"
    if problems:
        return "corrupted"
    if cloud == local:
        return "synced"
    return "partial" if cloud else "not_synced"


def find_entry(
    backend: StorageBackend, tenant: str, block_hash: str, decrypt: Decryptor | None = None
) -> dict[str, Any] | None:
    """The entry whose hash is ``block_hash``, read from the replica (None if absent)."""
    wanted = block_hash.strip().lower().encode("ascii", "replace")
    for stream, names in remote_streams(backend, tenant).items():
        for name in names:
            raw = decompress(backend.get(name.key))
            for line in raw.splitlines():
                if wanted not in line:
                    continue
                parsed = split_line(line)
                if parsed is None or parsed[2] != block_hash.lower():
                    continue
                if entry_hash(parsed[3]) != parsed[2]:
                    raise RemoteIntegrityError(
                        f"{backend.describe()}: object {name.key}: entry seq {parsed[0]} does "
                        "not match its hash")
                entry: dict[str, Any] = orjson.loads(line)
                entry["stream"] = stream
                if decrypt is not None and "enc" in entry:
                    meta = backend.head(name.key) or {}
                    segment = int(meta.get("segment", "0") or 0)
                    entry = decrypt(entry, stream, segment_name(segment))
                return entry
    return None


def restore_tenant(
    backend: StorageBackend, root: str | os.PathLike[str], tenant: str
) -> dict[str, Any]:
    """Rebuild every stream of ``tenant`` from the replica under an empty ``root``.

    Every batch is checked before the restored log is put in place; a damaged replica
    raises :class:`RemoteIntegrityError` naming the object and sequence number. Sealed
    segments are gzip'ed and made read-only exactly as the writer does, so the result
    verifies clean and equals the original. The streams are written as their batches are
    checked, into a directory ``.restoring-<tenant>-*`` under ``root``: memory holds one
    batch, not the tenant. The tenant's own files (the passphrase salt, the note that the
    log holds seals) are written there too, and everything is moved into place at the end,
    those files first. The restore is all or nothing: if any step raises, what was already
    moved is moved out again, and the staging directory (and ``root`` or the tenant's
    directory, if the call made them) is removed. A crash between two moves is not undone:
    the target then holds part of the log, and the staging directory the rest.

    Raises:
        ObjectNotFoundError: the replica holds no entry of ``tenant`` (nothing is created).
        RemoteIntegrityError: the replica is damaged, or names a stream no writer makes
            (nothing is created).
        ConfigurationError: the target already holds streams of ``tenant``, something else
            where a stream of the replica goes, another passphrase salt, or a seal state
            while the replica holds seals (nothing is created).
        OSError: writing the restored log or moving it into place failed (nothing is
            created; a note on the exception says if moves were undone).
    """
    target = tenant_dir(root, tenant)
    if list_streams(target):
        raise ConfigurationError(f"restore needs an empty directory: {target} holds streams")
    blocker = not_a_directory(target)  # checked before anything is downloaded
    if blocker is not None:
        raise ConfigurationError(
            f"cannot restore into {str(target)!r}: {str(blocker)!r} is not a directory")
    keys = list(backend.list(f"{tenant}/"))  # one listing for the batches and checkpoints
    shipped = shipped_ends(backend, tenant, keys=keys)
    streams = remote_streams(backend, tenant, keys)
    for stream, names in streams.items():  # directory names: only what a writer makes
        try:
            validate_stream_name(stream)
        except ConfigurationError:
            raise RemoteIntegrityError(
                f"{backend.describe()}: replica of tenant {tenant!r} holds batches of a "
                f"stream named {stream!r}, which no writer makes (object {names[0].key}): "
                "nothing is restored") from None
    if not streams and not shipped:
        # Checked before anything is written: restoring nothing must not look like success.
        raise ObjectNotFoundError(
            f"{backend.describe()} holds no entries of tenant {tenant!r}: nothing to restore")
    for stream in streams:
        if os.path.lexists(target / stream):  # not a stream (checked above): refused early
            raise ConfigurationError(
                f"restore needs an empty directory: {target / stream} is in the way of "
                f"stream {stream!r} of the replica: remove it, or restore into another "
                "directory")
    salt = _replica_salt(backend, tenant, list(streams))
    existing = target / SALT_FILE
    if salt is not None and existing.exists() and existing.read_bytes() != salt:
        raise ConfigurationError(
            f"{existing} holds another passphrase salt than the replica (a handler opened "
            f"there with a passphrase made it): remove it, or restore into another directory")
    root_path = Path(root)
    made_root = not root_path.exists()
    make_log_directory(root_path)
    staging = Path(tempfile.mkdtemp(prefix=f".restoring-{tenant}-", dir=root_path))
    made_target = False
    moved: list[tuple[Path, Path]] = []  # every rename done, in order: undone on failure
    try:
        loaded, sealed, segments = _restore_streams(backend, tenant, streams, staging)
        problems = [p for r in loaded for p in r.problems]
        problems += lost_ends(backend, tenant, shipped, streams)
        if problems:
            first = problems[0]
            raise RemoteIntegrityError(
                f"{backend.describe()}: replica of tenant {tenant!r} is damaged: object "
                f"{first.key}, seq {first.seq}: {first.reason}: {first.detail}"
                + (f" (+{len(problems) - 1} more problems)" if len(problems) > 1 else ""))
        if sealed and sealing_configured(target):
            raise ConfigurationError(
                f"{target / TENANT_STATE} holds a seal state (keygen ran there), and the "
                f"replica's log holds seals made under the original one (streams "
                f"{', '.join(sealed)}): new seals would use another epoch grid, and verify "
                "--seed could check only one of them. Remove it, or restore into another "
                "directory")
        # Moved in before the streams: a restored log is never in place without them.
        tenant_files: list[str] = []
        if salt is not None and not existing.exists():  # the restored log decrypts with it
            atomic_write(staging / SALT_FILE, salt, 0o600)
            tenant_files.append(SALT_FILE)
        if sealed:  # see sealing.restored_seals_note: a handler opened here says so
            atomic_write(staging / SEALS_RESTORED, orjson.dumps(
                {"from": backend.describe(), "streams": sealed}), 0o600)
            tenant_files.append(SEALS_RESTORED)
        made_target = not target.exists()
        target.mkdir(exist_ok=True, mode=0o700)
        if sealed and os.path.lexists(target / SEALS_RESTORED):  # an earlier restore's note
            _move(moved, target / SEALS_RESTORED, staging / f"{SEALS_RESTORED}.replaced")
        for name in [*tenant_files, *(remote.stream for remote in loaded)]:
            _move(moved, staging / name, target / name)
        fsync_dir(target)
    except BaseException as exc:
        left = _move_back(moved)
        if left:  # the staging directory holds what was not put back: it is kept
            exc.add_note(
                f"restore of tenant {tenant!r} failed, and undoing the moves of "
                f"{', '.join(left)} failed too: they stay there, and {staging} is kept")
        else:
            if moved:
                exc.add_note(f"restore of tenant {tenant!r} failed: what was already moved "
                             f"into {target} was moved out again, nothing is left there")
            shutil.rmtree(staging, ignore_errors=True)
            for made, path in ((made_target, target), (made_root, root_path)):
                if made:
                    with contextlib.suppress(OSError):
                        path.rmdir()
        raise
    shutil.rmtree(staging)  # empty, or holding the note an earlier restore left
    report = verify_tenant(root, tenant)
    return {
        "tenant": tenant,
        "directory": str(target),
        "streams": len(loaded),
        "entries": sum(r.entries for r in loaded),
        "segments": segments,
        "verified": report.ok,
        "problems": [str(p) for p in report.problems],
        "sealed_streams": sealed,
    }


def _move(moved: list[tuple[Path, Path]], source: Path, destination: Path) -> None:
    """``os.rename`` ``source`` to ``destination`` and record it in ``moved``."""
    os.rename(source, destination)
    moved.append((source, destination))


def _move_back(moved: list[tuple[Path, Path]]) -> list[str]:
    """Undo the renames of ``moved``, last first; return the paths that could not be."""
    left: list[str] = []
    for source, destination in reversed(moved):
        try:
            os.rename(destination, source)
        except OSError:
            left.append(str(destination))
    return left


def _restore_streams(
    backend: StorageBackend, tenant: str, streams: dict[str, list[BatchName]], staging: Path
) -> tuple[list[RemoteStream], list[str], int]:
    """Check and write every stream of the replica under ``staging``; return what checking
    found per stream, the streams that hold seal entries, and how many segment files were
    written."""
    loaded: list[RemoteStream] = []
    sealed: list[str] = []
    segments = 0
    for stream, names in streams.items():
        stream_dir = staging / stream
        _write_stream_files(backend, stream_dir, tenant, stream)
        with _SegmentFiles(stream_dir) as files:
            remote = load_remote_stream(backend, stream, names, files.take)
        if files.backwards is not None:
            seq, detail = files.backwards
            remote.problems.append(RemoteProblem(f"{tenant}/{stream}", seq, "segment_order",
                                                 detail))
        loaded.append(remote)
        segments += files.segments
        if files.sealed:
            sealed.append(stream)
    return loaded, sealed, segments


def _replica_salt(backend: StorageBackend, tenant: str, streams: list[str]) -> bytes | None:
    """The passphrase salt the replica's streams of ``tenant`` hold (None: no passphrase);
    checked before anything is written."""
    found: set[bytes] = set()
    for stream in streams:
        with contextlib.suppress(ObjectNotFoundError):
            found.add(backend.get(salt_key(tenant, stream)))
    if len(found) > 1:
        raise RemoteIntegrityError(
            f"{backend.describe()}: streams of tenant {tenant!r} hold different passphrase "
            "salts")
    return found.pop() if found else None


def _write_stream_files(
    backend: StorageBackend, stream_dir: Path, tenant: str, stream: str
) -> None:
    """A restored stream's files besides its segments: ``stream.json``, torn-tail evidence
    and the signed checkpoint notes."""
    stream_dir.mkdir(mode=0o700)
    try:
        meta = backend.get(stream_meta_key(tenant, stream))
    except ObjectNotFoundError:
        meta = orjson.dumps({"format": 1, "tenant": tenant, "stream": stream})
    atomic_write(stream_dir / STREAM_META, meta, 0o644)
    torn_names = list(backend.list(torn_prefix(tenant, stream)))
    if torn_names:
        (stream_dir / TORN_DIR).mkdir(exist_ok=True, mode=0o700)
        for key in torn_names:
            atomic_write(stream_dir / TORN_DIR / key.rsplit("/", 1)[-1], backend.get(key), 0o400)
    notes = [(parsed[2], key) for key in backend.list(f"{tenant}/{stream}/checkpoints/")
             if (parsed := parse_checkpoint_key(key)) is not None]
    if notes:  # the signed checkpoints: verify --checkpoint-key checks the restored log
        (stream_dir / CHECKPOINT_DIR).mkdir(exist_ok=True, mode=0o700)
        for size, key in notes:
            atomic_write(stream_dir / CHECKPOINT_DIR / f"{size}.note", backend.get(key), 0o644)


#: Bytes of entries a restored segment gathers before it writes them, in one system call.
_WRITE_BUFFER = 1 << 20


class _SegmentFiles:
    """Writes a restored stream's entries into its segment files as they come (a
    :data:`LineSink`): a segment is sealed (read-only, gzip'ed) as the writer seals it once
    the next one starts; the last one stays plain, as the active segment. Entries are
    written :data:`_WRITE_BUFFER` bytes at a time, not one system call each."""

    def __init__(self, stream_dir: Path) -> None:
        self._dir = stream_dir
        self._fd: int | None = None
        self._number = -1
        self._path: Path | None = None
        self._buffer = bytearray()
        self.sealed = False  #: whether a seal entry was seen
        self.segments = 0  #: how many segment files were started
        self.backwards: tuple[int, str] | None = None  #: first entry of an earlier segment

    def __enter__(self) -> _SegmentFiles:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self._finish(seal=False, write=exc_type is None)

    def take(self, seq: int, digest: str, segment: int, line: bytes) -> None:
        """Append one checked entry to the file of its segment."""
        if segment != self._number:
            if segment < self._number:  # the chain's order wins; the restore is refused
                if self.backwards is None:
                    self.backwards = (seq, f"batch metadata puts entry {seq} in segment "
                                           f"{segment}, after entries of segment {self._number}")
            else:
                self._finish(seal=True)
                self._number = segment
                self._path = self._dir / segment_name(segment)
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                   | os.O_CLOEXEC, 0o600)
                self.segments += 1
        assert self._fd is not None
        self._buffer += line
        if len(self._buffer) >= _WRITE_BUFFER:
            self._write_out(self._fd)
        if not self.sealed and seal_payload(line) is not None:
            self.sealed = True

    def _write_out(self, fd: int) -> None:
        """Write the entries gathered so far to ``fd``."""
        write_all(fd, self._buffer)
        # A new buffer, not clear(): after a failed write the traceback still holds a view
        # of the old one, and a bytearray with views cannot be resized.
        self._buffer = bytearray()

    def _finish(self, seal: bool, write: bool = True) -> None:
        """Write out and close the segment being written, sealing it when another one
        follows; ``write=False`` (the restore failed) only closes it."""
        fd, path, self._fd = self._fd, self._path, None
        if fd is None or path is None:
            return
        try:
            if write:
                self._write_out(fd)
                os.fsync(fd)
        finally:
            self._buffer = bytearray()
            os.close(fd)
        if not write:
            return
        if seal:
            os.chmod(path, 0o444)
            compress_segment(path)  # syncs the directory too
        else:
            fsync_dir(self._dir)
