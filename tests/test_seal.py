"""Tests of immutable_logging.seal: forward-secure seals and signed checkpoints."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from immutable_logging import seal as seal_mod
from immutable_logging.errors import CheckpointError, ConfigurationError, SealError
from immutable_logging.merkle import EMPTY_ROOT, leaf_hash, root_hash
from immutable_logging.seal import (
    EVOLVE_LABEL,
    ZERO_HEAD,
    Checkpoint,
    CheckpointSigner,
    EpochKey,
    ForwardSecureSealer,
    SealRecord,
    SealVerifier,
    checkpoint_key_id,
    decode_seed,
    derive_epoch_key,
    encode_seed,
    encode_vkey,
    evolve_key,
    generate_seed,
    generate_signing_key,
    parse_and_verify_checkpoint,
    parse_vkey,
    private_key_to_pem,
    seal_tag,
    sign_checkpoint,
)

SEED = bytes(range(32))
T0 = 1_700_000_000.0
E = 300.0
ORIGIN = "default/host.0"


class FakeClock:
    """A settable clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _head(n: int) -> str:
    return ZERO_HEAD if n == 0 else hashlib.sha256(f"entry {n}".encode()).hexdigest()


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "seal.state"


@pytest.fixture
def sealer(state_path: Path) -> ForwardSecureSealer:
    return ForwardSecureSealer(state_path, SEED, E, FakeClock(), origin=ORIGIN)


def _make_log(sealer: ForwardSecureSealer) -> list[SealRecord]:
    """Seal a realistic history: entries, an idle stretch, more entries."""
    records: list[SealRecord] = []
    records += sealer.seal_due(T0 + E, 1, 5, _head(5))  # epoch 0: seq 1..5
    records += sealer.seal_due(T0 + 2 * E + 1, 6, 6, _head(6))  # epoch 1: seq 6
    records += sealer.seal_due(T0 + 5 * E + 10, 7, 9, _head(9))  # epoch 2 + empty 3, 4
    records += sealer.seal_due(T0 + 6 * E, 10, 9, _head(9))  # epoch 5, empty
    return records


def _forge(record: SealRecord, key: bytes, **changes: Any) -> SealRecord:
    """Return *record* with *changes*, re-tagged with *key* (a valid-looking forgery)."""
    changed = dataclasses.replace(record, **changes)
    tag = seal_tag(
        key,
        changed.epoch,
        changed.t_start,
        changed.t_end,
        changed.first_seq,
        changed.last_seq,
        changed.head,
        changed.origin,
    )
    return dataclasses.replace(changed, tag=tag)


# ----------------------------------------------------------------------- seeds


def test_generate_seed_is_random_32_bytes() -> None:
    a, b = generate_seed(), generate_seed()
    assert len(a) == 32 and len(b) == 32 and a != b


def test_seed_encoding_round_trip_and_tolerates_grouping() -> None:
    text = encode_seed(SEED)
    assert text.startswith("ils1-")
    assert decode_seed(text) == SEED
    body = text[5:]
    grouped = "ILS1-" + "-".join(body[i : i + 4] for i in range(0, len(body), 4)).upper()
    assert decode_seed(f"  {grouped}\n") == SEED


def test_seed_typo_is_caught() -> None:
    text = encode_seed(SEED)
    for pos in (5, 20, len(text) - 1):
        replacement = "a" if text[pos] != "a" else "b"
        typo = text[:pos] + replacement + text[pos + 1 :]
        with pytest.raises(ConfigurationError):
            decode_seed(typo)


