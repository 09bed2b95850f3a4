"""The log engine (compliance.core.logfiles, compliance.deletion.log_scrub) against a real moto S3
server, versioned buckets."""

from __future__ import annotations

import gzip
import json
import random
from datetime import UTC, date, datetime

import pytest

from compliance.core import logfiles
from compliance.core.datamap.model import IdentityType, LogStore
from compliance.core.logfiles import Targets, matching, reading
from compliance.core.stores.s3 import ObjectChanged
from compliance.deletion import log_scrub

BUCKET = "cj-app-logs"
BATCH = "batch-0001"
E, P, R = IdentityType.email, IdentityType.phone, IdentityType.record_id

APP = LogStore(
    kind="log",
    bucket=BUCKET,
    prefix="app/",
    partition="dt=%Y-%m-%d/",
    system="crm",
    timestamp_field="ts",
    tenant_field="client_id",
    fields={
        "email": {"categories": ["identifiers"], "identity": "email"},
        "phone": {"categories": ["identifiers"], "identity": "phone"},
        "contact_id": {"categories": ["identifiers"], "identity": "record_id"},
        "ip": {"categories": ["identifiers", "internet_activity"]},
        "ua": {"categories": ["internet_activity"]},
    },
)
MAIL = LogStore(
    kind="log",
    bucket=BUCKET,
    prefix="mail/",
    partition="%Y/%m/%d/",
    system="crm",
    timestamp_field="at",
    tenant_field="tenant",
    erase="redact",
    fields={
        "rcpt": {"categories": ["identifiers"], "identity": "email"},
        "remote_ip": {"categories": ["identifiers", "internet_activity"]},
    },
)


def jl(**fields) -> bytes:
    """One compact JSON line, as our writers produce them."""
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def put(s3, key: str, lines: list[bytes]) -> str:
    resp = s3.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(b"".join(lines)))
    return resp["VersionId"]


