"""Sampling waveforms from an `AudioLM`, one sample per step through the U-Net's streaming state: O(1) work and
memory per sample, so the thousandth second costs what the first did."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mambakit.models import SamplingConfig
from mambakit.models.generation import choose_next_token

from .models import AudioLM


@dataclass(frozen=True)
class Generated:
    """Sample ids (n, length) and how fast they came."""

    ids: Tensor
    seconds: float

    @property
    def samples_per_second(self) -> float:
        """Generated samples (all sequences) per second of wall time."""
        return self.ids.numel() / self.seconds if self.seconds > 0 else float("inf")


@torch.no_grad()
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
) -> Generated:
    """`count` sequences of `length` new sample ids. Each starts from `start_id` (the id of silence, as SaShiMi
    starts from 128) or from `prompt` (1-D ids, read through the streaming state first); `class_ids` (count,)
    conditions a conditioned model. `progress(samples_done)` is called every 1,000 steps."""
    sampling = sampling or SamplingConfig()
    device = next(model.parameters()).device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        state = model.allocate_state(count, device=device)
        history = torch.full((count, 1), start_id, dtype=torch.long, device=device)
        if prompt is not None and len(prompt) > 0:
            history = prompt.to(device).long().expand(count, -1)
        logits = None
        for position in range(history.shape[1]):
            logits = model.step(history[:, position], state, class_ids)
        assert logits is not None
        # The penalty reads the history; without one it is never read, so it is not kept.
        keep_history = sampling.repetition_penalty != 1.0
        out = torch.empty(count, length, dtype=torch.long, device=device)
        for index in range(length):
            token = choose_next_token(logits, history, sampling, generator)
            out[:, index] = token
            if keep_history:
                history = torch.cat([history, token[:, None]], dim=1)
            if index + 1 < length:
                logits = model.step(token, state, class_ids)
            if progress is not None and (index + 1) % 1000 == 0:
                progress(index + 1)
    finally:
        model.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Generated(out.cpu(), time.perf_counter() - start)
