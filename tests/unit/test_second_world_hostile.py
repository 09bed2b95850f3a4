"""Hostile corpus for any-CRM support (issue 14, deliverable 7), on the second world.

String tenants that look like numbers (`01` and `1` are two tenants, R6), a unicode tenant (also
spelt with JSON escapes in a log line), an identity at an unmapped log path only (the eraser
cannot see it; the independent oracle must, so no receipt can claim it is gone, R16), and the same
value at a mapped and an unmapped path. Expected owners come from the second world's ground truth
(tests/second_world/generate.py), never from the code under test. The end-to-end versions are in
tests/e2e/test_second_world.py.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from compliance.core.datamap.model import IdentityType
from compliance.core.datamap.validate import load_datamap
from compliance.core.settings import REPO_ROOT
from tests.second_world import generate
from tests.second_world.requests import document

AS_OF = date(2026, 12, 5)
WORLD = generate.build(AS_OF)
DM = load_datamap(REPO_ROOT / "tests" / "second_world" / "datamap.yaml")
SYSTEM = DM.systems["crm2"]
ACTIVITY = DM.stores["activity_logs"]
DELIVERY = DM.stores["delivery_logs"]
NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
CLIENTS = {code: active for code, _, active, _ in generate.ORGS}


@pytest.fixture
def crm(db_url):
    engine = sa.create_engine(db_url)
    generate.seed_sql(engine, WORLD)
    yield engine
    engine.dispose()


def _identities(pid: str) -> list[tuple[IdentityType, str, str]]:
    """Every identity of a person, as a resolved erasure target carries them (ref = uuid)."""
    p = WORLD.persons[pid]
    out = [(IdentityType.email, e, pid) for e in p.emails]
    out += [(IdentityType.phone, ph, pid) for ph in p.phones | p.stored_phones]
    out += [(IdentityType.record_id, pid, pid), (IdentityType.contact_id, p.ref_code, pid)]
    return out


def _line(**record) -> bytes:
    return json.dumps(record).encode()


# -- "01" is not "1" -----------------------------------------------------------------------------
def test_tenant_registry_keeps_01_and_1_apart(crm):
    from compliance.requests.inbox import load_clients

    clients = load_clients(crm, SYSTEM)
    assert clients == CLIENTS  # text keys: "01" and "1" both there, the unicode one as spelt
    assert all(isinstance(k, str) for k in clients)


def test_intake_takes_the_client_id_as_the_crm_spells_it():
    from compliance.requests.intake import Accepted, Rejected, validate_request

    email = WORLD.person("twin_01").primary_email
    for client in ("01", "1", generate.UNICODE_TENANT, generate.UUID_TENANT):
        doc = document("R-1", client, "delete", NOW - timedelta(days=1), email=email)
        got = validate_request(doc, f"inbox/{client}/r.json", now=NOW, clients=CLIENTS)
        assert isinstance(got, Accepted), got
        assert got.client_id == client
    for client, reason in (
        ("001", "unknown_client"),
        (" 1", "bad_text"),
        ("dormant-co", "inactive_client"),
    ):
        doc = document("R-2", client, "delete", NOW - timedelta(days=1), email=email)
        got = validate_request(doc, "inbox/x/r.json", now=NOW, clients=CLIENTS)
        assert isinstance(got, Rejected) and got.reason.value == reason, (client, got)
    # a document in tenant "1"'s inbox cannot speak for tenant "01"
    doc = document("R-3", "01", "delete", NOW - timedelta(days=1), email=email)
    got = validate_request(doc, "inbox/1/r.json", now=NOW, clients=CLIENTS, source_client="1")
    assert isinstance(got, Rejected) and got.reason.value == "client_mismatch"


def test_resolution_stays_inside_the_tenant_01_never_1(crm):
    from compliance.requests.resolve import Subject, resolve

    t01, t1 = WORLD.person("twin_01"), WORLD.person("twin_1")
    assert t01.emails & t1.emails and t01.ref_code == t1.ref_code == "C-0001"
    email = next(iter(t01.emails & t1.emails))
    got = resolve(
        crm,
        SYSTEM,
        [
            Subject("a", "01", ((IdentityType.email, email),)),
            Subject("b", "1", ((IdentityType.email, email.upper().lower()),)),
            Subject("c", "01", ((IdentityType.contact_id, "C-0001"),)),
            Subject("d", "001", ((IdentityType.email, email),)),
        ],
    )
    assert got["a"].consumer_ids == {t01.uuid}
    assert got["b"].consumer_ids == {t1.uuid}
    assert got["c"].consumer_ids == {t01.uuid}
    assert got["d"].consumer_ids == set()


def test_an_integer_tenant_column_never_reads_01_as_1():
    from compliance.core.sqlmap import KeyTypeError, typed_value, typed_values

    column = sa.Column("client_id", sa.Integer)
    assert typed_value(column, "1") == 1
    with pytest.raises(KeyTypeError) as err:
        typed_value(column, "01")
    assert "01" not in str(err.value)  # names the column, never the value
    assert typed_values(column, ["01", "1", "acme-east"]) == [1]


def test_hold_registry_with_a_varchar_client_column(crm):
    from compliance.requests.holds import active_holds, holding

    held = WORLD.person("held")
    holds = active_holds(crm, SYSTEM, AS_OF, client_ids=["acme-east", "01", "1"])
    assert [(h.client_id, str(h.consumer_id)) for h in holds] == [("acme-east", held.uuid)]
    everywhere = active_holds(crm, SYSTEM, AS_OF)
    assert len(everywhere) == 1  # the lifted hold no longer applies
    assert holding(everywhere, "acme-east", [held.uuid])
    assert not holding(everywhere, "01", [held.uuid])


# -- nested paths, tenants in log lines -----------------------------------------------------------
@pytest.mark.parametrize("store_name", ["activity_logs", "delivery_logs"])
@pytest.mark.parametrize("role", ["twin_01", "twin_1", "unicode", "unicode_twin"])
def test_scan_finds_exactly_the_persons_lines_at_nested_paths(store_name, role):
    """The eraser's scan over the world's lines: the person's lines (ground truth), and never
    the twin's, whose e-mail or phone is the same in another tenant."""
    from compliance.core.logfiles import Targets, scan_lines

    person = WORLD.person(role)
    lines = [ln for ln in WORLD.lines if ln.store == store_name]
    targets = Targets({person.org: _identities(person.uuid)})
    got = {
        raw
        for raw, refs in scan_lines([ln.raw for ln in lines], DM.stores[store_name], targets)
        if refs
    }
    want = {ln.raw for ln in lines if person.uuid in ln.owners}
    assert want, "the world puts every planted person in both log stores"
    assert len(got - want) == 0, "lines of other people or other tenants matched"
    assert len(want - got) == 0, f"{len(want - got)} of the person's lines not found"


