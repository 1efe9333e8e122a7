"""Autoregressive generation: prefill the prompt with the parallel scan, then O(1)-state recurrent steps.

Works for any model with `forward(input_ids, state=...) -> .logits`, `step(input_ids, state) -> logits` and
`allocate_state(batch)` (MambaLMHeadModel and the apps' causal models).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. temperature 0 is greedy (argmax); the filters apply in the order
    repetition penalty, temperature, top-k, top-p, min-p."""

    temperature: float = 1.0
    top_k: int = 0
    """Keep the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose probability reaches p (1: all)."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p times the most likely one (0: none)."""
    repetition_penalty: float = 1.0
    """> 1 makes tokens already in the sequence less likely (CTRL-style: positive logits divided, negative
    multiplied)."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def apply_repetition_penalty(logits: Tensor, sequences: Tensor, penalty: float) -> Tensor:
    """logits (b, v), sequences (b, l) of token ids already present."""
    if penalty == 1.0:
        return logits
    seen = logits.gather(1, sequences)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, sequences, seen)


def filter_logits(logits: Tensor, config: SamplingConfig) -> Tensor:
    """Set the logits of tokens excluded by top-k, top-p and min-p to -inf. logits (b, v), temperature applied."""
    if config.top_k and config.top_k < logits.shape[-1]:
        kth = logits.topk(config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # A token goes when the tokens before it already reach top_p; the most likely one always stays.
        remove_sorted = (cumulative - sorted_logits.softmax(-1)) >= config.top_p
        remove = remove_sorted.scatter(1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    if config.min_p > 0.0:
        probs = logits.softmax(-1)
        threshold = config.min_p * probs.amax(-1, keepdim=True)
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def choose_next_token(logits: Tensor, sequences: Tensor, config: SamplingConfig,
                      generator: torch.Generator | None = None) -> Tensor:
    """logits (b, v) for the next position, sequences (b, l) so far -> token ids (b,)."""
    logits = apply_repetition_penalty(logits.float(), sequences, config.repetition_penalty)
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits / config.temperature, config)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
    streamer: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """Continue each prompt of input_ids (b, l) (equal lengths) by up to `max_new_tokens` tokens.

    Returns (b, l + generated). A sequence that produced `eos_token_id` keeps emitting it until all have,
    then generation stops. `streamer` gets each new column of tokens (b,) as soon as it exists.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must have shape (batch, length >= 1), got {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    sampling = sampling or SamplingConfig()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        state = model.allocate_state(input_ids.shape[0], device=input_ids.device)
        logits = model(input_ids, state=state).logits[:, -1]
        sequences = input_ids
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for position in range(max_new_tokens):
            token = choose_next_token(logits, sequences, sampling, generator)
            if eos_token_id is not None:
                token = token.masked_fill(finished, eos_token_id)
                finished |= token == eos_token_id
            sequences = torch.cat([sequences, token[:, None]], dim=1)
            if streamer is not None:
                streamer(token)
            if position == max_new_tokens - 1 or (eos_token_id is not None and bool(finished.all())):
                break
            logits = model.step(token, state)
    finally:
        model.train(was_training)
    return sequences
