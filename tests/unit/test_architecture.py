"""The rules of the house (issue 17), each a test that fails and names the offender.

Read from the source with `ast`: nothing of the product is imported, so a rule holds whatever a
module does at import time, and a broken module is reported as such rather than hiding the rest.
docs/architecture.md explains the layers; this file is what keeps them true.

- no import cycles among the modules of `include/compliance` (function-level imports count;
  imports under `if TYPE_CHECKING:` do not run and are left out of the cycle check);
- layers: a module imports its own package or a lower rank, never a higher rank nor another
  package of the same rank (`LAYERS`);
- Airflow is imported only in dags/, plugins/ and `compliance/runtime.py`;
- the environment is read only by `compliance/core/settings.py`;
- the product never imports the dev tooling (`compliance_dev`);
- no product module is over `MAX_LINES` lines;
- DAG files stay thin: `dags/deletion_requests.py` within `MAX_DELETION_DAG_LINES`, and every
  task body of the DAGs in `ONE_LINE_TASK_DAGS` is one statement (a docstring aside).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INCLUDE = REPO / "include"
PRODUCT = INCLUDE / "compliance"
DAGS = REPO / "dags"

# Package (second part of the module name) -> rank. A module may import its own package or a
# lower rank. `runtime` and `__main__` are the entry points: one layer, the top.
LAYERS: dict[str, int] = {
    "core": 0,
    "requests": 1,
    "deletion": 2,
    "stats": 2,
    "inventory": 2,
    "retention": 3,
    "access": 4,
    "offboarding": 5,
    "desk": 5,
    "jobs": 6,
    "runtime": 7,
    "__main__": 7,
}
ENTRY_POINTS = {"runtime", "__main__"}  # one group: they may import each other
AIRFLOW_ALLOWED = {"compliance.runtime"}  # in include/; dags/ and plugins/ are not scanned
ENVIRONMENT_READER = "compliance.core.settings"
ENVIRONMENT_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
MAX_LINES = 500
MAX_DELETION_DAG_LINES = 80
# The DAGs whose task bodies must be one statement (`return jobs_x.f(runtime.context(), ...)`).
# Every DAG is meant to be here (issue 17); extend the list when a DAG is converted, never shrink.
ONE_LINE_TASK_DAGS = [
    "deletion_requests",
    "access_reports",
    "retention_sweep",
    "data_inventory",
    "deadline_watchdog",
    "request_extension",
    "statistics_reports",
    "client_offboarding",
    "log_index",
    "client_callbacks",
]


@dataclass(frozen=True)
class Import:
    target: str  # the module imported (or the package, when the name is not a module)
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`: not run, so no cycle


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(REPO))

    @property
    def package(self) -> str:
        """`core` for compliance.core.x, `runtime` for compliance.runtime, `` for the root."""
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def product() -> dict[str, Module]:
    """Every module of the product, by dotted name."""
    out = {}
    for path in sorted(PRODUCT.rglob("*.py")):
        name = _module_name(path, INCLUDE)
        out[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    found.update(id(n) for n in ast.walk(child))
    return found


def imports(module: Module, known: set[str] | frozenset[str] = frozenset()) -> Iterator[Import]:
    """Every import of `module`, at any depth (function bodies included), resolved to a module
    name: `from a.b import c` is `a.b.c` when that is a module of `known`, else `a.b`."""
    type_only = _type_checking_nodes(module.tree)
    is_package = module.path.name == "__init__.py"
    for node in ast.walk(module.tree):
        guarded = id(node) in type_only
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, guarded)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.name.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield Import(sub if sub in known else base, node.lineno, guarded)


@cache
def graph() -> dict[str, dict[str, int]]:
    """Runtime import edges among product modules: module -> {imported module: line}."""
    mods = product()
    known = set(mods)
    edges: dict[str, dict[str, int]] = {name: {} for name in mods}
    for name, module in mods.items():
        for imp in imports(module, known):
            if imp.target in known and imp.target != name and not imp.type_only:
                edges[name].setdefault(imp.target, imp.line)
    return edges


def find_cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(comp, edges) for comp in components]


def _cycle_in(component: list[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return [*component, component[0]]


def _describe_cycle(cycle: list[str], edges: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {edges[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


# --------------------------------------------------------------------------- the checker itself


def test_the_cycle_finder_finds_and_names_a_cycle():
    edges = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    (cycle,) = find_cycles(edges)
    assert cycle == ["a", "b", "c", "a"]
    assert _describe_cycle(cycle, edges) == "a (line 1) -> b (line 2) -> c (line 3) -> a"
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_imports_are_found_at_every_depth_and_resolved():
    src = (
        "from typing import TYPE_CHECKING\n"
        "from compliance.core import alerts\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    from compliance.jobs import x\n"
        "def f():\n"
        "    import compliance.access.render\n"
    )
    module = Module("compliance.core.m", PRODUCT / "core" / "m.py", ast.parse(src))
    known = {"compliance.core.alerts", "compliance.core.sibling"}
    found = {(i.target, i.type_only) for i in imports(module, known)}
    assert found == {
        ("typing", False),
        ("compliance.core.alerts", False),
        ("compliance.core.sibling", False),
        ("compliance.jobs", True),
        ("compliance.access.render", False),
    }


# --------------------------------------------------------------------------- the rules


def test_product_parses():
    assert "compliance.runtime" in product() and "compliance.core.settings" in product()


def test_no_import_cycles():
    edges = graph()
    cycles = find_cycles(edges)
    assert not cycles, "import cycles (module (line of the import) -> ...):\n" + "\n".join(
        f"  {_describe_cycle(c, edges)}" for c in cycles
    )


def _rank(package: str) -> int | None:
    return LAYERS.get(package)


def test_layers_import_only_downwards():
    mods = product()
    known = set(mods)
    bad = []
    for module in mods.values():
        own = module.package
        if own == "":  # the root package: its version string only
            continue
        if own not in LAYERS:
            bad.append(f"{module.rel}: package {own!r} has no rank in LAYERS")
            continue
        for imp in imports(module, known):
            parts = imp.target.split(".")
            if parts[0] != "compliance" or len(parts) < 2:
                continue  # the standard library, a dependency, or the root package
            target = parts[1]
            if target == own or (own in ENTRY_POINTS and target in ENTRY_POINTS):
                continue
            rank, mine = _rank(target), LAYERS[own]
            if rank is None:
                bad.append(f"{module.rel}:{imp.line} imports unranked package {imp.target}")
            elif rank > mine:
                bad.append(
                    f"{module.rel}:{imp.line} ({own}, rank {mine}) imports {imp.target} "
                    f"(higher: {target}, rank {rank})"
                )
            elif rank == mine:
                bad.append(
                    f"{module.rel}:{imp.line} ({own}, rank {mine}) imports {imp.target} "
                    f"(another package of the same rank: move what is shared down)"
                )
    assert not bad, "layering violations:\n" + "\n".join(f"  {b}" for b in sorted(bad))


def _all_include_modules() -> Iterator[Module]:
    for path in sorted(INCLUDE.rglob("*.py")):
        name = _module_name(path, INCLUDE)
        yield Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)))


def test_airflow_only_in_dags_plugins_and_runtime():
    bad = [
        f"{module.rel}:{imp.line} imports {imp.target}"
        for module in _all_include_modules()
        if module.name not in AIRFLOW_ALLOWED
        for imp in imports(module)
        if imp.target.split(".")[0] == "airflow"
    ]
    assert not bad, "Airflow imported outside dags/, plugins/, compliance/runtime.py:\n" + (
        "\n".join(f"  {b}" for b in bad)
    )


def _environment_reads(module: Module) -> Iterator[str]:
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT_NAMES:
            yield f"{module.rel}:{node.lineno} uses .{node.attr}"
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            for alias in node.names:
                if alias.name in ENVIRONMENT_NAMES:
                    yield f"{module.rel}:{node.lineno} imports os.{alias.name}"


def test_only_settings_reads_the_environment():
    bad = [
        hit
        for name, module in product().items()
        if name != ENVIRONMENT_READER
        for hit in _environment_reads(module)
    ]
    assert not bad, f"environment read outside {ENVIRONMENT_READER} (use Settings):\n" + (
        "\n".join(f"  {b}" for b in bad)
    )


def test_only_the_sql_store_builds_engines():
    """Every engine hides its statements' parameters (identities) from error messages
    (`core.stores.sql.engine_from_url`, `scratch_engine`): one place builds them."""
    bad = [
        f"{module.rel}:{node.lineno}"
        for name, module in product().items()
        if name != "compliance.core.stores.sql"
        for node in ast.walk(module.tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "create_engine"
    ]
    assert not bad, "create_engine outside compliance.core.stores.sql:\n" + "\n".join(bad)


def test_the_product_never_imports_the_dev_tooling():
    bad = []
    for module in product().values():
        for imp in imports(module):
            if imp.target.split(".")[0] == "compliance_dev":
                bad.append(f"{module.rel}:{imp.line} imports {imp.target}")
        for node in ast.walk(module.tree):  # importlib.import_module("compliance_dev...")
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.split(".")[0] == "compliance_dev"
            ):
                bad.append(f"{module.rel}:{node.lineno} names {node.value!r}")
    assert not bad, "the product imports compliance_dev (dev/):\n" + "\n".join(
        f"  {b}" for b in bad
    )


def test_no_product_module_over_the_limit():
    sizes = {
        module.rel: len(module.path.read_text(encoding="utf-8").splitlines())
        for module in product().values()
    }
    bad = sorted((n, rel) for rel, n in sizes.items() if n > MAX_LINES)
    assert not bad, f"modules over {MAX_LINES} lines (split by concern):\n" + "\n".join(
        f"  {rel}: {n}" for n, rel in reversed(bad)
    )


# --------------------------------------------------------------------------- DAG files


def test_the_deletion_dag_is_short():
    path = DAGS / "deletion_requests.py"
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_DELETION_DAG_LINES, (
        f"dags/deletion_requests.py has {n} lines (at most {MAX_DELETION_DAG_LINES}): the "
        "orchestration belongs in compliance.jobs"
    )


def _is_task(decorator: ast.expr) -> bool:
    """`@task`, `@task.x`, `@task(...)`, `@task.x(...)`."""
    node = decorator.func if isinstance(decorator, ast.Call) else decorator
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id == "task"


def fat_tasks(source: str) -> list[tuple[str, int, int]]:
    """(task name, line, statements) of every task whose body is more than one statement."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            _is_task(d) for d in node.decorator_list
        ):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                body = body[1:]  # a docstring is welcome
            if len(body) != 1:
                out.append((node.name, node.lineno, len(body)))
    return out


def test_the_task_body_checker():
    src = (
        "@task\ndef a(x):\n    'why'\n    return jobs.a(runtime.context(), x)\n"
        "@task.branch(x=1)\ndef b():\n    y = 1\n    return y\n"
        "@other\ndef c():\n    y = 1\n    return y\n"
    )
    assert fat_tasks(src) == [("b", 6, 2)]


@pytest.mark.parametrize("dag", ONE_LINE_TASK_DAGS)
def test_task_bodies_are_one_statement(dag):
    path = DAGS / f"{dag}.py"
    fat = fat_tasks(path.read_text(encoding="utf-8"))
    assert not fat, (
        f"dags/{dag}.py: task bodies must be one statement "
        "(`return jobs_x.task(runtime.context(), ...)`):\n"
        + "\n".join(f"  {name} (line {line}): {n} statements" for name, line, n in fat)
    )
