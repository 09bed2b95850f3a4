"""The crash harness: a resettable seeded world, jobs as ordered tasks, crash points, snapshots.

Why it exists: "rerun = converge" must hold wherever a task dies. Running `dag.test()` once per
crash point would cost ~20 s each on a busy 2-core machine, so most scenarios call the DAG's
own task functions (`compliance.jobs.*`), in the DAG's order, with a `JobContext` on the world
(`World.context`) and the XComs the DAG passes (a `Job` lists them); one test in
test_crash_recovery.py proves the Airflow path with dag.test.

A scenario = restore the pristine world, run the job with one crash point armed (the run must
actually crash there, or the point proves nothing), recover the way Airflow would (mode
"retry": the failed task and what follows, reusing upstream XComs; mode "new_run": the next
scheduled run from scratch), snapshot. The baseline is one clean run of the same world.
Snapshots are compared by content, with only what legitimately differs normalised away (batch
ids and run ids embed the time, completion timestamps, summaries that describe the last run).

Adding a job (retention, access) = one `Job` subclass and its crash points.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import sqlalchemy as sa

from compliance.core.context import JobContext
from compliance.core.datamap.model import DataMap
from compliance.core.stores.s3 import s3_client
from compliance.core.stores.sql import engine_from_url
from compliance_dev import faults

REPO = Path(__file__).resolve().parents[2]
AS_OF = date(2026, 11, 20)  # the e2e world's as-of date (tests/e2e/conftest.py)
SEED = 7
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # first run; reruns are later the same day
HASH_KEY = b"e2e-test-key"
BUCKET = "cj-compliance"
# Documents that hold identities. outbox/ keeps a notice's body until it is acknowledged or
# given up (R16.3): the crash runs must leave exactly the clean run's there.
# held/: a partial erasure's memory until its legal hold ends (R19).
IDENTITY_PREFIXES = ("accepted/", "batches/", "inbox/", "outbox/", "held/")
FIGURES: dict[str, Any] = {}  # what the suite measured, printed by conftest at the end
_BATCH_ID = re.compile(r"del-\d{8}T\d{6}-[0-9a-f]{8}")


# -- the pristine world ---------------------------------------------------------------------------


@dataclass
class Pristine:
    """The seeded world once, in memory: a SQLite template file and every store object."""

    crm_file: Path
    objects: dict[tuple[str, str], bytes]
    buckets: dict[str, bool]  # bucket -> versioned
    listing: dict[str, list[tuple[str, str, bool]]] = field(default_factory=dict)


def build_pristine(s3_url: str, dm: DataMap, workdir: Path) -> Pristine:
    """Seed the tiny world (seed 7, as of AS_OF) once and keep a copy of everything."""
    from compliance_dev.world import objects as world_objects
    from compliance_dev.world.generate import seed_world

    s3 = admin_client(s3_url)
    crm_file = workdir / "pristine-crm.db"
    engine = engine_from_url(f"sqlite:///{crm_file}")
    seed_world(engine, s3, dm, "tiny", SEED, AS_OF, replace=True)
    with engine.begin() as conn:  # fold the WAL into the file so a plain copy is complete
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    buckets = {
        store.bucket: store.kind in ("log", "backup") for store in dm.stores.values()
    }  # what world.objects.ensure_buckets does
    objects = {}
    for bucket in buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                objects[(bucket, obj["Key"])] = body
    listing = {bucket: _listing(s3, bucket) for bucket in buckets}
    world_objects.clear_stores(s3, dm)
    return Pristine(crm_file, objects, buckets, listing)


def _listing(s3: Any, bucket: str) -> list[tuple[str, str, bool]]:
    """(key, ETag, is a delete marker) of every version: equal listings, equal contents."""
    out = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        out += [(v["Key"], v["ETag"], False) for v in page.get("Versions", [])]
        out += [(v["Key"], "", True) for v in page.get("DeleteMarkers", [])]
    return sorted(out)


def admin_client(s3_url: str) -> Any:
    """A client for the harness itself (restore, snapshot): never has faults installed."""
    return s3_client(endpoint_url=s3_url, access_key="testing", secret_key="testing")


def wipe_bucket(s3: Any, bucket: str) -> None:
    """Delete every version and delete marker (a versioned bucket keeps data otherwise)."""
    try:
        pages = list(s3.get_paginator("list_object_versions").paginate(Bucket=bucket))
    except s3.exceptions.NoSuchBucket:
        return
    items = [
        {"Key": v["Key"], "VersionId": v["VersionId"]}
        for page in pages
        for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
    ]
    for i in range(0, len(items), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": items[i : i + 1000], "Quiet": True})


# -- a resettable world ---------------------------------------------------------------------------


@dataclass
class World:
    """The tiny world on SQLite files and the moto server, restorable to pristine in ~0.5 s."""

    pristine: Pristine
    dm: DataMap
    s3_url: str
    workdir: Path
    esp_received: list[dict[str, Any]]
    crm_url: str = ""
    state_url: str = ""
    admin: Any = None
    s3: Any = None  # the jobs' client (faults may be installed on it)
    sns: Any = None
    inbox: dict[str, bytes] = field(default_factory=dict)  # key under inbox/ -> document
    engines: list[sa.Engine] = field(default_factory=list)
    state_in_crm: bool = False  # retention keeps the request log (R22) in the CRM database
    datamap_path: Path | None = None  # the map's file, when a test edits it (`context`)

    def __post_init__(self) -> None:
        self.crm_url = f"sqlite:///{self.workdir / 'crm.db'}"
        self.admin = admin_client(self.s3_url)
        self.sns = boto3.client("sns", endpoint_url=self.s3_url, region_name="us-east-1")

    def engine(self, url: str) -> sa.Engine:
        eng = engine_from_url(url)
        self.engines.append(eng)
        return eng

    def reset(self) -> None:
        """Back to the pristine world with the inbox documents dropped; fresh state DB."""
        from compliance import runtime
        from compliance.requests.state import create_state_schema

        for eng in self.engines:
            eng.dispose()
        self.engines.clear()
        runtime.sql_engine.cache_clear()
        runtime._schema_ready.clear()
        faults.reset()
        for name in ("crm.db", "state.db"):
            for suffix in ("", "-wal", "-shm"):
                (self.workdir / f"{name}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(self.pristine.crm_file, self.workdir / "crm.db")
        self.state_url = (
            self.crm_url if self.state_in_crm else f"sqlite:///{self.workdir / 'state.db'}"
        )
        existing = {b["Name"] for b in self.admin.list_buckets().get("Buckets", [])}
        for bucket, versioned in {**self.pristine.buckets, BUCKET: False}.items():
            if bucket not in existing:
                self.admin.create_bucket(Bucket=bucket)
                if versioned:
                    self.admin.put_bucket_versioning(
                        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
                    )
            elif bucket == BUCKET or _listing(self.admin, bucket) != self.pristine.listing[bucket]:
                wipe_bucket(self.admin, bucket)  # only what a run changed is put back
            else:
                continue
            for (b, key), body in self.pristine.objects.items():
                if b == bucket:
                    self.admin.put_object(Bucket=bucket, Key=key, Body=body)
        for key, body in self.inbox.items():
            self.admin.put_object(Bucket=BUCKET, Key=f"inbox/{key}", Body=body)
        for sp in self.dm.subprocessors:
            if sp.channel == "sns":
                self.sns.create_topic(Name=sp.target.rsplit(":", 1)[1])
        create_state_schema(self.engine(self.state_url))
        self.esp_received.clear()
        self.s3 = admin_client(self.s3_url)  # a fresh client: no faults from a previous scenario

    def context(self, now: datetime, env: dict[str, str] | None = None) -> JobContext:
        """What `compliance.runtime.context()` builds inside a task, on this world: its engines
        (new ones per call, disposed on `reset`), the jobs' S3 client for the workspace and
        every store (crash hooks see every call), the clock fixed at `now`.

        Settings from `env()` plus `env`; the data map is `dm` and its digest that of its JSON,
        unless `datamap_path` names a file (a test editing the map): then both come from it."""
        from compliance.core.context import Workspace
        from compliance.core.settings import Settings

        if self.datamap_path is not None:
            dm, digest = self._map_file(self.datamap_path)
        else:
            dm = self.dm
            digest = hashlib.sha256(dm.model_dump_json().encode()).hexdigest()
        return JobContext(
            settings=Settings.from_env({**self.env(), **(env or {})}),
            datamap=dm,
            datamap_hash=digest,
            workspace=Workspace(self.s3, BUCKET),
            state=self.engine(self.state_url),
            engines={name: self.engine(self.crm_url) for name in dm.systems},
            stores=dict.fromkeys(dm.stores, self.s3),
            clock=lambda: now,
            run_day=now.date(),
            sns=self.sns,
        )

    @staticmethod
    def _map_file(path: Path) -> tuple[DataMap, str]:
        from compliance.core.datamap.validate import load_datamap_with_digest

        return load_datamap_with_digest(path)

    def env(self) -> dict[str, str]:
        """Airflow connections and settings, for jobs that go through `compliance.runtime`."""
        aws = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": self.s3_url, "region_name": "us-east-1"},
        }
        return {
            "AIRFLOW_CONN_CRM_DB": json.dumps(
                {"conn_type": "sqlite", "host": self._path(self.crm_url)}
            ),
            "AIRFLOW_CONN_COMPLIANCE_DB": json.dumps(
                {"conn_type": "sqlite", "host": self._path(self.state_url)}
            ),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
            "COMPLIANCE_WORKSPACE_BUCKET": BUCKET,
            "COMPLIANCE_HASH_KEY": HASH_KEY.decode(),
        }

    @staticmethod
    def _path(url: str) -> str:
        return url.removeprefix("sqlite:///")


# -- the deletion requests of every scenario --------------------------------------------------------


def _doc(request_id: str, client_id: int, **identities: str) -> dict[str, Any]:
    received = (T0 - timedelta(days=3)).isoformat()
    return {
        "request_id": request_id,
        "client_id": client_id,
        "type": "delete",
        "identities": identities,
        "received_at": received,
        "verification": {"method": "account_login", "verified_at": received, "verified_by": "s7"},
    }


def deletion_inbox(crm_file: Path) -> dict[str, bytes]:
    """Requests exercising the hard cases, chosen from the pristine world by plain SQL.

    A consumer whose e-mail also exists at another client (asked in upper case), one found by a
    phone that also sits on an alias row, one under a legal hold (deferred, R19), one document
    that is not verified and one that is not JSON (both rejected, neither stops the run).
    """
    eng = sa.create_engine(f"sqlite:///{crm_file}")
    with eng.connect() as c:
        email = c.execute(
            sa.text(
                "select lower(email) from contacts where email is not null and is_child = 0 "
                "group by lower(email) having count(distinct client_id) > 1 order by 1 limit 1"
            )
        ).scalar_one()
        mt_client = c.execute(
            sa.text("select min(client_id) from contacts where lower(email) = :e"), {"e": email}
        ).scalar_one()
        al_client, al_phone = c.execute(
            sa.text(
                "select c.client_id, c.phone from contacts c join contact_aliases a "
                "on a.contact_id = c.contact_id join clients k on k.client_id = c.client_id "
                "where c.phone is not null and k.active = 1 and c.client_id <> :mt "
                "and not exists (select 1 from legal_holds h where h.client_id = c.client_id) "
                "order by c.contact_id limit 1"
            ),
            {"mt": mt_client},
        ).one()
        held = c.execute(
            sa.text(
                "select h.client_id, c.external_id from legal_holds h join contacts c "
                "on c.contact_id = h.contact_id where h.expires_at is null or h.expires_at > :now "
                "order by h.hold_id limit 1"
            ),
            {"now": T0.replace(tzinfo=None)},
        ).first()
        # a consumer whose messages are under a scoped hold (R19): erased in part (issue 15)
        scoped = c.execute(
            sa.text(
                "select h.client_id, c.email from legal_holds h join contacts c "
                "on c.contact_id = h.contact_id where h.scope = 'messages' "
                "and h.expires_at > :now and c.email is not null order by h.hold_id limit 1"
            ),
            {"now": T0.replace(tzinfo=None)},
        ).first()
    eng.dispose()
    bad = _doc("BAD-1", mt_client, email="nobody@example.com")
    del bad["verification"]
    docs = {
        f"{mt_client}/batch.ndjson": json.dumps(_doc("DEL-1", mt_client, email=email.upper())),
        f"{al_client}/one.json": json.dumps(_doc("DEL-2", al_client, phone=al_phone)),
        f"{mt_client}/bad.json": json.dumps(bad),
        f"{mt_client}/garbage.json": "{not json",
    }
    if held is not None:
        docs[f"{held[0]}/held.json"] = json.dumps(_doc("DEL-HELD", held[0], contact_id=held[1]))
    if scoped is not None:
        docs[f"{scoped[0]}/scoped.json"] = json.dumps(
            _doc("DEL-SCOPED", scoped[0], email=scoped[1])  # every row of the person
        )
    return {k: v.encode() for k, v in docs.items()}


# -- jobs as ordered tasks ------------------------------------------------------------------------

Task = tuple[str, Callable[[], Any]]


class Job:
    """A DAG's tasks in its dependency order, calling what the tasks call."""

    dag_id = ""

    def __init__(self, world: World) -> None:
        self.w = world

    def tasks(self, now: datetime, xcom: dict[str, Any]) -> Iterator[Task]:
        raise NotImplementedError

    def prepare(self) -> dict[str, str]:
        """Extra environment the job's tasks need (besides `World.env`)."""
        return {}

    def normalise(self, text: str) -> str:
        """Replace what embeds the run's time (batch or run ids) by a placeholder."""
        return text

    def records(self, snap: dict[str, Any]) -> dict[str, Any]:
        """The part of a snapshot that records what was done (receipts, ledger, state);
        identity-bearing documents are checked apart (`leftovers`)."""
        workspace = {
            k: v for k, v in snap["workspace"].items() if not k.startswith(IDENTITY_PREFIXES)
        }
        return {"workspace": workspace, "state": snap["state"], "esp_notices": snap["esp_notices"]}


