"""Reading JSON-lines gzip log objects: day folders, whole-line blocks, matching lines.

What access reports (R10), retention (R18) and erasure (R16.1) share to read a log store: the
day folders of a store (`day_prefixes`), objects decompressed (`core.compression`: isal when
installed) in blocks of whole lines (`line_blocks`), a read-only count of the lines a request
matches (`scan_object`) and the matching lines themselves inside a time window
(`collect_shard`). Rewriting is erasure's alone (`compliance.deletion.log_scrub`).

What leaves this module for XCom or logs (`ObjectResult.to_dict`, `repr`) holds counts, keys and
request references only, never a line or an identity value.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from compliance.core.compression import CORRUPT, GZIP
from compliance.core.datamap import paths as fpaths
from compliance.core.datamap.model import LogStore
from compliance.core.logfiles.matching import Matcher
from compliance.core.logfiles.targets import Targets
from compliance.core.stores.s3 import list_keys, list_prefixes

READ_SIZE = 4 << 20  # decompressed bytes read at a time (then cut at the last newline)


class LogFormatError(Exception):
    """An object under a log store is not gzip-compressed JSON lines (nothing was changed)."""


def line_blocks(stream: Any, key: str) -> Iterator[tuple[int, bytes]]:
    """(offset, block) of whole lines from a decompressing stream; the last may lack '\\n'."""
    carry: list[bytes] = []  # the start of a line that continues in the next read
    offset = 0
    while True:
        try:
            chunk = stream.read(READ_SIZE)
        except CORRUPT as exc:
            raise LogFormatError(f"{key}: not a readable gzip object ({exc})") from exc
        if not chunk:
            if carry:
                yield offset, b"".join(carry)
            return
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:  # no line ends in this read (a line longer than READ_SIZE)
            carry.append(chunk)
            continue
        if carry:
            block = b"".join((*carry, memoryview(chunk)[:cut]))
        else:
            block = chunk if cut == len(chunk) else chunk[:cut]
        carry = [chunk[cut:]] if cut < len(chunk) else []
        yield offset, block
        offset += len(block)


@dataclass
class ObjectResult:
    key: str
    lines_in: int = 0
    lines_matched: int = 0  # lines dropped or redacted (or, for a scan, that would be)
    per_ref: dict[str, int] = field(default_factory=dict)
    rewritten: bool = False
    bytes_in: int = 0  # compressed size read
    bytes_out: int = 0  # compressed size written (0 when not rewritten)
    versions_deleted: int = 0
    malformed: int = 0  # candidate lines (holding a target value) that are not JSON: kept as is

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_object(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    return s3.get_object(Bucket=bucket, Key=key)


def scan_object(s3: Any, store: LogStore, bucket: str, key: str, targets: Targets) -> ObjectResult:
    """Count the lines of one object that match (read only)."""
    matcher = Matcher.get(store, targets)
    resp = get_object(s3, bucket, key)
    result = ObjectResult(key=key, bytes_in=int(resp.get("ContentLength", 0)))
    counts: Counter[str] = Counter()
    with GZIP.GzipFile(fileobj=resp["Body"], mode="rb") as gz:
        for _offset, block in line_blocks(gz, key):
            result.lines_in += count_lines(block)
            hits, malformed = matcher.scan(block)
            result.malformed += malformed
            result.lines_matched += len(hits)
            for hit in hits:
                counts.update(hit.refs)
    result.per_ref = dict(sorted(counts.items()))
    return result


def count_lines(block: bytes) -> int:
    return block.count(b"\n") + (0 if block.endswith(b"\n") else 1)


def _strptime_pattern(partition: str) -> str:
    return partition.replace("%F", "%Y-%m-%d")


def day_prefixes(
    s3: Any, store: LogStore, since: date | None = None, until: date | None = None
) -> list[str]:
    """The day folders under `store.prefix` (oldest first), within [since, until] if given.

    Folders are found by listing, one level per '/' of the partition pattern, and dated by
    parsing their name with it; folders that do not parse are ignored.
    """
    if isinstance(since, datetime):
        since = since.date()
    if isinstance(until, datetime):
        until = until.date()
    pattern = _strptime_pattern(store.partition)
    level = [store.prefix]
    for _ in range(store.partition.count("/")):
        level = [sub for p in level for sub in list_prefixes(s3, store.bucket, p)]
    days: list[tuple[date, str]] = []
    for prefix in level:
        try:
            day = datetime.strptime(prefix[len(store.prefix) :], pattern).date()
        except ValueError:
            continue
        if (since is None or day >= since) and (until is None or day <= until):
            days.append((day, prefix))
    return [prefix for _, prefix in sorted(days)]


def timestamp(value: Any) -> datetime | None:
    """A log timestamp: ISO 8601 (naive = UTC) or epoch seconds / milliseconds."""
    try:
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            seconds = value / 1000 if abs(value) > 1e11 else value
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip())
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def collect_shard(
    s3: Any,
    store: LogStore,
    day_prefix: str,
    targets: Targets,
    *,
    since: datetime | None,
    until: datetime | None,
    objects: Iterable[dict[str, Any]] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(ref, parsed line) for each matching line of one day folder inside [since, until].

    `objects` (listed dicts with "Key"), when given, are the folder's objects to read instead of
    all of them: those the identity index could not rule out (`identity_index.objects_to_read`).

    A line matching two refs is yielded once per ref (each with its own dict). A line whose
    timestamp field is missing or unreadable is kept (the day folder was chosen by the window):
    an access report errs on the side of disclosing the subject's own data.
    """
    since, until = _aware(since), _aware(until)
    matcher = Matcher.get(store, targets)
    listed = list_keys(s3, store.bucket, day_prefix) if objects is None else objects
    for obj in listed:
        resp = get_object(s3, store.bucket, obj["Key"])
        with GZIP.GzipFile(fileobj=resp["Body"], mode="rb") as gz:
            for _offset, block in line_blocks(gz, obj["Key"]):
                hits, _ = matcher.scan(block)
                for hit in hits:
                    record = json.loads(hit.text)
                    moment = timestamp(fpaths.first(record, store.timestamp_field))
                    if moment is not None and (
                        (since is not None and moment < since)
                        or (until is not None and moment > until)
                    ):
                        continue
                    for n, ref in enumerate(sorted(hit.refs)):
                        yield ref, (record if n == 0 else json.loads(hit.text))
