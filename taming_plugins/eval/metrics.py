"""Per-image reconstruction metrics: PSNR, SSIM and the LPIPS distance.

Conventions: inputs are float B×C×H×W batches in the library's image range
[-1, 1]; PSNR and SSIM map them to [0, 1] (``(x + 1) / 2``, clamped) and use a data
range of 1, so the numbers equal those of scikit-image on 8-bit images rescaled to
[0, 1]. Every function returns one value per image (a float tensor of shape B) so
that callers can average over a whole data set, not over batch means.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taming_core.errors import TamingError, ValidationError
from taming_core.validation import check_tensor

log = logging.getLogger(__name__)

#: Side of the Gaussian SSIM window and its standard deviation (Wang et al., 2004).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
#: SSIM stabilising constants, relative to the data range (Wang et al., 2004).
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: Data range of images mapped to [0, 1].
UNIT_RANGE = 1.0


def to_unit_range(images: Tensor) -> Tensor:
    """Map images from [-1, 1] to [0, 1], clamping values outside (decoders overshoot)."""
    return ((images.float() + 1.0) / 2.0).clamp_(0.0, 1.0)


def _check_pair(x: Tensor, y: Tensor, name: str) -> None:
    check_tensor(x, f"{name}(x)", dims=("B", "C", "H", "W"), dtype="float")
    check_tensor(y, f"{name}(y)", dims=("B", "C", "H", "W"), dtype="float")
    if x.shape != y.shape:
        raise ValidationError(f"{name}: x and y must have the same shape, got {tuple(x.shape)} "
                              f"and {tuple(y.shape)}")


@torch.no_grad()
def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB of each image pair (B×C×H×W in [-1, 1]) -> B.

    Identical images give ``inf`` (as scikit-image does).
    """
    _check_pair(x, y, "psnr")
    mse = (to_unit_range(x) - to_unit_range(y)).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(UNIT_RANGE ** 2 / mse)


@functools.lru_cache(maxsize=8)
def _gaussian_1d(size: int, sigma: float) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    return kernel / kernel.sum()


def _blur(x: Tensor, kernel: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filter of every channel of x (B×C×H×W)."""
    channels = x.shape[1]
    k = kernel.to(device=x.device, dtype=x.dtype)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


@torch.no_grad()
def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Structural similarity of each image pair (B×C×H×W in [-1, 1]) -> B.

    Wang et al. (2004): an 11×11 Gaussian window with sigma 1.5, population
    (not sample) covariances, K1 = 0.01, K2 = 0.03, on images mapped to [0, 1]; the
    SSIM map is averaged over the positions where the window fits inside the image
    and over channels. Matches ``skimage.metrics.structural_similarity(...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``.
    """
    _check_pair(x, y, "ssim")
    h, w = x.shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise ValidationError(f"ssim: images must be at least {SSIM_WINDOW}×{SSIM_WINDOW} "
                              f"(the Gaussian window), got {h}×{w}")
    # float64 keeps the variance terms (differences of close numbers) accurate.
    a, b = to_unit_range(x).double(), to_unit_range(y).double()
    kernel = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA)
    mu_a, mu_b = _blur(a, kernel), _blur(b, kernel)
    var_a = _blur(a * a, kernel) - mu_a ** 2
    var_b = _blur(b * b, kernel) - mu_b ** 2
    cov = _blur(a * b, kernel) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * UNIT_RANGE) ** 2, (SSIM_K2 * UNIT_RANGE) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(dim=1).float()


