"""Checkpoints: save a model as a directory, load one back, and import state-spaces and Hugging Face ones.

A mambakit checkpoint is a directory:

    config.json          the config's fields + model_type (its registered config class), config_version,
                         architecture (the registered model class), head (its head_config), domain (the app
                         that registered either, if any), mambakit_version
    model.safetensors    the state dict; a tied lm_head is stored once, as backbone.embedding.weight
    (extra files)        e.g. the tokenizer config an app stores beside the weights

Any model that meets `mambakit.models.protocol.TrainableModel` saves and loads this way; `load_model` finds its
config class and architecture in the registry (`mambakit.models.registry`), importing the checkpoint's domain
app first when the name is not registered yet. Checkpoints of config version 1 (mambakit up to 85bf326) load
unchanged.

`load_model` also reads, from a local directory:

- state-spaces/mamba: config.json with d_model, n_layer, ssm_cfg, ...; pytorch_model.bin (or
  model.safetensors) with our parameter names and the vocabulary padded to pad_vocab_size_multiple.
- Hugging Face `MambaForCausalLM`: config.json with model_type "mamba"; model.safetensors (possibly sharded
  through model.safetensors.index.json) or pytorch_model.bin; `backbone.embeddings.weight` is renamed.
- a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors; `mambakit.models.lora`): the
  base checkpoint it names, with the adapters on top. A model that carries adapters is saved that way.

Everything a user can get wrong raises `CheckpointError`: one line naming the file and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..errors import MambakitError, UserError, first_line
from ..jsonfiles import read_json_file
from ..validation import checked_value
from .config import CONFIG_VERSION, META_KEYS, V1_MOVED_FIELDS, MambaConfig
from .heads import MambaLMHeadModel
from .lora import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, LORA_EXTRA, adapter_files, has_lora
from .protocol import TrainableModel, is_trainable
from .registry import UnknownNameError, architecture_class, config_class, config_classes, owner_domain

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"
PYTORCH_INDEX_NAME = "pytorch_model.bin.index.json"
#: Weight files load_model looks for, in this order.
WEIGHTS_NAMES = (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, PYTORCH_NAME, PYTORCH_INDEX_NAME)

#: Hugging Face parameter-name prefix -> ours (every other name is the same in both).
_HF_RENAMES = {"backbone.embeddings.": "backbone.embedding."}
#: How many offending tensor names an error message lists.
_NAMES_SHOWN = 5


class CheckpointError(MambakitError, ValueError):
    """A checkpoint directory or file that cannot be loaded; the message is one line naming the file."""


def save_pretrained(model: TrainableModel, path: str | Path, extra_files: dict[str, bytes | str] | None = None) -> Path:
    """Write `model` as a mambakit checkpoint directory (created if needed) and return its path.

    `extra_files` maps plain file names to contents (str is written as UTF-8), e.g. {"tokenizer.json": ...}.
    Each file is replaced atomically, so a crash leaves every file either old or new, never torn; config.json
    is written last, so a directory whose first save was interrupted is not mistaken for a checkpoint.
    """
    # Imported here because mambakit/__init__.py defines __version__ after importing this package.
    from .. import __version__

    if not isinstance(model, torch.nn.Module) or not is_trainable(model):
        raise TypeError(
            f"save_pretrained: {type(model).__name__} does not meet mambakit's TrainableModel contract "
            f"(config, architecture, from_config, head_config, shard_units, no_weight_decay)"
        )
    directory = Path(path)
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if Path(name).name != name or name in (CONFIG_NAME, SAFETENSORS_NAME):
            raise UserError(
                f"extra_files: {name!r} must be a plain file name other than {CONFIG_NAME} and {SAFETENSORS_NAME}"
            )
    directory.mkdir(parents=True, exist_ok=True)
    if has_lora(model):
        return _save_adapter(model, directory, extra_files)

    # safetensors refuses tensors that share memory: store each tied parameter once; loading re-ties them.
    aliases = _tied_aliases(model)
    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items() if name not in aliases}
    with _atomic_path(directory / SAFETENSORS_NAME) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    for name, content in extra_files.items():
        with _atomic_path(directory / name) as tmp:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    meta = {
        "model_type": model.config.model_type,
        "config_version": CONFIG_VERSION,
        "architecture": model.architecture,
        "head": model.head_config(),
        "domain": owner_domain(model),
        "mambakit_version": __version__,
    }
    with _atomic_path(directory / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps({**model.config.to_dict(), **meta}, indent=2) + "\n")
    fsync_directory(directory)
    return directory


def _save_adapter(model: TrainableModel, directory: Path, extra_files: dict[str, bytes | str]) -> Path:
    """A model with LoRA adapters: only the adapters, in PEFT's format (adapter_config.json last)."""
    tensors, config_text = adapter_files(cast(torch.nn.Module, model))
    if json.loads(config_text).get("base_model_name_or_path") is None:
        raise UserError("save_pretrained: the LoRA adapters name no base checkpoint; add them with add_lora(base=...)")
    with _atomic_path(directory / ADAPTER_WEIGHTS_NAME) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    for name, content in extra_files.items():
        with _atomic_path(directory / name) as tmp:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    with _atomic_path(directory / ADAPTER_CONFIG_NAME) as tmp:
        tmp.write_text(config_text)
    fsync_directory(directory)
    return directory


