"""The bundle: one zip per request, written deterministically from its report (R8, R11, R12).

Members, all named by us (stored text never becomes a member name, so no zip slip):

- `index.html`: the readable page (`render.render_html`);
- `data.json`: the report itself (schema in docs/access.md);
- `csv/<category>.csv`: one long-format table per CCPA category (`source, record, collected_at,
  field, value`), for spreadsheets; a cell starting with `= + - @` (or a tab or carriage return)
  gets a leading apostrophe so no spreadsheet runs it as a formula (OWASP CSV injection);
- `recordings/recording-NNNN.<ext>`: call audio (R8), unless the run leaves it out or a file
  is above the size limit (then `data.json` lists its own expiring link instead);
- `manifest.json`: the SHA-256 and size of every other member, the request, the window and the
  generator version.

R10 from every source: every text member (page, JSON, CSV, manifest) passes through the R10
scanner (`access.r10`) of the request's jurisdiction as it is written, after the report's own
values were scanned field by field: a value that reached the text by any path is replaced by a
statement of its type. Audio is binary and is not scanned.

Same inputs, same bytes: fixed member order, timestamps from the batch's `generated_at`, fixed
permissions and compression level. The zip is written to a caller-supplied file (a spooled
temporary file), so memory stays bounded even with audio.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from compliance.access import r10, render
from compliance.core.datamap.model import Category

INDEX = "index.html"
DATA = "data.json"
MANIFEST = "manifest.json"
CSV_HEADER = ("source", "record", "collected_at", "field", "value")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
AUDIO_TYPES = {"wav", "mp3", "m4a", "ogg", "flac", "opus", "aac"}
MEMBER = re.compile(
    r"(index\.html|data\.json|manifest\.json|csv/[a-z_]+\.csv"
    r"|recordings/recording-[0-9]{4,}\.[a-z0-9]{1,5})"
)
COPY_CHUNK = 1 << 20


class BundleError(ValueError):
    """A bundle could not be built as specified (e.g. a member name we would not write)."""


@dataclass(frozen=True)
class Audio:
    """One recording to put in the bundle: its member name and how to open its bytes."""

    name: str
    open: Callable[[], IO[bytes]]


@dataclass(frozen=True)
class BundleInfo:
    sha256: str
    size: int
    files: dict[str, str]  # member -> sha256 (manifest excluded)


def recording_name(index: int, object_key: str) -> str:
    """`recordings/recording-0001.wav`: a number we assign and an extension from a short list."""
    ext = object_key.rsplit(".", 1)[-1].lower() if "." in object_key else ""
    return f"recordings/recording-{index:04d}.{ext if ext in AUDIO_TYPES else 'bin'}"


def neutralise(text: str) -> str:
    """A CSV cell no spreadsheet will evaluate: a leading apostrophe before = + - @ tab CR."""
    return "'" + text if text.startswith(FORMULA_START) else text


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def category_csvs(report: dict[str, Any]) -> dict[str, bytes]:
    """`csv/<category>.csv` -> bytes, for every category with at least one value or statement."""
    rows: dict[str, list[tuple[str, ...]]] = {}
    for src in report["sources"]:
        for i, rec in enumerate(src["records"], start=1):
            record = rec["record"] if rec["record"] is not None else f"line {i}"
            for f in src["fields"]:
                name = f["name"]
                if name in rec["withheld"]:
                    value = rec["withheld"][name]
                elif rec["values"].get(name) not in (None, ""):
                    value = rec["values"][name]
                else:
                    continue
                for cat in f["categories"]:
                    rows.setdefault(Category(cat).value, []).append(
                        (src["source"], record, rec["collected_at"], name, value)
                    )
    out: dict[str, bytes] = {}
    for cat in Category:  # enum order: stable, and names come from the enum, never from data
        if cat.value not in rows:
            continue
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(CSV_HEADER)
        for row in rows[cat.value]:
            writer.writerow([neutralise(_csv_text(v)) for v in row])
        out[f"csv/{cat.value}.csv"] = buf.getvalue().encode("utf-8")
    return out


def _info(name: str, when: datetime) -> zipfile.ZipInfo:
    if not MEMBER.fullmatch(name) or ".." in name:
        raise BundleError(f"refusing to write member {name!r}: bundle names are fixed by us")
    stamp = max(when.timetuple()[:6], (1980, 1, 1, 0, 0, 0))
    info = zipfile.ZipInfo(name, date_time=stamp)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = 0o644 << 16
    return info


def write_bundle(
    out: IO[bytes],
    report: dict[str, Any],
    *,
    audio: Iterable[Audio] = (),
) -> BundleInfo:
    """Write the zip of one report to `out` (binary, seekable); return its checksum and size.

    Audio members are streamed from their openers; the report's `recordings` entries must
    already name them (the caller decides which are included before rendering).
    """
    when = datetime.fromisoformat(report["generated_at"])
    files: dict[str, str] = {}
    sizes: dict[str, int] = {}
    csvs = category_csvs(report)
    audio = list(audio)
    data = json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")
    listed = [DATA, *csvs, *(a.name for a in audio), MANIFEST]
    html = render.render_html(report, listed).encode("utf-8")
    scanner = r10.Scanner.for_jurisdiction(report["request"]["jurisdiction"])
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:

        def put(name: str, body: bytes) -> None:
            body = scanner.redact_text(body.decode("utf-8")).encode("utf-8")  # R10, last line
            zf.writestr(
                _info(name, when), body, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6
            )
            files[name] = hashlib.sha256(body).hexdigest()
            sizes[name] = len(body)

        put(INDEX, html)
        put(DATA, data)
        for name, body in csvs.items():
            put(name, body)
        for item in audio:
            digest, size = hashlib.sha256(), 0
            with item.open() as src, zf.open(_info(item.name, when), "w") as dst:
                while chunk := src.read(COPY_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    dst.write(chunk)
            files[item.name], sizes[item.name] = digest.hexdigest(), size
        manifest = {
            "request_id": report["request"]["request_id"],
            "client_id": report["request"]["client_id"],
            "window": {"since": report["window"]["since"], "until": report["window"]["until"]},
            "generated_at": report["generated_at"],
            "generator": report["generator"],
            "schema": report["schema"],
            # R5: "categories" when the consumer was verified only for categories, with why
            "scope": report.get("scope"),
            "algorithm": "sha256",
            "files": [
                {"name": name, "sha256": files[name], "bytes": sizes[name]}
                for name in sorted(files)
            ],
        }
        put(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
    out.flush()
    size = out.seek(0, io.SEEK_END)
    out.seek(0)
    digest = hashlib.sha256()
    while chunk := out.read(COPY_CHUNK):
        digest.update(chunk)
    out.seek(0)
    files.pop(MANIFEST)
    return BundleInfo(digest.hexdigest(), size, files)


def verify_manifest(zf: zipfile.ZipFile) -> list[str]:
    """Members whose bytes do not match the manifest, plus any member it does not list."""
    manifest = json.loads(zf.read(MANIFEST))
    listed = {f["name"]: f["sha256"] for f in manifest["files"]}
    bad = [n for n, h in listed.items() if hashlib.sha256(zf.read(n)).hexdigest() != h]
    extra = [n for n in zf.namelist() if n not in listed and n != MANIFEST]
    return sorted(bad + extra)
