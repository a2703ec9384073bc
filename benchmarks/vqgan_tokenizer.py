"""Cost of the ``vqgan`` tokenizer's implementation choices, side by side in one run.

* ``attention``: the AttnBlock through ``scaled_dot_product_attention`` versus the
  explicit ``softmax(QᵀK / √C)`` formulation of the original code (same weights):
  time, peak memory and the largest output difference.
* ``train step``: one forward + backward of a small f4 tokenizer with and without
  ``grad_checkpointing``: time and peak memory.
* ``inference``: encode + decode with contiguous versus ``channels_last`` tensors.

Times are medians of interleaved runs (ratios are the fair comparison on a shared
machine); CPU peak memory is the RSS high-water mark, each method in a fresh process.

    python -m benchmarks.vqgan_tokenizer --quick     # about a minute on 2 CPU cores
    python -m benchmarks.vqgan_tokenizer             # larger inputs
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Callable

import torch

from taming_plugins.tokenizers import AttnBlock
from taming_plugins.tokenizers.vqgan import VQGANTokenizer

from ._common import MIB, peak_memory, run_in_fresh_process, time_interleaved, write_results

log = logging.getLogger("benchmarks.vqgan_tokenizer")

SEED = 0
#: (batch, channels, side) of the attention input, quick and full.
ATTN_SHAPE = {True: (2, 128, 32), False: (2, 128, 64)}
#: Image side of the tokenizer cases, quick and full.
IMAGE_SIDE = {True: 64, False: 128}
BATCH = 2
REPEATS = {True: 5, False: 7}
TOKENIZER_ARCH = dict(ch=64, ch_mult=[1, 2, 2], num_res_blocks=2, attn_resolutions=[16], z_channels=64,
                      resolution=64, embed_dim=16, n_embed=256)


def explicit_attention(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """The original formulation: materialise the HW×HW attention matrix."""
    b, c, h, w = x.shape
    y = block.norm(x)
    q, k, v = (m(y).reshape(b, c, h * w) for m in (block.q, block.k, block.v))
    weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c ** -0.5, dim=2)
    out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
    return x + block.proj_out(out)


def _attention_case(quick: bool) -> tuple[AttnBlock, torch.Tensor]:
    torch.manual_seed(SEED)
    b, c, side = ATTN_SHAPE[quick]
    return AttnBlock(c).eval(), torch.randn(b, c, side, side)


def _tokenizer(quick: bool, **flags: Any) -> tuple[VQGANTokenizer, torch.Tensor]:
    torch.manual_seed(SEED)
    tok = VQGANTokenizer(**TOKENIZER_ARCH, quantizer={"name": "vq", "legacy_beta": True}, **flags)
    side = IMAGE_SIDE[quick]
    return tok, torch.rand(BATCH, 3, side, side) * 2 - 1


def _train_step(tok: VQGANTokenizer, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        xrec, enc = tok(x)
        ((xrec - x).abs().mean() + enc.loss).backward()
        tok.zero_grad(set_to_none=True)
    return step


def _inference(tok: VQGANTokenizer, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.no_grad():
            return tok.decode(tok.encode(x).indices)
    return run


def measure_peak(case: str, method: str, quick: bool, threads: int) -> int:
    """Peak extra RSS of one call (run in a fresh process)."""
    torch.set_num_threads(threads)
    if case == "attention":
        block, x = _attention_case(quick)
        fn = (lambda: block(x)) if method == "sdpa" else (lambda: explicit_attention(block, x))
        with torch.no_grad():
            fn()  # warm-up allocations outside the measurement
            return peak_memory(fn)
    tok, x = _tokenizer(quick, grad_checkpointing=method == "checkpointing")
    step = _train_step(tok, x)
    step()
    return peak_memory(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs (about a minute)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steadier on a shared machine)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    quick, repeats = args.quick, REPEATS[args.quick]
    rows: list[dict[str, Any]] = []

    block, xa = _attention_case(quick)
    with torch.no_grad():
        diff = float((block(xa) - explicit_attention(block, xa)).abs().max())
        times = time_interleaved({"sdpa": lambda: block(xa),
                                  "explicit": lambda: explicit_attention(block, xa)}, repeats=repeats)
    shape = "×".join(map(str, ATTN_SHAPE[quick][:2])) + f"×{ATTN_SHAPE[quick][2]}²"
    for method in ("sdpa", "explicit"):
        rows.append({"case": f"attention {shape}", "method": method, "ms": 1e3 * times[method]["median"],
                     "peak_MiB": run_in_fresh_process(measure_peak, "attention", method, quick,
                                                      args.threads) / MIB,
                     "max_abs_diff": diff})

    plain, x = _tokenizer(quick)
    ckpt, _ = _tokenizer(quick, grad_checkpointing=True)
    times = time_interleaved({"plain": _train_step(plain, x), "checkpointing": _train_step(ckpt, x)},
                             repeats=repeats)
    side = IMAGE_SIDE[quick]
    for method in ("plain", "checkpointing"):
        rows.append({"case": f"train step {BATCH}×3×{side}²", "method": method,
                     "ms": 1e3 * times[method]["median"],
                     "peak_MiB": run_in_fresh_process(measure_peak, "train", method, quick,
                                                      args.threads) / MIB})

    cl, _ = _tokenizer(quick, channels_last=True)
    cl.load_state_dict(plain.state_dict())
    plain.eval(), cl.eval()
    with torch.no_grad():
        diff = float((plain(x)[0] - cl(x)[0]).abs().max())
    times = time_interleaved({"contiguous": _inference(plain, x), "channels_last": _inference(cl, x)},
                             repeats=repeats)
    for method in ("contiguous", "channels_last"):
        rows.append({"case": f"encode+decode {BATCH}×3×{side}²", "method": method,
                     "ms": 1e3 * times[method]["median"], "max_abs_diff": diff})

    for i in range(0, len(rows), 2):
        base = rows[i]["ms"]
        rows[i]["speedup"], rows[i + 1]["speedup"] = 1.0, base / rows[i + 1]["ms"]
    write_results("vqgan_tokenizer_quick" if quick else "vqgan_tokenizer", rows,
                  columns=["case", "method", "ms", "speedup", "peak_MiB", "max_abs_diff"],
                  title="vqgan tokenizer: attention, gradient checkpointing, memory format",
                  notes=[f"tokenizer: {TOKENIZER_ARCH}",
                         "speedup is relative to the first method of each case (>1: faster)",
                         "peak_MiB: extra RSS high-water mark of one call, fresh process per method"],
                  meta={"quick": quick, "threads": args.threads, "arch": TOKENIZER_ARCH})


if __name__ == "__main__":
    main()