def load_model(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    scan_backend: str = "auto",
    merge_adapters: bool = True,
) -> Any:
    """Load a mambakit, state-spaces or Hugging Face Mamba checkpoint directory, or a LoRA adapter directory (its
    base with the adapters on top; `merge_adapters` folds them into the base layers); returns the model in eval
    mode.

    state-spaces and Hugging Face checkpoints become a `MambaLMHeadModel`; a mambakit checkpoint becomes the
    registered architecture it names. `dtype` is the compute dtype of the weights; A_log and D stay fp32 as in
    training. Weight files are read without executing pickled code.
    """
    from ..ops import list_backends

    if scan_backend != "auto" and scan_backend not in list_backends():
        raise UserError(f"scan_backend {scan_backend!r} is unknown; choose one of: auto, {', '.join(list_backends())}")
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: no such checkpoint directory; pass a directory holding {CONFIG_NAME} and the weights"
        )
    config_path = directory / CONFIG_NAME
    if not config_path.is_file() and (directory / ADAPTER_CONFIG_NAME).is_file():
        return _load_adapter_checkpoint(directory, device, dtype, scan_backend, merge_adapters)
    data = _read_json(config_path, what="config")
    if not isinstance(data, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object of config keys")
    config, architecture, head, domain = _read_config(config_path, data)
    model = cast(
        torch.nn.Module, _build_model(config_path, architecture, head, domain, config, scan_backend, device, dtype)
    )

    tensors, weights_path = _read_weights(directory)
    # Renaming every format is safe: no mambakit or state-spaces name has a Hugging Face-only prefix.
    tensors = {_hf_to_ours(name): tensor for name, tensor in tensors.items()}
    _load_state(model, tensors, weights_path)
    return model.eval()


def _load_adapter_checkpoint(
    directory: Path, device: torch.device | str | None, dtype: torch.dtype | None, scan_backend: str, merge: bool
) -> Any:
    from . import lora

    try:
        base = lora.read_adapter_config(directory).get("base_model_name_or_path")
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    if not isinstance(base, str) or not Path(base).is_dir():
        raise CheckpointError(
            f"{directory / ADAPTER_CONFIG_NAME}: its base checkpoint {base!r} is not a directory here; set "
            f"base_model_name_or_path to the base model's directory"
        )
    model = load_model(base, device, dtype, scan_backend)
    try:
        lora.load_adapter(model, directory)
    except ImportError:
        raise CheckpointError(f"{directory}: a LoRA adapter; loading it needs PEFT: {LORA_EXTRA}") from None
    except (ValueError, OSError, SafetensorError) as error:
        raise CheckpointError(f"{directory}: {first_line(error)}") from None
    return (lora.merge_lora(model) if merge else model).eval()


def _read_config(config_path: Path, data: dict[str, Any]) -> tuple[Any, Any, Any, str | None]:
    """(config, architecture name, head arguments, domain) of a config.json in any of the formats."""
    model_type = data.get("model_type")
    if model_type is None or model_type == "mamba":  # state-spaces or Hugging Face: language models
        return _build_config(config_path, MambaConfig, data), MambaLMHeadModel.architecture, {}, None
    if not isinstance(model_type, str):
        raise CheckpointError(f"{config_path}: model_type must be a string, got {model_type!r}")
    version = data.get("config_version", 1)
    if version not in (1, CONFIG_VERSION):
        raise CheckpointError(
            f"{config_path}: config_version {version!r} is not one this mambakit reads (1 to "
            f"{CONFIG_VERSION}); upgrade mambakit"
        )
    domain = data.get("domain")
    if version == 1:
        model_type = _v1_model_type(config_path, data)
    try:
        registration = config_class(model_type, domain)
    except UnknownNameError as error:
        raise CheckpointError(
            f"{config_path}: {error}; mambakit loads its own checkpoints, state-spaces Mamba-1 "
            f"and Hugging Face 'mamba' (MambaForCausalLM)"
        ) from None
    fields = {key: value for key, value in data.items() if key not in META_KEYS}
    if version == 1 and model_type == MambaConfig.model_type:
        fields = {key: value for key, value in fields.items() if key not in V1_MOVED_FIELDS}
    return (
        _build_config(config_path, registration.cls, fields),
        data.get("architecture"),
        data.get("head") or {},
        domain or registration.domain,
    )


def _v1_model_type(config_path: Path, data: dict[str, Any]) -> str:
    """The config class of a version-1 checkpoint: MambaConfig, unless it turned on a field that has since moved
    to a domain's config (then the registered config class that has all such fields)."""
    moved = {key for key, off in V1_MOVED_FIELDS.items() if data.get(key, off) != off}
    if not moved:
        return MambaConfig.model_type
    from ..domains import load_domains

    load_domains()
    for model_type, registration in config_classes().items():
        names = {field.name for field in dataclasses.fields(registration.cls)}
        if set(V1_MOVED_FIELDS) <= names:
            return model_type
    raise CheckpointError(
        f"{config_path}: a version-1 config with {', '.join(sorted(moved))}, which no installed "
        f"app's config has; install the genomics app"
    )


def _build_config(config_path: Path, cls: Any, data: dict[str, Any]) -> Any:
    try:
        return cls.from_dict(data)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path}: {str(error).removeprefix('config: ')}") from None


