"""Conditioning modules, vocabulary layout and training-time token transforms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import taming_core
from taming_core import Encoded, Tokenizer
from taming_core.errors import ValidationError
from taming_plugins.conditioning.coordinates import crop_coordinates
from taming_plugins.conditioning.layout import VocabLayout
from taming_plugins.conditioning.transforms import drop_condition, random_replace

SEED = 0
#: Samples for the statistical checks; 5 standard deviations keeps them reliable.
N_STAT = 20000
SIGMAS = 5.0


class PatchTokenizer(Tokenizer):
    """Deterministic test tokenizer: mean of each f×f patch of channel 0, binned into K ids."""

    def __init__(self, factor: int = 4, levels: int = 8) -> None:
        super().__init__()
        self.factor, self.levels = factor, levels
        self.scale = nn.Parameter(torch.ones(1))

    def encode(self, images: Tensor) -> Encoded:
        pooled = nn.functional.avg_pool2d(images[:, :1], self.factor)[:, 0]
        ids = ((pooled.clamp(-1, 1) + 1) / 2 * (self.levels - 1)).round().long()
        return Encoded(ids, pooled.unsqueeze(1), torch.zeros(()))

    def decode_latent(self, latent: Tensor) -> Tensor:
        return nn.functional.interpolate(latent, scale_factor=self.factor).repeat(1, 3, 1, 1)

    def decode_indices_to_latent(self, indices: Tensor) -> Tensor:
        return (indices.float() / (self.levels - 1) * 2 - 1).unsqueeze(1)

    @property
    def downsample_factor(self) -> int:
        return self.factor

    @property
    def vocab_size(self) -> int:
        return self.levels


class OriginalCondStage(nn.Module):
    """Mimics an original taming cond-stage: encode -> (quant, loss, (_, _, flat indices))."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = PatchTokenizer()
        self.quantize = nn.Module()
        self.quantize.n_e = self.inner.levels

    def encode(self, x: Tensor):
        enc = self.inner.encode(x)
        return enc.latent, enc.loss, (None, None, enc.indices.reshape(-1))


