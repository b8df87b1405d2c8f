"""`make demo` must keep working: run it end to end in a temporary directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_verifies_the_log_and_catches_the_tampered_copy(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: every stream verified" in result.stdout
    assert "FAIL hash_mismatch" in result.stdout and "seq 4" in result.stdout
    assert "original: exit 0 (0 = verified), tampered copy: exit 1 (1 = caught)" in result.stdout
