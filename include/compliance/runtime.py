"""The bridge from Airflow to the plain-Python jobs: connections in, engines and clients out.

DAG tasks call these to obtain what `compliance.*` functions take as arguments. This is the only
module of `include/` that imports Airflow, and it does so lazily, so the domain logic stays
testable without a scheduler.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine

from compliance.datamap.model import DataMap
from compliance.datamap.validate import load_datamap
from compliance.settings import Settings
from compliance.stores.s3 import s3_client
from compliance.stores.sql import engine_from_url, url_from_connection


def settings() -> Settings:
    return Settings.from_env()


def datamap() -> DataMap:
    return load_datamap(settings().datamap_path)


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
    from compliance.state import STATE_CONN_ID, create_state_schema

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


def intake(form_params: dict, type_: str) -> dict:
    """The request DAGs' shared first task: the trigger form's document (if any) joins the S3
    inbox, then the whole inbox is validated in one pass (`compliance.inbox.ingest`)."""
    from compliance import inbox

    cfg = settings()
    client = s3(cfg.workspace_connection)
    form = inbox.form_document(form_params, type_)
    if form is not None:
        inbox.submit(client, cfg.workspace_bucket, form, f"{type_}-{form['request_id']}")
    summary = inbox.ingest(
        client, cfg.workspace_bucket, _clients(), state_engine(), cfg.hash_key, now()
    )
    return summary.to_dict()


def examine(form_params: dict, type_: str) -> Any:
    """What `intake` would do, read only (a dry run): the form's document is examined in place."""
    from compliance import inbox

    cfg = settings()
    form = inbox.form_document(form_params, type_)
    extra = []
    if form is not None:
        key = inbox.submission_key(f"{type_}-{form['request_id']}")
        extra.append((key, json.dumps(form).encode()))
    return inbox.examine(
        s3(cfg.workspace_connection),
        cfg.workspace_bucket,
        _clients(),
        state_engine(),
        cfg.hash_key,
        now(),
        extra,
    )


def _clients() -> dict[str, bool]:
    from compliance import inbox

    dm = datamap()
    system = dm.systems[sorted(dm.systems)[0]]
    return inbox.load_clients(sql_engine(system.connection), system)
