"""Property-based tests (hypothesis): random small worlds and request sets (issue 8).

- Erasure (`resolve` + `erase_sql`, the demo data map, SQLite): the consumers resolved are
  exactly those an independent model finds (same tenant; e-mails case-insensitive; aliases and
  call recordings count), so are the identities found on their rows (only those nobody else of
  the tenant holds; the rest `shared`, with every holder), their rows are deleted or masked as
  the map says, and every other row is byte-identical.
- Access (`access.gather.gather_system`): the parts of a request hold exactly the rows its
  consumers own in its tenant, and never a withheld (R10) value.
- Logs (`logfiles.scan_lines`, `log_scrub.rewrite_object` against the moto server): a line matches
  exactly when the spec says so (tenant equal, a whole identity value, duplicates and arrays
  included, never a substring); a rewrite drops or redacts exactly those lines and keeps every
  other byte. Besides the demo's flat stores, a store whose fields (and tenant) are nested paths
  (`actor.email`, `recipients[].email`, `ids[]`, `meta\\.v2.ip`, issue 14) is held to a spec
  walker written here, independently of `compliance.core.datamap.paths`.

Worlds are drawn from tiny pools so collisions (the same e-mail at two clients, a shared phone,
a value only inside free text) are the common case, not the rare one. derandomize=True: CI
sees the same examples every run; a failure prints the example to paste into a unit test.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
from collections import defaultdict
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compliance.core import logfiles
from compliance.core.datamap.model import IdentityType, LogStore
from compliance.core.datamap.validate import load_datamap
from compliance.core.logfiles import matching
from compliance.core.stores.sql import engine_from_url
from compliance.deletion import log_scrub
from compliance.deletion.erase_sql import execute_erasure, residue
from compliance.requests.resolve import Subject, resolve
from compliance_dev.world import schema as w

from .harness import REPO

DM = load_datamap(REPO / "config" / "datamap.yaml")
CRM = DM.systems["crm"]
KEY = b"property-key"
T0 = datetime(2026, 1, 5, 9, 30)
EMAILS = ["ann@x.io", "Ann@X.io", "bob@y.io", "ann.b@x.io"]
PHONES = ["+14155550101", "+14155550102", "+14155550103"]
EXTERNAL = ["C-1", "C-2", "C-3"]
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

pytestmark = pytest.mark.slow

# -- worlds -----------------------------------------------------------------------------------

maybe = st.none().__or__
person = st.fixed_dictionaries(
    {
        "client": st.sampled_from([1, 2]),
        "email": maybe(st.sampled_from(EMAILS)),
        "phone": maybe(st.sampled_from(PHONES)),
        "external": maybe(st.sampled_from(EXTERNAL)),
        "alias": maybe(
            st.fixed_dictionaries(
                {"email": maybe(st.sampled_from(EMAILS)), "phone": maybe(st.sampled_from(PHONES))}
            )
        ),
        "messages": st.lists(st.booleans(), max_size=2),  # True: with an attachment
        "payment": st.booleans(),
        "call_from": maybe(st.sampled_from(PHONES)),  # a recording whose caller is this phone
        "body": st.sampled_from(["hi", "mail me at ann@x.io", "call +14155550102"]),
    }
)
identity = st.one_of(
    st.tuples(st.just(IdentityType.email), st.sampled_from([*EMAILS, "ANN@X.IO", "zed@q.io"])),
    st.tuples(st.just(IdentityType.phone), st.sampled_from([*PHONES, "+14155550199"])),
    st.tuples(st.just(IdentityType.contact_id), st.sampled_from([*EXTERNAL, "C-9"])),
)
request = st.tuples(st.sampled_from([1, 2]), st.lists(identity, min_size=1, max_size=2))


def _load(engine: sa.Engine, people: list[dict[str, Any]]) -> None:
    """The people as CRM rows; ids follow list order."""
    rows: dict[sa.Table, list[dict[str, Any]]] = defaultdict(list)
    for i, p in enumerate(people, start=1):
        rows[w.contacts].append(
            {
                "contact_id": i,
                "client_id": p["client"],
                "email": p["email"],
                "phone": p["phone"],
                "external_id": p["external"],
                "first_name": f"F{i}",
                "last_name": f"L{i}",
                "drivers_license": f"DL{i:05d}",  # withheld (R10)
                "is_child": False,
                "created_at": T0,
                "updated_at": T0,
            }
        )
        if p["alias"]:
            rows[w.contact_aliases].append(
                {
                    "alias_id": i,
                    "contact_id": i,
                    "client_id": p["client"],
                    **p["alias"],
                    "created_at": T0,
                }
            )
        for j, attached in enumerate(p["messages"]):
            mid = i * 10 + j
            rows[w.messages].append(
                {
                    "message_id": mid,
                    "contact_id": i,
                    "client_id": p["client"],
                    "channel": "sms",
                    "direction": "inbound",
                    "body": p["body"],
                    "created_at": T0,
                }
            )
            if attached:
                rows[w.message_attachments].append(
                    {
                        "attachment_id": mid,
                        "message_id": mid,
                        "filename": f"a{mid}.pdf",
                        "created_at": T0,
                    }
                )
        if p["payment"]:
            rows[w.payments].append(
                {
                    "payment_id": i,
                    "contact_id": i,
                    "client_id": p["client"],
                    "card_token": f"tok{i}",
                    "card_last4": "4242",
                    "card_brand": "visa",
                    "bank_account": f"GB00BANK{i:08d}",
                    "amount_cents": 100 * i,
                    "paid_at": T0,
                }
            )
        if p["call_from"]:
            rows[w.call_recordings].append(
                {
                    "recording_id": i,
                    "contact_id": i,
                    "client_id": p["client"],
                    "caller_phone": p["call_from"],
                    "s3_key": f"rec/{i}.wav",
                    "voiceprint": f"vp{i:04d}",
                    "recorded_at": T0,
                }
            )
    with engine.begin() as conn:
        for table in w.metadata.sorted_tables:
            if rows.get(table):
                conn.execute(sa.insert(table), rows[table])


def expected_targets(people: list[dict[str, Any]], client: int, idents: list) -> set[int]:
    """The spec, in plain Python: rows of the request's tenant holding a given identity."""
    found = set()
    for i, p in enumerate(people, start=1):
        if p["client"] != client:
            continue
        alias = p["alias"] or {}
        emails = {e.lower() for e in (p["email"], alias.get("email")) if e}
        phones = {x for x in (p["phone"], alias.get("phone"), p["call_from"]) if x}
        for kind, value in idents:
            if (
                (kind is IdentityType.email and value.lower() in emails)
                or (kind is IdentityType.phone and value in phones)
                or (kind is IdentityType.contact_id and value == p["external"])
            ):
                found.add(i)
    return found


