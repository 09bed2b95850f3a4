"""Legal holds (R19) as the sweep sees them: read once, turned into SQL and object predicates.

The registry is the table the data map names (`systems.<s>.holds`): one row per hold, for a whole
client (`contact_id` NULL) or one consumer, over everything (`scope: all`) or one table or store.
A hold is active while `expires_at` is NULL (until released) or later than the as-of date's
midnight; expired holds stop applying on the next sweep (a `law_enforcement_hold` lapses 90
days after it was placed, `compliance.requests.holds`). The scopes mean what they mean for deletion
(docs/deletion.md "Legal holds"): a hold on a table keeps the rows below it too (the callers ask
`holds.scopes_holding`), a scope the data map does not know keeps everything of its client or
consumer (`honoured`), and a hold with an invalid exception code is honoured all the same
(the watchdog alerts on it, R19). Holds are few, so they are read into
memory and written into each statement as literals: the same hold set then decides the plan and
the execution, and the report can say how many holds applied. Client and consumer ids are text
and are written in the CRM columns' own types (`sqlmap.typed_value`): a hold on a tenant the
column cannot hold matches no row, and no column is ever cast (any-CRM, issue 14).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace

import sqlalchemy as sa

from compliance.core.datamap.model import DataMap
from compliance.core.sqlmap import KeyTypeError, typed_value, typed_values
from compliance.requests.holds import ALL, Hold, active_holds, known_scope

__all__ = ["ALL", "Hold", "active_holds", "held_clients", "held_expr", "honoured", "relevant"]


def honoured(dm: DataMap, system_name: str, holds: Iterable[Hold]) -> list[Hold]:
    """The holds as the sweep applies them: a scope the data map does not know covers
    everything (never expire what someone put on hold because the scope is misspelt)."""
    return [h if known_scope(dm, system_name, h.scope) else replace(h, scope=ALL) for h in holds]


def relevant(holds: Iterable[Hold], scopes: Iterable[str]) -> list[Hold]:
    wanted = {ALL, *scopes}
    return [h for h in holds if h.scope in wanted]


def held_expr(
    holds: Iterable[Hold],
    scopes: Iterable[str],
    tenant: sa.ColumnElement,
    consumer_key: sa.ColumnElement,
) -> sa.ColumnElement[bool]:
    """True for rows a hold protects: the client's whole scope, or the consumer's.

    Never NULL (a row whose consumer key was cut by an earlier erasure is simply not held by a
    consumer hold), so `NOT held` can be combined safely.
    """
    hs = relevant(holds, scopes)
    clients = sorted({h.client_id for h in hs if h.consumer_id is None})
    people: dict[str, set[str]] = defaultdict(set)
    for h in hs:
        if h.consumer_id is not None and h.client_id not in clients:
            people[h.client_id].add(h.consumer_id)
    terms: list[sa.ColumnElement[bool]] = []
    typed_clients = typed_values(tenant, clients)
    if typed_clients:
        terms.append(sa.and_(tenant.is_not(None), tenant.in_(typed_clients)))
    for client, ids in sorted(people.items()):
        try:
            typed_client = typed_value(tenant, client)
        except KeyTypeError:
            continue  # a tenant this column cannot hold: no row of it here
        keys = typed_values(consumer_key, sorted(ids))
        if keys:
            terms.append(
                sa.and_(tenant == typed_client, consumer_key.is_not(None), consumer_key.in_(keys))
            )
    return sa.or_(*terms) if terms else sa.false()


def held_clients(holds: Iterable[Hold], scopes: Iterable[str]) -> set[str]:
    """Clients with any active hold over `scopes` (objects mix consumers, so the whole client)."""
    return {h.client_id for h in relevant(holds, scopes)}