class PerceptualDistance:
    """LPIPS-style distance through a registered perceptual loss, per image pair.

    Args:
        loss: a :class:`~taming_core.PerceptualLoss` module (B×3×H×W pairs in [-1, 1]
            -> B×1×1×1); :func:`load_lpips` builds the registered ``lpips`` loss.
        device: where the network runs.
    """

    def __init__(self, loss: nn.Module, device: torch.device | str = "cpu") -> None:
        self.loss = loss.to(device).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Float B×3×H×W pairs in [-1, 1] -> distances B."""
        _check_pair(x, y, "lpips")
        d = self.loss(x.to(self.device).clamp(-1, 1), y.to(self.device).clamp(-1, 1))
        return d.reshape(d.shape[0], -1).mean(dim=1).float().cpu()


def load_lpips(device: torch.device | str = "cpu", **kwargs: Any) -> tuple[Optional[PerceptualDistance], str]:
    """Build the registered ``perceptual`` distance ``lpips`` as a metric.

    Returns ``(metric, "")``, or ``(None, reason)`` when the loss is not registered or
    its backbone weights are not available offline (the reason is reported instead of
    a number, never silently replaced by something else).
    """
    import taming_core

    try:
        loss = taming_core.create("perceptual", "lpips", **kwargs)
    except (TamingError, OSError, RuntimeError, ImportError, ValueError) as exc:
        text = str(exc).strip().splitlines()
        reason = text[0] if text else type(exc).__name__
        log.debug("LPIPS unavailable: %s", reason)
        return None, reason
    return PerceptualDistance(loss, device), ""



def channel_mean_error(x: Tensor, y: Tensor) -> Tensor:
    """Colour shift per image: the mean over channels of ``|mean_c(x) - mean_c(y)|``, on
    the [0, 1] scale (B). A reconstruction that keeps colours scores near 0 even when its
    details differ; a red object coming back brown scores high."""
    _check_pair(x, y, "channel_mean_error")
    a, b = to_unit_range(x).float(), to_unit_range(y).float()
    return (a.mean(dim=(-2, -1)) - b.mean(dim=(-2, -1))).abs().mean(dim=1)


def _ring_mask(h: int, w: int, ring: int, device: torch.device) -> Tensor:
    if not 0 < 2 * ring < min(h, w):
        raise ValidationError(f"ring: expected 0 < 2·ring < {min(h, w)} (the image side), got {ring}")
    mask = torch.ones(h, w, dtype=torch.bool, device=device)
    mask[ring:h - ring, ring:w - ring] = False
    return mask


def border_error_ratio(x: Tensor, y: Tensor, ring: int = 1) -> Tensor:
    """Per image (B): mean absolute error of the outer ``ring`` pixels divided by the mean
    absolute error of the interior. About 1 without border artifacts; a frame around
    reconstructions (zero padding, edge effects) shows as a ratio well above 1."""
    _check_pair(x, y, "border_error_ratio")
    err = (to_unit_range(x).float() - to_unit_range(y).float()).abs().mean(dim=1)  # B×H×W
    mask = _ring_mask(err.shape[-2], err.shape[-1], ring, err.device)
    return err[:, mask].mean(dim=1) / err[:, ~mask].mean(dim=1).clamp_min(1e-8)


def worst_edge_error_ratio(x: Tensor, y: Tensor) -> Tensor:
    """Per image (B): the largest of the four one-pixel edges' (top, bottom, left, right)
    mean absolute error divided by the interior's. A line along one edge only (the
    original VQGAN's right/bottom zero pad) shows here even when the whole ring's
    average (:func:`border_error_ratio`) hides it."""
    _check_pair(x, y, "worst_edge_error_ratio")
    err = (to_unit_range(x).float() - to_unit_range(y).float()).abs().mean(dim=1)  # B×H×W
    mask = _ring_mask(err.shape[-2], err.shape[-1], 1, err.device)
    interior = err[:, ~mask].mean(dim=1).clamp_min(1e-8)
    edges = torch.stack([err[:, 0, :].mean(1), err[:, -1, :].mean(1), err[:, :, 0].mean(1),
                         err[:, :, -1].mean(1)], dim=1)
    return edges.max(dim=1).values / interior


def edge_interior_ratio(images: Tensor, ring: int = 1) -> Tensor:
    """Per image (B), for samples without a reference: the mean absolute deviation of the
    outer ``ring`` pixels from the image's per-channel mean, divided by the same for the
    interior. A lighter or darker frame around a sample gives a ratio well above 1."""
    check_tensor(images, "edge_interior_ratio(images)", dims=("B", "C", "H", "W"), dtype="float")
    a = to_unit_range(images).float()
    dev = (a - a.mean(dim=(-2, -1), keepdim=True)).abs().mean(dim=1)  # B×H×W
    mask = _ring_mask(dev.shape[-2], dev.shape[-1], ring, dev.device)
    return dev[:, mask].mean(dim=1) / dev[:, ~mask].mean(dim=1).clamp_min(1e-8)


def worst_edge_shift(images: Tensor, ring: int = 1) -> Tensor:
    """Per image (B), for samples without a reference: the largest shift of an edge
    band's mean brightness (top, bottom, left, right; ``ring`` pixels wide) from the
    interior's mean, in units of the interior's standard deviation. A lighter or darker
    line or frame along the edges gives about 0.5 and more; 0 means the edges look like
    the interior on average."""
    check_tensor(images, "worst_edge_shift(images)", dims=("B", "C", "H", "W"), dtype="float")
    g = to_unit_range(images).float().mean(dim=1)  # B×H×W brightness
    h, w = g.shape[-2:]
    _ring_mask(h, w, ring, g.device)  # validates the ring width
    interior = g[:, ring:h - ring, ring:w - ring].flatten(1)
    mean, std = interior.mean(dim=1), interior.std(dim=1).clamp_min(1e-4)
    bands = torch.stack([g[:, :ring, :].flatten(1).mean(1), g[:, h - ring:, :].flatten(1).mean(1),
                         g[:, :, :ring].flatten(1).mean(1), g[:, :, w - ring:].flatten(1).mean(1)], dim=1)
    return ((bands - mean[:, None]).abs() / std[:, None]).max(dim=1).values
