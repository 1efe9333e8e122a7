"""Loading released VMamba checkpoints (mambakit.apps.vision.checkpoints), on the CPU.

Checkpoints are written the way upstream's training code writes them: `torch.save({'model': state_dict, 'optimizer':
..., 'epoch': ..., 'max_accuracy': ..., 'config': CfgNode}, path)`. The CfgNode is a stand-in class pickled under
the name `yacs.config.CfgNode` through a fake `yacs.config` module that exists only while saving, so loading cannot
rely on yacs. Checkpoints of the 30M-parameter variants are made of expanded scalars (a few bytes on disk) with the
shapes the release notes give; `official_shapes` is checked against real models first.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

timm = pytest.importorskip("timm")

from mambakit.apps.vision.checkpoints import (  # noqa: E402
    VisionCheckpointError,
    load_official_weights,
    read_official_checkpoint,
)
from mambakit.apps.vision.models import VMamba  # noqa: E402 - importing it registers the models with timm

from mambakit.errors import UserError  # noqa: E402

LOGGER = "mambakit.apps.vision.checkpoints"


class FakeCfgNode(dict):
    """Pickles as `yacs.config.CfgNode`, with yacs' attributes (a set among them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__.update(
            {"__immutable__": True, "__deprecated_keys__": set(), "__renamed_keys__": {}, "__new_allowed__": False}
        )


FakeCfgNode.__module__ = "yacs.config"
FakeCfgNode.__qualname__ = FakeCfgNode.__name__ = "CfgNode"


@contextmanager
def fake_yacs() -> Iterator[None]:
    """`yacs.config.CfgNode` importable (as FakeCfgNode) only inside the block."""
    saved = {name: sys.modules.get(name) for name in ("yacs", "yacs.config")}
    package, module = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    module.CfgNode = FakeCfgNode  # type: ignore[attr-defined]
    package.config = module  # type: ignore[attr-defined]
    sys.modules.update({"yacs": package, "yacs.config": module})
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


@pytest.fixture(autouse=True)
def no_yacs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside `fake_yacs`, importing yacs fails: the loader must not need it."""
    monkeypatch.setitem(sys.modules, "yacs", None)
    monkeypatch.setitem(sys.modules, "yacs.config", None)


def save_official(path: Path, state_dict: Mapping[str, Tensor], **extra: Any) -> Path:
    """Save as upstream's `save_checkpoint` does."""
    config = FakeCfgNode(
        MODEL=FakeCfgNode(NAME="vssm1_tiny_0230s", TYPE="vssm", VSSM=FakeCfgNode(DEPTHS=[2, 2, 8, 2], EMBED_DIM=96)),
        TRAIN=FakeCfgNode(EPOCHS=300, BASE_LR=1e-3, TAG=("a", 1)),
    )
    checkpoint = {"model": OrderedDict(state_dict), "optimizer": {}, "epoch": 3, "max_accuracy": 0.5, "config": config}
    with fake_yacs():
        torch.save({**checkpoint, **extra}, path)
    return path