class DeletionJob(Job):
    """dags/deletion_requests.py, task for task: the same `compliance.jobs.deletion` functions
    with a `JobContext` on the world (`World.context`), XComs passed as the DAG passes them."""

    dag_id = "deletion_requests"

    def __init__(self, world: World, params: dict[str, Any] | None = None) -> None:
        super().__init__(world)
        self.params = dict(params or {})  # the run form (a scheduled run: none, `replan` off)

    def tasks(self, now: datetime, xcom: dict[str, Any]) -> Iterator[Task]:
        from compliance.jobs import deletion as job

        ctx = self.w.context(now)
        yield "intake", lambda: job.intake(ctx, self.params, dry_run=False)
        yield "plan", lambda: job.plan(ctx, xcom["intake"], self.params)
        batch = xcom["plan"]
        for name in batch["systems"]:
            yield f"erase_system[{name}]", lambda n=name: job.erase_system(ctx, batch, n)
        for shard in batch["shards"]:
            yield f"scrub_logs[{shard}]", lambda sh=shard: job.scrub_logs(ctx, batch, sh)
        for shard in batch["shards"]:
            yield f"verify_logs[{shard}]", lambda sh=shard: job.verify_logs(ctx, batch, sh)
        for store in batch["recordings"]:
            yield (
                f"erase_recordings[{store}]",
                lambda st=store: job.erase_recordings(ctx, batch, st),
            )
        for store in batch["backups"]:
            yield (
                f"tombstone_backups[{store}]",
                lambda st=store: job.tombstone_backups(ctx, batch, st),
            )
        yield "notify_subprocessors", lambda: job.notify_subprocessors(ctx, batch)
        shards = [xcom.get(f"scrub_logs[{s}]") for s in batch["shards"]]
        yield "finalize", lambda: job.finalize(ctx, batch, shards)

    def normalise(self, text: str) -> str:
        return _BATCH_ID.sub("del-*", text)


