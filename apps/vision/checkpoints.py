"""Released VMamba checkpoints: read them without running pickled code, check them against a model, load them.

The official `.pth` files (MzeroMiko/VMamba, `#v2cls` releases) are what upstream's training code saves:

    {'model': state_dict, 'optimizer': ..., 'lr_scheduler': ..., 'max_accuracy': ..., 'scaler': ..., 'epoch': ...,
     'config': <yacs.config.CfgNode>, ('model_ema': state_dict, 'max_accuray_ema': ...)}

`torch.load(weights_only=True)` refuses them because of the pickled yacs config. `read_official_checkpoint` still
uses torch's weights-only unpickler, which resolves only allowlisted globals and runs no other code, and adds a
single global to that allowlist for the duration of the call: the name `yacs.config.CfgNode`, mapped to a stand-in
that builds a plain `OrderedDict` (yacs is never imported; any other global, `os.system` say, is still refused).

`load_official_weights(model, path)` is what `VMamba.load_pretrained` (timm's `pretrained=True,
pretrained_cfg_overlay=dict(file=PATH)`) calls. Before touching the model it checks the tensors against the model and
raises a one-line `VisionCheckpointError` naming the file, what is wrong and what to do: a file that is not a VMamba
checkpoint, the s1/s2 mix-up (upstream issues #205, #238), another depth or width (naming the registered variant
that fits), an old "Vanilla-VMamba" (v0) checkpoint, an unreadable file or one that needs code to unpickle. A head of
another size is left newly initialised (with one warning), as timm does for another `num_classes`, and the first
convolution is adapted to another `in_chans` with timm's `adapt_input_conv`.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import adapt_input_conv
from torch import Tensor, nn

from mambakit.errors import UserError

from .models import VARIANTS

__all__ = ["VisionCheckpointError", "load_official_weights", "read_official_checkpoint"]

_logger = logging.getLogger(__name__)

#: Where upstream's checkpoint dict keeps the weights, in the order they are looked for (upstream loads 'model').
STATE_DICT_KEYS = ("model", "state_dict", "model_ema")

#: Upstream `VSSM._load_from_state_dict`'s renames of legacy keys (old prefix -> new prefix).
_LEGACY_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^patch_embed\.proj(?=\.)"), "patch_embed.0"),
    (re.compile(r"^patch_embed\.norm(?=\.)"), "patch_embed.2"),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1(?=\.)"), r"\1.norm"),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention(?=\.)"), r"\1.op"),
    (re.compile(r"^norm(?=\.)"), "classifier.norm"),
    (re.compile(r"^head(?=\.)"), "classifier.head"),
)
_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")
_HEAD = "classifier.head."
_FIRST_CONV = "patch_embed.0.weight"
#: How many tensor names an error message lists.
_NAMES_SHOWN = 4
_RELEASES = "https://github.com/MzeroMiko/VMamba/releases/tag/%23v2cls"


class VisionCheckpointError(UserError):
    """A VMamba checkpoint that cannot be loaded into the model; the message is one line naming the file and what
    to do (a `ValueError`, and a `mambakit.errors.UserError`, which the CLI prints without a traceback)."""


class _YacsConfigNode:
    """Stand-in for `yacs.config.CfgNode` while unpickling a released checkpoint's `config` entry.

    The pickle creates a CfgNode with `cls.__new__(cls)`, fills it with SETITEMS and sets its attributes with BUILD.
    torch's weights-only unpickler fills only plain dicts and OrderedDicts, so this class makes an `OrderedDict`:
    the config comes back as nested OrderedDicts with yacs' flags in their `__dict__`. Nothing of yacs runs.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict[str, Any]:  # type: ignore[misc]
        return OrderedDict()


#: The globals allowed beyond torch's own weights-only allowlist, as (object, "module.qualname") pairs.
_EXTRA_SAFE_GLOBALS: list[Any] = [(_YacsConfigNode, "yacs.config.CfgNode")]


