"""`make demo`: seed a realistic world into the embedded stack, run every DAG, collect outputs.

Everything lives under `.demo/` (gitignored): `demo/` holds the SQLite CRM and Airflow home,
`out/` what a person would open, `logs/` each DAG run's output. Exits non-zero if any DAG fails,
and always stops the S3 server it started.

One access request is entered the way staff enter one (issue 16, deliverable 2): through the
staff page's code path (`compliance.requests.staff_entry`, what /compliance/requests calls),
with the consumer's identities, and access_reports then runs with only its reference in the
run's conf. The demo prints where to look.

Four eyes (issue 18 item 4, docs/approvals.md): the real deletion run (a manual run) and the
first retention run wait for a second person's approval. `airflow dags test` records the trigger
as `dag_test`; beside each such run the demo starts `demo.py --approve`, which answers the
parked approval as the second staff user `reviewer` through Airflow's own endpoint function
(`update_hitl_detail`, what Browse -> Required Actions calls) and says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from compliance.core.settings import REPO_ROOT
from compliance.core.stores.s3 import list_keys, s3_client
from compliance.core.stores.sql import engine_from_url
from compliance_dev.localenv import (
    airflow_env,
    prepare_workspace,
    seed_command,
    start_s3,
    start_webhook_receiver,
    stop_group,
)
from compliance_dev.world.requests import sample_inbox

DEMO = REPO_ROOT / ".demo"
HOME = DEMO / "demo"
OUT = DEMO / "out"
LOGS = DEMO / "logs"

# (dag_id, conf): every DAG of the project, in the order a day would run them.
DAGS: list[tuple[str, dict]] = [
    ("data_inventory", {}),
    ("access_reports", {}),  # before deletion: its subjects must still exist
    ("deletion_requests", {"dry_run": True}),  # the report staff check first
    ("deletion_requests", {"dry_run": False}),
    ("retention_sweep", {"dry_run": False}),
    ("statistics_reports", {"period": "last-month"}),
    ("deadline_watchdog", {}),
    ("client_offboarding", {"dry_run": True}),  # contract end: counts only (G4, R27)
]
ESP_WEBHOOK_PORT = 8719  # the demo data map's esp_mailer target
APPROVER = "reviewer"  # the second staff user of the local stack (dev/compliance_dev/localenv.py)
FOUR_EYES = {"deletion_requests", "retention_sweep", "client_offboarding"}


def run(cmd: list[str], env: dict[str, str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:
        return subprocess.call(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)


def dag_succeeded(log: Path, rc: int) -> bool:
    text = log.read_text(errors="replace")
    return rc == 0 and "state=failed" not in text and "DagRunState.FAILED" not in text


def main() -> int:
    shutil.rmtree(HOME, ignore_errors=True)
    shutil.rmtree(OUT, ignore_errors=True)
    shutil.rmtree(LOGS, ignore_errors=True)
    HOME.mkdir(parents=True)
    crm = HOME / "crm.db"
    s3_proc, s3_url = start_s3(HOME)
    failed: list[str] = []
    try:
        env = airflow_env(HOME, s3_url, crm)
        print(f"local S3 at {s3_url}; Airflow home {HOME / 'airflow'}")
        steps = [
            ("airflow db migrate", ["airflow", "db", "migrate"]),
            ("seed world", seed_command(crm, s3_url)),
        ]
        for label, cmd in steps:
            t0 = time.monotonic()
            rc = run(cmd, env, LOGS / f"{label.replace(' ', '_')}.log")
            print(f"  {label:<28} {'ok' if rc == 0 else 'FAILED'} ({time.monotonic() - t0:.0f}s)")
            if rc:
                print((LOGS / f"{label.replace(' ', '_')}.log").read_text()[-3000:])
                return 1
        prepare_workspace(
            s3_url, env["COMPLIANCE_WORKSPACE_BUCKET"], Path(env["COMPLIANCE_DATAMAP"])
        )
        receiver = start_webhook_receiver(ESP_WEBHOOK_PORT)
        if receiver is None:
            print(f"  port {ESP_WEBHOOK_PORT} is taken: ESP notices will be recorded as failed")
        s3 = s3_client(endpoint_url=s3_url, access_key="testing", secret_key="testing")
        engine = engine_from_url(f"sqlite:///{crm}")
        dropped = sample_inbox(engine, "delete", 6)
        dropped.update(sample_inbox(engine, "access", 4))
        engine.dispose()
        for key, body in dropped.items():
            s3.put_object(Bucket=env["COMPLIANCE_WORKSPACE_BUCKET"], Key=key, Body=body)
        print(f"  dropped {len(dropped)} request document(s) into the inbox (some invalid)")
        staff = staff_entry(env, crm)
        dags = [(d, staff["conf"] if staff and d == staff["dag_id"] else c) for d, c in DAGS]
        for step, (dag_id, conf) in enumerate(dags, 1):
            t0 = time.monotonic()
            label = f"{dag_id} (dry run)" if conf.get("dry_run") is True else dag_id
            log = LOGS / f"{step:02d}-{dag_id}{'-dry-run' if label != dag_id else ''}.log"
            approver = None
            if dag_id in FOUR_EYES and conf.get("dry_run") is False:
                approver = start_approver(dag_id, env, log.with_suffix(".approval.log"))
            rc = run(["airflow", "dags", "test", dag_id, "-c", json.dumps(conf)], env, log)
            ok = dag_succeeded(log, rc)
            if approver is not None:
                ok = stop_approver(approver, log.with_suffix(".approval.log")) and ok
            failed += [] if ok else [label]
            print(
                f"  dag {label:<34} {'success' if ok else 'FAILED'} ({time.monotonic() - t0:.0f}s)"
            )
        bucket = env["COMPLIANCE_WORKSPACE_BUCKET"]
        copied = collect(s3, bucket)
        print(f"\n{copied} output file(s) copied to {OUT.relative_to(REPO_ROOT)}/")
        for path in sorted((OUT / "summaries").glob("*.json")):
            print(f"  {path.stem}: {json.dumps(json.loads(path.read_text()))}")
        print(f"logs of each step: {LOGS.relative_to(REPO_ROOT)}/")
        if staff:
            where_to_look(staff, env)
    finally:
        stop_group(s3_proc.pid)
    if failed:
        print(f"\nFAILED DAGs: {', '.join(failed)} (see .demo/logs/)", file=sys.stderr)
        return 1
    return 0


def start_approver(dag_id: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`demo.py --approve <dag_id>` beside the run: answers its approval as `reviewer`."""
    handle = log.open("wb")
    cmd = [sys.executable, __file__, "--approve", dag_id]
    return subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)


