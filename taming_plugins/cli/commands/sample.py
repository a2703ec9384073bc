"""``taming sample``: draw images from a saved pipeline, as PNG files and one grid.

Usage::

    taming sample --pipeline runs/demo/pipeline --n 16 --out samples
    taming sample --pipeline DIR --grid 16 16 --sampler sliding_window --window 8 --top-k 64
    taming sample --prior runs/prior [--tokenizer runs/tok] --n 8 --out samples
    taming sample --pipeline runs/cls/pipeline --label cat --n 8 --out cats
    taming sample --pipeline DIR --sampler maskgit --steps 12 --schedule cosine
    taming sample --pipeline hf://FoundationVision/LlamaGen/c2i_B_256.pt \
        --tokenizer hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt --label 207 --guidance-scale 4

Writes OUT/sample_0000.png ... and OUT/grid.png. ``--prior`` composes the pipeline from a
train-prior run (its latest checkpoint, its stored conditioner, layout and grid) and
the tokenizer it was trained with, or the one given. ``--label`` takes a class name
stored in the pipeline (class folders) or a class id. An existing ``--out`` must be
empty or written by ``taming sample`` (whose old files are removed first). Batch ``i`` is drawn with seed
``--seed + i``, so a run is reproducible. The pipeline's own sampler is used unless
``--sampler`` (or a sampling option) is given; a grid larger than the prior's context
switches to ``sliding_window`` automatically (window: the pipeline's grid).

Exit codes: 0 success, 1 runtime failure (one line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, Optional

from ..common import (add_device_flag, add_seed_flag, add_verify_flag, check_plugin_options,
                      resolve_device, seed_everything)

log = logging.getLogger(__name__)

DEFAULT_N = 16
DEFAULT_BATCH = 16
DEFAULT_OUT = "samples"
GRID_FILE = "grid.png"
SLIDING = "sliding_window"
#: Sampler options the flags can set (flag dest == sampler keyword).
SAMPLER_OPTIONS = ("temperature", "top_k", "top_p", "window", "policy", "steps", "schedule")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample images from a saved pipeline (PNG files + a grid)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--pipeline", metavar="REF", help="directory written by Pipeline.save "
                       "(e.g. runs/demo/pipeline, or OUT/pipeline of train-prior), a Hub repo "
                       "owner/name[@rev], or an original prior file (local or hf://owner/name/file.pt; "
                       "then also --tokenizer)")
    add_verify_flag(p)
    model.add_argument("--prior", metavar="RUN", help="a train-prior run directory (or one of its "
                       "step_* checkpoints)")
    p.add_argument("--tokenizer", metavar="RUN_OR_CKPT", help="with --prior: the tokenizer (default: "
                   "the one the run was trained with); with an original prior file as --pipeline: its "
                   "tokenizer file or Hub reference (e.g. hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt)")
    p.add_argument("--config", metavar="CFG", help="with an original file as --pipeline: its config "
                   "(LlamaGen preset name or ModelArgs JSON/YAML; taming YAML)")
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"number of samples (default {DEFAULT_N})")
    p.add_argument("--grid", type=int, nargs=2, metavar=("H", "W"),
                   help="token grid (default: the pipeline's grid)")
    p.add_argument("--sampler", help="registered sampler name (default: the pipeline's sampler)")
    p.add_argument("--temperature", type=float, help="softmax temperature")
    p.add_argument("--top-k", type=int, help="keep the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--window", type=int, help="sliding_window: window edge in tokens")
    p.add_argument("--policy", choices=("taming", "cached"), help="sliding_window: window placement")
    p.add_argument("--steps", type=int, help="maskgit: parallel decoding steps (default 12)")
    p.add_argument("--schedule", choices=("cosine", "linear", "square"), help="maskgit: masking schedule")
    p.add_argument("--label", metavar="NAME|ID", help="class name or id for a class-conditional pipeline")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (with --label; "
                   "the unconditional branch uses the conditioner's null condition)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                   help=f"samples per sampler call (default {DEFAULT_BATCH})")
    p.add_argument("--nrow", type=int, help="images per row of grid.png (default: about square)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    add_device_flag(p)
    add_seed_flag(p)
    p.set_defaults(func=run, _parser=p)


def _check_args(args: argparse.Namespace) -> None:
    parser: argparse.ArgumentParser = args._parser
    for flag in ("n", "batch_size", "top_k", "window", "nrow", "steps"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    if args.grid is not None and min(args.grid) <= 0:
        parser.error(f"--grid must be two positive token counts, got {args.grid}")
    if args.temperature is not None and args.temperature <= 0:
        parser.error(f"--temperature must be > 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error(f"--top-p must lie in (0, 1], got {args.top_p}")
    if args.config is not None and args.pipeline is None:
        parser.error("--config goes with an original file as --pipeline")


def build_sampler(pipeline: Any, args: argparse.Namespace, grid: tuple[int, int]) -> Any:
    """The sampler the flags ask for (None: keep the pipeline's own)."""
    import taming_core

    options = {k: getattr(args, k, None) for k in SAMPLER_OPTIONS if getattr(args, k, None) is not None}
    if getattr(args, "guidance_scale", None) is not None:  # absent from hand-made Namespaces
        options["guidance_scale"] = args.guidance_scale
    name = args.sampler
    block = pipeline.prior.block_size
    cond_len = 1 if pipeline.conditioner is not None else 0
    if name is None and pipeline.prior.family == "autoregressive" and grid[0] * grid[1] + cond_len - 1 > block:
        name = SLIDING
        log.info("grid %d×%d exceeds the prior's context (block size %d): using %s", *grid, block, SLIDING)
    base = taming_core.spec_of(pipeline.sampler) if pipeline.sampler is not None else None
    if name is None and not options:
        return None
    if name is None:
        name = base["name"] if base is not None else pipeline.prior.default_sampler
    spec: dict[str, Any] = {}
    if base is not None and base["name"] == name:
        spec = {k: v for k, v in base.items() if k not in ("name", "kind")}
    elif base is not None:  # carry the shared sampling options over to the new sampler
        spec = {k: base[k] for k in ("temperature", "top_k", "top_p", "vocab_limit")
                if k in base and _takes(name, k)}
    check_plugin_options("sampler", name, options, getattr(args, "_parser", None))
    spec.update(options)
    if name == SLIDING and "window" not in spec:
        default_grid = pipeline.grid or grid
        spec["window"] = min(default_grid)
    if _takes(name, "vocab_limit"):
        spec.setdefault("vocab_limit", pipeline.tokenizer.vocab_size)
    if spec.get("guidance_scale", 1.0) != 1.0:
        spec["null_condition"] = _null_condition(pipeline, args.label)
    return taming_core.create("sampler", name, **spec)


def _null_condition(pipeline: Any, label: Optional[str]) -> Any:
    """The guidance null condition: the conditioner's null id in place of each token of
    --label's condition tokens (shifted like them)."""
    if label is None or pipeline.conditioner is None or pipeline.conditioner.null_id is None:
        raise ValueError("--guidance-scale needs --label and a conditioner with a null condition "
                         "(e.g. class_label with null_token)")
    tokens = pipeline.condition_tokens(_condition(resolve_label(pipeline, label), 1), 1)
    return pipeline.conditioner.null_condition(tokens - pipeline.cond_offset) + pipeline.cond_offset


def _takes(sampler: str, option: str) -> bool:
    """Whether the registered sampler accepts ``option`` (plugin samplers may not)."""
    import taming_core
    from taming_core.registry import accepted_arguments

    try:
        accepted = accepted_arguments("sampler", sampler)
    except taming_core.RegistryError:
        return True  # create() reports the unknown name
    return accepted is None or option in accepted


def resolve_label(pipeline: Any, label: Optional[str]) -> Optional[int]:
    """The class id of ``--label`` (a stored class name or an id); None without one."""
    from taming_plugins.conditioning.class_label import ClassLabelConditioner

    if label is None:
        if isinstance(pipeline.conditioner, ClassLabelConditioner):
            names = pipeline.conditioner.class_names
            known = ", ".join(names) if names else f"ids 0..{pipeline.conditioner.num_classes - 1}"
            raise ValueError(f"--label is required: the pipeline is class-conditional ({known})")
        return None
    if not isinstance(pipeline.conditioner, ClassLabelConditioner):
        kind = type(pipeline.conditioner).__name__ if pipeline.conditioner is not None else "no conditioner"
        raise ValueError(f"--label: this pipeline takes no condition ({kind}; not class-conditional)")
    try:
        return pipeline.conditioner.label_of(label)
    except ValueError as exc:
        raise ValueError(f"--label: {exc}") from None


def _condition(label: Optional[int], n: int) -> Any:
    if label is None:
        return None
    import torch

    return torch.full((n,), int(label), dtype=torch.long)


def _with_progress(pipeline: Any, sampler: Any, callback: Any) -> Any:
    """``sampler`` (or the pipeline's own) rebuilt with a progress callback, when its
    class takes one; else unchanged."""
    import inspect

    import taming_core

    base = sampler if sampler is not None else pipeline.sampler
    spec = taming_core.spec_of(base) if base is not None else None
    if spec is None or "progress" not in inspect.signature(taming_core.get("sampler", spec["name"])).parameters:
        return sampler
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "kind", "progress")}
    return taming_core.create("sampler", spec["name"], **kwargs, progress=callback)


