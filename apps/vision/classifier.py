"""Any timm image classifier (VMamba or resnet/convnext/vit, by name) as a mambakit model: a registered config and
architecture meeting `mambakit.models.TrainableModel`, so `fit` trains it, checkpoints save and load it, and FSDP
shards its blocks, with no trainer code of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.errors import UserError
from mambakit.models import ModelOutput, register_architecture, register_config
from mambakit.validation import LAYER_LIMIT, VOCAB_LIMIT, WIDTH_LIMIT, check_fields, check_sizes

from . import models as _vmamba_models  # noqa: F401 - registers the vmamba_* names with timm

DOMAIN_NAME = "vision"
_BLOCK_NAME = re.compile(r"(.*\.)?blocks\.\d+|layer\d+\.\d+")
#: The training resolution: one image of 16384^2 pixels is 3 GiB as float32 already.
IMAGE_SIZE_LIMIT = 16384


@register_config("mambakit-vision", domain=DOMAIN_NAME)
@dataclass(frozen=True)
class VisionConfig:
    """Which timm model, for how many classes and input channels, with which extra timm kwargs."""

    model_name: str = "vmamba_nano"
    num_classes: int = 10
    in_chans: int = 3
    img_size: int = 224
    """The training and evaluation resolution (the model itself takes any size where timm's model does)."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further `timm.create_model` kwargs (drop_rate, drop_path_rate, ...)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.model_name not in timm.list_models(self.model_name):
            raise UserError(f"config: timm has no model {self.model_name!r} (see timm.list_models())")
        for name in ("num_classes", "in_chans", "img_size"):
            if getattr(self, name) < 1:
                raise UserError(f"config: {name} must be a positive integer, got {getattr(self, name)!r}")

    def timm_kwargs(self) -> dict[str, Any]:
        """The `timm.create_model` keyword arguments of this config (besides the model name)."""
        return {**self.model_kwargs, "num_classes": self.num_classes, "in_chans": self.in_chans}

    def estimated_parameters(self) -> int:
        """Parameters of the timm model, counted on a copy built on the meta device (which allocates nothing);
        0 when the model cannot be built there."""
        try:
            with torch.device("meta"):
                model = timm.create_model(self.model_name, **self.timm_kwargs())
        except (RuntimeError, NotImplementedError):  # a model whose construction reads tensor values
            return 0
        return sum(parameter.numel() for parameter in model.parameters())

    def check_size_limits(self) -> None:
        """Refuse sizes above the sanity limits (`mambakit.validation.check_sizes`) before anything is built: the
        fields, every integer in model_kwargs (a width at most), the total of its depth entries and the parameter
        count."""
        sizes: dict[str, tuple[Any, int]] = {
            "num_classes": (self.num_classes, VOCAB_LIMIT),
            "in_chans": (self.in_chans, WIDTH_LIMIT),
            "img_size": (self.img_size, IMAGE_SIZE_LIMIT),
        }
        for key, value in self.model_kwargs.items():
            sizes[f"model_kwargs.{key}"] = (value, WIDTH_LIMIT)
            if "depth" in key and isinstance(value, int | list | tuple):
                depths = [value] if isinstance(value, int) else [item for item in value if isinstance(item, int)]
                sizes[f"the layer count of model_kwargs.{key}"] = (sum(depths), LAYER_LIMIT)
        check_sizes(sizes, self.estimated_parameters)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisionConfig:
        """Build from `to_dict`'s output, as read from a file: unknown keys, values of the wrong type and sizes
        above the sanity limits (`check_size_limits`) raise ValueError naming the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"config: unknown keys {unknown}; known keys: {', '.join(sorted(known))}")
        config = cls(**data)
        config.check_size_limits()
        return config


@register_architecture(domain=DOMAIN_NAME)
class ImageClassifier(nn.Module):
    """`timm.create_model(config.model_name, ...)` as `self.model`, with named labels and a loss."""

    def __init__(
        self, config: VisionConfig, labels: Sequence[str] | None = None, pretrained_file: str | None = None
    ) -> None:
        super().__init__()
        if labels is not None and len(labels) != config.num_classes:
            raise UserError(f"labels must name each of the {config.num_classes} classes, got {list(labels)}")
        self.config = config
        self.labels = None if labels is None else tuple(labels)
        kwargs = config.timm_kwargs()
        if pretrained_file is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": pretrained_file})
        self.model = timm.create_model(config.model_name, **kwargs)

    @classmethod
    def from_config(cls, config: VisionConfig, head: Mapping[str, Any], **options: Any) -> ImageClassifier:
        """The classifier over `config` with head arguments `head`; options device and dtype place it."""
        model = cls(config, **head)
        return model.to(device=options.get("device"), dtype=options.get("dtype"))

    def head_config(self) -> dict[str, Any]:
        return {} if self.labels is None else {"labels": list(self.labels)}

    def shard_units(self) -> list[nn.Module]:
        """Every residual block of the timm model, by timm's naming (`blocks.N` in ViTs, `stages.N.blocks.N` and
        `layers.N.blocks.N` in hierarchical models, `layerN.M` in ResNets); the whole model when it has none."""
        return [module for name, module in self.model.named_modules() if _BLOCK_NAME.fullmatch(name)] or [self.model]

    def no_weight_decay(self) -> set[str]:
        """The timm model's own `no_weight_decay()` names (VMamba: A_logs, Ds, dt biases)."""
        names = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        own = {name for name, _ in self.model.named_parameters()}
        # timm models name parameters, or module prefixes of them (e.g. "pos_embed", "cls_token").
        return {f"model.{name}" for name in own if any(name == n or name.startswith(f"{n}.") for n in names)}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None) -> ModelOutput:
        """pixel_values (b, in_chans, H, W) -> logits (b, num_classes); labels (b,) class ids, or (b, num_classes)
        soft targets (mixup/cutmix), give the cross-entropy loss."""
        logits = self.model(pixel_values)
        loss = None
        if labels is not None:
            if labels.dim() == 2:
                loss = torch.sum(-labels * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return ModelOutput(logits, loss)
