"""The workspace bucket's layout: every prefix the jobs write, and whether it holds personal data.

Why one registry: the jobs leave derived copies of consumers' data in their own bucket (request
documents, batch targets, access bundles, notices for sub-processors). Before this module each
package spelled its own prefix, so nothing could say which prefixes exist, and the retention
policy could not cover them (issue 16). Now:

- every module takes its prefix (and key shape) from here, so a key the jobs write is always
  under a registered `Area` (`tests/unit/test_workspace_layout.py` lists the bucket after real
  runs and fails on a key no area claims);
- the retention policy names areas (`workspace: rejected`) and its coverage gate fails when an
  area that can hold personal data has no rule and no exemption (`docs/retention.md`);
- a deletion request finds a consumer's earlier copies by these key shapes
  (`compliance.deletion.workspace_copies`), which is why they live in the ground floor: deletion
  (rank 2) cannot import access (rank 4).

Plain data and string helpers only: no S3 client here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# -- top-level prefixes -------------------------------------------------------------------------

INBOX = "inbox/"  # request documents waiting for intake (clients' folders, staff's `ui/`)
ACCEPTED = "accepted/"  # one accepted request document per request, until it is answered
REJECTED = "rejected/"  # refused documents as received, with their reasons, by day
HELD = "held/"  # a partial deletion's memory until its legal hold ends (R19)
OUTBOX = "outbox/"  # notice bodies for sub-processors and recipients (R16.3, R16.4)
BATCHES = "batches/"  # per batch: targets, access parts, oracle verdicts
ACCESS = "access/"  # access bundles and their download links (R12)
RECEIPTS = "receipts/"  # one receipt per answered request (R22's record, no identity)
DRY_RUNS = "deletion/dry-runs/"  # deletion previews (counts, request ids)
SUMMARIES = "summaries/"  # each DAG's last summary
RETENTION_REPORTS = "retention/"  # the sweep's reports
INVENTORY = "inventory/"  # the data inventory's reports
STATS = "stats/"  # published statistics (the default of statistics.yaml `output_prefix`)
DEADLINES = "deadlines/"  # the watchdogs' daily reports (deadlines, holds, notices)
OFFBOARDING = "offboarding/"  # a client's return export at contract end (G4, R27)
OFFBOARDING_REPORTS = "reports/offboarding/"  # the offboarding runs' reports
LOG_INDEX = "log-index/"  # per log object, keyed hashes of its identities (logfiles.identity_index)

UI = "ui"  # staff's folder under the inbox
PARTS = "parts/"  # under a batch: an access batch's gathered records
VERDICTS = "verdicts/"  # under a batch: the residue oracle's per-shard verdicts (counts)
TARGETS = "targets.json"  # under a batch: who the batch erases or exports (identities)
BUNDLE = "bundle.zip"
LINK = "link.json"
LINK_MAX_DAYS = 7  # SigV4 presigned URLs cannot outlive 7 days (access.deliver, R12)


# -- key shapes ---------------------------------------------------------------------------------


def accepted_key(client_id: str, request_id: str, type_: str) -> str:
    return f"{ACCEPTED}{client_id}/{request_id}.{type_}.json"


def held_key(client_id: str, request_id: str) -> str:
    return f"{HELD}{client_id}/{request_id}.json"


def batch_prefix(batch_id: str) -> str:
    return f"{BATCHES}{batch_id}/"


def targets_key(batch_id: str) -> str:
    return f"{batch_prefix(batch_id)}{TARGETS}"


def parts_prefix(batch_id: str) -> str:
    return f"{batch_prefix(batch_id)}{PARTS}"


def bundle_prefix(client_id: str, request_id: str) -> str:
    """One access request's folder: the bundle, its link, anything delivered beside them."""
    return f"{ACCESS}{client_id}/{request_id}/"


def bundle_key(client_id: str, request_id: str) -> str:
    return f"{bundle_prefix(client_id, request_id)}{BUNDLE}"


def link_key(client_id: str, request_id: str) -> str:
    return f"{bundle_prefix(client_id, request_id)}{LINK}"


def receipt_key(client_id: str, request_id: str, type_: str) -> str:
    return f"{RECEIPTS}{client_id}/{request_id}.{type_}.json"


def notice_key(request_pk: int, name: str) -> str:
    return f"{OUTBOX}{request_pk}/{name}.json"


def summary_key(dag_id: str) -> str:
    return f"{SUMMARIES}{dag_id}.json"


# -- the registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Area:
    """One kind of object in the workspace: where, whether it can hold personal data, why.

    `pattern` matches the whole key; `unit` (a regex group) names what expires together (an
    access request's folder: the bundle with its link). `ages_by` says what a retention period
    counts from: the object's write time, or (bundles) the expiry of its download link. `live`
    names the state that makes an object live work the sweep must not expire: the request it
    belongs to still open (`request`), its batch still planned (`batch`), its notice not final
    (`notice`), or every object (`always`: the inbox, which intake empties on every run).
    """

    name: str
    prefix: str
    pattern: str
    personal: bool
    holds: str
    ages_by: str = "written"  # "written" | "link_expiry"
    live: str | None = None  # None | "request" | "batch" | "notice" | "always"

    def matches(self, key: str) -> bool:
        return re.fullmatch(self.pattern, key) is not None

    def unit(self, key: str) -> str:
        """What expires together with `key` (its folder for bundles, else the key itself)."""
        match = re.fullmatch(self.pattern, key)
        if match and "unit" in match.groupdict():
            return match.group("unit")
        return key