def load_model(args: argparse.Namespace, device: Any) -> Any:
    """The pipeline of ``--pipeline``, or composed from ``--prior`` (+ ``--tokenizer``)."""
    import taming_core
    from taming_plugins.training.artifacts import pipeline_from_runs

    if args.pipeline is not None:  # a saved pipeline, a Hub repo or an original file
        return taming_core.Pipeline.from_pretrained(args.pipeline, tokenizer=args.tokenizer,
                                                    config=args.config, map_location=device,
                                                    verify=args.verify)
    return pipeline_from_runs(args.prior, args.tokenizer, device=device)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    import torch

    from taming_plugins.training.artifacts import save_image_grid

    from tqdm.auto import tqdm

    from ._outdir import prepare_out

    out = prepare_out(args.out, "sample", ("sample_*.png", GRID_FILE))
    device = resolve_device(args.device)
    seed_everything(args.seed)
    pipeline = load_model(args, device)
    source = args.pipeline or args.prior
    if pipeline.prior is None:
        raise ValueError(f"{source}: this pipeline has no prior; nothing to sample")
    grid = tuple(args.grid) if args.grid is not None else pipeline.grid
    if grid is None:
        raise ValueError(f"{source}: the pipeline has no default grid; give --grid H W")
    label = resolve_label(pipeline, args.label)
    per_image = grid[0] * grid[1]
    bar = tqdm(total=args.n * per_image, desc="sampling", unit="tok", disable=args.no_progress or not sys.stderr.isatty(),
               mininterval=1.0, leave=False)
    done, current = [0], [0]  # tokens of finished batches, images in the current batch

    def progress(step: int, total: int) -> None:  # called by the sampler after every token
        bar.update(done[0] + step * current[0] - bar.n)

    sampler = _with_progress(pipeline, build_sampler(pipeline, args, grid), progress)
    images, start = [], time.perf_counter()
    try:
        for i, first in enumerate(range(0, args.n, args.batch_size)):
            count = current[0] = min(args.batch_size, args.n - first)
            batch = pipeline.generate(count, grid=grid, condition=_condition(label, count),
                                      seed=args.seed + i, sampler=sampler)
            done[0] += count * per_image
            for j, image in enumerate(batch):
                save_image_grid(image[None], out / f"sample_{first + j:04d}.png", nrow=1)
            images.append(batch.cpu())
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    everything = torch.cat(images)
    nrow = args.nrow or max(1, round(args.n ** 0.5))
    save_image_grid(everything, out / GRID_FILE, nrow=nrow)
    tokens = args.n * grid[0] * grid[1]
    what = "" if label is None else f" of class {args.label!r} (id {label})"
    print(f"wrote {args.n} samples{what} ({grid[0]}×{grid[1]} tokens, {tuple(everything.shape[-2:])} "
          f"pixels) and {out / GRID_FILE}; {tokens / elapsed:.0f} tokens/s including decoding")
    return 0
