"""G3 (GDPR Art. 20) pieces that need no world: the portability request at intake, the data
map's `provided` marker and its rule, the export's contents, and the direct transfer to
another controller against a local HTTP server."""

from __future__ import annotations

import copy
import http.server
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from compliance.access import portability
from compliance.access import portability_transfer as transfer
from compliance.core.datamap.provided import is_provided, provided_columns
from compliance.core.datamap.validate import check_text, load_datamap
from compliance.requests.intake import Accepted, Reason, Rejected, RequestType, validate_request

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
CLIENTS = {"1": True}
DOC = {
    "request_id": "port-1",
    "client_id": 1,
    "type": "portability",
    "jurisdiction": "gdpr",
    "identities": {"email": "jane@example.com"},
    "received_at": "2025-03-01T10:00:00Z",
    "verification": {
        "method": "email_link",
        "verified_at": "2025-03-01T12:00:00Z",
        "verified_by": "portal",
    },
}
DM = load_datamap(REPO / "config" / "datamap.yaml")


def parse(**changes) -> Accepted | Rejected:
    doc = copy.deepcopy(DOC)
    doc.update(changes)
    return validate_request(doc, "inbox/1/p.json", now=NOW, clients=CLIENTS)


# -- intake ---------------------------------------------------------------------------------------


def test_portability_is_a_gdpr_request_with_no_look_back():
    result = parse(transfer_to="https://new-controller.example/import")
    assert isinstance(result, Accepted) and result.type is RequestType.portability
    assert result.collected_since is None  # G2/G3: all the data, no look-back
    assert result.transfer_to == "https://new-controller.example/import"
    assert "new-controller" not in repr(result)  # not in logs either
    assert result.due.response_due.isoformat() == "2025-04-01"  # G1: one month


def test_plain_http_only_to_loopback():
    assert isinstance(parse(transfer_to="http://127.0.0.1:8080/in"), Accepted)
    assert parse(transfer_to="http://new-controller.example/in").reason is Reason.bad_transfer_to


@pytest.mark.parametrize(
    ("changes", "reason", "field"),
    [
        ({"jurisdiction": "ccpa"}, Reason.portability_needs_gdpr, "type"),
        ({"jurisdiction": None}, Reason.portability_needs_gdpr, "type"),  # default: CCPA
        ({"transfer_to": "https://user:pw@x.example/in"}, Reason.bad_transfer_to, "transfer_to"),
        ({"transfer_to": "https://x.example/in#frag"}, Reason.bad_transfer_to, "transfer_to"),
        ({"transfer_to": "https:///nohost"}, Reason.bad_transfer_to, "transfer_to"),
        ({"transfer_to": "https://x.example/a b"}, Reason.bad_transfer_to, "transfer_to"),
        ({"transfer_to": "https://x.example/" + "a" * 2100}, Reason.bad_transfer_to, "transfer_to"),
        ({"transfer_to": 42}, Reason.wrong_type, "transfer_to"),
        (
            {"type": "access", "transfer_to": "https://x.example/in"},
            Reason.bad_transfer_to,
            "transfer_to",
        ),
        ({"look_back": "since_2022"}, Reason.bad_look_back, "look_back"),
        (  # R5 categories-only is a CCPA access answer; GDPR verifies or refuses
            {"verification": {**DOC["verification"], "level": "categories"}},
            Reason.not_verified,
            "verification.level",
        ),
    ],
)
def test_refusals_name_the_field_and_never_echo_the_url(changes, reason, field):
    result = parse(**changes)
    assert isinstance(result, Rejected) and result.reason is reason, result
    assert result.field == field
    assert "x.example" not in result.message and "pw" not in result.message


# -- the data map's `provided` -----------------------------------------------------------------


def test_provided_follows_categories_with_column_overrides():
    contacts = provided_columns(DM, "crm", "contacts")
    assert "email" in contacts and "birth_date" in contacts  # a column override (true)
    assert "drivers_license" not in contacts  # withheld (R10) is never exported
    assert "card_token" not in provided_columns(DM, "crm", "payments")  # override (false)
    assert "score" not in provided_columns(DM, "crm", "leads")  # inferences: derived
    assert "geo_city" not in provided_columns(DM, "crm", "email_events")  # looked up from IP
    assert is_provided(DM, DM.stores["app_logs"].fields["email"])


