"""RFC 6962 / RFC 9162 Merkle tree hashes, inclusion proofs and consistency proofs.

Pure functions, no I/O. Hashing follows RFC 6962 section 2.1 (unchanged in RFC 9162):

* leaf hash:  ``SHA-256(0x00 || data)``
* node hash:  ``SHA-256(0x01 || left || right)``
* empty tree: ``SHA-256("")``

**Leaf hashes versus leaf data.** Every function that takes a sequence of leaves
(:func:`root_hash`, :func:`inclusion_proof`, :func:`consistency_proof`,
:meth:`MerkleAccumulator.append`) expects values that are *already leaf-hashed*
(32 bytes each). Use :func:`leaf_hash` to hash raw leaf data, or
:func:`entry_leaf_hash` to turn a chain entry's ``hash`` hex string into its leaf
hash as ``docs/FORMAT.md`` defines it (``SHA-256(0x00 || bytes.fromhex(hash))``).

Invalid arguments to the proof *builders* raise
:class:`~immutable_logging.errors.ConfigurationError`; the proof *verifiers* never
raise on bad input, they return ``False``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from immutable_logging.errors import ConfigurationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "MerkleAccumulator",
    "consistency_proof",
    "entry_leaf_hash",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root hash of the empty tree (RFC 6962: the hash of an empty string)."""

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 6962 leaf hash ``SHA-256(0x00 || data)`` of raw leaf *data*."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 6962 interior node hash ``SHA-256(0x01 || left || right)``."""
    return _sha256(NODE_PREFIX + left + right).digest()


def entry_leaf_hash(entry_hash_hex: str) -> bytes:
    """Return the Merkle leaf hash of a chain entry given its ``hash`` member (64 hex).

    Raises:
        ConfigurationError: *entry_hash_hex* is not 64 hexadecimal characters.
    """
    if len(entry_hash_hex) != 2 * HASH_SIZE:
        raise ConfigurationError(f"entry hash must be 64 hex characters, got {entry_hash_hex!r}")
    try:
        raw = bytes.fromhex(entry_hash_hex)
    except ValueError as exc:
        raise ConfigurationError(f"entry hash is not hexadecimal: {entry_hash_hex!r}") from exc
    return leaf_hash(raw)


