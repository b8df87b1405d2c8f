"""`immutable-log sync-status` and `restore` against the local bucket and moto S3."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import orjson
import pytest

from immutable_logging import ImmutableLogger
from immutable_logging.cli import main

from .helpers import assert_sync_fields_agree
from .servers import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY, MotoServer, create_s3_bucket

pytest_plugins = ["tests.servers"]


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out), out.getvalue()


@pytest.fixture
def replicated(tmp_path: Path) -> tuple[Path, Path, str]:
    logs, bucket = tmp_path / "logs", tmp_path / "bucket"
    with ImmutableLogger(logs, tenantId="acme", enable_cloud_backup=True,
                         backup_directory=str(bucket), backup_batch_size=7) as log:
        for i in range(30):
            log.audit(f"event {i}", {"i": i})
        assert log.flush_backup()
        wanted = log.read(limit=1, offset=12)[0]["hash"]
    return logs, bucket, wanted


def test_sync_status_and_restore_local_bucket(
    replicated: tuple[Path, Path, str], tmp_path: Path
) -> None:
    logs, bucket, wanted = replicated
    code, text = run("sync-status", str(logs), "--backup-directory", str(bucket))
    assert code == 0 and "synced" in text and "100.0%" in text
    code, text = run("sync-status", str(logs), "--backup-directory", str(bucket), "--json")
    result = orjson.loads(text)["acme"]
    assert code == 0 and result["cloud_blocks"] == 30 and result["in_replica"] is True
    code, text = run("restore", str(tmp_path / "restored"), "--tenant", "acme",
                     "--backup-directory", str(bucket))
    assert code == 0 and "30 entries" in text and "verified: OK" in text
    code, text = run("restore", str(tmp_path / "x"), "--tenant", "acme",
                     "--backup-directory", str(bucket), "--block-hash", wanted)
    assert code == 0 and orjson.loads(text)["metadata"] == {"i": 12}
    assert run("restore", str(tmp_path / "restored"), "--tenant", "acme",
               "--backup-directory", str(bucket))[0] == 2  # not empty any more
    assert run("restore", str(tmp_path / "y"), "--tenant", "acme")[0] == 2  # no bucket given


def test_sync_status_reports_a_damaged_replica(replicated: tuple[Path, Path, str]) -> None:
    logs, bucket, _ = replicated
    batch = sorted(bucket.rglob("*.jsonl.gz"))[1]
    batch.chmod(0o600)
    batch.write_bytes(b"not gzip at all")
    code, text = run("sync-status", str(logs), "--backup-directory", str(bucket))
    assert code == 1 and "corrupt_object" in text and batch.name in text


def test_sync_status_of_a_lost_local_log_does_not_call_a_sound_replica_damaged(
    replicated: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the DR audit: after the local disk was lost, sync-status --tenant called
    the healthy replica "corrupted" (exit 1, a damaged replica), because every entry was
    missing locally."""
    _, bucket, _ = replicated
    empty = tmp_path / "new-disk"
    empty.mkdir()
    capsys.readouterr()
    code, text = run("sync-status", str(empty), "--tenant", "acme", "--backup-directory",
                     str(bucket))
    err = capsys.readouterr().err
    assert code == 2, (text, err)
    assert "holds nothing of tenant 'acme'; the replica" in err and "30 of its entries" in err
    assert f"restore NEWDIR --tenant acme --backup-directory {bucket}`" in err
    assert "local_lost" in text and "corrupted" not in text and "FAIL" not in text
    # Without --tenant: the tenants of the replica are reported too, and the hint works.
    code, text = run("sync-status", str(empty), "--backup-directory", str(bucket))
    err = capsys.readouterr().err
    assert code == 2 and "local_lost" in text and "restore NEWDIR --tenant acme" in err
    code, _ = run("restore", str(tmp_path / "rebuilt"), "--tenant", "acme",
                  "--backup-directory", str(bucket))
    assert code == 0


