"""The UI as compliance staff use it: Chromium (Debian's) driven by Playwright.

One `airflow standalone` on 127.0.0.1 (free ports) over a seeded world and a local S3, started
once for this module and stopped afterwards (process groups, SIGKILL after a grace period):

- staff (`compliance`, role op) log in, enter an access request on the desk's staff page
  (/compliance/requests) as a person would; the run it starts carries only the reference and
  succeeds; the consumer's bundle is then in S3; a viewer cannot open the page;
- a viewer (`auditor`) can open the same form, but the trigger is refused (HTTP 403) and no
  run is created;
- the forms' rules hold server-side too: bad values are refused (HTTP 400) before a run starts;
- the signed client API over real HTTP (docs/api.md): a round trip, bad signature and replay
  (401), another tenant (403), an invalid document (400 with the intake's reason codes); the
  request then moves from received to completed on the dashboard and its own page, and the
  status callbacks reach a local test server, signed;
- a viewer sees the dashboard's counts but cannot act (request page and ledger verification 403);
- four eyes (docs/approvals.md): staff enter a deletion to execute; their own Approve in
  Required Actions is refused (403); a second staff member approves and the erasure runs; a
  second run rejected by them skips the erasing tasks and alerts.

Screenshots of each step are kept in tests/artifacts/browser/ (gitignored; CI keeps them).
Chromium is /usr/bin/chromium (`apt-get install chromium`, done by .ci/run) or
$COMPLIANCE_CHROMIUM. Without it the test skips, except under CI=true where it fails.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from compliance.core.stores.s3 import s3_client
from compliance.desk import signing
from compliance_dev.localenv import (
    API_KEY,
    API_SECRET,
    API_TENANTS,
    UI_PASSWORDS,
    free_port,
    prepare_workspace,
    start_group,
    start_s3,
    stop_groups,
    ui_env,
    wait_http,
)

from ..conftest import IN_CI

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"
CHROMIUM = os.environ.get("COMPLIANCE_CHROMIUM", "/usr/bin/chromium")
DAG_ID = "access_reports"
STAFF, VIEWER, REVIEWER = "compliance", "auditor", "reviewer"
API = "/compliance/api/v1"
DELETE_DAG, CALLBACK_DAG = "deletion_requests", "client_callbacks"
# What deletion_requests erases once approved (docs/approvals.md): skipped when it is not.
ERASING = {"erase_system", "scrub_logs", "verify_logs", "erase_recordings", "tombstone_backups"}
ERASING |= {"notify_subprocessors", "finalize"}


def _need_chromium() -> None:
    if shutil.which(CHROMIUM) or Path(CHROMIUM).is_file():
        return
    reason = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@dataclass
class UI:
    url: str
    s3: Any
    bucket: str
    crm: Path
    log: Path
    callbacks: list[tuple[Any, str, bytes]] = field(default_factory=list, repr=False)  # POSTs
    tokens: dict[str, str] = field(default_factory=dict, repr=False)  # never in a report
    completed: dict[str, str] = field(default_factory=dict)  # API request id -> its tenant

    def api(self, method: str, path: str, user: str, body: dict | None = None) -> Any:
        """The REST API as `user`, for checks the UI does not show. Patient: SQLite's single
        writer makes the API server slow while tasks run, and CI machines are busy."""
        for attempt in range(4):
            try:
                if user not in self.tokens:
                    self.tokens[user] = _call(
                        "POST",
                        f"{self.url}/auth/token",
                        {"username": user, "password": UI_PASSWORDS[user]},
                    )["access_token"]
                return _call(method, f"{self.url}{path}", body, self.tokens[user])
            except (TimeoutError, urllib.error.URLError) as exc:
                if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                    raise  # an answer, not an outage
                if attempt == 3:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")


def _call(method: str, url: str, body: dict | None = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, method=method, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


class _ClientEndpoint(http.server.BaseHTTPRequestHandler):
    """The business client's callback endpoint: keeps each POST (headers, path, body), says 200.
    Nothing is logged (a callback carries ids and codes only, but an endpoint logs nothing)."""

    def do_POST(self) -> None:  # http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.got.append((self.headers, self.path, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[UI]:
    """airflow standalone over a tiny seeded world and a moto S3, all on free local ports, with
    the local API credential's callbacks pointed at a test server in this process."""
    _need_chromium()
    home = tmp_path_factory.mktemp("ui")
    s3_proc, s3_url = start_s3(home)
    endpoint = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ClientEndpoint)
    endpoint.got = []  # type: ignore[attr-defined]
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    af = None
    try:
        port = free_port()
        env = ui_env(home, s3_url, home / "crm.db", port)
        # Only runs someone triggers: unpausing a DAG must not also start its scheduled run.
        env["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] = "False"
        env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "True"
        # The suite turns four eyes off for manual runs (tests/conftest.py); here it is tested.
        env["COMPLIANCE_APPROVAL_MANUAL_RUNS"] = "on"
        conn_var = "AIRFLOW_CONN_COMPLIANCE_API_" + API_KEY.upper()
        credential = json.loads(env[conn_var])
        credential["extra"]["callback_url"] = f"http://127.0.0.1:{endpoint.server_port}/dsr/cb"
        env[conn_var] = json.dumps(credential)
        seed = [sys.executable, "-m", "compliance_dev", "world", "seed", "--scale", "tiny"]
        seed += ["--db", f"sqlite:///{home / 'crm.db'}", "--s3", s3_url]
        subprocess.run(seed, env=env, check=True, capture_output=True, timeout=120)
        bucket = env["COMPLIANCE_WORKSPACE_BUCKET"]
        prepare_workspace(s3_url, bucket, Path(env["COMPLIANCE_DATAMAP"]))
        log = home / "logs" / "standalone.log"
        t0 = time.monotonic()
        af = start_group(["airflow", "standalone"], log, env)
        wait_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", af, 150, log)
        print(f"\nairflow standalone healthy in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        client = s3_client(s3_url, access_key="testing", secret_key="testing")
        got = endpoint.got  # type: ignore[attr-defined]
        yield UI(f"http://127.0.0.1:{port}", client, bucket, home / "crm.db", log, got)
    finally:
        endpoint.shutdown()
        stop_groups([af.pid, s3_proc.pid] if af is not None else [s3_proc.pid], grace=10)


@pytest.fixture(scope="module")
def browser(ui) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _login(browser, ui: UI, user: str):
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{ui.url}/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(UI_PASSWORDS[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/" not in url)  # redirected home: logged in
    return page


def _shot(page, name: str, full_page: bool = True) -> None:
    """`full_page=False`: the viewport only (1400x900), the size the README's pictures are."""
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def _open_trigger_form(page, ui: UI):
    page.goto(f"{ui.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(f"Trigger Dag - {DAG_ID}").wait_for()
    return dialog


def _consumer(crm: Path) -> tuple[int, str]:
    """A consumer of an active client, not a child, under no legal hold."""
    engine = sa.create_engine(f"sqlite:///{crm}")
    with engine.connect() as c:
        row = c.execute(
            sa.text(
                "select c.client_id, c.email from contacts c join clients k "
                "on k.client_id = c.client_id where k.active and c.email is not null "
                "and not c.is_child and not exists (select 1 from legal_holds h "
                "where h.client_id = c.client_id and h.contact_id = c.contact_id) "
                "order by c.contact_id limit 1"
            )
        ).one()
    engine.dispose()
    return int(row[0]), str(row[1])


def _wait_for_run(ui: UI, run_id: str, timeout: float = 240, dag_id: str = DAG_ID) -> str:
    deadline = time.monotonic() + timeout
    state = "queued"
    while time.monotonic() < deadline:
        run = ui.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", STAFF)
        state = run["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    return state


def test_staff_enter_a_request_on_the_desk_and_get_the_bundle(ui, browser):
    """Staff enter the request on the desk's page (identities never go into a trigger form,
    issue 16); the run it starts carries only the reference and produces the bundle."""
    client_id, address = _consumer(ui.crm)
    request_id = f"UI-ACC-{datetime.now(UTC):%H%M%S}"
    received = datetime.now(UTC) - timedelta(days=1)
    ui.api("PATCH", f"/api/v2/dags/{DAG_ID}", STAFF, {"is_paused": False})
    page = _login(browser, ui, STAFF)
    try:
        page.goto(f"{ui.url}/compliance/requests")
        _shot(page, "01-staff-request-page")
        page.select_option("#type", "access")
        page.fill("#request_id", request_id)
        page.fill("#client_id", str(client_id))
        page.fill("#email", address)
        page.fill("#received_at", received.isoformat())
        page.fill("#verification_method", "email_link")
        page.fill("#verified_by", "client-staff")
        _shot(page, "02-staff-request-filled")
        with page.expect_response(
            lambda r: r.url.endswith("/compliance/requests") and r.request.method == "POST"
        ) as posted:
            page.get_by_role("button", name="Enter and start").click()
        assert posted.value.status == 200, posted.value.text()
        entered = page.get_by_role("status")
        assert entered.get_attribute("data-ref") == f"{client_id}/{request_id}"
        href = entered.get_by_role("link").get_attribute("href")
        run_id = urllib.parse.unquote(href.rsplit("/runs/", 1)[1])
        run = ui.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}", STAFF)
        assert run["conf"] == {"request_ref": f"{client_id}/{request_id}"}
        leaked = _mentions(json.dumps(run), address)
        assert not leaked, "an identity in the run"
        state = _wait_for_run(ui, urllib.parse.quote(run_id))
        page.goto(f"{ui.url}/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id)}")
        page.get_by_text("success", exact=False).first.wait_for()
        _shot(page, "03-staff-run-finished")
        assert state == "success", f"run ended {state}; see {ui.log}"
    except Exception:
        _shot(page, "99-staff-failure")
        raise
    finally:
        page.context.close()
    ui.api("GET", "/api/v2/version", VIEWER)  # signs the viewer in (a token)
    viewer = urllib.request.Request(
        f"{ui.url}/compliance/requests", headers={"Authorization": f"Bearer {ui.tokens[VIEWER]}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(viewer, timeout=30)
    assert refused.value.code == 403  # a viewer cannot enter requests

    prefix = f"access/{client_id}/{request_id}/"
    keys = {o["Key"] for o in ui.s3.list_objects_v2(Bucket=ui.bucket, Prefix=prefix)["Contents"]}
    assert f"{prefix}bundle.zip" in keys, keys
    body = ui.s3.get_object(Bucket=ui.bucket, Key=f"{prefix}bundle.zip")["Body"].read()
    with zipfile.ZipFile(io.BytesIO(body)) as bundle:
        names = set(bundle.namelist())
        assert {"index.html", "data.json", "manifest.json"} <= names, names
        theirs = _mentions(bundle.read("data.json").decode(), address)
        assert theirs, "the bundle does not hold the consumer's own data"


def test_viewer_cannot_trigger(ui, browser):
    before = ui.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", VIEWER)["total_entries"]
    page = _login(browser, ui, VIEWER)
    try:
        dialog = _open_trigger_form(page, ui)
        with page.expect_response(
            lambda r: r.url.endswith(f"/dags/{DAG_ID}/dagRuns") and r.request.method == "POST"
        ) as posted:
            dialog.get_by_role("button", name="Trigger", exact=True).click()
        assert posted.value.status == 403
        dialog.get_by_text("Forbidden").wait_for()
        _shot(page, "04-viewer-refused")
    except Exception:
        _shot(page, "99-viewer-failure")
        raise
    finally:
        page.context.close()
    after = ui.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", VIEWER)["total_entries"]
    assert after == before


@pytest.mark.parametrize(
    ("dag_id", "conf"),
    [
        # R4 form: an empty client id, request id with a space, a notice that is not a date-time,
        # a reason too short to be one.
        (
            "request_extension",
            {
                "client_id": "",
                "request_id": "A B",
                "type": "delete",
                "notice_at": "last week",
                "reason": "busy",
            },
        ),
        ("request_extension", {"client_id": 4, "request_id": "R-1", "type": "delete"}),
        ("deadline_watchdog", {"thresholds": [120]}),
        ("deadline_watchdog", {"as_of": "tomorrow"}),
    ],
    ids=["extension-bad-values", "extension-missing-fields", "watchdog-threshold", "watchdog-date"],
)
def test_forms_refuse_bad_values_before_a_run_starts(ui, dag_id, conf):
    """The same check the form does in the browser, server-side: HTTP 400, no run."""
    runs = f"/api/v2/dags/{dag_id}/dagRuns"
    before = ui.api("GET", runs, STAFF)["total_entries"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        ui.api("POST", runs, STAFF, {"logical_date": None, "conf": conf})
    assert refused.value.code == 400, refused.value.read()
    assert ui.api("GET", runs, STAFF)["total_entries"] == before


# --------------------------------------------------------------------------- the client API


@dataclass
class Answer:
    status: int
    body: Any
    content_type: str
    text: str


def _mentions(text: str, address: str) -> bool:
    """Whether `text` names the consumer. Asserted as a plain name, never inline: pytest's
    report of a failed assert shows a call's arguments, and an identity must not reach logs."""
    return address.lower() in text.lower()


def _stamp() -> str:
    return f"{datetime.now(UTC):%H%M%S%f}"[:10]


def _people(ui: UI, first: int, n: int) -> list[tuple[str, str]]:
    """Consumers of the API credential's tenants, none a child or under a hold of their own;
    each test takes its own (`first`), so no test meets another's requests."""
    engine = sa.create_engine(f"sqlite:///{ui.crm}")
    with engine.connect() as c:
        rows = c.execute(
            sa.text(
                "select c.client_id, c.email from contacts c join clients k "
                "on k.client_id = c.client_id where k.active and c.email is not null "
                "and not c.is_child and c.client_id in (:a, :b) and not exists (select 1 "
                "from legal_holds h where h.client_id = c.client_id and (h.contact_id is null "
                "or h.contact_id = c.contact_id)) order by c.contact_id limit :n offset :o"
            ),
            {"a": int(API_TENANTS[0]), "b": int(API_TENANTS[1]), "n": n, "o": first},
        ).all()
    engine.dispose()
    assert len(rows) == n
    return [(str(r[0]), str(r[1])) for r in rows]


def _other_tenant(ui: UI) -> str:
    """An active client of the world the API credential may not act for."""
    engine = sa.create_engine(f"sqlite:///{ui.crm}")
    with engine.connect() as c:
        ids = [str(r[0]) for r in c.execute(sa.text("select client_id from clients")).all()]
    engine.dispose()
    return next(i for i in ids if i not in API_TENANTS)


def _doc(client_id: str, request_id: str, address: str, kind: str = "access") -> dict:
    received = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    return {
        "request_id": request_id,
        "client_id": client_id,
        "type": kind,
        "identities": {"email": address},
        "received_at": received,
        "jurisdiction": "ccpa",
        "verification": {"method": "email_link", "verified_at": received, "verified_by": "agent"},
    }


def _send(ui: UI, method: str, path: str, raw: bytes | None, headers: dict[str, str]) -> Answer:
    """One call to the api-server's port, as a client's HTTP library makes it."""
    req = urllib.request.Request(
        ui.url + path,
        data=raw,
        method=method,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, ctype, text = resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            status, ctype, text = exc.code, exc.headers["Content-Type"], exc.read().decode()
    return Answer(status, json.loads(text) if text else None, ctype or "", text)


def _signed(ui: UI, method: str, path: str, body: dict | None = None) -> Answer:
    """A call signed the way docs/api.md says (the path as the api-server sees it)."""
    raw = b"" if body is None else json.dumps(body).encode()
    headers = signing.sign(API_SECRET.encode(), API_KEY, method, path, raw)
    return _send(ui, method, path, raw if body is not None else None, headers)


def _problem(answer: Answer, status: int, reason: str) -> dict:
    assert answer.status == status, answer.text[:500]
    assert answer.content_type.startswith("application/problem+json"), answer.content_type
    assert answer.body["reason"] == reason and answer.body["status"] == status, answer.body
    return answer.body


def _trigger(ui: UI, dag_id: str, conf: dict) -> str:
    """A run started over REST by staff; its id, quoted for the REST paths."""
    ui.api("PATCH", f"/api/v2/dags/{dag_id}", STAFF, {"is_paused": False})
    run = ui.api(
        "POST", f"/api/v2/dags/{dag_id}/dagRuns", STAFF, {"logical_date": None, "conf": conf}
    )
    return urllib.parse.quote(run["dag_run_id"], safe="")


def _until(what: str, probe: Callable[[], Any], timeout: float = 240, every: float = 2) -> Any:
    """Poll `probe` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def test_client_api_over_http_signed_round_trip_and_refusals(ui):
    """docs/api.md against the real api-server: 202 received, GET shows it; 401 for a bad
    signature, a replay and no signature; 403 for another tenant; 400 with reason codes."""
    ((client_id, address),) = _people(ui, 0, 1)
    rid = f"API-RT-{_stamp()}"
    doc = _doc(client_id, rid, address)
    posted = _signed(ui, "POST", f"{API}/requests", doc)
    assert posted.status == 202, posted.text[:500]
    assert (posted.body["status"], posted.body["request_id"]) == ("received", rid)
    status_path = f"{API}/requests/{rid}?client_id={client_id}"
    seen = _signed(ui, "GET", status_path)
    assert seen.status == 200 and seen.body["status"] == "received", seen.text[:500]
    again = _signed(ui, "POST", f"{API}/requests", doc)  # a retried POST is safe
    assert again.status == 200 and again.body["status"] == "received", again.text[:500]
    answers = [posted, seen, again]

    raw = json.dumps(doc).encode()
    forged = signing.sign(b"not-the-shared-secret-0123", API_KEY, "POST", f"{API}/requests", raw)
    answers.append(_send(ui, "POST", f"{API}/requests", raw, forged))
    _problem(answers[-1], 401, "bad_signature")
    answers.append(_send(ui, "POST", f"{API}/requests", raw, {}))
    _problem(answers[-1], 401, "missing_signature")
    once = signing.sign(API_SECRET.encode(), API_KEY, "GET", status_path)
    answers.append(_send(ui, "GET", status_path, None, once))
    assert answers[-1].status == 200, answers[-1].text[:500]
    answers.append(_send(ui, "GET", status_path, None, once))  # the same call again
    _problem(answers[-1], 401, "replayed")

    other = _other_tenant(ui)
    stranger = _doc(other, f"API-OT-{_stamp()}", "someone@example.com")
    answers.append(_signed(ui, "POST", f"{API}/requests", stranger))
    _problem(answers[-1], 403, "wrong_client")
    answers.append(_signed(ui, "GET", f"{API}/requests/{rid}?client_id={other}"))
    _problem(answers[-1], 403, "wrong_client")

    unverified = _doc(client_id, f"API-BAD-{_stamp()}", address)
    unverified["verification"] = {"method": None}
    cases = {
        "malformed_email": _doc(client_id, f"API-BAD-{_stamp()}", "not-an-address"),
        "not_verified": unverified,
        "unknown_type": _doc(client_id, f"API-BAD-{_stamp()}", address, "erase-everything"),
    }
    for reason, invalid in cases.items():
        answers.append(_signed(ui, "POST", f"{API}/requests", invalid))
        problem = _problem(answers[-1], 400, "invalid_document")
        assert reason in {e["reason"] for e in problem["errors"]}, (reason, problem["errors"])
    leaked = [a.status for a in answers if _mentions(a.text, address)]
    assert not leaked, "an identity in an answer"


# --------------------------------------------------------------------------- the dashboard


def test_an_api_request_moves_from_received_to_completed_on_the_dashboard(ui, browser):
    """Submitted over the API (received), taken in and answered by access_reports: its page on
    the desk shows it open, then completed; the API gives its result; the ledger verifies."""
    ((client_id, address),) = _people(ui, 1, 1)
    rid = f"API-DASH-{_stamp()}"
    posted = _signed(ui, "POST", f"{API}/requests", _doc(client_id, rid, address))
    assert posted.status == 202 and posted.body["status"] == "received", posted.text[:500]
    status_path = f"{API}/requests/{rid}?client_id={client_id}"
    run_id = _trigger(ui, DAG_ID, {"request_ref": f"{client_id}/{rid}"})
    _until("intake", lambda: _signed(ui, "GET", status_path).body["status"] != "received")
    page = _login(browser, ui, STAFF)
    try:
        page.goto(f"{ui.url}/plugin/compliance")  # the navigation's Compliance entry
        page.frame_locator("iframe").locator("[data-section=deadlines]").first.wait_for()
        _shot(page, "10-desk-dashboard", full_page=False)
        page.goto(f"{ui.url}/compliance/requests/{client_id}/{rid}")
        heading = page.locator("h2[data-type=access]")
        heading.wait_for()
        _shot(page, "11-desk-request-open", full_page=False)
        state = _wait_for_run(ui, run_id)
        assert state == "success", f"run ended {state}; see {ui.log}"
        page.reload()
        assert "completed" in heading.inner_text()
        assert "completed" in page.locator("[data-section=events]").inner_text()
        leaked = _mentions(page.content(), address)
        assert not leaked, "an identity on the page"  # shown only on request
        _shot(page, "12-desk-request-completed", full_page=False)
        page.goto(f"{ui.url}/compliance/dashboard")
        page.get_by_role("button", name="Verify the ledger now").click()
        page.locator("[data-ledger=ok]").wait_for()
        _shot(page, "13-desk-ledger-verified", full_page=False)
    except Exception:
        _shot(page, "99-dashboard-failure")
        raise
    finally:
        page.context.close()
    done = _signed(ui, "GET", status_path)
    assert done.body["status"] == "completed" and done.body["completed_at"], done.text[:500]
    result = _signed(ui, "GET", f"{API}/requests/{rid}/result?client_id={client_id}")
    assert result.status == 200, result.text[:500]
    assert result.body["receipt"]["request_id"] == rid and result.body["link"]["url"]
    leaked = _mentions(result.text, address)
    assert not leaked, "an identity in the result"
    ui.completed[rid] = client_id


def _callbacks(ui: UI) -> list[dict]:
    """What the client's endpoint received, each callback's signature checked as a client would
    (`signing.verify` with the credential's secret and the callback URL's path)."""
    got, nonces = [], set()
    for headers, path, body in list(ui.callbacks):
        signed = signing.verify(headers, "POST", path, body, secret=API_SECRET.encode())
        assert signed.key == API_KEY and path == "/dsr/cb"
        assert signed.nonce not in nonces  # every callback signed afresh
        nonces.add(signed.nonce)
        got.append(json.loads(body))
    return got


def test_status_callbacks_reach_the_clients_server_signed(ui):
    """client_callbacks POSTs each status change to the credential's callback_url, signed:
    `received` of a fresh request, and received -> acknowledged -> completed, in order, of the
    one the dashboard test completed."""
    ((client_id, address),) = _people(ui, 2, 1)
    rid = f"API-CB-{_stamp()}"
    posted = _signed(ui, "POST", f"{API}/requests", _doc(client_id, rid, address))
    assert posted.status == 202, posted.text[:500]
    run_id = _trigger(ui, CALLBACK_DAG, {})
    state = _wait_for_run(ui, run_id, dag_id=CALLBACK_DAG)
    assert state == "success", f"run ended {state}; see {ui.log}"
    events = _callbacks(ui)
    seen = [(e["request"]["request_id"], e["event"]) for e in events]
    assert (rid, "received") in seen, seen
    for done in ui.completed:
        mine = [ev for r, ev in seen if r == done]
        assert mine[:3] == ["received", "acknowledged", "completed"], mine
    for e in events:
        assert e["request"]["status"] and e["sent_at"]
    leaked = [i for i, (_, _, body) in enumerate(ui.callbacks) if _mentions(body.decode(), address)]
    assert not leaked, "an identity in a callback"


# --------------------------------------------------------------------------- roles


def test_a_viewer_sees_the_counts_but_cannot_act(ui, browser):
    """A viewer reads the dashboard's counts; a request's page and the ledger check are 403."""
    client_id, rid = next(((c, r) for r, c in ui.completed.items()), ("1", "NO-SUCH-1"))
    page = _login(browser, ui, VIEWER)
    try:
        page.goto(f"{ui.url}/compliance/dashboard")
        tiles = page.locator("[data-section=deadlines]")
        tiles.first.wait_for()
        assert tiles.count() >= 4
        assert page.get_by_role("button", name="Verify the ledger now").count() == 0
        _shot(page, "14-viewer-dashboard", full_page=False)
        opened = page.goto(f"{ui.url}/compliance/requests/{client_id}/{rid}")
        assert opened is not None and opened.status == 403
        _shot(page, "15-viewer-request-refused", full_page=False)
        posted = page.request.post(
            f"{ui.url}/compliance/ledger/verify",
            form={"checkpoint": ""},
            headers={"Origin": ui.url},
        )
        assert posted.status == 403, posted.text()[:300]
    except Exception:
        _shot(page, "99-viewer-dashboard-failure")
        raise
    finally:
        page.context.close()


# --------------------------------------------------------------------------- four eyes


def _enter_deletion(page, ui: UI, client_id: str, address: str, rid: str, shot: str) -> str:
    """Staff enter a deletion to execute now on the desk's staff page; the run's quoted id."""
    page.goto(f"{ui.url}/compliance/requests")
    page.select_option("#type", "delete")
    page.fill("#request_id", rid)
    page.fill("#client_id", client_id)
    page.fill("#email", address)
    page.fill("#received_at", (datetime.now(UTC) - timedelta(days=1)).isoformat())
    page.fill("#verification_method", "email_link")
    page.fill("#verified_by", "client-staff")
    page.check("input[name=execute]")
    with page.expect_response(
        lambda r: r.url.endswith("/compliance/requests") and r.request.method == "POST"
    ) as posted:
        page.get_by_role("button", name="Enter and start").click()
    assert posted.value.status == 200, posted.value.status
    entered = page.get_by_role("status")
    assert entered.get_attribute("data-ref") == f"{client_id}/{rid}"
    _shot(page, shot, full_page=False)
    href = entered.get_by_role("link").get_attribute("href")
    run_id = urllib.parse.unquote(href.rsplit("/runs/", 1)[1])
    run = ui.api("GET", f"/api/v2/dags/{DELETE_DAG}/dagRuns/{urllib.parse.quote(run_id)}", STAFF)
    assert run["conf"] == {"request_ref": f"{client_id}/{rid}", "dry_run": False}
    return urllib.parse.quote(run_id, safe="")


def _awaiting(ui: UI, run_id: str) -> dict:
    """The run's approval step once it waits for an answer: its Required Action exists, the
    task is parked (`awaiting_input`, Airflow 3.3) and the scheduler has taken the parking
    workload's end from the executor (its "Received executor event" line in the standalone
    log). An answer sent before that (sooner than a person would) races Airflow's hand-over:
    the executor's late "success" for the parking workload finds the task queued again, the
    scheduler marks it up_for_retry, and the retry asks anew, so the run waits on (seen twice
    in CI on a loaded machine, the second time after the state alone was waited for)."""
    settled = (
        "Received executor event with state success for task instance TaskInstanceKey("
        f"dag_id='{DELETE_DAG}', task_id='approve', run_id='{urllib.parse.unquote(run_id)}'"
    )

    def probe() -> dict | None:
        path = f"/api/v2/dags/{DELETE_DAG}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"
        ti = f"/api/v2/dags/{DELETE_DAG}/dagRuns/{run_id}/taskInstances/approve"
        try:
            if ui.api("GET", ti, STAFF)["state"] not in ("awaiting_input", "deferred"):
                return None
            detail = ui.api("GET", path, STAFF)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                run = ui.api("GET", f"/api/v2/dags/{DELETE_DAG}/dagRuns/{run_id}", STAFF)
                assert run["state"] not in ("success", "failed"), f"no approval asked; {ui.log}"
                return None
            raise
        if detail.get("response_received") or settled not in ui.log.read_text(errors="replace"):
            return None
        return detail

    return _until("the approval step waiting", probe, timeout=300)


def _answer(page, ui: UI, run_id: str, choice: str, shot: str | None = None) -> Any:
    """Open the step's Required Action in the UI and press `choice`; the PATCH's response.

    With `shot`, the way staff find it: Browse -> Required Actions lists what waits (a
    screenshot of the list), the run's row links to the step's Required Actions tab."""
    if shot is None:
        page.goto(f"{ui.url}/dags/{DELETE_DAG}/runs/{run_id}/tasks/approve/required_actions")
    else:
        page.goto(f"{ui.url}/required_actions?response_received=false")
        row = page.locator("tr", has_text=urllib.parse.unquote(run_id))
        row.wait_for()
        _shot(page, shot, full_page=False)
        row.get_by_role("link", name="Erase this deletion batch?").click()
    button = page.get_by_role("button", name=choice, exact=True)
    button.wait_for()
    with page.expect_response(
        lambda r: r.url.endswith("/hitlDetails") and r.request.method == "PATCH"
    ) as answered:
        button.click()
    return answered.value


def _task_states(ui: UI, run_id: str) -> dict[str, set[str]]:
    """Task id -> the states of its instances (every map index)."""
    path = f"/api/v2/dags/{DELETE_DAG}/dagRuns/{run_id}/taskInstances?limit=500"
    states: dict[str, set[str]] = {}
    for ti in ui.api("GET", path, STAFF)["task_instances"]:
        states.setdefault(ti["task_id"], set()).add(str(ti["state"]))
    return states


def _contacts_with(ui: UI, client_id: str, address: str) -> int:
    """The client's CRM contacts with this address (the one a deletion erases)."""
    engine = sa.create_engine(f"sqlite:///{ui.crm}")
    with engine.connect() as c:
        n = c.execute(
            sa.text(
                "select count(*) from contacts where client_id = :c and lower(email) = lower(:a)"
            ),
            {"c": int(client_id), "a": address},
        ).scalar_one()
    engine.dispose()
    return int(n)


def test_four_eyes_own_approve_refused_second_person_approves_rejection_skips(ui, browser):
    """docs/approvals.md in the UI: `compliance` starts a deletion to execute; their own
    Approve in Required Actions is refused (403); `reviewer` approves and the erasure runs.
    A second run rejected by `reviewer` skips every erasing task and alerts."""
    (c1, a1), (c2, a2) = _people(ui, 3, 2)
    held = _contacts_with(ui, c1, a1), _contacts_with(ui, c2, a2)
    assert held[0] >= 1 and held[1] >= 1
    ui.api("PATCH", f"/api/v2/dags/{DELETE_DAG}", STAFF, {"is_paused": False})
    staff, reviewer = _login(browser, ui, STAFF), _login(browser, ui, REVIEWER)
    try:
        run1 = _enter_deletion(staff, ui, c1, a1, f"UI-DEL-A-{_stamp()}", "20-desk-staff-deletion")
        detail = _awaiting(ui, run1)
        assert {"Approve", "Reject"} <= set(detail["options"]), detail
        own = _answer(staff, ui, run1, "Approve")
        assert own.status == 403, own.status
        assert own.json()["code"] == "four_eyes_same_user"
        staff.get_by_text("Access Denied").wait_for()  # the UI's error toast
        staff.wait_for_timeout(500)  # for the picture only: the toast has faded in
        _shot(staff, "21-desk-own-approve-refused", full_page=False)
        assert _awaiting(ui, run1)  # still waiting: the refusal recorded nothing
        second = _answer(reviewer, ui, run1, "Approve", shot="22-desk-required-actions")
        assert second.status == 200, second.status
        reviewer.get_by_text(f"from {REVIEWER}").wait_for()  # "Response received ... from"
        _shot(reviewer, "23-desk-reviewer-approved", full_page=False)
        state = _wait_for_run(ui, run1, 300, DELETE_DAG)
        assert state == "success", f"run ended {state}; see {ui.log}"
        states = _task_states(ui, run1)
        for task in ("erase_system", "scrub_logs", "verify_logs", "finalize"):
            assert states[task] == {"success"}, (task, states)
        assert states["alert_not_approved"] == {"skipped"}, states
        left = _contacts_with(ui, c1, a1)  # a number: a failure's report shows no identity
        assert left == 0, "the approved deletion left the contact"

        run2 = _enter_deletion(staff, ui, c2, a2, f"UI-DEL-B-{_stamp()}", "24-desk-staff-second")
        _awaiting(ui, run2)
        refused = _answer(reviewer, ui, run2, "Reject")
        assert refused.status == 200, refused.status
        state = _wait_for_run(ui, run2, 300, DELETE_DAG)
        assert state == "success", f"run ended {state}; see {ui.log}"
        states = _task_states(ui, run2)
        for task in ERASING:
            assert states[task] == {"skipped"}, (task, states)
        assert states["alert_not_approved"] == {"success"}, states
        kept = _contacts_with(ui, c2, a2)
        assert kept == held[1], "the rejected deletion erased the contact"
    except Exception:
        _shot(staff, "99-four-eyes-staff-failure")
        _shot(reviewer, "99-four-eyes-reviewer-failure")
        raise
    finally:
        staff.context.close()
        reviewer.context.close()