def test_unicode_tenant_spelt_with_json_escapes():
    """`zürich-süd` written as `z\\u00fcrich-s\\u00fcd` is the same tenant; `zurich-sud` is not."""
    from compliance.core.logfiles import Targets, scan_lines

    person = WORLD.person("unicode")
    email = person.primary_email
    escaped = json.dumps(
        {"ts": "2026-12-01T10:00:00Z", "org": {"code": person.org}, "actor": {"email": email}}
    ).encode()
    assert b"\\u00fc" in escaped
    other = _line(ts="2026-12-01T10:00:00Z", org={"code": "zurich-sud"}, actor={"email": email})
    targets = Targets({person.org: [(IdentityType.email, email, "r")]})
    found = dict(scan_lines([escaped, other], ACTIVITY, targets))
    assert found[escaped] == frozenset({"r"})
    assert not found[other]


def test_escaped_dot_path_is_not_the_nested_one():
    """`meta\\.v2.ip` is the key "meta.v2", not meta -> v2: the same value under both."""
    from compliance.core.datamap import paths

    record = {"meta.v2": {"ip": "10.0.0.1"}, "meta": {"v2": {"ip": "10.0.0.2"}}}
    assert list(paths.values(record, r"meta\.v2.ip")) == ["10.0.0.1"]
    assert list(paths.values(record, "meta.v2.ip")) == ["10.0.0.2"]


