"""The one self-contained HTML report: tables as text, charts embedded as base64 PNG data URIs.

Self-contained so it can be mailed or archived as a single file, and so opening it fetches
nothing (a Content-Security-Policy forbids any other source). Every string comes from data
(industry labels, reason codes, request ids...) and is escaped by Jinja's autoescape.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, select_autoescape

PERCENT_COLUMNS = {"open_rate", "click_rate", "click_to_open", "share_of_opens"}


@dataclass
class Section:
    title: str
    note: str = ""
    chart: bytes | None = None
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # per row: "", "suppressed" or "overdue"
    more: str = ""  # e.g. "showing 200 of 512 rows; all are in by_client.csv"


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.2rem .5rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
tr.suppressed td{color:#999;background:#fafafa}tr.overdue td{background:#fdecea}
.note{color:#555;font-size:.9rem}img{max-width:100%;margin:.5rem 0}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{font-weight:600}
</style></head><body>
<h1>{{ title }}</h1>
<dl>{% for k, v in facts %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>
<p class="note">{{ method }}</p>
{% for s in sections %}
<h2>{{ s.title }}</h2>
{% if s.note %}<p class="note">{{ s.note }}</p>{% endif %}
{% if s.chart %}
<img alt="{{ s.title }}" src="data:image/png;base64,{{ s.chart_b64 }}">
{% endif %}
{% if s.columns %}<table>
<thead><tr>{% for c in s.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in s.rows %}
<tr class="{{ s.flags[loop.index0] }}">{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>{% endif %}
{% if s.more %}<p class="note">{{ s.more }}</p>{% endif %}
{% endfor %}
</body></html>
"""

_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True))


def _cell(column: str, value: Any) -> str:
    text = "" if value is None else str(value)
    if column in PERCENT_COLUMNS and text not in ("", "nan"):
        try:
            return f"{float(text) * 100:.1f}%"
        except ValueError:
            return text
    return "" if text == "nan" else text


def table_section(
    title: str,
    records: list[dict[str, str]],
    columns: list[str],
    *,
    chart: bytes | None = None,
    note: str = "",
    limit: int = 200,
    csv_name: str = "",
    flag: str = "suppressed",
) -> Section:
    """A section from CSV records (strings); rows flagged by their `suppressed`/`overdue` column."""
    shown = records[:limit]
    rows = [[_cell(c, r.get(c, "")) for c in columns] for r in shown]
    flags = [flag if str(r.get(flag, "")).lower() in ("yes", "true") else "" for r in shown]
    more = ""
    if len(records) > limit:
        more = f"Showing {limit} of {len(records)} rows; all are in {csv_name}."
    return Section(title, note, chart, columns, rows, flags, more)


def render_report(
    title: str, facts: list[tuple[str, str]], method: str, sections: list[Section]
) -> str:
    views = []
    for s in sections:
        view = dict(s.__dict__)
        view["chart_b64"] = base64.b64encode(s.chart).decode("ascii") if s.chart else ""
        views.append(view)
    return _ENV.from_string(TEMPLATE).render(
        title=title, facts=facts, method=method, sections=views
    )