class RetentionJob(Job):
    """dags/retention_sweep.py: plan -> execute per rule (wave order) -> report."""

    dag_id = "retention_sweep"
    # One rule per wave kind keeps a run short: consumers (children first, R26), rows with
    # children rows (messages and attachments), the request log (R22), log partitions.
    rules = ["children", "messages", "request-log", "app-logs"]
    batch_rows = 100  # the smallest the policy allows: a crash can fall between two batches

    def prepare(self) -> dict[str, str]:
        """The environment its tasks read: connections, the map, a policy with small batches."""
        policy = (REPO / "config" / "retention.yaml").read_text()
        policy = re.sub(r"(?m)^batch_rows: \d+", f"batch_rows: {self.batch_rows}", policy)
        policy = re.sub(r"(?m)^batch_seconds: .*\n", "", policy)  # fixed-size batches
        path = self.w.workdir / "retention.yaml"
        path.write_text(policy)
        return {"COMPLIANCE_RETENTION": str(path)}

    def tasks(self, now: datetime, xcom: dict[str, Any]) -> Iterator[Task]:
        from compliance.jobs import retention

        ctx = self.w.context(now, self.prepare())  # the policy with small batches
        params = {"dry_run": False, "as_of": AS_OF.isoformat(), "rules": self.rules}
        run_id = xcom.setdefault("run_id", f"run-{now:%H%M}")  # a retry keeps its run's id
        # the plan's clock is `now`: fixed for a comparable run
        yield "plan", lambda: retention.plan(ctx, params, scheduled=False)
        planned = xcom["plan"]
        for wave, rule_ids in planned["run"]["waves"].items():
            for rule_id in rule_ids:
                yield (
                    f"execute[{wave}:{rule_id}]",
                    lambda r=rule_id: retention.execute(ctx, planned["options"], r),
                )
        results = [v for k, v in xcom.items() if k.startswith("execute[")]
        yield (
            "report",
            lambda: retention.report(ctx, planned["plan"], planned["options"], [results], run_id),
        )

    def normalise(self, text: str) -> str:
        return re.sub(r"run-\d{4}", "run-*", text)

    def records(self, snap: dict[str, Any]) -> dict[str, Any]:
        """A sweep's report describes what *that* run did (a rerun finds less to do, and says
        so as plan/run mismatches), so only its shape is compared: one report and one ledger
        entry per completed run, none duplicated."""
        return {
            "ledger": sorted(Counter(row[0] for row in snap["state"]["ledger"]).items()),
            "workspace": sorted(snap["workspace"]),
        }


