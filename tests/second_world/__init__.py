"""A second synthetic world, unlike the demo's, for the any-CRM end-to-end tests (issue 14).

Its own schema (string tenants, UUID consumer keys, a composite key, a table without a time
column, relations at depth 3), its own generator with recorded ground truth, its own data map
written from docs/data-map.md, and an independent checker that shares no code with
include/compliance.
"""
