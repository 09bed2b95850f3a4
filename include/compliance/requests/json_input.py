"""Bytes -> JSON values, defensively: size, nesting depth, duplicate keys and NaN constants are
refused before a document reaches the field checks (a forwarded file is untrusted input)."""

from __future__ import annotations

import json
from typing import Any

from compliance.requests.request_format import (
    MAX_DEPTH,
    SAFE_NAME_RE,
    Reason,
)

# --------------------------------------------------------------------------------------------
# Parsing bytes into JSON values


class InvalidInput(Exception):
    """A document that cannot become a JSON object; carries the reason and a safe message."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def safe_name(name: object) -> str | None:
    return name if isinstance(name, str) and SAFE_NAME_RE.fullmatch(name) else None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            name = safe_name(key)
            shown = f"key {name!r}" if name else "a key"
            raise InvalidInput(
                Reason.invalid_json,
                f"the JSON object repeats {shown}; parsers disagree on which value wins, so the "
                "document is ambiguous (R1)",
            )
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise InvalidInput(
        Reason.invalid_json, f"{name} is not a JSON number (RFC 8259); send a valid document (R1)"
    )


def _depth(text: str) -> int:
    """Maximum nesting of arrays/objects, ignoring brackets inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def load_json(raw: bytes, max_bytes: int) -> Any:
    """Bytes of one document -> JSON value, strictly (no BOM, no NaN, no duplicate keys)."""
    if len(raw) > max_bytes:
        raise InvalidInput(
            Reason.too_large,
            f"the document is {len(raw)} bytes, more than the limit of {max_bytes} (R1)",
        )
    if raw.startswith(b"\xef\xbb\xbf") or raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InvalidInput(
            Reason.encoding,
            "the document starts with a byte-order mark; send UTF-8 without a BOM (R1)",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            Reason.encoding, f"the document is not valid UTF-8 (byte {exc.start}) (R1)"
        ) from None
    if not text.strip():
        raise InvalidInput(Reason.invalid_json, "the document is empty (R1)")
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise InvalidInput(
            Reason.invalid_json, f"the document is nested deeper than {MAX_DEPTH} levels (R1)"
        )
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        # exc.msg is a fixed phrase ("Expecting value"...), never the document's content.
        raise InvalidInput(
            Reason.invalid_json,
            f"the document is not valid JSON: {exc.msg.removesuffix(' at')} at line {exc.lineno} "
            f"column {exc.colno} (R1)",
        ) from None
    except (ValueError, RecursionError):  # e.g. an integer of thousands of digits
        raise InvalidInput(
            Reason.invalid_json, "the document is not valid JSON: a value is out of range (R1)"
        ) from None


def _parses_whole(raw: bytes, max_bytes: int) -> bool:
    """Whether the whole input is one JSON value (syntax only), to tell JSON from NDJSON."""
    if len(raw) > max_bytes:
        return False
    try:
        json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return False
    return True


def split_documents(raw: bytes, max_bytes: int) -> list[tuple[int | None, bytes]]:
    """Split an input into documents: one JSON value, or NDJSON lines (blank lines skipped)."""
    lines = [
        (number, line.rstrip(b"\r"))
        for number, line in enumerate(raw.split(b"\n"), start=1)
        if line.strip(b" \t\r")
    ]
    if len(lines) <= 1 or _parses_whole(raw, max_bytes):
        return [(None, raw)]
    return [(number, line) for number, line in lines]
