"""Signed checkpoints of a stream's RFC 6962 Merkle tree, and proofs against them.

Leaves are the stream's entries in seq order (seal entries included): leaf ``i`` is
``SHA-256(0x00 || bytes.fromhex(hash of entry i+1))``. A :class:`Checkpointer` reads the
entries from disk (never from the writer's memory), folds new ones into a
:class:`~immutable_logging.merkle.MerkleAccumulator` whose state (tree size and peaks) is kept
in ``<stream>/checkpoints/state.json``, and writes C2SP signed notes
``<stream>/checkpoints/<tree_size>.note`` with origin ``"<tenant>/<stream>"``.

A note kept on the host proves little against an attacker who holds the signing key
there too; its value comes from copies held elsewhere (the replica): see
:func:`verify_checkpoints`, used by ``verify --checkpoint-key --anchors``.

The signing key (handler option ``checkpoint_key``, see :func:`load_signing_key`) is
a raw 32-byte Ed25519 seed as bytes or base64 text, PEM text, or the path of a PEM file
(as written by ``immutable-log keygen --checkpoint-key FILE``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .entry import GENESIS_HASH, split_line
from .errors import CheckpointError, ConfigurationError
from .fileio import atomic_write
from .layout import CHECKPOINT_DIR, list_segments
from .merkle import (
    MerkleAccumulator,
    consistency_proof,
    entry_leaf_hash,
    inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from .seal import Checkpoint, CheckpointSigner, parse_and_verify_checkpoint, parse_vkey

__all__ = [
    "DEFAULT_KEY_NAME",
    "Checkpointer",
    "ConsistencyProof",
    "InclusionProof",
    "load_signing_key",
    "prove_consistency",
    "prove_inclusion",
    "read_leaves",
    "verify_checkpoints",
]

DEFAULT_KEY_NAME = "immutable-logging"
STATE_FILE = "state.json"
#: Local notes are ``<size>.note``; replicas name them ``<size, zero-padded to 12>.note``.
_NOTE_RE = re.compile(r"^([0-9]+)\.note$")

#: ``problem(reason, file, seq, detail)``
ProblemSink = Callable[[str, str, "int | None", str], None]


def load_signing_key(
    spec: str | bytes | os.PathLike[str] | Ed25519PrivateKey | CheckpointSigner,
    key_name: str = DEFAULT_KEY_NAME,
) -> CheckpointSigner:
    """Build a signer from a key given as raw bytes, base64, PEM text or a PEM file path.

    Raises:
        ConfigurationError: the key cannot be read or is not an Ed25519 private key.
    """
    if isinstance(spec, CheckpointSigner):
        return spec
    if isinstance(spec, Ed25519PrivateKey):
        return CheckpointSigner(spec, key_name)
    material: bytes | str
    if isinstance(spec, os.PathLike):
        material = _read_key_file(Path(spec))
    elif isinstance(spec, bytes):
        material = spec
    elif not isinstance(spec, str):
        raise ConfigurationError("checkpoint_key must be bytes, base64 text, PEM or a path")
    elif spec.lstrip().startswith("-----BEGIN"):
        material = spec
    elif os.path.isfile(spec):
        material = _read_key_file(Path(spec))
    else:
        try:
            material = _b64_key(spec)
        except ConfigurationError:
            if "/" in spec or spec.endswith(".pem"):  # meant as a path
                raise ConfigurationError(f"checkpoint key file {spec} not found") from None
            raise
    is_pem = isinstance(material, bytes) and material.lstrip().startswith(b"-----BEGIN")
    if isinstance(material, bytes) and not is_pem and len(material) != 32:
        material = _b64_key(material.decode("ascii", "replace"))
    return CheckpointSigner(material, key_name)


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read checkpoint key {path}: {exc}") from exc


def _b64_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError("checkpoint key is not base64, PEM or a file") from exc
    if len(raw) != 32:
        raise ConfigurationError("a base64 checkpoint key encodes 32 bytes (Ed25519 seed)")
    return raw


# ------------------------------------------------------------------ reading leaves


def _iter_lines(
    stream_dir: Path, segment: int = 0, offset: int = 0
) -> Iterator[tuple[bytes, int, int]]:
    """Yield ``(line, segment_number, end_offset)`` for complete lines from a position.

    Stops at an incomplete last line (an entry being written).
    """
    for seg in list_segments(stream_dir):
        if seg.number < segment:
            continue
        with seg.open() as handle:
            pos = 0
            if seg.number == segment and offset:
                handle.seek(offset)
                pos = offset
            for line in handle:
                if not line.endswith(b"\n"):
                    return
                pos += len(line)
                yield line, seg.number, pos


def read_leaves(stream_dir: str | os.PathLike[str], count: int | None = None) -> list[bytes]:
    """Leaf hashes of a stream's first *count* entries (all when None), in seq order.

    Raises:
        CheckpointError: a line is malformed or sequence numbers do not follow.
    """
    leaves: list[bytes] = []
    for seq, digest in _iter_hashes(Path(stream_dir)):
        if count is not None and len(leaves) >= count:
            break
        if seq != len(leaves) + 1:
            raise CheckpointError(f"seq {seq} where {len(leaves) + 1} was expected", seq=seq)
        leaves.append(entry_leaf_hash(digest))
    return leaves


def _iter_hashes(stream_dir: Path) -> Iterator[tuple[int, str]]:
    for line, number, _ in _iter_lines(stream_dir):
        parsed = split_line(line[:-1])
        if parsed is None:
            raise CheckpointError(
                "malformed entry line", file=str(stream_dir / f"segment {number}")
            )
        yield parsed[0], parsed[2]


# ------------------------------------------------------------------ checkpointer


class Checkpointer:
    """Folds a stream's entries into its Merkle tree and writes signed checkpoints.

    Runs off the logging path (the handler calls :meth:`update` from a background thread
    and at close). It re-hashes every entry it folds and checks the chain links, so it
    never signs a chain it cannot vouch for. Not thread-safe; one per stream.

    Args:
        stream_dir: the stream directory.
        tenant: tenant id (the note origin is ``"<tenant>/<stream>"``).
        signer: the Ed25519 signer (see :func:`load_signing_key`).
    """

    def __init__(self, stream_dir: str | os.PathLike[str], tenant: str, signer: CheckpointSigner):
        self.stream_dir = Path(stream_dir)
        self.origin = f"{tenant}/{self.stream_dir.name}"
        self.signer = signer
        self.directory = self.stream_dir / CHECKPOINT_DIR
        self._state_path = self.directory / STATE_FILE
        self._acc = MerkleAccumulator()
        self._head = GENESIS_HASH
        self._segment = 0
        self._offset = 0
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read {self._state_path}: {exc}") from exc
        try:
            peaks = [bytes.fromhex(p) for p in doc["peaks"]]
            self._acc = MerkleAccumulator.from_peaks(int(doc["size"]), peaks)
            self._head = str(doc["head"])
            self._segment = int(doc["segment"])
            self._offset = int(doc["offset"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid checkpoint state {self._state_path}") from exc

    @property
    def tree_size(self) -> int:
        """Number of entries folded so far."""
        return self._acc.size

    def root(self) -> bytes:
        """The Merkle root of the entries folded so far."""
        return self._acc.root()

    def fold(self) -> int:
        """Fold entries written since the last call; return the new tree size.

        Raises:
            CheckpointError: an entry does not hash, link or follow in seq (nothing
                after it is folded, nothing is signed).
        """
        leaves: list[bytes] = []
        add = leaves.append
        sha256 = hashlib.sha256
        fromhex = bytes.fromhex
        head = self._head
        expected = self._acc.size + 1
        good = (self._segment, self._offset)
        try:
            for line, number, end in _iter_lines(self.stream_dir, self._segment, self._offset):
                # Fast path of entry.split_line: the shape is checked by the comparisons.
                digest_b = line[-67:-3]
                if not line.startswith(b'{"seq":%d,"prev":"%s",' % (expected, head.encode())):
                    raise CheckpointError(
                        "entry does not continue the checkpointed chain; not signing",
                        file=self._file(number), seq=expected, reason="checkpoint_chain",
                    )
                digest = digest_b.decode("ascii", "replace")
                if (
                    line[-76:-67] != b',"hash":"'
                    or sha256(line[:-76] + b"}").hexdigest() != digest
                ):
                    raise CheckpointError(
                        "entry does not hash to its stored hash; not signing",
                        file=self._file(number), seq=expected, reason="checkpoint_chain",
                    )
                add(sha256(b"\x00" + fromhex(digest)).digest())
                head = digest
                expected += 1
                good = (number, end)
        finally:  # keep what was folded before a bad entry, never past it
            self._acc.extend(leaves)
            self._head = head
            self._segment, self._offset = good
        return self._acc.size

    def _file(self, number: int) -> str:
        return str(self.stream_dir / f"{number:08d}.log")

    def update(self) -> Path | None:
        """Fold new entries and, if the tree grew, write and return its signed note."""
        before = self._acc.size
        size = self.fold()
        note = self.directory / f"{size}.note"
        if size == 0 or (size == before and note.exists()):
            return None
        self.directory.mkdir(exist_ok=True, mode=0o700)
        text = self.signer.sign(Checkpoint(self.origin, size, self._acc.root()))
        atomic_write(note, text.encode("utf-8"), 0o644)
        state = {
            "format": 1,
            "size": size,
            "peaks": [p.hex() for p in self._acc.peaks],
            "head": self._head,
            "segment": self._segment,
            "offset": self._offset,
        }
        atomic_write(self._state_path, json.dumps(state, sort_keys=True).encode("ascii"))
        return note


def list_notes(directory: Path) -> list[tuple[int, Path]]:
    """``(size, path)`` of the ``<size>.note`` files in a checkpoints directory, by size."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m.group(1)), directory / n) for n in names if (m := _NOTE_RE.match(n))]
    return sorted(found)


