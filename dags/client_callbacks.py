"""
### Client callbacks

Tells API clients about their requests' status changes (issue 18, item 1), every 5 minutes:

* **sync**: each request submitted through the client API (`/compliance/api/v1`) gets one
  outbox row per status change its state shows: received, acknowledged (R2), extended (R4),
  deferred (R19, with its code), completed, denied (R21, with its reason code);
* **deliver**: each due row is POSTed to the credential's `callback_url`, signed like the
  client's own calls, in order per request, and retried with backoff (1 min doubling, capped
  at 6 h) until the endpoint answers 2xx.

A callback unacknowledged for 24 h raises one staff alert (credential key, counts and codes
only); retries go on. Runbook: `docs/callbacks.md`. Logic: `compliance.desk.callbacks`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task

from compliance import runtime
from compliance.jobs import callbacks as jobs_callbacks
from compliance_alerts import DEFAULT_ARGS


@dag(
    schedule="*/5 * * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    # Unpaused: a client whose callbacks silently stopped keeps polling, or stops trusting us.
    is_paused_upon_creation=False,
    default_args=DEFAULT_ARGS,
    tags=["compliance", "operations"],
    doc_md=__doc__,
)
def client_callbacks():
    @task
    def sync() -> dict:
        return jobs_callbacks.sync(runtime.context())

    @task
    def deliver() -> dict:
        return jobs_callbacks.deliver(runtime.context())

    sync() >> deliver()


client_callbacks()
