"""Tests of immutable_logging.crypto: AES-256-GCM payloads, keys, nonces and AAD."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from immutable_logging import crypto
from immutable_logging.crypto import (
    AAD_PREFIX,
    ALG,
    Key,
    Keyring,
    KeyringResolver,
    NonceSource,
    PayloadCipher,
    aad_builder,
    build_aad,
    decode_key_b64,
    generate_key,
    key_from_bytes,
    key_from_env,
    key_from_passphrase,
    key_id,
)
from immutable_logging.errors import (
    ConfigurationError,
    DecryptionError,
    ImmutableLogError,
    KeyUnavailableError,
)

from .helpers import nonces_of_forked_child

PREV = "ab" * 32
FAST_N = 2**10  # scrypt cost for tests that do not check the default


def _aad(
    tenant: str = "default",
    stream: str = "host.0",
    segment: int = 1,
    seq: int = 1,
    prev: str = PREV,
) -> bytes:
    return build_aad(tenant, stream, segment, seq, prev)


def _counter(nonce: bytes) -> int:
    return int.from_bytes(nonce[4:], "big")


@pytest.fixture
def key() -> Key:
    return key_from_bytes(os.urandom(32))


@pytest.fixture
def nonces(tmp_path: Path) -> NonceSource:
    return NonceSource(tmp_path / "nonces.json")


@pytest.fixture
def cipher(key: Key, nonces: NonceSource) -> PayloadCipher:
    return PayloadCipher(Keyring([key]), nonces)


# ----------------------------------------------------------------------- round trip


@pytest.mark.parametrize("size", [0, 1, 300, 1 << 20])
def test_round_trip(cipher: PayloadCipher, size: int) -> None:
    plaintext = os.urandom(size)
    aad = _aad(seq=7)
    enc = cipher.encrypt(plaintext, aad)
    assert set(enc) == {"alg", "kid", "nonce", "ct"}
    assert enc["alg"] == ALG == "A256GCM"
    assert all(isinstance(v, str) for v in enc.values())
    assert "\n" not in enc["ct"] and "\n" not in enc["nonce"]
    assert len(base64.b64decode(enc["nonce"], validate=True)) == 12
    assert len(base64.b64decode(enc["ct"], validate=True)) == size + 16
    assert cipher.decrypt(enc, aad, file="00000001.log", seq=7) == plaintext


def test_round_trip_with_aad_builder_and_json(cipher: PayloadCipher) -> None:
    build = aad_builder("acme", "web-1.3")
    aad = build(4, 99, PREV)
    enc = json.loads(json.dumps(cipher.encrypt(b'{"message":"hi"}', aad)))
    assert cipher.decrypt(enc, build(4, 99, PREV)) == b'{"message":"hi"}'


def test_ciphertexts_differ_for_equal_plaintexts(cipher: PayloadCipher) -> None:
    a = cipher.encrypt(b"same", _aad())
    b = cipher.encrypt(b"same", _aad())
    assert a["nonce"] != b["nonce"]
    assert a["ct"] != b["ct"]


def test_decrypt_accepts_bytes_fields(cipher: PayloadCipher) -> None:
    enc: dict[str, Any] = dict(cipher.encrypt(b"x", _aad()))
    enc["nonce"] = enc["nonce"].encode()
    enc["ct"] = enc["ct"].encode()
    assert cipher.decrypt(enc, _aad()) == b"x"


def test_aesgcm_built_once_per_key(
    key: Key, nonces: NonceSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    cipher = PayloadCipher(Keyring([key]), nonces)
    assert key.aead is key.aead

    def forbidden(*args: object) -> None:
        raise AssertionError("AESGCM constructed on the hot path")

    monkeypatch.setattr(crypto, "AESGCM", forbidden)
    for i in range(100):
        aad = _aad(seq=i)
        assert cipher.decrypt(cipher.encrypt(b"p%d" % i, aad), aad) == b"p%d" % i


# ------------------------------------------------------------------ wrong / missing key


def test_wrong_key_same_kid_is_decryption_error(nonces: NonceSource) -> None:
    writer = PayloadCipher(Keyring([key_from_bytes(os.urandom(32), kid="prod")]), nonces)
    reader = PayloadCipher(Keyring([key_from_bytes(os.urandom(32), kid="prod")]))
    enc = writer.encrypt(b"secret", _aad())
    with pytest.raises(DecryptionError) as info:
        reader.decrypt(enc, _aad(), file="00000003.log", seq=42)
    err = info.value
    assert not isinstance(err, KeyUnavailableError)
    assert (err.file, err.seq) == ("00000003.log", 42)
    assert "00000003.log" in str(err) and "42" in str(err)


def test_unknown_kid_is_key_unavailable(cipher: PayloadCipher) -> None:
    enc = cipher.encrypt(b"secret", _aad())
    other = PayloadCipher(Keyring([key_from_bytes(os.urandom(32))]))
    with pytest.raises(KeyUnavailableError) as info:
        other.decrypt(enc, _aad(), file="f.log", seq=3)
    assert isinstance(info.value, DecryptionError)
    assert enc["kid"] in str(info.value)
    assert (info.value.file, info.value.seq) == ("f.log", 3)


def test_no_key_configured_is_key_unavailable(cipher: PayloadCipher) -> None:
    enc = cipher.encrypt(b"secret", _aad())
    with pytest.raises(KeyUnavailableError, match="no decryption key is configured"):
        PayloadCipher(Keyring()).decrypt(enc, _aad(), seq=1)


def test_encrypt_without_active_key_or_nonce_source(key: Key, nonces: NonceSource) -> None:
    with pytest.raises(ConfigurationError, match="no active key"):
        PayloadCipher(Keyring(), nonces).encrypt(b"x", _aad())
    decrypt_only = PayloadCipher(Keyring([key]))
    with pytest.raises(ConfigurationError, match="NonceSource"):
        decrypt_only.encrypt(b"x", _aad())
    enc = PayloadCipher(Keyring([key]), nonces).encrypt(b"x", _aad())
    assert decrypt_only.decrypt(enc, _aad()) == b"x"


# ----------------------------------------------------------------------- rotation


def test_key_rotation(tmp_path: Path) -> None:
    old, new = key_from_bytes(os.urandom(32)), key_from_bytes(os.urandom(32))
    ring = Keyring([old])
    source = NonceSource(tmp_path / "n.json", block_size=8)
    cipher = PayloadCipher(ring, source)
    before = [cipher.encrypt(b"old %d" % i, _aad(seq=i)) for i in range(1, 11)]
    assert {e["kid"] for e in before} == {old.kid}

    ring.add(new, activate=True)
    after = [cipher.encrypt(b"new %d" % i, _aad(seq=i)) for i in range(11, 21)]
    assert {e["kid"] for e in after} == {new.kid}
    # the new key's counters start at zero: they are independent of the old key's
    assert _counter(base64.b64decode(after[0]["nonce"])) == 0

    for i, enc in enumerate(before, 1):
        assert cipher.decrypt(enc, _aad(seq=i)) == b"old %d" % i
    for i, enc in enumerate(after, 11):
        assert cipher.decrypt(enc, _aad(seq=i)) == b"new %d" % i

    # a reader that only has the new key cannot read old entries, and says why
    with pytest.raises(KeyUnavailableError, match=old.kid):
        PayloadCipher(Keyring([new])).decrypt(before[0], _aad(seq=1))

    # rotating back works too (activate by id)
    ring.activate(old.kid)
    assert cipher.encrypt(b"x", _aad())["kid"] == old.kid
    state = json.loads((tmp_path / "n.json").read_text())
    assert set(state["keys"]) == {old.kid, new.kid}


# ------------------------------------------------------------------------ tampering


def _flip(b64: str, index: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("member", "index"),
    [
        ("ct", 0),  # first ciphertext byte
        ("ct", 150),  # middle
        ("ct", 299),  # last ciphertext byte
        ("ct", 300),  # first tag byte
        ("ct", -1),  # last tag byte
        ("nonce", 0),  # random prefix
        ("nonce", -1),  # counter
    ],
)
def test_tampering_is_detected(cipher: PayloadCipher, member: str, index: int) -> None:
    aad = _aad(seq=5)
    enc = cipher.encrypt(os.urandom(300), aad)
    bad = dict(enc, **{member: _flip(enc[member], index)})
    with pytest.raises(DecryptionError, match="authentication failed") as info:
        cipher.decrypt(bad, aad, file="seg.log", seq=5)
    assert not isinstance(info.value, KeyUnavailableError)
    assert info.value.seq == 5


@pytest.mark.parametrize("size", [0, 1, 300, 1 << 20])
def test_text_form_round_trip(cipher: PayloadCipher, key: Key, size: int) -> None:
    plaintext = os.urandom(size)
    aad = _aad(seq=7)
    enc = cipher.encrypt_text(plaintext, aad)
    alg, kid, b64 = enc.split(".")
    assert (alg, kid) == (ALG, key.kid)
    raw = base64.b64decode(b64, validate=True)
    assert len(raw) == 12 + size + 16 and "\n" not in enc
    assert cipher.decrypt(enc, aad, file="00000001.log", seq=7) == plaintext


def test_text_form_with_dotted_key_id(nonces: NonceSource) -> None:
    cipher = PayloadCipher(Keyring([key_from_bytes(os.urandom(32), kid="v2.2026.q3")]), nonces)
    enc = cipher.encrypt_text(b"x", _aad())
    assert enc.startswith("A256GCM.v2.2026.q3.")
    assert cipher.decrypt(enc, _aad()) == b"x"


def test_text_form_nonces_never_repeat_and_share_the_counter(cipher: PayloadCipher) -> None:
    texts = [cipher.encrypt_text(b"same", _aad()) for _ in range(100)]
    objects = [cipher.encrypt(b"same", _aad()) for _ in range(100)]
    nonces = [base64.b64decode(t.rpartition(".")[2])[:12] for t in texts]
    nonces += [base64.b64decode(o["nonce"]) for o in objects]
    assert len(set(nonces)) == 200


@pytest.mark.parametrize("index", [0, 11, 12, 150, -16, -1])  # nonce, ciphertext, tag
def test_text_form_tampering_is_detected(cipher: PayloadCipher, index: int) -> None:
    aad = _aad(seq=5)
    prefix, _, b64 = cipher.encrypt_text(os.urandom(300), aad).rpartition(".")
    with pytest.raises(DecryptionError, match="authentication failed") as info:
        cipher.decrypt(f"{prefix}.{_flip(b64, index)}", aad, file="seg.log", seq=5)
    assert info.value.seq == 5 and info.value.file == "seg.log"


def test_text_form_truncated_or_extended_is_detected(cipher: PayloadCipher) -> None:
    aad = _aad()
    prefix, _, b64 = cipher.encrypt_text(os.urandom(64), aad).rpartition(".")
    raw = base64.b64decode(b64)
    for changed in (raw[:-1], raw + b"\x00", raw[:12] + raw[13:], raw[:28]):
        with pytest.raises(DecryptionError):
            cipher.decrypt(f"{prefix}.{base64.b64encode(changed).decode()}", aad)


def test_text_form_moved_fails(cipher: PayloadCipher) -> None:
    enc = cipher.encrypt_text(b"payload", _aad(seq=7))
    with pytest.raises(DecryptionError, match="AAD mismatch"):
        cipher.decrypt(enc, _aad(seq=8))


def test_truncated_or_extended_ciphertext_is_detected(cipher: PayloadCipher) -> None:
    aad = _aad()
    enc = cipher.encrypt(os.urandom(64), aad)
    raw = base64.b64decode(enc["ct"])
    for ct in (raw[:-1], raw + b"\x00", raw[1:], raw[:16]):
        with pytest.raises(DecryptionError):
            cipher.decrypt(dict(enc, ct=base64.b64encode(ct).decode()), aad)


@pytest.mark.parametrize(
    "moved",
    [
        {"tenant": "other"},
        {"stream": "host.1"},
        {"segment": 2},
        {"seq": 8},
        {"prev": "cd" * 32},
        {"tenant": "defaul", "stream": "thost.0"},  # boundary shift between fields
    ],
)
def test_moved_ciphertext_fails(cipher: PayloadCipher, moved: dict[str, Any]) -> None:
    origin: dict[str, Any] = {"tenant": "default", "stream": "host.0", "segment": 1,
                              "seq": 7, "prev": PREV}
    enc = cipher.encrypt(b"payload", _aad(**origin))
    with pytest.raises(DecryptionError, match="AAD mismatch"):
        cipher.decrypt(enc, _aad(**{**origin, **moved}), seq=moved.get("seq", 7))
    assert cipher.decrypt(enc, _aad(**origin)) == b"payload"


@pytest.mark.parametrize(
    ("enc", "match"),
    [
        (None, "expected a string or an object"),
        ([], "expected a string or an object"),
        ("", "expected 'A256GCM.<kid>.<base64>'"),
        ("A256GCM", "expected 'A256GCM.<kid>.<base64>'"),
        ("A256GCM.AAAAAAAAAAAAAAAA" + "A" * 24, "expected 'A256GCM.<kid>.<base64>'"),
        ("A128GCM.k." + "A" * 40, "unsupported alg"),
        ("A256GCM.." + "A" * 40, "'kid'"),
        ("A256GCM.k.!!" + "A" * 38, "not valid base64"),
        ("A256GCM.k." + "A" * 39, "not valid base64"),
        ("A256GCM.k.AAAAAAAA", "nonce is 6 bytes"),
        ("A256GCM.k." + "A" * 36, "shorter than the tag"),
        ({}, "unsupported alg"),
        ({"alg": "A128GCM", "kid": "k", "nonce": "AAAAAAAAAAAAAAAA", "ct": "A" * 24},
         "unsupported alg"),
        ({"alg": ALG, "nonce": "AAAAAAAAAAAAAAAA", "ct": "A" * 24}, "'kid'"),
        ({"alg": ALG, "kid": 5, "nonce": "AAAAAAAAAAAAAAAA", "ct": "A" * 24}, "'kid'"),
        ({"alg": ALG, "kid": "k", "ct": "A" * 24}, "'nonce'"),
        ({"alg": ALG, "kid": "k", "nonce": "!!!!AAAAAAAAAAAA", "ct": "A" * 24},
         "'nonce' is not valid base64"),
        ({"alg": ALG, "kid": "k", "nonce": "AAAAAAAA", "ct": "A" * 24}, "nonce is 6 bytes"),
        ({"alg": ALG, "kid": "k", "nonce": "AAAAAAAAAAAAAAAA", "ct": 12}, "'ct'"),
        ({"alg": ALG, "kid": "k", "nonce": "AAAAAAAAAAAAAAAA", "ct": "AAAA"},
         "shorter than the tag"),
        ({"alg": ALG, "kid": "k", "nonce": "AAAAAAAAAAAAAAAA", "ct": "A" * 23},
         "'ct' is not valid base64"),
    ],
)
def test_malformed_enc_is_decryption_error(
    cipher: PayloadCipher, enc: Any, match: str
) -> None:
    with pytest.raises(DecryptionError, match=match) as info:
        cipher.decrypt(enc, _aad(), file="x.log", seq=9)
    assert type(info.value) is DecryptionError
    assert "x.log" in str(info.value) and "seq 9" in str(info.value)


# ----------------------------------------------------------------------------- AAD


def test_build_aad_layout() -> None:
    aad = build_aad("acme", "h.0", 3, 12, PREV)
    assert aad == (AAD_PREFIX + "4:acme3:h.03,12," + PREV).encode()
    assert aad.startswith(b"immutable-logging/aad/v1\x00")


def test_build_aad_is_injective_on_field_boundaries() -> None:
    cases = [
        ("ab", "c", 1, 1, PREV),
        ("a", "bc", 1, 1, PREV),
        ("1", "1", 1, 1, PREV),
        ("1:1", "", 1, 1, PREV),
        ("", "1:1", 1, 1, PREV),
        ("t", "s", 11, 1, PREV),
        ("t", "s", 1, 11, PREV),
        ("t", "s", 1, 1, PREV + "0"),
        ("t", "s,1", 1, 1, PREV),
        ("t,1", "s", 1, 1, PREV),
        ("é", "s", 1, 1, PREV),
        ("e", "s", 1, 1, PREV),
    ]
    encoded = [build_aad(*c) for c in cases]
    assert len(set(encoded)) == len(cases)


@pytest.mark.parametrize(
    ("tenant", "stream"),
    [("default", "host.0"), ("a%b", "x%d%s"), ("ünï", "hôst.12"), ("", ""), ("t", "\udcff")],
)
def test_aad_builder_matches_build_aad(tenant: str, stream: str) -> None:
    build = aad_builder(tenant, stream)
    for segment, seq, prev in [(1, 1, "0" * 64), (12, 123456, PREV), (0, 0, "")]:
        assert build(segment, seq, prev) == build_aad(tenant, stream, segment, seq, prev)


# --------------------------------------------------------------------------- nonces


def test_nonce_layout_and_reserve_before_use(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    source = NonceSource(path, block_size=16)
    assert not path.exists()  # nothing reserved until needed
    first = source.next_nonce("k1")
    assert len(first) == 12 and _counter(first) == 0
    # the whole block is on disk before the first nonce was handed out
    assert json.loads(path.read_text()) == {"format": 1, "keys": {"k1": {"next": 16}}}
    rest = [source.next_nonce("k1") for _ in range(15)]
    assert [_counter(n) for n in rest] == list(range(1, 16))
    assert {n[:4] for n in rest} == {first[:4]}  # one prefix per block
    assert json.loads(path.read_text())["keys"]["k1"]["next"] == 16
    seventeenth = source.next_nonce("k1")
    assert _counter(seventeenth) == 16
    assert json.loads(path.read_text())["keys"]["k1"]["next"] == 32
    if sys.platform != "win32":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_100k_nonces_unique(tmp_path: Path) -> None:
    source = NonceSource(tmp_path / "n.json", block_size=1000)
    counter = source.counter("k")
    got = [counter.next() for _ in range(100_000)]
    assert len(set(got)) == 100_000
    assert len({_counter(n) for n in got}) == 100_000
    assert len({n[:4] for n in got}) > 1  # a fresh random prefix per block (100 blocks)
    assert json.loads((tmp_path / "n.json").read_text())["keys"]["k"]["next"] == 100_000


def test_100k_nonces_unique_default_block(nonces: NonceSource) -> None:
    got = {nonces.next_nonce("k") for _ in range(100_000)}
    assert len(got) == 100_000


def test_nonces_unique_across_restarts_and_crashes(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    seen: set[bytes] = set()
    counters: set[int] = set()
    reserved_end = 0
    for run, used in enumerate([10, 64, 1, 0, 100, 37, 64]):
        source = NonceSource(path, block_size=64)  # a "restart"
        got = [source.next_nonce("k") for _ in range(used)]
        if got:
            # a crash mid-block: the rest of the block is skipped, never reused
            assert _counter(got[0]) == reserved_end, f"run {run}"
        assert not seen.intersection(got)
        assert not counters.intersection(_counter(n) for n in got)
        seen.update(got)
        counters.update(_counter(n) for n in got)
        reserved_end = json.loads(path.read_text())["keys"]["k"]["next"] if path.exists() else 0
        del source  # dropped without any shutdown, like a crash
    assert len(seen) == 10 + 64 + 1 + 100 + 37 + 64


def test_crash_during_state_write_leaves_old_state(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    source = NonceSource(path, block_size=8)
    first = [source.next_nonce("k") for _ in range(3)]
    # a writer that died between writing its temporary file and os.replace
    (tmp_path / "n.json.tmp.999.deadbeef").write_bytes(b'{"format":1,"keys":{"k":{"ne')
    restarted = NonceSource(path, block_size=8)
    nxt = restarted.next_nonce("k")
    assert _counter(nxt) == 8
    assert nxt not in first


def test_two_sources_on_one_file_never_overlap(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    a, b = NonceSource(path, block_size=5), NonceSource(path, block_size=7)
    got = []
    for i in range(200):
        got.append((a if i % 3 else b).next_nonce("k"))
    assert len({_counter(n) for n in got}) == 200


def test_counters_per_key_are_independent(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    source = NonceSource(path, block_size=4)
    a = [source.next_nonce("key-a") for _ in range(10)]
    b = [source.next_nonce("key-b") for _ in range(3)]
    assert [_counter(n) for n in a] == list(range(10))
    assert [_counter(n) for n in b] == [0, 1, 2]
    assert json.loads(path.read_text())["keys"] == {"key-a": {"next": 12}, "key-b": {"next": 4}}
    restarted = NonceSource(path, block_size=4)
    assert _counter(restarted.next_nonce("key-b")) == 4
    assert _counter(restarted.next_nonce("key-a")) == 12
    assert _counter(restarted.next_nonce("key-c")) == 0
    assert source.counter("key-a") is source.counter("key-a")


def test_nonces_unique_across_threads(tmp_path: Path) -> None:
    source = NonceSource(tmp_path / "n.json", block_size=97)
    results: list[list[bytes]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def work(out: list[bytes]) -> None:
        counter = source.counter("k")
        barrier.wait()
        for _ in range(5000):
            out.append(counter.next())

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [n for r in results for n in r]
    assert len(flat) == 40_000
    assert len({_counter(n) for n in flat}) == 40_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_does_not_reuse_parent_block(tmp_path: Path) -> None:
    source = NonceSource(tmp_path / "n.json", block_size=1000)
    parent_first = source.next_nonce("k")
    child_nonces = nonces_of_forked_child(lambda: source.next_nonce("k"))
    parent = [parent_first] + [source.next_nonce("k") for _ in range(5)]
    assert len(child_nonces) == 5
    assert all(_counter(n) >= 1000 for n in child_nonces)  # the child reserved a new block
    assert not set(parent) & set(child_nonces)


def test_sealer_parts_compose_to_the_text_form(cipher: PayloadCipher, key: Key) -> None:
    counter, aad_format, encrypt, prefix = cipher.sealer_parts("a%c", "web-1.3")
    nonce = counter.next()
    aad = aad_format % (4, 9, PREV.encode("ascii"))
    assert aad == build_aad("a%c", "web-1.3", 4, 9, PREV)
    text = prefix + base64.b64encode(nonce + encrypt(nonce, b"secret", aad)).decode()
    assert text.startswith(f"A256GCM.{key.kid}.")
    assert cipher.decrypt(text, build_aad("a%c", "web-1.3", 4, 9, PREV)) == b"secret"
    assert counter.next() != nonce


def test_corrupt_state_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    for content in [b"", b"{not json", b"[]", b'{"format":2,"keys":{}}',
                    b'{"format":1,"keys":{"k":{"next":-1}}}',
                    b'{"format":1,"keys":{"k":{"next":"12"}}}',
                    b'{"format":1,"keys":{"k":5}}', b'{"format":1}']:
        path.write_bytes(content)
        with pytest.raises(ConfigurationError, match="corrupt"):
            NonceSource(path)


def test_state_file_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        NonceSource(tmp_path / "missing" / "n.json")


@pytest.mark.parametrize("size", [0, -1, 2**33, True, 1.5])
def test_bad_block_size(tmp_path: Path, size: Any) -> None:
    with pytest.raises(ConfigurationError, match="block_size"):
        NonceSource(tmp_path / "n.json", block_size=size)


def test_counter_space_exhaustion(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    path.write_text(json.dumps({"format": 1, "keys": {"k": {"next": 2**64 - 6}}}))
    source = NonceSource(path, block_size=4)
    got = [source.next_nonce("k") for _ in range(4)]
    assert _counter(got[-1]) == 2**64 - 3
    with pytest.raises(ImmutableLogError, match="exhausted"):
        source.next_nonce("k")


# ----------------------------------------------------------------------------- keys


def test_key_id_is_stable_and_derived() -> None:
    material = bytes(range(32))
    expected = hashlib.sha256(b"immutable-logging/kid/v1" + material).digest()[:8].hex()
    assert key_id(material) == expected
    assert key_from_bytes(material).kid == expected
    assert Key(material).kid == Key(bytearray(material)).kid
    assert len(expected) == 16
    assert key_from_bytes(material, kid="2026-q1").kid == "2026-q1"


@pytest.mark.parametrize("kid", ["", " x", "a/b", "../x", "x" * 65, "k id"])
def test_bad_explicit_kid(kid: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid key id"):
        key_from_bytes(os.urandom(32), kid=kid)


@pytest.mark.parametrize("material", [b"", b"\x00" * 16, b"\x00" * 31, b"\x00" * 33])
def test_wrong_key_length(material: bytes) -> None:
    with pytest.raises(ConfigurationError, match="exactly 32 bytes"):
        key_from_bytes(material)


def test_key_material_type_and_repr() -> None:
    with pytest.raises(ConfigurationError, match="must be bytes"):
        key_from_bytes("x" * 32)  # type: ignore[arg-type]
    material = os.urandom(32)
    k = key_from_bytes(material)
    assert material.hex() not in repr(k)
    assert base64.b64encode(material).decode() not in repr(k)
    assert k.material == material
    with pytest.raises(AttributeError):
        k.kid = "other"


def test_generate_key_round_trips() -> None:
    text = generate_key()
    assert len(decode_key_b64(text)) == 32
    assert generate_key() != text


# ---------------------------------------------------------------------- env var keys


def test_key_from_env_variants() -> None:
    material = os.urandom(32)
    std = base64.b64encode(material).decode()
    url = base64.urlsafe_b64encode(material).decode()
    for text in [std, std.rstrip("="), url, url.rstrip("="), f"  {std[:20]}\n{std[20:]} \n"]:
        k = key_from_env(environ={"IMMUTABLE_LOG_KEY": text})
        assert k.material == material
        assert k.kid == key_id(material)
    k = key_from_env("OTHER", kid="ops", environ={"OTHER": std})
    assert (k.kid, k.material) == ("ops", material)


def test_key_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    material = os.urandom(32)
    monkeypatch.setenv("IMMUTABLE_LOG_KEY", base64.b64encode(material).decode())
    assert key_from_env().material == material


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (None, "IMMUTABLE_LOG_KEY is not set"),
        ("", "is empty"),
        ("   \n", "is empty"),
        ("not base64!!", "not valid base64"),
        ("AAAAA", "not valid base64"),  # impossible length
        ("clé-non-ascii", "not valid base64"),
        (base64.b64encode(b"\x01" * 16).decode(), "decodes to 16 bytes"),
        (base64.b64encode(b"\x01" * 64).decode(), "decodes to 64 bytes"),
        ("00" * 32, "looks like hex"),
    ],
)
def test_key_from_env_errors(value: str | None, match: str) -> None:
    environ = {} if value is None else {"IMMUTABLE_LOG_KEY": value}
    with pytest.raises(ConfigurationError, match=match) as info:
        key_from_env(environ=environ)
    assert not isinstance(info.value, ValueError | binascii.Error)
    assert info.value.__cause__ is None
    if value and value.strip():
        assert value.strip() not in str(info.value)  # the key text never leaks
    assert "IMMUTABLE_LOG_KEY" in str(info.value)


def test_keyring_from_env_with_previous_keys() -> None:
    active, old1, old2 = (os.urandom(32) for _ in range(3))
    b64 = [base64.b64encode(m).decode() for m in (active, old1, old2)]
    ring = Keyring.from_env(environ={
        "IMMUTABLE_LOG_KEY": b64[0],
        "IMMUTABLE_LOG_PREVIOUS_KEYS": f"{b64[1]}, {b64[2]}\n",
    })
    assert ring.active is not None and ring.active.material == active
    assert ring.kids == tuple(key_id(m) for m in (active, old1, old2))
    with pytest.raises(ConfigurationError, match="key #2 in IMMUTABLE_LOG_PREVIOUS_KEYS"):
        Keyring.from_env(environ={"IMMUTABLE_LOG_KEY": b64[0],
                                  "IMMUTABLE_LOG_PREVIOUS_KEYS": f"{b64[1]},bogus"})
    with pytest.raises(ConfigurationError, match="not set"):
        Keyring.from_env(environ={})


# ------------------------------------------------------------------- passphrase keys


def test_passphrase_salt_created_and_reused(tmp_path: Path) -> None:
    salt_path = tmp_path / "key.salt"
    k1 = key_from_passphrase("correct horse", salt_path, n=FAST_N)
    doc = json.loads(salt_path.read_text())
    assert doc["format"] == 1 and doc["kdf"] == "scrypt" and doc["length"] == 32
    assert (doc["n"], doc["r"], doc["p"]) == (2**10, 8, 1)
    salt = base64.b64decode(doc["salt"])
    assert len(salt) == 16
    if sys.platform != "win32":
        assert stat.S_IMODE(salt_path.stat().st_mode) == 0o600
    # reused: same passphrase -> same key, parameters come from the file
    k2 = key_from_passphrase("correct horse", salt_path)
    assert k2.material == k1.material and k2.kid == k1.kid
    assert json.loads(salt_path.read_text()) == doc
    # str and its UTF-8 bytes are the same passphrase
    assert key_from_passphrase(b"correct horse", salt_path).material == k1.material
    # known answer: it is plain scrypt over the stored salt
    expected = hashlib.scrypt(b"correct horse", salt=salt, n=2**10, r=8, p=1, dklen=32)
    assert k1.material == expected
    # different passphrase -> different key
    assert key_from_passphrase("wrong horse", salt_path).material != k1.material
    # different salt file -> different salt -> different key
    k3 = key_from_passphrase("correct horse", tmp_path / "other.salt", n=FAST_N)
    assert k3.material != k1.material


def test_passphrase_default_parameters(tmp_path: Path) -> None:
    k = key_from_passphrase("pw", tmp_path / "s")
    doc = json.loads((tmp_path / "s").read_text())
    assert (doc["n"], doc["r"], doc["p"]) == (2**15, 8, 1)
    salt = base64.b64decode(doc["salt"])
    expected = hashlib.scrypt(b"pw", salt=salt, n=2**15, r=8, p=1, dklen=32, maxmem=64 << 20)
    assert k.material == expected


def test_passphrase_parameter_mismatch_refused(tmp_path: Path) -> None:
    key_from_passphrase("pw", tmp_path / "s", n=FAST_N)
    with pytest.raises(ConfigurationError, match="n=2048 differs from n=1024"):
        key_from_passphrase("pw", tmp_path / "s", n=2**11)
    # matching explicit parameters are fine
    key_from_passphrase("pw", tmp_path / "s", n=2**10, r=8, p=1)


@pytest.mark.parametrize("passphrase", ["", b""])
def test_empty_passphrase(tmp_path: Path, passphrase: str | bytes) -> None:
    with pytest.raises(ConfigurationError, match="passphrase is empty"):
        key_from_passphrase(passphrase, tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("params", [{"n": 1000}, {"n": 1}, {"r": 0}, {"p": -1}, {"n": 2**25}])
def test_bad_scrypt_parameters(tmp_path: Path, params: dict[str, int]) -> None:
    with pytest.raises(ConfigurationError, match="scrypt parameter"):
        key_from_passphrase("pw", tmp_path / "s", **params)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"[]", b'{"format":1,"kdf":"pbkdf2"}',
     b'{"format":1,"kdf":"scrypt","length":32,"n":1024,"r":8,"p":1,"salt":"AAAA"}',
     b'{"format":1,"kdf":"scrypt","length":32,"n":1024,"r":8,"p":1}'],
)
def test_corrupt_salt_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "s").write_bytes(content)
    with pytest.raises(ConfigurationError, match="corrupt"):
        key_from_passphrase("pw", tmp_path / "s")
    assert (tmp_path / "s").read_bytes() == content  # never silently replaced


def test_concurrent_first_use_agrees_on_one_salt(tmp_path: Path) -> None:
    salt_path = tmp_path / "s"
    keys: list[bytes] = []
    barrier = threading.Barrier(4)

    def derive() -> None:
        barrier.wait()
        keys.append(key_from_passphrase("pw", salt_path, n=FAST_N).material)

    threads = [threading.Thread(target=derive) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 4 and len(set(keys)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary files left


# -------------------------------------------------------------------------- keyrings


def test_keyring_basics() -> None:
    a, b = key_from_bytes(os.urandom(32)), key_from_bytes(os.urandom(32))
    ring = Keyring([a, b])
    assert ring.active is a  # the first key is active unless told otherwise
    assert ring.kids == (a.kid, b.kid) and len(ring) == 2 and a.kid in ring
    assert Keyring([a, b], active=b.kid).active is b
    assert ring.add(key_from_bytes(a.material)) is a  # idempotent
    with pytest.raises(ConfigurationError, match="already used by a different key"):
        ring.add(key_from_bytes(os.urandom(32), kid=a.kid))
    with pytest.raises(KeyUnavailableError):
        ring.activate("nope")
    with pytest.raises(KeyUnavailableError):
        Keyring([a], active="nope")
    assert Keyring().active is None
    assert a.material.hex() not in repr(ring)


def test_per_tenant_keyrings_are_isolated(tmp_path: Path) -> None:
    source = NonceSource(tmp_path / "n.json")
    ring_a = Keyring([key_from_bytes(os.urandom(32))])
    ring_b = Keyring([key_from_bytes(os.urandom(32))])
    default = Keyring([key_from_bytes(os.urandom(32))])
    resolver = KeyringResolver({"a": ring_a}, default=default)
    resolver.set("b", ring_b)
    assert resolver.resolve("a") is ring_a and resolver.get("b") is ring_b
    assert resolver.resolve("zzz") is default
    assert KeyringResolver().get("a") is None
    with pytest.raises(KeyUnavailableError, match="tenant 'a'"):
        KeyringResolver().resolve("a")

    cipher_a = PayloadCipher(resolver.resolve("a"), source)
    cipher_b = PayloadCipher(resolver.resolve("b"), source)
    enc = cipher_a.encrypt(b"tenant a secret", _aad(tenant="a"))
    assert cipher_a.decrypt(enc, _aad(tenant="a")) == b"tenant a secret"
    with pytest.raises(KeyUnavailableError):
        cipher_b.decrypt(enc, _aad(tenant="a"))


@pytest.mark.skipif(sys.platform == "win32", reason="fork and flock")
def test_a_child_forked_during_a_reservation_does_not_hold_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the concurrency audit: a fork while another thread held the nonce-state
    flock left the lock with the child's copy of the descriptor, so every reservation of
    the tenant (this process's too) waited until the child exited."""
    import time

    source = NonceSource(tmp_path / "n.json", block_size=8)
    children: list[int] = []
    write = crypto._write_file_durably

    def fork_meanwhile(*args: Any, **kwargs: Any) -> bool:
        if not children:  # a thread forks while this one holds the lock
            pid = os.fork()
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            children.append(pid)
        return write(*args, **kwargs)

    monkeypatch.setattr(crypto, "_write_file_durably", fork_meanwhile)
    try:
        assert source._reserve("k") == (0, 8)
        started = time.monotonic()
        assert NonceSource(tmp_path / "n.json", block_size=8)._reserve("k") == (8, 16)
        assert time.monotonic() - started < 2.5, "waited for the forked child"
    finally:
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
