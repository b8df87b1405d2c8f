"""Tests of immutable_logging.merkle: RFC 6962 vectors, randomized proofs, accumulator."""

from __future__ import annotations

import hashlib
import random

import pytest

from immutable_logging.errors import ConfigurationError
from immutable_logging.merkle import (
    EMPTY_ROOT,
    MerkleAccumulator,
    consistency_proof,
    entry_leaf_hash,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

# ---------------------------------------------------------------------------
# Known-answer vectors. Source: github.com/transparency-dev/merkle,
# proof/verify_test.go (`leaves`, `roots`, `inclusionProofs`, `consistencyProofs`)
# and rfc6962/rfc6962_test.go (TestRFC6962Hasher); these are the vectors that
# originated in google/certificate-transparency's merkle tree tests.
# ---------------------------------------------------------------------------

VECTOR_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]

# VECTOR_ROOTS[i] is the root of the tree of the first i + 1 leaves.
VECTOR_ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def _hx(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hexes]


# (0-based leaf index, tree size, proof). The Go file numbers leaves from 1.
VECTOR_INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        _hx(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _hx(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _hx("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _hx(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]

# (old size, new size, proof)
VECTOR_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        _hx(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _hx(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _hx(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _hx(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]

VECTOR_HASHES = [leaf_hash(d) for d in VECTOR_LEAVES]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _random_leaves(rng: random.Random, n: int) -> list[bytes]:
    return [leaf_hash(rng.randbytes(rng.randrange(0, 40))) for _ in range(n)]


def _flip(b: bytes, bit: int = 3) -> bytes:
    return bytes([b[0] ^ (1 << bit)]) + b[1:]


def _reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 MTH, written recursively straight from the definition."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    left, right = _reference_mth(leaves[:k]), _reference_mth(leaves[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


# --- hashing primitives ------------------------------------------------------


def test_hasher_known_answers() -> None:
    # transparency-dev/merkle rfc6962/rfc6962_test.go
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root_hash([]) == EMPTY_ROOT
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert leaf_hash(b"L123456").hex() == (
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert node_hash(b"N123", b"N456").hex() == (
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


def test_leaf_and_node_domains_are_separated() -> None:
    a, b = leaf_hash(b"Hello"), leaf_hash(b"World")
    assert a != b
    assert node_hash(a, b) != leaf_hash(a + b)
    assert node_hash(a, b) != node_hash(b, a)
    assert leaf_hash(b"") != EMPTY_ROOT


def test_entry_leaf_hash_matches_format_doc() -> None:
    entry_hash = hashlib.sha256(b"some entry").hexdigest()
    assert (
        entry_leaf_hash(entry_hash) == hashlib.sha256(b"\x00" + bytes.fromhex(entry_hash)).digest()
    )


@pytest.mark.parametrize("bad", ["", "ab", "zz" * 32, "0" * 63, "0" * 66])
def test_entry_leaf_hash_rejects_bad_hex(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        entry_leaf_hash(bad)


# --- known vectors -----------------------------------------------------------


@pytest.mark.parametrize("size", range(1, 9))
def test_vector_roots(size: int) -> None:
    assert root_hash(VECTOR_HASHES[:size]) == VECTOR_ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), VECTOR_INCLUSION)
def test_vector_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    leaves = VECTOR_HASHES[:size]
    root = VECTOR_ROOTS[size - 1]
    assert inclusion_proof(leaves, index) == proof
    assert verify_inclusion(VECTOR_HASHES[index], index, size, proof, root)


@pytest.mark.parametrize(("old", "new", "proof"), VECTOR_CONSISTENCY)
def test_vector_consistency_proofs(old: int, new: int, proof: list[bytes]) -> None:
    assert consistency_proof(VECTOR_HASHES[:new], old) == proof
    assert verify_consistency(old, new, VECTOR_ROOTS[old - 1], VECTOR_ROOTS[new - 1], proof)


@pytest.mark.parametrize(("index", "size", "proof"), VECTOR_INCLUSION[1:])
def test_vector_inclusion_corruptions_rejected(index: int, size: int, proof: list[bytes]) -> None:
    """The corruption probes of transparency-dev's corruptInclusionProof."""
    root, leaf = VECTOR_ROOTS[size - 1], VECTOR_HASHES[index]
    probes: list[tuple[bytes, int, int, list[bytes], bytes]] = [
        (leaf, index - 1, size, proof, root),
        (leaf, index + 1, size, proof, root),
        (leaf, index ^ 2, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size // 2, proof, root),
        (b"WrongLeaf", index, size, proof, root),
        (SOME_HASH, index, size, proof, root),
        (leaf, index, size, proof, EMPTY_ROOT),
        (leaf, index, size, proof, SOME_HASH),
        (leaf, index, size, [*proof, b""], root),
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, [b"", *proof], root),
        (leaf, index, size, [root, *proof], root),
        (leaf, index, size, proof[:-1], root),
        (leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], root),
    ]
    probes += [
        (leaf, index, size, [*proof[:i], _flip(proof[i]), *proof[i + 1 :]], root)
        for i in range(len(proof))
    ]
    for probe in probes:
        assert not verify_inclusion(*probe), probe


@pytest.mark.parametrize(("old", "new", "proof"), VECTOR_CONSISTENCY[1:])
def test_vector_consistency_corruptions_rejected(old: int, new: int, proof: list[bytes]) -> None:
    """The corruption probes of transparency-dev's corruptConsistencyProof."""
    r1, r2 = VECTOR_ROOTS[old - 1], VECTOR_ROOTS[new - 1]
    probes: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, b"WrongRoot", r2, proof),
        (old, new, r1, b"WrongRoot", proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, b""]),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [*proof, r2]),
        (old, new, r1, r2, [b"", *proof]),
        (old, new, r1, r2, [r1, *proof]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
    ]
    probes += [
        (old, new, r1, r2, [*proof[:i], _flip(proof[i], 4), *proof[i + 1 :]])
        for i in range(len(proof))
    ]
    for probe in probes:
        assert not verify_consistency(*probe), probe


def test_consistency_edge_cases() -> None:
    r1, r2 = b"\x11" * 32, b"\x22" * 32
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(0, 5, EMPTY_ROOT, r2, [])
    assert verify_consistency(3, 3, r1, r1, [])
    assert not verify_consistency(3, 3, r1, r2, [])  # same size, roots differ
    assert not verify_consistency(0, 5, r1, r2, [])  # size 0 must have the empty root
    assert not verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])
    assert not verify_consistency(3, 3, r1, r1, [EMPTY_ROOT])  # non-empty proof
    assert not verify_consistency(1, 0, r1, r2, [])  # time travel to the past
    assert not verify_consistency(2, 1, r1, r2, [])
    assert not verify_consistency(1, 2, r1, r2, [])  # empty proof for a real extension


def test_inclusion_edge_cases() -> None:
    h = leaf_hash(b"data")
    assert verify_inclusion(h, 0, 1, [], h)  # single-leaf tree: root == leaf hash
    assert not verify_inclusion(h, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], h)
    for index, size in [(0, 0), (1, 0), (2, 1), (1, 1)]:
        assert not verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)
    assert not verify_inclusion(h, -1, 1, [], h)


