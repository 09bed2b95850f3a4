"""Field paths into JSON log lines: where in a line an identity (or other PI) value stands.

A data map names a log store's fields by path, so identities nested in objects and arrays are
found, erased and reported like top-level ones (issue 14; R16 erasure, R8/R10 access):

    email                 {"email": ...}                    a top-level key
    actor.email           {"actor": {"email": ...}}         a key inside an object
    recipients[].email    {"recipients": [{"email": ...}]}  every element of an array
    tags[]                {"tags": [...]}                   the elements themselves
    meta\\.v2.ip           {"meta.v2": {"ip": ...}}          a backslash escapes . [ ] \\ in a key

The walkers follow the same rules everywhere (scan, scrub, access, inventory), so a path means one
thing: a key step visits every member with that key (duplicate keys included: a line cannot hide
a value behind a second copy of its key), `[]` visits every element of an array, and a step that
meets the wrong kind of value (a key on an array, `[]` on an object or a scalar) finds nothing.
At the end of the path, an array where a scalar was expected stands for its scalar elements, as
top-level identity fields always did (`"rcpt": ["a@x", "b@y"]`).

`spans` locates the same values in the line's text, so a redaction replaces exactly those bytes
and every other byte of the line stays as it was.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from json.decoder import JSONDecoder, scanstring
from typing import Any, Final


class _Each:
    """The `[]` step: every element of an array."""

    _instance: _Each | None = None

    def __new__(cls) -> _Each:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "EACH"


EACH: Final = _Each()
Step = str | _Each
_SPECIAL = frozenset(".[]\\")


@dataclass(frozen=True)
class FieldPath:
    """A parsed path: its text as written in the data map, and its steps (keys and EACH)."""

    text: str
    steps: tuple[Step, ...]

    @property
    def leaf_key(self) -> str:
        """The last key name: the key the value (or the array holding it) follows in the text."""
        return next(s for s in reversed(self.steps) if isinstance(s, str))

    @property
    def has_each(self) -> bool:
        return EACH in self.steps

    def __str__(self) -> str:
        return self.text


@lru_cache(maxsize=4096)
def parse(path: str) -> FieldPath:
    """Parse a path; ValueError says what is wrong and at which character (1-based)."""
    if not isinstance(path, str):
        raise ValueError(f"a path is text, not {type(path).__name__}")
    if not path:
        raise ValueError("the path is empty")
    steps: list[Step] = []
    i, n = 0, len(path)
    while True:
        key: list[str] = []
        start = i
        while i < n and path[i] not in ".[":
            ch = path[i]
            if ch == "]":
                raise ValueError(
                    f"unexpected ']' at character {i + 1} (write '\\]' for a literal bracket)"
                )
            if ch == "\\":
                if i + 1 >= n:
                    raise ValueError(
                        f"dangling escape at character {i + 1}: a '\\' must be followed by "
                        "'.', '[', ']' or '\\'"
                    )
                nxt = path[i + 1]
                if nxt not in _SPECIAL:
                    raise ValueError(
                        f"unknown escape '\\{nxt}' at character {i + 1}: only '\\.', '\\[', "
                        "'\\]' and '\\\\' are escapes"
                    )
                key.append(nxt)
                i += 2
                continue
            key.append(ch)
            i += 1
        if not key:
            if path[start] == "[":
                raise ValueError(
                    f"empty segment at character {start + 1}: '[]' must follow a key name "
                    "(write 'items[]', not '[]' or 'items.[]')"
                )
            raise ValueError(
                f"empty segment at character {start + 1}: a key name is missing "
                "(a leading '.' or two '.' in a row)"
            )
        steps.append("".join(key))
        while i < n and path[i] == "[":
            if path[i + 1 : i + 2] != "]":
                raise ValueError(
                    f"'[' at character {i + 1} is not followed by ']': '[]' means every element "
                    "of an array (write '\\[' for a literal bracket)"
                )
            steps.append(EACH)
            i += 2
        if i >= n:
            return FieldPath(path, tuple(steps))
        if path[i] != ".":
            raise ValueError(
                f"unexpected {path[i]!r} at character {i + 1}: after '[]' comes '.', "
                "another '[]' or the end of the path"
            )
        i += 1
        if i >= n:
            raise ValueError("empty segment at the end: the path ends with '.'")


def leaf_key(path: str | FieldPath) -> str:
    """The last key name of a path (`recipients[].email` -> `email`, `tags[]` -> `tags`)."""
    return _as_path(path).leaf_key


def render(steps: Sequence[Step]) -> str:
    """The path text of `steps`, escaping what needs it (the inverse of `parse`)."""
    out: list[str] = []
    for step in steps:
        if step is EACH:
            out.append("[]")
        else:
            text = "".join("\\" + c if c in _SPECIAL else c for c in str(step))
            out.append("." + text if out else text)
    return "".join(out)


def _as_path(path: str | FieldPath) -> FieldPath:
    return path if isinstance(path, FieldPath) else parse(path)


# --- parsed values ------------------------------------------------------------------------------
# A line parsed with `json.loads(text, object_pairs_hook=list)` keeps every duplicate key: an
# object is a list of (key, value) tuples, an array a list of anything but tuples. Plain dicts
# (json.loads without the hook) are accepted too.


def _members(node: Any) -> Any:
    """An object's (key, value) pairs, or None when `node` is not an object."""
    if isinstance(node, dict):
        return node.items()
    if isinstance(node, list) and node and isinstance(node[0], tuple):
        return node
    return None


