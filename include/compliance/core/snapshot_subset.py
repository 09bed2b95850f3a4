"""Which rows of a backup snapshot a batch can need (R13, R16.1, issue 19): the loader streams
every snapshot row but inserts only these, so the scratch SQLite file, and the time spent
filling and indexing it, follow the batch rather than the snapshot's size. Two loaders use it:
the access gather's (`access.snapshots`) and the backup rewrite's (`deletion.backup_rewrite`,
whose resolution and relation joins ask the same two questions as the gather below).

The gather on the loaded file (`gather_backups`) asks two things: whose rows (the consumers
the plan resolved in the live system, plus those the request's given identities find in the
snapshot: `requests.resolve`) and those consumers' rows in every mapped table, joined up the
relation chain for consumer, tenant and time (`gather.owned_rows`). A row can enter that
answer only if it, or a descendant it dates or owns, belongs to such a consumer, so the
subset keeps, per table in chain order (parents first):

- the consumer table: rows whose key is a wanted consumer;
- a table one hop below it: rows whose relation column names a wanted consumer (its own
  column *is* the consumer key, so it is kept whether or not the parent row is in the
  snapshot, exactly as the full gather returns it);
- a deeper table: rows whose relation column names a kept parent row (the full gather joins
  that parent, so a row without one is never returned either);

where the wanted consumers are the plan's, plus the consumer of every row of an identity
table holding one of the given identity values (any tenant, any kind: a superset of what
`resolve` matches, which then decides on the subset exactly as on the whole). Comparisons are
deliberately lenient (`lenient_key`): keeping a row too many costs nothing, since the same
SQL runs on the subset, while dropping one would weaken R13. When an identity column sits two
or more hops below the consumer table, the consumer of a matching row is only known through
rows streamed earlier, so `plan` returns None and the loader falls back to the whole snapshot.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import ahocorasick_rs

from compliance.core.datamap.graph import chain_to_consumer
from compliance.core.datamap.model import SqlSystem
from compliance.core.sqlmap import integer_text


def lenient_key(raw: str | None) -> str | None:
    """One spelling for key text as a CSV or the state DB may give it: UUIDs canonical,
    integers without leading zeros or sign noise, text lower-cased and stripped. Two values
    SQLite would find equal always get the same spelling (some unequal ones too: harmless)."""
    if raw is None:
        return None
    text = str(raw).strip()
    if text == "":
        return None
    if (number := integer_text(text)) is not None:
        return number
    if len(text) >= 32:
        try:
            return str(uuid.UUID(text))
        except ValueError:
            pass
    return text.lower()


def identity_text(raw: str) -> str:
    """An identity value as compared for the subset: case-insensitive and stripped, and a
    number spelt as `lenient_key` spells it, because `resolve` compares in the column's own
    type: an INTEGER identity column holding 123 matches a given "0123". Lenient, as keys are:
    "+15550000000" and "15550000000" get one spelling, which keeps a row too many at most."""
    text = raw.strip()
    number = integer_text(text)
    return text.lower() if number is None else number


@dataclass
class Wanted:
    """What a batch asks of one system's snapshot: consumer keys (the plan's) and the given
    identity values, both in their lenient spelling."""

    consumers: set[str] = field(default_factory=set)
    identities: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, consumers: Iterable[str], identities: Iterable[str]) -> Wanted:
        keys = {k for k in (lenient_key(c) for c in consumers) if k is not None}
        return cls(keys, {identity_text(v) for v in identities if v and v.strip()})


def wanted_for(batch: object, system: str) -> Wanted:
    """The batch's wanted consumers and given identities for `system` (gathered refs only:
    categories-only requests read no store, R5)."""
    refs = list(batch.gather_refs)  # type: ignore[attr-defined]
    per_ref = batch.consumers.get(system, {})  # type: ignore[attr-defined]
    given = batch.given  # type: ignore[attr-defined]
    consumers = [str(c) for ref in refs for c in per_ref.get(ref, [])]
    values: list[str] = []
    for ref in refs:
        for vs in given.get(ref, {}).values():
            values += [str(v) for v in (vs if isinstance(vs, list) else [vs])]
    return Wanted.of(consumers, values)


@dataclass(frozen=True)
class Step:
    """How one table's rows are chosen: `link` is the column naming the consumer (depth 0: the
    key; depth 1: the relation column) or the parent row (deeper: the relation column, looked
    up in `parent`'s kept `parent_column` values). `identity`: its identity columns."""

    table: str
    depth: int
    link: str
    parent: str | None
    parent_column: str | None
    identity: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Tables in load order: identity tables of depth <= 1 first (they add consumers), then
    the rest parents first. `targets`: per table, the columns children reference."""

    first: tuple[Step, ...]
    rest: tuple[Step, ...]
    targets: dict[str, tuple[str, ...]]


def plan(system: SqlSystem) -> Plan | None:
    """The load order for `system`, or None when an identity column lies two or more hops
    below the consumer table (the subset cannot be decided in one pass: load everything)."""
    steps = []
    targets: dict[str, list[str]] = {}
    for tname, table in system.tables.items():
        hops = chain_to_consumer(system, tname)
        ident = tuple(c for c, col in table.columns.items() if col.identity is not None)
        if ident and len(hops) >= 2:
            return None
        if not hops:
            keys = list(table.key_columns)
            if len(keys) != 1:
                return None  # the consumer key is one column (validated): be safe anyway
            steps.append(Step(tname, 0, keys[0], None, None, ident))
            continue
        rel = hops[0]
        deep = len(hops) >= 2
        steps.append(
            Step(
                tname,
                len(hops),
                rel.column,
                rel.target_table if deep else None,
                rel.target_column if deep else None,
                ident,
            )
        )
        if deep:
            targets.setdefault(rel.target_table, [])
            if rel.target_column not in targets[rel.target_table]:
                targets[rel.target_table].append(rel.target_column)
    order = sorted(steps, key=lambda s: (s.depth, s.table))
    first = tuple(s for s in order if s.identity)
    rest = tuple(s for s in order if not s.identity)
    return Plan(first, rest, {t: tuple(cs) for t, cs in targets.items()})


RowTest = Callable[[list[str]], bool]


class Subset:
    """The running state of one snapshot's filtered load: wanted consumers (growing as
    identity rows are met) and, per referenced table and column, the kept rows' values."""

    def __init__(self, the_plan: Plan, wanted: Wanted) -> None:
        self.plan = the_plan
        self.consumers = set(wanted.consumers)
        self.identities = set(wanted.identities)
        self.kept: dict[tuple[str, str], set[str]] = {
            (t, c): set() for t, cs in the_plan.targets.items() for c in cs
        }

    def _collect(self, step: Step, at: dict[str, int]) -> list[tuple[int, set[str]]]:
        return [
            (at[c], self.kept[(step.table, c)])
            for c in self.plan.targets.get(step.table, ())
            if c in at
        ]

    def _owner(self, step: Step, at: dict[str, int]) -> Callable[[list[str]], str | None]:
        i = at.get(step.link)
        if i is None:
            return lambda _row: None
        return lambda row: lenient_key(row[i])

    def wanted_keys(self, step: Step) -> set[str]:
        """The link values a row of `step`'s table is kept for right now (see `test`)."""
        if step.depth >= 2:
            assert step.parent is not None and step.parent_column is not None
            return self.kept.get((step.parent, step.parent_column), set())
        return self.consumers

    def needles(self, step: Step, extra: set[str] | None = None) -> Needles | None:
        """What the CSV text of a row `test` (or `again`, for `extra`) keeps must contain
        (`needle_pattern`); None: no row can be kept. Taken when the table's stream begins,
        as `test` freezes its consumers then."""
        if extra is not None:
            return needle_pattern(extra, ())
        return needle_pattern(self.wanted_keys(step), self.identities if step.identity else ())

    def test(self, step: Step, at: dict[str, int]) -> RowTest:
        """The first load of `step`'s table: keep a row of a consumer (or parent) wanted when
        the table's stream began, or one holding a given identity (its consumer becomes wanted,
        and `again` later loads that consumer's other rows of the tables streamed before)."""
        owner = self._owner(step, at)
        collect = self._collect(step, at)
        idents = [at[c] for c in step.identity if c in at]
        consumers, identities = self.consumers, self.identities
        parents = set(self.wanted_keys(step))  # frozen: `again` relies on exactly this verdict

        def keep(row: list[str]) -> bool:
            who = owner(row)
            if who is None:
                return False
            ok = who in parents
            if not ok and idents and _holds(row, idents, identities):
                consumers.add(who)  # depth <= 1: the row names its consumer
                ok = True
            if ok:
                _remember(row, collect)
            return ok

        return keep

    def again(self, step: Step, at: dict[str, int], extra: set[str]) -> RowTest:
        """A second load of an identity table for `extra`: consumers wanted only after its
        first stream began. The first stream kept exactly their rows holding a given identity
        (`test`), so this one keeps their other rows: nothing is loaded twice or missed."""
        owner = self._owner(step, at)
        collect = self._collect(step, at)
        idents = [at[c] for c in step.identity if c in at]
        identities = self.identities

        def keep(row: list[str]) -> bool:
            who = owner(row)
            if who is None or who not in extra or _holds(row, idents, identities):
                return False
            _remember(row, collect)
            return True

        return keep


