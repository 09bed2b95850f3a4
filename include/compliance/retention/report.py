"""The sweep's report (JSON for machines, HTML for people) and its ledger entry.

The report puts each rule's plan next to what was done and flags any difference: a real run's
counts should equal the plan's, so a mismatch means the data changed under the sweep (a new hold,
new rows) or a bug, and someone should look. It also lists the coverage gaps of the running
policy and, per category, the periods that bound it (the R27 disclosure). Everything in it is a
count, a rule id, a table or store name, a key or a client id: no personal data.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from compliance.core.outputs import ensure_workspace, put_bytes, put_json, put_summary

DAG_ID = "retention_sweep"
# Count keys that are actions (compared plan vs done); the rest (held, locked...) are facts.
ACTION_KEYS = frozenset(
    {
        "expire",
        "delete",
        "mask",
        "aggregate",
        "deidentify",
        "partitions",
        "delete_versions",
        "filter",
        "noncurrent",
    }
)


def run_slug(run_id: str) -> str:
    """A run id as a safe S3 path segment and ledger reference."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id).strip("-")[:100] or "run"


def mismatches(planned: dict[str, dict[str, int]], done: dict[str, dict[str, int]]) -> list[str]:
    """Where a rule's done counts differ from its plan (action keys only)."""
    out = []
    for target in sorted(set(planned) | set(done)):
        p, d = planned.get(target, {}), done.get(target, {})
        for key in sorted((set(p) | set(d)) & ACTION_KEYS):
            if p.get(key, 0) != d.get(key, 0):
                out.append(f"{target}.{key}: planned {p.get(key, 0)}, done {d.get(key, 0)}")
    return out


def build_report(
    plan: dict[str, Any],
    results: list[dict[str, Any]],
    *,
    dry_run: bool,
    run_id: str,
    policy_sha256: str,
    selected: list[str] | None,
    uncovered: list[str],
    disclosure: dict[str, list[str]],
) -> dict[str, Any]:
    done = {r["rule"]: r["counts"] for r in results if r}
    rules = []
    totals: dict[str, dict[str, int]] = {"planned": {}, "done": {}}
    for rule in plan["rules"]:
        entry = {k: v for k, v in rule.items() if k != "counts"}
        entry["planned"] = rule["counts"]
        _sum(totals["planned"], rule["counts"])
        if dry_run:
            entry.update(done=None, matches=None, mismatches=[])
        else:
            counts = done.get(rule["rule"])
            entry["done"] = counts
            if counts is None:
                entry.update(matches=False, mismatches=["not executed"])
            else:
                diff = mismatches(rule["counts"], counts)
                entry.update(matches=not diff, mismatches=diff)
                _sum(totals["done"], counts)
        rules.append(entry)
    return {
        "kind": DAG_ID,
        "as_of": plan["as_of"],
        "now": plan["now"],
        "run": run_slug(run_id),
        "dry_run": dry_run,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "policy_sha256": policy_sha256,
        "selected": selected,
        "holds": plan["holds"],
        "rules": rules,
        "totals": totals,
        "mismatches": sum(len(r["mismatches"]) for r in rules),
        "uncovered": uncovered,
        "disclosure": disclosure,
    }


def _sum(into: dict[str, int], counts: dict[str, dict[str, int]]) -> None:
    for per in counts.values():
        for key, n in per.items():
            if isinstance(n, int):
                into[key] = into.get(key, 0) + n


def write_report(s3: Any, bucket: str, report: dict[str, Any]) -> dict[str, Any]:
    """Write report.json and report.html under retention/<as_of>/<run>/ and the DAG summary."""
    ensure_workspace(s3, bucket)
    base = f"retention/{report['as_of']}/{report['run']}"
    json_uri = put_json(s3, bucket, f"{base}/report.json", report)
    html_uri = put_bytes(
        s3, bucket, f"{base}/report.html", render_html(report).encode(), "text/html; charset=utf-8"
    )
    summary = {
        "date": report["as_of"],
        "dry_run": report["dry_run"],
        "rules": len(report["rules"]),
        "planned": report["totals"]["planned"],
        "done": report["totals"]["done"],
        "mismatches": report["mismatches"],
        "uncovered": len(report["uncovered"]),
        "report": html_uri,
        "json": json_uri,
    }
    put_summary(s3, bucket, DAG_ID, summary)
    return summary


