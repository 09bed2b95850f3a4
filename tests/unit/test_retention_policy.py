"""The retention policy file: periods, validation (every error at once), R22, R26, the coverage gate."""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path

import pytest
import yaml

from compliance.__main__ import main
from compliance.core.datamap.validate import check_text as check_datamap
from compliance.core.datamap.validate import load_datamap
from compliance.retention import check_file, check_text, coverage
from compliance.retention.policy import R22_MINIMUM, Period, Wave, resolve

REPO = Path(__file__).resolve().parents[2]
DM = load_datamap(REPO / "config" / "datamap.yaml")
POLICY_TEXT = (REPO / "config" / "retention.yaml").read_text()
RAW = yaml.safe_load(POLICY_TEXT)


def policy(mutate=None) -> dict:
    raw = copy.deepcopy(RAW)
    if mutate:
        mutate(raw)
    return raw


def rule(raw: dict, rule_id: str) -> dict:
    return next(r for r in raw["rules"] if r["id"] == rule_id)


def issues(raw: dict, dm=DM) -> list:
    _, found = check_text(yaml.safe_dump(raw, sort_keys=False), dm)
    return found


def codes(raw: dict, dm=DM) -> set[str]:
    return {i.rule for i in issues(raw, dm)}


# -- the demo policy (the CI gate) ---------------------------------------------------------------


def test_demo_policy_is_valid_and_covers_the_demo_map():
    problems, summary = check_file(REPO / "config" / "retention.yaml", REPO / "config/datamap.yaml")
    assert problems == []
    assert "none uncovered" in summary


