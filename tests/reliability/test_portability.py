"""Portability (G3, GDPR Art. 20) through the access pipeline, on the tiny world.

The access job's own functions (`compliance.jobs.access`) run intake, plan, every gather and
build_bundles, as the DAG does. A GDPR portability request joins the access batch and gets an
export of what the consumer provided only: to the business (zip + expiring link) or POSTed to
another controller (a local HTTP server). A failed transfer keeps the request open, records
the attempt and alerts; the next run delivers it.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from compliance.access import portability
from compliance.core import ledger
from compliance.core.datamap.provided import provided_columns, provided_fields
from compliance.jobs import access as jobs
from compliance.requests import state

from . import harness as h

pytestmark = pytest.mark.slow


class _Controller(http.server.BaseHTTPRequestHandler):
    """Another controller's import endpoint: records each POST, answers `status`."""

    status = 200
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Controller.received.append(
            {"body": json.loads(body), "key": self.headers.get("Idempotency-Key")}
        )
        self.send_response(_Controller.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def controller() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Controller)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Controller.status, _Controller.received = 200, []
    yield f"http://127.0.0.1:{server.server_port}/import"
    server.shutdown()


class _Alerts:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def configured(self) -> list[str]:
        return ["test"]

    def alert(self, alert: Any) -> list[str]:
        self.sent.append(alert)
        return ["test"]

    def email(self, *args: Any) -> None:
        raise AssertionError("no e-mail expected")


def _subject(world: h.World) -> tuple[int, str]:
    """An active, unheld client's adult consumer with an e-mail and some e-mail events."""
    with world.engine(f"sqlite:///{world.pristine.crm_file}").connect() as c:
        return tuple(
            c.execute(
                sa.text(
                    "select c.client_id, c.email from contacts c join clients k "
                    "on k.client_id = c.client_id where k.active = 1 and c.is_child = 0 "
                    "and c.email is not null and exists (select 1 from email_events e "
                    "where e.contact_id = c.contact_id) and not exists (select 1 from "
                    "legal_holds l where l.client_id = c.client_id) "
                    "and (select count(*) from contacts d where lower(d.email) = lower(c.email)"
                    " and d.client_id = c.client_id) = 1 order by c.contact_id limit 1"
                )
            ).one()
        )


def _doc(rid: str, client: int, email: str, **extra: Any) -> dict[str, Any]:
    received = (h.T0 - timedelta(days=2)).isoformat()
    return {
        "request_id": rid,
        "client_id": client,
        "type": "portability",
        "jurisdiction": "gdpr",
        "identities": {"email": email},
        "received_at": received,
        "verification": {"method": "account_login", "verified_at": received, "verified_by": "s7"},
        **extra,
    }


def _run(world: h.World, when=h.T0, channels: Any = None) -> dict[str, Any]:
    ctx = world.context(when)
    if channels is not None:
        ctx = type(ctx)(**{**ctx.__dict__, "channels": channels})
    jobs.intake(ctx, {})
    batch = jobs.plan(ctx, {})
    for system in batch["systems"]:
        jobs.gather_system(ctx, batch, system)
    for shard in batch["shards"]:
        jobs.gather_logs(ctx, batch, shard)
    for shard in batch.get("backup_shards", []):
        jobs.gather_backups(ctx, batch, shard)
    return jobs.build_bundles(ctx, batch)


def _get(world: h.World, key: str) -> bytes:
    return world.admin.get_object(Bucket=h.BUCKET, Key=key)["Body"].read()


def _only_provided(world: h.World, doc: dict[str, Any]) -> None:
    """Every value in the export is a provided column or field; derived ones never appear."""
    dm = world.dm
    assert doc["data"], "the consumer has provided data"
    for source, records in doc["data"].items():
        if "." in source:
            system, table = source.split(".", 1)
            allowed = set(provided_columns(dm, system, table))
        else:
            allowed = set(provided_fields(dm, source))
        for rec in records:
            assert set(rec) - {"collected_at"} <= allowed, (source, set(rec) - allowed)
    text = json.dumps(doc["data"])
    for derived in ("score", "geo_city", "voiceprint", "card_token", "drivers_license"):
        assert f'"{derived}"' not in text
    assert '"record"' not in text  # our internal ids are not the consumer's


