"""Signed checkpoints over a stream's RFC 6962 tree, proofs, and their verification."""

from __future__ import annotations

import base64
import json
import random
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from immutable_logging.chain import ChainWriter
from immutable_logging.checkpoint import (
    Checkpointer,
    list_notes,
    load_signing_key,
    prove_consistency,
    prove_inclusion,
    read_leaves,
    verify_checkpoints,
)
from immutable_logging.errors import CheckpointError, ConfigurationError
from immutable_logging.handler import ImmutableHandler
from immutable_logging.merkle import (
    consistency_proof,
    entry_leaf_hash,
    inclusion_proof,
    root_hash,
)
from immutable_logging.seal import (
    CheckpointSigner,
    generate_signing_key,
    parse_and_verify_checkpoint,
    private_key_to_pem,
)

from .helpers import read_lines, write_lines, write_log
from .seal_helpers import entries

NAME = "immutable-logging"


@pytest.fixture
def signer() -> CheckpointSigner:
    return CheckpointSigner(generate_signing_key(), NAME)


def make_stream(root: Path, count: int, max_bytes: int = 2000) -> Path:
    writer = ChainWriter(root, "t", stream="s", max_bytes=max_bytes)
    for i in range(count):
        writer.append({"message": f"m{i}", "ts": float(i), "i": i})
    writer.close()
    return root / "t" / "s"


