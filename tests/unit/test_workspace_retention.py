"""The workspace bucket under the retention policy (issue 16, R27): the layout registry, the
`workspace:` rule kind, its coverage gate, and the sweep that expires the jobs' own copies."""

from __future__ import annotations

import copy
import importlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from compliance.__main__ import main
from compliance.core import workspace_layout as layout
from compliance.core.context import Workspace
from compliance.core.datamap.validate import load_datamap
from compliance.retention import check_file, check_text, coverage
from compliance.retention.execute import execute_step
from compliance.retention.plan import Sweep, plan_sweep

REPO = Path(__file__).resolve().parents[2]
DM = load_datamap(REPO / "config" / "datamap.yaml")
RAW = yaml.safe_load((REPO / "config" / "retention.yaml").read_text())
BUCKET = "cj-workspace-test"
KEY = b"k" * 32


def policy(mutate=None) -> dict:
    raw = copy.deepcopy(RAW)
    if mutate:
        mutate(raw)
    return raw


def rule(raw: dict, rule_id: str) -> dict:
    return next(r for r in raw["rules"] if r["id"] == rule_id)


def index(raw: dict, rule_id: str) -> int:
    return next(i for i, r in enumerate(raw["rules"]) if r["id"] == rule_id)


def issues(raw: dict) -> list:
    return check_text(yaml.safe_dump(raw, sort_keys=False), DM)[1]


# -- the registry --------------------------------------------------------------------------------


def test_every_key_shape_the_jobs_write_has_its_area():
    from compliance.access import deliver, gather
    from compliance.deletion import erasure_preview, targets

    parties = importlib.import_module("compliance.deletion.outbox.parties")  # not the function
    from compliance.deletion.residue_oracle import log_search
    from compliance.requests import batches, inbox

    expected = {
        inbox.submission_key("DEL-1"): "inbox",
        "inbox/17/batch.ndjson": "inbox",
        layout.accepted_key("17", "R-1", "access"): "accepted",
        "rejected/2026-11-20/17/bad.json": "rejected",
        "rejected/2026-11-20/17/bad.json.reasons.json": "rejected",
        targets.held_key("17", "R-1"): "held",
        parties.notice_key(12, "esp"): "outbox",
        batches.targets_key("del-20261120T100000-abcd1234"): "targets",
        gather.part_key("acc-1", "crm"): "parts",
        log_search.verdict_key("batches/del-1/", "app/dt=2026-11-19/"): "verdicts",
        deliver.bundle_key("17", "R-1"): "bundles",
        deliver.link_key("17", "R-1"): "bundles",
        deliver.receipt_key("17", "R-1"): "receipts",
        parties.receipt_key("17", "R-1"): "receipts",
        f"{erasure_preview.DRY_RUNS}dry-1/report.json": "dry_runs",
        layout.summary_key("deletion_requests"): "summaries",
        "retention/2026-11-20/run-1/report.json": "retention_reports",
        "inventory/2026-11-20/inventory.json": "inventory",
        "stats/2026/monthly.csv": "stats",
        "deadlines/2026-11-20/watchdog.json": "deadlines",
        "offboarding/9/off-1/export.zip": "offboarding_exports",
        "offboarding/9/off-1/link.json": "offboarding_exports",
        "reports/offboarding/off-20261120T100000.json": "offboarding_reports",
        "receipts/offboarding/9/delete.json": "receipts",
    }
    for key, area in expected.items():
        found = layout.area_of(key)
        assert found is not None and found.name == area, key
    assert layout.area_of("somewhere/else.json") is None
    # the modules spell no prefix of their own any more
    assert inbox.ACCEPTED is layout.ACCEPTED and inbox.REJECTED is layout.REJECTED
    assert targets.HELD is layout.HELD and parties.OUTBOX is layout.OUTBOX
    assert erasure_preview.DRY_RUNS is layout.DRY_RUNS and deliver.ACCESS is layout.ACCESS


def test_bundle_folder_expires_as_one_unit():
    area = layout.BY_NAME["bundles"]
    assert area.unit(layout.link_key("3", "A-9")) == area.unit(layout.bundle_key("3", "A-9"))
    assert area.unit(layout.bundle_key("3", "A-9")) == "access/3/A-9/"
    assert area.ages_by == "link_expiry"


# -- the policy format ---------------------------------------------------------------------------


def test_demo_policies_cover_every_personal_area():
    for policy_path, map_path in [
        ("config/retention.yaml", "config/datamap.yaml"),
        ("tests/second_world/retention.yaml", "tests/second_world/datamap.yaml"),
    ]:
        problems, summary = check_file(REPO / policy_path, REPO / map_path)
        assert problems == [] and "none uncovered" in summary, policy_path
    covered = coverage(check_text(yaml.safe_dump(RAW), DM)[0], DM).covered
    for area in layout.personal_areas():
        assert f"workspace:{area.name}" in covered, area.name
    assert covered["workspace:bundles"] == "access-bundles"
    assert covered["workspace:inbox"].startswith("exempt: live work")


