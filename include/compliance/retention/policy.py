"""The retention policy: how long each piece of personal information is kept, and what then.

R27 asks for a disclosed period (or criteria) per category and a scheduled purge; R26 asks for
the shortest retention for children; R22 asks for the request log to be kept at least 24 months.
The policy file (`config/retention.yaml`, format in docs/retention.md) says all of this as rules,
each naming one target (a table, a category of columns, an object store or prefix, or the request
log), a period, an action and optional per-client overrides.

Loading reports every mistake at once, like the data map: pydantic checks the structure, then the
rules below check the policy against the data map (targets exist, actions fit targets, R22, R26,
no two rules fighting over the same rows or columns). The coverage gate (`coverage.py`) is a
separate pass because it is a CI gate, not a reason to stop a nightly sweep.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
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
from compliance.core.datamap.validate import Issue, _line_index, _nearest_line, _yaml_issue

RULES: dict[str, str] = {
    "yaml-syntax": "the file must be valid YAML holding a mapping",
    "structure": "keys and values must have the documented types and formats",
    "unknown-key": "only documented keys are allowed",
    "duplicate-name": "rule ids and YAML keys must be unique",
    "target": "a rule names exactly one target (table, category, store, prefix or request_log) "
    "that exists in the data map",
    "action": "the action must fit the target (see docs/retention.md)",
    "period": "periods are positive: a number and a unit (days, weeks, months, years)",
    "overlap": "two rules may not delete the same table, expire the same consumers or "
    "de-identify the same column",
    "aggregate-identifying": "aggregates may only be grouped by columns that identify no one",
    "undated": "a table rule needs a time: the table's own time_column or a dated table up its "
    "relation chain (a table with neither cannot be expired by age)",
    "R22": "the request log is kept at least 24 months (R22)",
    "R26": "children's data has the shortest retention and never depends on activity (R26)",
    "exempt": "an exemption names one existing table, column or store, with a reason",
    "uncovered": "every personal-information table, column and store is covered by a rule or "
    "exempt with a reason (R27)",
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
        return "request_log"


class Exempt(Strict):
    table: TableRef | None = None
    column: ColumnRef | None = None
    store: Name | None = None
    reason: str = Field(min_length=1)
    exception: ExceptionCode | None = None  # the R19 code, when the exemption rests on one

    def target_text(self) -> str:
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

    @property
    def id(self) -> str:
        return self.rule.id


def wave_of(rule: Rule) -> Wave:
    if rule.action is Action.expire_consumers:
        return Wave.minors if rule.consumers == "minors" else Wave.consumers
    if rule.store or rule.prefix:
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
        else:
            steps.append(Step(rule, wave))
    order = {w: i for i, w in enumerate(WAVE_ORDER)}
    index = {r.id: i for i, r in enumerate(policy.rules)}
    return sorted(steps, key=lambda s: (order[s.wave], index[s.id]))


# -- loading -------------------------------------------------------------------------------------


class PolicyInvalid(ValueError):
    """A policy that cannot be used; `issues` holds every mistake found."""

    def __init__(self, source: str, issues: list[Issue]) -> None:
        self.source = source
        self.issues = issues
        listing = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"retention policy {source} has {len(issues)} error(s):\n{listing}")


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    sha256: str  # of the file's bytes: reports and the ledger name the exact policy applied
    source: str


def load_policy(path: str | Path, dm: DataMap) -> LoadedPolicy:
    """Read and check a policy against the data map; raise `PolicyInvalid` listing every mistake.

    Coverage gaps are not errors here (see `coverage.py`): a sweep with a gap still expires
    everything the policy does cover, which is better than expiring nothing.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        issue = Issue("<file>", "yaml-syntax", f"the file is not UTF-8 text ({exc.reason})")
        raise PolicyInvalid(str(path), [issue]) from exc
    policy, issues = check_text(text, dm)
    if issues or policy is None:
        raise PolicyInvalid(str(path), issues)
    return LoadedPolicy(policy, hashlib.sha256(raw).hexdigest(), str(path))


