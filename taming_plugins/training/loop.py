"""Generic training-loop pieces: resumable data stream, NaN/Inf guard, progress bar.

* :class:`DataStream` yields batches forever in a seeded order (a fresh permutation per
  epoch) and remembers ``(epoch, position)``; saved with a checkpoint, a resumed run
  sees exactly the batches an uninterrupted one would. Datasets with ``set_epoch``
  get it called so their augmentation changes per epoch (and stays reproducible).
* :func:`check_finite` raises :class:`~taming_core.TrainingError` naming the step and the
  loss that became NaN/Inf (a standalone helper: it syncs with the device; the trainers
  use :class:`~taming_plugins.training.guard.DivergenceGuard`, which does not per step).
* :class:`Progress` is a tqdm bar showing the latest losses (disabled off the main process).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset

from taming_core.errors import TrainingError, ValidationError
from taming_core.validation import check_positive

#: Per-epoch permutation seeds mix the stream seed and the epoch with this odd constant.
_EPOCH_SEED_MIX = 1_000_003


class DataStream:
    """Endless, resumable, seeded batches of ``dataset``.

    Args:
        dataset: a map-style dataset of tensors (or anything ``collate_fn`` accepts).
        batch_size: items per batch; incomplete final batches of an epoch are dropped.
        seed: seeds the per-epoch order.
        shuffle: False keeps the dataset order (still resumable).
        num_workers: DataLoader worker processes (item results must not depend on the
            worker, which holds for the datasets in :mod:`taming_plugins.data`).
        collate_fn: batch assembly (default: DataLoader's).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 num_workers: int = 0, collate_fn: Optional[Callable[[list[Any]], Any]] = None,
                 pin_memory: bool = False) -> None:
        check_positive(batch_size, "DataStream(batch_size)")
        check_positive(num_workers, "DataStream(num_workers)", allow_zero=True)
        n = len(dataset)  # type: ignore[arg-type]
        if n < batch_size:
            raise ValidationError(f"DataStream: the dataset has {n} items, fewer than one batch of "
                                  f"{batch_size}; use a smaller batch size or more data")
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        self.num_workers, self.collate_fn, self.pin_memory = num_workers, collate_fn, pin_memory
        self.epoch, self.position = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size  # type: ignore[arg-type]

    def _epoch_order(self, epoch: int) -> list[int]:
        """The seeded order of all item indices in ``epoch`` (identical on every rank)."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if not self.shuffle:
            return list(range(n))
        gen = torch.Generator().manual_seed(self.seed * _EPOCH_SEED_MIX + epoch)
        return torch.randperm(n, generator=gen).tolist()

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        order = self._epoch_order(epoch)
        return [order[i:i + self.batch_size] for i in range(0, self.batches_per_epoch * self.batch_size,
                                                             self.batch_size)]

    def __iter__(self) -> Iterator[Any]:
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            remaining = self._epoch_batches(self.epoch)[self.position:]
            # A DataLoader iterator draws its base seed from `generator`, or from the global
            # RNG when none is given; a private generator keeps the global stream (dropout,
            # pkeep...) identical whether or not the run was resumed mid-epoch.
            seed_gen = torch.Generator().manual_seed(self.seed * _EPOCH_SEED_MIX + self.epoch)
            loader = DataLoader(self.dataset, batch_sampler=remaining, num_workers=self.num_workers,
                                collate_fn=self.collate_fn, pin_memory=self.pin_memory,
                                generator=seed_gen)
            for batch in loader:
                self.position += 1
                yield batch
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["batch_size"]) != self.batch_size or int(state["seed"]) != self.seed:
            raise ValidationError(
                f"DataStream: the checkpoint was written with batch size {state['batch_size']} and "
                f"seed {state['seed']}, this run uses {self.batch_size} and {self.seed}; resuming "
                f"would not continue the same data order")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def _as_float(value: Union[float, torch.Tensor]) -> float:
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


def check_finite(losses: Mapping[str, Union[float, torch.Tensor]], *, step: int,
                 last_checkpoint: Optional[str] = None) -> None:
    """Raise :class:`TrainingError` if any value in ``losses`` is NaN or Inf."""
    bad = {k: _as_float(v) for k, v in losses.items() if not math.isfinite(_as_float(v))}
    if bad:
        where = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                 else "no checkpoint was written yet")
        listing = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise TrainingError(f"step {step}: non-finite loss ({listing}); training stopped and "
                            f"{where}. Lower the learning rate, enable gradient clipping, or "
                            f"disable bf16 autocast and resume from it")


class Progress:
    """tqdm progress bar over steps ``start..total`` showing the latest losses."""

    def __init__(self, total: int, *, start: int = 0, enabled: bool = True, desc: str = "train") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=start, desc=desc, disable=not enabled,
                        dynamic_ncols=True, leave=True)

    def update(self, metrics: Optional[Mapping[str, float]] = None, n: int = 1) -> None:
        if metrics:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
