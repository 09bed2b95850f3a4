"""The CSV records of a backup snapshot, cut where a CSV reader would end a row, streamed.

A snapshot can be gigabytes, so it is read a block at a time and never held whole. A block is
cut after its last complete record (`record_end`): a newline after an even number of quote
characters (PostgreSQL's CSV quotes every field holding a quote, a comma or a newline, and
doubles inner quotes, so quotes pair up within a record and a quoted newline stays inside it).

Two readers share that rule:

- `streamed_records`: every record byte for byte, for the rewrite (`rewrite: true`, R16.1,
  R18), which copies every record it keeps unchanged;
- `candidates`: only the parsed rows whose lower-cased text matches a batch's needles
  (`snapshot_subset.needle_pattern`), for the access gather (R13) and the rewrite (issue 19):
  other consumers' rows never leave C code. Each comes with its byte offset, which is how the
  rewrite names the records it drops (`offsets`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from compliance.core.compression import GZIP
from compliance.core.snapshot_subset import Needles

BLOCK = 1 << 22  # bytes (or characters) of decompressed CSV handled at a time

Buf = TypeVar("Buf", str, bytes)


def records(data: bytes) -> Iterator[bytes]:
    """CSV records of `data` with their line endings, byte for byte: a newline inside a quoted
    field belongs to its record (`""` inside quotes toggles twice and changes nothing)."""
    start = 0
    quoted = False
    pos = 0
    n = len(data)
    quote = data.find(b'"')
    while pos < n:
        if 0 <= quote < pos:  # found again only once passed: a search per call was quadratic
            quote = data.find(b'"', pos)  # (279 s of a 150 MB day with few quotes, issue 19)
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
    each block is cut after its last complete record (`record_end`) and the rest carried into
    the next, so the records and their bytes are exactly those of `records(whole)`."""
    rest = b""
    with GZIP.open(path, "rb") as gz:
        while data := gz.read(BLOCK):
            buf = rest + data
            end = record_end(buf)
            yield from records(buf[:end])
            rest = buf[end:]
    if rest:
        yield from records(rest)


def offsets(path: Path) -> Iterator[tuple[int, bytes]]:
    """The records of `path` past its header, each with its byte offset counted from the end of
    the header: the name `candidates` gives the same record. The header comes first, at -1."""
    at = -1
    for record in streamed_records(path):
        yield at, record
        at = 0 if at < 0 else at + len(record)


def copy_without(path: Path, drop: Iterable[int], out: BinaryIO) -> int:
    """Write the decompressed bytes of `path` to `out` without the records at the offsets in
    `drop` (`offsets`); every other byte as it was. A block at a time, and only the dropped
    records are looked at one by one: the rest is copied in slices (a per-record loop ran
    at 43 MB/s; issue 19). Returns the records dropped; an offset past the end raises."""
    gone = sorted(set(drop))
    i = 0
    base: int | None = None  # offset of `buf`'s start past the header; None: header not out
    buf = b""
    with GZIP.open(path, "rb") as gz:
        while True:
            data = gz.read(BLOCK)
            buf += data
            if base is None:
                end = first_record_end(buf)
                if not end and data:
                    continue  # the header is longer than a block
                out.write(buf[: end or len(buf)])
                buf, base = buf[end or len(buf) :], 0
            cut = len(buf) if not data else record_end(buf)
            pos = 0
            while i < len(gone) and gone[i] < base + cut:
                start = gone[i] - base
                out.write(buf[pos:start])
                pos = _record_stop(buf, start, cut)
                i += 1
            out.write(buf[pos:cut])
            buf, base = buf[cut:], base + cut
            if not data:
                break
    if i < len(gone):
        raise ValueError(f"{path.name}: {len(gone) - i} records to drop lie past its end")
    return i


def _record_stop(buf: bytes, start: int, limit: int) -> int:
    """Just past the record starting at `start` (within `buf[:limit]`, whole records)."""
    stop = buf.find(b"\n", start, limit)
    while stop >= 0 and buf.count(b'"', start, stop) % 2:
        stop = buf.find(b"\n", stop + 1, limit)
    return limit if stop < 0 else stop + 1


