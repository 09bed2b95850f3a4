"""The docker-compose deployment, checked statically (no Docker engine is needed or used).

docker-compose.yml is read with yaml.safe_load, which resolves the `<<: *anchor` merge keys, so
every service is checked as Compose will see it. `${VAR:-default}` is resolved the way Compose
does with an empty environment, i.e. these tests check the try-out defaults.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
REQUIREMENTS = REPO / "requirements.txt"
DATAMAP = REPO / "config" / "datamap.yaml"

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
}
REQUIRED_SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "crm-postgres", "s3"}
COMMANDS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-worker": "celery worker",
    "airflow-triggerer": "triggerer",
}
ONE_SHOT = {"airflow-init", "airflow-cli"}  # no healthcheck expected
# Pools the DAGs need, with the slots the deployment gives them. Pools found in dags/ as
# pool="..." literals are required on top of these.
REQUIRED_POOLS = {"crm_db": 4, "s3_scan": 8}
# Connection id -> conn_type the project's code expects (compliance.runtime / stores.sql).
CONNECTIONS = {"crm_db": "postgres", "compliance_db": "postgres", "aws_default": "aws"}
# Bind-mounted source directories (repo dir -> container dir); logs/ is created at run time.
MOUNTS = {
    "dags": "/opt/airflow/dags",
    "include": "/opt/airflow/include",
    "dev": "/opt/airflow/dev",  # demo tooling (compliance_dev) for this dev/demo stack only
    "plugins": "/opt/airflow/plugins",
    "config": "/opt/airflow/config",
    "logs": "/opt/airflow/logs",
}
CREATED_AT_RUNTIME = {"logs"}
SIMPLE_AUTH_ROLES = {"viewer", "user", "op", "admin"}
JWT = "AIRFLOW__API_AUTH__JWT_SECRET"
API_SECRET = "AIRFLOW__API__SECRET_KEY"

_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


class RequiredVariable(Exception):
    """A `${VAR:?message}` that Compose would refuse to start without."""


def interpolate(value: str) -> str:
    """Compose's interpolation with no variables set: defaults apply, `$$` is a literal `$`."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        op = match.group("op") or ""
        if op.endswith("?"):
            raise RequiredVariable(match.group("name"))
        return match.group("arg") if op.endswith("-") else ""

    return _INTERPOLATION.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def airflow_services(services: dict[str, dict[str, Any]]) -> list[str]:
    """The required Airflow services plus any other airflow-* service someone adds."""
    return sorted(AIRFLOW_SERVICES | {n for n in services if n.startswith("airflow-")})


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):  # ["KEY=value", ...]
        raw = dict(item.split("=", 1) for item in raw)
    return {k: "" if v is None else str(v) for k, v in raw.items()}


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of the service's bind mounts (named volumes left out)."""
    out = {}
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            source, target = vol.get("source", ""), vol["target"]
        else:
            source, target = vol.split(":")[:2]
        source = interpolate(source)
        if source.startswith((".", "/")):
            out[target] = source
    return out


def command_text(service: dict[str, Any]) -> str:
    cmd = service.get("command", "")
    return "\n".join(cmd) if isinstance(cmd, list) else str(cmd)


class _NoDuplicateKeysLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (as in Compose)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def test_compose_file_has_no_duplicate_keys():
    # yaml.safe_load silently keeps the last of two equal keys; Compose refuses the file.
    yaml.load(COMPOSE.read_text(), Loader=_NoDuplicateKeysLoader)  # a SafeLoader subclass


def test_interpolation_helper_matches_compose_rules():
    assert interpolate("${A:-x}/${B-y}/${C}/$${D}") == "x/y//${D}"
    with pytest.raises(RequiredVariable):
        interpolate("${A:?set A}")


# ---- services -----------------------------------------------------------------------------


def test_required_services_exist(services):
    missing = REQUIRED_SERVICES - set(services)
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_airflow_services_run_the_right_commands(services):
    for name, expected in COMMANDS.items():
        assert command_text(services[name]).strip() == expected, name


def test_airflow_services_use_the_image_built_from_the_local_dockerfile(services):
    for name in airflow_services(services):
        build = services[name].get("build")
        context = build.get("context") if isinstance(build, dict) else build
        assert context in {".", "./"}, f"{name} is not built from ./Dockerfile (build: {build!r})"


