from __future__ import annotations

import enum
import io
import logging
import random
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
import pytest

from immutable_logging import ImmutableHandler, ImmutableLogger
from immutable_logging.cli import main
from immutable_logging.crypto import Key, Keyring, decode_key_b64, generate_key
from immutable_logging.encryption import EntryDecryptor
from immutable_logging.errors import DecryptionError, KeyUnavailableError, QueryError
from immutable_logging.layout import list_segments
from immutable_logging.query import (
    LineFilter,
    compile_query,
    iter_entries,
    query_entries,
    query_filter,
    reads_secret_fields,
    search_entries,
    search_filter,
    summarise,
)
from immutable_logging.verify import verify_tenant

from .helpers import active_segment, read_lines, write_lines, write_log_and_kill


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    rng = random.Random(7)
    with ImmutableLogger(tmp_path, max_bytes=20_000) as log:
        for _ in range(600):
            level = rng.choice(["info", "revenue", "audit", "security"])
            getattr(log, level)(
                rng.choice(["Café ouvert", "User \"quoted\" login", "plain event", "ÉTÉ"]),
                {"amount": rng.randint(0, 2000), "user": rng.choice(["ann", "bob", "Zoë"]),
                 "tags": rng.sample(["a", "b", "c"], 2)},
            )
    return tmp_path


@pytest.mark.parametrize(
    ("text", "case_sensitive"),
    [("café", False), ("CAFÉ", False), ("ÉTÉ", True), ('"quoted"', False), ("USER", False),
     ("zoë", False), ("plain", True), ("nothing", False), ("amount", False)],
)
def test_search_prefilter_never_changes_results(
    logdir: Path, text: str, case_sensitive: bool
) -> None:
    slow = search_entries(iter_entries(logdir), text, case_sensitive=case_sensitive)
    line_filter = search_filter(text, case_sensitive=case_sensitive)
    fast = search_entries(iter_entries(logdir, line_filter=line_filter), text,
                          case_sensitive=case_sensitive)
    assert [e["hash"] for e in fast] == [e["hash"] for e in slow]


def test_search_filter_is_only_used_when_exact() -> None:
    assert search_filter("café") is None  # case folding of non-ASCII is not bytewise
    assert search_filter('say "hi"') is None  # JSON escapes quotes
    assert search_filter("café", case_sensitive=True) is not None
    assert search_filter("Login") is not None


@pytest.mark.parametrize(
    "document",
    [
        {"level": "REVENUE"},
        {"level": "REVENUE", "metadata.amount": {"$gte": 1000}},
        {"metadata.user": "Zoë"},
        {"metadata.user": {"$eq": "bob"}, "level": {"$ne": "AUDIT"}},
        {"metadata.tags.0": "a"},
        {"message": "User \"quoted\" login"},
        {"$or": [{"level": "AUDIT"}, {"metadata.user": "ann"}]},
    ],
)
def test_query_prefilter_never_changes_results(logdir: Path, document: dict[str, object]) -> None:
    slow = query_entries(iter_entries(logdir), document)
    fast = query_entries(iter_entries(logdir, line_filter=query_filter(document)), document)
    assert [e["hash"] for e in fast] == [e["hash"] for e in slow]
    assert slow, "the corpus should contain matches for every document"


def test_prefilters_still_see_encrypted_entries(tmp_path: Path) -> None:
    key = generate_key()
    with ImmutableLogger(tmp_path, encryption_key=key) as log:
        log.revenue("secret sale", {"user": "bob"})
        log.info("other")
        assert [e["message"] for e in log.search("secret")] == ["secret sale"]
        assert [e["message"] for e in log.query({"metadata.user": "bob"})] == ["secret sale"]


def test_compile_query_rejects_bad_documents() -> None:
    bad_documents = (
        [], {"$and": []}, {"$or": "x"}, {"": 1}, {"$where": "1"}, {"a": {"$gt": 1, "$x": 2}},
    )
    for bad in bad_documents:
        with pytest.raises(QueryError):
            compile_query(bad)  # type: ignore[arg-type]


def test_type_mismatches_do_not_match_or_raise(logdir: Path) -> None:
    assert query_entries(iter_entries(logdir), {"metadata.user": {"$gt": 5}}) == []
    assert query_entries(iter_entries(logdir), {"metadata.missing": {"$lt": 5}}) == []


