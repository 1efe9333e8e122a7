"""Devices and scale-out through torch.distributed: process group set-up, DDP/FSDP wrapping, collectives.

A run is distributed when launched by `torchrun` with WORLD_SIZE > 1; otherwise every collective here is a
no-op on one process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import UserError, first_line

logger = logging.getLogger(__name__)

T = TypeVar("T")


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """ "auto" -> CUDA (this process's GPU) when available, else CPU; "cuda" without CUDA is a one-line error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "device 'cuda' was asked for, but CUDA is not available here (no CUDA GPU is visible, or "
            "torch is a CPU-only build); use device 'cpu' or 'auto' (--device cpu, not --device cuda)"
        )
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a TrainConfig precision, or None to compute in fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


@dataclass
class Distributed:
    """This process's place in the run and the collectives the trainer needs."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False
    """True when `setup` created the process group, so `close` destroys it."""

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes checkpoints."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over all processes, in place."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def max_int(self, value: int, device: torch.device) -> int:
        """The largest of every process's `value` (processes agreeing on a flag)."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order, on every process."""
        if self.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def main_decides(self, decide: Callable[[], T]) -> T | None:
        """Run `decide` on the main process only and let every process know whether it raised: the main process
        re-raises its exception, the others a UserError with its first line (so no process waits for a peer that
        gave up). Returns what `decide` returned on the main process, None on the others."""
        result, refusal = None, None
        if self.is_main:
            try:
                result = decide()
            except Exception as error:
                refusal = error
        if self.world_size > 1:
            shared = [None if refusal is None else first_line(refusal)]
            dist.broadcast_object_list(shared, src=0)
            if shared[0] is not None and refusal is None:
                raise UserError(shared[0])
        if refusal is not None:
            raise refusal
        return result

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if `setup` created it."""
        if self.owns_group:
            dist.barrier()  # no process tears down its connections while a peer still reads from them
            dist.destroy_process_group()
            self.owns_group = False


def setup(device_choice: str) -> tuple[Distributed, torch.device]:
    """This process's device, and the process group when torchrun started several processes (gloo on CPU,
    nccl on CUDA); a group the caller already initialised is used as it is."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if world_size == 1 and not dist.is_initialized():
        return Distributed(), device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), owns_group), device


def wrap_model(model: nn.Module, kind: str, device: torch.device, distributed: Distributed) -> nn.Module:
    """`model` ready for data-parallel training: DDP, or FSDP2 (each of the model's `shard_units()` sharded, then
    the root; in place, so `model` itself becomes the sharded module). Unchanged on one process."""
    if distributed.world_size == 1:
        return model
    if kind == "ddp":
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (distributed.world_size,))
    for module in model.shard_units():  # type: ignore[operator]
        fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def unwrap(model: nn.Module) -> nn.Module:
    """The module holding the parameters (DDP's inner module; FSDP shards in place)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    """True for an FSDP2 (fully_shard) module, whose parameters are DTensor shards."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def reshard(model: nn.Module) -> None:
    """Shard again the parameters FSDP leaves gathered after a forward without backward (an evaluation): the
    root keeps them, and until resharded they are not the parameters the optimizer holds."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce inside the block when not `enabled` (the first micro-batches of an
    accumulated step); the last micro-batch's backward then reduces the accumulated sum once."""
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
