"""Every object the jobs leave in the workspace bucket is under a registered area (issue 16).

`core.workspace_layout` is what the retention policy's coverage gate holds the policy against:
a prefix written outside it would be kept forever without anyone deciding so. This lists the
bucket after the full demo (every DAG once, on a hostile inbox and real requests) and fails on
any key no area claims, naming it. Transient keys (targets, parts, verdicts, inbox documents)
are checked in a versioned bucket by test_workspace_copies.py.
"""

from __future__ import annotations

from compliance.core import workspace_layout as layout
from compliance.core.datamap.validate import load_datamap
from compliance.retention import coverage, load_policy

from .harness import REPO


def test_every_workspace_key_after_the_demo_is_registered(demo):
    assert demo.objects, "the demo wrote nothing: the check would prove nothing"
    areas = {key: layout.area_of(key) for key in demo.objects}
    unregistered = sorted(k for k, a in areas.items() if a is None)
    assert unregistered == [], f"keys under no area of core.workspace_layout: {unregistered}"
    seen = {a.name for a in areas.values() if a is not None}
    assert {"bundles", "receipts", "rejected", "summaries", "retention_reports"} <= seen, seen


def test_every_personal_area_the_demo_used_is_under_the_demo_policy(demo):
    dm = load_datamap(REPO / "config" / "datamap.yaml")
    covered = coverage(load_policy(REPO / "config" / "retention.yaml", dm).policy, dm).covered
    for key in demo.objects:
        area = layout.area_of(key)
        if area is not None and area.personal:
            assert f"workspace:{area.name}" in covered, key
