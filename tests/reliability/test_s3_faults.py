"""S3 throttling, 5xx and timeouts on a seeded ~15% of calls: jobs still complete through
retries, and nothing is lost or duplicated (issue 8).

The faults come from a botocore `before-send` hook on the jobs' client (the same client every
deletion task gets in the harness), so they hit every operation the jobs make: listing,
conditional PUTs, version deletion, receipts. What absorbs them is the project's client
configuration, `compliance.core.stores.s3.RETRIES` (adaptive mode, 8 attempts), and for the one
fault a client cannot retry blindly (a response lost after S3 acted: a conditional PUT retried
after it succeeded meets its own new ETag) the task retries of the DAGs' default_args (2).
Back-off sleeps are recorded instead of slept, to keep the suite fast; their sum is asserted.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError
from botocore.httpsession import URLLib3Session

from compliance.core.stores.s3 import RETRIES

from . import harness as h

pytestmark = pytest.mark.slow

RATE = 0.15  # of HTTP attempts: throttled, 5xx or timed out before reaching S3
LOST = 0.03  # of HTTP attempts: S3 acted, the response never arrived (read timeout)


class _Raw:
    """The bit of a urllib3 response AWSResponse reads."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, *_: Any, **__: Any):
        yield self.body


def _error(url: str, status: int, code: str) -> AWSResponse:
    body = (
        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
        f"<Message>injected {code}</Message><RequestId>cj-fault</RequestId></Error>"
    ).encode()
    return AWSResponse(url, status, {"Content-Type": "application/xml"}, _Raw(body))


class FaultyS3:
    """A `before-send` handler: for a seeded share of attempts, answer instead of S3."""

    def __init__(self, seed: int, rate: float = RATE, lost: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.rate, self.lost = rate, lost
        self.attempts = 0
        self.injected: Counter[str] = Counter()
        self.session = URLLib3Session()

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        self.attempts += 1
        roll = self.rng.random()
        if roll < self.rate * 0.4:
            self.injected["503 SlowDown"] += 1
            return _error(request.url, 503, "SlowDown")
        if roll < self.rate * 0.7:
            self.injected["500 InternalError"] += 1
            return _error(request.url, 500, "InternalError")
        if roll < self.rate:
            self.injected["read timeout"] += 1
            raise ReadTimeoutError(endpoint_url=request.url)
        if roll < self.rate + self.lost:
            self.injected["response lost"] += 1
            self.session.send(request)  # S3 acts on it...
            raise ReadTimeoutError(endpoint_url=request.url)  # ...the client never hears
        return None

    def install(self, world: h.World) -> None:
        world.s3.meta.events.register("before-send.s3", self)


@pytest.fixture
def deletion(world, monkeypatch):
    import botocore.endpoint

    slept: list[float] = []

    class _Time:
        @staticmethod
        def sleep(seconds: float) -> None:
            slept.append(seconds)

    monkeypatch.setattr(botocore.endpoint, "time", _Time)  # back-off recorded, not slept
    job = h.DeletionJob(world)
    clean = h.scenario(job, None)
    assert not clean.errors
    return job, clean, slept


def test_the_client_config_is_what_absorbs_the_faults():
    """8 retries, adaptive (botocore rewrites max_attempts=8 as total_max_attempts=9 once a
    client has been built from the config)."""
    retries = RETRIES.retries
    assert retries["mode"] == "adaptive"
    assert retries.get("total_max_attempts", retries.get("max_attempts", 0) + 1) == 9


def test_throttling_5xx_and_timeouts_are_absorbed_by_client_retries(deletion):
    job, clean, slept = deletion
    faulty = FaultyS3(seed=8)
    outcome = h.scenario(job, None, arm=faulty.install)
    share = sum(faulty.injected.values()) / faulty.attempts
    h.FIGURES["s3_faults"] = {
        "attempts": faulty.attempts,
        "injected": dict(faulty.injected),
        "share": round(share, 3),
        "task_retries": len(outcome.task_retries),
    }
    assert share >= 0.10 and len(faulty.injected) == 3, faulty.injected
    assert sum(slept) > 0  # botocore backed off
    assert outcome.errors == [] and outcome.task_retries == []  # no task even noticed
    assert outcome.snapshot == clean.snapshot  # nothing lost, nothing duplicated


def test_lost_responses_are_absorbed_by_task_retries(deletion):
    """A response lost after S3 acted: retried PUTs and deletes are harmless, but the log
    rewrite's conditional PUT then fails its own If-Match (ObjectChanged) and the task fails;
    its retry finds the object already clean. The world ends exactly as in the clean run; the
    receipts count the lines the first attempt erased (recorded before the PUT; D1 fixed)."""
    job, clean, _ = deletion
    faulty = FaultyS3(seed=80, lost=LOST)
    outcome = h.scenario(job, None, arm=faulty.install, retries=2)
    h.FIGURES["s3_faults_lost_responses"] = {
        "attempts": faulty.attempts,
        "injected": dict(faulty.injected),
        "task_retries": outcome.task_retries,
    }
    assert faulty.injected["response lost"] > 0
    assert outcome.errors == []
    assert all(r.startswith("scrub_logs[") for r in outcome.task_retries)  # only log rewrites
    for part in ("crm", "stores", "leftovers"):
        assert outcome.snapshot[part] == clean.snapshot[part], part
    assert h.diff(job.records(clean.snapshot), job.records(outcome.snapshot)) == []