@pytest.mark.parametrize(
    "bad", ["", "ils1-", "ils2-" + "a" * 58, "xx" + "a" * 60, "ils1-!!!!", "ils1-aaaa"]
)
def test_bad_seed_strings_rejected(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        decode_seed(bad)


def test_encode_seed_rejects_wrong_length() -> None:
    with pytest.raises(ConfigurationError):
        encode_seed(b"short")


# -------------------------------------------------------------- key evolution


def test_key_evolution_is_deterministic_and_documented_formula() -> None:
    assert EVOLVE_LABEL == b"immutable-logging/seal-evolve/v1"
    assert evolve_key(SEED) == hashlib.sha256(EVOLVE_LABEL + SEED).digest()
    assert evolve_key(SEED) == evolve_key(bytearray(SEED))
    k = SEED
    for _ in range(5):
        k = evolve_key(k)
    assert derive_epoch_key(SEED, 5) == k
    assert derive_epoch_key(encode_seed(SEED), 5) == k
    assert derive_epoch_key(SEED, 0) == SEED


def test_key_evolution_is_one_way_no_repeats() -> None:
    keys = [SEED]
    for _ in range(200):
        keys.append(evolve_key(keys[-1]))
    assert len(set(keys)) == len(keys)
    # Going forward is possible, going back is not: nothing maps key_n to key_{n-1}.
    assert evolve_key(keys[10]) == keys[11]
    assert all(evolve_key(keys[i + 1]) != keys[i] for i in range(50))


def test_epoch_key_advances_in_place_and_wipes() -> None:
    key = EpochKey(SEED)
    buffer = key._key
    key.advance()
    assert key.epoch == 1
    assert key._key is buffer  # same bytearray, overwritten in place
    assert bytes(buffer) == evolve_key(SEED) and SEED not in bytes(buffer)
    key.advance_to(4)
    assert key.epoch == 4 and bytes(buffer) == derive_epoch_key(SEED, 4)
    with pytest.raises(ConfigurationError):
        key.advance_to(2)
    key.wipe()
    assert bytes(buffer) == bytes(32)


def test_epoch_key_rejects_bad_input() -> None:
    with pytest.raises(ConfigurationError):
        EpochKey(b"short")
    with pytest.raises(ConfigurationError):
        EpochKey(SEED, -1)


# ------------------------------------------------------------------------ tags

BASE_TAG_ARGS: dict[str, Any] = {
    "epoch": 3,
    "t_start": T0,
    "t_end": T0 + E,
    "first_seq": 10,
    "last_seq": 20,
    "head_hash_hex": _head(20),
    "origin": ORIGIN,
}


def test_seal_tag_is_hmac_hex_and_deterministic() -> None:
    tag = seal_tag(SEED, **BASE_TAG_ARGS)
    assert len(tag) == 64 and int(tag, 16) >= 0
    assert seal_tag(bytearray(SEED), **BASE_TAG_ARGS) == tag


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epoch", 4),
        ("t_start", T0 + 0.001),
        ("t_end", T0 + E + 0.001),
        ("first_seq", 11),
        ("last_seq", 21),
        ("head_hash_hex", _head(21)),
        ("origin", "default/host.1"),
        ("origin", ""),
    ],
)
def test_seal_tag_binds_every_field(field: str, value: Any) -> None:
    changed = {**BASE_TAG_ARGS, field: value}
    assert seal_tag(SEED, **changed) != seal_tag(SEED, **BASE_TAG_ARGS)


def test_seal_tag_binds_key() -> None:
    assert seal_tag(evolve_key(SEED), **BASE_TAG_ARGS) != seal_tag(SEED, **BASE_TAG_ARGS)


def test_empty_epoch_has_a_tag() -> None:
    args = {**BASE_TAG_ARGS, "first_seq": 21, "last_seq": 20}
    assert seal_tag(SEED, **args) != seal_tag(SEED, **BASE_TAG_ARGS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epoch", -1),
        ("t_start", float("nan")),
        ("t_end", float("inf")),
        ("t_end", T0 - 1),  # ends before it starts
        ("first_seq", 0),
        ("last_seq", 8),  # < first_seq - 1
        ("head_hash_hex", "ab"),
        ("head_hash_hex", _head(20).upper()),
        ("epoch", True),
    ],
)
def test_seal_tag_rejects_bad_fields(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError):
        seal_tag(SEED, **{**BASE_TAG_ARGS, field: value})


def test_seal_tag_rejects_bad_key() -> None:
    with pytest.raises(ConfigurationError):
        seal_tag(b"k" * 31, **BASE_TAG_ARGS)


# ---------------------------------------------------------------- state file


def _state(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    assert isinstance(doc, dict)
    return doc


def test_new_state_file_contents_and_mode(sealer: ForwardSecureSealer, state_path: Path) -> None:
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
    assert _state(state_path) == {
        "format": 1,
        "epoch": 0,
        "key": SEED.hex(),
        "epoch_start": T0,
        "epoch_seconds": E,
        "origin": ORIGIN,
    }
    assert sealer.epoch == 0 and sealer.epoch_start == T0 and sealer.deadline == T0 + E
    assert sealer.origin == ORIGIN and sealer.epoch_seconds == E
    assert sealer.state_path == state_path


def test_advancing_removes_old_key_from_disk(sealer: ForwardSecureSealer, state_path: Path) -> None:
    sealer.seal_due(T0 + E, 1, 3, _head(3))
    doc = _state(state_path)
    assert doc["epoch"] == 1 and doc["key"] == evolve_key(SEED).hex()
    assert doc["epoch_start"] == T0 + E
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
    # No file in the directory (no temp file left behind) holds the old key.
    for path in state_path.parent.iterdir():
        data = path.read_bytes()
        assert SEED.hex().encode() not in data and SEED not in data
    assert [p.name for p in state_path.parent.iterdir()] == [state_path.name]


def test_state_is_reloaded_without_seed(sealer: ForwardSecureSealer, state_path: Path) -> None:
    sealer.seal_due(T0 + 2 * E, 1, 1, _head(1))
    reloaded = ForwardSecureSealer(state_path, clock=FakeClock(T0 + 3 * E))
    assert reloaded.epoch == 2
    assert reloaded.epoch_start == T0 + 2 * E
    assert reloaded.origin == ORIGIN
    records = reloaded.seal_due(T0 + 3 * E, 2, 4, _head(4))
    assert [r.epoch for r in records] == [2]
    assert records[0].verify_tag(derive_epoch_key(SEED, 2))


def test_seed_with_existing_state_refused(sealer: ForwardSecureSealer, state_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="already exists"):
        ForwardSecureSealer(state_path, SEED, E, FakeClock())


def test_missing_state_without_seed(state_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="missing"):
        ForwardSecureSealer(state_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        ForwardSecureSealer(tmp_path / "nope" / "seal.state", SEED)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": 2}',
        b'{"format":1,"epoch":-1,"key":"' + b"0" * 64 + b'","epoch_start":1.0,'
        b'"epoch_seconds":300.0,"origin":""}',
        b'{"format":1,"epoch":0,"key":"xyz","epoch_start":1.0,"epoch_seconds":300.0,"origin":""}',
        b'{"format":1,"epoch":0,"key":"' + b"0" * 64 + b'","epoch_start":"x",'
        b'"epoch_seconds":300.0,"origin":""}',
        b'{"format":1,"epoch":0,"key":"' + b"0" * 64 + b'","epoch_start":1.0,'
        b'"epoch_seconds":0,"origin":""}',
        b'{"format":1,"epoch":0,"key":"' + b"0" * 64 + b'","epoch_start":1.0,'
        b'"epoch_seconds":300.0}',
    ],
)
def test_corrupt_state_rejected(state_path: Path, content: bytes) -> None:
    state_path.write_bytes(content)
    with pytest.raises(ConfigurationError):
        ForwardSecureSealer(state_path)


