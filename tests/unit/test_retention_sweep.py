"""Plan and execute on a small hand-built world, both SQL backends, moto S3 for the recordings.

The world (as of 2026-06-15, the demo policy):
- client 1: an active adult (10) with old and young rows of every kind; an inactive adult (11);
  an adult (12) whose web visits are under a consumer hold; a child collected 100 days ago (20),
  an adult collected 100 days ago (21), a child collected 30 days ago (22);
- client 2: web visits under the client's 6-month override;
- client 3: a client-wide litigation hold (a child and an inactive adult under it);
- client 4: an inactive adult whose client-wide hold expired yesterday;
- the state database's request log (R22) in the same database.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from compliance.core.datamap.validate import load_datamap
from compliance.core.stores.s3 import ensure_bucket
from compliance.core.stores.sql import engine_from_url
from compliance.requests.state import create_state_schema, insert_requests
from compliance.retention import Sweep, execute_step, load_policy, plan_sweep
from compliance.retention.report import ACTION_KEYS, mismatches
from compliance_dev.world import schema as w

REPO = Path(__file__).resolve().parents[2]
DM = load_datamap(REPO / "config" / "datamap.yaml")
POLICY = load_policy(REPO / "config" / "retention.yaml", DM).policy
AS_OF = date(2026, 6, 15)
MID = datetime(2026, 6, 15)
KEY = b"test-key"
AUDIO = DM.stores["call_audio"].bucket


def ago(**kw) -> datetime:
    return MID - timedelta(**kw)


VISITS_CUTOFF = POLICY.rule("web-visits").period.cutoff(AS_OF)  # 2025-05-15 00:00


@pytest.fixture
def crm(db_url, s3):
    engine = engine_from_url(db_url)
    w.metadata.create_all(engine)
    create_state_schema(engine)
    ensure_bucket(s3, AUDIO, versioned=True)
    with engine.begin() as c:
        c.execute(
            sa.insert(w.clients),
            [
                dict(
                    client_id=i,
                    name=f"C{i}",
                    industry="retail",
                    state="CA",
                    created_at=ago(days=3000),
                )
                for i in (1, 2, 3, 4)
            ],
        )
        people = [
            (10, 1, False, ago(days=5 * 365)),
            (11, 1, False, ago(days=4 * 365)),
            (12, 1, False, ago(days=4 * 365)),
            (20, 1, True, ago(days=100)),
            (21, 1, False, ago(days=100)),
            (22, 1, True, ago(days=30)),
            (30, 3, True, ago(days=100)),
            (31, 3, False, ago(days=4 * 365)),
            (40, 4, False, ago(days=4 * 365)),
            (50, 2, False, ago(days=365)),
        ]
        c.execute(
            sa.insert(w.contacts),
            [
                dict(
                    contact_id=k,
                    client_id=cl,
                    is_child=child,
                    first_name="A",
                    email=f"p{k}@example.com",
                    created_at=t,
                    updated_at=t,
                )
                for k, cl, child, t in people
            ],
        )
        c.execute(
            sa.insert(w.legal_holds),
            [
                dict(hold_id=1, client_id=3, contact_id=None, scope="all", reason="litigation",
                     exception_code="legal_claims", created_at=ago(days=10), expires_at=None),
                dict(hold_id=2, client_id=4, contact_id=None, scope="all", reason="settled",
                     exception_code="legal_claims", created_at=ago(days=400),
                     expires_at=ago(days=1)),
                dict(hold_id=3, client_id=1, contact_id=12, scope="web_visits", reason="sheriff",
                     exception_code="law_enforcement_hold", created_at=ago(days=10),
                     expires_at=MID + timedelta(days=80)),
            ],
        )  # fmt: skip
        visits = [
            (10, 1, ago(days=425)),  # older than 13 months: goes
            (10, 1, VISITS_CUTOFF - timedelta(seconds=1)),  # just older: goes
            (10, 1, VISITS_CUTOFF),  # exactly the cutoff: stays
            (10, 1, ago(days=360)),
            (10, 1, ago(days=30)),
            (12, 1, ago(days=730)),  # consumer hold on web_visits: stays
            (30, 3, ago(days=90)),
            (31, 3, ago(days=1200)),  # client-wide hold: stays
            (50, 2, ago(days=240)),  # client 2's 6-month override: goes
            (50, 2, ago(days=150)),  # stays
            (21, 1, ago(days=50)),
            (20, 1, ago(days=50)),  # the child's: goes with the child
        ]
        c.execute(
            sa.insert(w.web_visits),
            [
                dict(visit_id=i, contact_id=k, client_id=cl, url="/x", visited_at=t)
                for i, (k, cl, t) in enumerate(visits, 1)
            ],
        )
        c.execute(
            sa.insert(w.leads),
            [
                dict(
                    lead_id=1, contact_id=11, client_id=1, source="web", created_at=ago(days=1460)
                ),
                dict(
                    lead_id=2, contact_id=10, client_id=1, source="web", created_at=ago(days=1200)
                ),
                dict(lead_id=3, contact_id=10, client_id=1, source="web", created_at=ago(days=100)),
                dict(
                    lead_id=4, contact_id=40, client_id=4, source="web", created_at=ago(days=1460)
                ),
            ],
        )
        c.execute(
            sa.insert(w.messages),
            [
                dict(message_id=1, contact_id=10, client_id=1, channel="sms", direction="inbound",
                     body="old", created_at=ago(days=800)),
                dict(message_id=2, contact_id=10, client_id=1, channel="sms", direction="inbound",
                     body="new", created_at=ago(days=300)),
            ],
        )  # fmt: skip
        c.execute(
            sa.insert(w.message_attachments),
            [
                dict(attachment_id=1, message_id=1, filename="a.pdf", created_at=ago(days=800)),
                dict(attachment_id=2, message_id=2, filename="b.pdf", created_at=ago(days=300)),
            ],
        )
        c.execute(
            sa.insert(w.campaigns),
            [dict(campaign_id=1, client_id=1, name="Sale", channel="email", sent_at=ago(days=900))],
        )
        events = [
            (ago(days=800), "open", "mobile"),  # older than 25 months: aggregated then deleted
            (ago(days=790), "open", "mobile"),
            (ago(days=790), "click", "desktop"),
            (ago(days=700), "open", "mobile"),  # older than 6 months: geolocation de-identified
            (ago(days=30), "open", "mobile"),  # stays whole
        ]
        c.execute(
            sa.insert(w.email_events),
            [
                dict(event_id=i, campaign_id=1, contact_id=10, client_id=1, event_type=e,
                     device_type=d, ip="203.0.113.9", geo_city="Fresno", geo_region="CA",
                     occurred_at=t)
                for i, (t, e, d) in enumerate(events, 1)
            ],
        )  # fmt: skip
        c.execute(
            sa.insert(w.payments),
            [
                dict(payment_id=1, contact_id=10, client_id=1, card_token="tok_1", card_last4="4242",
                     card_brand="visa", bank_account="DE89370400440532013000", amount_cents=500,
                     paid_at=ago(days=600)),
                dict(payment_id=2, contact_id=10, client_id=1, card_token="tok_2", card_last4="1111",
                     card_brand="visa", bank_account=None, amount_cents=700, paid_at=ago(days=100)),
            ],
        )  # fmt: skip
        c.execute(
            sa.insert(w.call_recordings),
            [
                dict(recording_id=1, contact_id=10, client_id=1, s3_key="calls/1.wav",
                     recorded_at=ago(days=400)),
                dict(recording_id=2, contact_id=10, client_id=1, s3_key="calls/2.wav",
                     recorded_at=ago(days=100)),
            ],
        )  # fmt: skip
        c.execute(
            sa.insert(w.support_tickets),
            [dict(ticket_id=1, contact_id=10, client_id=1, subject="s", created_at=ago(days=1200))],
        )
        c.execute(
            sa.insert(w.ticket_comments),
            [
                dict(comment_id=i, ticket_id=1, author="agent", body="b", created_at=ago(days=1200))
                for i in (1, 2)
            ],
        )
    for key in ("calls/1.wav", "calls/2.wav"):
        s3.put_object(Bucket=AUDIO, Key=key, Body=b"v1")
        s3.put_object(Bucket=AUDIO, Key=key, Body=b"v2")  # two versions each
    requests = [
        ("r-old-done", "completed", ago(days=37 * 31)),
        ("r-old-rejected", "rejected", ago(days=37 * 31)),
        ("r-young", "completed", ago(days=23 * 30)),
        ("r-old-open", "open", ago(days=37 * 31)),
    ]
    insert_requests(
        engine,
        [
            dict(client_id=1, request_id=r, type="delete", jurisdiction="ccpa", status=st,
                 reason_code="unverified" if st == "rejected" else None, received_at=t,
                 source="ui")
            for r, st, t in requests
        ],
    )  # fmt: skip
    yield engine
    engine.dispose()


def sweep(engine, s3, policy=POLICY, only=None) -> Sweep:
    return Sweep(
        datamap=DM,
        policy=policy,
        as_of=AS_OF,
        now=datetime.now(UTC),
        engine=lambda _conn: engine,
        s3=lambda _conn: s3,
        hash_key=KEY,
        only=only,
    )


def checksums(engine) -> dict[str, str]:
    out = {}
    with engine.connect() as c:
        for name in sorted(sa.inspect(engine).get_table_names()):
            table = sa.Table(name, sa.MetaData(), autoload_with=c)
            digest = hashlib.sha256()
            for row in c.execute(sa.select(table).order_by(*table.primary_key.columns)):
                digest.update(repr(tuple(row)).encode())
            out[name] = digest.hexdigest()
    return out


def ids(engine, table: str, pk: str) -> set[int]:
    with engine.connect() as c:
        return set(c.execute(sa.text(f"select {pk} from {table}")).scalars())


def run_all(engine, s3, policy=POLICY) -> tuple[dict, list[dict]]:
    plan = plan_sweep(sweep(engine, s3, policy))
    executing = sweep(engine, s3, policy)
    results = [execute_step(executing, r["rule"]) for r in plan["rules"]]
    return plan, results


@pytest.fixture
def swept(crm, s3):
    before = checksums(crm)
    plan, results = run_all(crm, s3)
    return crm, before, plan, results


def test_dry_run_changes_nothing_and_predicts_the_run_exactly(crm, s3):
    before = checksums(crm)
    plan = plan_sweep(sweep(crm, s3))
    assert checksums(crm) == before  # the plan only reads
    executing = sweep(crm, s3)
    for rule in plan["rules"]:
        done = execute_step(executing, rule["rule"])
        assert mismatches(rule["counts"], done["counts"]) == [], rule["rule"]
    counts = {r["rule"]: r["counts"] for r in plan["rules"]}
    assert counts["children"]["consumers"] == {"expire": 1, "held": 1}  # 20 goes, 30 is held
    assert counts["inactive-consumers"]["consumers"] == {"expire": 2, "held": 1}  # 11, 40; 31 held
    assert counts["web-visits"]["web_visits"] == {"delete": 3, "held": 2}
    assert counts["messages"] == {
        "messages": {"delete": 1, "held": 0},
        "message_attachments": {"delete": 1},
    }
    assert counts["support-tickets"]["ticket_comments"] == {"delete": 2}
    assert counts["call-recordings"]["audio:call_audio"] == {"delete": 1}
    assert counts["email-events"]["email_events"] == {"aggregate": 3, "held": 0}
    # the aggregated rows are not de-identified as well: the plan knows they will be gone
    assert counts["geolocation"]["email_events"] == {"deidentify": 1, "held": 0}
    assert counts["request-log"]["cj_requests"] == {"delete": 2}
    assert [r["rule"] for r in plan["rules"]][:2] == ["children", "inactive-consumers"]


def test_old_rows_go_young_rows_stay_at_the_exact_cutoff(swept):
    engine, *_ = swept
    left = ids(engine, "web_visits", "visit_id")
    assert {1, 2, 9}.isdisjoint(left)  # 13 months (and 1 s) old; client 2 after 6 months
    assert {3, 4, 5, 10, 11} <= left  # the cutoff itself, younger ones, client 2's young one
    assert ids(engine, "leads", "lead_id") == {3}  # 2 is 3+ years old; 1 and 4 left with consumers
    assert ids(engine, "messages", "message_id") == {2}
    assert ids(engine, "message_attachments", "attachment_id") == {2}  # went with its message
    assert ids(engine, "support_tickets", "ticket_id") == set()
    assert ids(engine, "ticket_comments", "comment_id") == set()


def test_held_data_stays_and_expired_holds_stop_applying(swept):
    engine, *_ = swept
    contacts = ids(engine, "contacts", "contact_id")
    assert {30, 31} <= contacts  # client 3's litigation hold (R19)
    assert 40 not in contacts  # client 4's hold expired yesterday
    left = ids(engine, "web_visits", "visit_id")
    assert {6, 7, 8} <= left  # consumer 12's hold on web_visits, client 3's hold


def test_minors_go_first_and_soonest(swept):
    engine, _, plan, _ = swept
    contacts = ids(engine, "contacts", "contact_id")
    assert 20 not in contacts  # a child collected 100 days ago: past the 90 days (R26)
    assert {21, 22} <= contacts  # an adult of the same age, a younger child
    assert 12 not in ids(engine, "web_visits", "visit_id")  # the child's visit went with them
    assert plan["waves"]["minors"] == ["children"]
    assert plan["rules"][0]["rule"] == "children"


def test_inactive_consumers_expire_with_all_their_rows(swept, s3):
    engine, *_ = swept
    contacts = ids(engine, "contacts", "contact_id")
    assert 11 not in contacts and 10 in contacts  # 10 is old but active
    assert 1 not in ids(engine, "leads", "lead_id")
    with engine.connect() as c:
        paid = c.execute(sa.select(w.payments).order_by(w.payments.c.payment_id)).all()
    assert [p.payment_id for p in paid] == [1, 2]  # kept 7 years (R19 transaction)


def test_recordings_leave_with_their_rows_all_versions(swept, s3):
    engine, *_ = swept
    assert ids(engine, "call_recordings", "recording_id") == {2}
    versions = s3.list_object_versions(Bucket=AUDIO).get("Versions", [])
    assert {v["Key"] for v in versions} == {"calls/2.wav"}
    assert len(versions) == 2


def test_aggregate_then_delete_counts_every_row_once(swept, crm, s3):
    engine, *_ = swept
    assert ids(engine, "email_events", "event_id") == {4, 5}
    with engine.connect() as c:
        rows = c.execute(
            sa.text(
                "select client_id, month, dims, row_count from cj_retention_aggregates "
                "order by month, dims"
            )
        ).all()
    # the client id is text in the counts (tenant ids of any type, issue 14)
    assert [(r[0], r[1], r[3]) for r in rows] == [("1", "2024-04", 1), ("1", "2024-04", 2)]
    assert rows[0][2] == '{"device_type": "desktop", "event_type": "click"}'
    assert all("ip" not in r[2] and "Fresno" not in r[2] for r in rows)
    run_all(engine, s3)  # a rerun adds nothing
    with engine.connect() as c:
        assert (
            c.execute(sa.text("select sum(row_count) from cj_retention_aggregates")).scalar() == 3
        )


def test_deidentify_erases_columns_and_keeps_rows(swept):
    engine, *_ = swept
    with engine.connect() as c:
        old, young = c.execute(sa.select(w.payments).order_by(w.payments.c.payment_id)).all()
        events = {r.event_id: r for r in c.execute(sa.select(w.email_events))}
    assert (old.card_token, old.card_last4, old.bank_account) == (None, None, None)
    assert (old.amount_cents, old.card_brand) == (500, "visa")  # kept under R19 transaction
    assert young.card_token == "tok_2"
    assert (events[4].geo_city, events[4].geo_region) == (None, None)
    assert events[4].device_type == "mobile"
    assert events[5].geo_city == "Fresno"


def test_request_records_are_kept_24_months_and_open_ones_stay(swept):
    engine, *_ = swept
    with engine.connect() as c:
        left = set(c.execute(sa.text("select request_id from cj_requests")).scalars())
    assert left == {"r-young", "r-old-open"}


def test_a_rerun_finds_nothing_left_to_do(swept, s3):
    engine, *_ = swept
    after = checksums(engine)
    plan, _ = run_all(engine, s3)
    for rule in plan["rules"]:
        for counts in rule["counts"].values():
            assert not any(v for k, v in counts.items() if k in ACTION_KEYS), rule
    assert checksums(engine) == after


def _add_old_visits(crm) -> None:
    """450 visits (ids 1000-1449) of one consumer, 500 days old: past the web-visits period."""
    with crm.begin() as c:
        c.execute(
            sa.insert(w.web_visits),
            [
                dict(
                    visit_id=1000 + i,
                    contact_id=10,
                    client_id=1,
                    url="/y",
                    visited_at=ago(days=500),
                )
                for i in range(450)
            ],
        )


def test_a_crash_mid_rule_then_a_rerun_converges_in_short_batches(crm, s3):
    _add_old_visits(crm)  # 450 more, to be deleted in batches of 100
    policy = POLICY.model_copy(update={"batch_rows": 100, "batch_seconds": None})
    planned = plan_sweep(sweep(crm, s3, policy, only=("web-visits",)))["rules"][0]["counts"]
    assert planned["web_visits"]["delete"] == 453

    batches = []

    def crash(rule_id, n, counts):
        batches.append(n)
        if n == 2:
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError):
        execute_step(sweep(crm, s3, policy, only=("web-visits",)), "web-visits", on_batch=crash)
    assert batches == [1, 2]
    with crm.connect() as c:
        left_old = c.execute(
            sa.text(f"select count(*) from web_visits where visited_at < '{VISITS_CUTOFF}'")
        ).scalar()
    assert left_old == 453 + 2 - 200  # two committed batches; the held ones stay

    seen = []
    done = execute_step(
        sweep(crm, s3, policy, only=("web-visits",)),
        "web-visits",
        on_batch=lambda r, n, c: seen.append(n),
    )
    assert done["counts"]["web_visits"]["delete"] == 253
    assert len(seen) == math.ceil(253 / 100)
    left = ids(crm, "web_visits", "visit_id")
    assert not any(1000 <= v < 1450 for v in left)
    assert {3, 4, 5, 6, 7, 8} <= left  # young and held rows untouched by crash and rerun


def test_a_subset_of_rules_only_touches_those_rules(crm, s3):
    before = ids(crm, "contacts", "contact_id")
    plan = plan_sweep(sweep(crm, s3, only=("web-visits",)))
    assert [r["rule"] for r in plan["rules"]] == ["web-visits"]
    assert plan["rules"][0]["counts"]["web_visits"] == {"delete": 3, "held": 2}
    execute_step(sweep(crm, s3, only=("web-visits",)), "web-visits")
    assert ids(crm, "contacts", "contact_id") == before


@pytest.mark.parametrize(
    "fault",
    [
        "retention.in_batch:rule=web-visits",  # dies before the commit: the batch rolls back
        "retention.after_batch:rule=email-events",  # dies after an aggregate batch's commit
        "retention.after_audio:rule=call-recordings",  # the audio is gone, the row is not yet
        "retention.after_batch:rule=children",  # after a batch of consumers' erasure
    ],
)
def test_an_injected_crash_anywhere_converges_on_the_clean_result(crm, s3, monkeypatch, fault):
    """Crash at a checkpoint, sweep again: the rows a crash-free sweep leaves (the other tests')."""
    from compliance_dev import faults

    monkeypatch.setenv(faults.ENV, fault)
    faults.reset()
    with pytest.raises(faults.InjectedCrash):
        run_all(crm, s3)
    monkeypatch.delenv(faults.ENV)
    faults.reset()
    run_all(crm, s3)
    crashed = checksums(crm)
    audio = sorted(v["Key"] for v in s3.list_object_versions(Bucket=AUDIO).get("Versions", []))
    # converged: a third sweep finds nothing to do and changes nothing
    clean_plan, _ = run_all(crm, s3)
    assert all(
        not any(v for k, v in counts.items() if k in ACTION_KEYS)
        for rule in clean_plan["rules"]
        for counts in rule["counts"].values()
    )
    assert ids(crm, "web_visits", "visit_id") == {3, 4, 5, 6, 7, 8, 10, 11}
    assert ids(crm, "email_events", "event_id") == {4, 5}
    assert ids(crm, "contacts", "contact_id") == {10, 12, 21, 22, 30, 31, 50}
    assert audio == ["calls/2.wav", "calls/2.wav"]
    with crm.connect() as c:  # each aggregated row counted exactly once
        assert (
            c.execute(sa.text("select sum(row_count) from cj_retention_aggregates")).scalar() == 3
        )
    assert checksums(crm) == crashed


def _spans_taken(highs, size, seconds, pace):
    """Steps per batch _spans chooses when each transaction takes `pace(steps)` seconds."""
    from compliance.retention.execute import Progress, _spans

    progress = Progress("r", None)
    pk = sa.column("id", sa.Integer)
    taken, covered = [], 0
    for span in _spans(pk, highs, size, seconds, progress):
        upto = span.compile(compile_kwargs={"literal_binds": True}).string.rsplit("<= ", 1)[1]
        steps = highs.index(int(upto)) + 1 - covered
        covered += steps
        taken.append(steps)
        progress.last = pace(steps)
    assert covered == len(highs)  # every range walked once, in order
    return taken


def test_batches_grow_while_fast_and_stay_short_when_slow():
    highs = list(range(100, 4001, 100))  # 40 ranges of 100 rows
    assert _spans_taken(highs, 100, None, lambda n: 0.001 * n) == [1] * 40  # fixed size
    # fast: at most doubling, never above 100,000 rows (here: 1000 steps, so the rest)
    assert _spans_taken(highs, 100, 0.25, lambda n: 0.001 * n) == [1, 2, 4, 8, 16, 9]
    assert _spans_taken(highs, 10_000, 0.25, lambda n: 0.001 * n)[:6] == [1, 2, 4, 8, 10, 10]
    # slow: each step costs 0.1 s, so two steps fit in 0.25 s
    assert set(_spans_taken(highs, 100, 0.25, lambda n: 0.1 * n)[1:-1]) == {2}
    assert set(_spans_taken(highs, 100, 0.25, lambda n: 1.0 * n)) == {1}


def test_growing_batches_delete_the_same_rows_in_fewer_transactions(crm, s3):
    _add_old_visits(crm)
    policy = POLICY.model_copy(update={"batch_rows": 100, "batch_seconds": 5.0})
    seen: list[int] = []
    done = execute_step(
        sweep(crm, s3, policy, only=("web-visits",)),
        "web-visits",
        on_batch=lambda *a: seen.append(a[1]),
    )
    assert done["counts"]["web_visits"]["delete"] == 453
    assert 1 < len(seen) < math.ceil(453 / 100)  # grew after the first batch
    left = ids(crm, "web_visits", "visit_id")
    assert not any(1000 <= v < 1450 for v in left)
    assert {3, 4, 5, 6, 7, 8} <= left  # young and held rows untouched
