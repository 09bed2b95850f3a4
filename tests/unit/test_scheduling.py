"""The suite's xdist scheduling (tests/scheduling.py): whole files, long ones first, the demo's
readers as one unit. It changes where and when tests run, never which."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import pytest

from tests import scheduling
from tests.conftest import REPO


def test_every_listed_file_exists() -> None:
    for path in (*scheduling.DEMO_READERS, *scheduling.LONG):
        assert (REPO / path).is_file(), path


class _Scheduler(scheduling.LongestFirst):
    """The scheduler without a pytest session: only the state its methods below read."""

    def __init__(self, scopes: tuple[str, ...] = (), node: object = None) -> None:
        self.workqueue = OrderedDict((s, {f"{s}::t": False}) for s in scopes)
        self.assigned_work: dict = {}
        self.registered_collections = {node: [f"{s}::t" for s in scopes]}


class _Node:
    def __init__(self) -> None:
        self.sent: list[int] = []

    def send_runtest_some(self, indexes: list[int]) -> None:
        self.sent += indexes


def test_the_demo_readers_are_one_unit_and_other_files_their_own() -> None:
    split = _Scheduler()._split_scope
    assert {split(f"{path}::test_x") for path in scheduling.DEMO_READERS} == {scheduling.DEMO_UNIT}
    assert split("tests/unit/test_logs.py::test_x[a::b]") == "tests/unit/test_logs.py"


def test_units_go_out_demo_first_then_long_files_then_slow_suites_then_the_rest() -> None:
    scopes = (
        "tests/unit/test_many.py",
        "tests/e2e/test_a.py",
        "tests/e2e/test_celery_run.py",
        "tests/unit/test_other.py",
        scheduling.DEMO_UNIT,
        "tests/reliability/test_b.py",
    )
    node = _Node()
    fake = _Scheduler(scopes, node)
    while fake.workqueue:
        fake._assign_work_unit(node)
    assert [scopes[i] for i in node.sent] == [
        scheduling.DEMO_UNIT,
        "tests/e2e/test_celery_run.py",
        "tests/e2e/test_a.py",
        "tests/reliability/test_b.py",
        "tests/unit/test_many.py",
        "tests/unit/test_other.py",
    ]


def test_a_file_reading_the_demo_must_be_listed() -> None:
    listed = SimpleNamespace(nodeid="tests/reliability/test_leaks.py::t", fixturenames=["demo"])
    stray = SimpleNamespace(nodeid="tests/e2e/test_new.py::t", fixturenames=["s3", "demo"])
    other = SimpleNamespace(nodeid="tests/e2e/test_other.py::t", fixturenames=["s3"])
    scheduling.check_demo_readers([listed, other])  # type: ignore[list-item]
    with pytest.raises(pytest.UsageError, match=r"tests/e2e/test_new\.py"):
        scheduling.check_demo_readers([listed, stray, other])  # type: ignore[list-item]


def test_only_loadfile_gets_the_scheduler() -> None:
    def config(dist: str) -> SimpleNamespace:
        return SimpleNamespace(getvalue=lambda name: dist)

    assert scheduling.make_scheduler(config("load"), None) is None  # type: ignore[arg-type]