def _one_line(text: object, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


def _convert_hint(path: Path) -> str:
    return (
        'if you trust the file, convert it once: python -c "import torch, safetensors.torch as st; '
        f"c = torch.load('{path}', weights_only=False); "
        "st.save_file({k: v.contiguous() for k, v in c.get('model', c).items()}, 'vmamba.safetensors')\" "
        "and pass vmamba.safetensors"
    )


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as file:
        head = file.read(10)
    # An 8-byte little-endian header length, then the JSON header.
    return len(head) == 10 and head[8:9] == b"{" and head[9:10] in b'"}'


def _torch_load(path: Path) -> Any:
    """torch.load, weights only, with the yacs stand-in allowed for this call only."""
    with torch.serialization.safe_globals(_EXTRA_SAFE_GLOBALS):
        # mmap: the optimizer state and EMA copy of a released file are mapped, not read.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def _load_error(path: Path, error: BaseException) -> VisionCheckpointError:
    text = str(error)
    detail = next((line for line in text.splitlines() if "WeightsUnpickler error" in line), text)
    detail = detail.split("WeightsUnpickler error:", 1)[-1]
    if isinstance(error, pickle.UnpicklingError) and re.search(
        r"GLOBAL|unrecognized function|Can only|allowlist|blocked", detail
    ):
        found = re.search(r"GLOBAL ([\w.]+)", detail)
        needs = f"needs {found.group(1)}" if found else f"needs more than tensors ({_one_line(detail, 100)})"
        return VisionCheckpointError(
            f"{path}: refused: its pickle {needs}; mambakit loads only weights from checkpoints, for safety "
            f"(unpickling can run any code), allowing tensors, plain containers and VMamba's yacs config; "
            + _convert_hint(path)
        )
    return VisionCheckpointError(
        f"{path}: not a readable checkpoint ({type(error).__name__}: {_one_line(detail, 100)}); it may be "
        f"truncated or corrupt: download it again ({_RELEASES}). mambakit reads only weights, for safety; "
        + _convert_hint(path)
    )


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise VisionCheckpointError(
            f"{path}: a directory without model.safetensors or pytorch_model.bin, not a VMamba checkpoint; pass a "
            f"released VMamba .pth file ({_RELEASES})"
        )
    if not path.is_file():
        raise VisionCheckpointError(f"{path}: no such file; download a VMamba release ({_RELEASES}) and pass its path")
    return path


def _select_state_dict(path: Path, checkpoint: Any) -> Mapping[str, Any]:
    if not isinstance(checkpoint, Mapping):
        raise VisionCheckpointError(
            f"{path}: holds a {type(checkpoint).__name__}, not a state dict or a checkpoint dict; "
            f"save {{'model': model.state_dict()}} instead"
        )
    for key in STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def _apply_legacy_renames(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    renamed: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        new = key
        for pattern, replacement in _LEGACY_RENAMES:
            new = pattern.sub(replacement, new)
        # Only where the new name is free: a tensor stored under both names keeps the new one.
        renamed[new if new == key or new not in tensors else key] = tensor
    return renamed


def read_official_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The VMamba state dict in `path`, with upstream's current key names, read without running pickled code.

    `path` is a released `.pth` (`{'model': state_dict, 'config': CfgNode, 'optimizer': ...}`; 'model' is
    taken, then 'state_dict', then 'model_ema'), a bare state dict saved with `torch.save`, a safetensors file, or a
    directory holding `model.safetensors` / `pytorch_model.bin`. A `module.` prefix (DataParallel) is removed, and
    upstream's legacy names are renamed where the new name is absent (`patch_embed.proj`->`patch_embed.0`,
    `patch_embed.norm`->`patch_embed.2`, `ln_1`->`norm`, `self_attention`->`op`, `norm`->`classifier.norm`,
    `head`->`classifier.head`). Tensors stay on the CPU (memory-mapped for zip-format `.pth` files).

    Raises `VisionCheckpointError` (one line) for a missing, truncated or corrupt file, for a pickle that needs any
    global beyond tensors, plain containers and yacs' CfgNode, and for a file holding no state dict of tensors.
    """
    path = _weights_file(Path(path))
    if _is_safetensors(path):
        try:
            state: Mapping[str, Any] = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise VisionCheckpointError(
                f"{path}: not a readable safetensors file ({_one_line(error, 100)}); it may be truncated or "
                f"corrupt: copy or convert it again"
            ) from None
    else:
        try:
            checkpoint = _torch_load(path)
        except Exception as error:  # the loaders fail on bad bytes with many exception types
            raise _load_error(path, error) from None
        state = _select_state_dict(path, checkpoint)
    not_tensors = sorted(str(key) for key, value in state.items() if not isinstance(value, Tensor))
    if not_tensors or not state:
        raise VisionCheckpointError(
            f"{path}: expected a state dict of tensors under 'model' (or a bare one), got "
            + (f"non-tensor entries {_some(not_tensors)}" if not_tensors else "no tensors")
            + "; save {'model': model.state_dict()} instead"
        )
    tensors = {str(key): value for key, value in state.items()}
    if all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module.") :]: value for key, value in tensors.items()}
    return _apply_legacy_renames(tensors)


@dataclass(frozen=True)
class _Architecture:
    """What a VMamba state dict tells of its constructor arguments."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    ssm_ratio: float
    d_state: int

    @classmethod
    def of(cls, tensors: Mapping[str, Tensor]) -> _Architecture | None:
        depths: dict[int, int] = {}
        for key in tensors:
            match = _BLOCK_KEY.match(key)
            if match:
                stage, block = int(match.group(1)), int(match.group(2))
                depths[stage] = max(depths.get(stage, 0), block + 1)
        stages = max(depths, default=-1) + 1
        try:
            dims = tuple(int(tensors[f"layers.{i}.blocks.0.norm.weight"].shape[0]) for i in range(stages))
            a_logs = tensors["layers.0.blocks.0.op.A_logs"]
        except KeyError:
            return None
        if not dims or a_logs.ndim != 2:
            return None
        return cls(
            depths=tuple(depths.get(i, 0) for i in range(stages)),
            dims=dims,
            ssm_ratio=a_logs.shape[0] / (4 * dims[0]),
            d_state=int(a_logs.shape[1]),
        )

    def same_shape_as(self, other: _Architecture) -> bool:
        return (self.depths, self.dims, self.ssm_ratio, self.d_state) == (
            other.depths,
            other.dims,
            other.ssm_ratio,
            other.d_state,
        )


def _variant_architecture(settings: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...], float]:
    depths = tuple(settings["depths"])
    dims = settings["dims"]
    stage_dims = tuple(dims * 2**i for i in range(len(depths))) if isinstance(dims, int) else tuple(dims)
    return depths, stage_dims, float(settings["ssm_ratio"])


