"""The benchmark's memory figure (issue 19): the sum over every process a stage involves.

`benchmarks.sections._common.MemorySampler` and `run_stage` must count the stage's workers,
the PostgreSQL server (its backends and its shared memory, once) and the S3 server's process
tree, and the memory summary row must name the largest job stage and its parts. These tests
use real processes (a live PostgreSQL session, child processes holding known amounts of
memory), never timings.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL, REPO, need_postgres

pytestmark = [pytest.mark.postgres]

MB = 1e6

# A stand-in for the S3 server: holds 60 MB itself and starts a child that holds 30 MB, so the
# sampler must follow the process tree to see all of it.
HOLDER = """
import subprocess, sys, time
held = b"s" * 60_000_000
child = subprocess.Popen([sys.executable, "-c",
    "import time; held = b'c' * 30_000_000; print('ready', flush=True); time.sleep(120)"],
    stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture()
def s3_standin() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc.pid
    finally:
        from benchmarks.sections._common import process_tree

        tree = process_tree(proc.pid)
        for pid in reversed(tree):  # only the processes this fixture started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        proc.wait(timeout=10)


def _pg_conn():  # type: ignore[no-untyped-def]
    import psycopg2

    dsn = PG_ADMIN_URL.replace("postgresql+psycopg2://", "postgresql://")
    return psycopg2.connect(dsn)


def test_sampler_counts_workers_postgres_and_s3(s3_standin: int) -> None:
    need_postgres()
    from benchmarks.sections import _common as C

    if not C.postmasters():
        pytest.skip("PostgreSQL is not a local process here (container or remote)")
    conn = _pg_conn()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = cur.fetchone()[0]
        # our session is one of the server processes the sampler walks
        assert any(backend in C.process_tree(pm) for pm in C.postmasters())
        sampler = C.MemorySampler([os.getpid()], s3_standin, run_prefix="cjb_test_")
        s = sampler.sample()
    finally:
        conn.close()
    assert sampler.shared > 10 * MB  # the server's shared memory, counted once at full size
    assert s.postgres >= sampler.shared / MB
    assert s.postgres_procs >= 2  # the postmaster and at least our backend
    assert s.s3 >= 90  # 60 MB in the process and 30 MB in its child: the whole tree
    assert s.workers > 0
    assert s.total == pytest.approx(s.workers + s.postgres + s.s3)
    assert sampler.peak is s and sampler.samples == 1


def hold_and_query(url: str, hold_mb: int) -> int:
    """A stage call: hold `hold_mb` MB and keep a PostgreSQL session busy for a moment."""
    import psycopg2

    held = b"w" * (hold_mb * 1_000_000)
    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.7)")
    finally:
        conn.close()
    return len(held)


def test_run_stage_peak_is_the_sum_of_all_processes(s3_standin: int) -> None:
    need_postgres()
    from benchmarks.sections import _common as C

    if not C.postmasters():
        pytest.skip("PostgreSQL is not a local process here (container or remote)")
    now = datetime.now(UTC).replace(microsecond=0)
    env = C.Env(
        run_id="memtest",
        workdir=str(REPO),
        s3_url="http://127.0.0.1:9",  # the client is built, never called
        pg_base=C.pg_base(PG_ADMIN_URL),
        world_db="postgres",
        datamap_path=str(REPO / "config" / "datamap.yaml"),
        retention_path=str(REPO / "config" / "retention.yaml"),
        as_of=now.date().isoformat(),
        now=now.isoformat(),
        contacts=0,
    )
    before = len(C.STAGE_MEMORY)
    started = time.monotonic()
    st = C.run_stage(env, "memtest.hold", hold_and_query, [(PG_ADMIN_URL, 120)], s3_pid=s3_standin)
    assert st.results == [120_000_000]
    assert time.monotonic() - started < 120
    assert st.workers_mb >= 120  # the worker's 120 MB, at its peak
    assert st.worker_hwm_mb >= 120
    assert st.postgres_mb > 10  # server processes and shared memory
    assert st.s3_mb >= 90  # the stand-in's tree
    assert st.peak_mb == pytest.approx(st.workers_mb + st.postgres_mb + st.s3_mb)
    assert st.peak_mb >= st.sampled_mb > st.postgres_mb
    assert st.memory_samples >= 3  # one at the start, some during 0.7 s, one at the end
    recorded = C.STAGE_MEMORY[before:]  # for the summary row, without the results
    assert [(r.name, r.peak_mb, r.results) for r in recorded] == [(st.name, st.peak_mb, [])]
    last = C.stage_memory()[-1]
    assert last["stage"] == "memtest.hold" and last["postgres_mb"] > 0 and last["s3_mb"] >= 90


def test_summary_names_the_largest_job_stage_and_its_parts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks import run
    from benchmarks.sections import _common as C

    def stage(name: str, workers: float, postgres: float, s3: float) -> C.Stage:
        return C.Stage(
            name,
            1.0,
            workers + postgres + s3,
            [],
            2,
            workers_mb=workers,
            postgres_mb=postgres,
            s3_mb=s3,
            worker_hwm_mb=workers / 2,
            sampled_mb=workers + postgres + s3 - 1,
            memory_samples=5,
        )

    stages = [
        stage("world.seed", 3000, 500, 900),  # set-up, not a job: excluded
        stage("deletion.b1.scrub_logs", 250, 300, 700),
        stage("stats.cold", 300, 400, 100),
    ]
    monkeypatch.setattr(C, "STAGE_MEMORY", stages)
    rows = run._summary([], 10.0, 100)
    memory = next(r for r in rows if r.section == "memory")
    assert memory.name == "peak memory, all processes"
    assert memory.value == pytest.approx(1250)
    assert memory.target == f"<= {run.MEMORY_LIMIT_MB:g} MB" and memory.met is True
    assert memory.peak_parts == {"workers": 250, "postgres": 300, "s3": 700}
    assert "deletion.b1.scrub_logs" in memory.note
    assert "PostgreSQL 300 MB" in memory.note and "S3 server 700 MB" in memory.note
    assert memory.to_dict()["peak_parts"] == {"workers": 250, "postgres": 300, "s3": 700}

    monkeypatch.setattr(C, "STAGE_MEMORY", [stage("stats.cold", 1500, 500, 300)])
    over = next(r for r in run._summary([], 10.0, 100) if r.section == "memory")
    assert over.value == pytest.approx(2300) and over.met is False


def test_dynamic_shared_memory_is_counted(tmp_path: Path) -> None:
    """PostgreSQL's parallel-query segments live in /dev/shm (tmpfs): their allocated blocks
    are memory and belong to the PostgreSQL part."""
    from benchmarks.sections import _common as C

    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    before = C.pg_dynamic_shared()
    path = Path("/dev/shm") / f"PostgreSQL.bench-test-{os.getpid()}"
    try:
        path.write_bytes(b"d" * 8_000_000)
        assert C.pg_dynamic_shared() - before >= 7_900_000
    finally:
        path.unlink(missing_ok=True)
