"""A training step's forward and backward captured once as a CUDA graph and replayed (`TrainConfig.cuda_graphs`).

Small models (the capability suite's, a few layers of width 64-256) spend most of a step launching kernels: the
GPU waits on Python. A replayed graph launches them all at once. The optimizer step, gradient clipping and the
loss bookkeeping stay eager (a handful of foreach kernels), so the learning-rate schedule, the divergence check
and the weight average work as without graphs.

What a captured step needs (PyTorch's "whole network capture"): inputs copied into static tensors before each
replay; batch shapes that stay fixed (a new shape, from a curriculum or a sequence-length warm-up, is captured
anew); no host synchronisation inside the model or the loss; gradients that live in the graph's memory, so the
parameters' `.grad` are those buffers, overwritten by each replay rather than accumulated, and must not be set to
None between replays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..models.generation import uncached_autocast


def batch_signature(batch: dict[str, Any]) -> tuple[Any, ...]:
    """What a captured graph is specific to: each entry's name and, for tensors, shape, dtype and device; other
    values as they are."""
    return tuple(
        (name, tuple(value.shape), value.dtype, value.device) if isinstance(value, Tensor) else (name, value)
        for name, value in sorted(batch.items())
    )


class StepGraph:
    """`loss_of(batch).backward()` for batches of one signature, captured as one CUDA graph under the caller's
    autocast setting (without its weight-cast cache, which a graph cannot read after the capture).

    Calling it with a batch of that signature copies the batch into the static inputs, replays the graph and
    returns the loss (a float32 scalar tensor that the next call overwrites); the parameters' gradients are then
    in their `.grad` tensors. A capture that fails raises, leaving every parameter's `.grad` None."""

    def __init__(
        self,
        loss_of: Callable[[dict[str, Any]], Tensor],
        batch: dict[str, Any],
        parameters: Sequence[Tensor],
        warmups: int = 2,
    ) -> None:
        self.signature = batch_signature(batch)
        self.inputs = {name: value.clone() if isinstance(value, Tensor) else value for name, value in batch.items()}
        try:
            self._capture(loss_of, parameters, warmups)
        except BaseException:
            _drop_gradients(parameters)  # a failed capture leaves no half-made gradients for an eager step to add to
            raise

    def _capture(self, loss_of: Callable[[dict[str, Any]], Tensor], parameters: Sequence[Tensor], warmups: int) -> None:
        # Warm-up on a side stream, as capture requires: kernels compile, `auto` measures its backends, cuBLAS
        # allocates its workspace, all outside the capture. Its gradients are dropped; no parameter changes.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with uncached_autocast("cuda"):
            with torch.cuda.stream(side):
                for _ in range(warmups):
                    _drop_gradients(parameters)
                    loss_of(self.inputs).backward()
            torch.cuda.current_stream().wait_stream(side)
            _drop_gradients(parameters)  # the captured backward allocates them in the graph's pool
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: the training loader's pin-memory thread allocates pinned memory while this thread
            # captures; under the default (global) mode that allocation would fail in that thread and end the run.
            with torch.cuda.graph(self.graph, stream=side, capture_error_mode="thread_local"):
                loss = loss_of(self.inputs)
                loss.backward()
                self.loss = loss.detach().float()

    def __call__(self, batch: dict[str, Any]) -> Tensor:
        for name, value in batch.items():
            if isinstance(value, Tensor):
                self.inputs[name].copy_(value, non_blocking=True)
        self.graph.replay()
        return self.loss


def _drop_gradients(parameters: Sequence[Tensor]) -> None:
    for parameter in parameters:
        parameter.grad = None
