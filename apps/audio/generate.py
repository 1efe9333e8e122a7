"""Sampling waveforms from an `AudioLM`, one sample per step through the U-Net's streaming state: O(1) work and
memory per sample, so the thousandth second costs what the first did.

A step samples the next id from the last logits by the Gumbel-max trick (argmax of the filtered logits plus
Gumbel noise drawn from the seeded generator, one draw per `stride` steps), then runs the model on it. The U-Net
runs its coarser stages every p-th sample, so a step depends on its position modulo the U-Net's stride only: on
CUDA each of those phases is captured once as a CUDA graph (sampling included) and replayed, which removes the
launch cost of the step's many small kernels. Graph and eager steps give the same ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mambakit.errors import UserError
from mambakit.models import SamplingConfig
from mambakit.models.generation import PhaseGraphs, filter_logits, state_tensors

from .models import AudioLM


@dataclass(frozen=True)
class Generated:
    """Sample ids (n, length) and how fast they came: `seconds` for the whole call, `decode_seconds` for the
    sampling loop alone (without the state's allocation, the graphs' capture and the prompt's prefill)."""

    ids: Tensor
    seconds: float
    decode_seconds: float

    @property
    def samples_per_second(self) -> float:
        """Generated samples (all sequences) per second of the whole call."""
        return self.ids.numel() / self.seconds if self.seconds > 0 else float("inf")

    @property
    def decode_samples_per_second(self) -> float:
        """Generated samples (all sequences) per second of the sampling loop: the steady-state rate."""
        return self.ids.numel() / self.decode_seconds if self.decode_seconds > 0 else float("inf")


def gumbel_max_sample(logits: Tensor, sampling: SamplingConfig, uniform: Tensor) -> Tensor:
    """Ids (b,) drawn from softmax(filtered logits / temperature) with `uniform` (b, vocab) noise in [0, 1);
    temperature 0 takes the argmax."""
    logits = logits.float()
    if sampling.temperature == 0:
        return logits.argmax(-1)
    filtered = filter_logits(logits / sampling.temperature, sampling)
    return (filtered - torch.log(-torch.log(uniform))).argmax(-1)


@torch.inference_mode()
def generate_audio(
    model: AudioLM,
    count: int,
    length: int,
    start_id: int,
    sampling: SamplingConfig | None = None,
    class_ids: Tensor | None = None,
    prompt: Tensor | None = None,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
    cuda_graph: bool | None = None,
) -> Generated:
    """`count` sequences of `length` new sample ids. Each starts from `start_id` (the id of silence, as SaShiMi
    starts from 128) or from `prompt` (1-D ids, read through the streaming state first); `class_ids` (count,)
    conditions a conditioned model. `progress(samples_done)` is called every 1,000 steps. `cuda_graph` (None:
    when the model is on CUDA) replays the steps as CUDA graphs."""
    sampling = sampling or SamplingConfig()
    if sampling.repetition_penalty != 1.0:
        raise UserError("audio generation has no repetition penalty: leave it at 1")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    period = model.backbone.stride
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        state = model.allocate_state(count, device=device)
        history = torch.full((count, 1), start_id, dtype=torch.long, device=device)
        if prompt is not None and len(prompt) > 0:
            history = prompt.to(device).long().expand(count, -1)
        uniform = torch.zeros(period, count, model.config.vocab_size, device=device)
        tokens = torch.zeros(period, count, dtype=torch.long, device=device)
        logits = torch.zeros(count, model.config.vocab_size, device=device)

        def advance(phase: int) -> None:
            state.position = phase  # the step reads only its phase
            token = gumbel_max_sample(logits, sampling, uniform[phase])
            tokens[phase] = token
            logits.copy_(model.step(token, state, class_ids))

        step: Callable[[int], None] = advance
        if (device.type == "cuda" if cuda_graph is None else cuda_graph) and length > 1:
            step = PhaseGraphs(advance, period, device, keep=state_tensors(state))
        for position in range(history.shape[1]):
            state.position = position
            logits.copy_(model.step(history[:, position], state, class_ids))
        out = torch.empty(count, length, dtype=torch.long, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        decode_start = time.perf_counter()
        position = history.shape[1]
        block_start = 0
        for index in range(length):
            phase = position % period
            if index == 0 or phase == 0:
                uniform.uniform_(generator=generator)
            step(phase)
            position += 1
            if phase == period - 1 or index == length - 1:
                first = phase - (index - block_start)
                out[:, block_start : index + 1] = tokens[first : phase + 1].t()
                block_start = index + 1
            if progress is not None and (index + 1) % 1000 == 0:
                progress(index + 1)
        state.position = position
    finally:
        model.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    end = time.perf_counter()
    return Generated(out.cpu(), end - start, end - decode_start)