def test_origin_mismatch_on_load(sealer: ForwardSecureSealer, state_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="origin"):
        ForwardSecureSealer(state_path, origin="other/stream")
    assert ForwardSecureSealer(state_path, origin=ORIGIN).origin == ORIGIN


def test_loose_permissions_are_tightened(sealer: ForwardSecureSealer, state_path: Path) -> None:
    os.chmod(state_path, 0o644)
    ForwardSecureSealer(state_path)
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600


def test_changed_epoch_seconds_is_adopted_on_load(
    sealer: ForwardSecureSealer, state_path: Path
) -> None:
    reloaded = ForwardSecureSealer(state_path, epoch_seconds=60.0)
    assert reloaded.deadline == T0 + 60.0
    assert _state(state_path)["epoch_seconds"] == 60.0


def test_failed_write_leaves_old_state_and_no_temp_file(
    sealer: ForwardSecureSealer, state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = state_path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        sealer.seal_due(T0 + E, 1, 1, _head(1))
    assert state_path.read_bytes() == before
    assert [p.name for p in state_path.parent.iterdir()] == [state_path.name]


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan"), float("inf")])
def test_bad_epoch_seconds(state_path: Path, bad: float) -> None:
    with pytest.raises(ConfigurationError):
        ForwardSecureSealer(state_path, SEED, bad)


# ---------------------------------------------------------------------- sealer


def test_due_is_a_deadline_comparison(sealer: ForwardSecureSealer) -> None:
    assert not sealer.due(T0)
    assert not sealer.due(T0 + E - 0.001)
    assert sealer.due(T0 + E)
    assert sealer.seal_due(T0 + E - 1, 1, 0, ZERO_HEAD) == []
    assert sealer.epoch == 0


def test_seal_due_seals_one_epoch(sealer: ForwardSecureSealer) -> None:
    [record] = sealer.seal_due(T0 + E + 1, 1, 5, _head(5))
    assert (record.epoch, record.t_start, record.t_end) == (0, T0, T0 + E)
    assert (record.first_seq, record.last_seq, record.head) == (1, 5, _head(5))
    assert record.origin == ORIGIN and not record.empty
    assert record.verify_tag(SEED)
    assert sealer.epoch == 1 and sealer.epoch_start == T0 + E and not sealer.due(T0 + E + 1)


def test_elapsed_empty_epochs_get_one_seal_each(sealer: ForwardSecureSealer) -> None:
    records = sealer.seal_due(T0 + 3.5 * E, 1, 2, _head(2))
    assert [r.epoch for r in records] == [0, 1, 2]
    assert [(r.t_start, r.t_end) for r in records] == [
        (T0, T0 + E),
        (T0 + E, T0 + 2 * E),
        (T0 + 2 * E, T0 + 3 * E),
    ]
    assert [(r.first_seq, r.last_seq) for r in records] == [(1, 2), (3, 2), (3, 2)]
    assert [r.empty for r in records] == [False, True, True]
    assert all(r.head == _head(2) for r in records)
    for r in records:
        assert r.verify_tag(derive_epoch_key(SEED, r.epoch))
    assert sealer.epoch == 3 and sealer.epoch_start == T0 + 3 * E


def test_empty_first_epoch_sealed_with_zero_head(sealer: ForwardSecureSealer) -> None:
    [record] = sealer.seal_due(T0 + E, 1, 0, ZERO_HEAD)
    assert record.empty and record.head == ZERO_HEAD
    assert SealVerifier(SEED).verify([record]).last_seq == 0


def test_seal_early_ends_epoch_now(sealer: ForwardSecureSealer) -> None:
    record = sealer.seal(T0 + 100, 1, 3, _head(3))
    assert (record.t_start, record.t_end) == (T0, T0 + 100)
    assert sealer.epoch == 1 and sealer.deadline == T0 + 100 + E
    assert _state(sealer.state_path)["epoch"] == 1


def test_seal_uses_clock_when_now_is_none(state_path: Path) -> None:
    clock = FakeClock()
    sealer = ForwardSecureSealer(state_path, SEED, E, clock, origin=ORIGIN)
    clock.now = T0 + 42
    assert sealer.seal(None, 1, 0, ZERO_HEAD).t_end == T0 + 42


def test_seal_late_is_capped_at_deadline(sealer: ForwardSecureSealer) -> None:
    record = sealer.seal(T0 + 10 * E, 1, 3, _head(3))
    assert record.t_end == T0 + E
    assert sealer.epoch_start == T0 + E


def test_clock_going_backwards_gives_zero_length_epoch(sealer: ForwardSecureSealer) -> None:
    record = sealer.seal(T0 - 50, 1, 0, ZERO_HEAD)
    assert record.t_start == record.t_end == T0


def test_seq_ranges_must_be_contiguous(sealer: ForwardSecureSealer) -> None:
    sealer.seal_due(T0 + E, 1, 5, _head(5))
    with pytest.raises(ConfigurationError, match="does not follow"):
        sealer.seal_due(T0 + 2 * E, 7, 9, _head(9))


def test_bad_seal_arguments(sealer: ForwardSecureSealer) -> None:
    with pytest.raises(ConfigurationError):
        sealer.seal(T0 + E, 1, 1, "not-hex")
    with pytest.raises(ConfigurationError):
        sealer.seal(float("nan"), 1, 1, _head(1))


def test_huge_gap_is_capped_and_still_verifies(
    sealer: ForwardSecureSealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(seal_mod, "MAX_CATCHUP_EPOCHS", 5)
    records = sealer.seal_due(T0 + 100.5 * E, 1, 1, _head(1))
    assert [r.epoch for r in records] == [0, 1, 2, 3, 4, 5]
    assert (records[-1].t_start, records[-1].t_end) == (T0 + 5 * E, T0 + 100 * E)
    assert sealer.epoch == 6 and sealer.epoch_start == T0 + 100 * E
    result = SealVerifier(SEED).verify(records)
    assert (result.t_start, result.t_end) == (T0, T0 + 100 * E)


def test_close_wipes_key(sealer: ForwardSecureSealer) -> None:
    sealer.close()
    assert bytes(sealer._key._key) == bytes(32)
    assert not sealer.due(T0 + 1e9)


def test_payload_round_trip_through_json(sealer: ForwardSecureSealer) -> None:
    [record] = sealer.seal_due(T0 + E, 1, 5, _head(5))
    payload = record.to_payload()
    assert payload["kind"] == "seal"
    assert set(payload) == {
        "kind",
        "epoch",
        "t_start",
        "t_end",
        "first_seq",
        "last_seq",
        "head",
        "origin",
        "tag",
    }
    decoded = orjson.loads(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
    again = SealRecord.from_payload(decoded)
    assert again == record and again.verify_tag(SEED)


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "log"},
        {"epoch": "0"},
        {"epoch": None},
        {"head": "zz"},
        {"tag": 5},
        {"t_end": 0.0},
        {"last_seq": -3},
    ],
)
def test_malformed_payload_is_seal_error(
    sealer: ForwardSecureSealer, change: dict[str, Any]
) -> None:
    [record] = sealer.seal_due(T0 + E, 1, 5, _head(5))
    payload = {**record.to_payload(), **change}
    with pytest.raises(SealError) as info:
        SealRecord.from_payload(payload)
    assert info.value.reason == "seal_malformed"