def _build_model(
    config_path: Path,
    architecture: Any,
    head: Any,
    domain: str | None,
    config: Any,
    scan_backend: str,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> TrainableModel:
    if not isinstance(architecture, str):
        raise CheckpointError(f"{config_path}: 'architecture' must name the model class, got {architecture!r}")
    try:
        cls: Any = architecture_class(architecture, domain).cls
    except UnknownNameError as error:
        raise CheckpointError(f"{config_path}: {error}") from None
    if not isinstance(head, dict):
        raise CheckpointError(f"{config_path}: 'head' must be a JSON object of head arguments, got {head!r}")
    head = _checked_head(config_path, cls, head)
    try:
        return cls.from_config(config, head, scan_backend=scan_backend, device=device, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path}: cannot build {architecture} with head {head}: {error}") from None


def _checked_head(config_path: Path, cls: Any, head: dict[str, Any]) -> dict[str, Any]:
    """The head arguments, each checked against the type the architecture's constructor declares for it (a
    quoted number of labels, say, is refused by name); arguments it does not declare are left to the constructor."""
    try:
        declared = typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):  # annotations that name what the module imports only for type checkers
        return head
    try:
        return {
            key: checked_value(f"head.{key}", value, declared[key], str(config_path)) if key in declared else value
            for key, value in head.items()
        }
    except UserError as error:
        raise CheckpointError(str(error)) from None


