"""The ``pixelcnn`` prior: a Gated PixelCNN over the token grid (van den Oord et al. 2016).

An autoregressive prior made of masked convolutions instead of attention:

* a token embedding of the image grid (B×C×H×W);
* a **vertical stack** (k//2+1)×k convolutions over the rows above, and a **horizontal
  stack** 1×(k//2+1) convolutions over the pixels to the left in the same row, the
  vertical stack feeding the horizontal one: together they see every earlier pixel in
  raster order (no blind spot, unlike the single masked convolution of the first
  PixelCNN). The first layer shifts the vertical stack down one row and the horizontal
  stack right one pixel ("mask A": a pixel never sees itself); later layers include the
  current position ("mask B"), which by then only holds earlier information;
* gated units ``tanh(a) ⊙ sigmoid(b)``, a residual connection on the horizontal stack and
  a 1×1 skip connection from every layer to the output head;
* a **conditional bias**: the condition prefix tokens (SOS, class, ...) are embedded,
  averaged, and added through a 1×1 projection to the gate pre-activations of every
  layer (the conditional PixelCNN of the paper, as conditional GANs inject labels).

Every earlier pixel is inside the receptive field when
``n_layer·(kernel_size//2) >= max(H − 2, W − 1)`` (checked at construction).

Sequence contract (as the GPT's): ``tokens`` is ``[prefix (L tokens), image tokens in
raster order]`` with ``L = block_size − H·W``; the logits at position t predict token
t+1. Positions before the last prefix token do not model the condition: their logits
are zero, as is the position after the last pixel.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from taming_core import AutoregressivePrior, PriorCache, TokenHistoryCache, ValidationError, register
from taming_core.validation import check_positive, check_tensor, embed_tokens

__all__ = ["GatedPixelCNN", "PixelCNNCache"]


class PixelCNNCache(TokenHistoryCache):
    """The tokens seen so far; :meth:`GatedPixelCNN.forward_cached` recomputes the network
    from them (a convolution stack keeps no incremental state here)."""


def _gate(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer of both stacks; ``first`` applies the mask-A shifts."""

    def __init__(self, channels: int, kernel_size: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.r = kernel_size // 2
        c2 = 2 * channels
        self.v_conv = nn.Conv2d(channels, c2, (self.r + 1, kernel_size))
        self.h_conv = nn.Conv2d(channels, c2, (1, self.r + 1))
        self.v_to_h = nn.Conv2d(c2, c2, 1)
        self.cond = nn.Conv2d(channels, 2 * c2, 1)  # conditional bias of both stacks
        self.h_res = nn.Conv2d(channels, channels, 1)
        self.h_skip = nn.Conv2d(channels, channels, 1)

    def forward(self, v: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r = self.r
        pv = self.v_conv(F.pad(v, (r, r, r, 0)))      # row i sees rows i-r..i
        ph = self.h_conv(F.pad(h, (r, 0, 0, 0)))      # (i, j) sees (i, j-r..j)
        if self.first:  # mask A: strictly earlier rows / pixels only
            pv = F.pad(pv, (0, 0, 1, 0))[:, :, :-1]
            ph = F.pad(ph, (1, 0, 0, 0))[:, :, :, :-1]
        bv, bh = self.cond(c).chunk(2, dim=1)
        v_out = _gate(pv + bv)
        h_gated = _gate(ph + self.v_to_h(pv) + bh)
        h_out = self.h_res(h_gated) + (0 if self.first else h)
        return v_out, h_out, self.h_skip(h_gated)


@register("prior", "pixelcnn")
class GatedPixelCNN(AutoregressivePrior):
    """Gated PixelCNN prior over an H×W token grid with a condition prefix.

    Args:
        vocab_size: number of token ids (image codes plus condition ids).
        block_size: condition prefix length L plus H·W (L = block_size − H·W >= 1).
        grid: the token grid (H, W) the prior models.
        n_layer: gated layers (the first one is the mask-A layer).
        channels: width of both stacks.
        kernel_size: odd kernel width k (>= 3) of the vertical (k//2+1)×k and horizontal
            1×(k//2+1) convolutions.
    """

    def __init__(self, vocab_size: int, block_size: int, *, grid: Any, n_layer: int = 8,
                 channels: int = 128, kernel_size: int = 5) -> None:
        super().__init__()
        for value, name in ((vocab_size, "vocab_size"), (block_size, "block_size"),
                            (n_layer, "n_layer"), (channels, "channels"), (kernel_size, "kernel_size")):
            check_positive(value, f"pixelcnn({name})")
        if not isinstance(grid, (list, tuple)) or len(grid) != 2:
            raise ValidationError(f"pixelcnn(grid): expected [height, width] in tokens, got {grid!r}")
        for i, size in enumerate(grid):
            check_positive(size, f"pixelcnn(grid[{i}])")
        gh, gw = int(grid[0]), int(grid[1])
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValidationError(f"pixelcnn(kernel_size): expected an odd size >= 3, got {kernel_size}")
        if block_size - gh * gw < 1:
            raise ValidationError(f"pixelcnn(block_size): expected at least one condition token plus "
                                  f"the {gh}×{gw} grid ({gh * gw + 1}), got {block_size}")
        reach = n_layer * (kernel_size // 2)
        if reach < max(gh - 2, gw - 1):
            raise ValidationError(
                f"pixelcnn(n_layer): {n_layer} layers of kernel {kernel_size} reach {reach} tokens but "
                f"the {gh}×{gw} grid needs {max(gh - 2, gw - 1)} for every earlier token to be seen; "
                f"use n_layer >= {-(-max(gh - 2, gw - 1) // (kernel_size // 2))} or a larger kernel")
        self._config: dict[str, Any] = dict(vocab_size=vocab_size, block_size=block_size,
                                            grid=[gh, gw], n_layer=n_layer, channels=channels,
                                            kernel_size=kernel_size)
        self.prefix_len = block_size - gh * gw
        self.tok_emb = nn.Embedding(vocab_size, channels)
        self.cond_emb = nn.Embedding(vocab_size, channels)
        self.cond_pos = nn.Parameter(torch.zeros(self.prefix_len, channels))
        self.layers = nn.ModuleList(GatedLayer(channels, kernel_size, first=i == 0)
                                    for i in range(n_layer))
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                 nn.Conv2d(channels, vocab_size, 1))

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return int(self._config["vocab_size"])

    @property
    def block_size(self) -> int:
        return int(self._config["block_size"])

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid (H, W)."""
        return int(self._config["grid"][0]), int(self._config["grid"][1])

    def get_config(self) -> dict[str, Any]:
        """A JSON-able spec that rebuilds this prior (untrained) via ``taming_core.build``."""
        return {"kind": "prior", "name": "pixelcnn", **self._config}

    # ------------------------------------------------------------------ network
    def pixel_logits(self, grid_tokens: Tensor, prefix: Tensor) -> Tensor:
        """Long B×R×W image tokens (R <= H rows) and Long B×L prefix -> logits B×V×R×W,
        where the logits at pixel (i, j) predict token (i, j) from the earlier pixels."""
        c = (embed_tokens(self.cond_emb, prefix, "pixelcnn(condition tokens)") + self.cond_pos).mean(
            dim=1)[:, :, None, None]
        x = embed_tokens(self.tok_emb, grid_tokens, "pixelcnn(tokens)").permute(0, 3, 1, 2)
        v, h, skip = x, x, 0
        for layer in self.layers:
            v, h, s = layer(v, h, c)
            skip = skip + s
        return self.out(skip)

    def forward(self, tokens: Tensor) -> Tensor:
        """Long B×T ``[prefix, image tokens]`` (L <= T <= block_size) -> logits B×T×V;
        position t predicts token t+1 (zero logits where nothing is predicted)."""
        sizes = check_tensor(tokens, "pixelcnn.forward(tokens)", dims=("B", "T"), dtype="long")
        b, t = sizes["B"], sizes["T"]
        big_l = self.prefix_len
        if not big_l <= t <= self.block_size:
            raise ValidationError(f"pixelcnn.forward(tokens): expected the {big_l} condition tokens "
                                  f"plus at most {self.block_size - big_l} image tokens, got {t} tokens")
        gh, gw = self.grid
        n_img = t - big_l
        last = min(n_img, gh * gw - 1)  # last pixel whose prediction is asked for
        rows = last // gw + 1           # causal: later rows cannot matter
        grid_tokens = tokens.new_zeros(b, rows * gw)
        shown = min(n_img, rows * gw)
        grid_tokens[:, :shown] = tokens[:, big_l:big_l + shown]
        pix = self.pixel_logits(grid_tokens.view(b, rows, gw), tokens[:, :big_l])
        pix = pix.flatten(2).transpose(1, 2)[:, :last + 1]
        out = pix.new_zeros(b, t, self.vocab_size)
        out[:, big_l - 1:big_l + last] = pix
        return out

    # ------------------------------------------------------------------ cache API
    def new_cache(self, batch_size: int, max_len: int, *, device: Optional[torch.device] = None,
                  dtype: Optional[torch.dtype] = None) -> PixelCNNCache:
        """A :class:`PixelCNNCache` for ``batch_size`` sequences of ``max_len`` tokens
        (``dtype`` is unused: the cache holds token ids)."""
        check_positive(batch_size, "pixelcnn.new_cache(batch_size)")
        check_positive(max_len, "pixelcnn.new_cache(max_len)")
        if max_len > self.block_size:
            raise ValidationError(f"pixelcnn.new_cache(max_len): expected at most the block size "
                                  f"{self.block_size}, got {max_len}")
        return PixelCNNCache(batch_size, max_len, device or self.tok_emb.weight.device)

    def forward_cached(self, tokens: Tensor, cache: PriorCache) -> Tensor:
        """Append Long B×t ``tokens`` to ``cache`` and return their logits B×t×V.

        Cost: no incremental state is kept; every call runs :meth:`forward` over all
        cached tokens, which convolves the grid rows up to the newest token. A one-token
        step at pixel p costs one pass over ``p // W + 1`` rows, so sampling an H×W grid
        costs about H·W/2 full-grid passes (H·W sequential network evaluations)."""
        if not isinstance(cache, PixelCNNCache):
            raise ValidationError(f"pixelcnn.forward_cached(cache): expected a PixelCNNCache from "
                                  f"pixelcnn.new_cache(), got {type(cache).__name__}")
        check_tensor(tokens, "pixelcnn.forward_cached(tokens)", dims=(cache.batch_size, "T"), dtype="long")
        if cache.length + tokens.shape[1] < self.prefix_len:
            raise ValidationError(f"pixelcnn.forward_cached(tokens): the first call must give the "
                                  f"{self.prefix_len} condition tokens, got {cache.length + tokens.shape[1]}")
        start = cache.append(tokens)
        return self.forward(cache.tokens)[:, start:]

    def extra_repr(self) -> str:
        c = self._config
        return (f"vocab_size={c['vocab_size']}, grid={c['grid']}, prefix={self.prefix_len}, "
                f"n_layer={c['n_layer']}, channels={c['channels']}, kernel_size={c['kernel_size']}, "
                f"params={sum(p.numel() for p in self.parameters()) / 1e6:.2f}M")
