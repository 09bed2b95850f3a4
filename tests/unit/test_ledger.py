"""The audit ledger (compliance.core.ledger, R20): MAC chain, tamper detection, idempotency, PII guard.

Tampering is done with raw SQL, as someone with write access to the database but without
COMPLIANCE_HASH_KEY would do it.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import subprocess
import sys
import threading

import pytest
from sqlalchemy import text

from compliance.core import ledger
from compliance.core.hashing import keyed_hash
from compliance.core.ledger import Entry, Head
from compliance.core.stores.sql import engine_from_url
from compliance.requests import state

KEY = b"unit-test-ledger-key"
REF = keyed_hash(KEY, "email", "someone@example.com")


@pytest.fixture
def engine(db_url):
    eng = engine_from_url(db_url)
    state.create_state_schema(eng)
    yield eng
    eng.dispose()


def _fill(engine, n: int = 5) -> list[int]:
    entries = [
        Entry(
            "erasure_completed",
            ref=f"batch-{i}",
            payload={"deleted": {"crm.contacts": i, "crm.leads": 2 * i}, "rules": ["R16", "R18"]},
        )
        for i in range(1, n + 1)
    ]
    return ledger.append(engine, KEY, entries)


def _sql(engine, sql: str, **params) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql), params)


def _bad(engine, expected_head=None) -> tuple[int | None, str | None]:
    result = ledger.verify(engine, KEY, expected_head=expected_head)
    assert not result.ok
    return result.first_bad_seq, result.problem


# --------------------------------------------------------------------------- happy path


def test_append_and_verify(engine):
    assert ledger.head(engine) is None
    assert ledger.verify(engine, KEY).ok  # an empty ledger is intact
    assert _fill(engine, 3) == [1, 2, 3]
    more = ledger.append(
        engine,
        KEY,
        [
            Entry("request_accepted", ref=REF, payload={"client_id": 7, "rules": ["R1", "R3"]}),
            Entry("access_delivered", payload={"key": "access/2024-01-05/17/bundle.zip"}),
        ],
    )
    assert more == [4, 5]
    result = ledger.verify(engine, KEY)
    assert (result.ok, result.entries, result.first_bad_seq, result.problem) == (
        True,
        5,
        None,
        None,
    )
    assert result.head == ledger.head(engine)
    assert result.head.seq == 5
    assert ledger.verify(engine, KEY, expected_head=result.head).ok

    rows = ledger.entries(engine)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_mac == ledger.GENESIS_MAC
    assert all(b.prev_mac == a.mac for a, b in itertools.pairwise(rows))
    assert rows[3].payload == {"client_id": 7, "rules": ["R1", "R3"]}
    assert [r.seq for r in ledger.entries(engine, kind="request_accepted", ref=REF)] == [4]
    assert ledger.append(engine, KEY, []) == []


def test_wrong_key_fails_at_first_entry(engine):
    _fill(engine, 2)
    result = ledger.verify(engine, b"another-key")
    assert (result.ok, result.first_bad_seq) == (False, 1)


# --------------------------------------------------------------------------- tampering


def test_edited_payload_is_detected(engine):
    _fill(engine)
    _sql(engine, "UPDATE cj_ledger SET payload = :p WHERE seq = 3", p='{"deleted":{}}')
    seq, problem = _bad(engine)
    assert seq == 3
    assert "MAC" in problem


def test_edited_kind_is_detected(engine):
    _fill(engine)
    _sql(engine, "UPDATE cj_ledger SET kind = 'retention_sweep' WHERE seq = 2")
    assert _bad(engine)[0] == 2


def test_edited_timestamp_is_detected(engine):
    _fill(engine)
    _sql(engine, "UPDATE cj_ledger SET at = '2023-06-01 00:00:00.000000' WHERE seq = 4")
    assert _bad(engine)[0] == 4


def test_deleted_entry_is_detected(engine):
    _fill(engine)
    _sql(engine, "DELETE FROM cj_ledger WHERE seq = 3")
    seq, problem = _bad(engine)
    assert seq == 3
    assert "missing" in problem


def test_deleted_first_entry_is_detected(engine):
    _fill(engine)
    _sql(engine, "DELETE FROM cj_ledger WHERE seq = 1")
    assert _bad(engine)[0] == 1


def test_swapped_entries_are_detected(engine):
    _fill(engine)
    _sql(engine, "UPDATE cj_ledger SET seq = -1 WHERE seq = 2")
    _sql(engine, "UPDATE cj_ledger SET seq = 2 WHERE seq = 4")
    _sql(engine, "UPDATE cj_ledger SET seq = 4 WHERE seq = -1")
    seq, problem = _bad(engine)
    assert seq == 2
    assert "link" in problem


def test_changed_mac_is_detected(engine):
    _fill(engine)
    _sql(engine, "UPDATE cj_ledger SET mac = :m WHERE seq = 4", m="f" * 64)
    assert _bad(engine)[0] == 4


def test_recomputed_unkeyed_chain_is_detected(engine):
    """Rewriting a payload and recomputing every MAC with a guessed key does not pass."""
    _fill(engine, 3)
    _sql(engine, "UPDATE cj_ledger SET payload = '{}' WHERE seq = 2")
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT seq FROM cj_ledger ORDER BY seq")).all()
    prev = ledger.GENESIS_MAC
    for (seq,) in rows:
        mac = hashlib.sha256(f"{prev}{seq}".encode()).hexdigest()
        _sql(
            engine,
            "UPDATE cj_ledger SET prev_mac = :p, mac = :m WHERE seq = :s",
            p=prev,
            m=mac,
            s=seq,
        )
        prev = mac
    assert _bad(engine)[0] == 1


def test_forged_entry_is_detected(engine):
    _fill(engine)
    last = ledger.head(engine)
    forged = hmac.new(b"guessed-key", b"anything", hashlib.sha256).hexdigest()
    _sql(
        engine,
        "INSERT INTO cj_ledger (seq, at, kind, ref, payload, idempotency_key, prev_mac, mac) "
        "VALUES (6, '2024-01-01 00:00:00.000000', 'erasure_completed', 'batch-x', '{}', NULL, "
        ":prev, :mac)",
        prev=last.mac,
        mac=forged,
    )
    seq, problem = _bad(engine)
    assert seq == 6
    assert "MAC" in problem


def test_forged_entry_in_the_middle_is_detected(engine):
    _fill(engine)
    for seq in (5, 4, 3):  # make room: shift 3..5 up by one, newest first
        _sql(engine, "UPDATE cj_ledger SET seq = :n WHERE seq = :o", n=seq + 1, o=seq)
    mac2 = ledger.entries(engine)[1].mac
    _sql(
        engine,
        "INSERT INTO cj_ledger (seq, at, kind, ref, payload, idempotency_key, prev_mac, mac) "
        "VALUES (3, '2024-01-01 00:00:00.000000', 'erasure_completed', NULL, '{}', NULL, "
        ":prev, :mac)",
        prev=mac2,
        mac="0" * 64,
    )
    assert _bad(engine)[0] == 3


def test_truncated_tail_needs_a_checkpoint(engine):
    _fill(engine)
    checkpoint = ledger.head(engine)
    _sql(engine, "DELETE FROM cj_ledger WHERE seq >= 4")
    # The documented limit: a shorter chain is still a valid chain.
    assert ledger.verify(engine, KEY).ok
    seq, problem = _bad(engine, expected_head=checkpoint)
    assert seq == 4
    assert "truncated" in problem
    # A checkpoint given as a plain tuple works too.
    assert _bad(engine, expected_head=(checkpoint.seq, checkpoint.mac))[0] == 4


def test_checkpoint_detects_a_rewritten_chain(engine):
    _fill(engine, 3)
    checkpoint = ledger.head(engine)
    _sql(engine, "DELETE FROM cj_ledger")
    ledger.append(engine, KEY, [Entry("retention_sweep", payload={"n": i}) for i in range(4)])
    assert ledger.verify(engine, KEY).ok
    seq, problem = _bad(engine, expected_head=checkpoint)
    assert seq == 3
    assert "checkpoint" in problem


def test_head_parse():
    head = Head(12, "a" * 64)
    assert Head.parse(str(head)) == head
    for bad in ("12", "x:" + "a" * 64, "12:abc", "12:" + "A" * 64):
        with pytest.raises(ValueError):
            Head.parse(bad)


# --------------------------------------------------------------------------- idempotency


def test_idempotency_keys_prevent_duplicates(engine):
    first = ledger.append(
        engine,
        KEY,
        [
            Entry("request_accepted", ref=REF, payload={"n": 1}, idempotency_key="accept:7:r1"),
            Entry("request_accepted", ref=REF, payload={"n": 2}, idempotency_key="accept:7:r2"),
        ],
    )
    assert first == [1, 2]
    # A rerun (same keys) appends nothing and reports the original seqs.
    rerun = ledger.append(
        engine,
        KEY,
        [
            Entry("request_accepted", ref=REF, payload={"n": 1}, idempotency_key="accept:7:r2"),
            Entry("erasure_completed", payload={}, idempotency_key="erase:b1"),
            Entry("erasure_completed", payload={}, idempotency_key="erase:b1"),
            Entry("erasure_completed", payload={}),  # no key: always appended
        ],
    )
    assert rerun == [2, 3, 3, 4]
    assert ledger.head(engine).seq == 4
    assert ledger.verify(engine, KEY).ok


# --------------------------------------------------------------------------- PII guard


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        (Entry("x", payload={"contact": "jane.doe@example.com"}), "payload.contact"),
        (Entry("x", payload={"who": {"list": ["ok", "Jane <jd@mail.example.org>"]}}), "list[1]"),
        (Entry("x", payload={"phone": "+1 415 555 0100"}), "payload.phone"),
        (Entry("x", payload={"phone": "+14155550100"}), "payload.phone"),
        (Entry("x", payload={"note": "call (415) 555-0100"}), "payload.note"),
        (Entry("x", payload={"a@b.co": 1}), "payload.<key #1>"),
        (Entry("x", ref="someone@example.com"), "ref"),
        (Entry("x", idempotency_key="accept:+14155550100"), "idempotency_key"),
    ],
)
def test_pii_guard(engine, entry, where):
    with pytest.raises(ValueError) as exc:
        ledger.append(engine, KEY, [Entry("ok", payload={"n": 1}), entry])
    message = str(exc.value)
    assert where in message
    assert "@" not in message and "555" not in message  # the value itself is never echoed
    assert ledger.head(engine) is None  # nothing was written


def test_pii_guard_lets_ordinary_values_through(engine):
    payload = {
        "s3_key": "access/2024-01-05/17/req-4711000001/bundle.zip",
        "request_id": "4711000001",
        "received_at": "2024-01-05T10:11:12+00:00",
        "subject": REF,
        "counts": {"crm.contacts": 3, "recordings": 0},
        "rules": ["R16", "R18", "R20"],
        "epoch": "1704412800",
        "version": "1.2.3",
    }
    assert ledger.append(engine, KEY, [Entry("access_delivered", ref="b-1", payload=payload)]) == [
        1
    ]
    assert ledger.entries(engine)[0].payload == payload


def test_entry_validation(engine):
    with pytest.raises(ValueError):
        ledger.append(engine, KEY, [Entry("Bad Kind")])
    with pytest.raises(ValueError):
        ledger.append(engine, KEY, [Entry("x", ref="r" * 129)])
    with pytest.raises(ValueError):
        ledger.append(engine, b"", [Entry("x")])
    with pytest.raises(TypeError):
        ledger.append(engine, KEY, [Entry("x", payload={"obj": object()})])


# --------------------------------------------------------------------------- concurrency


def test_concurrent_appends_keep_one_chain(engine):
    """Two writers x 50 appends (and both replaying the same idempotency keys)."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def writer(name: str) -> None:
        try:
            barrier.wait()
            for i in range(50):
                ledger.append(engine, KEY, [Entry("retention_sweep", payload={"w": name, "i": i})])
                ledger.append(engine, KEY, [Entry("notice_sent", idempotency_key=f"shared-{i}")])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    result = ledger.verify(engine, KEY)
    assert result.ok, result.problem
    assert result.entries == 150  # 2 x 50 plain + 50 shared keys once each
    shared = ledger.entries(engine, kind="notice_sent")
    assert sorted(e.idempotency_key for e in shared) == sorted(f"shared-{i}" for i in range(50))


