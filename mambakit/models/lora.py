"""LoRA adapters through PEFT on any mambakit model, saved and loaded in PEFT's own format.

`add_lora(model, rank, ...)` injects LoRA layers (PEFT's `inject_adapter_in_model`) into the projections the
Mamba mixer and the attention mixer have: in_proj, x_proj, dt_proj and out_proj by default. The model keeps its
class and contract; only the adapters train. The mixers send a wrapped projection through its own forward (see
`mambakit.nn.mixer`), so the adapters take part in forward, backward and the recurrent step.

A model with adapters is saved (`save_pretrained`) as a PEFT adapter directory:

    adapter_config.json          PEFT's LoraConfig; base_model_name_or_path is the base checkpoint's directory
    adapter_model.safetensors    the adapter weights, named as PeftModel.save_pretrained names them

so `peft.PeftModel.from_pretrained(load_model(base), directory)` reads it too, and `load_model(directory)` loads
the base it names and the adapters on top.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..errors import UserError

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
#: The Linear layers of the mixers that LoRA targets unless told otherwise (PEFT matches name suffixes).
LORA_TARGETS = ("in_proj", "x_proj", "dt_proj", "out_proj")
LORA_EXTRA = "pip install 'mambakit[lora]'"
#: PeftModel's prefix before the wrapped model's parameter names in saved adapters.
_PEFT_PREFIX = "base_model.model."


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError(f"LoRA adapters need PEFT: {LORA_EXTRA}") from None
    return peft


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: Sequence[str] = LORA_TARGETS,
    base: str | Path | None = None,
) -> nn.Module:
    """Inject LoRA adapters of `rank` into `model` in place (scaled by alpha / rank; alpha defaults to 2 x rank)
    and freeze everything else; `base` is the checkpoint directory the frozen weights come from, recorded in the
    saved adapter_config.json. Returns `model`."""
    peft = _peft()
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = [target for target in targets if target not in present]
    if missing or not targets:
        raise UserError(
            f"LoRA targets {', '.join(missing) or '(none)'} are not Linear layers of this model; choose among "
            f"{', '.join(sorted(present))}"
        )
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=2 * rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        base_model_name_or_path=None if base is None else str(Path(base).resolve()),
    )
    return peft.inject_adapter_in_model(config, model)


def has_lora(model: nn.Module) -> bool:
    """Whether `model` carries LoRA adapters (checked without importing PEFT)."""
    return any(hasattr(module, "lora_A") for module in model.modules())


def adapter_files(model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """(adapter weights named as PeftModel saves them, adapter_config.json text) of `model`'s adapters."""
    peft = _peft()
    config = cast(Any, model).peft_config["default"]
    tensors = {
        _PEFT_PREFIX + name: tensor.detach().contiguous()
        for name, tensor in peft.get_peft_model_state_dict(model, save_embedding_layers=False).items()
    }
    # As PEFT's own save_pretrained writes it: sorted keys, the target set as a list.
    return tensors, json.dumps(config.to_dict(), indent=2, sort_keys=True, default=sorted) + "\n"


def read_adapter_config(directory: Path) -> dict[str, Any]:
    """The adapter_config.json of an adapter directory, as a dict."""
    path = directory / ADAPTER_CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: unreadable adapter config ({error}); save the adapter again") from None
    if not isinstance(data, dict) or data.get("peft_type") != "LORA":
        raise UserError(f"{path}: not a LoRA adapter config (peft_type {data.get('peft_type')!r})")
    return data


def load_adapter(model: nn.Module, directory: Path) -> nn.Module:
    """Inject the LoRA adapters saved in `directory` into `model` (the base they were trained on) and load their
    weights; returns `model`."""
    from safetensors.torch import load_file

    peft = _peft()
    config = peft.LoraConfig.from_pretrained(str(directory))
    peft.inject_adapter_in_model(config, model)
    tensors = {
        name.removeprefix(_PEFT_PREFIX): tensor for name, tensor in load_file(directory / ADAPTER_WEIGHTS_NAME).items()
    }
    outcome = peft.set_peft_model_state_dict(model, tensors)
    unexpected = [name for name in outcome.unexpected_keys if "lora_" in name]
    if unexpected:
        raise UserError(
            f"{directory / ADAPTER_WEIGHTS_NAME}: adapter weights for layers the base lacks: {unexpected[:3]}"
        )
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer and put the plain layer back (the model runs at full speed and
    saves as an ordinary checkpoint); returns `model`."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            adapted: Any = child
            if hasattr(adapted, "lora_A") and hasattr(adapted, "get_base_layer"):
                adapted.merge()
                setattr(parent, name, adapted.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model
