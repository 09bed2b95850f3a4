"""Contract end (G4 Art. 28(3)(g), R27): a client whose contract ended gets its data back or
deleted, in every store, a grace period later.

A service provider may keep a client's personal information only for that contract's business
purposes (R27); at the end of the contract the processor returns or deletes it (Art. 28(3)(g)).
Intake already refuses an ended client's new requests (R6); this package makes sure its data
does not stay forever:

- `scope`: who is due (the tenant registry's `ended_column` plus the grace period,
  `COMPLIANCE_OFFBOARDING_GRACE_DAYS`), who is blocked by a legal hold (R19), and the counts a
  dry run reports (rows per table, log lines, recordings, workspace documents);
- `erase`: deletion of one client everywhere, tenant by tenant and set-based: recordings, log
  lines whose tenant field is the client, tombstones for backups (R18), CRM rows through the
  tenant column and relations, the workspace's documents of that client;
- `backups`: `rewrite: true` backup stores rewritten without the client's rows (through
  `deletion.backup_rewrite` with a tenant scope), checked with code of its own;
- `notify`: one contract-end notice per sub-processor through the notice outbox, and the staff
  alert when the approval is rejected or times out;
- `export`: the return export, every mapped table filtered by tenant (CSV and JSON) with its log
  lines and recordings, in one zip encrypted at rest behind an expiring link (R12);
- `run`: the run itself: plan (a dry run stops there), execute after approval, receipts and
  ledger entries (counts and keyed hashes only).

Guide: docs/offboarding.md.
"""
