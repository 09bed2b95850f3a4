"""The benchmark harness (issue 9) at the tiny scale, so that it cannot rot.

`python -m benchmarks.run` is run end to end (seed, every section, results files) on a tiny
world with small batch sizes. Timings are machine-dependent and never asserted: only that the
run succeeds, writes `latest.json` and `latest.md` where it is told, and that every row has the
documented shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, need_postgres

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROW_KEYS = {"name", "value", "unit", "baseline", "ratio", "target", "met", "peak_mb"}
SECTIONS = {
    "world",
    "log_index",
    "deletion",
    "logs",
    "retention",
    "access",
    "stats",
    "memory",
    "harness",
}


def _number(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def test_tiny_run_writes_every_figure(tmp_path: Path) -> None:
    need_postgres()
    out = tmp_path / "results"
    readme = (REPO / "benchmarks" / "README.md").read_bytes()
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--scale",
        "tiny",
        "--requests",
        "1,3",
        "--naive",
        "1",
        "--access",
        "1,2",
        "--repeat",
        "1",
        # every section but celery: tests/e2e/test_celery_run.py runs that stack (minutes here)
        "--only",
        "log_index",
        "deletion",
        "logs",
        "retention",
        "access",
        "stats",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]

    doc = json.loads((out / "latest.json").read_text())
    assert doc["scale"] == "tiny"
    assert doc["contacts"] > 0
    rows = doc["rows"]
    assert rows
    for row in rows:
        assert row.keys() >= ROW_KEYS, row
        assert isinstance(row["name"], str) and row["name"]
        assert isinstance(row["unit"], str)
        assert row["target"] is None or isinstance(row["target"], str)
        assert row["met"] in (None, True, False)
        for key in ("value", "baseline", "ratio", "peak_mb"):
            assert _number(row[key]), (key, row)
        assert not str(row.get("note", "")).startswith("failed"), row
    assert {r["section"] for r in rows} >= SECTIONS
    targeted = [r for r in rows if r["target"]]
    assert targeted and all(r["met"] is not None for r in targeted)
    memory = next(r for r in rows if r["section"] == "memory")
    assert memory["value"] > 0
    # issue 19: the sum over every process of the stage, PostgreSQL and the S3 server included
    assert memory["name"] == "peak memory, all processes"
    parts = memory["peak_parts"]
    assert parts.keys() == {"workers", "postgres", "s3"}
    assert parts["workers"] > 0 and parts["postgres"] > 0 and parts["s3"] > 0
    assert memory["value"] == pytest.approx(sum(parts.values()), abs=0.05)

    md = (out / "latest.md").read_text()
    assert "| Section | Figure | Value |" in md
    assert md.count("\n| ") >= len(rows)
    # a run told to write elsewhere leaves the committed results and README alone
    assert (REPO / "benchmarks" / "README.md").read_bytes() == readme
