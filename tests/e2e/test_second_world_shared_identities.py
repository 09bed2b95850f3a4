"""Shared identities on the second world (docs/deletion.md "Shared identities"; R16, R19, R21).

tests/unit/test_shared_identities.py proves the rule on the demo schema. Here it meets the second
world's traits: text tenants ("01" and "1" are two organisations), UUID consumer keys, phones
stored E.164 on the parent table (`people.mobile`) and national with dashes on the child table
(`person_channels.phone`), identities nested in JSON log lines (`actor.email`,
`recipients[].email`, `sms.to`, `to[]`), a drop-line store and a redact store.

Planted after `seed`, in three tenants: a household sharing the landline HOME. Each member has
log lines with only their own e-mail and lines with their e-mail and HOME, and the household an
inbound SMS to HOME alone. One batch (the deletion job task for task, as
test_second_world_backup_rewrite.py runs it) erases Ana of "01" alone, both Cleo and Dan of "1",
and Eve of "acme-east" alone:

- Ana alone: HOME is Ben's mobile too, so it is not hers to erase by. R16 erases *her* data, by
  key and by her own values; what stays is Ben's, not hers kept under an exception (R19 would
  want a code), and her receipt says how many found values stayed out and why (R21). Her rows
  and her e-mail's lines go; Ben's rows, every line of his (HOME ones included) and the
  HOME-only SMS keep their bytes.
- Cleo and Dan: every holder of HOME in "1" is erased, so HOME is admitted and every line of "1"
  carrying it goes (drop store) or loses it (redact store); "01"'s HOME lines stay.
- Eve alone, Finn holding HOME on the child table as `415-555-0123`: the same rule. The
  number is one number in any spelling (`resolve._holders_by_number`): before, Finn was no
  holder and his HOME lines went with Eve's.

Verdicts compare rows and decompressed log lines before and after (read by
tests/second_world/checker.take), with ownership as planted here, never the product's matchers.
"""

from __future__ import annotations

import gzip
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.e2e.test_second_world import _databases, _sql_conn, _wipe
from tests.e2e.test_second_world_backup_rewrite import HERE, NOW, WORKSPACE, _run_deletion
from tests.second_world import checker, generate, schema
from tests.second_world.requests import document, drop

pytestmark = pytest.mark.slow

HOME = "+14155550123"  # the households' landline (checked: nobody's in the generated world)
HOUSEHOLDS = {"01": ("ana", "ben"), "1": ("cleo", "dan"), "acme-east": ("eve", "finn")}
ON_CHILD = {"finn"}  # holds HOME as a channel phone, national; the others as their mobile
ASKING = {"ana", "cleo", "dan", "eve"}
ACT, DLV = generate.ACTIVITY, generate.DELIVERY  # drop-line store, redact store
DAY = NOW.date() - timedelta(days=4)  # a log day of the world
KEYS = {
    ACT: f"activity/{DAY:%Y/%m/%d}/part-household.jsonl.gz",
    DLV: f"delivery/day={DAY:%Y%m%d}/part-household.jsonl.gz",
}
Lines = dict[str, dict[str, list[bytes]]]  # store -> owner ("home-<org>": the SMS) -> lines


def pid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"household/{name}"))


def email(name: str) -> str:
    return f"{name}.household@example.test"


def row_keys(name: str) -> set[tuple[str, tuple[str, ...]]]:
    return {("people", (pid(name),)), ("person_channels", (f"ch-{name}",))}


