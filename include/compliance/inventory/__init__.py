"""Holding the data map against the live systems: existence, drift, and counts per category.

A data map is only useful while it is true. This compares it with the databases and buckets it
describes, flags what looks personal but is not mapped (drift: a new column, log field or prefix
nobody classified), and counts records per category per client, the figures R8/R27 disclosures and
retention planning rest on. Counting is one GROUP BY per table in the database.
"""

from compliance.inventory.findings import (
    Finding,
    InventoryProblem,
    SystemInventory,
    identity_kind,
    looks_personal,
)
from compliance.inventory.objects import inspect_object_store
from compliance.inventory.report import raise_on_problems, render_html, summarise, write_report
from compliance.inventory.sql import inspect_sql_system

__all__ = [
    "Finding",
    "InventoryProblem",
    "SystemInventory",
    "identity_kind",
    "inspect_object_store",
    "inspect_sql_system",
    "looks_personal",
    "raise_on_problems",
    "render_html",
    "summarise",
    "write_report",
]