def _tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """State-dict names that are the same parameter as an earlier name (tied weights): alias -> first name."""
    first: dict[int, str] = {}
    aliases = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        canonical = first.setdefault(id(tensor), name)
        if canonical != name:
            aliases[name] = canonical
    return aliases


def _hf_to_ours(name: str) -> str:
    for theirs, ours in _HF_RENAMES.items():
        if name.startswith(theirs):
            return ours + name[len(theirs) :]
    return name


def _read_json(path: Path, what: str) -> Any:
    try:
        return read_json_file(path, what)
    except (OSError, ValueError) as error:
        raise CheckpointError(str(error)) from None


def _read_weights(directory: Path) -> tuple[dict[str, Tensor], Path]:
    """All tensors of the first weights file found in `directory`, and that file's path (for messages)."""
    for name in WEIGHTS_NAMES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _read_weights_file(path), path
        index = _read_json(path, what="shard index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{path}: no 'weight_map' object naming the shard of each tensor; re-export it")
        tensors: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(_read_weights_file(directory / shard))
        return tensors, path
    raise CheckpointError(
        f"{directory}: no weights file (looked for {', '.join(WEIGHTS_NAMES)}); copy the weights beside {CONFIG_NAME}"
    )


def _read_weights_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; the shard index names it, so copy it beside the index")
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({first_line(error)}); it may be "
                f"truncated or corrupt: copy or download it again"
            ) from None
    try:
        # weights_only: a checkpoint is data, and a pickle could run any code on this machine.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler fails on bad bytes with many exception types
        raise CheckpointError(
            f"{path}: not a readable PyTorch weights file ({type(error).__name__}); it may be "
            f"truncated or corrupt, or hold objects besides tensors, which are not loaded for "
            f"safety: copy it again or convert it to safetensors"
        ) from None
    if not (isinstance(state, dict) and all(isinstance(v, Tensor) for v in state.values())):
        raise CheckpointError(
            f"{path}: expected a state dict of tensors, got {type(state).__name__}; save model.state_dict() instead"
        )
    return state


def _load_state(model: torch.nn.Module, tensors: dict[str, Tensor], source: Path) -> None:
    """Copy `tensors` into `model`, strictly: every parameter present, none extra, every shape equal."""
    expected = model.state_dict()
    aliases = _tied_aliases(model)
    for alias, canonical in aliases.items():
        # state-spaces stores a tied lm_head under both names; mambakit and Hugging Face store it once.
        stored = tensors.pop(alias, None)
        if stored is not None and canonical in tensors and not torch.equal(stored, tensors[canonical]):
            raise CheckpointError(
                f"{source}: {alias} differs from {canonical}, but the config ties them; set "
                f"tie_embeddings (tie_word_embeddings) to false in {CONFIG_NAME}"
            )
    missing = sorted(set(expected) - set(aliases) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshaped = sorted(
        f"{name} {tuple(tensor.shape)} (expected {tuple(expected[name].shape)})"
        for name, tensor in tensors.items()
        if name in expected and tensor.shape != expected[name].shape
    )
    problems = [
        f"{label} {_some(names)}"
        for label, names in (
            ("missing tensors", missing),
            ("unexpected tensors", unexpected),
            ("wrong shapes", misshaped),
        )
        if names
    ]
    if problems:
        raise CheckpointError(
            f"{source}: weights do not match {CONFIG_NAME}: {'; '.join(problems)}; check that "
            f"the config and the weights come from the same model"
        )
    model.load_state_dict({**tensors, **{alias: tensors[canonical] for alias, canonical in aliases.items()}})


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown if len(names) <= _NAMES_SHOWN else f"{shown} (and {len(names) - _NAMES_SHOWN} more)"


@contextmanager
def _atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` to write to; when the block succeeds it is fsynced and renamed over
    `target` (a rename within one directory is atomic), otherwise removed."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_directory(directory: Path) -> None:
    """Make the renames durable; only POSIX can open a directory for fsync."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