# --- bad arguments -----------------------------------------------------------


def test_bad_arguments_raise_configuration_error_not_index_error() -> None:
    leaves = VECTOR_HASHES[:5]
    for index in (-1, 5, 100):
        with pytest.raises(ConfigurationError):
            inclusion_proof(leaves, index)
    with pytest.raises(ConfigurationError):
        inclusion_proof([], 0)
    for old in (-1, 6):
        with pytest.raises(ConfigurationError):
            consistency_proof(leaves, old)
    with pytest.raises(ConfigurationError):
        root_hash([b"short"])
    with pytest.raises(ConfigurationError):
        inclusion_proof([*leaves, b"x" * 31], 0)


def test_verifiers_return_false_on_garbage_arguments() -> None:
    h = VECTOR_HASHES[0]
    assert not verify_inclusion(h, 0, 1, "not a list", h)  # type: ignore[arg-type]
    assert not verify_inclusion(h, True, 2, [h], h)
    assert not verify_inclusion(h, 0, 2, [None], h)  # type: ignore[list-item]
    assert not verify_consistency(-1, 2, h, h, [])
    assert not verify_consistency(1, 2, h, h, [b"x"])
    assert not verify_consistency(1, 2, h, h, None)  # type: ignore[arg-type]


# --- randomized trees --------------------------------------------------------


@pytest.mark.parametrize("size", [*range(1, 34), 63, 64, 65, 100])
def test_root_hash_matches_recursive_definition(size: int) -> None:
    leaves = _random_leaves(random.Random(size), size)
    assert root_hash(leaves) == _reference_mth(leaves)


