"""The SQL oracle searching a table in block ranges side by side finds exactly what one statement
finds (R16.1; issue 19: `finalize` ran one serial statement over 22M rows on a two-core machine).

PostgreSQL only (the only database the ranges are used on). The oracle's CRM from
`test_oracle`, its notes table grown to a few hundred pages, with the erased consumer's e-mail
planted in notes spread over the heap (first page, middle, last page, and a note another tenant's
twin wrote). One statement and three ranges must give the same verdict, and the ranges must
really have been used.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from compliance.deletion.residue_oracle import sql_parts
from tests.unit.test_oracle import EMAIL, crm, logs, run  # noqa: F401 (fixtures)

PLANTED = [0, 1, 777, 1500, 2998]  # note numbers holding the e-mail (tenant 1's contact 6)


@pytest.fixture
def grown(crm, db_url):  # noqa: F811
    if not db_url.startswith("postgresql"):
        pytest.skip("block ranges are a PostgreSQL search")
    engine, md = crm
    notes = md.tables["notes"]
    filler = "routine follow-up about the trade-in appraisal and the financing options. " * 8
    rows = [
        {
            "note_id": 100 + i,
            "contact_id": 7 if i == 1500 else 6,  # 1500: tenant 2's twin, not residue
            "body": f"{filler} reach me at {EMAIL}" if i in PLANTED else filler,
            "memo": f"n{i}",
        }
        for i in range(3000)
    ]
    with engine.begin() as c:
        c.execute(notes.insert(), rows)
    return crm


def test_three_block_ranges_find_what_one_statement_finds(grown, logs, monkeypatch):  # noqa: F811
    s3, _ = logs
    whole = run(grown, s3)
    seen: list[int] = []
    ranges = sql_parts.block_ranges

    def spied(conn, table):
        parts = ranges(conn, table)
        seen.append(len(parts))
        return parts

    monkeypatch.setattr(sql_parts, "MIN_BLOCKS", 1)
    monkeypatch.setattr(sql_parts, "PARTS", 3)
    monkeypatch.setattr("compliance.deletion.residue_oracle.sql_search.block_ranges", spied)
    split = run(grown, s3)
    assert 3 in seen  # the notes table was searched in three ranges
    assert whole.residue["crm:notes.body"] == len(PLANTED) - 1  # the twin's note is not ours
    assert dict(split.residue) == dict(whole.residue)
    assert split.sql == whole.sql


def test_every_row_lies_in_exactly_one_range(grown, monkeypatch):
    engine, md = grown
    monkeypatch.setattr(sql_parts, "MIN_BLOCKS", 1)
    monkeypatch.setattr(sql_parts, "PARTS", 4)
    notes = md.tables["notes"]
    with engine.connect() as conn:
        parts = sql_parts.block_ranges(conn, notes)
        assert len(parts) == 4
        counts = [
            conn.execute(sa.select(sa.func.count()).select_from(notes).where(p)).scalar()
            for p in parts
        ]
        total = conn.execute(sa.select(sa.func.count()).select_from(notes)).scalar()
    assert sum(counts) == total and all(counts)