#: The columns of sync-status's table and the --json fields they show (see --help).
_COLUMNS = {"local": "local_blocks", "in replica": "remote_entries",
            "matching": "cloud_blocks", "differing": "differing_blocks",
            "not in replica": "missing_blocks", "only in replica": "remote_only_blocks",
            "synced": "sync_percentage", "status": "sync_status"}


def _rows(text: str) -> dict[str, dict[str, str]]:
    """sync-status's table: for each tenant, its cells by column."""
    header, _, *rows = [line for line in text.splitlines()
                        if not line.startswith(("FAIL", "replica:"))]
    columns = re.split(r"\s{2,}", header)
    return {cells[0]: dict(zip(columns, cells, strict=True))
            for cells in (re.split(r"\s{2,}", row) for row in rows)}


@pytest.mark.parametrize(("situation", "code", "state"), [
    ("in sync", 0, "synced"), ("behind", 0, "partial"), ("local lost", 2, "local_lost"),
    ("diverged", 1, "corrupted"),
])
def test_sync_status_text_and_json_say_the_same(
    replicated: tuple[Path, Path, str], tmp_path: Path, situation: str, code: int,
    state: str,
) -> None:
    """Found by review: with the local log lost, --json said "corrupted" and 100 % synced
    while the table said "local log gone", and cloud_blocks 0 next to remote_entries 33
    explained nothing. Each field means one thing, the table shows the same values, and
    the help names the field behind each column (below)."""
    logs, bucket, _ = replicated
    if situation == "behind":
        with ImmutableLogger(logs, tenantId="acme") as log:  # not replicated
            for i in range(3):
                log.audit(f"later {i}")
    elif situation in ("local lost", "diverged"):
        shutil.rmtree(logs / "acme")
    if situation == "diverged":  # a new log on the lost disk, same stream name
        with ImmutableLogger(logs, tenantId="acme") as log:
            for i in range(12):
                log.audit(f"other {i}")
    options = [str(logs), "--backup-directory", str(bucket)]
    text_code, text = run("sync-status", *options)
    json_code, output = run("sync-status", *options, "--json")
    result = orjson.loads(output)["acme"]
    assert text_code == json_code == code and result["sync_status"] == state, result
    assert_sync_fields_agree(result)
    row = _rows(text)["acme"]
    shown = {column: str(result[field]) + ("%" if field == "sync_percentage" else "")
             for column, field in _COLUMNS.items()}
    assert row == {"tenant": "acme", **shown}
    if situation == "local lost":  # what review found, in numbers
        assert (result["remote_entries"], result["remote_only_blocks"]) == (30, 30)
        assert (result["cloud_blocks"], result["sync_percentage"]) == (0, 0.0)


