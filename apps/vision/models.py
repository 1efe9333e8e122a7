"""VMamba (Liu et al. 2024, the v2 releases) as native timm models, over mambakit's SS2D layer.

`import mambakit.apps.vision` registers them with timm's own registry, so any timm user gets them:

    timm.create_model("vmamba_tiny_s1l8", num_classes=10, drop_path_rate=0.1)
    timm.create_model("vmamba_tiny_s1l8", pretrained=True,
                      pretrained_cfg_overlay=dict(file="vssm1_tiny_0230s_ckpt_epoch_264.pth"))
    timm.create_model("vmamba_tiny_s1l8", features_only=True, out_indices=(1, 2, 3))

The six released ImageNet-1K models (same parameter counts and checkpoint keys as upstream's `VSSM` with
`norm_layer="ln2d"`, forward type `v05_noz`), and small ones that train on a CPU in minutes (`vmamba_nano`,
`test_vmamba`). Layout (channel-first throughout; keys as in ../shared/notes/vmamba.md):

    patch_embed  conv 3x3 s2 -> LN2d -> GELU -> conv 3x3 s2 -> LN2d   (Sequential positions .0 .2 .5 .7)
    layers.{i}   blocks: VSSBlock x depth (x + SS2D(LN2d(x)); x + MLP(LN2d(x))), then downsample conv 3x3 s2 -> LN2d
                 (positions .1 .3; none after the last stage). Each stride-2 conv takes H to ceil(H/2): any size works.
    classifier   norm (LN2d) -> average pool -> head (Linear)

Released checkpoints are loaded without running their pickled code (see `mambakit.apps.vision.checkpoints`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from mambakit.errors import UserError
from mambakit.nn import SS2D, LayerNorm2d, Linear2d, no_weight_decay_names


class _Permute(nn.Identity):
    """A placeholder that keeps upstream's Sequential positions (its channel-last build permutes here)."""


