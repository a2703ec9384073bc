"""``taming plugins``: list registered components and plugin load status."""

from __future__ import annotations

import argparse

import taming_core
from taming_core import plugins as plugin_mod


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="list registered components and their origins",
                       description="List registered components (kind, name, origin, family of priors and samplers, description) "
                       "and the entry-point plugins that were loaded or failed.")
    p.add_argument("--kind", choices=taming_core.KINDS + tuple(taming_core.KIND_ALIASES),
                   help="only this kind ('loss' lists perceptual, gan and autoencoder_loss)")
    p.add_argument("--pattern", default="*", help="fnmatch pattern on names (default '*')")
    p.set_defaults(func=run)


def family_of(entry: taming_core.Entry) -> str:
    """The declared family of a prior or sampler class ("-" for other kinds)."""
    obj = entry.obj
    if isinstance(obj, type) and issubclass(obj, (taming_core.Prior, taming_core.Sampler)):
        return obj.family or "?"
    return "-"


def run(args: argparse.Namespace) -> int:
    rows = [(e.kind, e.name, e.origin, family_of(e), e.description)
            for e in taming_core.entries(args.kind, args.pattern)]
    heads = ("KIND", "NAME", "ORIGIN", "FAMILY")
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(heads)]
    print("  ".join(f"{h:<{w}}" for h, w in zip(heads, widths)) + "  DESCRIPTION")
    for row in rows:
        print("  ".join(f"{v:<{w}}" for v, w in zip(row, widths)) + f"  {row[-1]}")
    statuses = plugin_mod.plugin_status()
    if statuses:
        print("\nPLUGINS")
        for s in statuses:
            state = "loaded" if s.loaded else f"FAILED: {s.error}"
            print(f"  {s.name} ({s.target}) from {s.distribution} {s.version}: {state}")
    return 0
