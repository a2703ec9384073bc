"""The ``taming`` command line.

Each sub-command is a module in :mod:`taming_plugins.cli.commands` defining
``register(subparsers)``, which adds its parser and sets ``func=run``. The CLI only
composes registered components; it holds no model logic.

Exit codes: 0 success, 1 runtime failure (one readable line on stderr), 2 usage error.
Every error is one line on stderr (``-vv`` shows the traceback instead).

``--plugins NAME,...`` (or ``TAMING_PLUGINS``) loads the named entry-point plugins even
when ``TAMING_DISABLE_PLUGIN_AUTOLOAD`` is set.
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


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit 2), pointing to
    ``--help`` instead of printing the usage block. Sub-command parsers inherit it."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="taming", description="Taming Transformers: train tokenizers and priors, sample, "
        "convert original checkpoints, run benchmarks.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug and tracebacks)")
    parser.add_argument("--plugins", metavar="NAME,...",
                        help="entry-point plugins to load even with TAMING_DISABLE_PLUGIN_AUTOLOAD=1 "
                        "(comma-separated; the TAMING_PLUGINS environment variable does the same)")
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
        if args.plugins:
            _load_plugins(args.plugins)
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
    except Exception as exc:  # noqa: BLE001 - a bug still gets one line (and -vv its traceback)
        if args.verbose >= 2:
            raise
        print(f"taming {args.command}: error: {type(exc).__name__}: {_error_line(exc)} "
              "(run with -vv for the traceback)", file=sys.stderr)
        return 1
    return int(rc or 0)


def _load_plugins(names: str) -> None:
    """Load the ``--plugins`` entry points; one that fails is an error, not a warning."""
    import warnings

    import taming_core
    from taming_core.plugins import requested_plugins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # reported below as the error
        statuses = taming_core.load_plugins(requested_plugins(names))
    failed = [s for s in statuses if not s.loaded]
    if failed:
        raise taming_core.PluginError(f"--plugins: plugin {failed[0].name!r} from "
                                      f"{failed[0].distribution} {failed[0].version} failed to load: "
                                      f"{failed[0].error}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