def _held(p: dict[str, Any]) -> set[tuple[IdentityType, str]]:
    """Every identity a person holds in a mapped identity column, as resolution compares it."""
    alias = p["alias"] or {}
    emails = {(IdentityType.email, e.lower()) for e in (p["email"], alias.get("email")) if e}
    phones = {
        (IdentityType.phone, x) for x in (p["phone"], alias.get("phone"), p["call_from"]) if x
    }
    external = {(IdentityType.contact_id, p["external"])} if p["external"] else set()
    return emails | phones | external


def _assert_identities(people: list[dict[str, Any]], subject: Subject, res: Any) -> None:
    """The spec of expansion (docs/deletion.md, *Shared identities*): what was given, plus what
    the request's consumers hold that nobody else of the tenant holds; the rest is `shared`,
    with every holder."""
    own = expected_targets(people, int(subject.client_id), list(subject.identities))
    given = {(k, v.lower() if k is IdentityType.email else v) for k, v in subject.identities}
    holders: dict[tuple[IdentityType, str], set[str]] = defaultdict(set)
    for i, p in enumerate(people, start=1):
        if p["client"] == int(subject.client_id):
            for value in _held(p):
                holders[value].add(str(i))
    found = {v for i in own for v in _held(people[i - 1])} - given
    mine = {str(i) for i in own}
    shared = {v: holders[v] for v in found if holders[v] - mine}
    got = {
        (k, v.lower() if k is IdentityType.email else v)
        for k, vs in res.identities.items()
        if k is not IdentityType.record_id
        for v in vs
    }
    assert got == given | (found - set(shared))
    assert res.identities.get(IdentityType.record_id, set()) == mine
    assert res.shared == shared


