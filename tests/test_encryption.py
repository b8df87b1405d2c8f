from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import orjson
import pytest

from immutable_logging import ImmutableLogger
from immutable_logging.cli import main
from immutable_logging.crypto import Key, Keyring, PayloadCipher, build_aad, generate_key
from immutable_logging.encryption import (
    NONCE_STATE,
    EntryDecryptor,
    EntryEncryptor,
    stream_keyring,
)
from immutable_logging.entry import make_line, split_line
from immutable_logging.errors import ConfigurationError, DecryptionError, KeyUnavailableError
from immutable_logging.layout import list_segments, list_streams
from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant

from .helpers import nonces_of_forked_child, read_lines, write_lines


def _active(tmp_path: Path, tenant: str = "default") -> Path:
    return list_segments(list_streams(tmp_path / tenant)[0])[-1].path


def _kid(enc: str) -> str:
    """The key id of a compact ``A256GCM.<kid>.<base64>`` value."""
    return enc.partition(".")[2].rpartition(".")[0]


def _write(tmp_path: Path, key: str, *messages: str, **options: object) -> None:
    with ImmutableLogger(tmp_path, encryption_key=key, **options) as log:
        for message in messages:
            log.audit(message, {"card": "4111-1111", "amount": 42})


def test_payload_encrypted_on_disk_and_verifiable_without_key(tmp_path: Path) -> None:
    key = generate_key()
    _write(tmp_path, key, "secret transfer", "second")
    raw = _active(tmp_path).read_bytes()
    assert b"secret transfer" not in raw and b"4111-1111" not in raw  # hashes may hold "4111"
    first = orjson.loads(raw.splitlines()[0])
    assert first["level"] == "AUDIT" and first["enc"].startswith("A256GCM.")
    assert "message" not in first and "metadata" not in first
    with ImmutableLogger(tmp_path) as keyless:
        assert keyless.verify().ok  # integrity needs no key
        # the clear fields read without it; the secret ones stay sealed in "enc"
        clear = keyless.read()
        assert [(e["seq"], e["level"]) for e in clear] == [(1, "AUDIT"), (2, "AUDIT")]
        assert all("message" not in e and e["enc"].startswith("A256GCM.") for e in clear)
        assert keyless.stats()["total_entries"] == 2
        with pytest.raises(KeyUnavailableError) as info:
            keyless.search("secret")  # searching the secret fields needs the key
    assert info.value.seq == 1 and info.value.file == str(_active(tmp_path))
    with ImmutableLogger(tmp_path, encryption_key=key) as log:
        entries = log.read()
        assert [e["message"] for e in entries] == ["secret transfer", "second"]
        assert entries[0]["metadata"] == {"card": "4111-1111", "amount": 42}
        assert entries[0]["encrypted"] is True
        assert log.query({"metadata.amount": {"$gte": 40}})[0]["message"] == "secret transfer"
        assert log.verify(parse=True).ok


def test_wrong_key_raises_decryption_error_naming_the_entry(tmp_path: Path) -> None:
    _write(tmp_path, generate_key(), "a")
    with ImmutableLogger(tmp_path, encryption_key=generate_key()) as log:
        with pytest.raises(KeyUnavailableError):
            log.read()
    # Same key id, different material: authentication must fail, not return garbage.
    from immutable_logging.crypto import Key, Keyring

    kid = _kid(orjson.loads(_active(tmp_path).read_bytes().splitlines()[0])["enc"])
    impostor = Keyring([Key(b"\x01" * 32, kid=kid)])
    with ImmutableLogger(tmp_path, encryption_key=impostor) as log:
        with pytest.raises(DecryptionError) as info:
            log.read()
    assert info.value.seq == 1


