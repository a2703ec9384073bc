"""``ema``: vector quantizer whose codebook follows an exponential moving average of
the encoder outputs assigned to each code (VQ-VAE appendix / VQ-VAE-2), with
dead-code restart and optional k-means initialisation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from taming_core import Quantizer, QuantizerOutput, register
from taming_core.ops import nearest_code
from taming_core.validation import check_number, check_positive, check_tensor

from ._common import (DEFAULT_USAGE_WINDOW, UsageTracker, all_reduce_sum_, broadcast_, check_latent,
                      code_counts, finalize_metrics, from_rows, is_rank_zero, straight_through,
                      to_rows)

DEFAULT_BETA = 0.25
DEFAULT_DECAY = 0.99
#: Laplace smoothing of the cluster sizes (avoids dividing by zero for empty clusters).
DEFAULT_EPS = 1e-5
#: Training steps a code may go unused before it is re-seeded.
DEFAULT_DEAD_CODE_THRESHOLD = 8
DEFAULT_KMEANS_ITERS = 10
#: Cluster size given to a freshly restarted code: one vector, like a real assignment.
RESTART_CLUSTER_SIZE = 1.0


@torch.no_grad()
def kmeans(rows: Tensor, num_clusters: int, iters: int) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with ``nearest_code`` assignments.

    Starts from random rows (with replacement if there are fewer rows than
    clusters); empty clusters keep their previous centre. Returns the float32
    centres K×D and the final cluster counts K.
    """
    data = rows.float()
    n = data.shape[0]
    if n >= num_clusters:
        start = torch.randperm(n, device=data.device)[:num_clusters]
    else:
        start = torch.randint(n, (num_clusters,), device=data.device)
    centres = data[start].clone()
    counts = torch.zeros(num_clusters, device=data.device)
    for _ in range(max(iters, 1)):
        assign = nearest_code(data, centres)
        counts = code_counts(assign, num_clusters)
        sums = torch.zeros_like(centres).index_add_(0, assign, data)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1)
    return centres, counts


