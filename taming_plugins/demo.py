"""``taming demo``: both stages of Taming Transformers end to end, small enough for a laptop.

:func:`run_demo` trains a small VQGAN on crops of the bundled photos (stage 1,
:class:`~taming_plugins.training.stage1.TokenizerTrainer`), a small GPT prior on their
tokens (stage 2, :class:`~taming_plugins.training.stage2.PriorTrainer`), composes the
two into a :class:`~taming_core.Pipeline` and writes into ``out``:

* ``reconstructions.png`` — held-out crops (top row) above their reconstructions;
* ``samples.png`` — unconditional samples on the training token grid;
* ``sliding_window.png`` — ``sampling.sliding_samples`` samples on a grid
  ``window_scale``² times the training window's area, drawn with the ``sliding_window``
  sampler;
* ``overview.png`` — the three above in one picture (the first sliding-window sample;
  the README's image);
* ``metrics.json`` — PSNR/SSIM on held-out crops, codebook usage % and perplexity,
  the prior's held-out perplexity, sampling tokens/s and the time of every phase;
* ``pipeline/`` — the trained pipeline (:meth:`Pipeline.save`), for ``taming sample``;
* ``tokenizer/`` and ``prior/`` — the two training runs (checkpoints, metrics.jsonl).

The defaults live in ``taming_plugins/configs/demo.yaml``; :func:`resolve_demo_config`
merges a user config and flag overrides into them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
from torch import Tensor

import taming_core
from taming_core import Pipeline, Prior, Sampler, Tokenizer
from taming_core.config import load_config, merge_configs
from taming_core.errors import ConfigError
from taming_core.io import write_json
from taming_core.validation import check_choice, check_positive

log = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = "demo.yaml"
DEFAULT_OUT = "runs/demo"
#: Top-level keys of a demo config; ``stage1``/``stage2`` are the trainers' run configs.
TOP_KEYS = ("data", "image_size", "seed", "device", "threads", "disc_start_fraction", "stage1", "stage2",
            "sampling", "eval")
SECTION_KEYS = {
    "sampling": ("window_scale", "sliding_policy", "sliding_samples"),
    "eval": ("val_images", "show_images", "sample_fid", "fid_samples"),
}
#: Number of metric records each training run logs (log interval = steps / this).
LOG_RECORDS = 20
#: Nearest-neighbour upscaling of the small demo images in ``overview.png``.
OVERVIEW_SCALE = 3
#: Gap between panels of ``overview.png`` in pixels, and its background (white).
OVERVIEW_GAP = 8
OVERVIEW_BACKGROUND = (255, 255, 255)
#: Caption strip above the panels of ``overview.png``: height, font size, colour (captions
#: use ASCII only: the default font has no "×").
OVERVIEW_CAPTION_HEIGHT = 24
OVERVIEW_FONT_SIZE = 14
OVERVIEW_TEXT = (0, 0, 0)
#: Images per batch when evaluating held-out crops.
EVAL_BATCH = 16
#: Output file names.
FILES = {"reconstructions": "reconstructions.png", "samples": "samples.png",
         "sliding_window": "sliding_window.png", "overview": "overview.png",
         "metrics": "metrics.json", "pipeline": "pipeline"}


@dataclass
class DemoResult:
    """What :func:`run_demo` produced: file paths by kind and the metrics written to JSON."""

    out: Path
    files: dict[str, Path]
    metrics: dict[str, Any] = field(default_factory=dict)
    pipeline: Optional[Pipeline] = None


# --------------------------------------------------------------------------- config
def default_demo_config() -> dict[str, Any]:
    """The shipped ``demo.yaml`` as a dict."""
    text = resources.files("taming_plugins.configs").joinpath(DEFAULT_CONFIG_FILE).read_text("utf-8")
    import yaml

    return dict(yaml.safe_load(text))



def resolve_demo_config(config: Optional[Union[Mapping[str, Any], str, Path]] = None,
                        **overrides: Any) -> dict[str, Any]:
    """Defaults + ``config`` (dict or YAML/JSON file) + ``overrides``, validated.

    ``overrides`` use dotted names with ``__`` for the dot, e.g.
    ``stage1__train__steps=100``, or top-level keys (``image_size=64``); ``None`` values
    are ignored. The ``stage1``/``stage2`` sections are validated as the trainers'
    run configs (:func:`stage1_config`/:func:`stage2_config` with a placeholder output).
    """
    cfg = default_demo_config()
    if config is not None:
        user = load_config(config)
        unknown = [k for k in user if k not in TOP_KEYS]
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown demo config key; expected one of {', '.join(TOP_KEYS)}")
        cfg = merge_configs(cfg, user)
    for name, value in overrides.items():
        if value is None:
            continue
        *parents, key = name.split("__")
        node = cfg
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = value
    for section, keys in SECTION_KEYS.items():
        extra = [k for k in cfg[section] if k not in keys]
        if extra:
            raise ConfigError(f"{section}.{extra[0]}: unknown key; expected one of {', '.join(keys)}")
    _validate(cfg)
    stage1_config(cfg, Path(DEFAULT_OUT), None, progress=False)
    stage2_config(cfg, Path(DEFAULT_OUT), progress=False)
    return cfg


def _validate(cfg: Mapping[str, Any]) -> None:
    if cfg["threads"] != "auto":
        check_positive(cfg["threads"], "threads")
    for path in ("image_size", "sampling.window_scale", "sampling.sliding_samples",
                 "eval.val_images", "eval.show_images", "eval.fid_samples"):
        section, _, key = path.partition(".")
        value = cfg[section][key] if key else cfg[section]
        check_positive(value, path)
    check_positive(cfg["seed"], "seed", allow_zero=True)
    fraction = cfg["disc_start_fraction"]
    if fraction is not None and (not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1):
        raise ConfigError(f"disc_start_fraction: expected a number in [0, 1] or null, got {fraction!r}")
    check_choice(cfg["sampling"]["sliding_policy"], "sampling.sliding_policy", ("cached", "taming"))
    for stage in ("stage1", "stage2"):
        if not isinstance(cfg[stage], Mapping):
            raise ConfigError(f"{stage}: expected a run config (a mapping), got {cfg[stage]!r}")


def _dataset_kwargs(data: str, length: int) -> dict[str, Any]:
    """``length`` only applies to the bundled photos (they are drawn, not enumerated); an
    image folder gives several crops per image (enough for a small folder's few held-out
    images too; the first items span every file)."""
    from taming_plugins.data import BUILTIN_DATASETS

    if str(data) == "photos":
        return {"length": length}
    return {} if str(data) in BUILTIN_DATASETS else {"crops_per_image": "auto"}


def _train_images(cfg: Mapping[str, Any]) -> int:
    return int(stage2_config(cfg, Path(DEFAULT_OUT), progress=False).data.max_items or 0)


def _prior_dataset(cfg: Mapping[str, Any]) -> Any:
    """The first ``stage2.data.max_items`` training images (the bundled photos draw that
    many crops; other data sets are cut, so Fashion-MNIST is not tokenized in full)."""
    from torch.utils.data import Subset

    from taming_plugins.data import get_dataset

    n = _train_images(cfg)
    dataset = get_dataset(cfg["data"], int(cfg["image_size"]), split="train",
                          **_dataset_kwargs(cfg["data"], n))
    return Subset(dataset, range(n)) if len(dataset) > n else dataset  # type: ignore[arg-type]


def _log_every(steps: int) -> int:
    return max(steps // LOG_RECORDS, 1)


def _stage_config(cls: Any, stage: str, run: Mapping[str, Any]) -> Any:
    """``cls.from_dict(run)``, with errors naming the demo section (``stage1.train.x``)."""
    try:
        return cls.from_dict(run)
    except ConfigError as exc:
        raise ConfigError(f"{stage}.{exc}") from None


# --------------------------------------------------------------------------- stages
def _shared(cfg: Mapping[str, Any], run: dict[str, Any], out: Path, progress: bool) -> dict[str, Any]:
    """Fill in the keys both demo runs share (data, size, seed, device, output, logging)."""
    import copy

    run = copy.deepcopy(run)
    data = run.setdefault("data", {})
    data.setdefault("train", str(cfg["data"]))
    data.setdefault("image_size", int(cfg["image_size"]))
    train = run.setdefault("train", {})
    train.update(seed=int(cfg["seed"]), device=str(cfg["device"]), out=str(out), progress=progress)
    steps = train.get("steps")
    if isinstance(steps, int) and steps > 0:
        every = _log_every(steps)
        train.setdefault("log_every", every)
        for key in ("image_every", "ckpt_every"):
            train.setdefault(key, steps)
    return run


def stage1_config(cfg: Mapping[str, Any], out: Path, perceptual: Optional[dict[str, Any]],
                  progress: bool) -> Any:
    """The :class:`~taming_plugins.training.config.TokenizerTrainConfig` of the demo
    tokenizer: the ``stage1`` run config, completed (``perceptual`` replaces the
    ``auto``/``none`` choice)."""
    from taming_plugins.training.config import TokenizerTrainConfig

    run = _shared(cfg, dict(cfg["stage1"]), out, progress)
    tokenizer = run.get("tokenizer")
    if isinstance(tokenizer, Mapping):
        run["tokenizer"] = {**tokenizer, "resolution": int(cfg["image_size"])}
    loss = dict(run.get("loss") or {"name": "vqgan"})
    loss["perceptual"] = perceptual
    steps = run["train"].get("steps")
    if cfg.get("disc_start_fraction") is not None and isinstance(steps, int):
        loss["disc_start"] = int(round(float(cfg["disc_start_fraction"]) * steps))
    run["loss"] = loss
    train = run["train"]
    train.setdefault("val_every", train.get("steps", 1))
    return _stage_config(TokenizerTrainConfig, "stage1", run)


def stage2_config(cfg: Mapping[str, Any], out: Path, progress: bool, *,
                  tokenizer: Optional[str] = None) -> Any:
    """The :class:`~taming_plugins.training.config.PriorTrainConfig` of the demo prior:
    the ``stage2`` run config, completed."""
    from taming_plugins.training.config import PriorTrainConfig

    run = _shared(cfg, dict(cfg["stage2"]), out, progress)
    if tokenizer is not None:
        run["tokenizer"] = tokenizer
    max_items = run["data"].get("max_items")
    if isinstance(max_items, int):
        run["data"].setdefault("train_kwargs", _dataset_kwargs(cfg["data"], max_items))
    return _stage_config(PriorTrainConfig, "stage2", run)


# --------------------------------------------------------------------------- measurements
@torch.no_grad()
def held_out_metrics(pipeline: Pipeline, images: Tensor, device: torch.device) -> dict[str, float]:
    """PSNR/SSIM/codebook statistics of the tokenizer and the prior's perplexity on
    held-out float N×3×H×W ``images`` (reuses :func:`taming_plugins.eval.evaluate`)."""
    from taming_plugins.eval import TensorImages, evaluate

    report = evaluate(pipeline.tokenizer, TensorImages(images), metrics=("psnr", "ssim", "usage"),
                      batch_size=EVAL_BATCH, device=device, progress=False)
    out = {"psnr_db": report.metrics["psnr"], "ssim": report.metrics["ssim"],
           "codebook_usage_pct": report.metrics["usage_pct"],
           "codebook_perplexity": report.metrics["perplexity"]}
    if pipeline.prior is not None:
        losses = []
        for batch in images.split(EVAL_BATCH):
            batch = batch.to(device)
            tokens = pipeline.tokenize(batch).reshape(batch.shape[0], -1)
            cond = pipeline.condition_tokens(None, batch.shape[0])
            losses.append(float(pipeline.prior.loss(tokens, condition=cond)) * batch.shape[0])
        mean = sum(losses) / images.shape[0]
        out["prior_val_loss"] = mean
        out["prior_perplexity"] = math.exp(mean)
    return out


@torch.no_grad()
def timed_sample(pipeline: Pipeline, sampler: Sampler, n: int, grid: tuple[int, int],
                 seed: int) -> tuple[Tensor, float]:
    """Sample ``n`` images on ``grid``; returns (images, sampled tokens per second).

    The timing covers the sampler only (not decoding), so it measures the prior.
    """
    assert pipeline.prior is not None
    device = next(pipeline.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    cond = pipeline.condition_tokens(None, n)
    start = time.perf_counter()
    tokens = sampler.sample(pipeline.prior, grid=grid, batch_size=n, condition=cond, generator=generator)
    elapsed = time.perf_counter() - start
    return pipeline.detokenize(tokens), n * grid[0] * grid[1] / max(elapsed, 1e-9)


def sampler_spec(cfg: Mapping[str, Any], vocab_limit: int, *, window: Optional[int] = None) -> dict[str, Any]:
    """The pipeline's sampler spec: ``stage2.sampler`` (``window=None``), or a
    sliding-window sampler with its ``temperature``/``top_k`` (``window`` given)."""
    base = dict(cfg["stage2"].get("sampler") or {"name": "autoregressive"})
    top_k = base.get("top_k")
    if isinstance(top_k, int):
        base["top_k"] = min(top_k, vocab_limit)
    base["vocab_limit"] = vocab_limit
    if window is None:
        return base
    common = {k: base[k] for k in ("temperature", "top_k", "vocab_limit") if k in base}
    return {"name": "sliding_window", "window": window, "policy": cfg["sampling"]["sliding_policy"],
            **common}


# --------------------------------------------------------------------------- images
def _to_pil(images: Tensor, nrow: int) -> Any:
    """Float B×3×H×W in [-1, 1] -> one PIL grid image (torchvision's make_grid, 2 px padding)."""
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(((images.detach().float().cpu() + 1) / 2).clamp(0, 1), nrow=nrow, pad_value=1.0)
    return Image.fromarray((grid.permute(1, 2, 0) * 255).round().byte().numpy())


def compose_overview(recon_grid: Tensor, samples: Tensor, sliding: Tensor, path: Path, nrow: int,
                     captions: tuple[str, str]) -> Path:
    """One PNG: inputs/reconstructions and samples (left), the large sliding-window sample
    (right), each under a one-line caption."""
    from PIL import Image, ImageDraw, ImageFont

    from taming_core.io import atomic_path

    left = _to_pil(torch.cat([recon_grid, samples]), nrow)
    left = left.resize((left.width * OVERVIEW_SCALE, left.height * OVERVIEW_SCALE), Image.NEAREST)
    side = left.height
    right = _to_pil(sliding[:1], 1).resize((side, side), Image.NEAREST)
    top = OVERVIEW_CAPTION_HEIGHT
    canvas = Image.new("RGB", (left.width + OVERVIEW_GAP + side, side + top), OVERVIEW_BACKGROUND)
    canvas.paste(left, (0, top))
    canvas.paste(right, (left.width + OVERVIEW_GAP, top))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=OVERVIEW_FONT_SIZE)
    for x, text in ((0, captions[0]), (left.width + OVERVIEW_GAP, captions[1])):
        draw.text((x + OVERVIEW_GAP // 2, top // 2), text, fill=OVERVIEW_TEXT, font=font, anchor="lm")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


# --------------------------------------------------------------------------- the demo
#: ``threads: auto`` uses at most this many torch threads.
AUTO_MAX_THREADS = 4


def choose_threads(setting: Any) -> tuple[int, str]:
    """(torch CPU threads, why): an int is used as given; ``"auto"`` takes the cores left
    free by other processes (CPU count minus the 1-minute load average, rounded), at
    least 1 and at most :data:`AUTO_MAX_THREADS`. On a 2-core machine where another
    process holds a core this gives 1: more threads than free cores make every step
    wait for the slowest thread (3-7 s per step instead of ~0.3 s)."""
    import os

    if setting != "auto":
        return int(setting), "from the config"
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        load = 0.0
    free = round(cores - load)
    threads = max(1, min(AUTO_MAX_THREADS, free))
    return threads, f"auto: {cores} CPU cores, load average {load:.1f}"


class PhaseTimer:
    """Wall-clock and process CPU seconds of named phases (CPU time shows the cost of a
    run independently of other load on a shared machine)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = round(time.perf_counter() - wall, 2)
            self.cpu[name] = round(time.process_time() - cpu, 2)


def _train(cfg: Mapping[str, Any], out: Path, progress: bool,
           timer: PhaseTimer) -> tuple[Pipeline, dict[str, Any]]:
    """Stage 1 then stage 2; returns the composed pipeline and the choices made on this
    machine (perceptual loss, stage-1 bf16 autocast) for ``metrics.json``."""
    from taming_plugins.training.stage1 import TokenizerTrainer
    from taming_plugins.training.stage2 import PriorTrainer

    from taming_plugins.losses.lpips import perceptual_choice

    perceptual, perceptual_text = perceptual_choice((cfg["stage1"].get("loss") or {}).get("perceptual"),
                                                    "stage1.loss.perceptual")
    config1 = stage1_config(cfg, out / "tokenizer", perceptual, progress)
    log.info("stage 1/2: training the tokenizer (%d steps; perceptual loss: %s)",
             config1.train.steps, perceptual_text)
    with timer.phase("stage1"):  # the demo's own sub-runs are replaced on a re-run
        trainer1 = TokenizerTrainer(config1)
        trainer1.fit(overwrite=True)
    tokenizer: Tokenizer = trainer1.tokenizer.eval()
    config2 = stage2_config(cfg, out / "prior", progress)
    log.info("stage 2/2: training the prior (%d steps on the tokens of %s crops)",
             config2.train.steps, config2.data.max_items)
    with timer.phase("stage2"):
        trainer2 = PriorTrainer(config2, tokenizer=tokenizer)
        trainer2.fit(overwrite=True)
    prior: Prior = trainer2.prior.eval()
    grid = (int(trainer2.cache.grid[0]), int(trainer2.cache.grid[1]))
    sampler = taming_core.create("sampler", **sampler_spec(cfg, tokenizer.vocab_size))
    pipeline = Pipeline(tokenizer, prior, sampler, trainer2.conditioner,
                        cond_offset=trainer2.layout.cond_offset, grid=grid)
    return pipeline.eval(), {"perceptual_loss": perceptual_text, "stage1_bf16": bool(trainer1.bf16)}


def run_demo(config: Optional[Union[Mapping[str, Any], str, Path]] = None,
             out: Union[str, Path] = DEFAULT_OUT,
             *, progress: bool = True, **overrides: Any) -> DemoResult:
    """Train both stages and write the demo outputs into ``out`` (see the module docstring).

    ``config`` and ``overrides`` are merged into the defaults by :func:`resolve_demo_config`.
    """
    from taming_plugins.training.runtime import resolve_device, seed_everything
    from taming_plugins.data import get_dataset
    from taming_plugins.training.artifacts import save_image_grid

    cfg = resolve_demo_config(config, **overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {k: out / v for k, v in FILES.items()}
    device = resolve_device(str(cfg["device"]))
    threads, threads_reason = choose_threads(cfg["threads"])
    torch.set_num_threads(threads)
    log.warning("taming demo: %d torch thread(s) (%s)", threads, threads_reason)
    seed_everything(int(cfg["seed"]))
    seed, timer = int(cfg["seed"]), PhaseTimer()
    with timer.phase("total"):
        pipeline, choices = _train(cfg, out, progress, timer)
        pipeline.save(files["pipeline"])
        grid = pipeline.grid
        assert grid is not None
        with timer.phase("eval"):
            val = get_dataset(cfg["data"], int(cfg["image_size"]), split="val",
                              **_dataset_kwargs(cfg["data"], int(cfg["eval"]["val_images"])))
            n_val = min(int(cfg["eval"]["val_images"]), len(val))  # type: ignore[arg-type]
            log.info("evaluating on %d held-out crops and sampling", n_val)  # the true count
            images = torch.stack([val[i] for i in range(n_val)])
            metrics: dict[str, Any] = held_out_metrics(pipeline, images, device)
            shown = images[:int(cfg["eval"]["show_images"])].to(device)
            recon_grid = torch.cat([shown, pipeline.reconstruct(shown)[0]])
            save_image_grid(recon_grid, files["reconstructions"], nrow=shown.shape[0])
        with timer.phase("sampling"):
            n_shown = max(int(stage2_config(cfg, out, False).train.num_samples), 1)
            with_fid = bool(cfg["eval"].get("sample_fid", True))
            n_samples = max(n_shown, int(cfg["eval"]["fid_samples"]) if with_fid else 0)
            samples, metrics["sampling_tokens_per_s"] = timed_sample(
                pipeline, pipeline.sampler, n_samples, grid, seed)
            save_image_grid(samples[:n_shown], files["samples"], nrow=shown.shape[0])
            scale = int(cfg["sampling"]["window_scale"])
            big = (grid[0] * scale, grid[1] * scale)
            sliding_sampler = taming_core.create(
                "sampler", **sampler_spec(cfg, pipeline.tokenizer.vocab_size, window=min(grid)))
            sliding, metrics["sliding_window_tokens_per_s"] = timed_sample(
                pipeline, sliding_sampler, int(cfg["sampling"]["sliding_samples"]), big, seed)
            save_image_grid(sliding, files["sliding_window"], nrow=sliding.shape[0])
            captions = (f"held-out crops / reconstructions / samples ({grid[0]}x{grid[1]} tokens)",
                        f"sliding window, {big[0]}x{big[1]} tokens")
            compose_overview(recon_grid, samples[:n_shown], sliding, files["overview"], nrow=shown.shape[0],
                             captions=captions)
        with timer.phase("figures"):  # colours, border frames, sample FID (taming_plugins.eval.figures)
            from taming_plugins.eval.figures import picture_figures

            recon_all = torch.cat([pipeline.reconstruct(b.to(device))[0].cpu() for b in images.split(EVAL_BATCH)])
            train_crops = None
            if with_fid:  # the yardstick: as many real training crops against the same held-out crops
                train = get_dataset(cfg["data"], int(cfg["image_size"]), split="train",
                                    **_dataset_kwargs(cfg["data"], samples.shape[0]))
                train_crops = torch.stack([train[i] for i in range(min(samples.shape[0], len(train)))])
            metrics.update(picture_figures(images, recon_all, samples, sliding,
                                           ring=pipeline.tokenizer.downsample_factor, device=device,
                                           fid=with_fid, fid_count=samples.shape[0], train_crops=train_crops))
    metrics["seconds"] = dict(timer.wall)
    metrics["cpu_seconds"] = dict(timer.cpu)
    metrics["settings"] = {
        "data": str(cfg["data"]), "image_size": int(cfg["image_size"]), "token_grid": list(grid),
        "sliding_window_grid": list(big), "sliding_window": min(grid),
        "sliding_policy": cfg["sampling"]["sliding_policy"], "codebook_size": pipeline.tokenizer.vocab_size,
        "stage1_steps": int(stage1_config(cfg, out, None, False).train.steps),
        "stage2_steps": int(stage2_config(cfg, out, False).train.steps),
        **choices, "val_images": n_val, "device": str(device),
        "threads": torch.get_num_threads(), "threads_choice": threads_reason, "seed": seed,
        "torch": torch.__version__,
    }
    write_json(files["metrics"], metrics)
    return DemoResult(out=out, files=files, metrics=metrics, pipeline=pipeline)


#: Rows of the printed summary: (label, metrics key, format).
SUMMARY_ROWS = (
    ("held-out PSNR (dB)", "psnr_db", "{:.2f}"),
    ("held-out SSIM", "ssim", "{:.3f}"),
    ("colour shift (mean per-channel error)", "colour_err", "{:.4f}"),
    ("border / interior error (<= 1.5)", "border_ratio", "{:.2f}"),
    ("worst edge / interior error", "worst_edge_ratio", "{:.2f}"),
    ("sliding-window edge / interior (<= 1.5)", "sliding_edge_ratio", "{:.2f}"),
    ("sliding-window worst edge shift (std)", "sliding_worst_edge_shift", "{:.2f}"),
    ("  the same of real held-out crops (reference)", "reference_worst_edge_shift", "{:.2f}"),
    ("sample FID vs held-out crops (few images!)", "sample_fid", "{:.1f}"),
    ("  the same of real training crops (yardstick)", "train_crops_fid", "{:.1f}"),
    ("codebook usage (%)", "codebook_usage_pct", "{:.1f}"),
    ("codebook perplexity", "codebook_perplexity", "{:.1f}"),
    ("prior held-out perplexity", "prior_perplexity", "{:.1f}"),
    ("sampling (tokens/s)", "sampling_tokens_per_s", "{:.0f}"),
    ("sliding-window sampling (tokens/s)", "sliding_window_tokens_per_s", "{:.0f}"),
)


def summary_table(result: DemoResult) -> str:
    """A plain-text table of the headline metrics, timings and output files."""
    m = result.metrics
    rows = [(label, fmt.format(m[key])) for label, key, fmt in SUMMARY_ROWS if key in m]
    settings = m.get("settings", {})
    if settings:
        rows.append(("token grid / sliding-window grid",
                     f"{'×'.join(map(str, settings['token_grid']))} / "
                     f"{'×'.join(map(str, settings['sliding_window_grid']))}"))
        rows.append(("perceptual loss", str(settings["perceptual_loss"]).split(" (")[0]))
        if "stage1_bf16" in settings:
            rows.append(("stage-1 bf16 autocast", "on" if settings["stage1_bf16"] else "off"))
        if "threads" in settings:
            rows.append(("torch threads", f"{settings['threads']} ({settings.get('threads_choice', '')})"))
    cpu = m.get("cpu_seconds", {})
    rows += [(f"time: {k} (s, wall / cpu)", f"{v:.1f} / {cpu[k]:.1f}" if k in cpu else f"{v:.1f}")
             for k, v in m.get("seconds", {}).items()]
    width = max(len(r[0]) for r in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    lines.append("")
    lines += [f"wrote {path}" for path in result.files.values()]
    return "\n".join(lines)