def test_gate_fails_when_a_personal_area_has_no_rule(tmp_path, capsys):
    raw = policy(lambda r: r["rules"].remove(rule(r, "rejected-documents")))
    cov = coverage(check_text(yaml.safe_dump(raw), DM)[0], DM)
    assert cov.uncovered == ["workspace:rejected"]
    [issue] = cov.issues()
    assert issue.rule == "uncovered" and "`workspace: rejected`" in issue.message
    # through the CLI `make lint` runs
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["retention", "check", str(path)]) == 1
    assert "workspace:rejected: [uncovered]" in capsys.readouterr().err
    # a non-personal area (receipts) needs no rule
    raw = policy(lambda r: r["rules"].remove(rule(r, "receipts")))
    assert coverage(check_text(yaml.safe_dump(raw), DM)[0], DM).uncovered == []


@pytest.mark.parametrize(
    ("mutate", "where", "code", "words"),
    [
        (lambda r: rule(r, "rejected-documents").update(workspace="refused"),
         "workspace", "target", "not an area of the workspace bucket (areas: inbox, accepted"),
        (lambda r: rule(r, "rejected-documents").update(after="link_expiry"),
         "after", "action", "aged by 'written', not 'link_expiry'"),
        (lambda r: rule(r, "access-bundles").update(after="written"),
         "after", "action", "until its download link expires"),
        (lambda r: rule(r, "leads").update(after="written"),
         "after", "action", "`after` applies to workspace rules"),
        (lambda r: rule(r, "rejected-documents").update(action="deidentify"),
         "action", "action", "workspace objects can only be deleted"),
        (lambda r: rule(r, "rejected-documents").update(overrides={2: "10 days"}),
         "overrides", "action", "per-client overrides do not apply"),
        (lambda r: rule(r, "rejected-documents").update(noncurrent="1 day"),
         "noncurrent", "action", "`noncurrent` applies to store rules"),
    ],
)  # fmt: skip
def test_bad_workspace_rules_name_field_and_rule(mutate, where, code, words):
    raw = policy(mutate)
    found = issues(raw)
    assert found, "accepted"
    target = next((i for i in found if i.location.endswith(f".{where}")), None)
    assert target is not None, [str(i) for i in found]
    assert target.rule == code and words in target.message, str(target)
    assert "rule '" in target.message  # names the rule


def test_inbox_is_live_work_two_rules_overlap_and_exemptions_are_checked():
    def add_inbox_rule(r):
        r["exempt"] = []
        r["rules"].append(
            {"id": "inbox", "purpose": "p", "workspace": "inbox", "action": "delete",
             "period": "30 days"}
        )  # fmt: skip

    found = issues(policy(add_inbox_rule))
    assert any(i.rule == "action" and "live work" in i.message for i in found)

    def twice(r):
        r["rules"].append({**rule(r, "rejected-documents"), "id": "rejected-again"})

    found = issues(policy(twice))
    assert [i.rule for i in found] == ["overlap"]
    assert "both expire workspace area rejected" in found[0].message

    found = issues(policy(lambda r: r["exempt"].append({"workspace": "nope", "reason": "x"})))
    assert [(i.rule, i.location) for i in found] == [("exempt", "exempt.1.workspace")]


# -- the sweep -----------------------------------------------------------------------------------


def _put(s3, key: str, body: bytes = b"{}") -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def _versions(s3) -> set[str]:
    page = s3.list_object_versions(Bucket=BUCKET)
    return {v["Key"] for v in page.get("Versions", []) + page.get("DeleteMarkers", [])}


@pytest.fixture
def workspace(s3, tmp_path):
    """A versioned workspace holding one object of each kind, old and young, live and not."""
    from compliance.requests.state import (
        cj_batches,
        cj_requests,
        create_state_schema,
        insert_requests,
    )

    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    create_state_schema(engine)
    now = datetime.now(UTC)
    insert_requests(
        engine,
        [
            dict(client_id=1, request_id=rid, type="access", jurisdiction="ccpa", status=st,
                 received_at=now, source=layout.accepted_key("1", rid, "access"))
            for rid, st in [("OPEN-1", "open"), ("DONE-1", "completed")]
        ],
    )  # fmt: skip
    with engine.begin() as c:
        c.execute(sa.insert(cj_batches), [
            dict(batch_id="acc-live", kind="access", created_at=now, status="planned"),
            dict(batch_id="acc-old", kind="access", created_at=now, status="done"),
        ])  # fmt: skip
        assert c.execute(sa.select(sa.func.count()).select_from(cj_requests)).scalar() == 2
    for rid in ("OPEN-1", "DONE-1"):
        _put(s3, layout.accepted_key("1", rid, "access"), b'{"identities": {}}')
    _put(s3, "rejected/2026-01-02/1/bad.json", b"refused")
    _put(s3, "rejected/2026-01-02/1/bad.json.reasons.json", b"[]")
    _put(s3, layout.bundle_key("1", "OLD"), b"zip")
    old_link = {"expires_at": (now - timedelta(days=1)).isoformat()}
    _put(s3, layout.link_key("1", "OLD"), json.dumps(old_link).encode())
    _put(s3, layout.bundle_key("1", "NEW"), b"zip")
    new_link = {"expires_at": (now + timedelta(days=400)).isoformat()}
    _put(s3, layout.link_key("1", "NEW"), json.dumps(new_link).encode())
    _put(s3, layout.targets_key("acc-live"), b"{}")
    _put(s3, layout.targets_key("acc-old"), b"{}")
    _put(s3, f"{layout.parts_prefix('acc-old')}crm.jsonl", b"rows")
    _put(s3, "deletion/dry-runs/dry-1/report.json", b"{}")  # 90 days: young at +60
    _put(s3, "inbox/1/new.json", b"{}")  # exempt: never expired
    # a job deleted this one in the versioned bucket: its data waits behind a marker
    _put(s3, layout.held_key("1", "GONE"), b"identities")
    s3.delete_object(Bucket=BUCKET, Key=layout.held_key("1", "GONE"))
    yield s3, engine
    engine.dispose()


