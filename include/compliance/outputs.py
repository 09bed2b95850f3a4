"""Writing the workspace bucket: every object the project writes goes through here.

One place means one policy: server-side encryption on every object (KMS when
COMPLIANCE_KMS_KEY_ID is set, else SSE-S3), JSON written the same way everywhere, and each DAG's
one-line summary at `summaries/<dag_id>.json` for people and `make demo` to read.
"""

from __future__ import annotations

import json
import os
from typing import Any


def encryption_args() -> dict[str, str]:
    key = os.environ.get("COMPLIANCE_KMS_KEY_ID")
    if key:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key}
    return {"ServerSideEncryption": "AES256"}


def put_bytes(s3: Any, bucket: str, key: str, body: bytes, content_type: str) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **encryption_args())
    return f"s3://{bucket}/{key}"


def put_json(s3: Any, bucket: str, key: str, obj: Any) -> str:
    body = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    return put_bytes(s3, bucket, key, body, "application/json")


def put_summary(s3: Any, bucket: str, dag_id: str, summary: dict[str, Any]) -> str:
    """The latest run's headline figures (counts and S3 keys only, never personal data)."""
    return put_json(s3, bucket, f"summaries/{dag_id}.json", summary)


def ensure_workspace(s3: Any, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception:
        s3.create_bucket(Bucket=bucket)
