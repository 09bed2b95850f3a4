"""Who the outbox tells and how patiently: sub-processors (R16.3) and recipients (R16.4) as
`Party`, the backoff / give-up / alert `Policy`, and where notice bodies and receipts live.

The policy's numbers are deployment settings (docs/operations.md, "Deletion notices"); they are
read from the `Settings.env` snapshot handed in (`Policy.from_env`), never from the process
environment, so a test or a job can run under any policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from compliance.core import workspace_layout
from compliance.core.datamap.model import DataMap
from compliance.core.hashing import keyed_hash
from compliance.core.workspace_layout import OUTBOX as OUTBOX
from compliance.deletion.targets import RECEIPTS as RECEIPTS

OPEN = ("pending", "sent", "failed", "not_configured")  # retried until final
ENV = {
    "base": "COMPLIANCE_NOTICE_BACKOFF_MINUTES",
    "cap": "COMPLIANCE_NOTICE_BACKOFF_CAP_HOURS",
    "give_up": "COMPLIANCE_NOTICE_GIVE_UP_DAYS",
    "alert": "COMPLIANCE_NOTICE_ALERT_DAYS",
}


class PolicyInvalid(ValueError):
    """An outbox setting in the environment is not a whole number in its range."""

    reason = "notice_policy_invalid"


@dataclass(frozen=True)
class Policy:
    """Backoff, give-up and alert age (docs/operations.md, "Deletion notices")."""

    backoff_base: timedelta = timedelta(minutes=15)
    backoff_cap: timedelta = timedelta(hours=24)
    give_up_after: timedelta = timedelta(days=30)
    alert_after: timedelta = timedelta(days=3)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Policy:
        """The policy a deployment set (`Settings.env`); defaults for what it did not set."""

        def number(key: str, default: int, low: int, high: int) -> int:
            raw = (env.get(ENV[key]) or "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise PolicyInvalid(f"{ENV[key]} must be a whole number (got {raw!r})") from None
            if not low <= value <= high:
                raise PolicyInvalid(f"{ENV[key]} must be between {low} and {high} (got {value})")
            return value

        return cls(
            backoff_base=timedelta(minutes=number("base", 15, 1, 24 * 60)),
            backoff_cap=timedelta(hours=number("cap", 24, 1, 24 * 7)),
            give_up_after=timedelta(days=number("give_up", 30, 1, 365)),
            alert_after=timedelta(days=number("alert", 3, 0, 365)),
        )

    def next_try(self, attempts: int, at: datetime) -> datetime:
        """`at + base * 2^(attempts - 1)`, at most `at + cap` (attempts counts this one)."""
        return at + min(self.backoff_base * 2 ** min(max(attempts - 1, 0), 20), self.backoff_cap)


@dataclass(frozen=True)
class Party:
    """A sub-processor (R16.3) or a recipient (R16.4), as the outbox sees it."""

    name: str
    kind: str  # "subprocessor" | "recipient"
    channel: str | None  # None: a recipient not told (`justification`)
    target: str | None
    categories: tuple[str, ...]
    give_up_after_days: int | None = None
    received: str | None = None
    justification: str | None = None

    @property
    def rule(self) -> str:
        return "R16.3" if self.kind == "subprocessor" else "R16.4"

    def give_up_after(self, policy: Policy) -> timedelta:
        if self.give_up_after_days:
            return timedelta(days=self.give_up_after_days)
        return policy.give_up_after


def parties(dm: DataMap) -> dict[str, Party]:
    """Every sub-processor and recipient of the data map, by name (names are unique)."""
    out = {
        sp.name: Party(
            sp.name,
            "subprocessor",
            sp.channel,
            sp.target,
            tuple(c.value for c in sp.categories),
            sp.give_up_after_days,
        )
        for sp in dm.subprocessors
    }
    for rc in dm.recipients:
        told = rc.channel is not None and rc.target
        out.setdefault(
            rc.name,
            Party(
                rc.name,
                "recipient",
                rc.channel if told else None,
                rc.target if told else None,
                tuple(c.value for c in rc.categories),
                rc.give_up_after_days,
                rc.received,
                None if told else (rc.impossible_or_disproportionate or "").strip(),
            ),
        )
    return out


def notice_key(request_pk: int, name: str) -> str:
    return workspace_layout.notice_key(request_pk, name)


def receipt_key(client_id: str, request_id: str) -> str:
    return workspace_layout.receipt_key(client_id, request_id, "delete")


def request_ref(hash_key: bytes, client_id: str, request_id: str) -> str:
    """The ledger's ref of a deletion request (as intake and finalize write it)."""
    return keyed_hash(hash_key, "request", f"{client_id}\x1f{request_id}\x1fdelete")