def record(engine: Engine, hash_key: bytes, report: dict[str, Any], report_uri: str) -> int:
    """Append the sweep to the audit ledger (idempotent per run: a retried task adds nothing)."""
    from compliance.core.ledger import Entry, append
    from compliance.requests.state import create_state_schema

    create_state_schema(engine)
    entry = Entry(
        kind=DAG_ID,
        ref=f"retention:{report['as_of']}:{report['run']}"[:128],
        payload={
            "as_of": report["as_of"],
            "dry_run": report["dry_run"],
            "policy_sha256": report["policy_sha256"],
            "rules": {
                r["rule"]: {"planned": r["planned"], "done": r["done"]} for r in report["rules"]
            },
            "mismatches": report["mismatches"],
            "uncovered": len(report["uncovered"]),
            "report": report_uri,
            "requirements": ["R19", "R22", "R26", "R27"],
        },
        idempotency_key=f"{DAG_ID}:{report['run']}"[:200],
    )
    return append(engine, hash_key, [entry])[0]


# -- HTML --------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _counts(counts: dict[str, dict[str, int]] | None) -> str:
    if counts is None:
        return "<em>dry run</em>"
    if not counts:
        return "&ndash;"
    parts = []
    for target, per in sorted(counts.items()):
        shown = ", ".join(f"{_e(k)} {_e(v)}" for k, v in per.items())
        parts.append(f"<div><code>{_e(target)}</code>: {shown}</div>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    mode = "Dry run (nothing changed)" if report["dry_run"] else "Sweep"
    rows = []
    for r in report["rules"]:
        status = ""
        if r["matches"] is True:
            status = "as planned"
        elif r["matches"] is False:
            status = "<strong>differs</strong>: " + "; ".join(_e(m) for m in r["mismatches"])
        overrides = ", ".join(f"client {_e(c)}: {_e(p)}" for c, p in r["overrides"].items())
        rows.append(
            "<tr>"
            f"<td><code>{_e(r['rule'])}</code></td><td>{_e(r['wave'])}</td>"
            f"<td>{_e(r['action'])}</td><td><code>{_e(r['target'])}</code></td>"
            f"<td>{_e(r['period'])}{'<br>' + overrides if overrides else ''}</td>"
            f"<td>{_counts(r['planned'])}</td><td>{_counts(r['done'])}</td><td>{status}</td>"
            "</tr>"
        )
    uncovered = "".join(f"<li><code>{_e(u)}</code></li>" for u in report["uncovered"])
    disclosure = "".join(
        f"<tr><td>{_e(cat)}</td><td>{'<br>'.join(_e(x) for x in rules)}</td></tr>"
        for cat, rules in report["disclosure"].items()
    )
    holds = ", ".join(f"{_e(s)}: {_e(n)}" for s, n in report["holds"].items()) or "none"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Retention sweep {_e(report["as_of"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}</style></head>
<body>
<h1>Retention sweep: {_e(report["as_of"])}</h1>
<p>{_e(mode)} &middot; run <code>{_e(report["run"])}</code> &middot; policy sha256
<code>{_e(report["policy_sha256"][:16])}</code> &middot; active legal holds (R19): {holds}
&middot; {_e(report["mismatches"])} mismatch(es) between plan and run.</p>
<h2>Rules (R27; children first, R26; request log &ge; 24 months, R22)</h2>
<table><tr><th>Rule</th><th>Wave</th><th>Action</th><th>Target</th><th>Period</th>
<th>Planned</th><th>Done</th><th>Status</th></tr>
{"".join(rows)}
</table>
<h2>Coverage gaps</h2>
{f"<ul>{uncovered}</ul>" if uncovered else "<p>None: every mapped item is covered or exempt.</p>"}
<h2>Periods by category (R27 disclosure)</h2>
<table><tr><th>Category</th><th>Rules</th></tr>{disclosure}</table>
</body></html>
"""
