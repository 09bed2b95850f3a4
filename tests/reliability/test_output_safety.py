"""Output safety (issue 8): server-side encryption on every object the project writes, HTML
escaping, CSV formula neutralisation, no zip slip, bounded presigned links.

SSE is checked on the full demo (tests/reliability/demo.py): every object the runs wrote, in the
workspace bucket and in the stores (log rewrites), is `head_object`-ed for its
ServerSideEncryption header. The rest tests the access report's writers directly
(`compliance.access`), with hostile stored values.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from urllib.parse import parse_qs, urlsplit

import pytest

from . import harness as h

pytestmark = pytest.mark.slow


def test_every_object_the_project_wrote_is_encrypted(demo):
    plain = sorted(key for key, sse in demo.sse.items() if sse not in ("AES256", "aws:kms"))
    h.FIGURES["sse"] = {"objects_checked": len(demo.sse), "unencrypted": len(plain)}
    assert len(demo.sse) > 20
    assert any("@" in key for key in demo.sse)  # store rewrites were checked too
    assert plain == []


# -- the access bundle the demo delivered: stored hostile text planted for its subject ----------


def _bundle(demo) -> tuple[str, zipfile.ZipFile]:
    keys = [k for k in demo.objects if k.startswith("access/") and k.endswith("/bundle.zip")]
    assert len(keys) == 1, keys  # the demo's one access request
    return keys[0], zipfile.ZipFile(io.BytesIO(demo.objects[keys[0]]))


def test_bundle_members_cannot_escape_the_folder_they_are_extracted_to(demo, tmp_path):
    from compliance.access import bundle

    _, zf = _bundle(demo)
    names = zf.namelist()
    assert names and all(bundle.MEMBER.fullmatch(n) for n in names), names
    root = tmp_path.resolve()
    for name in names:  # what an unzip tool would write: every path stays under root
        assert (root / name).resolve().is_relative_to(root), name
        assert not name.startswith("/") and "\\" not in name and ".." not in name.split("/")
    assert bundle.verify_manifest(zf) == []


def test_stored_markup_is_escaped_in_the_html(demo):
    """A message body holding markup is shown as text (Jinja2 autoescape), never parsed."""
    _, zf = _bundle(demo)
    html = zf.read("index.html").decode()
    assert "&lt;script&gt;alert(" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script" not in html.lower() and "<img" not in html.lower()
    assert "default-src 'none'" in html  # and the CSP forbids scripts and network anyway


def test_csv_cells_are_never_formulas(demo):
    from .demo import HOSTILE_CSV

    _, zf = _bundle(demo)
    cells = []
    for name in zf.namelist():
        if name.startswith("csv/"):
            rows = list(csv.reader(io.StringIO(zf.read(name).decode("utf-8"))))
            cells += [cell for row in rows[1:] for cell in row]
    assert cells
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
    for hostile in HOSTILE_CSV:  # the planted values are there, defused
        assert "'" + hostile in cells


def test_download_link_expires_within_the_bound(demo):
    from compliance.access.deliver import MAX_LINK_DAYS

    key, _ = _bundle(demo)
    link = json.loads(demo.objects[key.replace("bundle.zip", "link.json")])
    query = parse_qs(urlsplit(link["url"]).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]  # SigV4: the expiry is signed
    assert int(query["X-Amz-Expires"][0]) == 3 * 86400  # the form asked for 3 days
    assert int(query["X-Amz-Expires"][0]) <= MAX_LINK_DAYS * 86400
