"""The backup snapshot pre-filter never misses a row (R13 access, R16.1 deletion; issue 19).

`snapshot_subset.needle_pattern` decides which CSV records of a snapshot are parsed at all: a
record it misses is a row the access bundle leaves out or the rewrite leaves in. A batch's many
keys and identities are searched with one Aho-Corasick automaton, integer keys only as whole
fields. The reference here is the pair of regular expressions it replaced (a key as a whole
field after a separator, blanks, a sign and zeros; anything else anywhere): on texts built to
put keys inside longer numbers, after zeros and signs, in quotes and at the block's edges, every
record the reference finds must be found. A short, fixed case pins that a key inside another
number is not a hit (the automaton alone would find it everywhere).
"""

from __future__ import annotations

import re
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.core import snapshot_subset
from compliance.core.snapshot_subset import needle_pattern

KEYS = ["17", "170", "4042", "88", "123456"]  # up to SHORT_KEY digits: the expression
IDENTITIES = ["jo@x.io", "+14155550123", "4155550123", "(415) 555-0123", "c-88"]


def reference(keys: list[str], identities: list[str], lowered: str) -> set[int]:
    ints = {k.lstrip("-") for k in keys if re.fullmatch(r"-?[0-9]+", k)}
    texts = {k for k in keys if k.lstrip("-") not in ints} | {v.lower() for v in identities}
    found: set[int] = set()
    for word in ints:  # one expression per word: overlapping places are all found
        field = re.compile(rf'(?=[,"\n]\s*[+-]?0*(?P<i>{re.escape(word)})\s*(?:[,"\r\n]|\Z))')
        found |= {m.start("i") - 1 for m in field.finditer("\n" + lowered)}
    for word in texts:
        found |= {m.start() for m in re.finditer(f"(?={re.escape(word)})", lowered)}
    return found


def lines(text: str, places) -> set[int]:
    """The lines holding the places: what the pre-filter must not miss is a record, and a
    phone's inner spelling sits two characters into its E.164 form, in the same record."""
    return {text.count("\n", 0, at) for at in places}


BLANKS = [" ", "\t", "\xa0", "\x1f", "\u3000", "\x85"]  # `\s` and `str.strip` say blank
PIECES = [
    *KEYS,
    *IDENTITIES,
    *BLANKS,
    "0",
    "-",
    "+",
    ",",
    '"',
    "\n",
    "\r\n",
    "9",
    "2026-01-17",
    "x",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30))
def test_the_automaton_finds_every_place_the_expressions_found(parts):
    text = "".join(parts).lower()
    with patch.object(snapshot_subset, "FEW", 0):  # a batch: the automaton
        needles = needle_pattern(KEYS, IDENTITIES)
    assert needles is not None and needles.automaton is not None and needles.short is not None
    assert lines(text, reference(KEYS, IDENTITIES, text)) <= lines(text, needles.find(text))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30))
def test_one_consumers_words_find_every_place_too(parts):
    text = "".join(parts).lower()
    needles = needle_pattern(["4042"], IDENTITIES)
    assert needles is not None and needles.words  # few: str.find, one word at a time
    assert len(needles.words) < len(IDENTITIES) + 1  # "4155550123" stands for two spellings
    expected = lines(text, reference(["4042"], IDENTITIES, text))
    assert expected <= lines(text, needles.find(text))


def test_a_key_inside_another_number_or_a_date_is_not_a_hit():
    with patch.object(snapshot_subset, "FEW", 0):
        needles = needle_pattern(["17"], ["jo@x.io"])
    text = '5,2026-01-17,1700,317\n17,"0017", -17 ,x\n'
    hits = needles.find(text)
    assert [text[h : h + 2] for h in hits] == ["17", "17", "17"]
    assert hits == [text.index("\n17,") + 1, text.index("0017") + 2, text.index(" -17") + 2]


def test_a_short_key_is_found_before_every_blank_and_at_the_block_end():
    """A key of up to SHORT_KEY digits is an automaton word only with the character after it;
    every blank `str.strip` removes may stand there, and at the block's end nothing does."""
    with patch.object(snapshot_subset, "FEW", 0):
        needles = needle_pattern(["17"], ["jo@x.io"])
    assert needles is not None
    blanks = [c for c in map(chr, range(0x3001)) if c.isspace() and c != "\n"]
    assert len(blanks) > 20
    for blank in blanks:
        for end in (",", '"', "\r\n", "\n", ""):
            text = f"a,b\nx, -017{blank}{end}"
            assert needles.find(text) == [text.index("17")], (blank, end)
    assert needles.find("x,170,9171,17a,a17\n") == []  # inside other numbers and words
    for text in ("a\nx,17", "17", "a\n-0017", 'a\n"17', "a\nx,17 \xa0"):  # nothing after it
        assert needles.find(text) == [text.index("17")], text
    assert needles.find("17,17\n17") == [0, 3, 6]  # the block's start is a separator too
