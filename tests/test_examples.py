"""Every example script runs as a program, writes a verifiable chain and reports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from immutable_logging.query import iter_entries
from immutable_logging.verify import verify_tenant

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(script: Path, log_dir: Path, *, via_env: bool = False) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter; return its JSON summary (last stdout line)."""
    env = {k: v for k, v in os.environ.items() if k not in ("IMMUTABLE_LOG_DIR",
                                                             "DJANGO_SETTINGS_MODULE")}
    args = [sys.executable, str(script)]
    if via_env:
        env["IMMUTABLE_LOG_DIR"] = str(log_dir)
    else:
        args.append(str(log_dir))
    proc = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["directory"] == str(log_dir)
    return summary


def verified_entries(log_dir: Path, tenant: str) -> list[dict[str, Any]]:
    report = verify_tenant(log_dir, tenant, parse=True)
    assert report.ok, report.problems
    assert report.streams, f"no stream written for {tenant}"
    return list(iter_entries(log_dir, tenant))


def test_dictconfig_example(tmp_path: Path) -> None:
    summary = run_example(EXAMPLES / "dictconfig_example.py", tmp_path)
    entries = verified_entries(tmp_path, "dictconfig-demo")
    assert summary["verified"] is True and summary["entries"] == len(entries) == 4
    assert [e["level"] for e in entries] == ["INFO", "AUDIT", "REVENUE", "ERROR"]
    audit = entries[1]
    assert audit["message"] == "invoice approved by alice"
    assert audit["metadata"] == {"invoice": "INV-1"}
    assert audit["func"] == "main" and audit["logger"] == "app.billing"
    assert "TimeoutError: payment gateway timed out" in entries[3]["exc"]


def test_dictconfig_example_directory_from_env(tmp_path: Path) -> None:
    summary = run_example(EXAMPLES / "dictconfig_example.py", tmp_path, via_env=True)
    assert summary["entries"] == len(verified_entries(tmp_path, "dictconfig-demo")) == 4


def test_queue_handler_example(tmp_path: Path) -> None:
    summary = run_example(EXAMPLES / "queue_handler_example.py", tmp_path)
    entries = verified_entries(tmp_path, "queue-demo")
    assert summary["entries"] == len(entries) == 4 * 250 + 1
    audits = [e for e in entries if e["level"] == "AUDIT"]
    assert len(audits) == 1000
    assert {(e["metadata"]["worker"], e["metadata"]["job"]) for e in audits} == {
        (w, j) for w in range(4) for j in range(250)
    }
    assert all(e["func"] == "work" for e in audits)
    assert audits[0]["message"] == (
        f"job {audits[0]['metadata']['job']} of worker {audits[0]['metadata']['worker']} done"
    )
    [failure] = [e for e in entries if e["level"] == "ERROR"]
    # The traceback stays in `exc`, not flattened into the message.
    assert failure["message"] == "publishing failed"
    assert "ConnectionError: broker unreachable" in failure["exc"]
    assert failure["metadata"] == {"queue": "events"}


def test_structlog_example(tmp_path: Path) -> None:
    pytest.importorskip("structlog")
    summary = run_example(EXAMPLES / "structlog_example.py", tmp_path)
    for tenant in ("structlog-native", "structlog-stdlib"):
        entries = verified_entries(tmp_path, tenant)
        assert summary[tenant]["entries"] == len(entries) == 5
        assert [e["level"] for e in entries] == ["INFO", "AUDIT", "REVENUE", "SECURITY", "ERROR"]
        revenue = entries[2]
        assert revenue["message"] == "order paid"
        assert revenue["metadata"]["amount"] == "50.91"
        assert revenue["metadata"]["request_id"] == "req-7"
        assert revenue["func"] == "business_logic"
        assert "PermissionError: token expired" in entries[4]["exc"]
    native = verified_entries(tmp_path, "structlog-native")
    assert {e["logger"] for e in native} == {"shop.native"}
    assert "at" in native[0]["metadata"]  # TimeStamper's key is a field like any other


def test_flask_example(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    summary = run_example(EXAMPLES / "flask_app.py", tmp_path)
    entries = verified_entries(tmp_path, "flask-demo")
    assert summary["statuses"] == [200, 400, 200]
    assert [e["level"] for e in entries] == ["REVENUE", "SECURITY", "INFO"]
    assert entries[0]["metadata"] == {"order_id": 1, "amount_cents": 1999}
    assert entries[0]["func"] == "pay"


def test_django_example(tmp_path: Path) -> None:
    pytest.importorskip("django")
    summary = run_example(EXAMPLES / "django_project" / "run_demo.py", tmp_path)
    entries = verified_entries(tmp_path, "django-demo")
    assert summary["statuses"] == [200, 200, 404]
    assert [e["level"] for e in entries] == ["AUDIT", "AUDIT", "WARNING"]
    assert [e["metadata"] for e in entries[:2]] == [
        {"order_id": 7, "actor": "alice"},
        {"order_id": 8, "actor": "bob"},
    ]
    assert entries[0]["logger"] == "audit_app.views" and entries[0]["func"] == "approve_refund"
    assert entries[2]["logger"] == "django.request"
    assert entries[2]["metadata"]["status_code"] == 404
