"""Contract checks for plugin authors, on the model of scikit-learn's ``check_estimator``.

Call them from your plugin's own tests with a *factory*: a class or function that
returns a fresh component each time (``lambda: MyQuantizer(codebook_size=16, dim=8)``)::

    from taming_core.testing import check_quantizer

    def test_my_quantizer_meets_the_contract():
        check_quantizer(lambda: MyQuantizer(codebook_size=16, dim=8), channels=8)

Each ``check_*`` runs a series of named checks and returns their names; the first one
that fails raises :class:`AssertionError` with one sentence naming the check and the
component, e.g. ``check_quantizer[straight_through] MyQuantizer: no gradient reached the
input z through z_q ...``. An exception raised by the component during a check is
reported the same way (the original exception is chained).

What is checked (small CPU tensors, float32):

* :func:`check_quantizer` -- output types, shapes and dtypes; ids in
  ``[0, codebook_size)``; a finite scalar loss; ``usage``/``perplexity`` metrics; the
  straight-through gradient to ``z``; ``decode_indices(indices) == z_q`` in eval mode;
  eval passes leave the state unchanged; determinism under a seed; state-dict round trip
  through safetensors.
* :func:`check_tokenizer` -- ``encode`` (ids, latent, loss), ``decode`` shapes,
  ``decode_indices_to_latent(encode(x).indices) == encode(x).latent`` and
  ``decode(encode(x).indices) == reconstruct(x)`` in eval mode; gradients reach the
  input images through the straight-through latent; ``last_layer`` (None or a weight in
  the decoder's graph); determinism; state-dict round trip.
* :func:`check_prior` -- family-aware. Every prior: declared ``family`` matching its
  base class, ``default_sampler`` registered, ``loss`` a finite scalar with gradients,
  with and without a condition prefix, ``inputs=tokens`` giving the same loss as no
  ``inputs`` (they replace what the network is fed, never the targets),
  ``parameter_groups`` covering every trainable
  parameter once, determinism, state-dict round trip. Autoregressive: logits B×T×V,
  causality, and ``forward_cached`` (prefill + one token at a time, after ``truncate``
  too) equal to the full ``forward``. Masked: ``mask_id`` outside the output ids or
  handled, logits B×T×V at every position with masked inputs, bidirectional attention.
* :func:`check_sampler` -- Long B×H×W ids within the prior's vocabulary, determinism
  under a seeded generator, prefix conditions of batch 1 and B and a spatially aligned
  B×H×W condition grid, the prior's training flag restored, a prior of another family
  refused with a ValidationError; against a small reference prior of the sampler's family
  (:class:`ReferenceAutoregressivePrior`, :class:`ReferenceMaskedPrior`) unless you pass
  your own ``prior_factory``.
* :func:`check_conditioner` -- Long B×L (or B×h×w when ``spatial``) ids in
  ``[0, vocab_size)``, ``null_id``/``null_condition``, ``takes_condition`` (a batch size
  alone works when False), determinism, state-dict round trip.
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from .errors import RegistryError
from .interfaces import (FAMILIES, AutoregressivePrior, Conditioner, Encoded, MaskedPrior, Prior,
                         PriorCache, Quantizer, QuantizerOutput, Sampler, TokenHistoryCache, Tokenizer)

__all__ = ["ReferenceAutoregressivePrior", "ReferenceMaskedPrior", "check_conditioner", "check_prior",
           "check_quantizer", "check_sampler", "check_tokenizer"]

Factory = Callable[[], Any]

#: Tolerances of the equality checks (float32 on CPU; caches and fused paths may sum in
#: another order).
ATOL, RTOL = 1e-4, 1e-4


# --------------------------------------------------------------------------- plumbing
class _Checker:
    """Names the check in progress; turns failures and exceptions into one sentence."""

    def __init__(self, kit: str, component: Any) -> None:
        self.kit = kit
        self.name = type(component).__name__
        self.current = "construct"
        self.passed: list[str] = []

    def fail(self, message: str) -> None:
        raise AssertionError(f"{self.kit}[{self.current}] {self.name}: {message}")

    def require(self, condition: bool, message: str) -> None:
        if not condition:
            self.fail(message)

    @contextlib.contextmanager
    def check(self, name: str) -> Iterator[None]:
        self.current = name
        try:
            yield
        except AssertionError as exc:
            if str(exc).startswith(f"{self.kit}["):
                raise
            raise AssertionError(f"{self.kit}[{name}] {self.name}: {exc}") from exc
        except Exception as exc:  # the component raised: report it as this check's failure
            detail = " ".join(str(exc).split())
            raise AssertionError(f"{self.kit}[{name}] {self.name}: raised {type(exc).__name__}: "
                                 f"{detail}") from exc
        self.passed.append(name)


def _build(factory: Factory, kit: str, cls: type, seed: int) -> Any:
    torch.manual_seed(seed)
    try:
        obj = factory()
    except Exception as exc:
        raise AssertionError(f"{kit}[construct] the factory raised {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())}") from exc
    if not isinstance(obj, cls):
        raise AssertionError(f"{kit}[construct] {type(obj).__name__}: the factory must return a "
                             f"taming_core.{cls.__name__}, got {type(obj).__name__}")
    return obj


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=ATOL, rtol=RTOL))


def _max_diff(a: Tensor, b: Tensor) -> str:
    if a.shape != b.shape:
        return f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    return f"max |difference| {float((a.float() - b.float()).abs().max()):.3g}"


def _check_scalar_loss(c: _Checker, loss: Any, what: str, *, needs_grad: bool) -> None:
    c.require(isinstance(loss, Tensor), f"{what} must be a tensor, got {type(loss).__name__}")
    c.require(loss.dim() == 0, f"{what} must be a 0-d scalar tensor, got shape {tuple(loss.shape)}")
    c.require(loss.is_floating_point(), f"{what} must be a float tensor, got {loss.dtype}")
    c.require(bool(torch.isfinite(loss)), f"{what} must be finite, got {float(loss.detach())}")
    if needs_grad:
        c.require(loss.requires_grad, f"{what} must carry gradients (requires_grad is False)")


def _check_ids(c: _Checker, ids: Any, what: str, shape: Sequence[int], high: int) -> None:
    c.require(isinstance(ids, Tensor), f"{what} must be a tensor, got {type(ids).__name__}")
    c.require(ids.dtype == torch.long, f"{what} must be Long (torch.int64), got {ids.dtype}")
    c.require(tuple(ids.shape) == tuple(shape),
              f"{what} must have shape {tuple(shape)}, got {tuple(ids.shape)}")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        c.require(lo >= 0 and hi < high, f"{what} must lie in [0, {high}), got ids in [{lo}, {hi}]")


def _check_positive_int(c: _Checker, value: Any, what: str) -> None:
    c.require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
              f"{what} must be a positive int, got {value!r}")


def _run_twins(factory: Factory, kit: str, cls: type, seed: int, run: Callable[[Any], Any]) -> list[Any]:
    """``run`` on two components built under ``seed``, each call under the same seed
    (training mode, no autograd): the outputs of a deterministic component agree."""
    outs = []
    for _ in range(2):
        twin = _build(factory, kit, cls, seed).train()
        torch.manual_seed(seed)
        with torch.no_grad():
            outs.append(run(twin))
    return outs


def _restored(c: _Checker, source: nn.Module, factory: Factory, kit: str, cls: type, seed: int) -> Any:
    """A component built under another seed that loaded ``source``'s state (eval mode)."""
    target = _build(factory, kit, cls, seed + 1)
    _state_round_trip(c, source, target)
    return target.eval()