# -- crash points ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrashPoint:
    """Where a run dies.

    kind "after": after a task's work, before it reports success (the worker died);
    "fault": a COMPLIANCE_FAULTS rule, i.e. a `faults.checkpoint` inside the code;
    "s3": just before the n-th S3 call of an operation (on one bucket, keys with a prefix);
    "call": just after the n-th call of a function (e.g. the first tombstone insert).
    """

    id: str
    kind: str
    arg: str
    n: int = 1
    bucket: str = ""
    prefix: str = ""

    def __str__(self) -> str:
        return self.id


def after(task: str, n: int = 1) -> CrashPoint:
    """After the n-th task whose id starts with `task` (mapped tasks: `scrub_logs[mail`)."""
    return CrashPoint(f"after:{task}{'' if n == 1 else f'#{n}'}", "after", task, n)


def fault(rule: str) -> CrashPoint:
    return CrashPoint(rule, "fault", rule)


def s3_call(operation: str, n: int = 1, bucket: str = "", prefix: str = "") -> CrashPoint:
    where = f"{bucket}/{prefix}" if bucket or prefix else ""
    return CrashPoint(f"s3:{operation}#{n}:{where}", "s3", operation, n, bucket, prefix)


def call(target: str, n: int = 1) -> CrashPoint:
    return CrashPoint(f"call:{target.rsplit('.', 1)[1]}#{n}", "call", target, n)


