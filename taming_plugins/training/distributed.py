"""Multi-process training with ``torch.distributed``: process group, sharding, DDP, sync.

Both trainers use this module; in a single process every helper is a no-op, so the same
code runs with ``python`` and under ``torchrun``::

    torchrun --nproc_per_node=2 -m taming_plugins.cli train-tokenizer --config run.yaml

* :func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and creates the process group:
  ``gloo`` on CPU, ``nccl`` on CUDA (each process on ``cuda:LOCAL_RANK``).
* :class:`ShardedDataStream` is :class:`~.loop.DataStream` with DistributedSampler
  semantics: every rank draws the same seeded per-epoch permutation and takes the
  disjoint shard ``order[rank::world]``, so batch ``j`` of all ranks together is batch
  ``j`` of one process with a ``world``-times larger batch. Resumable like DataStream.
* :func:`wrap_ddp` wraps a module in :class:`~torch.nn.parallel.DistributedDataParallel`
  (gradients averaged over ranks during backward); :func:`use_wrapped` temporarily puts
  the wrapper in place of a sub-module (the discriminator inside the loss).
* :func:`broadcast_module_`, :func:`broadcast_buffers_`, :func:`all_reduce_mean_` and
  :func:`module_digest` keep (and check) weights and buffers identical across ranks.
* :func:`fast_optimizer_kwargs` / :func:`with_fast_kernels`: fused Adam on CUDA,
  multi-tensor (``foreach``) Adam on CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from taming_core.errors import ConfigError, ValidationError

from .loop import DataStream

log = logging.getLogger(__name__)

#: torchrun's environment variables.
ENV_RANK, ENV_WORLD_SIZE, ENV_LOCAL_RANK = "RANK", "WORLD_SIZE", "LOCAL_RANK"
BACKEND_CPU, BACKEND_CUDA = "gloo", "nccl"
#: How long collectives wait for a missing rank before failing (instead of hanging).
DEFAULT_TIMEOUT_MINUTES = 30
#: Values of the trainers' ``distributed`` option.
DISTRIBUTED_MODES = ("auto", "off")

DeviceLike = Union[str, torch.device]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer in the environment, got {value!r}") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    return _env_int(ENV_WORLD_SIZE, 1)


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 and in a single process: the process that logs and writes files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def current_context() -> DistContext:
    """The running process group as a :class:`DistContext` (single-process if none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=_env_int(ENV_LOCAL_RANK, 0), backend=str(dist.get_backend()))


def init_distributed(device: DeviceLike = "cpu", *, mode: str = "auto",
                     timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistContext:
    """Create the process group from torchrun's environment when ``WORLD_SIZE > 1``.

    ``device`` picks the backend (gloo for CPU, NCCL for CUDA, where the process also
    selects ``cuda:LOCAL_RANK``). Idempotent: an existing group is reused. ``mode="off"``
    ignores the environment (one independent process).
    """
    if mode not in DISTRIBUTED_MODES:
        raise ConfigError(f"distributed: expected one of {', '.join(DISTRIBUTED_MODES)}, got {mode!r}")
    if mode == "off":
        return DistContext()
    if dist.is_available() and dist.is_initialized():
        return current_context()
    world = env_world_size()
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise ConfigError(f"{ENV_WORLD_SIZE}={world} but this torch build has no torch.distributed")
    device = torch.device(device)
    rank, local_rank = _env_int(ENV_RANK, 0), _env_int(ENV_LOCAL_RANK, 0)
    backend = BACKEND_CUDA if device.type == "cuda" else BACKEND_CPU
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    log.info("process group: rank %d of %d (local rank %d), backend %s", rank, world, local_rank, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def local_device(device: DeviceLike, ctx: DistContext) -> torch.device:
    """``cuda`` -> ``cuda:LOCAL_RANK`` under torchrun (one GPU per process); else as given."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return device


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (e.g. build a cache that the
    others then only read); a plain block in one process."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def cleanup() -> None:
    """Destroy the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- data
class ShardedDataStream(DataStream):
    """:class:`DataStream` sharded over ranks with DistributedSampler semantics.

    Every rank permutes the dataset with the same ``(seed, epoch)`` generator, keeps the
    first ``world · ⌊n / world⌋`` entries and takes ``order[rank::world]``; batches of
    ``batch_size`` (per rank) follow. Batch ``j`` of rank ``r`` therefore holds entries
    ``r, r + world, ...`` of the slice ``[j·world·b, (j+1)·world·b)`` of the permutation:
    all ranks together see exactly one process's batch ``j`` of size ``world·b``.
    With ``world_size=1`` it is a plain :class:`DataStream`.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 **kwargs: Any) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValidationError(f"ShardedDataStream: expected 0 <= rank < world_size, got rank {rank} "
                                  f"of {world_size}")
        n = len(dataset)  # type: ignore[arg-type]
        if n < batch_size * world_size:
            raise ValidationError(f"ShardedDataStream: the dataset has {n} items, fewer than one batch "
                                  f"of {batch_size} on each of {world_size} processes")
        self.rank, self.world_size = rank, world_size
        super().__init__(dataset, batch_size, **kwargs)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // (self.batch_size * self.world_size)  # type: ignore[arg-type]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self.world_size == 1:
            return super()._epoch_batches(epoch)
        order = self._epoch_order(epoch)
        n = len(order)
        shard = order[:n - n % self.world_size][self.rank::self.world_size]
        b = self.batch_size
        return [shard[i * b:(i + 1) * b] for i in range(self.batches_per_epoch)]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "world_size": self.world_size}

    def load_state_dict(self, state: Any) -> None:
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            raise ValidationError(
                f"ShardedDataStream: the checkpoint was written by {saved_world} process(es), this run "
                f"has {self.world_size}; resume with the same --nproc_per_node × nodes so the data "
                f"order continues (or start a new run from its weights)")
        super().load_state_dict(state)


# --------------------------------------------------------------------------- modules
class EntryPoint(nn.Module):
    """``forward`` = a declared method of ``module`` (e.g. ``Tokenizer.reconstruct``,
    ``Prior.loss``), so DDP and ``torch.compile`` can wrap any component through the
    entry point its interface declares, not through an undeclared ``forward``."""

    def __init__(self, module: nn.Module, method: Callable[..., Any]) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.method(*args, **kwargs)


def wrap_ddp(module: nn.Module, device: DeviceLike, *, broadcast_buffers: bool = False,
             find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed, else ``module`` itself.

    Buffer broadcasting is off by default: the quantizers synchronise their own state
    and the trainers broadcast the discriminator's buffers explicitly after its step.
    """
    if not is_distributed():
        return module
    device = torch.device(device)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=broadcast_buffers,
                                   find_unused_parameters=find_unused_parameters)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP (and/or ``torch.compile``) wrapper."""
    while True:
        inner = getattr(module, "module", None) if isinstance(module, DistributedDataParallel) \
            else getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


@contextlib.contextmanager
def use_wrapped(parent: nn.Module, name: str, wrapper: nn.Module) -> Iterator[None]:
    """Temporarily replace sub-module ``parent.<name>`` with ``wrapper`` (e.g. its DDP
    wrapper) so code calling ``parent.<name>(...)`` goes through it; restored on exit."""
    original = getattr(parent, name)
    if wrapper is original:
        yield
        return
    setattr(parent, name, wrapper)
    try:
        yield
    finally:
        setattr(parent, name, original)


def no_sync(module: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """``ddp.no_sync()`` when ``skip`` and ``module`` is (or compiles) a DDP wrapper: the
    gradients of accumulation micro-batches are all-reduced once, with the last one."""
    inner = getattr(module, "_orig_mod", module)
    if skip and isinstance(inner, DistributedDataParallel):
        return inner.no_sync()
    return contextlib.nullcontext()


@torch.no_grad()
def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (no-op in one process)."""
    if not is_distributed():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=src)


