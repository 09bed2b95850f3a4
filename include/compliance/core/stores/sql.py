"""SQL engines: one place that turns a connection description into a SQLAlchemy engine.

Jobs receive an `Engine` and speak SQLAlchemy Core, so the same code runs on SQLite (the embedded
demo) and PostgreSQL (production). Dialect differences are handled here and nowhere else.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect


def engine_from_url(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def url_from_connection(
    conn_type: str,
    host: str | None,
    login: str | None = None,
    password: str | None = None,
    port: int | None = None,
    schema: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Build a SQLAlchemy URL from the fields of an Airflow connection."""
    extra = extra or {}
    if extra.get("sqlalchemy_url"):
        return str(extra["sqlalchemy_url"])
    if conn_type == "sqlite":
        return f"sqlite:///{host}"
    if conn_type in {"postgres", "postgresql"}:
        auth = login or "postgres"
        if password:
            auth = f"{auth}:{password}"
        where = f"{host or '127.0.0.1'}:{port or 5432}/{schema or 'postgres'}"
        return f"postgresql+psycopg2://{auth}@{where}"
    raise ValueError(f"connection type {conn_type!r} is not supported for SQL systems")


def table_columns(engine: Engine) -> dict[str, list[str]]:
    """The live schema: table -> column names."""
    insp = inspect(engine)
    return {t: [c["name"] for c in insp.get_columns(t)] for t in insp.get_table_names()}


def live_indexes(engine: Engine, tables: set[str]) -> dict[str, list[list[str | None]]]:
    """Per table, the column lists of its indexes, unique constraints and primary key: what
    already serves a lookup (`datamap.indexes.missing`). Tables that do not exist are left out."""
    insp = inspect(engine)
    out: dict[str, list[list[str | None]]] = {}
    for table in sorted(tables & set(insp.get_table_names())):
        out[table] = [ix["column_names"] for ix in insp.get_indexes(table)]
        out[table] += [u["column_names"] for u in insp.get_unique_constraints(table)]
        out[table].append(insp.get_pk_constraint(table)["constrained_columns"])
    return out


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
