"""The retention policy file: read it, parse it and check it, reporting every mistake at once.

Like the data map: pydantic checks the structure (the model is `compliance.retention.policy`),
then `policy_checks` holds the policy against the data map. The coverage gate (`coverage.py`)
is a separate pass because it is a CI gate, not a reason to stop a nightly sweep.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from compliance.core.datamap.model import (
    DataMap,
)

# The YAML line index and the Issue shape are the data map's: one way to say "where" for both
# files (private helpers imported on purpose rather than written twice).
from compliance.core.datamap.validate import Issue, _line_index, _nearest_line, _yaml_issue
from compliance.retention.policy import (
    Policy,
)
from compliance.retention.policy_checks import policy_issues

# -- loading -------------------------------------------------------------------------------------


class PolicyInvalid(ValueError):
    """A policy that cannot be used; `issues` holds every mistake found."""

    def __init__(self, source: str, issues: list[Issue]) -> None:
        self.source = source
        self.issues = issues
        listing = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"retention policy {source} has {len(issues)} error(s):\n{listing}")


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    sha256: str  # of the file's bytes: reports and the ledger name the exact policy applied
    source: str


def load_policy(path: str | Path, dm: DataMap) -> LoadedPolicy:
    """Read and check a policy against the data map; raise `PolicyInvalid` listing every mistake.

    Coverage gaps are not errors here (see `coverage.py`): a sweep with a gap still expires
    everything the policy does cover, which is better than expiring nothing.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        issue = Issue("<file>", "yaml-syntax", f"the file is not UTF-8 text ({exc.reason})")
        raise PolicyInvalid(str(path), [issue]) from exc
    policy, issues = check_text(text, dm)
    if issues or policy is None:
        raise PolicyInvalid(str(path), issues)
    return LoadedPolicy(policy, hashlib.sha256(raw).hexdigest(), str(path))


def check_text(text: str, dm: DataMap) -> tuple[Policy | None, list[Issue]]:
    """Check a policy's YAML text against a data map: the policy (None if broken) and its issues."""
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [_yaml_issue(exc)]
    if not isinstance(raw, dict):
        what = "empty" if raw is None else f"a {type(raw).__name__}"
        return None, [Issue("<file>", "yaml-syntax", f"a policy is a YAML mapping; this is {what}")]
    lines, duplicates = _line_index(root)
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        return None, duplicates + [_structural(err, lines) for err in exc.errors()]
    issues = [
        Issue(loc, rule, msg, _nearest_line(loc, lines))
        for loc, rule, msg in policy_issues(policy, dm)
    ]
    return policy, duplicates + issues


def _structural(err: Any, lines: dict[str, int]) -> Issue:
    parts = [str(p) for p in err["loc"] if p != "[key]"]
    loc = ".".join(parts) or "<root>"
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        rule, message = "unknown-key", f"unknown key {parts[-1]!r}"
    elif kind == "missing":
        rule, message = "structure", f"required key {parts[-1]!r} is missing"
    elif kind == "value_error" and "error" in ctx:
        rule, message = "structure", str(ctx["error"])
    else:
        rule, message = "structure", err["msg"]
        if "input" in err and not isinstance(err["input"], dict | list):
            message += f" (got {err['input']!r})"
    if "period" in parts[-1:] or "overrides" in parts or "noncurrent" in parts[-1:]:
        rule = "period" if kind == "value_error" else rule
    return Issue(loc, rule, message, _nearest_line(loc, lines))