@torch.no_grad()
def broadcast_buffers_(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics...) to every rank."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=src)


def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """Average ``tensor`` in place over ranks (no-op in one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def reduce_metrics(metrics: dict[str, float], device: DeviceLike) -> dict[str, float]:
    """Average scalar metrics over ranks (one all-reduce); identity in one process."""
    if not is_distributed() or not metrics:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    all_reduce_mean_(values)
    return dict(zip(keys, values.tolist()))


StateLike = Union[nn.Module, Mapping[str, Tensor]]


def _state_tensors(state: StateLike) -> list[Tensor]:
    if isinstance(state, nn.Module):  # persistent state only: not monitoring buffers
        state = state.state_dict()
    return list(state.values())


@torch.no_grad()
def module_digest(state: StateLike) -> Tensor:
    """Float64 vector of per-tensor sums and sums of squares of a module's state dict
    (parameters and persistent buffers) or of a dict of tensors such as EMA weights: compare across ranks to check they
    are in sync (see :func:`max_rank_divergence`)."""
    parts = []
    for tensor in _state_tensors(state):
        t = tensor.detach().double()
        parts.append(torch.stack([t.sum(), (t * t).sum()]))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def max_rank_divergence(module: StateLike) -> float:
    """Largest absolute difference of :func:`module_digest` between any rank and rank 0
    (0.0 when in sync or in one process)."""
    digest = module_digest(module)
    if not is_distributed():
        return 0.0
    reference = digest.clone()
    dist.broadcast(reference, src=0)
    diff = (digest - reference).abs().max() if digest.numel() else digest.new_zeros(())
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


# --------------------------------------------------------------------------- speed
def fast_optimizer_kwargs(device: DeviceLike, mode: Union[bool, str] = "auto") -> dict[str, bool]:
    """Adam kernel choice: ``{"fused": True}`` on CUDA, ``{"foreach": True}`` elsewhere;
    ``mode=False`` (or ``"off"``) keeps torch's default."""
    if mode in (False, "off", None):
        return {}
    if mode not in (True, "auto"):
        raise ConfigError(f"optim.fused: expected auto, true or false, got {mode!r}")
    return {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}


def with_fast_kernels(optimizer: torch.optim.Optimizer, device: DeviceLike,
                      mode: Union[bool, str] = "auto") -> torch.optim.Optimizer:
    """Rebuild a fresh (not yet stepped) Adam/AdamW with :func:`fast_optimizer_kwargs`,
    keeping its parameter groups and their hyper-parameters."""
    kwargs = fast_optimizer_kwargs(device, mode)
    if not kwargs or not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return optimizer
    if optimizer.state:
        raise ValidationError("with_fast_kernels: the optimizer already has state; call it before "
                              "the first step")
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in optimizer.param_groups]
    return type(optimizer)(groups, **kwargs)


def maybe_compile(module: nn.Module, option: Union[bool, str, None]) -> nn.Module:
    """``torch.compile(module)`` when ``option`` is true (or names a dynamo backend, e.g.
    ``"aot_eager"``); the module itself when false/None."""
    if not option:
        return module
    if option is True:
        return torch.compile(module)  # type: ignore[return-value]
    if not isinstance(option, str):
        raise ConfigError(f"compile: expected false, true or a torch.compile backend name, got {option!r}")
    return torch.compile(module, backend=option)  # type: ignore[return-value]