def load_subset(
    order: Plan, subset: Subset, load: Callable[..., int], present: set[str]
) -> dict[str, int]:
    """Load the tables in `order` through `subset`'s row tests (`load(table, test, needles)`
    streams one table's rows into the caller's scratch file and returns how many it kept):
    identity tables first (they may add consumers), each streamed again for consumers added
    after its first stream began, then the rest parents first. Rows loaded per table present
    in the snapshot (as the full load)."""
    counts: dict[str, int] = {}
    before: dict[str, set[str]] = {}
    for step in order.first:
        before[step.table] = set(subset.consumers)
        test = lambda at, s=step: subset.test(s, at)  # noqa: E731
        counts[step.table] = load(step.table, test, subset.needles(step))
    for step in order.first:
        extra = subset.consumers - before[step.table]
        if extra:
            again = lambda at, s=step, e=extra: subset.again(s, at, e)  # noqa: E731
            counts[step.table] += load(step.table, again, subset.needles(step, extra))
    for step in order.rest:
        test = lambda at, s=step: subset.test(s, at)  # noqa: E731
        counts[step.table] = load(step.table, test, subset.needles(step))
    return {t: n for t, n in counts.items() if t in present}


def _remember(row: list[str], collect: list[tuple[int, set[str]]]) -> None:
    """Add a kept row's referenced-column values (`_collect`) for its children's tests."""
    for i, values in collect:
        key = lenient_key(row[i])
        if key is not None:
            values.add(key)


