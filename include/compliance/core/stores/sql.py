"""SQL engines: one place that turns a connection description into a SQLAlchemy engine.

Jobs receive an `Engine` and speak SQLAlchemy Core, so the same code runs on SQLite (the embedded
demo) and PostgreSQL (production). Dialect differences are handled here and nowhere else.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text

from compliance.core.datamap.indexes import IndexSpec, create_sql, drop_sql, missing


def engine_from_url(url: str, **kwargs: Any) -> Engine:
    """An engine whose errors never carry the statement's parameters: they are identities
    (resolve's IN lists, the residue oracle's LIKE terms), and an exception message reaches
    task logs (no PII in exceptions)."""
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def scratch_engine(path: Path) -> Engine:
    """A task's private SQLite working copy (a backup snapshot day loaded to search or rewrite
    it): parameters hidden in errors like every product engine (they are identities), and no
    rollback journal or fsync per chunk, since the file lives in a temporary directory and any
    retry rebuilds it from S3."""
    engine = create_engine(f"sqlite:///{path}", hide_parameters=True)
    event.listen(engine, "connect", _scratch_pragmas)
    return engine


def _scratch_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=OFF")
    cur.execute("PRAGMA synchronous=OFF")
    cur.close()


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
    An expression part is spelt as `datamap.indexes` spells it (`lower(email)`), on PostgreSQL
    from SQLAlchemy's reflected `expressions`, on SQLite (whose reflection skips expression
    indexes) from the index's own CREATE statement (`_sqlite_expression_indexes`).

    An INVALID PostgreSQL index (`pg_index.indisvalid = false`, what a failed or interrupted
    `CREATE INDEX CONCURRENTLY` leaves behind) serves no query, so it is left out too: the
    command then reports it missing and `--apply` rebuilds it (`invalid_indexes`)."""
    insp = inspect(engine)
    invalid = invalid_indexes(engine, tables)
    out: dict[str, list[list[str | None]]] = {}
    for table in sorted(tables & set(insp.get_table_names())):
        with warnings.catch_warnings():  # SQLite: "Skipped unsupported reflection of expression-
            warnings.filterwarnings("ignore", "Skipped unsupported reflection")  # based index"
            reflected = insp.get_indexes(table)
            uniques = insp.get_unique_constraints(table)  # reads the indexes again on SQLite
        out[table] = [
            [_key(e) for e in ix["expressions"]] if ix.get("expressions") else ix["column_names"]
            for ix in reflected
            if (table, ix["name"]) not in invalid
        ]
        if is_sqlite(engine):
            out[table] += _sqlite_expression_indexes(
                engine, table, {ix["name"] for ix in reflected}
            )
        out[table] += [u["column_names"] for u in uniques]
        out[table].append(insp.get_pk_constraint(table)["constrained_columns"])
    return out


def _key(part: str | None) -> str | None:
    """An index key part as `datamap.indexes` spells it: a column name, or `lower(col)` for the
    lower-case expression whatever the dialect prints (`lower((email)::text)` on PostgreSQL,
    `lower("email")` on SQLite). Any other expression keeps a spelling no spec uses, so it
    serves nothing the map wants (it is not what `resolve` compares)."""
    if part is None:
        return None
    bare = re.sub(r"::[a-z ]+(\(\d+\))?", "", part, flags=re.I)  # PostgreSQL casts
    bare = bare.replace('"', "").replace("`", "").replace(" ", "")
    match = re.fullmatch(r"lower\(+(?P<col>[^()]+)\)+", bare, flags=re.I)
    if match and bare.count("(") == bare.count(")"):
        return f"lower({match.group('col')})"
    return bare


def _key_parts(create: str) -> list[str] | None:
    """The key parts of a CREATE INDEX statement: its first parenthesised list after ON, split
    at top-level commas (a WHERE clause of a partial index is not part of it)."""
    on = re.search(r"\sON\s", create, flags=re.I)
    start = create.find("(", on.end()) if on else -1
    if start < 0:
        return None
    parts, depth, begin = [], 0, start + 1
    for i in range(start, len(create)):
        ch = create[i]
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 1:
            parts.append(create[begin:i].strip())
            begin = i + 1
        elif depth == 0:
            parts.append(create[begin:i].strip())
            return parts
    return None


def _sqlite_expression_indexes(
    engine: Engine, table: str, reflected: set[str | None]
) -> list[list[str | None]]:
    """The key parts of a SQLite table's expression indexes, which SQLAlchemy's reflection skips
    (`PRAGMA index_xinfo` names no expression either): read from each CREATE statement."""
    stmt = text(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t"
        " AND sql IS NOT NULL"
    )
    out: list[list[str | None]] = []
    with engine.connect() as conn:
        for name, create in conn.execute(stmt, {"t": table}):
            parts = None if name in reflected else _key_parts(create)
            if parts:
                out.append([_key(p) for p in parts])
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
