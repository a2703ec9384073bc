"""``conditioner/bucket``: a number per image (a score, a year...) -> one condition token."""

import torch

import taming_core
from taming_core.validation import check_tensor


@taming_core.register("conditioner", "bucket")
class BucketConditioner(taming_core.Conditioner):
    """Float B values in ``[low, high]`` -> Long B×1 ids of ``num_buckets`` equal-width
    buckets; id ``num_buckets`` is the null condition (classifier-free guidance)."""

    def __init__(self, num_buckets: int = 10, low: float = 0.0, high: float = 1.0):
        super().__init__()
        self.num_buckets, self.low, self.high = int(num_buckets), float(low), float(high)

    @property
    def vocab_size(self) -> int:
        return self.num_buckets + 1  # the buckets and the null id

    @property
    def null_id(self) -> int:
        return self.num_buckets

    def forward(self, condition):
        values = torch.as_tensor(condition, dtype=torch.float32)
        check_tensor(values, "bucket(condition)", dims=("B",), value_range=(self.low, self.high))
        ids = ((values - self.low) / (self.high - self.low) * self.num_buckets).long()
        return ids.clamp(max=self.num_buckets - 1)[:, None]