# -- what the eraser cannot see, the oracle must ------------------------------------------------
def _put(s3, store, lines: list[bytes], day: date) -> str:
    from tests.second_world.generate import ensure_bucket

    ensure_bucket(s3, store.bucket)
    key = f"{store.prefix}{day.strftime(store.partition)}part-hostile.jsonl.gz"
    s3.put_object(Bucket=store.bucket, Key=key, Body=gzip.compress(b"\n".join(lines) + b"\n"))
    return key


def test_identity_at_an_unmapped_path_only(s3):
    """The eraser (mapped paths) misses it; the naive oracle finds it, so no receipt (R16)."""
    from compliance.core.logfiles import Targets, scan_lines
    from compliance.deletion.residue_oracle import Value, verify_log_prefix

    person = WORLD.person("hostile")
    email = person.primary_email
    hidden = _line(
        ts="2026-12-02T09:00:00Z", org={"code": person.org}, context={"contact_email": email}
    )
    twin = _line(ts="2026-12-02T09:01:00Z", org={"code": "01"}, context={"contact_email": email})
    targets = Targets({person.org: [(IdentityType.email, email, "r")]})
    assert not any(refs for _, refs in scan_lines([hidden, twin], ACTIVITY, targets))
    day = date(2026, 12, 2)
    key = _put(s3, ACTIVITY, [hidden, twin], day)
    result = verify_log_prefix(
        s3,
        "activity_logs",
        ACTIVITY,
        f"{ACTIVITY.prefix}{day.strftime(ACTIVITY.partition)}",
        [Value(IdentityType.email, email, person.org, given=True)],
    )
    assert result["hits"] == {key: 1}  # the line of its own tenant, not the other tenant's
    assert email.lower() not in json.dumps(result).lower()  # counts and keys, never the value


def test_same_value_at_a_mapped_and_an_unmapped_path(s3):
    """Drop-line store: the mapped path condemns the whole line, so both copies go. Redact store:
    only the mapped copy is redacted; the unmapped copy stays, and the oracle must see it."""
    from compliance.core.datamap import paths
    from compliance.core.logfiles import Targets, scan_lines
    from compliance.deletion.log_scrub import rewrite_object
    from compliance.deletion.residue_oracle import Value, verify_log_prefix

    person = WORLD.person("hostile")
    email = person.primary_email
    targets = Targets({person.org: [(IdentityType.email, email, "r")]})
    both = _line(
        ts="2026-12-02T09:00:00Z",
        org={"code": person.org},
        actor={"email": email},
        context={"contact_email": email},
    )
    assert dict(scan_lines([both], ACTIVITY, targets))[both] == frozenset({"r"})

    day = date(2026, 12, 2)
    delivered = _line(at="2026-12-02T09:00:00Z", tenant=person.org, to=[email], note=f"fwd {email}")
    keep = _line(at="2026-12-02T09:01:00Z", tenant=person.org, to=["someone@example.org"])
    key = _put(s3, DELIVERY, [delivered, keep], day)
    rewrite_object(s3, DELIVERY, DELIVERY.bucket, key, targets, batch_id="b-hostile")
    body = gzip.decompress(s3.get_object(Bucket=DELIVERY.bucket, Key=key)["Body"].read())
    lines = body.splitlines()
    assert lines[1] == keep  # untouched, byte for byte
    redacted = json.loads(lines[0])
    assert email not in list(paths.values(redacted, "to[]"))  # the mapped copy is gone
    assert email in redacted["note"]  # the unmapped copy is beyond the eraser
    result = verify_log_prefix(
        s3,
        "delivery_logs",
        DELIVERY,
        f"{DELIVERY.prefix}{day.strftime(DELIVERY.partition)}",
        [Value(IdentityType.email, email, person.org, given=True)],
    )
    assert result["hits"] == {key: 1}


