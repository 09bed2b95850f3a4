"""Contract end on the second world (text tenants, UUID keys, nested log tenants, depth-3
relations): the dormant organisation's contract ended 400 days ago.

The dry run goes through Airflow (dag.test: the approval and the execution are skipped); the
deletion calls the DAG's job functions with `runtime.context()` (a HITL step cannot be answered
under dag.test). Verdicts come from the second world's independent checker: every row and log
line of the other organisations is byte-identical, none of the dormant one's is left.
"""

from __future__ import annotations

import pytest

from compliance import runtime
from compliance.jobs import offboarding as jobs
from tests.e2e.test_second_world import w2  # noqa: F401 (the module-scoped world fixture)
from tests.second_world import checker, generate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("approvals_bypassed")]  # past the gate
DORMANT = generate.INACTIVE_TENANT


def test_dormant_organisation_is_offboarded_and_nobody_else_is_touched(w2):  # noqa: F811
    before = w2.snapshot()
    run = w2.run_dag("client_offboarding", {})
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["approve"] == "skipped" and states["execute"] == "skipped"
    assert checker.identical(before, w2.snapshot()) == []  # the dry run changed nothing

    ctx = runtime.context()
    planned = jobs.plan(ctx, {"dry_run": False}, scheduled=True)
    assert planned["clients"] == [DORMANT] and planned["totals"]["rows"] > 0
    result = jobs.execute(ctx, planned)
    assert result["done"] == 1
    after = w2.snapshot()

    removed = set(before.rows) - set(after.rows)
    assert len(removed) == planned["totals"]["rows"]
    assert all(after.rows[k] == before.rows[k] for k in after.rows)  # nothing else edited
    assert {k[0] for k in removed} <= set(ctx.datamap.systems["crm2"].tables)
    for where, lines in before.lines.items():
        store = checker.store_of(where[1])
        kept = [ln for ln in lines if checker.tenant_of(store, ln) != DORMANT]
        assert after.lines.get(where, []) == kept, where
    assert after.objects == before.objects  # backups: tombstoned, not rewritten (R18)
    assert jobs.plan(runtime.context(), {}, scheduled=True)["clients"] == []