def _state_round_trip(c: _Checker, source: nn.Module, target: nn.Module) -> None:
    """Save ``source``'s state dict as safetensors, load it strictly into ``target``."""
    from .io import load_tensors, save_tensors

    state = source.state_dict()
    for key, value in state.items():
        c.require(isinstance(value, Tensor), f"state_dict entry {key!r} must be a tensor (safetensors "
                  f"holds tensors only), got {type(value).__name__}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.safetensors"
        save_tensors(path, state)
        loaded = load_tensors(path)
    result = target.load_state_dict(loaded, strict=True)
    c.require(not result.missing_keys and not result.unexpected_keys,
              f"state_dict does not load back strictly: {result}")


def _snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed_keys(before: dict[str, Tensor], module: nn.Module) -> list[str]:
    after = module.state_dict()
    return [k for k, v in before.items() if k not in after or not torch.equal(v, after[k])]


# --------------------------------------------------------------------------- quantizer
def check_quantizer(factory: Factory, *, channels: Optional[int] = None, batch: int = 2,
                    size: int = 4, seed: int = 0) -> list[str]:
    """Check a :class:`~taming_core.Quantizer` made by ``factory``.

    Args:
        factory: returns a fresh quantizer.
        channels: input channels of ``z`` (default: the quantizer's declared
            ``in_channels``; required when that is None).
        batch, size: ``z`` is float ``batch × channels × size × size``.
        seed: seeds construction and every forward.

    Returns the names of the checks that ran; raises AssertionError on the first failure.
    """
    kit = "check_quantizer"
    q = _build(factory, kit, Quantizer, seed)
    c = _Checker(kit, q)
    with c.check("declared_members"):
        _check_positive_int(c, q.codebook_size, "codebook_size")
        _check_positive_int(c, q.num_levels, "num_levels")
        if q.in_channels is not None:
            _check_positive_int(c, q.in_channels, "in_channels")
        channels = channels if channels is not None else q.in_channels
        c.require(channels is not None, "pass channels= (the width of z): the quantizer declares "
                  "no in_channels")
    assert channels is not None
    levels = q.num_levels
    id_shape = (batch, size, size) + ((levels,) if levels > 1 else ())
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, channels, size, size, generator=gen)

    with c.check("forward_output"):
        q.train()
        q.set_step(0)
        zin = z.clone().requires_grad_(True)
        torch.manual_seed(seed)
        out = q(zin)
        c.require(isinstance(out, QuantizerOutput),
                  f"forward must return a QuantizerOutput, got {type(out).__name__}")
        c.require(isinstance(out.z_q, Tensor) and out.z_q.dtype == z.dtype,
                  f"z_q must be a tensor of the input dtype {z.dtype}, got "
                  f"{getattr(out.z_q, 'dtype', type(out.z_q).__name__)}")
        c.require(out.z_q.dim() == 4 and out.z_q.shape[0] == batch and tuple(out.z_q.shape[2:]) == (size, size),
                  f"z_q must be B×C×H×W with the input's B, H, W = {batch}, {size}, {size}, got "
                  f"{tuple(out.z_q.shape)}")
        if q.in_channels is None:
            c.require(out.z_q.shape == z.shape, f"z_q must have the input's shape {tuple(z.shape)} "
                      f"(no in_channels declared), got {tuple(out.z_q.shape)}")
        _check_ids(c, out.indices, "indices", id_shape, q.codebook_size)
        _check_scalar_loss(c, out.loss, "loss", needs_grad=False)

    with c.check("metrics"):
        c.require(isinstance(out.metrics, dict), f"metrics must be a dict, got {type(out.metrics).__name__}")
        for key in ("usage", "perplexity"):
            c.require(key in out.metrics, f"metrics must report {key!r} (see "
                      f"taming_core.quantization.finalize_metrics), got keys {sorted(out.metrics)}")
        for key, value in out.metrics.items():
            c.require(isinstance(value, float) and math.isfinite(value),
                      f"metrics[{key!r}] must be a finite float, got {value!r}")
        c.require(0.0 <= out.metrics["usage"] <= 1.0,
                  f"metrics['usage'] is a fraction in [0, 1], got {out.metrics['usage']}")
        c.require(out.metrics["perplexity"] >= 1.0 - 1e-4,
                  f"metrics['perplexity'] is at least 1, got {out.metrics['perplexity']}")

    with c.check("straight_through"):
        no_grad = ("no gradient reached the input z through z_q; return "
                   "taming_core.quantization.straight_through(z, z_q) (the straight-through estimator)")
        c.require(out.z_q.requires_grad, no_grad)
        weights = torch.randn(out.z_q.shape, generator=gen)
        (out.z_q * weights).sum().backward()
        grad = zin.grad
        c.require(grad is not None and bool(grad.abs().sum() > 0), no_grad)
        assert grad is not None
        c.require(bool(torch.isfinite(grad).all()), "the gradient reaching z through z_q is not finite")

    with c.check("eval_keeps_state"):
        q.eval()
        before = _snapshot(q)
        with torch.no_grad():
            first = q(z)
        changed = _changed_keys(before, q)
        c.require(not changed, f"an eval-mode forward changed the state {changed[:3]}; update "
                  "codebooks and statistics only in training mode")

    with c.check("decode_indices"):
        with torch.no_grad():
            decoded = q.decode_indices(first.indices)
        c.require(_close(decoded, first.z_q), "decode_indices(indices) must equal the eval-mode z_q "
                  f"of those indices; {_max_diff(decoded, first.z_q)}")

    with c.check("deterministic"):
        runs = _run_twins(factory, kit, Quantizer, seed, lambda twin: twin(z))
        c.require(torch.equal(runs[0].indices, runs[1].indices) and _close(runs[0].z_q, runs[1].z_q),
                  "two quantizers built and run under the same seed gave different outputs")

    with c.check("state_dict_round_trip"):
        target = _restored(c, q, factory, kit, Quantizer, seed)
        with torch.no_grad():
            restored = target(z)
        c.require(torch.equal(restored.indices, first.indices) and _close(restored.z_q, first.z_q),
                  "a quantizer loaded from another's state dict gives different eval outputs")
    return c.passed