def test_derived_data_cannot_be_marked_provided():
    text = (REPO / "config" / "datamap.yaml").read_text()
    bad = text.replace(
        "score: {categories: [inferences]}", "score: {categories: [inferences], provided: true}"
    )
    assert bad != text
    _, issues = check_text(bad)
    assert [i.rule for i in issues] == ["provided-derived"]
    assert "leads.columns.score" in issues[0].location


# -- the export --------------------------------------------------------------------------------


def test_export_holds_only_provided_values():
    records = [
        {
            "source": "crm.leads",
            "record": 7,
            "collected_at": "2025-01-01T00:00:00Z",
            "values": {"source": "web", "interest": "suv", "score": 0.93},
            "withheld": [],
        },
        {
            "source": "crm.email_events",
            "record": 8,
            "collected_at": None,
            "values": {"event_type": "open", "geo_city": "Fresno"},
            "withheld": [],
        },
        {"source": "crm.leads", "snapshot": "2025-01-02", "values": {"source": "x"}},
        {"source": "app_logs", "values": {"email": "j@x.example", "msg": "login", "ua": "ff"}},
        {"source": "crm.leads", "record": 9, "values": {"score": 0.1}},  # nothing provided
    ]
    data = portability.provided_records(DM, records)
    assert data == {
        "crm.leads": [{"collected_at": "2025-01-01T00:00:00Z", "source": "web", "interest": "suv"}],
        "crm.email_events": [{"collected_at": None, "event_type": "open"}],
        "app_logs": [{"collected_at": None, "email": "j@x.example", "ua": "ff"}],
    }
    req = {"request_id": "port-1", "client_id": 1}
    doc = portability.document(req, {"email": ["j@x.example"]}, data, NOW.isoformat())
    with zipfile.ZipFile(io.BytesIO(portability.zip_bytes(doc))) as zf:
        assert json.loads(zf.read("portability.json"))["counts"] == {
            "app_logs": 1,
            "crm.email_events": 1,
            "crm.leads": 1,
        }
        csv_text = zf.read("csv/crm.leads.csv").decode()
        assert csv_text.splitlines()[0] == "collected_at,interest,source"
        assert set(json.loads(zf.read("manifest.json"))["files"]) == {
            "portability.json",
            "csv/app_logs.csv",
            "csv/crm.email_events.csv",
            "csv/crm.leads.csv",
        }


# -- the direct transfer -----------------------------------------------------------------------


class _Endpoint(http.server.BaseHTTPRequestHandler):
    status = 201
    got: list[tuple[str, bytes, str | None]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Endpoint.got.append((self.headers.get("Content-Type"), body, self.path))
        self.send_response(_Endpoint.status)
        if _Endpoint.status == 302:
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Endpoint.status, _Endpoint.got = 201, []
    yield f"http://127.0.0.1:{server.server_port}/import"
    server.shutdown()


def test_post_delivers_json_on_2xx(endpoint):
    outcome = transfer.post(endpoint, {"schema": "x", "data": {}}, "ref-1")
    assert outcome == transfer.Outcome(True, "delivered", 201)
    (ctype, body, path) = _Endpoint.got[0]
    assert ctype == "application/json" and json.loads(body) == {"data": {}, "schema": "x"}
    assert path == "/import"


@pytest.mark.parametrize(("status", "code"), [(500, "http_500"), (302, "http_302")])
def test_post_failures_are_codes_and_redirects_are_not_followed(endpoint, status, code):
    _Endpoint.status = status
    outcome = transfer.post(endpoint, {"data": {}})
    assert not outcome.ok and outcome.code == code and outcome.http_status == status
    assert len(_Endpoint.got) == 1  # the redirect target was never called


def test_post_refuses_what_intake_refuses_and_reports_unreachable():
    assert transfer.post("ftp://x.example/in", {}).code == "refused_url"
    assert transfer.post("http://x.example/in", {}).code == "refused_url"
    assert transfer.post("https://u:p@x.example/in", {}).code == "refused_url"
    assert transfer.post("http://127.0.0.1:9/in", {}).code == "unreachable"
