"""AdamW parameter groups, the warm-up + cosine learning-rate schedule, and the factories a domain can replace
them with."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .config import TrainConfig


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of the trainable parameters that get no weight decay: those the model names in `no_weight_decay()`
    (Mamba models: A_log, D, the dt bias of time-invariant layers), biases, norm weights and every other parameter
    of fewer than 2 dimensions (timm's rule).

    Embeddings decay unless named, as in mamba-ssm's and GPT-3's recipes.
    """
    named = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    return {
        name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and (name in named or parameter.dim() < 2 or name.endswith("bias"))
    }


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: [{"params": decayed, "weight_decay": weight_decay}, {"params": exempt,
    "weight_decay": 0.0}], exemptions as in `no_weight_decay_names`; tied parameters appear once, frozen ones not
    at all, empty groups are left out."""
    return _groups(model, no_weight_decay_names(model), weight_decay)


def _groups(model: nn.Module, exempt: set[str], weight_decay: float) -> list[dict[str, Any]]:
    # Split by name: FSDP replaces parameter objects (dropping their tags), so the names are taken before wrapping.
    trainable = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    groups = [
        {"params": [parameter for name, parameter in trainable if name not in exempt], "weight_decay": weight_decay},
        {"params": [parameter for name, parameter in trainable if name in exempt], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr for the step that follows `step` completed steps (0-based).

    Linear warm-up: (step + 1) / warmup_steps, so the first step is not wasted at lr 0 and the last warm-up step
    is at the peak. Then a cosine from the peak (at step warmup_steps) down to min_lr_ratio (at the last step,
    total_steps - 1).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


#: Builds the optimizer of a run from the model, the names exempt from weight decay and the config (e.g. timm's
#: create_optimizer_v2 for a vision model).
OptimizerFactory = Callable[[nn.Module, set[str], TrainConfig], Optimizer]


class LRSchedule(Protocol):
    """What the trainer needs of a learning-rate schedule: `step()` after every optimizer step, and a state that a
    resumed run restores (torch's LR schedulers have all three)."""

    def step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


#: Builds the schedule of a run from its optimizer, the config, the warm-up steps and the total steps (e.g. one of
#: timm's schedulers for a vision model).
ScheduleFactory = Callable[[Optimizer, TrainConfig, int, int], LRSchedule]


def adamw(model: nn.Module, exempt: set[str], config: TrainConfig) -> Optimizer:
    """The default optimizer: AdamW with config's lr, betas and weight decay; `exempt` parameters undecayed."""
    return AdamW(_groups(model, exempt, config.weight_decay), lr=config.lr, betas=config.betas)


def warmup_cosine(optimizer: Optimizer, config: TrainConfig, warmup_steps: int, total_steps: int) -> LambdaLR:
    """The default schedule: every group's lr scaled per step by `lr_factor` (linear warm-up, cosine to
    config.min_lr_ratio)."""
    schedule = partial(lr_factor, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=config.min_lr_ratio)
    return LambdaLR(optimizer, schedule)


def build_optimizer(
    model: nn.Module,
    exempt: set[str],
    config: TrainConfig,
    total_steps: int,
    factory: OptimizerFactory = adamw,
    schedule: ScheduleFactory = warmup_cosine,
) -> tuple[Optimizer, LRSchedule]:
    """The optimizer `factory` builds over `model` (default AdamW) and its per-step `schedule` (default warm-up +
    cosine), the warm-up steps taken from config."""
    optimizer = factory(model, exempt, config)
    warmup = config.warmup_steps or round(config.warmup_ratio * total_steps)
    return optimizer, schedule(optimizer, config, warmup, total_steps)
