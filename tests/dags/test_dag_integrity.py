"""Conventions every DAG must follow, enforced so nobody has to remember them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted(p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))
# Every DAG carries "compliance" plus exactly one area tag from this taxonomy.
AREAS = {"inventory", "deletion", "access", "retention", "statistics", "operations"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dag_files_exist():
    assert DAG_FILES, "no DAG files found"


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert len(dagbag.dags) >= len(DAG_FILES)


def test_each_dag_file_defines_a_dag_with_its_name(dagbag):
    for path in DAG_FILES:
        assert path.stem in dagbag.dags, f"{path.name} should define DAG {path.stem!r}"


def _dags(dagbag):
    return [dagbag.dags[p.stem] for p in DAG_FILES]


def test_owner_tags_docs(dagbag):
    for dag in _dags(dagbag):
        assert dag.owner not in ("", "airflow"), f"{dag.dag_id}: set a real owner"
        tags = set(dag.tags)
        assert "compliance" in tags, f"{dag.dag_id}: missing the 'compliance' tag"
        assert len(tags & AREAS) == 1, f"{dag.dag_id}: needs exactly one area tag of {AREAS}"
        assert tags <= AREAS | {"compliance"}, f"{dag.dag_id}: tags outside the taxonomy"
        assert dag.doc_md and len(dag.doc_md.strip()) > 80, f"{dag.dag_id}: document it (doc_md)"


def test_retries_backoff_and_failure_callback(dagbag):
    for dag in _dags(dagbag):
        for task in dag.tasks:
            where = f"{dag.dag_id}.{task.task_id}"
            assert task.retries >= 2, f"{where}: retries >= 2"
            assert task.retry_exponential_backoff and task.retry_exponential_backoff > 1, (
                f"{where}: exponential backoff"
            )
            assert task.max_retry_delay and task.max_retry_delay <= timedelta(hours=1)
            assert task.on_failure_callback, f"{where}: on_failure_callback"


def test_scheduled_dags_do_not_catch_up(dagbag):
    for dag in _dags(dagbag):
        if dag.timetable.can_be_scheduled:
            assert dag.catchup is False, f"{dag.dag_id}: catchup must be False"
            assert dag.max_active_runs == 1, f"{dag.dag_id}: one run at a time"


# Libraries that make a DAG file slow to parse (the dag-processor re-parses every file every
# few seconds): the jobs import them inside the task functions that need them.
HEAVY_AT_PARSE = {"pandas", "numpy", "matplotlib", "pyarrow", "moto", "playwright", "scipy"}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_import_has_no_io_and_no_heavy_library(path):
    """Parse time must not touch the network, databases or S3, nor load a heavy library.

    Deterministic on purpose: a wall-clock limit failed on a loaded machine while the code was
    fine (speed is measured in benchmarks/, never asserted in tests)."""
    probe = textwrap.dedent(
        f"""
        import json, socket, sys, runpy
        import airflow.sdk, compliance_alerts, compliance.runtime  # warm shared imports
        import boto3, sqlalchemy
        def refuse(*a, **k):
            raise RuntimeError("I/O at import time")
        socket.socket.connect = refuse
        boto3.client = boto3.resource = refuse
        sqlalchemy.create_engine = refuse
        before = set(sys.modules)
        runpy.run_path({str(path)!r})
        print(json.dumps(sorted({{m.split(".")[0] for m in set(sys.modules) - before}})))
        """
    )
    env_path = f"{REPO / 'plugins'}"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": env_path},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & HEAVY_AT_PARSE, f"{path.name} loads {sorted(loaded & HEAVY_AT_PARSE)}"
