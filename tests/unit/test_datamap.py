"""The data map: the demo map is valid, and every kind of broken map is reported precisely.

Each broken map is the demo map (config/datamap.yaml) with one small mutation; the test asserts
the exact set of (rule, location) it produces, so a wrong rule, a wrong location, a missing or an
extra issue all fail. Rules are those of `compliance.core.datamap.validate.RULES`; requirement ids
(R8, R10, R19...) are from shared/reference/ccpa-requirements.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from compliance.core.datamap.graph import Hop, chain_to_consumer, erase_order, tenant_path
from compliance.core.datamap.model import Category, ExceptionCode, IdentityType, Withhold
from compliance.core.datamap.validate import (
    RULES,
    DataMapInvalid,
    Issue,
    check_against_schema,
    check_text,
    load_datamap,
)
from compliance.core.stores.sql import table_columns
from compliance_dev.world.schema import metadata

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "datamap.yaml"
DOC = REPO / "docs" / "data-map.md"
DEMO_TEXT = DEMO.read_text(encoding="utf-8")
CRM = "systems.crm.tables"


def demo() -> dict[str, Any]:
    return yaml.safe_load(DEMO_TEXT)


def found(issues: list[Issue]) -> set[tuple[str, str]]:
    return {(i.rule, i.location) for i in issues}


def line_of(text: str, needle: str) -> int:
    """1-based line of the only line containing `needle`."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits}"
    return hits[0]


# -- mutations of the demo map -------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _walk(d: Any, path: str) -> tuple[Any, str | int]:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    for part in parents:
        d = d[part]
    return d, last