@register("quantizer", "ema")
class EMAQuantizer(Quantizer):
    """Nearest-code quantizer with an EMA-updated codebook and dead-code restart.

    Each training step, with ``n_k`` the number of rows assigned to code ``k`` and
    ``s_k`` their sum: ``N_k ← decay·N_k + (1-decay)·n_k``, ``S_k ← decay·S_k +
    (1-decay)·s_k`` and, for the codes used in the step, ``e_k = S_k / Ñ_k``, where ``Ñ``
    is ``N`` with Laplace smoothing ``eps`` (unused codes keep their vector). Only the
    encoder gets a gradient, from ``beta·mean((z-sg[e])²)``.

    Dead codes: a code unused for ``dead_code_threshold`` consecutive training steps
    is re-seeded with a random encoder output of the current batch (0 disables it).
    With ``kmeans_init`` the codebook is set by ``kmeans_iters`` Lloyd iterations on
    the first training batch.

    Distributed: when ``torch.distributed`` is initialised, counts and sums are
    all-reduced (summed) before the update, so every rank sees global statistics and
    identical dead-code decisions; restart vectors and k-means centres are computed
    on rank 0 and broadcast, so the codebooks stay identical across ranks. Every rank
    must therefore call ``forward`` in training mode the same number of times.

    The codebook is ``self.embedding`` (no gradient), as in ``vq``, so a trained
    ``ema`` state's ``embedding.weight`` also loads into ``vq`` for inference.
    """

    def __init__(self, codebook_size: int, dim: int, *, beta: float = DEFAULT_BETA,
                 decay: float = DEFAULT_DECAY, eps: float = DEFAULT_EPS,
                 dead_code_threshold: int = DEFAULT_DEAD_CODE_THRESHOLD,
                 kmeans_init: bool = False, kmeans_iters: int = DEFAULT_KMEANS_ITERS,
                 usage_window: int = DEFAULT_USAGE_WINDOW) -> None:
        super().__init__()
        check_positive(codebook_size, "ema(codebook_size)")
        check_positive(dim, "ema(dim)")
        check_positive(beta, "ema(beta)", integer=False, allow_zero=True)
        check_positive(eps, "ema(eps)", integer=False)
        check_positive(dead_code_threshold, "ema(dead_code_threshold)", allow_zero=True)
        check_positive(kmeans_iters, "ema(kmeans_iters)")
        check_number(decay, "ema(decay)", 0.0, 1.0, high_open=True)
        self._codebook_size, self.dim = codebook_size, dim
        self.beta, self.decay, self.eps = float(beta), float(decay), float(eps)
        self.dead_code_threshold, self.kmeans_init = int(dead_code_threshold), bool(kmeans_init)
        self.kmeans_iters = int(kmeans_iters)
        self.embedding = nn.Embedding(codebook_size, dim)
        self.embedding.weight.requires_grad_(False)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", torch.zeros(codebook_size, dim))
        self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.usage_tracker = UsageTracker(codebook_size, usage_window)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw the codes (uniform in ±1/K) and reset the EMA statistics."""
        bound = 1.0 / self._codebook_size
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        self.cluster_size.fill_(1.0)
        self.embed_sum.copy_(self.embedding.weight)
        self.unused_steps.zero_()
        self.initialized.fill_(not self.kmeans_init)

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def _init_kmeans(self, rows: Tensor) -> None:
        centres = torch.empty_like(self.embedding.weight, dtype=torch.float32)
        counts = torch.empty(self._codebook_size, device=rows.device)
        if is_rank_zero():
            centres, counts = kmeans(rows, self._codebook_size, self.kmeans_iters)
        broadcast_(centres)
        broadcast_(counts)
        sizes = counts.clamp_min(RESTART_CLUSTER_SIZE)
        self.embedding.weight.copy_(centres)
        self.cluster_size.copy_(sizes)
        self.embed_sum.copy_(centres * sizes.unsqueeze(1))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, rows: Tensor, indices: Tensor, counts: Tensor) -> None:
        sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, rows.float())
        all_reduce_sum_(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self._codebook_size * self.eps) * total
        # Codes unused in this step keep their vector: S_k/N_k is unchanged for them except
        # for the smoothing, which would otherwise drag long-unused codes towards zero.
        used = counts > 0
        self.embedding.weight[used] = self.embed_sum[used] / smoothed[used].unsqueeze(1)

    @torch.no_grad()
    def _restart_dead_codes(self, rows: Tensor, counts: Tensor) -> int:
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        if self.dead_code_threshold == 0:
            return 0
        dead = self.unused_steps >= self.dead_code_threshold
        num_dead = int(dead.sum())
        if num_dead == 0:
            return 0
        fresh = torch.empty(num_dead, self.dim, device=rows.device)
        if is_rank_zero():
            fresh = rows[torch.randint(rows.shape[0], (num_dead,), device=rows.device)].float()
        broadcast_(fresh)
        self.embedding.weight[dead] = fresh
        self.embed_sum[dead] = fresh * RESTART_CLUSTER_SIZE
        self.cluster_size[dead] = RESTART_CLUSTER_SIZE
        self.unused_steps[dead] = 0
        return num_dead

    # ------------------------------------------------------------------ interface
    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize float B×dim×H×W ``z``; in training also update the codebook."""
        check_latent(z, "ema(z)", self.dim)
        batch, _, height, width = z.shape
        rows = to_rows(z)
        flat = rows.detach()
        if self.training and not bool(self.initialized):
            self._init_kmeans(flat)
        indices = nearest_code(flat, self.embedding.weight)
        rows_q = self.embedding.weight[indices].to(rows.dtype)  # a copy: safe from the update
        counts = code_counts(indices, self._codebook_size)
        restarted = 0
        if self.training:
            all_reduce_sum_(counts)
            self._ema_update(flat, indices, counts)
            restarted = self._restart_dead_codes(flat, counts)
        loss = self.beta * torch.mean((rows - rows_q) ** 2)
        z_q = from_rows(straight_through(rows, rows_q), batch, height, width)
        metrics = finalize_metrics(counts, self.usage_tracker, self.training,
                                   {"restarted": float(restarted)})
        return QuantizerOutput(z_q=z_q, indices=indices.reshape(batch, height, width), loss=loss,
                               metrics=metrics)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Long B×H×W code ids -> B×dim×H×W latent."""
        check_tensor(indices, "ema.decode_indices(indices)", dims=("B", "H", "W"), dtype="long",
                     value_range=(0, self._codebook_size - 1))
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def extra_repr(self) -> str:
        return (f"codebook_size={self._codebook_size}, dim={self.dim}, beta={self.beta}, "
                f"decay={self.decay}, dead_code_threshold={self.dead_code_threshold}, "
                f"kmeans_init={self.kmeans_init}")
