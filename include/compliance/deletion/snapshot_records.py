"""The CSV records of a backup snapshot, byte for byte (`rewrite: true`, R16.1, R18).

A rewrite removes records by their number and copies every other one unchanged, so records are
cut exactly where a CSV reader would end a row: at a newline outside quotes (a quoted field may
hold newlines; `""` inside quotes toggles twice and changes nothing). A snapshot can be
gigabytes, so it is streamed a block at a time and never held whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from compliance.core.compression import GZIP

BLOCK = 1 << 22  # bytes of decompressed CSV cut into records at a time


def records(data: bytes) -> Iterator[bytes]:
    """CSV records of `data` with their line endings, byte for byte: a newline inside a quoted
    field belongs to its record (`""` inside quotes toggles twice and changes nothing)."""
    start = 0
    quoted = False
    pos = 0
    n = len(data)
    while pos < n:
        quote = data.find(b'"', pos)
        newline = data.find(b"\n", pos)
        if newline < 0:
            break
        if quote >= 0 and quote < newline:
            quoted = not quoted
            pos = quote + 1
            continue
        if quoted:
            pos = newline + 1
            continue
        yield data[start : newline + 1]
        start = pos = newline + 1
    if start < n:
        yield data[start:]


def streamed_records(path: Path) -> Iterator[bytes]:
    """`records` of the decompressed bytes of the gzip file at `path`, read a block at a time:
    each block is cut after its last complete record (`_record_end`) and the rest carried into
    the next, so the records and their bytes are exactly those of `records(whole)`."""
    rest = b""
    with GZIP.open(path, "rb") as gz:
        while data := gz.read(BLOCK):
            buf = rest + data
            end = _record_end(buf)
            yield from records(buf[:end])
            rest = buf[end:]
    if rest:
        yield from records(rest)


def _record_end(buf: bytes) -> int:
    """Just past the last newline of `buf` that ends a record (0: none): one with an even
    number of quote characters before it, `buf` starting at a record's start (`records`)."""
    nl = buf.rfind(b"\n")
    quotes = buf.count(b'"', 0, nl) if nl >= 0 else 0
    while nl >= 0:
        if quotes % 2 == 0:
            return nl + 1
        prev = buf.rfind(b"\n", 0, nl)
        quotes -= buf.count(b'"', prev + 1 if prev >= 0 else 0, nl)
        nl = prev
    return 0