def _rows(engine: sa.Engine) -> dict[tuple[str, Any], tuple]:
    out = {}
    with engine.connect() as conn:
        for table in w.metadata.sorted_tables:
            pk = next(iter(table.primary_key.columns))
            for row in conn.execute(sa.select(table)):
                out[(table.name, row._mapping[pk.name])] = tuple(row)
    return out


@pytest.fixture
def crm():
    """One in-memory CRM for the whole test; each example empties and refills it."""
    engine = engine_from_url("sqlite://", poolclass=sa.pool.StaticPool)
    w.metadata.create_all(engine)

    def fresh(people: list[dict[str, Any]]) -> sa.Engine:
        with engine.begin() as conn:
            for table in reversed(w.metadata.sorted_tables):
                conn.execute(sa.delete(table))
            conn.execute(
                sa.insert(w.clients),
                [
                    {
                        "client_id": c,
                        "name": f"C{c}",
                        "industry": "retail",
                        "state": "CA",
                        "active": True,
                        "created_at": T0,
                    }
                    for c in (1, 2)
                ],
            )
        _load(engine, people)
        return engine

    yield fresh
    engine.dispose()


@SETTINGS
@given(
    people=st.lists(person, min_size=1, max_size=6),
    requests=st.lists(request, min_size=1, max_size=3),
)
def test_erasure_removes_exactly_the_targets(crm, people, requests):
    engine = crm(people)
    subjects = [Subject(str(n), str(c), tuple(ids)) for n, (c, ids) in enumerate(requests)]
    resolved = resolve(engine, CRM, subjects)
    for s in subjects:  # tenants and consumer keys travel as text (any-CRM)
        assert resolved[s.ref].consumer_ids == {
            str(i) for i in expected_targets(people, int(s.client_id), list(s.identities))
        }
        _assert_identities(people, s, resolved[s.ref])
    targets = set().union(*(r.consumer_ids for r in resolved.values()))

    before = _rows(engine)
    execute_erasure(engine, CRM, targets, KEY)
    after = _rows(engine)
    assert residue(engine, CRM, targets) == {}

    owner = {}  # (table, pk) -> the contact owning the row, by the world's own construction
    for i, p in enumerate(people, start=1):
        owner[("contacts", i)] = i
        if p["alias"]:
            owner[("contact_aliases", i)] = i
        for j, attached in enumerate(p["messages"]):
            owner[("messages", i * 10 + j)] = i
            if attached:
                owner[("message_attachments", i * 10 + j)] = i
        if p["payment"]:
            owner[("payments", i)] = i
        if p["call_from"]:
            owner[("call_recordings", i)] = i
    for key, row in before.items():
        if key[0] == "clients" or str(owner[key]) not in targets:
            assert after.get(key) == row, key  # byte-identical
        elif key[0] == "payments":  # mask: identifying columns nulled, the books kept (R19)
            m = dict(zip(w.payments.c.keys(), after[key], strict=True))
            assert (
                m["card_token"] is m["card_last4"] is m["bank_account"] is m["contact_id"] is None
            )
            assert (m["card_brand"], m["amount_cents"]) == ("visa", 100 * key[1])
        else:
            assert key not in after, key
    assert set(after) <= set(before)
    # a second execution changes nothing (reruns converge)
    execute_erasure(engine, CRM, targets, KEY)
    assert _rows(engine) == after


