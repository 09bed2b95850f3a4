"""The signed client API at `/compliance/api/v1` (issue 18, item 1). Mounted by the desk's app
(`plugins/compliance_desk.py`); not behind Airflow's login: every call is signed instead."""

from __future__ import annotations

from fastapi import FastAPI

api = FastAPI(
    title="Compliance Jobs client API",
    version="1",
    openapi_url="/openapi.json",
    docs_url=None,
    redoc_url=None,
)
