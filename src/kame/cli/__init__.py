"""The ``kame`` command: thin argument parsing that calls the layers below.

Each subcommand lives in its own module with a ``register(subparsers)`` function; adding a command is
adding a module name to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from kame.errors import UserError

COMMANDS = ("checkpoint", "infer", "serve", "simulate", "demo", "oracle", "data", "train", "eval")

__all__ = ["COMMANDS", "UserError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kame", description="KAME tandem speech-to-speech system")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"kame.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError) as exc:  # bad input; anything else shows its traceback
        if args.verbose:
            raise
        print(f"kame {args.command}: error: {exc}", file=sys.stderr)
        return 2
