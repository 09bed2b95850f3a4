"""The log identity index (issue 19): sidecars of keyed hashes per log object, in the workspace
bucket. Real moto S3; the demo map's log stores. An object without a current sidecar is always
read, so the index can only save reads, never lose a line (R8/R10 access, R16.1 erasure)."""

from __future__ import annotations

import gzip
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.core.datamap.model import IdentityType
from compliance.core.datamap.validate import load_datamap
from compliance.core.logfiles import Targets, collect_shard
from compliance.core.logfiles.fuse_filter import MAX_BITS, MIN_BITS, Sidecar, width_for
from compliance.core.logfiles.identity_index import (
    SIZE_BUDGET,
    Extractor,
    LogIndex,
    index_day,
    index_secret,
    may_contain,
    normalised,
    sidecar_key,
    target_hashes,
    value_hash,
    value_hashes,
)
from compliance.core.logfiles.matching import scan_lines
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
    assert built.sidecar_bytes == len(sidecar.encode())
    assert Sidecar.decode(sidecar.encode()) == sidecar
    assert Sidecar.decode(b"junk") is None
    assert Sidecar.decode(sidecar.encode().replace(b"CJLI\x02", b"CJLI\x09", 1)) is None
    assert Sidecar.decode(sidecar.encode()[:-1]) is None  # truncated
    assert Sidecar.decode(sidecar.encode() + b"\0") is None
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


@pytest.mark.parametrize("width", [2.0, 3.0, 3.4, 4.0, 6.7])
def test_the_filter_never_misses_and_claims_at_its_design_rate(width: float) -> None:
    """No false negative ever (correctness); false positives at 2**-bits, mixed by the share of
    values given one bit more (cost); and about 1.1 * width bits per value (size)."""
    secret = index_secret(KEY)
    held = value_hashes(secret, [f"held{i}@x.example".encode() for i in range(20_000)])
    assert held[0] == value_hash(secret, b"held0@x.example")
    sidecar = Sidecar.decode(Sidecar.of(b"stamp-01", held, width).encode())
    assert sidecar is not None and all(sidecar.contains(h) for h in held)
    others = value_hashes(secret, [f"other{i}@x.example".encode() for i in range(20_000)])
    rate = sum(sidecar.contains(h) for h in others) / len(others)
    design = sidecar.false_positive_rate
    assert 2.0 ** -(int(width) + 1) <= design <= 2.0 ** -int(width)
    assert abs(rate - design) < 4 * (design / len(others)) ** 0.5 + 0.002, (rate, design)
    bits_per_value = 8 * len(sidecar.encode()) / len(held)
    assert width * 1.05 < bits_per_value < width * 1.25, bits_per_value


def test_tiny_and_empty_sets() -> None:
    secret = index_secret(KEY)
    empty = Sidecar.decode(Sidecar.of(b"stamp-01", [], 4.0).encode())
    assert empty is not None and not empty.contains(value_hash(secret, b"x@y.example"))
    for n in (1, 2, 3, 7, 40):
        held = value_hashes(secret, [f"v{i}".encode() for i in range(n)])
        sidecar = Sidecar.decode(Sidecar.of(b"stamp-01", held, 3.5).encode())
        assert sidecar is not None and all(sidecar.contains(h) for h in held)


def test_the_width_spends_the_budget() -> None:
    """`width_for`: the widest fingerprints that keep a sidecar within its byte budget."""
    secret = index_secret(KEY)
    for n, budget in [(11_000, 5_000.0), (56_000, 26_000.0), (1_700, 1_500.0), (3_000, 900.0)]:
        width = width_for(n, budget)
        assert MIN_BITS <= width <= MAX_BITS
        held = value_hashes(secret, [f"v{i}".encode() for i in range(n)])
        size = len(Sidecar.of(b"stamp-01", held, width).encode())
        if width > MIN_BITS:
            assert 0.9 * budget < size <= 1.01 * budget, (n, budget, width, size)
        else:  # too dense for its budget: the narrowest filter
            assert size > 0.9 * budget
    assert width_for(10, 1e9) == MAX_BITS


VALUES = st.sampled_from(
    [
        "ann@x.example",
        "ANN@X.example",
        "bob@y.example",
        "Dañ@X.example",
        "+15551230001",
        "+15551230002",
        "4242",
        "0",
        "",
        " ann@x.example",
    ]
)