def test_long_running_services_have_healthchecks(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            continue
        test = (svc.get("healthcheck") or {}).get("test")
        assert test, f"{name} has no healthcheck"


def test_airflow_services_wait_for_a_successful_init(services):
    for name in COMMANDS:
        dep = (services[name].get("depends_on") or {}).get("airflow-init") or {}
        assert dep.get("condition") == "service_completed_successfully", name


def test_worker_can_be_scaled(services):
    worker = services["airflow-worker"]
    # A fixed container name or a published host port makes `--scale airflow-worker=N` fail.
    assert "container_name" not in worker
    assert not worker.get("ports")


# ---- Airflow configuration ------------------------------------------------------------------


def test_every_airflow_service_uses_the_celery_executor(services):
    for name in airflow_services(services):
        assert env(services[name]).get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name


@pytest.mark.parametrize("key", [JWT, API_SECRET])
def test_every_airflow_service_shares_one_secret(services, key):
    values = {name: env(services[name]).get(key) for name in airflow_services(services)}
    unset = sorted(name for name, value in values.items() if not value)
    assert not unset, f"{key} not set in {unset}"
    assert len(set(values.values())) == 1, f"{key} differs between services: {values}"
    value = next(iter(values.values()))
    assert "${" in value, f"{key} is not overridable from the environment / .env"
    # HS512 (Airflow's choice for a shared secret) wants at least 64 bytes of key.
    assert len(interpolate(value)) >= 64, f"{key}'s default is shorter than 64 characters"


def test_metadata_db_broker_and_execution_api_point_at_the_services(services):
    for name in airflow_services(services):
        e = env(services[name])
        db = urlsplit(e["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert db.scheme.startswith("postgresql") and db.hostname == "postgres", name
        result = urlsplit(e["AIRFLOW__CELERY__RESULT_BACKEND"])
        assert result.hostname == "postgres", name
        broker = urlsplit(e["AIRFLOW__CELERY__BROKER_URL"])
        assert broker.scheme == "redis" and broker.hostname == "redis", name
        api = urlsplit(e["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        assert (api.hostname, api.port, api.path) == ("airflow-apiserver", 8080, "/execution/")
    # ... and the API server really listens there.
    published = [str(p).split(":")[-1] for p in services["airflow-apiserver"].get("ports", [])]
    assert "8080" in published


def test_examples_off_and_new_dags_paused(services):
    for name in airflow_services(services):
        e = env(services[name])
        assert e.get("AIRFLOW__CORE__LOAD_EXAMPLES", "").lower() == "false", name
        assert e.get("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "").lower() == "true", name


def test_simple_auth_manager_users(services):
    e = env(services["airflow-apiserver"])
    assert e["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".SimpleAuthManager")
    users = dict(u.split(":") for u in e["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    assert users == {"admin": "admin", "compliance": "op", "auditor": "viewer"}
    assert set(users.values()) <= SIMPLE_AUTH_ROLES


# ---- code: mounts, PYTHONPATH, image ----------------------------------------------------------


def test_source_directories_are_mounted_into_every_airflow_service(services):
    for name in airflow_services(services):
        mounts = bind_mounts(services[name])
        for repo_dir, target in MOUNTS.items():
            assert target in mounts, f"{name} does not mount ./{repo_dir} at {target}"
            assert Path(mounts[target]).parts[-1] == repo_dir, (
                f"{name}: {target} <- {mounts[target]}"
            )


def test_include_is_on_pythonpath(services):
    for name in airflow_services(services):
        path = env(services[name]).get("PYTHONPATH", "").split(":")
        assert MOUNTS["include"] in path, f"{name}: PYTHONPATH={path}"
    # The image imports the package the same way (and works without the mounts).
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^ENV PYTHONPATH=\S*/opt/airflow/include\b", dockerfile, re.M)
    assert re.search(r"^COPY\b.*\binclude/?\s+/opt/airflow/include/?\s*$", dockerfile, re.M)


def test_dev_tooling_is_in_the_demo_stack_and_never_in_the_image(services):
    """compose is a dev/demo stack: `python -m compliance_dev world seed` must work in it. The
    production image carries the product only (include/), never dev/ (issue 17)."""
    for name in airflow_services(services):
        path = env(services[name]).get("PYTHONPATH", "").split(":")
        assert MOUNTS["dev"] in path, f"{name}: PYTHONPATH={path}"
    dockerfile = DOCKERFILE.read_text()
    code = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if re.search(r"\bdev/|compliance_dev", line)], code
    (pythonpath,) = re.findall(r"^ENV PYTHONPATH=(\S+)", dockerfile, re.M)
    assert "dev" not in pythonpath


def test_every_mounted_path_exists_in_the_repo(services):
    for name, svc in services.items():
        for target, source in bind_mounts(svc).items():
            rel = Path(source)
            if rel.parts and rel.parts[-1] in CREATED_AT_RUNTIME:
                continue
            assert (REPO / rel).is_dir(), f"{name} mounts {source} at {target}: no such directory"


def _base_image_version() -> tuple[str, str]:
    match = re.search(
        r"^FROM\s+apache/airflow:(?:slim-)?(\d+\.\d+\.\d+)-python(\d+\.\d+)\b",
        DOCKERFILE.read_text(),
        re.M,
    )
    assert match, "Dockerfile does not start FROM apache/airflow:<version>-python<x.y>"
    return match.group(1), match.group(2)


def test_dockerfile_airflow_version_equals_the_requirements_pin():
    pin = re.search(r"^apache-airflow==(\S+)\s*$", REQUIREMENTS.read_text(), re.M)
    assert pin, "requirements.txt does not pin apache-airflow"
    airflow, _python = _base_image_version()
    assert airflow == pin.group(1)


def test_dockerfile_python_matches_the_project():
    requires = re.search(
        r'^requires-python\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M
    )
    assert requires
    _airflow, python = _base_image_version()
    assert f">={python}" in requires.group(1).replace(" ", "")


def test_dockerfile_keeps_the_base_images_airflow():
    installs = [
        line for line in DOCKERFILE.read_text().splitlines() if re.search(r"\bpip install\b", line)
    ]
    assert installs, "Dockerfile installs nothing with pip"
    assert all('"apache-airflow==${AIRFLOW_VERSION}"' in line for line in installs), installs


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build_context():
    entries = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    missing = {".git", ".venv", ".demo", ".env", "tests/artifacts"} - entries
    assert not missing, f".dockerignore lacks {sorted(missing)}"


# ---- pools ---------------------------------------------------------------------------------


def _pools_used_by_dags() -> set[str]:
    pattern = re.compile(r"""\bpool\s*=\s*["']([\w.-]+)["']""")
    return {p for f in (REPO / "dags").rglob("*.py") for p in pattern.findall(f.read_text())}


def test_init_migrates_then_creates_the_pools_the_dags_use(services):
    script = command_text(services["airflow-init"])
    created = {
        name: int(slots) for name, slots in re.findall(r"airflow pools set (\S+) (\d+)", script)
    }
    for pool, slots in REQUIRED_POOLS.items():
        assert created.get(pool) == slots, f"airflow-init does not create pool {pool} ({slots})"
    missing = _pools_used_by_dags() - set(created)
    assert not missing, f"DAGs use pools airflow-init does not create: {sorted(missing)}"
    assert 0 <= script.find("db migrate") < script.find("pools set"), "pools before migration"
    # Without errexit a failed pool creation would still let the stack start.
    assert re.search(r"^\s*set -\w*e", script, re.M), "airflow-init script lacks `set -e`"


# ---- connections and compliance settings ---------------------------------------------------


def _connection(services: dict[str, dict[str, Any]], conn_id: str) -> dict[str, Any]:
    values = {
        env(services[n]).get(f"AIRFLOW_CONN_{conn_id.upper()}") for n in airflow_services(services)
    }
    assert len(values) == 1 and None not in values, f"AIRFLOW_CONN_{conn_id.upper()}: {values}"
    return json.loads(interpolate(values.pop()))


@pytest.mark.parametrize(("conn_id", "conn_type"), sorted(CONNECTIONS.items()))
def test_connections_are_json_with_the_expected_type(services, conn_id, conn_type):
    assert _connection(services, conn_id)["conn_type"] == conn_type


def test_crm_connection_points_at_the_demo_crm(services):
    conn = _connection(services, "crm_db")
    crm = services[conn["host"]]
    assert crm["image"].startswith("postgres:")
    crm_env = env(crm)
    assert (conn["login"], conn["password"], conn["schema"], int(conn["port"])) == (
        crm_env["POSTGRES_USER"],
        crm_env["POSTGRES_PASSWORD"],
        crm_env["POSTGRES_DB"],
        5432,
    )


def test_aws_connection_points_at_the_local_s3(services):
    endpoint = urlsplit(_connection(services, "aws_default")["extra"]["endpoint_url"])
    assert endpoint.hostname in services
    assert services[endpoint.hostname]["image"].startswith("motoserver/moto")
    assert endpoint.port == 5000


def test_every_connection_the_data_map_uses_is_defined(services):
    datamap = yaml.safe_load(DATAMAP.read_text())
    used = {s["connection"] for s in datamap.get("systems", {}).values()}
    used |= {s.get("connection", "aws_default") for s in datamap.get("stores", {}).values()}
    used.add(env(services["airflow-worker"]).get("COMPLIANCE_WORKSPACE_CONN", "aws_default"))
    for conn_id in sorted(used):
        _connection(services, conn_id)


def test_compliance_settings(services):
    for name in airflow_services(services):
        e = env(services[name])
        mounts = bind_mounts(services[name])
        assert e["COMPLIANCE_DATAMAP"] == "/opt/airflow/config/datamap.yaml", name
        assert (REPO / mounts["/opt/airflow/config"] / "datamap.yaml").is_file()
        assert e["COMPLIANCE_RETENTION"] == "/opt/airflow/config/retention.yaml", name
        assert e["COMPLIANCE_WORKSPACE_BUCKET"] == "cj-compliance", name
        assert "COMPLIANCE_REQUIRE_SECRETS" in e, name
        # The hash key comes from the environment / .env; no key is written into the file.
        key = re.fullmatch(r"\$\{COMPLIANCE_HASH_KEY(?::?([-?])(.*))?\}", e["COMPLIANCE_HASH_KEY"])
        assert key, f"{name}: COMPLIANCE_HASH_KEY is not taken from the environment"
        assert key.group(1) == "?" or not key.group(2), f"{name}: a hash key is baked in"
