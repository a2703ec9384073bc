"""Write an :class:`~.evaluate.EvalReport` as JSON, markdown and a codebook histogram."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Union

from taming_core.io import atomic_path, write_json

from .evaluate import EvalReport

JSON_NAME = "eval.json"
MARKDOWN_NAME = "eval.md"
HISTOGRAM_NAME = "codebook_histogram.png"

#: How each metric is labelled and formatted in the markdown table.
_LABELS = {
    "psnr": ("PSNR (dB, higher is better)", "{:.2f}"),
    "ssim": ("SSIM (higher is better)", "{:.4f}"),
    "lpips": ("LPIPS (lower is better)", "{:.4f}"),
    "rfid": ("rFID (lower is better)", "{:.2f}"),
    "fid": ("FID (lower is better)", "{:.2f}"),
    "usage_pct": ("codebook usage (%)", "{:.1f}"),
    "perplexity": ("codebook perplexity", "{:.1f}"),
}


def _fmt(name: str, value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return _LABELS.get(name, (name, "{:.4g}"))[1].format(value)


def _json_safe(value: Any) -> Any:
    """Non-finite floats (PSNR of identical images) as strings: JSON has no inf/nan."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def markdown(report: EvalReport, *, title: str = "Evaluation", command: Optional[str] = None,
             source: Optional[dict[str, Any]] = None) -> str:
    """The report as a markdown document (table of metrics, then settings)."""
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += ["| metric | value | std over images |", "|---|---|---|"]
    for name, value in report.metrics.items():
        std = report.details.get(f"{name}_std")
        std_text = _fmt(name, std) if isinstance(std, float) else ""
        lines.append(f"| {_LABELS.get(name, (name,))[0]} | {_fmt(name, value)} | {std_text} |")
    for name, reason in report.unavailable.items():
        lines.append(f"| {_LABELS.get(name, (name,))[0]} | unavailable: {reason} | |")
    lines += ["", "## Settings", ""]
    for key, value in {**(source or {}), **report.details}.items():
        if key != "seconds" and not key.endswith("_std"):
            lines.append(f"- {key}: `{value}`")
    seconds = report.details.get("seconds") or {}
    if seconds:
        lines.append("- seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    if report.codebook is not None:
        lines += ["", f"![codebook histogram]({HISTOGRAM_NAME})"]
    return "\n".join(lines) + "\n"


def write_report(report: EvalReport, out_dir: Union[str, os.PathLike], *, title: str = "Evaluation",
                 command: Optional[str] = None, source: Optional[dict[str, Any]] = None) -> dict[str, Path]:
    """Write ``eval.json``, ``eval.md`` and (with codebook stats) the histogram PNG.

    ``source`` describes what was evaluated (checkpoint path, data spec...); it is
    stored in both files. Returns the written paths by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / JSON_NAME, "markdown": out / MARKDOWN_NAME}
    data = {"source": source or {}, "command": command, **report.to_dict()}
    write_json(paths["json"], _json_safe(data))
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown(report, title=title, command=command, source=source), encoding="utf-8")
    if report.codebook is not None:
        paths["histogram"] = out / HISTOGRAM_NAME
        report.codebook.save_histogram(paths["histogram"])
    return paths
