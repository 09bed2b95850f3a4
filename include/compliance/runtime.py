"""The bridge from Airflow to the plain-Python jobs: connections in, engines and clients out.

DAG tasks call these to obtain what `compliance.*` functions take as arguments. This is the only
module of `include/` that imports Airflow, and it does so lazily, so the domain logic stays
testable without a scheduler.
"""

from __future__ import annotations

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