def _is_array(node: Any) -> bool:
    return isinstance(node, list) and not (node and isinstance(node[0], tuple))


def nodes(obj: Any, path: str | FieldPath) -> Iterator[Any]:
    """Every value standing at `path` (scalars, objects and arrays alike), in document order."""
    yield from _nodes(obj, _as_path(path).steps)


def _nodes(node: Any, steps: tuple[Step, ...]) -> Iterator[Any]:
    if not steps:
        yield node
        return
    step, rest = steps[0], steps[1:]
    if step is EACH:
        if _is_array(node):
            for item in node:
                yield from _nodes(item, rest)
        return
    members = _members(node)
    if members is not None:
        for key, value in members:
            if key == step:
                yield from _nodes(value, rest)


def values(obj: Any, path: str | FieldPath, *, arrays: bool = True) -> Iterator[Any]:
    """Every scalar (string, number, boolean; not null) at `path` in a parsed line.

    With `arrays`, an array found at the end of the path stands for its scalar elements.
    """
    for node in _nodes(obj, _as_path(path).steps):
        if _is_scalar(node):
            yield node
        elif arrays and _is_array(node):
            yield from (item for item in node if _is_scalar(item))


def first(obj: Any, path: str | FieldPath) -> Any:
    """The first value at `path` (of any kind), or None."""
    return next(_nodes(obj, _as_path(path).steps), None)


def _is_scalar(node: Any) -> bool:
    return isinstance(node, str | int | float)  # bool is an int


def _held(node: Any) -> bool:
    return node is not None and node != "" and node != [] and node != {}


def remove(obj: Any, path: str | FieldPath) -> bool:
    """Delete the values at `path` from a line parsed into dicts (in place); True when one of them
    held something (not null, "", [] or {}).

    A path ending in `[]` removes the key holding the array, whatever it holds: every element is
    a value of the path, and R10 errs on the side of withholding.
    """
    steps = list(_as_path(path).steps)
    while steps and steps[-1] is EACH:
        steps.pop()
    last = steps[-1]
    held = False
    for parent in _nodes(obj, tuple(steps[:-1])):
        if isinstance(parent, dict) and last in parent:
            held |= _held(parent.pop(last))
    return held


def walk_scalars(obj: Any) -> Iterator[tuple[tuple[Step, ...], Any]]:
    """(steps, value) of every scalar of a parsed line, array indices generalised to EACH."""
    stack: list[tuple[tuple[Step, ...], Any]] = [((), obj)]
    while stack:
        steps, node = stack.pop()
        members = _members(node)
        if members is not None:
            stack.extend(((*steps, key), value) for key, value in reversed(members))
        elif _is_array(node):
            stack.extend(((*steps, EACH), item) for item in reversed(node))
        elif _is_scalar(node) and steps:
            yield steps, node


