"""The embedded local stack: SQLite CRM + SQLite Airflow metadata + moto S3, under one folder.

`make demo`, `make up` and the end-to-end tests all build their environment here, so the three
cannot drift apart. Every process started here gets its own process group, and `stop_group`
escalates to SIGKILL after a grace period (the scheduler ignores SIGTERM for a while).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from compliance.core.settings import REPO_ROOT


def airflow_env(home: Path, s3_url: str, crm_url_path: Path) -> dict[str, str]:
    """Environment for Airflow commands over the local stack rooted at `home`."""
    env = dict(os.environ)
    # Started from pytest, the components would inherit unit-test mode, in which every process
    # makes up its own fernet key and JWT secret (tasks and triggers then fail to authenticate).
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '')}"  # standalone spawns `airflow ...`
    env.update(
        {
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_CRM_DB": json.dumps({"conn_type": "sqlite", "host": str(crm_url_path)}),
            "AIRFLOW_CONN_COMPLIANCE_DB": json.dumps(
                {"conn_type": "sqlite", "host": str(home / "compliance.db")}
            ),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                {
                    "conn_type": "aws",
                    "login": "testing",
                    "password": "testing",
                    "extra": {"endpoint_url": s3_url, "region_name": "us-east-1"},
                }
            ),
            "AIRFLOW_CONN_COMPLIANCE_API_" + API_KEY.upper(): json.dumps(
                {
                    "conn_type": "generic",
                    "login": API_KEY,
                    "password": API_SECRET,
                    "extra": {"client_ids": API_TENANTS, "rate_limit_per_minute": 600},
                }
            ),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "COMPLIANCE_DATAMAP": str(REPO_ROOT / "config" / "datamap.yaml"),
            "COMPLIANCE_RETENTION": str(REPO_ROOT / "config" / "retention.yaml"),
            "COMPLIANCE_WORKSPACE_BUCKET": "cj-compliance",
            "COMPLIANCE_HASH_KEY": "local-demo-key-" + home.name,
            "PYTHONPATH": os.pathsep.join(str(REPO_ROOT / d) for d in ("include", "dev")),
            # `airflow dags test` crashes on DAGs with a deadline on 3.3.2 (apache/airflow#73428);
            # `ui_env` turns them back on for a real scheduler. See compliance_alerts.
            "COMPLIANCE_DEADLINE_ALERTS": "off",
        }
    )
    return env


def start_group(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("ab")
    return subprocess.Popen(
        cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def stop_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `grace` seconds."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def stop_groups(pids: list[int], grace: float = 10.0) -> None:
    """`stop_group` for several groups at once: SIGTERM all, one shared grace, SIGKILL the rest.

    Stopping five Airflow components one after another would cost five grace periods.
    """
    groups = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            groups.append(os.getpgid(pid))
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(groups)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [g for g in alive if _group_alive(g)]
    for pgid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


S3_SERVER_ENV = {
    "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(256 * 1024),  # larger objects in files, as S3's disks
    "MALLOC_MMAP_THRESHOLD_": str(1024 * 1024),  # a large buffer goes back to the OS when freed
    "MALLOC_ARENA_MAX": "2",
}


def start_s3(home: Path) -> tuple[subprocess.Popen, str]:
    """Run a moto server in its own process group; wait until it answers.

    Its memory is counted in the benchmark's peak (issue 19), so it is made to hold what an
    S3 server's process would: moto keeps every object under its buffer size (5 MB) in
    memory and glibc keeps the high-water mark of freed request buffers, so the server held
    1.3-2.2 GB in every stage of the large run, statistics (no S3 at all) included. With
    `S3_SERVER_ENV` objects above 256 KB live in temporary files and freed buffers return."""
    port_file = home / "s3.url"
    port_file.unlink(missing_ok=True)
    proc = start_group(
        [sys.executable, "-m", "compliance_dev", "local-s3", "--port-file", str(port_file)],
        home / "logs" / "s3.log",
        env={**S3_SERVER_ENV, **os.environ},  # a value set on purpose wins
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().startswith("http"):
            return proc, port_file.read_text().strip()
        if proc.poll() is not None:
            raise RuntimeError(f"local S3 server exited; see {home / 'logs' / 's3.log'}")
        time.sleep(0.1)
    stop_group(proc.pid)
    raise RuntimeError("local S3 server did not start within 30 s")


def prepare_workspace(s3_url: str, bucket: str, datamap_path: Path) -> None:
    """The workspace bucket (inbox, outputs) and the SNS topics sub-processors listen on."""
    import boto3

    from compliance.core.datamap.validate import load_datamap
    from compliance.core.outputs import ensure_workspace
    from compliance.core.stores.s3 import s3_client

    ensure_workspace(s3_client(s3_url, access_key="testing", secret_key="testing"), bucket)
    sns = boto3.client(
        "sns",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    for sp in load_datamap(datamap_path).subprocessors:
        if sp.channel == "sns":
            sns.create_topic(Name=sp.target.rsplit(":", 1)[1])


class _Acknowledger(http.server.BaseHTTPRequestHandler):
    """Stands in for a sub-processor's deletion webhook: counts notices, acknowledges them."""

    count = 0

    def do_POST(self) -> None:  # http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))  # never logged
        type(self).count += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"acknowledged": true}')

    def log_message(self, *args: object) -> None:
        pass


