from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from immutable_logging import ImmutableLogger
from immutable_logging.cli import main
from immutable_logging.layout import list_segments, list_streams

from .helpers import read_lines, write_lines, write_log_and_kill


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


# ----------------------------------------------------------------- seals, checkpoints (issue 3)


def _keygen(directory: Path, tenant: str, *extra: str) -> dict[str, object]:
    code, text = run("keygen", str(directory), "--tenant", tenant, "--json", *extra)
    assert code == 0, text
    data: dict[str, object] = orjson.loads(text)
    return data


def test_keygen_prints_seed_once_and_writes_checkpoint_key(tmp_path: Path) -> None:
    import stat

    key_file = tmp_path / "ck.pem"
    code, text = run("keygen", str(tmp_path / "logs"), "--tenant", "acme",
                     "--epoch-seconds", "60", "--checkpoint-key", str(key_file))
    assert code == 0
    seed = next(word for word in text.split() if word.startswith("ils1-"))
    assert text.count(seed) == 1
    state = (tmp_path / "logs" / "acme" / ".seal-state.json").read_text()
    assert seed not in state and '"epoch_seconds": 60.0' in state
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "immutable-logging+" in text
    code, _ = run("keygen", str(tmp_path / "logs"), "--tenant", "acme")
    assert code == 2  # never re-key a sealed tenant
    code, _ = run("keygen", str(tmp_path / "logs"), "--tenant", "acme", "--no-seal",
                  "--checkpoint-key", str(key_file))
    assert code == 2  # nor overwrite a signing key


def test_verify_seed_reports_validated_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from .seal_helpers import FakeClock, log_epochs, open_handler

    key_file = tmp_path / "ck.pem"
    keys = _keygen(tmp_path, "acme", "--checkpoint-key", str(key_file))
    clock = FakeClock(time.time())
    handler, logger = open_handler(tmp_path, "acme", clock, "cli.seal", stream="app.0",
                                   checkpoint_key=str(key_file))
    log_epochs(handler, logger, clock, epochs=2, epoch_seconds=300.0)
    logger.info("trailing")
    handler.close()
    code, text = run("verify", str(tmp_path), "--seed", str(keys["seed"]))
    assert code == 0, text
    t0 = float(keys["epoch_start"])  # type: ignore[arg-type]
    import datetime

    def iso(t: float) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")

    assert (f"seals acme/app.0: validated from {iso(t0 + 300)} to {iso(t0 + 900)}, "
            "1 trailing entry not yet sealed") in text
    monkeypatch.setenv("SEAL_SEED", str(keys["seed"]))
    code, text = run("verify", str(tmp_path), "--seed-env", "SEAL_SEED", "--json")
    stream = orjson.loads(text)["streams"][0]
    assert code == 0 and stream["unsealed_trailing"] == 1 and stream["sealed_from"] == t0 + 300
    # checkpoints, local and anchored
    anchors = tmp_path / "replica"
    import shutil

    shutil.copytree(tmp_path / "acme" / "app.0" / "checkpoints",
                    anchors / "acme" / "app.0" / "checkpoints")
    vkey = str(keys["checkpoint_vkey"])
    code, text = run("verify", str(tmp_path), "--checkpoint-key", vkey, "--anchors", str(anchors))
    assert code == 0 and "checkpoints acme/app.0: 2 verified" in text
    from .seal_helpers import rewrite_stream

    def edit(payloads: list[dict[str, object]]) -> list[dict[str, object]]:
        payloads[0]["message"] = "event 0.X"
        return payloads

    rewrite_stream(tmp_path / "acme" / "app.0", edit)  # hashes recomputed: chain is clean
    code, text = run("verify", str(tmp_path), "--seed", str(keys["seed"]),
                     "--checkpoint-key", vkey, "--anchors", str(anchors))
    assert code == 1
    assert "FAIL checkpoint_mismatch: file " + str(anchors) in text
    assert "FAIL seal_head" in text and "hash_mismatch" not in text


