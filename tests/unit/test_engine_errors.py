"""No PII in exceptions: a failing statement's parameters (identities) stay out of the error
message of every engine the product builds (`core.stores.sql.engine_from_url`), on SQLite and
PostgreSQL alike."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from compliance.core.stores.sql import engine_from_url, scratch_engine

SECRET = "jane.roe77@example.test"


def test_a_failing_statement_does_not_carry_its_parameters(db_url):
    engine = engine_from_url(db_url)
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as err:
            conn.execute(sa.text("SELECT * FROM no_such_table WHERE email = :e"), {"e": SECRET})
        assert SECRET not in str(err.value)
        assert "no_such_table" in str(err.value)  # the error itself still says what failed
    finally:
        engine.dispose()


def test_a_scratch_snapshot_engine_hides_them_too(tmp_path):
    engine = scratch_engine(tmp_path / "snapshot.db")
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as err:
            conn.execute(sa.text("SELECT * FROM no_such_table WHERE email = :e"), {"e": SECRET})
        assert SECRET not in str(err.value) and "no_such_table" in str(err.value)
    finally:
        engine.dispose()