def official_shapes(
    depths: Sequence[int], dims: int, ssm_ratio: float, num_classes: int = 1000, d_state: int = 1
) -> dict[str, tuple[int, ...]]:
    """The v2 release layout (shared/notes/vmamba.md): every key and shape of upstream's VSSM."""
    stage_dims = [dims * 2**i for i in range(len(depths))]
    half = dims // 2
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.0.weight": (half, 3, 3, 3),
        "patch_embed.0.bias": (half,),
        "patch_embed.2.weight": (half,),
        "patch_embed.2.bias": (half,),
        "patch_embed.5.weight": (dims, half, 3, 3),
        "patch_embed.5.bias": (dims,),
        "patch_embed.7.weight": (dims,),
        "patch_embed.7.bias": (dims,),
    }
    for i, (depth, c) in enumerate(zip(depths, stage_dims, strict=True)):
        d, r = int(ssm_ratio * c), math.ceil(c / 16)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            shapes.update(
                {
                    p + "norm.weight": (c,),
                    p + "norm.bias": (c,),
                    p + "op.x_proj_weight": (4, r + 2 * d_state, d),
                    p + "op.dt_projs_weight": (4, d, r),
                    p + "op.dt_projs_bias": (4, d),
                    p + "op.A_logs": (4 * d, d_state),
                    p + "op.Ds": (4 * d,),
                    p + "op.in_proj.weight": (d, c),
                    p + "op.conv2d.weight": (d, 1, 3, 3),
                    p + "op.out_norm.weight": (d,),
                    p + "op.out_norm.bias": (d,),
                    p + "op.out_proj.weight": (c, d),
                    p + "norm2.weight": (c,),
                    p + "norm2.bias": (c,),
                    p + "mlp.fc1.weight": (4 * c, c),
                    p + "mlp.fc1.bias": (4 * c,),
                    p + "mlp.fc2.weight": (c, 4 * c),
                    p + "mlp.fc2.bias": (c,),
                }
            )
        if i + 1 < len(depths):
            n = stage_dims[i + 1]
            p = f"layers.{i}.downsample."
            shapes.update({p + "1.weight": (n, c, 3, 3), p + "1.bias": (n,), p + "3.weight": (n,), p + "3.bias": (n,)})
    last = stage_dims[-1]
    shapes.update(
        {
            "classifier.norm.weight": (last,),
            "classifier.norm.bias": (last,),
            "classifier.head.weight": (num_classes, last),
            "classifier.head.bias": (num_classes,),
        }
    )
    return shapes