class _MemoryS3:
    """The three calls gather/read_parts make, in memory (the parts, not the world, are S3)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict:
        self.objects[Key] = Body if isinstance(Body, bytes) else Body.read()
        return {}

    def get_object(self, Bucket: str, Key: str) -> dict:
        return {"Body": io.BytesIO(self.objects[Key])}

    def get_paginator(self, _name: str) -> Any:
        objects = self.objects

        class _Pages:
            def paginate(self, Bucket: str, Prefix: str = "") -> list[dict]:
                return [{"Contents": [{"Key": k} for k in sorted(objects) if k.startswith(Prefix)]}]

        return _Pages()


@SETTINGS
@given(
    people=st.lists(person, min_size=1, max_size=6),
    requests=st.lists(request, min_size=1, max_size=3),
)
def test_access_parts_hold_exactly_the_subjects_rows(crm, people, requests):
    gather = pytest.importorskip("compliance.access.gather")
    engine = crm(people)
    subjects = [Subject(str(n + 1), c, tuple(ids)) for n, (c, ids) in enumerate(requests)]
    resolved = resolve(engine, CRM, subjects)
    s3 = _MemoryS3()
    batch = {
        "batch_id": "acc-prop",
        "created_at": "2026-01-06T00:00:00+00:00",
        "requests": {
            s.ref: {
                "client_id": s.client_id,
                "since": None,
                "until": "2100-01-01T00:00:00+00:00",
                "jurisdiction": "ccpa",
            }
            for s in subjects
        },
        "consumers": {"crm": {s.ref: sorted(resolved[s.ref].consumer_ids) for s in subjects}},
    }
    s3.put_object(Bucket="b", Key="batches/acc-prop/targets.json", Body=json.dumps(batch).encode())
    from compliance.core.context import Workspace

    gather.gather_system(Workspace(s3, "b"), DM, engine, "acc-prop", "crm")

    withheld = {f"DL{i:05d}" for i in range(1, 7)} | {f"GB00BANK{i:08d}" for i in range(1, 7)}
    withheld |= {f"vp{i:04d}" for i in range(1, 7)}
    gathered = gather.read_parts(s3, "b", "acc-prop")
    for s in subjects:
        records = gathered.get(s.ref, [])
        got = {(r["source"], r["record"]) for r in records}
        mine = expected_targets(people, s.client_id, list(s.identities))
        want = set()
        for i in mine:
            p = people[i - 1]
            want.add(("crm.contacts", i))
            if p["alias"]:
                want.add(("crm.contact_aliases", i))
            for j, attached in enumerate(p["messages"]):
                want.add(("crm.messages", i * 10 + j))
                if attached:
                    want.add(("crm.message_attachments", i * 10 + j))
            if p["payment"]:
                want.add(("crm.payments", i))
            if p["call_from"]:
                want.add(("crm.call_recordings", i))
        assert got == want
        text = json.dumps(records)
        assert not any(v in text for v in withheld)  # R10: never a withheld value


# -- logs ---------------------------------------------------------------------------------------

APP = DM.stores["app_logs"]  # drop_line; tenant client_id; email, phone, contact_id (record_id)
MAIL = DM.stores["mail_logs"]  # redact; tenant "tenant"; rcpt (email)
TENANTS = st.sampled_from([1, 2, "1", "2", True, 1.0, None])
VALUES = {
    IdentityType.email: st.sampled_from([*EMAILS, "ANN@X.IO", "zed@q.io", "ánn@x.io"]),
    IdentityType.phone: st.sampled_from([*PHONES, "14155550101"]),
    IdentityType.record_id: st.sampled_from([7, 8, "7", "8", -7]),
}


def _spelt(value: Any, escaped: bool, ascii_only: bool) -> str:
    """JSON text for a value; a string possibly spelt with \\u escapes (same value parsed)."""
    if not isinstance(value, str) or not escaped:
        return json.dumps(value, ensure_ascii=ascii_only)
    return '"' + "".join(f"\\u{ord(c):04x}" if i % 2 == 0 else c for i, c in enumerate(value)) + '"'


@st.composite
def log_line(draw: st.DrawFn, store: Any) -> bytes:
    """A JSON-lines line in the store's shape, or something that is not JSON at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(
            st.sampled_from([b"not json", b"{", b'{"client_id": 1, "email": "ann@x.io"', b""])
        )
    pairs: list[tuple[str, Any]] = []
    tenant = draw(TENANTS)
    if tenant is not None:
        pairs.append((store.tenant_field, tenant))
    for name, f in store.fields.items():
        for _ in range(draw(st.integers(0, 2))):  # absent, once, or duplicated
            if f.identity is None:
                pairs.append((name, draw(st.sampled_from(["10.0.0.1", "Mozilla/5.0"]))))
            elif draw(st.booleans()):
                pairs.append((name, draw(VALUES[f.identity])))
            else:
                pairs.append((name, draw(st.lists(VALUES[f.identity], max_size=2))))
    pairs.append(("msg", draw(st.sampled_from(["ok", "sent to ann@x.io", "+14155550101 called"]))))
    order = draw(st.permutations(pairs))
    ascii_only = draw(st.booleans())
    body = ",".join(
        f"{_spelt(k, draw(st.integers(0, 9)) == 0, True)}:"
        + (
            f"{_spelt(v, draw(st.integers(0, 4)) == 0, ascii_only)}"
            if not isinstance(v, list)
            else "["
            + ",".join(_spelt(x, draw(st.integers(0, 4)) == 0, ascii_only) for x in v)
            + "]"
        )
        for k, v in order
    )
    return ("{" + body + "}").encode()