def test_payload_missing_member(sealer: ForwardSecureSealer) -> None:
    [record] = sealer.seal_due(T0 + E, 1, 5, _head(5))
    payload = record.to_payload()
    del payload["tag"]
    with pytest.raises(SealError, match="tag"):
        SealRecord.from_payload(payload)


# -------------------------------------------------------------------- verifier


def test_verifier_accepts_honest_history(sealer: ForwardSecureSealer) -> None:
    records = _make_log(sealer)
    assert [r.epoch for r in records] == list(range(6))
    result = SealVerifier(encode_seed(SEED), origin=ORIGIN).verify(records)
    assert result.epochs == 6
    assert (result.first_epoch, result.last_epoch) == (0, 5)
    assert (result.t_start, result.t_end) == (T0, T0 + 6 * E)
    assert (result.first_seq, result.last_seq, result.head) == (1, 9, _head(9))


def test_verifier_with_no_records() -> None:
    result = SealVerifier(SEED).verify([])
    assert result.epochs == 0 and result.t_start is None and result.last_seq is None


def test_verifier_streaming_matches_batch(sealer: ForwardSecureSealer) -> None:
    records = _make_log(sealer)
    verifier = SealVerifier(SEED)
    for i, record in enumerate(records):
        verifier.check(record)
        assert verifier.result().last_epoch == i
    assert verifier.result() == SealVerifier(SEED).verify(records)


