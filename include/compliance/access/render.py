"""index.html: one self-contained, readable page of a report (R8, R11).

Jinja2 with autoescape on for every value: a message body holding `<script>` is shown as text,
never run. Defence in depth for a page opened from a zip on the consumer's own machine: a
Content-Security-Policy that allows no script, no network and only the inline style, and no
external resource of any kind (fonts, images, scripts), so the page works offline and tells no
one it was opened. Links point only at files inside the bundle, whose names we fix.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, StrictUndefined, Template

from compliance.access import disclosure

_ENV = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def cell(value: Any) -> str:
    """A stored value as display text (escaped later by the template)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


_ENV.filters["cell"] = cell

TEMPLATE = Path(__file__).with_name("index.html.j2")


@cache
def _template() -> Template:
    return _ENV.from_string(TEMPLATE.read_text("utf-8"))


def render_html(report: dict[str, Any], files: list[str]) -> str:
    """The page for one report; `files` are the bundle's other member names (fixed by us)."""
    return _template().render(r=report, files=files, withheld_cell=disclosure.WITHHELD_CELL)