def _nested_store(erase: str) -> LogStore:
    return LogStore(
        kind="log",
        bucket="cj-prop-logs",
        prefix=f"nested-{erase}/",
        system="crm",
        timestamp_field="ctx.ts",
        tenant_field="ctx.client",
        erase=erase,
        fields={
            "actor.email": {"categories": ["identifiers"], "identity": "email"},
            "recipients[].email": {"categories": ["identifiers"], "identity": "email"},
            "recipients[].phone": {"categories": ["identifiers"], "identity": "phone"},
            "ids[]": {"categories": ["identifiers"], "identity": "record_id"},
            "meta\\.v2.ip": {"categories": ["identifiers", "internet_activity"]},
        },
    )


NEST = _nested_store("drop_line")
NEST_REDACT = _nested_store("redact")
# The spec's reading of each path, written out by hand ("[]": every element of an array).
SPEC_STEPS = {
    "ctx.client": ["ctx", "client"],
    "actor.email": ["actor", "email"],
    "recipients[].email": ["recipients", "[]", "email"],
    "recipients[].phone": ["recipients", "[]", "phone"],
    "ids[]": ["ids", "[]"],
    "meta\\.v2.ip": ["meta.v2", "ip"],
}


def _steps(name: str) -> list[str]:
    return SPEC_STEPS.get(name, [name])


class _Obj(list):
    """A JSON object to serialise: (key, value) pairs, duplicates allowed."""


def _dump(draw: st.DrawFn, node: Any, ascii_only: bool) -> str:
    """JSON text of `node`, with random spacing and, now and then, \\u-escaped strings."""
    sep = draw(st.sampled_from([",", ", "]))
    colon = draw(st.sampled_from([":", ": "]))
    if isinstance(node, _Obj):
        return (
            "{"
            + sep.join(
                _spelt(k, draw(st.integers(0, 9)) == 0, True) + colon + _dump(draw, v, ascii_only)
                for k, v in node
            )
            + "}"
        )
    if isinstance(node, list):
        return "[" + sep.join(_dump(draw, x, ascii_only) for x in node) + "]"
    return _spelt(node, draw(st.integers(0, 4)) == 0, ascii_only)


