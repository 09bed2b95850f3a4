"""The bridge from Airflow to the plain-Python jobs: connections in, a `JobContext` out.

Each DAG task calls `context()` once and hands it to its function in `compliance.jobs`. This is
the only module of `include/` that imports Airflow, and it does so lazily, so the jobs stay
testable without a scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from compliance.core.context import JobContext, Workspace
from compliance.core.datamap.model import DataMap
from compliance.core.datamap.validate import load_datamap_with_digest
from compliance.core.settings import Settings
from compliance.core.stores.s3 import s3_client
from compliance.core.stores.sql import engine_from_url, url_from_connection


def settings() -> Settings:
    return Settings.from_env()


def datamap() -> DataMap:
    return _parsed_datamap(settings().datamap_path)[0]


def _parsed_datamap(path: Path) -> tuple[DataMap, str]:
    """Parsed once per process and file version (a long-lived worker sees an edited map)."""
    stat = path.stat()
    return _parse_cached(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _parse_cached(path: Path, _mtime_ns: int, _size: int) -> tuple[DataMap, str]:
    return load_datamap_with_digest(path)


def context(clock: Callable[[], datetime] | None = None) -> JobContext:
    """Everything a task needs, from Airflow's connections and this run (one per task call).

    One S3 client per distinct connection, shared by the stores that name it; engines are
    cached per connection for the process (`sql_engine`)."""
    cfg = settings()
    dm, digest = _parsed_datamap(cfg.datamap_path)
    clients: dict[str, Any] = {}

    def client(conn_id: str) -> Any:
        if conn_id not in clients:
            clients[conn_id] = s3(conn_id)
        return clients[conn_id]

    return JobContext(
        settings=cfg,
        datamap=dm,
        datamap_hash=digest,
        workspace=Workspace(client(cfg.workspace_connection), cfg.workspace_bucket),
        state=state_engine(),
        engines=engines(dm),
        stores={name: client(store.connection) for name, store in dm.stores.items()},
        clock=clock or now,
        run_day=_run_day_or_today(),
        sns=sns(),
        channels=channels(cfg),
        credentials=credentials,
    )


def credentials(conn_id: str) -> tuple[str | None, dict[str, Any]] | None:
    """A connection's password and extra, or None when Airflow (or its secrets backend) has
    none by that id: the client API's credentials (`compliance.desk.api_clients`)."""
    from airflow.exceptions import AirflowNotFoundException

    try:
        conn = _connection(conn_id)
    except AirflowNotFoundException:
        return None
    return conn.password, conn.extra_dejson


def channels(cfg: Settings) -> Any:
    """Staff alerts and sub-processors' e-mail through Airflow's hooks (`Channels`).

    Implemented in `plugins/compliance_channels.py` beside the notifiers that use it too; the
    plugins folder is on the path of every Airflow process (workers, `dag.test`, the
    triggerer), so it is imported here by name, lazily, like every Airflow import of this
    module."""
    from compliance_channels import AirflowChannels

    return AirflowChannels(cfg.env)


def _run_day_or_today() -> date:
    try:
        return date.fromisoformat(run_day())
    except RuntimeError:  # outside a task (a shell, a test): the wall clock's day
        return now().date()


def _connection(conn_id: str) -> Any:
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id)


@lru_cache(maxsize=8)
def sql_engine(conn_id: str) -> Engine:
    conn = _connection(conn_id)
    url = url_from_connection(
        conn.conn_type,
        conn.host,
        conn.login,
        conn.password,
        conn.port,
        conn.schema,
        conn.extra_dejson,
    )
    return engine_from_url(url)


def s3(conn_id: str = "aws_default") -> Any:
    conn = _connection(conn_id)
    extra = conn.extra_dejson
    return s3_client(
        endpoint_url=extra.get("endpoint_url"),
        region=extra.get("region_name", "us-east-1"),
        access_key=conn.login or None,
        secret_key=conn.password or None,
    )


def run_day() -> str:
    """The day a run is about (its logical date, or when it was triggered), as YYYY-MM-DD."""
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    when = ctx.get("logical_date") or ctx["dag_run"].run_after
    return when.date().isoformat()


def state_engine() -> Engine:
    """The compliance state DB (requests, tombstones, ledger); schema created on first use."""
    from compliance.requests.state import STATE_CONN_ID, create_state_schema

    engine = sql_engine(STATE_CONN_ID)
    if engine not in _schema_ready:
        create_state_schema(engine)
        _schema_ready.add(engine)
    return engine


_schema_ready: set[Engine] = set()


def engines(dm: DataMap) -> dict[str, Engine]:
    """One engine per SQL system of the data map."""
    return {name: sql_engine(system.connection) for name, system in dm.systems.items()}


def now() -> datetime:
    return datetime.now(UTC)


def sns(conn_id: str = "aws_default") -> Any:
    conn = _connection(conn_id)
    extra = conn.extra_dejson
    import boto3

    return boto3.client(
        "sns",
        endpoint_url=extra.get("endpoint_url"),
        region_name=extra.get("region_name", "us-east-1"),
        aws_access_key_id=conn.login or None,
        aws_secret_access_key=conn.password or None,
    )


def scheduled(context: Any) -> bool:
    """A run the scheduler started: destructive DAGs always act then (dry runs are for people)."""
    run_type = context["dag_run"].run_type
    return getattr(run_type, "value", run_type) == "scheduled"


def dry_run(context: Any) -> bool:
    """The form asks for a dry run (the default) and the run is not a scheduled one."""
    return bool(context["params"].get("dry_run", True)) and not scheduled(context)
