"""R10 from every source, R14, G2 and recordings (issue 16), end to end through `access_reports`.

The dev world plants R10 values where the data map does not look (`compliance_dev.world.r10_values`:
a support ticket's free text, which the CRM backups copy, and log lines with free text and
unmapped JSON keys). One consumer asks twice, under the CCPA and under the GDPR. Every member of
each bundle is unzipped and scanned for the raw values: none may appear in the CCPA bundle, where
each type's statement must; the GDPR bundle discloses them (the consumer's own data, Art. 15(3))
but not credentials (Art. 15(4)). Call audio is in the bundle by default; one recording above the
configured size limit gets its own expiring link instead.
"""

from __future__ import annotations

import io
import json
import urllib.request
import zipfile
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from compliance.core.datamap.validate import load_datamap
from compliance.core.settings import REPO_ROOT
from compliance_dev.world import r10_values

DM = load_datamap(REPO_ROOT / "config" / "datamap.yaml")
AUDIO_BUCKET = DM.stores["call_audio"].bucket
SMALL = b"RIFF\x24\x00\x00\x00WAVEfmt small planted audio"
LARGE = b"RIFF" + b"\x00" * 4096 + b"large planted audio"
VOICEPRINT = "vp1:" + "cd" * 32
LICENCE = "DLR10X7730021"  # a declared `withhold: government_id` column (G2: GDPR shows it)
NOW = datetime.now(UTC).replace(microsecond=0)


def _doc(request_id: str, client: int, email: str, **extra) -> dict:
    received = (NOW - timedelta(days=1)).isoformat()
    return {
        "request_id": request_id,
        "client_id": client,
        "type": "access",
        "identities": {"email": email},
        "received_at": received,
        "verification": {
            "method": "account_login",
            "verified_at": received,
            "verified_by": "staff-7",
        },
        **extra,
    }


def _plant_recordings(stack, contact: int, client: int) -> None:
    eng = sa.create_engine(stack.db_url)
    with eng.begin() as c:
        first = int(
            c.execute(
                sa.text("select coalesce(max(recording_id), 0) + 1 from call_recordings")
            ).scalar_one()
        )
        for n, (key, size) in enumerate(
            [(f"recordings/{client}/r10-small.wav", 3), (f"recordings/{client}/r10-large.wav", 90)]
        ):
            c.execute(
                sa.text(
                    "insert into call_recordings (recording_id, contact_id, client_id, "
                    "caller_phone, s3_key, duration_s, voiceprint, recorded_at) values "
                    "(:r, :c, :a, null, :k, :d, :v, :t)"
                ),
                {
                    "r": first + n,
                    "c": contact,
                    "a": client,
                    "k": key,
                    "d": size,
                    "v": VOICEPRINT,
                    "t": (NOW - timedelta(days=10 + n)).replace(tzinfo=None),
                },
            )
    eng.dispose()
    stack.s3.put_object(Bucket=AUDIO_BUCKET, Key=f"recordings/{client}/r10-small.wav", Body=SMALL)
    stack.s3.put_object(Bucket=AUDIO_BUCKET, Key=f"recordings/{client}/r10-large.wav", Body=LARGE)


def _drop(stack, client: int, doc: dict) -> None:
    key = f"inbox/{client}/{doc['request_id']}.ndjson"
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=json.dumps(doc).encode())


def _bundle(stack, client: int, request_id: str) -> zipfile.ZipFile:
    key = f"access/{client}/{request_id}/bundle.zip"
    raw = stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    return zipfile.ZipFile(io.BytesIO(raw))


def _forms(value: str) -> set[str]:
    """The value as planted and as its bare digits/characters (a renderer may drop separators)."""
    return {value, value.replace(" ", "").replace("-", "")}