def _matching_variants(arch: _Architecture) -> list[str]:
    return [
        name
        for name, settings in VARIANTS.items()
        # Every registered variant has d_state 1, as every v2 release.
        if arch.d_state == 1 and _variant_architecture(settings) == (arch.depths, arch.dims, arch.ssm_ratio)
    ]


def _model_name(model: nn.Module, arch: _Architecture | None) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("architecture"):
        return str(cfg["architecture"])
    matches = _matching_variants(arch) if arch else []
    return matches[0] if matches else f"this {type(model).__name__}"


def _dims_text(dims: tuple[int, ...]) -> str:
    return str(dims[0]) if dims == tuple(dims[0] * 2**i for i in range(len(dims))) else str(list(dims))


def _check_architecture(path: Path, found: _Architecture, wanted: _Architecture, name: str) -> None:
    """The s1/s2, depth and width mix-ups, as one line naming the registered variant that fits."""
    if found.same_shape_as(wanted):
        return
    have: list[str] = []
    want: list[str] = []
    if found.ssm_ratio != wanted.ssm_ratio:
        have.append(f"s{found.ssm_ratio:g} (ssm_ratio {found.ssm_ratio:.1f})")
        want.append(f"s{wanted.ssm_ratio:g}")
    if found.depths != wanted.depths:
        # Upstream names a variant by its third stage's depth (s1l8: 8 blocks there).
        have.append(f"l{found.depths[2] if len(found.depths) > 2 else '?'} (depths {list(found.depths)})")
        want.append(f"l{wanted.depths[2] if len(wanted.depths) > 2 else '?'} (depths {list(wanted.depths)})")
    if found.d_state != wanted.d_state:
        have.append(f"d_state {found.d_state}")
        want.append(f"d_state {wanted.d_state}")
    if found.dims != wanted.dims:
        have.append(f"width {found.dims[0]} (dims {_dims_text(found.dims)})")
        want.append(f"width {wanted.dims[0]}")
    matches = _matching_variants(found)
    if matches:
        advice = "use " + " or ".join(matches)
    else:
        advice = (
            f"no registered variant matches: create the model with depths={found.depths}, "
            f"dims={_dims_text(found.dims)}, ssm_ratio={found.ssm_ratio:g}"
            + (f", d_state={found.d_state}" if found.d_state != 1 else "")
        )
    raise VisionCheckpointError(
        f"{path} holds a VMamba {', '.join(have)} checkpoint, but {name} is {', '.join(want)}: {advice}"
    )


def _check_is_vmamba(path: Path, tensors: Mapping[str, Tensor]) -> None:
    keys = sorted(tensors)
    if any(k.startswith("patch_embed.") for k in keys) and any(k.startswith("layers.") for k in keys):
        return
    looks = ""
    directory = path if path.is_dir() else path.parent
    if any(k.startswith("backbone.") for k in keys) and (directory / "config.json").is_file():
        looks = " (a mambakit/Mamba checkpoint directory: load it with mambakit.models.load_model)"
    raise VisionCheckpointError(
        f"{path} is not a VMamba checkpoint: no patch_embed.*/layers.* tensors (it holds {_some(keys)}){looks}; "
        f"pass a released VMamba .pth ({_RELEASES})"
    )


