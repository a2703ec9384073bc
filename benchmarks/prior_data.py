"""Stage-2 input pipeline: the memory-mapped token cache vs tokenizing every batch.

The stage-2 trainer tokenizes the dataset once (``taming_plugins.training.token_cache``)
and then reads token rows from a memory-mapped ``.npy``. This script measures, side by
side in one process (round-robin timing), the time to get one batch of token sequences

* ``on-the-fly``: load the images and run the frozen tokenizer's encoder (what a
  trainer without a cache does every step, as the original Net2NetTransformer does);
* ``token cache``: read the rows from the memmap;

and, for scale, one optimizer step of a small GPT prior on such a batch. The
tokenizer is the original-format reference VQGAN in ``tests/fixtures`` (f4, 64 codes).

Run: ``python -m benchmarks.prior_data [--quick] [--threads N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import taming_core
from benchmarks._common import time_interleaved, write_results
from taming_plugins.data import BundledPhotos
from taming_plugins.training.stage2 import load_frozen_tokenizer
from taming_plugins.training.token_cache import build_token_cache

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "taming_reference" / "vqgan_f4.ckpt"
IMAGE_SIZE = 32
PRIOR = {"n_layer": 2, "n_head": 4, "n_embd": 128}
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small dataset, few repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_items, repeats = (64, 3) if args.quick else (512, 7)
    torch.manual_seed(SEED)
    tokenizer = load_frozen_tokenizer(FIXTURE)
    photos = BundledPhotos(IMAGE_SIZE, length=n_items, seed=SEED)
    rng = np.random.default_rng(SEED)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = build_token_cache(tokenizer, photos, tmp, data={"bench": n_items}, progress=False)
        build_s = time.perf_counter() - t0
        vocab, seq = tokenizer.vocab_size + 1, cache.tokens.shape[1] + 1
        prior = taming_core.create("prior", "gpt", vocab_size=vocab, block_size=seq, **PRIOR)
        opt = prior.configure_optimizers(lr=1e-4)

        def rows() -> list[int]:
            return rng.integers(0, n_items, size=args.batch_size).tolist()

        @torch.no_grad()
        def on_the_fly() -> torch.Tensor:
            images = torch.stack([photos[i] for i in rows()])
            return tokenizer.encode(images).indices.flatten(1)

        def cached() -> torch.Tensor:
            return cache.batch(rows())[0]

        def prior_step() -> None:
            tokens = torch.cat([torch.full((args.batch_size, 1), vocab - 1), cached()], dim=1)
            loss = prior.loss(tokens)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        times = time_interleaved({"on-the-fly": on_the_fly, "token cache": cached,
                                  "gpt step": prior_step}, repeats=repeats)
    base = times["on-the-fly"]["median"]
    rows_out = [{"method": name, "ms_per_batch": 1e3 * t["median"],
                 "speedup_vs_on_the_fly": base / t["median"], "runs": int(t["runs"])}
                for name, t in times.items()]
    notes = [f"batch {args.batch_size} sequences of {cache.tokens.shape[1]} tokens "
             f"({IMAGE_SIZE}px images, f{tokenizer.downsample_factor} reference VQGAN); "
             f"dataset of {n_items} photo crops",
             f"building the cache once took {build_s:.2f} s "
             f"({1e3 * build_s / n_items:.2f} ms per image)",
             f"gpt step: {PRIOR} forward+backward+AdamW on a cached batch (for scale)",
             "methods ran round-robin in one process on a shared machine: ratios are side by side"]
    write_results("prior_data", rows_out, columns=["method", "ms_per_batch", "speedup_vs_on_the_fly", "runs"],
                  title="Stage-2 input: token cache vs tokenizing each batch", notes=notes,
                  meta={"n_items": n_items, "batch_size": args.batch_size, "cache_build_s": build_s})


if __name__ == "__main__":
    main()
