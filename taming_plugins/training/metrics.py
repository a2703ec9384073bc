"""Metrics as JSON lines (one object per logged step), resume-aware.

Each line is ``{"step": n, "split": "train", "<metric>": value, ...}``. A resumed run
first drops the lines written after the checkpoint it resumes from, so the file reads
like one uninterrupted run. Off the main process (DDP rank != 0) nothing is written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from taming_core.io import atomic_path


def _json_value(value: Any) -> Any:
    """Floats that JSON cannot spell (NaN/Inf) become strings so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Append metrics to ``path`` as JSONL.

    Args:
        path: the ``.jsonl`` file (parents are created).
        resume_step: when resuming, the checkpoint step; records with a larger step are
            removed first. None starts a fresh file (an existing one is replaced).
        is_main_process: only the main process writes.
    """

    def __init__(self, path: Union[str, os.PathLike], *, resume_step: Optional[int] = None,
                 is_main_process: bool = True) -> None:
        self.path, self.enabled = Path(path), is_main_process
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if int(json.loads(line)["step"]) <= resume_step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from a crash
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, float], *, split: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split}
        record.update({k: _json_value(float(v)) for k, v in metrics.items()})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def read_metrics(path: Union[str, os.PathLike], split: Optional[str] = None) -> list[dict[str, Any]]:
    """All records of a metrics file (optionally only one split)."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    return [r for r in records if split is None or r.get("split") == split]
