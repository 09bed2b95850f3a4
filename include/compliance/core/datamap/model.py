"""The data map's shape: where personal information lives and how each piece is erased.

Structure is checked by pydantic (every structural error at once, with its location); the
cross-references (relations reach the consumer, no cycles, identity columns exist...) are checked
by `compliance.core.datamap.validate`. Field names are the YAML keys documented in
`docs/data-map.md`.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


class Category(StrEnum):
    """CCPA categories of personal information, Stat 1798.140(v)(1) and (ae) (R8)."""

    identifiers = "identifiers"
    customer_records = "customer_records"  # 1798.80(e)
    protected_characteristics = "protected_characteristics"
    commercial = "commercial"
    biometric = "biometric"
    internet_activity = "internet_activity"
    geolocation = "geolocation"
    sensory = "sensory"  # audio, e.g. call recordings
    professional = "professional"
    education = "education"
    inferences = "inferences"
    sensitive = "sensitive"  # sensitive personal information, 1798.140(ae)


class Withhold(StrEnum):
    """Kinds of value an access report must never disclose, only name (R10)."""

    government_id = "government_id"
    financial_account = "financial_account"
    medical_id = "medical_id"
    password = "password"
    security_answer = "security_answer"
    biometric = "biometric"


class IdentityType(StrEnum):
    """Identities a request may carry and a store may be searched by."""

    email = "email"
    phone = "phone"
    contact_id = "contact_id"  # the client's own id for the consumer
    record_id = "record_id"  # our primary key of the consumer row (logs carry it)


class ExceptionCode(StrEnum):
    """Why data may be kept despite a deletion request (R19: 1798.105(d), 1798.145(a))."""

    transaction = "transaction"
    security = "security"
    debugging = "debugging"
    free_speech = "free_speech"
    calecpa = "calecpa"
    research = "research"
    internal_uses = "internal_uses"
    legal_obligation = "legal_obligation"
    legal_claims = "legal_claims"
    law_enforcement_hold = "law_enforcement_hold"


class ColumnErase(StrEnum):
    """What erasure does to one column of a row that is kept (table `erase: mask`)."""

    nullify = "nullify"  # set to NULL
    hash = "hash"  # HMAC under a random per-run key, never stored (R17): irreversible
    deidentify = "deidentify"  # a fixed placeholder ("[deleted]")
    keep = "keep"  # kept under an exception code


class TableErase(StrEnum):
    delete = "delete"  # delete the consumer's rows
    mask = "mask"  # keep rows, erase columns per their `erase`
    keep = "keep"  # keep rows under an exception code


# Patterns are named so the validator can explain a mismatch in words (structure._PATTERN_HELP).
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
REFERENCE_PATTERN = r"^[A-Za-z_]\w*\.[A-Za-z_]\w*$"
PREFIX_PATTERN = r"^([A-Za-z0-9!_.*'()=-]+/)*$"
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=63)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Column(Strict):
    categories: list[Category] = Field(min_length=1)
    identity: IdentityType | None = None
    erase: ColumnErase = ColumnErase.nullify
    exception: ExceptionCode | None = None
    withhold: Withhold | None = None
    description: str | None = None
    # G3 (Art. 20): the consumer provided this value (given or observed, never derived); None:
    # the categories' `provided` decides (compliance.core.datamap.provided).
    provided: bool | None = None


class Relation(Strict):
    """`column` points at `references` ("table.column"): one step toward the consumer table."""

    column: Name
    references: Annotated[str, StringConstraints(pattern=REFERENCE_PATTERN)]

    @property
    def target_table(self) -> str:
        return self.references.split(".", 1)[0]

    @property
    def target_column(self) -> str:
        return self.references.split(".", 1)[1]


class Table(Strict):
    # One column, or a list for a composite key (any-CRM: link tables keyed by two columns).
    primary_key: Name | Annotated[list[Name], Field(min_length=1)]
    # When the row was collected. Optional: a table without one takes its time from the nearest
    # table up its relation chain that has one, or is always inside the R9 look-back window.
    time_column: Name | None = None
    tenant_column: Name | None = None
    relation: Relation | None = None
    erase: TableErase = TableErase.delete
    exception: ExceptionCode | None = None
    reason: str | None = None
    columns: dict[Name, Column] = Field(default_factory=dict)
    description: str | None = None

    @property
    def key_columns(self) -> tuple[str, ...]:
        """The primary key's columns in order (one for most tables)."""
        pk = self.primary_key
        return (pk,) if isinstance(pk, str) else tuple(pk)