def stop_approver(proc: subprocess.Popen, log: Path) -> bool:
    """Stop the approver (the run is over); print what it did. False if it failed."""
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the run needed no approval: the approver is still waiting
        proc.wait(timeout=10)
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("four eyes:"):
            print(f"    {line}")
    return proc.returncode in (0, -15)


def _approve(dag_id: str) -> int:
    """`demo.py --approve <dag_id>`: wait for the run's approval step to park, then approve it
    as the second staff user (not `dag_test`, who triggered it). Gives up after 15 minutes and
    fails the parked step, so `airflow dags test` never waits forever."""
    import sqlalchemy as sa
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    parked = sa.select(TaskInstance).where(
        TaskInstance.dag_id == dag_id,
        TaskInstance.task_id == "approve",
        TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
    )
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        with create_session() as session:
            ti = session.scalars(parked).first()
            if ti is not None:
                update_hitl_detail(
                    dag_id=ti.dag_id,
                    dag_run_id=ti.run_id,
                    task_id=ti.task_id,
                    update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=["Approve"]),
                    user=SimpleAuthManagerUser(username=APPROVER, role="op"),
                    session=session,
                )
                print(
                    f"four eyes: {dag_id} waited for approval; approved by the second user "
                    f"'{APPROVER}' (the run's trigger may not approve it)",
                    flush=True,
                )
                return 0
        time.sleep(1)
    with create_session() as session:
        for ti in session.scalars(parked):
            ti.state = TaskInstanceState.FAILED
    print(f"four eyes: {dag_id}: no approval answered in time", flush=True)
    return 1


def staff_entry(env: dict[str, str], crm: Path) -> dict | None:
    """Enter one access request as staff do, in Airflow's environment (its connections)."""
    log = LOGS / "staff-entry.log"
    rc = run([sys.executable, __file__, "--staff-entry", str(crm)], env, log)
    lines = log.read_text(errors="replace").strip().splitlines()
    if rc or not lines or not lines[-1].startswith("{"):
        print(f"  staff entry                  FAILED (see {log.relative_to(REPO_ROOT)})")
        return None
    staff = json.loads(lines[-1])
    print(f"  staff entry                  {staff['ref']} -> {staff['key']}")
    print(f"    {staff['dag_id']} runs with conf {json.dumps(staff['conf'])} and nothing else")
    return staff