def _check_leaves(leaf_hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(leaf_hashes):
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise ConfigurationError(f"leaf {i} is not a {HASH_SIZE}-byte leaf hash")


def _split(n: int) -> int:
    """Largest power of two strictly smaller than *n* (n >= 2), RFC 6962's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_root(leaf_hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) for a non-empty range, computed level by level.

    Pairing adjacent nodes and promoting an odd last node unchanged yields exactly
    RFC 6962's recursive definition, without recursion and in O(hi - lo).
    """
    level = [bytes(h) for h in leaf_hashes[lo:hi]]
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash (MTH) of a list of *already leaf-hashed* values.

    Args:
        leaf_hashes: the leaf hashes (outputs of :func:`leaf_hash`), 32 bytes each.

    Returns:
        The 32-byte root; :data:`EMPTY_ROOT` for an empty list.

    Raises:
        ConfigurationError: an element is not a 32-byte hash.
    """
    _check_leaves(leaf_hashes)
    if not leaf_hashes:
        return EMPTY_ROOT
    return _range_root(leaf_hashes, 0, len(leaf_hashes))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Return the RFC 6962 audit path (``PATH(m, D[n])``) of leaf *index*.

    Args:
        leaf_hashes: the tree's leaf hashes (already leaf-hashed).
        index: 0-based index of the leaf, ``0 <= index < len(leaf_hashes)``.

    Returns:
        The sibling hashes from the leaf up to the root.

    Raises:
        ConfigurationError: *index* is out of range or a leaf is not a 32-byte hash.
    """
    _check_leaves(leaf_hashes)
    n = len(leaf_hashes)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise ConfigurationError(f"leaf index {index!r} out of range for tree size {n}")
    proof: list[bytes] = []
    lo, hi = 0, n
    # Walk from the root down, collecting siblings; reversed at the end (leaf first).
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            proof.append(_range_root(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_range_root(leaf_hashes, lo, lo + k))
            lo = lo + k
    proof.reverse()
    return proof


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return the RFC 6962 consistency proof (``PROOF(m, D[n])``, via ``SUBPROOF``).

    Proves that the tree of the first *old_size* leaves is a prefix of the tree of
    all ``len(leaf_hashes)`` leaves. The proof is empty when ``old_size`` is 0 or
    equals the new size.

    Raises:
        ConfigurationError: ``old_size`` is negative or larger than the tree.
    """
    _check_leaves(leaf_hashes)
    n = len(leaf_hashes)
    if isinstance(old_size, bool) or not isinstance(old_size, int) or not 0 <= old_size <= n:
        raise ConfigurationError(f"old size {old_size!r} out of range for tree size {n}")
    if old_size in (0, n):
        return []
    proof: list[bytes] = []
    m, lo, hi, complete = old_size, 0, n, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(_range_root(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_range_root(leaf_hashes, lo, lo + k))
            m, lo, complete = m - k, lo + k, False
    if not complete:
        proof.append(_range_root(leaf_hashes, lo, hi))
    proof.reverse()
    return proof


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray) and len(value) == HASH_SIZE


def _valid_proof(proof: object) -> bool:
    return isinstance(proof, list | tuple) and all(_is_hash(p) for p in proof)


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Check an inclusion proof with the algorithm of RFC 9162 section 2.1.3.2.

    Args:
        leaf_hash: the leaf's hash (already leaf-hashed, 32 bytes).
        index: the leaf's 0-based index.
        tree_size: the size of the tree *root* belongs to.
        proof: the audit path as returned by :func:`inclusion_proof`.
        root: the expected root hash.

    Returns:
        ``True`` if the proof is valid; ``False`` for a wrong proof or bad arguments.
    """
    if not (_is_size(index) and _is_size(tree_size) and index < tree_size):
        return False
    if not (_is_hash(leaf_hash) and _is_hash(root) and _valid_proof(proof)):
        return False
    fn, sn, r = index, tree_size - 1, bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Check a consistency proof with the algorithm of RFC 9162 section 2.1.4.2.

    Edge cases (outside the RFC's ``0 < old_size < new_size``): equal sizes need an
    empty proof and equal roots; ``old_size == 0`` needs an empty proof and
    ``old_root == EMPTY_ROOT`` (the empty tree is a prefix of every tree).

    Returns:
        ``True`` if *proof* shows the old tree is a prefix of the new one; ``False``
        for a wrong proof or bad arguments (including ``old_size > new_size``).
    """
    if not (_is_size(old_size) and _is_size(new_size) and old_size <= new_size):
        return False
    if not (_is_hash(old_root) and _is_hash(new_root) and _valid_proof(proof)):
        return False
    if old_size == 0:
        return len(proof) == 0 and hmac.compare_digest(old_root, EMPTY_ROOT)
    if old_size == new_size:
        return len(proof) == 0 and hmac.compare_digest(old_root, new_root)
    if len(proof) == 0:
        return False
    return _check_consistency_path(old_size, new_size, old_root, new_root, list(proof))


def _check_consistency_path(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: list[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2 steps 2-7 for ``0 < old_size < new_size``."""
    if old_size & (old_size - 1) == 0:  # exact power of two: old root is the first node
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = bytes(path[0])
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(fr, old_root) and hmac.compare_digest(sr, new_root)


class MerkleAccumulator:
    """Running RFC 6962 root over appended leaf hashes, without storing the leaves.

    Keeps one root per perfect subtree (the "peaks", one per set bit of the size),
    left to right, so :meth:`append` costs O(1) amortised node hashes (O(log n)
    worst case) and :meth:`root` O(log n). Not thread-safe: the single writer of a
    stream owns it.
    """

    __slots__ = ("_peaks", "_size")

    def __init__(self) -> None:
        """Create an accumulator for the empty tree."""
        self._peaks: list[bytes] = []
        self._size = 0

    @classmethod
    def from_peaks(cls, size: int, peaks: Sequence[bytes]) -> MerkleAccumulator:
        """Rebuild an accumulator from a saved ``(size, peaks)`` pair.

        Raises:
            ConfigurationError: the number of peaks does not match *size*, or a peak
                is not a 32-byte hash.
        """
        if not _is_size(size) or len(peaks) != size.bit_count():
            raise ConfigurationError(f"{len(peaks)} peaks do not describe a tree of size {size}")
        if not all(_is_hash(p) for p in peaks):
            raise ConfigurationError("every peak must be a 32-byte hash")
        acc = cls()
        acc._peaks = [bytes(p) for p in peaks]
        acc._size = size
        return acc

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    @property
    def peaks(self) -> tuple[bytes, ...]:
        """Roots of the perfect subtrees, largest (leftmost) first; see :meth:`from_peaks`."""
        return tuple(self._peaks)

    def append(self, leaf_hash: bytes) -> None:
        """Append one *already leaf-hashed* value (32 bytes).

        Raises:
            ConfigurationError: *leaf_hash* is not a 32-byte hash.
        """
        if not _is_hash(leaf_hash):
            raise ConfigurationError(f"leaf must be a {HASH_SIZE}-byte leaf hash")
        peaks = self._peaks
        peaks.append(bytes(leaf_hash))
        n = self._size
        while n & 1:  # each trailing 1 bit of the old size is a peak to merge with
            right = peaks.pop()
            peaks[-1] = node_hash(peaks[-1], right)
            n >>= 1
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append several leaf hashes in order (each checked like :meth:`append`)."""
        leaves = list(leaf_hashes)
        if not all(_is_hash(h) for h in leaves):
            raise ConfigurationError(f"every leaf must be a {HASH_SIZE}-byte leaf hash")
        peaks = self._peaks
        size = self._size
        sha256 = _sha256
        for h in leaves:
            peaks.append(bytes(h))
            n = size
            while n & 1:  # same merge as append(), with the lookups hoisted
                right = peaks.pop()
                peaks[-1] = sha256(NODE_PREFIX + peaks[-1] + right).digest()
                n >>= 1
            size += 1
        self._size = size

    def root(self) -> bytes:
        """Return the current root hash (:data:`EMPTY_ROOT` when empty)."""
        if not self._peaks:
            return EMPTY_ROOT
        r = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            r = node_hash(peak, r)
        return r

    def copy(self) -> MerkleAccumulator:
        """Return an independent copy."""
        return MerkleAccumulator.from_peaks(self._size, self._peaks)