def test_prove_inclusion_and_consistency_cli(tmp_path: Path) -> None:
    with ImmutableLogger(tmp_path, tenantId="p", stream="s") as log:
        for i in range(9):
            log.info(f"entry {i}")
    code, text = run("prove-inclusion", str(tmp_path), "--tenant", "p", "--stream", "s",
                     "--seq", "4", "--json")
    data = orjson.loads(text)
    assert code == 0 and data["valid"] is True and data["tree_size"] == 9
    assert data["leaf_index"] == 3 and len(data["proof"]) == 4
    code, text = run("prove-inclusion", str(tmp_path), "--tenant", "p", "--stream", "s",
                     "--seq", "2", "--size", "5")
    assert code == 0 and "tree of 5 entries" in text and "proof verifies" in text
    code, text = run("prove-consistency", str(tmp_path), "--tenant", "p", "--stream", "s",
                     "--old", "3", "--new", "9")
    assert code == 0 and "proof verifies" in text
    code, text = run("prove-consistency", str(tmp_path), "--tenant", "p", "--stream", "s",
                     "--old", "3", "--json")
    assert code == 0 and orjson.loads(text)["new_size"] == 9
    code, _ = run("prove-inclusion", str(tmp_path), "--tenant", "p", "--stream", "nope",
                  "--seq", "1")
    assert code == 2
    code, _ = run("prove-inclusion", str(tmp_path), "--tenant", "p", "--stream", "s",
                  "--seq", "10")
    assert code == 2


def test_corrupt_segment_is_a_clear_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ImmutableLogger(tmp_path, max_bytes=2_000) as log:
        for i in range(60):
            log.info(f"entry {i}")
    sealed = list_segments(list_streams(tmp_path / "default")[0])[0].path
    sealed.chmod(0o600)
    sealed.write_bytes(sealed.read_bytes()[:-30])  # truncated gzip
    code, text = run("read", str(tmp_path), "--limit", "1000", "--json")
    assert code == 1  # damage, as verify says it; the other segments are still read
    err = capsys.readouterr().err
    assert f"left out: {sealed}" in err and "cannot be read" in err
    messages = [e["message"] for e in orjson.loads(text)]
    # What precedes the damage in that segment, and every later segment
    assert messages[-1] == "entry 59" and len(messages) < 60 and messages[0] == "entry 0"
    code, text = run("verify", str(tmp_path))
    assert code == 1 and "cannot read segment" in text


