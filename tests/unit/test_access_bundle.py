"""The access bundle as a pure function of its report: escaping, CSV formulas, checksums, member
names, withheld values and byte-for-byte determinism (R8, R10, R11, R12)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime

import pytest

from compliance.access import bundle, disclosure, report
from compliance.core.datamap.validate import load_datamap
from compliance.core.settings import REPO_ROOT

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
WHEN = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
SCRIPT = '<script>alert("pwned")</script>'
SECRET_DL = "D9988776"
SECRET_BANK = "000123456789"
SECRET_ANSWER = "Rosebud-in-the-snow"


def _request(**over) -> dict:
    req = {
        "request_id": "../../etc/passwd",  # hostile text never names a member
        "client_id": 3,
        "jurisdiction": "ccpa",
        "look_back": "default",
        "received_at": "2026-11-18T10:00:00+00:00",
        "since": "2025-11-18T00:00:00+00:00",
        "until": "2026-11-18T10:00:00+00:00",
    }
    return req | over


def _records() -> list[dict]:
    return [
        {
            "source": "crm.contacts",
            "record": 7,
            "collected_at": "2026-01-02T03:04:05Z",
            "values": {
                "first_name": "=cmd|' /C calc'!A0",
                "email": "jo@example.com",
                "city": SCRIPT,
            },
            "withheld": ["drivers_license"],
        },
        {
            "source": "crm.messages",
            "record": 40,
            "collected_at": "2026-02-01T00:00:00Z",
            "values": {"body": SCRIPT, "to_address": "@SUM(1+1)"},
            "withheld": [],
        },
        {
            "source": "crm.messages",
            "record": 12,
            "collected_at": "2026-01-01T00:00:00Z",
            "values": {"body": "+1 555 0100 call me", "to_address": "-2+3"},
            "withheld": [],
        },
        {
            "source": "crm.payments",
            "record": 5,
            "collected_at": "2026-03-01T00:00:00Z",
            "values": {"amount_cents": -500, "card_brand": "visa"},
            "withheld": ["bank_account"],
        },
        {
            "source": "crm.call_recordings",
            "record": 9,
            "collected_at": "2026-04-01T00:00:00Z",
            "values": {"caller_phone": "+14155550100", "duration_s": 61},
            "withheld": ["voiceprint"],
            "object": "recordings/3/../../9.wav",
        },
        {
            "source": "app_logs",
            "record": None,
            "collected_at": "2026-05-01T00:00:00Z",
            "values": {"email": "jo@example.com", "msg": SCRIPT, "path": "/portal/login"},
            "withheld": [],
        },
    ]


def _report(records=None, recordings=None, **req) -> dict:
    return report.assemble(
        DM,
        _request(**req),
        {"email": ["jo@example.com"]},
        _records() if records is None else records,
        retention=disclosure.Retention({}, available=False),
        generated_at=WHEN,
        recordings=recordings,
    )


def _zip(rep: dict, audio=()) -> tuple[bytes, bundle.BundleInfo]:
    out = io.BytesIO()
    info = bundle.write_bundle(out, rep, audio=audio)
    return out.getvalue(), info


def test_html_escapes_stored_text_and_has_no_script_or_external_resource():
    raw, _ = _zip(_report())
    html = zipfile.ZipFile(io.BytesIO(raw)).read("index.html").decode()
    assert SCRIPT not in html
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    assert "<script" not in html.lower()  # the template itself has none: a CSP forbids it too
    assert "script-src" not in html and "default-src 'none'" in html
    for external in ("http://", "https://", "//fonts", "<link", "<img", "@import"):
        assert external not in html


def test_csv_cells_starting_with_formula_characters_are_neutralised():
    raw, _ = _zip(_report())
    zf = zipfile.ZipFile(io.BytesIO(raw))
    cells = []
    for name in zf.namelist():
        if name.startswith("csv/"):
            rows = list(csv.reader(io.StringIO(zf.read(name).decode())))
            assert rows[0] == list(bundle.CSV_HEADER)
            cells += [c for row in rows[1:] for c in row]
    assert cells
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert "'=cmd|' /C calc'!A0" in cells and "'@SUM(1+1)" in cells and "'-2+3" in cells
    assert "'+1 555 0100 call me" in cells and "'-500" in cells
    # data.json keeps the real values: neutralising is a CSV concern only
    data = json.loads(zf.read("data.json"))
    contacts = next(s for s in data["sources"] if s["source"] == "crm.contacts")
    assert contacts["records"][0]["values"]["first_name"] == "=cmd|' /C calc'!A0"


def test_manifest_checksums_verify_and_cover_every_member():
    raw, info = _zip(_report())
    zf = zipfile.ZipFile(io.BytesIO(raw))
    assert bundle.verify_manifest(zf) == []
    manifest = json.loads(zf.read("manifest.json"))
    assert {f["name"] for f in manifest["files"]} == set(zf.namelist()) - {"manifest.json"}
    assert manifest["request_id"] == "../../etc/passwd" and manifest["client_id"] == 3
    assert manifest["window"] == {
        "since": "2025-11-18T00:00:00+00:00",
        "until": "2026-11-18T10:00:00+00:00",
    }
    assert manifest["generator"]["version"]
    assert info.sha256 == hashlib.sha256(raw).hexdigest() and info.size == len(raw)
    # tampering is detected
    tampered = io.BytesIO()
    with zipfile.ZipFile(tampered, "w") as out:
        for name in zf.namelist():
            body = zf.read(name)
            out.writestr(name, body + b" " if name == "data.json" else body)
    assert bundle.verify_manifest(zipfile.ZipFile(tampered)) == ["data.json"]


def test_member_names_are_ours_only():
    audio = [bundle.Audio(bundle.recording_name(1, "x/../../evil.sh"), lambda: io.BytesIO(b"RIFF"))]
    recordings = {("crm.call_recordings", "9"): {"file": audio[0].name, "status": "included"}}
    raw, _ = _zip(_report(recordings=recordings), audio)
    names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
    assert "recordings/recording-0001.bin" in names
    for name in names:
        assert bundle.MEMBER.fullmatch(name) and ".." not in name and not name.startswith("/")
    with pytest.raises(bundle.BundleError):
        bundle._info("../outside.txt", WHEN)
    with pytest.raises(bundle.BundleError):
        bundle._info("csv/../../x.csv", WHEN)


def test_withheld_values_are_absent_and_stated():
    records = _records()
    # even if a part carried a withheld value by mistake, the report drops it (belt and braces)
    records[0]["values"]["drivers_license"] = SECRET_DL
    records[3]["values"]["bank_account"] = SECRET_BANK
    records.append(
        {
            "source": "crm.portal_accounts",
            "record": 2,
            "collected_at": "2026-06-01T00:00:00Z",
            "values": {"username": "jo", "security_answer": SECRET_ANSWER},
            "withheld": ["password_hash", "security_answer"],
        }
    )
    raw, _ = _zip(_report(records=records))
    zf = zipfile.ZipFile(io.BytesIO(raw))
    for name in zf.namelist():
        body = zf.read(name)
        for secret in (SECRET_DL, SECRET_BANK, SECRET_ANSWER):
            assert secret.encode() not in body, (name, secret)
    data = json.loads(zf.read("data.json"))
    kinds = {w["kind"] for w in data["withheld"]}
    assert kinds == {
        "government_id",
        "financial_account",
        "password",
        "security_answer",
        "biometric",
    }
    statements = " ".join(w["statement"] for w in data["withheld"])
    assert "driver's licence" in statements and "(R10)" in statements
    html = zf.read("index.html").decode()
    assert "financial account number is held (field bank_account)" in html
    sensitive = zf.read("csv/sensitive.csv").decode()
    assert "drivers_license" in sensitive and disclosure.WITHHELD_CELL in sensitive


def test_output_is_deterministic():
    first, _ = _zip(_report())
    second, _ = _zip(_report(records=list(reversed(_records()))))  # order of parts is irrelevant
    assert first == second


def test_report_content_r8_r13_and_windows():
    rep = _report()
    cats = {c["category"]: c for c in rep["categories"]}
    assert {"identifiers", "customer_records", "commercial", "sensory", "biometric"} <= set(cats)
    ident = cats["identifiers"]
    assert ident["sources"] and ident["purposes"] and ident["third_parties"]
    assert ident["retention"] == [disclosure.SEE_POLICY]  # no policy readable: say so
    assert rep["not_searched"] == []  # R13: the demo's backups are searched (docs/access.md)
    assert rep["window"]["rule"] == "R9" and "12 months" in rep["window"]["text"]
    gdpr = _report(jurisdiction="gdpr", look_back="all", since=None)
    assert gdpr["window"]["rule"] == "G2" and "no look-back limit" in gdpr["window"]["text"]
    since_2022 = _report(look_back="since_2022", since="2022-01-01T00:00:00+00:00")
    assert "2022-01-01" in since_2022["window"]["text"]
    # log lines: the whole line but the tenant; records sorted by time
    messages = next(s for s in rep["sources"] if s["source"] == "crm.messages")
    assert [r["record"] for r in messages["records"]] == [12, 40]
    logs = next(s for s in rep["sources"] if s["source"] == "app_logs")
    assert logs["kind"] == "log" and {"msg", "path"} <= {f["name"] for f in logs["fields"]}


def test_empty_report_still_builds():
    raw, _ = _zip(_report(records=[]))
    zf = zipfile.ZipFile(io.BytesIO(raw))
    assert sorted(zf.namelist()) == ["data.json", "index.html", "manifest.json"]
    assert "We hold no personal information about you" in zf.read("index.html").decode()


# -- R5: verified for categories only (issue 15) --------------------------------------------------


def _categories_report() -> dict:
    return report.assemble_categories(
        DM,
        _request(),
        retention=disclosure.Retention({}, available=False),
        generated_at=WHEN,
    )


def test_categories_only_bundle_is_the_categories_page_and_says_why():
    """R5 (Reg 7024(a)-(b)): a right-to-know request the business verified only for categories
    is answered with the R8 categories (sources, purposes, third parties) and nothing else: no
    record, no withheld statement, no CSV; index.html, data.json and the manifest say why."""
    rep = _categories_report()
    raw, _ = _zip(rep)
    zf = zipfile.ZipFile(io.BytesIO(raw))
    assert sorted(zf.namelist()) == ["data.json", "index.html", "manifest.json"]
    data = json.loads(zf.read("data.json"))
    assert data["scope"]["level"] == "categories" and data["scope"]["rule"] == "R5"
    assert "7024(a)-(b)" in data["scope"]["basis"]
    assert data["sources"] == [] and data["recordings"] == [] and data["withheld"] == []
    assert data["request"]["identities"] == {}  # not even the identities the business gave
    cats = {c["category"]: c for c in data["categories"]}
    assert [c.value for c in disclosure.mapped_categories(DM)] == list(cats)
    assert {"identifiers", "commercial", "sensory", "internet_activity"} <= set(cats)
    assert all(c["sources"] and c["purposes"] and c["records"] is None for c in cats.values())
    manifest = json.loads(zf.read("manifest.json"))
    assert manifest["scope"]["level"] == "categories" and "R5" in manifest["scope"]["text"]
    html = zf.read("index.html").decode()
    assert "Categories only." in html and "7024(a)-(b)" in html
    assert "Records about you" not in html and "The information itself" not in html
    assert "Nothing: categories only (R5)" in html
    for cat in cats.values():
        assert cat["title"].split(" (")[0].replace("'", "&#39;") in html
    # a full report says what it is too
    assert _report()["scope"]["level"] == "specific_pieces"