def test_reader_fields_and_odd_operands(logdir: Path) -> None:
    entries = list(iter_entries(logdir))
    stream = entries[0]["stream"]
    document = {"stream": stream}
    assert query_filter(document) is None  # `stream` is added by the reader, not stored
    assert len(query_entries(iter_entries(logdir), document)) == len(entries)
    assert query_entries(iter_entries(logdir), {"metadata": {"$contains": ["a"]}}) == []


_TRICKY_AMOUNTS: list[object] = [
    4990, 5000, -3, 0, -0.0, 0.5, 1.0, 4990.5, 1e20, -2.5e-7, 2**63 - 1, True, False, None,
    "5000", [5000], {"amount": 5000}, {"amount": "x"}, 12,
]


@pytest.fixture
def numbers_dir(tmp_path: Path) -> Path:
    with ImmutableLogger(tmp_path, max_bytes=6_000) as log:
        for i, amount in enumerate(_TRICKY_AMOUNTS * 3):
            log.info(f'sale {i} "amount":9999 in the text', {"amount": amount, "i": i})
        log.info("nested only", {"order": {"amount": 7000}})  # the key at another depth
        log.info("escaped key", {'say"amount': 9999, "amount": 1})  # ends in "amount"
        log.info("no amount at all", {"other": 9999})
    return tmp_path


@pytest.mark.parametrize(
    "document",
    [
        {"metadata.amount": {"$gte": 4990}},
        {"metadata.amount": {"$gt": 0, "$lt": 1}},
        {"metadata.amount": {"$lte": 0}},  # false, 0, -0.0 and negatives
        {"metadata.amount": 5000},
        {"metadata.amount": {"$eq": 1}},  # 1 and 1.0, not true
        {"metadata.amount": 1e20},
        {"metadata.amount": {"$lt": 1e-6}},
        {"metadata.amount": {"$gte": 2**63 - 1}},
        {"metadata.order.amount": {"$gt": 6000}},
        {"metadata.amount": 9999},  # only in the text, a longer key and another field
        {"metadata.amount": {"$gte": 4990}, "level": "INFO"},
        {"metadata.i": {"$gte": 5}, "metadata.amount": {"$lt": 100}},
        {"metadata.amount": {"$in": [4990, 5000]}},
        {"metadata.amount": {"$in": [1, -3, 0.5]}},  # 1 is also 1.0, not true
        {"metadata.amount": {"$in": (0,)}},  # 0 and -0.0, not false
        {"metadata.amount": {"$in": [9999, 7000]}},  # in the text, a longer key, deeper
        {"metadata.amount": {"$in": [5000, 12], "$gte": 100}},
        {"metadata.amount": {"$in": []}},  # matches nothing: admits no line
        {"metadata.amount": {"$in": [2**63 - 1, 1e20]}},
    ],
)
def test_number_bounds_never_change_results(numbers_dir: Path, document: dict[str, object]) -> None:
    _assert_filter_keeps_results(numbers_dir, document)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"metadata.amount": 1}, [1.0, 1]),
        ({"metadata.amount": {"$gte": 0, "$lte": 1}}, [0, -0.0, 0.5, 1.0, 1]),
        ({"metadata.amount": {"$gt": 0.5, "$lt": 12}}, [1.0, 1]),
        ({"metadata.amount": True}, [True]),
        ({"metadata.amount": {"$gte": False}}, [True, False]),
        ({"metadata.amount": {"$in": [0, None]}}, [0, -0.0, None]),
        ({"metadata.amount": {"$in": [False, 12]}}, [False, 12]),
        ({"metadata.amount": {"$nin": [1, 0, "5000"], "$lt": 1}},
         [-3, 0.5, -2.5e-7]),
        ({"metadata.amount": [5000]}, [[5000]]),
        ({"metadata.amount": {"$contains": 5000}}, [[5000]]),
        ({"metadata.amount": {"$in": [{"amount": 5000}, (5000,)]}}, [[5000], {"amount": 5000}]),
    ],
)
def test_true_and_false_are_not_the_numbers_one_and_zero(
    numbers_dir: Path, document: dict[str, object], expected: list[object]
) -> None:
    """As in MongoDB; the line pre-filter (which never admits true/false for a number
    condition) and decoding every line agree."""
    for line_filter in (None, query_filter(document)):
        found = query_entries(iter_entries(numbers_dir, line_filter=line_filter), document)
        # The first of the three rounds of _TRICKY_AMOUNTS, then the entries after them.
        amounts = [e["metadata"]["amount"] for e in found
                   if e["metadata"].get("i", -1) < len(_TRICKY_AMOUNTS)]
        assert amounts == expected
        assert all(type(a) is type(b) for a, b in zip(amounts, expected, strict=True))


