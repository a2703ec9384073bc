"""``taming plugins``: list registered components and plugin load status."""

from __future__ import annotations

import argparse

import taming_core
from taming_core import plugins as plugin_mod


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list registered components and their origins",
                       description="List registered components (kind, name, origin, description) "
                       "and the entry-point plugins that were loaded or failed.")
    p.add_argument("--kind", choices=taming_core.KINDS + tuple(taming_core.KIND_ALIASES),
                   help="only this kind ('loss' lists perceptual, gan and autoencoder_loss)")
    p.add_argument("--pattern", default="*", help="fnmatch pattern on names (default '*')")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = [(e.kind, e.name, e.origin, e.description)
            for e in taming_core.entries(args.kind, args.pattern)]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("KIND", "NAME", "ORIGIN"))]
    print(f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  {'ORIGIN':<{widths[2]}}  DESCRIPTION")
    for kind, name, origin, desc in rows:
        print(f"{kind:<{widths[0]}}  {name:<{widths[1]}}  {origin:<{widths[2]}}  {desc}")
    statuses = plugin_mod.plugin_status()
    if statuses:
        print("\nPLUGINS")
        for s in statuses:
            state = "loaded" if s.loaded else f"FAILED: {s.error}"
            print(f"  {s.name} ({s.target}) from {s.distribution} {s.version}: {state}")
    return 0
