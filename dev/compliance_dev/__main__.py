"""`python -m compliance_dev ...`: the embedded stack's commands (dev code, not product).

`local-s3` runs the moto S3 server the demo and the tests use; `world seed` writes a synthetic
world into a CRM and its stores. Neither ships in the production image (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _local_s3(args: argparse.Namespace) -> int:
    from compliance_dev.local_s3 import serve_forever

    serve_forever(Path(args.port_file), args.port)
    return 0


def _world_seed(args: argparse.Namespace) -> int:
    from compliance_dev.world.generate import seed_command

    return seed_command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m compliance_dev")
    sub = parser.add_subparsers(dest="group", required=True)

    s3 = sub.add_parser("local-s3", help="run a moto S3 server on 127.0.0.1 until killed")
    s3.add_argument("--port-file", required=True)
    s3.add_argument("--port", type=int)
    s3.set_defaults(func=_local_s3)

    world = sub.add_parser("world", help="synthetic world").add_subparsers(
        dest="cmd", required=True
    )
    seed = world.add_parser("seed", help="generate a deterministic world into a CRM and S3")
    seed.add_argument("--db", required=True, help="SQLAlchemy URL of the CRM")
    seed.add_argument("--s3", required=True, help="S3 endpoint URL")
    seed.add_argument("--scale", default="tiny", help="tiny | small | medium | large | <contacts>")
    seed.add_argument("--seed", type=int, default=7)
    seed.add_argument("--as-of", help="the world's 'today' (YYYY-MM-DD); default: today")
    seed.add_argument("--datamap", help="data map naming the buckets (default: settings)")
    seed.add_argument("--replace", action="store_true", help="drop and re-create a non-empty world")
    seed.set_defaults(func=_world_seed)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
