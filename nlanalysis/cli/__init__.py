"""``nlanalysis`` console entry point: a thin argparse front over the Python API.

Each subcommand is one module in this package exposing ``register(subparsers)``, which adds
its parser with :func:`add_command` (``--debug`` and ``func``: ``args -> exit code``). Adding a
module adds a command: they are discovered, so no central list needs editing.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence

from ..adapters import UnsupportedBlockError
from ..checkpoints.vit._deps import MissingExtraError


#: every public module of this package is a subcommand (sorted)
SUBCOMMANDS = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def add_command(
    sub: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int], help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, which ``run`` serves; with ``--debug`` (tracebacks)."""
    parser = sub.add_parser(name, help=help, description=description)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(func=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nlanalysis",
        description="Do the attention maps of non-local blocks depend on the query? (GCNet analysis)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, UnsupportedBlockError, MissingExtraError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"nlanalysis {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
