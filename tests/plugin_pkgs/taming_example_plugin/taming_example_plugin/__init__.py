"""A third-party taming plugin: a quantizer, a sampler and a conditioner.

Importing this package registers ``quantizer/frozen_random``, ``sampler/annealed`` and
``conditioner/bucket``; the ``taming.plugins`` entry point in pyproject.toml makes taming
import it automatically.
"""

from . import conditioner, quantizer, sampler  # noqa: F401  (importing registers them)
