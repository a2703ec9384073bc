"""Output directories of the commands that write files (``sample``, ``reconstruct``, ``eval``).

A command writes into ``--out`` only when the directory is new, empty, or was written
by the same command before (it leaves a marker file ``.taming-COMMAND``); then it first
removes its own files of the earlier run, so no stale image survives. Any other
non-empty directory is refused with one line, before a model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Union

MARKER_PREFIX = ".taming-"


def prepare_out(out: Union[str, Path], command: str, own: Iterable[str]) -> Path:
    """Make ``out`` ready for ``command``; ``own`` are glob patterns of its files."""
    path = Path(out)
    marker = path / f"{MARKER_PREFIX}{command}"
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not marker.is_file():
            raise ValueError(f"--out {path}: the directory is not empty and was not written by "
                             f"`taming {command}`; give a new or empty directory")
        for pattern in own:
            for old in path.glob(pattern):
                if old.is_file():
                    old.unlink()
    path.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return path
