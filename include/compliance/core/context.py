"""What every job step needs, built once per task: `JobContext`.

Why one object: before it, each call threaded seven to ten positional arguments (workspace
client, bucket, data map, engines, state engine, hash key, clock...) through the DAG, the task
and the domain function, and three copies of the orchestration (DAGs, crash harness,
benchmarks) each assembled them their own way. Now `compliance.runtime` builds the context from
Airflow connections, the tests and benchmarks build it from their own engines and clients, and
both call the same task functions (`compliance.jobs`).

Frozen: a step cannot swap the data map or the clock halfway through. Plain Python: nothing here
knows Airflow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine

from compliance.core.datamap.model import DataMap
from compliance.core.settings import Settings

if TYPE_CHECKING:
    from compliance.core.alerts import Alert


@dataclass(frozen=True)
class Workspace:
    """The jobs' own bucket (inbox, batches, receipts, reports) and the client that reaches it."""

    s3: Any
    bucket: str


class Channels(Protocol):
    """How the jobs reach people: staff alerts (e-mail, Slack, SNS) and sub-processors' e-mail
    notices. Implemented with Airflow's hooks in `plugins/compliance_channels.py` (wired by
    `compliance.runtime`); tests pass their own."""

    def configured(self) -> list[str]:
        """The staff alert channels set up in this deployment (none: alerts are only logged)."""
        ...

    def alert(self, alert: Alert) -> list[str]:
        """Send to every configured staff channel; the ones that accepted it. Never raises."""
        ...

    def email(self, conn_id: str, to: str, subject: str, html: str) -> None:
        """Send one e-mail through the SMTP connection `conn_id`; raises when it was not sent."""
        ...


@dataclass(frozen=True)
class JobContext:
    settings: Settings
    datamap: DataMap
    datamap_hash: str  # sha256 of the map's file: a batch records what it was planned against
    workspace: Workspace
    state: Engine  # the compliance state DB: requests, tombstones, ledger
    engines: Mapping[str, Engine]  # SQL system name -> engine
    stores: Mapping[str, Any]  # object store name -> S3 client
    clock: Callable[[], datetime]
    run_day: date  # the day the run is about (its logical date), not the wall clock's
    sns: Any = None  # sub-processor notices over SNS
    channels: Channels | None = None
    # A named credential (an Airflow connection or secrets-backend entry): its password and
    # extra, or None when it does not exist. The client API's keys live there (issue 18).
    credentials: Callable[[str], tuple[str | None, Mapping[str, Any]] | None] | None = None

    @property
    def hash_key(self) -> bytes:
        return self.settings.hash_key

    def now(self) -> datetime:
        return self.clock()

    def engine(self, system: str) -> Engine:
        return self.engines[system]

    def store(self, name: str) -> Any:
        return self.stores[name]
