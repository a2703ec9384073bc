"""Flags and helpers shared by the sub-commands, so every command spells them alike."""

from __future__ import annotations

import argparse

from taming_plugins.training.runtime import resolve_device, seed_everything

__all__ = ["add_device_flag", "add_seed_flag", "resolve_device", "seed_everything"]


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")


def add_seed_flag(parser: argparse.ArgumentParser, default: int = 0) -> None:
    parser.add_argument("--seed", type=int, default=default, help=f"random seed (default {default})")