# --------------------------------------------------------------------------- tokenizer
def check_tokenizer(factory: Factory, *, channels: int = 3, image_size: Optional[int] = None,
                    batch: int = 2, seed: int = 0) -> list[str]:
    """Check a :class:`~taming_core.Tokenizer` made by ``factory``.

    Args:
        factory: returns a fresh tokenizer.
        channels: image channels.
        image_size: image side (default ``2 × downsample_factor``).
        batch: images per batch.
        seed: seeds construction and every forward.
    """
    kit = "check_tokenizer"
    tok = _build(factory, kit, Tokenizer, seed)
    c = _Checker(kit, tok)
    with c.check("declared_members"):
        _check_positive_int(c, tok.vocab_size, "vocab_size")
        _check_positive_int(c, tok.downsample_factor, "downsample_factor")
        last = tok.last_layer
        c.require(last is None or isinstance(last, Tensor),
                  f"last_layer must be None or a weight tensor, got {type(last).__name__}")
    f = tok.downsample_factor
    size = image_size if image_size is not None else 2 * f
    h = size // f
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, channels, size, size, generator=gen) * 2 - 1

    with c.check("encode"):
        tok.train()
        tok.set_step(0)
        x = images.clone().requires_grad_(True)
        torch.manual_seed(seed)
        enc = tok.encode(x)
        c.require(isinstance(enc, Encoded), f"encode must return an Encoded, got {type(enc).__name__}")
        c.require(isinstance(enc.indices, Tensor) and enc.indices.dim() in (3, 4),
                  "indices must be Long B×h×w (or B×h×w×L)")
        shape = (batch, h, h) + tuple(enc.indices.shape[3:])
        _check_ids(c, enc.indices, "encode(images).indices", shape, tok.vocab_size)
        c.require(isinstance(enc.latent, Tensor) and enc.latent.dim() == 4 and enc.latent.shape[0] == batch
                  and tuple(enc.latent.shape[2:]) == (h, h) and enc.latent.is_floating_point(),
                  f"latent must be float B×c×h×w with h = w = {h}, got "
                  f"{tuple(enc.latent.shape) if isinstance(enc.latent, Tensor) else type(enc.latent).__name__}")
        _check_scalar_loss(c, enc.loss, "encode(images).loss", needs_grad=False)

    with c.check("reconstruct_gradient"):
        x = images.clone().requires_grad_(True)
        torch.manual_seed(seed)
        xrec, enc2 = tok.reconstruct(x)
        c.require(isinstance(xrec, Tensor) and xrec.shape == images.shape and xrec.dtype == images.dtype,
                  f"reconstruct must return images shaped {tuple(images.shape)} ({images.dtype}), got "
                  f"{tuple(xrec.shape) if isinstance(xrec, Tensor) else type(xrec).__name__}")
        c.require(isinstance(enc2, Encoded), "reconstruct must return (images, Encoded)")
        last = tok.last_layer
        if last is not None:
            last.grad = None
        (xrec.square().mean() + enc2.loss).backward()
        c.require(x.grad is not None and bool(x.grad.abs().sum() > 0),
                  "no gradient reached the input images through reconstruct(): the quantized latent "
                  "needs the straight-through gradient to the encoder")
        if last is not None:
            c.require(last.grad is not None and bool(last.grad.abs().sum() > 0),
                      "last_layer is not in the graph of reconstruct(); return the decoder's last "
                      "weight, or None (the trainer then uses a fixed GAN weight)")

    with c.check("decode"):
        tok.eval()
        with torch.no_grad():
            enc_eval = tok.encode(images)
            decoded = tok.decode(enc_eval.indices)
            latent = tok.decode_indices_to_latent(enc_eval.indices)
            recon, _ = tok.reconstruct(images)
        c.require(decoded.shape == images.shape and decoded.is_floating_point(),
                  f"decode(indices) must give float images shaped {tuple(images.shape)}, got "
                  f"{tuple(decoded.shape)}")
        c.require(_close(latent, enc_eval.latent), "decode_indices_to_latent(encode(x).indices) must "
                  f"equal encode(x).latent in eval mode; {_max_diff(latent, enc_eval.latent)}")
        c.require(_close(decoded, recon), "decode(encode(x).indices) must equal reconstruct(x) in eval "
                  f"mode; {_max_diff(decoded, recon)}")

    with c.check("eval_keeps_state"):
        before = _snapshot(tok)
        with torch.no_grad():
            tok.encode(images)
        changed = _changed_keys(before, tok)
        c.require(not changed, f"an eval-mode encode changed the state {changed[:3]}")

    with c.check("deterministic"):
        outs = _run_twins(factory, kit, Tokenizer, seed, lambda twin: twin.reconstruct(images))
        c.require(torch.equal(outs[0][1].indices, outs[1][1].indices) and _close(outs[0][0], outs[1][0]),
                  "two tokenizers built and run under the same seed gave different outputs")

    with c.check("state_dict_round_trip"):
        target = _restored(c, tok, factory, kit, Tokenizer, seed)
        with torch.no_grad():
            restored = target.decode(enc_eval.indices)
            re_enc = target.encode(images)
        c.require(_close(restored, decoded) and torch.equal(re_enc.indices, enc_eval.indices),
                  "a tokenizer loaded from another's state dict gives different eval outputs")
    return c.passed


