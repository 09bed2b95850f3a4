"""`python -m compliance ...`: the commands operators and `make` use.

Each subcommand is a thin shell over a function in the package; add new ones to COMMANDS.
"""

from __future__ import annotations

import argparse
import sys


def _datamap_check(args: argparse.Namespace) -> int:
    from compliance.core.datamap.validate import DataMapInvalid, check_against_schema, load_datamap

    try:
        dm = load_datamap(args.file)
    except DataMapInvalid as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    if args.db:
        from compliance.core.datamap.validate import live_schema
        from compliance.core.stores.sql import engine_from_url

        live = live_schema(engine_from_url(args.db))  # with types: live-column-type and friends
        issues = [i for name in dm.systems for i in check_against_schema(dm, name, live)]
        if issues:
            print(
                f"data map {args.file} disagrees with the database ({len(issues)} issue(s)):",
                file=sys.stderr,
            )
            for issue in issues:
                print(f"  - {issue}", file=sys.stderr)
            return 1
    tables = sum(len(s.tables) for s in dm.systems.values())
    print(
        f"{args.file}: OK ({len(dm.systems)} SQL system(s), {tables} tables, "
        f"{len(dm.stores)} object store(s), {len(dm.subprocessors)} sub-processor(s))"
    )
    return 0


def _datamap_indexes(args: argparse.Namespace) -> int:
    """Print, check or create the indexes the jobs need for this map (issue 19, R16/R8/R22)."""
    from compliance.core.datamap import indexes
    from compliance.core.datamap.validate import DataMapInvalid, load_datamap
    from compliance.core.settings import Settings

    path = args.datamap or Settings.from_env().datamap_path
    try:
        dm = load_datamap(path)
    except DataMapInvalid as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return 2
    plan = indexes.needed(dm)
    if args.system and args.system not in dm.systems:
        known = ", ".join(dm.systems)
        print(f"--system: {args.system!r} is not a SQL system of {path} ({known})", file=sys.stderr)
        return 2
    systems = [args.system] if args.system else list(dm.systems)
    if args.db is None:
        if args.apply:
            print("--apply needs --db: the database to create the indexes in", file=sys.stderr)
            return 2
        for name in systems:
            print(f"-- system {name}")
            for spec in plan.for_system(name):
                print(f"-- {spec.why}")
                print(indexes.create_sql(spec, args.dialect) + ";")
    else:
        if len(systems) != 1:
            print(
                f"--system: {path} has several SQL systems; name the one --db holds",
                file=sys.stderr,
            )
            return 2
        code = _indexes_live(args.db, plan.for_system(systems[0]), args.apply)
        if code:
            return code
    for s in plan.scanned:
        print(f"-- not indexable, scanned: {s.store}.{s.path} ({s.identity}): {s.reason}")
    return 0


