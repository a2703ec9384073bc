"""taming core: interfaces, registry, plugin discovery and config building.

The core never imports an implementation; components live in plugins
(``taming_plugins`` for the built-ins) and register themselves.

For plugin authors: :mod:`taming_core.quantization` (input check, straight-through
estimator, usage/perplexity tracking), :mod:`taming_core.sampling` (condition and
``vocab_limit`` handling, filtering, guidance) and :mod:`taming_core.testing` (the
contract-check kit: ``check_quantizer``, ``check_tokenizer``, ``check_prior``,
``check_sampler``, ``check_conditioner``).
"""

from .config import build, load_config
from .errors import (CheckpointError, ConfigError, PluginError, RegistryError, TamingError,
                     TrainingError, ValidationError)
from .interfaces import (FAMILIES, AutoencoderLoss, AutoregressivePrior, CheckpointFormat, Conditioner,
                         Discriminator, Encoded, GANObjective, InpaintingSampler, MaskedPrior, PerceptualLoss,
                         Prior, PriorCache, Quantizer, QuantizerOutput, Sampler, StepAware, TokenHistoryCache,
                         Tokenizer)
from .pipeline import Pipeline
from .plugins import load_plugins, plugin_status
from .registry import KIND_ALIASES, KINDS, Entry, available, create, create_from_spec, entries, get, get_entry, register, spec_of, unregister

__version__ = "0.1.0"

__all__ = [
    "KIND_ALIASES", "KINDS", "Entry", "available", "build", "create", "create_from_spec", "entries", "get", "get_entry",
    "load_config", "load_plugins", "plugin_status", "register", "spec_of", "unregister",
    "FAMILIES", "AutoencoderLoss", "AutoregressivePrior", "CheckpointFormat", "InpaintingSampler", "MaskedPrior", "StepAware",
    "Conditioner", "Discriminator", "Encoded", "GANObjective", "PerceptualLoss", "Prior",
    "Pipeline", "PriorCache", "Quantizer", "QuantizerOutput", "Sampler", "TokenHistoryCache", "Tokenizer",
    "CheckpointError", "ConfigError", "PluginError", "RegistryError", "TamingError",
    "TrainingError", "ValidationError",
]
