"""The ``patchgan`` discriminator: pix2pix's N-layer PatchGAN as used by VQGAN.

Layout of ``main`` (an ``nn.Sequential``, indices as in the original checkpoints'
``loss.discriminator.main.{i}``)::

    0 conv 4×4 /2 (in -> ndf, bias), 1 LeakyReLU(0.2)
    for n in 1..n_layers-1: conv 4×4 /2 (ndf·m_prev -> ndf·m, m = min(2**n, 8)), norm, LeakyReLU
    conv 4×4 /1 (-> ndf·min(2**n_layers, 8)), norm, LeakyReLU
    conv 4×4 /1 (-> 1, bias)                     # patch logits

All convs use padding 1. Hidden convs have no bias with BatchNorm and a bias with
ActNorm. Weights start as ``N(0, 0.02)`` for convs and ``N(1, 0.02)`` (bias 0) for
BatchNorm, the original ``weights_init``.
"""

from __future__ import annotations

from torch import Tensor, nn

from taming_core import Discriminator, register
from taming_core.validation import check_positive, check_tensor

from ._actnorm import ActNorm

KERNEL_SIZE = 4
PADDING = 1
LEAKY_SLOPE = 0.2
MAX_CHANNEL_MULT = 8
INIT_STD = 0.02
CONV_INIT_MEAN = 0.0
NORM_INIT_MEAN = 1.0


def init_weights(module: nn.Module) -> None:
    """The original ``weights_init``: N(0, 0.02) conv weights, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, CONV_INIT_MEAN, INIT_STD)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, NORM_INIT_MEAN, INIT_STD)
        nn.init.zeros_(module.bias)


@register("discriminator", "patchgan")
class PatchGANDiscriminator(Discriminator):
    """PatchGAN (NLayerDiscriminator): B×C×H×W images -> B×1×h×w patch logits.

    Args:
        in_channels: image channels (original ``disc_in_channels``/``input_nc``).
        ndf: channels of the first conv (original ``disc_ndf``).
        n_layers: number of stride-2 convs (original ``disc_num_layers``).
        use_actnorm: ActNorm instead of BatchNorm (original ``use_actnorm``).
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3,
                 use_actnorm: bool = False) -> None:
        super().__init__()
        check_positive(in_channels, "patchgan(in_channels)")
        check_positive(ndf, "patchgan(ndf)")
        check_positive(n_layers, "patchgan(n_layers)")
        self.in_channels, self.ndf, self.n_layers = in_channels, ndf, n_layers
        self.use_actnorm = bool(use_actnorm)
        hidden_bias = self.use_actnorm

        def norm(channels: int) -> nn.Module:
            return ActNorm(channels) if self.use_actnorm else nn.BatchNorm2d(channels)

        def conv(c_in: int, c_out: int, stride: int, bias: bool) -> nn.Conv2d:
            return nn.Conv2d(c_in, c_out, KERNEL_SIZE, stride=stride, padding=PADDING, bias=bias)

        layers: list[nn.Module] = [conv(in_channels, ndf, 2, True), nn.LeakyReLU(LEAKY_SLOPE, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, MAX_CHANNEL_MULT)
            layers += [conv(ndf * prev, ndf * mult, 2, hidden_bias), norm(ndf * mult),
                       nn.LeakyReLU(LEAKY_SLOPE, True)]
        prev, mult = mult, min(2 ** n_layers, MAX_CHANNEL_MULT)
        layers += [conv(ndf * prev, ndf * mult, 1, hidden_bias), norm(ndf * mult),
                   nn.LeakyReLU(LEAKY_SLOPE, True)]
        layers.append(conv(ndf * mult, 1, 1, True))
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def get_config(self) -> dict:
        """A spec that rebuilds this discriminator through ``taming_core.build``."""
        return {"kind": "discriminator", "name": "patchgan", "in_channels": self.in_channels,
                "ndf": self.ndf, "n_layers": self.n_layers, "use_actnorm": self.use_actnorm}

    def forward(self, images: Tensor) -> Tensor:
        check_tensor(images, "patchgan(images)", dims=("B", self.in_channels, "H", "W"), dtype="float")
        return self.main(images)
