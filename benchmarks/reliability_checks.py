"""Cost of the issue-12 checks: per-step boundary checks and pipeline verification.

Measured side by side in one process (round-robin timing):

* ``quantizer output check``: :func:`taming_core.validation.check_quantizer_output`,
  which the VQGAN tokenizer runs on every ``encode`` (training steps included), next to
  one ``encode`` of a batch by a small VQGAN, for scale;
* ``Pipeline.load``: a saved pipeline (a VQGAN + a GPT prior of ``--prior-mb`` MiB of
  fp32 weights) loaded with ``verify=True`` (SHA-256 of the weights and of the model
  config) and ``verify=False``.

Run: ``python -m benchmarks.reliability_checks [--quick] [--threads N]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import taming_core
from benchmarks._common import time_interleaved, write_results
from taming_core.validation import check_quantizer_output

TOKENIZER = {"name": "vqgan", "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1,
             "attn_resolutions": [], "z_channels": 32, "resolution": 32, "embed_dim": 8,
             "quantizer": {"name": "vq", "codebook_size": 256, "dim": 8}}


def _prior_spec(megabytes: float) -> dict:
    """A GPT whose weights take about ``megabytes`` MiB in fp32 (12·d² per layer)."""
    n_embd, n_layer = 512, 1
    while 12 * n_embd * n_embd * n_layer * 4 < megabytes * 2**20:
        n_layer += 1
    return {"name": "gpt", "vocab_size": 257, "block_size": 17, "n_layer": n_layer, "n_head": 8,
            "n_embd": n_embd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, a smaller prior")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--prior-mb", type=float, default=None, help="prior weights in MiB "
                        "(default 200, 40 with --quick)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else 15
    prior_mb = args.prior_mb or (40.0 if args.quick else 200.0)
    torch.manual_seed(0)
    rows = []

    tok = taming_core.build({"tokenizer": TOKENIZER})["tokenizer"].eval()
    images = torch.rand(8, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = tok.encode_to_prequant(images)
        out = tok.quantize(z)

    def check() -> None:
        for _ in range(1000):
            check_quantizer_output(out, z, tok.quantize, 1)

    def encode() -> None:
        with torch.no_grad():
            tok.encode(images)

    times = time_interleaved({"check": check, "encode": encode}, repeats=repeats, warmup=1)
    check_us = times["check"]["median"] / 1000 * 1e6
    encode_ms = times["encode"]["median"] * 1e3
    rows.append({"what": "quantizer output check (per encode)", "time": f"{check_us:.1f} us",
                 "reference": f"encode of 8×3×32×32: {encode_ms:.2f} ms",
                 "overhead_pct": 100 * check_us / 1e3 / encode_ms})

    pipe = taming_core.Pipeline.from_config({"tokenizer": TOKENIZER, "prior": _prior_spec(prior_mb),
                                             "conditioner": {"name": "sos"}, "grid": [4, 4]})
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save(tmp)
        size_mb = (Path(tmp) / "pipeline.safetensors").stat().st_size / 2**20
        times = time_interleaved({"verify": lambda: taming_core.Pipeline.load(tmp),
                                  "no verify": lambda: taming_core.Pipeline.load(tmp, verify=False)},
                                 repeats=repeats, warmup=1)
    on, off = times["verify"]["median"], times["no verify"]["median"]
    rows.append({"what": f"Pipeline.load, {size_mb:.0f} MiB of weights", "time": f"{on * 1e3:.0f} ms",
                 "reference": f"verify=False: {off * 1e3:.0f} ms", "overhead_pct": 100 * (on - off) / off})
    write_results("reliability_checks", rows, columns=["what", "time", "reference", "overhead_pct"],
                  title="Cost of the issue-12 checks",
                  notes=[f"torch threads: {torch.get_num_threads()}",
                         "the machine was shared with other processes while this ran; compare "
                         "the columns of one run, not absolute times across runs",
                         "SHA-256 reads the whole weights file once; verify=False skips it"],
                  meta={"repeats": repeats, "prior_mb": prior_mb})


if __name__ == "__main__":
    main()
