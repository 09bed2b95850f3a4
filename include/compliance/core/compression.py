"""gzip for every object the jobs read or write (logs, their index, backup snapshots): isal's
igzip when installed, a drop-in for the standard module several times faster both ways.
(The residue oracle opens objects its own way: it shares no reading code with the jobs.)"""

from __future__ import annotations

import gzip
import zlib

try:
    from isal import igzip as GZIP
    from isal.isal_zlib import error as _IsalError

    COMPRESS_LEVEL = 1  # isal's scale is 0-3; 1 is about zlib's 2-3 in size, far faster
    CORRUPT: tuple[type[BaseException], ...] = (
        gzip.BadGzipFile,
        EOFError,
        zlib.error,
        _IsalError,
    )
except ImportError:  # pragma: no cover - isal is in requirements
    GZIP = gzip  # type: ignore[misc]
    COMPRESS_LEVEL = 3
    CORRUPT = (gzip.BadGzipFile, EOFError, zlib.error)