def test_in_takes_enums_and_other_number_types_as_the_values_they_equal(logdir: Path) -> None:
    class Level(enum.StrEnum):
        REVENUE = "REVENUE"

    class Amount(enum.IntEnum):
        BIG = 1999

    for number in (Decimal(1999), Fraction(1999)):  # as $eq and $ne compare them
        assert compile_query({"n": {"$in": [number]}})({"n": 1999})
        assert not compile_query({"n": {"$nin": [number]}})({"n": 1999})
        assert not compile_query({"n": {"$in": [number]}})({"n": 1998})
    plain = query_entries(iter_entries(logdir), {"level": {"$in": ["REVENUE"]},
                                                 "metadata.amount": {"$nin": [1999]}})
    members = query_entries(iter_entries(logdir), {"level": {"$in": [Level.REVENUE]},
                                                   "metadata.amount": {"$nin": [Amount.BIG]}})
    assert plain and [e["hash"] for e in members] == [e["hash"] for e in plain]


def _assert_filter_keeps_results(directory: Path, document: dict[str, object]) -> None:
    """The document gets a bound, and reading with its filter finds what decoding every
    line finds."""
    line_filter = query_filter(document)
    assert line_filter is not None and line_filter.bounds
    slow = query_entries(iter_entries(directory), document)
    fast = query_entries(iter_entries(directory, line_filter=line_filter), document)
    assert [e["hash"] for e in fast] == [e["hash"] for e in slow]


def _lines_kept_by_first_bound(
    directory: Path, document: dict[str, object]
) -> tuple[int, int, int]:
    """Check the document's first bound chunk by chunk against the regex and line by line
    against the decoded entries; return (lines, lines kept, matches)."""
    from immutable_logging.layout import list_segments, list_streams

    line_filter = query_filter(document)
    assert line_filter is not None
    bound = line_filter.bounds[0]
    predicate = compile_query(document)
    total = kept = hits = 0
    for stream in list_streams(directory / "default"):
        for segment in list_segments(stream):
            for chunk in segment.chunks():
                assert bound.offsets(chunk) == [
                    m.start() for m in bound.pattern.finditer(chunk) if bound.admits(m[1])]
                lines = chunk.splitlines(keepends=True)
                chosen = list(line_filter.lines(chunk))
                assert chosen == [line for line in lines if line_filter.matches(line)]
                for line in lines:  # a line that is left out can never match
                    if line not in chosen:
                        assert not predicate(orjson.loads(line)), line
                hits += sum(predicate(orjson.loads(line)) for line in chosen)
                total, kept = total + len(lines), kept + len(chosen)
    return total, kept, hits


def test_number_bounds_skip_lines_and_agree_line_by_line(numbers_dir: Path) -> None:
    total, kept, hits = _lines_kept_by_first_bound(numbers_dir, {"metadata.amount": {"$gte": 4990}})
    assert hits == 15 and 0 < kept < total / 2  # 4990, 4990.5, 5000, 1e20, 2**63 - 1


def test_number_checks_only_for_plain_number_comparisons() -> None:
    for document in (
        {"metadata.amount": {"$gte": True}},  # a bool operand: left to the decoder
        {"metadata.amount": {"$gte": float("nan")}},
        {"metadata.amount": {"$lt": float("inf")}},
        {"metadata.amount": {"$gte": 5, "$ne": 7}},  # mixed with another operator
        {"metadata.amount": {"$in": [1, True]}},  # a bool member
        {"metadata.amount": {"$in": [1, "1"]}},  # numbers and strings
        {"metadata.amount": {"$in": [1, float("nan")]}},
        {"metadata.amount": {"$in": [1, None]}},
        {"metadata.amount": {"$in": ["a", ["a"]]}},
        {"metadata.amount": {"$in": "abc"}},  # not a list (compile_query refuses it)
        {"metadata.amount": {"$nin": [1, 2]}},  # matches lines without the key
        {"metadata.user": {"$in": ["\ud800"]}},  # no line holds a lone surrogate
        {"metadata.amount": {"$gte": "5"}},
        {"metadata.amount": {"value": 5}},  # equality with an object
        {"metadata.items.0": 5},  # a list index has no key in the line
        {"$or": [{"metadata.amount": 5}]},
    ):
        assert query_filter(document) is None, document
    with pytest.raises(QueryError):
        LineFilter(())


