"""Autoregressive generation: prefill the prompt with the parallel scan, then O(1)-state recurrent steps.

Works for any model with `forward(input_ids, state=...) -> .logits`, `step(input_ids, state) -> logits` and
`allocate_state(batch)` (MambaLMHeadModel and the apps' causal models).

On CUDA the recurrent step runs as a captured CUDA graph (as mamba-ssm's `generate(..., cg=True)`): one step is
hundreds of tiny kernels, and replaying them as one graph removes the per-kernel launch cost that otherwise
dominates decoding. The graph reads and updates the state in static buffers, so the model's `step` must update
the state's tensors in place (every mambakit step does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError


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
        if not self.temperature >= 0:  # NaN fails this comparison too
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise UserError(f"min_p must be in [0, 1), got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise UserError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


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


def choose_next_token(
    logits: Tensor, sequences: Tensor, config: SamplingConfig, generator: torch.Generator | None = None
) -> Tensor:
    """logits (b, v) for the next position, sequences (b, l) so far -> token ids (b,)."""
    logits = apply_repetition_penalty(logits.float(), sequences, config.repetition_penalty)
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits / config.temperature, config)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def _map_state(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    """The same state structure (tensors inside dataclasses, lists and tuples) with fn applied to each tensor."""
    if isinstance(state, Tensor):
        return fn(state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(
            state, **{f.name: _map_state(fn, getattr(state, f.name)) for f in dataclasses.fields(state) if f.init}
        )
    if isinstance(state, (list, tuple)):
        return type(state)(_map_state(fn, item) for item in state)
    return state


def state_tensors(state: Any) -> list[Tensor]:
    """Every tensor of a state (tensors inside dataclasses, lists and tuples), in a fixed order."""
    tensors: list[Tensor] = []

    def collect(tensor: Tensor) -> Tensor:
        tensors.append(tensor)
        return tensor

    _map_state(collect, state)
    return tensors


def uncached_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """The caller's autocast setting without its weight-cast cache: a captured graph must cast the weights itself,
    since the cached copies it would otherwise read are freed when the caller's autocast region ends."""
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=False)


class _DecodeGraph:
    """`model.step` for one batch size and state layout, captured once as a CUDA graph. The input token, the state
    and the logits live in static buffers that every replay reads and overwrites."""

    def __init__(self, model: Any, state: Any, batch: int, device: torch.device, warmups: int = 2) -> None:
        self.device = device
        with torch.cuda.device(self.device), uncached_autocast("cuda"):
            self.tokens = torch.zeros(batch, dtype=torch.long, device=self.device)
            self.state = _map_state(lambda t: torch.zeros_like(t, memory_format=torch.contiguous_format), state)
            # Warm-up on a side stream, as CUDA graph capture requires, and capture on the same stream: the Triton
            # kernels compile and the stream's cuBLAS workspace is allocated outside the capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmups):
                    model.step(self.tokens, self.state)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=side):
                self.logits = model.step(self.tokens, self.state)

    def load(self, state: Any) -> None:
        """Continue from `state` (e.g. after the prefill): copy it into the static buffers."""
        for static, value in zip(state_tensors(self.state), state_tensors(state), strict=True):
            static.copy_(value)

    def __call__(self, tokens: Tensor) -> Tensor:
        """tokens (b,) -> next-token logits (b, vocab), a static buffer the next call overwrites."""
        with torch.cuda.device(self.device):
            self.tokens.copy_(tokens)
            self.graph.replay()
        return self.logits


class PhaseGraphs:
    """`advance(phase)` for phase in range(phases), each captured once as a CUDA graph, for steps whose kernels
    depend only on a phase (a pooled U-Net runs its coarser stages every p-th position): calling the object with
    a phase replays that phase's graph. Everything `advance` reads or writes must live in tensors allocated before
    the capture and updated in place; the graphs share one memory pool, so replay them in phase order as captured
    (cyclically) and use an output before the next replay."""

    def __init__(
        self, advance: Callable[[int], None], phases: int, device: torch.device, keep: Sequence[Tensor] = ()
    ) -> None:
        """`keep`: tensors (a state) whose values the warm-up and the captures must not change."""
        self.device = device
        saved = [t.clone() for t in keep]
        self.graphs: list[torch.cuda.CUDAGraph] = []
        with torch.cuda.device(device), uncached_autocast("cuda"):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            # Every phase once on the side stream first, so that kernels compile and workspaces are allocated
            # outside the captures.
            with torch.cuda.stream(side):
                for phase in range(phases):
                    advance(phase)
            torch.cuda.current_stream().wait_stream(side)
            pool = torch.cuda.graph_pool_handle()
            for phase in range(phases):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=side):
                    advance(phase)
                self.graphs.append(graph)
            for tensor, value in zip(keep, saved, strict=True):
                tensor.copy_(value)

    def __call__(self, phase: int) -> None:
        with torch.cuda.device(self.device):
            self.graphs[phase].replay()


