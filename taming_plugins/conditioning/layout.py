"""How condition ids and image ids share one prior vocabulary.

The prior models the sequence ``[cond + cond_offset (flattened row-major), image ids]``
with a single embedding table of ``prior_vocab_size`` rows:

* ``cond_offset = image_vocab_size`` (the default, "disjoint"): condition ids follow the
  image codes, so no id means two things. For the ``sos`` conditioner this is exactly
  the original's unconditional setup (SOS token = ``n_embed``).
* ``cond_offset = 0`` ("shared"): the original Net2NetTransformer's class- and
  depth-conditional models, which concatenate raw ids; image and condition ids overlap
  and only their positions tell them apart. The prior vocabulary is then the larger of
  the two vocabularies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from taming_core.errors import ValidationError
from taming_core.validation import check_cond_offset, check_positive, check_tensor


@dataclass(frozen=True)
class VocabLayout:
    """Placement of condition ids next to image ids (see module docstring).

    Attributes:
        image_vocab_size: number of image token ids (the tokenizer's codebook).
        cond_vocab_size: number of local condition ids (the conditioner's vocabulary).
        cond_offset: added to every condition id; None means ``image_vocab_size``.
    """

    image_vocab_size: int
    cond_vocab_size: int
    cond_offset: Optional[int] = None

    def __post_init__(self) -> None:
        check_positive(self.image_vocab_size, "VocabLayout(image_vocab_size)")
        check_positive(self.cond_vocab_size, "VocabLayout(cond_vocab_size)")
        if self.cond_offset is None:
            object.__setattr__(self, "cond_offset", self.image_vocab_size)
        check_cond_offset(self.cond_offset, self.image_vocab_size, self.cond_vocab_size,
                          "VocabLayout(cond_offset)")

    @classmethod
    def original_unconditional(cls, n_embed: int, sos_token: int) -> "VocabLayout":
        """The original unconditional Net2NetTransformer: SOS id ``sos_token``."""
        return cls(n_embed, 1, sos_token)

    @property
    def prior_vocab_size(self) -> int:
        """Rows the prior's embedding and output layer need."""
        assert self.cond_offset is not None
        return max(self.image_vocab_size, self.cond_offset + self.cond_vocab_size)

    def cond_to_prior(self, cond: Tensor) -> Tensor:
        """Local condition ids (Long B×L or B×h×w) -> prior ids B×L (flattened, offset)."""
        check_tensor(cond, "VocabLayout.cond_to_prior(cond)", dtype="integer",
                     value_range=(0, self.cond_vocab_size - 1))
        if cond.dim() < 2:
            raise ValidationError("VocabLayout.cond_to_prior(cond): expected B×L or B×h×w ids, got "
                                  f"shape {tuple(cond.shape)}")
        return cond.reshape(cond.shape[0], -1).long() + self.cond_offset

    def prior_to_cond(self, tokens: Tensor) -> Tensor:
        """Prior ids of the condition prefix -> local condition ids (inverse of the offset)."""
        return tokens - self.cond_offset

    def sequence(self, cond: Tensor, image_tokens: Tensor) -> Tensor:
        """``[cond_to_prior(cond), image tokens flattened]`` as Long B×(L+T)."""
        prefix = self.cond_to_prior(cond)
        check_tensor(image_tokens, "VocabLayout.sequence(image_tokens)", dtype="integer",
                     value_range=(0, self.image_vocab_size - 1))
        if image_tokens.shape[0] != prefix.shape[0]:
            raise ValidationError(f"VocabLayout.sequence: batch sizes differ (cond {prefix.shape[0]}, "
                                  f"image {image_tokens.shape[0]})")
        flat = image_tokens.reshape(image_tokens.shape[0], -1).long()
        return torch.cat([prefix, flat], dim=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (stored next to prior checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VocabLayout":
        try:
            return cls(int(data["image_vocab_size"]), int(data["cond_vocab_size"]),
                       int(data["cond_offset"]))
        except (KeyError, TypeError) as exc:
            raise ValidationError(f"VocabLayout.from_dict: expected keys image_vocab_size, "
                                  f"cond_vocab_size, cond_offset; got {data!r} ({exc})") from None
