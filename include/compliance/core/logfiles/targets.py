"""Who a log scan looks for: `Targets`, identities per tenant, each tied to a request reference.

Shared by erasure (R16.1), access reports (R10) and retention: one normalisation of the values
(e-mails lower-case, blanks dropped) so the three read the same lines as the same person's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from compliance.core.datamap.model import IdentityType

NO_REFS: frozenset[str] = frozenset()


def norm_target(itype: IdentityType, value: Any) -> str:
    text = str(value).strip()
    return text.lower() if itype is IdentityType.email else text


class Targets:
    """Who to look for: per tenant, identities (type, value) each tied to a request reference.

    Built from `{tenant: [(IdentityType, value, ref), ...]}`; the tenant is the string form of the
    client id. Values are expected normalised (e-mails lower-case, phones E.164, ids as strings);
    e-mails are lower-cased again and blanks dropped, to be safe.
    """

    def __init__(
        self, by_tenant: Mapping[Any, Iterable[tuple[IdentityType | str, Any, str]]]
    ) -> None:
        index: dict[str, dict[IdentityType, dict[str, set[str]]]] = {}
        for tenant, identities in by_tenant.items():
            for itype_raw, value, ref in identities:
                itype = IdentityType(itype_raw)
                norm = norm_target(itype, value)
                if not norm:
                    continue
                table = index.setdefault(str(tenant), {}).setdefault(itype, {})
                table.setdefault(norm, set()).add(str(ref))
        self._index = {
            tenant: {
                itype: {value: frozenset(refs) for value, refs in table.items()}
                for itype, table in by_type.items()
            }
            for tenant, by_type in index.items()
        }
        self.matchers: dict[tuple[Any, ...], Any] = {}  # compiled per store (`matching.Matcher`)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(self._index)

    @property
    def refs(self) -> frozenset[str]:
        return frozenset(
            ref
            for by_type in self._index.values()
            for table in by_type.values()
            for refs in table.values()
            for ref in refs
        )

    def values(self, itype: IdentityType) -> frozenset[str]:
        """Every value of `itype`, over all tenants (for the pre-filter)."""
        return frozenset(v for by_type in self._index.values() for v in by_type.get(itype, ()))

    def lookup(self, tenant: str, itype: IdentityType, value: str) -> frozenset[str]:
        """References looking for `value` (already normalised) of `itype` in `tenant`."""
        return self._index.get(tenant, {}).get(itype, {}).get(value, NO_REFS)

    def __len__(self) -> int:
        return sum(len(t) for by_type in self._index.values() for t in by_type.values())

    def __bool__(self) -> bool:
        return bool(self._index)

    def __repr__(self) -> str:  # no identity values: this may reach a log
        return f"Targets(tenants={len(self._index)}, identities={len(self)}, refs={len(self.refs)})"