class TenantRegistry(Strict):
    """Where the system lists its tenants (our business clients); requests name an active one."""

    table: Name
    key: Name
    active_column: Name | None = None
    industry_column: Name | None = None  # for statistics by industry
    # When the client's contract ended (a date or timestamp; NULL while it runs): offboarding
    # returns or deletes the client's data a grace period later (G4 Art. 28(3)(g), R27).
    ended_column: Name | None = None


class HoldRegistry(Strict):
    """The legal-hold registry (R19): holds per client, per consumer, or per data scope."""

    table: Name
    client_column: Name = "client_id"
    consumer_column: Name = "contact_id"  # NULL: the hold covers the whole client
    scope_column: Name = "scope"  # "all", or a table / store name of the map
    reason_column: Name = "reason"
    exception_column: Name = "exception_code"
    expires_column: Name = "expires_at"  # NULL: until released
    # When the hold was placed: a law_enforcement_hold lapses 90 days after it (R19) unless a
    # newer record renews it. Optional by default (a registry without it: expires_at as given);
    # named explicitly, it must exist. null: the registry has none.
    placed_column: Name | None = "created_at"


class SqlSystem(Strict):
    kind: Literal["sql"]
    connection: Name
    consumer_table: Name
    tables: dict[Name, Table] = Field(min_length=1)
    ignore: dict[Name, str] = Field(default_factory=dict)  # tables holding no consumer PI, and why
    tenants: TenantRegistry | None = None
    holds: HoldRegistry | None = None
    description: str | None = None


class Field_(Strict):
    categories: list[Category] = Field(min_length=1)
    identity: IdentityType | None = None
    withhold: Withhold | None = None
    provided: bool | None = None  # G3, as on a column


Prefix = Annotated[str, StringConstraints(pattern=PREFIX_PATTERN)]
Bucket = Annotated[str, StringConstraints(pattern=BUCKET_PATTERN)]

_PARTITION_DIRECTIVES = frozenset("YymdjF")
_TWO_YEARS = [date(2023, 1, 1) + timedelta(days=i) for i in range(731)]


def partition_problem(pattern: str) -> str | None:
    """Why `pattern` cannot name one S3 folder per day, or None when it can.

    `datetime.strftime` accepts almost anything (an unknown `%Q` is copied as is), so the
    directives are checked here: only date parts, every day a distinct folder, a valid key.
    """
    for match in re.finditer(r"%(.?)", pattern, re.DOTALL):
        directive = match.group(1)
        if not directive:
            return "ends with a lone '%'"
        if directive not in _PARTITION_DIRECTIVES:
            return (
                f"%{directive} is not supported in a daily partition "
                "(use %Y, %m and %d; %y, %j and %F work too)"
            )
    if not pattern.endswith("/"):
        return "must end with '/': each day is a folder"
    if len({day.strftime(pattern) for day in _TWO_YEARS}) != len(_TWO_YEARS):
        return "does not name a distinct folder per day: it needs a year, a month and a day"
    sample = date(2024, 1, 31).strftime(pattern)
    if not re.fullmatch(PREFIX_PATTERN, sample):
        return f"gives {sample!r}, which is not a valid S3 key prefix"
    return None


def _check_partition(pattern: str) -> str:
    problem = partition_problem(pattern)
    if problem:
        raise ValueError(f"{pattern!r}: {problem}")
    return pattern


Partition = Annotated[str, AfterValidator(_check_partition)]


class LogStore(Strict):
    """JSON-lines gzip objects under `prefix`, one folder per day (`partition`, strftime)."""

    kind: Literal["log"]
    connection: Name = "aws_default"
    bucket: Bucket
    prefix: Prefix
    partition: Partition = "dt=%Y-%m-%d/"
    system: Name  # the SQL system whose tenant and contact ids the lines carry
    # Field names are paths into the line (`compliance.core.datamap.paths`): `email`, `actor.email`,
    # `recipients[].email`, `meta\.v2.ip`. The validator checks their syntax (`bad-path`);
    # the tenant and timestamp fields are paths too, without `[]`.
    timestamp_field: str
    tenant_field: str
    fields: dict[str, Field_] = Field(min_length=1)
    erase: Literal["drop_line", "redact"] = "drop_line"
    description: str | None = None


