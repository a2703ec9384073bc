"""Tests of the ``ema`` quantizer: EMA updates, dead-code restart, k-means init."""

from __future__ import annotations

import pytest
import torch

import taming_core
from taming_core import ValidationError
from taming_plugins.quantizers.ema import kmeans


def make_ema(**kwargs):
    return taming_core.create("quantizer", "ema", **kwargs)


def blobs(centres: torch.Tensor, per_centre: int, spread: float, seed: int = 0) -> torch.Tensor:
    """B×D×1×W latent with ``per_centre`` noisy copies of every centre."""
    gen = torch.Generator().manual_seed(seed)
    rows = centres.repeat_interleave(per_centre, 0)
    rows = rows + spread * torch.randn(rows.shape, generator=gen)
    return rows.t().reshape(1, centres.shape[1], 1, -1)


def test_ema_update_moves_codes_towards_assigned_data_and_only_encoder_gets_gradient():
    torch.manual_seed(0)
    q = make_ema(codebook_size=2, dim=2, decay=0.5, dead_code_threshold=0)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
        q.embed_sum.copy_(q.embedding.weight)
    target = torch.tensor([[1.0, 1.0]])
    z = target.t().reshape(1, 2, 1, 1).repeat(1, 1, 1, 4).requires_grad_(True)
    before = q.embedding.weight[0].clone()
    for _ in range(20):
        out = q(z)
    after = q.embedding.weight[0]
    assert (after - target[0]).norm() < 0.05 * (before - target[0]).norm()
    assert torch.allclose(q.embedding.weight[1], torch.tensor([10.0, 10.0]), atol=1e-2)  # unused: kept
    assert not q.embedding.weight.requires_grad
    out.loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_ema_statistics_follow_the_formula():
    q = make_ema(codebook_size=2, dim=1, decay=0.9, eps=1e-5, dead_code_threshold=0)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0], [5.0]]))
        q.embed_sum.copy_(q.embedding.weight)
    z = torch.tensor([1.0, -1.0, 2.0, 6.0]).reshape(1, 1, 1, 4)  # codes 0,0,0,1
    q(z)
    assert torch.allclose(q.cluster_size, torch.tensor([0.9 + 0.1 * 3, 0.9 + 0.1 * 1]))
    assert torch.allclose(q.embed_sum.squeeze(1), torch.tensor([0.0 + 0.1 * 2.0, 0.9 * 5 + 0.1 * 6]))
    n = q.cluster_size.sum()
    smoothed = (q.cluster_size + 1e-5) / (n + 2e-5) * n
    assert torch.allclose(q.embedding.weight.squeeze(1), q.embed_sum.squeeze(1) / smoothed)


def test_dead_codes_are_restarted_from_current_encoder_outputs():
    torch.manual_seed(0)
    q = make_ema(codebook_size=8, dim=2, dead_code_threshold=2)
    z = blobs(torch.tensor([[3.0, 3.0], [-3.0, 3.0]]), per_centre=16, spread=0.1)
    rows = z.reshape(2, -1).t()
    first = q(z)
    assert first.metrics["restarted"] == 0
    second = q(z)
    assert second.metrics["restarted"] > 0
    # restarted codes sit on (or very near) current encoder outputs
    codes = q.embedding.weight
    nearest = torch.cdist(codes, rows).min(1).values
    assert (nearest < 0.5).sum() >= second.metrics["restarted"]
    for _ in range(10):
        out = q(z)
    assert out.metrics["usage"] > 0.5  # far more than the 1/8 a stuck codebook would use


def test_no_restart_when_threshold_is_zero():
    torch.manual_seed(0)
    q = make_ema(codebook_size=8, dim=2, dead_code_threshold=0)
    z = blobs(torch.tensor([[3.0, 3.0]]), per_centre=16, spread=0.1)
    for _ in range(4):
        out = q(z)
    assert out.metrics["restarted"] == 0 and out.metrics["usage"] == pytest.approx(1 / 8)


