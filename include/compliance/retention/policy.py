"""The retention policy: how long each piece of personal information is kept, and what then.

R27 asks for a disclosed period (or criteria) per category and a scheduled purge; R26 asks for
the shortest retention for children; R22 asks for the request log to be kept at least 24 months.
The policy file (`config/retention.yaml`, format in docs/retention.md) says all of this as rules,
each naming one target (a table, a category of columns, an object store or prefix, the request
log, or an area of the jobs' own workspace bucket: `core.workspace_layout`), a period, an action
and optional per-client overrides.

This module is the model (periods, rules, waves), rule resolution (what a rule touches) and the
planner's helpers; reading the file and checking it against the data map (every mistake at once)
is `policy_file`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

from compliance.core.datamap.graph import chain_to_consumer, time_path
from compliance.core.datamap.model import (
    NAME_PATTERN,
    BackupStore,
    Category,
    ColumnErase,
    DataMap,
    ExceptionCode,
    LogStore,
    RecordingStore,
    SqlSystem,
)

# The YAML line index and the Issue shape are the data map's: one way to say "where" for both
# files (private helpers imported on purpose rather than written twice).

RULES: dict[str, str] = {
    "yaml-syntax": "the file must be valid YAML holding a mapping",
    "structure": "keys and values must have the documented types and formats",
    "unknown-key": "only documented keys are allowed",
    "duplicate-name": "rule ids and YAML keys must be unique",
    "target": "a rule names exactly one target (table, category, store, prefix, request_log or "
    "workspace) that exists in the data map or the workspace layout",
    "action": "the action must fit the target (see docs/retention.md)",
    "period": "periods are positive: a number and a unit (days, weeks, months, years)",
    "overlap": "two rules may not delete the same table, expire the same consumers or "
    "de-identify the same column",
    "aggregate-identifying": "aggregates may only be grouped by columns that identify no one",
    "undated": "a table rule needs a time: the table's own time_column or a dated table up its "
    "relation chain (a table with neither cannot be expired by age)",
    "R22": "the request log is kept at least 24 months (R22)",
    "R26": "children's data has the shortest retention and never depends on activity (R26)",
    "exempt": "an exemption names one existing table, column, store or workspace area, with a "
    "reason",
    "uncovered": "every personal-information table, column, store and workspace area is covered "
    "by a rule or exempt with a reason (R27)",
    "exempt-covered": "an exempt item may not also be covered by a rule",
}

R22_MINIMUM_TEXT = "24 months"
AGGREGATE_TABLE = "cj_retention_aggregates"
IDENTIFYING = frozenset({Category.identifiers, Category.sensitive, Category.biometric})

# -- periods -------------------------------------------------------------------------------------

_PERIOD = re.compile(r"^\s*(\d{1,5})\s*(d|days?|w|weeks?|mo|months?|y|years?)\s*$", re.IGNORECASE)
# Comparing "13 months" with "400 days" depends on the date; every day of two leap cycles is
# checked, so "at least" and "shorter than" hold on every possible as-of date.
_SAMPLE_DAYS = [date(2024, 1, 1) + timedelta(days=i) for i in range(8 * 366)]


@dataclass(frozen=True)
class Period:
    """A calendar period: months (years are 12) then days (weeks are 7), as written."""

    months: int
    days: int
    text: str

    @classmethod
    def parse(cls, value: Any) -> Period:
        if isinstance(value, Period):
            return value
        if isinstance(value, bool) or not isinstance(value, str):
            raise ValueError(
                f"{value!r} is not a period: write a number and a unit, e.g. '90 days', "
                "'13 months', '3 years'"
            )
        match = _PERIOD.match(value)
        if not match:
            raise ValueError(
                f"{value!r} is not a period: write a number and a unit (days, weeks, months, "
                "years), e.g. '90 days', '13 months', '3 years'"
            )
        n, unit = int(match.group(1)), match.group(2).lower()
        if unit.startswith("mo"):
            return cls(n, 0, value.strip())
        if unit.startswith("y"):
            return cls(12 * n, 0, value.strip())
        if unit.startswith("w"):
            return cls(0, 7 * n, value.strip())
        return cls(0, n, value.strip())

    @property
    def is_zero(self) -> bool:
        return self.months == 0 and self.days == 0

    def before(self, day: date) -> date:
        """`day` minus this period (month ends clamp: 31 March - 1 month = 28/29 February)."""
        total = day.year * 12 + day.month - 1 - self.months
        year, month = divmod(total, 12)
        month += 1
        last = (date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)).day
        return date(year, month, min(day.day, last)) - timedelta(days=self.days)

    def cutoff(self, as_of: date) -> datetime:
        """Data whose time is before this moment is older than the period (naive UTC)."""
        return datetime.combine(self.before(as_of), time())

    def at_least(self, other: Period) -> bool:
        """True if this period is never shorter than `other`, whatever the as-of date."""
        mine, theirs = _cutoffs(self.months, self.days), _cutoffs(other.months, other.days)
        return all(a <= b for a, b in zip(mine, theirs, strict=True))

    def shorter_than(self, other: Period) -> bool:
        """True if this period is strictly shorter than `other` on every as-of date."""
        mine, theirs = _cutoffs(self.months, self.days), _cutoffs(other.months, other.days)
        return all(a > b for a, b in zip(mine, theirs, strict=True))

    def __str__(self) -> str:
        return self.text


@lru_cache(maxsize=256)
def _cutoffs(months: int, days: int) -> tuple[date, ...]:
    period = Period(months, days, "")
    return tuple(period.before(d) for d in _SAMPLE_DAYS)


R22_MINIMUM = Period.parse(R22_MINIMUM_TEXT)

PeriodValue = Annotated[Period, BeforeValidator(Period.parse), PlainSerializer(str)]


def _client_key(value: Any) -> Any:
    """A client id as the policy file spells it -> its text (any-CRM tenant ids: `17` and
    `"acme-east"` alike); compared in the tenant column's own type at the SQL boundary."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


