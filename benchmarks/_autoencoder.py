"""The small convolutional autoencoder that ``benchmarks/quantizers.py`` trains around
each quantizer: only the bottleneck changes between runs, so differences in
reconstruction and code usage come from the quantizer."""

from __future__ import annotations

from torch import Tensor, nn

from taming_core import Quantizer, QuantizerOutput

#: Base channel width; the latent-resolution blocks use twice as many.
DEFAULT_WIDTH = 32
#: Spatial downsampling of the encoder (two stride-2 convolutions).
DOWNSAMPLE = 4
_KERNEL, _STRIDE, _PAD = 4, 2, 1


class ResBlock(nn.Module):
    """Two 3×3 convolutions with a skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConvAutoencoder(nn.Module):
    """Encoder (f=4) -> ``quantizer`` -> decoder.

    Args:
        in_channels: image channels (1 for Fashion-MNIST, 3 for photos).
        latent_dim: channels the encoder gives the quantizer.
        quantizer: any :class:`~taming_core.Quantizer` whose ``z_q`` has
            ``code_channels`` channels.
        code_channels: channels of ``z_q`` (defaults to ``latent_dim``).
        width: base channel width.
    """

    def __init__(self, in_channels: int, latent_dim: int, quantizer: Quantizer, *,
                 code_channels: int | None = None, width: int = DEFAULT_WIDTH) -> None:
        super().__init__()
        hidden = 2 * width
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, _KERNEL, _STRIDE, _PAD), nn.SiLU(),
            nn.Conv2d(width, hidden, _KERNEL, _STRIDE, _PAD),
            ResBlock(hidden), nn.SiLU(), nn.Conv2d(hidden, latent_dim, 1))
        self.quantizer = quantizer
        self.decoder = nn.Sequential(
            nn.Conv2d(code_channels or latent_dim, hidden, 3, padding=1), ResBlock(hidden), nn.SiLU(),
            nn.ConvTranspose2d(hidden, width, _KERNEL, _STRIDE, _PAD), nn.SiLU(),
            nn.ConvTranspose2d(width, in_channels, _KERNEL, _STRIDE, _PAD))

    def forward(self, images: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Images B×C×H×W (H, W multiples of 4) -> (reconstruction, quantizer output)."""
        out = self.quantizer(self.encoder(images))
        return self.decoder(out.z_q), out