def _within(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= SIGMAS * math.sqrt(n * p * (1 - p))


def test_registered() -> None:
    assert {"sos", "class_label", "spatial", "coordinates", "compose"} <= set(
        taming_core.available("conditioner"))


def test_sos_batch_and_device() -> None:
    sos = taming_core.create("conditioner", "sos")
    assert sos.vocab_size == 1
    out = sos(torch.zeros(3, 3, 8, 8))
    assert out.dtype == torch.long and out.shape == (3, 1) and out.eq(0).all()
    assert sos(5).shape == (5, 1)
    with pytest.raises(ValidationError, match="batch size"):
        sos(0)


def test_class_label_ids_null_and_errors() -> None:
    cl = taming_core.create("conditioner", "class_label", num_classes=10)
    assert cl.vocab_size == 11 and cl.null_id == 10
    assert cl(torch.tensor([0, 9, 4])).tolist() == [[0], [9], [4]]
    assert cl([1, 2]).tolist() == [[1], [2]]
    assert cl.null_condition(cl([1, 2])).tolist() == [[10], [10]]
    with pytest.raises(ValidationError, match=r"\[0, 9\]"):
        cl(torch.tensor([10]))
    no_null = taming_core.create("conditioner", "class_label", num_classes=10, null_token=False)
    assert no_null.vocab_size == 10
    with pytest.raises(ValidationError, match="null"):
        no_null.null_condition(torch.zeros(2, 1, dtype=torch.long))


def test_spatial_with_registered_tokenizer_and_original_stage() -> None:
    torch.manual_seed(SEED)
    depth = torch.rand(2, 1, 16, 16) * 2 - 1
    tok = PatchTokenizer()
    sp = taming_core.create("conditioner", "spatial", tokenizer=tok, null_token=True)
    out = sp(depth)
    assert out.shape == (2, 4, 4) and out.dtype == torch.long
    assert torch.equal(out, tok.encode(depth).indices)
    assert sp.vocab_size == tok.vocab_size + 1 and sp.null_id == tok.vocab_size
    assert not any(p.requires_grad for p in sp.parameters())
    sp.train()
    assert not sp.tokenizer.training, "the condition tokenizer must stay frozen in eval mode"
    orig = taming_core.create("conditioner", "spatial", tokenizer=OriginalCondStage())
    assert torch.equal(orig(depth), out) and orig.vocab_size == tok.vocab_size
    small = taming_core.create("conditioner", "spatial", tokenizer=tok, downsample_size=8)
    assert small(depth).shape == (2, 2, 2)
    with pytest.raises(ValidationError, match="B×C×H×W"):
        sp(depth[0])


def test_coordinates_quantization_matches_definition() -> None:
    levels, factor = 16, 4
    cc = taming_core.create("conditioner", "coordinates", num_levels=levels, downsample_factor=factor)
    assert cc.vocab_size == levels + 1
    coords = crop_coordinates(64, 48, 8, 16, 32, 16)
    assert coords.shape == (1, 32, 16)
    assert coords[0, 0, 0].item() == pytest.approx((8 * 48 + 16) / (64 * 48))
    ids = cc(coords.unsqueeze(0))
    assert ids.shape == (1, 8, 4)
    block = coords[0, 4:8, 8:12].mean().item()
    assert ids[0, 1, 2].item() == round(block * levels)
    assert ids.min() >= 0 and ids.max() <= levels
    full = cc(crop_coordinates(64, 64, 0, 0, 64, 64).unsqueeze(0))
    assert (full.flatten().diff() >= 0).all(), "raster order must give non-decreasing ids"
    assert cc.decode(ids).shape == (1, 1, 32, 16)
    with pytest.raises(ValidationError, match=r"\[0, 1\]"):
        cc(coords.unsqueeze(0) + 1)
    with pytest.raises(ValidationError, match="inside"):
        crop_coordinates(8, 8, 4, 4, 8, 8)


def test_compose_offsets_and_vocab() -> None:
    comp = taming_core.create("conditioner", "compose", conditioners=[
        {"name": "class_label", "num_classes": 5},
        {"name": "coordinates", "num_levels": 3, "downsample_factor": 4}], null_token=True)
    assert comp.vocab_size == 6 + 4 + 1 and comp.null_id == 10
    coords = crop_coordinates(16, 16, 0, 0, 16, 16).unsqueeze(0)
    out = comp([torch.tensor([2]), coords])
    assert out.shape == (1, 1 + 16)
    assert out[0, 0].item() == 2
    coord_ids = taming_core.create("conditioner", "coordinates", num_levels=3, downsample_factor=4)(coords)
    assert torch.equal(out[0, 1:], coord_ids.flatten() + 6)
    with pytest.raises(ValidationError, match="2 conditions"):
        comp([torch.tensor([2])])


def test_layout_offsets_disjoint_and_original() -> None:
    lay = VocabLayout(image_vocab_size=64, cond_vocab_size=11)
    assert lay.cond_offset == 64 and lay.prior_vocab_size == 75
    seq = lay.sequence(torch.tensor([[3]]), torch.tensor([[[1, 2], [3, 4]]]))
    assert seq.tolist() == [[67, 1, 2, 3, 4]]
    assert lay.prior_to_cond(seq[:, :1]).tolist() == [[3]]
    shared = VocabLayout(64, 100, cond_offset=0)
    assert shared.prior_vocab_size == 100
    orig = VocabLayout.original_unconditional(n_embed=64, sos_token=64)
    assert orig.prior_vocab_size == 65  # the reference fixture's GPT vocabulary
    assert orig.cond_to_prior(torch.zeros(2, 1, dtype=torch.long)).tolist() == [[64], [64]]
    assert VocabLayout.from_dict(lay.to_dict()) == lay
    with pytest.raises(ValidationError, match=r"\[0, 10\]"):
        lay.cond_to_prior(torch.tensor([[11]]))
    with pytest.raises(ValidationError, match=r"\[0, 63\]"):
        lay.sequence(torch.tensor([[0]]), torch.tensor([[64]]))


@pytest.mark.parametrize("pkeep", [0.0, 0.3, 0.9])
def test_random_replace_statistics(pkeep: float) -> None:
    vocab = 50
    gen = torch.Generator().manual_seed(SEED)
    tokens = torch.full((N_STAT,), 7, dtype=torch.long)
    out = random_replace(tokens, pkeep, vocab, generator=gen)
    assert out.min() >= 0 and out.max() < vocab
    # an id stays 7 if kept, or if replaced by a random 7: P = pkeep + (1 - pkeep) / vocab
    p_same = pkeep + (1 - pkeep) / vocab
    assert _within(int(out.eq(7).sum()), N_STAT, p_same)
    replaced = out[out.ne(7)]
    if pkeep < 1:  # replacements are uniform over the vocabulary
        counts = torch.bincount(replaced, minlength=vocab).float()
        assert counts[torch.arange(vocab) != 7].std() / counts[counts > 0].mean() < 0.2
    again = random_replace(tokens, pkeep, vocab, generator=torch.Generator().manual_seed(SEED))
    assert torch.equal(out, again), "same seed, same replacement"
    assert random_replace(tokens, 1.0, vocab) is tokens


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_condition_statistics(p: float) -> None:
    cl = taming_core.create("conditioner", "class_label", num_classes=10)
    cond = cl(torch.arange(N_STAT) % 10)
    gen = torch.Generator().manual_seed(SEED)
    out, dropped = drop_condition(cond, cl, p, generator=gen)
    assert _within(int(dropped.sum()), N_STAT, p)
    assert out[dropped].eq(cl.null_id).all()
    assert torch.equal(out[~dropped], cond[~dropped])
    grid = torch.randint(8, (N_STAT // 10, 4, 4), generator=gen)
    sp = taming_core.create("conditioner", "spatial", tokenizer=PatchTokenizer(), null_token=True)
    out_grid, dropped_grid = drop_condition(grid, sp, p, generator=gen)
    assert out_grid[dropped_grid].eq(sp.null_id).all(), "a dropped sample is null everywhere"
    assert torch.equal(out_grid[~dropped_grid], grid[~dropped_grid])
    same, none = drop_condition(cond, cl, 0.0)
    assert same is cond and not none.any()
    with pytest.raises(ValidationError, match="probability"):
        drop_condition(cond, cl, 1.5)


def test_conditioners_build_from_config() -> None:
    built = taming_core.build({"conditioner": {"name": "class_label", "num_classes": 3}})
    assert built["conditioner"].vocab_size == 4


def test_coordinate_crops_pair_crops_with_their_coordinates() -> None:
    from taming_plugins.conditioning.coordinates import CoordinateCrops

    full = torch.linspace(-1, 1, 3 * 24 * 32).view(3, 24, 32)
    crops = CoordinateCrops([full], 8, length=5, seed=SEED)
    crop, coords = crops[3]
    assert crop.shape == (3, 8, 8) and coords.shape == (1, 8, 8)
    # locate the crop from its first coordinate and check the pixels match
    index = round(coords[0, 0, 0].item() * 24 * 32)
    top, left = divmod(index, 32)
    assert torch.equal(crop, full[:, top:top + 8, left:left + 8])
    assert torch.equal(crops[3][1], coords), "items are reproducible"
    ids = taming_core.create("conditioner", "coordinates", num_levels=64, downsample_factor=4)(coords[None])
    assert ids.shape == (1, 2, 2)
    with pytest.raises(ValidationError, match="smaller than the crop size"):
        CoordinateCrops([full], 40)