def where_to_look(staff: dict, env: dict[str, str]) -> None:
    client, request_id = staff["ref"].rsplit("/", 1)
    print("\nthe staff path (identities entered by staff, none in Airflow's database):")
    print(f"  its bundle: {OUT.relative_to(REPO_ROOT)}/access/{client}/{request_id}/bundle.zip")
    log = LOGS / "run-confs.log"
    run([sys.executable, __file__, "--run-confs", staff["dag_id"]], env, log)
    print(f"  every {staff['dag_id']} run's conf, as Airflow's database holds it:")
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            print(f"    {line}")
    print(
        "  the desk itself: `make up`, then Compliance (/compliance/dashboard) in the Airflow UI;"
        " its 'Enter a request' link opens the staff page"
    )


def _run_confs(dag_id: str) -> int:
    """`demo.py --run-confs <dag_id>`: each run's conf, read from Airflow's metadata DB."""
    import sqlalchemy as sa
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(sa.select(DagRun.run_id, DagRun.conf).where(DagRun.dag_id == dag_id))
        for run_id, conf in rows:
            print(json.dumps({"run_id": run_id, "conf": conf}))
    return 0


def _enter_as_staff(crm: str) -> int:
    """`demo.py --staff-entry <crm>`: the staff page's code path on a consumer of the world;
    prints the reference, never an identity."""
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    sys.path.insert(0, str(REPO_ROOT / "plugins"))  # the runtime's alert channels live there
    from compliance import runtime
    from compliance.requests import staff_entry as entry

    received = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    engine = engine_from_url(f"sqlite:///{crm}")
    with engine.connect() as c:
        people = c.execute(
            sa.text(
                "select c.client_id, c.email, c.phone, c.external_id from contacts c "
                "join clients k on k.client_id = c.client_id where k.active "
                "and c.email is not null and c.phone is not null and not c.is_child "
                "and not exists (select 1 from legal_holds h where h.client_id = c.client_id) "
                # someone with a recent call, so the bundle shows call audio (R8), and on file
                # long enough to be in the nightly snapshots, which access searches (R13)
                "and exists (select 1 from call_recordings r where r.contact_id = c.contact_id "
                "and r.s3_key is not null and date(r.recorded_at) >= date(:since)) "
                "order by c.contact_id limit 5"
            ),
            {"since": (datetime.now(UTC) - timedelta(days=300)).date().isoformat()},
        ).all()
    engine.dispose()
    ctx = runtime.context()
    for n, (client, email, phone, contact_id) in enumerate(people, 1):
        fields = {
            "request_id": f"STAFF-ACC-{n}",
            "client_id": str(client),
            "email": email,
            "phone": phone,
            "contact_id": contact_id,
            "received_at": received,
            "verification_method": "email_link",
            "verified_by": "demo-staff",
        }
        result = entry.enter(ctx, "access", fields)
        if isinstance(result, entry.Entered):
            conf = result.conf()
            out = {"ref": result.ref, "key": result.key, "dag_id": result.dag_id, "conf": conf}
            print(json.dumps(out))
            return 0
        print(f"refused: {[r['reason'] for r in result.reasons]}")  # codes only
    return 1


def collect(s3, bucket: str) -> int:
    """Copy the workspace bucket's outputs (reports, receipts, bundles) into .demo/out/."""
    count = 0
    try:
        keys = list(list_keys(s3, bucket))
    except Exception:
        return 0
    for obj in keys:
        target = (OUT / obj["Key"]).resolve()
        if not target.is_relative_to(OUT.resolve()):  # never write outside .demo/out
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, obj["Key"], str(target))
        count += 1
    return count


if __name__ == "__main__":
    if sys.argv[1:2] == ["--staff-entry"]:
        sys.exit(_enter_as_staff(sys.argv[2]))
    if sys.argv[1:2] == ["--approve"]:
        sys.exit(_approve(sys.argv[2]))
    if sys.argv[1:2] == ["--run-confs"]:
        sys.exit(_run_confs(sys.argv[2]))
    sys.exit(main())
