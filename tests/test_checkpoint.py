"""Checkpoints: exact save/load round trips, parity with Hugging Face's independent Mamba on HF and
state-spaces checkpoints, one-line errors for broken checkpoints, atomic writes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mambakit.models import (
    CheckpointError,
    MambaConfig,
    MambaForSequenceClassification,
    MambaForTokenClassification,
    MambaLMHeadModel,
    MambaPreTrainedModel,
    load_model,
    save_pretrained,
)
from mambakit.models import checkpoint as checkpoint_module

# Set before transformers is imported (it reads them at import): nothing in these tests may download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

VOCAB = 101  # not a multiple of 8: state-spaces pads it to 104 rows, Hugging Face does not pad


def _tiny_config(**changes: object) -> MambaConfig:
    return MambaConfig(d_model=32, n_layer=2, vocab_size=VOCAB, d_state=8).replace(**changes)


@torch.no_grad()
def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter away from its initial value (A_log, D, dt bias, norms, zero biases included), so
    that a tensor that was never loaded cannot pass for a loaded one."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def _input_ids(batch: int = 2, length: int = 12) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))
    ids[0, -1] = VOCAB - 1  # the last real token, next to the padding rows
    return ids


def _assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    expected_state, actual_state = expected.state_dict(), actual.state_dict()
    assert expected_state.keys() == actual_state.keys()
    for name, tensor in expected_state.items():
        assert torch.equal(tensor, actual_state[name]), name


def _saved_lm(directory: Path, tie_embeddings: bool = True, seed: int = 0) -> MambaLMHeadModel:
    model = MambaLMHeadModel(_tiny_config(tie_embeddings=tie_embeddings)).eval()
    _perturb(model, seed)
    save_pretrained(model, directory)
    return model


# --- round trips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "head", "tie_embeddings"),
    [
        (MambaLMHeadModel, {}, True),
        (MambaLMHeadModel, {}, False),
        (MambaForSequenceClassification, {"num_labels": 3, "pooling": "last"}, True),
        (MambaForTokenClassification, {"num_labels": 5}, True),
    ],
    ids=["lm-tied", "lm-untied", "sequence-classification", "token-classification"],
)
def test_round_trip_is_exact(tmp_path: Path, cls: type[MambaPreTrainedModel], head: dict, tie_embeddings: bool) -> None:
    model = cls(_tiny_config(tie_embeddings=tie_embeddings), **head).eval()
    _perturb(model)
    save_pretrained(model, tmp_path)
    loaded = load_model(tmp_path)

    assert type(loaded) is cls and not loaded.training
    assert loaded.config == model.config and loaded.head_config() == model.head_config()
    _assert_same_weights(model, loaded)
    if cls is MambaLMHeadModel:
        tied = loaded.lm_head.weight is loaded.backbone.embedding.weight
        assert tied == tie_embeddings
    with torch.no_grad():
        assert torch.equal(model(_input_ids()).logits, loaded(_input_ids()).logits)


def test_tied_weights_are_stored_once(tmp_path: Path) -> None:
    _saved_lm(tmp_path, tie_embeddings=True)
    stored = load_file(tmp_path / "model.safetensors")
    assert "backbone.embedding.weight" in stored and "lm_head.weight" not in stored
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "mambakit" and config["architecture"] == "MambaLMHeadModel"


def test_load_with_dtype_keeps_a_log_and_d_fp32(tmp_path: Path) -> None:
    model = _saved_lm(tmp_path)
    loaded = load_model(tmp_path, dtype=torch.bfloat16)
    mixer = loaded.backbone.layers[0].mixer
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert mixer.A_log.dtype == torch.float32 and mixer.D.dtype == torch.float32
    assert torch.equal(mixer.A_log, model.backbone.layers[0].mixer.A_log)


# --- parity with Hugging Face transformers' MambaForCausalLM ---------------------------------------------------


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def hf_model(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, torch.Tensor]:
    """A perturbed random HF MambaForCausalLM on CPU, and its own fp32 logits on _input_ids().

    On CPU, with use_mambapy=False and outside torch.compile, HF runs its sequential PyTorch scan: an
    implementation independent of ours, with no CUDA kernel involved."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.MambaConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        state_size=8,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
        use_mambapy=False,
        tie_word_embeddings=request.param,
    )
    model = transformers.MambaForCausalLM(config).eval()
    _perturb(model)
    with torch.no_grad():
        logits = model(_input_ids()).logits
    assert logits.shape == (2, 12, VOCAB)
    return model, logits