_TRICKY_STRINGS: list[object] = [
    "ann", "Ann", "bob", 'say "hi"', "back\\slash\\", "tab\there", "Zoë", "", "ann ",
    "\u2028", 5, None, ["ann"], {"user": "ann"}, True,
]


@pytest.fixture
def strings_dir(tmp_path: Path) -> Path:
    with ImmutableLogger(tmp_path, max_bytes=6_000) as log:
        for i, user in enumerate(_TRICKY_STRINGS * 3):
            log.info(f'login {i} "user":"ann" in the text', {"user": user, "i": i})
        log.info("nested only", {"order": {"user": "bob"}})  # the key at another depth
        log.info("escaped key", {'say"user': "ann", "user": "zed"})  # ends in "user"
        log.info("no user at all", {"other": "ann"})
    return tmp_path


@pytest.mark.parametrize(
    "document",
    [
        {"metadata.user": {"$in": ["ann", "bob"]}},
        {"metadata.user": {"$in": ['say "hi"', "back\\slash\\", "tab\there"]}},
        {"metadata.user": {"$in": ["Zoë", "", "\u2028"]}},
        {"metadata.user": {"$in": ["ann"]}, "metadata.i": {"$gte": 10}},
        {"metadata.user": {"$in": ["ann"], "$ne": "bob"}},
        {"metadata.user": {"$in": []}},
        {"metadata.user": {"$in": ["nobody"]}},
        {"metadata.order.user": {"$in": ["bob"]}},
        {"level": {"$in": ["INFO", "ERROR"]}, "metadata.user": {"$in": ["Ann"]}},
    ],
)
def test_string_sets_never_change_results(strings_dir: Path, document: dict[str, object]) -> None:
    _assert_filter_keeps_results(strings_dir, document)


def test_string_sets_skip_lines_and_agree_line_by_line(strings_dir: Path) -> None:
    document = {"metadata.user": {"$in": ["bob", 'say "hi"']}}
    total, kept, hits = _lines_kept_by_first_bound(strings_dir, document)
    assert hits == 6 and 0 < kept < total / 4


def test_a_token_that_is_no_number_is_left_to_the_decoder() -> None:
    line_filter = query_filter({"metadata.amount": {"$gte": 10}})
    assert line_filter is not None
    bound = line_filter.bounds[0]
    assert bound.admits(b"1-2") and bound.admits(b"1e") and bound.admits(b"99")
    assert not bound.admits(b"9")
    assert not bound.in_line(b'{"metadata":{"amount":true}}')  # true is no number


@pytest.mark.parametrize("token", [
    b"0", b"-0", b"7", b"-12", b"1.5", b"-2.5e-7", b"1e20", b"1E3", b"0.1",
    b"9223372036854775807", b"-9223372036854775808", b"-9223372036854775809",
    b"18446744073709551615", b"18446744073709551616", b"123456789012345678901234567890",
])
def test_number_tokens_read_as_orjson_decodes_them(token: bytes) -> None:
    from immutable_logging.query import _number

    decoded = orjson.loads(token)
    assert _number(token) == decoded and type(_number(token)) is type(decoded)


def test_bulk_offsets_follow_orjson_beyond_64_bit_integers() -> None:
    """orjson decodes integers outside the 64-bit range as the nearest float."""
    line_filter = query_filter({"metadata.amount": float(2**64)})
    assert line_filter is not None
    bound = line_filter.bounds[0]
    chunk = b'{"metadata":{"amount":5}}\n{"metadata":{"amount":18446744073709551617}}\n'
    assert orjson.loads(chunk.splitlines()[1])["metadata"]["amount"] == float(2**64)
    assert bound.offsets(chunk) == [chunk.index(b'"amount":1844')]
    assert list(line_filter.lines(chunk)) == [chunk.splitlines(keepends=True)[1]]


