"""`config/statistics.yaml`: which events the statistics read, k, and the shape of the reports.

The events source is declared, never hard-coded, and checked against the data map: the table
and its tenant and time columns must be the ones the map records, so statistics cannot quietly
read a table the inventory and erasure jobs do not know about. Errors are collected and
reported together, each naming the field, as the data-map loader does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from compliance.core.datamap.model import NAME_PATTERN, DataMap, TenantRegistry
from compliance.core.settings import REPO_ROOT

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=63)]
Value = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MIN_K = 5  # below this "suppression" protects nobody; the loader refuses it


class StatsConfigError(ValueError):
    """The statistics configuration is unusable; `problems` lists (field, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {where}: {what}" for where, what in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventTypes(Strict):
    """The column holding the event type and its value for a send, an open and a click."""

    column: Name
    sent: Value
    open: Value
    click: Value

    def canonical(self) -> dict[str, str]:
        """Stored value -> canonical name (sent, open, click)."""
        return {self.sent: "sent", self.open: "open", self.click: "click"}


class EventSource(Strict):
    system: Name
    table: Name
    time_column: Name
    tenant_column: Name
    consumer_column: Name
    campaign_column: Name
    event_type: EventTypes
    dimensions: list[Name] = Field(default_factory=list, max_length=3)

    def key(self) -> str:
        """A short digest of the source: rollups computed for another source are not reused."""
        blob = json.dumps(self.model_dump(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class Suppression(Strict):
    k: int = Field(10, ge=MIN_K)


class Reports(Strict):
    series_weeks: int = Field(13, ge=1, le=106)
    top_campaigns: int = Field(15, ge=1, le=200)
    max_period_days: int = Field(1100, ge=7, le=3700)


class Ccpa(Strict):
    jurisdictions: list[Literal["ccpa", "gdpr"]] = Field(default_factory=lambda: ["ccpa"])
    denial_categories: dict[Name, list[Value]] = Field(default_factory=dict)

    def category_of(self, reason_code: str | None) -> str:
        """R23's optional denial breakdown: the category a reason code is reported under."""
        for category, codes in self.denial_categories.items():
            if reason_code in codes:
                return category
        return "other"


class StatsConfig(Strict):
    version: Literal[1]
    source: EventSource
    suppression: Suppression = Suppression()
    reports: Reports = Reports()
    state_connection: Name = "compliance_db"
    ccpa: Ccpa = Ccpa()
    output_prefix: Annotated[str, StringConstraints(pattern=r"^([a-z0-9][a-z0-9_-]*/)+$")] = (
        "stats/"
    )


def default_path() -> Path:
    """The repository's file. A deployment names its own in `Settings.statistics_path`
    (COMPLIANCE_STATISTICS), which the jobs pass in: this module reads no environment."""
    return REPO_ROOT / "config" / "statistics.yaml"


def load_config(path: str | Path | None = None) -> StatsConfig:
    """Parse and structurally validate the file; every structural problem is reported at once."""
    path = Path(path) if path else default_path()
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise StatsConfigError(str(path), [("(file)", "not found")]) from exc
    except yaml.YAMLError as exc:
        raise StatsConfigError(str(path), [("(file)", f"not valid YAML: {exc}")]) from exc
    return parse_config(raw, str(path))


def parse_config(raw: object, source: str = "statistics config") -> StatsConfig:
    try:
        return StatsConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [
            (".".join(str(p) for p in err["loc"]) or "(top)", err["msg"]) for err in exc.errors()
        ]
        raise StatsConfigError(source, problems) from exc


def check_against_datamap(cfg: StatsConfig, dm: DataMap, source: str = "statistics") -> None:
    """Refuse a source the data map does not describe (every mismatch at once)."""
    src = cfg.source
    problems: list[tuple[str, str]] = []
    system = dm.systems.get(src.system)
    if system is None:
        problems.append(("source.system", f"{src.system!r} is not a system of the data map"))
        raise StatsConfigError(source, problems)
    table = system.tables.get(src.table)
    if table is None:
        problems.append(
            ("source.table", f"{src.table!r} is not a mapped table of system {src.system!r}")
        )
    else:
        if table.tenant_column != src.tenant_column:
            problems.append(
                (
                    "source.tenant_column",
                    f"the data map says {src.table}'s tenant column is {table.tenant_column!r}",
                )
            )
        if table.time_column is None:
            problems.append(
                (
                    "source.table",
                    f"{src.table} has no time_column in the data map: statistics count events "
                    "per period and need the table's own time column",
                )
            )
        elif table.time_column != src.time_column:
            problems.append(
                (
                    "source.time_column",
                    f"the data map says {src.table}'s time column is {table.time_column!r}",
                )
            )
    registry = system.tenants
    if registry is None or registry.industry_column is None:
        problems.append(
            (
                "source.system",
                f"system {src.system!r} needs a tenant registry with an industry_column "
                "(statistics are reported by industry)",
            )
        )
    named = [
        src.time_column,
        src.tenant_column,
        src.consumer_column,
        src.campaign_column,
        src.event_type.column,
        *src.dimensions,
    ]
    if len(set(named)) != len(named):
        problems.append(("source", "a column is named for two roles"))
    values = [src.event_type.sent, src.event_type.open, src.event_type.click]
    if len(set(values)) != 3:
        problems.append(("source.event_type", "sent, open and click need distinct values"))
    if problems:
        raise StatsConfigError(source, problems)


def tenant_registry(cfg: StatsConfig, dm: DataMap) -> TenantRegistry:
    registry = dm.systems[cfg.source.system].tenants
    assert registry is not None  # check_against_datamap refuses a system without one
    return registry
