"""Make the plugin packages under tests/plugin_pkgs discoverable for real.

For each package a ``<name>-<version>.dist-info`` (METADATA, entry_points.txt,
top_level.txt) is generated from its own pyproject.toml into a site directory;
with that directory and the package sources on PYTHONPATH, entry-point discovery
finds them exactly as it finds an installed distribution.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

PLUGIN_PKGS = Path(__file__).parent / "plugin_pkgs"


def make_dist_info(pkg_dir: Path, site: Path) -> None:
    meta = tomllib.loads((pkg_dir / "pyproject.toml").read_text())["project"]
    name, version = meta["name"], meta["version"]
    dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, eps in meta.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    modules = [p.name for p in pkg_dir.iterdir() if (p / "__init__.py").is_file()]
    (dist / "top_level.txt").write_text("\n".join(modules) + "\n")


def plugin_env(site: Path, packages: list[str], **extra: str) -> dict[str, str]:
    """Environment for a subprocess that sees the given test plugin packages installed."""
    for pkg in packages:
        make_dist_info(PLUGIN_PKGS / pkg, site)
    paths = [str(site)] + [str(PLUGIN_PKGS / p) for p in packages]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("TAMING_DISABLE_PLUGIN_AUTOLOAD", None)
    env.update(extra)
    return env


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_python("import sys; from taming_plugins.cli import main; sys.exit(main(sys.argv[1:]))"
                      .replace("sys.argv[1:]", repr(args)), env)