def test_odd_keys_and_operands_get_no_filter_and_no_crash(logdir: Path) -> None:
    for document in (
        {"metadata.\ud800": 1},  # a lone surrogate (json.loads accepts "\\ud800")
        {"metadata.user": "\ud800"},
        {"metadata.\ud800": {"$exists": True}},
    ):
        assert query_filter(document) is None
        assert query_entries(iter_entries(logdir), document) == []
    huge = {"metadata.amount": {"$lt": 10**400}}  # an int no float can hold
    line_filter = query_filter(huge)
    assert line_filter is not None
    slow = query_entries(iter_entries(logdir), huge)
    fast = query_entries(iter_entries(logdir, line_filter=line_filter), huge)
    assert [e["hash"] for e in fast] == [e["hash"] for e in slow] and slow


@pytest.fixture
def encrypted_dir(tmp_path: Path) -> tuple[Path, str]:
    """A log of 6 entries at 4 levels, encrypted with the returned key."""
    key = generate_key()
    with ImmutableLogger(tmp_path, encryption_key=key) as log:
        log.info("hello", {"user": "ann"})
        log.revenue("sale", {"amount": 10})
        log.revenue("refund", {"amount": -3})
        log.audit("login")
        log.error("boom")
        log.info("bye")
    return tmp_path, key


def test_keyless_reader_keeps_undecryptable_entries_with_their_clear_fields(
    encrypted_dir: tuple[Path, str],
) -> None:
    root, key = encrypted_dir
    decrypt = None  # no key
    entries = list(iter_entries(root, decrypt=decrypt))
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert all(e["enc"].startswith("A256GCM.") for e in entries)
    assert not any({"message", "metadata", "encrypted"} & e.keys() for e in entries)
    assert summarise(entries)["by_level"] == {"INFO": 2, "REVENUE": 2, "AUDIT": 1,
                                              "ERROR": 1}
    revenue = query_entries(iter_entries(root, decrypt=decrypt), {"level": "REVENUE"})
    assert [e["seq"] for e in revenue] == [2, 3]
    late = query_entries(iter_entries(root, decrypt=decrypt),
                         {"$or": [{"seq": {"$gte": 6}}, {"level": "AUDIT"}]})
    assert [e["seq"] for e in late] == [4, 6]
    for document in ({"message": "sale"}, {"metadata.amount": {"$gt": 0}},
                     {"metadata": {"$exists": False}},
                     {"$or": [{"level": "AUDIT"}, {"exc": {"$exists": True}}]}):
        with pytest.raises(KeyUnavailableError, match="seq 1"):
            query_entries(iter_entries(root, decrypt=decrypt), document)
    with pytest.raises(KeyUnavailableError, match="seq 1"):
        search_entries(iter_entries(root, decrypt=decrypt), "sale")
    with pytest.raises(KeyUnavailableError) as info:
        list(iter_entries(root, decrypt=decrypt, need_secrets=True))
    assert info.value.seq == 1 and info.value.file is not None
    # A reader given keys never returns entries it silently left encrypted: no key, or
    # a keyring without the entries' key id, is an error.
    other = EntryDecryptor(Keyring([Key(decode_key_b64(generate_key()))]), "default")
    for given in (EntryDecryptor(None, "default"), other):
        with pytest.raises(KeyUnavailableError, match="seq 1"):
            list(iter_entries(root, decrypt=given))
    keyed = list(iter_entries(root, decrypt=EntryDecryptor(Keyring([Key(decode_key_b64(key))]),
                                                             "default")))
    assert [e["message"] for e in keyed] == ["hello", "sale", "refund", "login", "boom", "bye"]
    assert all(e["encrypted"] and "enc" not in e for e in keyed)
    # The entries' key id with other key material: authentication fails, never skipped.
    impostor = EntryDecryptor(Keyring([Key(b"\x01" * 32, kid=Key(decode_key_b64(key)).kid)]),
                              "default")
    for need_secrets in (False, True):
        with pytest.raises(DecryptionError) as error:
            list(iter_entries(root, decrypt=impostor, need_secrets=need_secrets))
        assert not isinstance(error.value, KeyUnavailableError) and error.value.seq == 1


