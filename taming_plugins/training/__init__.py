"""Training infrastructure shared by the stage-1 and stage-2 trainers.

Generic pieces (no model-specific logic):

* :class:`CheckpointManager` (:mod:`.checkpoint`): atomic safetensors + JSON checkpoints,
  keep last N and best, full resume (modules, optimizers, EMA, RNG, data position).
* :class:`EMA` (:mod:`.ema`): exponential moving average of weights.
* :class:`DataStream`, :func:`check_finite`, :class:`Progress` (:mod:`.loop`): resumable
  seeded batches, NaN/Inf guard, tqdm bar.
* :class:`MetricsLogger` (:mod:`.metrics`): JSONL metrics, resume-aware.
* :mod:`.state`: pickle-free flattening of nested state (optimizer state dicts) and RNG capture.

The stage-1 trainer is :mod:`taming_plugins.training.stage1` (imported lazily: it pulls
in the tokenizer and loss plugins).
"""

from .checkpoint import Checkpoint, CheckpointManager, read_checkpoint_config
from .ema import EMA
from .loop import DataStream, Progress, check_finite
from .metrics import MetricsLogger, read_metrics
from .state import capture_rng_state, flatten_state, restore_rng_state, unflatten_state

__all__ = ["Checkpoint", "CheckpointManager", "DataStream", "EMA", "MetricsLogger", "Progress",
           "capture_rng_state", "check_finite", "flatten_state", "read_checkpoint_config",
           "read_metrics", "restore_rng_state", "unflatten_state"]