def test_sync_status_help_names_the_field_of_each_column(
    capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        run("sync-status", "--help")
    help_text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert all(f"{column} {field}" in help_text for column, field in _COLUMNS.items())
    assert all(state in help_text for state in
               ("synced", "partial", "not_synced", "local_lost", "corrupted"))


def test_restoring_from_a_damaged_replica_exits_1_like_sync_status(
    replicated: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, bucket, _ = replicated
    batch = sorted(bucket.rglob("*.jsonl.gz"))[1]
    batch.chmod(0o600)
    batch.write_bytes(b"not gzip at all")
    capsys.readouterr()
    code, _ = run("restore", str(tmp_path / "new"), "--tenant", "acme",
                  "--backup-directory", str(bucket))
    assert code == 1 and "RemoteIntegrityError" in capsys.readouterr().err


def test_sync_status_against_s3(moto_server: MotoServer, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    create_s3_bucket(moto_server, "cli-logs")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET_KEY)
    with ImmutableLogger(tmp_path / "logs", enable_cloud_backup=True, backup_provider="s3",
                         s3_bucket="cli-logs", s3_region="us-east-1",
                         s3_endpoint_url=moto_server.endpoint_url) as log:
        log.info("to s3")
        assert log.flush_backup()
    code, text = run("sync-status", str(tmp_path / "logs"), "--provider", "s3", "--bucket",
                     "cli-logs", "--region", "us-east-1", "--endpoint-url",
                     moto_server.endpoint_url)
    assert code == 0 and "synced" in text and "s3://cli-logs" in text


def test_restoring_a_tenant_the_replica_lacks_is_an_error(
    replicated: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from immutable_logging.errors import ReplicationError

    _, bucket, _ = replicated
    target = tmp_path / "new"
    code, text = run("restore", str(target), "--tenant", "nosuch", "--backup-directory",
                     str(bucket))
    err = capsys.readouterr().err
    assert code == 2 and "verified" not in text
    assert "ObjectNotFoundError" in err and "tenant 'nosuch'" in err and bucket.name in err
    assert not target.exists()
    with ImmutableLogger(tmp_path / "other-logs", tenantId="nosuch", enable_cloud_backup=True,
                         backup_directory=str(bucket)) as log, \
            pytest.raises(ReplicationError, match="no entries of tenant 'nosuch'"):
        log.restore_from_cloud(target)
    assert not target.exists()


def test_the_facade_refuses_to_restore_into_its_own_directory(
    replicated: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """Found by the DR audit: after a lost disk, a logger opened on the empty directory and
    asked to restore into it was refused with "holds streams" (its own new stream)."""
    from immutable_logging.errors import ConfigurationError

    _, bucket, _ = replicated
    logs = tmp_path / "lost"
    with ImmutableLogger(logs, tenantId="acme", enable_cloud_backup=True,
                         backup_directory=str(bucket)) as log:
        with pytest.raises(ConfigurationError, match=r"writes its own stream there\. Restore "
                           r"before opening a logger on it \(`immutable-log restore"):
            log.restore_from_cloud(str(logs) + "/")
        restored = log.restore_from_cloud(tmp_path / "elsewhere")
    assert restored is not None and restored["verified"] and restored["entries"] == 30


def test_restore_block_hash_needs_no_newdir_and_decrypts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from immutable_logging.crypto import generate_key

    key = generate_key()
    bucket = tmp_path / "bucket"
    with ImmutableLogger(tmp_path / "logs", tenantId="enc", encryption_key=key,
                         enable_cloud_backup=True, backup_directory=str(bucket)) as log:
        log.audit("secret event", {"card": "4111"})
        assert log.flush_backup()
        wanted = log.read(limit=1)[0]["hash"]
    common = ["--tenant", "enc", "--backup-directory", str(bucket), "--block-hash", wanted]
    code, text = run("restore", *common)
    entry = orjson.loads(text)
    assert code == 0 and entry["hash"] == wanted and "enc" in entry and "message" not in entry
    monkeypatch.setenv("CLI_RESTORE_KEY", key)
    code, text = run("restore", *common, "--key-env", "CLI_RESTORE_KEY")
    entry = orjson.loads(text)
    assert code == 0 and entry["message"] == "secret event"
    assert entry["metadata"] == {"card": "4111"}
    capsys.readouterr()
    code, _ = run("restore", "--tenant", "enc", "--backup-directory", str(bucket))
    assert code == 2 and "restore needs NEWDIR" in capsys.readouterr().err


def test_sync_status_of_a_missing_replica_is_an_error(
    replicated: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs, _, _ = replicated
    missing = tmp_path / "no-such-bucket"
    capsys.readouterr()
    code, text = run("sync-status", str(logs), "--backup-directory", str(missing))
    err = capsys.readouterr().err
    assert code == 2 and "not_synced" not in text
    assert f"replica not found ({missing.as_uri()})" in err and "does not exist" in err
    code, _ = run("restore", str(tmp_path / "new"), "--tenant", "acme", "--backup-directory",
                  str(missing))
    assert code == 2 and "replica not found" in capsys.readouterr().err
    assert not missing.exists() and not (tmp_path / "new").exists()


def test_sync_status_of_a_tenant_the_replica_lacks_is_an_error(
    replicated: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs, bucket, _ = replicated
    capsys.readouterr()
    code, text = run("sync-status", str(logs), "--tenant", "nosuch",
                     "--backup-directory", str(bucket))
    err = capsys.readouterr().err
    assert code == 2 and "synced" not in text
    assert "holds nothing of tenant 'nosuch'" in err and f"nor does {logs}" in err
    empty = tmp_path / "empty-bucket"
    empty.mkdir()
    code, text = run("sync-status", str(logs), "--backup-directory", str(empty))
    err = capsys.readouterr().err
    assert code == 2 and "not_synced" not in text
    assert "holds nothing of tenant 'acme'" in err and "holds 30 of its entries" in err
    code, text = run("sync-status", str(logs), "--backup-directory", str(empty), "--json")
    result = orjson.loads(text)["acme"]  # --json lists the tenant the replica lacks too
    assert code == 2 and result["in_replica"] is False and result["local_blocks"] == 30
    assert "holds nothing of tenant 'acme'" in capsys.readouterr().err


def test_sync_status_of_another_log_with_the_same_stream_name(
    replicated: tuple[Path, Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fresh log directory on the same host replicating to the same bucket: its stream
    has the same name as the replicated one. Nothing of it is replicated (and the status
    says so), and sync-status reports the disagreement once, not once per entry."""
    _, bucket, _ = replicated
    other = tmp_path / "other-logs"
    with ImmutableLogger(other, tenantId="acme", enable_cloud_backup=True,
                         backup_directory=str(bucket), backup_batch_size=7) as log:
        for i in range(12):
            log.audit(f"other {i}")
        assert not log.flush_backup()
        status = log.handler.replicator.status  # type: ignore[union-attr]
    assert status.state == "stopped"
    assert (status.replicated_seq, status.pending_entries) == (0, 12)
    assert "12 entries are not replicated" in caplog.text
    code, text = run("sync-status", str(other), "--backup-directory", str(bucket))
    fails = [line for line in text.splitlines() if line.startswith("FAIL")]
    assert code == 1 and len(fails) == 2, text
    assert "differs_from_local" in fails[0] and "12 entries (first at seq 1, last at seq 12)" \
        in fails[0]
    assert "missing_locally" in fails[1]
    header, row = text.splitlines()[:3:2]
    assert header.split()[:5] == ["tenant", "local", "in", "replica", "matching"]
    assert row.split()[:4] == ["acme", "12", "30", "0"]


def test_cloud_option_errors_name_the_cli_flags(
    replicated: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs, bucket, wanted = replicated
    monkeypatch.delenv("S3_BUCKET", raising=False)
    monkeypatch.delenv("BACKUP_PROVIDER", raising=False)
    capsys.readouterr()
    assert run("sync-status", str(logs), "--provider", "s3")[0] == 2
    assert "--provider s3 needs --bucket B (or S3_BUCKET)" in capsys.readouterr().err
    # The hash exists, under tenant acme: without --tenant only 'default' is searched.
    assert run("restore", "--backup-directory", str(bucket), "--block-hash", wanted)[0] == 2
    assert "of tenant 'default' (the default tenant; pass --tenant T)" in (
        capsys.readouterr().err)


def test_sync_status_reports_a_damaged_replica_before_a_tenant_it_lacks(
    replicated: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    logs, bucket, _ = replicated
    batch = sorted(bucket.rglob("*.jsonl.gz"))[1]
    batch.chmod(0o600)
    batch.write_bytes(b"not gzip at all")
    with ImmutableLogger(logs, tenantId="beta") as log:  # local only, never replicated
        log.info("not replicated")
    capsys.readouterr()
    code, text = run("sync-status", str(logs), "--backup-directory", str(bucket))
    err = capsys.readouterr().err
    assert code == 1 and "corrupt_object" in text and "acme" in text
    assert "holds nothing of tenant 'beta'" in err
