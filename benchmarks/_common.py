"""Small shared toolkit for the benchmark scripts under ``benchmarks/``.

Every benchmark is a script run as ``python -m benchmarks.<name> [--quick]`` that
prints a table and writes ``benchmarks/results/<name>.json`` and ``<name>.md``.
This module gives them the same timing, memory and reporting conventions:

* :func:`time_interleaved` - median wall time of several methods, run round-robin
  (one call of each method per round, rotating the order) so that load from other
  processes on a shared machine hits all methods alike and their *ratios* stay fair.
  :func:`time_median` is the one-method shortcut.  CUDA work is synchronised.
* :func:`peak_memory` - extra peak memory of one call, in bytes, on the current
  process: ``torch.cuda.max_memory_allocated`` on CUDA, the kernel's resident-set
  high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) on CPU.
* :func:`run_in_fresh_process` - run a picklable top-level function in a new
  interpreter.  Use it for CPU memory figures: in a long-lived process freed memory
  stays in the allocator's heap and a later method would reuse it without the RSS
  growing, so per-method fresh processes give honest, independent peaks.
* :func:`write_results` - print the table and atomically write JSON (rows plus
  environment) and a markdown page that records the exact command line.

Example::

    from benchmarks._common import time_interleaved, write_results

    times = time_interleaved({"a": f, "b": g}, repeats=5, device=dev)
    write_results("mybench", rows, columns=["case", "method", "ms"], title="My bench")
"""

from __future__ import annotations

import datetime as _dt
import gc
import logging
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from taming_core.io import atomic_path, write_json

log = logging.getLogger(__name__)

#: Where every benchmark writes its ``<name>.json`` / ``<name>.md``.
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Bytes per KiB, as ``/proc`` reports memory in kB.
KIB = 1024
#: Bytes per MiB, for table columns.
MIB = 1024 * 1024
#: Writing this to ``/proc/self/clear_refs`` resets the peak RSS (Linux >= 4.0).
_CLEAR_REFS_RESET_PEAK = "5"

Device = Union[str, torch.device, None]


def _sync(device: Device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: Device = None,
    max_seconds: Optional[float] = None,
) -> dict[str, dict[str, float]]:
    """Median/min wall time in seconds of each zero-argument callable.

    Methods run round-robin: each round calls every method once, and the order
    rotates from round to round.  ``max_seconds`` stops adding rounds once that
    much time was spent (at least one timed round always runs).

    Returns ``{name: {"median": s, "min": s, "runs": n}}``.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
        _sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for rnd in range(repeats):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for name in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return {name: {"median": statistics.median(ts), "min": min(ts), "runs": float(len(ts))}
            for name, ts in times.items()}


def time_median(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1,
                device: Device = None) -> float:
    """Median wall time in seconds of ``fn()`` (CUDA-synchronised)."""
    return time_interleaved({"fn": fn}, repeats=repeats, warmup=warmup, device=device)["fn"]["median"]


def _read_status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _trim_heap() -> None:
    """Give freed heap memory back to the OS so the RSS baseline is tight (glibc only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn: Callable[[], Any], device: Device = None) -> int:
    """Extra peak memory in bytes used while ``fn()`` runs, above what was held before.

    CUDA: allocator statistics (exact for PyTorch allocations).  CPU: resident-set
    high-water mark on Linux; run it in a fresh process (:func:`run_in_fresh_process`)
    so memory freed by earlier work cannot hide the growth.  The result of ``fn`` is
    dropped before returning.
    """
    gc.collect()
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del out
        return max(0, peak - base)
    _trim_heap()
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write(_CLEAR_REFS_RESET_PEAK)
    base = _read_status_kib("VmRSS")
    out = fn()
    peak = _read_status_kib("VmHWM")
    del out
    return max(0, peak - base) * KIB


def run_in_fresh_process(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` in a new ``spawn``-ed interpreter and return its result.

    ``fn`` must be a top-level (picklable) function and the calling script must guard
    its entry point with ``if __name__ == "__main__":``.  The child inherits the
    environment, so set thread counts inside ``fn``.
    """
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(fn, args, kwargs)


def environment(device: Device = None) -> dict[str, Any]:
    """Machine/library facts worth recording next to every figure."""
    env: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    if device is not None and torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line() -> str:
    """The command that is running, as a user would retype it (``python -m ...``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", sys.argv[0]]
    return shlex.join(head + sys.argv[1:])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns`` (floats to 3 significant digits)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_results(
    name: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str],
    title: str,
    notes: Sequence[str] = (),
    meta: Optional[Mapping[str, Any]] = None,
    device: Device = None,
    results_dir: Optional[Path] = None,
) -> tuple[Path, Path]:
    """Print the table and write ``<name>.json`` and ``<name>.md`` under ``results_dir``.

    The JSON holds the command, the environment, ``meta`` and every row (all keys,
    not only ``columns``); the markdown holds the title, the command, the
    environment, ``notes`` (one bullet each) and the table.
    """
    out_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    cmd = command_line()
    env = environment(device)
    table = format_table(rows, columns)
    print(table)
    json_path = out_dir / f"{name}.json"
    md_path = out_dir / f"{name}.md"
    write_json(json_path, {"command": cmd, "environment": env, "meta": dict(meta or {}),
                           "rows": [dict(r) for r in rows]})
    env_lines = [f"- {k}: {v}" for k, v in env.items()]
    note_lines = [f"- {n}" for n in notes]
    md = "\n".join([f"# {title}", "", "Command:", "", "```", cmd, "```", "",
                    "Environment:", "", *env_lines, "", *(note_lines + [""] if note_lines else []),
                    table, ""])
    with atomic_path(md_path) as tmp:
        tmp.write_text(md, encoding="utf-8")
    log.info("wrote %s and %s", json_path, md_path)
    return json_path, md_path
