"""``sampler/annealed``: raster-order sampling whose temperature moves from ``temperature``
at the first token to ``final_temperature`` at the last."""

from typing import Optional

import torch

import taming_core
from taming_core.sampling import SamplingOptions, check_grid, prefix_condition, require_family


@taming_core.register("sampler", "annealed")
class AnnealedSampler(taming_core.Sampler):
    """Autoregressive sampling with a linear temperature schedule over the grid.

    Accepts the options ``taming sample`` passes (``temperature``, ``top_k``, ``top_p``,
    ``vocab_limit``) so ``--sampler annealed --top-k 50`` works from the command line.
    """

    family = "autoregressive"

    def __init__(self, temperature: float = 1.0, final_temperature: float = 0.5,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 vocab_limit: Optional[int] = None, sos_token: Optional[int] = None):
        # validates every option once; filter() applies vocab_limit, top-k and top-p
        self.options = SamplingOptions(top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
        for t in (temperature, final_temperature):
            SamplingOptions(temperature=t)  # the same check as every built-in sampler
        self.temperature, self.final_temperature = float(temperature), float(final_temperature)
        self.sos_token = sos_token

    def sample(self, prior, grid=(16, 16), *, batch_size=1, condition=None, generator=None):
        require_family(prior, self.family, "annealed.sample(prior)")  # refuses a masked prior
        h, w = check_grid(grid, "annealed.sample(grid)")
        self.options.check_vocab(prior.vocab_size)
        device = next(prior.parameters()).device
        # None + sos_token, Long B×L prefix tokens or a B×h×w grid -> Long B×L prefix
        prefix = prefix_condition(condition, (h, w), batch_size, self.sos_token, prior.vocab_size,
                                  "annealed.sample(condition)", device)
        n = h * w
        out = torch.empty(batch_size, n, dtype=torch.long, device=device)
        was_training = prior.training
        prior.eval()
        try:
            with torch.inference_mode():
                cache = prior.new_cache(batch_size, prefix.shape[1] + n - 1, device=device)
                logits = prior.forward_cached(prefix, cache)[:, -1]
                for i in range(n):
                    t = self.temperature + (self.final_temperature - self.temperature) * i / max(n - 1, 1)
                    probs = torch.softmax(self.options.filter(logits / t).float(), dim=-1)
                    out[:, i] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
                    if i + 1 < n:
                        logits = prior.forward_cached(out[:, i:i + 1], cache)[:, -1]
        finally:
            prior.train(was_training)
        return out.view(batch_size, h, w)