# ------------------------------------------------------------------------ proofs


def _hex_list(items: list[bytes]) -> list[str]:
    return [h.hex() for h in items]


@dataclass(frozen=True)
class InclusionProof:
    """Proof that entry *seq* is leaf ``seq - 1`` of the tree of size *tree_size*."""

    seq: int
    tree_size: int
    entry_hash: str
    leaf_hash: bytes
    proof: list[bytes]
    root: bytes

    def verify(self, root: bytes | None = None) -> bool:
        """Check the proof against *root* (default: the root it was built with)."""
        return verify_inclusion(
            self.leaf_hash, self.seq - 1, self.tree_size, self.proof, root or self.root
        ) and self.leaf_hash == entry_leaf_hash(self.entry_hash)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (hashes as hex)."""
        return {
            "seq": self.seq,
            "leaf_index": self.seq - 1,
            "tree_size": self.tree_size,
            "entry_hash": self.entry_hash,
            "leaf_hash": self.leaf_hash.hex(),
            "proof": _hex_list(self.proof),
            "root": self.root.hex(),
        }


@dataclass(frozen=True)
class ConsistencyProof:
    """Proof that the tree of *old_size* entries is a prefix of the tree of *new_size*."""

    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    proof: list[bytes]

    def verify(self, old_root: bytes | None = None, new_root: bytes | None = None) -> bool:
        """Check the proof (against other roots, e.g. from checkpoints, when given)."""
        return verify_consistency(
            self.old_size,
            self.new_size,
            old_root or self.old_root,
            new_root or self.new_root,
            self.proof,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (hashes as hex)."""
        return {
            "old_size": self.old_size,
            "new_size": self.new_size,
            "old_root": self.old_root.hex(),
            "new_root": self.new_root.hex(),
            "proof": _hex_list(self.proof),
        }


