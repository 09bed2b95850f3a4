"""Identity parsing and normalising: e-mail (syntax, mixed scripts, lookalikes), phone (E.164
and every common written form, R16 search), contact id; and the stored identity shapes.
Values never leave through a rejection message."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from compliance.core.datamap.model import IdentityType
from compliance.requests.fields import (
    FieldRejected,
    check_fields,
    wrong_type,
)
from compliance.requests.request_format import (
    BAD_CATEGORIES,
    CONTACT_ID_RE,
    IDENTITY_FIELDS,
    PHONE_RE,
    REGION_RE,
    WILDCARDS,
    ZERO_WIDTH,
    Identities,
    Reason,
)


def _malformed_email(hint: str) -> FieldRejected:
    return FieldRejected(
        Reason.malformed_email,
        "identities.email",
        f"identities.email is not a valid e-mail address: {hint} (R5)",
    )


def _script(ch: str) -> str | None:
    """Unicode script of a letter (or non-ASCII digit), from its character name; None for the
    script-neutral characters (ASCII digits, punctuation, combining marks)."""
    category = unicodedata.category(ch)
    if ch.isascii():
        return "LATIN" if ch.isalpha() else None
    if not (category.startswith("L") or category == "Nd"):
        return None
    word = unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]
    return {"CJK": "HAN", "KATAKANA-HIRAGANA": "KATAKANA"}.get(word, word)


# Script mixes that are normal within one word (UTS #39 "highly restrictive"): Latin with the
# scripts of Japanese, Chinese and Korean writing. Anything else mixed is a homoglyph risk.
ALLOWED_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
# Lower-case non-Latin letters that look like Latin ones (a subset of Unicode's confusables).
LATIN_LOOKALIKES = frozenset(
    # Cyrillic a c e o p x y i j s d h l q w
    "\u0430\u0441\u0435\u043e\u0440\u0445\u0443\u0456\u0458\u0455\u0501\u04bb\u04cf\u051b\u051d"
    # Greek o a i v p k u
    "\u03bf\u03b1\u03b9\u03bd\u03c1\u03ba\u03c5"
    # Armenian o u n h
    "\u0585\u057d\u0578\u0570"
)


def _email(value: object) -> str:
    """Validate and normalise an e-mail address; refuse lookalikes.

    1. Refuse invisible and formatting characters before anything else: zero-width space,
       (non-)joiners, word joiner and BOM (U+200B-U+200D, U+2060, U+FEFF), bidi overrides, and
       any control, surrogate, private-use, unassigned or space character. They make two
       different addresses look identical.
    2. Refuse compatibility characters (NFKC differs from NFC): full-width letters, ligatures,
       mathematical alphanumerics, superscripts.
    3. Refuse wildcards (`*`, `%`, `?`): valid in an RFC 5322 local part, but an identity
       names one address, and a pattern character could match others wherever values are
       compared as patterns.
    4. Syntax only (`_email_syntax`): `email_validator` without deliverability checks, and
       special-use, reserved or non-resolving domains (`.test`, `.local`, `.internal`,
       `.invalid`, `localhost`, typo domains such as `gmial.com`) accepted: these are identities
       the CRM holds, to be matched, not addresses to mail. Its error text quotes the address,
       so it is never passed on. IDNA (xn--) domains come back in Unicode, so the next checks
       see the real letters. Never a network lookup.
    5. Lower-case the normalised form (NFC): every store is matched case-insensitively, and
       tombstones and dedupe keys are hashes of this one spelling (R7, R20).
    6. Script check on the local part and on each domain label: letters must come from one script
       (or Latin with Han/Kana, Han/Bopomofo or Han/Hangul, as UTS #39 "highly restrictive"
       allows): "jane" spelt with a Cyrillic "a" (U+0430) is refused; all-Cyrillic or all-Han
       addresses such as "ivan@primer.rf" written in Cyrillic are accepted.
    7. Whole-script lookalikes: when the address mixes scripts across parts, a non-Latin part made
       only of Latin-lookalike letters ("ace" in Cyrillic next to "example.com") is refused.
    """
    if not isinstance(value, str):
        raise wrong_type("identities.email", "a string", value, "R5")
    value = value.strip()
    if len(value) > 320:
        raise _malformed_email("it is longer than 320 characters")
    if any(ch in ZERO_WIDTH or unicodedata.category(ch) in BAD_CATEGORIES for ch in value):
        raise _malformed_email("it contains spaces, invisible, formatting or control characters")
    if unicodedata.normalize("NFKC", value) != unicodedata.normalize("NFC", value):
        raise _malformed_email("it contains full-width or other compatibility characters")
    if any(ch in WILDCARDS for ch in value):
        raise _malformed_email("it contains a wildcard character (*, % or ?)")
    try:
        normalized = _email_syntax(value).lower()
    except EmailNotValidError:
        raise _malformed_email("the syntax is invalid (one address, local-part@domain)") from None
    local, _, domain = normalized.rpartition("@")
    parts = [local, *domain.split(".")]
    part_scripts = []
    for part in parts:
        scripts = {s for s in map(_script, part) if s}
        if len(scripts) > 1 and not any(scripts <= mix for mix in ALLOWED_MIXES):
            raise _malformed_email("it mixes letters of different scripts (possible lookalike)")
        part_scripts.append(scripts)
    everything = set().union(*part_scripts)
    if len(everything) > 1 and not any(everything <= mix for mix in ALLOWED_MIXES):
        for part, scripts in zip(parts, part_scripts, strict=True):
            letters = [ch for ch in part if _script(ch)]
            if scripts and scripts != {"LATIN"} and all(ch in LATIN_LOOKALIKES for ch in letters):
                raise _malformed_email(
                    "a part is written only with letters that imitate Latin ones (possible "
                    "lookalike)"
                )
    return normalized


def _email_syntax(value: str) -> str:
    """`email_validator`'s syntax checks and normalisation (NFC, IDNA) alone.

    Even with deliverability checks off the library refuses the special-use names it lists
    (`.arpa`, `.invalid`, `.local`, `localhost`, `.onion`, `.test`): a special-use suffix is
    swapped for a neutral one of the same shape for the check and put back after, so the rest
    of the address is still checked. Single-label domains are accepted (`jane@localhost`).
    """
    local, _, domain = value.rpartition("@")
    lowered = domain.lower()
    suffix = ""
    for name in SPECIAL_USE_DOMAIN_NAMES:
        if lowered == name or lowered.endswith("." + name):
            suffix = name
            break
    probe = f"{local}@{domain[: len(domain) - len(suffix)]}{'a' * len(suffix)}"
    normalized = validate_email(
        probe if suffix else value,
        check_deliverability=False,
        test_environment=True,
        globally_deliverable=False,
    ).normalized
    return normalized[: len(normalized) - len(suffix)] + suffix if suffix else normalized


def _phone_region(doc: dict[str, Any]) -> str | None:
    """The region a national phone number is read in (ISO 3166-1 alpha-2), when given."""
    value = doc.get("phone_region")
    if value is None:
        return None
    if not isinstance(value, str):
        raise wrong_type("phone_region", "a string", value, "R5")
    region = value.strip().upper()
    if not REGION_RE.fullmatch(region) or region not in phonenumbers.SUPPORTED_REGIONS:
        raise FieldRejected(
            Reason.malformed_phone,
            "phone_region",
            "phone_region must be an ISO 3166-1 alpha-2 country code with a telephone "
            'numbering plan, such as "US", "GB" or "DE" (R5)',
        )
    return region


def _phone(value: object, region: str | None = None) -> tuple[str, tuple[str, ...]]:
    """(E.164, other spellings) of a phone number: read in `region` (the request's
    `phone_region`, else US), checked against the numbering plan's offline metadata (never a
    network lookup). The other spellings are the number as sent, its digits and its national
    digits: a CRM that stores numbers as-is still matches (any-CRM)."""
    if not isinstance(value, str):
        raise wrong_type("identities.phone", "a string", value, "R5")
    value = value.strip()
    problem = (
        "identities.phone is not a valid phone number (digits, spaces, + ( ) . - only; national "
        "numbers are read in phone_region, US when it is not given) (R5)"
    )
    if not PHONE_RE.fullmatch(value):
        raise FieldRejected(Reason.malformed_phone, "identities.phone", problem)
    try:
        number = phonenumbers.parse(value, region or "US")
    except phonenumbers.NumberParseException:
        raise FieldRejected(Reason.malformed_phone, "identities.phone", problem) from None
    if not phonenumbers.is_valid_number(number):
        raise FieldRejected(Reason.malformed_phone, "identities.phone", problem)
    e164, *variants = _forms(number, value)
    return e164, tuple(variants)


def stored_phone_forms(value: str) -> tuple[str, ...]:
    """Every common spelling of a phone number as a CRM stored it (E.164 first), or only the
    value itself when it is not a valid number read as US. Why: a value found on a consumer's
    row is checked for other holders (`resolve._expand`), and a household member may hold the
    same number as "415-555-0123" where the consumer holds "+14155550123"."""
    value = value.strip()
    try:
        number = phonenumbers.parse(value, "US")
    except phonenumbers.NumberParseException:
        return (value,)
    if not phonenumbers.is_valid_number(number) or number.extension:
        return (value,)  # an extension is another line: it shares nothing with the main one
    return _forms(number, value)


def _forms(number: phonenumbers.PhoneNumber, value: str) -> tuple[str, ...]:
    """E.164 first, then the number as written, its digits and `_written_forms`, once each."""
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    spellings = (e164, value, re.sub(r"[^0-9]", "", value), *_written_forms(number))
    return tuple(dict.fromkeys(v for v in spellings if v))


def _written_forms(number: phonenumbers.PhoneNumber) -> list[str]:
    """The ways a CRM commonly stores one number as typed: national and international digit
    groups joined by nothing, '-', '.', ' ', and the national '(415) 555-0134' form. A resolver
    compares phone columns as stored (so the CRM's indexes serve), so the request carries each
    spelling instead of the column being normalised (any-CRM)."""
    fmt = phonenumbers.PhoneNumberFormat
    national = phonenumbers.format_number(number, fmt.NATIONAL)
    groups = re.findall(r"[0-9]+", national)
    world = re.findall(r"[0-9]+", phonenumbers.format_number(number, fmt.INTERNATIONAL))
    forms = [national, phonenumbers.format_number(number, fmt.INTERNATIONAL)]
    for sep in ("", "-", ".", " "):
        forms.append(sep.join(groups))
        forms.append(sep.join(world))
        forms.append("+" + sep.join(world))
    if len(groups) > 1:
        forms.append(f"({groups[0]}) {'-'.join(groups[1:])}")
    return forms


def _contact_id(value: object) -> str:
    if not isinstance(value, str):
        raise wrong_type("identities.contact_id", "a string", value, "R5")
    value = value.strip()
    if not CONTACT_ID_RE.fullmatch(value):
        raise FieldRejected(
            Reason.malformed_contact_id,
            "identities.contact_id",
            "identities.contact_id must be 1 to 64 characters from A-Z a-z 0-9 . _ : - starting "
            "with a letter or digit (R5)",
        )
    return value


def identities_of(doc: dict[str, Any]) -> Identities:
    value = doc.get("identities")
    none = "identities must hold at least one of email, phone, contact_id (R5)"
    if value is None:
        raise FieldRejected(Reason.no_identity, "identities", none)
    if not isinstance(value, dict):
        raise wrong_type("identities", "an object {email, phone, contact_id}", value, "R5")
    check_fields(value, [k.value for k in IDENTITY_FIELDS], "identities.")
    region = _phone_region(doc)
    found: dict[str, Any] = {}
    for kind, check in (
        (IdentityType.email, _email),
        (IdentityType.phone, lambda raw: _phone(raw, region)),
        (IdentityType.contact_id, _contact_id),
    ):
        raw = value.get(kind.value)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue  # absent, null and empty all mean "not given"
        checked = check(raw)
        if kind is IdentityType.phone:
            found["phone"], found["phone_variants"] = checked
        else:
            found[kind.value] = checked
    if not any(found.get(k.value) for k in IDENTITY_FIELDS):
        raise FieldRejected(Reason.no_identity, "identities", none)
    return Identities(**found)


def identity_pairs(stored: Mapping[str, Any]) -> tuple[tuple[IdentityType, str], ...]:
    """(kind, value) of every identity value of a stored request (`Identities.as_doc`: a string
    per kind, or a list), kinds in name order, each kind's values as stored."""
    return tuple(
        (IdentityType(kind), v)
        for kind, values in sorted(stored.items())
        for v in (values if isinstance(values, list) else [values])
    )


def identity_lists(stored: Mapping[str, Any]) -> dict[str, list[str]]:
    """The stored identities as kind -> list of values (what batches keep as `given`)."""
    out: dict[str, list[str]] = {}
    for kind, v in identity_pairs(stored):
        out.setdefault(kind.value, []).append(v)
    return out
