"""Identity fields at any depth in JSON log lines (issue 14, deliverables 2 and 7).

The path syntax (`compliance.core.datamap.paths`), the validator's `bad-path` rule, and the log engine
(`compliance.core.logfiles`, `compliance.deletion.log_scrub`) on nested identities: scan, scrub (drop and redact), access gathering (R10
withholding at any depth) and the inventory's drift findings for logs and CSV backups. Object
tests run against the moto S3 server (versioned buckets), like tests/unit/test_logs.py.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from compliance import inventory
from compliance.access import gather
from compliance.core import logfiles
from compliance.core.context import Workspace
from compliance.core.datamap import paths
from compliance.core.datamap.model import DataMap, IdentityType, LogStore
from compliance.core.datamap.paths import EACH
from compliance.core.datamap.validate import check_text
from compliance.core.logfiles import Targets, matching
from compliance.core.shards import LogShard
from compliance.deletion import log_scrub
from compliance.inventory import objects as inventory_objects

DEMO_MAP = Path(__file__).resolve().parents[2] / "config" / "datamap.yaml"
BUCKET = "cj-nested-logs"
BATCH = "batch-nested"
E, P, R = IdentityType.email, IdentityType.phone, IdentityType.record_id
ANN, BOB = "ann@x.io", "bob@y.io"


def _store(erase: str = "drop_line", prefix: str = "nest/") -> LogStore:
    return LogStore(
        kind="log",
        bucket=BUCKET,
        prefix=prefix,
        partition="dt=%Y-%m-%d/",
        system="crm",
        timestamp_field="ctx.ts",
        tenant_field="ctx.client",
        erase=erase,
        fields={
            "actor.email": {"categories": ["identifiers"], "identity": "email"},
            "recipients[].email": {"categories": ["identifiers"], "identity": "email"},
            "recipients[].phone": {"categories": ["identifiers"], "identity": "phone"},
            "ids[]": {"categories": ["identifiers"], "identity": "record_id"},
            "contact\\.info.email": {"categories": ["identifiers"], "identity": "email"},
            "meta\\.v2.ip": {"categories": ["identifiers", "internet_activity"]},
            "actor.ssn": {"categories": ["sensitive"], "withhold": "government_id"},
        },
    )


NEST = _store()
NEST_REDACT = _store("redact", "nest-redact/")
TARGETS = Targets({"1": [(E, ANN, "1"), (P, "+14155550101", "2"), (R, "77", "3")]})


def line(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def refs_of(lines: list[bytes], store: LogStore = NEST, targets: Targets = TARGETS) -> list:
    """Each line scanned alone (so no other line makes it a candidate), then all together."""
    alone = [sorted(r) for x in lines for _, r in logfiles.scan_lines([x], store, targets)]
    together = [sorted(r) for _, r in logfiles.scan_lines(lines, store, targets)]
    assert together == alone
    return alone


# --- the parser --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "steps", "leaf"),
    [
        ("email", ("email",), "email"),
        ("actor.email", ("actor", "email"), "email"),
        ("recipients[].email", ("recipients", EACH, "email"), "email"),
        ("tags[]", ("tags", EACH), "tags"),
        ("batches[][].id", ("batches", EACH, EACH, "id"), "id"),
        ("meta\\.v2.ip", ("meta.v2", "ip"), "ip"),
        ("a\\[0\\].b", ("a[0]", "b"), "b"),
        ("back\\\\slash", ("back\\slash",), "back\\slash"),
        ("with space.é", ("with space", "é"), "é"),
    ],
)
def test_parse_good_paths(text, steps, leaf):
    parsed = paths.parse(text)
    assert parsed.steps == steps
    assert paths.leaf_key(text) == leaf == parsed.leaf_key
    assert paths.render(parsed.steps) == text  # render is parse's inverse
    assert str(parsed) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the path is empty"),
        (".email", "empty segment at character 1: a key name is missing"),
        ("actor..email", "empty segment at character 7"),
        ("actor.", "empty segment at the end: the path ends with '.'"),
        ("[]", "'[]' must follow a key name"),
        ("items.[]", "empty segment at character 7: '[]' must follow a key name"),
        ("actor\\", "dangling escape at character 6"),
        ("act\\or", "unknown escape '\\o' at character 4"),
        ("recipients[.email", "'[' at character 11 is not followed by ']'"),
        ("recipients[0].email", "'[' at character 11 is not followed by ']'"),
        ("tags[", "'[' at character 5 is not followed by ']'"),
        ("tags]", "unexpected ']' at character 5"),
        ("tags[]x", "unexpected 'x' at character 7: after '[]' comes '.'"),
    ],
)
def test_parse_bad_paths_say_what_and_where(text, message):
    with pytest.raises(ValueError) as exc:
        paths.parse(text)
    assert message in str(exc.value)


# --- walking parsed lines and text -------------------------------------------------------------

TEXT = (
    '{"ctx": {"client": 1}, "actor": {"email": "A@x.io", "ssn": "123"},'
    ' "actor": {"email": ["b@x.io", {"no": 1}, "c@x.io"]},'
    ' "recipients": [{"email": "r1@x.io"}, 5, {"email": "r2@x.io", "email": "r3@x.io"}],'
    ' "meta.v2": {"ip": "10.0.0.1"}, "meta": {"v2": {"ip": "10.9.9.9"}}}'
)


def test_values_keep_duplicates_at_every_level_and_leaf_arrays():
    pairs = json.loads(TEXT, object_pairs_hook=list)
    assert list(paths.values(pairs, "actor.email")) == ["A@x.io", "b@x.io", "c@x.io"]
    assert list(paths.values(pairs, "recipients[].email")) == ["r1@x.io", "r2@x.io", "r3@x.io"]
    assert list(paths.values(pairs, "recipients[]")) == [5]  # objects are not scalars
    assert list(paths.values(pairs, "meta\\.v2.ip")) == ["10.0.0.1"]
    assert list(paths.values(pairs, "meta.v2.ip")) == ["10.9.9.9"]
    assert list(paths.values(pairs, "actor.email", arrays=False)) == ["A@x.io"]
    # a step meeting the wrong kind of value finds nothing
    assert list(paths.values(pairs, "recipients.email")) == []
    assert list(paths.values(pairs, "actor[].email")) == []
    assert list(paths.values(pairs, "ctx.client.x")) == []
    # plain dicts (json.loads without the hook) work too; they keep the last duplicate only
    assert list(paths.values(json.loads(TEXT), "actor.email")) == ["b@x.io", "c@x.io"]
    assert paths.first(json.loads(TEXT), "ctx.client") == 1


def test_spans_are_the_values_at_the_path_in_the_text():
    def at(path: str) -> list[str]:
        return [TEXT[a:b] for a, b in paths.spans(TEXT, path)]

    assert at("actor.email") == ['"A@x.io"', '["b@x.io", {"no": 1}, "c@x.io"]']
    assert at("recipients[].email") == ['"r1@x.io"', '"r2@x.io"', '"r3@x.io"']
    assert at("meta\\.v2.ip") == ['"10.0.0.1"']
    assert at("ctx.client") == ["1"]
    assert at("nowhere.at.all") == []
    # the spans hold exactly what the parsed walk finds, value for value
    pairs = json.loads(TEXT, object_pairs_hook=list)
    for path in ("actor.email", "recipients[].email", "recipients[]", "meta.v2", "actor"):
        found = [json.loads(v, object_pairs_hook=list) for v in at(path)]
        assert found == list(paths.nodes(pairs, path))


@pytest.mark.parametrize(
    "bad",
    ['{"a": 1', '{"a": 1}x', '{"a": [1,]}', '{"a": {"b": 1,}}', "[1]", '{"a" 1}', '{"a":1,}'],
)
def test_spans_refuse_what_json_refuses(bad):
    if bad != "[1]":  # an array is JSON, but not a log line
        with pytest.raises(ValueError):
            json.loads(bad)
    with pytest.raises(ValueError):
        paths.spans(bad, "a.b")


def test_remove_for_r10_at_any_depth():
    obj = json.loads(
        '{"actor": {"ssn": "123", "name": "Ann"}, "cards": [{"pan": "4111"}, {"pan": ""}],'
        ' "pins": ["1", "2"], "blank": {"ssn": ""}}'
    )
    assert paths.remove(obj, "actor.ssn") is True
    assert paths.remove(obj, "cards[].pan") is True
    assert paths.remove(obj, "pins[]") is True  # the array of withheld values goes whole
    assert paths.remove(obj, "blank.ssn") is False  # nothing held: not named as held
    assert paths.remove(obj, "not.there") is False
    assert obj == {"actor": {"name": "Ann"}, "cards": [{}, {}], "blank": {}}


# --- the validator -----------------------------------------------------------------------------


def _demo_map_with(store_yaml: str) -> str:
    """The demo map with one more store (the demo map is valid on its own)."""
    base = DEMO_MAP.read_text(encoding="utf-8")
    anchor = "\nstores:\n"
    assert base.count(anchor) == 1
    return base.replace(anchor, anchor + store_yaml)


def test_validator_reports_bad_paths_with_location_rule_and_reason():
    yaml_text = _demo_map_with(
        "  nested_logs:\n"
        "    kind: log\n"
        "    bucket: cj-nested\n"
        "    prefix: n/\n"
        "    system: crm\n"
        "    timestamp_field: meta..ts\n"
        "    tenant_field: 'tenants[]'\n"
        "    fields:\n"
        "      'actor.email': {categories: [identifiers], identity: email}\n"
        "      'recipients[].email': {categories: [identifiers], identity: email}\n"
        "      'meta\\.v2.ip': {categories: [identifiers]}\n"
        "      'recipients[.email': {categories: [identifiers], identity: email}\n"
        "      'trailing\\': {categories: [identifiers]}\n"
    )
    _dm, issues = check_text(yaml_text)
    bad = {(i.location, i.rule): i for i in issues}
    assert {k for k in bad if k[1] == "bad-path"} == {
        ("stores.nested_logs.fields.recipients[.email", "bad-path"),
        ("stores.nested_logs.fields.trailing\\", "bad-path"),
        ("stores.nested_logs.timestamp_field", "bad-path"),
        ("stores.nested_logs.tenant_field", "bad-path"),
    }
    issue = bad[("stores.nested_logs.fields.recipients[.email", "bad-path")]
    assert "'[' at character 11 is not followed by ']'" in issue.message
    assert issue.line is not None
    assert "dangling escape" in bad[("stores.nested_logs.fields.trailing\\", "bad-path")].message
    assert "empty segment" in bad[("stores.nested_logs.timestamp_field", "bad-path")].message
    assert "cannot use `[]`" in bad[("stores.nested_logs.tenant_field", "bad-path")].message
    assert "[bad-path]" in str(issue)
    # every other rule still runs: only the bad paths are reported for this store
    assert all(i.rule == "bad-path" for i in issues), [str(i) for i in issues]


def test_validator_accepts_good_paths():
    yaml_text = _demo_map_with(
        "  nested_logs:\n"
        "    kind: log\n"
        "    bucket: cj-nested\n"
        "    prefix: n/\n"
        "    system: crm\n"
        "    timestamp_field: ctx.ts\n"
        "    tenant_field: ctx.client\n"
        "    fields:\n"
        "      'actor.email': {categories: [identifiers], identity: email}\n"
        "      'recipients[].email': {categories: [identifiers], identity: email}\n"
        "      'meta\\.v2.ip': {categories: [identifiers]}\n"
    )
    dm, issues = check_text(yaml_text)
    assert issues == [] and isinstance(dm, DataMap)
    assert set(dm.stores["nested_logs"].fields) == {
        "actor.email",
        "recipients[].email",
        "meta\\.v2.ip",
    }


# --- matching ----------------------------------------------------------------------------------


def ctx(client: object = 1, **rest: object) -> dict:
    return {"ctx": {"client": client, "ts": "2024-05-01T10:00:00Z"}, **rest}


MATCH_CASES = [
    (ctx(actor={"email": "Ann@X.io"}), ["1"]),  # nested, case-insensitive e-mail
    (ctx(recipients=[{"email": BOB}, {"email": ANN}]), ["1"]),  # second recipient
    (ctx(recipients=[{"phone": "+14155550101"}]), ["2"]),
    (ctx(ids=[5, 77]), ["3"]),  # a record id logged as a number, in an array
    (ctx(ids=["77"]), ["3"]),
    (ctx(**{"contact.info": {"email": ANN}}), ["1"]),  # escaped dot in the mapped key
    (ctx(contact={"info": {"email": ANN}}), []),  # the same value, not at that path
    (ctx(email=ANN), []),  # an identity only at an unmapped path: the oracle's job, not ours
    (ctx(actor={"note": ANN}), []),  # inside an object, but under another key
    (ctx(recipients={"email": ANN}), []),  # an object where the path says array
    (ctx(actor=[{"email": ANN}]), []),  # an array where the path says object
    (ctx(actor={"email": BOB}, cc={"email": ANN}), []),  # another value at the mapped path
    (ctx(actor={"email": ANN}, cc={"email": ANN}), ["1"]),  # mapped and unmapped: mapped wins
    (ctx(client=2, actor={"email": ANN}), []),  # another tenant
    (ctx(client="1", actor={"email": ANN}), ["1"]),  # tenant logged as text
    ({"client": 1, "actor": {"email": ANN}}, []),  # tenant not at the tenant path
    (ctx(client=[1], actor={"email": ANN}), []),  # an array is no tenant
    (ctx(actor={"email": ["x@y.io", ANN]}), ["1"]),  # an array at the end of the path
    (ctx(actor={"email": [[ANN]]}), []),  # but not an array of arrays
    (ctx(actor={"email": ANN, "phone": "+14155550101"}, ids=[77]), ["1", "3"]),
]


@pytest.mark.parametrize("few", [True, False])
def test_scan_nested_identities(monkeypatch, few):
    if not few:  # force the extract-and-intersect pre-filter instead of the few-values search
        monkeypatch.setattr(matching, "FEW_VALUES", 0)
    lines = [line(obj) for obj, _ in MATCH_CASES]
    assert refs_of(lines) == [want for _, want in MATCH_CASES]


@pytest.mark.parametrize("few", [True, False])
def test_scan_nested_duplicates_escapes_and_spacing(monkeypatch, few):
    if not few:
        monkeypatch.setattr(matching, "FEW_VALUES", 0)
    lines = [
        # duplicate nested keys: the first actor hides nothing, nor does the second email
        b'{"ctx":{"client":1},"actor":{"email":"x@y.io"},"actor":{"email":"ann@x.io"}}\n',
        b'{"ctx":{"client":1},"actor":{"email":"ann@x.io","email":"x@y.io"}}\n',
        b'{"ctx":{"client":2},"ctx":{"client":1},"actor":{"email":"ann@x.io"}}\n',
        # a nested key spelt with an escape, an escaped value, spaces everywhere
        b'{"ctx":{"client":1},"actor":{"em\\u0061il":"ann@x.io"}}\n',
        b'{"ctx":{"client":1},"actor":{"email":"ann\\u0040x.io"}}\n',
        b'{ "ctx" : { "client" : 1 } , "recipients" : [ { "email" :\t"ANN@x.io" } ] }\n',
        '{"ctx":{"client":1},"actor":{"email":"ÄNN@x.io"}}\n'.encode(),  # not ann
        b'{"ctx":{"client":1},"actor":{"email":"ann@x.io"}\n',  # not JSON
        b'{"ctx":{"client":1},"meta.v2":{"ip":"ann@x.io"}}\n',  # mapped, but no identity
    ]
    assert refs_of(lines) == [["1"], ["1"], ["1"], ["1"], ["1"], ["1"], [], [], []]


# --- erasure on objects (moto) ---------------------------------------------------------------


@pytest.fixture
def bucket(s3):
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return s3


def put(s3, key: str, lines: list[bytes]) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(b"".join(lines)))


def read(s3, key: str) -> bytes:
    return gzip.decompress(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_drop_nested_lines_keeps_every_other_byte(bucket):
    s3 = bucket
    day = "nest/dt=2024-05-01/"
    lines = [line(obj) for obj, _ in MATCH_CASES]
    lines.append(b'{ "ctx" : {"client":1}, "odd":  "spacing \\u00e9 kept" }')  # no newline
    put(s3, day + "a.json.gz", lines)
    result = log_scrub.scrub_shard(s3, NEST, day, TARGETS, batch_id=BATCH)
    matching = [bool(want) for _, want in MATCH_CASES] + [False]
    assert result.lines_removed == sum(matching) == 10
    assert result.residue == 0
    assert read(s3, day + "a.json.gz") == b"".join(
        x for x, hit in zip(lines, matching, strict=True) if not hit
    )
    # the identity at an unmapped path is still there: the eraser cannot see it, by design
    assert line(ctx(email=ANN)) in read(s3, day + "a.json.gz")
    assert "ann" not in json.dumps(result.to_dict()).lower()


def test_redact_nested_values_exactly(bucket):
    s3 = bucket
    key = "nest-redact/dt=2024-05-01/mx.json.gz"
    hit = (
        b'{"ctx": {"client": 1, "ts": "t"}, "actor": {"email": "Ann@X.io", "role": "buyer",'
        b' "ssn": "123-45-6789"}, "recipients": [{"email": "bob@y.io", "n": 1},'
        b' {"email": "ann@x.io"}, 7], "meta.v2": {"ip": "10.0.0.1", "port": 25},'
        b' "cc": {"email": "ann@x.io"}, "ids": [1, 2], "msg": "caf\\u00e9"}\n'
    )
    dup = b'{"ctx":{"client":1},"actor":{"email":"x@y.io"},"actor":{"email":"ann@x.io"}}\n'
    other_tenant = hit.replace(b'"client": 1', b'"client": 2')
    quiet = b'{"ctx":{"client":1},"actor":{"email":"zed@q.io"},"meta.v2":{"ip":"10.0.0.2"}}\n'
    put(s3, key, [hit, other_tenant, dup, quiet])
    result = log_scrub.rewrite_object(s3, NEST_REDACT, BUCKET, key, TARGETS, batch_id=BATCH)
    assert (result.rewritten, result.lines_matched, result.per_ref) == (True, 2, {"1": 2})
    out = read(s3, key).splitlines(keepends=True)
    assert out[0] == (
        b'{"ctx": {"client": 1, "ts": "t"}, "actor": {"email": "[redacted]", "role": "buyer",'
        b' "ssn": "[redacted]"}, "recipients": [{"email": "[redacted]", "n": 1},'
        b' {"email": "[redacted]"}, 7], "meta.v2": {"ip": "[redacted]", "port": 25},'
        b' "cc": {"email": "ann@x.io"}, "ids": ["[redacted]", "[redacted]"], "msg": "caf\\u00e9"}\n'
    )  # the copy at the unmapped path "cc.email" stays: the inventory reports it as drift
    assert out[1] == other_tenant and out[3] == quiet  # byte-identical
    assert out[2] == (
        b'{"ctx":{"client":1},"actor":{"email":"[redacted]"},"actor":{"email":"[redacted]"}}\n'
    )
    again = log_scrub.rewrite_object(s3, NEST_REDACT, BUCKET, key, TARGETS, batch_id="batch-2")
    assert (again.rewritten, again.lines_matched) == (False, 0)


def test_redact_a_mapped_object_with_a_mapped_path_inside_it():
    store = LogStore(
        kind="log",
        bucket=BUCKET,
        prefix="x/",
        system="crm",
        timestamp_field="ts",
        tenant_field="t",
        erase="redact",
        fields={
            "actor": {"categories": ["identifiers"]},
            "actor.email": {"categories": ["identifiers"], "identity": "email"},
        },
    )
    matcher = logfiles.Matcher.get(store, TARGETS)
    text = '{"t":1,"actor":{"email":"ann@x.io","n":{"email":"x"}},"z":0}'
    hits, _ = matcher.scan(text.encode() + b"\n")
    assert len(hits) == 1
    assert matcher.redact(hits[0]) == '{"t":1,"actor":"[redacted]","z":0}'


# --- access gathering --------------------------------------------------------------------------


def test_gather_finds_nested_lines_and_withholds_nested_values(bucket):
    s3 = bucket
    day = "nest/dt=2024-05-01/"
    mine = ctx(actor={"email": ANN, "ssn": "123-45-6789", "role": "buyer"}, n=1)
    theirs = ctx(client=2, actor={"email": ANN, "ssn": "999-99-9999"}, n=2)
    no_ssn = ctx(recipients=[{"email": ANN}], actor={"ssn": ""}, n=3)
    put(s3, day + "a.json.gz", [line(mine), line(theirs), line(no_ssn)])
    s3.create_bucket(Bucket="cj-workspace")
    batch = {
        "batch_id": BATCH,
        "created_at": "2024-06-01T00:00:00+00:00",
        "requests": {"1": {"client_id": "1", "since": None, "until": "2100-01-01T00:00:00+00:00"}},
        "identities": {"1": {"email": [ANN]}},
    }
    s3.put_object(
        Bucket="cj-workspace", Key=f"batches/{BATCH}/targets.json", Body=json.dumps(batch)
    )
    dm = SimpleNamespace(stores={"nest": NEST})
    summary = gather.gather_log_shard(
        Workspace(s3, "cj-workspace"), dm, s3, BATCH, LogShard("nest", day)
    )
    assert (summary["lines"], summary["requests_with_lines"]) == (2, 1)
    records = gather.read_parts(s3, "cj-workspace", BATCH)["1"]
    assert [r["values"]["n"] for r in records] == [1, 3]
    first, second = records
    assert first["withheld"] == ["actor.ssn"]  # named as held (R10)
    assert first["values"]["actor"] == {"email": ANN, "role": "buyer"}
    assert first["collected_at"] == "2024-05-01T10:00:00Z"
    assert first["values"]["ctx"] == {}  # tenant and timestamp are not the consumer's
    assert second["withheld"] == []  # an empty value is not "held"
    text = json.dumps(records)
    assert "123-45-6789" not in text and "999-99-9999" not in text


# --- inventory drift ---------------------------------------------------------------------------


def test_log_drift_reports_unseen_paths_and_identities_at_unmapped_paths(bucket):
    s3 = bucket
    lines = [
        line(ctx(actor={"email": ANN}, cc=[{"addr": BOB}], meta={"peer": "10.1.2.3"})),
        line(ctx(actor={"email": BOB, "phone": "+14155550101"}, note="mail ann@x.io")),
        line(ctx(recipients=[{"email": ANN, "alt": "(415) 555-0101"}], email=BOB)),
        line(ctx(**{"contact.info": {"email": ANN}}, **{"we.ird": {"x[]": "2001:db8::1"}})),
        b"not json\n",
    ]
    put(s3, "nest/dt=2024-05-01/a.json.gz", lines[:2])
    put(s3, "nest/dt=2024-05-02/b.json.gz", lines[2:])
    dm = SimpleNamespace(stores={"nest": NEST})
    inv = inventory.inspect_object_store(s3, dm, "nest")
    drift = {(f.where, f.kind): f.detail for f in inv.drift}
    assert set(drift) == {
        ("nest.ids[]", "unseen-path"),
        ("nest.meta\\.v2.ip", "unseen-path"),
        ("nest.actor.ssn", "unseen-path"),
        ("nest.recipients[].phone", "unseen-path"),
        ("nest.cc[].addr", "unmapped-identity"),
        ("nest.meta.peer", "unmapped-identity"),
        ("nest.actor.phone", "unmapped-identity"),
        ("nest.recipients[].alt", "unmapped-identity"),
        ("nest.email", "unmapped-identity"),
        ("nest.we\\.ird.x\\[\\]", "unmapped-identity"),
        ("nest.email", "unmapped-field"),
    }
    assert "e-mail address" in drift[("nest.cc[].addr", "unmapped-identity")]
    assert "IP address" in drift[("nest.meta.peer", "unmapped-identity")]
    assert "phone number" in drift[("nest.recipients[].alt", "unmapped-identity")]
    assert "nest/dt=2024-05-01/a.json.gz" in drift[("nest.meta.peer", "unmapped-identity")]
    assert "4 line(s)" in drift[("nest.ids[]", "unseen-path")]
    text = json.dumps([f.__dict__ for f in inv.drift])
    for value in (ANN, BOB, "10.1.2.3", "555", "2001:db8"):
        assert value not in text  # never a value


def test_backup_drift_reports_identity_values_in_undeclared_columns(bucket):
    from compliance.core.datamap.validate import load_datamap

    dm = load_datamap(DEMO_MAP)
    store = dm.stores["crm_backups"]
    s3 = bucket
    s3.create_bucket(Bucket=store.bucket)

    def csv_object(day: str, table: str, text: str) -> None:
        s3.put_object(
            Bucket=store.bucket,
            Key=f"{store.prefix}{day}/{table}.csv.gz",
            Body=gzip.compress(text.encode()),
        )

    old = "2024-01-30"
    new = "2024-01-31"
    csv_object(old, "contacts", "contact_id,secret_mail\n1,old@x.io\n")  # not the newest
    csv_object(new, "contacts", "contact_id,email,nickname,backup_mail\n1,a@x.io,Ann,a@x.io\n")
    csv_object(new, "messages", 'message_id,body,relay\n1,"hi, ann@x.io",10.0.0.1\n2,x,\n')
    csv_object(new, "clients", "client_id,contact_email\n1,boss@dealer.com\n")  # ignored table
    csv_object(new, "shadow_contacts", "id,phone\n1,+14155550101\n2,+14155550102\n")
    drift = inventory_objects._backup_drift(s3, dm, "crm_backups", store, 200)
    got = {(f.where, f.kind): f.detail for f in drift}
    assert set(got) == {
        ("crm_backups.contacts.backup_mail", "unmapped-identity"),
        ("crm_backups.messages.relay", "unmapped-identity"),
        ("crm_backups.shadow_contacts.phone", "unmapped-identity"),
    }
    assert "1 of 1 sampled row(s)" in got[("crm_backups.contacts.backup_mail", "unmapped-identity")]
    assert (
        "2 of 2 sampled row(s)" in got[("crm_backups.shadow_contacts.phone", "unmapped-identity")]
    )
    assert (
        "neither maps nor ignores"
        in got[("crm_backups.shadow_contacts.phone", "unmapped-identity")]
    )
    assert f"{new}/messages.csv.gz" in got[("crm_backups.messages.relay", "unmapped-identity")]
    assert "a@x.io" not in json.dumps(list(got.values()))