@st.composite
def nested_line(draw: st.DrawFn) -> bytes:
    """A line of the nested store: identities in objects and arrays, duplicated keys, values of
    the wrong kind where the path expects an object or an array, copies at unmapped paths."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([b"not json", b'{"ctx": {"client": 1}, "actor": {', b""]))
    email = VALUES[IdentityType.email]
    phone = VALUES[IdentityType.phone]
    record = VALUES[IdentityType.record_id]
    top: list[tuple[str, Any]] = []
    ctx = _Obj(("client", draw(TENANTS)) for _ in range(draw(st.integers(0, 2))))
    ctx.append(("ts", "2026-01-05T09:30:00Z"))
    top.append(("ctx", ctx if draw(st.integers(0, 9)) else [ctx]))  # sometimes not an object
    for _ in range(draw(st.integers(0, 2))):  # no actor, one, or a duplicated key
        actor = _Obj(
            ("email", draw(st.one_of(email, st.lists(email, max_size=2))))
            for _ in range(draw(st.integers(0, 2)))
        )
        actor.append(("name", "Ann"))
        top.append(("actor", actor if draw(st.integers(0, 5)) else [actor]))
    if draw(st.booleans()):
        people = draw(
            st.lists(
                st.one_of(
                    st.builds(lambda e: _Obj([("email", e)]), email),
                    st.builds(lambda p: _Obj([("phone", p)]), phone),
                    st.builds(lambda e, p: _Obj([("email", e), ("phone", p)]), email, phone),
                    email,  # a bare value in the array: not at recipients[].email
                ),
                max_size=3,
            )
        )
        wrong = _Obj([("email", draw(email))])  # an object where the path says array
        top.append(("recipients", people if draw(st.integers(0, 5)) else wrong))
    if draw(st.booleans()):
        top.append(("ids", draw(st.one_of(st.lists(record, max_size=3), record))))
    if draw(st.booleans()):
        top.append(("meta.v2", _Obj([("ip", "10.0.0.1")])))
    if draw(st.booleans()):  # copies at unmapped paths: never what makes a line match
        top.append(("cc", _Obj([("email", draw(email))])))
    if draw(st.booleans()):
        top.append(("email", draw(email)))
    top.append(("msg", draw(st.sampled_from(["ok", "sent to ann@x.io"]))))
    return _dump(draw, _Obj(draw(st.permutations(top))), draw(st.booleans())).encode()


def _targets(draw_pick: list[tuple[str, IdentityType, Any, str]]) -> logfiles.Targets:
    by_tenant: dict[str, list] = defaultdict(list)
    for tenant, kind, value, ref in draw_pick:
        by_tenant[tenant].append((kind, str(value), ref))
    return logfiles.Targets(by_tenant)


target = st.sampled_from(["1", "2"]).flatmap(
    lambda tenant: st.sampled_from(["r1", "r2"]).flatmap(
        lambda ref: st.one_of(
            st.tuples(
                st.just(tenant), st.just(IdentityType.email), st.sampled_from(EMAILS), st.just(ref)
            ),
            st.tuples(
                st.just(tenant), st.just(IdentityType.phone), st.sampled_from(PHONES), st.just(ref)
            ),
            st.tuples(
                st.just(tenant),
                st.just(IdentityType.record_id),
                st.sampled_from(["7", "8"]),
                st.just(ref),
            ),
        )
    )
)


def spec_refs(line: bytes, store: Any, picks: list) -> frozenset[str]:
    """The matching rule of docs (compliance.core.logfiles.matching), written from the spec, not the code."""
    try:
        text = line.decode()
        if not text.lstrip().startswith("{"):
            return frozenset()
        pairs = json.loads(text, object_pairs_hook=list)
    except ValueError:
        return frozenset()
    tenants = {str(v) for v in _spec_nodes(pairs, _steps(store.tenant_field)) if _is_scalar(v)}
    refs = set()
    for name, f in store.fields.items():
        if not f.identity:
            continue
        for node in _spec_nodes(pairs, _steps(name)):
            for item in node if _is_array(node) else [node]:  # an array at the end: its items
                if not _is_scalar(item):
                    continue
                for tenant, kind, value, ref in picks:
                    if tenant in tenants and kind is f.identity:
                        same = (
                            str(item).lower() == str(value).lower()
                            if kind is IdentityType.email
                            else str(item) == str(value)
                        )
                        refs |= {ref} if same else set()
    return frozenset(refs)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))


def _is_object(v: Any) -> bool:  # json.loads(..., object_pairs_hook=list): pairs are tuples
    return isinstance(v, list) and bool(v) and isinstance(v[0], tuple)


def _is_array(v: Any) -> bool:
    return isinstance(v, list) and not _is_object(v)


def _spec_nodes(node: Any, steps: list[str]) -> list[Any]:
    """What stands at `steps`: every member with the key (duplicates too), every element."""
    if not steps:
        return [node]
    head, rest = steps[0], steps[1:]
    if head == "[]":
        return [x for item in node for x in _spec_nodes(item, rest)] if _is_array(node) else []
    if not _is_object(node):
        return []
    return [x for k, v in node if k == head for x in _spec_nodes(v, rest)]


def _spec_redact(node: Any, steps: list[list[str]]) -> Any:
    """`node` with every value at one of `steps` replaced by "[redacted]" (outermost wins)."""
    if any(not s for s in steps):
        return "[redacted]"
    if _is_object(node):
        return [(k, _spec_redact(v, [s[1:] for s in steps if s[0] == k])) for k, v in node]
    if _is_array(node):
        return [_spec_redact(x, [s[1:] for s in steps if s[0] == "[]"]) for x in node]
    return node


@SETTINGS
@given(
    lines=st.lists(log_line(APP), max_size=30),
    picks=st.lists(target, min_size=1, max_size=4),
)
def test_scan_lines_matches_exactly_the_spec(lines, picks):
    got = [refs for _, refs in logfiles.scan_lines(lines, APP, _targets(picks))]
    assert got == [spec_refs(line, APP, picks) for line in lines]


@SETTINGS
@given(
    lines=st.lists(nested_line(), max_size=30),
    picks=st.lists(target, min_size=1, max_size=4),
    few=st.booleans(),
)
def test_scan_nested_paths_matches_exactly_the_spec(lines, picks, few):
    """Identities at nested paths (issue 14), through both pre-filters: few target values
    searched one by one, or every leaf key's value extracted and intersected."""
    saved = matching.FEW_VALUES
    matching.FEW_VALUES = saved if few else 0
    try:
        got = [refs for _, refs in logfiles.scan_lines(lines, NEST, _targets(picks))]
    finally:
        matching.FEW_VALUES = saved
    assert got == [spec_refs(line, NEST, picks) for line in lines]


