"""The inventory's report: a summary per day in the workspace (JSON and a readable page), and
the failure that makes someone look when the map and the systems disagree."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from compliance.core.outputs import ensure_workspace, put_bytes, put_json, put_summary
from compliance.inventory.findings import (
    InventoryProblem,
)


def summarise(day: str, findings: list[dict[str, Any]]) -> dict[str, Any]:
    systems = [f for f in findings if f["kind"] == "sql"]
    stores = [f for f in findings if f["kind"] != "sql"]
    everything = findings
    return {
        "date": day,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "problems": sum(len(s["problems"]) for s in everything),
        "drift": sum(len(s["drift"]) for s in everything),
        "missing_indexes": sum(len(s.get("missing_indexes", [])) for s in everything),
        "systems": systems,
        "stores": stores,
    }


def write_report(s3: Any, bucket: str, day: str, findings: list[dict]) -> dict[str, Any]:
    """Upload `inventory/<day>/inventory.{json,html}`; return a small summary for XCom."""
    report = summarise(day, findings)
    base = f"inventory/{day}/"
    ensure_workspace(s3, bucket)
    put_json(s3, bucket, base + "inventory.json", report)
    page = render_html(report).encode()
    uri = put_bytes(s3, bucket, base + "inventory.html", page, "text/html; charset=utf-8")
    summary = {
        "date": day,
        "problems": report["problems"],
        "drift": report["drift"],
        "missing_indexes": report["missing_indexes"],
        "report": uri,
    }
    put_summary(s3, bucket, "data_inventory", summary)
    return summary


def raise_on_problems(summary: dict[str, Any]) -> None:
    if summary["problems"]:
        raise InventoryProblem(
            f"{summary['problems']} mismatch(es) between the data map and the systems; "
            f"see {summary['report']}"
        )


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Data inventory "
        f"{esc(report['date'])}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        ".bad{color:#b00}</style></head><body>",
        f"<h1>Data inventory {esc(report['date'])}</h1>",
        f"<p>{report['problems']} problem(s), {report['drift']} drift finding(s), "
        f"{report['missing_indexes']} missing index(es) "
        "(<code>python -m compliance datamap indexes --db URL --apply</code>).</p>",
    ]
    for item in report["systems"] + report["stores"]:
        parts.append(f"<h2>{esc(item['name'])} <small>({esc(item['kind'])})</small></h2>")
        for label, key in (
            ("Problems", "problems"),
            ("Drift", "drift"),
            ("Missing indexes", "missing_indexes"),
        ):
            if item.get(key):
                rows = "".join(
                    f"<tr><td>{esc(f['where'])}</td><td>{esc(f['kind'])}</td>"
                    f"<td>{esc(f['detail'])}</td></tr>"
                    for f in item[key]
                )
                parts.append(f"<h3 class='bad'>{label}</h3><table>{rows}</table>")
        if item["tables"]:
            rows = "".join(
                f"<tr><td>{esc(t)}</td><td>{n}</td></tr>" for t, n in item["tables"].items()
            )
            parts.append(
                f"<h3>Rows per table</h3><table><tr><th>table</th><th>rows</th></tr>{rows}</table>"
            )
        if item["per_client_category"]:
            rows = "".join(
                f"<tr><td>{esc(str(r['client_id']))}</td><td>{esc(r['category'])}</td>"
                f"<td>{r['records']}</td></tr>"
                for r in item["per_client_category"]
            )
            parts.append(
                "<h3>Records per client and category</h3><table><tr><th>client</th>"
                f"<th>category</th><th>records</th></tr>{rows}</table>"
            )
        if item["objects"]:
            parts.append(
                f"<p>{item['objects']} object(s), {item['bytes']} bytes, "
                f"{item['partitions']} partition(s).</p>"
            )
    parts.append("</body></html>")
    return "".join(parts)