def test_verifier_derives_each_key_once(
    sealer: ForwardSecureSealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(seal_mod, "MAX_CATCHUP_EPOCHS", 10_000)
    records = sealer.seal_due(T0 + 200 * E, 1, 1, _head(1))
    assert len(records) == 200
    calls = 0
    real = seal_mod.evolve_key

    def counting(key: bytes | bytearray) -> bytes:
        nonlocal calls
        calls += 1
        return real(key)

    monkeypatch.setattr(seal_mod, "evolve_key", counting)
    SealVerifier(SEED).verify(records)
    assert calls == 199  # one evolution per epoch, not O(n^2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("t_start", T0 - 1),
        ("t_end", T0 + E + 1),
        ("first_seq", 2),
        ("last_seq", 4),
        ("head", _head(99)),
        ("origin", "evil/stream"),
        ("tag", "0" * 64),
    ],
)
def test_any_edit_of_a_seal_is_detected(
    sealer: ForwardSecureSealer, field: str, value: Any
) -> None:
    records = _make_log(sealer)
    records[0] = dataclasses.replace(records[0], **{field: value})
    with pytest.raises(SealError) as info:
        SealVerifier(SEED).verify(records)
    assert info.value.reason == "seal_forged"
    assert "epoch 0" in str(info.value)


def test_reseal_with_current_key_attack_fails(
    sealer: ForwardSecureSealer, state_path: Path
) -> None:
    """An attacker who takes the host steals the current key from the state file and
    re-tags the whole history with it (journald CVE-2023-31438 style)."""
    records = _make_log(sealer)
    stolen_key = bytes.fromhex(_state(state_path)["key"])
    assert _state(state_path)["epoch"] == 6
    forged = [_forge(r, stolen_key, last_seq=r.last_seq) for r in records]
    with pytest.raises(SealError) as info:
        SealVerifier(SEED).verify(forged)
    assert info.value.reason == "seal_forged"
    assert "epoch 0" in str(info.value)


def test_stolen_key_cannot_rewrite_any_earlier_epoch(
    sealer: ForwardSecureSealer, state_path: Path
) -> None:
    records = _make_log(sealer)
    stolen_key = bytes.fromhex(_state(state_path)["key"])
    for i, record in enumerate(records):
        # Even evolving the stolen key forward only yields *later* epochs' keys.
        for forward in range(3):
            key = stolen_key
            for _ in range(forward):
                key = evolve_key(key)
            tampered = list(records)
            tampered[i] = _forge(record, key, head=_head(1000))
            with pytest.raises(SealError, match=f"epoch {record.epoch}"):
                SealVerifier(SEED).verify(tampered)


def test_renumbering_epochs_is_detected(sealer: ForwardSecureSealer) -> None:
    records = _make_log(sealer)
    records[2] = dataclasses.replace(records[2], epoch=7)
    with pytest.raises(SealError) as info:
        SealVerifier(SEED).verify(records)
    assert info.value.reason == "seal_epoch_gap"


def test_missing_epoch_is_detected(sealer: ForwardSecureSealer) -> None:
    records = _make_log(sealer)
    del records[3]  # an empty epoch's seal dropped
    with pytest.raises(SealError) as info:
        SealVerifier(SEED).verify(records)
    assert info.value.reason == "seal_epoch_gap"
    assert "epoch 4" in str(info.value) and "3..3" in str(info.value)


def test_missing_first_epoch_is_detected(sealer: ForwardSecureSealer) -> None:
    records = _make_log(sealer)
    with pytest.raises(SealError) as info:
        SealVerifier(SEED).verify(records[1:])
    assert info.value.reason == "seal_epoch_gap"


def test_repeated_and_reordered_epochs_are_detected(sealer: ForwardSecureSealer) -> None:
    records = _make_log(sealer)
    with pytest.raises(SealError) as info:
        SealVerifier(SEED).verify([*records[:3], records[2], *records[3:]])
    assert info.value.reason == "seal_reorder"
    swapped = [records[0], records[2], records[1], *records[3:]]
    with pytest.raises(SealError):
        SealVerifier(SEED).verify(swapped)


def test_first_epoch_parameter_verifies_a_suffix(sealer: ForwardSecureSealer) -> None:
    records = _make_log(sealer)
    result = SealVerifier(SEED, first_epoch=3).verify(records[3:])
    assert (result.first_epoch, result.epochs, result.first_seq) == (3, 3, 10)


def test_wrong_seed_rejected(sealer: ForwardSecureSealer) -> None:
    records = _make_log(sealer)
    with pytest.raises(SealError, match="epoch 0"):
        SealVerifier(evolve_key(SEED)).verify(records)


def test_wrong_origin_rejected(sealer: ForwardSecureSealer) -> None:
    records = _make_log(sealer)
    with pytest.raises(SealError) as info:
        SealVerifier(SEED, origin="default/host.1").verify(records)
    assert info.value.reason == "seal_origin"


def _keyed_history(changes: dict[str, Any], index: int = 1) -> list[SealRecord]:
    """Two consecutive validly-tagged records; the second gets *changes* (re-tagged)."""
    first = _forge(
        SealRecord(0, T0, T0 + E, 1, 5, _head(5), "0" * 64, ORIGIN), derive_epoch_key(SEED, 0)
    )
    second = SealRecord(1, T0 + E, T0 + 2 * E, 6, 5, _head(5), "0" * 64, ORIGIN)
    records = [first, _forge(second, derive_epoch_key(SEED, 1))]
    records[index] = _forge(records[index], derive_epoch_key(SEED, index), **changes)
    return records


