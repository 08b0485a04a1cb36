"""Entry point of the `tq` command. Each verb lives in its own module with the same two hooks:
``add_parser(subparsers)`` and ``run(args) -> exit code``."""

from __future__ import annotations

import argparse
import sys

from tq_core import __version__
from tq_core.errors import TQError


def build_parser() -> argparse.ArgumentParser:
    from tq_core.cli import demo, doctor, eval, plan

    parser = argparse.ArgumentParser(
        prog="tq",
        description="TurboQuant KV-cache compression: plan, demo, evaluate quality, diagnose.",
    )
    parser.add_argument("--version", action="version", version=f"tq-core {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="{plan,demo,eval,doctor}")
    for module in (plan, demo, eval, doctor):
        module.add_parser(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except TQError as error:
        # Our errors are written for users: one line, no traceback.
        print(f"tq {args.verb}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