def _check_not_v0(path: Path, tensors: Mapping[str, Tensor], arch: _Architecture | None) -> None:
    blocks = [k for k in tensors if _BLOCK_KEY.match(k)]
    no_mlp = bool(blocks) and not any(".mlp." in k for k in blocks)
    merging = any(re.match(r"^layers\.\d+\.downsample\.reduction\.", k) for k in tensors)
    if no_mlp or merging:
        state = f"d_state {arch.d_state}, " if arch else ""
        raise VisionCheckpointError(
            f"{path} holds an old 'Vanilla-VMamba' (v0: {state}no MLP) checkpoint, a different architecture that "
            f"mambakit does not support; use a v2 release ({_RELEASES}), e.g. vssm1_tiny_0230s_ckpt_epoch_264.pth "
            f"with vmamba_tiny_s1l8"
        )


def _fit_head(tensors: dict[str, Tensor], expected: Mapping[str, Tensor], path: Path) -> None:
    """Drop a checkpoint head that the model's head cannot take (another num_classes, or no head)."""
    head = {k: v for k, v in tensors.items() if k.startswith(_HEAD)}
    model_head = {k: v for k, v in expected.items() if k.startswith(_HEAD)}
    if not head or all(k in model_head and model_head[k].shape == v.shape for k, v in head.items()):
        return
    for key in head:
        del tensors[key]
    # The model's new head stays: it loads onto itself.
    tensors.update(model_head)
    found = head.get(_HEAD + "weight")
    classes = f"{found.shape[0]} classes" if found is not None else "a head"
    wanted = model_head.get(_HEAD + "weight")
    if wanted is None:
        _logger.info("%s: the model has no classifier head; the checkpoint's (%s) is not loaded", path, classes)
        return
    _logger.warning(
        "%s: the checkpoint's head has %s and the model's %d: classifier.head stays newly initialised (train it)",
        path,
        classes,
        wanted.shape[0],
    )


def _fit_input_conv(tensors: dict[str, Tensor], expected: Mapping[str, Tensor], path: Path) -> None:
    """Adapt the first convolution to the model's in_chans, as timm does for its pretrained weights."""
    found, wanted = tensors.get(_FIRST_CONV), expected.get(_FIRST_CONV)
    if found is None or wanted is None or found.ndim != 4 or wanted.ndim != 4:
        return
    if found.shape[1] == wanted.shape[1] or found.shape[0] != wanted.shape[0] or found.shape[2:] != wanted.shape[2:]:
        return
    in_chans, base = int(wanted.shape[1]), int(found.shape[1])
    tensors[_FIRST_CONV] = adapt_input_conv(in_chans, found.float(), base_chans=base).to(found.dtype)
    _logger.info("%s: %s adapted from %d to %d input channels", path, _FIRST_CONV, base, in_chans)


def load_official_weights(model: nn.Module, path: str | Path) -> None:
    """Load a released VMamba checkpoint (or any file `read_official_checkpoint` reads) into `model`, strictly.

    Checks come first and raise a one-line `VisionCheckpointError` before the model is touched: the file is not a
    VMamba checkpoint; it is an old Vanilla-VMamba (v0) one; its ssm_ratio (s1/s2), depths or width differ from the
    model's (the message names the registered variant that fits, when one does); tensors are missing, extra or
    misshaped. A checkpoint head of another size (another num_classes, or a model without a head) is not loaded:
    the model keeps its new head and one warning is logged. Another in_chans adapts `patch_embed.0` with timm's
    `adapt_input_conv`. Everything else loads with `load_state_dict(strict=True)`.
    """
    path = Path(path)
    tensors = read_official_checkpoint(path)
    _check_is_vmamba(path, tensors)
    found = _Architecture.of(tensors)
    _check_not_v0(path, tensors, found)
    expected = model.state_dict()
    wanted = _Architecture.of(expected)
    name = _model_name(model, wanted)
    if found is not None and wanted is not None:
        _check_architecture(path, found, wanted, name)
    _fit_head(tensors, expected, path)
    _fit_input_conv(tensors, expected, path)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshaped = sorted(
        f"{key} {list(tensor.shape)} (model: {list(expected[key].shape)})"
        for key, tensor in tensors.items()
        if key in expected and tensor.shape != expected[key].shape
    )
    problems = [
        f"{label} {_some(names)}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shapes:", misshaped))
        if names
    ]
    if problems:
        raise VisionCheckpointError(
            f"{path} does not fit {name}: {'; '.join(problems)}; check that the checkpoint is for this variant "
            f"(registered: {', '.join(VARIANTS)})"
        )
    model.load_state_dict(tensors, strict=True)