def check_text(text: str, dm: DataMap) -> tuple[Policy | None, list[Issue]]:
    """Check a policy's YAML text against a data map: the policy (None if broken) and its issues."""
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [_yaml_issue(exc)]
    if not isinstance(raw, dict):
        what = "empty" if raw is None else f"a {type(raw).__name__}"
        return None, [Issue("<file>", "yaml-syntax", f"a policy is a YAML mapping; this is {what}")]
    lines, duplicates = _line_index(root)
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        return None, duplicates + [_structural(err, lines) for err in exc.errors()]
    issues = [
        Issue(loc, rule, msg, _nearest_line(loc, lines)) for loc, rule, msg in _issues(policy, dm)
    ]
    return policy, duplicates + issues


def _structural(err: Any, lines: dict[str, int]) -> Issue:
    parts = [str(p) for p in err["loc"] if p != "[key]"]
    loc = ".".join(parts) or "<root>"
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        rule, message = "unknown-key", f"unknown key {parts[-1]!r}"
    elif kind == "missing":
        rule, message = "structure", f"required key {parts[-1]!r} is missing"
    elif kind == "value_error" and "error" in ctx:
        rule, message = "structure", str(ctx["error"])
    else:
        rule, message = "structure", err["msg"]
        if "input" in err and not isinstance(err["input"], dict | list):
            message += f" (got {err['input']!r})"
    if "period" in parts[-1:] or "overrides" in parts or "noncurrent" in parts[-1:]:
        rule = "period" if kind == "value_error" else rule
    return Issue(loc, rule, message, _nearest_line(loc, lines))


# -- checks against the data map -----------------------------------------------------------------

Found = tuple[str, str, str]  # (location, rule, message)


def _issues(policy: Policy, dm: DataMap) -> Iterator[Found]:
    seen: dict[str, int] = {}
    for i, rule in enumerate(policy.rules):
        loc = f"rules.{i}"
        if rule.id in seen:
            yield (
                f"{loc}.id",
                "duplicate-name",
                f"rule id {rule.id!r} is used twice (first as rules.{seen[rule.id]})",
            )
        seen.setdefault(rule.id, i)
        yield from _rule_issues(loc, rule, dm)
    yield from _overlap_issues(policy, dm)
    yield from _r22_issues(policy)
    yield from _r26_issues(policy, dm)
    for i, ex in enumerate(policy.exempt):
        yield from _exempt_issues(f"exempt.{i}", ex, dm)


def _table(dm: DataMap, ref: str) -> tuple[SqlSystem | None, str, str, str | None]:
    """(system, system name, table name, why not found)."""
    sname, tname = ref.split(".", 1)
    system = dm.systems.get(sname)
    if system is None:
        return None, sname, tname, f"no SQL system {sname!r} in the data map"
    if tname not in system.tables:
        if tname in system.ignore:
            why = f"{ref!r} is listed under `ignore` in the data map: it holds no consumer data"
        else:
            why = f"table {tname!r} is not mapped in system {sname!r}"
        return system, sname, tname, why
    return system, sname, tname, None


