"""The signed client API at `/compliance/api/v1` (issue 18, item 1). Mounted by the desk's app
(`plugins/compliance_desk.py`); not behind Airflow's login: every call is signed instead.

Thin on purpose: this module speaks HTTP only. Signature, credential, replay and rate checks are
`compliance.desk.api_calls.authenticate`; submissions, statuses and results are
`compliance.desk.submissions`. Each call runs in a worker thread (`asyncio.to_thread`): it reads
Airflow connections, the state DB and S3, none of which may block the event loop.

The signature covers the path as this server sees it (`request.url.path`, the full path from
the api-server's root, plus `?query`) and the raw body bytes, read before anything parses them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from compliance import runtime
from compliance.core.context import JobContext
from compliance.desk import signing, submissions
from compliance.desk.api_calls import PROBLEM_MEDIA, Problem, authenticate
from compliance.desk.api_clients import ApiClient

log = logging.getLogger(__name__)

SIGNED = {
    "description": "Every call is signed (docs/api.md): HMAC-SHA256 or Ed25519 over "
    "`v1\\nMETHOD\\npath?query\\ntimestamp\\nnonce\\nsha256(body)`.",
}
_HEADER_DOCS = {
    signing.CLIENT: "The credential's key (Airflow connection `compliance_api_<key>`).",
    signing.TIMESTAMP: f"Unix seconds; within {signing.WINDOW_SECONDS} s of the server's clock.",
    signing.NONCE: "16-128 characters of [A-Za-z0-9_-], new for every call.",
    signing.SIGNATURE: "`v1=<hex HMAC-SHA256>` or `ed25519=<base64 signature>`.",
}
_PROBLEM = {"content": {PROBLEM_MEDIA: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Unsigned, badly signed, stale, replayed or unknown client", **_PROBLEM},
    403: {"description": "The credential may not act for this client_id", **_PROBLEM},
    429: {"description": "Rate limited (see Retry-After)", **_PROBLEM},
}


def _openapi_extra(body: bool = False) -> dict[str, Any]:
    params = [
        {
            "name": name,
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "description": text,
        }
        for name, text in _HEADER_DOCS.items()
    ]
    extra: dict[str, Any] = {"parameters": params, "security": [{"signed": []}]}
    if body:
        extra["requestBody"] = {
            "required": True,
            "description": "One request document (the inbox's format, docs/requests.md) or a "
            f'batch `{{"requests": [...]}}` of up to {submissions.MAX_BATCH}.',
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    return extra


api = FastAPI(
    title="Compliance Jobs client API",
    version="1",
    description="Signed client API of the compliance desk (issue 18); see docs/api.md.",
    openapi_url="/openapi.json",
    docs_url=None,
    redoc_url=None,
)


@api.post(
    "/requests",
    status_code=202,
    openapi_extra=_openapi_extra(body=True),
    responses={
        200: {"description": "A repeat of a submitted document: its current status"},
        207: {"description": "A batch: one status (and request or problem) per item"},
        400: {"description": "Invalid document, with the intake's reason codes", **_PROBLEM},
        409: {"description": "Another document under the same request id", **_PROBLEM},
        **_ERRORS,
    },
)
async def post_requests(request: Request) -> Response:
    def work(ctx: JobContext, client: ApiClient, body: bytes) -> tuple[int, Any]:
        try:
            payload = json.loads(body)
        except ValueError:
            raise submissions.invalid("", "invalid_json", "the body is not JSON") from None
        return submissions.submit(ctx, client, payload)

    return await _serve(request, work)


@api.get(
    "/requests/{request_id}",
    openapi_extra=_openapi_extra(),
    responses={404: {"description": "No such request", **_PROBLEM}, **_ERRORS},
)
async def get_request(request: Request, request_id: str, client_id: str | None = None) -> Response:
    return await _serve(
        request,
        lambda ctx, client, _: (200, submissions.status(ctx, client, client_id, request_id)),
    )


@api.get(
    "/requests/{request_id}/result",
    openapi_extra=_openapi_extra(),
    responses={
        404: {"description": "No such request, or no receipt", **_PROBLEM},
        409: {"description": "Not completed yet", **_PROBLEM},
        **_ERRORS,
    },
)
async def get_result(request: Request, request_id: str, client_id: str | None = None) -> Response:
    return await _serve(
        request,
        lambda ctx, client, _: (200, submissions.result(ctx, client, client_id, request_id)),
    )


async def _serve(
    request: Request, work: Callable[[JobContext, ApiClient, bytes], tuple[int, Any]]
) -> Response:
    body = await request.body()
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    try:
        code, answer = await asyncio.to_thread(
            _call, request.method, path, request.headers, body, work
        )
    except Problem as problem:
        return problem_response(problem)
    return JSONResponse(answer, status_code=code)


def _call(
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    work: Callable[[JobContext, ApiClient, bytes], tuple[int, Any]],
) -> tuple[int, Any]:
    ctx = runtime.context()
    client = authenticate(ctx, method, path, headers, body)
    return work(ctx, client, body)


def problem_response(problem: Problem) -> Response:
    """RFC 9457: `application/problem+json`; logged by status and reason code only."""
    log.info("client API: %s %s", problem.status, problem.reason)
    return Response(
        json.dumps(problem.body()),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA,
        headers=problem.headers,
    )


def _openapi() -> dict[str, Any]:
    """FastAPI's own schema, plus the signature scheme and the Problem schema it refers to."""
    if api.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["signed"] = {
            "type": "apiKey",
            "in": "header",
            "name": signing.SIGNATURE,
            **SIGNED,
        }
        components.setdefault("schemas", {})["Problem"] = {
            "type": "object",
            "required": ["type", "title", "status", "detail", "reason"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "reason": {"type": "string", "description": "The reason code (docs/api.md)"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "field": {"type": "string"},
                            "reason": {"type": "string"},
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        }
        api.openapi_schema = schema
    return api.openapi_schema


api.openapi = _openapi  # type: ignore[method-assign]