def prove_inclusion(
    stream_dir: str | os.PathLike[str], seq: int, tree_size: int | None = None
) -> InclusionProof:
    """Build the inclusion proof of entry *seq* in the stream's tree of *tree_size* entries
    (default: every entry on disk).

    Raises:
        ConfigurationError: *seq* or *tree_size* out of range.
        CheckpointError: the stream's entries do not follow in seq.
    """
    leaves = read_leaves(stream_dir, tree_size)
    size = len(leaves) if tree_size is None else tree_size
    if size > len(leaves):
        raise ConfigurationError(f"tree size {size} exceeds the {len(leaves)} entries on disk")
    if not 1 <= seq <= size:
        raise ConfigurationError(f"seq {seq} is not in a tree of size {size}")
    digest = _entry_hash_at(Path(stream_dir), seq)
    return InclusionProof(
        seq, size, digest, leaves[seq - 1], inclusion_proof(leaves, seq - 1),
        _root(leaves),
    )


def _root(leaves: list[bytes]) -> bytes:
    acc = MerkleAccumulator()
    acc.extend(leaves)
    return acc.root()


def _entry_hash_at(stream_dir: Path, seq: int) -> str:
    for s, digest in _iter_hashes(stream_dir):
        if s == seq:
            return digest
    raise ConfigurationError(f"no entry with seq {seq}")


