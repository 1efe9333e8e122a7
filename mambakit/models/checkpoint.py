"""Checkpoints: save a model as a directory, load one back, and import state-spaces and Hugging Face ones.

A mambakit checkpoint is a directory:

    config.json          MambaConfig fields + model_type "mambakit", architecture, head, mambakit_version
    model.safetensors    the state dict; a tied lm_head is stored once, as backbone.embedding.weight
    (extra files)        e.g. the tokenizer config an app stores beside the weights

`load_model` also reads, from a local directory:

- state-spaces/mamba: config.json with d_model, n_layer, ssm_cfg, ...; pytorch_model.bin (or
  model.safetensors) with our parameter names and the vocabulary padded to pad_vocab_size_multiple.
- Hugging Face `MambaForCausalLM`: config.json with model_type "mamba"; model.safetensors (possibly sharded
  through model.safetensors.index.json) or pytorch_model.bin; `backbone.embeddings.weight` is renamed.

Everything a user can get wrong raises `CheckpointError`: one line naming the file and what to do.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .config import MambaConfig
from .heads import ARCHITECTURES, MambaLMHeadModel, MambaPreTrainedModel

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


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be loaded; the message is one line naming the file."""


def save_pretrained(model: MambaPreTrainedModel, path: str | Path,
                    extra_files: dict[str, bytes | str] | None = None) -> Path:
    """Write `model` as a mambakit checkpoint directory (created if needed) and return its path.

    `extra_files` maps plain file names to contents (str is written as UTF-8), e.g. {"tokenizer.json": ...}.
    Each file is replaced atomically, so a crash leaves every file either old or new, never torn; config.json
    is written last, so a directory whose first save was interrupted is not mistaken for a checkpoint.
    """
    # Imported here because mambakit/__init__.py defines __version__ after importing this package.
    from .. import __version__

    directory = Path(path)
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if Path(name).name != name or name in (CONFIG_NAME, SAFETENSORS_NAME):
            raise ValueError(f"extra_files: {name!r} must be a plain file name other than {CONFIG_NAME} "
                             f"and {SAFETENSORS_NAME}")
    directory.mkdir(parents=True, exist_ok=True)

    # safetensors refuses tensors that share memory: store each tied parameter once; loading re-ties them.
    aliases = _tied_aliases(model)
    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()
               if name not in aliases}
    with _atomic_path(directory / SAFETENSORS_NAME) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    for name, content in extra_files.items():
        with _atomic_path(directory / name) as tmp:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    config_json = model.config.to_json(model_type="mambakit", architecture=model.architecture,
                                       head=model.head_config(), mambakit_version=__version__)
    with _atomic_path(directory / CONFIG_NAME) as tmp:
        tmp.write_text(config_json)
    fsync_directory(directory)
    return directory


def load_model(path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               scan_backend: str = "auto") -> MambaPreTrainedModel:
    """Load a mambakit, state-spaces or Hugging Face Mamba checkpoint directory; returns the model in eval mode.

    state-spaces and Hugging Face checkpoints become a `MambaLMHeadModel`. `dtype` is the compute dtype of the
    weights; A_log and D stay fp32 as in training. Weight files are read without executing pickled code.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory; pass a directory holding {CONFIG_NAME} "
                              f"and the weights")
    config_path = directory / CONFIG_NAME
    data = _read_json(config_path, what="config")
    if not isinstance(data, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object of config keys")
    model_type = data.get("model_type")
    if model_type not in (None, "mambakit", "mamba"):
        raise CheckpointError(f"{config_path}: model_type {model_type!r} is not supported; mambakit loads its own "
                              f"checkpoints, state-spaces Mamba-1 and Hugging Face 'mamba' (MambaForCausalLM)")
    try:
        config = MambaConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path}: {str(error).removeprefix('config: ')}") from None

    if model_type == "mambakit":
        architecture, head = data.get("architecture"), data.get("head") or {}
    else:  # state-spaces and Hugging Face checkpoints are language models
        architecture, head = MambaLMHeadModel.architecture, {}
    model = _build_model(config_path, architecture, head, config, scan_backend, device, dtype)

    tensors, weights_path = _read_weights(directory)
    # Renaming every format is safe: no mambakit or state-spaces name has a Hugging Face-only prefix.
    tensors = {_hf_to_ours(name): tensor for name, tensor in tensors.items()}
    _load_state(model, tensors, weights_path)
    return model.eval()


def _build_model(config_path: Path, architecture: Any, head: Any, config: MambaConfig, scan_backend: str,
                 device: torch.device | str | None, dtype: torch.dtype | None) -> MambaPreTrainedModel:
    cls = ARCHITECTURES.get(architecture) if isinstance(architecture, str) else None
    if cls is None:
        raise CheckpointError(f"{config_path}: unknown architecture {architecture!r}; known: "
                              f"{', '.join(sorted(ARCHITECTURES))}")
    if not isinstance(head, dict):
        raise CheckpointError(f"{config_path}: 'head' must be a JSON object of head arguments, got {head!r}")
    try:
        return cls(config, **head, scan_backend=scan_backend, device=device, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path}: cannot build {architecture} with head {head}: {error}") from None


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
            return ours + name[len(theirs):]
    return name


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; a checkpoint directory needs its {what} here") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({_one_line(error)}); restore or re-export it") from None


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
    raise CheckpointError(f"{directory}: no weights file (looked for {', '.join(WEIGHTS_NAMES)}); "
                          f"copy the weights beside {CONFIG_NAME}")


def _read_weights_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; the shard index names it, so copy it beside the index")
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_one_line(error)}); it may be "
                                  f"truncated or corrupt: copy or download it again") from None
    try:
        # weights_only: a checkpoint is data, and a pickle could run any code on this machine.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler fails on bad bytes with many exception types
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({type(error).__name__}); it may be "
                              f"truncated or corrupt, or hold objects besides tensors, which are not loaded for "
                              f"safety: copy it again or convert it to safetensors") from None
    if not (isinstance(state, dict) and all(isinstance(v, Tensor) for v in state.values())):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}; save "
                              f"model.state_dict() instead")
    return state


def _load_state(model: MambaPreTrainedModel, tensors: dict[str, Tensor], source: Path) -> None:
    """Copy `tensors` into `model`, strictly: every parameter present, none extra, every shape equal."""
    expected = model.state_dict()
    aliases = _tied_aliases(model)
    for alias, canonical in aliases.items():
        # state-spaces stores a tied lm_head under both names; mambakit and Hugging Face store it once.
        stored = tensors.pop(alias, None)
        if stored is not None and canonical in tensors and not torch.equal(stored, tensors[canonical]):
            raise CheckpointError(f"{source}: {alias} differs from {canonical}, but the config ties them; set "
                                  f"tie_embeddings (tie_word_embeddings) to false in {CONFIG_NAME}")
    missing = sorted(set(expected) - set(aliases) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshaped = sorted(f"{name} {tuple(tensor.shape)} (expected {tuple(expected[name].shape)})"
                       for name, tensor in tensors.items() if name in expected and tensor.shape != expected[name].shape)
    problems = [f"{label} {_some(names)}" for label, names in
                (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", misshaped))
                if names]
    if problems:
        raise CheckpointError(f"{source}: weights do not match {CONFIG_NAME}: {'; '.join(problems)}; check that "
                              f"the config and the weights come from the same model")
    model.load_state_dict({**tensors, **{alias: tensors[canonical] for alias, canonical in aliases.items()}})


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown if len(names) <= _NAMES_SHOWN else f"{shown} (and {len(names) - _NAMES_SHOWN} more)"


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