@contextmanager
def armed(world: World, point: CrashPoint | None) -> Iterator[None]:
    """Install the crash point for the duration of one run."""
    with ExitStack() as stack:
        if point is not None and point.kind == "fault":
            os.environ[faults.ENV] = point.arg
            faults.reset()
            stack.callback(os.environ.pop, faults.ENV, None)
        elif point is not None and point.kind == "s3":
            seen = Counter()

            def before_call(params: dict[str, Any], **_: Any) -> None:
                if point.bucket and params.get("Bucket") != point.bucket:
                    return
                keys = [params.get("Key", "")]  # DeleteObjects names its keys in the body
                keys += [o["Key"] for o in params.get("Delete", {}).get("Objects", [])]
                if any(str(k).startswith(point.prefix) for k in keys):
                    seen["n"] += 1
                    if seen["n"] == point.n:
                        raise faults.InjectedCrash(point.id, "s3 hook")

            event = f"before-parameter-build.s3.{point.arg}"  # API params, before sending
            world.s3.meta.events.register(event, before_call)
            stack.callback(world.s3.meta.events.unregister, event, before_call)
        elif point is not None and point.kind == "call":
            module_name, attr = point.arg.rsplit(".", 1)
            import importlib

            module = importlib.import_module(module_name)
            original = getattr(module, attr)
            seen = Counter()

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                out = original(*args, **kwargs)
                seen["n"] += 1
                if seen["n"] == point.n:
                    raise faults.InjectedCrash(point.id, "call hook")
                return out

            setattr(module, attr, wrapper)
            stack.callback(setattr, module, attr, original)
        yield