def read(s3, key: str) -> bytes:
    return gzip.decompress(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def versions(s3, key: str) -> list[dict]:
    resp = s3.list_object_versions(Bucket=BUCKET, Prefix=key)
    return [v for v in resp.get("Versions", []) if v["Key"] == key]


@pytest.fixture
def bucket(s3):
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return s3


JOHN = Targets({"1": [(E, "john.doe@example.com", "req-a")]})


# --- matching --------------------------------------------------------------------------------


def test_scan_lines_tenant_case_and_missing_tenant():
    lines = [
        jl(ts="t", client_id=1, email="john.doe@example.com"),
        jl(ts="t", client_id=2, email="john.doe@example.com"),  # other tenant
        jl(ts="t", client_id="1", email="John.Doe@Example.COM"),  # tenant as string, mixed case
        jl(ts="t", email="john.doe@example.com"),  # no tenant field
        jl(ts="t", client_id=1, email="jane@example.com"),
        jl(ts="t", client_id=1, msg="john.doe@example.com"),  # not an identity field
    ]
    out = list(logfiles.scan_lines(lines, APP, JOHN))
    assert [line for line, _ in out] == lines
    assert [sorted(refs) for _, refs in out] == [["req-a"], [], ["req-a"], [], [], []]
    alone = list(logfiles.scan_lines([lines[2]], APP, JOHN))  # no lower-case twin in its block
    assert alone == [(lines[2], frozenset({"req-a"}))]


def test_scan_lines_phone_record_id_and_numbers():
    targets = Targets(
        {
            "7": [(P, "+15551234567", "req-p"), (R, "c42", "req-r"), (R, "1234", "req-n")],
        }
    )
    lines = [
        jl(client_id=7, phone="+15551234567"),
        jl(client_id=7, contact_id="c42"),
        jl(client_id=7, contact_id="C42"),  # ids are exact, not case-insensitive
        jl(client_id=7, contact_id="c421"),
        jl(client_id=7, contact_id=1234),  # an id logged as a number
        jl(client_id=7, contact_id=12345),
        jl(client_id=7, phone="+15551234567", contact_id="c42"),
        jl(client_id=7, email="+15551234567"),  # a phone value in the e-mail field
    ]
    refs = [sorted(r) for _, r in logfiles.scan_lines(lines, APP, targets)]
    assert refs == [["req-p"], ["req-r"], [], [], ["req-n"], [], ["req-p", "req-r"], []]


def test_fallback_path_for_escapes_whitespace_and_odd_shapes():
    targets = Targets({"1": [(E, "john.doe@example.com", "a"), (E, "jörg@example.de", "b")]})
    lines = [
        b'{"client_id":1,"email":"john.doe\\u0040example.com"}\n',  # escaped @
        b'{"client_id": 1, "email": "john.doe@example.com"}\n',  # spaces after colons
        b'{ "client_id" : 1 , "email" :\t"JOHN.DOE@example.com" }\n',
        b'{"client_id":1,"em\\u0061il":"john.doe@example.com"}\n',  # escaped key
        b'{"client_id":1,"msg":"say \\"hi\\"","email":"john.doe@example.com"}\n',
        b'{"client_id":1,"email":["x@example.com","john.doe@example.com"]}\n',  # array
        '{"client_id":1,"email":"JÖRG@example.de"}\n'.encode(),  # raw UTF-8, upper case
        b'{"client_id":1,"email":"J\\u00d6RG@example.de"}\n',  # escaped non-ASCII
        b'{"client_id":1,"email":"john.doe@example.com","email":"other@x.org"}\n',  # duplicate
        b'{"client_id":1,"user":{"email":"john.doe@example.com"}}\n',  # nested: not a field
        b'{"client_id":1,"email2":"john.doe@example.com"}\n',  # another field
        b'{"client_id":1,"email":"john.doe@example.com"\n',  # not JSON
        b'{"client_id":2,"email":"john.doe\\u0040example.com"}\n',  # other tenant
    ]
    # One line at a time: a plain line in the same block must not be what makes the others found.
    refs = [sorted(r) for line in lines for _, r in logfiles.scan_lines([line], APP, targets)]
    assert refs == [["a"]] * 6 + [["b"], ["b"], ["a"], [], [], [], []]
    assert [sorted(r) for _, r in logfiles.scan_lines(lines, APP, targets)] == refs


def _reference(line: bytes, store: LogStore, wanted: dict) -> set[str]:
    """A slow, obviously correct matcher: parse every line."""
    try:
        obj = json.loads(line)
    except ValueError:
        return set()
    if not isinstance(obj, dict):
        return set()
    tenant = obj.get(store.tenant_field)
    if isinstance(tenant, bool) or not isinstance(tenant, str | int):
        return set()
    refs: set[str] = set()
    for name, spec in store.fields.items():
        value = obj.get(name)
        if spec.identity is None or isinstance(value, bool) or not isinstance(value, str | int):
            continue
        text = str(value).lower() if spec.identity is E else str(value)
        refs |= wanted.get((str(tenant), spec.identity, text), set())
    return refs


def test_fast_path_agrees_with_parsing_every_line():
    rnd = random.Random(1234)
    emails = [f"user{i}@example.com" for i in range(40)]
    wanted: dict = {}
    by_tenant: dict[str, list] = {}
    for i, email in enumerate(emails[:10]):
        tenant = str(1 + i % 3)
        wanted.setdefault((tenant, E, email), set()).add(f"r{i}")
        by_tenant.setdefault(tenant, []).append((E, email, f"r{i}"))
        wanted.setdefault((tenant, R, f"c{i}"), set()).add(f"r{i}")
        by_tenant[tenant].append((R, f"c{i}", f"r{i}"))
    targets = Targets(by_tenant)

    def variant(email: str) -> str:
        return rnd.choice([email, email.upper(), email.title(), email[0].upper() + email[1:]])

    lines = []
    for _ in range(3000):
        obj: dict = {"ts": "2024-05-01T00:00:00Z"}
        if rnd.random() < 0.95:
            obj["client_id"] = rnd.choice([1, 2, 3, "1", "2", "4"])
        if rnd.random() < 0.7:
            obj["email"] = variant(rnd.choice(emails))
        if rnd.random() < 0.5:
            obj["contact_id"] = rnd.choice([f"c{rnd.randrange(50)}", rnd.randrange(50)])
        if rnd.random() < 0.3:
            obj["msg"] = rnd.choice(['quote " here', "caf\u00e9", "back\\slash", emails[1]])
        keys = list(obj)
        rnd.shuffle(keys)
        obj = {k: obj[k] for k in keys}
        style = rnd.random()
        if style < 0.6:
            text = json.dumps(obj, separators=(",", ":"))
        elif style < 0.8:
            text = json.dumps(obj)  # spaces after colons, \\u escapes
        else:
            text = json.dumps(obj, ensure_ascii=False, indent=None).replace("@", "\\u0040")
        lines.append(text.encode() + b"\n")
    got = [set(refs) for _, refs in logfiles.scan_lines(lines, APP, targets)]
    expected = [_reference(line, APP, wanted) for line in lines]
    assert sum(1 for e in expected if e) > 100  # the sample does exercise matches
    assert got == expected


def test_targets_normalise_and_never_show_values():
    targets = Targets({1: [("email", " John@X.com ", "r1"), (P, "", "r2"), (R, 42, "r3")]})
    assert targets.lookup("1", E, "john@x.com") == {"r1"}
    assert targets.lookup("1", R, "42") == {"r3"}
    assert targets.lookup("2", E, "john@x.com") == frozenset()
    assert targets.refs == {"r1", "r3"}  # the blank phone was dropped
    assert repr(targets) == "Targets(tenants=1, identities=2, refs=2)"
    assert "john" not in repr(JOHN).lower()


# --- rewriting objects -----------------------------------------------------------------------


def test_drop_mode_rewrites_only_matching_lines(bucket):
    s3 = bucket
    targets = Targets(
        {
            "1": [(E, "john.doe@example.com", "req-a"), (P, "+15550001111", "req-b")],
            "3": [(R, "c9", "req-c")],
        }
    )
    lines = [
        jl(ts="2024-05-01T00:00:01Z", client_id=1, email="john.doe@example.com", ip="1.2.3.4"),
        jl(ts="2024-05-01T00:00:02Z", client_id=2, email="john.doe@example.com"),
        jl(ts="2024-05-01T00:00:03Z", client_id=1, email="JOHN.DOE@EXAMPLE.COM"),
        jl(ts="2024-05-01T00:00:04Z", client_id=1, phone="+15550001111"),
        jl(ts="2024-05-01T00:00:05Z", client_id=3, contact_id="c9"),
        jl(ts="2024-05-01T00:00:06Z", client_id=1, email="jane@example.com", ua="x"),
        b'{"ts":"2024-05-01T00:00:07Z", "client_id": 4, "note": "spaces kept"}\n',
    ]
    key = "app/dt=2024-05-01/part-0.json.gz"
    put(s3, key, lines)
    result = log_scrub.rewrite_object(s3, APP, BUCKET, key, targets, batch_id=BATCH)
    assert result.rewritten
    assert (result.lines_in, result.lines_matched) == (7, 4)
    assert result.per_ref == {"req-a": 2, "req-b": 1, "req-c": 1}
    assert result.versions_deleted == 1
    assert read(s3, key).splitlines(keepends=True) == [lines[1], lines[5], lines[6]]
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["Metadata"] == {"cj-rewritten": BATCH}
    assert head["ServerSideEncryption"] == "AES256"
    assert len(versions(s3, key)) == 1
    json.dumps(result.to_dict())


def test_redact_mode_keeps_the_rest_of_the_line(bucket):
    s3 = bucket
    targets = Targets({"5": [(E, "ann@example.com", "req-m")]})
    lines = [
        b'{"at":"2024-05-02T10:00:00Z","tenant":5,"rcpt":"Ann@Example.com",'
        b'"remote_ip":"10.0.0.1","status":"sent","size":1234}\n',
        b'{"at":"2024-05-02T10:00:01Z","tenant":6,"rcpt":"ann@example.com",'
        b'"remote_ip":"10.0.0.2","status":"sent"}\n',
        b'{"at": "2024-05-02T10:00:02Z", "tenant": "5", "rcpt": "ann@example.com", "x": [1, 2]}\n',
        b'{"at":"2024-05-02T10:00:03Z","tenant":5,"rcpt":"bob@example.com","remote_ip":"1"}\n',
        b'{"tenant":5,"rcpt":"ann@example.com","rcpt":"bob@example.com"}\n',  # duplicate key
    ]
    key = "mail/2024/05/02/mx1.json.gz"
    put(s3, key, lines)
    result = log_scrub.rewrite_object(s3, MAIL, BUCKET, key, targets, batch_id=BATCH)
    assert (result.rewritten, result.lines_matched, result.per_ref) == (True, 3, {"req-m": 3})
    out = read(s3, key).splitlines(keepends=True)
    assert out[1] == lines[1] and out[3] == lines[3]
    assert out[0] == (
        b'{"at":"2024-05-02T10:00:00Z","tenant":5,"rcpt":"[redacted]",'
        b'"remote_ip":"[redacted]","status":"sent","size":1234}\n'
    )
    assert out[2] == (
        b'{"at": "2024-05-02T10:00:02Z", "tenant": "5", "rcpt": "[redacted]", "x": [1, 2]}\n'
    )
    assert out[4] == b'{"tenant":5,"rcpt":"[redacted]","rcpt":"[redacted]"}\n'
    assert json.loads(out[0])["status"] == "sent"
    again = log_scrub.rewrite_object(s3, MAIL, BUCKET, key, targets, batch_id="batch-2")
    assert (again.rewritten, again.lines_matched) == (False, 0)


def test_objects_without_targets_are_untouched(bucket):
    s3 = bucket
    key = "app/dt=2024-05-01/quiet.json.gz"
    body = gzip.compress(jl(client_id=1, email="jane@example.com") * 3)
    version = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["VersionId"]
    result = log_scrub.rewrite_object(s3, APP, BUCKET, key, JOHN, batch_id=BATCH)
    assert (result.rewritten, result.lines_in, result.lines_matched) == (False, 3, 0)
    obj = s3.get_object(Bucket=BUCKET, Key=key)
    assert obj["VersionId"] == version
    assert obj["Body"].read() == body
    assert "cj-rewritten" not in obj["Metadata"]


def test_rerun_is_a_noop(bucket):
    s3 = bucket
    key = "app/dt=2024-05-01/a.json.gz"
    put(s3, key, [jl(client_id=1, email="john.doe@example.com"), jl(client_id=1, x=1)])
    first = log_scrub.rewrite_object(s3, APP, BUCKET, key, JOHN, batch_id=BATCH)
    version = s3.head_object(Bucket=BUCKET, Key=key)["VersionId"]
    second = log_scrub.rewrite_object(s3, APP, BUCKET, key, JOHN, batch_id="batch-0002")
    assert first.rewritten and not second.rewritten
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["VersionId"] == version
    assert head["Metadata"]["cj-rewritten"] == BATCH


@pytest.mark.parametrize("last_matches", [True, False])
def test_last_line_without_newline(bucket, last_matches):
    s3 = bucket
    key = "app/dt=2024-05-01/tail.json.gz"
    first = jl(client_id=1, email="john.doe@example.com")
    middle = jl(client_id=1, email="keep@example.com")
    last = (first if last_matches else middle).rstrip(b"\n")
    put(s3, key, [first, middle, last])
    result = log_scrub.rewrite_object(s3, APP, BUCKET, key, JOHN, batch_id=BATCH)
    assert result.lines_in == 3
    assert result.lines_matched == (2 if last_matches else 1)
    assert read(s3, key) == (middle if last_matches else middle + last)


def test_last_line_without_newline_redacted(bucket):
    s3 = bucket
    key = "mail/2024/05/02/tail.json.gz"
    put(s3, key, [b'{"tenant":1,"rcpt":"x@example.com"}\n', b'{"tenant":1,"rcpt":"a@b.c"}'])
    targets = Targets({"1": [(E, "a@b.c", "r")]})
    log_scrub.rewrite_object(s3, MAIL, BUCKET, key, targets, batch_id=BATCH)
    assert read(s3, key) == b'{"tenant":1,"rcpt":"x@example.com"}\n{"tenant":1,"rcpt":"[redacted]"}'


def test_block_boundaries_and_replay_of_the_part_before_the_first_match(bucket, monkeypatch):
    """Small blocks: the first match comes late, lines straddle reads and scan slices."""
    monkeypatch.setattr(reading, "READ_SIZE", 700)
    monkeypatch.setattr(matching, "SCAN_SIZE", 300)
    s3 = bucket
    rnd = random.Random(5)
    lines, expected = [], []
    for i in range(400):
        target = i > 150 and rnd.random() < 0.1
        email = "john.doe@example.com" if target else f"u{i}@example.com"
        line = jl(client_id=1, email=email, pad="x" * rnd.randrange(0, 900))
        lines.append(line)
        if not target:
            expected.append(line)
    key = "app/dt=2024-05-01/big.json.gz"
    put(s3, key, lines)
    result = log_scrub.rewrite_object(s3, APP, BUCKET, key, JOHN, batch_id=BATCH)
    assert result.lines_matched == len(lines) - len(expected) > 5
    assert read(s3, key).splitlines(keepends=True) == expected


def test_multipart_upload_path(bucket, monkeypatch):
    monkeypatch.setattr(log_scrub, "PUT_LIMIT", 0)
    s3 = bucket
    key = "app/dt=2024-05-01/mp.json.gz"
    keep = jl(client_id=1, email="keep@example.com")
    put(s3, key, [keep, jl(client_id=1, email="john.doe@example.com"), keep])
    result = log_scrub.rewrite_object(s3, APP, BUCKET, key, JOHN, batch_id=BATCH)
    assert result.rewritten
    assert read(s3, key) == keep + keep
    assert s3.head_object(Bucket=BUCKET, Key=key)["Metadata"] == {"cj-rewritten": BATCH}
    assert len(versions(s3, key)) == 1


def test_content_type_user_metadata_and_tags_are_kept(bucket):
    s3 = bucket
    key = "app/dt=2024-05-01/meta.json.gz"
    s3.put_object(
        Bucket=BUCKET,
        Key=key,
        Body=gzip.compress(jl(client_id=1, email="john.doe@example.com") + jl(client_id=1)),
        ContentType="application/x-ndjson",
        Metadata={"shipper": "fluentbit"},
        Tagging="retention=400d",
    )
    log_scrub.rewrite_object(s3, APP, BUCKET, key, JOHN, batch_id=BATCH)
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "application/x-ndjson"
    assert head["Metadata"] == {"shipper": "fluentbit", "cj-rewritten": BATCH}
    tags = s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]
    assert tags == [{"Key": "retention", "Value": "400d"}]


