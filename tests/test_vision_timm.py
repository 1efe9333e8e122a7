"""timm's model contract for mambakit's VMamba models (apps/vision/models.py), on CPU at small sizes.

The checks are timm's own, from its tests/test_models.py (huggingface/pytorch-image-models, the snapshot that ships
with timm 1.0.29-1.0.31): test_model_forward, test_model_backward, test_model_default_cfgs(_non_std),
test_model_forward_features, test_model_forward_intermediates(_features), with the same assertions and timm's
`_get_input_size` (copied below; timm's tests are not installed with it), run over our eight models. timm's targets
(384 forward, 128 backward, 96 features) apply to the two small models; the six released architectures run at
BIG_MODEL_SIZE (BIG_QUICK_SIZE for backward passes and the rest). After them, the rest of the contract: features_only
out_indices, the getter and hook extractors, forward_intermediates' options, stop_early, pruning, gradient
checkpointing, kwargs reaching the model, any input size, channels_last, bf16 autocast, no_weight_decay, layer-decay
groups and the registry; on the big six those cases are `slow` (`make test` runs them, `make test-fast` does not).
TorchScript and FX tracing are not part of what these models promise, so timm's torchscript/fx tests are left out.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import math

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm", reason="the VMamba models are timm models (pip install mambakit[vision])")
timm_optim = pytest.importorskip("timm.optim")
# Importing the module registers the models with timm's registry.
vision_models = importlib.import_module("mambakit.apps.vision.models")

create_model = timm.create_model
get_pretrained_cfg_value = timm.get_pretrained_cfg_value
get_channel_dim = timm.layers.get_channel_dim
get_spatial_dim = timm.layers.get_spatial_dim

#: Every model apps/vision/models.py registers, listed here (not read from the registry) so that a model that
#: stops registering fails test_list_models instead of vanishing from the parametrisation.
BIG_MODELS = [
    "vmamba_tiny_s1l8",
    "vmamba_small_s1l20",
    "vmamba_base_s1l20",
    "vmamba_tiny_s2l5",
    "vmamba_small_s2l15",
    "vmamba_base_s2l15",
]
SMALL_MODELS = ["vmamba_nano", "test_vmamba"]
MODELS = SMALL_MODELS + BIG_MODELS
#: The big models' cases are `slow` (`make test` runs them, `make test-fast` leaves them out): on one thread, as
#: tests/conftest.py sets, building one takes ~0.5-1 s and each case ~0.5-5 s, ~100 s for the file in all. timm's
#: own checks (CORE) also run unmarked on the two tiny variants, one per scan family (ssm_ratio 1 and 2); the rest of
#: the contract (EXTRA) runs the same code for every model, unmarked on the two small models only.
CORE = SMALL_MODELS + [
    name if name in ("vmamba_tiny_s1l8", "vmamba_tiny_s2l5") else pytest.param(name, marks=pytest.mark.slow)
    for name in BIG_MODELS
]
EXTRA = SMALL_MODELS + [pytest.param(name, marks=pytest.mark.slow) for name in BIG_MODELS]
#: Names with their pretrained tags, as timm's test_model_default_cfgs lists them (include_tags=True).
TAGGED_NAMES = {"test_vmamba": "test_vmamba", "vmamba_nano": "vmamba_nano"} | {n: f"{n}.in1k" for n in BIG_MODELS}

#: The big six (30-88M parameters) run at these sizes, batch 1-2 (timm's targets below apply to the small models):
#: timm's forward checks at BIG_MODEL_SIZE (a 2 x 2 final map), backward passes and the rest at BIG_QUICK_SIZE.
BIG_MODEL_SIZE = 64
BIG_QUICK_SIZE = 32

# timm's test_models.py constants.
TARGET_FWD_SIZE = MAX_FWD_SIZE = 384
TARGET_BWD_SIZE = 128
MAX_BWD_SIZE = 320
MAX_FWD_OUT_SIZE = 448
TARGET_FFEAT_SIZE = 96
MAX_FFEAT_SIZE = 256


def _get_input_size(model=None, model_name="", target=None, big=BIG_MODEL_SIZE):
    """timm's tests/test_models.py `_get_input_size`, verbatim but for the big models' cap (`big`)."""
    if model is None:
        assert model_name, "One of model or model_name must be provided"
        input_size = get_pretrained_cfg_value(model_name, "input_size")
        fixed_input_size = get_pretrained_cfg_value(model_name, "fixed_input_size")
        min_input_size = get_pretrained_cfg_value(model_name, "min_input_size")
    else:
        default_cfg = model.default_cfg
        input_size = default_cfg["input_size"]
        fixed_input_size = default_cfg.get("fixed_input_size", None)
        min_input_size = default_cfg.get("min_input_size", None)
        model_name = default_cfg["architecture"]
    assert input_size is not None
    if model_name.split(".")[0] in BIG_MODELS:
        target = min(target or big, big)

    if fixed_input_size:
        return input_size

    if min_input_size:
        if target and max(input_size) > target:
            input_size = min_input_size
    else:
        if target and max(input_size) > target:
            input_size = tuple([min(x, target) for x in input_size])
    return input_size


#: create_model's instances for the model now under test, by keyword arguments (cleared when the next model starts:
#: the model_name fixture groups each model's tests together). The big models take ~1 s each to build on one thread
#: (random init of ~30-90M parameters), a copy ~0.2 s.
_BUILT: dict[tuple, nn.Module] = {}


def _built(model_name: str, **kwargs) -> nn.Module:
    """`create_model(model_name, pretrained=False, **kwargs)`, built once per model: read it, don't change it. The
    default model is built through its tagged name (`vmamba_tiny_s1l8.in1k`, as timm's test_model_default_cfgs
    lists it), which is the same model: the tag names the default pretrained_cfg."""
    model_name = TAGGED_NAMES.get(model_name, model_name) if not kwargs else model_name
    key = (model_name, tuple(sorted(kwargs.items())))
    if key not in _BUILT:
        _BUILT[key] = create_model(model_name, pretrained=False, **kwargs)
    return _BUILT[key]


def _create(model_name: str, **kwargs) -> nn.Module:
    """A fresh copy of `create_model(model_name, pretrained=False, **kwargs)`, to change at will."""
    return copy.deepcopy(_built(model_name, **kwargs))


@pytest.fixture(scope="module")
def model_name(request):
    """The model under test (parametrised indirectly). Module scope makes pytest run each model's tests together,
    so its instances are built once and dropped before the next model's."""
    yield request.param
    _BUILT.clear()