_SEG = r"[^/]+"
AREAS: tuple[Area, ...] = (
    Area(
        "inbox",
        INBOX,
        rf"{INBOX}.+",
        True,
        "request documents as clients and staff submitted them (identities), until intake "
        "moves them on its next run",
        live="always",
    ),
    Area(
        "accepted",
        ACCEPTED,
        rf"{ACCEPTED}{_SEG}/{_SEG}\.json",
        True,
        "the accepted request document (identities, verification), until the request is answered",
        live="request",
    ),
    Area(
        "rejected",
        REJECTED,
        rf"{REJECTED}\d{{4}}-\d{{2}}-\d{{2}}/.+",
        True,
        "refused documents exactly as received (may hold identities), with their reasons",
    ),
    Area(
        "held",
        HELD,
        rf"{HELD}{_SEG}/{_SEG}\.json",
        True,
        "a partial deletion's consumers and identities, until its legal hold ends (R19)",
        live="request",
    ),
    Area(
        "outbox",
        OUTBOX,
        rf"{OUTBOX}{_SEG}/{_SEG}\.json",
        True,
        "deletion notices for sub-processors and recipients (the identities they need)",
        live="notice",
    ),
    Area(
        "targets",
        BATCHES,
        rf"{BATCHES}{_SEG}/{re.escape(TARGETS)}",
        True,
        "who a batch erases or exports: identities, consumer ids, recording keys",
        live="batch",
    ),
    Area(
        "parts",
        BATCHES,
        rf"{BATCHES}{_SEG}/{PARTS}.+",
        True,
        "an access batch's gathered records (the consumers' data), until the bundles are built",
        live="batch",
    ),
    Area(
        "verdicts",
        BATCHES,
        rf"{BATCHES}{_SEG}/{VERDICTS}.+",
        False,
        "the residue oracle's per-shard verdicts: counts and object keys",
        live="batch",
    ),
    Area(
        "bundles",
        ACCESS,
        rf"(?P<unit>{ACCESS}{_SEG}/{_SEG}/).+",
        True,
        "access bundles (all of a consumer's data) and their download links (a bearer URL)",
        ages_by="link_expiry",
    ),
    Area(
        "offboarding_exports",
        OFFBOARDING,
        rf"(?P<unit>{OFFBOARDING}{_SEG}/{_SEG}/).+",
        True,
        "a client's return export at contract end (all its consumers' data) and its link",
        ages_by="link_expiry",
    ),
    Area(
        "log_index",
        LOG_INDEX,
        rf"{LOG_INDEX}{_SEG}/.+\.idx",
        True,
        "per log object, keyed hashes of the identity values its lines hold (which objects a "
        "request must read); deleted when its object is rewritten or gone",
    ),
    Area(
        "offboarding_reports",
        OFFBOARDING_REPORTS,
        rf"{OFFBOARDING_REPORTS}{_SEG}\.json",
        False,
        "the offboarding runs' reports: client ids, counts, decisions",
    ),
    Area(
        "receipts",
        RECEIPTS,
        rf"{RECEIPTS}{_SEG}/.+\.json",
        False,
        "receipts: request ids, times, counts, keyed hashes (R22's record)",
    ),
    Area(
        "dry_runs",
        DRY_RUNS,
        rf"{DRY_RUNS}.+",
        False,
        "deletion previews: request ids, counts, reason codes",
    ),
    Area("summaries", SUMMARIES, rf"{SUMMARIES}{_SEG}\.json", False, "each DAG's last counts"),
    Area(
        "retention_reports",
        RETENTION_REPORTS,
        rf"{RETENTION_REPORTS}.+",
        False,
        "the retention sweep's reports: rule ids, counts, keys",
    ),
    Area(
        "inventory",
        INVENTORY,
        rf"{INVENTORY}.+",
        False,
        "the data inventory: tables, columns, counts, kinds of values (never a value)",
    ),
    Area("stats", STATS, rf"{STATS}.+", False, "published statistics, small counts suppressed"),
    Area(
        "deadlines",
        DEADLINES,
        rf"{DEADLINES}.+",
        False,
        "the watchdogs' reports: request ids, due dates, counts",
    ),
)

BY_NAME: dict[str, Area] = {a.name: a for a in AREAS}


def area_of(key: str) -> Area | None:
    """The area a key belongs to (None: a key no registered area claims)."""
    for area in AREAS:
        if key.startswith(area.prefix) and area.matches(key):
            return area
    return None


def personal_areas() -> list[Area]:
    return [a for a in AREAS if a.personal]
