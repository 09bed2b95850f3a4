"""The benchmark harness: seed a world, measure every figure of issue 9 next to its baseline.

    python -m benchmarks.run [--scale small|medium|large|N] [--only NAME...] [--keep]

One run seeds one world (PostgreSQL CRM + a moto S3 server in its own process), measures the
sections in order (deletion, logs, retention, access, stats), each figure with its baseline in
the same run, then prints a table and writes `latest.json` and `latest.md` (to --out, default
benchmarks/results/); a full run to the default place also refreshes the table in
benchmarks/README.md. Timings are never asserted here; `met` says whether a target holds.
Method per figure: benchmarks/README.md and each section's docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.sections import SECTIONS
from benchmarks.sections import _common as C

RESULTS = C.ROOT / "benchmarks" / "results"
README = C.ROOT / "benchmarks" / "README.md"
BEGIN, END = "<!-- bench:table:begin -->", "<!-- bench:table:end -->"
MEMORY_LIMIT_MB = 2048.0
# Stages that run a baseline, not a job: the independent naive loop (each process holds whole
# objects), one bulk DELETE, one GROUP BY. Their memory is in `latest.json` ("memory"), not in
# the peak the 2 GB target is about.
HOUR = 3600.0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=(__doc__ or "").splitlines()[0]
    )
    p.add_argument(
        "--scale",
        default="large",
        help="tiny, small, medium, large (default: 1M contacts) or a contact count (20000, 50k)",
    )
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    p.add_argument("--keep", action="store_true", help="keep the databases and work files")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--requests",
        type=_ints,
        help="deletion batch sizes (default 1,100,1000; below 20,000 contacts smaller)",
    )
    p.add_argument(
        "--naive",
        type=int,
        help="requests the independent naive loop runs, each a full log pass (default 20)",
    )
    p.add_argument(
        "--log-days",
        type=int,
        help="days of logs in the world (default: the generator's, 35 from 1,000 contacts; "
        "fewer shortens every log pass: keep >= 10 at 1M contacts for >= 1 GB raw)",
    )
    p.add_argument("--access", type=_ints, help="access batch sizes (default 1,100)")

    p.add_argument("--retention-rows", type=int, help="expired rows wanted (default 1.2/contact)")
    p.add_argument("--workers", type=int, default=2, help="processes for log shards (default 2)")
    p.add_argument("--repeat", type=int, help="repetitions of the short figures (default by scale)")
    p.add_argument("--profile", action="store_true", help="cProfile every stage (slower)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where latest.json/.md go")
    return p.parse_args(argv)


def _log(started: float, text: str) -> None:
    sys.stderr.write(f"[bench {time.monotonic() - started:7.1f}s] {text}\n")
    sys.stderr.flush()


def _datamap_copy(workdir: Path, webhook_port: int) -> Path:
    """The demo data map with the ESP webhook pointed at this run's acknowledger."""
    text = (C.ROOT / "config" / "datamap.yaml").read_text()
    text = text.replace("http://127.0.0.1:8719/", f"http://127.0.0.1:{webhook_port}/")
    path = workdir / "datamap.yaml"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from compliance_dev import localenv
    from compliance_dev.world.generate import Plan

    plan = Plan.for_scale(args.scale)
    contacts = plan.contacts
    big = contacts >= 20_000  # below, the batch sizes would take most consumers
    sizes = args.requests or (
        [1, 100, 1000] if big else [1, max(2, contacts // 200), max(3, contacts // 20)]
    )
    naive_k = 20 if args.naive is None else args.naive
    access_sizes = args.access or ([1, 100] if big else [1, max(2, contacts // 20)])
    repeat = args.repeat or (3 if contacts <= 100_000 else 1)
    retention_rows = args.retention_rows or max(100, round(1.2 * contacts))
    log_days = args.log_days or 0
    selected = args.only or SECTIONS

    started = time.monotonic()
    run_id = C.new_run_id()
    workdir = C.ROOT / "benchmarks" / "work" / f"run-{run_id}"
    workdir.mkdir(parents=True, exist_ok=True)
    profile_dir = ""
    if args.profile:
        profile_dir = str(args.out.resolve() / "profiles")
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(key, value)
    os.environ.pop("COMPLIANCE_FAULTS", None)
    # SIGTERM (e.g. a killed `make`) unwinds like Ctrl-C: the finally below stops the S3 server
    # and drops the databases this run created.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before = os.getloadavg()
    _log(started, f"run {run_id}: scale {plan.scale} ({contacts:,} contacts), work in {workdir}")

    rows: list[C.Row] = []
    world: dict[str, Any] = {}
    s3_proc = receiver = bench = None
    try:
        s3_proc, s3_url = localenv.start_s3(workdir)
        port = C.free_port()
        receiver = localenv.start_webhook_receiver(port)
        now = datetime.now(UTC).replace(microsecond=0)
        env = C.Env(
            run_id=run_id,
            workdir=str(workdir),
            s3_url=s3_url,
            pg_base=C.pg_base(C.PG_ADMIN_URL),
            world_db=f"cjb_{run_id}_world",
            datamap_path=str(_datamap_copy(workdir, port)),
            retention_path=str(C.ROOT / "config" / "retention.yaml"),
            as_of=now.date().isoformat(),
            now=now.isoformat(),
            contacts=contacts,
            profile_dir=profile_dir,
        )
        bench = C.Bench(env, keep=args.keep, s3_pid=s3_proc.pid)
        from benchmarks.sections import world as world_section

        _log(started, "seeding the world")
        rows += world_section.run(bench, args.scale, args.seed, log_days)
        world = bench.results["world"]
        _log(started, f"world ready: {rows[0].note}")
        for name in SECTIONS:
            if name not in selected:
                continue
            _log(started, f"section {name}")
            try:
                rows += _section(
                    bench,
                    name,
                    sizes,
                    naive_k,
                    access_sizes,
                    retention_rows,
                    args.workers,
                    repeat,
                    args.repeat or 3,
                    rows,
                )
            except Exception as exc:
                traceback.print_exc()
                rows.append(C.failed(name, f"{name} section", exc))
            _log(started, f"section {name} done")
    finally:
        if bench is not None:
            bench.cleanup()
        if s3_proc is not None:
            localenv.stop_group(s3_proc.pid)
        if receiver is not None:
            receiver.shutdown()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    duration = time.monotonic() - started
    rows += _summary(rows, duration, contacts)
    doc = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "scale": plan.scale,
        "contacts": contacts,
        "sections": [s for s in SECTIONS if s in selected],
        "duration_s": round(duration, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in load_before],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "parameters": {
            "deletion_batches": sizes,
            "naive_requests": naive_k,
            "log_days": log_days or "generator default",
            "access_batches": access_sizes,
            "retention_rows": retention_rows,
            "workers": args.workers,
            "repeat": repeat,
            "seed": args.seed,
        },
        "world": world,
        "rows": [r.to_dict() for r in rows],
        "memory": C.stage_memory(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = markdown(doc)
    (args.out / "latest.md").write_text(md)
    if args.out.resolve() == RESULTS.resolve() and not args.only:
        _update_readme(md)
    print(table(rows))
    print(f"\n{len(rows)} rows in {duration / 60:.1f} min; {args.out / 'latest.json'}")
    return 0


def _section(
    bench: C.Bench,
    name: str,
    sizes: list[int],
    naive_k: int,
    access_sizes: list[int],
    retention_rows: int,
    workers: int,
    repeat: int,
    weekly_repeat: int,
    done: list[C.Row],
) -> list[C.Row]:
    if name == "deletion":
        from benchmarks.sections import deletion, naive

        rows = deletion.run(bench, sizes, workers)
        if naive_k <= 0:
            return rows
        return rows + naive.run(bench, naive_k, workers, max(sizes), _batch_total(rows, max(sizes)))
    if name == "celery":
        from benchmarks.sections import celery

        return celery.run(bench, max(sizes), _batch_total(done, max(sizes)))
    if name == "logs":
        from benchmarks.sections import log_scrub

        return log_scrub.run(bench, max(sizes), workers, repeat)
    if name == "retention":
        from benchmarks.sections import retention

        return retention.run(bench, retention_rows)
    if name == "access":
        from benchmarks.sections import access

        return access.run(bench, access_sizes, workers)
    if name == "log_index":
        from benchmarks.sections import log_index

        return log_index.run(bench, workers)
    from benchmarks.sections import stats

    return stats.run(bench, repeat, weekly_repeat)


def _batch_total(rows: list[C.Row], n: int) -> float | None:
    """The deletion section's time for its batch of `n` (what the naive loop is compared with)."""
    name = f"batch of {n}: total"
    return next((r.value for r in rows if r.section == "deletion" and r.name == name), None)


def _summary(rows: list[C.Row], duration: float, contacts: int) -> list[C.Row]:
    """The run's closing rows: peak memory over every process (issue 19) and the wall time.

    Memory: the largest `peak_mb` of any job stage (`C.STAGE_MEMORY`; the world's seeding and
    indexing are set-up and `baseline` stages are the yardsticks, not jobs), each the sum over the
    stage's workers, every PostgreSQL server process and the S3 server (`C.run_stage`).
    Without stage records (every section failed before a stage ran) the largest row's
    `peak_mb` stands in."""
    stages = [s for s in C.STAGE_MEMORY if not s.name.startswith("world.") and not s.baseline]
    measured = [r for r in rows if r.peak_mb is not None and r.section != "world"]
    out = []
    if stages:
        top = max(stages, key=lambda s: s.peak_mb)
        other = (
            f"; {top.postgres_other_mb:,.0f} MB of the PostgreSQL part are other databases' "
            "sessions on the same server"
            if top.postgres_other_mb >= 1
            else ""
        )
        out.append(
            C.at_most(
                "memory",
                "peak memory, all processes",
                top.peak_mb,
                "MB",
                MEMORY_LIMIT_MB,
                peak_mb=top.peak_mb,
                peak_parts=top.memory_parts,
                note=f"stage {top.name} (largest of {len(stages)} stages): workers "
                f"{top.workers_mb:,.0f} MB ({top.workers} process(es)) + PostgreSQL "
                f"{top.postgres_mb:,.0f} MB (every server process, shared memory once) + S3 "
                f"server {top.s3_mb:,.0f} MB; sampled every 0.2 s ({top.memory_samples} "
                f"samples, largest sampled sum {top.sampled_mb:,.0f} MB), workers at their "
                f"peak resident set (largest {top.worker_hwm_mb:,.0f} MB){other}",
            )
        )
    elif measured:
        top_row = max(measured, key=lambda r: r.peak_mb or 0.0)
        out.append(
            C.at_most(
                "memory",
                "peak memory, all processes",
                float(top_row.peak_mb or 0.0),
                "MB",
                MEMORY_LIMIT_MB,
                peak_mb=top_row.peak_mb,
                note=f"{top_row.section}: {top_row.name} (largest of {len(measured)} rows)",
            )
        )
    big = contacts >= 1_000_000
    out.append(
        C.Row(
            "harness",
            "benchmark wall time",
            duration,
            "s",
            target="<= 3600 s" if big else None,
            met=(duration <= HOUR) if big else None,
            note="seed + every section, this machine",
        )
    )
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        a = abs(value)
        if a >= 1000:
            return f"{value:,.0f}"
        if a >= 100:
            return f"{value:.0f}"
        if a >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if a >= 0.1 else f"{value:.3f}"
    return str(value)


COLUMNS = ["section", "name", "value", "unit", "baseline", "ratio", "target", "met", "peak_mb"]


def table(rows: list[C.Row]) -> str:
    cells = [[_fmt(getattr(r, c)) for c in COLUMNS] for r in rows]
    head = ["section", "figure", "value", "unit", "baseline", "ratio", "target", "met", "peak MB"]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    widths[1] = min(widths[1], 62)
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:
        c[1] = c[1] if len(c[1]) <= 62 else c[1][:59] + "..."
        lines.append("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)))
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"Scale {doc['scale']} ({doc['contacts']:,} contacts), generated {doc['generated_at']}, "
        f"{doc['duration_s'] / 60:.1f} min on {m['cpus']} CPUs (load average "
        f"{m['load_average_at_start'][0]} at start, {m['load_average_at_end'][0]} at end).",
        "",
        "| Section | Figure | Value | Unit | Baseline | Ratio | Target | Met | Peak MB | Note |",
        "|---|---|---:|---|---:|---:|---|---|---:|---|",
    ]
    for r in doc["rows"]:
        note = str(r.get("note", "")).replace("|", "\\|")
        cells = [
            r["section"],
            r["name"].replace("|", "\\|"),
            _fmt(r["value"]),
            r["unit"],
            _fmt(r["baseline"]),
            _fmt(r["ratio"]),
            r["target"] or "",
            _fmt(r["met"]) if r["met"] is not None else "",
            _fmt(r["peak_mb"]),
            note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _update_readme(md: str) -> None:
    if not README.exists():
        return
    text = README.read_text()
    if BEGIN not in text or END not in text:
        return
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{md}{END}{tail}")


if __name__ == "__main__":
    raise SystemExit(main())
