"""`make bench` must keep working: a smoke run at small sizes (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_run_reports_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert "x FileHandler" in done.stdout and str(out) in done.stdout
    logging_rows = results["logging"]
    assert any("FileHandler" in name for name in logging_rows)
    assert all(row["ratio_vs_filehandler"] > 0 for row in logging_rows.values())
    big = results["big_log"]
    entries = big["entries"]
    # The benchmark log: amount = i % 5000, so each 5000 entries hold 10 amounts >= 4990
    # and 3 of [4990, 4995, 4999]; the search needle is the last message, the regex matches
    # the last 10.
    expected_hits = {"search (1 hit)": 1, "query amount>=4990 (number filter)": entries // 500,
                     "query amount $in (number filter)": 3 * entries // 5000,
                     "query message $regex (full parse)": 10}
    for label, hits in expected_hits.items():
        for workers in ("1", "auto"):
            assert big[f"{label}, workers={workers}"]["hits"] == hits, label
    for row in (v for k, v in big.items() if k.startswith("verify")):
        assert row["entries_per_s"] > 0
    for name, row in results["replication"].items():
        assert "skipped" in row or row["entries_per_s"] > 0, name