def first_record_end(buf: Buf) -> int:
    """Just past the first newline of `buf` that ends a record (0: none yet)."""
    newline, quote = ("\n", '"') if isinstance(buf, str) else (b"\n", b'"')
    end = buf.find(newline)  # type: ignore[arg-type]
    while end >= 0 and buf.count(quote, 0, end) % 2:  # type: ignore[arg-type]
        end = buf.find(newline, end + 1)  # type: ignore[arg-type]
    return end + 1


def record_end(buf: Buf) -> int:
    """Just past the last newline of `buf` that ends a record (0: none yet), `buf` starting at
    a record's start: one with an even number of quote characters before it."""
    newline, quote = ("\n", '"') if isinstance(buf, str) else (b"\n", b'"')
    nl = buf.rfind(newline)  # type: ignore[arg-type]
    quotes = buf.count(quote, 0, nl) if nl >= 0 else 0  # type: ignore[arg-type]
    while nl >= 0:
        if quotes % 2 == 0:
            return nl + 1
        prev = buf.rfind(newline, 0, nl)  # type: ignore[arg-type]
        quotes -= buf.count(quote, prev + 1 if prev >= 0 else 0, nl)  # type: ignore[arg-type]
        nl = prev
    return 0


def read_header(text: io.TextIOBase) -> tuple[list[str], str]:
    """The header row of `text` and what was read past it (to hand to `candidates`): the
    header is cut by the same rule as `records`, so offsets agree with `offsets`."""
    buf = ""
    while True:
        data = text.read(BLOCK)
        buf += data
        end = first_record_end(buf)
        if end or not data:
            cut = end or len(buf)
            header = next(csv.reader(io.StringIO(buf[:cut], newline="")), [])
            return header, buf[cut:]


def candidates(
    text: io.TextIOBase, scan: Needles, rest: str = ""
) -> Iterator[tuple[int, list[str]]]:
    """The parsed rows of `rest` then `text` (from a record's start, past the header) whose CSV
    text matches `scan`, in file order, each with the UTF-8 byte offset of its record from the
    start of `rest`. Each block is lower-cased and searched; a match's record is found by the
    quote-parity rule and parsed alone by `csv`. A block whose lower-casing changes its length
    (rare non-ASCII letters) is parsed whole."""
    base = 0  # byte offset of the current block
    while True:
        data = text.read(BLOCK)
        buf = rest + data
        end = len(buf) if not data else record_end(buf)
        block, rest = buf[:end], buf[end:]
        if block:
            ascii_only = block.isascii()
            last, last_bytes = 0, 0  # a char index of `block` and its byte offset
            for start, row in _matching_records(block, scan):
                if ascii_only:
                    last_bytes = start
                else:  # matches ascend: encode only what lies between two of them
                    last_bytes += len(block[last:start].encode())
                    last = start
                yield base + last_bytes, row
            base += len(block) if ascii_only else len(block.encode())
        if not data:
            return


def _matching_records(block: str, scan: Needles) -> Iterator[tuple[int, list[str]]]:
    """(start, row) of the records of `block` (whole records) holding a match of `scan` in
    their lower-cased text."""
    digits = bool(scan.words) and all(w.isdigit() for w in scan.words)
    lowered = block if digits else block.lower()  # digits have no case: spare the copy
    if len(lowered) != len(block):
        start = 0
        for record in records(block.encode()):
            text = record.decode()
            yield start, next(csv.reader(io.StringIO(text, newline="")), [])
            start += len(text)
        return
    done = 0  # every record before `done` has been judged; `done` is a record start
    for pos in scan.find(lowered):
        if pos < done:
            continue  # inside the record just parsed
        start = block.rfind("\n", done, pos) + 1 or done
        start = max(start, done)
        while block.count('"', done, start) % 2:  # that newline sits inside a quoted field
            start = max(block.rfind("\n", done, start - 1) + 1, done)
        stop = block.find("\n", pos)
        while stop >= 0 and block.count('"', start, stop) % 2:
            stop = block.find("\n", stop + 1)
        stop = len(block) if stop < 0 else stop + 1
        yield start, next(csv.reader(io.StringIO(block[start:stop], newline="")), [])
        done = stop
