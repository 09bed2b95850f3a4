"""The compliance desk (issue 18): the signed client API, its callbacks, the staff dashboard's
queries and the four-eyes rules for destructive runs. Plain Python on a `JobContext` and the
state DB; `plugins/` speaks HTTP and Airflow on top of it."""