def test_reads_secret_fields() -> None:
    assert reads_secret_fields({"message": "x"})
    assert reads_secret_fields({"level": "INFO", "metadata.user.id": 3})
    assert reads_secret_fields({"$and": [{"level": "INFO"}, {"$or": [{"stack": None}]}]})
    assert reads_secret_fields({"exc": {"$exists": True}})
    assert not reads_secret_fields({"level": "INFO", "seq": {"$gt": 3}, "logger": "a"})
    assert not reads_secret_fields({"$or": [{"ts": {"$gt": 0}}, {"messages": 1}]})
    assert not reads_secret_fields({"enc": {"$exists": True}, "metadata_x": 1})


def test_an_entry_whose_time_no_date_has_keeps_the_tenant_readable(
    tmp_path: Path, logger_name: str
) -> None:
    """A record's ``created`` set in milliseconds (or 1e20) used to make read, query and
    stats raise ValueError/OverflowError for the whole tenant."""
    handler = ImmutableHandler(tmp_path, "t")
    for name, created in (("normal", time.time()), ("in ms", time.time() * 1000),
                          ("far", 1e20)):
        handler.handle(logging.makeLogRecord({"name": logger_name, "msg": name,
                                              "levelno": 20, "levelname": "INFO",
                                              "created": created}))
    handler.close()
    assert handler.error_count == 0
    with ImmutableLogger(tmp_path, tenantId="t") as log:
        entries = log.read()
        assert [e["message"] for e in entries] == ["normal", "in ms", "far"]
        assert entries[0]["timestamp"].startswith("20")
        assert entries[1]["timestamp"] is None and entries[2]["timestamp"] is None
        assert len(log.query({"level": "INFO"})) == 3 and len(log.search("in ms")) == 1
        stats = log.stats()
        assert stats["total_entries"] == 3 and stats["first_timestamp"].startswith("20")
        assert stats["last_timestamp"] is None
    out = io.StringIO()
    assert main(["read", str(tmp_path), "--tenant", "t"], out) == 0
    assert "1e+20" in out.getvalue()


def test_search_finds_what_lower_case_and_json_escaping_hide(tmp_path: Path) -> None:
    """Found by the API audit: the raw-line pre-filter lower-cased bytes only (the Kelvin
    sign lower-cases to "k"), and metadata was searched in its JSON text, where quotes,
    backslashes and newlines are escaped."""
    with ImmutableLogger(tmp_path, tenantId="s") as log:
        log.info("temperature in \u212aelvin")
        log.info("plain", {"quote": 'they say "hi"', "text": "line1\nline2"})
        log.info('a message that says "hi" itself')
        log.info(r"escaped in the message: say \"hi\"")
        for _ in range(3):
            log.info("filler")
        assert [e["message"] for e in log.search("kelvin")] == ["temperature in \u212aelvin"]
        assert [e["message"] for e in log.search('say "hi"')] == ["plain"]
        assert [e["message"] for e in log.search('says "HI"')] == [
            'a message that says "hi" itself']
        assert [e["message"] for e in log.search("line1\nline2")] == ["plain"]
        assert log.search("line1\nline2", case_sensitive=True)[0]["message"] == "plain"
        everything = list(iter_entries(tmp_path, "s"))
        assert search_entries(everything, "KELVIN")[0]["message"].endswith("\u212aelvin")
        assert [e["message"] for e in search_entries(everything, 'say "hi"')] == ["plain"]
        # text as it appears in the metadata's JSON is still found, as before
        assert [e["message"] for e in log.search('"quote":"they')] == ["plain"]
        assert log.search("lone \udc80 surrogate") == []  # no encoder error
    # Only lines holding the two special characters are decoded to be compared; a block
    # holding one no longer lets every line through.
    needle = search_filter("nowhere")
    assert needle is not None
    block = b"".join(b'{"message":"line %d \xe2\x84\xaa"}\n' % i for i in range(50))
    block += b'{"message":"NOWHERE \xc4\xb0"}\n{"message":"plain"}\n'
    assert list(needle.lines(block)) == [b'{"message":"NOWHERE \xc4\xb0"}\n']


