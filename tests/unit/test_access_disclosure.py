"""What a report says about the data: retention per category from the policy (R27), per-client
overrides, the "see retention policy" fallback, R10 statements and R13 stores."""

from __future__ import annotations

from compliance.access import disclosure
from compliance.core.datamap.model import Category, Withhold
from compliance.core.datamap.validate import load_datamap
from compliance.core.settings import REPO_ROOT

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
POLICY = REPO_ROOT / "config" / "retention.yaml"


def test_retention_lines_per_category_follow_the_policy():
    policy = disclosure.load_policy(POLICY, DM)
    assert policy is not None
    ret = disclosure.retention_lines(policy, DM, client_id=1)
    visits = [x for x in ret.for_category(DM, Category.internet_activity) if "web_visits" in x]
    assert visits == [
        "crm.web_visits: deleted 13 months after collection (purpose: website analytics for "
        "the client)"
    ]
    geo = ret.for_category(DM, Category.geolocation)
    assert any(x.startswith("geolocation columns: de-identified 6 months") for x in geo)
    sensory = ret.for_category(DM, Category.sensory)
    assert any(x.startswith("crm.call_recordings: deleted 1 year") for x in sensory)
    # a child table goes with its parent row
    records = ret.for_category(DM, Category.customer_records)
    assert any(
        x.startswith("crm.ticket_comments: kept as long as its crm.support_tickets")
        for x in records
    )
    sensitive = ret.for_category(DM, Category.sensitive)
    assert any("crm.payments.bank_account: de-identified 18 months" in x for x in sensitive)


def test_client_override_wins():
    policy = disclosure.load_policy(POLICY, DM)
    ret = disclosure.retention_lines(policy, DM, client_id=2)  # web-visits: 6 months for client 2
    visits = [x for x in ret.for_category(DM, Category.internet_activity) if "web_visits" in x]
    assert visits and all("6 months" in x for x in visits)


def test_missing_or_broken_policy_says_see_retention_policy(tmp_path):
    assert disclosure.load_policy(tmp_path / "absent.yaml", DM) is None
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nrules: [{id: x}]\n")
    assert disclosure.load_policy(broken, DM) is None
    ret = disclosure.retention_lines(None, DM, client_id=1)
    assert not ret.available
    assert ret.for_category(DM, Category.identifiers) == [disclosure.SEE_POLICY]


def test_withheld_statements_name_the_type_never_a_value():
    text = disclosure.withheld_statement(Withhold.government_id, "drivers_license")
    assert text.startswith("A government identification number (such as a driver's licence)")
    assert "drivers_license" in text and text.endswith("(R10).")
    assert set(disclosure.WITHHELD) == set(Withhold)  # every R10 kind has a statement


def test_r13_lists_only_stores_the_map_declares_not_searched():
    # the demo's disaster-recovery backups fail R13's condition 2: searched, not listed
    assert disclosure.not_searched(DM) == []
    second = load_datamap(REPO_ROOT / "tests" / "second_world" / "datamap.yaml")
    stores = disclosure.not_searched(second)
    assert [s["store"] for s in stores] == ["crm2_backups"]
    declared = second.stores["crm2_backups"].not_searched
    assert stores[0]["rule"] == "R13"
    assert stores[0]["conditions"] == declared.model_dump()  # the map's four statements, as is
    text = stores[0]["description"] + " " + stores[0]["reason"]
    for statement in declared.model_dump().values():
        assert statement in text


def test_every_category_has_a_title():
    assert set(disclosure.TITLES) == set(Category)
