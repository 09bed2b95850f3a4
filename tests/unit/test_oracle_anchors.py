"""The residue oracle's log search finds a phone's sixteen spellings through one shared anchor
(R16.1; issue 19: one consumer's check made a pass per spelling over every log byte).

An anchor may only make the search faster, never blinder: every test compares the occurrences
found with a brute-force reference written here (every offset, every spelling, the word-edge
rule spelled out), on texts built to hold spellings glued to digits, overlapping, repeated, and
anchors so common that the search must fall back to one pass per spelling; and the same for
the Aho-Corasick automaton a batch's many spellings are searched with.
"""

from __future__ import annotations

from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.core.datamap.model import IdentityType
from compliance.deletion.residue_oracle import log_search
from compliance.deletion.residue_oracle.values import Value, bounded

WORD = set(b"abcdefghijklmnopqrstuvwxyz0123456789") | set(range(0x80, 0x100))
PHONE = "+14042109844"
VALUES = [
    Value(IdentityType.phone, PHONE, "7"),
    Value(IdentityType.email, "jo.doe@mail.test", "7"),
    Value(IdentityType.contact_id, "c-2024-77", "7"),
]


def reference(low: bytes, spellings: set[bytes]) -> set[tuple[bytes, int]]:
    found = set()
    for s in spellings:
        for i in range(len(low) - len(s) + 1):
            if low[i : i + len(s)] != s:
                continue
            left = i > 0 and s[0] in WORD and low[i - 1] in WORD
            right = i + len(s) < len(low) and s[-1] in WORD and low[i + len(s)] in WORD
            if not (left or right):
                found.add((s, i))
    return found


def test_one_anchor_stands_for_every_spelling_of_a_phone():
    needles = log_search._Needles(VALUES[:1])
    assert len(needles) >= 16
    assert list(needles.anchors) == [b"9844"]
    for spelling, offset in needles.anchors[b"9844"]:
        assert spelling[offset : offset + 4] == b"9844"


PIECES = [
    b"+14042109844",
    b"(404) 210-9844",
    b"404.210.9844",
    b"14042109844",
    b"4042109844",
    b"1-404-210-9844",
    b"9844",
    b"98449844",
    b"jo.doe@mail.test",
    b"xjo.doe@mail.test",
    b"c-2024-77",
    b"2024",
    b"7",
    b"0",
    b" ",
    b'"',
    b"\n",
    b"-",
    b"a",
    b"\xc3\xa9",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_both_searches_find_exactly_what_a_brute_force_search_finds(parts):
    low = b"".join(parts)
    anchored = log_search._Needles(VALUES)
    with patch.object(log_search, "FEW_NEEDLES", 0):
        automaton = log_search._Needles(VALUES)
    assert anchored.automaton is None and automaton.automaton is not None
    expected = reference(low, set(anchored.tenants))
    assert set(anchored.occurrences(low)) == expected
    assert set(automaton.occurrences(low)) == expected


def test_an_anchor_too_common_in_a_block_falls_back_to_every_spelling(monkeypatch):
    monkeypatch.setattr(log_search, "ANCHOR_HITS", 8)
    passes: list[bytes] = []

    def counted(low: bytes, needle: bytes):
        passes.append(needle)
        return bounded(low, needle)

    monkeypatch.setattr(log_search, "bounded", counted)
    phone = Value(IdentityType.phone, "+14155552024", "7")
    needles = log_search._Needles([phone])
    assert list(needles.anchors) == [b"2024"]
    low = b'{"at":"2024-01-02"}\n' * 20 + b'{"to":"(415) 555-2024"}\n{"to":"415.555.2024"}\n'
    found = set(needles.occurrences(low))
    assert {s for s, _ in found} == {b"(415) 555-2024", b"415.555.2024"}
    assert found == reference(low, set(needles.tenants))
    assert sorted(passes) == sorted(needles.tenants)  # one pass per spelling, once


def test_a_batch_searches_every_spelling_in_one_automaton_pass():
    values = [Value(IdentityType.phone, f"+1404210{n:04d}", "7") for n in range(40)]
    needles = log_search._Needles(values)
    assert len(values) > log_search.FEW_NEEDLES  # no anchors worked out: one automaton pass
    assert needles.anchors == {} and needles.automaton is not None
    low = b"".join(f'{{"to":"(404) 210-{n:04d}"}} 1404210{n:04d}9\n'.encode() for n in range(45))
    assert set(needles.occurrences(low)) == reference(low, set(needles.tenants))
