"""One request's report as plain JSON: the content of `data.json`, and what HTML and CSV show.

Pure: takes the request's facts, its gathered records (`gather.read_parts`), the data map and the
retention lines, and returns a dict whose shape is documented in docs/access.md ("data.json").
Everything the bundle renders is derived from this one value, so the HTML, the CSV files and the
JSON cannot disagree. Records are sorted, so the same inputs give the same bytes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any

from compliance import __version__
from compliance.access import disclosure, partial, r10
from compliance.access.snapshots import SNAPSHOT_FIELD
from compliance.core.datamap.graph import time_path
from compliance.core.datamap.model import (
    BackupStore,
    Category,
    DataMap,
    LogStore,
    RecordingStore,
    Withhold,
)

SCHEMA = "compliance-jobs/access-report/1"
GENERATOR = {"name": "compliance-jobs access_reports", "version": __version__}

NOTES = {
    "service_provider": (
        "We hold this information as a service provider of the business named above, which "
        "collected it and decides what it is used for. We use it only to provide our services "
        "to that business, and we do not sell or share it. The third parties listed are our own "
        "service providers, to which we disclose it for a business purpose."
    ),
    "withheld": (
        "Some information is too sensitive to show: government identification numbers, "
        "financial account numbers, medical identification numbers, passwords, security "
        "questions and answers, and biometric data. This report says that such information is "
        "held and in which field, never its value (R10; Cal. Code Regs. tit. 11, 7024(d)). "
        "Such values are also looked for in free text, log lines and backup copies, and "
        "replaced by a statement of their type wherever they appear."
    ),
    "logs": (
        "Application and e-mail delivery logs are kept briefly for debugging and security. "
        "Data kept for security and integrity need not be disclosed as specific pieces (R11); "
        "we include the log lines that mention you anyway, so that you see everything we hold."
    ),
}

# G2: a GDPR request gets a copy of all its personal data (Art. 15(3)); only credentials are
# withheld (Art. 15(4)); the policy itself is `r10.WITHHELD_BY_JURISDICTION`.
NOTES_WITHHELD_GDPR = (
    "Your identification, account and medical numbers are in this copy: the GDPR gives you a "
    "copy of all personal data we process about you (Art. 15(3)). Only credentials are "
    "withheld: password hashes, security questions and answers, and the voiceprint template "
    "used to recognise callers. A copy of them would let anyone who obtained this report "
    "impersonate you, so they are withheld to protect your rights and those of others "
    "(Art. 15(4), with Art. 32); this report says that they are held and in which field."
)


def notes(jurisdiction: str) -> dict[str, str]:
    """The report's fixed texts, the withholding note per jurisdiction (G2)."""
    if jurisdiction == "gdpr":
        return {**NOTES, "withheld": NOTES_WITHHELD_GDPR}
    return dict(NOTES)


# What a report covers (`scope` in data.json and the manifest). R5: a right-to-know request the
# business could not verify for specific pieces is handled as a request for categories
# (Reg 7024(a)-(b)).
SPECIFIC_SCOPE = {"level": "specific_pieces", "rule": "R8", "basis": None, "text": None}
CATEGORIES_SCOPE = {
    "level": "categories",
    "rule": "R5",
    "basis": "Cal. Code Regs. tit. 11, 7024(a)-(b)",
    "text": (
        "The business could verify your identity only to the degree needed to tell you the "
        "categories of personal information held, not to the higher degree needed to disclose "
        "the specific pieces. As the law requires, your request is therefore answered as a "
        "request for categories (R5; Cal. Code Regs. tit. 11, 7024(a)-(b)): this report lists "
        "the categories of personal information we hold for this business's consumers, where "
        "they come from, why they are used and who receives them. None of your records was "
        "searched or copied for it, and it contains no specific piece of information about "
        "you. To receive the specific pieces, ask the business to complete the verification."
    ),
}
CATEGORIES_WINDOW_TEXT = (
    "No records were searched: this report gives categories only, because the business "
    "verified your identity only for categories (R5)."
)