def placeholder(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Tensors of these shapes stored as one scalar each (expanded views keep a one-element storage)."""
    return {key: torch.zeros(()).expand(shape) for key, shape in shapes.items()}


def shapes_of(state_dict: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in state_dict.items()}


def make(name: str, seed: int = 0, **kwargs: Any) -> VMamba:
    torch.manual_seed(seed)
    return cast(VMamba, timm.create_model(name, **kwargs).eval())


def pretrained(name: str, path: Path, seed: int = 1, **kwargs: Any) -> VMamba:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    return cast(VMamba, model.eval())


def images(channels: int = 3, size: int = 64) -> Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(7))


def one_line_error(excinfo: pytest.ExceptionInfo[VisionCheckpointError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    assert isinstance(excinfo.value, ValueError) and isinstance(excinfo.value, UserError)
    return message


@pytest.fixture(scope="module")
def tiny_s1l8() -> nn.Module:
    """The one 30M-parameter model of this file (built in about 0.3 s)."""
    return make("vmamba_tiny_s1l8")


# --- the official layout ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_vmamba", "vmamba_nano"])
def test_official_checkpoint_loads_through_timm_with_identical_logits(name: str, tmp_path: Path) -> None:
    source = make(name, seed=0)
    path = save_official(tmp_path / "ckpt.pth", source.state_dict())
    fresh = make(name, seed=1)
    loaded = pretrained(name, path, seed=1)
    x = images()
    with torch.no_grad():
        assert not torch.equal(fresh(x), source(x))  # the load is what makes them equal
        assert torch.equal(loaded(x), source(x))
    read = read_official_checkpoint(path)
    assert list(read) == list(source.state_dict())
    assert all(torch.equal(read[key], value) for key, value in source.state_dict().items())


def test_official_checkpoint_with_all_training_entries(tmp_path: Path) -> None:
    source = make("test_vmamba")
    optimizer = torch.optim.AdamW(source.parameters(), lr=1e-3)
    source(images()).sum().backward()
    optimizer.step()
    extra = {
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": {"t_initial": 300, "warmup_t": 20, "base_values": [1e-3], "noise_range_t": None},
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        "model_ema": {key: value + 1 for key, value in source.state_dict().items()},
        "max_accuray_ema": 0.4,
    }
    path = save_official(tmp_path / "ckpt.pth", source.state_dict(), **extra)
    read = read_official_checkpoint(path)  # 'model', not 'model_ema'
    assert all(torch.equal(read[key], value) for key, value in source.state_dict().items())


def test_stand_in_is_allowed_only_during_the_call(tmp_path: Path) -> None:
    path = save_official(tmp_path / "ckpt.pth", make("test_vmamba").state_dict())
    before = set(torch.serialization.get_safe_globals())
    read_official_checkpoint(path)
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(Exception, match="yacs"):
        torch.load(path, weights_only=True)


def test_legacy_names_module_prefix_and_state_dict_key(tmp_path: Path) -> None:
    source = make("test_vmamba")
    renames = [
        ("patch_embed.0.", "patch_embed.proj."),
        ("patch_embed.2.", "patch_embed.norm."),
        ("classifier.norm.", "norm."),
        ("classifier.head.", "head."),
        (".blocks.0.norm.", ".blocks.0.ln_1."),
        (".blocks.0.op.", ".blocks.0.self_attention."),
    ]
    legacy = {}
    for key, value in source.state_dict().items():
        for new, old in renames:
            if new in key and (key.startswith(new) or new.startswith(".")):
                key = key.replace(new, old)
                break
        legacy["module." + key] = value
    assert "module.layers.0.blocks.0.ln_1.weight" in legacy and "module.head.weight" in legacy
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": legacy}, path)
    loaded = pretrained("test_vmamba", path)
    with torch.no_grad():
        assert torch.equal(loaded(images()), source(images()))


def test_legacy_rename_only_where_the_new_name_is_absent(tmp_path: Path) -> None:
    state = dict(make("test_vmamba").state_dict())
    old = torch.full_like(state["classifier.norm.weight"], 5.0)
    path = tmp_path / "both.pth"
    torch.save({**state, "norm.weight": old}, path)
    read = read_official_checkpoint(path)
    assert torch.equal(read["classifier.norm.weight"], state["classifier.norm.weight"])
    assert torch.equal(read["norm.weight"], old)


@pytest.mark.parametrize("layout", ["bare", "safetensors", "directory"])
def test_other_layouts(layout: str, tmp_path: Path) -> None:
    source = make("test_vmamba")
    state = {key: value.contiguous() for key, value in source.state_dict().items()}
    if layout == "bare":
        path = tmp_path / "bare.pth"
        torch.save(state, path)
    elif layout == "safetensors":
        path = tmp_path / "weights.bin"  # found by its header, whatever the suffix
        save_file(state, path)
    else:
        path = tmp_path
        save_file(state, tmp_path / "model.safetensors")
    loaded = pretrained("test_vmamba", path)
    with torch.no_grad():
        assert torch.equal(loaded(images()), source(images()))


# --- pickles that would run code --------------------------------------------------------------------------------------


class RunsOnLoad:
    """Unpickling this calls `function(argument)`."""

    def __init__(self, function: Any, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return self.function, (self.argument,)


@pytest.mark.parametrize("how", ["os.system", "eval", "nested in config"])
def test_pickle_that_runs_code_is_refused_and_does_not_run(how: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    if how == "eval":
        payload = RunsOnLoad(eval, f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned')")
    else:
        payload = RunsOnLoad(os.system, f"echo pwned > {marker}")
    path = tmp_path / "evil.pth"
    state = make("test_vmamba").state_dict()
    if how == "nested in config":
        save_official(path, state)
        with fake_yacs():
            torch.save({"model": state, "config": FakeCfgNode(MODEL=FakeCfgNode(HOOK=payload))}, path)
    else:
        save_official(path, state, lr_scheduler=payload)
    with zipfile.ZipFile(path) as archive:  # the payload is really in the pickle
        pickled = next(archive.read(name) for name in archive.namelist() if name.endswith("data.pkl"))
    assert (b"eval" if how == "eval" else b"system") in pickled
    with pytest.raises(VisionCheckpointError) as excinfo:
        pretrained("test_vmamba", path)
    message = one_line_error(excinfo)
    assert "refused" in message and "only weights" in message and "safety" in message
    assert "safetensors" in message  # how to convert
    assert ("eval" if how == "eval" else "system") in message
    assert not marker.exists()


# --- the mix-ups ------------------------------------------------------------------------------------------------------


def test_official_shapes_match_the_models(tiny_s1l8: nn.Module) -> None:
    assert shapes_of(tiny_s1l8.state_dict()) == official_shapes((2, 2, 8, 2), 96, 1.0)
    assert len(tiny_s1l8.state_dict()) == 276
    assert shapes_of(make("test_vmamba").state_dict()) == official_shapes((1, 1, 1, 1), 16, 1.0)
    assert shapes_of(make("test_vmamba", ssm_ratio=2.0).state_dict()) == official_shapes((1, 1, 1, 1), 16, 2.0)


@pytest.mark.parametrize(
    ("depths", "dims", "ssm_ratio", "expected"),
    [
        (
            (2, 2, 5, 2),
            96,
            2.0,
            "holds a VMamba s2 (ssm_ratio 2.0), l5 (depths [2, 2, 5, 2]) checkpoint, but vmamba_tiny_s1l8 is s1, "
            "l8 (depths [2, 2, 8, 2]): use vmamba_tiny_s2l5",
        ),
        (
            (2, 2, 8, 2),
            96,
            2.0,
            "holds a VMamba s2 (ssm_ratio 2.0) checkpoint, but vmamba_tiny_s1l8 is s1: no registered variant matches",
        ),
        (
            (2, 2, 20, 2),
            96,
            1.0,
            "holds a VMamba l20 (depths [2, 2, 20, 2]) checkpoint, but vmamba_tiny_s1l8 is l8 (depths [2, 2, 8, 2]): "
            "use vmamba_small_s1l20",
        ),
        (
            (2, 2, 20, 2),
            128,
            1.0,
            "holds a VMamba l20 (depths [2, 2, 20, 2]), width 128 (dims 128) checkpoint, but vmamba_tiny_s1l8 is l8 "
            "(depths [2, 2, 8, 2]), width 96: use vmamba_base_s1l20",
        ),
        (
            (2, 2, 15, 2),
            128,
            2.0,
            "holds a VMamba s2 (ssm_ratio 2.0), l15 (depths [2, 2, 15, 2]), width 128 (dims 128) checkpoint, but "
            "vmamba_tiny_s1l8 is s1, l8 (depths [2, 2, 8, 2]), width 96: use vmamba_base_s2l15",
        ),
    ],
)
def test_released_variant_mix_ups_name_the_right_variant(
    depths: tuple[int, ...], dims: int, ssm_ratio: float, expected: str, tiny_s1l8: nn.Module, tmp_path: Path
) -> None:
    path = save_official(tmp_path / "ckpt.pth", placeholder(official_shapes(depths, dims, ssm_ratio)))
    assert path.stat().st_size < 200_000  # placeholders, not 30M+ floats
    before = {key: value.clone() for key, value in tiny_s1l8.state_dict().items()}
    with pytest.raises(VisionCheckpointError) as excinfo:
        load_official_weights(tiny_s1l8, path)
    assert one_line_error(excinfo) == f"{path} {expected}" + (
        ": create the model with depths=(2, 2, 8, 2), dims=96, ssm_ratio=2" if expected.endswith("matches") else ""
    )
    assert all(torch.equal(before[key], value) for key, value in tiny_s1l8.state_dict().items())  # untouched


def test_s1_s2_and_depth_mix_ups_of_small_models(tmp_path: Path) -> None:
    s2 = save_official(tmp_path / "s2.pth", make("test_vmamba", ssm_ratio=2.0).state_dict())
    with pytest.raises(VisionCheckpointError) as excinfo:
        pretrained("test_vmamba", s2)
    assert one_line_error(excinfo) == (
        f"{s2} holds a VMamba s2 (ssm_ratio 2.0) checkpoint, but test_vmamba is s1: no registered variant matches: "
        "create the model with depths=(1, 1, 1, 1), dims=16, ssm_ratio=2"
    )
    assert pretrained("test_vmamba", s2, ssm_ratio=2.0) is not None  # and that is how it loads

    deep = save_official(tmp_path / "deep.pth", make("test_vmamba", depths=(1, 1, 3, 1)).state_dict())
    with pytest.raises(VisionCheckpointError) as excinfo:
        pretrained("test_vmamba", deep)
    assert "holds a VMamba l3 (depths [1, 1, 3, 1]) checkpoint, but test_vmamba is l1" in one_line_error(excinfo)

    state = save_official(tmp_path / "state.pth", make("test_vmamba", d_state=4).state_dict())
    with pytest.raises(VisionCheckpointError) as excinfo:
        pretrained("test_vmamba", state)
    assert one_line_error(excinfo).endswith(
        "holds a VMamba d_state 4 checkpoint, but test_vmamba is d_state 1: no registered variant matches: create "
        "the model with depths=(1, 1, 1, 1), dims=16, ssm_ratio=1, d_state=4"
    )

    nano = save_official(tmp_path / "nano.pth", make("vmamba_nano").state_dict())
    with pytest.raises(VisionCheckpointError) as excinfo:
        pretrained("test_vmamba", nano)
    message = one_line_error(excinfo)
    assert "l3 (depths [1, 1, 3, 1]), width 32 (dims 32) checkpoint, but test_vmamba is l1" in message
    assert message.endswith("use vmamba_nano")


def test_vanilla_vmamba_v0_is_not_supported(tmp_path: Path) -> None:
    """The old release: patch embed v1, d_state 16, gated SS2D, no MLP, PatchMerging, pre-rename keys."""
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (96, 3, 4, 4),
        "patch_embed.proj.bias": (96,),
        "patch_embed.norm.weight": (96,),
        "patch_embed.norm.bias": (96,),
    }
    for i, (depth, c) in enumerate(zip((2, 2, 9, 2), (96, 192, 384, 768), strict=True)):
        d, r = 2 * c, math.ceil(c / 16)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            shapes.update(
                {
                    p + "ln_1.weight": (c,),
                    p + "ln_1.bias": (c,),
                    p + "self_attention.in_proj.weight": (2 * d, c),
                    p + "self_attention.conv2d.weight": (d, 1, 3, 3),
                    p + "self_attention.conv2d.bias": (d,),
                    p + "self_attention.x_proj_weight": (4, r + 32, d),
                    p + "self_attention.dt_projs_weight": (4, d, r),
                    p + "self_attention.dt_projs_bias": (4, d),
                    p + "self_attention.A_logs": (4 * d, 16),
                    p + "self_attention.Ds": (4 * d,),
                    p + "self_attention.out_norm.weight": (d,),
                    p + "self_attention.out_norm.bias": (d,),
                    p + "self_attention.out_proj.weight": (c, d),
                }
            )
        if i < 3:
            shapes.update(
                {
                    f"layers.{i}.downsample.reduction.weight": (2 * c, 4 * c),
                    f"layers.{i}.downsample.norm.weight": (4 * c,),
                    f"layers.{i}.downsample.norm.bias": (4 * c,),
                }
            )
    shapes.update({"norm.weight": (768,), "norm.bias": (768,), "head.weight": (1000, 768), "head.bias": (1000,)})
    path = save_official(tmp_path / "vssmtiny_dp01_ckpt_epoch_292.pth", placeholder(shapes))
    with pytest.raises(VisionCheckpointError) as excinfo:
        pretrained("test_vmamba", path)
    message = one_line_error(excinfo)
    assert "Vanilla-VMamba" in message and "d_state 16" in message and "not support" in message


# --- heads, input channels --------------------------------------------------------------------------------------------


def test_head_of_another_size_stays_initialised_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = make("test_vmamba")
    path = save_official(tmp_path / "ckpt.pth", source.state_dict())
    reference = make("test_vmamba", seed=1, num_classes=10)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = pretrained("test_vmamba", path, seed=1, num_classes=10)
    warnings = [record for record in caplog.records if record.name == LOGGER and record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "newly initialised" in warnings[0].getMessage()
    assert "1000 classes" in warnings[0].getMessage()
    state, expected = loaded.state_dict(), source.state_dict()
    for key, value in state.items():
        if key.startswith("classifier.head."):
            assert torch.equal(value, reference.state_dict()[key])
        else:
            assert torch.equal(value, expected[key]), key
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(images()), source.forward_features(images()))


def test_headless_model_loads_the_rest(tmp_path: Path) -> None:
    source = make("test_vmamba")
    path = save_official(tmp_path / "ckpt.pth", source.state_dict())
    loaded = pretrained("test_vmamba", path, num_classes=0)
    with torch.no_grad():
        assert torch.equal(loaded(images()), source.forward_head(source.forward_features(images()), pre_logits=True))


def test_other_in_chans_adapts_the_first_conv(tmp_path: Path) -> None:
    source = make("test_vmamba")
    path = save_official(tmp_path / "ckpt.pth", source.state_dict())
    loaded = pretrained("test_vmamba", path, in_chans=1)
    weight = source.state_dict()["patch_embed.0.weight"]
    assert torch.equal(loaded.state_dict()["patch_embed.0.weight"], weight.sum(dim=1, keepdim=True))
    gray = images(channels=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(gray), source(gray.expand(-1, 3, -1, -1)))


# --- not a VMamba checkpoint, unreadable files ------------------------------------------------------------------------


def test_resnet_state_dict_is_not_a_vmamba_checkpoint(tmp_path: Path) -> None:
    resnet = {
        "conv1.weight": torch.randn(64, 3, 7, 7),
        "bn1.weight": torch.randn(64),
        "bn1.bias": torch.randn(64),
        "bn1.running_mean": torch.randn(64),
        "layer1.0.conv1.weight": torch.randn(64, 64, 3, 3),
        "fc.weight": torch.randn(1000, 512),
        "fc.bias": torch.randn(1000),
    }
    path = tmp_path / "resnet50.pth"
    torch.save(resnet, path)
    with pytest.raises(VisionCheckpointError) as excinfo:
        pretrained("test_vmamba", path)
    message = one_line_error(excinfo)
    assert message.startswith(f"{path} is not a VMamba checkpoint") and "bn1.bias" in message


def test_mambakit_checkpoint_directory_is_not_a_vmamba_checkpoint(tmp_path: Path) -> None:
    from mambakit.models import MambaConfig, MambaLMHeadModel, save_pretrained

    directory = save_pretrained(MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=8)), tmp_path / "dna")
    for path in (directory, directory / "model.safetensors"):
        with pytest.raises(VisionCheckpointError) as excinfo:
            pretrained("test_vmamba", path)
        message = one_line_error(excinfo)
        assert "is not a VMamba checkpoint" in message and "mambakit.models.load_model" in message


@pytest.mark.parametrize("damage", ["truncated", "truncated safetensors", "empty", "garbage", "missing"])
def test_unreadable_files_give_one_line(damage: str, tmp_path: Path) -> None:
    state = {key: value.contiguous() for key, value in make("test_vmamba").state_dict().items()}
    path = tmp_path / "ckpt.pth"
    if damage == "truncated safetensors":
        save_file(state, path.with_suffix(".safetensors"))
        path = path.with_suffix(".safetensors")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "truncated":
        save_official(path, state)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(os.urandom(1000))
    with pytest.raises(VisionCheckpointError) as excinfo:
        pretrained("test_vmamba", path)
    message = one_line_error(excinfo)
    assert message.startswith(str(path))
    if damage == "missing":
        assert "no such file" in message
    else:
        assert "truncated or corrupt" in message
    if damage in ("truncated", "empty", "garbage"):
        assert "only weights" in message and "safety" in message and "safetensors" in message


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(VisionCheckpointError, match="not a state dict"):
        read_official_checkpoint(path)
    torch.save({"model": {"a": torch.zeros(1), "b": 3}}, path)
    with pytest.raises(VisionCheckpointError, match="non-tensor entries b"):
        read_official_checkpoint(path)


def test_missing_tensor_is_one_line(tmp_path: Path) -> None:
    state = dict(make("test_vmamba").state_dict())
    del state["layers.1.blocks.0.mlp.fc2.bias"]
    path = save_official(tmp_path / "ckpt.pth", state)
    with pytest.raises(VisionCheckpointError) as excinfo:
        pretrained("test_vmamba", path)
    assert "does not fit test_vmamba: missing layers.1.blocks.0.mlp.fc2.bias" in one_line_error(excinfo)
