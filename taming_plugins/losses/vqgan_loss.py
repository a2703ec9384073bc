"""The composed VQGAN training loss (registered as ``autoencoder_loss`` ``vqgan``).

Semantics of the original ``VQLPIPSWithDiscriminator`` (taming-transformers,
``taming/modules/losses/vqperceptual.py``):

* reconstruction ``rec = |x - x̂| + perceptual_weight · LPIPS(x, x̂)`` (per pixel, the
  LPIPS term broadcast per sample), ``nll = mean(rec)``. The original also divides by
  ``exp(logvar)`` and adds ``logvar`` with ``logvar`` fixed at 0: both are no-ops and
  omitted. Its ``pixelloss_weight`` is stored but never used; ``pixel_weight`` here
  multiplies the L1 term and defaults to 1, which is the original behaviour.
* generator ``g = objective.generator_loss(D(x̂))`` (``-mean(D(x̂))`` for hinge/vanilla),
  adaptive weight ``λ = ‖∇_last nll‖ / (‖∇_last g‖ + 1e-4)`` at the decoder's last
  layer, clamped to ``[0, 1e4]``, detached, times ``disc_weight``;
  ``disc_factor`` is 0 before step ``disc_start``;
  ``total = nll + λ · disc_factor · g + codebook_weight · quantizer_loss``.
* discriminator ``disc_factor · objective.discriminator_loss(D(x), D(x̂.detach()))``.

Differences, all documented choices:

* ``pixel_loss="mse"`` (not in the original; default ``"l1"``) replaces ``|x - x̂|`` by
  ``(x - x̂)²`` in ``rec``: the squared error is what PSNR measures.

* A tokenizer that declares no last layer (``Tokenizer.last_layer`` is None) trains with
  the fixed weight ``disc_weight`` instead of the adaptive one (the original always had
  the decoder's ``conv_out``).

* Before ``disc_start`` (disc_factor 0) the discriminator is not evaluated at all (the
  original runs it and multiplies by 0): same gradients, less work; the discriminator
  step is skipped then (:meth:`VQGANLoss.discriminator_active`).
* ``fused=True`` (default) computes the same gradients with less work: the gradients of
  ``nll`` and ``g`` with respect to ``x̂`` are taken once (one backward through LPIPS and
  one through D), the adaptive weight is obtained from them through the last layer only,
  and the returned loss has the value of ``total`` but back-propagates
  ``∂total/∂x̂`` directly into the decoder (no second pass through LPIPS and D).
  ``fused=False`` is the literal original computation (for checking).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from taming_core.errors import ConfigError
from taming_core.interfaces import AutoencoderLoss, Discriminator, GANObjective, PerceptualLoss
from taming_core.registry import create, create_from_spec, register
from taming_core.validation import check_choice, check_positive, check_tensor

#: ``pixel_loss`` values: the original's L1, or the squared error (what PSNR measures).
PIXEL_LOSSES = ("l1", "mse")
#: Added to the GAN-gradient norm in the adaptive weight (original value).
ADAPTIVE_EPS = 1e-4
#: Upper clamp of the adaptive weight (original value).
ADAPTIVE_MAX = 1e4

ComponentSpec = Union[None, str, Mapping[str, Any], nn.Module, GANObjective]


def _build(spec: ComponentSpec, kind: str, what: str) -> Any:
    """A registered component from an instance, a name or a ``{"name": ..., **kwargs}`` dict."""
    if spec is None or not isinstance(spec, (str, Mapping)):
        return spec
    if isinstance(spec, str):
        return create(kind, spec)
    if "name" not in spec:
        raise ConfigError(f"vqgan loss({what}): a spec dict needs a 'name' key, got {sorted(spec)}")
    return create_from_spec(spec.get("kind", kind), spec)


def adopt_weight(weight: float, step: int, threshold: int, value: float = 0.0) -> float:
    """``value`` before step ``threshold``, ``weight`` from then on (the original helper)."""
    return value if step < threshold else weight


def _norm(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.float())


@register("autoencoder_loss", "vqgan")
class VQGANLoss(AutoencoderLoss):
    """L1 + perceptual reconstruction, quantizer loss and an adaptively weighted GAN term.

    Args:
        discriminator: a :class:`~taming_core.Discriminator`, a registered name or a spec
            dict (default ``{"name": "patchgan"}``).
        perceptual: a perceptual loss, name or spec (e.g. ``{"name": "lpips"}``), or None.
        gan_objective: ``"hinge"``, ``"vanilla"``, ``"non_saturating"`` or any registered
            :class:`~taming_core.GANObjective` (instance, name or spec).
        disc_start: first step with the GAN term (original ``disc_start``).
        codebook_weight, perceptual_weight, pixel_weight, disc_weight, disc_factor: weights
            as in the original (``disc_weight`` scales the adaptive weight).
        adaptive_weight: False uses ``disc_weight`` alone as the GAN weight.
        pixel_loss: ``"l1"`` (the original, default) or ``"mse"`` (squared error, the
            quantity PSNR measures; the logged ``l1`` stays the L1 distance).
        fused: compute the adaptive weight and the backward without repeated passes
            (same gradients; see the module docstring).
    """

    def __init__(self, *, discriminator: ComponentSpec = None,
                 perceptual: ComponentSpec = None, gan_objective: ComponentSpec = "hinge",
                 disc_start: int = 0, codebook_weight: float = 1.0, perceptual_weight: float = 1.0,
                 pixel_weight: float = 1.0, disc_weight: float = 1.0, disc_factor: float = 1.0,
                 adaptive_weight: bool = True, fused: bool = True, pixel_loss: str = "l1") -> None:
        super().__init__()
        check_choice(pixel_loss, "vqgan loss(pixel_loss)", PIXEL_LOSSES)
        self.pixel_loss = pixel_loss
        check_positive(disc_start, "vqgan loss(disc_start)", allow_zero=True)
        for name, value in (("codebook_weight", codebook_weight), ("perceptual_weight", perceptual_weight),
                            ("pixel_weight", pixel_weight), ("disc_weight", disc_weight),
                            ("disc_factor", disc_factor)):
            check_positive(value, f"vqgan loss({name})", integer=False, allow_zero=True)
        disc = _build(discriminator if discriminator is not None else {"name": "patchgan"},
                      "discriminator", "discriminator")
        if not isinstance(disc, nn.Module):
            raise ConfigError(f"vqgan loss(discriminator): expected a Discriminator module, got "
                              f"{type(disc).__name__}")
        self.discriminator = disc
        perceptual_module = _build(perceptual, "perceptual", "perceptual")
        if perceptual_module is not None and not isinstance(perceptual_module, nn.Module):
            raise ConfigError(f"vqgan loss(perceptual): expected a PerceptualLoss module, got "
                              f"{type(perceptual_module).__name__}")
        self.perceptual = perceptual_module
        objective = _build(gan_objective, "gan", "gan_objective")
        if not isinstance(objective, GANObjective):
            raise ConfigError(f"vqgan loss(gan_objective): expected a GANObjective such as 'hinge', "
                              f"got {type(objective).__name__}")
        self.gan_objective: GANObjective = objective
        self.disc_start, self.codebook_weight = int(disc_start), float(codebook_weight)
        self.perceptual_weight, self.pixel_weight = float(perceptual_weight), float(pixel_weight)
        self.disc_weight, self.disc_factor = float(disc_weight), float(disc_factor)
        self.adaptive_weight, self.fused = bool(adaptive_weight), bool(fused)

    # ------------------------------------------------------------------ parts
    # Sub-modules registered under these names (state-dict keys ``discriminator.*`` and
    # ``perceptual.*``); the properties declare them as the AutoencoderLoss contract says.
    @property
    def discriminator(self) -> Discriminator:  # type: ignore[override]
        return self._modules.get("discriminator")  # type: ignore[return-value]

    @discriminator.setter
    def discriminator(self, module: nn.Module) -> None:
        self._modules["discriminator"] = module

    @property
    def perceptual(self) -> Optional[PerceptualLoss]:  # type: ignore[override]
        return self._modules.get("perceptual")  # type: ignore[return-value]

    @perceptual.setter
    def perceptual(self, module: Optional[nn.Module]) -> None:
        self._modules["perceptual"] = module

    # ------------------------------------------------------------------ helpers
    def current_disc_factor(self, step: int) -> float:
        return adopt_weight(self.disc_factor, step, self.disc_start)

    def discriminator_active(self, step: int) -> bool:
        """Whether the GAN term (and the discriminator step) contributes at ``step``."""
        return self.current_disc_factor(step) > 0.0 and self.disc_weight > 0.0

    def reconstruction_loss(self, inputs: Tensor, reconstructions: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``nll = mean(pixel_weight·|x - x̂| + perceptual_weight·LPIPS)`` (``(x - x̂)²`` in
        place of ``|x - x̂|`` with ``pixel_loss="mse"``) and its parts."""
        diff = inputs - reconstructions
        l1 = torch.abs(diff).mean()
        parts = {"l1": l1}
        if self.pixel_loss == "l1":
            pixel = l1
        else:
            parts["mse"] = pixel = diff.float().square().mean()
        nll = self.pixel_weight * pixel
        if self.perceptual is not None and self.perceptual_weight > 0:
            p_loss = self.perceptual(inputs, reconstructions).mean()
            nll = nll + self.perceptual_weight * p_loss
            parts["p_loss"] = p_loss
        return nll, parts

    def adaptive_weight_from_grads(self, grad_nll: Tensor, grad_g: Tensor) -> Tensor:
        """``clamp(‖grad_nll‖ / (‖grad_g‖ + 1e-4), 0, 1e4) · disc_weight`` (detached)."""
        d_weight = _norm(grad_nll) / (_norm(grad_g) + ADAPTIVE_EPS)
        return torch.clamp(d_weight, 0.0, ADAPTIVE_MAX).detach() * self.disc_weight

    # ------------------------------------------------------------------ generator
    def generator_loss(self, inputs: Tensor, reconstructions: Tensor, quant_loss: Tensor, *,
                       step: int, last_layer: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of the tokenizer (autoencoder) step and its logged parts.

        Args:
            inputs: B×C×H×W images in [-1, 1].
            reconstructions: the tokenizer's output for ``inputs`` (with its graph).
            quant_loss: the quantizer's scalar loss.
            step: global step (for ``disc_start``).
            last_layer: the decoder's last weight (``tokenizer.last_layer``); needed for
                the adaptive weight while training. Without gradients (evaluation) the GAN
                weight is 0 as in the original; without a last layer (None) it is the
                fixed ``disc_weight``.
        """
        check_tensor(inputs, "vqgan loss(inputs)", dims=("B", "C", "H", "W"), dtype="float")
        check_tensor(reconstructions, "vqgan loss(reconstructions)", dims=tuple(inputs.shape),
                     dtype="float")
        nll, parts = self.reconstruction_loss(inputs, reconstructions)
        quant_loss = quant_loss.mean()
        disc_factor = self.current_disc_factor(step)
        zero = nll.new_zeros(())
        g_loss, d_weight = zero, zero
        can_grad = (torch.is_grad_enabled() and reconstructions.requires_grad
                    and last_layer is not None)
        fused_grad: Optional[Tensor] = None
        if self.discriminator_active(step):
            g_loss = self.gan_objective.generator_loss(self.discriminator(reconstructions))
            if not self.adaptive_weight or last_layer is None:
                # no last layer declared (Tokenizer.last_layer is None): the fixed weight
                d_weight = zero + self.disc_weight
            elif can_grad and self.fused:
                grad_nll_x, = torch.autograd.grad(nll, reconstructions, retain_graph=True)
                grad_g_x, = torch.autograd.grad(g_loss, reconstructions, retain_graph=True)
                grad_nll_w, = torch.autograd.grad(reconstructions, last_layer, grad_nll_x, retain_graph=True)
                grad_g_w, = torch.autograd.grad(reconstructions, last_layer, grad_g_x, retain_graph=True)
                d_weight = self.adaptive_weight_from_grads(grad_nll_w, grad_g_w)
                fused_grad = grad_nll_x + (d_weight * disc_factor).to(grad_g_x.dtype) * grad_g_x
            elif can_grad:
                grad_nll_w, = torch.autograd.grad(nll, last_layer, retain_graph=True)
                grad_g_w, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
                d_weight = self.adaptive_weight_from_grads(grad_nll_w, grad_g_w)
        total = nll + d_weight * disc_factor * g_loss + self.codebook_weight * quant_loss
        if fused_grad is not None:
            # Same value as ``total``; its gradient reaches the tokenizer through x̂ directly.
            surrogate = (reconstructions * fused_grad.detach()).sum() + self.codebook_weight * quant_loss
            total = surrogate + (total - surrogate).detach()
        logs = {"total_loss": total, "nll_loss": nll, "quant_loss": quant_loss, "g_loss": g_loss,
                "d_weight": d_weight, "disc_factor": nll.new_tensor(disc_factor), **parts}
        # Detached tensors, no device sync: the trainer averages them on logging steps.
        return total, {k: v.detach() for k, v in logs.items()}

    def forward(self, inputs: Tensor, reconstructions: Tensor, quant_loss: Tensor, *, step: int,
                last_layer: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Same as :meth:`generator_loss`."""
        return self.generator_loss(inputs, reconstructions, quant_loss, step=step, last_layer=last_layer)

    # ------------------------------------------------------------------ discriminator
    def discriminator_loss(self, inputs: Tensor, reconstructions: Tensor, *,
                           step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of the discriminator step (inputs and reconstructions are detached)."""
        check_tensor(inputs, "vqgan loss(inputs)", dims=("B", "C", "H", "W"), dtype="float")
        disc_factor = self.current_disc_factor(step)
        logits_real = self.discriminator(inputs.detach())
        logits_fake = self.discriminator(reconstructions.detach())
        d_loss = disc_factor * self.gan_objective.discriminator_loss(logits_real, logits_fake)
        return d_loss, {"disc_loss": d_loss.detach(),
                        "logits_real": logits_real.detach().float().mean(),
                        "logits_fake": logits_fake.detach().float().mean()}