def test_key_rotation_keeps_old_entries_readable(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    _write(tmp_path, old, "under old key")
    _write(tmp_path, new, "under new key", previous_keys=[old])
    lines = read_lines(_active(tmp_path))
    kids = [_kid(orjson.loads(line)["enc"]) for line in lines]
    assert kids[0] != kids[1]
    with ImmutableLogger(tmp_path, encryption_key=new, previous_keys=[old]) as log:
        assert [e["message"] for e in log.read()] == ["under old key", "under new key"]
    with ImmutableLogger(tmp_path, encryption_key=new) as log:
        with pytest.raises(KeyUnavailableError):
            log.read()


def test_passphrase_key_with_persisted_salt(tmp_path: Path) -> None:
    with ImmutableLogger(tmp_path, tenantId="p", encryption_passphrase="correct horse") as log:
        log.info("by passphrase")
    assert (tmp_path / "p" / ".salt.json").exists()
    with ImmutableLogger(tmp_path, tenantId="p", encryption_passphrase="correct horse") as log:
        assert [e["message"] for e in log.read()] == ["by passphrase"]
    with ImmutableLogger(tmp_path, tenantId="p", encryption_passphrase="wrong horse") as log:
        with pytest.raises(DecryptionError):
            log.read()


def test_passphrase_key_mismatch_names_the_salt_file(tmp_path: Path) -> None:
    """A wrong passphrase and a replaced salt file (say, a tampered replica's) both derive
    a key with another id: the error says where the key came from, not only its id."""
    with ImmutableLogger(tmp_path, tenantId="p", encryption_passphrase="correct horse") as log:
        log.info("by passphrase")
    salt = tmp_path / "p" / ".salt.json"
    with ImmutableLogger(tmp_path, tenantId="p", encryption_passphrase="wrong horse") as log:
        with pytest.raises(KeyUnavailableError, match=f"salt in {re.escape(str(salt))}"):
            log.read()
    doc = orjson.loads(salt.read_bytes())
    doc["salt"] = base64.b64encode(bytes(16)).decode()
    salt.write_bytes(orjson.dumps(doc))
    with ImmutableLogger(tmp_path, tenantId="p", encryption_passphrase="correct horse") as log:
        with pytest.raises(KeyUnavailableError, match="salt file other than") as info:
            log.read()
    assert ".log, seq " in str(info.value)  # still names the entry


def test_env_var_key_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    monkeypatch.setenv("TEST_LOG_KEY", key)
    with ImmutableLogger(tmp_path, encryption_key_env="TEST_LOG_KEY") as log:
        log.security("env keyed", {"ip": "10.1.1.1"})
    out = io.StringIO()
    assert main(["read", str(tmp_path), "--key-env", "TEST_LOG_KEY", "--json"], out) == 0
    assert orjson.loads(out.getvalue())[0]["message"] == "env keyed"
    keyless = io.StringIO()
    assert main(["read", str(tmp_path), "--json"], keyless) == 0
    [entry] = orjson.loads(keyless.getvalue())
    assert entry["level"] == "SECURITY" and "message" not in entry and "enc" in entry
    assert main(["search", str(tmp_path), "env keyed"], io.StringIO()) == 2
    assert main(["verify", str(tmp_path)], io.StringIO()) == 0
    assert main(["verify", str(tmp_path), "--parse", "--key-env", "TEST_LOG_KEY"],
                io.StringIO()) == 0


def test_verify_with_a_key_that_is_not_the_logs_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong key is a configuration mistake, not tampering: no decryption_failed per
    entry and no exit 1, but one KeyUnavailableError naming the key id (exit 2)."""
    key = generate_key()
    with ImmutableLogger(tmp_path, encryption_key=key) as log:
        for i in range(3):
            log.info(f"entry {i}")
    monkeypatch.setenv("OTHER_LOG_KEY", generate_key())
    out = io.StringIO()
    assert main(["verify", str(tmp_path), "--key-env", "OTHER_LOG_KEY"], out) == 2
    err = capsys.readouterr().err
    assert "KeyUnavailableError" in err and "(3 entries)" in err and err.count("\n") == 1
    assert "TAMPERED" not in out.getvalue()
    with ImmutableLogger(tmp_path, encryption_key=os.environ["OTHER_LOG_KEY"]) as log:
        report = log.verify()
    assert report.ok and list(report.keys_missing.values()) == [3]
    assert list(report.keys_missing) == [Key(base64.b64decode(key)).kid]
    assert "3 entries under key id" in report.warnings[0]
    assert "note: " in out.getvalue() and "not authenticated" in out.getvalue()


def test_an_edited_key_id_does_not_stop_verify(tmp_path: Path) -> None:
    """The key id is in the entry: an attacker who edits it must not be able to end the
    verification (and hide everything after it). The edit breaks the entry's hash."""
    key = generate_key()
    _write(tmp_path, key, "one", "two", "three")
    path = _active(tmp_path)
    lines = read_lines(path)
    kid = Key(base64.b64decode(key)).kid
    lines[1] = lines[1].replace(kid.encode(), b"f" * len(kid), 1)
    write_lines(path, lines)
    decrypt = EntryDecryptor(Keyring([Key(base64.b64decode(key))]), "default")
    report = verify_tenant(tmp_path, decrypt=decrypt)
    assert [p.reason for p in report.problems] == ["hash_mismatch"]
    assert report.keys_missing == {"f" * len(kid): 1}


def test_ciphertext_moved_to_another_entry_fails_even_with_recomputed_chain(
    tmp_path: Path,
) -> None:
    key = generate_key()
    _write(tmp_path, key, "pay alice 10", "pay bob 1000000")
    path = _active(tmp_path)
    lines = read_lines(path)
    first, second = orjson.loads(lines[0]), orjson.loads(lines[1])
    # The attacker swaps the ciphertexts and recomputes both hashes and the link.
    rebuilt = []
    prev = first["prev"]
    for obj, enc in ((first, second["enc"]), (second, first["enc"])):
        payload = {k: v for k, v in obj.items() if k not in ("seq", "prev", "hash")}
        payload["enc"] = enc
        line, prev = make_line(obj["seq"], prev, orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
        rebuilt.append(line)
    write_lines(path, rebuilt)
    assert verify_tenant(tmp_path).ok  # the hash chain alone was recomputed consistently...
    with ImmutableLogger(tmp_path, encryption_key=key) as log:
        report = log.verify()  # ...but with the key, authentication catches the move
        assert [(p.reason, p.seq) for p in report.problems] == [
            ("decryption_failed", 1), ("decryption_failed", 2),
        ]
        with pytest.raises(DecryptionError):
            log.read()


def test_corrupted_tag_is_reported_as_tampering(tmp_path: Path) -> None:
    key = generate_key()
    _write(tmp_path, key, "x")
    path = _active(tmp_path)
    lines = read_lines(path)
    obj = orjson.loads(lines[0])
    ct = obj["enc"]
    flipped = ct[:-3] + ("A" if ct[-3] != "A" else "B") + ct[-2:]
    lines[0] = lines[0].replace(ct.encode(), flipped.encode())
    write_lines(path, lines)
    with ImmutableLogger(tmp_path, encryption_key=key) as log:
        problems = log.verify().problems
    assert [(p.reason, p.seq) for p in problems] == [
        ("hash_mismatch", 1), ("decryption_failed", 1),
    ]
    assert [(p.reason, p.seq) for p in verify_tenant(tmp_path).problems] == [("hash_mismatch", 1)]
    assert split_line(lines[0].rstrip(b"\n")) is not None


def test_bad_key_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISSING_KEY_VAR", raising=False)
    for options in (
        {"encryption_key": "not base64!"},
        {"encryption_key": b"short"},
        {"encryption_key_env": "MISSING_KEY_VAR"},
        {"encryption_passphrase": ""},
        {"encryption_key": generate_key(), "encryption_passphrase": "both"},
        {"previous_keys": [generate_key()]},
    ):
        with pytest.raises(ConfigurationError):
            ImmutableLogger(tmp_path, **options)


def test_reader_without_decryptor_leaves_ciphertext(tmp_path: Path) -> None:
    _write(tmp_path, generate_key(), "x")
    entry = next(iter_entries(tmp_path))
    assert "enc" in entry and "message" not in entry


def test_each_stream_encrypts_under_its_own_derived_key(tmp_path: Path) -> None:
    from immutable_logging.crypto import Key, key_from_bytes
    from immutable_logging.encryption import stream_key

    master = key_from_bytes(b"\x07" * 32)
    a, b = stream_key(master, "t", "host.0"), stream_key(master, "t", "host.1")
    assert a.kid == b.kid == master.kid
    assert not a.same_material(b) and not a.same_material(master)
    assert stream_key(master, "t", "host.0").same_material(a)  # deterministic
    assert isinstance(a, Key)
    key = generate_key()
    first = ImmutableLogger(tmp_path, encryption_key=key)
    second = ImmutableLogger(tmp_path, encryption_key=key)  # a second stream, same key
    first.info("from stream one")
    second.info("from stream two")
    assert sorted(e["message"] for e in first.read()) == ["from stream one", "from stream two"]
    first.shutdown()
    second.shutdown()


def test_entries_in_the_earlier_object_form_still_decrypt(tmp_path: Path) -> None:
    from immutable_logging.crypto import NonceSource, PayloadCipher, build_aad
    from immutable_logging.encryption import build_keyring, stream_keyring

    key = generate_key()
    _write(tmp_path, key, "written as an object")
    path = _active(tmp_path)
    obj = orjson.loads(read_lines(path)[0])
    assert isinstance(obj["enc"], str)
    ring = build_keyring(tmp_path / "default", encryption_key=key)
    assert ring is not None
    cipher = PayloadCipher(stream_keyring(ring, "default", path.parent.name),
                           NonceSource(tmp_path / "other-nonces.json"))
    aad = build_aad("default", path.parent.name, 1, obj["seq"], obj["prev"])
    payload = {k: v for k, v in obj.items() if k not in ("seq", "prev", "hash")}
    payload["enc"] = cipher.encrypt(cipher.decrypt(obj["enc"], aad), aad)  # the object form
    line, _ = make_line(obj["seq"], obj["prev"],
                        orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
    write_lines(path, [line])
    assert verify_tenant(tmp_path).ok
    with ImmutableLogger(tmp_path, encryption_key=key) as log:
        entries = log.read()
        assert [e["message"] for e in entries] == ["written as an object"]
        assert entries[0]["metadata"] == {"card": "4111-1111", "amount": 42}
        assert log.verify(parse=True).ok


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_encryptor_transform_sees_refills_forks_and_rotation(tmp_path: Path) -> None:
    first = Key(base64.b64decode(generate_key()))
    ring = Keyring([first])
    encryptor = EntryEncryptor(ring, tmp_path, "acme", "web-1.3", nonce_block=3)
    transform = encryptor.transform
    prev = "ab" * 32

    def seal(i: int, seq: int = 1) -> str:
        stored = transform({"ts": 1.0, "message": f"m{i}", "metadata": {"i": i}}, seq, prev, 4)
        payload = orjson.loads(stored)
        assert set(payload) == {"ts", "enc"}
        return str(payload["enc"])

    def opened(enc: str, seq: int = 1) -> dict[str, object]:
        cipher = PayloadCipher(stream_keyring(ring, "acme", "web-1.3"))
        return dict(orjson.loads(cipher.decrypt(enc, build_aad("acme", "web-1.3", 4, seq, prev))))

    def nonce(enc: str) -> bytes:
        return base64.b64decode(enc.rpartition(".")[2])[:12]

    texts = [seal(i, seq=i) for i in range(10)]  # crosses 3 block refills
    assert [opened(t, seq=i) for i, t in enumerate(texts)] == [
        {"message": f"m{i}", "metadata": {"i": i}} for i in range(10)
    ]
    parent = {nonce(t) for t in texts}
    child = set(nonces_of_forked_child(lambda: nonce(seal(0))))
    parent |= {nonce(seal(0)) for _ in range(5)}
    assert len(parent) == 15 and len(child) == 5 and not parent & child
    # every counter used was reserved on disk first (blocks of 3), in the child too
    reserved = orjson.loads((tmp_path / NONCE_STATE).read_bytes())["keys"][first.kid]["next"]
    counters = [int.from_bytes(n[4:], "big") for n in parent | child]
    assert len(set(counters)) == 20 and max(counters) < reserved == 21
    # without the secret fields nothing is encrypted; exc and stack are
    assert transform({"ts": 1.0}, 1, prev, 4) == b'{"ts":1.0}'
    with_exc = orjson.loads(transform({"ts": 1.0, "exc": "Traceback", "stack": "s"}, 1, prev, 4))
    assert opened(str(with_exc["enc"])) == {"exc": "Traceback", "stack": "s"}
    # a rotated keyring is picked up by the transform already installed in the writer
    second = ring.add(Key(base64.b64decode(generate_key())), activate=True)
    rotated = seal(99)
    assert _kid(rotated) == second.kid != first.kid
    assert opened(rotated) == {"message": "m99", "metadata": {"i": 99}}
    assert orjson.loads(encryptor({"message": "via __call__"}, 1, prev, 4))["enc"].startswith(
        f"A256GCM.{second.kid}.")


@pytest.mark.parametrize("public", [
    {},  # nothing but secrets
    {"ts": 1.0, "level": "INFO", "func": "f"},  # every key after "enc": spliced in front
    {"a": 1, "ts": 2.0},  # a key before "enc"
    {"e": 1, "enb": 2, "end": 3, "ts": 2.0},  # keys around "enc"
    {"\u00e9t\u00e9": 1, "Z": [1, 2]},  # escaped / non-ASCII and upper-case first keys
])
def test_encrypted_payload_bytes_are_canonical(tmp_path: Path, public: dict[str, object]) -> None:
    encryptor = EntryEncryptor(Keyring([Key(base64.b64decode(generate_key()))]), tmp_path,
                               "acme", "web-1")
    secrets = {"message": "m", "metadata": {"k": "v"}}
    stored = encryptor.transform({**public, **secrets}, 3, "ab" * 32, 1)
    decoded = orjson.loads(stored)
    assert set(decoded) == {*public, "enc"}
    assert stored == orjson.dumps(decoded, option=orjson.OPT_SORT_KEYS)
