"""What every section shares: result rows, the world's services, stage processes, requests.

Stages run in worker processes forked from a forkserver (so a stage's memory is its own
processes', not the harness's), a pool per stage: workers are started and initialised (S3
client, data map) before the clock starts, then the stage's calls are submitted and timed from
the harness, from the first submission to the last result. A stage's `peak_mb` is the memory
of every process involved (issue 19): its workers, every PostgreSQL server process and the S3
server, sampled while it runs, each worker's peak resident set (VmHWM) taken as its part when
that is larger (`run_stage`, `MemorySampler`). Nothing here prints or stores personal data:
rows hold counts and timings.
"""

from __future__ import annotations

import contextlib
import cProfile
import dataclasses
import functools
import importlib
import io
import json
import multiprocessing
import os
import pstats
import resource
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get(
    "COMPLIANCE_BENCH_PG",
    os.environ.get("COMPLIANCE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
)
HASH_KEY = b"benchmark-hash-key"
PRISTINE = "cjb-pristine"  # a copy of every log object as seeded (server-side copies)
MB = 1e6

# -- rows -----------------------------------------------------------------------------------------


@dataclass
class Row:
    """One figure. `ratio` is defined by the row's `target` text (e.g. "ours/baseline >= 1.0")."""

    section: str
    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    peak_mb: float | None = None
    note: str = ""
    # peak_mb's parts, MB ({"workers", "postgres", "s3"}: Stage.memory_parts); in the JSON only
    # when set (the memory summary row sets it)
    peak_parts: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("value", "baseline", "ratio", "peak_mb"):
            if isinstance(d[key], float):
                d[key] = round(d[key], 4 if abs(d[key]) < 10 else 2)
        if d["peak_parts"] is None:
            del d["peak_parts"]
        else:
            d["peak_parts"] = {k: round(v, 2) for k, v in d["peak_parts"].items()}
        return d


def info(section: str, name: str, value: float | None, unit: str, **kw: Any) -> Row:
    """A measured figure without a target of its own (stage times, set-up costs)."""
    return Row(section, name, value, unit, **kw)


def at_least(
    section: str,
    name: str,
    value: float,
    baseline: float,
    unit: str,
    minimum: float,
    **kw: Any,
) -> Row:
    """Higher is better (throughput): ratio = value / baseline >= minimum."""
    ratio = value / baseline if baseline else None
    return Row(
        section,
        name,
        value,
        unit,
        baseline,
        ratio,
        f"ours/baseline >= {minimum:g}",
        None if ratio is None else ratio >= minimum,
        **kw,
    )


def speedup(
    section: str, name: str, seconds: float, baseline_s: float, minimum: float, **kw: Any
) -> Row:
    """Lower is better (time): ratio = baseline / value >= minimum."""
    ratio = baseline_s / seconds if seconds else None
    return Row(
        section,
        name,
        seconds,
        "s",
        baseline_s,
        ratio,
        f"baseline/ours >= {minimum:g}",
        None if ratio is None else ratio >= minimum,
        **kw,
    )


def ratio_at_most(
    section: str, name: str, value: float, baseline: float, unit: str, maximum: float, **kw: Any
) -> Row:
    """Scaling: ratio = value / baseline <= maximum (e.g. t(1000)/t(1) <= 3)."""
    ratio = value / baseline if baseline else None
    return Row(
        section,
        name,
        value,
        unit,
        baseline,
        ratio,
        f"value/baseline <= {maximum:g}",
        None if ratio is None else ratio <= maximum,
        **kw,
    )


def at_most(section: str, name: str, value: float, unit: str, limit: float, **kw: Any) -> Row:
    return Row(section, name, value, unit, target=f"<= {limit:g} {unit}", met=value <= limit, **kw)


def unavailable(section: str, name: str, why: str) -> Row:
    """A figure that cannot be measured in this checkout: no number, said plainly."""
    return Row(section, name, None, "", met=None, note=f"not available: {why}")


def failed(section: str, name: str, error: BaseException) -> Row:
    return Row(section, name, None, "", met=False, note=f"failed: {type(error).__name__}: {error}")


# -- the environment every process shares ----------------------------------------------------------


@dataclass(frozen=True)
class Env:
    """Plain values (picklable): how a stage process reaches the world's services."""

    run_id: str
    workdir: str
    s3_url: str
    pg_base: str  # postgresql+psycopg2://user@host:port (no database)
    world_db: str
    datamap_path: str
    retention_path: str
    as_of: str  # the world's as-of date (ISO)
    now: str  # the jobs' clock for this run (ISO, aware UTC)
    contacts: int
    profile_dir: str = ""

    def url(self, db: str) -> str:
        return f"{self.pg_base}/{db}"


_ENV: Env | None = None
_ENGINES: dict[str, Engine] = {}


def init_worker(env: Env) -> None:
    """Pool initializer: remember the environment, build the S3 client and load the map."""
    global _ENV
    _ENV = env
    s3()
    datamap()


def env() -> Env:
    if _ENV is None:
        raise RuntimeError("not inside a benchmark process (init_worker was not called)")
    return _ENV


@functools.cache
def s3() -> Any:
    from compliance.core.stores.s3 import s3_client

    return s3_client(endpoint_url=env().s3_url, access_key="testing", secret_key="testing")


@functools.cache
def sns() -> Any:
    import boto3

    return boto3.client(
        "sns",
        endpoint_url=env().s3_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@functools.cache
def datamap() -> Any:
    from compliance.core.datamap.validate import load_datamap

    return load_datamap(env().datamap_path)


def engine(db: str) -> Engine:
    """One engine per database and process (stage processes end with their stage)."""
    if db not in _ENGINES:
        from compliance.core.stores.sql import engine_from_url

        _ENGINES[db] = engine_from_url(env().url(db))
    return _ENGINES[db]


def now() -> datetime:
    return datetime.fromisoformat(env().now)


def hwm_mb() -> float:
    """This process's peak resident set so far, MB (Linux VmHWM; ru_maxrss elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


# -- memory of every process a stage involves (issue 19) -------------------------------------------

PROC = Path("/proc")
_SHARED_SEGMENT_PATHS = ("/dev/zero (deleted)", "/anon_hugepage (deleted)", "/SYSV")


def _rollup(pid: int) -> tuple[int, int] | None:
    """(Pss, Pss_Shmem) of one process in bytes, from /proc/<pid>/smaps_rollup; None if the
    process is gone or not readable. Pss_Shmem is 0 on kernels that do not report it."""
    pss = shmem = -1
    try:
        with open(PROC / str(pid) / "smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Pss_Shmem:"):
                    shmem = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        return None
    return None if pss < 0 else (pss, max(shmem, 0))


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's children file; needs no full /proc scan)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in (PROC / str(pid) / "task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                out += [int(x) for x in (task / "children").read_text().split()]
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that exist now."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in seen or not (PROC / str(p)).exists():
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def _comm(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def _title(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def postmasters() -> list[int]:
    """Every local PostgreSQL postmaster: a `postgres` process whose parent is not one.

    A server in a container or on another host is not visible here: its part is then 0 and
    the figure says so (MemorySample.postgres_procs == 0)."""
    out = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or _comm(int(entry.name)) != "postgres":
            continue
        try:
            ppid = next(
                int(line.split()[1])
                for line in (entry / "status").read_text().splitlines()
                if line.startswith("PPid:")
            )
        except (OSError, StopIteration, ValueError):
            continue
        if _comm(ppid) != "postgres":
            out.append(int(entry.name))
    return sorted(out)


def pg_shared_segment(postmaster: int) -> int:
    """Bytes of the server's main shared memory (shared buffers, locks, WAL buffers...): the
    size of its shared anonymous (or huge page, or SysV) mappings in the postmaster.

    Counted once at its full size: every page of it is resident once touched and stays so
    until the server stops, but a page counts in a process's PSS only while a live process has
    it mapped in (a sequential scan uses a ring of 256 kB, so the backends of a stage may map
    little of it while the rest stays resident)."""
    total = 0
    size_next = False
    try:
        with open(PROC / str(postmaster) / "smaps") as f:
            for line in f:
                head = line.split(maxsplit=5)
                if len(head) >= 5 and "-" in head[0] and len(head[1]) == 4:
                    path = head[5].strip() if len(head) == 6 else ""
                    size_next = head[1][3] == "s" and path.startswith(_SHARED_SEGMENT_PATHS)
                elif size_next and line.startswith("Size:"):
                    total += int(line.split()[1]) * 1024
                    size_next = False
    except (OSError, ValueError):
        return 0
    return total


def pg_dynamic_shared() -> int:
    """Bytes of PostgreSQL's dynamic shared memory now (parallel query, /dev/shm segments;
    tmpfs, so allocated blocks are memory)."""
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir("/dev/shm"):
            if entry.name.startswith("PostgreSQL."):
                with contextlib.suppress(OSError):
                    total += entry.stat().st_blocks * 512
    return total


def vm_hwm(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process, MB; 0.0 if it is gone."""
    with contextlib.suppress(OSError, ValueError), open(PROC / str(pid) / "status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    return 0.0


@dataclass
class MemorySample:
    """Memory of the processes a stage involves at one moment, MB.

    `workers` and `s3`: the sum of each process's PSS (its private pages plus its share of the
    pages it shares, so a page shared by N processes counts once overall). `postgres`: every
    server process's PSS without its shared-memory part, plus the main shared segment at its
    full size and the dynamic shared segments in /dev/shm (see `pg_shared_segment`).
    `postgres_other`: the part of `postgres` that is client backends of databases outside this
    run (other sessions on a shared server; included in `postgres`, shown for context)."""

    workers: float = 0.0
    postgres: float = 0.0
    s3: float = 0.0
    postgres_procs: int = 0
    postgres_other: float = 0.0

    @property
    def total(self) -> float:
        return self.workers + self.postgres + self.s3


class MemorySampler:
    """Samples, in a harness thread, the memory of a stage's worker processes, of every local
    PostgreSQL server process and of the S3 server's process tree, every `interval` seconds
    while running, and once more at `stop()`.

    `peak` is the sample with the largest total; `peak_servers` the one with the largest
    PostgreSQL + S3 part. Sampling reads /proc (root sees every process). It is not free: the
    kernel walks each process's page tables for smaps_rollup, about 0.6 ms of CPU per
    PostgreSQL process here (12 ms a sample with 17 server processes), on the same cores as
    the stage: at one sample per 0.2 s that is 3-6% of one core, which is why the interval is
    not shorter."""

    def __init__(
        self,
        workers: Sequence[int],
        s3_pid: int | None = None,
        run_prefix: str = "",
        interval: float = 0.2,
    ) -> None:
        import threading

        self.workers = list(workers)
        self.s3_pid = s3_pid
        self.run_prefix = run_prefix
        self.interval = interval
        self.postmasters = postmasters()
        self.shared = sum(pg_shared_segment(p) for p in self.postmasters)
        self.samples = 0
        self.peak = MemorySample()
        self.peak_servers = MemorySample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)

    def sample(self) -> MemorySample:
        """One sample now (also records it in `peak`, `peak_servers`)."""
        s = MemorySample()
        s.workers = sum(self._pss(self.workers)) / MB
        if self.s3_pid is not None:
            s.s3 = sum(self._pss(process_tree(self.s3_pid))) / MB
        if self.postmasters:
            private = other = 0
            for pm in self.postmasters:
                for pid in process_tree(pm):
                    got = _rollup(pid)
                    if got is None:
                        continue
                    s.postgres_procs += 1
                    private += got[0] - got[1]
                    if self._foreign(pid):
                        other += got[0] - got[1]
            s.postgres = (private + self.shared + pg_dynamic_shared()) / MB
            s.postgres_other = other / MB
        self.samples += 1
        if s.total > self.peak.total:
            self.peak = s
        if s.postgres + s.s3 > self.peak_servers.postgres + self.peak_servers.s3:
            self.peak_servers = s
        return s

    def _pss(self, roots: Sequence[int]) -> list[int]:
        pids = {p for r in roots for p in process_tree(r)}
        return [got[0] for p in pids if (got := _rollup(p)) is not None]

    def _foreign(self, pid: int) -> bool:
        """A client backend of a database outside this run? Its title is `postgres: [cluster:]
        user database host(port) state`; background processes and parallel workers are not."""
        if not self.run_prefix:
            return False
        title = _title(pid)
        return ("(" in title or "[local]" in title) and self.run_prefix not in title

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a figure, never a reason to fail a stage
                self.sample()

    def start(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# -- stage processes ----------------------------------------------------------------------------

PRELOAD = [
    "benchmarks.sections._common",
    "sqlalchemy.dialects.postgresql.psycopg2",
    "boto3",
    "compliance.deletion.erasure",
    "compliance.requests.inbox",
    "compliance.deletion.subprocessors",
]


@functools.cache
def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _ready(delay: float, imports: Sequence[str]) -> int:
    """Warm-up: import what the stage uses (imports are not the stage's work: the stage's
    module and the modules its `IMPORTS` lists), then wait a moment so that every worker of the
    pool takes one warm-up call."""
    for name in imports:
        module = importlib.import_module(name)
        for dependency in getattr(module, "IMPORTS", ()):
            with contextlib.suppress(ImportError):  # a missing module shows in the stage
                importlib.import_module(dependency)
    time.sleep(delay)
    return os.getpid()


def _call(fn: Callable[..., Any], args: tuple, profile_to: str) -> tuple[Any, float, float, int]:
    prof = cProfile.Profile() if profile_to else None
    started = time.perf_counter()
    if prof is not None:
        prof.enable()
    try:
        result = fn(*args)
    finally:
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile_to)
    return result, time.perf_counter() - started, hwm_mb(), os.getpid()


@dataclass
class Stage:
    """One timed stage. `peak_mb` is the memory of every process the stage involves (workers +
    PostgreSQL + S3 server, see `run_stage`); `workers_mb`, `postgres_mb` and `s3_mb` are its
    parts, so that `peak_mb == workers_mb + postgres_mb + s3_mb`."""

    name: str
    seconds: float  # wall time, first submission to last result (workers already started)
    peak_mb: float  # all processes of the stage at their peak (see run_stage)
    results: list[Any]
    workers: int
    call_seconds: list[float] = field(default_factory=list)
    s3_cpu: float = 0.0  # CPU seconds the S3 server process used meanwhile (same 2 cores)
    workers_mb: float = 0.0  # the worker processes' part of peak_mb
    postgres_mb: float = 0.0  # every PostgreSQL server process (shared memory counted once)
    s3_mb: float = 0.0  # the S3 server's process tree
    worker_hwm_mb: float = 0.0  # the largest worker's VmHWM (the figure before issue 19)
    sampled_mb: float = 0.0  # the largest sampled sum (PSS), for comparison with peak_mb
    memory_samples: int = 0
    postgres_other_mb: float = 0.0  # of postgres_mb: other databases' sessions (shared server)
    baseline: bool = False  # a yardstick (naive loop, bulk DELETE, GROUP BY), not a job stage

    @property
    def memory_parts(self) -> dict[str, float]:
        """The breakdown of `peak_mb`, MB, for a row's `peak_parts`."""
        return {"workers": self.workers_mb, "postgres": self.postgres_mb, "s3": self.s3_mb}


# Every stage's memory, in the order run (world stages included): what the memory summary row
# picks its largest stage from (`benchmarks.run._summary`). Copies without `results`, so that
# the harness does not keep every stage's results alive for the whole run.
STAGE_MEMORY: list[Stage] = []


def stage_memory() -> list[dict[str, Any]]:
    """Every stage's memory so far, MB, rounded (for `latest.json`): name, peak and parts."""
    return [
        {
            "stage": st.name,
            "peak_mb": round(st.peak_mb, 1),
            **{f"{k}_mb": round(v, 1) for k, v in st.memory_parts.items()},
            "worker_hwm_mb": round(st.worker_hwm_mb, 1),
            "sampled_mb": round(st.sampled_mb, 1),
            "samples": st.memory_samples,
            "postgres_other_mb": round(st.postgres_other_mb, 1),
        }
        for st in STAGE_MEMORY
    ]


def run_stage(
    env_: Env,
    name: str,
    fn: Callable[..., Any],
    calls: Sequence[tuple],
    workers: int = 1,
    imports: Sequence[str] = (),
    s3_pid: int | None = None,
    baseline: bool = False,
) -> Stage:
    """Run `fn(*args)` for each of `calls` in `workers` fresh processes; time the calls only.

    `imports`: modules the stage's code imports, loaded during the warm-up (before the clock).

    Memory (issue 19: the sum over every process involved). From the first submission to the
    last result a harness thread samples, every 0.2 s and once more at the end, the stage's
    worker processes (PSS), every local PostgreSQL server process (PSS without shared memory,
    plus the server's shared memory once at its full size: `MemorySample`) and the S3 server
    `s3_pid` with its children (PSS). A worker can peak between two samples, so its peak
    resident set (VmHWM, read before the pool ends: the whole life of the process, warm-up
    included, shared library pages counted in full) replaces its sampled part. `peak_mb` is
    the larger of two figures, which is conservative:
      - the largest sampled sum;
      - the largest sampled PostgreSQL + S3 part plus every worker's VmHWM (each part at its
        own worst moment, even if they were not at the same time).
    So the workers' part can only overstate; a PostgreSQL or S3 spike shorter than the
    interval can still fall between two samples (their PSS has no high-water mark).
    The parts of whichever figure is larger are `workers_mb`, `postgres_mb`, `s3_mb`. The
    harness process and the idle forkserver are not counted: they stand for the scheduler.
    """
    calls = list(calls)
    if not calls:
        return Stage(name, 0.0, 0.0, [], 0)
    workers = max(1, min(workers, len(calls)))
    profile_paths = [
        str(Path(env_.profile_dir) / f"{_slug(name)}-{i}.prof") if env_.profile_dir else ""
        for i in range(len(calls))
    ]
    with ProcessPoolExecutor(
        workers, mp_context=_context(), initializer=init_worker, initargs=(env_,)
    ) as pool:
        delay = 0.1 if workers > 1 else 0.0
        warm = [fn.__module__, *imports]
        pids = set(pool.map(_ready, [delay] * workers, [warm] * workers))  # started, warm
        pids |= set(getattr(pool, "_processes", None) or {})  # every worker, warm-up or not
        sampler = MemorySampler(sorted(pids), s3_pid, f"cjb_{env_.run_id}_").start()
        started = time.perf_counter()
        try:
            futures = [
                pool.submit(_call, fn, args, path)
                for args, path in zip(calls, profile_paths, strict=True)
            ]
            outs = [f.result() for f in futures]
            seconds = time.perf_counter() - started
        finally:
            sampler.stop()
        hwm = {pid: vm_hwm(pid) for pid in pids}  # before the pool ends its workers
    for o in outs:  # a worker already gone: the peak its calls reported
        hwm[o[3]] = max(hwm.get(o[3], 0.0), o[2])
    if env_.profile_dir:
        _profile_summary(env_, name, [p for p in profile_paths if Path(p).exists()])
    sampled, servers = sampler.peak, sampler.peak_servers
    bound = MemorySample(sum(hwm.values()), servers.postgres, servers.s3)
    bound.postgres_other = servers.postgres_other
    top = bound if bound.total >= sampled.total else sampled
    st = Stage(
        name,
        seconds,
        top.total,
        [o[0] for o in outs],
        workers,
        [o[1] for o in outs],
        workers_mb=top.workers,
        postgres_mb=top.postgres,
        s3_mb=top.s3,
        worker_hwm_mb=max(hwm.values()),
        sampled_mb=sampled.total,
        memory_samples=sampler.samples,
        postgres_other_mb=top.postgres_other,
        baseline=baseline,
    )
    STAGE_MEMORY.append(dataclasses.replace(st, results=[]))
    return st


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def _profile_summary(env_: Env, name: str, paths: list[str]) -> None:
    """The stage's calls merged, top functions by cumulative and own time, as text."""
    if not paths:
        return
    out = io.StringIO()
    stats = pstats.Stats(*paths, stream=out)
    stats.strip_dirs().sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(20)
    target = Path(env_.profile_dir) / f"{_slug(name)}.txt"
    target.write_text(out.getvalue())
    for p in paths:
        Path(p).unlink(missing_ok=True)


# -- databases, buckets, log objects, requests (harness side) --------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (this run's webhook acknowledger)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_base(admin_url: str) -> str:
    return admin_url.rsplit("/", 1)[0]


@dataclass(frozen=True)
class Consumer:
    """A real consumer of the world: what a request names (never printed)."""

    contact_id: int
    client_id: int
    email: str | None
    phone: str | None
    external_id: str | None


class Bench:
    """The harness's handle on the world: databases, buckets and stage processes."""

    def __init__(self, env_: Env, keep: bool = False, s3_pid: int | None = None) -> None:
        self.env = env_
        self.keep = keep
        self.s3_pid = s3_pid
        self.admin = sa.create_engine(
            PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        self.databases: list[str] = []
        self.results: dict[str, Any] = {}  # what one section leaves for another
        self._consumers: list[Consumer] | None = None
        self._taken = 0
        from compliance.core.stores.s3 import s3_client

        self.s3 = s3_client(endpoint_url=env_.s3_url, access_key="testing", secret_key="testing")

    # stages
    def stage(
        self,
        name: str,
        fn: Callable[..., Any],
        calls: Sequence[tuple],
        workers: int = 1,
        imports: Sequence[str] = (),
        *,
        baseline: bool = False,
    ) -> Stage:
        """`baseline`: a yardstick a job is compared with; its memory is not a job's."""
        before = self.s3_cpu()
        st = run_stage(self.env, name, fn, calls, workers, imports, self.s3_pid, baseline)
        st.s3_cpu = self.s3_cpu() - before
        return st

    def s3_cpu(self) -> float:
        """CPU seconds used so far by the S3 (moto) server: it shares the machine's cores."""
        if self.s3_pid is None:
            return 0.0
        try:
            import psutil

            times = psutil.Process(self.s3_pid).cpu_times()
            return float(times.user + times.system)
        except Exception:  # the figure is context only
            return 0.0

    # databases
    def db_name(self, tag: str) -> str:
        return f"cjb_{self.env.run_id}_{tag}"[:63]

    def create_db(self, tag: str) -> str:
        name = self.db_name(tag)
        self.drop_db(name)
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return name

    def clone_world(self, tag: str) -> tuple[str, float]:
        """A copy of the seeded CRM (`CREATE DATABASE ... TEMPLATE`); (name, seconds)."""
        name = self.db_name(tag)
        self.drop_db(name)
        self.disconnect(self.env.world_db)
        strategy = " STRATEGY FILE_COPY" if self._pg_version() >= 15 else ""
        started = time.perf_counter()
        with self.admin.connect() as conn:
            conn.exec_driver_sql(
                f'CREATE DATABASE "{name}" TEMPLATE "{self.env.world_db}"{strategy}'
            )
        self.databases.append(name)
        return name, time.perf_counter() - started

    def disconnect(self, db: str) -> None:
        """End every session on one of this run's databases (ours only: the names are unique)."""
        with self.admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :d AND pid <> pg_backend_pid()"
                ),
                {"d": db},
            )

    def drop_db(self, name: str) -> None:
        self.disconnect(name)
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        if name in self.databases:
            self.databases.remove(name)

    def _pg_version(self) -> int:
        with self.admin.connect() as conn:
            return int(conn.exec_driver_sql("SHOW server_version_num").scalar_one()) // 10000

    def state_db(self, tag: str) -> str:
        """A fresh compliance state database (requests, batches, tombstones, ledger)."""
        from compliance.requests.state import create_state_schema

        name = self.create_db(tag)
        eng = sa.create_engine(self.env.url(name), poolclass=NullPool)
        try:
            create_state_schema(eng)
        finally:
            eng.dispose()
        return name

    @contextlib.contextmanager
    def connect(self, db: str) -> Iterator[sa.Connection]:
        eng = sa.create_engine(self.env.url(db), poolclass=NullPool)
        try:
            with eng.connect() as conn:
                yield conn
        finally:
            eng.dispose()

    # buckets
    def workspace(self, tag: str) -> str:
        """A fresh workspace bucket (inbox, batches, receipts) and the sub-processors' topics."""
        from compliance_dev.localenv import prepare_workspace

        bucket = f"cjb-ws-{tag}".lower().replace("_", "-")[:63]
        prepare_workspace(self.env.s3_url, bucket, Path(self.env.datamap_path))
        return bucket

    def log_stores(self) -> dict[str, Any]:
        from compliance.core.datamap.model import LogStore
        from compliance.core.datamap.validate import load_datamap

        dm = load_datamap(self.env.datamap_path)
        return {n: s for n, s in dm.stores.items() if isinstance(s, LogStore)}

    def log_objects(self, bucket: str | None = None) -> list[tuple[str, str, int]]:
        """(bucket, key, size) of every log object (as seeded: from the pristine copy)."""
        from compliance.core.stores.s3 import list_keys

        out = []
        for store in self.log_stores().values():
            if bucket is None:
                out += [
                    (store.bucket, o["Key"], int(o["Size"]))
                    for o in list_keys(self.s3, store.bucket, store.prefix)
                ]
            else:
                prefix = f"{store.bucket}/{store.prefix}"
                out += [
                    (store.bucket, o["Key"][len(store.bucket) + 1 :], int(o["Size"]))
                    for o in list_keys(self.s3, bucket, prefix)
                ]
        return sorted(out)

    def snapshot_logs(self) -> tuple[int, int]:
        """Copy every log object to the pristine bucket (server-side); (objects, bytes)."""
        from compliance.core.stores.s3 import ensure_bucket

        ensure_bucket(self.s3, PRISTINE)
        objs = self.log_objects()

        def copy(item: tuple[str, str, int]) -> None:
            bucket, key, _ = item
            self.s3.copy_object(
                Bucket=PRISTINE, Key=f"{bucket}/{key}", CopySource={"Bucket": bucket, "Key": key}
            )

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(copy, objs))
        return len(objs), sum(o[2] for o in objs)

    def restore_logs(self) -> float:
        """Every log store back to its seeded objects: all versions deleted, pristine copied
        back (server-side). Returns seconds."""
        started = time.perf_counter()
        for store in self.log_stores().values():
            doomed: list[dict[str, str]] = []
            pages = self.s3.get_paginator("list_object_versions").paginate(
                Bucket=store.bucket, Prefix=store.prefix
            )
            for page in pages:
                for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    doomed.append({"Key": v["Key"], "VersionId": v["VersionId"]})
            for i in range(0, len(doomed), 1000):
                self.s3.delete_objects(
                    Bucket=store.bucket, Delete={"Objects": doomed[i : i + 1000], "Quiet": True}
                )

        def copy(item: tuple[str, str, int]) -> None:
            bucket, key, _ = item
            self.s3.copy_object(
                Bucket=bucket, Key=key, CopySource={"Bucket": PRISTINE, "Key": f"{bucket}/{key}"}
            )

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(copy, self.log_objects(PRISTINE)))
        return time.perf_counter() - started

    # requests
    def consumers(self, count: int, fresh: bool = True) -> list[Consumer]:
        """`count` consumers not handed out before in this run (disjoint sets: a deletion run
        deletes their recordings, which are not restored), spread over the id range and clients;
        `fresh=False` (read-only jobs): the first `count`, whoever had them before.

        Active clients only, adults with an e-mail, no legal hold on their client (every request
        then runs, none is deferred), and no two sharing an e-mail or phone within a client (the
        inbox would refuse the second as a duplicate).
        """
        if self._consumers is None:
            self._consumers = self._pick(self.env.contacts)
        if not fresh:
            if count > len(self._consumers):
                raise RuntimeError(f"the world has {len(self._consumers)} eligible consumers")
            return self._consumers[:count]
        if self._taken + count > len(self._consumers):
            raise RuntimeError(
                f"the world has {len(self._consumers)} eligible consumers; "
                f"{self._taken + count} requested (use fewer requests or a larger scale)"
            )
        chosen = self._consumers[self._taken : self._taken + count]
        self._taken += count
        return chosen

    def _pick(self, limit: int) -> list[Consumer]:
        sql = sa.text(
            "SELECT c.contact_id, c.client_id, c.email, c.phone, c.external_id "
            "FROM contacts c JOIN clients k ON k.client_id = c.client_id "
            "WHERE k.active AND c.email IS NOT NULL AND NOT c.is_child "
            "AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.client_id = c.client_id) "
            "ORDER BY (c.contact_id * 2654435761) % 4294967296 LIMIT :n"
        )
        with self.connect(self.env.world_db) as conn:
            rows = conn.execute(sql, {"n": min(limit, 20_000)}).all()
        seen: set[tuple[int, str]] = set()
        out = []
        for cid, client, email, phone, ext in rows:
            keys = {(client, f"e:{str(email).lower()}")}
            if phone:
                keys.add((client, f"p:{phone}"))
            if ext:
                keys.add((client, f"x:{ext}"))
            if keys & seen:
                continue
            seen |= keys
            out.append(Consumer(int(cid), int(client), email, phone, ext))
        return out

    def put_requests(
        self, bucket: str, consumers: Sequence[Consumer], type_: str, tag: str
    ) -> dict[str, Any]:
        """Request documents (NDJSON per client) in the workspace inbox, as clients send them.

        Identities alternate e-mail (every fourth in upper case: matching is case-insensitive),
        phone and the client's own contact id, as `compliance_dev.world.requests` does.
        """
        received = datetime.fromisoformat(self.env.now) - timedelta(days=2)
        by_client: dict[int, list[str]] = {}
        kinds = {"email": 0, "phone": 0, "contact_id": 0}
        for i, c in enumerate(consumers):
            kind, value = identity(i, c)
            kinds[kind] += 1
            doc = request_doc(f"{tag.upper()}-{i:05d}", c.client_id, type_, received, kind, value)
            by_client.setdefault(c.client_id, []).append(json.dumps(doc))
        for client, docs in by_client.items():
            self.s3.put_object(
                Bucket=bucket,
                Key=f"inbox/{client}/{type_}-{tag}.ndjson",
                Body="\n".join(docs).encode(),
            )
        return {"requests": len(consumers), "clients": len(by_client), "identities": kinds}

    def cleanup(self) -> None:
        if self.keep:
            return
        for name in list(self.databases):
            with contextlib.suppress(Exception):
                self.drop_db(name)
        self.admin.dispose()


def identity(i: int, c: Consumer) -> tuple[str, str]:
    """The identity request number `i` of a batch gives for consumer `c`: e-mail (every fourth
    of them in upper case), phone, or the client's contact id, in turn."""
    kind = ["email", "phone", "contact_id"][i % 3]
    value = {"email": c.email, "phone": c.phone, "contact_id": c.external_id}[kind]
    if not value:
        kind, value = "email", c.email
    if kind == "email" and i % 4 == 0:
        value = str(value).upper()
    return kind, str(value)


def request_doc(
    request_id: str, client_id: int, type_: str, received: datetime, kind: str, value: str
) -> dict[str, Any]:
    at = received.isoformat()
    return {
        "request_id": request_id,
        "client_id": client_id,
        "type": type_,
        "identities": {kind: value},
        "received_at": at,
        "verification": {"method": "email_link", "verified_at": at, "verified_by": "bench"},
    }


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]