def _rule_issues(loc: str, rule: Rule, dm: DataMap) -> Iterator[Found]:
    name = f"rule {rule.id!r}"
    targets = [
        k
        for k in ("table", "category", "store", "prefix", "request_log")
        if getattr(rule, k) not in (None, False)
    ]
    if len(targets) != 1:
        given = ", ".join(targets) if targets else "none"
        yield (
            loc,
            "target",
            f"{name} must name exactly one of table, category, store, prefix, request_log "
            f"(given: {given})",
        )
        return
    for key, period in [("period", rule.period)] + [
        (f"overrides.{c}", p) for c, p in rule.overrides.items()
    ]:
        if period.is_zero:
            yield (f"{loc}.{key}", "period", f"{name}: a retention period must be longer than 0")
    for client in rule.overrides:
        if not client.strip() or client != client.strip() or not client.isprintable():
            yield (
                f"{loc}.overrides.{client.strip() or '?'}",
                "structure",
                f"{name}: a client id is the tenant id as the CRM spells it, without blanks or "
                "control characters",
            )
        elif re.fullmatch(r"-[0-9]+", client):
            yield (f"{loc}.overrides.{client}", "structure", f"{name}: client ids are positive")
    yield from _misplaced_keys(loc, rule)
    kind = targets[0]
    if kind == "table":
        yield from _table_rule_issues(loc, rule, dm)
    elif kind == "category":
        if rule.action is not Action.deidentify:
            yield (
                f"{loc}.action",
                "action",
                f"{name}: a category rule can only de-identify columns (rows mix categories); "
                "to delete rows, name the table",
            )
        if rule.system and rule.system not in dm.systems:
            yield (f"{loc}.system", "target", f"{name}: no SQL system {rule.system!r}")
        elif rule.category is not None:
            found = category_columns(dm, rule.category, rule.system)
            if not found:
                yield (
                    f"{loc}.category",
                    "target",
                    f"{name}: no mapped column of category {rule.category.value!r} can be "
                    "de-identified (none, or all kept under an exception)",
                )
            elif len({s for s, _, _ in found}) > 1:
                yield (
                    f"{loc}.system",
                    "target",
                    f"{name}: category {rule.category.value!r} is in several SQL systems; add "
                    "`system:` (one rule per system)",
                )
    elif kind in ("store", "prefix"):
        store_name = rule.store or store_for_prefix(dm, rule.prefix or "")
        store = dm.stores.get(store_name or "")
        if store is None:
            what = f"store {rule.store!r}" if rule.store else f"no store at {rule.prefix!r}"
            yield (f"{loc}.{kind}", "target", f"{name}: {what} is not in the data map")
        elif isinstance(store, RecordingStore):
            yield (
                f"{loc}.{kind}",
                "target",
                f"{name}: recordings expire with the rows that point at them: write a rule for "
                f"table {store.system}.{store.table} instead",
            )
        if rule.action is not Action.delete:
            yield (f"{loc}.action", "action", f"{name}: objects can only be deleted")
        if rule.overrides:
            yield (
                f"{loc}.overrides",
                "action",
                f"{name}: objects mix clients, so per-client overrides do not apply to stores",
            )
    else:  # request log
        if rule.action is not Action.delete:
            yield (f"{loc}.action", "action", f"{name}: request records can only be deleted")


def _misplaced_keys(loc: str, rule: Rule) -> Iterator[Found]:
    name = f"rule {rule.id!r}"
    consumer_keys = {
        "consumers": rule.consumers != "all",
        "since": rule.since is not None,
        "activity": rule.activity is not None,
        "lifetime": bool(rule.lifetime),
    }
    if rule.action is not Action.expire_consumers:
        for key, given in consumer_keys.items():
            if given:
                yield (f"{loc}.{key}", "action", f"{name}: `{key}` applies to expire_consumers")
    if rule.columns and not (rule.action is Action.deidentify and rule.table):
        yield (f"{loc}.columns", "action", f"{name}: `columns` applies to table deidentify rules")
    if rule.aggregate and rule.action is not Action.aggregate:
        yield (f"{loc}.aggregate", "action", f"{name}: `aggregate` applies to aggregate rules")
    if rule.noncurrent is not None and not (rule.store or rule.prefix):
        yield (f"{loc}.noncurrent", "action", f"{name}: `noncurrent` applies to store rules")
    if rule.system and not rule.category:
        yield (f"{loc}.system", "action", f"{name}: `system` applies to category rules")