def test_keyed_history_baseline_is_valid() -> None:
    assert SealVerifier(SEED).verify(_keyed_history({})).epochs == 2


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"t_start": T0 + E + 5}, "seal_time"),  # gap in time
        ({"t_start": T0 + E - 5}, "seal_time"),  # overlap in time
        ({"first_seq": 7, "last_seq": 6}, "seal_seq"),  # entry 6 never sealed
        ({"first_seq": 5, "last_seq": 5}, "seal_seq"),  # entry 5 sealed twice
        ({"head": _head(77)}, "seal_head"),  # empty epoch, but head moved
    ],
)
def test_contiguity_checked_even_with_valid_tags(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(SealError) as info:
        SealVerifier(SEED).verify(_keyed_history(changes))
    assert info.value.reason == reason
    assert "epoch 1" in str(info.value)


def test_first_empty_seal_must_have_zero_head() -> None:
    record = _forge(
        SealRecord(0, T0, T0 + E, 1, 0, _head(3), "0" * 64, ORIGIN), derive_epoch_key(SEED, 0)
    )
    with pytest.raises(SealError) as info:
        SealVerifier(SEED).verify([record])
    assert info.value.reason == "seal_head"


def test_seal_error_is_a_verification_error_with_seq(sealer: ForwardSecureSealer) -> None:
    records = _make_log(sealer)
    records[1] = dataclasses.replace(records[1], tag="f" * 64)
    with pytest.raises(SealError) as info:
        SealVerifier(SEED).verify(records)
    assert info.value.seq == records[1].first_seq


# ----------------------------------------------------------------- checkpoints

NAME = "logs.example.com/tenant-a"
ROOT = root_hash([leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")])


@pytest.fixture
def signer() -> CheckpointSigner:
    return CheckpointSigner(generate_signing_key(), NAME)


def _note(body: str, key: Ed25519PrivateKey, name: str = NAME) -> str:
    """Sign arbitrary note text (to reach the checkpoint-body parser)."""
    pub = key.public_key().public_bytes_raw()
    sig = checkpoint_key_id(name, pub) + key.sign(body.encode())
    return f"{body}\n\u2014 {name} {base64.b64encode(sig).decode()}\n"


def test_checkpoint_round_trip(signer: CheckpointSigner) -> None:
    cp = Checkpoint(NAME, 3, ROOT)
    note = sign_checkpoint(signer, cp)
    lines = note.split("\n")
    assert lines[:4] == [NAME, "3", base64.b64encode(ROOT).decode(), ""]
    assert lines[4].startswith(f"\u2014 {NAME} ") and lines[5] == ""
    sig = base64.b64decode(lines[4].split(" ")[2])
    assert len(sig) == 68 and sig[:4] == signer.key_id
    for key in (signer.public_key, signer.vkey):
        assert parse_and_verify_checkpoint(note, key, NAME, expected_origin=NAME) == cp
    assert parse_and_verify_checkpoint(note.encode(), signer.public_key, NAME) == cp


def test_empty_tree_checkpoint(signer: CheckpointSigner) -> None:
    cp = Checkpoint(NAME, 0, EMPTY_ROOT)
    assert parse_and_verify_checkpoint(signer.sign(cp), signer.public_key, NAME) == cp


def test_extension_lines_round_trip(signer: CheckpointSigner) -> None:
    cp = Checkpoint(NAME, 7, ROOT, ("ext one", "ext two"))
    assert parse_and_verify_checkpoint(signer.sign(cp), signer.vkey, NAME) == cp


def test_key_id_and_vkey_format(signer: CheckpointSigner) -> None:
    pub = signer.public_key
    assert signer.key_id == hashlib.sha256(NAME.encode() + b"\n\x01" + pub).digest()[:4]
    name, hexid, b64 = signer.vkey.split("+", 2)
    assert (name, hexid) == (NAME, signer.key_id.hex())
    assert base64.b64decode(b64) == b"\x01" + pub
    assert parse_vkey(signer.vkey) == (NAME, pub)
    assert encode_vkey(NAME, pub) == signer.vkey


# golang.org/x/mod/sumdb/note (note.go doc example and note_test.go): the
# PeterNeumann signer key, verifier key and signed note. Interop check of the
# key id, the vkey encoding, the signature line and Ed25519 over the note text.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_go_sumdb_note_vectors() -> None:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]
    go_signer = CheckpointSigner(seed, "PeterNeumann")
    assert go_signer.vkey == GO_VKEY
    assert go_signer.key_id.hex() == "c74f20a3"
    assert parse_vkey(GO_VKEY)[0] == "PeterNeumann"
    # Our note from the same key and text is byte-identical (Ed25519 is deterministic).
    assert _note(GO_TEXT, Ed25519PrivateKey.from_private_bytes(seed), "PeterNeumann") == GO_NOTE
    # The signature verifies; the text is simply not a checkpoint.
    with pytest.raises(CheckpointError) as info:
        parse_and_verify_checkpoint(GO_NOTE, GO_VKEY, "PeterNeumann")
    assert info.value.reason == "checkpoint_malformed"
    with pytest.raises(CheckpointError) as info:
        parse_and_verify_checkpoint(
            GO_NOTE.replace("cryptography", "cryptographY"), GO_VKEY, "PeterNeumann"
        )
    assert info.value.reason == "checkpoint_bad_signature"


def test_vkey_whose_base64_contains_plus() -> None:
    # transparency-dev/formats note/note_cosigv1_test.go: a type 0x01 key whose
    # base64 contains '+', so a vkey must be split on the first two '+' only.
    name, pub = parse_vkey("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6")
    assert name == "TEST" and len(pub) == 32
    assert checkpoint_key_id(name, pub).hex() == "7997405c"


def test_pem_keys(signer: CheckpointSigner) -> None:
    raw = generate_signing_key()
    pem = private_key_to_pem(raw)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    a, b, c = (CheckpointSigner(k, NAME) for k in (raw, pem, pem.decode()))
    assert a.public_key == b.public_key == c.public_key
    assert CheckpointSigner(Ed25519PrivateKey.from_private_bytes(raw), NAME).vkey == a.vkey


def _reason(note: str, key: bytes | str, name: str = NAME, **kw: Any) -> str:
    with pytest.raises(CheckpointError) as info:
        parse_and_verify_checkpoint(note, key, name, **kw)
    return info.value.reason


def test_forged_signature_rejected(signer: CheckpointSigner) -> None:
    note = signer.sign(Checkpoint(NAME, 3, ROOT))
    body, sig_line = note.rsplit("\n\n", 1)
    prefix, b64 = sig_line.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[10] ^= 1
    forged = f"{body}\n\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n"
    assert _reason(forged, signer.public_key) == "checkpoint_bad_signature"


@pytest.mark.parametrize(
    "edit",
    [
        lambda n: n.replace("\n3\n", "\n4\n", 1),  # altered size
        lambda n: n.replace("\n3\n", "\n30\n", 1),
        lambda n: n.replace(NAME + "\n", "other.example/log\n", 1),  # altered origin
    ],
)
def test_altered_body_rejected(signer: CheckpointSigner, edit: Any) -> None:
    note = signer.sign(Checkpoint(NAME, 3, ROOT))
    assert _reason(edit(note), signer.public_key) == "checkpoint_bad_signature"


def test_altered_root_rejected(signer: CheckpointSigner) -> None:
    note = signer.sign(Checkpoint(NAME, 3, ROOT))
    other = base64.b64encode(root_hash([leaf_hash(b"x")])).decode()
    forged = note.replace(base64.b64encode(ROOT).decode(), other)
    assert _reason(forged, signer.public_key) == "checkpoint_bad_signature"


def test_wrong_key_or_name_rejected(signer: CheckpointSigner) -> None:
    note = signer.sign(Checkpoint(NAME, 3, ROOT))
    other = CheckpointSigner(generate_signing_key(), NAME)
    assert _reason(note, other.public_key) == "checkpoint_unknown_key"
    other_name = CheckpointSigner(generate_signing_key(), "other.example/log")
    assert _reason(note, other_name.vkey, "other.example/log") == "checkpoint_unknown_key"
    assert _reason(note, signer.public_key, "other.example/log") == "checkpoint_unknown_key"


def test_key_id_collision_still_needs_valid_signature(signer: CheckpointSigner) -> None:
    """A line with the right name and key id but signed by another key is rejected."""
    attacker = Ed25519PrivateKey.generate()
    body = Checkpoint(NAME, 3, ROOT).body()
    sig = signer.key_id + attacker.sign(body.encode())
    note = f"{body}\n\u2014 {NAME} {base64.b64encode(sig).decode()}\n"
    assert _reason(note, signer.public_key) == "checkpoint_bad_signature"


def test_unknown_signatures_are_ignored(signer: CheckpointSigner) -> None:
    cp = Checkpoint(NAME, 3, ROOT)
    witness = Ed25519PrivateKey.generate()
    wnote = _note(cp.body(), witness, "witness.example/w1")
    extra_line = wnote.split("\n\n", 1)[1]
    note = signer.sign(cp) + extra_line
    assert parse_and_verify_checkpoint(note, signer.public_key, NAME) == cp
    wvkey = encode_vkey("witness.example/w1", witness.public_key().public_bytes_raw())
    assert parse_and_verify_checkpoint(note, wvkey, "witness.example/w1") == cp


def test_bad_known_signature_rejects_whole_note(signer: CheckpointSigner) -> None:
    cp = Checkpoint(NAME, 3, ROOT)
    good = signer.sign(cp)
    bad_sig = base64.b64encode(signer.key_id + bytes(64)).decode()
    note = good + f"\u2014 {NAME} {bad_sig}\n"
    assert _reason(note, signer.public_key) == "checkpoint_bad_signature"


def test_expected_origin(signer: CheckpointSigner) -> None:
    note = signer.sign(Checkpoint(NAME, 3, ROOT))
    reason = _reason(note, signer.public_key, expected_origin="other.example/log")
    assert reason == "checkpoint_origin"


ROOT_B64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    "body",
    [
        f"{NAME}\n3\n",  # two lines
        f"{NAME}\n03\n{ROOT_B64}\n",  # leading zero
        f"{NAME}\n-3\n{ROOT_B64}\n",
        f"{NAME}\n1e3\n{ROOT_B64}\n",
        f"{NAME}\n\u0663\n{ROOT_B64}\n",  # non-ASCII digit
        f"{NAME}\n99999999999999999999999\n{ROOT_B64}\n",
        f"{NAME}\n3\n{base64.b64encode(ROOT[:31]).decode()}\n",  # 31-byte root
        f"{NAME}\n3\n{ROOT_B64.rstrip('=')}\n",  # unpadded
        f"{NAME}\n3\n{ROOT.hex()}\n",  # hex, not base64
        f"{NAME}\n3\n{ROOT_B64}\n\next\n",  # blank extension line (splits note oddly)
    ],
)
def test_malformed_bodies_rejected(body: str) -> None:
    key = Ed25519PrivateKey.generate()
    note = _note(body, key)
    pub = key.public_key().public_bytes_raw()
    assert _reason(note, pub) == "checkpoint_malformed"


def test_empty_origin_rejected() -> None:
    key = Ed25519PrivateKey.generate()
    note = _note(f"\n3\n{ROOT_B64}\n", key)
    with pytest.raises(CheckpointError):
        parse_and_verify_checkpoint(note, key.public_key().public_bytes_raw(), NAME)


def _malformed_notes(good: str) -> list[str | bytes]:
    body, sig_line = good.split("\n\n")
    b64 = sig_line.rstrip("\n").rsplit(" ", 1)[1]
    return [
        "",
        "\n",
        body,  # no signatures
        body + "\n\n",  # blank line, no signature lines
        good.rstrip("\n"),  # no final newline
        good.replace("\u2014", "--"),  # not an em dash
        good.replace("\u2014 ", "\u2014"),
        good.replace(f" {b64}", f"  {b64}"),  # double space
        good.replace(b64, b64[:-4]),  # truncated base64
        good.replace(b64, "!!!!" + b64[4:]),  # not base64
        good.replace(b64, base64.b64encode(b"abc").decode()),  # too short
        good.replace(NAME, NAME + "\t", 1),  # control character
        good + f"\u2014 {NAME}+x {b64}\n",  # bad key name in a line
        body + "\n\n" + "".join([sig_line + "\n"] * 101),  # too many signatures
        good.encode("utf-8").replace(b"\xe2\x80\x94", b"\xe2\x80"),  # invalid UTF-8
    ]


def test_malformed_notes_rejected(signer: CheckpointSigner) -> None:
    good = signer.sign(Checkpoint(NAME, 3, ROOT))
    for note in _malformed_notes(good):
        with pytest.raises(CheckpointError):
            parse_and_verify_checkpoint(note, signer.public_key, NAME)


@pytest.mark.parametrize(
    ("origin", "size", "root"),
    [
        ("", 1, ROOT),
        ("a\nb", 1, ROOT),
        (NAME, -1, ROOT),
        (NAME, 1, ROOT[:16]),
        (NAME, True, ROOT),
    ],
)
def test_invalid_checkpoint_fields(origin: str, size: int, root: bytes) -> None:
    with pytest.raises(ConfigurationError):
        Checkpoint(origin, size, root)


@pytest.mark.parametrize("name", ["", "has space", "a+b", "tab\there", "nbsp\u00a0x"])
def test_invalid_key_names(name: str) -> None:
    with pytest.raises(ConfigurationError):
        CheckpointSigner(generate_signing_key(), name)


@pytest.mark.parametrize("key", [b"short", b"x" * 33, "-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_invalid_private_keys(key: bytes | str) -> None:
    with pytest.raises(ConfigurationError):
        CheckpointSigner(key, NAME)


def test_non_ed25519_pem_rejected() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ConfigurationError, match="not an Ed25519"):
        CheckpointSigner(pem, NAME)


def test_invalid_vkeys(signer: CheckpointSigner) -> None:
    name, hexid, b64 = signer.vkey.split("+", 2)
    wrong_id = f"{int(hexid, 16) ^ 1:08x}"
    wrong_type = base64.b64encode(b"\x02" + signer.public_key).decode()
    for bad in [
        "",
        f"{name}+{hexid}",
        f"{name}+{wrong_id}+{b64}",
        f"{name}+{hexid}+{wrong_type}",
        f"{name}+{hexid}+{b64[:-4]}",
        f"other+{hexid}+{b64}",
    ]:
        with pytest.raises(ConfigurationError):
            parse_vkey(bad)
    note = signer.sign(Checkpoint(NAME, 1, ROOT))
    with pytest.raises(ConfigurationError):  # vkey for another name than requested
        parse_and_verify_checkpoint(note, signer.vkey, "other.example/log")
    with pytest.raises(ConfigurationError):
        parse_and_verify_checkpoint(note, b"short", NAME)
