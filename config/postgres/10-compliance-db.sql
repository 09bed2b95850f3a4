-- The compliance state database (requests, tombstones, audit ledger) beside the demo CRM.
-- Kept apart from the CRM's own tables: erasure and retention never touch it.
CREATE DATABASE compliance OWNER crm;