class NotSearched(Strict):
    """R13: a record store may be left out of access reports only when ALL four hold (Reg
    7024(c)). Each is stated in words, for the report to quote: why the records are not
    reasonably accessible (`not_reasonably_accessible`), that they are kept solely for legal or
    compliance purposes (`solely_legal_or_compliance`), that they are not sold or used for any
    commercial purpose (`not_sold_or_used_commercially`), and which categories of records were
    not searched (`records_described`). Optional here so that the validator names each missing
    or blank one with R13 (`not-searched`) instead of a bare "field required"."""

    not_reasonably_accessible: str | None = None
    solely_legal_or_compliance: str | None = None
    not_sold_or_used_commercially: str | None = None
    records_described: str | None = None


class BackupStore(Strict):
    """Daily snapshots of a SQL system: `prefix` + `YYYY-MM-DD/<table>.csv.gz`.

    Searched by access reports like a log store (one shard per snapshot day), unless the map
    states R13's four conditions under `not_searched`."""

    kind: Literal["backup"]
    connection: Name = "aws_default"
    bucket: Bucket
    prefix: Prefix
    system: Name
    rewrite: bool = False  # also rewrite snapshots, beyond tombstones (R18)
    not_searched: NotSearched | None = None  # R13; absent: access reports search the store
    description: str | None = None


class RecordingStore(Strict):
    """Audio objects whose keys are held in a column of a mapped table."""

    kind: Literal["recordings"]
    connection: Name = "aws_default"
    bucket: Bucket
    system: Name
    table: Name
    key_column: Name
    categories: list[Category] = Field(default_factory=lambda: [Category.sensory])
    description: str | None = None


Store = Annotated[LogStore | BackupStore | RecordingStore, Field(discriminator="kind")]


class SubProcessor(Strict):
    """Our own service providers, told to delete in the same way (R16.3)."""

    name: Name
    channel: Literal["webhook", "sns", "email"]
    target: str = Field(min_length=1)  # URL, topic ARN or e-mail address
    categories: list[Category] = Field(min_length=1)
    purpose: str
    # The outbox stops retrying an unacknowledged notice after this many days (R16.3);
    # default COMPLIANCE_NOTICE_GIVE_UP_DAYS (30). See docs/operations.md.
    give_up_after_days: int | None = Field(default=None, ge=1, le=365)


class Recipient(Strict):
    """Others who got the PI through us, not at the business's direction (R16.4).

    Told to delete through the same outbox as a sub-processor (`channel` and `target`), or not
    told, with the facts that make telling them impossible or a disproportionate effort
    (`impossible_or_disproportionate`), which go into the receipt and the ledger. The validator
    requires exactly one of the two (`recipient-notice`)."""

    name: Name
    categories: list[Category] = Field(min_length=1)
    received: str = Field(min_length=1)  # how they got it, in plain words
    channel: Literal["webhook", "sns", "email"] | None = None
    target: str | None = None
    impossible_or_disproportionate: str | None = None
    give_up_after_days: int | None = Field(default=None, ge=1, le=365)


class CategoryInfo(Strict):
    """What an access report says about a category (R8): sources, purposes, recipients."""

    description: str
    sources: list[str] = Field(min_length=1)
    purposes: list[str] = Field(min_length=1)
    third_parties: list[str] = Field(default_factory=list)
    # G3 (Art. 20): values of this category are, by default, provided by the consumer (given
    # or observed); a column's or log field's own `provided` overrides it.
    provided: bool = False


class Deidentification(Strict):
    """R17's three conditions, attested once for every column the map masks with `deidentify`.

    What `erase: deidentify` leaves (the row, with a placeholder for the value) counts as
    deidentified, not personal, information only when the company (Stat 1798.140 "deidentified"):
    takes reasonable measures so it cannot be associated with a consumer (`measures`), publicly
    commits to keep it deidentified and not to re-identify it (`public_commitment`: the URL or
    text of that commitment), and contractually obliges every recipient to do the same
    (`recipients_bound: true`). The validator refuses `deidentify` without this block
    (`deidentify-unattested`).
    """

    measures: str = Field(min_length=1)
    public_commitment: str = Field(min_length=1)
    recipients_bound: bool


class DataMap(Strict):
    version: Literal[1]
    systems: dict[Name, SqlSystem] = Field(min_length=1)
    stores: dict[Name, Store] = Field(default_factory=dict)
    subprocessors: list[SubProcessor] = Field(default_factory=list)
    recipients: list[Recipient] = Field(default_factory=list)  # R16.4
    categories: dict[Category, CategoryInfo] = Field(default_factory=dict)
    deidentification: Deidentification | None = None  # R17, for `erase: deidentify`
