"""Airflow on the Celery executor, as docker-compose.yml runs it, on this machine's services.

PostgreSQL metadata (a database the caller provides), Redis as the broker, and Airflow's own
components as separate processes: api-server, scheduler, dag-processor, triggerer and two Celery
workers (w1, w2). The executor settings are read from docker-compose.yml with its service hosts
swapped for local ones, so what runs here is what the deployment runs.

Used by `tests/e2e/test_celery_run.py` (the deletion DAG, distributed, end to end) and the
benchmark's scale-out figure (`benchmarks/sections/celery.py`, issue 19): both need the same
stack, and a stack started two ways would drift.

Everything is private to one stack: free ports, a Celery queue of its own (parallel stacks on
one Redis cannot take each other's tasks), a DAGs folder holding only the DAGs asked for (quick
parsing). Every process is started in its own process group and stopped on exit (SIGTERM, one
shared grace period, then SIGKILL), also when start-up or the caller fails.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compliance.core.settings import REPO_ROOT
from compliance_dev.localenv import airflow_env, free_port, start_group, stop_groups, wait_http

REDIS = ("127.0.0.1", 6379)
WORKERS = ("w1", "w2")
PASSWORD = "celery-stack"  # the local admin's password (private stack, loopback only)


def redis_problem(redis: tuple[str, int] = REDIS) -> str | None:
    """Why Redis cannot serve as the broker, or None when it answers PING."""
    try:
        with socket.create_connection(redis, timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return None
            return f"Redis on {redis[0]}:{redis[1]} did not answer PING"
    except OSError as exc:
        return f"Redis not reachable on {redis[0]}:{redis[1]}: {type(exc).__name__}"


def celery_executor_problem() -> str | None:
    """Why the CeleryExecutor cannot be imported, or None.

    celery 5.7.0 broke apache-airflow-providers-celery 3.26.0 (no `retry`): the stack would
    start and then never run a task, so this is checked before anything is started.
    """
    probe = "import airflow.providers.celery.executors.celery_executor_utils"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if not out.returncode:
        return None
    from importlib.metadata import version

    last = (out.stderr.strip().splitlines() or ["no output"])[-1]
    return (
        f"the CeleryExecutor cannot be imported with celery {version('celery')} and "
        f"apache-airflow-providers-celery {version('apache-airflow-providers-celery')}: "
        f"{last}. Pin celery<5.7 in requirements.in (docs/operations.md, known issues)."
    )


def compose_executor_env(meta_url: str, broker_url: str) -> dict[str, str]:
    """docker-compose.yml's executor settings with its service hosts swapped for local ones."""
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    common = compose["x-airflow-common"]["environment"]
    wanted = {k: str(v) for k, v in common.items() if k.startswith("AIRFLOW__CELERY__")}
    wanted["AIRFLOW__CORE__EXECUTOR"] = str(common["AIRFLOW__CORE__EXECUTOR"])
    if wanted["AIRFLOW__CORE__EXECUTOR"] != "CeleryExecutor":
        raise ValueError("docker-compose.yml no longer runs the CeleryExecutor")
    if not wanted["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://"):
        raise ValueError("docker-compose.yml's Celery broker is no longer Redis")
    if not wanted["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://"):
        raise ValueError("docker-compose.yml's Celery result backend is no longer PostgreSQL")
    wanted["AIRFLOW__CELERY__BROKER_URL"] = broker_url
    wanted["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + meta_url.replace("+psycopg2", "")
    wanted["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = meta_url
    return wanted


def pg_conn(url: str) -> str:
    """An Airflow connection (environment JSON) for a SQLAlchemy URL (`runtime.sql_engine`)."""
    return json.dumps({"conn_type": "postgres", "extra": {"sqlalchemy_url": url}})


class Api:
    """The REST API as the admin user; retries connection errors and 5xx (a busy machine)."""

    def __init__(self, url: str, password: str = PASSWORD) -> None:
        self.url = url
        self.password = password
        self.token: str | None = None

    def __call__(self, method: str, path: str, body: dict | None = None) -> Any:
        for attempt in range(5):
            try:
                if self.token is None:
                    self.token = self._call(
                        "POST", "/auth/token", {"username": "admin", "password": self.password}
                    )["access_token"]
                return self._call(method, path, body, self.token)
            except (TimeoutError, urllib.error.URLError) as exc:
                if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                    raise
                if attempt == 4:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")

    def _call(self, method: str, path: str, body: dict | None, token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        target = self.url + path  # loopback, a URL this module built
        req = urllib.request.Request(target, method=method, data=data, headers=headers)  # noqa: S310
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return json.loads(resp.read() or b"null")


@dataclass
class CeleryStack:
    """A running stack: its API, queue, logs and processes (stopped when the `with` ends)."""

    url: str
    api: Api
    queue: str
    workers: tuple[str, ...]
    logs: Path
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # start-up steps, seconds

    def wait(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """Poll `check` until truthy; fail at once if one of the stack's processes has exited
        (a dead scheduler would otherwise look like a slow run)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{' '.join(map(str, proc.args[:3]))} exited ({proc.returncode}); "
                        f"logs in {self.logs}"
                    )
            time.sleep(2)
        raise TimeoutError(f"{what} not within {timeout:.0f} s; logs in {self.logs}")

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def dag_known(self, dag_id: str) -> bool:
        try:
            self.api("GET", f"/api/v2/dags/{dag_id}")
            return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """A manual run of `dag_id` now; its run id."""
        body = {"logical_date": None, "conf": dict(conf or {})}
        return str(self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """The run once it has finished (success or failed)."""

        def finished() -> dict[str, Any] | None:
            run = self.run(dag_id, run_id)
            return run if run["state"] in ("success", "failed") else None

        return dict(self.wait(f"run {run_id} of {dag_id}", finished, timeout))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (paged: the API returns at most 100 at a time)."""
        out: list[dict[str, Any]] = []
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        while True:
            page = self.api("GET", f"{path}?limit=100&offset={len(out)}")
            out += page["task_instances"]
            if not page["task_instances"] or len(out) >= int(page["total_entries"]):
                return out


@contextlib.contextmanager
def celery_stack(
    home: Path,
    *,
    meta_url: str,
    s3_url: str,
    dag_ids: Sequence[str],
    env: Mapping[str, str] | None = None,
    workers: Sequence[str] = WORKERS,
    concurrency: int = 2,
    redis: tuple[str, int] = REDIS,
    timeout: float = 180.0,
) -> Iterator[CeleryStack]:
    """Start the stack under `home` on the empty metadata database `meta_url`; yield it once
    every component is up, the workers are ready and `dag_ids` are parsed and unpaused; stop
    every process on exit.

    `env` is the caller's part of the components' environment (connections, COMPLIANCE_*),
    applied over `compliance_dev.localenv.airflow_env(home, s3_url, ...)` and the executor
    settings. Scheduled runs are off (`use_job_schedule`): only runs the caller triggers run.
    `concurrency`: task slots per worker. Workers record their name as the task instances'
    hostname (`localenv.worker_hostname`), so a caller can tell where each task ran.
    """
    started = time.monotonic()
    logs = home / "logs"
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    for dag_id in dag_ids:
        link = dags / f"{dag_id}.py"
        if not link.exists():
            link.symlink_to(REPO_ROOT / "dags" / f"{dag_id}.py")
    port = free_port()
    queue = f"cj_{uuid.uuid4().hex[:10]}"
    full = airflow_env(home, s3_url, home / "unused.db")
    full.update(compose_executor_env(meta_url, f"redis://{redis[0]}:{redis[1]}/0"))
    full.update(
        {
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}/",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
            "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex,
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "compliance_dev.localenv.worker_hostname",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the runs the caller triggers
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # the log servers default to fixed ports (8793, 8794): parallel stacks would collide
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        }
    )
    full.update(env or {})
    af_home = Path(full["AIRFLOW_HOME"])
    af_home.mkdir(parents=True, exist_ok=True)
    (af_home / "simple_auth_manager_passwords.json.generated").write_text(
        json.dumps({"admin": PASSWORD})
    )
    url = f"http://127.0.0.1:{port}"
    stack = CeleryStack(url, Api(url), queue, tuple(workers), logs, full)
    try:
        migrate = start_group(["airflow", "db", "migrate"], logs / "migrate.log", full)
        stack.procs.append(migrate)
        try:
            rc = migrate.wait(timeout=240)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"airflow db migrate not within 240 s; see {logs}") from None
        stack.procs.remove(migrate)
        if rc:
            tail = (logs / "migrate.log").read_text()[-2000:]
            raise RuntimeError(f"airflow db migrate failed ({rc}): {tail}")
        stack.timings["db migrate"] = time.monotonic() - started

        for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
            stack.procs.append(start_group(["airflow", component], logs / f"{component}.log", full))
        for name in workers:
            worker_env = {
                **full,
                "COMPLIANCE_WORKER_NAME": name,
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            }
            cmd = ["airflow", "celery", "worker", "-H", f"{name}@%h", "-q", queue]
            cmd += ["--concurrency", str(concurrency), "--skip-serve-logs", "--without-gossip"]
            stack.procs.append(start_group(cmd, logs / f"worker-{name}.log", worker_env))

        wait_http(f"{url}/api/v2/monitor/health", stack.procs[0], timeout, logs / "api-server.log")
        for name in workers:
            log = logs / f"worker-{name}.log"
            stack.wait(f"worker {name}", lambda log=log: " ready." in log.read_text(), timeout)
        for dag_id in dag_ids:
            stack.wait(f"DAG {dag_id} parsed", lambda d=dag_id: stack.dag_known(d), timeout)
            stack.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        stack.timings["components up"] = time.monotonic() - started
        yield stack
    finally:
        stop_groups(stack.pids(), grace=10)
