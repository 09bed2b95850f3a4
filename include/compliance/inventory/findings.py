"""What the inventory reports and how it recognises personal data: findings, the shapes of
e-mail, phone and IP values, names that look personal."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import phonenumbers

from compliance.core.datamap.model import DataMap, RecordingStore

# Names that suggest personal information. Deliberately broad: a false alarm costs a line in
# `ignore`, a miss costs an unmapped category.
PERSONAL_HINTS = re.compile(
    r"(e_?mail|phone|mobile|name|addr|street|zip|postal|city|birth|dob|ssn|social|licen[cs]e|"
    r"passport|account|iban|card|token|ip(_|$)|^ip|user_?agent|^ua$|device|geo|lat|lon|"
    r"location|gender|race|religion|health|medical|salary|password|secret|answer|voice|"
    r"recording|rcpt|recipient|contact|customer|person|ssn)",
    re.IGNORECASE,
)
TECHNICAL = {"created_at", "updated_at", "deleted_at", "id"}
SAMPLE_OBJECTS = 3  # log objects sampled for drift per store: the first listed and the newest
# Identity-looking values (drift, issue 14): an e-mail address, a phone number, an IP address.
_EMAIL = re.compile(r"[^@\s\"'<>(),;:\[\]]+@[^@\s\"'<>(),;:\[\]]+\.[^@\s\"'<>(),;:\[\].]{2,}")
_PHONE_SHAPE = re.compile(r"\+?[0-9(][0-9 ().-]{5,22}[0-9]")
_PHONE_SEPARATOR = re.compile(r"[ ().-]")
OWN_TABLE_PREFIX = "cj_"  # this project's own tables (e.g. retention aggregates): counts only


class InventoryProblem(RuntimeError):
    """The data map does not match the systems: the inventory run fails so someone looks."""

    reason = "datamap_mismatch"


@dataclass
class Finding:
    where: str
    kind: str
    detail: str


@dataclass
class SystemInventory:
    name: str
    kind: str
    problems: list[Finding] = field(default_factory=list)
    drift: list[Finding] = field(default_factory=list)
    # indexes the jobs need that the system lacks (`python -m compliance datamap indexes`)
    missing_indexes: list[Finding] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)  # rows per mapped table
    per_client_category: list[dict[str, Any]] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    partitions: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def looks_personal(name: str) -> bool:
    return name.lower() not in TECHNICAL and bool(PERSONAL_HINTS.search(name))


def identity_kind(value: str) -> str | None:
    """What `value` looks like if it looks like an identity: "an e-mail address", "a phone
    number" (E.164, or a national form with separators) or "an IP address"; else None.

    Deliberately about the whole value, not text containing one: drift is a value standing where
    the data map does not look, which a request's identity would then never find.
    """
    text = value.strip()
    if not 3 <= len(text) <= 254:
        return None
    if _EMAIL.fullmatch(text):
        return "an e-mail address"
    if (":" in text or text.count(".") == 3) and _ip(text):
        return "an IP address"
    if _PHONE_SHAPE.fullmatch(text) and (text[0] == "+" or _PHONE_SEPARATOR.search(text)):
        try:
            number = phonenumbers.parse(text, None if text[0] == "+" else "US")
        except phonenumbers.NumberParseException:
            return None
        if phonenumbers.is_possible_number(number):
            return "a phone number"
    return None


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def declared_columns(dm: DataMap, system_name: str) -> dict[str, set[str]]:
    """Per mapped table, every column the map names: keys, time, tenant, relation, PI columns,
    and a recordings store's key column."""
    system = dm.systems[system_name]
    declared: dict[str, set[str]] = {}
    for tname, spec in system.tables.items():
        cols = {*spec.key_columns, *spec.columns}
        cols |= {c for c in (spec.time_column, spec.tenant_column) if c}
        cols |= {spec.relation.column} if spec.relation else set()
        declared[tname] = cols
    for store in dm.stores.values():
        if isinstance(store, RecordingStore) and store.system == system_name:
            declared.setdefault(store.table, set()).add(store.key_column)
    return declared