def _feature_info(model: nn.Module):
    return timm.models.FeatureInfo(model.feature_info, len(model.feature_info))


def _num_blocks(model: nn.Module) -> int:
    return sum(len(stage.blocks) for stage in model.layers)


# ---------------------------------------------------------------------------------------------------- registry


def test_list_models():
    assert timm.list_models("vmamba*") == sorted(BIG_MODELS + ["vmamba_nano"])
    assert timm.list_models("test_vmamba*") == ["test_vmamba"]
    assert set(timm.list_models(["vmamba*", "test_vmamba"], include_tags=True)) == set(TAGGED_NAMES.values())
    for name in MODELS:
        assert timm.is_model(name)
        assert timm.models.model_entrypoint(name).__name__ == name
        # No weights timm could download: `pretrained=True` needs a file (see _create_vmamba).
        assert name not in timm.list_pretrained(name + "*")
        # timm's test parametrisation (name_matches_cfg=True) picks each model up.
        assert timm.list_models(name, name_matches_cfg=True) == [name]
        # The tag names the default pretrained_cfg: `name` and its tagged name build the same model.
        assert timm.models.get_pretrained_cfg(name) == timm.models.get_pretrained_cfg(TAGGED_NAMES[name])
    with pytest.raises(ValueError, match="does not download"):
        create_model("test_vmamba", pretrained=True)


# ---------------------------------------------------------------------------------- timm's test_models.py


@pytest.mark.parametrize("model_name", CORE, indirect=True)
@pytest.mark.parametrize("batch_size", [1])
def test_model_forward(model_name, batch_size):
    """Run a single forward pass with each model"""
    model = _create(model_name)
    model.eval()

    input_size = _get_input_size(model=model, target=TARGET_FWD_SIZE)
    if max(input_size) > MAX_FWD_SIZE:
        pytest.skip("Fixed input size model > limit.")
    inputs = torch.randn((batch_size, *input_size))
    outputs = model(inputs)

    assert outputs.shape[0] == batch_size
    assert outputs.shape == (batch_size, model.num_classes)
    assert not torch.isnan(outputs).any(), "Output included NaNs"

    # Test that grad-checkpointing, if supported, doesn't cause model failures or change in output
    model.set_grad_checkpointing()  # supported: must not raise
    outputs2 = model(inputs)
    assert torch.allclose(outputs, outputs2, rtol=1e-4, atol=1e-5), "Output does not match"


@pytest.mark.parametrize("model_name", CORE, indirect=True)
@pytest.mark.parametrize("batch_size", [2])
def test_model_backward(model_name, batch_size):
    """Run a single forward pass with each model"""
    input_size = _get_input_size(model_name=model_name, target=TARGET_BWD_SIZE, big=BIG_QUICK_SIZE)
    if max(input_size) > MAX_BWD_SIZE:
        pytest.skip("Fixed input size model > limit.")

    model = _create(model_name, num_classes=42)
    encoder_only = model.num_classes == 0  # FIXME better approach?
    num_params = sum([x.numel() for x in model.parameters()])
    model.train()

    inputs = torch.randn((batch_size, *input_size))
    outputs = model(inputs)
    if isinstance(outputs, tuple):
        outputs = torch.cat(outputs)
    outputs.mean().backward()
    for n, x in model.named_parameters():
        assert x.grad is not None, f"No gradient for {n}"
        assert not torch.isnan(x.grad).any(), f"NaN gradient for {n}"
    num_grad = sum([x.grad.numel() for x in model.parameters() if x.grad is not None])

    if encoder_only:
        output_fmt = getattr(model, "output_fmt", "NCHW")
        feat_axis = get_channel_dim(output_fmt)
        assert outputs.shape[feat_axis] == model.num_features, (
            f"unpooled feature dim {outputs.shape[feat_axis]} != model.num_features {model.num_features}"
        )
    else:
        assert outputs.shape[-1] == 42
    assert num_params == num_grad, "Some parameters are missing gradients"
    assert not torch.isnan(outputs).any(), "Output included NaNs"


