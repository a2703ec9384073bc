"""Sampler settings of the demo's prior, side by side: FID of samples against held-out crops.

Loads a trained demo pipeline (``runs/demo/pipeline`` after ``make demo``), draws
``--samples`` images per setting of ``top_k`` × ``temperature`` with the autoregressive
sampler (same seed for every setting), and reports the FID of each set against the
demo's held-out crops (a photo never trained on) and, as a yardstick, the FID of as many
*training* crops against the same held-out crops.

FID from a few dozen images is biased upwards and noisy: compare rows of one run, never
with FIDs of other sample sizes.

Usage::

    python -m benchmarks.demo_sampling --pipeline runs/demo/pipeline --samples 64

Writes ``benchmarks/results/demo_sampling.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import time

import torch

DEFAULT_TOP_K = (16, 32, 64, 0)
DEFAULT_TEMPERATURES = (0.8, 0.9, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="runs/demo/pipeline")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--top-k", default=",".join(map(str, DEFAULT_TOP_K)),
                        help="comma-separated; 0 = no top-k")
    parser.add_argument("--temperatures", default=",".join(map(str, DEFAULT_TEMPERATURES)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import taming_core
    from benchmarks._common import write_results
    from taming_plugins.data import get_dataset
    from taming_plugins.eval.fid import FidFeatureExtractor, stats_of

    pipeline = taming_core.Pipeline.load(args.pipeline).eval()
    grid = pipeline.grid
    assert grid is not None
    size = grid[0] * pipeline.tokenizer.downsample_factor
    n = args.samples
    held_out = torch.stack([get_dataset("photos", size, split="val", length=n)[i] for i in range(n)])
    train = torch.stack([get_dataset("photos", size, split="train", length=n, seed=123)[i] for i in range(n)])
    extractor = FidFeatureExtractor()
    ref = stats_of(extractor, [held_out], "ref")
    rows = [{"setting": f"training crops ({n}, yardstick)", "top_k": "", "temperature": "",
             "fid": round(extractor.fid(ref, stats_of(extractor, [train], "eval")), 1), "seconds": ""}]
    print(rows[-1], flush=True)
    vocab = pipeline.tokenizer.vocab_size
    for top_k in (int(k) for k in args.top_k.split(",")):
        for temperature in (float(t) for t in args.temperatures.split(",")):
            sampler = taming_core.create("sampler", "autoregressive", temperature=temperature,
                                         top_k=top_k or None, vocab_limit=vocab)
            start = time.perf_counter()
            with torch.no_grad():
                tokens = sampler.sample(pipeline.prior, grid, batch_size=n,
                                        condition=pipeline.condition_tokens(None, n),
                                        generator=torch.Generator().manual_seed(args.seed))
                images = pipeline.detokenize(tokens).clamp(-1, 1)
            seconds = round(time.perf_counter() - start, 1)
            fid = extractor.fid(ref, stats_of(extractor, [images.float()], "eval"))
            rows.append({"setting": "samples", "top_k": top_k or "all", "temperature": temperature,
                         "fid": round(fid, 1), "seconds": seconds})
            print(rows[-1], flush=True)
    write_results("demo_sampling", rows, columns=["setting", "top_k", "temperature", "fid", "seconds"],
                  title="Demo prior: sampler settings by sample FID (held-out crops as reference)",
                  notes=[f"pipeline {args.pipeline}; {n} samples per row against {n} held-out {size}-px crops "
                         f"of a photo never trained on; seed {args.seed}; {args.threads} torch thread(s)",
                         "FID from this few images is biased upwards and noisy: compare rows of this table only"])


if __name__ == "__main__":
    main()