def window_text(since: str | None, until: str, look_back: str | None, jurisdiction: str) -> str:
    day = until[:10]
    if since is None:
        return (
            "All personal information we hold about you, whatever its age (GDPR Art. 15: no "
            f"look-back limit, G2), as of {day}."
        )
    if look_back == "since_2022":
        return (
            f"Personal information collected from 2022-01-01 until the business received your "
            f"request on {day}, as you asked (R9)."
        )
    return (
        f"Personal information collected from {since[:10]} until the business received your "
        f"request on {day}: the 12 months before your request (R9). You may ask for everything "
        "collected since 2022-01-01."
    )


def assemble(
    dm: DataMap,
    request: dict[str, Any],
    given: dict[str, list[str]],
    records: list[dict[str, Any]],
    *,
    retention: disclosure.Retention,
    generated_at: datetime,
    recordings: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report of one request. `recordings` maps (source, record id text) to a recording's
    bundle entry ({"file": name | None, "status": included | not_requested | missing})."""
    recordings = recordings or {}
    # R10 / G2: what this jurisdiction withholds, and every value found outside the map
    scanner = r10.Scanner.for_jurisdiction(request["jurisdiction"])
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        by_source[rec["source"]].append(rec)
    sources = [_source(dm, name, recs, scanner) for name, recs in _ordered(dm, by_source)]
    held: dict[Category, int] = defaultdict(int)
    withheld: dict[tuple[str, str], dict[str, Any]] = {}
    for src in sources:
        cats = {f["name"]: f["categories"] for f in src["fields"]}
        kinds = {f["name"]: f["withhold"] or f["declared_withhold"] for f in src["fields"]}
        for rec in src["records"]:
            present = [k for k, v in rec["values"].items() if v not in (None, "")]
            present += list(rec["withheld"])
            for c in {c for name in present for c in cats.get(name, [])}:
                held[Category(c)] += 1
            for name in rec["withheld"]:
                item = withheld.setdefault(
                    (kinds[name], f"{src['source']}.{name}"),
                    {
                        "kind": kinds[name],
                        "field": f"{src['source']}.{name}",
                        "statement": disclosure.withheld_statement(kinds[name], name),
                        "records": 0,
                        **r10.basis_for(request["jurisdiction"], kinds[name]),
                    },
                )
                item["records"] += 1
    audio = []
    for src in sources:
        store = _recording_store(dm, src["source"])
        if store is None:
            continue
        for rec in src["records"]:
            entry = recordings.get((src["source"], str(rec["record"])), {})
            audio.append(
                {
                    "source": src["source"],
                    "record": rec["record"],
                    "collected_at": rec["collected_at"],
                    "file": entry.get("file"),
                    "status": entry.get("status", "not_requested"),
                    "bytes": entry.get("bytes"),
                    "link": entry.get("link"),
                    "link_expires_at": entry.get("link_expires_at"),
                    # the audio's metadata: the recording row's own fields (R10 already applied)
                    "metadata": dict(sorted(rec["values"].items())),
                }
            )
            for c in store.categories:  # the audio is held whether or not it is in the bundle
                held[c] += 1
    categories = []
    for cat in Category:
        if not held.get(cat):
            continue
        info = disclosure.category_info(dm, cat)
        info["retention"] = retention.for_category(dm, cat)
        info["records"] = held[cat]
        categories.append(info)
    since, until = request["since"], request["until"]
    withheld_list = [withheld[k] for k in sorted(withheld)]
    not_searched = disclosure.not_searched(dm)
    return {
        "schema": SCHEMA,
        "generator": GENERATOR,
        "generated_at": generated_at.isoformat(),
        "request": _request_block(request, {k: list(v) for k, v in sorted(given.items())}),
        "window": {
            "since": since,
            "until": until,
            "rule": "G2" if since is None else "R9",
            "text": window_text(since, until, request.get("look_back"), request["jurisdiction"]),
        },
        "scope": SPECIFIC_SCOPE,
        "categories": categories,
        "sold_or_shared": [],
        "sources": sources,
        "recordings": audio,
        "withheld": withheld_list,
        "withheld_in_text": scanner.summary(),
        "not_searched": not_searched,
        "partial_denial": partial.statement(
            request["jurisdiction"],
            withheld=withheld_list,
            found=scanner.summary(),
            recordings=audio,
            not_searched=not_searched,
        ),
        "notes": notes(request["jurisdiction"]),
        "retention_policy": "available" if retention.available else disclosure.SEE_POLICY,
    }


def _request_block(request: dict[str, Any], identities: dict[str, list[str]]) -> dict[str, Any]:
    """The report's `request` section: the same fields for full and categories-only reports."""
    return {
        "request_id": request["request_id"],
        "client_id": request["client_id"],
        "jurisdiction": request["jurisdiction"],
        "look_back": request.get("look_back"),
        "received_at": request["received_at"],
        "identities": identities,
    }


def assemble_categories(
    dm: DataMap,
    request: dict[str, Any],
    *,
    retention: disclosure.Retention,
    generated_at: datetime,
) -> dict[str, Any]:
    """The report of a request verified only for categories (R5): the categories page alone.

    Same schema as `assemble`, so the bundle, HTML and receipt code is shared, but built without
    a single record: each category the data map holds with its description, sources, purposes,
    third parties and retention (R8, R27; `compliance.access.disclosure`), `records` None (not
    counted: no record was read), and empty `sources`, `recordings` and `withheld`. The
    identities the business gave are not echoed: a person verified only for categories gets no
    specific piece, not even their own request's. `scope` says why (R5, Reg 7024(a)-(b)).
    """
    categories = []
    for cat in disclosure.mapped_categories(dm):
        info = disclosure.category_info(dm, cat)
        info["retention"] = retention.for_category(dm, cat)
        info["records"] = None
        categories.append(info)
    return {
        "schema": SCHEMA,
        "generator": GENERATOR,
        "generated_at": generated_at.isoformat(),
        "request": _request_block(request, {}),
        "window": {
            "since": None,
            "until": request["until"],
            "rule": "R5",
            "text": CATEGORIES_WINDOW_TEXT,
        },
        "scope": CATEGORIES_SCOPE,
        "categories": categories,
        "sold_or_shared": [],
        "sources": [],
        "recordings": [],
        "withheld": [],
        "withheld_in_text": [],
        "not_searched": [],
        "partial_denial": partial.statement(request["jurisdiction"], scope=CATEGORIES_SCOPE),
        "notes": notes(request["jurisdiction"]),
        "retention_policy": "available" if retention.available else disclosure.SEE_POLICY,
    }


def _ordered(
    dm: DataMap, by_source: dict[str, list[dict[str, Any]]]
) -> list[tuple[str, list[dict[str, Any]]]]:
    """Sources in data-map order (tables of each system, then stores), unknown ones last."""
    order = [f"{s}.{t}" for s, system in dm.systems.items() for t in system.tables]
    order += list(dm.stores)
    rank = {name: i for i, name in enumerate(order)}
    return sorted(by_source.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def _sort_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    record = rec.get("record")
    return (
        rec.get("collected_at") or "",
        (0, record, "") if isinstance(record, int) else (1, 0, str(record)),
        json.dumps(rec.get("values"), sort_keys=True, default=str),
    )


def _source(
    dm: DataMap, name: str, recs: list[dict[str, Any]], scanner: r10.Scanner
) -> dict[str, Any]:
    """One source's fields and records. A field's `withhold` is what this jurisdiction withholds
    (`declared`: what the map says, G2); every other value passes the R10 scanner, with its
    field name as context (an unmapped `ssn` key, a card number in a message)."""
    recs = sorted(recs, key=_sort_key)
    store = dm.stores.get(name)
    if isinstance(store, LogStore):
        mapped = [
            _field(f, spec.categories, spec.withhold, scanner) for f, spec in store.fields.items()
        ]
        known = {f["name"] for f in mapped}
        extra = sorted({k for r in recs for k in r["values"]} - known)
        fields = mapped + [_field(f, [], None, scanner) for f in extra]
        kind, description = "log", store.description or name
        dating = _DATED_OWN
    else:
        sname, tname = name.split(".", 1)
        backup = dm.stores.get(sname)  # R13: "<backup store>.<table>", rows of its snapshots
        if isinstance(backup, BackupStore):
            sname = backup.system
        table = dm.systems[sname].tables[tname]
        fields = [
            _field(c, col.categories, col.withhold, scanner) for c, col in table.columns.items()
        ]
        kind = "table"
        description = _table_description(dm, sname, tname)
        dating = _dating(dm, sname, tname)
        if isinstance(backup, BackupStore):
            kind = "backup"
            description = f"{description}, as held in the backup snapshots ({backup.description})"
            fields.append(_field(SNAPSHOT_FIELD, [], None, scanner))
    kinds = {f["name"]: f["withhold"] for f in fields}
    declared = {f["name"]: f["declared_withhold"] for f in fields}
    rows = []
    for rec in recs:
        rows.append(
            {
                "record": rec.get("record"),
                "collected_at": rec.get("collected_at"),
                "values": {
                    k: scanner.redact_value(v, k)
                    for k, v in rec["values"].items()
                    if not kinds.get(k)
                },
                # a declared field whose value the store did not give (not selected) stays
                # withheld whatever the jurisdiction: nothing to disclose
                "withheld": {
                    f: disclosure.WITHHELD_CELL
                    for f in sorted(rec.get("withheld", []))
                    if kinds.get(f) or (declared.get(f) and f not in rec["values"])
                },
            }
        )
    return {
        "source": name,
        "kind": kind,
        "description": description,
        "fields": fields,
        "collection_time": dating,
        "records": rows,
    }


def _field(
    name: str, categories: Any, declared: Withhold | None, scanner: r10.Scanner
) -> dict[str, Any]:
    withheld = declared if declared is not None and declared in scanner.withhold else None
    return {
        "name": name,
        "categories": [c.value for c in categories],
        "withhold": withheld.value if withheld else None,
        "declared_withhold": declared.value if declared else None,
    }


_DATED_OWN: dict[str, Any] = {"basis": "own", "parent": None, "text": None}


def _table_description(dm: DataMap, sname: str, tname: str) -> str:
    table = dm.systems[sname].tables[tname]
    return table.description or f"{tname.replace('_', ' ').capitalize()} ({sname})"


def _dating(dm: DataMap, sname: str, tname: str) -> dict[str, Any]:
    """Where a table's records get the time the look-back is measured on (R9): their own time
    column, the nearest dated table up the relation chain, or none (always in the report)."""
    found = time_path(dm.systems[sname], tname)
    if found is None:
        return {
            "basis": "none",
            "parent": None,
            "text": (
                "These records carry no collection date, so all of them are included whatever "
                "the period covered (R9)."
            ),
        }
    hops, _ = found
    if not hops:
        return _DATED_OWN
    parent = hops[-1].target_table
    return {
        "basis": "parent",
        "parent": f"{sname}.{parent}",
        "text": (
            "These records have no date of their own: each is dated by its related record in "
            f"{_table_description(dm, sname, parent)}, and that date decides whether it is in "
            "the period covered (R9)."
        ),
    }


def _recording_store(dm: DataMap, source: str) -> RecordingStore | None:
    for store in dm.stores.values():
        if isinstance(store, RecordingStore) and f"{store.system}.{store.table}" == source:
            return store
    return None