#: The keys every model's pretrained_cfg carries (timm's tests and data pipeline read them).
PRETRAINED_CFG_KEYS = {
    "url",
    "architecture",
    "custom_load",
    "input_size",
    "fixed_input_size",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "mean",
    "std",
    "num_classes",
    "pool_size",
    "first_conv",
    "classifier",
    "license",
}


@pytest.mark.parametrize("model_name", CORE, indirect=True)
@pytest.mark.parametrize("batch_size", [1])
def test_model_default_cfgs(model_name, batch_size):
    """timm's test_model_default_cfgs. The big models run at BIG_MODEL_SIZE instead of their 224 cfg size, so their
    unpooled map is checked against that size's pool (ceil(size / 32)), and the cfg's pool_size against its own
    input_size through the model's total reduction."""
    model_name = TAGGED_NAMES[model_name]  # timm lists them with their tags (include_tags=True)
    model = _create(model_name)
    model.eval()
    assert model.num_classes >= 0
    assert model.num_features > 0
    assert model.head_hidden_size > 0
    state_dict = model.state_dict()
    cfg = model.default_cfg

    # The pretrained_cfg itself: timm's keys, the model's name and tag, and data config resolution from it.
    assert model.default_cfg is model.pretrained_cfg
    assert set(cfg) >= PRETRAINED_CFG_KEYS, f"missing pretrained_cfg keys {PRETRAINED_CFG_KEYS - set(cfg)}"
    architecture, _, tag = model_name.partition(".")
    assert cfg["architecture"] == architecture
    assert cfg.get("tag") == (tag or None)  # timm's to_dict() leaves None values out
    assert cfg["num_classes"] == model.num_classes
    if tag:
        assert cfg["origin_url"].endswith(".pth")
    data_config = timm.data.resolve_data_config(model=model)
    assert data_config["input_size"] == cfg["input_size"]
    assert data_config["mean"] == cfg["mean"] and data_config["std"] == cfg["std"]
    reduction = _feature_info(model).reduction()[-1]
    assert tuple(cfg["pool_size"]) == tuple(math.ceil(s / reduction) for s in cfg["input_size"][1:])

    input_size = _get_input_size(model=model, target=MAX_FWD_OUT_SIZE)
    pool_size = (
        cfg["pool_size"] if input_size == cfg["input_size"] else tuple(math.ceil(s / reduction) for s in input_size[1:])
    )
    output_fmt = getattr(model, "output_fmt", "NCHW")
    spatial_axis = get_spatial_dim(output_fmt)
    assert len(spatial_axis) == 2  # TODO add 1D sequence support
    feat_axis = get_channel_dim(output_fmt)

    if all([x <= MAX_FWD_OUT_SIZE for x in input_size]):
        # output sizes only checked if default res <= 448 * 448 to keep resource down
        input_size = tuple([min(x, MAX_FWD_OUT_SIZE) for x in input_size])
        input_tensor = torch.randn((batch_size, *input_size))

        # test forward_features (always unpooled) & forward_head w/ pre_logits
        outputs = model.forward_features(input_tensor)
        outputs_pre = model.forward_head(outputs, pre_logits=True)
        assert outputs.shape[spatial_axis[0]] == pool_size[0], f"unpooled feature shape {outputs.shape} != config"
        assert outputs.shape[spatial_axis[1]] == pool_size[1], f"unpooled feature shape {outputs.shape} != config"
        assert outputs.shape[feat_axis] == model.num_features, (
            f"unpooled feature dim {outputs.shape[feat_axis]} != model.num_features {model.num_features}"
        )
        assert outputs_pre.shape[1] == model.head_hidden_size, (
            f"pre_logits feature dim {outputs_pre.shape[1]} != model.head_hidden_size {model.head_hidden_size}"
        )

        # test forward after deleting the classifier, output should be poooled, size(-1) == model.num_features
        model.reset_classifier(0)
        assert model.num_classes == 0, (
            f"Expected num_classes to be 0 after reset_classifier(0), but got {model.num_classes}"
        )
        outputs = model.forward(input_tensor)
        assert len(outputs.shape) == 2
        assert outputs.shape[1] == model.head_hidden_size, (
            f"feature dim w/ removed classifier {outputs.shape[1]} != model.head_hidden_size {model.head_hidden_size}"
        )
        assert outputs.shape == outputs_pre.shape, (
            f"output shape of pre_logits {outputs_pre.shape} does not match reset_head(0) {outputs.shape}"
        )

        # test model forward after removing pooling and classifier
        model.reset_classifier(0, "")  # reset classifier and disable global pooling
        outputs = model.forward(input_tensor)
        assert len(outputs.shape) == 4
        assert outputs.shape[spatial_axis[0]] == pool_size[0] and outputs.shape[spatial_axis[1]] == pool_size[1]

        # test classifier + global pool deletion via __init__
        model = _create(model_name.split(".")[0], num_classes=0, global_pool="").eval()
        outputs = model.forward(input_tensor)
        assert len(outputs.shape) == 4
        assert outputs.shape[spatial_axis[0]] == pool_size[0] and outputs.shape[spatial_axis[1]] == pool_size[1]

    # check classifier name matches default_cfg
    if cfg.get("num_classes", None):
        classifier = cfg["classifier"]
        if not isinstance(classifier, (tuple, list)):
            classifier = (classifier,)
        for c in classifier:
            assert c + ".weight" in state_dict, f"{c} not in model params"

    # check first conv(s) names match default_cfg
    first_conv = cfg["first_conv"]
    if isinstance(first_conv, str):
        first_conv = (first_conv,)
    assert isinstance(first_conv, (tuple, list))
    for fc in first_conv:
        assert fc + ".weight" in state_dict, f"{fc} not in model params"


