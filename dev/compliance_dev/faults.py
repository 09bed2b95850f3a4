"""Fault injection (dev code): crash a job at a named checkpoint, chosen by configuration.

The jobs announce their checkpoints through `compliance.core.checkpoints` (after a SQL chunk
commits, between a log object's PUT and its version clean-up, after receipts are written but
before requests are closed...). `enable()` installs this module's hook there; the reliability
tests (tests/reliability/) then set COMPLIANCE_FAULTS to make one of them raise `InjectedCrash`,
rerun the job and compare the final state with a clean run's.

    COMPLIANCE_FAULTS="erase_sql.after_chunk:table=messages;logs.after_object:n=1"

Each `;`-separated rule is a checkpoint name, optionally followed by `:` and `key=value` pairs
separated by `,`. A rule fires when the checkpoint's context has every key with that value (as
text); `hit=N` fires at the N-th such passage in this process instead of the first. A rule fires
once, so an in-process retry of the task gets past it, as a retry after a real crash would.

Tests may also `install` a callable on a checkpoint (e.g. to drop a database connection
mid-transaction). The product never imports this module: without `enable()` nothing listens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

ENV = "COMPLIANCE_FAULTS"


class InjectedCrash(BaseException):
    """A simulated process death at a checkpoint.

    A BaseException, so that `except Exception` handlers (a sub-processor channel's, say) cannot
    swallow it, just as they could not swallow a SIGKILL; Airflow fails the task as for a crash.
    """

    def __init__(self, point: str, rule: str) -> None:
        super().__init__(f"injected crash at {point} ({ENV} rule {rule!r})")
        self.point = point
        self.rule = rule


@dataclass
class Rule:
    """One parsed rule of COMPLIANCE_FAULTS."""

    text: str
    point: str
    match: dict[str, str] = field(default_factory=dict)
    hit: int = 1
    seen: int = 0

    def matches(self, point: str, ctx: dict[str, Any]) -> bool:
        return point == self.point and all(
            k in ctx and str(ctx[k]) == v for k, v in self.match.items()
        )


def parse(text: str) -> list[Rule]:
    """Rules from the variable's text; a malformed rule is refused (a typo must not pass)."""
    rules = []
    for raw in text.split(";"):
        raw = raw.strip()
        if not raw:
            continue
        point, _, args = raw.partition(":")
        rule = Rule(raw, point.strip())
        if not rule.point:
            raise ValueError(f"{ENV}: rule {raw!r} names no checkpoint")
        for pair in filter(None, (p.strip() for p in args.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{ENV}: {pair!r} in rule {raw!r} is not key=value")
            if key.strip() == "hit":
                if not value.strip().isdigit() or int(value) < 1:
                    raise ValueError(f"{ENV}: hit must be a positive integer in rule {raw!r}")
                rule.hit = int(value)
            else:
                rule.match[key.strip()] = value.strip()
        rules.append(rule)
    return rules


_state: tuple[str, list[Rule]] | None = None  # (the variable's text, its rules with counters)
_hooks: dict[str, list[Callable[..., None]]] = {}


def _rules(text: str) -> list[Rule]:
    global _state
    if _state is None or _state[0] != text:
        _state = (text, parse(text))
    return _state[1]


def reset() -> None:
    """Forget hit counters (each test scenario starts afresh)."""
    global _state
    _state = None


def enable() -> None:
    """Listen to the jobs' checkpoints in this process (idempotent)."""
    from compliance.core import checkpoints

    checkpoints.add_hook(_on_checkpoint)


def _on_checkpoint(point: str, ctx: dict[str, Any]) -> None:
    checkpoint(point, **ctx)


def checkpoint(point: str, **ctx: Any) -> None:
    """Crash here if COMPLIANCE_FAULTS says so; call hooks installed on this point."""
    for hook in _hooks.get(point, ()):
        hook(**ctx)
    text = os.environ.get(ENV)
    if not text:
        return
    for rule in _rules(text):
        if rule.matches(point, ctx):
            rule.seen += 1
            if rule.seen == rule.hit:
                raise InjectedCrash(point, rule.text)


@contextmanager
def install(point: str, hook: Callable[..., None]) -> Iterator[None]:
    """Call `hook(**ctx)` at every passage of `point` while the block runs (tests only)."""
    _hooks.setdefault(point, []).append(hook)
    try:
        yield
    finally:
        _hooks[point].remove(hook)
        if not _hooks[point]:
            del _hooks[point]
