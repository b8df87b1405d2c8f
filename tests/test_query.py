from __future__ import annotations

import random
from pathlib import Path

import pytest

from immutable_logging import ImmutableLogger
from immutable_logging.crypto import generate_key
from immutable_logging.errors import QueryError
from immutable_logging.query import (
    compile_query,
    iter_entries,
    query_entries,
    query_filter,
    search_entries,
    search_filter,
)


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