def test_concurrent_change_is_not_overwritten(bucket, monkeypatch):
    s3 = bucket
    key = "app/dt=2024-05-01/race.json.gz"
    put(s3, key, [jl(client_id=1, email="john.doe@example.com")])
    newer = gzip.compress(jl(client_id=1, email="newer@example.com"))
    real_put = s3.put_object

    def racing_put(**kwargs):
        real_put(Bucket=BUCKET, Key=key, Body=newer)  # another writer wins the race
        return real_put(**kwargs)

    monkeypatch.setattr(s3, "put_object", racing_put)
    with pytest.raises(ObjectChanged):
        log_scrub.rewrite_object(s3, APP, BUCKET, key, JOHN, batch_id=BATCH)
    monkeypatch.undo()
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == newer
    assert len(versions(s3, key)) == 2  # nothing was deleted either


def test_not_gzip_raises_and_changes_nothing(bucket):
    s3 = bucket
    key = "app/dt=2024-05-01/plain.json"
    version = s3.put_object(Bucket=BUCKET, Key=key, Body=jl(client_id=1))["VersionId"]
    with pytest.raises(logfiles.LogFormatError):
        log_scrub.rewrite_object(s3, APP, BUCKET, key, JOHN, batch_id=BATCH)
    assert [v["VersionId"] for v in versions(s3, key)] == [version]


