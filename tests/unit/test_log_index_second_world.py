"""The log identity index on the second world (issue 19): nested identity paths (`actor.email`,
`recipients[].email`, `to[]`, `sms.to`), string tenants at a nested path (`org.code`), two
partition layouts, e-mails logged in upper case, the same e-mail in two tenants. Real moto S3.

Who must be found where comes from the generator's ground truth (`Line.owners`: the persons whose
identities sit at mapped paths of a line), never from the code under test: every object holding
a line of a person must be read for that person's request (R8/R10 access, R16.1 erasure), and the
lines found through the index are exactly those found without it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date
from typing import Any

import pytest

from compliance.core.datamap.model import IdentityType, LogStore
from compliance.core.datamap.validate import load_datamap
from compliance.core.logfiles import Targets, collect_shard, day_prefixes
from compliance.core.logfiles.identity_index import LogIndex, index_day
from compliance.core.settings import REPO_ROOT
from compliance.core.stores.s3 import list_keys
from tests.second_world import generate

AS_OF = date(2026, 12, 5)
WORLD = generate.build(AS_OF)
DM = load_datamap(REPO_ROOT / "tests" / "second_world" / "datamap.yaml")
LOGS = {name: s for name, s in DM.stores.items() if isinstance(s, LogStore)}
WS = "cj-ws-index-2"


@pytest.fixture
def index(s3: Any) -> LogIndex:
    s3.create_bucket(Bucket=WS)
    generate.ensure_bucket(s3, generate.LOG_BUCKET)
    for (bucket, key), body in sorted(WORLD.objects.items()):
        if bucket == generate.LOG_BUCKET:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
    idx = LogIndex.of(s3, WS, b"second-world-hash-key")
    for store in LOGS.values():
        for day in day_prefixes(s3, store):
            assert index_day(idx, s3, store, day)["built"] >= 1
    return idx


def _targets(person: generate.Person) -> Targets:
    ref = person.uuid
    identities = [(IdentityType.record_id, person.uuid, ref)]
    identities += [(IdentityType.email, e, ref) for e in sorted(person.emails)]
    identities += [(IdentityType.phone, p, ref) for p in sorted(person.phones)]
    return Targets({person.org: identities})


def test_every_object_holding_a_person_is_read_and_the_lines_are_the_same(
    index: LogIndex, s3: Any
) -> None:
    holds: dict[str, set[str]] = defaultdict(set)  # person -> object keys (ground truth)
    for line in WORLD.lines:
        for owner in line.owners:
            holds[owner].add(line.key)
    listed = {
        (name, day): list(list_keys(s3, store.bucket, day))
        for name, store in LOGS.items()
        for day in day_prefixes(s3, store)
    }
    n_objects = sum(len(v) for v in listed.values())
    assert n_objects == len([k for b, k in WORLD.objects if b == generate.LOG_BUCKET])
    # the planted people (twins, unicode tenant, held, deep...) and some generic ones
    persons = sorted(
        (p for p in WORLD.persons.values() if holds[p.uuid]),
        key=lambda p: (p.uuid not in WORLD.roles.values(), p.uuid),
    )[:16]
    assert len(persons) == 16
    false_reads = could_skip = 0
    for person in persons:
        targets = _targets(person)
        read: set[str] = set()
        plain: Counter = Counter()
        indexed: Counter = Counter()
        for (name, day), objects in listed.items():
            store = LOGS[name]
            chosen = index.objects_to_read(store, objects, targets)
            read |= {o["Key"] for o in chosen}
            for out, objs in ((plain, None), (indexed, chosen)):
                for ref, line in collect_shard(
                    s3, store, day, targets, since=None, until=None, objects=objs
                ):
                    out[(ref, repr(sorted(line.items())))] += 1
        assert holds[person.uuid] <= read, person.uuid  # never an object of theirs missed
        assert plain and indexed == plain, person.uuid  # the very same lines
        false_reads += len(read - holds[person.uuid])
        could_skip += n_objects - len(holds[person.uuid])
    # the index rules out most objects that do not hold the person (a false positive costs a
    # read: a few percent per value looked up, and a request looks up four or five values)
    assert could_skip > 100 and false_reads < 0.15 * could_skip, (false_reads, could_skip)


def test_a_twin_in_another_tenant_is_found_only_in_their_own_tenant(
    index: LogIndex, s3: Any
) -> None:
    """The same e-mail in tenants `01` and `1`: the sidecars hash values, not tenants, so both
    twins' objects are read, and the matcher keeps each twin's lines to their own tenant."""
    for role in ("twin_01", "twin_1"):
        person = WORLD.person(role)
        targets = _targets(person)
        found = []
        for store in LOGS.values():
            for day in day_prefixes(s3, store):
                objects = list(list_keys(s3, store.bucket, day))
                chosen = index.objects_to_read(store, objects, targets)
                found += [
                    line
                    for _ref, line in collect_shard(
                        s3, store, day, targets, since=None, until=None, objects=chosen
                    )
                ]
        expected = [ln for ln in WORLD.lines if person.uuid in ln.owners]
        assert expected and len(found) == len(expected), role
        tenants = {(ln.get("org") or {}).get("code", ln.get("tenant")) for ln in found}
        assert tenants == {person.org}, role
