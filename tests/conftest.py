"""Shared fixtures: real services only (moto server, SQLite files, PostgreSQL databases).

Airflow's environment is set before anything imports it (see airflow-3.3 notes): an isolated
AIRFLOW_HOME and our dags folder. PostgreSQL tests create a uniquely named database and drop it;
when the service is missing they skip, except in CI (CI=true) where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sqlalchemy import Engine

REPO = Path(__file__).resolve().parents[1]
_AF_HOME = Path(tempfile.mkdtemp(prefix="cj-airflow-"))
# Each pytest-xdist worker gets its own Airflow home (and so its own metadata DB): workers inherit
# the controller's environment, and two workers resetting one SQLite metadata DB break each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["AIRFLOW_HOME"] = str(_AF_HOME)
else:
    os.environ.setdefault("AIRFLOW_HOME", str(_AF_HOME))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Four-eyes approval (docs/approvals.md): the suite's manual `dag.test()` runs are real runs that
# nobody answers, so the manual-run and retention-rules triggers are off for the suite;
# tests/e2e/test_four_eyes.py turns them on (client offboarding always asks: its tests answer).
os.environ.setdefault("COMPLIANCE_APPROVAL_MANUAL_RUNS", "off")
os.environ.setdefault("COMPLIANCE_APPROVAL_RETENTION_RULES", "off")

# The crash tests arm COMPLIANCE_FAULTS; the dev package's hook listens to the jobs' checkpoints
# in every test process (the product never installs it).
from compliance_dev import faults  # noqa: E402

faults.enable()

PG_ADMIN_URL = os.environ.get(
    "COMPLIANCE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pg_available() -> str | None:
    from sqlalchemy import create_engine, text

    try:
        eng = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("select 1"))
        eng.dispose()
        return None
    except Exception as exc:  # any failure means: no usable service
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}"


def need_postgres() -> None:
    reason = _pg_available()
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, shared by the test session."""
    from compliance_dev import local_s3

    server, url = local_s3.start()
    os.environ["COMPLIANCE_TEST_S3"] = url
    yield url
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str):
    """A boto3 client on the moto server; buckets are wiped after each test."""
    from compliance.core.stores.s3 import s3_client

    client = s3_client(endpoint_url=s3_endpoint, access_key="testing", secret_key="testing")
    yield client
    for bucket in client.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        paginator = client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=name):
            items = page.get("Versions", []) + page.get("DeleteMarkers", [])
            for item in items:
                client.delete_object(Bucket=name, Key=item["Key"], VersionId=item["VersionId"])
        client.delete_bucket(Bucket=name)


@contextlib.contextmanager
def fresh_pg_database() -> Iterator[str]:
    """Create a uniquely named PostgreSQL database; drop it afterwards."""
    need_postgres()
    from sqlalchemy import create_engine, text

    name = f"cj_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def state_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """The compliance state DB on the same backend as `db_url`, in its own database."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'crm.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs a test on both SQL backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'crm.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def state_engine(db_url: str) -> Iterator[Engine]:
    """A fresh compliance state DB (`create_state_schema`) on `db_url`'s backend, so on both
    SQLite and PostgreSQL; disposed afterwards. A module with other needs defines its own."""
    from compliance.core.stores.sql import engine_from_url
    from compliance.requests import state

    eng = engine_from_url(db_url)
    state.create_state_schema(eng)
    yield eng
    eng.dispose()


def airflow_conn_env(name: str, conn: dict) -> None:
    os.environ[f"AIRFLOW_CONN_{name.upper()}"] = json.dumps(conn)


@pytest.fixture
def approvals_bypassed(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests that call the task functions directly, past the DAG's four-eyes gate (the
    crash matrix, offboarding's reliability tests): the destructive steps' check of the
    approval's ledger entry is switched off. The gate and that check have their own tests
    (tests/e2e/test_four_eyes.py, tests/unit/test_desk_approvals.py)."""
    from compliance.desk import approvals

    monkeypatch.setattr(approvals, "require", lambda *_args, **_kwargs: None)