def _indexes_live(url: str, specs: list, apply: bool) -> int:
    from sqlalchemy import inspect
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    from compliance.core.datamap import indexes
    from compliance.core.stores.sql import apply_indexes, engine_from_url, live_indexes

    try:
        engine = engine_from_url(url)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        print(f"--db: not a usable SQLAlchemy URL ({type(exc).__name__})", file=sys.stderr)
        return 2
    try:
        tables = set(inspect(engine).get_table_names())
        # an INVALID index (a failed CREATE INDEX CONCURRENTLY) is left out: reported missing
        existing = live_indexes(engine, {s.table for s in specs})
        absent = [s for s in specs if s.table not in tables]
        todo = indexes.missing([s for s in specs if s.table in tables], existing)
        for spec in specs:
            state = "table missing" if spec in absent else "missing" if spec in todo else "exists"
            print(f"{state:13} {spec.table}({', '.join(spec.columns)}) {spec.name}: {spec.why}")
        if apply:
            print(f"created {len(apply_indexes(engine, specs))} index(es)")
        else:
            print(f"{len(todo)} missing; run again with --apply to create them")
    except SQLAlchemyError as exc:  # the URL may hold a password: print only the error class
        print(f"--db: cannot inspect the database ({type(exc).__name__})", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


def _ledger_head(text: str) -> object:
    from compliance.core.ledger import Head

    try:
        return Head.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _ledger_verify(args: argparse.Namespace) -> int:
    """Exit 0 if the audit ledger's MAC chain is intact (R20), 1 if not, 2 if it cannot check."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from compliance.core.ledger import verify
    from compliance.core.settings import DEV_HASH_KEY, Settings
    from compliance.core.stores.sql import engine_from_url

    try:
        key = Settings.from_env().hash_key
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    if key == DEV_HASH_KEY.encode():
        print("warning: COMPLIANCE_HASH_KEY is not set; using the development key", file=sys.stderr)
    engine = None
    try:
        engine = engine_from_url(args.db)
        if not inspect(engine).has_table("cj_ledger"):
            print("no audit ledger (table cj_ledger) in that database", file=sys.stderr)
            return 2
        result = verify(engine, key, expected_head=args.head)
    except SQLAlchemyError as exc:  # the URL may hold a password: print only the error class
        print(f"cannot read the ledger: {type(exc).__name__}", file=sys.stderr)
        return 2
    finally:
        if engine is not None:
            engine.dispose()
    if not result.ok:
        print(
            f"ledger BROKEN at entry {result.first_bad_seq}: {result.problem} "
            f"({result.entries} entries verified before it)",
            file=sys.stderr,
        )
        return 1
    checkpoint = f"; head {result.head} (keep it for --head)" if result.head else ""
    print(f"ledger OK: {result.entries} entries{checkpoint}")
    return 0


def _retention_check(args: argparse.Namespace) -> int:
    """Exit 0 if the retention policy is valid and covers the data map (R22, R26, R27), 1 if not."""
    from compliance.core.settings import Settings
    from compliance.retention import check_file

    datamap = args.datamap or Settings.from_env().datamap_path
    try:
        problems, summary = check_file(args.file, datamap)
    except OSError as exc:
        print(f"cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    if problems:
        print(f"retention policy {args.file}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def _backups_restore(args: argparse.Namespace) -> int:
    """Load a snapshot into a database with the CRM's schema, then re-apply deletions (R18)."""
    import json

    from compliance.core.datamap.validate import load_datamap
    from compliance.core.settings import Settings
    from compliance.core.stores.s3 import s3_client
    from compliance.core.stores.sql import engine_from_url
    from compliance.deletion.backups import restore

    cfg = Settings.from_env()
    dm = load_datamap(args.datamap or cfg.datamap_path)
    s3 = s3_client(endpoint_url=args.s3)
    report = restore(
        s3,
        dm,
        args.store,
        args.day,
        engine_from_url(args.db),
        engine_from_url(args.state_db),
        cfg.hash_key,
    )
    print(json.dumps(report, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m compliance")
    sub = parser.add_subparsers(dest="group", required=True)

    dm = sub.add_parser("datamap", help="data map commands").add_subparsers(
        dest="cmd", required=True
    )
    check = dm.add_parser("check", help="validate a data map file, reporting every error")
    check.add_argument("file")
    check.add_argument("--db", help="also compare with a live database (SQLAlchemy URL)")
    check.set_defaults(func=_datamap_check)
    idx = dm.add_parser("indexes", help="print, check or create the indexes the jobs need")
    idx.add_argument(
        "--datamap", help="data map (default: COMPLIANCE_DATAMAP or config/datamap.yaml)"
    )
    idx.add_argument("--db", help="inspect this database (SQLAlchemy URL): which exist, which not")
    idx.add_argument("--apply", action="store_true", help="create the missing ones (needs --db)")
    idx.add_argument("--system", help="the map's SQL system --db holds (default: the only one)")
    idx.add_argument("--dialect", choices=["postgresql", "sqlite"], default="postgresql")
    idx.set_defaults(func=_datamap_indexes)

    ledger = sub.add_parser("ledger", help="audit ledger commands").add_subparsers(
        dest="cmd", required=True
    )
    lverify = ledger.add_parser("verify", help="check the ledger's MAC chain (exit 1 if broken)")
    lverify.add_argument("--db", required=True, help="SQLAlchemy URL of the compliance state DB")
    lverify.add_argument(
        "--head", type=_ledger_head, help="checkpoint SEQ:MAC from an earlier verify or head()"
    )
    lverify.set_defaults(func=_ledger_verify)

    backups = sub.add_parser("backups", help="backup commands").add_subparsers(
        dest="cmd", required=True
    )
    restore = backups.add_parser(
        "restore", help="restore a snapshot and re-apply every deletion recorded since (R18)"
    )
    restore.add_argument("--store", required=True, help="backup store name in the data map")
    restore.add_argument("--day", required=True, help="snapshot date, YYYY-MM-DD")
    restore.add_argument(
        "--db", required=True, help="target database (SQLAlchemy URL), with schema"
    )
    restore.add_argument("--state-db", required=True, help="compliance state DB holding tombstones")
    restore.add_argument("--s3", help="S3 endpoint URL (default: AWS)")
    restore.add_argument("--datamap", help="data map (default: settings)")
    restore.set_defaults(func=_backups_restore)

    retention = sub.add_parser("retention", help="retention policy commands").add_subparsers(
        dest="cmd", required=True
    )
    rcheck = retention.add_parser(
        "check", help="validate a retention policy and its coverage of the data map"
    )
    rcheck.add_argument("file")
    rcheck.add_argument(
        "--datamap",
        help="data map to check against (default: COMPLIANCE_DATAMAP or config/datamap.yaml)",
    )
    rcheck.set_defaults(func=_retention_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
