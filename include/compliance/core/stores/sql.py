"""SQL engines: one place that turns a connection description into a SQLAlchemy engine.

Jobs receive an `Engine` and speak SQLAlchemy Core, so the same code runs on SQLite (the embedded
demo) and PostgreSQL (production). Dialect differences are handled here and nowhere else.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text

from compliance.core.datamap.indexes import IndexSpec, create_sql, drop_sql, missing


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
    already serves a lookup (`datamap.indexes.missing`). Tables that do not exist are left out.

    An INVALID PostgreSQL index (`pg_index.indisvalid = false`, what a failed or interrupted
    `CREATE INDEX CONCURRENTLY` leaves behind) serves no query, so it is left out too: the
    command then reports it missing and `--apply` rebuilds it (`invalid_indexes`)."""
    insp = inspect(engine)
    invalid = invalid_indexes(engine, tables)
    out: dict[str, list[list[str | None]]] = {}
    for table in sorted(tables & set(insp.get_table_names())):
        out[table] = [
            ix["column_names"]
            for ix in insp.get_indexes(table)
            if (table, ix["name"]) not in invalid
        ]
        out[table] += [u["column_names"] for u in insp.get_unique_constraints(table)]
        out[table].append(insp.get_pk_constraint(table)["constrained_columns"])
    return out


def invalid_indexes(engine: Engine, tables: set[str]) -> set[tuple[str, str]]:
    """(table, index name) of the INVALID indexes on `tables` in the default schema; always
    empty on SQLite, which builds an index in one transaction or not at all."""
    if engine.dialect.name != "postgresql" or not tables:
        return set()
    stmt = text(
        "SELECT t.relname, i.relname FROM pg_index x"
        " JOIN pg_class i ON i.oid = x.indexrelid"
        " JOIN pg_class t ON t.oid = x.indrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE NOT x.indisvalid AND n.nspname = current_schema()"
        " AND t.relname = ANY(:tables)"
    )
    with engine.connect() as conn:
        return {(t, i) for t, i in conn.execute(stmt, {"tables": sorted(tables)})}


def apply_indexes(engine: Engine, specs: list[IndexSpec]) -> list[IndexSpec]:
    """Create the specs no valid index serves yet; returns those it created.

    This is what `python -m compliance datamap indexes --apply` runs (docs/deployment.md) and all
    the benchmark sets up. On PostgreSQL each index is built CONCURRENTLY (writes go on), outside
    a transaction; an INVALID index of the same name, left by an earlier failed build, is dropped
    first (`IF NOT EXISTS` would otherwise keep it, serving nothing)."""
    tables = set(inspect(engine).get_table_names())
    todo = missing([s for s in specs if s.table in tables], live_indexes(engine, tables))
    invalid = {name for _t, name in invalid_indexes(engine, {s.table for s in todo})}
    dialect = "postgresql" if engine.dialect.name == "postgresql" else "sqlite"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for spec in todo:
            if spec.name in invalid:
                conn.execute(text(drop_sql(spec, dialect)))
            conn.execute(text(create_sql(spec, dialect)))
    return todo


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
