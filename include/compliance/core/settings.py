"""Deployment settings: the one reader of environment variables (docker-compose, `make demo`
and the tests set them).

Only names of things and switches live here (paths, bucket, connection ids, channels); what
personal data exists and where is the data map's job, and how long it is kept is the retention
policy's. Everything else receives a `Settings` (through `JobContext.settings`) rather than
reading the environment itself, so a test can hand a job any configuration without patching
`os.environ`, and `grep environ include/` finds one module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

REPO_ROOT = Path(__file__).resolve().parents[3]
DEV_HASH_KEY = "compliance-jobs-dev-key-not-for-production"
# Variables that are not ours but change what we write (the UI's address in alert links).
_FOREIGN = ("AIRFLOW__API__BASE_URL",)


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    datamap_path: Path
    retention_path: Path
    workspace_bucket: str
    workspace_connection: str
    hash_key: bytes = field(repr=False)  # a secret: never in a log line or a traceback
    statistics_path: Path = REPO_ROOT / "config" / "statistics.yaml"
    kms_key_id: str | None = None  # SSE-KMS for workspace objects; None: SSE-S3 (AES256)
    # COMPLIANCE_ACCESS_INCLUDE_AUDIO: call recordings in bundles (R8 specific pieces); on
    # unless set to 0/false, and a bundle that leaves them out says so (R14)
    access_include_audio: bool = True
    # COMPLIANCE_ACCESS_AUDIO_LINK_BYTES: a recording larger than this is not put in the zip but
    # copied beside it and listed in the bundle with its own expiring link (R12)
    access_audio_link_bytes: int = 25 << 20
    deadline_thresholds: str | None = None  # COMPLIANCE_DEADLINE_THRESHOLDS, e.g. "7,2"
    subprocessor_smtp_conn: str | None = None  # COMPLIANCE_SUBPROCESSOR_SMTP_CONN
    # COMPLIANCE_OFFBOARDING_GRACE_DAYS: days after a contract's end before the client's data is
    # returned or deleted (G4 Art. 28(3)(g), R27; docs/offboarding.md)
    offboarding_grace_days: int = 30
    # Four-eyes approval of destructive runs (issue 18; docs/approvals.md):
    # COMPLIANCE_APPROVAL_BATCH_SIZE: a deletion batch of more requests than this waits for a
    # second person's approval, scheduled or not (0: every non-empty batch)
    approval_batch_size: int = 100
    # COMPLIANCE_APPROVAL_MANUAL_RUNS: a manual deletion run that is not a dry run waits for
    # approval (on unless set to 0/false/off)
    approval_manual_runs: bool = True
    # COMPLIANCE_APPROVAL_RETENTION_RULES: a retention run whose rules (the policy file and the
    # data map it reads) changed since the last approved run waits for approval (on unless off)
    approval_retention_rules: bool = True
    # COMPLIANCE_APPROVAL_TIMEOUT_HOURS: no answer within this long counts as a rejection
    approval_timeout_hours: float = 72.0
    # Every COMPLIANCE_* variable (and the few foreign ones above), for the settings read as a
    # group: alert channels (COMPLIANCE_ALERT_*), the notice outbox (COMPLIANCE_NOTICE_*).
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        key = env.get("COMPLIANCE_HASH_KEY", "")
        if not key:
            if env.get("COMPLIANCE_REQUIRE_SECRETS") == "1":
                raise RuntimeError("COMPLIANCE_HASH_KEY is not set (required in production)")
            key = DEV_HASH_KEY
        config = REPO_ROOT / "config"
        return cls(
            datamap_path=Path(env.get("COMPLIANCE_DATAMAP", config / "datamap.yaml")),
            retention_path=Path(env.get("COMPLIANCE_RETENTION", config / "retention.yaml")),
            workspace_bucket=env.get("COMPLIANCE_WORKSPACE_BUCKET", "cj-compliance"),
            workspace_connection=env.get("COMPLIANCE_WORKSPACE_CONN", "aws_default"),
            hash_key=key.encode(),
            statistics_path=Path(env.get("COMPLIANCE_STATISTICS", config / "statistics.yaml")),
            kms_key_id=env.get("COMPLIANCE_KMS_KEY_ID") or None,
            access_include_audio=_flag(env.get("COMPLIANCE_ACCESS_INCLUDE_AUDIO", "1")),
            access_audio_link_bytes=int(env.get("COMPLIANCE_ACCESS_AUDIO_LINK_BYTES") or 25 << 20),
            deadline_thresholds=env.get("COMPLIANCE_DEADLINE_THRESHOLDS") or None,
            subprocessor_smtp_conn=env.get("COMPLIANCE_SUBPROCESSOR_SMTP_CONN") or None,
            offboarding_grace_days=int(env.get("COMPLIANCE_OFFBOARDING_GRACE_DAYS") or 30),
            approval_batch_size=int(env.get("COMPLIANCE_APPROVAL_BATCH_SIZE") or 100),
            approval_manual_runs=_flag(env.get("COMPLIANCE_APPROVAL_MANUAL_RUNS", "1")),
            approval_retention_rules=_flag(env.get("COMPLIANCE_APPROVAL_RETENTION_RULES", "1")),
            approval_timeout_hours=float(env.get("COMPLIANCE_APPROVAL_TIMEOUT_HOURS") or 72),
            env=MappingProxyType(
                {k: v for k, v in env.items() if k.startswith("COMPLIANCE_") or k in _FOREIGN}
            ),
        )