def test_no_r10_value_in_any_file_of_a_ccpa_bundle_and_g2_for_gdpr(stack, monkeypatch):
    monkeypatch.setenv("COMPLIANCE_ACCESS_AUDIO_LINK_BYTES", "1000")
    with sa.create_engine(stack.db_url).connect() as c:
        contact, client, email = r10_values.find(c)
    _plant_recordings(stack, contact, client)
    # the live ticket is edited since the backups were taken: its R10 values now sit only in a
    # backup snapshot row (R13: the backups are searched)
    eng = sa.create_engine(stack.db_url)
    with eng.begin() as c:
        c.execute(
            sa.text("update support_tickets set body = 'Resolved.' where subject = :s"),
            {"s": r10_values.SUBJECT},
        )
        c.execute(
            sa.text("update contacts set drivers_license = :v where contact_id = :c"),
            {"v": LICENCE, "c": contact},
        )
    eng.dispose()
    # one run per request: an open request's identities make a second one a duplicate (R7)
    _drop(stack, client, _doc("R10-CCPA", client, email))
    run = stack.run_dag("access_reports", {"link_expiry_days": 2})  # audio: the default (on)
    assert run.state == "success"

    # -- CCPA: every member scanned, no raw value, each type stated ------------------------------
    zf = _bundle(stack, client, "R10-CCPA")
    members = {n: zf.read(n) for n in zf.namelist()}
    assert {"index.html", "data.json", "manifest.json"} <= set(members)
    texts = {n: b.decode("utf-8") for n, b in members.items() if not n.startswith("recordings/")}
    assert any(n.startswith("csv/") for n in texts)
    for name, body in members.items():
        for value in r10_values.VALUES.values():
            for form in _forms(value):
                assert form.encode() not in body, (name, value)
        assert VOICEPRINT.encode() not in body, name  # biometric: withheld (R10)
        assert LICENCE.encode() not in body, name  # declared government id: withheld (R10)
    data = json.loads(texts["data.json"])
    html = texts["index.html"]
    for kind, statement in r10_values.STATEMENTS.items():
        assert statement in texts["data.json"], kind
        assert statement in html, kind
    # the sources: a backup row (the ticket's free text) and log lines' unmapped keys
    tickets = {
        s["source"]: r["values"]["body"]
        for s in data["sources"]
        if s["source"].endswith(".support_tickets")
        for r in s["records"]
        if r["values"].get("subject") == r10_values.SUBJECT
    }
    assert tickets.pop("crm.support_tickets") == "Resolved."
    [backup_body] = tickets.values()
    assert "[withheld: social security number held]" in backup_body
    assert "[withheld: payment card number held]" in backup_body
    planted_lines = [
        r["values"]
        for s in data["sources"]
        if s["kind"] == "log"
        for r in s["records"]
        if "routing_number" in r["values"]
    ]
    assert planted_lines, "the planted log lines are in the bundle"
    for values in planted_lines:
        assert values["customer"]["ssn"] == "[withheld: social security number held]"
        assert values["medicare_id"] == "[withheld: Medicare beneficiary identifier held]"

    # R14: what was withheld and why, in data.json and on the page
    parts = {d["part"]: d for d in data["partial_denial"]}
    assert parts["withheld_in_text"]["basis"] == "Cal. Code Regs. tit. 11, 7024(d)"
    assert "voiceprint" in parts["withheld_fields"]["what"]
    assert 'id="partial-denial"' in html and "7024(e)" in html

    # recordings: the small one in the zip, the large one behind its own expiring link (R8, R12)
    recs = {r["metadata"].get("duration_s"): r for r in data["recordings"]}
    small, large = recs[3], recs[90]
    assert small["status"] == "included" and members[small["file"]] == SMALL
    assert large["status"] == "linked" and large["file"] is None and large["bytes"] == len(LARGE)
    assert "X-Amz-Expires=172800" in large["link"]
    with urllib.request.urlopen(large["link"], timeout=10) as resp:
        assert resp.read() == LARGE
    assert not any(n.endswith(".wav") and members[n] == LARGE for n in members)
    receipt = json.loads(
        stack.s3.get_object(Bucket=stack.bucket, Key=f"receipts/{client}/R10-CCPA.access.json")[
            "Body"
        ].read()
    )
    assert receipt["recordings"]["audio_linked"] == 1
    assert receipt["withheld_in_text"]["ssn"] >= 2 and "R14" in receipt["rules"]
    assert all(v not in json.dumps(receipt) for v in r10_values.VALUES.values())

    # -- GDPR (G2): the consumer's own numbers disclosed, credentials withheld --------------------
    _drop(stack, client, _doc("R10-GDPR", client, email, jurisdiction="gdpr"))
    assert stack.run_dag("access_reports", {"link_expiry_days": 2}).state == "success"
    gz = _bundle(stack, client, "R10-GDPR")
    gdata = gz.read("data.json").decode()
    assert r10_values.VALUES["ssn"] in gdata  # the backup row's free text, Art. 15(3)
    assert VOICEPRINT not in gdata
    g = json.loads(gdata)
    assert g["withheld_in_text"] == []
    contacts = next(s for s in g["sources"] if s["source"] == "crm.contacts")
    assert contacts["records"][0]["values"]["drivers_license"] == LICENCE  # read for GDPR only
    bases = {w["field"]: w["basis"] for w in g["withheld"]}
    assert "Art. 15(4)" in bases["crm.call_recordings.voiceprint"]
    assert "crm.contacts.drivers_license" not in bases
    assert "Art. 15(4)" in gz.read("index.html").decode()
