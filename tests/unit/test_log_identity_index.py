"""The log identity index (issue 19): sidecars of keyed hashes per log object, in the workspace
bucket. Real moto S3; the demo map's log stores. An object without a current sidecar is always
read, so the index can only save reads, never lose a line (R8/R10 access, R16.1 erasure)."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from compliance.core.datamap.model import IdentityType
from compliance.core.datamap.validate import load_datamap
from compliance.core.logfiles import Targets, collect_shard
from compliance.core.logfiles.identity_index import (
    LogIndex,
    Sidecar,
    index_day,
    may_contain,
    sidecar_key,
    target_hashes,
)
from compliance.core.settings import REPO_ROOT
from compliance.core.stores.s3 import list_keys
from compliance.core.workspace_layout import area_of
from compliance.deletion.log_scrub import scrub_shard

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
APP = DM.stores["app_logs"]
MAIL = DM.stores["mail_logs"]
WS = "cj-ws-index"
DAY = "app/dt=2026-11-02/"
KEY = b"unit-test-hash-key"

ANN = "ann.lee@example.com"
BOB_PHONE = "+15551230001"
CAROL = "Carol.Nuñez@Example.com"  # non-ASCII e-mail: parsed, Unicode lower-case


def _line(**fields: Any) -> bytes:
    return json.dumps({"ts": "2026-11-02T10:00:00Z", "client_id": 7, **fields}).encode()


OBJECTS = {
    f"{DAY}a.json.gz": [
        _line(email=ANN.upper(), ip="10.0.0.1"),
        _line(email="someone@else.example"),
    ],
    f"{DAY}b.json.gz": [_line(phone=BOB_PHONE), _line(contact_id=4242)],
    f"{DAY}c.json.gz": [_line(email="nobody@x.example"), b"not json at all"],
    f"{DAY}d.json.gz": [
        _line(email=CAROL),
        json.dumps({"client_id": 7, "ts": "2026-11-02T10:00:00Z", "em\\u0061il": "x"}).encode(),
        _line(phone=["+15550000009", "+15550000010"]),  # an array: its items are parsed
        b'{"ts":"2026-11-02T10:00:00Z","client_id":7,"email":"esc\\u0061ped@x.example"}',
        json.dumps(
            {"client_id": 7, "ts": "2026-11-02", "email": "Dan@X.example"}, ensure_ascii=False
        )
        .replace("Dan", "Dañ")
        .encode(),
    ],
}


@pytest.fixture
def world(s3: Any) -> LogIndex:
    s3.create_bucket(Bucket=APP.bucket)
    s3.create_bucket(Bucket=WS)
    for key, lines in OBJECTS.items():
        body = gzip.compress(b"\n".join(lines) + b"\n")
        s3.put_object(Bucket=APP.bucket, Key=key, Body=body)
    return LogIndex.of(s3, WS, KEY)


def _targets(*identities: tuple[IdentityType, str], tenant: str = "7") -> Targets:
    return Targets({tenant: [(t, v, "r1") for t, v in identities]})


def _listed(s3: Any) -> list[dict[str, Any]]:
    return list(list_keys(s3, APP.bucket, DAY))


def _keys(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["Key"].rsplit("/", 1)[1] for o in objs)


def test_sidecar_round_trip_and_membership(world: LogIndex, s3: Any) -> None:
    key = f"{DAY}a.json.gz"
    sidecar, built = world.build(s3, APP, key)
    assert built.values == 2  # two e-mails (an ip is no identity)
    assert sidecar.k == 4 and len(sidecar.bits) == 8  # the smallest filter: 64 bits
    assert Sidecar.decode(sidecar.encode()) == sidecar
    assert Sidecar.decode(b"junk") is None
    assert Sidecar.decode(sidecar.encode().replace(b"CJLI\x01", b"CJLI\x09", 1)) is None
    world.write(APP, key, sidecar)
    assert area_of(sidecar_key(APP.bucket, key)).name == "log_index"
    obj = next(o for o in _listed(s3) if o["Key"] == key)
    current = world.read(APP, obj)
    assert current == sidecar
    ann = target_hashes(world.secret, APP, _targets((IdentityType.email, ANN)))
    other = target_hashes(world.secret, APP, _targets((IdentityType.email, "zed@x.example")))
    assert may_contain(current, ann) and not may_contain(current, other)
    # another hash key: the sidecar is not current for it (rotated key: rebuilt)
    assert LogIndex.of(s3, WS, b"another-key").read(APP, obj) is None
    # another store's identity fields: not current either
    assert world.read(MAIL, obj) is None


def test_no_plain_identity_in_a_sidecar(world: LogIndex, s3: Any) -> None:
    index_day(world, s3, APP, DAY)
    blobs = b"".join(
        s3.get_object(Bucket=WS, Key=o["Key"])["Body"].read() for o in list_keys(s3, WS)
    )
    assert blobs
    for plain in (ANN, ANN.upper(), BOB_PHONE, "someone@else.example", CAROL, "4242", "ann.lee"):
        assert plain.encode() not in blobs
        assert plain.lower().encode() not in blobs


def test_objects_to_read_skips_only_what_a_current_sidecar_rules_out(
    world: LogIndex, s3: Any
) -> None:
    everything = _listed(s3)
    ann = _targets((IdentityType.email, ANN))
    # no sidecar at all: every object is read
    assert world.objects_to_read(APP, everything, ann) == everything
    counts = index_day(world, s3, APP, DAY)
    assert counts["built"] == 4 and counts["current"] == 0
    assert index_day(world, s3, APP, DAY)["current"] == 4  # nothing to rebuild
    assert _keys(world.objects_to_read(APP, everything, ann)) == ["a.json.gz"]
    bob = _targets((IdentityType.phone, BOB_PHONE), (IdentityType.record_id, "4242"))
    assert _keys(world.objects_to_read(APP, everything, bob)) == ["b.json.gz"]
    # the parsed lines: a non-ASCII e-mail (any case), an array item, an escaped value
    for ident in [
        (IdentityType.email, CAROL.lower()),
        (IdentityType.phone, "+15550000010"),
        (IdentityType.email, "escaped@x.example"),
        (IdentityType.email, "dañ@x.example"),
    ]:
        wanted = _targets(ident)
        found = list(collect_shard(s3, APP, DAY, wanted, since=None, until=None))
        assert len(found) == 1, ident  # the matcher's own reading finds the line
        assert _keys(world.objects_to_read(APP, everything, wanted)) == ["d.json.gz"], ident
    # an object without a sidecar is read
    s3.delete_object(Bucket=WS, Key=sidecar_key(APP.bucket, f"{DAY}c.json.gz"))
    assert _keys(world.objects_to_read(APP, everything, ann)) == ["a.json.gz", "c.json.gz"]
    # a stale sidecar (the object changed since) is ignored: the object is read
    s3.put_object(
        Bucket=APP.bucket,
        Key=f"{DAY}b.json.gz",
        Body=gzip.compress(_line(email=ANN) + b"\n"),
    )
    now = _listed(s3)
    assert _keys(world.objects_to_read(APP, now, ann)) == ["a.json.gz", "b.json.gz", "c.json.gz"]
    lines = [r["email"] for _ref, r in collect_shard(s3, APP, DAY, ann, since=None, until=None)]
    indexed = [
        r["email"]
        for _ref, r in collect_shard(
            s3, APP, DAY, ann, since=None, until=None, objects=world.objects_to_read(APP, now, ann)
        )
    ]
    assert sorted(lines) == sorted(indexed) == sorted([ANN.upper(), ANN])
    # the next run rebuilds the stale and the missing one, and drops an orphan
    s3.delete_object(Bucket=APP.bucket, Key=f"{DAY}d.json.gz")
    counts = index_day(world, s3, APP, DAY)
    assert (counts["built"], counts["current"], counts["removed"]) == (2, 1, 1)


def test_a_scrub_reads_fewer_objects_and_drops_the_rewritten_sidecar(
    world: LogIndex, s3: Any
) -> None:
    index_day(world, s3, APP, DAY)
    ann = _targets((IdentityType.email, ANN))
    result = scrub_shard(s3, APP, DAY, ann, batch_id="b-1", verify="changed", index=world)
    assert result.objects == 4 and result.objects_skipped == 3
    assert result.objects_rewritten == 1 and result.lines_removed == 1 and result.residue == 0
    sidecars = {o["Key"] for o in list_keys(s3, WS)}
    assert sidecar_key(APP.bucket, f"{DAY}a.json.gz") not in sidecars  # no erased hash remains
    assert len(sidecars) == 3
    # the rewritten object no longer holds Ann: rebuilt, its sidecar rules her out
    index_day(world, s3, APP, DAY)
    assert world.objects_to_read(APP, _listed(s3), ann) == []


def test_the_filter_never_misses_and_rarely_claims() -> None:
    """No false negative ever (correctness); false positives near the design rate (cost)."""
    from compliance.core.logfiles.identity_index import index_secret, value_hash

    secret = index_secret(KEY)
    held = {value_hash(secret, f"held{i}@x.example".encode()) for i in range(5000)}
    sidecar = Sidecar.decode(Sidecar.of("e", 1, "f", "k", held).encode())
    assert sidecar is not None and all(sidecar.contains(h) for h in held)
    others = [value_hash(secret, f"other{i}@x.example".encode()) for i in range(5000)]
    rate = sum(sidecar.contains(h) for h in others) / len(others)
    assert 0.01 < rate < 0.10, rate
    assert len(sidecar.bits) * 8 == 6 * 5000  # BITS_PER_VALUE bits per value


def test_access_gathering_reads_fewer_objects_for_the_same_records(
    world: LogIndex, s3: Any
) -> None:
    """`gather_log_shard` with the index: the same bundle records (R10), fewer objects read."""
    from types import SimpleNamespace

    from compliance.access import gather
    from compliance.core.context import Workspace
    from compliance.core.shards import LogShard

    index_day(world, s3, APP, DAY)
    dm = SimpleNamespace(stores={"app_logs": APP})
    records = {}
    for batch_id, index in (("b-plain", None), ("b-indexed", world)):
        batch = {
            "batch_id": batch_id,
            "created_at": "2026-11-03T00:00:00+00:00",
            "requests": {
                "1": {"client_id": "7", "since": None, "until": "2100-01-01T00:00:00+00:00"}
            },
            "identities": {"1": {"email": [ANN], "phone": [BOB_PHONE]}},
        }
        s3.put_object(Bucket=WS, Key=f"batches/{batch_id}/targets.json", Body=json.dumps(batch))
        summary = gather.gather_log_shard(
            Workspace(s3, WS), dm, s3, batch_id, LogShard("app_logs", DAY), index=index
        )
        assert summary["objects"] == 4
        assert summary["objects_read"] == (4 if index is None else 2)
        records[batch_id] = gather.read_parts(s3, WS, batch_id)["1"]
    assert len(records["b-plain"]) == 2  # Ann's line and Bob's
    assert records["b-indexed"] == records["b-plain"]