def put(path: str, value: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        parent, key = _walk(d, path)
        parent[key] = value

    return mutate


def drop(path: str) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        parent, key = _walk(d, path)
        del parent[key]

    return mutate


def rename(path: str, new: str) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        parent, key = _walk(d, path)
        parent[new] = parent.pop(key)

    return mutate


def drop_identities(path: str) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        parent, key = _walk(d, path)
        for entry in parent[key].values():
            entry.pop("identity", None)

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        for m in mutations:
            m(d)

    return mutate


CYCLE = both(
    put(f"{CRM}.leads.relation", {"column": "message_id", "references": "messages.message_id"}),
    put(f"{CRM}.messages.relation", {"column": "lead_id", "references": "leads.lead_id"}),
)

# id -> (mutation, expected {(rule, location)})
BROKEN: dict[str, tuple[Mutation, set[tuple[str, str]]]] = {
    # relations (the graph erasure and access walk)
    "relation-unknown-table": (
        put(f"{CRM}.leads.relation.references", "contact.contact_id"),
        {("unknown-table", f"{CRM}.leads.relation.references")},
    ),
    "relation-to-ignored-table": (
        put(f"{CRM}.leads.relation.references", "clients.client_id"),
        {("unknown-table", f"{CRM}.leads.relation.references")},
    ),
    "relation-unknown-column": (
        put(f"{CRM}.message_attachments.relation.references", "messages.msg_id"),
        {("unknown-column", f"{CRM}.message_attachments.relation.references")},
    ),
    # composite primary keys (issue 14): fine on a child, never on the consumer table, and a
    # relation never references one part of one
    "composite-key-consumer": (
        put(f"{CRM}.contacts.primary_key", ["contact_id", "client_id"]),
        {("composite-key", f"{CRM}.contacts.primary_key")},
    ),
    "composite-key-part-referenced": (
        both(
            put(f"{CRM}.messages.primary_key", ["message_id", "lead_id"]),
            put(f"{CRM}.message_attachments.relation.references", "messages.lead_id"),
        ),
        {("composite-key", f"{CRM}.message_attachments.relation.references")},
    ),
    "relation-missing": (
        drop(f"{CRM}.leads.relation"),
        {("relation-missing", f"{CRM}.leads.relation")},
    ),
    "relation-unreachable-depth-2": (
        drop(f"{CRM}.messages.relation"),
        {
            ("relation-missing", f"{CRM}.messages.relation"),
            ("relation-unreachable", f"{CRM}.message_attachments.relation"),
        },
    ),
    "relation-cycle": (
        CYCLE,
        {
            ("relation-cycle", f"{CRM}.leads.relation"),
            ("relation-cycle", f"{CRM}.messages.relation"),
            ("relation-cycle", f"{CRM}.message_attachments.relation"),
        },
    ),
    "relation-self-cycle": (
        put(f"{CRM}.support_tickets.relation.references", "support_tickets.ticket_id"),
        {
            ("relation-cycle", f"{CRM}.support_tickets.relation"),
            ("relation-cycle", f"{CRM}.ticket_comments.relation"),
        },
    ),
    "consumer-table-with-relation": (
        put(f"{CRM}.contacts.relation", {"column": "lead_id", "references": "leads.lead_id"}),
        {("relation-cycle", f"{CRM}.contacts.relation")},
    ),
    "identity-on-unreachable-table": (
        drop(f"{CRM}.contact_aliases.relation"),
        {
            ("relation-missing", f"{CRM}.contact_aliases.relation"),
            ("identity-unreachable", f"{CRM}.contact_aliases.columns.email.identity"),
        },
    ),
    "consumer-table-not-mapped": (
        put("systems.crm.consumer_table", "people"),
        {("unknown-table", "systems.crm.consumer_table")},
    ),
    "table-both-mapped-and-ignored": (
        put("systems.crm.ignore.leads", "no consumer data"),
        {("duplicate-name", "systems.crm.ignore.leads")},
    ),
    # identity and tenant
    "consumer-without-identity": (
        drop_identities(f"{CRM}.contacts.columns"),
        {("missing-identity", f"{CRM}.contacts.columns")},
    ),
    "log-store-without-identity": (
        drop_identities("stores.mail_logs.fields"),
        {("missing-identity", "stores.mail_logs.fields")},
    ),
    # log field paths (issue 14): a path that does not parse would silently match nothing
    "log-field-bad-path": (
        both(
            rename("stores.mail_logs.fields.rcpt", "rcpt[.to"),
            put("stores.mail_logs.tenant_field", "tenants[]"),
        ),
        {
            ("bad-path", "stores.mail_logs.fields.rcpt[.to"),
            ("bad-path", "stores.mail_logs.tenant_field"),
        },
    ),
    "consumer-without-tenant": (
        drop(f"{CRM}.contacts.tenant_column"),
        {("missing-tenant", f"{CRM}.contacts.tenant_column")},
    ),
    "no-tenant-on-path": (
        both(drop(f"{CRM}.contacts.tenant_column"), drop(f"{CRM}.messages.tenant_column")),
        {
            ("missing-tenant", f"{CRM}.contacts.tenant_column"),
            ("missing-tenant", f"{CRM}.messages.tenant_column"),
            ("missing-tenant", f"{CRM}.message_attachments.tenant_column"),
        },
    ),
    # R19: what is kept needs an exception code
    "table-keep-without-exception": (
        put(f"{CRM}.web_visits.erase", "keep"),
        {("exception-required", f"{CRM}.web_visits.erase")},
    ),
    "table-keep-without-reason": (
        both(
            put(f"{CRM}.web_visits.erase", "keep"), put(f"{CRM}.web_visits.exception", "security")
        ),
        {("exception-required", f"{CRM}.web_visits.erase")},
    ),
    "column-keep-without-exception": (
        drop(f"{CRM}.payments.columns.card_brand.exception"),
        {("exception-required", f"{CRM}.payments.columns.card_brand.erase")},
    ),
    # R17 (issue 15): deidentified data counts only with the three attestations
    "deidentify-without-attestations": (
        put(f"{CRM}.payments.columns.card_last4.erase", "deidentify"),
        {("deidentify-unattested", f"{CRM}.payments.columns.card_last4.erase")},
    ),
    "deidentify-recipients-not-bound": (
        both(
            put(f"{CRM}.payments.columns.card_last4.erase", "deidentify"),
            put(
                "deidentification",
                {
                    "measures": "placeholder replaces the value; no key kept",
                    "public_commitment": "https://example.com/privacy#deidentified",
                    "recipients_bound": False,
                },
            ),
        ),
        {("deidentify-unattested", "deidentification.recipients_bound")},
    ),
    # R8: categories
    "unknown-category-on-column": (
        put(f"{CRM}.leads.columns.source.categories", ["identifers"]),
        {("unknown-category", f"{CRM}.leads.columns.source.categories.0")},
    ),
    "unknown-category-described": (
        rename("categories.identifiers", "identifers"),
        {("unknown-category", "categories.identifers")},
    ),
    "undescribed-category": (
        drop("categories.geolocation"),
        {("category-undescribed", f"{CRM}.email_events.columns.geo_city")},
    ),
    "undescribed-category-of-subprocessor": (
        put("subprocessors.0.categories", ["professional"]),
        {("category-undescribed", "subprocessors.0.categories")},
    ),
    "sensitive-column-without-withhold": (  # R10
        put(f"{CRM}.contacts.columns.drivers_license", {"categories": ["sensitive"]}),
        {("withhold-required", f"{CRM}.contacts.columns.drivers_license.withhold")},
    ),
    "sensitive-log-field-without-withhold": (  # R10
        put("stores.app_logs.fields.card_number", {"categories": ["sensitive"]}),
        {("withhold-required", "stores.app_logs.fields.card_number.withhold")},
    ),
    "inference-marked-provided": (  # G3: derived data is never provided
        put(f"{CRM}.leads.columns.score", {"categories": ["inferences"], "provided": True}),
        {("provided-derived", f"{CRM}.leads.columns.score.provided")},
    ),
    # object stores
    "store-unknown-system": (
        put("stores.mail_logs.system", "crm2"),
        {("unknown-system", "stores.mail_logs.system")},
    ),
    "recordings-unmapped-table": (
        put("stores.call_audio.table", "calls"),
        {("unknown-table", "stores.call_audio.table")},
    ),
    "overlapping-prefixes": (
        put("stores.mail_logs.prefix", "app/mail/"),
        {("prefix-overlap", "stores.mail_logs.prefix")},
    ),
    "recordings-in-log-bucket": (
        put("stores.call_audio.bucket", "cj-app-logs"),
        {("prefix-overlap", "stores.call_audio.bucket")},
    ),
    "bad-bucket-name": (
        put("stores.app_logs.bucket", "CJ_App_Logs"),
        {("structure", "stores.app_logs.bucket")},
    ),
    "bad-prefix": (
        put("stores.crm_backups.prefix", "crm"),
        {("structure", "stores.crm_backups.prefix")},
    ),
    "backup-not-searched-without-r13": (  # R13: all four conditions or searched
        put(
            "stores.crm_backups.not_searched",
            {"not_reasonably_accessible": "tape", "records_described": "CRM rows"},
        ),
        {
            ("not-searched", "stores.crm_backups.not_searched.solely_legal_or_compliance"),
            ("not-searched", "stores.crm_backups.not_searched.not_sold_or_used_commercially"),
        },
    ),
    "partition-unknown-directive": (
        put("stores.app_logs.partition", "dt=%Y-%m-%d-%Q/"),
        {("structure", "stores.app_logs.partition")},
    ),
    "partition-hourly": (
        put("stores.app_logs.partition", "dt=%Y-%m-%d/%H/"),
        {("structure", "stores.app_logs.partition")},
    ),
    "partition-not-daily": (
        put("stores.mail_logs.partition", "%Y/%m/"),
        {("structure", "stores.mail_logs.partition")},
    ),
    "partition-not-a-folder": (
        put("stores.mail_logs.partition", "%Y/%m/%d"),
        {("structure", "stores.mail_logs.partition")},
    ),
    "unknown-store-kind": (
        put("stores.app_logs.kind", "logs"),
        {("structure", "stores.app_logs.kind")},
    ),
    # R16.4: a recipient is told, or says why it cannot be (the demo has a justification)
    "recipient-neither-told-nor-justified": (
        drop("recipients.0.impossible_or_disproportionate"),
        {("recipient-notice", "recipients.0")},
    ),
    "recipient-justification-too-thin": (
        put("recipients.0.impossible_or_disproportionate", "too hard"),
        {("recipient-notice", "recipients.0.impossible_or_disproportionate")},
    ),
    # R16.3: sub-processors
    "duplicate-subprocessor": (
        put("subprocessors.2.name", "esp_mailer"),
        {("duplicate-name", "subprocessors.2.name")},
    ),
    "bad-sns-target": (
        put("subprocessors.1.target", "https://sns.example/transcription"),
        {("bad-target", "subprocessors.1.target")},
    ),
    "bad-webhook-target": (
        put("subprocessors.0.target", "esp.example/deletions"),
        {("bad-target", "subprocessors.0.target")},
    ),
    "webhook-without-host": (
        put("subprocessors.0.target", "https:///esp/deletions"),
        {("bad-target", "subprocessors.0.target")},
    ),
    "bad-email-target": (
        put("subprocessors.2.target", "privacy at payments.example"),
        {("bad-target", "subprocessors.2.target")},
    ),
    "bad-channel": (
        put("subprocessors.2.channel", "fax"),
        {("structure", "subprocessors.2.channel")},
    ),
    # structure
    "typo-in-key": (
        rename(f"{CRM}.contacts.primary_key", "primary_kye"),
        {("unknown-key", f"{CRM}.contacts.primary_kye")},
    ),
    "typo-in-optional-key": (
        rename("stores.crm_backups.rewrite", "rewrites"),
        {("unknown-key", "stores.crm_backups.rewrites")},
    ),
    "tables-is-a-list": (
        lambda d: d["systems"]["crm"].__setitem__("tables", list(d["systems"]["crm"]["tables"])),
        {("structure", "systems.crm.tables")},
    ),
    "required-key-missing": (
        drop(f"{CRM}.leads.primary_key"),  # time_column is optional (dated by the parent)
        {("structure", f"{CRM}.leads.primary_key")},
    ),
    "bad-table-name": (
        rename(f"{CRM}.leads", "sales-leads"),
        {("structure", f"{CRM}.sales-leads")},
    ),
    "bad-reference-format": (
        put(f"{CRM}.leads.relation.references", "contacts"),
        {("structure", f"{CRM}.leads.relation.references")},
    ),
    "unknown-identity-type": (
        put(f"{CRM}.contacts.columns.email.identity", "mail"),
        {("structure", f"{CRM}.contacts.columns.email.identity")},
    ),
    "unknown-withhold-kind": (
        put(f"{CRM}.contacts.columns.drivers_license.withhold", "ssn"),
        {("structure", f"{CRM}.contacts.columns.drivers_license.withhold")},
    ),
    "unknown-exception-code": (
        put(f"{CRM}.payments.columns.card_brand.exception", "contract"),
        {("structure", f"{CRM}.payments.columns.card_brand.exception")},
    ),
    "empty-categories": (
        put(f"{CRM}.leads.columns.score.categories", []),
        {("structure", f"{CRM}.leads.columns.score.categories")},
    ),
    "unsupported-version": (
        put("version", 2),
        {("structure", "version")},
    ),
}


def check_mutated(mutation: Mutation) -> list[Issue]:
    data = demo()
    mutation(data)
    _, issues = check_text(yaml.safe_dump(data, sort_keys=False))
    assert issues, "the mutated map should be invalid"
    return issues


# -- the demo map ----------------------------------------------------------------------------------


def test_demo_map_is_valid():
    datamap, issues = check_text(DEMO_TEXT)
    assert issues == []
    assert datamap is not None
    crm = load_datamap(DEMO).systems["crm"]
    assert crm.consumer_table == "contacts"
    assert len(crm.tables) == 12


def test_erase_order_puts_children_before_parents():
    order = erase_order(load_datamap(DEMO).systems["crm"])
    assert order.index("message_attachments") < order.index("messages") < order.index("contacts")
    assert order.index("ticket_comments") < order.index("support_tickets")
    assert order[-1] == "contacts"
    assert order[:2] == ["message_attachments", "ticket_comments"]  # the depth-2 tables


def test_chain_to_consumer_depth_2():
    crm = load_datamap(DEMO).systems["crm"]
    assert chain_to_consumer(crm, "message_attachments") == [
        Hop("message_attachments", "message_id", "messages", "message_id"),
        Hop("messages", "contact_id", "contacts", "contact_id"),
    ]
    assert chain_to_consumer(crm, "leads") == [Hop("leads", "contact_id", "contacts", "contact_id")]
    assert chain_to_consumer(crm, "contacts") == []


def test_tenant_path_borrows_the_parents_tenant():
    crm = load_datamap(DEMO).systems["crm"]
    assert tenant_path(crm, "ticket_comments") == (
        [Hop("ticket_comments", "ticket_id", "support_tickets", "ticket_id")],
        "client_id",
    )
    assert tenant_path(crm, "contacts") == ([], "client_id")


# -- broken maps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mutation", "expected"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_map(mutation: Mutation, expected: set[tuple[str, str]]):
    issues = check_mutated(mutation)
    assert found(issues) == expected
    for issue in issues:
        assert issue.rule in RULES
        assert issue.line is not None, f"{issue} has no line"
        assert str(issue).startswith(f"{issue.location} (line {issue.line}): [{issue.rule}] ")


def test_every_static_rule_has_a_broken_map():
    covered = {rule for _, expected in BROKEN.values() for rule, _ in expected}
    covered |= {"yaml-syntax", "duplicate-name"}  # text-level cases below
    covered |= {"live-missing-table", "live-missing-column"}  # test_live_schema_*
    covered |= {"live-column-type", "live-type-mismatch"}  # test_time_column.py
    assert covered == set(RULES)


def test_unknown_category_message_lists_the_categories():
    issues = check_mutated(put(f"{CRM}.leads.columns.source.categories", ["identifers"]))
    assert [i.message for i in issues] == [
        "'identifers' is not a CCPA category (expected one of: "
        + ", ".join(c.value for c in Category)
        + ")"
    ]


def test_typo_in_key_suggests_the_right_one():
    (issue,) = check_mutated(rename(f"{CRM}.contacts.primary_key", "primary_kye"))
    assert "did you mean 'primary_key'" in issue.message


def test_unknown_key_without_a_close_match_lists_the_allowed_keys():
    (issue,) = check_mutated(put(f"{CRM}.leads.owner", "sales"))
    assert (issue.rule, issue.location) == ("unknown-key", f"{CRM}.leads.owner")
    assert "expected one of: primary_key, time_column, tenant_column, relation" in issue.message


def test_store_named_like_a_store_kind_keeps_its_location():
    # pydantic puts the union tag ("log") into error locations; only that tag is dropped.
    issues = check_mutated(
        both(rename("stores.app_logs", "log"), put("stores.log.bucket", "Bad_Bucket"))
    )
    assert found(issues) == {("structure", "stores.log.bucket")}


def test_cycle_message_names_the_cycle():
    issues = check_mutated(CYCLE)
    messages = {i.location: i.message for i in issues}
    assert messages[f"{CRM}.leads.relation"] == "relations form a cycle: leads -> messages -> leads"


def test_many_structural_mistakes_are_reported_at_once():
    mutation = both(
        rename(f"{CRM}.contacts.primary_key", "primary_kye"),
        put(f"{CRM}.leads.columns.source.categories", ["identifers"]),
        put("stores.app_logs.bucket", "CJ_App_Logs"),
        put("stores.mail_logs.partition", "%Y/%m/"),
        drop(f"{CRM}.web_visits.primary_key"),
        put("subprocessors.1.channel", "fax"),
    )
    assert found(check_mutated(mutation)) == {
        ("unknown-key", f"{CRM}.contacts.primary_kye"),
        ("unknown-category", f"{CRM}.leads.columns.source.categories.0"),
        ("structure", "stores.app_logs.bucket"),
        ("structure", "stores.mail_logs.partition"),
        ("structure", f"{CRM}.web_visits.primary_key"),
        ("structure", "subprocessors.1.channel"),
    }


def test_many_cross_reference_mistakes_are_reported_at_once():
    mutation = both(
        put(f"{CRM}.leads.relation.references", "contact.contact_id"),
        put(f"{CRM}.web_visits.erase", "keep"),
        drop(f"{CRM}.payments.columns.card_brand.exception"),
        drop("categories.geolocation"),
        put("stores.mail_logs.system", "crm2"),
        put("stores.call_audio.table", "calls"),
        put("subprocessors.2.name", "esp_mailer"),
        put("subprocessors.1.target", "topic"),
    )
    assert found(check_mutated(mutation)) == {
        ("unknown-table", f"{CRM}.leads.relation.references"),
        ("exception-required", f"{CRM}.web_visits.erase"),
        ("exception-required", f"{CRM}.payments.columns.card_brand.erase"),
        ("category-undescribed", f"{CRM}.email_events.columns.geo_city"),
        ("unknown-system", "stores.mail_logs.system"),
        ("unknown-table", "stores.call_audio.table"),
        ("duplicate-name", "subprocessors.2.name"),
        ("bad-target", "subprocessors.1.target"),
    }


def test_missing_consumer_table_still_checks_the_other_tables():
    mutation = both(put("systems.crm.consumer_table", "people"), put(f"{CRM}.leads.erase", "keep"))
    assert found(check_mutated(mutation)) == {
        ("unknown-table", "systems.crm.consumer_table"),
        ("exception-required", f"{CRM}.leads.erase"),
    }


# -- text-level mistakes and line numbers ---------------------------------------------------------


def edit(old: str, new: str) -> str:
    assert DEMO_TEXT.count(old) == 1, f"{old!r} is not unique in the demo map"
    return DEMO_TEXT.replace(old, new)


def test_yaml_syntax_error_has_its_line():
    broken = edit("lead-response services.", "lead-response services: and more")
    datamap, issues = check_text(broken)
    assert datamap is None
    assert [(i.rule, i.location, i.line) for i in issues] == [
        ("yaml-syntax", "<file>", line_of(broken, "services: and more"))
    ]
    assert "mapping values are not allowed here" in issues[0].message


def test_unclosed_bracket_names_where_it_started():
    broken = edit("categories: [inferences]", "categories: [inferences")
    (issue,) = check_text(broken)[1]
    assert issue.rule == "yaml-syntax"
    line = line_of(broken, "categories: [inferences")
    assert issue.line == line
    assert issue.message == (
        f"expected ',' or ']', but got '}}' (column 42), "
        f"while parsing a flow sequence that starts on line {line}"
    )


@pytest.mark.parametrize(
    "text",
    ["", "# only a comment\n", "- a list\n- of things\n", "just text\n"],
    ids=["empty", "comment-only", "list", "scalar"],
)
def test_file_that_is_not_a_mapping(text: str):
    datamap, issues = check_text(text)
    assert datamap is None
    assert found(issues) == {("yaml-syntax", "<file>")}


def test_unknown_key_points_at_its_line():
    broken = edit("primary_key: lead_id", "primary_kye: lead_id")
    issues = check_text(broken)[1]
    assert [(i.rule, i.location, i.line) for i in issues] == [
        ("unknown-key", f"{CRM}.leads.primary_kye", line_of(broken, "primary_kye"))
    ]


def test_cross_reference_issue_points_at_its_line():
    broken = edit("references: messages.message_id}", "references: messages.msg_id}")
    issues = check_text(broken)[1]
    assert [(i.rule, i.location, i.line) for i in issues] == [
        (
            "unknown-column",
            f"{CRM}.message_attachments.relation.references",
            line_of(broken, "messages.msg_id"),
        )
    ]


def test_absent_key_points_at_its_parent_line():
    contacts_head = (
        "        tenant_column: client_id\n        time_column: created_at\n        erase: delete\n"
    )
    broken = edit(contacts_head, contacts_head.split("\n", 1)[1])
    issues = check_text(broken)[1]
    assert [(i.rule, i.location, i.line) for i in issues] == [
        ("missing-tenant", f"{CRM}.contacts.tenant_column", line_of(broken, "      contacts:"))
    ]


def test_duplicate_yaml_key_is_reported_not_silently_collapsed():
    # A YAML loader keeps only the last of two equal keys: a second `leads:` would drop a table.
    broken = edit("      web_visits:\n", "      leads:\n")
    issues = check_text(broken)[1]
    assert [(i.rule, i.location, i.line) for i in issues] == [
        ("duplicate-name", f"{CRM}.leads", line_of(DEMO_TEXT, "      web_visits:"))
    ]
    assert f"first on line {line_of(DEMO_TEXT, '      leads:')}" in issues[0].message


def test_load_datamap_raises_with_every_issue(tmp_path: Path):
    path = tmp_path / "map.yaml"
    path.write_text(edit("bucket: cj-crm-backups", "bucket: CJ_Backups"), encoding="utf-8")
    with pytest.raises(DataMapInvalid) as info:
        load_datamap(path)
    assert found(info.value.issues) == {("structure", "stores.crm_backups.bucket")}
    assert str(info.value).startswith(f"data map {path} has 1 error(s):\n  - stores.crm_backups")


def test_load_datamap_rejects_non_utf8(tmp_path: Path):
    path = tmp_path / "map.yaml"
    path.write_bytes(b"version: 1\nsystems: {crm: caf\xe9}\n")
    with pytest.raises(DataMapInvalid) as info:
        load_datamap(path)
    assert found(info.value.issues) == {("yaml-syntax", "<file>")}


# -- the live database -----------------------------------------------------------------------------


@pytest.fixture
def crm_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    return url


def live_issues(url: str) -> list[Issue]:
    engine = create_engine(url)
    try:
        return check_against_schema(load_datamap(DEMO), "crm", table_columns(engine))
    finally:
        engine.dispose()


def alter(url: str, *statements: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def test_live_schema_matches_the_demo_map(crm_url: str):
    assert live_issues(crm_url) == []


def test_live_schema_missing_columns(crm_url: str):
    alter(
        crm_url,
        "ALTER TABLE leads DROP COLUMN score",
        "ALTER TABLE web_visits DROP COLUMN visited_at",
        "ALTER TABLE call_recordings DROP COLUMN s3_key",
    )
    assert found(live_issues(crm_url)) == {
        ("live-missing-column", f"{CRM}.leads.columns.score"),
        ("live-missing-column", f"{CRM}.web_visits.time_column"),
        ("live-missing-column", "stores.call_audio.key_column"),
    }


def test_live_schema_renamed_table(crm_url: str):
    alter(crm_url, "ALTER TABLE support_tickets RENAME TO tickets")
    issues = live_issues(crm_url)
    assert found(issues) == {("live-missing-table", f"{CRM}.support_tickets")}
    assert issues[0].message == "table 'support_tickets' is not in the database"


# -- the command line ------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compliance", "datamap", "check", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_accepts_the_demo_map():
    result = cli("config/datamap.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config/datamap.yaml: OK (1 SQL system(s), 12 tables")


def test_cli_lists_every_error(tmp_path: Path):
    data = demo()
    both(
        put(f"{CRM}.leads.relation.references", "contact.contact_id"),
        put("stores.mail_logs.system", "crm2"),
        put("subprocessors.2.name", "esp_mailer"),
    )(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    result = cli(str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    listed = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(listed) == 3, result.stderr
    for rule, location in [
        ("unknown-table", f"{CRM}.leads.relation.references"),
        ("unknown-system", "stores.mail_logs.system"),
        ("duplicate-name", "subprocessors.2.name"),
    ]:
        pattern = rf"^  - {re.escape(location)} \(line \d+\): \[{re.escape(rule)}\] "
        assert any(re.match(pattern, line) for line in listed), (rule, location, result.stderr)


def test_cli_missing_file_exits_2(tmp_path: Path):
    result = cli(str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_cli_compares_with_a_live_database(crm_url: str):
    assert cli("config/datamap.yaml", "--db", crm_url).returncode == 0
    alter(crm_url, "ALTER TABLE leads DROP COLUMN score")
    result = cli("config/datamap.yaml", "--db", crm_url)
    assert result.returncode == 1
    assert f"{CRM}.leads.columns.score: [live-missing-column]" in result.stderr


# -- the documentation -----------------------------------------------------------------------------


def test_doc_lists_every_rule():
    doc = DOC.read_text(encoding="utf-8")
    section = doc.split("\n## Validation rules\n", 1)[1].split("\n## ", 1)[0]
    table = re.findall(r"^\| `([a-z-]+)` \| ([^|]+) \|", section, re.MULTILINE)
    assert [rule for rule, _ in table] == list(RULES)
    for rule, requirement in table:  # the requirement column quotes RULES
        assert requirement.startswith(RULES[rule]), rule


@pytest.mark.parametrize(
    "values",
    [Category, IdentityType, Withhold, ExceptionCode],
    ids=["categories", "identity-types", "withhold-kinds", "exception-codes"],
)
def test_doc_lists_every_enum_value(values: Any):
    doc = DOC.read_text(encoding="utf-8")
    missing = [v.value for v in values if f"`{v.value}`" not in doc]
    assert missing == []


def test_doc_quotes_the_demo_map_verbatim():
    doc = DOC.read_text(encoding="utf-8")
    quotes = re.findall(r"<!-- from config/datamap.yaml -->\n```yaml\n(.*?)```", doc, re.DOTALL)
    assert len(quotes) >= 4
    for quote in quotes:
        assert quote in DEMO_TEXT, quote[:200]


def test_doc_yaml_examples_parse():
    doc = DOC.read_text(encoding="utf-8")
    for block in re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL):
        yaml.safe_load(block)


def test_deidentify_is_accepted_with_the_three_r17_attestations():
    """R17: with measures, a public commitment and recipients bound, `deidentify` is valid."""
    doc = demo()
    doc["systems"]["crm"]["tables"]["payments"]["columns"]["card_last4"]["erase"] = "deidentify"
    doc["deidentification"] = {
        "measures": "the value is replaced by a fixed placeholder; no key or copy is kept",
        "public_commitment": "https://example.com/privacy#deidentified-data",
        "recipients_bound": True,
    }
    dm, issues = check_text(yaml.safe_dump(doc, sort_keys=False))
    assert issues == [] and dm is not None
    assert dm.deidentification is not None and dm.deidentification.recipients_bound is True
    doc["deidentification"]["measures"] = "   "
    _, issues = check_text(yaml.safe_dump(doc, sort_keys=False))
    assert found(issues) == {("deidentify-unattested", "deidentification.measures")}
    assert all("R17" in i.message for i in issues)
