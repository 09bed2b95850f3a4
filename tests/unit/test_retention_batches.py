"""The retention purge's snapshot batches (issue 19) against the two-statement form.

On PostgreSQL an `aggregate` rule counts and deletes each batch on one REPEATABLE READ
snapshot (`aggregates.delete_counted`: `WITH grouped AS (SELECT ... GROUP BY) INSERT ...`, then
the DELETE). The same world is swept twice, once that way and once with the fold switched off
(the SQLite path: `INSERT ... SELECT ... GROUP BY`, then the DELETE, at the default level): the
aggregate rows, the rows left behind (legal holds, R19; tenant overrides) and the counts must be
identical, a rerun must change nothing, and the result must carry the longest write
transaction. A row another session deletes between the count and the DELETE rolls the batch
back instead of leaving a count that does not match the rows deleted.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from compliance.core.datamap.validate import load_datamap
from compliance.core.stores.sql import engine_from_url
from compliance.retention import Sweep, execute_step, load_policy
from compliance.retention import execute as ex
from compliance_dev.world import schema as w
from tests.conftest import fresh_pg_database

REPO = Path(__file__).resolve().parents[2]
DM = load_datamap(REPO / "config" / "datamap.yaml")
POLICY = load_policy(REPO / "config" / "retention.yaml", DM).policy
AS_OF = date(2026, 6, 15)
MID = datetime(2026, 6, 15)
RULE = "email-events"


def _world(url: str) -> sa.Engine:
    """Four clients, 40 contacts, 6,000 events over 40 months (NULL devices included); client 3
    under a client-wide hold, contact 5 of client 1 under a consumer hold on email_events."""
    engine = engine_from_url(url)
    w.metadata.create_all(engine)
    with engine.begin() as c:
        c.execute(
            sa.insert(w.clients),
            [
                dict(client_id=i, name=f"C{i}", industry="retail", state="CA",
                     created_at=MID - timedelta(days=3000))
                for i in (1, 2, 3, 4)
            ],
        )  # fmt: skip
        c.execute(
            sa.insert(w.contacts),
            [
                dict(contact_id=k, client_id=1 + k % 4, is_child=False, first_name="A",
                     email=f"p{k}@example.com", created_at=MID - timedelta(days=2000),
                     updated_at=MID)
                for k in range(1, 41)
            ],
        )  # fmt: skip
        c.execute(
            sa.insert(w.campaigns),
            [
                dict(campaign_id=i, client_id=i, name=f"K{i}", channel="email",
                     sent_at=MID - timedelta(days=1300))
                for i in (1, 2, 3, 4)
            ],
        )  # fmt: skip
        kinds = ["sent", "open", "click"]
        devices = ["mobile", "desktop", None]
        events = []
        for i in range(6000):
            contact = 1 + i % 40
            client = 1 + contact % 4
            events.append(
                dict(event_id=i + 1, campaign_id=client, contact_id=contact, client_id=client,
                     event_type=kinds[i % 3], device_type=devices[(i // 3) % 3],
                     os=None, occurred_at=MID - timedelta(days=1200) + timedelta(hours=5 * i))
            )  # fmt: skip
        c.execute(sa.insert(w.email_events), events)
        c.execute(
            sa.insert(w.legal_holds),
            [
                dict(hold_id=1, client_id=3, contact_id=None, scope="all", reason="litigation",
                     exception_code="legal_claims", created_at=MID - timedelta(days=10),
                     expires_at=None),
                dict(hold_id=2, client_id=2, contact_id=5, scope="email_events",
                     reason="sheriff", exception_code="law_enforcement_hold",
                     created_at=MID - timedelta(days=10), expires_at=MID + timedelta(days=80)),
            ],
        )  # fmt: skip
    return engine


def _sweep(engine: sa.Engine, policy=POLICY) -> Sweep:
    return Sweep(
        datamap=DM,
        policy=policy,
        as_of=AS_OF,
        now=datetime.now(UTC),
        engine=lambda _conn: engine,
        s3=lambda _conn: None,
        hash_key=b"k",
        only=(RULE,),
    )


def _state(engine: sa.Engine) -> tuple[list[tuple], list[int]]:
    with engine.connect() as c:
        agg = [
            tuple(r)
            for r in c.execute(
                sa.text(
                    "select rule_id, source, client_id, month, dims, row_count "
                    "from cj_retention_aggregates order by 1, 2, 3, 4, 5"
                )
            )
        ]
        left = list(c.execute(sa.text("select event_id from email_events order by 1")).scalars())
    return agg, left


@pytest.fixture
def two_worlds():
    with fresh_pg_database() as a, fresh_pg_database() as b:
        ea, eb = _world(a), _world(b)
        yield ea, eb
        ea.dispose()
        eb.dispose()


def test_one_statement_batches_match_the_two_statement_form(two_worlds, monkeypatch):
    folded, plain = two_worlds
    small = POLICY.model_copy(update={"batch_rows": 700, "batch_seconds": None})
    calls = {"fold": 0}
    real = ex.delete_counted

    def counting(*args, **kw):
        calls["fold"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(ex, "delete_counted", counting)
    got = execute_step(_sweep(folded, small), RULE)
    assert calls["fold"] == got["batches"] > 1  # every batch took the one-statement path

    monkeypatch.setattr(ex, "can_fold", lambda *a: False)
    calls["fold"] = 0
    want = execute_step(_sweep(plain, small), RULE)
    assert calls["fold"] == 0

    assert got["counts"] == want["counts"]
    assert got["counts"]["email_events"]["aggregate"] > 1000
    assert _state(folded) == _state(plain)
    agg, _ = _state(folded)
    assert {r[2] for r in agg} == {"1", "2", "4"}  # client 3 is held (R19)
    assert any(r[4] == '{"device_type": null, "event_type": "open"}' for r in agg)
    cutoff = POLICY.rule(RULE).period.cutoff(AS_OF)
    with folded.connect() as c:  # old rows left: exactly the held ones, and they are there
        old = "select count(*) from email_events where occurred_at < :c"
        held = " and (client_id = 3 or contact_id = 5)"
        n_old = c.execute(sa.text(old), {"c": cutoff}).scalar()
        n_held = c.execute(sa.text(old + held), {"c": cutoff}).scalar()
    assert n_old == n_held > 0
    assert 0 < got["longest_transaction_s"] < 5


def test_rerun_changes_nothing_and_counts_each_row_once(two_worlds):
    engine, _ = two_worlds
    with engine.connect() as c:
        before = c.execute(sa.text("select count(*) from email_events")).scalar()
    first = execute_step(_sweep(engine), RULE)
    after_first = _state(engine)
    again = execute_step(_sweep(engine), RULE)
    assert again["counts"]["email_events"]["aggregate"] == 0
    assert _state(engine) == after_first
    deleted = first["counts"]["email_events"]["aggregate"]
    assert sum(r[5] for r in after_first[0]) == deleted == before - len(after_first[1])


def test_a_row_changed_between_count_and_delete_rolls_the_batch_back(two_worlds):
    """Another session deletes one of the batch's rows after the count read it and before the
    DELETE: at READ COMMITTED the count would include a row this DELETE never deleted. The
    snapshot refuses it (serialization failure), nothing of the batch is kept, and the rerun
    counts exactly the rows it deletes."""
    engine, _ = two_worlds
    cutoff = POLICY.rule(RULE).period.cutoff(AS_OF)
    with engine.connect() as c:
        victim = c.execute(
            sa.text(
                "select min(event_id) from email_events where occurred_at < :c "
                "and client_id in (1, 4)"
            ),
            {"c": cutoff},
        ).scalar()
        before = c.execute(sa.text("select count(*) from email_events")).scalar()
    interfered = []

    def meddle(conn, clauseelement, *_args):
        if not interfered and isinstance(clauseelement, sa.Delete):
            with engine.begin() as other:  # another session, committed before the DELETE runs
                other.execute(
                    sa.text("delete from email_events where event_id = :v"), {"v": victim}
                )
            interfered.append(victim)

    sa.event.listen(engine, "before_execute", meddle)
    try:
        with pytest.raises(sa.exc.OperationalError, match="could not serialize"):
            execute_step(_sweep(engine), RULE)
    finally:
        sa.event.remove(engine, "before_execute", meddle)
    assert interfered == [victim]
    agg, left = _state(engine)
    assert agg == []  # the only batch rolled back whole: no count without its deletion
    assert len(left) == before - 1  # only the other session's row is gone
    done = execute_step(_sweep(engine), RULE)
    agg, left = _state(engine)
    deleted = done["counts"]["email_events"]["aggregate"]
    assert sum(r[5] for r in agg) == deleted == before - 1 - len(left) > 1000