def test_checkpoint_note_signs_rfc6962_root_of_entry_hashes(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    stream = make_stream(tmp_path, 57)
    note = Checkpointer(stream, "t", signer).update()
    assert note is not None and note.name == "57.note"
    checkpoint = parse_and_verify_checkpoint(note.read_text(), signer.vkey, NAME, "t/s")
    leaves = [entry_leaf_hash(e["hash"]) for e in entries(stream)]
    assert checkpoint.tree_size == 57 and checkpoint.root_hash == root_hash(leaves)
    assert read_leaves(stream) == leaves
    assert note.stat().st_mode & 0o777 == 0o644


def test_incremental_state_across_rotation_and_gzip(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    writer = ChainWriter(tmp_path, "t", stream="s", max_bytes=1500)
    stream = writer.stream_dir
    sizes = []
    for batch in range(5):
        for i in range(13):
            writer.append({"message": f"b{batch} m{i}", "ts": 1.0})
        writer.flush()
        cp = Checkpointer(stream, "t", signer)  # a fresh process each time: state on disk
        assert cp.update() is not None
        sizes.append(cp.tree_size)
        state = json.loads((stream / "checkpoints" / "state.json").read_bytes())
        assert state["size"] == cp.tree_size
    writer.close()
    assert sizes == [13, 26, 39, 52, 65]
    assert len(list(stream.glob("*.log.gz"))) >= 3
    leaves = read_leaves(stream)
    for size, path in list_notes(stream / "checkpoints"):
        cp = parse_and_verify_checkpoint(path.read_text(), signer.vkey, NAME)
        assert cp.root_hash == root_hash(leaves[:size])
    assert Checkpointer(stream, "t", signer).update() is None  # nothing new


def test_checkpointer_refuses_to_sign_a_broken_chain(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    stream = make_stream(tmp_path, 10, max_bytes=0)
    cp = Checkpointer(stream, "t", signer)
    cp.update()
    writer = ChainWriter(tmp_path, "t", stream="s", max_bytes=0)
    writer.append({"message": "new", "ts": 1.0})
    writer.close()
    path = stream / "00000001.log"
    lines = read_lines(path)
    lines[-1] = lines[-1].replace(b'"new"', b'"NEW"')
    write_lines(path, lines)
    with pytest.raises(CheckpointError) as info:
        cp.update()
    assert info.value.seq == 11
    assert not (stream / "checkpoints" / "11.note").exists()


def test_handler_background_and_close_checkpoints(tmp_path: Path) -> None:
    key = generate_signing_key()
    handler = ImmutableHandler(
        tmp_path, "bg", checkpoint_key=base64.b64encode(key).decode(), checkpoint_interval=0.05
    )
    handler.handle(_record("one"))
    deadline = time.time() + 5
    notes_dir = handler.writer.stream_dir / "checkpoints"
    while not (notes_dir / "1.note").exists() and time.time() < deadline:
        time.sleep(0.02)
    assert (notes_dir / "1.note").exists()
    handler.handle(_record("two"))
    handler.close()
    assert [size for size, _ in list_notes(notes_dir)] == [1, 2]
    vkey = CheckpointSigner(key, NAME).vkey
    stream = handler.writer.stream_dir

    def no_problem(*args: object) -> None:
        raise AssertionError(args)

    assert verify_checkpoints(stream, "bg", vkey, [], no_problem) == 2


def _record(message: str) -> object:
    import logging

    return logging.LogRecord("app", logging.INFO, __file__, 1, message, None, None)


def test_load_signing_key_formats(tmp_path: Path) -> None:
    raw = generate_signing_key()
    vkey = CheckpointSigner(raw, NAME).vkey
    pem = private_key_to_pem(raw)
    path = tmp_path / "ck.pem"
    path.write_bytes(pem)
    for spec in (raw, base64.b64encode(raw).decode(), pem, pem.decode(), str(path), path,
                 Ed25519PrivateKey.from_private_bytes(raw)):
        assert load_signing_key(spec).vkey == vkey  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        load_signing_key("not a key")
    with pytest.raises(ConfigurationError, match="not found"):
        load_signing_key(str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError):
        load_signing_key(b"short")


def test_proofs_match_rfc_algorithms_on_a_real_stream(tmp_path: Path) -> None:
    stream = make_stream(tmp_path, 37)
    leaves = read_leaves(stream)
    rng = random.Random(7)
    for _ in range(40):
        size = rng.randint(1, 37)
        seq = rng.randint(1, size)
        proof = prove_inclusion(stream, seq, size)
        assert proof.proof == inclusion_proof(leaves[:size], seq - 1)
        assert proof.root == root_hash(leaves[:size]) and proof.verify()
        if size > 1:
            assert not proof.verify(root_hash(leaves[: size - 1]))
        old = rng.randint(0, size)
        cons = prove_consistency(stream, old, size)
        assert cons.proof == consistency_proof(leaves[:size], old)
        assert cons.verify() and cons.old_root == root_hash(leaves[:old])
    full = prove_inclusion(stream, 5)
    assert full.tree_size == 37 and full.to_dict()["leaf_index"] == 4
    with pytest.raises(ConfigurationError):
        prove_inclusion(stream, 38)
    with pytest.raises(ConfigurationError):
        prove_consistency(stream, 5, 40)


def test_inclusion_proof_against_a_signed_checkpoint(tmp_path: Path) -> None:
    raw = generate_signing_key()
    vkey = CheckpointSigner(raw, NAME).vkey
    write_log(tmp_path, "cp.proof", 20, tenant="p", checkpoint_key=raw)
    stream = next(p for p in (tmp_path / "p").iterdir() if p.is_dir())
    (size, note), *_ = list_notes(stream / "checkpoints")
    checkpoint = parse_and_verify_checkpoint(note.read_text(), vkey, NAME)
    proof = prove_inclusion(stream, 7, checkpoint.tree_size)
    assert size == 20 and proof.verify(checkpoint.root_hash)
    consistency = prove_consistency(stream, 3, 20)
    assert consistency.verify(new_root=checkpoint.root_hash)


def test_verify_checkpoints_reports_rewrite_and_truncation(tmp_path: Path) -> None:
    raw = generate_signing_key()
    signer = CheckpointSigner(raw, NAME)
    stream = make_stream(tmp_path, 30, max_bytes=0)
    cp = Checkpointer(stream, "t", signer)
    cp.update()
    found: list[tuple[str, str, int | None]] = []

    def sink(reason: str, file: str, seq: int | None, detail: str) -> None:
        found.append((reason, Path(file).name, seq))

    assert verify_checkpoints(stream, "t", signer.vkey, [], sink) == 1 and not found
    path = stream / "00000001.log"
    write_lines(path, read_lines(path)[:20])
    assert verify_checkpoints(stream, "t", signer.vkey, [], sink) == 0
    assert found == [("truncation", "30.note", 21)]
    with pytest.raises(ConfigurationError):
        verify_checkpoints(stream, "t", "garbage", [], sink)
