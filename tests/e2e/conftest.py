"""End-to-end fixtures: a real Airflow metadata DB, a seeded world, real DAG runs via dag.test()."""

from __future__ import annotations

import http.server
import json
import os
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import pytest

REPO = Path(__file__).resolve().parents[2]
AS_OF = date(2026, 11, 20)


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils import db

    db.resetdb()


class _Receiver(http.server.BaseHTTPRequestHandler):
    """The demo ESP's deletion webhook: records each notice and acknowledges it (R16.3)."""

    received: list[dict] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Receiver.received.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"acknowledged": true}')

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def esp_webhook(tmp_path_factory):
    """A local HTTP server standing in for the ESP, and a copy of the demo map pointing at it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    text = (REPO / "config" / "datamap.yaml").read_text()
    text = text.replace("http://127.0.0.1:8719/", f"http://127.0.0.1:{server.server_port}/")
    path = tmp_path_factory.mktemp("map") / "datamap.yaml"
    path.write_text(text)
    _Receiver.datamap = path
    yield _Receiver.received
    server.shutdown()


@dataclass
class Stack:
    db_url: str
    state_url: str
    s3_url: str
    s3: Any
    bucket: str

    def run_dag(self, dag_id: str, conf: dict | None = None, retries: int | None = None):
        """Run a DAG in-process with dag.test(); returns the finished DagRun. `retries=0` for a
        run expected to fail: it fails now, not after the backed-off retries (30 s, 60 s)."""
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert not bag.import_errors, bag.import_errors
        dag = bag.dags[dag_id]
        if retries is not None:
            for task in dag.tasks:
                task.retries = retries
        return dag.test(run_conf=conf or {})


def _sql_conn(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"conn_type": "sqlite", "host": url.removeprefix("sqlite:///")}
    return {"conn_type": "postgres", "extra": {"sqlalchemy_url": url}}


def _conn_env(db_url: str, state_url: str, s3_url: str) -> dict[str, str]:
    aws = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": s3_url, "region_name": "us-east-1"},
    }
    return {
        "AIRFLOW_CONN_CRM_DB": json.dumps(_sql_conn(db_url)),
        "AIRFLOW_CONN_COMPLIANCE_DB": json.dumps(_sql_conn(state_url)),
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
        "COMPLIANCE_WORKSPACE_BUCKET": "cj-compliance",
        "COMPLIANCE_HASH_KEY": "e2e-test-key",
        "COMPLIANCE_DATAMAP": str(_Receiver.datamap),
    }


@pytest.fixture
def stack(db_url, state_url, s3, s3_endpoint, airflow_db, esp_webhook, monkeypatch) -> Stack:
    """A tiny seeded world on the parametrised SQL backend and the moto server, wired to Airflow."""
    from compliance import runtime
    from compliance.core.datamap.validate import load_datamap
    from compliance.core.stores.sql import engine_from_url
    from compliance_dev.world.generate import seed_world

    for key, value in _conn_env(db_url, state_url, s3_endpoint).items():
        monkeypatch.setenv(key, value)
    runtime.sql_engine.cache_clear()
    engine = engine_from_url(db_url)
    seed_world(engine, s3, load_datamap(REPO / "config" / "datamap.yaml"), "tiny", 7, AS_OF)
    engine.dispose()
    s3.create_bucket(Bucket=os.environ["COMPLIANCE_WORKSPACE_BUCKET"])  # clients' inbox lives here
    sns = boto3.client("sns", endpoint_url=s3_endpoint, region_name="us-east-1")
    for sp in load_datamap(REPO / "config" / "datamap.yaml").subprocessors:
        if sp.channel == "sns":
            sns.create_topic(Name=sp.target.rsplit(":", 1)[1])
    esp_webhook.clear()
    yield Stack(db_url, state_url, s3_endpoint, s3, os.environ["COMPLIANCE_WORKSPACE_BUCKET"])
    runtime.sql_engine.cache_clear()