_SERIAL = itertools.count()


@pytest.fixture(scope="module")
def log_bucket(s3_endpoint, buckets_wiped_after_module):
    """A versioned bucket for the rewrites (emptied with the others when the module ends)."""
    from .harness import admin_client

    s3 = admin_client(s3_endpoint)
    s3.create_bucket(Bucket="cj-prop-logs")
    s3.put_bucket_versioning(Bucket="cj-prop-logs", VersioningConfiguration={"Status": "Enabled"})
    return s3


@SETTINGS
@given(
    store=st.sampled_from([APP, MAIL, NEST, NEST_REDACT]),
    data=st.data(),
    picks=st.lists(target, min_size=1, max_size=4),
)
def test_rewrite_drops_or_redacts_exactly_the_matching_lines(log_bucket, store, data, picks):
    shape = nested_line() if store in (NEST, NEST_REDACT) else log_line(store)
    lines = [x for x in data.draw(st.lists(shape, max_size=20)) if x.strip()]
    s3, key = log_bucket, f"prop/{store.prefix}{next(_SERIAL)}.jsonl.gz"  # one key per example
    s3.put_object(
        Bucket="cj-prop-logs", Key=key, Body=gzip.compress(b"".join(x + b"\n" for x in lines))
    )
    targets = _targets(picks)
    result = log_scrub.rewrite_object(s3, store, "cj-prop-logs", key, targets, batch_id="prop")

    matching = [spec_refs(line, store, picks) for line in lines]
    assert result.rewritten == any(matching)
    body = gzip.decompress(s3.get_object(Bucket="cj-prop-logs", Key=key)["Body"].read())
    out = body.split(b"\n")[:-1]
    if store.erase == "drop_line":
        assert out == [line for line, refs in zip(lines, matching, strict=True) if not refs]
    else:
        assert len(out) == len(lines)
        for line, refs, new in zip(lines, matching, out, strict=True):
            if not refs:
                assert new == line  # byte-identical
                continue
            old_pairs = json.loads(line, object_pairs_hook=list)
            new_pairs = json.loads(new, object_pairs_hook=list)
            personal = [_steps(name) for name in store.fields]
            assert new_pairs == _spec_redact(old_pairs, personal)
    versions = s3.list_object_versions(Bucket="cj-prop-logs", Prefix=key).get("Versions", [])
    assert len(versions) == 1  # the old version, which held the lines, is gone
    assert logfiles.scan_object(s3, store, "cj-prop-logs", key, targets).lines_matched == 0