def _holds(row: list[str], idents: list[int], identities: set[str]) -> bool:
    return any(row[i] and identity_text(row[i]) in identities for i in idents)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Automaton:
    """Every place of many words in one pass (Aho-Corasick, the `ahocorasick_rs` bindings of
    Rust's `aho-corasick`), each with the digits of the key it stands for (0: anywhere).

    A block that is all ASCII (nearly every block; `str.isascii` is a flag lookup) is searched
    as bytes, where offsets are the same: 2.8x the speed of the `str` search measured on CSV
    of integer keys (205 against 73 MB/s). Any other block goes through the `str` search."""

    def __init__(self, words: dict[str, int]) -> None:
        self.words = sorted(words)
        self.digits = [words[w] for w in self.words]
        kind = ahocorasick_rs.MatchKind.Standard  # every match, overlapping ones too
        self._bytes = ahocorasick_rs.BytesAhoCorasick(
            [w.encode() for w in self.words], matchkind=kind
        )
        self._text: Any = None  # built for the first non-ASCII block

    def places(self, text: str) -> Iterator[tuple[int, int]]:
        """(start, the key's digits) of every occurrence of every word, in any order."""
        if text.isascii():
            found = self._bytes.find_matches_as_indexes(text.encode("ascii"), overlapping=True)
        else:
            if self._text is None:
                kind = ahocorasick_rs.MatchKind.Standard
                self._text = ahocorasick_rs.AhoCorasick(self.words, matchkind=kind)
            found = self._text.find_matches_as_indexes(text, overlapping=True)
        digits = self.digits
        return ((start, digits[i]) for i, start, _ in found)


class Needles(NamedTuple):
    """What a kept row's lower-cased CSV text must contain (`needle_pattern`): `words`, each a
    substring of it when few and long enough to search one by one with `str.find` (C speed,
    nothing per row); else one pass of an Aho-Corasick `automaton` over every word, an integer
    key counting only where it stands as a whole field (`_whole_field`). A key of up to
    SHORT_KEY digits is a word only with the character after it (a separator or a blank): "7"
    alone would call back into Python at every seventh digit of the text. `short` is the same
    keys as a whole-field expression, for the one place nothing follows them: the block's end.

    Measured per 100 MB of CSV: 1.8-2.0 s against 5.5 (100 requests) and 9.0 (1,000) for the
    two expressions it replaced. Short keys had kept an expression over every block, which
    scans at 20-50 MB/s: at 200,000 contacts it was 42% of a 100-request backup search
    (issue 19)."""

    words: tuple[str, ...]
    automaton: Automaton | None = None
    short: re.Pattern[str] | None = None

    def find(self, lowered: str) -> list[int]:
        """Where the needles sit in `lowered` (a block of whole records), ascending."""
        found: list[int] = []
        if self.words:
            for word in self.words:
                at = lowered.find(word)
                while at >= 0:
                    found.append(at)
                    at = lowered.find(word, at + 1)
            return sorted(found)
        if self.automaton is not None:
            for at, digits in self.automaton.places(lowered):
                if not digits or _whole_field(lowered, at, at + digits):
                    found.append(at)
        if self.short is not None and not lowered.endswith("\n"):
            # a short key ending the block has no character after it for the automaton: the
            # last record goes through the expression (a newline stands in for its start)
            start = lowered.rfind("\n") + 1
            found += [start + m.start("i") - 1 for m in self.short.finditer("\n" + lowered[start:])]
        return sorted(set(found))