def test_query_and_read_arguments_a_user_may_pass(tmp_path: Path) -> None:
    with ImmutableLogger(tmp_path, tenantId="q") as log:
        log.info("tagged", {"tags": ["a", "b"], "where": {"x": 1}})
        log.audit("audited")
        # a set operand cannot hold a list or dict value: compared item by item
        assert log.query({"metadata.tags": {"$in": {"a", "b"}}}) == []
        assert len(log.query({"metadata.tags": {"$in": [["a", "b"]]}})) == 1
        assert len(log.query({"metadata.where": {"$nin": {"z"}}})) == 2
        # timestamp is a reader field: it can be queried like the stored ones
        assert len(log.query({"timestamp": {"$exists": True}})) == 2
        assert len(log.query({"timestamp": {"$gte": "2000-01-01"}})) == 2
        with pytest.raises(QueryError, match="needs true or false"):
            log.query({"level": {"$exists": "no"}})
        assert len(log.query({"metadata.tags": {"$exists": 1}})) == 1  # MongoDB's 1/0
        assert len(log.query({"metadata.tags": {"$exists": 0}})) == 1
        with pytest.raises(QueryError, match="limit must be an int >= 0, got '5'"):
            log.read(limit="5")  # type: ignore[arg-type]
        with pytest.raises(QueryError, match="offset must be an int >= 0"):
            log.read(offset=None)  # type: ignore[arg-type]
        assert [e["message"] for e in log.read(level="25")] == ["audited"]
        assert [e["message"] for e in log.read(level=25)] == ["audited"]


def test_iter_entries_records_what_it_leaves_out(tmp_path: Path) -> None:
    """With a damage list: a line that is no JSON object and the rest of an unreadable
    segment are recorded and reading goes on; without one, a damaged line is skipped
    and an unreadable segment raises, as before."""
    from immutable_logging.chain import ChainWriter
    from immutable_logging.errors import SegmentReadError
    from immutable_logging.layout import list_segments

    writer = ChainWriter(tmp_path, max_bytes=2_000)
    for i in range(60):
        writer.append({"ts": time.time(), "level": "INFO", "message": f"e{i}"})
    writer.close()
    _, second, *_ = list_segments(writer.stream_dir)
    second.path.chmod(0o600)
    second.path.write_bytes(second.path.read_bytes()[:-30])  # a truncated gzip
    plain = list_segments(writer.stream_dir)[-1].path
    lines = plain.read_bytes().splitlines(keepends=True)
    seq = orjson.loads(lines[0])["seq"]
    lines[0], lines[1] = b'{"seq":%d,"cut' % seq + b"\n", b"[1, 2]\n"  # no object, no JSON
    plain.write_bytes(b"".join(lines))
    damage: list[Any] = []
    seqs = [e["seq"] for e in iter_entries(tmp_path, damage=damage)]
    assert [str(d) for d in damage] == [
        str(damage[0]), f"{plain}, seq {seq}: the line is not a JSON entry",
        f"{plain}: the line is not a JSON entry"]
    assert str(damage[0]).startswith(f"{second.path}: the rest of the segment cannot be read")
    assert seqs[-1] == 60 and seq not in seqs and seq + 1 not in seqs and 1 in seqs
    with pytest.raises(SegmentReadError, match="cannot read segment"):
        list(iter_entries(tmp_path))


def test_readers_show_what_a_killed_writer_left_in_its_journal(
    tmp_path: Path, logger_name: str
) -> None:
    """After a kill -9 the last batch is only in the stream's journal: readers show it
    after the segment's entries, exactly as the stream's next writer appends it."""
    from immutable_logging.chain import ChainWriter

    # 24 entries written; the journal starts again with 6 more, the older bytes after them.
    stream_dir = write_log_and_kill(tmp_path, logger_name, 30, stream="app", written=24)
    assert len(read_lines(active_segment(stream_dir))) == 24
    damage: list[Any] = []
    before = list(iter_entries(tmp_path, damage=damage))
    assert [e["seq"] for e in before] == list(range(1, 31)) and damage == []
    assert [e["message"] for e in before] == [f"event {i}" for i in range(30)]
    assert summarise(iter_entries(tmp_path))["total_entries"] == 30
    assert [e["seq"] for e in query_entries(iter_entries(tmp_path), {"seq": {"$gt": 28}})] == [
        29, 30]
    ChainWriter(tmp_path, stream="app").close()  # appends the journal's entries
    assert list(iter_entries(tmp_path)) == before


