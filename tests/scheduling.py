"""Which xdist worker runs what: whole files, the long ones first, the demo's readers together.

`make test` runs `-n 2 --dist loadfile`. xdist hands files out most-tests-first. In this suite
those are fast unit files, so the files that take minutes (the Celery run, the browser, the
full demo) started last, and one worker finished them while the other idled. And the four
files that read the session-wide `demo` fixture (the full demo run, about 3 minutes on a slow
machine) were split across both workers, so the demo ran twice. Both cost CI minutes.

Here a file's rank decides when it goes out: the demo's readers first, as one unit so one
worker runs the demo once; then the files known to take minutes; then the end-to-end and
reliability suites; then the rest, in xdist's own order. The order never changes what runs,
only where and when; `check_demo_readers` (run at collection) keeps the demo list honest.
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling

DEMO_READERS = (  # every file with a test using the session `demo` fixture
    "tests/reliability/test_hostile_inbox.py",
    "tests/reliability/test_leaks.py",
    "tests/reliability/test_output_safety.py",
    "tests/reliability/test_workspace_layout.py",
)
DEMO_UNIT = "demo readers"
LONG = (  # single files of minutes each (pytest --durations on a 2-core machine)
    "tests/e2e/test_celery_run.py",
    "tests/unit/test_bench_harness.py",
    "tests/e2e/test_ui_browser.py",
    "tests/e2e/test_second_world.py",
)
SLOW_DIRS = ("tests/e2e/", "tests/reliability/")


def rank(scope: str) -> int:
    """Lower goes out first."""
    if scope == DEMO_UNIT:
        return 0
    if scope in LONG:
        return 1 + LONG.index(scope)
    if scope.startswith(SLOW_DIRS):
        return 1 + len(LONG)
    return 2 + len(LONG)


class LongestFirst(LoadFileScheduling):
    """`--dist loadfile` with the demo's readers as one unit and units handed out by `rank`."""

    def _split_scope(self, nodeid: str) -> str:
        scope = super()._split_scope(nodeid)
        return DEMO_UNIT if scope in DEMO_READERS else scope

    def _assign_work_unit(self, node: Any) -> None:
        first = min(self.workqueue, key=rank)  # min keeps xdist's order among equal ranks
        self.workqueue.move_to_end(first, last=False)
        super()._assign_work_unit(node)


def make_scheduler(config: pytest.Config, log: Any) -> LongestFirst | None:
    if config.getvalue("dist") != "loadfile":
        return None
    return LongestFirst(config, log)


def check_demo_readers(items: list[pytest.Item]) -> None:
    """A file that reads the demo but is not listed would run the demo a second time."""
    stray = sorted(
        {
            item.nodeid.split("::", 1)[0]
            for item in items
            if "demo" in getattr(item, "fixturenames", ())
            and item.nodeid.split("::", 1)[0] not in DEMO_READERS
        }
    )
    if stray:
        raise pytest.UsageError(f"tests/scheduling.py: add to DEMO_READERS: {', '.join(stray)}")
