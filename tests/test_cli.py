from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from immutable_logging import ImmutableLogger
from immutable_logging.cli import main
from immutable_logging.layout import list_segments, list_streams

from .helpers import read_lines, write_lines


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    with ImmutableLogger(tmp_path, tenantId="shop") as log:
        log.info("User login", {"user": "alice"})
        log.revenue("Order paid", {"amount": 1500})
        log.revenue("Order paid", {"amount": 20})
        log.audit("Role changed", {"user": "bob"})
    with ImmutableLogger(tmp_path, tenantId="other") as log:
        log.info("Other tenant")
    return tmp_path


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue()


def test_verify_ok_table_and_json(logdir: Path) -> None:
    code, text = run("verify", str(logdir))
    assert code == 0
    assert "OK: every stream verified (5 entries in 2 streams)" in text
    code, text = run("verify", str(logdir), "--tenant", "shop", "--json")
    assert code == 0
    data = orjson.loads(text)
    assert data["ok"] is True and data["entries"] == 4


def test_verify_tampered_exit_1_names_file_and_seq(logdir: Path) -> None:
    path = list_segments(list_streams(logdir / "shop")[0])[-1].path
    lines = read_lines(path)
    lines[1] = lines[1].replace(b"1500", b"9999")
    write_lines(path, lines)
    code, text = run("verify", str(logdir))
    assert code == 1
    assert f"FAIL hash_mismatch: file {path}, seq 2" in text
    assert "TAMPERED" in text
    code, text = run("verify", str(logdir), "--json")
    problems = orjson.loads(text)["streams"]
    assert code == 1 and any(s["problems"] for s in problems)


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("verify", str(tmp_path / "missing"))[0] == 2
    assert run("bogus")[0] == 2
    assert run()[0] == 2
    assert run("read", str(tmp_path), "--tenant", "../x")[0] == 2
    assert run("query", str(tmp_path), "{not json")[0] == 2
    assert run("query", str(tmp_path), '{"a": {"$nope": 1}}')[0] == 2
    assert "error" in capsys.readouterr().err


def test_read_search_query_stats(logdir: Path) -> None:
    code, text = run("read", str(logdir), "--tenant", "shop", "--level", "REVENUE")
    assert code == 0 and text.count("Order paid") == 2 and "2 entries" in text
    code, text = run("search", str(logdir), "alice", "--json")
    assert [e["message"] for e in orjson.loads(text)] == ["User login"]
    code, text = run(
        "query", str(logdir), '{"level":"REVENUE","metadata.amount":{"$gte":1000}}', "--json"
    )
    assert [e["metadata"]["amount"] for e in orjson.loads(text)] == [1500]
    code, text = run("stats", str(logdir), "--json")
    stats = orjson.loads(text)
    assert stats["total_entries"] == 5 and stats["by_level"]["REVENUE"] == 2
    code, text = run("stats", str(logdir), "--tenant", "shop")
    assert code == 0 and "total entries" in text and "level AUDIT" in text


def test_console_script_runs(logdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "immutable_logging.cli", "verify", str(logdir)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