def _table_rule_issues(loc: str, rule: Rule, dm: DataMap) -> Iterator[Found]:
    name = f"rule {rule.id!r}"
    system, sname, tname, why = _table(dm, rule.table or "")
    if why or system is None:
        yield (f"{loc}.table", "target", f"{name}: {why}")
        return
    spec = system.tables[tname]
    is_consumer = tname == system.consumer_table
    if time_path(system, tname) is None:
        yield (
            f"{loc}.table",
            "undated",
            f"{name}: {sname}.{tname} has no time_column and no table up its relation chain has "
            "one, so its rows cannot be expired by age: add a time_column (to it or a parent), "
            "or exempt it with a reason (R27)",
        )
        return
    if rule.action is Action.expire_consumers:
        if not is_consumer:
            yield (
                f"{loc}.action",
                "action",
                f"{name}: expire_consumers acts on the consumer table "
                f"{sname}.{system.consumer_table}, not {tname!r}",
            )
        if rule.consumers == "minors" and rule.effective_since != "created":
            yield (
                f"{loc}.since",
                "R26",
                f"{name}: children's data is never kept indefinitely (R26): it expires a period "
                "after it was collected (`since: created`), not after inactivity",
            )
        for key in ("activity", "lifetime"):
            for t in getattr(rule, key) or []:
                if t not in system.tables:
                    yield (
                        f"{loc}.{key}",
                        "target",
                        f"{name}: table {t!r} is not mapped in {sname!r}",
                    )
        if rule.activity is not None and rule.effective_since == "created":
            yield (f"{loc}.activity", "action", f"{name}: `activity` needs since: last_activity")
        return
    if is_consumer and rule.action in (Action.delete, Action.aggregate):
        yield (
            f"{loc}.action",
            "action",
            f"{name}: rows of the consumer table are consumers: use expire_consumers, which "
            "erases their rows in every table first",
        )
    if rule.action is Action.deidentify:
        if not rule.columns:
            yield (f"{loc}.columns", "action", f"{name}: list the `columns` to de-identify")
        for col in rule.columns:
            c = spec.columns.get(col)
            if c is None:
                yield (
                    f"{loc}.columns",
                    "target",
                    f"{name}: {col!r} is not a mapped column of {sname}.{tname}",
                )
            elif c.erase is ColumnErase.keep:
                yield (
                    f"{loc}.columns",
                    "action",
                    f"{name}: {sname}.{tname}.{col} is kept under exception "
                    f"{c.exception.value if c.exception else '?'} (erase: keep): exempt it instead",
                )
    if rule.action is Action.aggregate:
        for col in rule.aggregate.by if rule.aggregate else []:
            c = spec.columns.get(col)
            if c is None:
                yield (
                    f"{loc}.aggregate.by",
                    "aggregate-identifying",
                    f"{name}: {col!r} is not a mapped column of {sname}.{tname}, so nothing "
                    "shows it identifies no one",
                )
            elif c.identity or c.withhold or set(c.categories) & IDENTIFYING:
                cats = ", ".join(x.value for x in c.categories)
                yield (
                    f"{loc}.aggregate.by",
                    "aggregate-identifying",
                    f"{name}: grouping by {col!r} ({cats}) would keep identifying values",
                )


def _overlap_issues(policy: Policy, dm: DataMap) -> Iterator[Found]:
    deleting: dict[str, str] = {}
    expiring: dict[tuple[str, str], str] = {}
    deid: dict[str, str] = {}
    stores: dict[str, str] = {}
    for i, rule in enumerate(policy.rules):
        loc = f"rules.{i}"
        if rule.table and rule.action in (Action.delete, Action.aggregate):
            if rule.table in deleting:
                yield (
                    loc,
                    "overlap",
                    f"rules {deleting[rule.table]!r} and {rule.id!r} both delete rows of "
                    f"{rule.table}: use one rule with per-client overrides",
                )
            deleting.setdefault(rule.table, rule.id)
        if rule.action is Action.expire_consumers and rule.table:
            key = (rule.table.split(".")[0], rule.consumers)
            if key in expiring:
                yield (
                    loc,
                    "overlap",
                    f"rules {expiring[key]!r} and {rule.id!r} both expire {rule.consumers} "
                    f"consumers of {key[0]!r}",
                )
            expiring.setdefault(key, rule.id)
        if rule.action is Action.deidentify:
            cols: list[str] = []
            if rule.table:
                cols = [f"{rule.table}.{c}" for c in rule.columns]
            elif rule.category:
                for s, t, cs in category_columns(dm, rule.category, rule.system):
                    cols += [f"{s}.{t}.{c}" for c in cs]
            for col in cols:
                if col in deid and deid[col] != rule.id:
                    yield (
                        loc,
                        "overlap",
                        f"rules {deid[col]!r} and {rule.id!r} both de-identify {col}",
                    )
                deid.setdefault(col, rule.id)
        store = rule.store or (store_for_prefix(dm, rule.prefix) if rule.prefix else None)
        if store:
            if store in stores:
                yield (
                    loc,
                    "overlap",
                    f"rules {stores[store]!r} and {rule.id!r} both expire {store}",
                )
            stores.setdefault(store, rule.id)


