"""One module per figure of issue 9; `_common` holds what they share.

Order of a full run: world (seed once), deletion, logs, retention, access, stats; the peak
memory summary is computed by the harness from every row.
"""

SECTIONS = ["deletion", "logs", "retention", "access", "stats", "log_index"]
