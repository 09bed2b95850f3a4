"""Log scrub throughput (compliance.deletion.log_scrub) against the shell pipeline it replaces.

    .venv/bin/python benchmarks/bench_logs.py [--mb 150] [--identities 1000] [--repeat 3]

Generates (once, cached under benchmarks/work/) a JSON-lines gzip object of about --mb MB of raw
app_logs lines: 200,000 contacts in 50 tenants, 20% of e-mails in mixed case, 10% of lines holding
JSON escapes (non-ASCII and quotes in a message), and --identities target identities (60% e-mails,
30% phones, 10% record ids). Then, best of --repeat runs, in MB/s of gzip input:

  pipeline   gzip -dc f | grep -v -F -f ids | gzip -1 > out   (case-sensitive, tenant-blind)
  engine     the rewrite engine, local file in, compressed spool out (no S3)
  scan       scan only (what the verification pass costs)
  rewrite    rewrite_object on a moto server in another process: GET, scan, PUT, version clean-up
  shard      scrub_shard on that object's day folder (rewrite + clean_versions + verify="all")

Timings are printed, never asserted. The machine may be shared: runs are interleaved and the best
of each is kept.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compliance.core import compression, logfiles
from compliance.core.datamap.model import IdentityType, LogStore
from compliance.core.logfiles import reading
from compliance.deletion import log_scrub

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work"
BUCKET = "cj-bench-logs"
STORE = LogStore(
    kind="log",
    bucket=BUCKET,
    prefix="app/",
    partition="dt=%Y-%m-%d/",
    system="crm",
    timestamp_field="ts",
    tenant_field="client_id",
    fields={
        "email": {"categories": ["identifiers"], "identity": "email"},
        "phone": {"categories": ["identifiers"], "identity": "phone"},
        "contact_id": {"categories": ["identifiers"], "identity": "record_id"},
        "ip": {"categories": ["identifiers", "internet_activity"]},
        "ua": {"categories": ["internet_activity"]},
    },
)
PIPELINE = 'gzip -dc "$1" | grep -v -F -f "$2" | gzip -1 > "$3"'
CONTACTS = 200_000
FIRST = ["john", "mary", "ana", "li", "omar", "sofia", "peter", "kate", "raj", "yuki", "lena"]
DOMAINS = ["example.com", "mail.example", "corp.example", "Example.ORG", "shop.example"]
UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "curl/8.5.0",
]
EVENTS = ["message.sent", "message.delivered", "lead.created", "lead.scored", "page.view"]


def email(c: int) -> str:
    return f"{FIRST[c % len(FIRST)]}.{c}@{DOMAINS[c % len(DOMAINS)]}"


def phone(c: int) -> str:
    return f"+1555{c:07d}"


def tenant(c: int) -> int:
    return c % 50 + 1


def generate(mb: int, identities: int) -> tuple[Path, Path, Path]:
    """The object, the grep pattern file and the targets (JSON), cached by parameters."""
    WORK.mkdir(parents=True, exist_ok=True)
    obj = WORK / f"logs-{mb}mb.jsonl.gz"
    ids_txt = WORK / f"ids-{mb}mb-{identities}.txt"
    ids_json = WORK / f"ids-{mb}mb-{identities}.json"
    if obj.exists() and ids_txt.exists() and ids_json.exists():
        return obj, ids_txt, ids_json
    rnd = random.Random(7)
    target = mb * 1_000_000
    size = 0
    with gzip.open(obj, "wb", compresslevel=6) as out:
        chunk: list[bytes] = []
        while size < target:
            c = rnd.randrange(CONTACTS)
            rec: dict = {
                "ts": f"2024-05-01T{rnd.randrange(24):02d}:{rnd.randrange(60):02d}:"
                f"{rnd.randrange(60):02d}.{rnd.randrange(1000):03d}Z",
                "level": "info",
                "client_id": tenant(c),
                "svc": "lead-response",
                "event": rnd.choice(EVENTS),
                "contact_id": f"c{c}",
            }
            r = rnd.random()
            if r < 0.7:
                rec["email"] = email(c) if rnd.random() < 0.8 else email(c).title()
            if r > 0.5:
                rec["phone"] = phone(c)
            rec["ip"] = f"203.0.{rnd.randrange(256)}.{rnd.randrange(256)}"
            rec["ua"] = rnd.choice(UAS)
            rec["latency_ms"] = rnd.randrange(2000)
            rec["msg"] = "ok" if rnd.random() < 0.9 else 'Caf\u00e9 r\u00e9sum\u00e9 "quoted"'
            line = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
            chunk.append(line)
            size += len(line)
            if len(chunk) >= 10_000:
                out.write(b"".join(chunk))
                chunk = []
        out.write(b"".join(chunk))
    picked = rnd.sample(range(CONTACTS), identities)
    rows = []
    for k, c in enumerate(picked):
        if k < identities * 6 // 10:
            rows.append(("email", email(c).lower(), tenant(c), f"req-{k % 50}"))
        elif k < identities * 9 // 10:
            rows.append(("phone", phone(c), tenant(c), f"req-{k % 50}"))
        else:
            rows.append(("record_id", f"c{c}", tenant(c), f"req-{k % 50}"))
    ids_json.write_text(json.dumps(rows))
    ids_txt.write_text("".join(f"{value}\n" for _, value, _, _ in rows))
    return obj, ids_txt, ids_json


def load_targets(ids_json: Path) -> logfiles.Targets:
    by_tenant: dict[str, list] = {}
    for itype, value, ten, ref in json.loads(ids_json.read_text()):
        by_tenant.setdefault(str(ten), []).append((IdentityType(itype), value, ref))
    return logfiles.Targets(by_tenant)


def run_pipeline(obj: Path, ids_txt: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["bash", "-c", PIPELINE, "_", str(obj), str(ids_txt), str(out)],
        check=True,
    )
    return time.perf_counter() - started


def run_engine(obj: Path, targets: logfiles.Targets) -> tuple[float, logfiles.ObjectResult, int]:
    matcher = logfiles.Matcher.get(STORE, targets)
    started = time.perf_counter()
    result = logfiles.ObjectResult(key=obj.name, bytes_in=obj.stat().st_size)
    with obj.open("rb") as body:
        out = log_scrub._edit_stream(body, matcher, STORE.erase, result)
    size = out.finish() if out is not None else 0
    elapsed = time.perf_counter() - started
    if out is not None:
        out.close()
    return elapsed, result, size


def run_scan(obj: Path, targets: logfiles.Targets) -> tuple[float, int]:
    matcher = logfiles.Matcher.get(STORE, targets)
    started = time.perf_counter()
    matched = 0
    with obj.open("rb") as raw, compression.GZIP.GzipFile(fileobj=raw, mode="rb") as gz:
        for _, block in reading.line_blocks(gz, obj.name):
            matched += len(matcher.scan(block)[0])
    return time.perf_counter() - started, matched


class MotoProcess:
    """A moto server in its own process (an in-process one would share our GIL)."""

    def __enter__(self) -> str:
        self.port_file = Path(tempfile.mkdtemp(prefix="cj-bench-")) / "port"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "compliance_dev",
                "local-s3",
                "--port-file",
                str(self.port_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            if self.port_file.exists() and self.port_file.read_text():
                return self.port_file.read_text().strip()
            time.sleep(0.05)
        raise RuntimeError("moto server did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def s3_runs(obj: Path, targets: logfiles.Targets, repeat: int) -> dict[str, float]:
    from compliance.core.stores.s3 import s3_client

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    body = obj.read_bytes()
    best = {"rewrite": 1e9, "shard": 1e9, "shard_changed": 1e9, "get": 1e9, "put": 1e9}
    with MotoProcess() as url:
        s3 = s3_client(endpoint_url=url, access_key="bench", secret_key="bench")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        key = "app/dt=2024-05-01/part-0.jsonl.gz"
        for _ in range(repeat):
            started = time.perf_counter()
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
            best["put"] = min(best["put"], time.perf_counter() - started)
            started = time.perf_counter()
            s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            best["get"] = min(best["get"], time.perf_counter() - started)
            started = time.perf_counter()
            r = log_scrub.rewrite_object(s3, STORE, BUCKET, key, targets, batch_id="bench")
            best["rewrite"] = min(best["rewrite"], time.perf_counter() - started)
            assert r.rewritten
            for mode in ("all", "changed"):
                s3.put_object(Bucket=BUCKET, Key=key, Body=body)
                started = time.perf_counter()
                shard = log_scrub.scrub_shard(
                    s3, STORE, "app/dt=2024-05-01/", targets, batch_id="bench", verify=mode
                )
                name = "shard" if mode == "all" else "shard_changed"
                best[name] = min(best[name], time.perf_counter() - started)
                assert shard.residue == 0 and shard.objects_rewritten == 1
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=150, help="raw size of the object (MB)")
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-s3", action="store_true", help="skip the moto runs")
    args = parser.parse_args()

    obj, ids_txt, ids_json = generate(args.mb, args.identities)
    gz_mb = obj.stat().st_size / 1e6
    targets = load_targets(ids_json)
    print(f"object: {gz_mb:.1f} MB gzip, ~{args.mb} MB raw; {targets!r}")

    pipe_best = engine_best = scan_best = 1e9
    result = None
    out_size = matched = 0
    pipe_out = WORK / "pipeline-out.gz"
    for _ in range(args.repeat):
        pipe_best = min(pipe_best, run_pipeline(obj, ids_txt, pipe_out))
        elapsed, result, out_size = run_engine(obj, targets)
        engine_best = min(engine_best, elapsed)
        elapsed, matched = run_scan(obj, targets)
        scan_best = min(scan_best, elapsed)
    assert result is not None and matched == result.lines_matched
    with gzip.open(pipe_out, "rb") as f:
        pipe_kept = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))

    def row(name: str, seconds: float, note: str = "") -> None:
        print(
            f"{name:14s} {seconds:7.2f} s  {gz_mb / seconds:7.1f} MB/s gz  "
            f"{pipe_best / seconds:5.2f}x pipeline  {note}"
        )

    row("pipeline", pipe_best, f"kept {pipe_kept} lines (case-sensitive, tenant-blind)")
    row(
        "engine",
        engine_best,
        f"{result.lines_matched} of {result.lines_in} lines dropped, "
        f"out {out_size / 1e6:.1f} MB (isal level {compression.COMPRESS_LEVEL})",
    )
    row("scan", scan_best, "scan only")
    if not args.no_s3:
        best = s3_runs(obj, targets, args.repeat)
        print(f"(moto in another process: PUT {best['put']:.2f} s, GET {best['get']:.2f} s)")
        row("rewrite", best["rewrite"], "rewrite_object on moto: GET+scan+PUT+versions")
        row("shard", best["shard"], 'scrub_shard on moto, verify="all"')
        row("shard/changed", best["shard_changed"], 'scrub_shard on moto, verify="changed"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
