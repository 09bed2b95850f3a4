"""The world every figure is measured on: seeded once, then copied per run (issue 9).

PostgreSQL CRM + the moto S3 server (its own process): `compliance_dev.world.generate.seed_world`
at the requested scale (`large`: 1M contacts, ~20.8M e-mail events, ~3.6 GB of raw logs over
35 days, 7 daily backups; `--log-days` changes only the number of log days). Then the identity
indexes the jobs' lookups need (the documented setup, `index_stage`), then a server-side copy of
every log object into a pristine bucket, so runs that rewrite logs start from the seeded bytes.
"""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import Any

from benchmarks.sections import _common as C

IMPORTS = ["compliance_dev.world.generate"]
SECTION = "world"


def seed_stage(db: str, scale: str, seed: int, as_of: str, log_days: int) -> dict[str, Any]:
    from compliance_dev.world import generate
    from compliance_dev.world.generate import Plan, seed_world

    plan = Plan.for_scale(scale)
    if log_days and log_days != plan.log_days:
        # The generator takes no log-day count; within this (seeding) process only, its plan
        # for this scale gets the requested number of log days, nothing else changed.
        plan = dataclasses.replace(plan, log_days=log_days)
        generate.Plan.for_scale = classmethod(lambda cls, _scale: plan)  # type: ignore[assignment]
    summary = seed_world(
        C.engine(db), C.s3(), C.datamap(), scale, seed, date.fromisoformat(as_of), replace=True
    )
    return {
        "scale": summary.scale,
        "tables": summary.tables,
        "stores": summary.stores,
        "log_lines": summary.log_lines,
        "log_bytes": summary.log_bytes,
        "stored_bytes": summary.stored_bytes,
        "log_days": plan.log_days,
        "backup_days": plan.backup_days,
        "seconds": {k: round(v, 2) for k, v in summary.seconds.items()},
    }


def index_stage(db: str) -> list[str]:
    """The identity indexes (documented setup): one per identity column of the data map whose
    table holds its own tenant, on exactly the expressions `compliance.requests.resolve` compares,
    `(CAST(tenant AS VARCHAR), value)` with `lower(value)` for e-mails. Without them every
    lookup statement is a sequential scan testing each row against up to 500 (tenant, value)
    pairs."""
    import sqlalchemy as sa
    from sqlalchemy.schema import CreateIndex

    from compliance.core.sqlmap import MappedSql
    from compliance.requests.resolve import identity_columns, normalise_for_column

    made = []
    eng = C.engine(db)
    for system in C.datamap().systems.values():
        sql = MappedSql(eng, system)
        for tname, cname, kind in identity_columns(system):
            owned = sql.owned(tname)
            if getattr(owned.tenant, "table", None) is not owned.table:
                continue  # the tenant comes through a join: no single-table index serves it
            name = f"ix_identity_{tname}_{cname}"[:63]
            index = sa.Index(
                name,
                sa.cast(owned.tenant, sa.String),
                normalise_for_column(kind, owned.table.c[cname]),
            )
            with eng.begin() as conn:
                conn.execute(CreateIndex(index, if_not_exists=True))
            made.append(f"{tname}.{cname}")
    with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")
    return made


def run(bench: C.Bench, scale: str, seed: int, log_days: int) -> list[C.Row]:
    bench.create_db("world")
    st = bench.stage(
        "world.seed", seed_stage, [(bench.env.world_db, scale, seed, bench.env.as_of, log_days)]
    )
    w = st.results[0]
    bench.results["world"] = w
    ix = bench.stage("world.identity_indexes", index_stage, [(bench.env.world_db,)])
    n_objects, n_bytes = bench.snapshot_logs()
    with bench.connect(bench.env.world_db) as conn:
        size = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()
    contacts, events = w["tables"]["contacts"], w["tables"]["email_events"]
    raw_gb = w["log_bytes"] / 1e9
    big = contacts >= 1_000_000
    meets = contacts >= 1_000_000 and events >= 20_000_000 and raw_gb >= 1 and w["backup_days"] >= 7
    return [
        C.Row(
            SECTION,
            "world: contacts / e-mail events / raw log GB / backup days",
            float(contacts),
            "contacts",
            target=">= 1M contacts, 20M events, 1 GB raw logs, 7 backups" if big else None,
            met=meets if big else None,
            note=f"{contacts:,} contacts, {events:,} email_events, {raw_gb:.2f} GB raw logs "
            f"({w['log_lines']:,} lines, {w['log_days']} days), {w['backup_days']} daily "
            f"backups; CRM database {size / 1e9:.2f} GB",
        ),
        C.info(
            SECTION,
            "world: seed (PostgreSQL COPY + S3 objects)",
            st.seconds,
            "s",
            peak_mb=st.peak_mb,
            note="phases: "
            + ", ".join(
                f"{k.lstrip('_')} {v:.0f}s" for k, v in w["seconds"].items() if k[0] == "_"
            ),
        ),
        C.info(
            SECTION,
            "world: identity indexes (documented setup)",
            ix.seconds,
            "s",
            peak_mb=ix.peak_mb,
            note="(CAST(tenant AS VARCHAR), value) on " + ", ".join(ix.results[0]),
        ),
        C.info(
            SECTION,
            "world: log objects copied to the pristine bucket",
            float(n_objects),
            "objects",
            note=f"{n_bytes / C.MB:,.0f} MB gzip (restored before each run that rewrites logs)",
        ),
    ]