# -- the ledger of a real run: every entry, every kind of tampering -----------------------------


def test_every_entry_of_a_real_ledger_is_tamper_evident(world, tmp_path):
    """tests/unit/test_ledger.py proves each kind of tampering at one position of a hand-built
    chain (and the CLI's exit codes); this goes through every entry of the ledger a real
    deletion run wrote: each field edited, the entry removed, moved after its successor, or a
    copy replayed, and `ledger.verify` must name that entry. Removing the newest entry is only
    visible against a checkpoint (`--head`), as documented."""
    import sqlite3

    from compliance.core import ledger

    from . import harness as h

    job = h.DeletionJob(world)
    assert not h.scenario(job, None).errors
    for eng in world.engines:
        eng.dispose()
    source = sqlite3.connect(world.state_url.removeprefix("sqlite:///"))
    rows = source.execute("select seq from cj_ledger order by seq").fetchall()
    seqs = [r[0] for r in rows]
    assert len(seqs) >= 5  # requests accepted and rejected at intake, erasures completed

    def tampered(*statements: tuple[str, tuple]) -> ledger.VerifyResult:
        copy = tmp_path / "copy.db"
        copy.unlink(missing_ok=True)
        dst = sqlite3.connect(copy)
        source.backup(dst)
        for sql, params in statements:
            dst.execute(sql, params)
        dst.commit()
        dst.close()
        eng = sa.create_engine(f"sqlite:///{copy}")
        try:
            return ledger.verify(eng, h.HASH_KEY, expected_head=head)
        finally:
            eng.dispose()

    eng = sa.create_engine(world.state_url)
    head = ledger.head(eng)
    assert ledger.verify(eng, h.HASH_KEY, expected_head=head).ok
    eng.dispose()
    edits = {
        "kind": "update cj_ledger set kind = 'request_rejected' || kind where seq = ?",
        "ref": "update cj_ledger set ref = coalesce(ref, '') || '0' where seq = ?",
        "payload": "update cj_ledger set payload = replace(payload, ':', ': ') where seq = ?",
        "at": "update cj_ledger set at = datetime(at, '+1 second') where seq = ?",
        "idempotency_key": "update cj_ledger set idempotency_key = "
        "coalesce(idempotency_key, '') || '-x' where seq = ?",
        "removed": "delete from cj_ledger where seq = ?",
    }
    checked = 0
    for seq in seqs:
        for what, sql in edits.items():
            result = tampered((sql, (seq,)))
            assert not result.ok and result.first_bad_seq == seq, (what, seq, result)
            checked += 1
        if seq < seqs[-1]:  # reorder: this entry's content moved after its successor's
            move = "update cj_ledger set seq = ? where seq = ?"
            result = tampered((move, (-1, seq)), (move, (seq, seq + 1)), (move, (seq + 1, -1)))
            assert not result.ok and result.first_bad_seq == seq, ("reordered", seq, result)
            checked += 1
        result = tampered(  # a replayed copy appended at the end
            (
                "insert into cj_ledger (seq, at, kind, ref, payload, idempotency_key, prev_mac, "
                "mac) select (select max(seq) + 1 from cj_ledger), at, kind, ref, payload, null, "
                "prev_mac, mac from cj_ledger where seq = ?",
                (seq,),
            )
        )
        assert not result.ok and result.first_bad_seq == seqs[-1] + 1, ("replayed", seq, result)
        checked += 1
    source.close()
    h.FIGURES["ledger_tampering_detected"] = f"{checked}/{checked} on {len(seqs)} real entries"