# --------------------------------------------------------------------------- prior
def _prior_sizes(prior: Prior, seq_len: Optional[int]) -> tuple[int, int]:
    """(image tokens T, condition prefix length L = 1) that fit the block size."""
    T = seq_len if seq_len is not None else max(2, min(8, prior.block_size - 1))
    return T, 1


def check_prior(factory: Factory, *, batch: int = 2, seq_len: Optional[int] = None,
                token_range: Optional[tuple[int, int]] = None,
                condition_range: Optional[tuple[int, int]] = None, unconditional: bool = True,
                seed: int = 0) -> list[str]:
    """Check a :class:`~taming_core.Prior` made by ``factory``; the family checks follow its
    declared :attr:`~taming_core.Prior.family` (see the module docstring).

    Args:
        factory: returns a fresh prior.
        batch: sequences per batch.
        seq_len: image tokens per sequence (default ``min(8, block_size - 1)``); a
            one-token condition prefix comes on top.
        token_range, condition_range: inclusive ``(low, high)`` of the image ids and of the
            condition ids drawn (default: the whole vocabulary), for priors that give them
            separate ranges (e.g. class tokens after the image codes).
        unconditional: whether ``loss(tokens)`` without a condition is supported (False
            for priors that always need a condition prefix, such as a class token).
        seed: seeds construction, data and every forward.
    """
    from .registry import get_entry

    kit = "check_prior"
    prior = _build(factory, kit, Prior, seed)
    c = _Checker(kit, prior)
    with c.check("declared_members"):
        c.require(prior.family in FAMILIES, f"family must be one of {', '.join(FAMILIES)}, got "
                  f"{prior.family!r}")
        expected = {"autoregressive": AutoregressivePrior, "masked": MaskedPrior}.get(prior.family)
        if expected is not None:
            c.require(isinstance(prior, expected), f"declares family {prior.family!r} but does not "
                      f"subclass taming_core.{expected.__name__}")
        _check_positive_int(c, prior.vocab_size, "vocab_size")
        _check_positive_int(c, prior.block_size, "block_size")
        c.require(isinstance(prior.default_sampler, str) and bool(prior.default_sampler),
                  f"default_sampler must name a registered sampler, got {prior.default_sampler!r}")
        try:
            entry = get_entry("sampler", prior.default_sampler)
        except RegistryError as exc:
            c.fail(f"default_sampler {prior.default_sampler!r} is not registered ({exc})")
        if isinstance(entry.obj, type) and issubclass(entry.obj, Sampler):
            family = entry.obj.family
            c.require(family == prior.family, f"default_sampler {prior.default_sampler!r} drives "
                      f"family {family!r}, not {prior.family!r}")
    T, L = _prior_sizes(prior, seq_len)
    c.require(T + L <= prior.block_size + (1 if prior.family == "autoregressive" else 0),
              f"seq_len {T} + a {L}-token prefix does not fit block_size {prior.block_size}")
    V = prior.vocab_size
    gen = torch.Generator().manual_seed(seed)
    t_lo, t_hi = token_range if token_range is not None else (0, V - 1)
    c_lo, c_hi = condition_range if condition_range is not None else (0, V - 1)
    tokens = torch.randint(t_lo, t_hi + 1, (batch, T), generator=gen)
    cond = torch.randint(c_lo, c_hi + 1, (batch, L), generator=gen)

    with c.check("loss"):
        prior.train()
        prior.set_step(0)
        prior.zero_grad()
        loss = prior.loss(tokens, cond, generator=torch.Generator().manual_seed(seed))
        _check_scalar_loss(c, loss, "loss(tokens, condition)", needs_grad=True)
        loss.backward()
        grads = [p.grad for p in prior.parameters() if p.requires_grad]
        c.require(any(g is not None and bool(g.abs().sum() > 0) for g in grads),
                  "loss(tokens, condition) gives no gradient to any parameter")
        c.require(all(g is None or bool(torch.isfinite(g).all()) for g in grads),
                  "loss(tokens, condition) gives non-finite gradients")
        if unconditional:
            _check_scalar_loss(c, prior.loss(tokens, None, generator=torch.Generator().manual_seed(seed)),
                               "loss(tokens) without a condition", needs_grad=True)
        corrupted = torch.randint(t_lo, t_hi + 1, (batch, T), generator=gen)
        _check_scalar_loss(c, prior.loss(tokens, cond, inputs=corrupted,
                                         generator=torch.Generator().manual_seed(seed)),
                           "loss(tokens, condition, inputs=...)", needs_grad=True)

    with c.check("parameter_groups"):
        groups = prior.parameter_groups(0.01)
        c.require(isinstance(groups, list) and all(isinstance(g, dict) and "params" in g for g in groups),
                  "parameter_groups(weight_decay) must return a list of dicts with 'params'")
        seen: dict[int, int] = {}
        for g in groups:
            for p in g["params"]:
                seen[id(p)] = seen.get(id(p), 0) + 1
        trainable = [p for p in prior.parameters() if p.requires_grad]
        c.require(all(seen.get(id(p), 0) == 1 for p in trainable) and len(seen) == len(trainable),
                  "parameter_groups must list every trainable parameter exactly once")
        torch.optim.AdamW(groups, lr=1e-3)  # the stage-2 trainer's optimizer accepts them

    prior.eval()
    with c.check("inputs"):
        with torch.no_grad():
            plain = prior.loss(tokens, cond, generator=torch.Generator().manual_seed(seed))
            same = prior.loss(tokens, cond, inputs=tokens, generator=torch.Generator().manual_seed(seed))
        c.require(_close(plain, same), "loss(tokens, condition, inputs=tokens) must equal loss(tokens, "
                  f"condition): inputs only replace what the network is fed; {_max_diff(plain, same)}")
    if isinstance(prior, AutoregressivePrior):
        _check_autoregressive(c, prior, tokens, cond, gen, (t_lo, t_hi))
    elif isinstance(prior, MaskedPrior):
        _check_masked(c, prior, tokens, cond, (t_lo, t_hi))

    with c.check("deterministic"):
        values = _run_twins(factory, kit, Prior, seed, lambda twin: twin.loss(
            tokens, cond, generator=torch.Generator().manual_seed(seed)))
        c.require(torch.equal(values[0], values[1]),
                  "two priors built and run under the same seed gave different losses")

    with c.check("state_dict_round_trip"):
        target = _restored(c, prior, factory, kit, Prior, seed)
        with torch.no_grad():
            a = prior.loss(tokens, cond, generator=torch.Generator().manual_seed(seed))
            b = target.loss(tokens, cond, generator=torch.Generator().manual_seed(seed))
        c.require(_close(a, b), "a prior loaded from another's state dict gives a different eval loss")
    return c.passed


