"""A plugin that registers two components (one replacing the built-in ``vq``), then fails."""

import taming_core


@taming_core.register("sampler", "half_registered")
class HalfRegistered(taming_core.Sampler):
    """Registered before the failure below."""

    def sample(self, prior, grid=(16, 16), *, batch_size=1, condition=None, generator=None):
        raise NotImplementedError


@taming_core.register("quantizer", "vq", override=True)
def not_the_real_vq(**kwargs):
    """Replaces the built-in vq before the failure below."""
    raise NotImplementedError


raise ImportError("this plugin fails after registering on purpose")
