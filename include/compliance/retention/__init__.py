"""Retention: keep nothing longer than the policy says (R27), children's data shortest (R26),
request records at least 24 months (R22), and never what a legal hold protects (R19).

Modules, in the order a sweep uses them:
- `policy`: the policy's model and rule resolution; `policy_file`: reading and checking the
  file (every error at once), with `policy_checks` (the checks against the data map);
- `coverage`: the gate that every personal item of the data map is covered or exempt;
- `holds`: the legal-hold registry as predicates;
- `rows`: the one SQL predicate builder shared by plan and execute;
- `plan`: the dry-run diff (`Sweep`, `plan_sweep`);
- `execute`: one rule in short batches (`execute_step`); `aggregates`: counts kept before a
  deletion; `objects`: S3 expiry; `workspace`: the jobs' own bucket (issue 16);
- `report`: JSON and HTML report, ledger entry; `run`: what the DAG's tasks call.
"""

from __future__ import annotations

from pathlib import Path

from compliance.retention.coverage import Coverage, coverage
from compliance.retention.execute import execute_step
from compliance.retention.plan import Sweep, plan_sweep
from compliance.retention.policy import Period, Policy
from compliance.retention.policy_file import LoadedPolicy, PolicyInvalid, check_text, load_policy
from compliance.retention.rows import RetentionError

__all__ = [
    "Coverage",
    "LoadedPolicy",
    "Period",
    "Policy",
    "PolicyInvalid",
    "RetentionError",
    "Sweep",
    "check_file",
    "check_text",
    "coverage",
    "execute_step",
    "load_policy",
    "plan_sweep",
]


def check_file(policy_path: str | Path, datamap_path: str | Path) -> tuple[list[str], str]:
    """The CI check: (every problem, as text lines; a one-line summary when there are none)."""
    from compliance.core.datamap.validate import DataMapInvalid, load_datamap

    try:
        dm = load_datamap(datamap_path)
    except DataMapInvalid as exc:
        return [str(exc)], ""
    try:
        loaded = load_policy(policy_path, dm)
    except PolicyInvalid as exc:
        return [str(i) for i in exc.issues], ""
    cov = coverage(loaded.policy, dm)
    problems = [str(i) for i in cov.issues()]
    summary = (
        f"{policy_path}: OK ({len(loaded.policy.rules)} rule(s), {len(loaded.policy.exempt)} "
        f"exemption(s); {len(cov.covered)} data-map item(s) covered, none uncovered)"
    )
    return problems, summary