def start_webhook_receiver(port: int) -> http.server.ThreadingHTTPServer | None:
    """Serve the demo map's webhook target in a thread; None if the port is taken."""
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Acknowledger)
    except OSError:
        return None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --------------------------------------------------------------------------- UI stack helpers
# Shared by `make up` (scripts/localstack.py) and the browser test, so the UI a person sees and
# the one the test drives are started the same way.

# Simple auth manager roles. Two staff users: destructive runs need a second person (four-eyes).
UI_USERS = {"admin": "admin", "compliance": "op", "reviewer": "op", "auditor": "viewer"}
UI_PASSWORDS = {  # local only
    "admin": "admin",
    "compliance": "compliance",
    "reviewer": "reviewer",
    "auditor": "auditor",
}
# The local client API credential (issue 18): key `demo`, acting for tenants 1 and 2. Local only;
# a deployment keeps each client's secret in an Airflow connection or its secrets backend.
API_KEY, API_SECRET, API_TENANTS = "demo", "local-demo-api-secret-not-for-production", ["1", "2"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (parallel runs must not share fixed ports)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ui_env(
    home: Path,
    s3_url: str,
    crm_path: Path,
    port: int,
    users: dict[str, str] | None = None,
    passwords: dict[str, str] | None = None,
) -> dict[str, str]:
    """`airflow_env` plus the API server on 127.0.0.1:`port` and pinned simple-auth users.

    The execution API URL moves with the port, or every task fails to reach it; the passwords
    file is pre-written so nobody has to read generated passwords from a log.
    """
    env = airflow_env(home, s3_url, crm_path)
    env["COMPLIANCE_DEADLINE_ALERTS"] = "on"  # a real scheduler evaluates them
    users = users or UI_USERS
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = ",".join(f"{u}:{r}" for u, r in users.items())
    env["AIRFLOW__API__PORT"] = str(port)
    env["AIRFLOW__API__HOST"] = "127.0.0.1"
    env["AIRFLOW__API__BASE_URL"] = f"http://127.0.0.1:{port}/"
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{port}/execution/"
    # One JWT secret for every component, or tasks fail with "Invalid auth token": on a fresh
    # AIRFLOW_HOME each process standalone starts would otherwise make up its own.
    env.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(64))
    env.setdefault("AIRFLOW__API__SECRET_KEY", secrets.token_urlsafe(32))
    # Tasks call the API server (SQLite behind it: one writer); 5 s is short on a busy machine.
    env.setdefault("AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT", "30")
    # The workers' and triggerer's log servers default to fixed ports (8793, 8794).
    env.setdefault("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", str(free_port()))
    env.setdefault("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", str(free_port()))
    af_home = Path(env["AIRFLOW_HOME"])
    af_home.mkdir(parents=True, exist_ok=True)
    (af_home / "simple_auth_manager_passwords.json.generated").write_text(
        json.dumps(passwords or UI_PASSWORDS)
    )
    return env


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float, log: Path) -> None:
    """Poll `url` until it answers 2xx; fail early (naming the log) if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback URL we built
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited (rc {proc.returncode}); see {log}") from None
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s; see {log}")


def worker_hostname() -> str:
    """`[core] hostname_callable` for several Celery workers on one host.

    Task instances record the hostname of the worker that ran them; with two workers on one
    machine both would report the same FQDN, so each worker process gets COMPLIANCE_WORKER_NAME.
    """
    return os.environ.get("COMPLIANCE_WORKER_NAME") or socket.getfqdn()


def seed_command(crm_path: Path, s3_url: str, scale: str = "small") -> list[str]:
    """The command that seeds the local world (demo and `make up` seed it the same way)."""
    from datetime import UTC, datetime

    today = datetime.now(UTC).date().isoformat()
    return [sys.executable, "-m", "compliance_dev", "world", "seed", "--db", f"sqlite:///{crm_path}",
            "--s3", s3_url, "--scale", scale, "--as-of", today]  # fmt: skip
