"""Privacy-safe statistics (issue 6): trends from the CRM's e-mail events and CCPA metrics (R23).

Modules, in the order a run uses them:
- `config`: `config/statistics.yaml` (events source, k, report shape), checked against the map;
- `period`: report periods and why one is refused (`PeriodError`);
- `aggregate`: the SQL (two-level GROUP BYs per range of events, SQLite and PostgreSQL alike);
- `rollup`: weekly rollups in the state database, so a weekly run reads only its new week;
- `figures`: a period's figures from its weeks' rollups, its edge days and one reach pass;
- `suppress`: primary and complementary small-group suppression over table trees;
- `tables`: pandas shaping of grouped results into the published, suppressed tables;
- `metrics`: CCPA request metrics per client and type (R23) and the open-requests view;
- `charts`, `report`: PNG charts and the self-contained HTML report;
- `publish`: the three steps the `statistics_reports` DAG runs.

This package file imports nothing heavy: DAG files import `compliance.stats.period` at parse
time, and pandas or matplotlib must not be loaded then.
"""
