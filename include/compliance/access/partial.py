"""R14: what part of a request is withheld or denied, and on which legal basis.

Reg 7024(e) asks that a response which withholds part of what was requested explain the basis
and give the rest. The report's `partial_denial` list (data.json, and the page's "What is not in
this report, and why" section) collects every such part from the rest of the report, so the two
cannot disagree:

- values withheld from mapped fields (R10 for the CCPA; credentials only for the GDPR, G2);
- values of those kinds found elsewhere (free text, unmapped keys, backup rows) and replaced by a
  statement of their type (R10; `access.r10`);
- call audio left out at the business's choice, or no longer found (R8, R14);
- stores not searched under R13's conditions (Reg 7024(c));
- the specific pieces of a request verified only for categories (R5, Reg 7024(a)-(b)).

Counts and types only: never a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compliance.access import r10

R14_BASIS = "Cal. Code Regs. tit. 11, 7024(e)"
R13_BASIS = "Cal. Code Regs. tit. 11, 7024(c)"
# The GDPR has no R13: a store skipped for every request says so instead of borrowing the CCPA's
GDPR_R13_BASIS = (
    "no GDPR exemption is claimed: these copies hold the records above as they were when each "
    "copy was made; ask the business if you want them searched"
)

AUDIO_LEFT_OUT = (
    "The audio of {n} call recording(s) is held but was left out of this delivery at the "
    "business's choice (its delivery option for call audio). It is not denied: the recordings "
    "are listed below with their date, and the business can provide the audio on request."
)
AUDIO_MISSING = (
    "The audio of {n} call recording(s) is listed in our records but the file could no longer "
    "be found, so it cannot be provided; the record of each call is given."
)


def statement(
    jurisdiction: str,
    *,
    withheld: Sequence[dict[str, Any]] = (),
    found: Sequence[dict[str, Any]] = (),
    recordings: Sequence[dict[str, Any]] = (),
    not_searched: Sequence[dict[str, Any]] = (),
    scope: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The partial-denial items of one report, in a fixed order."""
    items: list[dict[str, Any]] = []
    law = r10.basis(jurisdiction)
    if scope is not None and scope.get("level") == "categories":
        items.append(
            {
                "part": "specific_pieces",
                "what": "Every specific piece of personal information about you.",
                "rule": scope["rule"],
                "basis": scope["basis"],
                "text": scope["text"],
            }
        )
    by_basis: dict[tuple[str, str, str], list[str]] = {}
    for w in withheld:  # one item per legal basis (G2: the GDPR has two)
        by_basis.setdefault((w["rule"], w["basis"], w["text"]), []).append(w["statement"])
    for (rule, basis, text), statements in by_basis.items():
        items.append(
            {
                "part": "withheld_fields",
                "what": " ".join(statements),
                "rule": rule,
                "basis": basis,
                "text": text,
            }
        )
    if found:
        what = "; ".join(f"{f['values']} x {f['statement']}" for f in found)
        items.append(
            {
                "part": "withheld_in_text",
                "what": (
                    "Values found in free text, log lines, unmapped fields or backup copies, "
                    f"each replaced where it appeared by a statement of its type: {what}."
                ),
                "rule": law["rule"],
                "basis": law["basis"],
                "text": law["text"],
            }
        )
    left_out = sum(1 for a in recordings if a.get("status") == "not_requested")
    if left_out:
        items.append(
            {
                "part": "recordings_left_out",
                "what": AUDIO_LEFT_OUT.format(n=left_out),
                "rule": "R14",
                "basis": R14_BASIS,
                "text": "Left out at the business's choice for this delivery; not a denial.",
            }
        )
    missing = sum(1 for a in recordings if a.get("status") == "missing")
    if missing:
        items.append(
            {
                "part": "recordings_missing",
                "what": AUDIO_MISSING.format(n=missing),
                "rule": "R14",
                "basis": R14_BASIS,
                "text": "Impossible to provide: the file is no longer held.",
            }
        )
    for store in not_searched:
        items.append(
            {
                "part": "not_searched",
                "what": store.get("description") or store["store"],
                "rule": "R13",
                "basis": GDPR_R13_BASIS if jurisdiction == "gdpr" else R13_BASIS,
                "text": store.get("reason", ""),
            }
        )
    return items