def _r22_issues(policy: Policy) -> Iterator[Found]:
    logs = [(i, r) for i, r in enumerate(policy.rules) if r.request_log]
    if not logs:
        yield (
            "rules",
            "R22",
            "no rule for the request log (request_log: true): say how long request records are "
            f"kept, at least {R22_MINIMUM_TEXT} (R22)",
        )
    for n, (i, rule) in enumerate(logs):
        if n:
            yield (f"rules.{i}", "overlap", f"rule {rule.id!r}: the request log has one rule only")
        for client, period in rule.periods().items():
            if not period.at_least(R22_MINIMUM):
                where = "period" if client is None else f"overrides.{client}"
                who = "" if client is None else f" for client {client}"
                yield (
                    f"rules.{i}.{where}",
                    "R22",
                    f"rule {rule.id!r}: request records{who} are kept at least "
                    f"{R22_MINIMUM_TEXT} (R22); {period} can be shorter",
                )


def _r26_issues(policy: Policy, dm: DataMap) -> Iterator[Found]:
    parts = policy.minors.flag.split(".")
    sname, tname, col = parts
    system = dm.systems.get(sname)
    if system is None:
        yield ("minors.flag", "R26", f"no SQL system {sname!r} in the data map")
        return
    if tname != system.consumer_table:
        yield (
            "minors.flag",
            "R26",
            f"the children flag lives on the consumer table {sname}.{system.consumer_table}",
        )
        return
    if col not in system.tables[tname].columns:
        yield ("minors.flag", "R26", f"{col!r} is not a mapped column of {sname}.{tname}")
    minors = [
        (i, r)
        for i, r in enumerate(policy.rules)
        if r.action is Action.expire_consumers and r.consumers == "minors"
    ]
    for i, rule in minors:
        if rule.table and rule.table.split(".")[0] != sname:
            yield (
                f"rules.{i}.table",
                "R26",
                f"rule {rule.id!r}: minors are flagged in {sname!r} (minors.flag)",
            )
    mine = [(i, r) for i, r in minors if r.table and r.table.split(".")[0] == sname]
    if not mine:
        yield (
            "rules",
            "R26",
            f"no expire_consumers rule with `consumers: minors` for {sname!r}: children's data "
            "needs its own, shortest, period (R26)",
        )
        return
    i, minor = mine[0]
    others = [
        r
        for r in policy.rules
        if r is not minor
        and r.table
        and r.table.split(".")[0] == sname
        and r.action in (Action.delete, Action.aggregate, Action.expire_consumers)
    ]
    clients = sorted({c for r in [minor, *others] for c in r.overrides})
    for client in [None, *clients]:
        mine = minor.overrides.get(client, minor.period) if client else minor.period
        longer = []
        for other in others:
            if client is not None and client not in minor.overrides | other.overrides:
                continue  # same periods as the default: reported once, above
            theirs = other.overrides.get(client, other.period) if client else other.period
            if not mine.shorter_than(theirs):
                longer.append(f"{other.id!r} ({theirs})")
        if longer:
            who = "" if client is None else f" for client {client}"
            where = f"overrides.{client}" if client in minor.overrides else "period"
            yield (
                f"rules.{i}.{where}",
                "R26",
                f"rule {minor.id!r}: children's data must have the shortest period (R26), but "
                f"{mine}{who} is not shorter than {', '.join(longer)}",
            )


def _exempt_issues(loc: str, ex: Exempt, dm: DataMap) -> Iterator[Found]:
    given = [k for k in ("table", "column", "store") if getattr(ex, k)]
    if len(given) != 1:
        yield (loc, "exempt", "an exemption names exactly one of table, column, store")
        return
    if not ex.reason.strip():
        yield (f"{loc}.reason", "exempt", "an exemption needs a reason")
    if ex.store:
        if ex.store not in dm.stores:
            yield (f"{loc}.store", "exempt", f"store {ex.store!r} is not in the data map")
        return
    ref = ex.table or ".".join((ex.column or "").split(".")[:2])
    system, sname, tname, why = _table(dm, ref)
    if why or system is None:
        yield (f"{loc}.{given[0]}", "exempt", str(why))
        return
    if ex.column:
        col = ex.column.split(".")[2]
        if col not in system.tables[tname].columns:
            yield (f"{loc}.column", "exempt", f"{col!r} is not a mapped column of {sname}.{tname}")


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
