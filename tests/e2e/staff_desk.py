"""The staff request page as a browser reaches it: the api-server's own app (`create_app`, the
plugins mounted by Airflow itself, not the plugin's app on its own) through FastAPI's
TestClient, with tokens signed by Airflow's auth manager for users of each role.

Used by test_staff_entry.py and the leak scan (tests/reliability/test_leaks.py).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa

PAGE = "/compliance/requests"


@dataclass
class Desk:
    http: Any  # fastapi.testclient.TestClient on the api-server's app
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, role: str | None) -> dict[str, str]:
        if role is None:
            return {}
        if role not in self.tokens:
            from airflow.api_fastapi.app import get_auth_manager
            from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

            user = SimpleAuthManagerUser(username=f"{role}-1", role=role)
            self.tokens[role] = get_auth_manager().generate_jwt(user)
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def page(self, role: str | None = "user") -> Any:
        return self.http.get(PAGE, headers=self.headers(role))

    def enter(self, fields: dict[str, Any], role: str | None = "user") -> Any:
        data = {k: str(v) for k, v in fields.items() if v is not None}
        return self.http.post(PAGE, data=data, headers=self.headers(role))


def open_desk() -> Desk:
    """The api-server app with our plugins; the request DAGs written to the metadata DB (the
    page triggers runs of DAGs the api-server knows, as after the dag-processor's pass)."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    sync_dags()
    return Desk(TestClient(create_app("core")))


def sync_dags() -> None:
    """What the dag-processor does for our bundle (and what `dag.test()` does before a run)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        sync_bag_to_db(bag, bundle.name, bundle.version)


def triggered_conf(dag_id: str, run_id: str) -> dict[str, Any]:
    """The conf Airflow stored for the run the page started (read back from its database)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.scalar(
            sa.select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        )
        assert run is not None, f"no run {run_id} of {dag_id}"
        return dict(run.conf or {})


def run_id_of(page_html: str) -> tuple[str, str]:
    """(dag_id, run_id) from the page's link to the run it started."""
    match = re.search(r"href='\.\./dags/([^/]+)/runs/([^']+)'", page_html)
    assert match, "the page names no run"
    return unquote(html.unescape(match.group(1))), unquote(html.unescape(match.group(2)))


def consumer(crm: Path | str, offset: int = 0) -> dict[str, Any]:
    """A consumer with an e-mail, a phone and an external id, of an active client, not a child,
    under no legal hold: one the runs will really find and answer."""
    url = crm if str(crm).startswith("sqlite") else f"sqlite:///{crm}"
    engine = sa.create_engine(str(url))
    with engine.connect() as c:
        row = c.execute(
            sa.text(
                "select c.client_id, c.email, c.phone, c.external_id from contacts c "
                "join clients k on k.client_id = c.client_id where k.active "
                "and c.email is not null and c.phone is not null and c.external_id is not null "
                "and not c.is_child and not exists (select 1 from legal_holds h "
                "where h.client_id = c.client_id) order by c.contact_id limit 1 offset :o"
            ),
            {"o": offset},
        ).one()
    engine.dispose()
    return {"client_id": str(row[0]), "email": row[1], "phone": row[2], "contact_id": row[3]}


def refusals(page_html: str) -> list[str]:
    """The reason codes a refused entry shows (for assertion messages)."""
    return re.findall(r"<li><code>([^<]+)</code> \(([^)]*)\)", page_html)
