"""A log shard: one day-prefix of one log store, the unit the log tasks are mapped over.

Mapped tasks receive their shard through XCom, which carries JSON, so a shard travels as its
`key` ("<store>|<prefix>") and is parsed back once, at the task layer. Nothing else splits the
text: a store name cannot hold "|" (the data map's name rule), so the first "|" is the border.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class LogShard:
    store: str
    prefix: str

    @property
    def key(self) -> str:
        return f"{self.store}|{self.prefix}"

    @classmethod
    def parse(cls, key: str) -> LogShard:
        store, sep, prefix = key.partition("|")
        if not sep or not store:
            raise ValueError(f"not a log shard key (store|prefix): {key!r}")
        return cls(store, prefix)

    def __str__(self) -> str:
        return self.key
