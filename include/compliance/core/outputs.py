"""Writing the workspace bucket: every object the project writes goes through here.

One place means one policy: server-side encryption on every object (KMS when
COMPLIANCE_KMS_KEY_ID is set, i.e. `Settings.kms_key_id`, else SSE-S3), JSON written the same
way everywhere, and each DAG's one-line summary at `summaries/<dag_id>.json` for people and
`make demo` to read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from compliance.core import workspace_layout
from compliance.core.settings import Settings

THREADS = 8  # S3 calls overlap: per-object latency, not bandwidth, bounds many small writes
FROM_SETTINGS = "<from settings>"  # sentinel: read the deployment's key (None means SSE-S3)


def encryption_args(kms_key_id: str | None = FROM_SETTINGS) -> dict[str, str]:
    """The SSE arguments of every put: `kms_key_id` (default: the deployment's
    `Settings.kms_key_id`, read per call so a changed setting applies at once)."""
    key = Settings.from_env().kms_key_id if kms_key_id == FROM_SETTINGS else kms_key_id
    if key:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key}
    return {"ServerSideEncryption": "AES256"}


def put_bytes(s3: Any, bucket: str, key: str, body: bytes, content_type: str) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **encryption_args())
    return f"s3://{bucket}/{key}"


def put_json(s3: Any, bucket: str, key: str, obj: Any) -> str:
    body = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    return put_bytes(s3, bucket, key, body, "application/json")


def put_json_many(s3: Any, bucket: str, docs: Mapping[str, Any]) -> None:
    """Many small documents (receipts, accepted requests) written side by side."""
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        list(pool.map(lambda item: put_json(s3, bucket, *item), docs.items()))


def delete_many(s3: Any, bucket: str, keys: Iterable[str]) -> None:
    """Delete workspace objects, a thousand per request (a missing key is not an error)."""
    unique = sorted(set(keys))
    for i in range(0, len(unique), 1000):
        resp = s3.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": k} for k in unique[i : i + 1000]], "Quiet": True},
        )
        if resp.get("Errors"):
            codes = sorted({e.get("Code", "?") for e in resp["Errors"]})
            raise RuntimeError(f"S3 refused to delete {len(resp['Errors'])} object(s): {codes}")


def put_summary(s3: Any, bucket: str, dag_id: str, summary: dict[str, Any]) -> str:
    """The latest run's headline figures (counts and S3 keys only, never personal data)."""
    return put_json(s3, bucket, workspace_layout.summary_key(dag_id), summary)


def ensure_workspace(s3: Any, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception:
        s3.create_bucket(Bucket=bucket)