def test_cli_check_exit_codes(tmp_path, capsys):
    assert main(["retention", "check", str(REPO / "config" / "retention.yaml")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(policy(lambda r: rule(r, "request-log").update(period="1 year"))))
    assert main(["retention", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "[R22]" in err and "request records" in err
    assert main(["retention", "check", str(tmp_path / "missing.yaml")]) == 2


def test_sweep_order_puts_children_first():
    steps = resolve(check_text(POLICY_TEXT, DM)[0], DM)
    assert steps[0].id == "children" and steps[0].wave is Wave.minors
    waves = [s.wave for s in steps]
    assert waves == sorted(waves, key=list(Wave).index)
    geo = next(s for s in steps if s.id == "geolocation")
    assert geo.columns == (("email_events", ("geo_city", "geo_region")),)


# -- periods -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "months", "days"),
    [
        ("13 months", 13, 0),
        ("3 years", 36, 0),
        ("2 weeks", 0, 14),
        ("90d", 0, 90),
        ("1 Year", 12, 0),
    ],
)
def test_period_parse(text, months, days):
    p = Period.parse(text)
    assert (p.months, p.days, str(p)) == (months, days, text)


@pytest.mark.parametrize("bad", ["13", "soon", 30, "3 fortnights", "-1 days", True])
def test_period_refuses_text_without_unit(bad):
    with pytest.raises(ValueError, match="period"):
        Period.parse(bad)


def test_period_arithmetic_clamps_month_ends():
    assert Period.parse("1 month").before(date(2026, 3, 31)) == date(2026, 2, 28)
    assert Period.parse("1 month").before(date(2024, 3, 31)) == date(2024, 2, 29)
    assert Period.parse("1 year").before(date(2024, 2, 29)) == date(2023, 2, 28)
    assert Period.parse("10 days").before(date(2026, 3, 5)) == date(2026, 2, 23)


def test_period_comparisons_hold_on_every_date():
    assert Period.parse("24 months").at_least(R22_MINIMUM)
    assert Period.parse("2 years").at_least(R22_MINIMUM)
    assert not Period.parse("730 days").at_least(R22_MINIMUM)  # short of 24 months in leap spans
    assert Period.parse("731 days").at_least(R22_MINIMUM)
    assert Period.parse("180 days").shorter_than(Period.parse("6 months"))  # 6 months >= 181 d
    assert not Period.parse("6 months").shorter_than(Period.parse("180 days"))
    assert not Period.parse("1 year").shorter_than(Period.parse("12 months"))


# -- every error at once -------------------------------------------------------------------------


def test_every_error_is_reported_at_once_with_lines():
    def breakage(raw):
        r = rule(raw, "web-visits")
        r["perod"] = r.pop("period")  # typo: unknown key and a missing period
        rule(raw, "leads")["period"] = "ninety"
        raw["rules"].append(dict(rule(raw, "messages")))  # duplicate id

    found = issues(policy(breakage))
    kinds = {i.rule for i in found}
    assert {"unknown-key", "structure"} <= kinds
    assert len(found) >= 3
    assert all(i.line for i in found), [str(i) for i in found]
    assert any("ninety" in i.message for i in found)


def test_semantic_errors_are_reported_together():
    def breakage(raw):
        rule(raw, "request-log")["period"] = "12 months"
        rule(raw, "children")["since"] = "last_activity"
        rule(raw, "leads")["table"] = "crm.campaigns"  # ignored: no consumer data
        rule(raw, "geolocation")["action"] = "delete"
        raw["rules"].append({**rule(raw, "leads"), "id": "leads-2"})

    found = issues(policy(breakage))
    assert {"R22", "R26", "target", "action", "overlap"} <= {i.rule for i in found}
    target = next(i for i in found if i.rule == "target")
    assert "ignore" in target.message and target.line


# -- R22: the request log ------------------------------------------------------------------------


@pytest.mark.parametrize("period", ["23 months", "730 days", "1 year"])
def test_request_log_shorter_than_24_months_is_refused(period):
    assert "R22" in codes(policy(lambda r: rule(r, "request-log").update(period=period)))


@pytest.mark.parametrize("period", ["24 months", "2 years", "36 months"])
def test_request_log_of_24_months_or_more_is_accepted(period):
    assert not issues(policy(lambda r: rule(r, "request-log").update(period=period)))


def test_request_log_override_cannot_shorten_it_either():
    found = issues(policy(lambda r: rule(r, "request-log").update(overrides={5: "18 months"})))
    assert [i.rule for i in found] == ["R22"]
    assert "client 5" in found[0].message


def test_a_policy_without_a_request_log_rule_is_refused():
    assert "R22" in codes(policy(lambda r: r["rules"].remove(rule(r, "request-log"))))


# -- R26: children --------------------------------------------------------------------------


def test_children_must_have_the_shortest_period():
    found = issues(policy(lambda r: rule(r, "children").update(period="4 years")))
    assert {i.rule for i in found} == {"R26"}
    assert any("inactive-consumers" in i.message for i in found)
    assert any("'web-visits'" in i.message for i in found)


def test_a_client_override_cannot_make_children_outlast_adults():
    # web-visits is 6 months for client 2: the children's override must stay below it
    found = issues(policy(lambda r: rule(r, "children").update(overrides={2: "7 months"})))
    assert {i.rule for i in found} == {"R26"}
    assert "client 2" in found[0].message


def test_children_never_expire_by_inactivity_and_need_a_rule():
    assert "R26" in codes(policy(lambda r: rule(r, "children").update(since="last_activity")))
    assert "R26" in codes(policy(lambda r: r["rules"].remove(rule(r, "children"))))
    assert "R26" in codes(policy(lambda r: r["minors"].update(flag="crm.leads.source")))


# -- targets, actions, overlaps ------------------------------------------------------------------


def test_aggregates_may_not_keep_identifying_values():
    found = issues(policy(lambda r: rule(r, "email-events")["aggregate"].update(by=["ip", "os"])))
    assert [i.rule for i in found] == ["aggregate-identifying"]
    assert "'ip'" in found[0].message


def test_two_rules_may_not_deidentify_the_same_column():
    def both(raw):
        raw["rules"].append(
            {
                "id": "geo-again",
                "purpose": "x",
                "table": "crm.email_events",
                "action": "deidentify",
                "columns": ["geo_city"],
                "period": "3 months",
            }
        )

    assert [i.rule for i in issues(policy(both))] == ["overlap"]


def test_store_rules_take_no_overrides_and_recordings_follow_their_rows():
    def store_rules(raw):
        rule(raw, "app-logs")["overrides"] = {3: "10 days"}
        rule(raw, "mail-logs")["store"] = "call_audio"

    found = issues(policy(store_rules))
    assert {(i.rule, i.location.split(".")[-1]) for i in found} == {
        ("action", "overrides"),
        ("target", "store"),
    }


def test_a_prefix_names_a_store():
    def as_prefix(raw):
        r = rule(raw, "app-logs")
        del r["store"]
        r["prefix"] = "s3://cj-app-logs/app/"

    assert not issues(policy(as_prefix))

    def wrong(raw):
        r = rule(raw, "app-logs")
        del r["store"]
        r["prefix"] = "s3://cj-app-logs/other/"

    assert "target" in codes(policy(wrong))


def test_consumer_rows_expire_only_as_consumers():
    def delete_contacts(raw):
        rule(raw, "leads").update(table="crm.contacts")

    assert "action" in codes(policy(delete_contacts))


# -- the coverage gate ---------------------------------------------------------------------------


def _datamap_with(mutate) -> object:
    raw = yaml.safe_load((REPO / "config" / "datamap.yaml").read_text())
    mutate(raw)
    dm, problems = check_datamap(yaml.safe_dump(raw, sort_keys=False))
    assert dm is not None and not problems, problems
    return dm


def test_coverage_gate_fails_on_an_uncovered_table_and_column():
    def add_referrals(raw):
        raw["systems"]["crm"]["tables"]["referrals"] = {
            "primary_key": "referral_id",
            "time_column": "created_at",
            "tenant_column": "client_id",
            "relation": {"column": "contact_id", "references": "contacts.contact_id"},
            "columns": {"referrer_email": {"categories": ["identifiers"]}},
        }

    dm = _datamap_with(add_referrals)
    loaded = check_text(POLICY_TEXT, dm)[0]
    cov = coverage(loaded, dm)
    assert cov.uncovered == ["crm.referrals.referrer_email"]
    assert [i.rule for i in cov.issues()] == ["uncovered"]
    # and a consumer-lifetime declaration covers it
    raw = policy(lambda r: rule(r, "inactive-consumers")["lifetime"].append("referrals"))
    assert coverage(check_text(yaml.safe_dump(raw), dm)[0], dm).uncovered == []


def test_coverage_gate_fails_on_a_new_column_only_partly_covered():
    # without the payments row rule, only the card columns are bounded (de-identified)
    raw = policy(lambda r: r["rules"].remove(rule(r, "payments")))
    cov = coverage(check_text(yaml.safe_dump(raw), DM)[0], DM)
    assert cov.uncovered == [
        "crm.payments.card_brand",
        "crm.payments.amount_cents",
        "crm.payments.contact_id",
    ]
    raw["exempt"] += [  # beside the demo's own exemptions (the inbox)
        {
            "column": f"crm.payments.{c}",
            "reason": "the client's books (R19)",
            "exception": "transaction",
        }
        for c in ("card_brand", "amount_cents", "contact_id")
    ]
    cov = coverage(check_text(yaml.safe_dump(raw), DM)[0], DM)
    assert cov.uncovered == [] and cov.covered["crm.payments.amount_cents"].startswith("exempt:")


def test_coverage_gate_fails_on_an_uncovered_store_and_via_the_cli(tmp_path):
    def add_store(raw):
        raw["stores"]["audit_logs"] = {
            "kind": "log",
            "bucket": "cj-audit-logs",
            "prefix": "audit/",
            "system": "crm",
            "timestamp_field": "ts",
            "tenant_field": "client_id",
            "fields": {"email": {"categories": ["identifiers"], "identity": "email"}},
        }

    dm_raw = yaml.safe_load((REPO / "config" / "datamap.yaml").read_text())
    add_store(dm_raw)
    dm_file = tmp_path / "datamap.yaml"
    dm_file.write_text(yaml.safe_dump(dm_raw, sort_keys=False))
    problems, _ = check_file(REPO / "config" / "retention.yaml", dm_file)
    assert problems == [
        "store:audit_logs: [uncovered] no rule deletes, expires or de-identifies it and it is "
        "not exempt (R27): add a rule or an `exempt` entry with a reason"
    ]
    args = ["retention", "check", str(REPO / "config/retention.yaml"), "--datamap", str(dm_file)]
    assert main(args) == 1


def test_an_exempt_item_may_not_also_be_covered():
    raw = policy(lambda r: r.update(exempt=[{"table": "crm.leads", "reason": "kept"}]))
    cov = coverage(check_text(yaml.safe_dump(raw), DM)[0], DM)
    assert ("crm.leads.source", "leads") in cov.exempt_and_covered
    assert "exempt-covered" in {i.rule for i in cov.issues()}


def test_exemptions_need_an_existing_target_and_a_reason():
    raw = policy(lambda r: r.update(exempt=[{"column": "crm.leads.nope", "reason": "x"}]))
    assert "exempt" in codes(raw)
    raw = policy(lambda r: r.update(exempt=[{"table": "crm.leads", "reason": ""}]))
    assert "structure" in codes(raw)