@pytest.mark.parametrize("model_name", EXTRA, indirect=True)
@pytest.mark.parametrize("batch_size", [1])
def test_model_default_cfgs_non_std(model_name, batch_size):
    """timm's test_model_default_cfgs_non_std (for models outside its standard spatial API; ours meet both), plus a
    classifier of another size through reset_classifier."""
    model = _create(model_name)
    model.eval()
    assert model.num_classes >= 0
    assert model.num_features > 0
    assert model.head_hidden_size > 0
    state_dict = model.state_dict()
    cfg = model.default_cfg

    input_size = _get_input_size(model=model)
    if max(input_size) > 320:  # FIXME const
        pytest.skip("Fixed input size model > limit.")

    input_tensor = torch.randn((batch_size, *input_size))
    feat_dim = getattr(model, "feature_dim", None)

    outputs = model.forward_features(input_tensor)
    outputs_pre = model.forward_head(outputs, pre_logits=True)
    if feat_dim is None:
        feat_dim = -1 if outputs.ndim == 3 else 1
    assert outputs.shape[feat_dim] == model.num_features
    assert outputs_pre.shape[1] == model.head_hidden_size

    # test forward after deleting the classifier, output should be poooled, size(-1) == model.num_features
    model.reset_classifier(0)
    assert model.num_classes == 0, (
        f"Expected num_classes to be 0 after reset_classifier(0), but got {model.num_classes}"
    )
    outputs = model.forward(input_tensor)
    assert outputs.shape[feat_dim] == model.head_hidden_size, "pooled num_features != config"
    assert outputs.shape == outputs_pre.shape
    assert torch.allclose(outputs, outputs_pre, rtol=1e-5, atol=1e-6)  # same features, head removed

    # A new classifier of another size, then back to none.
    model.reset_classifier(7)
    assert model.num_classes == 7 and model.get_classifier().out_features == 7
    assert model(input_tensor).shape == (batch_size, 7)

    model = _create(model_name, num_classes=0).eval()
    outputs = model.forward(input_tensor)
    assert outputs.shape[feat_dim] == model.num_features
    assert model.num_classes == 0 and isinstance(model.get_classifier(), nn.Identity)

    # check classifier name matches default_cfg
    if cfg.get("num_classes", None):
        classifier = cfg["classifier"]
        if not isinstance(classifier, (tuple, list)):
            classifier = (classifier,)
        for c in classifier:
            assert c + ".weight" in state_dict, f"{c} not in model params"

    # check first conv(s) names match default_cfg
    first_conv = cfg["first_conv"]
    if isinstance(first_conv, str):
        first_conv = (first_conv,)
    assert isinstance(first_conv, (tuple, list))
    for fc in first_conv:
        assert fc + ".weight" in state_dict, f"{fc} not in model params"


def _check_features(outputs, expected_channels, expected_reduction, input_size, batch_size, output_fmt="NCHW"):
    """timm's per-feature assertions, and the exact size: each stride-2 conv takes H to ceil(H / 2)."""
    feat_axis = get_channel_dim(output_fmt)
    spatial_axis = get_spatial_dim(output_fmt)
    assert len(expected_channels) == len(outputs)
    spatial_size = input_size[-2:]
    for e, r, o in zip(expected_channels, expected_reduction, outputs, strict=True):
        assert e == o.shape[feat_axis]
        assert o.shape[spatial_axis[0]] <= math.ceil(spatial_size[0] / r) + 1
        assert o.shape[spatial_axis[1]] <= math.ceil(spatial_size[1] / r) + 1
        assert (o.shape[spatial_axis[0]], o.shape[spatial_axis[1]]) == (
            math.ceil(spatial_size[0] / r),
            math.ceil(spatial_size[1] / r),
        )
        assert o.shape[0] == batch_size
        assert not torch.isnan(o).any()


@pytest.mark.parametrize("model_name", CORE, indirect=True)
@pytest.mark.parametrize("batch_size", [1])
def test_model_forward_features(model_name, batch_size):
    """Run a single forward pass with each model in feature extraction mode"""
    model = _create(model_name, features_only=True)
    model.eval()
    expected_channels = model.feature_info.channels()
    expected_reduction = model.feature_info.reduction()
    assert len(expected_channels) >= 3  # all models here should have at least 3 default feat levels
    assert expected_reduction == [4, 8, 16, 32]

    input_size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE)
    if max(input_size) > MAX_FFEAT_SIZE:
        pytest.skip("Fixed input size model > limit.")
    output_fmt = getattr(model, "output_fmt", "NCHW")
    inputs = torch.randn((batch_size, *input_size))
    outputs = model(inputs)
    _check_features(outputs, expected_channels, expected_reduction, input_size, batch_size, output_fmt)