# --- crash safety ------------------------------------------------------------------------------


def test_crash_between_put_and_version_cleanup(bucket, monkeypatch):
    s3 = bucket
    key = "app/dt=2024-05-01/crash.json.gz"
    other = "app/dt=2024-05-01/not-ours.json.gz"
    put(s3, key, [jl(client_id=1, email="john.doe@example.com"), jl(client_id=1, x=1)])
    put(s3, other, [jl(client_id=1, x=1)])
    put(s3, other, [jl(client_id=1, x=2)])  # an old version we did not write: left alone

    def crash(*args, **kwargs):
        raise RuntimeError("worker died")

    monkeypatch.setattr(log_scrub, "_delete_noncurrent", crash)
    with pytest.raises(RuntimeError):
        log_scrub.rewrite_object(s3, APP, BUCKET, key, JOHN, batch_id=BATCH)
    monkeypatch.undo()
    assert len(versions(s3, key)) == 2  # the old data is still there
    assert log_scrub.clean_versions(s3, BUCKET, "app/dt=2024-05-01/") == 1
    remaining = versions(s3, key)
    assert len(remaining) == 1 and remaining[0]["IsLatest"]
    assert read(s3, key) == jl(client_id=1, x=1)
    assert len(versions(s3, other)) == 2
    assert log_scrub.clean_versions(s3, BUCKET, "app/dt=2024-05-01/") == 0