def prove_consistency(
    stream_dir: str | os.PathLike[str], old_size: int, new_size: int | None = None
) -> ConsistencyProof:
    """Build the consistency proof between the stream's trees of *old_size* and
    *new_size* entries (default: every entry on disk).

    Raises:
        ConfigurationError: sizes out of range.
    """
    leaves = read_leaves(stream_dir, new_size)
    size = len(leaves) if new_size is None else new_size
    if size > len(leaves):
        raise ConfigurationError(f"tree size {size} exceeds the {len(leaves)} entries on disk")
    if not 0 <= old_size <= size:
        raise ConfigurationError(f"old size {old_size} out of range 0..{size}")
    return ConsistencyProof(
        old_size, size, _root(leaves[:old_size]), _root(leaves),
        consistency_proof(leaves, old_size),
    )


# ------------------------------------------------------------------ verification


def anchor_dirs(stream_dir: Path, tenant: str, anchors: list[Path]) -> list[Path]:
    """The checkpoint directories to check for a stream: its own, then each anchor's."""
    dirs = [stream_dir / CHECKPOINT_DIR]
    for anchor in anchors:
        dirs.append(anchor / tenant / stream_dir.name / CHECKPOINT_DIR)
    return dirs


def verify_checkpoints(
    stream_dir: Path,
    tenant: str,
    vkey: str,
    anchors: list[Path],
    problem: ProblemSink,
) -> int:
    """Check every checkpoint note of a stream (local and anchored) against its entries.

    Each note's signature must verify under *vkey* with origin ``"<tenant>/<stream>"``
    (else ``checkpoint_invalid``); its root must equal the Merkle root recomputed from
    the local entries of that tree size (else ``checkpoint_mismatch``: entries were
    rewritten); a size beyond the local log is ``truncation``. Returns the number of
    notes that verified and matched.

    Raises:
        ConfigurationError: *vkey* is not a valid verifier key.
    """
    key_name, public = parse_vkey(vkey)
    origin = f"{tenant}/{stream_dir.name}"
    wanted: dict[int, list[tuple[bytes, str]]] = {}
    for directory in anchor_dirs(stream_dir, tenant, anchors):
        for size, path in list_notes(directory):
            try:
                note = parse_and_verify_checkpoint(
                    path.read_bytes(), public, key_name, expected_origin=origin
                )
            except CheckpointError as exc:
                problem("checkpoint_invalid", str(path), None, f"{exc.reason}: {exc.detail}")
                continue
            except OSError as exc:
                problem("checkpoint_invalid", str(path), None, f"cannot read: {exc}")
                continue
            if note.tree_size != size:
                problem(
                    "checkpoint_invalid", str(path), None,
                    f"note says tree size {note.tree_size} but is named {path.name}",
                )
                continue
            wanted.setdefault(size, []).append((note.root_hash, str(path)))
    if not wanted:
        return 0
    matched = 0
    acc = MerkleAccumulator()
    sizes = sorted(wanted)
    index = 0
    expected_seq = 1

    def compare() -> int:
        nonlocal index
        found = 0
        while index < len(sizes) and sizes[index] == acc.size:
            root = acc.root()
            for note_root, where in wanted[sizes[index]]:
                if note_root == root:
                    found += 1
                else:
                    problem(
                        "checkpoint_mismatch", where, acc.size,
                        f"signed root for the first {acc.size} entries differs from the "
                        "root of the local entries: the log was rewritten",
                    )
            index += 1
        return found

    matched += compare()
    try:
        for seq, digest in _iter_hashes(stream_dir):
            if index >= len(sizes):
                break
            if seq != expected_seq:
                break  # the chain verifier reports the gap; roots beyond cannot match
            acc.append(entry_leaf_hash(digest))
            expected_seq += 1
            matched += compare()
    except (CheckpointError, ConfigurationError, OSError):
        pass
    for size in sizes[index:]:
        for _, note_path in wanted[size]:
            problem(
                "truncation", note_path, acc.size + 1,
                f"a signed checkpoint covers {size} entries but only {acc.size} "
                "follow on from seq 1 locally: entries were removed",
            )
    return matched