def _dump(base: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({**base, **fields}).encode()


def _plant(db_url: str, s3: Any) -> Lines:
    """The households' rows (a person and a channel each) and log lines."""
    at = NOW.replace(tzinfo=None) - timedelta(days=30)
    people, channels, lines = [], [], {ACT: {}, DLV: {}}
    for org, members in HOUSEHOLDS.items():
        for name in members:
            child = name in ON_CHILD
            people.append(
                {"person_uuid": pid(name), "org_code": org, "ref_code": f"C-{name}",
                 "full_name": name.title(), "primary_email": email(name),
                 "mobile": None if child else HOME, "is_minor": False, "signed_up_at": at}
            )  # fmt: skip
            phone = generate.national(HOME) if child else None
            mail = None if child else f"{name}@example.org"  # a second e-mail, on the child
            channels.append(
                {"channel_id": f"ch-{name}", "person_uuid": pid(name), "verified_at": at,
                 "kind": "phone" if child else "email", "phone": phone, "email": mail}
            )  # fmt: skip
            act = {"ts": f"{DAY}T10:00:00Z", "org": {"code": org}, "event": "sms.sent"}
            lines[ACT][name] = [
                _dump(act, actor={"email": email(name).upper()}),  # only the own e-mail
                _dump(act, recipients=[{"email": email(name), "name": name.title()}]),
                _dump(act, actor={"uuid": pid(name), "email": email(name)}, sms={"to": HOME}),
            ]
            dlv = {"at": f"{DAY}T10:00:00Z", "tenant": org, "net": {"remote_ip": "192.0.2.9"}}
            lines[DLV][name] = [_dump(dlv, to=[email(name)], sms={"to": HOME})]
        lines[ACT][f"home-{org}"] = [_dump(act, event="sms.received", sms={"to": HOME})]
        lines[DLV][f"home-{org}"] = [_dump(dlv, to=[], sms={"to": HOME})]
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        taken = {r for (r,) in conn.execute(sa.select(schema.people.c.mobile))}
        taken |= {r for (r,) in conn.execute(sa.select(schema.person_channels.c.phone))}
        assert not taken & {HOME, generate.national(HOME)}, "HOME must be the households' only"
        conn.execute(sa.insert(schema.people), people)
        conn.execute(sa.insert(schema.person_channels), channels)
    engine.dispose()
    for store, key in KEYS.items():
        body = b"".join(raw + b"\n" for owned in lines[store].values() for raw in owned)
        s3.put_object(Bucket=generate.LOG_BUCKET, Key=key, Body=gzip.compress(body))
    return lines


@dataclass
class Outcome:
    before: checker.Snapshot
    after: checker.Snapshot
    lines: Lines
    receipts: dict[str, dict[str, Any]]  # person -> receipt
    finalize: dict[str, Any]

    def rows(self, snap: checker.Snapshot, name: str) -> dict:
        return {k: v for k, v in snap.rows.items() if k in row_keys(name)}

    def kept(self, store: str) -> list[bytes]:
        return self.after.lines[(generate.LOG_BUCKET, KEYS[store])]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def outcome(request, tmp_path_factory, s3_endpoint) -> Outcome:
    """The second world on one backend, the households planted, one deletion batch run."""
    from compliance import runtime
    from compliance.core.stores.s3 import s3_client

    s3 = s3_client(endpoint_url=s3_endpoint, access_key="testing", secret_key="testing")
    tmp = tmp_path_factory.mktemp(f"shared-{request.param}")
    with _databases(request.param, tmp) as (db_url, state_url), pytest.MonkeyPatch.context() as mp:
        aws = {"conn_type": "aws", "login": "testing", "password": "testing",
               "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}  # fmt: skip
        mp.setenv("AIRFLOW_CONN_CRM2_DB", json.dumps(_sql_conn(db_url)))
        mp.setenv("AIRFLOW_CONN_COMPLIANCE_DB", json.dumps(_sql_conn(state_url)))
        mp.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(aws))
        mp.setenv("COMPLIANCE_WORKSPACE_BUCKET", WORKSPACE)
        mp.setenv("COMPLIANCE_HASH_KEY", "second-world-key")
        mp.setenv("COMPLIANCE_DATAMAP", str(HERE / "datamap.yaml"))
        buckets = (generate.LOG_BUCKET, generate.BACKUP_BUCKET, WORKSPACE)
        for bucket in buckets:
            _wipe(s3, bucket)
        runtime.sql_engine.cache_clear()
        runtime._schema_ready.clear()
        try:
            engine = sa.create_engine(db_url)
            generate.seed(engine, s3, NOW.date())
            engine.dispose()
            s3.create_bucket(Bucket=WORKSPACE)
            lines = _plant(db_url, s3)
            asking = [(org, n) for org, pair in HOUSEHOLDS.items() for n in pair if n in ASKING]
            received = NOW - timedelta(days=1)
            docs = [
                document(f"DEL-{n}", org, "delete", received, email=email(n)) for org, n in asking
            ]
            drop(s3, WORKSPACE, docs, "households")
            before = checker.take(db_url, s3)
            done = _run_deletion()["finalize"]
            after = checker.take(db_url, s3)
            key = "receipts/{}/DEL-{}.delete.json".format
            receipts = {
                n: json.load(s3.get_object(Bucket=WORKSPACE, Key=key(org, n))["Body"])
                for org, n in asking
            }
            yield Outcome(before, after, lines, receipts, done)
        finally:
            runtime.sql_engine.cache_clear()
            runtime._schema_ready.clear()
            for bucket in buckets:
                _wipe(s3, bucket)


def _holds_home(raw: bytes) -> bool:
    return any(s in raw for s in (HOME.encode(), generate.national(HOME).encode()))


def _one_asks_alone(outcome: Outcome, asker: str, other: str, org: str) -> None:
    assert outcome.finalize["completed"] == len(ASKING), outcome.finalize
    assert outcome.rows(outcome.before, asker) and not outcome.rows(outcome.after, asker)
    assert outcome.rows(outcome.after, other) == outcome.rows(outcome.before, other)
    kept = outcome.kept(ACT)
    assert not [raw for raw in outcome.lines[ACT][asker] if raw in kept]
    theirs = outcome.lines[ACT][other] + outcome.lines[ACT][f"home-{org}"]
    assert [raw for raw in kept if raw in theirs] == theirs  # byte for byte, HOME lines too
    assert outcome.lines[DLV][asker][0] not in outcome.kept(DLV)  # redacted
    assert not [raw for raw in outcome.kept(DLV) if email(asker).encode() in raw.lower()]
    for owner in (other, f"home-{org}"):
        assert outcome.lines[DLV][owner][0] in outcome.kept(DLV)
    assert outcome.receipts[asker].get("shared_identities", {}).get("count", 0) >= 1  # R21
    assert HOME not in json.dumps(outcome.receipts[asker])  # a count, never the value


def test_one_member_erased_keeps_the_household_phone_out(outcome: Outcome) -> None:
    """Ana alone: her rows and lines go; HOME is Ben's too, so nothing of Ben's (nor the
    household's HOME-only SMS) is touched, and her receipt counts the shared value."""
    _one_asks_alone(outcome, "ana", "ben", "01")


def test_every_holder_erased_admits_the_household_phone(outcome: Outcome) -> None:
    """Cleo and Dan of "1": every holder of HOME is erased, so the lines carrying it go (drop
    store: the HOME-only SMS too) or lose it (redact store); "01"'s HOME lines stay."""
    for name in ("cleo", "dan"):
        assert outcome.rows(outcome.before, name) and not outcome.rows(outcome.after, name)
    ones = ("cleo", "dan", "home-1")
    kept = outcome.kept(ACT)
    assert not [raw for o in ones for raw in outcome.lines[ACT][o] if raw in kept]
    redacted = [raw for raw in outcome.kept(DLV) if checker.tenant_of(DLV, raw) == "1"]
    assert len(redacted) == len(ones) and not [raw for raw in redacted if _holds_home(raw)]
    assert [raw for raw in kept if _holds_home(raw) and checker.tenant_of(ACT, raw) == "01"]
    assert not [n for n in ("cleo", "dan") if "shared_identities" in outcome.receipts[n]]


def test_a_holder_on_the_child_table_in_national_form_keeps_the_phone_out(
    outcome: Outcome,
) -> None:
    """Eve alone; Finn holds HOME on the child table as the world stores phones there."""
    _one_asks_alone(outcome, "eve", "finn", "acme-east")


def test_nobody_else_is_touched(outcome: Outcome) -> None:
    """Every other row and every line of the generated world keeps its bytes."""
    gone = {k for name in ASKING for k in row_keys(name)}
    assert outcome.after.rows == {k: v for k, v in outcome.before.rows.items() if k not in gone}
    planted = {(generate.LOG_BUCKET, key) for key in KEYS.values()}
    assert {k: v for k, v in outcome.after.lines.items() if k not in planted} == {
        k: v for k, v in outcome.before.lines.items() if k not in planted
    }
    assert outcome.after.objects == outcome.before.objects  # backups: tombstoned (R18)