def test_journal_entries_that_do_not_continue_the_chain_are_left_out_as_verify_notes(
    tmp_path: Path, logger_name: str
) -> None:
    stream_dir = write_log_and_kill(tmp_path, logger_name, 30, stream="app", written=24)
    assert len(list(iter_entries(tmp_path))) == 30
    segment = active_segment(stream_dir)
    write_lines(segment, read_lines(segment)[:-2])  # the journal's first entry links to none
    damage: list[Any] = []
    seqs = [e["seq"] for e in iter_entries(tmp_path, damage=damage)]
    assert seqs == list(range(1, 23))
    # verify notes such a journal (a live writer's batch write looks the same to a
    # reader): it is no damage of what was read.
    assert damage == []
    assert "does not continue the chain" in verify_tenant(tmp_path).warnings[0]


def test_journal_entries_decrypt_with_the_segment_they_go_to(
    tmp_path: Path, logger_name: str
) -> None:
    from immutable_logging.chain import ChainWriter

    key = generate_key()
    stream_dir = write_log_and_kill(tmp_path, logger_name, 40, stream="app",
                                    encryption_key=key, max_bytes=3_000)
    segments = list_segments(stream_dir)
    # Batches are written at rotation: the entries of the active segment (bound to its
    # number by their encryption) are only in the journal, after the sealed segments.
    assert len(segments) >= 3 and segments[-1].path.stat().st_size == 0
    decrypt = EntryDecryptor(Keyring([Key(decode_key_b64(key))]), "default")
    entries = list(iter_entries(tmp_path, decrypt=decrypt))
    assert [e["message"] for e in entries] == [f"event {i}" for i in range(40)]
    assert all(e["encrypted"] for e in entries)
    assert [e["seq"] for e in iter_entries(tmp_path)] == list(range(1, 41))  # keyless
    found = search_entries(iter_entries(tmp_path, decrypt=decrypt), "event 39")
    assert [e["seq"] for e in found] == [40]
    ChainWriter(tmp_path, stream="app").close()
    assert list(iter_entries(tmp_path, decrypt=decrypt)) == entries


def test_a_live_writers_journal_is_read_and_never_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from immutable_logging import chain
    from immutable_logging.query import ChainHead, journal_tail

    monkeypatch.setattr(chain, "JOURNAL_WRITE_INTERVAL", 3600.0)  # batches by flush() only
    writer = chain.ChainWriter(tmp_path, stream="live")
    try:
        for i in range(10):
            if i == 5:
                writer.flush()
            writer.append({"message": f"m{i}", "level": "INFO"})
        # The writer's last entries are in its journal (durable), not yet in the segment.
        assert [e["message"] for e in iter_entries(tmp_path)] == [f"m{i}" for i in range(10)]
        head = ChainHead()  # a reader that read the segment (entries 1-5) ...
        for _ in head.track(list_segments(writer.stream_dir)[0].chunks(), 1):
            pass
        writer.flush()  # ... before the writer wrote 6-10 there (the journal still has them)
        assert journal_tail(writer.stream_dir, head) is None  # not to be taken as they are
        assert [e["seq"] for e in iter_entries(tmp_path)] == list(range(1, 11))
    finally:
        writer.close()


@pytest.mark.parametrize("rotate", [False, True])
def test_a_batch_written_during_a_read_is_read_on_not_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rotate: bool
) -> None:
    """Found by review: the entries of the journal were shown by one read, and left out by
    the next when the writer wrote them to the segment between its segment pass and its
    journal read (read 1: 1-10, read 2: 1-5). The reader now reads on in the segments from
    where it stopped, then takes the journal."""
    from immutable_logging import chain
    from immutable_logging.query import StreamReader

    monkeypatch.setattr(chain, "JOURNAL_WRITE_INTERVAL", 3600.0)  # batches by flush() only
    writer = chain.ChainWriter(tmp_path, stream="live", compress=True)
    try:
        for i in range(10):
            if i == 5:
                writer.flush()
            writer.append({"message": f"m{i}", "level": "INFO"})
        reader = StreamReader(writer.stream_dir, None, None, False, False, None)
        seen = [e["seq"] for s in list_segments(writer.stream_dir) for e in reader.segment(s)]
        assert seen == [1, 2, 3, 4, 5]
        writer.flush()  # 6-10 reach the segment after the reader read it
        if rotate:
            writer.rotate()
            for i in range(10, 15):
                writer.append({"message": f"m{i}", "level": "INFO"})
            writer.flush()
            writer.append({"message": "m15", "level": "INFO"})  # in the journal only
        seen += [e["seq"] for e in reader.journal()]
        assert seen == list(range(1, 17 if rotate else 11))
    finally:
        writer.close()