@pytest.mark.parametrize("model_name", EXTRA, indirect=True)
@pytest.mark.parametrize("batch_size", [1])
def test_model_forward_intermediates_features(model_name, batch_size):
    """Run a single forward pass with each model in feature extraction mode"""
    model = _create(model_name, features_only=True, feature_cls="getter")
    model.eval()
    expected_channels = model.feature_info.channels()
    expected_reduction = model.feature_info.reduction()

    input_size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE)
    if max(input_size) > MAX_FFEAT_SIZE:
        pytest.skip("Fixed input size model > limit.")
    output_fmt = getattr(model, "output_fmt", "NCHW")
    inputs = torch.randn((batch_size, *input_size))
    outputs = model(inputs)
    _check_features(outputs, expected_channels, expected_reduction, input_size, batch_size, output_fmt)


@pytest.mark.parametrize("model_name", CORE, indirect=True)
@pytest.mark.parametrize("batch_size", [1])
def test_model_forward_intermediates(model_name, batch_size):
    """Run a single forward pass with each model in feature extraction mode"""
    model = _create(model_name)
    model.eval()
    feature_info = _feature_info(model)
    expected_channels = feature_info.channels()
    expected_reduction = feature_info.reduction()
    assert len(expected_channels) >= 3  # all models here should have at least 3 feature levels

    input_size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE)
    if max(input_size) > MAX_FFEAT_SIZE:
        pytest.skip("Fixed input size model > limit.")
    output_fmt = "NCHW"  # NOTE output_fmt determined by forward_intermediates() arg, not model attribute

    inpt = torch.randn((batch_size, *input_size))
    output, intermediates = model.forward_intermediates(
        inpt,
        output_fmt=output_fmt,
    )
    _check_features(intermediates, expected_channels, expected_reduction, input_size, batch_size, output_fmt)

    output2 = model.forward_features(inpt)
    assert torch.allclose(output, output2)

    # Test that grad-checkpointing, if supported
    model.set_grad_checkpointing()  # supported: must not raise
    output3, intermediates3 = model.forward_intermediates(
        inpt,
        output_fmt=output_fmt,
    )
    assert torch.allclose(output, output3, rtol=1e-4, atol=1e-5), "Output does not match"
    for a, b in zip(intermediates, intermediates3, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- the rest of the model contract


@pytest.mark.parametrize("model_name", EXTRA, indirect=True)
def test_features_only_out_indices(model_name):
    """features_only with out_indices: a subset (negative indices counted from the end), the feature_info of just
    those, the same tensors as the full extractor's, and the stages past the last index taken pruned away."""
    model = _create(model_name, features_only=True).eval()
    expected_channels = model.feature_info.channels()
    expected_reduction = model.feature_info.reduction()
    input_size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE, big=BIG_QUICK_SIZE)
    inputs = torch.randn((1, *input_size))
    with torch.no_grad():
        outputs = model(inputs)
        for out_indices, absolute in (((1, 3), [1, 3]), ((0, -3), [0, 1])):
            subset = _create(model_name, features_only=True, out_indices=out_indices).eval()
            assert subset.feature_info.channels() == [expected_channels[i] for i in absolute]
            assert subset.feature_info.reduction() == [expected_reduction[i] for i in absolute]
            assert not subset.load_state_dict(model.state_dict(), strict=False).missing_keys  # the same weights
            sub_outputs = subset(inputs)
            _check_features(sub_outputs, subset.feature_info.channels(), subset.feature_info.reduction(), input_size, 1)
            for i, o in zip(absolute, sub_outputs, strict=True):
                assert torch.allclose(o, outputs[i], rtol=1e-4, atol=1e-5)
            assert len(subset.model.layers) == absolute[-1] + 1  # stages past the last index taken are pruned