def _other_token(ids: Tensor, id_range: tuple[int, int], gen: Optional[torch.Generator] = None) -> Tensor:
    """Another id than ``ids`` (elementwise) within the inclusive ``id_range``."""
    lo, hi = id_range
    n = hi - lo + 1
    if n < 2:
        return ids
    step = 1 + (torch.randint(n - 1, ids.shape, generator=gen) if gen is not None else 0)
    return lo + (ids - lo + step) % n


def _check_autoregressive(c: _Checker, prior: AutoregressivePrior, tokens: Tensor, cond: Tensor,
                          gen: torch.Generator, token_range: tuple[int, int]) -> None:
    V = prior.vocab_size
    seq = torch.cat([cond, tokens], dim=1)[:, :prior.block_size]
    B, S = seq.shape
    with c.check("forward_logits"):
        with torch.no_grad():
            logits = prior(seq)
        c.require(isinstance(logits, Tensor) and tuple(logits.shape) == (B, S, V)
                  and logits.is_floating_point(),
                  f"forward(tokens B×T) must give float logits B×T×V = {(B, S, V)}, got "
                  f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
        c.require(bool(torch.isfinite(logits).all()), "forward gives non-finite logits")

    with c.check("causal"):
        changed = seq.clone()
        changed[:, -1] = _other_token(changed[:, -1], token_range, gen)
        with torch.no_grad():
            other = prior(changed)
        c.require(_close(other[:, :-1], logits[:, :-1]),
                  "changing the last token changed the logits of earlier positions (not causal); "
                  f"{_max_diff(other[:, :-1], logits[:, :-1])}")

    with c.check("cache_equals_forward"):
        with torch.no_grad():
            cache = prior.new_cache(B, S)
            c.require(isinstance(cache, PriorCache), f"new_cache must return a PriorCache, got "
                      f"{type(cache).__name__}")
            split = max(1, S // 2)
            parts = [prior.forward_cached(seq[:, :split], cache)]
            c.require(cache.length == split, f"after a prefill of {split} tokens cache.length must be "
                      f"{split}, got {cache.length}")
            for t in range(split, S):
                parts.append(prior.forward_cached(seq[:, t:t + 1], cache))
            cached = torch.cat(parts, dim=1)
        c.require(_close(cached, logits), "forward_cached (a prefill, then one token at a time) must "
                  f"equal the full forward; {_max_diff(cached, logits)}")
        with torch.no_grad():
            cache.truncate(split)
            c.require(cache.length == split, f"truncate({split}) must leave cache.length == {split}, "
                      f"got {cache.length}")
            tail = prior.forward_cached(seq[:, split:], cache)
        c.require(_close(tail, logits[:, split:]), "after truncate, forward_cached of the rest must "
                  f"equal the full forward; {_max_diff(tail, logits[:, split:])}")
        with torch.no_grad():
            cache.reset()
            c.require(cache.length == 0, f"reset() must leave cache.length == 0, got {cache.length}")
            again = prior.forward_cached(seq, cache)
        c.require(_close(again, logits), "after reset, a full prefill must equal the full forward; "
                  f"{_max_diff(again, logits)}")


def _check_masked(c: _Checker, prior: MaskedPrior, tokens: Tensor, cond: Tensor,
                  token_range: tuple[int, int]) -> None:
    V = prior.vocab_size
    B, T = tokens.shape
    with c.check("mask_id"):
        mask_id = prior.mask_id
        c.require(isinstance(mask_id, int) and not isinstance(mask_id, bool) and mask_id >= 0,
                  f"mask_id must be a non-negative int, got {mask_id!r}")
    masked = tokens.clone()
    masked[:, ::2] = prior.mask_id
    with c.check("forward_logits"):
        with torch.no_grad():
            logits = prior(masked, cond)
            plain = prior(masked)
        for what, value in (("forward(tokens, condition)", logits), ("forward(tokens)", plain)):
            c.require(isinstance(value, Tensor) and tuple(value.shape) == (B, T, V)
                      and value.is_floating_point(),
                      f"{what} with masked positions must give float logits B×T×V = {(B, T, V)}, got "
                      f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}")
            finite = torch.isfinite(value)
            if prior.mask_id < V:  # an output id too: it must never be drawn
                c.require(bool((value[..., prior.mask_id] == float("-inf")).all()),
                          f"mask_id {prior.mask_id} lies inside the output vocabulary [0, {V}) but "
                          f"{what} gives it a finite logit; the mask is never an output")
                finite[..., prior.mask_id] = True
            c.require(bool(finite.all()), f"{what} gives non-finite logits")
    with c.check("bidirectional"):
        changed = masked.clone()
        last = masked[:, -1]
        changed[:, -1] = torch.where(last == prior.mask_id, tokens[:, -1],
                                     _other_token(tokens[:, -1], token_range))
        with torch.no_grad():
            other = prior(changed, cond)
        c.require(not _close(other[:, 0], logits[:, 0]),
                  "changing the last token left the first position's logits unchanged: a masked "
                  "prior must attend in both directions")


# --------------------------------------------------------------------------- reference priors
class _TinyPriorParts(nn.Module):
    """Embeddings, head and sizes shared by the reference priors."""

    def __init__(self, vocab_size: int, block_size: int, dim: int, input_ids: int) -> None:
        super().__init__()
        self._vocab, self._block = vocab_size, block_size
        self.embed = nn.Embedding(input_ids, dim)
        self.pos = nn.Embedding(block_size, dim)
        self.head = nn.Linear(dim, vocab_size)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def block_size(self) -> int:
        return self._block


class ReferenceAutoregressivePrior(_TinyPriorParts, AutoregressivePrior):
    """A tiny exact autoregressive prior for sampler checks: the logits at position t are
    a linear map of the mean embedding of tokens ``0..t`` plus a position embedding."""

    def __init__(self, vocab_size: int = 17, block_size: int = 32, dim: int = 16) -> None:
        super().__init__(vocab_size, block_size, dim, input_ids=vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        e = self.embed(tokens).cumsum(dim=1)
        count = torch.arange(1, tokens.shape[1] + 1, device=tokens.device).view(1, -1, 1)
        return self.head(e / count + self.pos.weight[:tokens.shape[1]])

    def new_cache(self, batch_size: int, max_len: int, *, device: Optional[torch.device] = None,
                  dtype: Optional[torch.dtype] = None) -> PriorCache:
        return TokenHistoryCache(batch_size, max_len, device if device is not None else self.head.weight.device)

    def forward_cached(self, tokens: Tensor, cache: PriorCache) -> Tensor:
        assert isinstance(cache, TokenHistoryCache)
        start = cache.append(tokens)
        return self(cache.tokens)[:, start:]


class ReferenceMaskedPrior(_TinyPriorParts, MaskedPrior):
    """A tiny masked prior for sampler checks: every position sees the mean embedding of
    the whole (prefix + image) sequence; ``mask_id`` is ``vocab_size`` (an input-only id)."""

    def __init__(self, vocab_size: int = 17, block_size: int = 32, dim: int = 16) -> None:
        super().__init__(vocab_size, block_size, dim, input_ids=vocab_size + 1)

    @property
    def mask_id(self) -> int:
        return self._vocab

    def forward(self, tokens: Tensor, condition: Optional[Tensor] = None) -> Tensor:
        seq = tokens if condition is None else torch.cat([condition, tokens], dim=1)
        context = self.embed(seq).mean(dim=1, keepdim=True)
        T = tokens.shape[1]
        return self.head(self.embed(tokens) + context + self.pos.weight[:T])

    def loss(self, tokens: Tensor, condition: Optional[Tensor] = None, *,
             generator: Optional[torch.Generator] = None, inputs: Optional[Tensor] = None) -> Tensor:
        """Cross-entropy at a random half of the positions, masked in the input."""
        fed = tokens if inputs is None else inputs
        hide = (torch.rand(tokens.shape, generator=generator) < 0.5).to(fed.device)
        hide[:, 0] = True
        logits = self(fed.masked_fill(hide, self.mask_id), condition)
        return nn.functional.cross_entropy(logits[hide], tokens[hide])


# --------------------------------------------------------------------------- sampler
def check_sampler(factory: Factory, *, prior_factory: Optional[Factory] = None,
                  grid: tuple[int, int] = (2, 3), batch: int = 2, seed: int = 0) -> list[str]:
    """Check a :class:`~taming_core.Sampler` made by ``factory``.

    Args:
        factory: returns a fresh sampler.
        prior_factory: returns the prior to sample from (default: the reference prior of
            the sampler's family, vocabulary 17, block size 32). Condition prefixes are one
            token, the prior's last id.
        grid, batch: the sampled grid and batch size.
        seed: seeds the generators.
    """
    kit = "check_sampler"
    sampler = _build(factory, kit, Sampler, seed)
    c = _Checker(kit, sampler)
    with c.check("declared_members"):
        c.require(sampler.family in FAMILIES, f"family must be one of {', '.join(FAMILIES)}, got "
                  f"{sampler.family!r}")
    if prior_factory is None:
        reference = {"autoregressive": ReferenceAutoregressivePrior, "masked": ReferenceMaskedPrior}
        prior_factory = reference[sampler.family]
    prior = _build(prior_factory, kit, Prior, seed)
    V = prior.vocab_size
    cond = torch.full((batch, 1), V - 1, dtype=torch.long)

    def draw(condition: Optional[Tensor], s: int, n: int = batch) -> Tensor:
        return sampler.sample(prior, grid, batch_size=n, condition=condition,
                              generator=torch.Generator().manual_seed(s))

    with c.check("sample"):
        prior.train()
        out = draw(cond, seed)
        _check_ids(c, out, "sample(...)", (batch, *grid), V)
        c.require(prior.training, "sample() must restore the prior's training mode")
        prior.eval()

    with c.check("deterministic"):
        again = draw(cond, seed)
        c.require(torch.equal(out, again), "two calls with generators seeded alike gave different "
                  "samples; draw every random number from the generator argument")

    with c.check("condition_batch_one"):
        single = draw(cond[:1], seed)
        _check_ids(c, single, "sample(condition of batch 1)", (batch, *grid), V)

    with c.check("spatial_condition"):
        spatial = torch.randint(V, (batch, *grid), generator=torch.Generator().manual_seed(seed))
        aligned = draw(spatial, seed)
        _check_ids(c, aligned, "sample(condition = a Long B×h×w grid)", (batch, *grid), V)

    with c.check("state_untouched"):
        before = _snapshot(prior)
        draw(cond, seed + 1)
        changed = _changed_keys(before, prior)
        c.require(not changed, f"sampling changed the prior's state {changed[:3]}")

    with c.check("wrong_family"):
        others = {"autoregressive": ReferenceMaskedPrior, "masked": ReferenceAutoregressivePrior}
        other = others[sampler.family]()
        try:
            sampler.sample(other, grid, batch_size=batch, condition=cond,
                           generator=torch.Generator().manual_seed(seed))
        except ValueError:  # ValidationError: refused in one line
            pass
        else:
            c.fail(f"sampled from a {other.family} prior although it drives {sampler.family} priors; "
                   "call taming_core.sampling.require_family(prior, self.family, ...) first")
    return c.passed


# --------------------------------------------------------------------------- conditioner
def check_conditioner(factory: Factory, condition: Any, *, batch: Optional[int] = None,
                      seed: int = 0) -> list[str]:
    """Check a :class:`~taming_core.Conditioner` made by ``factory``.

    Args:
        factory: returns a fresh conditioner.
        condition: example side information for ``forward`` (class ids, a depth map, a
            list for ``compose``...).
        batch: its batch size (default: the first dimension of the returned tokens).
        seed: seeds construction.
    """
    kit = "check_conditioner"
    cond = _build(factory, kit, Conditioner, seed)
    c = _Checker(kit, cond)
    with c.check("declared_members"):
        _check_positive_int(c, cond.vocab_size, "vocab_size")
        c.require(isinstance(cond.spatial, bool), f"spatial must be a bool, got {cond.spatial!r}")
        c.require(isinstance(cond.takes_condition, bool),
                  f"takes_condition must be a bool, got {cond.takes_condition!r}")
        null = cond.null_id
        c.require(null is None or (isinstance(null, int) and 0 <= null < cond.vocab_size),
                  f"null_id must be None or an id in [0, vocab_size={cond.vocab_size}), got {null!r}")

    with c.check("forward"):
        cond.eval()
        with torch.no_grad():
            tokens = cond(copy.deepcopy(condition))
        c.require(isinstance(tokens, Tensor), f"forward must return a tensor, got {type(tokens).__name__}")
        n = batch if batch is not None else int(tokens.shape[0])
        want = 3 if cond.spatial else 2
        c.require(tokens.dim() == want, f"forward must return Long "
                  f"{'B×h×w (spatial)' if cond.spatial else 'B×L (a prefix)'}, got shape {tuple(tokens.shape)}")
        _check_ids(c, tokens, "forward(condition)", (n, *tokens.shape[1:]), cond.vocab_size)

    with c.check("null_condition"):
        if cond.null_id is None:
            try:
                cond.null_condition(tokens)
            except ValueError:
                pass
            else:
                c.fail("null_condition must raise a ValidationError when null_id is None")
        else:
            null_tokens = cond.null_condition(tokens)
            c.require(isinstance(null_tokens, Tensor) and null_tokens.shape == tokens.shape
                      and bool((null_tokens == cond.null_id).all()),
                      "null_condition(tokens) must be shaped like tokens and hold null_id everywhere")

    with c.check("takes_condition"):
        if not cond.takes_condition:
            try:
                with torch.no_grad():
                    from_batch = cond(n)
            except Exception as exc:
                c.fail(f"takes_condition is False, but forward(batch size {n}) raised "
                       f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            c.require(isinstance(from_batch, Tensor) and torch.equal(from_batch.cpu(), tokens.cpu()),
                      "takes_condition is False, so forward(batch size) must give the same tokens as "
                      "forward(condition)")

    with c.check("deterministic"):
        with torch.no_grad():
            again = cond(copy.deepcopy(condition))
        c.require(torch.equal(again, tokens), "forward gave different tokens for the same condition")

    with c.check("state_dict_round_trip"):
        target = _restored(c, cond, factory, kit, Conditioner, seed)
        with torch.no_grad():
            restored = target(copy.deepcopy(condition))
        c.require(torch.equal(restored, tokens),
                  "a conditioner loaded from another's state dict gives different tokens")
    return c.passed