def test_eval_mode_does_not_update_the_codebook():
    torch.manual_seed(0)
    q = make_ema(codebook_size=8, dim=2).eval()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(2, 2, 4, 4))
    for key, value in q.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_kmeans_init_on_first_batch_finds_the_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    spread = 0.05
    z = blobs(centres, per_centre=32, spread=spread)
    q = make_ema(codebook_size=16, dim=2, kmeans_init=True, dead_code_threshold=0)
    assert not bool(q.initialized)
    q(z)
    assert bool(q.initialized)
    dist = torch.cdist(centres, q.embedding.weight)
    assert (dist.min(1).values < 5 * spread).all()  # every cluster has a code
    assert (dist.min(0).values < 10 * spread).all()  # every code sits in a cluster
    assert "initialized" in q.state_dict() and "cluster_size" in q.state_dict()


def test_kmeans_helper_handles_fewer_rows_than_clusters():
    torch.manual_seed(0)
    rows = torch.randn(3, 2)
    centres, counts = kmeans(rows, 5, iters=3)
    assert centres.shape == (5, 2) and counts.sum() == 3
    assert torch.cdist(centres, rows).min(1).values.max() < 1e-6


def test_ema_argument_validation_and_non_finite():
    with pytest.raises(ValueError, match="decay"):
        make_ema(codebook_size=4, dim=2, decay=1.0)
    q = make_ema(codebook_size=4, dim=2)
    before = q.embedding.weight.clone()
    with pytest.raises(ValidationError, match="NaN or Inf"):
        q(torch.full((1, 2, 2, 2), float("nan")))
    assert torch.equal(q.embedding.weight, before)


def test_build_ema_from_config():
    built = taming_core.build({"quantizer": {"name": "ema", "codebook_size": 16, "dim": 3,
                                             "decay": 0.95, "dead_code_threshold": 5}})
    q = built["quantizer"]
    assert type(q).__name__ == "EMAQuantizer"
    assert q.decay == 0.95 and q.dead_code_threshold == 5 and q.codebook_size == 16
    out = q(torch.randn(2, 3, 2, 2))
    assert out.indices.shape == (2, 2, 2)
    expected = q.embedding.weight[out.indices].permute(0, 3, 1, 2)
    assert torch.equal(q.decode_indices(out.indices), expected)


# --------------------------------------------------------------------------- distributed
def _train_steps(q, batches):
    torch.manual_seed(123)  # same restart draws in every run
    return [q(z).indices for z in batches]


def _init_group(tmp_path, rank: int, world: int) -> None:
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)


def test_ema_under_an_initialised_process_group_matches_single_process(tmp_path):
    import torch.distributed as dist

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 3, 4, 4, generator=gen) * 3 for _ in range(4)]
    kwargs = dict(codebook_size=16, dim=3, kmeans_init=True, dead_code_threshold=1)
    torch.manual_seed(0)
    plain = make_ema(**kwargs)
    expected = _train_steps(plain, batches)
    _init_group(tmp_path, 0, 1)
    try:
        torch.manual_seed(0)
        synced = make_ema(**kwargs)
        got = _train_steps(synced, batches)
    finally:
        dist.destroy_process_group()
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert torch.equal(plain.embedding.weight, synced.embedding.weight)


def _rank_worker(rank: int, world: int, tmp: str, batch: torch.Tensor, out: str) -> None:
    from pathlib import Path

    _init_group(Path(tmp), rank, world)
    torch.manual_seed(0)
    q = make_ema(codebook_size=8, dim=2, decay=0.8, dead_code_threshold=1, kmeans_init=True)
    shard = batch.chunk(world, dim=0)[rank]
    for _ in range(3):
        q(shard)
    torch.save({k: v for k, v in q.state_dict().items()}, f"{out}/rank{rank}.pt")
    import torch.distributed as dist

    dist.destroy_process_group()


@pytest.mark.slow
def test_ema_two_processes_keep_identical_codebooks(tmp_path):
    import torch.multiprocessing as mp

    batch = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 2
    mp.spawn(_rank_worker, args=(2, str(tmp_path), batch, str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
