"""The UI as compliance staff use it: Chromium (Debian's) driven by Playwright.

One `airflow standalone` on 127.0.0.1 (free ports) over a seeded world and a local S3, started
once for this module and stopped afterwards (process groups, SIGKILL after a grace period):

- staff (`compliance`, role op) log in, enter an access request on the desk's staff page
  (/compliance/requests) as a person would; the run it starts carries only the reference and
  succeeds; the consumer's bundle is then in S3; a viewer cannot open the page;
- a viewer (`auditor`) can open the same form, but the trigger is refused (HTTP 403) and no
  run is created;
- the forms' rules hold server-side too: bad values are refused (HTTP 400) before a run starts.

Screenshots of each step are kept in tests/artifacts/browser/ (gitignored; CI keeps them).
Chromium is /usr/bin/chromium (`apt-get install chromium`, done by .ci/run) or
$COMPLIANCE_CHROMIUM. Without it the test skips, except under CI=true where it fails.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from compliance.core.stores.s3 import s3_client
from compliance_dev.localenv import (
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

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"
CHROMIUM = os.environ.get("COMPLIANCE_CHROMIUM", "/usr/bin/chromium")
DAG_ID = "access_reports"
STAFF, VIEWER = "compliance", "auditor"


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
    tokens: dict[str, str] = field(default_factory=dict)

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


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[UI]:
    """airflow standalone over a tiny seeded world and a moto S3, all on free local ports."""
    _need_chromium()
    home = tmp_path_factory.mktemp("ui")
    s3_proc, s3_url = start_s3(home)
    af = None
    try:
        port = free_port()
        env = ui_env(home, s3_url, home / "crm.db", port)
        # Only runs someone triggers: unpausing a DAG must not also start its scheduled run.
        env["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] = "False"
        env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "True"
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
        yield UI(f"http://127.0.0.1:{port}", client, bucket, home / "crm.db", log)
    finally:
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
    page = browser.new_context(viewport={"width": 1400, "height": 1400}).new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{ui.url}/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(UI_PASSWORDS[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/" not in url)  # redirected home: logged in
    return page


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


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


def _wait_for_run(ui: UI, run_id: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    state = "queued"
    while time.monotonic() < deadline:
        run = ui.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", STAFF)
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
        assert address.lower() not in json.dumps(run).lower()
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
        assert address.lower() in bundle.read("data.json").decode().lower()  # their own data


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
