"""The task layer: one module per DAG, one function per task.

Each function takes a `JobContext` (built by `compliance.runtime` in a DAG task, by the tests
and benchmarks from their own engines and clients) plus the XCom values its task receives, and
calls into the domain packages. DAG files wire these; nothing here knows Airflow.
"""
