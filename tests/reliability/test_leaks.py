"""PII leak scan after a full demo run (issue 8): zero hits.

Every consumer identity of the world, taken from the CRM before any run (e-mails, phones,
external ids, full names, street addresses, portal usernames) and every value R10 says is never
output (driver's licence, bank account, card token, password hash, voiceprint), is searched,
case-insensitively, in:
- everything logged or printed while the DAGs ran (task logs: dag.test writes no log files, so
  records are captured in-process; AIRFLOW_HOME/logs files are read as well if any exist);
- every XCom value of every run; every row of the state database (the ledger included);
- every object the project wrote to the workspace bucket: receipts, summaries, reports,
  statistics, links, batch leftovers, except what holds client-sent documents by design
  (inbox/, accepted/, rejected/), notice bodies waiting in the outbox (outbox/, R16.3) and the
  subject's own access bundle.
The demo runs every DAG in dags/ (tests/reliability/demo.py). A positive control proves the
matcher finds identities where they are meant to be (the request documents).
"""

from __future__ import annotations

import re

import pytest

from . import harness as h

pytestmark = pytest.mark.slow

# outbox/: a deletion notice's body carries the identities the recipient needs to find the
# consumer (R16.3, R16.4); it is kept, encrypted, only until the notice is finished.
# held/: a partial erasure's consumers and identities, kept encrypted until its legal hold ends
# and the rest is erased (R19, docs/deletion.md "Legal holds").
EXEMPT = ("inbox/", "accepted/", "rejected/", "outbox/", "held/")


def _matcher(demo) -> re.Pattern[str]:
    values = sorted({v for vs in demo.identities.values() for v in vs}, key=len, reverse=True)
    return re.compile("|".join(re.escape(v) for v in values), re.IGNORECASE)


def _blobs(demo) -> list[tuple[str, str]]:
    blobs = [("logs (captured)", demo.logs)]
    blobs += [(f"log file {path}", text) for path, text in demo.log_files]
    blobs += [(f"xcom {where}", value) for where, value in demo.xcoms]
    blobs += [(f"state db {table}", row) for table, row in demo.state]
    for key, body in demo.objects.items():
        if key.startswith(EXEMPT) or (key.startswith("access/") and key.endswith("bundle.zip")):
            continue
        blobs.append((f"s3 {key}", body.decode("utf-8", "replace")))
    return blobs


def test_every_dag_ran_and_succeeded(demo):
    assert set(demo.runs) >= {"deletion_requests", "data_inventory"}
    assert {d: s for d, s in demo.runs.items() if s != "success"} == {}


def test_no_identity_in_logs_xcoms_state_or_outputs(demo):
    matcher = _matcher(demo)
    assert matcher.search(demo.positive_control), "the matcher finds nothing: the scan is blind"
    assert "scrubbed s3://" in demo.logs and "rewrote s3://" in demo.logs  # task logs captured
    blobs = _blobs(demo)
    hits = [
        (where, m.group(0)[:3] + "...")  # never print the value itself
        for where, text in blobs
        for m in matcher.finditer(text)
    ]
    h.FIGURES["leaks"] = {
        "dags": sorted(demo.runs),
        "identities": sum(len(v) for v in demo.identities.values()),
        "places_scanned": len(blobs),
        "bytes_scanned": sum(len(t) for _, t in blobs),
        "hits": len(hits),
    }
    assert any(w.startswith("s3 receipts/") for w, _ in blobs)
    assert any(w.startswith("state db cj_ledger") for w, _ in blobs)
    assert hits == []