def _blank(ch: str) -> bool:
    """What `\\s` matches in a `str` expression, but a newline (a record's end)."""
    return ch.isspace() and ch != "\n"


def _whole_field(text: str, start: int, stop: int) -> bool:
    """An integer key's digits at text[start:stop] stand as a whole CSV field: a separator
    (comma, quote, newline or the block's start), then blanks, a sign and zeros, the digits,
    blanks and a separator (or the end). Lenient (any mix of blanks, signs and zeros; blanks
    as `str.isspace` says, as `lenient_key` strips them), so a superset: never misses a field
    `lenient_key` would read as the key."""
    j = start - 1
    while j >= 0 and (text[j] in "0+-" or _blank(text[j])):
        j -= 1
    if j >= 0 and text[j] not in ',"\n':
        return False
    k = stop
    while k < len(text) and _blank(text[k]) and text[k] != "\r":
        k += 1
    return k == len(text) or text[k] in ',"\r\n'


FEW = 24  # up to this many words (of 3+ characters), `str.find` them one by one
SHORT_KEY = 3  # integer keys of up to this many digits: searched with what follows them
# What can follow the digits of a whole field (`_whole_field`): a separator or a blank. Every
# blank `str.isspace` knows lies below U+3001.
_AFTER_KEY = "".join(sorted(set(',"\r\n') | {c for c in map(chr, range(0x3001)) if _blank(c)}))


def needle_pattern(keys: Iterable[str], identities: Iterable[str]) -> Needles | None:
    """What every kept row's CSV text, lower-cased, holds: a superset test run over whole
    decompressed blocks, so the rows of other consumers are never parsed.

    `keys` (lenient spellings): an integer as its digits (any sign, leading zeros, blanks or
    quotes around them still contain them; the search asks for a whole field, since a bare
    substring of a short key would match every timestamp); a UUID with or without hyphens;
    other text anywhere. `identities`: anywhere. Quotes are doubled, as CSV writes them in a
    quoted field. None when there is nothing to look for (no row can be kept). `find` gives
    where each value sits (inside the row it belongs to)."""
    ints: set[str] = set()
    texts: set[str] = set()
    for key in keys:
        if re.fullmatch(r"-?[0-9]+", key):
            ints.add(key.lstrip("-"))
        elif _UUID.fullmatch(key):
            texts |= {key, key.replace("-", "")}
        else:
            texts.add(key.replace('"', '""'))
    for v in identities:  # a number's digits: "0123" and "-0123" hold "123" (`identity_text`)
        if v:
            number = v[:1] == "-" and v[1:].isascii() and v[1:].isdigit()
            texts.add((v[1:] if number else v).replace('"', '""'))
    if not ints and not texts:
        return None
    words = _innermost(ints | texts)
    if len(words) <= FEW and all(len(w) >= 3 for w in words):
        return Needles(words)
    short = {i for i in ints - texts if len(i) <= SHORT_KEY}
    words: dict[str, int] = {}  # word -> the key's digits (0: anywhere)
    for word in ints - texts - short:
        words[word] = len(word)
    for word in short:  # with what may follow a whole field's digits: one callback per field
        for after in _AFTER_KEY:
            words[word + after] = len(word)
    for word in texts:  # anywhere: also an integer key's digits that are an identity's too
        words[word] = 0
    automaton = Automaton(words)
    fields = rf'[,"\n]\s*[+-]?0*(?P<i>{_trie(short)})\s*(?=[,"\r\n]|\Z)' if short else None
    return Needles((), automaton, re.compile(fields) if fields else None)


def _innermost(words: set[str]) -> tuple[str, ...]:
    """The words no other word is a part of: text holding "+14155550123" holds "4155550123",
    so a phone's sixteen spellings need about six passes of `str.find`, not sixteen (a superset
    test loses nothing). Only for a few words (it compares every pair)."""
    if len(words) > 4 * FEW:
        return tuple(sorted(words))
    return tuple(sorted(w for w in words if not any(o != w and o in w for o in words)))


def _trie(words: Iterable[str]) -> str:
    """One regex alternative for many literal words, factored by common prefix (the `re`
    module tries a flat alternation branch by branch: thousands of keys would crawl)."""
    root: dict[str, dict] = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, dict]) -> str:
        alts = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else f"(?:{'|'.join(alts)})"
        if "" in node:
            return f"(?:{body})?"
        return body

    return build(root)
