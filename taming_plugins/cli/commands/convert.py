"""``taming convert``: original taming-transformers checkpoints <-> our format.

Usage::

    taming convert IN.ckpt OUT_DIR [--config original.yaml]
        Load an original VQModel/GumbelVQ checkpoint (architecture from the YAML, or
        inferred from the weights without --config) and write OUT_DIR/model.safetensors,
        OUT_DIR/config.json (buildable with taming_core.build) and OUT_DIR/original.json.

    taming convert NET2NET.ckpt OUT_DIR --config project.yaml
        An original Net2NetTransformer (stage 2): writes a ready pipeline (OUT_DIR/
        pipeline.json + pipeline.safetensors: first stage, transformer, SOS/class
        condition layout, grid), for `taming sample --pipeline OUT_DIR`.

    taming convert c2i_B_256.pt OUT_DIR --tokenizer vq_ds16_c2i.pt [--config CFG]
        A LlamaGen prior file -> a pipeline directory (pipeline.json + pipeline.safetensors
        + a model card README.md), ready for ``taming sample --pipeline OUT_DIR``; --config is
        a LlamaGen preset name or a JSON/YAML of its ModelArgs when the file name and shapes
        do not tell the architecture. A LlamaGen VQ file alone gives a tokenizer-only
        pipeline. --tokenizer also takes Hub references
        (hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt).

    taming convert IN_DIR --to-taming OUT.ckpt [--config-out OUT.yaml]
        The way back: a converted directory (or one written by our tools in that layout)
        -> an original Lightning .ckpt (+ the original YAML config).

Exit codes: 0 success, 1 unreadable/incompatible checkpoint, 2 bad arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import taming_core

from ...compat import load_converted, load_taming_checkpoint, save_converted, save_taming_checkpoint
from ...compat.llamagen import LlamaGenCheckpoint
from ...compat.net2net import Net2NetCheckpoint, net2net_pipeline
from ...compat.vqgan import TamingCheckpoint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert original taming-transformers checkpoints",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="original .ckpt (or, with --to-taming, a converted directory)")
    p.add_argument("out_dir", nargs="?", help="output directory for the converted checkpoint")
    p.add_argument("--config", help="original YAML config of IN.ckpt (default: infer from the weights)")
    p.add_argument("--tokenizer", metavar="REF", help="tokenizer file or Hub reference for a prior-only "
                   "SOURCE (LlamaGen c2i_*.pt); the output is then a pipeline directory")
    p.add_argument("--to-taming", metavar="OUT.ckpt", help="write an original .ckpt from SOURCE (a "
                   "converted directory) instead")
    p.add_argument("--config-out", metavar="OUT.yaml",
                   help="with --to-taming: also write the original YAML config here")
    p.set_defaults(func=run, _parser=p)


def _describe_tokenizer(tok: Any) -> str:
    return f"f{tok.downsample_factor}, {tok.vocab_size} codes"


def _describe(ckpt: TamingCheckpoint) -> str:
    tok = ckpt.tokenizer
    disc = "with" if ckpt.discriminator is not None else "without"
    return (f"{ckpt.kind}: f{tok.downsample_factor}, {tok.vocab_size} codes, embed_dim {tok.embed_dim}, "
            f"{disc} discriminator")


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._parser
    if args.to_taming:
        if args.out_dir is not None or args.config is not None:
            parser.error("--to-taming takes SOURCE (a converted directory) only; OUT_DIR and "
                         "--config do not apply")
        ckpt = load_converted(args.source)
        save_taming_checkpoint(args.to_taming, ckpt.tokenizer, ckpt.discriminator,
                               config_path=args.config_out)
        print(f"wrote {args.to_taming} ({_describe(ckpt)})")
        return 0
    if args.out_dir is None:
        parser.error("OUT_DIR is required (or use --to-taming OUT.ckpt)")
    if args.config_out is not None:
        parser.error("--config-out only applies with --to-taming")
    ckpt = load_taming_checkpoint(args.source, args.config)
    if isinstance(ckpt, LlamaGenCheckpoint) or args.tokenizer is not None:
        return _write_pipeline(ckpt, args)
    if isinstance(ckpt, Net2NetCheckpoint):
        pipeline = net2net_pipeline(ckpt)
        out = pipeline.save(args.out_dir)
        cond = taming_core.spec_of(pipeline.conditioner)["name"]  # type: ignore[index]
        print(f"wrote pipeline {out} (Net2NetTransformer: {_describe_tokenizer(ckpt.tokenizer)}; prior "
              f"{ckpt.prior.vocab_size} ids, block {ckpt.prior.block_size}; condition {cond} at id "
              f"offset {pipeline.cond_offset}; grid {pipeline.grid[0]}×{pipeline.grid[1]}); next: "
              f"taming sample --pipeline {out}")
        return 0
    if not isinstance(ckpt, TamingCheckpoint):
        raise ValueError(f"{args.source}: only VQModel/GumbelVQ checkpoints can be converted, got "
                         f"{type(ckpt).__name__}")
    out = save_converted(args.out_dir, ckpt, source=str(Path(args.source)))
    how = "inferred config" if ckpt.inferred else f"config {args.config}"
    print(f"wrote {out} ({_describe(ckpt)}; {how}; ignored {len(ckpt.ignored_keys)} keys)")
    return 0


def _write_pipeline(ckpt: object, args: argparse.Namespace) -> int:
    """A LlamaGen prior (+ --tokenizer) or tokenizer -> a saved pipeline with a model card."""
    from ...compat.formats import pipeline_parts

    parts = pipeline_parts(ckpt, str(args.source))
    card = parts.pop("card")
    if args.tokenizer is not None:
        if parts.get("tokenizer") is not None:
            raise ValueError(f"--tokenizer: {args.source} has a tokenizer of its own")
        parts["tokenizer"] = taming_core.Tokenizer.from_pretrained(args.tokenizer)
    if parts.get("tokenizer") is None:
        raise ValueError(f"{args.source}: holds no tokenizer; give --tokenizer FILE_OR_HUB_REF")
    pipe = taming_core.Pipeline(**parts)
    pipe.card_info = card
    out = pipe.save_pretrained(args.out_dir)
    what = ", ".join(role for role in ("tokenizer", "prior", "conditioner", "sampler")
                     if getattr(pipe, role) is not None)
    print(f"wrote {out} (a pipeline: {what}; load with taming sample --pipeline {out})")
    return 0
