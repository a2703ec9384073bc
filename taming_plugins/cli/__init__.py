"""The ``taming`` command line.

Each sub-command is a module in :mod:`taming_plugins.cli.commands` defining
``register(subparsers)``, which adds its parser and sets ``func=run``. The CLI only
composes registered components; it holds no model logic.

Exit codes: 0 success, 1 runtime failure (one readable line on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys
from typing import Iterator, Optional, Sequence

from . import commands

log = logging.getLogger("taming")

#: Exceptions reported as one line with exit code 1 instead of a traceback.
RUNTIME_ERRORS = (ValueError, KeyError, RuntimeError, OSError, ImportError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taming", description="Taming Transformers: train tokenizers and priors, sample, "
        "convert original checkpoints, run benchmarks.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    if isinstance(exc, KeyError) and msg.startswith("'") and msg.endswith("'"):
        msg = msg[1:-1]
    return msg


def launch_rank() -> int:
    """This process's rank when started by torchrun (``RANK``), else 0."""
    value = os.environ.get("RANK", "0")
    return int(value) if value.isdigit() else 0


@contextlib.contextmanager
def _quiet_stdout(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit code (also used as the console-script entry)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    rank = launch_rank()
    if rank != 0:  # under torchrun only rank 0 logs and prints; errors still reach stderr
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(message)s")
    try:
        with _quiet_stdout(rank != 0):
            rc = args.func(args)
    except KeyboardInterrupt:
        print(f"taming {args.command}: interrupted", file=sys.stderr)
        return 130
    except RUNTIME_ERRORS as exc:
        if args.verbose >= 2:
            raise
        print(f"taming {args.command}: error: {_error_line(exc)}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