ClientKey = Annotated[str, BeforeValidator(_client_key)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=63)]
RuleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
TableRef = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_]\w*\.[A-Za-z_]\w*$")]
ColumnRef = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_]\w*\.[A-Za-z_]\w*\.[A-Za-z_]\w*$")]
S3Url = Annotated[str, StringConstraints(pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.*$")]


class Action(StrEnum):
    delete = "delete"  # rows of a table, or objects of a store
    deidentify = "deidentify"  # listed columns (or a category's), per their data-map erase
    aggregate = "aggregate"  # count rows per client, month and `by` columns, then delete them
    expire_consumers = "expire_consumers"  # whole consumers, through erasure (children first)


class Wave(StrEnum):
    """The order a sweep runs in; rules of one wave never touch each other's rows."""

    minors = "minors"  # R26: children's consumers go first
    consumers = "consumers"  # other consumer expiry (inactivity)
    rows = "rows"  # row deletion and aggregation, the request log
    deidentify = "deidentify"  # column de-identification of the rows that remain
    objects = "objects"  # log partitions, backup snapshots, non-current versions


WAVE_ORDER = list(Wave)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class Aggregate(Strict):
    by: list[Name] = Field(default_factory=list)  # mapped, non-identifying columns
    into: Name = (
        AGGREGATE_TABLE  # created in the same database, so counts and deletes commit together
    )


class Rule(Strict):
    id: RuleId
    purpose: str = Field(min_length=1)  # R27: the disclosed purpose the period serves
    # the target: exactly one of these
    table: TableRef | None = None  # "system.table"
    category: Category | None = None  # columns of this category, in every table (deidentify)
    store: Name | None = None  # a log or backup store of the data map
    prefix: S3Url | None = None  # "s3://bucket/prefix/": a store's bucket and prefix
    request_log: bool = False  # the state database's request log (cj_requests, R22)
    workspace: Name | None = None  # an area of the workspace bucket (core.workspace_layout)
    # workspace rules: what the period counts from; `link_expiry` (bundles) = the download
    # link's expiry, so the period is the grace after it
    after: Literal["written", "link_expiry"] | None = None
    system: Name | None = None  # limits a category rule to one SQL system
    action: Action
    period: PeriodValue
    overrides: dict[ClientKey, PeriodValue] = Field(default_factory=dict)  # client id -> period
    # expire_consumers
    consumers: Literal["all", "minors"] = "all"
    since: Literal["created", "last_activity"] | None = None
    activity: list[Name] | None = None  # tables whose rows count as activity (default: all)
    lifetime: list[Name] = Field(default_factory=list)  # tables kept as long as the consumer
    # deidentify (table rules)
    columns: list[Name] = Field(default_factory=list)
    # aggregate
    aggregate: Aggregate | None = None
    # store rules: non-current versions older than this are deleted
    noncurrent: PeriodValue | None = None

    @property
    def effective_since(self) -> str:
        if self.since:
            return self.since
        return "created" if self.consumers == "minors" else "last_activity"

    def periods(self) -> dict[str | None, Period]:
        """The default period (key None) and every client override."""
        return {None: self.period, **self.overrides}

    def target_text(self) -> str:
        if self.table:
            return self.table
        if self.category:
            return f"category:{self.category.value}" + (f"@{self.system}" if self.system else "")
        if self.store:
            return f"store:{self.store}"
        if self.prefix:
            return self.prefix
        if self.workspace:
            return f"workspace:{self.workspace}"
        return "request_log"


class Exempt(Strict):
    table: TableRef | None = None
    column: ColumnRef | None = None
    store: Name | None = None
    workspace: Name | None = None  # an area of the workspace bucket (core.workspace_layout)
    reason: str = Field(min_length=1)
    exception: ExceptionCode | None = None  # the R19 code, when the exemption rests on one

    def target_text(self) -> str:
        if self.workspace:
            return f"workspace:{self.workspace}"
        return self.column or self.table or f"store:{self.store}"


class Minors(Strict):
    flag: ColumnRef  # "system.consumer_table.column": true for children (R24, R26)


class Policy(Strict):
    version: Literal[1]
    minors: Minors
    batch_rows: int = Field(default=5_000, ge=100, le=100_000)
    # Optional: let batches grow (whole batch_rows steps, at most MAX_BATCH_ROWS rows) while one
    # batch's transaction stays under this many seconds; unset, every batch is batch_rows.
    batch_seconds: float | None = Field(default=None, gt=0, le=5)
    rules: list[Rule] = Field(min_length=1)
    exempt: list[Exempt] = Field(default_factory=list)

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


# -- resolution: what a rule touches ------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """A rule resolved against the data map: where it acts and in which wave."""

    rule: Rule
    wave: Wave
    system: str | None = None  # SQL rules
    table: str | None = None  # table rules (expire_consumers: the consumer table)
    columns: tuple[tuple[str, tuple[str, ...]], ...] = ()  # deidentify: (table, columns)
    store: str | None = None  # object rules
    workspace: str | None = None  # workspace rules: the area's name

    @property
    def id(self) -> str:
        return self.rule.id


def wave_of(rule: Rule) -> Wave:
    if rule.action is Action.expire_consumers:
        return Wave.minors if rule.consumers == "minors" else Wave.consumers
    if rule.store or rule.prefix or rule.workspace:
        return Wave.objects
    if rule.action is Action.deidentify:
        return Wave.deidentify
    return Wave.rows


def store_for_prefix(dm: DataMap, url: str) -> str | None:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    for name, store in dm.stores.items():
        if store.bucket == bucket and getattr(store, "prefix", None) == prefix:
            return name
    return None


def category_columns(
    dm: DataMap, category: Category, system: str | None = None
) -> list[tuple[str, str, tuple[str, ...]]]:
    """(system, table, columns) of every column carrying `category` that erasure can change."""
    out = []
    for sname, sys_ in dm.systems.items():
        if system and sname != system:
            continue
        for tname, table in sys_.tables.items():
            if time_path(sys_, tname) is None:
                continue  # undated: no age to de-identify by; the coverage gate reports it
            cols = tuple(
                c
                for c, col in table.columns.items()
                if category in col.categories and col.erase is not ColumnErase.keep
            )
            if cols:
                out.append((sname, tname, cols))
    return out


def resolve(policy: Policy, dm: DataMap) -> list[Step]:
    """Every rule as a Step, in sweep order (wave, then file order). Assumes a valid policy."""
    steps = []
    for rule in policy.rules:
        wave = wave_of(rule)
        if rule.table:
            system, table = rule.table.split(".", 1)
            cols = ((table, tuple(rule.columns)),) if rule.action is Action.deidentify else ()
            steps.append(Step(rule, wave, system=system, table=table, columns=cols))
        elif rule.category:
            found = category_columns(dm, rule.category, rule.system)
            # validation keeps a category rule to one system (`system:` when several hold it)
            sname = rule.system or (found[0][0] if found else next(iter(dm.systems)))
            cols = tuple((t, c) for s, t, c in found if s == sname)
            steps.append(Step(rule, wave, system=sname, columns=cols))
        elif rule.store or rule.prefix:
            store = rule.store or store_for_prefix(dm, rule.prefix or "")
            steps.append(Step(rule, wave, store=store))
        elif rule.workspace:
            steps.append(Step(rule, wave, workspace=rule.workspace))
        else:
            steps.append(Step(rule, wave))
    order = {w: i for i, w in enumerate(WAVE_ORDER)}
    index = {r.id: i for i, r in enumerate(policy.rules)}
    return sorted(steps, key=lambda s: (order[s.wave], index[s.id]))


# -- helpers for the planner -----------------------------------------------------------------


def descendants(system: SqlSystem, table: str) -> list[str]:
    """Tables whose relation chain passes through `table` (its children, grandchildren...)."""
    out = []
    for name in system.tables:
        if name == table:
            continue
        if any(hop.target_table == table for hop in chain_to_consumer(system, name)):
            out.append(name)
    return out


def ancestors(system: SqlSystem, table: str) -> list[str]:
    """Tables `table` reaches on its way to the consumer table (the consumer table excluded)."""
    return [
        hop.target_table
        for hop in chain_to_consumer(system, table)
        if hop.target_table != system.consumer_table
    ]


def recording_stores(dm: DataMap, system: str) -> dict[str, RecordingStore]:
    return {
        n: s for n, s in dm.stores.items() if isinstance(s, RecordingStore) and s.system == system
    }


def object_stores(dm: DataMap) -> dict[str, LogStore | BackupStore]:
    return {n: s for n, s in dm.stores.items() if isinstance(s, LogStore | BackupStore)}


def periods_by_category(policy: Policy, dm: DataMap) -> dict[str, list[str]]:
    """R27 disclosure: for each category, the rules (and periods) that bound its data."""
    out: dict[str, set[str]] = defaultdict(set)
    for rule in policy.rules:
        label = f"{rule.id}: {rule.action.value} after {rule.period}"
        if rule.category:
            out[rule.category.value].add(label)
        elif rule.table:
            sname, tname = rule.table.split(".", 1)
            system = dm.systems.get(sname)
            if system is None:
                continue
            tables = [tname]
            if rule.action is Action.expire_consumers and rule.consumers == "all":
                tables += rule.lifetime
            for t in tables:
                spec = system.tables.get(t)
                if spec is None:
                    continue
                cols = spec.columns.values()
                if rule.action is Action.deidentify:
                    cols = [spec.columns[c] for c in rule.columns if c in spec.columns]
                for col in cols:
                    for cat in col.categories:
                        out[cat.value].add(label)
        elif rule.store or rule.prefix:
            store = dm.stores.get(rule.store or store_for_prefix(dm, rule.prefix or "") or "")
            for field in getattr(store, "fields", {}).values():
                for cat in field.categories:
                    out[cat.value].add(label)
    return {k: sorted(v) for k, v in sorted(out.items())}