@pytest.mark.parametrize("model_name", EXTRA, indirect=True)
def test_feature_extractors_agree(model_name):
    """The getter extractor's features are the classifier's forward_intermediates (same weights), and the hook
    extractor, which taps feature_info's module names, sees the same tensors."""
    model = _create(model_name, features_only=True, feature_cls="getter").eval()
    input_size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE, big=BIG_QUICK_SIZE)
    inputs = torch.randn((1, *input_size))
    with torch.no_grad():
        outputs = model(inputs)
        classifier = _create(model_name).eval()
        assert not classifier.load_state_dict(model.model.state_dict(), strict=False).unexpected_keys
        intermediates = classifier.forward_intermediates(inputs, intermediates_only=True)
        for o, i in zip(outputs, intermediates, strict=True):
            assert torch.equal(o, i)
        hooked = _create(model_name, features_only=True, feature_cls="hook").eval()
        assert hooked.feature_info.module_name() == [f"layers.{i}.blocks" for i in range(len(outputs))]
        state = {k.replace("model.", "body.", 1): v for k, v in model.state_dict().items()}
        assert not hooked.load_state_dict(state, strict=False).unexpected_keys
        for o, h in zip(outputs, hooked(inputs), strict=True):
            assert torch.allclose(o, h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", EXTRA, indirect=True)
def test_forward_intermediates_options(model_name):
    """indices (last n, listed, negative), intermediates_only, norm, NHWC."""
    model = _create(model_name).eval()
    size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE, big=BIG_QUICK_SIZE)
    inputs = torch.randn(2, *size)
    channels = _feature_info(model).channels()
    with torch.no_grad():
        final, everything = model.forward_intermediates(inputs)
        assert len(everything) == len(model.layers) == 4

        for indices, taken in ((None, [0, 1, 2, 3]), (2, [2, 3]), ([0, 2], [0, 2]), ([-1], [3]), ([0, 1], [0, 1])):
            only = model.forward_intermediates(inputs, indices=indices, intermediates_only=True)
            assert isinstance(only, list) and len(only) == len(taken)
            for o, i in zip(only, taken, strict=True):
                assert torch.equal(o, everything[i])

            nhwc = model.forward_intermediates(inputs, indices=indices, output_fmt="NHWC", intermediates_only=True)
            for o, i in zip(nhwc, taken, strict=True):
                assert o.shape == (2, *everything[i].shape[2:], channels[i])
                assert torch.equal(o, everything[i].permute(0, 2, 3, 1))

        # norm: the final norm on the last stage's intermediate, which then is forward_features' output.
        _, normed = model.forward_intermediates(inputs, norm=True)
        assert torch.allclose(normed[-1], final, rtol=1e-5, atol=1e-6)
        assert torch.allclose(normed[-1], model.forward_features(inputs), rtol=1e-5, atol=1e-6)
        for a, b in zip(normed[:-1], everything[:-1], strict=True):
            assert torch.equal(a, b)

        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(inputs, output_fmt="NLC")


@pytest.mark.parametrize("model_name", EXTRA, indirect=True)
def test_forward_intermediates_stop_early(model_name):
    """stop_early gives the same intermediates, with or without intermediates_only. Without it, timm's hierarchical
    models (convnext, resnet, swin, mambaout...) return the last stage run as the final features, un-normed when that
    is not the final stage (the final norm is sized for the final stage); with it, only the intermediates."""
    model = _create(model_name).eval()
    size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE, big=BIG_QUICK_SIZE)
    inputs = torch.randn(2, *size)
    channels = _feature_info(model).channels()
    with torch.no_grad():
        final, everything = model.forward_intermediates(inputs)
        for indices, taken in ((None, [0, 1, 2, 3]), (2, [2, 3]), ([1, 3], [1, 3]), ([0, 1], [0, 1]), ([2], [2])):
            only = model.forward_intermediates(inputs, indices=indices, stop_early=True, intermediates_only=True)
            for o, i in zip(only, taken, strict=True):
                assert torch.equal(o, everything[i])
        for indices, taken in ((None, [0, 1, 2, 3]), (2, [2, 3]), ([1, 3], [1, 3]), ([0, 1], [0, 1]), ([2], [2])):
            early_final, early_all = model.forward_intermediates(inputs, indices=indices, stop_early=True)
            for o, i in zip(early_all, taken, strict=True):
                assert torch.equal(o, everything[i])
            if taken[-1] == len(channels) - 1:
                assert torch.allclose(early_final, final)
            else:
                assert early_final.shape == everything[taken[-1]].shape
                assert torch.equal(early_final, everything[taken[-1]])