class Mlp2d(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout over channels, as 1x1 convolutions (`fc1`, `fc2` keys)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, **factory: Any) -> None:
        super().__init__()
        self.fc1 = Linear2d(dim, hidden, **factory)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden, dim, **factory)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LN2d(x))), then x + DropPath(MLP(LN2d(x)))."""

    def __init__(
        self,
        dim: int,
        drop_path: float,
        ssm_ratio: float,
        d_state: int,
        mlp_ratio: float,
        mlp_drop: float,
        scan_backend: str,
        **factory: Any,
    ) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, **factory)
        self.op = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend, **factory)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm2d(dim, **factory)
        self.mlp = Mlp2d(dim, int(dim * mlp_ratio), mlp_drop, **factory)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VMambaStage(nn.Module):
    """`blocks`, then `downsample` (a stride-2 conv and LN2d, or nothing after the last stage)."""

    def __init__(self, blocks: list[nn.Module], dim: int, out_dim: int | None, **factory: Any) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample: nn.Module = (
            nn.Identity()
            if out_dim is None
            else nn.Sequential(
                _Permute(),
                nn.Conv2d(dim, out_dim, 3, stride=2, padding=1, **factory),
                _Permute(),
                LayerNorm2d(out_dim, **factory),
            )
        )
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.downsample(x)


def _stage_dims(dims: int | Sequence[int], stages: int) -> list[int]:
    return [dims * 2**i for i in range(stages)] if isinstance(dims, int) else list(dims)


class VMamba(nn.Module):
    """The VMamba v2 classifier (upstream `VSSM`, forward type v05_noz, ln2d), with timm's model contract."""

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 8, 2),
        dims: int | Sequence[int] = 96,
        ssm_ratio: float = 1.0,
        d_state: int = 1,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        mlp_drop_rate: float = 0.0,
        scan_backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        if global_pool not in ("avg", ""):
            raise UserError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
        dims = _stage_dims(dims, len(depths))
        self.num_classes, self.global_pool, self.drop_rate = num_classes, global_pool, drop_rate
        self.num_features = self.head_hidden_size = dims[-1]
        self.output_fmt = "NCHW"
        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1, **factory),
            _Permute(),
            LayerNorm2d(dims[0] // 2, **factory),
            _Permute(),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1, **factory),
            _Permute(),
            LayerNorm2d(dims[0], **factory),
        )
        # Python floats, not a tensor: the model may be built on the meta device.
        blocks_in_all = sum(depths)
        rates = [drop_path_rate * i / max(1, blocks_in_all - 1) for i in range(blocks_in_all)]
        self.layers = nn.ModuleList()
        self.feature_info: list[dict[str, Any]] = []
        start = 0
        for i, depth in enumerate(depths):
            block = partial(
                VSSBlock,
                dims[i],
                ssm_ratio=ssm_ratio,
                d_state=d_state,
                mlp_ratio=mlp_ratio,
                mlp_drop=mlp_drop_rate,
                scan_backend=scan_backend,
                **factory,
            )
            blocks = [block(drop_path=rates[start + j]) for j in range(depth)]
            start += depth
            out_dim = dims[i + 1] if i + 1 < len(depths) else None
            self.layers.append(VMambaStage(blocks, dims[i], out_dim, **factory))
            # Taps are taken after each stage's blocks, before its downsample (upstream's Backbone_VSSM).
            self.feature_info.append({"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"layers.{i}.blocks"})
        self.classifier = nn.Sequential(
            OrderedDict(
                norm=LayerNorm2d(dims[-1], **factory),
                permute=_Permute(),
                avgpool=nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity(),
                flatten=nn.Flatten(1) if global_pool else nn.Identity(),
                head=nn.Linear(dims[-1], num_classes, **factory) if num_classes else nn.Identity(),
            )
        )
        self.head_drop = nn.Dropout(drop_rate)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Upstream's: truncated-normal linear weights, zero biases, unit norms; SS2D keeps its own (S4D, dt) init.
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The SSM parameters (A_logs, Ds, dt biases); norms and biases are exempt by timm's ndim rule."""
        return no_weight_decay_names(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise LR decay (timm's `param_groups_layer_decay`)."""
        return {
            "stem": r"^patch_embed",
            "blocks": r"^layers\.(\d+)"
            if coarse
            else [(r"^layers\.(\d+)\.blocks\.(\d+)", None), (r"^layers\.(\d+)\.downsample", (99999,))],
        }

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for `num_classes` (0: none, forward returns pooled features); `global_pool` '' drops the
        pooling too."""
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise UserError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
            self.global_pool = global_pool
            self.classifier.avgpool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
            self.classifier.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        reference = self.classifier.norm.weight if isinstance(self.classifier.norm, nn.LayerNorm) else None
        factory = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
        self.classifier.head = nn.Linear(self.num_features, num_classes, **factory) if num_classes else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (b, in_chans, H, W) -> normed last-stage features (b, num_features, H/32, W/32), unpooled."""
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.classifier.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Features from `forward_features` -> logits, or the pooled features when `pre_logits`."""
        x = self.classifier.flatten(self.classifier.avgpool(x))
        x = self.head_drop(x)
        return x if pre_logits else self.classifier.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Each chosen stage's output (after its blocks, before its downsample), as timm defines it: `indices` the
        last n stages if int, all if None, else those listed; `norm` applies the final norm to the last stage's."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise UserError(f"output_fmt must be NCHW or NHWC, got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        intermediates = []
        x = self.patch_embed(x)
        last = len(self.layers) - 1
        stages = self.layers if torch.jit.is_scripting() or not stop_early else self.layers[: max_index + 1]
        for index, stage in enumerate(stages):
            x = checkpoint_seq(stage.blocks, x) if stage.grad_checkpointing else stage.blocks(x)
            if index in take_indices:
                tap = self.classifier.norm(x) if norm and index == last else x
                intermediates.append(tap.permute(0, 2, 3, 1) if output_fmt == "NHWC" else tap)
            if index < len(stages) - 1:  # a stop before the last stage returns that stage's own features
                x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        return (self.classifier.norm(x) if len(stages) - 1 == last else x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last index taken (and the head), for feature extraction."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        if max_index < len(self.feature_info) - 1:
            # The kept last stage ends in a downsample the features do not use, and the norm is sized for the
            # final stage: both go.
            self.layers[-1].downsample = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.classifier.norm = nn.Identity()
        if prune_norm:
            self.classifier.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def load_pretrained(self, path: str) -> None:
        """timm's hook for `pretrained=True, pretrained_cfg_overlay=dict(file=...)`: a released VMamba `.pth` (or
        a state dict in any format mambakit reads), loaded without executing pickled code."""
        from .checkpoints import load_official_weights

        load_official_weights(self, path)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.0",
        "classifier": "classifier.head",
        "license": "mit",
        **kwargs,
    }


#: Where the released weights are (mambakit never downloads them: pass the file you downloaded).
RELEASES = "https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/"
default_cfgs = generate_default_cfgs(
    {
        "vmamba_tiny_s1l8.in1k": _cfg(origin_url=RELEASES + "vssm1_tiny_0230s_ckpt_epoch_264.pth"),
        "vmamba_small_s1l20.in1k": _cfg(origin_url=RELEASES + "vssm1_small_0229s_ckpt_epoch_240.pth"),
        "vmamba_base_s1l20.in1k": _cfg(origin_url=RELEASES + "vssm1_base_0229s_ckpt_epoch_225.pth"),
        "vmamba_tiny_s2l5.in1k": _cfg(origin_url=RELEASES + "vssm_tiny_0230_ckpt_epoch_262.pth"),
        "vmamba_small_s2l15.in1k": _cfg(origin_url=RELEASES + "vssm_small_0229_ckpt_epoch_222.pth"),
        "vmamba_base_s2l15.in1k": _cfg(origin_url=RELEASES + "vssm_base_0229_ckpt_epoch_237.pth"),
        "vmamba_nano": _cfg(license="apache-2.0"),
        "test_vmamba": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), license="apache-2.0"),
    }
)


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs: Any) -> VMamba:
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained:
        if not overlay.get("file") and not overlay.get("state_dict"):
            raise UserError(
                f"{variant}: mambakit does not download weights; download the release (see the model's "
                f"pretrained_cfg origin_url) and pass pretrained_cfg_overlay=dict(file=PATH)"
            )
        # Our loader, not timm's torch.load: released files hold a pickled yacs config beside the weights.
        overlay.setdefault("custom_load", bool(overlay.get("file")))
    return build_model_with_cfg(
        VMamba,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay,
        feature_cfg={"feature_cls": "getter", "out_indices": (0, 1, 2, 3)},
        **kwargs,
    )


#: Architecture of each registered model: (depths, dims, ssm_ratio, drop_path_rate).
VARIANTS: dict[str, dict[str, Any]] = {
    "vmamba_tiny_s1l8": {"depths": (2, 2, 8, 2), "dims": 96, "ssm_ratio": 1.0, "drop_path_rate": 0.2},
    "vmamba_small_s1l20": {"depths": (2, 2, 20, 2), "dims": 96, "ssm_ratio": 1.0, "drop_path_rate": 0.3},
    "vmamba_base_s1l20": {"depths": (2, 2, 20, 2), "dims": 128, "ssm_ratio": 1.0, "drop_path_rate": 0.5},
    "vmamba_tiny_s2l5": {"depths": (2, 2, 5, 2), "dims": 96, "ssm_ratio": 2.0, "drop_path_rate": 0.2},
    "vmamba_small_s2l15": {"depths": (2, 2, 15, 2), "dims": 96, "ssm_ratio": 2.0, "drop_path_rate": 0.3},
    "vmamba_base_s2l15": {"depths": (2, 2, 15, 2), "dims": 128, "ssm_ratio": 2.0, "drop_path_rate": 0.6},
    # Small enough to train on a CPU in minutes.
    "vmamba_nano": {"depths": (1, 1, 3, 1), "dims": 32, "ssm_ratio": 1.0, "drop_path_rate": 0.05},
    "test_vmamba": {"depths": (1, 1, 1, 1), "dims": 16, "ssm_ratio": 1.0, "drop_path_rate": 0.0},
}


def _entrypoint(variant: str) -> Callable[..., VMamba]:
    def create(pretrained: bool = False, **kwargs: Any) -> VMamba:
        return _create_vmamba(variant, pretrained, **{**VARIANTS[variant], **kwargs})

    create.__name__ = create.__qualname__ = variant
    create.__module__ = __name__
    create.__doc__ = f"VMamba {variant}: depths {VARIANTS[variant]['depths']}, dims {VARIANTS[variant]['dims']}."
    return create


for _variant in VARIANTS:
    globals()[_variant] = register_model(_entrypoint(_variant))
