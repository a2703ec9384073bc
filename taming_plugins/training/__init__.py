"""Training infrastructure shared by the stage-1 and stage-2 trainers.

One place for each piece (no model-specific logic here):

* :mod:`.config`: the run configs of both stages (:class:`TokenizerTrainConfig`,
  :class:`PriorTrainConfig`): dataclasses with ``from_dict``/``to_dict``, unknown keys
  refused by name, the same section names.
* :class:`Trainer`, :class:`FitResult` (:mod:`.trainer`): the loop, the run directory
  (``OUT/checkpoints/step_*``, ``OUT/metrics.jsonl``, ``OUT/images/``), metrics, progress,
  checkpoints; what ``fit()`` returns in both stages.
* :class:`DivergenceGuard` (:mod:`.guard`): NaN/Inf and exploding-loss detection without
  a device sync per step.
* :func:`resolve_device`, :func:`seed_everything` (:mod:`.runtime`).
* :class:`CheckpointManager` (:mod:`.checkpoint`): atomic safetensors + JSON checkpoints,
  keep last N and best, full resume (modules, optimizers, EMA, RNG, data position), crash
  recovery.
* :class:`EMA` (:mod:`.ema`), :class:`DataStream`, :class:`Progress` (:mod:`.loop`),
  :class:`MetricsLogger` (:mod:`.metrics`), :mod:`.state` (pickle-free nested state, RNG).

The trainers are :mod:`taming_plugins.training.stage1` and
:mod:`taming_plugins.training.stage2` (imported lazily: they pull in the plugins).
"""

from .checkpoint import Checkpoint, CheckpointManager, read_checkpoint_config
from .config import PriorTrainConfig, TokenizerTrainConfig
from .ema import EMA
from .guard import DivergenceGuard
from .loop import DataStream, Progress, check_finite
from .metrics import MetricsLogger, read_metrics
from .runtime import resolve_device, seed_everything
from .state import capture_rng_state, flatten_state, restore_rng_state, unflatten_state
from .trainer import FitResult, Trainer

__all__ = ["Checkpoint", "CheckpointManager", "DataStream", "DivergenceGuard", "EMA", "FitResult",
           "MetricsLogger", "PriorTrainConfig", "Progress", "TokenizerTrainConfig", "Trainer",
           "capture_rng_state", "check_finite", "flatten_state", "read_checkpoint_config",
           "read_metrics", "resolve_device", "restore_rng_state", "seed_everything",
           "unflatten_state"]