# --------------------------------------------------------------------------- CLI


def _cli(db_url: str, *extra: str, key: bytes = KEY) -> subprocess.CompletedProcess:
    env = {**os.environ, "COMPLIANCE_HASH_KEY": key.decode()}
    return subprocess.run(
        [sys.executable, "-m", "compliance", "ledger", "verify", "--db", db_url, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_verify_exit_codes(engine, db_url):
    _fill(engine)
    ok = _cli(db_url)
    assert ok.returncode == 0, ok.stderr
    head = ledger.head(engine)
    assert "5 entries" in ok.stdout
    assert str(head) in ok.stdout

    assert _cli(db_url, "--head", str(head)).returncode == 0
    assert _cli(db_url, key=b"not-the-key").returncode == 1

    _sql(engine, "DELETE FROM cj_ledger WHERE seq = 5")
    assert _cli(db_url).returncode == 0  # tail truncation: invisible without a checkpoint
    cut = _cli(db_url, "--head", str(head))
    assert cut.returncode == 1
    assert "entry 5" in cut.stderr and "truncated" in cut.stderr

    _sql(engine, "UPDATE cj_ledger SET payload = '{}' WHERE seq = 2")
    bad = _cli(db_url)
    assert bad.returncode == 1
    assert "entry 2" in bad.stderr


def test_cli_usage_errors(sqlite_url):
    assert _cli(sqlite_url).returncode == 2  # no ledger table in that database
    bad_head = _cli(sqlite_url, "--head", "12-abc")
    assert bad_head.returncode == 2
    assert "SEQ:MAC" in bad_head.stderr