def test_to_the_business_with_an_access_request_in_the_same_batch(world: h.World) -> None:
    client, email = _subject(world)
    access = {**_doc("ACC-1", client, email), "type": "access", "request_id": "ACC-1"}
    world.inbox = {
        f"{client}/port.json": json.dumps(_doc("PORT-1", client, email)).encode(),
        f"{client}/acc.json": json.dumps(access).encode(),
    }
    world.reset()
    summary = _run(world)
    assert summary["portability_delivered"] == 1 and summary["delivered"] == 1
    body = _get(world, portability.export_key(str(client), "PORT-1"))
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        doc = json.loads(zf.read("portability.json"))
        manifest = json.loads(zf.read("manifest.json"))
        assert "csv/crm.contacts.csv" in zf.namelist()
    assert set(manifest["files"]) >= {"portability.json", "csv/crm.contacts.csv"}
    _only_provided(world, doc)
    assert doc["subject"]["identities"]["email"] == [email.lower()]
    assert doc["data"]["crm.contacts"][0]["email"].lower() == email.lower()
    link = json.loads(_get(world, portability.link_key(str(client), "PORT-1")))
    assert "X-Amz-Expires=" in link["url"]
    receipt = json.loads(_get(world, portability.receipt_key(str(client), "PORT-1")))
    assert receipt["delivery"]["to"] == "business" and "url" not in json.dumps(receipt)
    ctx = world.context(h.T0)
    rows = state.find_requests(ctx.state, [(str(client), "PORT-1", "portability")])
    assert next(iter(rows.values())).status == "completed"
    kinds = [e.kind for e in ledger.entries(ctx.state)]
    assert kinds.count("portability_delivered") == 1 and kinds.count("access_delivered") == 1
    # the access bundle is the full one, delivered as before; no accepted document is left
    left = world.admin.list_objects_v2(Bucket=h.BUCKET, Prefix="accepted/").get("KeyCount", 0)
    assert left == 0


def test_direct_transfer_and_retry_after_failure(world: h.World, controller: str) -> None:
    client, email = _subject(world)
    world.inbox = {
        f"{client}/port.json": json.dumps(
            _doc("PORT-2", client, email, transfer_to=controller)
        ).encode()
    }
    world.reset()
    alerts = _Alerts()
    _Controller.status = 503
    first = _run(world, channels=alerts)
    assert first["portability_failed"] == 1 and first["portability_delivered"] == 0
    ctx = world.context(h.T0)
    key = (str(client), "PORT-2", "portability")
    assert state.find_requests(ctx.state, [key])[key].status == "open"
    attempt = json.loads(_get(world, portability.attempt_key(str(client), "PORT-2")))
    assert attempt["attempts"] == 1 and attempt["outcome"] == "http_503"
    assert controller not in json.dumps(attempt)  # the endpoint is not echoed
    assert [a.kind for a in alerts.sent] == ["portability"]
    assert email not in alerts.sent[0].body and controller not in alerts.sent[0].body
    failed = [e for e in ledger.entries(ctx.state) if e.kind == "portability_transfer_failed"]
    assert len(failed) == 1
    # the next run plans it again (its document was kept) and delivers it
    _Controller.status = 200
    second = _run(world, when=h.T0 + timedelta(hours=1))
    assert second["portability_delivered"] == 1
    assert state.find_requests(ctx.state, [key])[key].status == "completed"
    assert len(_Controller.received) == 2  # the failed attempt and the delivery
    sent = _Controller.received[-1]
    _only_provided(world, sent["body"])
    assert sent["key"] and email not in sent["key"]
    # sent straight to the controller: no export is kept for the business
    assert (
        world.admin.list_objects_v2(
            Bucket=h.BUCKET, Prefix=portability.export_key(str(client), "PORT-2")
        ).get("KeyCount", 0)
        == 0
    )
    receipt = json.loads(_get(world, portability.receipt_key(str(client), "PORT-2")))
    assert receipt["delivery"] == {"to": "controller", "outcome": "delivered", "http_status": 200}
