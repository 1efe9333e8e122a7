"""LoRA through PEFT on mambakit's language model: the adapters take part in forward, backward and the recurrent
step; saved adapters load back (by mambakit and by PEFT itself) with identical logits; merging keeps them."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")

from mambakit.models import (  # noqa: E402
    MambaConfig,
    MambaLMHeadModel,
    SamplingConfig,
    generate,
    load_model,
    save_pretrained,
)
from mambakit.models.lora import LORA_TARGETS, add_lora, has_lora, merge_lora  # noqa: E402


def _base(tmp_path):
    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, d_state=8, vocab_size=40))
    return model, save_pretrained(model, tmp_path / "base")


def _trained_adapters(model, base) -> torch.nn.Module:
    """`model` with rank-4 adapters, their B matrices nonzero (as after training) so they change the output."""
    add_lora(model, rank=4, base=base)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    return model


def test_adapters_train_alone_and_change_every_path(tmp_path):
    model, base = _base(tmp_path)
    ids = torch.randint(0, 40, (2, 12))
    before = model(ids).logits.detach()
    add_lora(model, rank=4, base=base)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert {name.split(".")[-4] for name in trainable} == set(LORA_TARGETS)
    # A fresh adapter (B = 0) leaves the model as it was; gradients reach it through the mixer's forward.
    torch.testing.assert_close(model(ids).logits, before)
    model(ids).logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
        logits = model(ids).logits
    assert (logits - before).abs().max() > 1e-3
    # The recurrent step sees the adapters too: generation equals the forward's greedy argmax.
    model.eval()
    prompt = ids[:1, :4]
    out = generate(model, prompt, max_new_tokens=6, sampling=SamplingConfig(temperature=0.0))
    for position in range(4, 10):
        torch.testing.assert_close(model(out[:, :position]).logits[0, -1].argmax(), out[0, position])


def test_saved_adapters_reload_with_identical_logits_in_mambakit_and_peft(tmp_path):
    model, base = _base(tmp_path)
    _trained_adapters(model, base).eval()
    ids = torch.randint(0, 40, (2, 12))
    expected = model(ids).logits.detach()
    saved = save_pretrained(model, tmp_path / "adapter")
    assert sorted(path.name for path in saved.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    unmerged = load_model(saved, merge_adapters=False)
    assert has_lora(unmerged)
    assert torch.equal(unmerged(ids).logits, expected)
    merged = load_model(saved)
    assert not has_lora(merged) and isinstance(merged, MambaLMHeadModel)
    torch.testing.assert_close(merged(ids).logits, expected, atol=1e-5, rtol=1e-5)
    # PEFT's own loader reads the directory onto the base model.
    theirs = peft.PeftModel.from_pretrained(load_model(base), str(saved)).eval()
    assert torch.equal(theirs(ids).logits, expected)


def test_merging_folds_the_adapters_into_plain_layers(tmp_path):
    model, base = _base(tmp_path)
    _trained_adapters(model, base).eval()
    ids = torch.randint(0, 40, (1, 9))
    expected = model(ids).logits.detach()
    merge_lora(model)
    assert not has_lora(model)
    assert all(type(m.mixer.in_proj) is torch.nn.Linear for m in model.backbone.layers)
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
    full = save_pretrained(model, tmp_path / "merged")  # now an ordinary checkpoint
    assert (full / "model.safetensors").is_file()


def test_bad_adapters_are_one_line_errors(tmp_path):
    from mambakit.models import CheckpointError

    model, base = _base(tmp_path)
    with pytest.raises(ValueError, match="not Linear layers of this model; choose among"):
        add_lora(model, rank=4, targets=("q_proj",))
    _trained_adapters(model, base)
    saved = save_pretrained(model, tmp_path / "adapter")
    moved = tmp_path / "moved-base"
    base.rename(moved)
    with pytest.raises(CheckpointError, match="is not a directory here; set base_model_name_or_path"):
        load_model(saved)
