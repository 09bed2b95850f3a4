"""Deployment settings, read from the environment (docker-compose, `make demo`, tests set them).

Only names of things live here (paths, bucket, connection ids); what personal data exists and
where is the data map's job, and how long it is kept is the retention policy's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_HASH_KEY = "compliance-jobs-dev-key-not-for-production"


@dataclass(frozen=True)
class Settings:
    datamap_path: Path
    retention_path: Path
    workspace_bucket: str
    workspace_connection: str
    hash_key: bytes

    @classmethod
    def from_env(cls) -> Settings:
        key = os.environ.get("COMPLIANCE_HASH_KEY", "")
        if not key:
            if os.environ.get("COMPLIANCE_REQUIRE_SECRETS") == "1":
                raise RuntimeError("COMPLIANCE_HASH_KEY is not set (required in production)")
            key = DEV_HASH_KEY
        return cls(
            datamap_path=Path(
                os.environ.get("COMPLIANCE_DATAMAP", REPO_ROOT / "config" / "datamap.yaml")
            ),
            retention_path=Path(
                os.environ.get("COMPLIANCE_RETENTION", REPO_ROOT / "config" / "retention.yaml")
            ),
            workspace_bucket=os.environ.get("COMPLIANCE_WORKSPACE_BUCKET", "cj-compliance"),
            workspace_connection=os.environ.get("COMPLIANCE_WORKSPACE_CONN", "aws_default"),
            hash_key=key.encode(),
        )
