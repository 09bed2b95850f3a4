"""Reading and matching JSON-lines gzip logs: the ground floor erasure, access and retention share.

Who to look for (`Targets`), which lines match (`matching`: one rule, a byte-level pre-filter, the
parser that confirms), how objects and day folders are read (`reading`). Erasure rewrites objects
with it (`compliance.deletion.log_scrub`); access reports (R10) collect matching lines; retention
(R18) lists day folders. Living in core, none of them imports another's package to read a log.
"""

from compliance.core.logfiles.matching import REDACTED, Hit, Matcher, scan_lines
from compliance.core.logfiles.reading import (
    LogFormatError,
    ObjectResult,
    collect_shard,
    day_prefixes,
    scan_object,
    timestamp,
)
from compliance.core.logfiles.targets import Targets

__all__ = [
    "REDACTED",
    "Hit",
    "LogFormatError",
    "Matcher",
    "ObjectResult",
    "Targets",
    "collect_shard",
    "day_prefixes",
    "scan_lines",
    "scan_object",
    "timestamp",
]