@pytest.mark.parametrize("model_name", EXTRA, indirect=True)
def test_prune_intermediate_layers(model_name):
    """Pruning keeps the intermediates it was asked for and drops the rest (stages, final norm, head)."""
    model = _create(model_name).eval()
    size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE, big=BIG_QUICK_SIZE)
    inputs = torch.randn(1, *size)
    channels = _feature_info(model).channels()
    with torch.no_grad():
        _, everything = model.forward_intermediates(inputs)

        early = copy.deepcopy(model)
        assert early.prune_intermediate_layers([0, -3]) == [0, 1]
        assert len(early.layers) == 2
        assert early.num_classes == 0 and isinstance(early.get_classifier(), nn.Identity)
        assert early.num_features == early.head_hidden_size == channels[1]
        pruned = early.forward_intermediates(inputs, indices=[0, 1], intermediates_only=True)
        for a, b in zip(pruned, everything[:2], strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        # The pruned model still runs end to end: its features are the last kept stage's.
        features = early(inputs)
        assert features.shape == everything[1].shape
        assert torch.allclose(features, everything[1], rtol=1e-5, atol=1e-6)
        assert torch.allclose(early.forward_features(inputs), everything[1], rtol=1e-5, atol=1e-6)

        late = copy.deepcopy(model)
        assert late.prune_intermediate_layers(2, prune_norm=True) == [2, 3]
        assert len(late.layers) == 4 and isinstance(late.classifier.norm, nn.Identity)
        assert late.num_classes == 0
        last = late.forward_intermediates(inputs, indices=2, intermediates_only=True)
        for a, b in zip(last, everything[2:], strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        assert torch.allclose(late(inputs), everything[3], rtol=1e-5, atol=1e-6)  # no norm, pool or head left

        head_kept = copy.deepcopy(model)
        head_kept.prune_intermediate_layers(4, prune_head=False)
        assert head_kept.num_classes == model.num_classes
        assert torch.allclose(head_kept(inputs), model(inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_name", EXTRA, indirect=True)
def test_grad_checkpointing_equivalence(model_name):
    """set_grad_checkpointing gives the same outputs and gradients in training, drop-path included (the checkpoint
    replays the random state), through forward and forward_intermediates; and it can be switched off again."""
    size = _get_input_size(model_name=model_name, target=TARGET_BWD_SIZE, big=BIG_QUICK_SIZE)
    reference = _create(model_name).train()
    assert any(isinstance(m, timm.layers.DropPath) for m in reference.modules()) == (
        vision_models.VARIANTS[model_name]["drop_path_rate"] > 0
    )
    checkpointed = copy.deepcopy(reference)
    checkpointed.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in checkpointed.layers)
    inputs = torch.randn(2, *size)

    def run(model, seed):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        logits = model(inputs)
        final, intermediates = model.forward_intermediates(inputs)
        (logits.square().mean() + final.mean() + sum(i.mean() for i in intermediates)).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out, grads = run(reference, 0)
    out_ckpt, grads_ckpt = run(checkpointed, 0)
    assert torch.allclose(out, out_ckpt, rtol=1e-4, atol=1e-5)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        assert torch.allclose(grads[name], grads_ckpt[name], rtol=1e-3, atol=1e-6), name

    checkpointed.set_grad_checkpointing(False)
    assert not any(stage.grad_checkpointing for stage in checkpointed.layers)


@pytest.mark.parametrize("model_name", EXTRA, indirect=True)
def test_kwargs_reach_the_model(model_name):
    """create_model's num_classes, in_chans, drop_rate and drop_path_rate are used, not dropped; unknown ones raise."""
    first_conv = get_pretrained_cfg_value(model_name, "first_conv")
    size = _get_input_size(model_name=model_name, target=TARGET_FFEAT_SIZE, big=BIG_QUICK_SIZE)[1:]
    dropping = _create(model_name, num_classes=5, in_chans=1, drop_rate=0.5, drop_path_rate=0.0)
    stochastic = _create(model_name, in_chans=4, drop_path_rate=0.4)

    for model, in_chans, num_classes in ((dropping, 1, 5), (stochastic, 4, 1000)):
        model.eval()
        assert model.get_submodule(first_conv).in_channels == in_chans
        assert model.get_submodule(first_conv).weight.shape[1] == in_chans
        assert model.num_classes == num_classes and model.get_classifier().out_features == num_classes
        with torch.no_grad():
            assert model(torch.randn(2, in_chans, *size)).shape == (2, num_classes)
            with pytest.raises(RuntimeError):
                model(torch.randn(2, 3, *size))

    # drop_rate: dropout before the head (pre_logits in training mode), none in eval.
    model = dropping
    assert model.drop_rate == 0.5 and model.head_drop.p == 0.5
    assert not any(isinstance(m, timm.layers.DropPath) for m in model.modules())
    with torch.no_grad():
        features = model.eval().forward_features(torch.randn(2, 1, *size))
        pooled = model.forward_head(features, pre_logits=True)
        assert torch.equal(model.forward_head(features, pre_logits=True), pooled)
        dropped = model.train().forward_head(features, pre_logits=True)
    assert (dropped == 0).any() and (pooled != 0).all()
    kept = dropped != 0
    assert torch.allclose(dropped[kept], 2 * pooled[kept])  # scaled by 1 / (1 - p)

    # drop_path_rate: stochastic depth rising linearly over the blocks up to the rate asked for.
    model = stochastic
    assert model.head_drop.p == 0.0
    rates = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
    expected = torch.linspace(0, 0.4, _num_blocks(model)).tolist()[1:]  # the first block's rate is 0: no DropPath
    assert rates == pytest.approx(expected)
    inputs = torch.randn(4, 4, *size)
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        first = model(inputs)
        second = model(inputs)
        assert not torch.allclose(first, second)  # blocks dropped at random in training
        model.eval()
        assert torch.equal(model(inputs), model(inputs))

    with pytest.raises(TypeError):
        create_model(model_name, not_a_vmamba_argument=1)


@pytest.mark.parametrize("model_name", EXTRA, indirect=True)
def test_any_input_size(model_name):
    """Any H x W: each stride-2 conv takes H to ceil(H / 2), so 72 x 100 gives a 3 x 4 final map."""
    model = _create(model_name).eval()
    channels = _feature_info(model).channels()
    with torch.no_grad():
        for height, width, expected in ((72, 100, [(18, 25), (9, 13), (5, 7), (3, 4)]), (33, 17, None)):
            inputs = torch.randn(1, 3, height, width)
            final, intermediates = model.forward_intermediates(inputs)
            if expected is None:
                expected = [(math.ceil(height / r), math.ceil(width / r)) for r in (4, 8, 16, 32)]
            assert [tuple(i.shape[2:]) for i in intermediates] == expected
            assert [i.shape[1] for i in intermediates] == channels
            assert final.shape == (1, model.num_features, *expected[-1])
            logits = model(inputs)
            assert logits.shape == (1, model.num_classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize("model_name", EXTRA, indirect=True)
def test_channels_last(model_name):
    """A channels_last input, and a channels_last model, give the contiguous run's outputs."""
    model = _create(model_name).eval()
    size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE, big=BIG_QUICK_SIZE)
    inputs = torch.randn(2, *size)
    with torch.no_grad():
        expected = model(inputs)
        _, expected_intermediates = model.forward_intermediates(inputs)
        inputs_cl = inputs.contiguous(memory_format=torch.channels_last)
        assert torch.allclose(model(inputs_cl), expected, rtol=1e-4, atol=1e-5)
        model = model.to(memory_format=torch.channels_last)
        assert torch.allclose(model(inputs_cl), expected, rtol=1e-4, atol=1e-5)
        _, intermediates = model.forward_intermediates(inputs_cl)
        for a, b in zip(intermediates, expected_intermediates, strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", EXTRA, indirect=True)
def test_bf16_autocast(model_name):
    """A bf16 autocast forward on CPU runs, in bf16, finite, and close to the fp32 one."""
    model = _create(model_name).eval()
    size = _get_input_size(model=model, target=TARGET_FFEAT_SIZE, big=BIG_QUICK_SIZE)
    inputs = torch.randn(2, *size)
    with torch.no_grad():
        expected = model(inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(inputs)
            features = model.forward_features(inputs)
    assert logits.shape == expected.shape and features.shape == (2, model.num_features, *features.shape[2:])
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all() and torch.isfinite(features).all()
    error = (logits.float() - expected).abs().max()
    assert error <= 0.05 * expected.abs().max() + 1e-3, f"bf16 error {error} vs max {expected.abs().max()}"
    assert torch.nn.functional.cosine_similarity(logits.float().flatten(), expected.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("model_name", CORE, indirect=True)
def test_no_weight_decay(model_name):
    """no_weight_decay names parameters that exist, including every SS2D's A_logs, Ds and dt bias, and timm's
    optimizer factory exempts them from weight decay."""
    model = _built(model_name)  # create_model's own instance (read only here)
    names = dict(model.named_parameters())
    exempt = model.no_weight_decay()
    assert exempt and exempt <= names.keys()
    for suffix in (".op.A_logs", ".op.Ds", ".op.dt_projs_bias"):
        tagged = {name for name in names if name.endswith(suffix)}
        assert len(tagged) == _num_blocks(model)
        assert tagged <= exempt, f"{sorted(tagged - exempt)[:3]} not exempt"

    optimizer = timm_optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert len(decay_of) == len(names)
    for name, parameter in names.items():
        if name in exempt or parameter.ndim <= 1:
            assert decay_of[id(parameter)] == 0.0, name
        else:
            assert decay_of[id(parameter)] == 0.05, name
    assert any(names[name].ndim > 1 for name in exempt)  # A_logs (4 d_inner, N): exempt only through the list


@pytest.mark.parametrize("model_name", CORE, indirect=True)
def test_no_weight_decay_survives_deepcopy(model_name):
    """A copy of the model (copy.deepcopy: timm's ModelEma, a student or fine-tuning copy) names the same
    parameters as exempt from weight decay."""
    model = _built(model_name)
    assert model.no_weight_decay()
    assert copy.deepcopy(model).no_weight_decay() == model.no_weight_decay()


@pytest.mark.parametrize("model_name", CORE, indirect=True)
def test_group_matcher(model_name):
    """group_matcher with timm's group_parameters and param_groups_layer_decay: every parameter in one group, the
    stem first, the stages in order, and layer decay's scale never falling along the network (the parameters are
    registered in the order the forward runs them: stem, each stage's blocks then its downsample, classifier)."""
    model = _built(model_name)  # create_model's own instance (read only here)
    names = [name for name, _ in model.named_parameters()]
    num_stages = len(model.layers)

    coarse = timm.models.group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    assert coarse.keys() == set(names)
    for name in names:
        if name.startswith("patch_embed."):
            assert coarse[name] == 0
        elif name.startswith("layers."):
            assert coarse[name] == int(name.split(".")[1]) + 1
        else:
            assert name.startswith("classifier.") and coarse[name] == num_stages + 1

    fine = timm.models.group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert fine.keys() == set(names)
    assert {fine[n] for n in names if n.startswith("patch_embed.")} == {0}
    block_groups = {".".join(n.split(".")[:4]): fine[n] for n in names if n.startswith("layers.") and ".blocks." in n}
    assert len(set(block_groups.values())) == _num_blocks(model)  # one group per block
    sequence = [fine[name] for name in names]
    assert sequence == sorted(sequence), "a layer gets a lower layer id than one that runs before it: " + ", ".join(
        f"{a} ({fine[a]}) after {b} ({fine[b]})" for b, a in itertools.pairwise(names) if fine[a] < fine[b]
    )

    groups = timm_optim.param_groups_layer_decay(
        model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(), layer_decay=0.75
    )
    scale_of = {id(p): group["lr_scale"] for group in groups for p in group["params"]}
    parameters = dict(model.named_parameters())
    assert sum(len(group["params"]) for group in groups) == len(names) == len(scale_of)
    scales = [scale_of[id(parameters[name])] for name in names]
    assert scales[0] == min(scales) < 1.0 and scale_of[id(model.get_classifier().weight)] == 1.0
    assert scales == sorted(scales), "layer decay gives a later layer a smaller learning rate: " + ", ".join(
        f"{a} ({sa:.3f}) after {b} ({sb:.3f})"
        for (b, sb), (a, sa) in itertools.pairwise(zip(names, scales, strict=True))
        if sa < sb
    )
