"""The watchdog's view of the legal-hold registry (R19): holds about to end, and broken rows.

A hold that ends lets the next deletion run erase what it kept (a `partial` request completes,
a deferred one is erased): staff get a warning 7 days before (`holds.EXPIRY_WARNING`), to renew
the hold (a new record: a `law_enforcement_hold` lapses 90 days after it was placed) or let it
go. A hold whose exception code is not one of R19's, or whose scope the data map does not know,
is honoured conservatively by deletion and retention (`compliance.requests.holds`) but must be
fixed in
the registry: the watchdog alerts on it on every run until it is.

Lines name the registry row (its key), the client, the scope, the code and the end date; never
the consumer (a consumer hold says "consumer"), never the registry's free-text reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from compliance.core.alerts import RUNBOOK, Alert
from compliance.core.datamap.model import DataMap
from compliance.core.outputs import put_json
from compliance.requests import holds

EXPIRING = "expiring"
INVALID_CODE = holds.INVALID_CODE
INVALID_SCOPE = holds.INVALID_SCOPE


@dataclass(frozen=True)
class HoldFinding:
    kind: str  # expiring | invalid_hold_code | invalid_hold_scope
    system: str
    hold: str | None  # the registry row's key
    client_id: str
    extent: str  # "client-wide" or "consumer"
    scope: str
    exception: str  # an R19 code, or invalid_hold_code (the raw text stays in the registry)
    until: str | None
    lapse: bool  # `until` is the 90-day law-enforcement lapse

    def line(self) -> str:
        where = f"{self.system} hold {self.hold or '?'} (client {self.client_id}, {self.extent})"
        if self.kind == EXPIRING:
            why = " (90-day law-enforcement lapse; renew with a new record)" if self.lapse else ""
            return (
                f"- {where}: scope {self.scope}, {self.exception}, ends {self.until}{why}; the "
                "next deletion run then erases what it keeps"
            )
        if self.kind == INVALID_CODE:
            return (
                f"- {where}: the exception code is not one of R19's; honoured (scope "
                f"{self.scope} kept) until the registry row is fixed"
            )
        return (
            f"- {where}: scope {self.scope!r} is not a table or store of the data map; the whole "
            "request is deferred until the registry row is fixed"
        )


def _scope_known(dm: DataMap, system: str, scope: str) -> bool:
    return holds.known_scope(dm, system, scope)


def check(
    dm: DataMap, engines: dict[str, Engine], now: datetime, last_check: datetime | None = None
) -> list[HoldFinding]:
    """Holds ending within 7 days (each reported once: on the first run inside the window, or
    every run when no last check is known), and every active hold with an invalid code or an
    unknown scope (every run)."""
    out: list[HoldFinding] = []
    for sname, system in sorted(dm.systems.items()):
        if system.holds is None:
            continue
        active = holds.active_holds(engines[sname], system, now)
        soon = set(map(id, holds.expiring(active, now)))
        for h in active:
            kinds = []
            if id(h) in soon:
                start = h.expires_at - holds.EXPIRY_WARNING
                if last_check is None or holds.naive_utc(start) > holds.naive_utc(last_check):
                    kinds.append(EXPIRING)
            if not h.valid:
                kinds.append(INVALID_CODE)
            if not _scope_known(dm, sname, h.scope):
                kinds.append(INVALID_SCOPE)
            out += [
                HoldFinding(
                    kind,
                    sname,
                    h.ref,
                    h.client_id,
                    "client-wide" if h.client_wide else "consumer",
                    h.scope if _scope_known(dm, sname, h.scope) else "(unknown)",
                    h.code,
                    h.expires_at.isoformat() if h.expires_at else None,
                    h.lapses,
                )
                for kind in kinds
            ]
    return out


def report_key(day: str) -> str:
    return f"deadlines/{day}/holds.json"


def write(s3: Any, bucket: str, day: str, found: list[HoldFinding]) -> dict[str, Any]:
    """Store the findings beside the deadline report; return the summary (counts, key, lines:
    registry keys, clients and scopes, no consumer) the notify step sends."""
    key = report_key(day)
    put_json(s3, bucket, key, {"as_of": day, "holds": [asdict(f) for f in found]})
    by_kind: dict[str, int] = {}
    for f in found:
        by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
    return {
        "day": day,
        "key": key,
        "findings": len(found),
        "by_kind": dict(sorted(by_kind.items())),
        "lines": [f.line() for f in found],
    }


def digest(summary: dict[str, Any]) -> Alert | None:
    """One message for `write`'s summary (None when nothing to say)."""
    if not summary.get("findings"):
        return None
    ending = summary["by_kind"].get(EXPIRING, 0)
    broken = summary["findings"] - ending
    body = [
        f"Legal holds (R19) as of {summary['day']}: {ending} ending within 7 days, "
        f"{broken} to fix in the registry.",
        "",
        *summary["lines"],
        "",
        "A hold that ends lets the next deletion run erase what it kept (R16.2, R21).",
        f"What to do: {RUNBOOK}, section 'Legal hold alerts'.",
    ]
    subject = f"[compliance] legal holds {summary['day']}: {ending} ending, {broken} invalid"
    return Alert(subject, "\n".join(body), "hold")
