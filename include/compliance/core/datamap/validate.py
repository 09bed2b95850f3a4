"""Loading and checking a data map, reporting every mistake at once with where it is.

Two passes: pydantic checks the structure (types, enums, unknown keys) and reports all structural
errors; when the structure is sound, the cross-reference rules run and report all theirs.
Each `Issue` names a location (dotted path and YAML line) and a rule id from `RULES`.
Duplicate YAML keys (which a YAML loader silently collapses) are reported in either case.

The passes live beside this module: `structure` (YAML and pydantic errors, with lines),
`rules` (cross-references), `live` (against a database); `issues` holds what they report. This
module is the entry point and keeps their public names importable from here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from pydantic import ValidationError

from compliance.core.datamap.issues import RULES, DataMapInvalid, Issue
from compliance.core.datamap.live import (
    TimeColumnTypeError,
    check_against_schema,
    live_schema,
    type_family,
)
from compliance.core.datamap.model import DataMap
from compliance.core.datamap.rules import cross_reference_issues
from compliance.core.datamap.structure import (
    describe,
    line_index,
    nearest_line,
    structural_issues,
    yaml_issue,
)

# The names compliance.retention.policy imported before the split (it checks its YAML the
# same way); new code imports them from `structure`.
_line_index, _nearest_line, _yaml_issue = line_index, nearest_line, yaml_issue

__all__ = [
    "RULES",
    "DataMapInvalid",
    "Issue",
    "TimeColumnTypeError",
    "_line_index",
    "_nearest_line",
    "_yaml_issue",
    "check_against_schema",
    "check_text",
    "live_schema",
    "load_datamap",
    "load_datamap_with_digest",
    "type_family",
]


def load_datamap(path: str | Path) -> DataMap:
    """Read and check a data map file; raise `DataMapInvalid` listing every mistake."""
    return load_datamap_with_digest(path)[0]


def load_datamap_with_digest(path: str | Path) -> tuple[DataMap, str]:
    """The map and the sha256 of the bytes it was parsed from (read once: the two agree).

    A batch records the digest of the map it was planned with and refuses to resume under
    another one (docs/architecture.md)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        issue = Issue("<file>", "yaml-syntax", f"the file is not UTF-8 text ({exc.reason})")
        raise DataMapInvalid(str(path), [issue]) from exc
    datamap, issues = check_text(text)
    if issues or datamap is None:
        raise DataMapInvalid(str(path), issues)
    return datamap, hashlib.sha256(raw).hexdigest()


def check_text(text: str) -> tuple[DataMap | None, list[Issue]]:
    """Check a data map's YAML text: the map (None if its structure is broken) and every issue."""
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [yaml_issue(exc)]
    if raw is None:
        return None, [Issue("<file>", "yaml-syntax", "the file is empty: a data map is a mapping")]
    if not isinstance(raw, dict):
        message = f"the data map must be a YAML mapping (key: value), not {describe(raw)}"
        return None, [Issue("<file>", "yaml-syntax", message, 1)]
    lines, duplicates = line_index(root)
    try:
        datamap = DataMap.model_validate(raw)
    except ValidationError as exc:
        return None, duplicates + structural_issues(exc.errors(), lines)
    issues = [
        Issue(loc, rule, msg, nearest_line(loc, lines))
        for loc, rule, msg in cross_reference_issues(datamap)
    ]
    return datamap, duplicates + issues
