"""Fixtures for the reliability suite: the e2e stack (SQLite only) and the resettable world.

The e2e fixtures are reused, not copied: `stack` (Airflow wired to a seeded world), its session
fixtures, and the ESP webhook receiver. Reliability runs on SQLite unless a test asks for
PostgreSQL itself (test_db_faults.py), to keep CI time low.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from compliance.core.datamap.model import DataMap
from compliance.core.datamap.validate import load_datamap
from compliance.core.stores.sql import engine_from_url
from tests.e2e.conftest import _Receiver, airflow_db, esp_webhook, stack  # noqa: F401

from .demo import Demo, full_demo
from .harness import Pristine, World, admin_client, build_pristine, deletion_inbox, wipe_bucket


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only here (the e2e suite covers both backends)."""
    return f"sqlite:///{tmp_path / 'crm.db'}"


@pytest.fixture(scope="session")
def world_map(request: pytest.FixtureRequest) -> DataMap:
    """The demo data map, its ESP webhook pointing at the local receiver."""
    request.getfixturevalue("esp_webhook")  # starts the receiver, writes the map's copy
    return load_datamap(_Receiver.datamap)


@pytest.fixture(scope="session")
def pristine(s3_endpoint: str, world_map: DataMap, tmp_path_factory) -> Pristine:
    """The tiny world seeded once per session; each scenario restores it (~0.5 s, not ~2 s)."""
    return build_pristine(s3_endpoint, world_map, tmp_path_factory.mktemp("pristine"))


@pytest.fixture(scope="module")
def buckets_wiped_after_module(s3_endpoint: str) -> Iterator[None]:
    """Like the root `s3` fixture's clean-up, once per module instead of once per test: a
    world's reset puts back only the buckets a run changed, which is most of its speed."""
    yield
    admin = admin_client(s3_endpoint)
    for bucket in admin.list_buckets().get("Buckets", []):
        wipe_bucket(admin, bucket["Name"])
        admin.delete_bucket(Bucket=bucket["Name"])


@pytest.fixture
def world(
    pristine, world_map, s3_endpoint, buckets_wiped_after_module, tmp_path
) -> Iterator[World]:
    """A world restorable to pristine, with the deletion requests in its inbox."""
    w = World(pristine, world_map, s3_endpoint, tmp_path, _Receiver.received)
    w.inbox = deletion_inbox(pristine.crm_file)
    yield w
    for eng in w.engines:
        eng.dispose()


@pytest.fixture(scope="session")
def demo(s3_endpoint: str, tmp_path_factory, request: pytest.FixtureRequest) -> Demo:
    """The full demo (tests/reliability/demo.py), run once per session and kept in memory.

    Its own stack (the e2e `stack` is per test): a seeded tiny world on SQLite files, Airflow's
    connections pointing at it, the moto server; every bucket is wiped before and after.
    """
    from compliance import runtime
    from compliance_dev.world.generate import seed_world
    from tests.e2e.conftest import AS_OF, REPO, Stack, _conn_env

    request.getfixturevalue("airflow_db")  # the metadata DB, reset once
    request.getfixturevalue("esp_webhook")
    tmp = tmp_path_factory.mktemp("demo")
    db_url, state_url = f"sqlite:///{tmp / 'crm.db'}", f"sqlite:///{tmp / 'state.db'}"
    admin = admin_client(s3_endpoint)

    def wipe() -> None:
        for bucket in admin.list_buckets().get("Buckets", []):
            wipe_bucket(admin, bucket["Name"])
            admin.delete_bucket(Bucket=bucket["Name"])

    with pytest.MonkeyPatch.context() as mp:
        for key, value in _conn_env(db_url, state_url, s3_endpoint).items():
            mp.setenv(key, value)
        runtime.sql_engine.cache_clear()
        runtime._schema_ready.clear()
        wipe()
        dm = load_datamap(REPO / "config" / "datamap.yaml")
        engine = engine_from_url(db_url)
        seed_world(engine, admin, dm, "tiny", 7, AS_OF)
        engine.dispose()
        admin.create_bucket(Bucket=os.environ["COMPLIANCE_WORKSPACE_BUCKET"])
        sns = boto3.client("sns", endpoint_url=s3_endpoint, region_name="us-east-1")
        for sp in dm.subprocessors:
            if sp.channel == "sns":
                sns.create_topic(Name=sp.target.rsplit(":", 1)[1])
        stack = Stack(
            db_url, state_url, s3_endpoint, admin, os.environ["COMPLIANCE_WORKSPACE_BUCKET"]
        )
        try:
            return full_demo(stack, mp)
        finally:
            wipe()
            runtime.sql_engine.cache_clear()
            runtime._schema_ready.clear()


def pytest_terminal_summary(terminalreporter) -> None:
    """The figures issue 8 asks for, from what this run of the suite measured."""
    from .harness import FIGURES

    if not FIGURES:
        return
    tr = terminalreporter
    tr.section("reliability figures")
    crash = FIGURES.get("crash", [])
    if crash:
        n = len(crash)
        ok = {c: sum(1 for r in crash if r[c]) for c in ("erasure", "leftovers", "records")}
        tr.write_line(
            f"crash points x recovery modes tried: {n}; erasure converged {ok['erasure']}/{n}, "
            f"no identity leftovers {ok['leftovers']}/{n}, records equal {ok['records']}/{n}"
        )
    for key, value in sorted(FIGURES.items()):
        if key != "crash":
            tr.write_line(f"{key}: {value}")


@pytest.fixture(autouse=True)
def _past_the_gate(approvals_bypassed: None) -> None:
    """Every test here calls task functions directly, as the DAG would after its approval
    step (`approvals_bypassed` in tests/conftest.py says why that is safe to skip here)."""
