"""`make demo`: seed a realistic world into the embedded stack, run every DAG, collect outputs.

Everything lives under `.demo/` (gitignored): `demo/` holds the SQLite CRM and Airflow home,
`out/` what a person would open, `logs/` each DAG run's output. Exits non-zero if any DAG fails,
and always stops the S3 server it started.
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
]
ESP_WEBHOOK_PORT = 8719  # the demo data map's esp_mailer target


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
        for step, (dag_id, conf) in enumerate(DAGS, 1):
            t0 = time.monotonic()
            label = f"{dag_id} (dry run)" if conf.get("dry_run") is True else dag_id
            log = LOGS / f"{step:02d}-{dag_id}{'-dry-run' if label != dag_id else ''}.log"
            rc = run(["airflow", "dags", "test", dag_id, "-c", json.dumps(conf)], env, log)
            ok = dag_succeeded(log, rc)
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
    finally:
        stop_group(s3_proc.pid)
    if failed:
        print(f"\nFAILED DAGs: {', '.join(failed)} (see .demo/logs/)", file=sys.stderr)
        return 1
    return 0


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
    sys.exit(main())