def _sweep(s3, engine, as_of) -> Sweep:
    raw = policy()
    loaded = check_text(yaml.safe_dump(raw), DM)[0]
    rules = [r.id for r in loaded.rules if r.workspace]
    return Sweep(
        datamap=DM,
        policy=loaded,
        as_of=as_of,
        now=datetime.now(UTC),
        engine=lambda _conn: engine,
        s3=lambda _conn: s3,
        hash_key=KEY,
        only=tuple(rules),
        workspace=Workspace(s3, BUCKET),
    )


def test_sweep_expires_old_copies_every_version_and_keeps_young_and_live(workspace):
    s3, engine = workspace
    as_of = datetime.now(UTC).date() + timedelta(days=60)  # everything written 60 days ago
    plan = plan_sweep(_sweep(s3, engine, as_of))
    before = _versions(s3)
    counts = {r["rule"]: next(iter(r["counts"].values())) for r in plan["rules"]}
    assert _versions(s3) == before  # the plan only reads
    assert (
        counts["accepted-documents"]["objects"] == 1 and counts["accepted-documents"]["held"] == 1
    )
    assert counts["access-bundles"] == {  # OLD's folder goes; NEW's link is still valid
        "objects": 2, "delete_versions": 2, "leftover_versions": 0, "held": 0,
    }  # fmt: skip
    assert counts["held-memory"]["leftover_versions"] == 2  # the version and its marker
    executing = _sweep(s3, engine, as_of)
    for r in plan["rules"]:
        done = execute_step(executing, r["rule"])
        assert next(iter(done["counts"].values())) == next(iter(r["counts"].values())), r["rule"]
    left = _versions(s3)
    assert left == {
        layout.accepted_key("1", "OPEN-1", "access"),  # its request is open: live work
        layout.bundle_key("1", "NEW"),  # its link is still valid (+ 7 days grace)
        layout.link_key("1", "NEW"),
        layout.targets_key("acc-live"),  # its batch is planned
        "deletion/dry-runs/dry-1/report.json",  # 90 days
        "inbox/1/new.json",  # exempt
    }
    # idempotent: a rerun finds nothing more to do
    again = plan_sweep(_sweep(s3, engine, as_of))
    assert all(
        c["objects"] == 0 and c["leftover_versions"] == 0
        for r in again["rules"]
        for c in r["counts"].values()
    )


def test_sweep_on_the_run_day_expires_nothing_young(workspace):
    s3, engine = workspace
    plan = plan_sweep(_sweep(s3, engine, datetime.now(UTC).date()))
    expired = {r["rule"]: c["objects"] for r in plan["rules"] for c in r["counts"].values()}
    assert set(expired.values()) == {0}


# -- a deletion's search of refused documents ------------------------------------------------


def test_refused_documents_are_compared_record_by_record_in_memory():
    from compliance.deletion.workspace_copies import _strip

    wanted = {("email", "ann.lee@gmail.com")}
    doc_a = json.dumps({"client_id": 1, "identities": {"email": "Ann.Lee@Gmail.com"}})
    doc_b = json.dumps({"client_id": 1, "identities": {"email": "bo@gmail.com"}})
    assert _strip(doc_a.encode(), wanted, "1", "1") == (None, True)  # only A's: goes whole
    other_client = json.dumps({"client_id": 2, "identities": {"email": "ann.lee@gmail.com"}})
    assert _strip(other_client.encode(), wanted, "1", "2")[1] is False  # another tenant's (R6)
    kept, hit = _strip(f"{doc_b}\n{doc_a}\n".encode(), wanted, "1", "1")
    assert hit and kept == f"{doc_b}\n".encode()  # an NDJSON batch loses only A's line
    assert _strip(b"{not json ann.lee@gmail.com", wanted, "1", "1") == (None, True)
    deep = b"[" * 100_000 + b"]" * 100_000  # hostile nesting: compared as text, never raises
    assert _strip(deep, wanted, "1", "1") == (deep, False)
    assert _strip(doc_b.encode(), wanted, "1", "1") == (doc_b.encode(), False)
