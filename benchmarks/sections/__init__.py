"""One module per figure of issue 9; `_common` holds what they share.

Order of a full run: world (seed once), log_index, deletion, logs, retention, access, stats; the
peak memory summary is computed by the harness from every row. `log_index` runs first because
production's hourly `log_index` job has run before a deletion or access batch arrives: its
sidecars are seeded into every later batch's workspace (`log_index.ensure_index`, which builds
them once per run also when `--only` leaves the section out).
"""

SECTIONS = ["log_index", "deletion", "celery", "logs", "retention", "access", "stats"]
