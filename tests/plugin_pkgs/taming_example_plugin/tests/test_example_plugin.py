"""The plugin's own tests: taming's contract-check kit on each component."""

import torch

from taming_core.testing import check_conditioner, check_quantizer, check_sampler
from taming_example_plugin.conditioner import BucketConditioner
from taming_example_plugin.quantizer import FrozenRandomQuantizer
from taming_example_plugin.sampler import AnnealedSampler


def test_quantizer_meets_the_contract():
    check_quantizer(lambda: FrozenRandomQuantizer(codebook_size=16, dim=4), channels=4)


def test_sampler_meets_the_contract():
    check_sampler(lambda: AnnealedSampler(temperature=1.0, final_temperature=0.5, top_k=8))


def test_conditioner_meets_the_contract():
    check_conditioner(lambda: BucketConditioner(num_buckets=4), torch.tensor([0.0, 0.3, 1.0]))