class _GraphCache(dict):
    """A model's captured decode graphs, keyed by device, autocast setting and state layout (batch included),
    most recently used last. They are valid only for the weights' memory they were captured with (`weights`);
    copies and pickles of the model start with an empty cache."""

    max_graphs = 4

    def __init__(self, weights: tuple) -> None:
        super().__init__()
        self.weights = weights

    def __deepcopy__(self, memo: dict) -> _GraphCache:
        return _GraphCache(())

    def __reduce__(self) -> tuple:
        return _GraphCache, ((),)


def _decode_graph(model: Any, state: Any, batch: int, device: torch.device) -> _DecodeGraph:
    """The model's graph for this state layout, captured on first use and cached on the model."""
    # A graph reads the weights where they were at capture: replaced tensors (model.to(...)) need a new capture,
    # in-place updates (load_state_dict) do not.
    weights = tuple((t.data_ptr(), t.dtype) for t in itertools.chain(model.parameters(), model.buffers()))
    cache = getattr(model, "_decode_graphs", None)
    if not isinstance(cache, _GraphCache) or cache.weights != weights:
        cache = _GraphCache(weights)
        model._decode_graphs = cache
    key = (
        device,
        batch,
        torch.is_autocast_enabled("cuda"),
        torch.get_autocast_dtype("cuda"),
        tuple((tuple(t.shape), t.dtype) for t in state_tensors(state)),
    )
    graph = cache.pop(key, None) or _DecodeGraph(model, state, batch, device)
    cache[key] = graph
    while len(cache) > cache.max_graphs:
        del cache[next(iter(cache))]
    return graph


def allocate_state_for(model: Any, batch: int, device: torch.device, max_length: int) -> Any:
    """`model.allocate_state` for `batch` sequences of up to `max_length` positions: attention layers keep a
    key/value cache of every position, sized to it; a model without attention layers takes no length."""
    if getattr(getattr(model, "config", None), "attn_layer_idx", ()):
        return model.allocate_state(batch, device=device, max_length=max_length)
    return model.allocate_state(batch, device=device)


@torch.inference_mode()
def generate(
    model: Any,
    input_ids: Tensor,
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
    streamer: Callable[[Tensor], None] | None = None,
    cuda_graph: bool | None = None,
    stop_when: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Continue each prompt of input_ids (b, l) (equal lengths) by up to `max_new_tokens` tokens.

    Returns (b, l + generated). A sequence that produced `eos_token_id` keeps emitting it until all have,
    then generation stops. `streamer` gets each new column of tokens (b,) as soon as it exists. `stop_when`
    gets the sequences so far after each new token and returns a bool (b,) of those that are done (e.g. a stop
    string appeared): they then emit `eos_token_id` too, or, without one, run on until all are done and the
    caller cuts them.

    `cuda_graph` (None: when input_ids are on CUDA) replays the recurrent step as a CUDA graph, captured on the
    first call for a batch size and kept on the model for later calls (with its state buffers, a few MB per layer
    at batch 64); it gives the same tokens as eager steps. Run generate under the autocast setting you want: the
    graph is captured under it.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise UserError(f"input_ids must have shape (batch, length >= 1), got {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab_size:
        lowest, highest = torch.stack(torch.aminmax(input_ids)).tolist()  # one device sync
        if not 0 <= lowest <= highest < vocab_size:
            raise UserError(
                f"input_ids hold ids {lowest}..{highest}, outside the model's vocabulary 0..{vocab_size - 1}: "
                "check the tokenizer"
            )
    on_cuda = input_ids.device.type == "cuda"
    if cuda_graph and not on_cuda:
        raise UserError(
            f"cuda_graph=True needs the model and input_ids on a CUDA device, they are on "
            f"{input_ids.device}; leave cuda_graph unset to decode without graphs"
        )
    sampling = sampling or SamplingConfig()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        state = allocate_state_for(model, input_ids.shape[0], input_ids.device, input_ids.shape[1] + max_new_tokens)
        logits = model(input_ids, state=state).logits[:, -1]
        step: Callable[[Tensor], Tensor] = functools.partial(model.step, state=state)
        # A graph pays off only when there are steps to replay (the last token needs no step).
        if (on_cuda if cuda_graph is None else cuda_graph) and max_new_tokens > 1:
            graph = _decode_graph(model, state, input_ids.shape[0], input_ids.device)
            graph.load(state)
            step = graph
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
            if stop_when is not None:
                finished |= stop_when(sequences).to(finished.device)
            stoppable = eos_token_id is not None or stop_when is not None
            if position == max_new_tokens - 1 or (stoppable and bool(finished.all())):
                break
            logits = step(token)
    finally:
        model.train(was_training)
    return sequences