def test_scrub_shard_cleans_up_after_a_crash(bucket, monkeypatch):
    s3 = bucket
    day = "app/dt=2024-05-01/"
    put(s3, day + "a.json.gz", [jl(client_id=1, email="john.doe@example.com")])
    monkeypatch.setattr(log_scrub, "_delete_noncurrent", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        log_scrub.scrub_shard(s3, APP, day, JOHN, batch_id=BATCH)
    monkeypatch.undo()
    result = log_scrub.scrub_shard(s3, APP, day, JOHN, batch_id=BATCH)
    assert (result.objects_rewritten, result.versions_deleted, result.residue) == (0, 1, 0)
    assert len(versions(s3, day + "a.json.gz")) == 1


# --- shards ----------------------------------------------------------------------------------


def test_scrub_shard(bucket):
    s3 = bucket
    day = "app/dt=2024-05-01/"
    targets = Targets({"1": [(E, "john.doe@example.com", "req-a"), (P, "+15550002222", "req-b")]})
    put(s3, day + "a.json.gz", [jl(client_id=1, email="john.doe@example.com"), jl(client_id=1)])
    put(s3, day + "b.json.gz", [jl(client_id=1, phone="+15550002222")] * 3)
    quiet = put(s3, day + "c.json.gz", [jl(client_id=2, email="john.doe@example.com")])
    put(s3, "app/dt=2024-05-02/d.json.gz", [jl(client_id=1, email="john.doe@example.com")])
    result = log_scrub.scrub_shard(s3, APP, day, targets, batch_id=BATCH)
    assert result.objects == 3
    assert result.objects_rewritten == 2
    assert result.rewritten_keys == [day + "a.json.gz", day + "b.json.gz"]
    assert (result.lines_in, result.lines_removed) == (6, 4)
    assert result.per_ref == {"req-a": 1, "req-b": 3}
    assert (result.residue, result.objects_verified, result.versions_deleted) == (0, 3, 2)
    assert read(s3, day + "b.json.gz") == b""
    assert s3.head_object(Bucket=BUCKET, Key=day + "c.json.gz")["VersionId"] == quiet
    assert b"john" in read(s3, "app/dt=2024-05-02/d.json.gz")  # other days untouched
    text = json.dumps(result.to_dict())
    assert "john" not in text and "+1555" not in text
    changed = log_scrub.scrub_shard(s3, APP, day, targets, batch_id=BATCH, verify="changed")
    assert (changed.objects, changed.objects_verified, changed.residue) == (3, 0, 0)


def test_scrub_shard_reports_residue(bucket, monkeypatch):
    """Verification is a real second scan: a rewrite that left the lines in is caught."""
    s3 = bucket
    day = "app/dt=2024-05-01/"
    put(s3, day + "a.json.gz", [jl(client_id=1, email="john.doe@example.com")])
    monkeypatch.setattr(log_scrub, "_write_edited", lambda out, block, *a: out.write(block))
    result = log_scrub.scrub_shard(s3, APP, day, JOHN, batch_id=BATCH)
    assert (result.objects_rewritten, result.residue) == (1, 1)
    assert result.residue_keys == [day + "a.json.gz"]


def test_day_prefixes_both_partition_styles(bucket):
    s3 = bucket
    for key in [
        "app/dt=2024-04-30/x.gz",
        "app/dt=2024-05-01/x.gz",
        "app/dt=2024-05-03/x.gz",
        "app/dt=junk/x.gz",
        "app/_tmp/x.gz",
        "mail/2024/04/30/x.gz",
        "mail/2024/05/01/x.gz",
        "mail/2024/05/02/x.gz",
        "mail/2024/13/01/x.gz",
        "mail/2024/05/notes/x.gz",
        "mail/archive/x.gz",
    ]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"")
    assert logfiles.day_prefixes(s3, APP) == [
        "app/dt=2024-04-30/",
        "app/dt=2024-05-01/",
        "app/dt=2024-05-03/",
    ]
    window = {"since": date(2024, 5, 1), "until": date(2024, 5, 2)}
    assert logfiles.day_prefixes(s3, APP, **window) == ["app/dt=2024-05-01/"]
    assert logfiles.day_prefixes(s3, MAIL) == [
        "mail/2024/04/30/",
        "mail/2024/05/01/",
        "mail/2024/05/02/",
    ]
    assert logfiles.day_prefixes(s3, MAIL, **window) == ["mail/2024/05/01/", "mail/2024/05/02/"]
    assert logfiles.day_prefixes(s3, MAIL, since=date(2024, 5, 2)) == ["mail/2024/05/02/"]
    assert logfiles.day_prefixes(s3, MAIL, until=date(2024, 4, 30)) == ["mail/2024/04/30/"]