def test_a_damaged_line_is_named_not_silently_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line that is no JSON entry any more was left out of read, search, query and stats
    without a word (exit 0): it is named on stderr, with its seq, and the exit is 1."""
    with ImmutableLogger(tmp_path) as log:
        for i in range(5):
            log.info(f"paid {i}", {"n": i})
    segment = list_segments(list_streams(tmp_path / "default")[0])[0].path
    lines = segment.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"message"', b'{message"', 1)  # seq 3 breaks
    segment.write_bytes(b"".join(lines))
    for command in (["read"], ["search", "paid"], ["query", '{"metadata.n": {"$gte": 0}}'],
                    ["stats"]):
        capsys.readouterr()
        code, text = run(command[0], str(tmp_path), *command[1:], "--json")
        err = capsys.readouterr().err
        assert code == 1, (command, err)
        assert f"left out: {segment}, seq 3: the line is not a JSON entry" in err, command
        if command[0] != "stats":
            assert [e["seq"] for e in orjson.loads(text)] == [1, 2, 4, 5], command
        else:
            assert orjson.loads(text)["total_entries"] == 4


def test_verify_workers_option(tmp_path: Path, logger_name: str) -> None:
    from .helpers import write_log

    write_log(tmp_path, logger_name, 300, max_bytes=10_000)
    command = [sys.executable, "-m", "immutable_logging.cli", "verify", str(tmp_path), "--json"]
    root = Path(__file__).resolve().parent.parent
    forked = subprocess.run([*command, "--workers", "2"], capture_output=True, cwd=root,
                            timeout=120)
    serial = subprocess.run([*command, "--workers", "1"], capture_output=True, cwd=root,
                            timeout=120)
    assert forked.returncode == serial.returncode == 0, forked.stderr
    forked_report, serial_report = orjson.loads(forked.stdout), orjson.loads(serial.stdout)
    assert [s["workers"] for s in forked_report["streams"]] == [2]
    assert [s["workers"] for s in serial_report["streams"]] == [0]
    assert forked_report["entries"] == serial_report["entries"] == 300
    bad = subprocess.run([*command, "--workers", "-1"], capture_output=True, cwd=root,
                         timeout=120)
    assert bad.returncode == 2 and b"must be 0 or more" in bad.stderr


def test_negative_limit_is_a_usage_error(logdir: Path) -> None:
    for command in (["search", str(logdir), "Order"], ["query", str(logdir), '{"level": "INFO"}']):
        assert run(*command, "--limit", "-1")[0] == 2
        code, text = run(*command, "--limit", "0", "--json")
        assert code == 0 and orjson.loads(text) == []


# ----------------------------------------------------------------- user review fixes


def test_verify_refuses_a_directory_without_streams(
    logdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = list_segments(list_streams(logdir / "shop")[0])[-1].path
    lines = read_lines(path)
    lines[1] = lines[1].replace(b"1500", b"9999")
    write_lines(path, lines)  # tampered: a wrong DIR must not turn this into a pass
    stream_dir = list_streams(logdir / "shop")[0]
    for argv, hint in (
        ([str(logdir / "shop")], f"pass {logdir} --tenant shop"),
        ([str(stream_dir)], f"pass {logdir} --tenant shop"),
        ([str(logdir), "--tenant", "typo"], "tenants with streams there: other, shop"),
        ([str(tmp_path / "logs-not-here"), "--tenant", "shop", "--json"], "no such log"),
    ):
        capsys.readouterr()
        code, text = run("verify", *argv)
        err = capsys.readouterr().err
        assert code == 2 and text == "", (argv, text)
        assert hint in err, err
    code, _ = run("verify", str(logdir / "shop"))
    err = capsys.readouterr().err
    assert code == 2
    assert f"nothing to verify: {logdir / 'shop'} holds no tenant with a log stream" in err
    assert "looks like the directory of tenant 'shop'" in err
    assert "DIR/<tenant>/<stream>/NNNNNNNN.log" in err
    code, _ = run("verify", str(stream_dir))
    assert code == 2
    assert f"looks like the directory of stream {stream_dir.name!r}" in capsys.readouterr().err
    code, _ = run("verify", str(logdir), "--tenant", "typo")
    assert code == 2 and "no log stream of tenant 'typo'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "sometenant").mkdir(parents=True)
    code, text = run("verify", str(empty))
    assert code == 2 and "OK" not in text
    assert run("verify", str(logdir))[0] == 1  # the real directory still fails


def test_read_search_query_stats_refuse_a_tenant_without_streams(
    logdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    for command, verb in ((["read"], "read"), (["search", "x"], "search"),
                          (["query", "{}"], "query"), (["stats"], "summarise")):
        directory, *rest = [str(logdir), *command[1:]]
        for argv in ([directory, *rest, "--tenant", "typo"], [str(logdir / "shop"), *rest]):
            code, text = run(command[0], *argv)
            assert code == 2 and text == "", (command, argv, text)
            assert f"nothing to {verb}:" in capsys.readouterr().err
        code, _ = run(command[0], str(logdir), *rest, "--tenant", "shop")
        assert code == 0


def test_key_env_is_repeatable_for_rotated_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from immutable_logging.crypto import generate_key

    key_a, key_b = generate_key(), generate_key()
    with ImmutableLogger(tmp_path, tenantId="rot", encryption_key=key_a) as log:
        log.info("under A")
    with ImmutableLogger(tmp_path, tenantId="rot", encryption_key=key_b,
                         previous_keys=[key_a]) as log:
        log.info("under B")
    monkeypatch.setenv("CLI_KEY_A", key_a)
    monkeypatch.setenv("CLI_KEY_B", key_b)
    monkeypatch.delenv("IMMUTABLE_LOG_PREVIOUS_KEYS", raising=False)
    code, text = run("read", str(tmp_path), "--key-env", "CLI_KEY_B", "--key-env", "CLI_KEY_A",
                     "--json")
    assert code == 0 and [e["message"] for e in orjson.loads(text)] == ["under A", "under B"]
    code, text = run("search", str(tmp_path), "under", "--key-env", "CLI_KEY_A",
                     "--key-env", "CLI_KEY_B", "--json")
    assert code == 0 and len(orjson.loads(text)) == 2
    code, _ = run("verify", str(tmp_path), "--parse", "--key-env", "CLI_KEY_B",
                  "--key-env", "CLI_KEY_A")
    assert code == 0
    # Key A missing: a reader given keys never shows entries it silently left encrypted.
    assert run("read", str(tmp_path), "--key-env", "CLI_KEY_B", "--json")[0] == 2
    assert run("search", str(tmp_path), "under", "--key-env", "CLI_KEY_B")[0] == 2
    monkeypatch.setenv("IMMUTABLE_LOG_PREVIOUS_KEYS", key_a)  # still honoured
    code, text = run("read", str(tmp_path), "--key-env", "CLI_KEY_B", "--json")
    assert code == 0 and [e["message"] for e in orjson.loads(text)] == ["under A", "under B"]
    monkeypatch.delenv("CLI_KEY_A")
    assert run("read", str(tmp_path), "--key-env", "CLI_KEY_B", "--key-env", "CLI_KEY_A")[0] == 2


@pytest.mark.parametrize("output", ["text", "json"])
def test_a_closed_stdout_exits_quietly(tmp_path: Path, logger_name: str, output: str) -> None:
    """``--json`` output goes out in one write: the kernel's short write when the reader
    leaves was taken for success (exit 0, output cut without a word)."""
    from .helpers import write_log

    write_log(tmp_path, logger_name, 3000)  # far more output than a pipe buffer holds
    root = Path(__file__).resolve().parent.parent
    extra = ["--json"] if output == "json" else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "immutable_logging.cli", "read", str(tmp_path), "--limit",
         "5000", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=root)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(1) == (b"[" if extra else b"t")
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-7", "utf-8", "latin-1"])
def test_large_output_after_small_output_decodes_whole(encoding: str) -> None:
    """Large texts bypass the text layer; after a small write, on a pipe in utf-16 or
    utf-8-sig that put a second BOM in the middle of the output (and broke utf-7's shift
    state)."""
    from immutable_logging.cli import _SMALL_WRITE, _Output

    small, large = "2 entries \u00e9\n", "x\u00e9" * _SMALL_WRITE + "\n"
    read_end, write_end = os.pipe()  # not seekable: the text layer writes its BOM first
    with open(read_end, "rb") as reader:
        with open(write_end, "w", encoding=encoding, newline="\n") as stream:
            output = _Output(stream)
            output.write(small)
            output.write(large)
            output.flush()
        data = reader.read()
    assert data.decode(encoding) == small + large


def test_read_level_accepts_numbers(logdir: Path) -> None:
    code, text = run("read", str(logdir), "--tenant", "shop", "--level", "26", "--json")
    assert code == 0 and [e["metadata"]["amount"] for e in orjson.loads(text)] == [1500, 20]
    code, text = run("read", str(logdir), "--level", "25", "--json")
    assert code == 0 and [e["message"] for e in orjson.loads(text)] == ["Role changed"]
    code, text = run("read", str(logdir), "--level", "audit", "--json")
    assert code == 0 and [e["message"] for e in orjson.loads(text)] == ["Role changed"]


def test_read_says_when_the_limit_cut_the_output(
    logdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code, text = run("read", str(logdir), "--tenant", "shop", "--limit", "2")
    err = capsys.readouterr().err
    assert code == 0 and "2 entries" in text and text.count("Order paid") == 1
    assert "only the first 2 matching entries are shown; more exist" in err
    assert "--limit N" in err
    code, text = run("read", str(logdir), "--tenant", "shop", "--limit", "1", "--newest-first",
                     "--json")
    assert code == 0 and [e["message"] for e in orjson.loads(text)] == ["Role changed"]
    assert "only the newest 1 matching entries" in capsys.readouterr().err
    code, text = run("read", str(logdir), "--tenant", "shop", "--limit", "4")
    assert code == 0 and "4 entries" in text and capsys.readouterr().err == ""
    assert run("read", str(logdir), "--limit", "-1")[0] == 2


def test_a_broken_pipe_elsewhere_is_not_taken_for_a_closed_stdout(
    tmp_path: Path, logger_name: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from .helpers import write_log

    write_log(tmp_path, logger_name, 3)

    def connection_gone(*args: object, **kwargs: object) -> None:
        raise BrokenPipeError(32, "Broken pipe")  # e.g. a backend's socket

    monkeypatch.setattr("immutable_logging.cli.verify_tenant", connection_gone)
    # A real error (exit 2, named on stderr), not a quiet exit 141.
    assert main(["verify", str(tmp_path)], out=io.StringIO()) == 2
    assert "BrokenPipeError: [Errno 32] Broken pipe" in capsys.readouterr().err


def test_a_path_that_cannot_be_used_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An uncaught OSError would exit 1, which the CLI uses for tampering."""
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    assert main(["keygen", str(afile / "logs"), "--tenant", "acme"], io.StringIO()) == 2
    assert f"{str(afile)!r} is a file, not a directory" in capsys.readouterr().err
    bucket = tmp_path / "bucket"
    with ImmutableLogger(tmp_path / "logs", tenantId="acme", enable_cloud_backup=True,
                         backup_directory=str(bucket)) as log:
        log.info("replicated")
        assert log.flush_backup()
    assert main(["restore", str(afile / "new"), "--tenant", "acme",
                 "--backup-directory", str(bucket)], io.StringIO()) == 2
    assert f"{str(afile)!r} is not a directory" in capsys.readouterr().err


