"""What the trainer, checkpoints and FSDP need of a model: any nn.Module that meets `TrainableModel` trains,
resumes, saves and loads, whatever its layers (a Mamba head, a timm model wrapped for vision, a U-Net, a toy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class ModelConfig(Protocol):
    """A model's architecture as plain data: a config class registered with `register_config`."""

    model_type: ClassVar[str]
    """The config.json key naming this class in the registry (set by `register_config`)."""

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON data; `from_dict` of it gives an equal config."""
        ...

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from `to_dict`'s output; unknown keys raise ValueError."""
        ...


@runtime_checkable
class TrainableModel(Protocol):
    """The model contract of `mambakit.train.fit`, `save_pretrained` and `load_model`.

    - `config` and `head_config()` together rebuild the architecture: `from_config(config, head_config())`
      gives a model with the same parameter names and shapes (that is how a checkpoint is loaded);
    - `architecture` is the name the class is registered under (`register_architecture`);
    - `shard_units()` are the submodules FSDP shards one by one (the residual blocks);
    - `no_weight_decay()` names parameters exempt from weight decay beyond the biases and 0/1-d tensors that
      are always exempt (timm's contract).

    `forward(**batch)` returns an object with `.loss` (and usually `.logits`) for the default `Task`; a task with
    its own compute_loss may ask for anything else. `set_grad_checkpointing(enable)` is optional.
    """

    config: Any
    architecture: ClassVar[str]

    @classmethod
    def from_config(cls, config: Any, head: Mapping[str, Any], **options: Any) -> TrainableModel:
        """A new model of this architecture; `options` are load-time choices every model accepts and may
        ignore: device, dtype, scan_backend."""
        ...

    def head_config(self) -> dict[str, Any]:
        """Constructor arguments beyond the config (number of labels, label names, pooling, ...) as JSON data."""
        ...

    def shard_units(self) -> Iterable[nn.Module]:
        """The submodules FSDP wraps one by one before the root."""
        ...

    def no_weight_decay(self) -> set[str]:
        """Names of parameters AdamW must not decay (besides biases, norms and other 0/1-d tensors)."""
        ...


def is_trainable(model: Any) -> bool:
    """Whether `model` is an nn.Module that meets the `TrainableModel` contract, with a registered config."""
    return (
        isinstance(model, nn.Module)
        and isinstance(model, TrainableModel)
        and isinstance(getattr(model, "config", None), ModelConfig)
    )