def test_collect_shard_window_and_two_refs(bucket):
    s3 = bucket
    day = "mail/2024/05/02/"
    targets = Targets(
        {"5": [(E, "ann@example.com", "req-1"), (E, "ann@example.com", "req-2")], "6": []}
    )
    put(
        s3,
        day + "a.json.gz",
        [
            b'{"at":"2024-05-02T08:00:00Z","tenant":5,"rcpt":"ann@example.com","n":1}\n',
            b'{"at":"2024-05-02T12:00:00Z","tenant":5,"rcpt":"ANN@example.com","n":2}\n',
            b'{"at":"2024-05-02T12:00:00Z","tenant":6,"rcpt":"ann@example.com","n":3}\n',
            b'{"at":"2024-05-02T18:00:00+02:00","tenant":5,"rcpt":"ann@example.com","n":4}\n',
            b'{"at":"2024-05-02T23:00:00Z","tenant":5,"rcpt":"ann@example.com","n":5}\n',
            b'{"tenant":5,"rcpt":"ann@example.com","n":6}\n',
        ],
    )
    got = list(
        logfiles.collect_shard(
            s3,
            MAIL,
            day,
            targets,
            since=datetime(2024, 5, 2, 10, tzinfo=UTC),
            until=datetime(2024, 5, 2, 20),  # naive: UTC
        )
    )
    assert [(ref, rec["n"]) for ref, rec in got] == [
        ("req-1", 2),
        ("req-2", 2),
        ("req-1", 4),
        ("req-2", 4),
        ("req-1", 6),  # no timestamp: kept
        ("req-2", 6),
    ]
    assert got[0][1] is not got[1][1]
    everything = list(logfiles.collect_shard(s3, MAIL, day, targets, since=None, until=None))
    assert len(everything) == 10


def test_per_ref_counts_when_two_requests_share_a_line(bucket):
    s3 = bucket
    key = "app/dt=2024-05-01/shared.json.gz"
    targets = Targets({"1": [(E, "john.doe@example.com", "req-a"), (P, "+15550003333", "req-b")]})
    put(
        s3,
        key,
        [
            jl(client_id=1, email="john.doe@example.com", phone="+15550003333"),
            jl(client_id=1, phone="+15550003333"),
            jl(client_id=1, email="other@example.com"),
        ],
    )
    result = log_scrub.rewrite_object(s3, APP, BUCKET, key, targets, batch_id=BATCH)
    assert result.lines_matched == 2
    assert result.per_ref == {"req-a": 1, "req-b": 2}
    assert read(s3, key) == jl(client_id=1, email="other@example.com")