def _random_line(draw: Any) -> bytes:
    fields: dict[str, Any] = {"ts": "2026-11-02T10:00:00Z"}
    if draw(st.booleans()):
        fields["client_id"] = draw(st.sampled_from([7, "7", 8]))
    for name in ("email", "phone", "contact_id"):
        kind = draw(st.integers(0, 4))
        value = draw(VALUES)
        if kind == 1:
            fields[name] = value
        elif kind == 2:
            fields[name] = [value, draw(VALUES)]
        elif kind == 3 and value.isdigit():
            fields[name] = int(value)
        elif kind == 4:
            fields["meta"] = {name: value}  # the leaf key, elsewhere: extracted all the same
    text = json.dumps(fields, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        text = text.replace('"email"', '"em\\u0061il"')  # a key spelt with an escape
    return text.encode()


@st.composite
def _objects(draw: Any) -> list[bytes]:
    return [_random_line(draw) for _ in range(draw(st.integers(1, 6)))]


@settings(max_examples=150, deadline=None)
@given(lines=_objects(), probe=VALUES, kind=st.sampled_from(list(IdentityType)))
def test_every_value_the_matcher_can_match_is_in_the_sidecar(
    lines: list[bytes], probe: str, kind: IdentityType
) -> None:
    """The superset property, against the matcher itself: whenever the matcher finds a line of
    an object for a target, the object's sidecar (at the narrowest width) may contain it."""
    secret = index_secret(KEY)
    raw: set[bytes] = set()
    Extractor.get(APP).add(b"\n".join(lines) + b"\n", raw)
    sidecar = Sidecar.of(b"stamp-01", value_hashes(secret, normalised(raw)), float(MIN_BITS))
    for tenant in ("7", "8"):
        targets = _targets((kind, probe), tenant=tenant)
        if not targets:
            continue
        if any(refs for _line, refs in scan_lines(lines, APP, targets)):
            assert may_contain(sidecar, target_hashes(secret, APP, targets)), (lines, probe)


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


def test_a_version_1_sidecar_is_stale_and_rebuilt(world: LogIndex, s3: Any) -> None:
    """Sidecars of the former format (a Bloom filter, VERSION 1) are ignored: the object is read
    in full, and the next run replaces them."""
    index_day(world, s3, APP, DAY)
    key = f"{DAY}a.json.gz"
    old = b"CJLI\x01\x00\x05" + b'{"k":4}' + b"\xff" * 8  # every bit set: would claim anything
    s3.put_object(Bucket=WS, Key=sidecar_key(APP.bucket, key), Body=old)
    obj = next(o for o in _listed(s3) if o["Key"] == key)
    assert world.read(APP, obj) is None
    nobody = _targets((IdentityType.email, "zed@x.example"))
    assert _keys(world.objects_to_read(APP, _listed(s3), nobody)) == ["a.json.gz"]
    counts = index_day(world, s3, APP, DAY)
    assert (counts["built"], counts["current"]) == (1, 3)
    assert world.objects_to_read(APP, _listed(s3), nobody) == []


def test_sidecars_stay_within_their_budget(world: LogIndex, s3: Any) -> None:
    """On objects of a realistic density (a mail gateway's log: an e-mail per line), the
    sidecars cost at most SIZE_BUDGET of the gzip bytes and still rule out most objects."""
    day = "app/dt=2026-11-03/"
    rng = random.Random(19)
    for part in range(3):
        lines = [
            _line(  # a gateway's line: one identity, a message id, about 40 gzip bytes
                email=f"{rng.choice(['ann', 'bo', 'cy'])}{rng.randrange(10**6)}@mail.example",
                ip=".".join(str(rng.randrange(256)) for _ in range(4)),
                msg_id=f"<{rng.getrandbits(64):016x}@mx.example>",
                status=rng.choice(["delivered", "deferred", "bounced"]),
            )
            for _ in range(4000)
        ]
        if part == 1:
            lines.append(_line(email="p1-17@mail.example"))
        body = gzip.compress(b"\n".join(lines) + b"\n")
        s3.put_object(Bucket=APP.bucket, Key=f"{day}part-{part}.json.gz", Body=body)
    counts = index_day(world, s3, APP, day)
    assert counts["built"] == 3
    assert counts["index_bytes"] <= SIZE_BUDGET * counts["bytes_in"] * 1.01
    listed = list(list_keys(s3, APP.bucket, day))
    found = _targets((IdentityType.email, "p1-17@mail.example"))
    assert "part-1.json.gz" in _keys(world.objects_to_read(APP, listed, found))
    sidecars = [world.read(APP, o) for o in listed]
    design = sum(s.false_positive_rate for s in sidecars if s is not None)
    assert 3 * 2.0**-4 < design < 3 * 2.0**-2  # 2 to 4 bits per value fit this budget
    reads = 0
    for i in range(300):  # absent people: each object is read only on a false positive
        absent = _targets((IdentityType.email, f"absent{i}@x.example"))
        reads += len(world.objects_to_read(APP, listed, absent))
    assert 0.6 * 300 * design < reads < 1.4 * 300 * design, (reads, design)