def test_read_with_a_key_shows_every_entry_and_flags_an_altered_ciphertext(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from immutable_logging.crypto import generate_key

    key = generate_key()
    with ImmutableLogger(tmp_path, encryption_key=key) as log:
        for word in ("one", "two", "three"):
            log.info(word)
    [segment] = list_segments(list_streams(tmp_path / "default")[0])
    lines = read_lines(segment.path)
    entry = orjson.loads(lines[1])
    token = entry["enc"]
    entry["enc"] = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    write_lines(segment.path, [lines[0], orjson.dumps(entry) + b"\n", lines[2]])
    monkeypatch.setenv("CLI_READ_KEY", key)
    code, text = run("read", str(tmp_path), "--key-env", "CLI_READ_KEY")
    err = capsys.readouterr().err
    assert code == 1, err  # tampering, but the rest of the log is still shown
    assert "one" in text and "three" in text and "<cannot decrypt>" in text
    assert "seq 2" in err and "1 entries failed authentication" in err
    code, text = run("read", str(tmp_path), "--key-env", "CLI_READ_KEY", "--json")
    shown = orjson.loads(text)
    assert [e.get("message") for e in shown] == ["one", None, "three"]
    assert "authentication" in shown[1]["decryption_error"] and "enc" in shown[1]


def test_read_with_an_unknown_level_name_says_so(
    tmp_path: Path, logger_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from .helpers import write_log

    write_log(tmp_path, logger_name, 3)
    out = io.StringIO()
    assert main(["read", str(tmp_path), "--level", "BOGUS"], out) == 0
    assert "no entry has level 'BOGUS', which is not a level name" in capsys.readouterr().err
    assert main(["read", str(tmp_path), "--level", "audit"], io.StringIO()) == 0
    assert "not a level name" not in capsys.readouterr().err


def test_verify_leaves_out_a_sequence_number_it_does_not_know(
    tmp_path: Path, logger_name: str
) -> None:
    """A problem without a seq (a missing stream.json) was printed with "seq None"."""
    from .helpers import write_log

    write_log(tmp_path, logger_name, 3)
    [stream] = list_streams(tmp_path / "default")
    (stream / "stream.json").unlink()
    code, text = run("verify", str(tmp_path))
    assert code == 1 and "None" not in text
    assert f"FAIL malformed: file {stream / 'stream.json'}: " in text


def test_keygen_with_nothing_to_generate_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("keygen", str(tmp_path), "--no-seal")[0] == 2
    assert "leaves nothing to generate" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_tampered_ciphertext_exits_1_for_every_reading_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Damage exits 1 (as verify and read say it), a key not given 2."""
    from immutable_logging.crypto import generate_key

    key = generate_key()
    with ImmutableLogger(tmp_path, tenantId="e", encryption_key=key) as log:
        log.info("paid", {"amount": 3})
    segment = list_segments(list_streams(tmp_path / "e")[0])[0].path
    data = segment.read_bytes()
    at = data.index(b'"enc":"A256GCM.') + 60  # inside the base64 of the ciphertext
    segment.write_bytes(data[:at] + (b"B" if data[at:at + 1] != b"B" else b"C") + data[at + 1:])
    monkeypatch.setenv("CLI_TAMPER_KEY", key)
    for command in (["search", str(tmp_path), "paid"],
                    ["query", str(tmp_path), '{"metadata.amount": 3}'],
                    ["stats", str(tmp_path)]):
        capsys.readouterr()
        assert run(*command, "--key-env", "CLI_TAMPER_KEY")[0] == 1, command
        assert "DecryptionError" in capsys.readouterr().err
    monkeypatch.setenv("CLI_OTHER_KEY", generate_key())
    assert run("search", str(tmp_path), "paid", "--key-env", "CLI_OTHER_KEY")[0] == 2
    assert "KeyUnavailableError" in capsys.readouterr().err


def test_verify_with_a_wrong_passphrase_names_the_salt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with ImmutableLogger(tmp_path, tenantId="p", encryption_passphrase="right") as log:
        log.info("secret")
    monkeypatch.setenv("CLI_PASSPHRASE", "wrong")
    capsys.readouterr()
    assert run("verify", str(tmp_path), "--passphrase-env", "CLI_PASSPHRASE")[0] == 2
    err = capsys.readouterr().err
    assert "a wrong passphrase, or a salt file" in err and "--key-env" not in err


def test_reading_commands_show_what_a_killed_process_left_in_its_journal(
    tmp_path: Path, logger_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A kill right after a rotation: the active segment is empty on disk, its entries are
    # only in the journal.
    stream_dir = write_log_and_kill(tmp_path, logger_name, 40, stream="app", max_bytes=3_000)
    assert list_segments(stream_dir)[-1].path.stat().st_size == 0
    code, text = run("read", str(tmp_path), "--limit", "100", "--json")
    assert code == 0 and [e["seq"] for e in orjson.loads(text)] == list(range(1, 41))
    code, text = run("read", str(tmp_path), "--newest-first", "--limit", "1")
    assert code == 0 and "event 39" in text
    code, text = run("search", str(tmp_path), "event 39", "--json")
    assert code == 0 and [e["seq"] for e in orjson.loads(text)] == [40]
    code, text = run("query", str(tmp_path), '{"metadata.index": {"$gte": 38}}', "--json")
    assert code == 0 and [e["message"] for e in orjson.loads(text)] == ["event 38", "event 39"]
    code, text = run("stats", str(tmp_path), "--json")
    assert code == 0 and orjson.loads(text)["total_entries"] == 40
    assert "left out" not in capsys.readouterr().err  # nothing is damage