@dataclass
class Attempt:
    xcom: dict[str, Any]
    crashed_in: str | None = None  # the task that died (injected) or failed (error)
    point: str | None = None
    error: str | None = None  # a task failed by itself (not an injected crash)
    task_retries: list[str] = field(default_factory=list)  # failures a retry got past
    tasks_run: list[str] = field(default_factory=list)


def execute(
    job: Job,
    now: datetime,
    *,
    point: CrashPoint | None = None,
    xcom: dict[str, Any] | None = None,
    start: str | None = None,
    retries: int = 0,
) -> Attempt:
    """Run the job's tasks in order (from `start`, reusing `xcom`, for an Airflow retry).

    A task that fails by itself is retried up to `retries` times (the DAGs' default_args have
    2); an injected crash is not: it ends the attempt, as the death of the worker would.
    """
    attempt = Attempt(dict(xcom or {}))
    started = start is None
    boundary = 0
    with armed(job.w, point):
        for name, fn in job.tasks(now, attempt.xcom):
            if not started:
                if name != start:
                    continue
                started = True
            attempt.tasks_run.append(name)
            for try_number in range(retries + 1):
                try:
                    out = fn()
                    if point is not None and point.kind == "after" and name.startswith(point.arg):
                        boundary += 1
                        if boundary == point.n:
                            raise faults.InjectedCrash(point.id, "task boundary")
                    break
                except faults.InjectedCrash as exc:
                    attempt.crashed_in, attempt.point = name, exc.point
                    return attempt
                except Exception as exc:  # the task failed: Airflow stops what depends on it
                    if try_number < retries:
                        attempt.task_retries.append(f"{name}: {type(exc).__name__}")
                        continue
                    attempt.crashed_in, attempt.error = name, f"{type(exc).__name__}: {exc}"[:300]
                    return attempt
            attempt.xcom[name] = out
    return attempt


@dataclass
class Outcome:
    snapshot: dict[str, Any]
    crashed_in: str | None
    errors: list[str] = field(default_factory=list)  # recovery runs that failed
    task_retries: list[str] = field(default_factory=list)


def scenario(
    job: Job,
    point: CrashPoint | None,
    mode: str = "new_run",
    *,
    arm: Callable[[World], None] | None = None,
    retries: int = 0,
) -> Outcome:
    """Pristine world; run 1, crashing at `point`; recovery per `mode`; snapshot.

    `arm(world)` runs after the reset (e.g. to install S3 faults on the jobs' fresh client);
    `retries` are Airflow's task retries. A recovery that fails is recorded in `errors`
    (Airflow would mark the run failed and alert) rather than raised, so the snapshot still
    shows what was left behind.
    """
    job.w.reset()
    if arm is not None:
        arm(job.w)
    errors = []
    first = execute(job, T0, point=point, retries=retries)
    if first.error:
        errors.append(f"run 1, {first.crashed_in}: {first.error}")
    task_retries = list(first.task_retries)
    if point is not None:
        if first.point is None:
            raise AssertionError(f"crash point {point} was never reached: it proves nothing")
        if mode == "retry":  # Airflow retries the failed task, then runs what depends on it
            again = execute(job, T0 + timedelta(minutes=5), xcom=first.xcom, start=first.crashed_in)
        elif mode == "new_run":  # retries exhausted: the next scheduled run starts over
            again = execute(job, T0 + timedelta(hours=1))
        else:
            raise ValueError(mode)
        if again.crashed_in:
            errors.append(f"{mode}, {again.crashed_in}: {again.error}")
    return Outcome(snapshot(job), first.crashed_in, errors, task_retries)


# -- snapshots ------------------------------------------------------------------------------------


def snapshot(job: Job) -> dict[str, Any]:
    """Everything a run can change, by content, normalised with `job.normalise`."""
    from tests.e2e import worldview

    w = job.w
    norm = job.normalise
    workspace = _workspace(w, norm)
    return {
        "crm": worldview.db_rows(w.crm_url),
        "stores": _stores(w, norm),
        # documents that hold identities: accepted requests and batch targets (R20: gone once
        # the request is completed)
        "leftovers": sorted(k for k in workspace if k.startswith(IDENTITY_PREFIXES)),
        "workspace": workspace,
        "state": _state(w, norm),
        "esp_notices": sorted(Counter(n["request_ref"] for n in w.esp_received).items()),
    }


