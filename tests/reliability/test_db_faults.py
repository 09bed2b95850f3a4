"""PostgreSQL connections dropped mid-erasure: the task fails, its retry converges (issue 8).

The CRM is the tiny world on a fresh PostgreSQL database. A hook on the checkpoints inside
`erase_sql.execute_erasure` terminates the transaction's backend from another connection
(`pg_terminate_backend`, what a failover or an idle-killer does):
- inside the transaction of the 2nd `messages` chunk: its COMMIT fails, the chunk rolls back;
- inside the 1st `contacts` chunk, reached by the retry: the retry fails as well;
- between two transactions (after a `leads` chunk): the pooled connection is dead, and the
  engine's pre-ping replaces it without anyone noticing.
With the DAGs' two task retries the run completes, and the world, receipts and ledger equal a
clean run's on an identical PostgreSQL world.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from compliance.deletion import erase_sql
from compliance_dev import faults
from compliance_dev.world.generate import seed_world
from tests.conftest import PG_ADMIN_URL, fresh_pg_database

from . import harness as h

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


class PgWorld(h.World):
    """The same world, its CRM on PostgreSQL: a reset re-seeds it (deterministic, ~2 s)."""

    def reset(self) -> None:
        super().reset()  # state DB, buckets, inbox, clients
        seed_world(
            self.engine(self.crm_url), self.admin, self.dm, "tiny", h.SEED, h.AS_OF, replace=True
        )  # rewrites the store objects too: same bytes, one version


@pytest.fixture
def pg_world(world):
    with fresh_pg_database() as url:
        w = PgWorld(world.pristine, world.dm, world.s3_url, world.workdir, world.esp_received)
        w.inbox = world.inbox
        w.__dict__["crm_url"] = url
        yield w
        for eng in w.engines:
            eng.dispose()


def test_dropped_connections_mid_batch_converge(pg_world, monkeypatch):
    monkeypatch.setattr(erase_sql, "CHUNK", 1)
    job = h.DeletionJob(pg_world)
    clean = h.scenario(job, None)
    assert not clean.errors

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    seen: Counter[str] = Counter()
    killed: list[str] = []

    database = pg_world.crm_url.rsplit("/", 1)[1]

    def terminate(where: str, params: dict[str, Any]) -> None:
        with admin.connect() as c:
            c.execute(
                sa.text(f"select pg_terminate_backend(pid) from pg_stat_activity where {where}"),
                params,
            )

    def in_chunk(table: str, conn: Any) -> None:
        """Kill this transaction's own backend: its COMMIT is next."""
        seen[table] += 1
        if (table, seen[table]) in {("messages", 2), ("contacts", 1)} and table not in killed:
            killed.append(table)
            terminate("pid = :pid", {"pid": conn.connection.dbapi_connection.get_backend_pid()})

    def after_chunk(table: str) -> None:
        """Kill every connection to the CRM database, idle pooled ones included."""
        if table == "leads" and "leads" not in killed:
            killed.append("leads")
            terminate("datname = :db and pid <> pg_backend_pid()", {"db": database})

    def arm(_: h.World) -> None:
        seen.clear()
        killed.clear()

    with (
        faults.install("erase_sql.in_chunk", in_chunk),
        faults.install("erase_sql.after_chunk", after_chunk),
    ):
        outcome = h.scenario(job, None, arm=arm, retries=2)
    admin.dispose()

    h.FIGURES["db_faults"] = {"backends_terminated": killed, "task_retries": outcome.task_retries}
    assert sorted(killed) == ["contacts", "leads", "messages"], killed
    # two in-flight transactions lost: two task retries; the idle kill cost nothing
    assert [r.split(":")[0] for r in outcome.task_retries] == ["erase_system[crm]"] * 2
    assert all("OperationalError" in r for r in outcome.task_retries), outcome.task_retries
    assert outcome.errors == []
    assert h.diff(clean.snapshot, outcome.snapshot) == []