# --- positions in the text ----------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = JSONDecoder()


def spans(text: str, path: str | FieldPath) -> list[tuple[int, int]]:
    """(start, end) character offsets in `text` (one JSON object) of every value at `path`.

    Same grammar as `json.loads` (the same scanner), duplicate keys included; the span covers the
    whole value (an array at the end of the path is one span). ValueError if `text` is not JSON.
    """
    return spans_of(text, [path])


def spans_of(text: str, path_list: Sequence[str | FieldPath]) -> list[tuple[int, int]]:
    """The spans of the values at any of the paths, in one walk, in document order and disjoint:
    where one path ends inside the value of another (`actor` and `actor.email`), the outer
    value's span stands for both."""
    out: list[tuple[int, int]] = []
    steps = [_as_path(p).steps for p in path_list]
    try:
        idx = _WS.match(text, 0).end()  # type: ignore[union-attr]
        if text[idx : idx + 1] != "{":
            raise ValueError("not a JSON object")
        end = _walk(text, idx, steps, out)
    except StopIteration as exc:
        raise ValueError(f"not JSON: no value at character {exc.value + 1}") from None
    except RecursionError:
        raise ValueError("not JSON this walker can follow: nested too deeply") from None
    if _WS.match(text, end).end() != len(text):  # type: ignore[union-attr]
        raise ValueError("not JSON: extra data after the object")
    return out


def _walk(text: str, idx: int, steps: list[tuple[Step, ...]], out: list[tuple[int, int]]) -> int:
    """Walk the value at `idx` (no leading whitespace) where `steps` (the paths' remaining steps)
    apply; record the spans of paths that end here; return the value's end."""
    ws = _WS.match
    if not steps or any(not s for s in steps):
        _, end = _DECODER.scan_once(text, idx)
        if steps:
            out.append((idx, end))
        return end
    opening = text[idx : idx + 1]
    keyed = [s for s in steps if s[0] is not EACH] if opening == "{" else []
    each = [s[1:] for s in steps if s[0] is EACH] if opening == "[" else []
    if keyed:
        idx = ws(text, idx + 1).end()  # type: ignore[union-attr]
        if text[idx : idx + 1] == "}":
            return idx + 1
        while True:
            if text[idx : idx + 1] != '"':
                raise ValueError(f"not JSON: expected a key at character {idx + 1}")
            key, idx = scanstring(text, idx + 1, True)
            idx = ws(text, idx).end()  # type: ignore[union-attr]
            if text[idx : idx + 1] != ":":
                raise ValueError(f"not JSON: expected ':' at character {idx + 1}")
            start = ws(text, idx + 1).end()  # type: ignore[union-attr]
            idx = _walk(text, start, [s[1:] for s in keyed if s[0] == key], out)
            idx = ws(text, idx).end()  # type: ignore[union-attr]
            sep = text[idx : idx + 1]
            if sep == "}":
                return idx + 1
            if sep != ",":
                raise ValueError(f"not JSON: expected ',' or '}}' at character {idx + 1}")
            idx = ws(text, idx + 1).end()  # type: ignore[union-attr]
    if each:
        idx = ws(text, idx + 1).end()  # type: ignore[union-attr]
        if text[idx : idx + 1] == "]":
            return idx + 1
        while True:
            idx = _walk(text, idx, each, out)
            idx = ws(text, idx).end()  # type: ignore[union-attr]
            sep = text[idx : idx + 1]
            if sep == "]":
                return idx + 1
            if sep != ",":
                raise ValueError(f"not JSON: expected ',' or ']' at character {idx + 1}")
            idx = ws(text, idx + 1).end()  # type: ignore[union-attr]
    _, end = _DECODER.scan_once(text, idx)  # the paths do not go on into this value
    return end
