"""Named places inside the jobs where a test may step in: after a SQL chunk commits, between a
log object's PUT and its version clean-up, after receipts are written...

Why it exists: "rerun = converge" (docs/deletion.md) is a claim about every place a task can
die, not only between tasks. The jobs call `reached(point, **ctx)` there; in production no hook
is installed and that costs one empty loop. The crash tests install one from the dev package
(`compliance_dev.faults`), which raises a simulated crash at the point a scenario names. Context
values are table names, counts and S3 keys: never personal data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Hook = Callable[[str, dict[str, Any]], None]

_hooks: list[Hook] = []


def reached(point: str, **ctx: Any) -> None:
    """The job passes `point`; every installed hook sees it (and may raise)."""
    for hook in tuple(_hooks):
        hook(point, ctx)


def add_hook(hook: Hook) -> None:
    """Install `hook` once (installing it again changes nothing)."""
    if hook not in _hooks:
        _hooks.append(hook)


def remove_hook(hook: Hook) -> None:
    if hook in _hooks:
        _hooks.remove(hook)