def _assert_matches_hf(directory: Path, hf_logits: torch.Tensor) -> None:
    loaded = load_model(directory)
    assert isinstance(loaded, MambaLMHeadModel)
    with torch.no_grad():
        logits = loaded(_input_ids()).logits
    assert logits.shape == hf_logits.shape
    assert (logits - hf_logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "pytorch_model.bin"])
def test_hugging_face_checkpoint_matches_hf_forward(tmp_path: Path, hf_model: tuple, layout: str) -> None:
    model, hf_logits = hf_model
    if layout == "pytorch_model.bin":
        # The legacy HF layout: the full state dict (a tied lm_head under both names) pickled.
        model.config.save_pretrained(tmp_path)
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        model.save_pretrained(tmp_path, max_shard_size="20KB" if layout == "sharded" else "5GB")
        assert (tmp_path / "model.safetensors.index.json").exists() == (layout == "sharded")
    _assert_matches_hf(tmp_path, hf_logits)


@pytest.mark.parametrize("weights_name", ["pytorch_model.bin", "model.safetensors"])
def test_state_spaces_checkpoint_matches_hf_forward(tmp_path: Path, hf_model: tuple, weights_name: str) -> None:
    model, hf_logits = hf_model
    hf_config = model.config
    tied = hf_config.tie_word_embeddings
    padded = -(-VOCAB // 8) * 8
    generator = torch.Generator().manual_seed(2)
    state = {
        name.replace("backbone.embeddings.", "backbone.embedding."): tensor.detach().clone()
        for name, tensor in model.state_dict().items()
    }
    for name in ("backbone.embedding.weight", "lm_head.weight"):
        # Padding rows hold whatever the trained model left there: they must never reach the logits.
        pad_rows = torch.randn(padded - VOCAB, hf_config.hidden_size, generator=generator)
        state[name] = torch.cat([state[name], pad_rows])
    if tied:
        state["lm_head.weight"] = state["backbone.embedding.weight"]
        if weights_name == "model.safetensors":
            del state["lm_head.weight"]  # safetensors cannot hold one tensor under two names
    if weights_name == "model.safetensors":
        save_file(state, tmp_path / weights_name)
    else:
        torch.save(state, tmp_path / weights_name)
    config = {
        "d_model": hf_config.hidden_size,
        "n_layer": hf_config.num_hidden_layers,
        "vocab_size": VOCAB,
        "ssm_cfg": {"d_state": hf_config.state_size},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
        "tie_embeddings": tied,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    _assert_matches_hf(tmp_path, hf_logits)


# --- errors ------------------------------------------------------------------------------------------------------


def _rewrite_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _rewrite_weights(directory: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(directory / "model.safetensors")
    change(tensors)
    save_file(tensors, directory / "model.safetensors")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage_state_spaces_bin(directory: Path) -> None:
    (directory / "model.safetensors").unlink()
    (directory / "config.json").write_text(
        json.dumps({"d_model": 32, "n_layer": 2, "vocab_size": VOCAB, "ssm_cfg": {"d_state": 8}})
    )
    (directory / "pytorch_model.bin").write_bytes(os.urandom(4096))


_IN_PROJ = "backbone.layers.0.mixer.in_proj.weight"

#: name -> (how to break a saved checkpoint directory, text the message must contain)
BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing-config": (lambda d: (d / "config.json").unlink(), "config.json"),
    "config-not-json": (lambda d: (d / "config.json").write_text("{not json"), "config.json"),
    "config-unknown-key": (lambda d: _rewrite_config(d, d_modle=64), "d_modle"),
    "unknown-architecture": (lambda d: _rewrite_config(d, architecture="MambaForEverything"), "MambaForEverything"),
    "bad-head-argument": (lambda d: _rewrite_config(d, head={"num_lables": 3}), "num_lables"),
    "missing-weights": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
    "truncated-safetensors": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors"),
    "garbage-pytorch-bin": (_garbage_state_spaces_bin, "pytorch_model.bin"),
    "missing-tensor": (lambda d: _rewrite_weights(d, lambda t: t.pop(_IN_PROJ)), _IN_PROJ),
    "unexpected-tensor": (lambda d: _rewrite_weights(d, lambda t: t.update(extra=torch.zeros(1))), "extra"),
    "misshaped-tensor": (lambda d: _rewrite_weights(d, lambda t: t.update({_IN_PROJ: torch.zeros(3, 3)})), _IN_PROJ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_checkpoint_raises_one_line_naming_the_file(tmp_path: Path, breakage: str) -> None:
    break_it, expected = BREAKAGES[breakage]
    _saved_lm(tmp_path)
    break_it(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path)
    _assert_one_clean_line(info.value, expected)
    assert str(tmp_path) in str(info.value)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "nowhere")
    _assert_one_clean_line(info.value, "nowhere")


def test_pickled_code_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return os.mkdir, (str(marker),)

    _saved_lm(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"backbone.embedding.weight": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path)
    _assert_one_clean_line(info.value, "pytorch_model.bin")
    assert not marker.exists()


def _assert_one_clean_line(error: CheckpointError, expected: str) -> None:
    """One line that names `expected`, raised without a chained library traceback."""
    message = str(error)
    assert "\n" not in message and expected in message, message
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


# --- atomic writes -----------------------------------------------------------------------------------------------


def test_saving_over_a_checkpoint_replaces_it_and_leaves_no_temp_files(tmp_path: Path) -> None:
    _saved_lm(tmp_path, seed=0)
    newer = MambaLMHeadModel(_tiny_config()).eval()
    _perturb(newer, seed=1)
    save_pretrained(newer, tmp_path, extra_files={"tokenizer.json": '{"type": "byte"}', "vocab.bin": b"\x00\x01"})

    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "tokenizer.json", "vocab.bin"]
    assert (tmp_path / "tokenizer.json").read_text() == '{"type": "byte"}'
    assert (tmp_path / "vocab.bin").read_bytes() == b"\x00\x01"
    _assert_same_weights(newer, load_model(tmp_path))


def test_interrupted_save_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _saved_lm(tmp_path, seed=0)
    files_before = sorted(os.listdir(tmp_path))

    def crash_midway(tensors: dict, filename: Path, metadata: dict) -> None:
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "save_file", crash_midway)
    newer = MambaLMHeadModel(_tiny_config()).eval()
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(newer, tmp_path)

    assert sorted(os.listdir(tmp_path)) == files_before
    _assert_same_weights(old, load_model(tmp_path))


def test_extra_file_names_must_be_plain(tmp_path: Path) -> None:
    model = MambaLMHeadModel(_tiny_config())
    for name in ("../escape.json", "config.json"):
        with pytest.raises(ValueError, match="plain file name"):
            save_pretrained(model, tmp_path, extra_files={name: "{}"})


def test_cli_convert_writes_an_equivalent_mambakit_checkpoint(tmp_path: Path, hf_model: tuple) -> None:
    from mambakit.cli import main

    model, hf_logits = hf_model
    model.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "converted")]) == 0
    assert json.loads((tmp_path / "converted" / "config.json").read_text())["model_type"] == "mambakit"
    _assert_matches_hf(tmp_path / "converted", hf_logits)


def test_cli_convert_resaves_a_mambakit_checkpoint_in_float16_with_its_files(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from mambakit.cli import main

    model = MambaLMHeadModel(_tiny_config()).eval()
    save_pretrained(model, tmp_path / "run", extra_files={"run_record.json": '{"domain": "text"}'})
    (tmp_path / "run" / "trainer_state.pt").write_bytes(b"optimizer state")
    assert main(["convert", str(tmp_path / "run"), "--out", str(tmp_path / "half"), "--dtype", "float16"]) == 0
    half = tmp_path / "half"
    assert sorted(p.name for p in half.iterdir()) == ["config.json", "model.safetensors", "run_record.json"]
    assert {t.dtype for t in load_file(half / "model.safetensors").values()} == {torch.float16}
    loaded = load_model(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=2e-2, rtol=2e-2)
    assert main(["convert", str(tmp_path / "run"), "--out", str(tmp_path / "x"), "--dtype", "int8"]) != 0