def _stores(w: World, norm: Callable[[str], str]) -> dict[str, Any]:
    """Per store object: the current version's ETag (MD5 of the bytes; rewrites are
    deterministic) and how many versions and delete markers exist (old versions hold data)."""
    out: dict[str, Any] = {}
    for bucket in w.pristine.buckets:
        per_key: dict[str, dict[str, Any]] = {}
        for key, etag, marker in _listing(w.admin, bucket):
            entry = per_key.setdefault(f"{bucket}/{key}", {"etags": [], "markers": 0})
            if marker:
                entry["markers"] += 1
            else:
                entry["etags"].append(etag)
        for entry in per_key.values():
            entry["etags"].sort()
        out.update(per_key)
    return out


def _workspace(w: World, norm: Callable[[str], str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for page in w.admin.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            body = w.admin.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            if key.startswith("summaries/"):
                value: Any = "(describes the last run)"
            elif key.endswith(".json") and key.startswith(("receipts/", "retention/")):
                doc = json.loads(body)
                if isinstance(doc, dict):
                    volatile_keys = ("completed_at", "partially_erased_at", "generated_at")
                    for volatile in (*volatile_keys, "finished_at", "now"):
                        doc.pop(volatile, None)
                    for section in ("subprocessors", "recipients"):  # R16.3/R16.4 outbox:
                        for entry in (doc.get(section) or {}).values():  # how many tries and
                            if isinstance(entry, dict):  # when depend on how many runs it took
                                for volatile in ("attempts", "acknowledged_at", "given_up_at"):
                                    entry.pop(volatile, None)
                value = json.loads(norm(json.dumps(doc, sort_keys=True)))
            else:
                value = hashlib.sha256(norm(body.decode("utf-8", "replace")).encode()).hexdigest()
            out[norm(key)] = value
    return out


def _state(w: World, norm: Callable[[str], str]) -> dict[str, Any]:
    from compliance.core import ledger

    eng = w.engine(w.state_url)
    check = ledger.verify(eng, HASH_KEY)
    assert check.ok, check.problem
    with eng.connect() as c:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return sorted(
                (
                    tuple(norm(str(v)) if v is not None else None for v in r)
                    for r in c.execute(sa.text(sql))
                ),
                key=repr,
            )

        refs = "(select request_id from cj_requests q where q.id = {})"
        return {
            # A refused document is logged (R22) with the time of the run that read it
            # (inbox._rejected_request): a rerun after a crash logs it later, by design.
            "requests": rows(
                "select client_id, request_id, type, status, reason_code, "
                "case when status = 'rejected' then null else received_at end, "
                "response_due, source, subject_hash, batch_id is not null from cj_requests"
            ),
            "batch_statuses": sorted({r[0] for r in rows("select status from cj_batches")}),
            "plan": rows(
                f"select {refs.format('p.request_pk')}, system, target, planned from cj_batch_plan p"
            ),
            "tombstones": rows(
                f"select system, client_id, kind, hash, {refs.format('t.request_pk')} "
                "from cj_tombstones t"
            ),
            "notices": rows(
                f"select {refs.format('n.request_pk')}, subprocessor, channel, status from cj_notices n"
            ),
            "ledger": rows("select kind, ref, payload, idempotency_key from cj_ledger"),
        }


def diff(a: dict[str, Any], b: dict[str, Any], limit: int = 12) -> list[str]:
    """Where two snapshots differ, as short lines for an assertion message."""
    out: list[str] = []

    def walk(path: str, x: Any, y: Any) -> None:
        if len(out) >= limit or x == y:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y), key=str):
                if k not in x:
                    out.append(f"{path}/{k}: only after the crash: {str(y[k])[:160]}")
                elif k not in y:
                    out.append(f"{path}/{k}: only in the clean run: {str(x[k])[:160]}")
                else:
                    walk(f"{path}/{k}", x[k], y[k])
        elif isinstance(x, list) and isinstance(y, list):
            xs, ys = Counter(map(repr, x)), Counter(map(repr, y))
            for item in (xs - ys).elements():
                out.append(f"{path}: only in the clean run: {item[:160]}")
            for item in (ys - xs).elements():
                out.append(f"{path}: only after the crash: {item[:160]}")
        else:
            out.append(f"{path}: clean {str(x)[:120]} != after crash {str(y)[:120]}")

    walk("", a, b)
    return out[:limit]