@pytest.mark.parametrize("size", [*range(1, 20), 31, 32, 33, 47, 64, 65])
def test_every_inclusion_proof_verifies_and_tampering_fails(size: int) -> None:
    rng = random.Random(1000 + size)
    leaves = _random_leaves(rng, size)
    root = root_hash(leaves)
    for index in range(size):
        proof = inclusion_proof(leaves, index)
        assert verify_inclusion(leaves[index], index, size, proof, root)
        assert not verify_inclusion(leaves[index], index, size, proof, _flip(root))
        assert not verify_inclusion(_flip(leaves[index]), index, size, proof, root)
        if size > 1:
            other = (index + 1) % size
            assert not verify_inclusion(leaves[index], other, size, proof, root)
            assert not verify_inclusion(leaves[other], index, size, proof, root)
        for i in range(len(proof)):
            bad = [*proof[:i], _flip(proof[i], rng.randrange(8)), *proof[i + 1 :]]
            assert not verify_inclusion(leaves[index], index, size, bad, root)
        assert not verify_inclusion(leaves[index], index, size, [*proof, SOME_HASH], root)
        if proof:
            assert not verify_inclusion(leaves[index], index, size, proof[:-1], root)


@pytest.mark.parametrize("size", [*range(1, 20), 31, 32, 33, 47, 64, 65])
def test_every_consistency_proof_verifies_and_tampering_fails(size: int) -> None:
    rng = random.Random(2000 + size)
    leaves = _random_leaves(rng, size)
    new_root = root_hash(leaves)
    for old in range(size + 1):
        old_root = root_hash(leaves[:old])
        proof = consistency_proof(leaves, old)
        assert verify_consistency(old, size, old_root, new_root, proof)
        if old in (0, size):
            assert proof == []
            continue
        assert not verify_consistency(old, size, _flip(old_root), new_root, proof)
        assert not verify_consistency(old, size, old_root, _flip(new_root), proof)
        assert not verify_consistency(old + 1, size, old_root, new_root, proof)
        assert not verify_consistency(old, size * 2, old_root, new_root, proof)
        for i in range(len(proof)):
            bad = [*proof[:i], _flip(proof[i], rng.randrange(8)), *proof[i + 1 :]]
            assert not verify_consistency(old, size, old_root, new_root, bad)
        assert not verify_consistency(old, size, old_root, new_root, [*proof, SOME_HASH])
        assert not verify_consistency(old, size, old_root, new_root, proof[:-1])


def test_consistency_detects_rewritten_history() -> None:
    rng = random.Random(7)
    leaves = _random_leaves(rng, 40)
    old_root = root_hash(leaves[:25])
    forged = list(leaves)
    forged[10] = leaf_hash(b"rewritten")
    proof = consistency_proof(forged, 25)
    assert not verify_consistency(25, 40, old_root, root_hash(forged), proof)


# --- accumulator -------------------------------------------------------------


def test_accumulator_matches_root_hash_for_sizes_0_to_200() -> None:
    rng = random.Random(42)
    leaves = _random_leaves(rng, 200)
    acc = MerkleAccumulator()
    assert acc.size == 0 and acc.root() == EMPTY_ROOT
    for n, h in enumerate(leaves, start=1):
        acc.append(h)
        assert acc.size == n
        assert acc.root() == root_hash(leaves[:n]), n
        assert len(acc.peaks) == bin(n).count("1")


def test_accumulator_vectors_and_extend() -> None:
    acc = MerkleAccumulator()
    acc.extend(VECTOR_HASHES)
    assert acc.root() == VECTOR_ROOTS[7]
    assert acc.peaks == (VECTOR_ROOTS[7],)  # size 8 is one perfect subtree


def test_accumulator_from_peaks_resumes_and_copy_is_independent() -> None:
    rng = random.Random(9)
    leaves = _random_leaves(rng, 77)
    acc = MerkleAccumulator()
    acc.extend(leaves[:50])
    resumed = MerkleAccumulator.from_peaks(acc.size, acc.peaks)
    clone = acc.copy()
    resumed.extend(leaves[50:])
    assert resumed.root() == root_hash(leaves)
    assert clone.size == 50 and clone.root() == root_hash(leaves[:50])
    assert acc.size == 50


def test_accumulator_rejects_bad_input() -> None:
    acc = MerkleAccumulator()
    with pytest.raises(ConfigurationError):
        acc.append(b"short")
    with pytest.raises(ConfigurationError):
        MerkleAccumulator.from_peaks(3, [SOME_HASH])  # size 3 needs 2 peaks
    with pytest.raises(ConfigurationError):
        MerkleAccumulator.from_peaks(1, [b"x"])
    with pytest.raises(ConfigurationError):
        MerkleAccumulator.from_peaks(-1, [])
    assert acc.size == 0