# -- the judge itself can fail ----------------------------------------------------------------------
def _snapshot():
    from tests.second_world import checker, schema

    snap = checker.Snapshot()
    for name, records in WORLD.records.items():
        table = schema.metadata.tables[name]
        pk = [c.name for c in table.primary_key.columns]
        for rec in records:
            key = tuple(str(rec[c]) for c in pk)
            snap.rows[(name, key)] = tuple(rec[c.name] for c in table.columns)
    for ln in WORLD.lines:
        snap.lines.setdefault((ln.bucket, ln.key), []).append(ln.raw)
    snap.objects = {k: v for k, v in WORLD.objects.items() if k[0] == generate.BACKUP_BUCKET}
    return snap


def _ideal_erasure(before, erased: set[str]):
    """What a perfect eraser leaves: target rows and drop-store lines gone, redact-store lines
    with every mapped value blanked."""
    from tests.second_world import checker

    after = checker.Snapshot(dict(before.rows), {}, dict(before.objects))
    for key in WORLD.rows_of(erased):
        after.rows.pop(key, None)
    owners = {ln.raw: ln.owners for ln in WORLD.lines}
    for (bucket, key), lines in before.lines.items():
        store = checker.store_of(key)
        out = []
        for raw in lines:
            if not owners[raw] & erased:
                out.append(raw)
            elif store == generate.DELIVERY:
                rec = json.loads(raw)
                rec["to"] = ["[redacted]" for _ in rec["to"]]
                if "sms" in rec:
                    rec["sms"] = "[redacted]"
                rec["net"] = "[redacted]"
                out.append(json.dumps(rec, ensure_ascii=False).encode())
        after.lines[(bucket, key)] = out
    return after


def test_the_checker_passes_a_perfect_erasure_and_catches_every_slip():
    from tests.second_world import checker

    before = _snapshot()
    erased = {WORLD.roles["twin_01"], WORLD.roles["deep"]}
    after = _ideal_erasure(before, erased)
    assert checker.check_erasure(WORLD, before, after, erased) == []

    twin = next(k for k in WORLD.rows_of({WORLD.roles["twin_1"]}) if k[0] == "people")
    slipped = _ideal_erasure(before, erased)
    del slipped.rows[twin]  # the twin in tenant "1" erased too
    assert any("not a target" in p for p in checker.check_erasure(WORLD, before, slipped, erased))

    deep_row = next(k for k in WORLD.rows_of({WORLD.roles["deep"]}) if k[0] == "note_attachments")
    slipped = _ideal_erasure(before, erased)
    slipped.rows[deep_row] = before.rows[deep_row]  # a depth-3 row left behind
    assert any("still there" in p for p in checker.check_erasure(WORLD, before, slipped, erased))

    slipped = _ideal_erasure(before, erased)
    left = next(ln for ln in WORLD.lines if ln.store == generate.ACTIVITY and ln.owners & erased)
    slipped.lines[(left.bucket, left.key)].insert(0, left.raw)  # a target line left behind
    problems = checker.check_erasure(WORLD, before, slipped, erased)
    assert any("target line(s) left" in p for p in problems)
    assert any(p.startswith("residue:") for p in problems)

    slipped = _ideal_erasure(before, erased)
    key = next(k for k in slipped.objects)
    slipped.objects[key] = b"changed"  # a backup touched although rewrite is false
    assert any("changed" in p for p in checker.check_erasure(WORLD, before, slipped, erased))


def test_the_checker_knows_what_retention_must_expire():
    from tests.second_world import checker

    before = _snapshot()
    gone = checker.expected_retention(WORLD, before, AS_OF)
    owners = {WORLD.rows[k].owner for k in gone}
    assert WORLD.roles["held"] not in owners  # inactive and old, but held (R19)
    for role in ("minor_old", "inactive"):  # whole consumers
        assert WORLD.rows_of({WORLD.roles[role]}) <= gone, role
    assert WORLD.roles["minor_new"] not in owners
    old = WORLD.person("old_deals").uuid
    mine = {k for k in gone if WORLD.rows[k].owner == old}
    assert {t for t, _ in mine} == {"deals", "deal_notes", "note_attachments"}
    assert ("people", (old,)) not in gone
