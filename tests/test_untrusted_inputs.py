"""Configs and files from untrusted sources (#15): every config value is checked against its field's type and
named when wrong, sizes above sanity limits are refused before anything is allocated, no file a user hands us runs
pickled code, and tampered app files are one line naming the file (exit code 2 from the CLI), never a traceback."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from mambakit import validation
from mambakit.cli import main
from mambakit.domains import RunRecord
from mambakit.errors import UserError
from mambakit.models import (
    CheckpointError,
    MambaConfig,
    MambaForSequenceClassification,
    MambaLMHeadModel,
    MambaModel,
    load_model,
    save_pretrained,
)
from mambakit.train import Task, TrainConfig, fit
from mambakit.train.checkpointing import read_trainer_state

ROOT = Path(__file__).resolve().parent.parent
LIMIT_HINT = "(set MAMBAKIT_ALLOW_LARGE_MODELS=1 if you mean it)"


def _one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the CLI in this process; it must exit with code 2 and print exactly one line, which is returned."""
    code = main(list(args))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, lines)
    assert lines[0].startswith("mambakit: error: ") and "Traceback" not in lines[0]
    return lines[0]


def _saved_lm(directory: Path, **changes: Any) -> Path:
    model = MambaLMHeadModel(MambaConfig(d_model=8, n_layer=1, vocab_size=10, **changes))
    return save_pretrained(model, directory)


def _rewrite_config(directory: Path, **changes: Any) -> Path:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return path


# --- 1. typed config values ---------------------------------------------------------------------------------------

#: config.json change -> what the one line says after the file's path
CONFIG_TYPE_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "quoted-bool": ({"rms_norm": "false"}, "rms_norm must be true or false, got 'false' (a string)"),
    "quoted-float": ({"norm_epsilon": "1e-5"}, "norm_epsilon must be a number, got '1e-5' (a string)"),
    "quoted-dt-min": ({"dt_min": "0.01"}, "dt_min must be a number, got '0.01' (a string)"),
    "bool-float": ({"dt_scale": True}, "dt_scale must be a number, got True (a boolean)"),
    "nan-float": ({"dt_scale": float("nan")}, "dt_scale must be a number, got nan (not finite)"),
    "fraction-int": ({"n_layer": 1.5}, "n_layer must be an integer, got 1.5 (a number)"),
    "bool-int": ({"vocab_size": True}, "vocab_size must be an integer, got True (a boolean)"),
    "list-item": ({"attn_layer_idx": ["0"]}, "attn_layer_idx[0] must be an integer, got '0' (a string)"),
    "union": ({"dt_rank": [2]}, "dt_rank must be an integer or a string, got [2] (a list)"),
    "section": ({"ssm_cfg": [1]}, "ssm_cfg must be a mapping or null, got [1] (a list)"),
    "nullable-int": ({"pad_token_id": "0"}, "pad_token_id must be an integer or null, got '0' (a string)"),
}


@pytest.mark.parametrize("case", list(CONFIG_TYPE_ERRORS))
def test_checkpoint_config_values_are_checked_against_their_types(tmp_path: Path, case: str) -> None:
    change, message = CONFIG_TYPE_ERRORS[case]
    config_path = _rewrite_config(_saved_lm(tmp_path), **change)
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path)
    assert str(info.value) == f"{config_path}: {message}"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_numbers_of_the_other_json_kind_load_as_the_field_type(tmp_path: Path) -> None:
    # JSON writers that know only doubles write 1 as 1.0; an int is a fine float.
    _rewrite_config(_saved_lm(tmp_path), n_layer=1.0, dt_scale=1, attn_layer_idx=[])
    config = load_model(tmp_path).config
    assert config.n_layer == 1 and type(config.n_layer) is int and config.dt_scale == 1


def test_hugging_face_keys_are_named_as_in_the_file() -> None:
    hf = {"model_type": "mamba", "hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 10}
    with pytest.raises(ValueError, match=r"^config: layer_norm_epsilon must be a number, got '1e-5' \(a string\)$"):
        MambaConfig.from_dict({**hf, "layer_norm_epsilon": "1e-5"})
    with pytest.raises(ValueError, match=r"^config: tie_word_embeddings must be true or false, got 'no' \(a string\)$"):
        MambaConfig.from_dict({**hf, "tie_word_embeddings": "no"})
    assert MambaConfig.from_dict({**hf, "eos_token_id": []}).eos_token_id is None


def test_state_spaces_attn_cfg_values_are_typed() -> None:
    data = {"d_model": 16, "n_layer": 2, "attn_layer_idx": [1]}
    with pytest.raises(ValueError, match=r"^config: attn_cfg.num_heads must be an integer, got '4' \(a string\)$"):
        MambaConfig.from_dict({**data, "attn_cfg": {"num_heads": "4"}})
    with pytest.raises(ValueError, match=r"^config: attn_cfg must be a mapping, got 'x' \(a string\)$"):
        MambaConfig.from_dict({**data, "attn_cfg": "x"})
    assert MambaConfig.from_dict({**data, "attn_cfg": {"num_heads": 4}}).attn_num_heads == 4


def test_app_configs_are_typed_too(tmp_path: Path) -> None:
    from mambakit.apps.audio.models import AudioConfig
    from mambakit.apps.genomics.models import GenomicsMambaConfig
    from mambakit.apps.vision.classifier import VisionConfig

    for cls, data, message in (
        (GenomicsMambaConfig, {"rc_equivariant": "false"}, "rc_equivariant must be true or false, got 'false'"),
        (GenomicsMambaConfig, {"complement_map": "ACGT"}, "complement_map must be a list of integers or null"),
        (AudioConfig, {"pools": [4, "4"]}, "pools[1] must be an integer, got '4' (a string)"),
        (AudioConfig, {"selective": [True, "false", True]}, "selective[1] must be true or false, got 'false'"),
        (VisionConfig, {"num_classes": "10"}, "num_classes must be an integer, got '10' (a string)"),
        (VisionConfig, {"model_kwargs": [1]}, "model_kwargs must be a mapping, got [1] (a list)"),
    ):
        with pytest.raises(ValueError, match=r"^config: ") as info:
            cls.from_dict(data)
        assert message in str(info.value), (cls, data)
    # Through the checkpoint loader, with the file named.
    model = MambaForSequenceClassification(GenomicsMambaConfig(d_model=8, n_layer=1, vocab_size=12), num_labels=2)
    config_path = _rewrite_config(save_pretrained(model, tmp_path), bidirectional="false")
    with pytest.raises(CheckpointError, match=f"^{config_path}: bidirectional must be true or false, got 'false'"):
        load_model(tmp_path)
    config_path = _rewrite_config(tmp_path, bidirectional=False, head={"num_labels": "2"})
    with pytest.raises(CheckpointError, match=f"^{config_path}: head.num_labels must be an integer, got '2'"):
        load_model(tmp_path)


#: --config text -> what the one line says after the file's path
CONFIG_FILE_ERRORS: dict[str, tuple[str, str]] = {
    "data-number": ("data: 3", "data must be a path (a non-empty string) or a list of paths, got 3 (an integer)"),
    "data-mixed-list": ("data: [corpus.txt, 3]", "data[1] must be a path (a non-empty string), got 3 (an integer)"),
    "data-mapping": (
        "data: {a: 1}",
        "data must be a path (a non-empty string) or a list of paths, got {'a': 1} (a mapping)",
    ),
    "data-null": ("data: null", "data must be a path (a non-empty string) or a list of paths, got None (null)"),
    "out-list": ("out: [1]", "out must be a path (a non-empty string) or null, got [1] (a list)"),
    "quoted-switch": ("resume: 'false'", "resume must be true or false, got 'false' (a string)"),
    "quoted-steps": ("max_steps: '2'", "max_steps must be an integer or null, got '2' (a string)"),
    "quoted-seed": ("seed: '5'", "seed must be an integer, got '5' (a string)"),
    "model-list": ("model: [1]", "model must be a mapping, got [1] (a list)"),
    "domain-option-type": ("seq_len: '32'", "seq_len must be an integer, got '32' (a string)"),
    "domain-option-bound": ("seq_len: 2", "seq_len must be at least 8 (as --seq-len), got 2"),
    "domain-option-bool": ("lora_rank: true", "lora_rank must be an integer, got True (a boolean)"),
    "domain-option-fraction": ("lora_dropout: 1.5", "lora_dropout must be in 0.0 to 1.0 (as --lora-dropout), got 1.5"),
}


@pytest.mark.parametrize("case", list(CONFIG_FILE_ERRORS))
def test_config_file_values_are_checked_against_their_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    text, message = CONFIG_FILE_ERRORS[case]
    config = tmp_path / "run.yaml"
    config.write_text(text + "\n")
    out = tmp_path / "run"
    line = _one_line_error(capsys, "train", "text", "--config", str(config), "--out", str(out))
    assert line == f"mambakit: error: {config}: {message}"
    assert not out.exists()


def test_model_settings_of_a_config_file_are_typed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    out = tmp_path / "run"
    for settings, message in (
        ("{rms_norm: 'false'}", "rms_norm must be true or false, got 'false' (a string)"),
        ("{norm_epsilon: '1e-5'}", "norm_epsilon must be a number, got '1e-5' (a string)"),
        ("{dt_min: '0.01'}", "dt_min must be a number, got '0.01' (a string)"),
    ):
        config.write_text(f"model: {settings}\n")
        line = _one_line_error(capsys, "train", "synthetic", "--config", str(config), "--out", str(out))
        sources = "--preset tiny and the --config file's model: section"
        assert line == f"mambakit: error: model settings ({sources}): {message}", line
        assert not out.exists()


def test_describing_types_and_values() -> None:
    check = validation.checked_value
    assert check("betas", [0.9, 1], tuple[float, float]) == (0.9, 1)
    assert check("layers", [1.0, 2], tuple[int, ...]) == (1, 2)
    assert check("out", "runs/a", Path | None) == Path("runs/a")
    for value, annotation, message in (
        ([0.9], tuple[float, float], "config: betas must be a list of 2 numbers, got [0.9] (a list)"),
        ("", Path, "config: betas must be a path (a non-empty string), got '' (a string)"),
        (float("inf"), float, "config: betas must be a number, got inf (not finite)"),
        ({1: 2}, dict[str, Any], "config: betas must be a mapping, got {1: 2} (a mapping)"),
        ("x" * 100, int, f"config: betas must be an integer, got '{'x' * 56}... (a string)"),
    ):
        with pytest.raises(ValueError) as info:
            check("betas", value, annotation)
        assert str(info.value) == message


# --- 2. size sanity limits ----------------------------------------------------------------------------------------

SIZE_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "d_model": ({"d_model": 10**9}, f"d_model 1000000000 is above the sanity limit 65536 {LIMIT_HINT}"),
    "n_layer": ({"n_layer": 10**7}, f"n_layer 10000000 is above the sanity limit 1024 {LIMIT_HINT}"),
    "vocab": ({"vocab_size": 10**9}, f"vocab_size 1000000000 is above the sanity limit 16777216 {LIMIT_HINT}"),
    "d_state": ({"ssm_cfg": {"d_state": 10**6}}, f"d_state 1000000 is above the sanity limit 4096 {LIMIT_HINT}"),
    "parameters": (
        {"d_model": 65536, "n_layer": 1000},
        f"the model would have about 2.69e+13 parameters, above the sanity limit 1e+11 {LIMIT_HINT}",
    ),
}


@pytest.mark.parametrize("case", list(SIZE_ERRORS))
def test_sizes_above_the_sanity_limits_are_refused_before_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    change, message = SIZE_ERRORS[case]
    config_path = _rewrite_config(_saved_lm(tmp_path), **change)

    def allocate(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was built from an oversized config")

    monkeypatch.setattr(MambaModel, "__init__", allocate)
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path)
    assert str(info.value) == f"{config_path}: {message}"


def test_the_override_lifts_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    wide = {"d_model": 70000, "n_layer": 1, "vocab_size": 0}
    with pytest.raises(ValueError, match="d_model 70000 is above the sanity limit 65536"):
        MambaConfig.from_dict(wide)
    monkeypatch.setenv(validation.ALLOW_LARGE_MODELS, "1")
    assert MambaConfig.from_dict(wide).d_model == 70000


def test_a_config_file_asking_for_a_huge_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: {d_model: 1000000000}\n")
    out = tmp_path / "run"
    line = _one_line_error(capsys, "train", "synthetic", "--config", str(config), "--out", str(out))
    assert line.endswith(f"d_model 1000000000 is above the sanity limit 65536 {LIMIT_HINT}")
    assert not out.exists()


#: Published checkpoints' shapes (state-spaces config.json, or their mambakit keys): they load without the override.
PUBLISHED = {
    "state-spaces/mamba-130m": {"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {}},
    "state-spaces/mamba-2.8b": {"d_model": 2560, "n_layer": 64, "vocab_size": 50277, "ssm_cfg": {}},
    "state-spaces/mamba-2.8b-hf": {"model_type": "mamba", "hidden_size": 2560, "num_hidden_layers": 64},
    "tiiuae/falcon-mamba-7b": {"d_model": 4096, "n_layer": 64, "vocab_size": 65024, "tie_embeddings": False},
    "mistralai/Mamba-Codestral-7B": {"d_model": 4096, "n_layer": 64, "vocab_size": 32768, "d_state": 128},
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_mamba_shapes_are_within_the_limits(name: str) -> None:
    config = MambaConfig.from_dict(PUBLISHED[name])
    assert config.estimated_parameters() < validation.MAX_PARAMETERS / 10


def test_parameter_estimates_match_the_built_models() -> None:
    from mambakit.apps.audio.models import AudioConfig, AudioLM

    from mambakit.models import MambaForMaskedLM

    for changes in (
        {},
        {"tie_embeddings": False, "bias": True, "conv_bias": False, "rms_norm": False},
        {"selective": False, "dt_rank": 3, "d_state": 5, "d_conv": 3, "expand": 3},
        {"d_intermediate": 128, "attn_layer_idx": (1,), "attn_positions": "learned", "attn_num_heads": 4},
    ):
        config = MambaConfig(d_model=16, n_layer=2, vocab_size=10, max_position_embeddings=32, **changes)
        with torch.device("meta"):
            built = MambaLMHeadModel(config)
        assert sum(p.numel() for p in built.parameters()) == config.estimated_parameters(), changes
    for tie in (True, False):
        config = MambaConfig(d_model=16, n_layer=2, vocab_size=10, bidirectional=True, bidirectional_weight_tie=tie)
        with torch.device("meta"):
            built = MambaForMaskedLM(config)
        assert sum(p.numel() for p in built.parameters()) == config.estimated_parameters()
    audio = AudioConfig(d_model=16, n_layers=1, pools=(2, 3), expand=3, selective=(False, True, True), num_classes=2)
    with torch.device("meta"):
        built = AudioLM(audio, labels=["a", "b"])
    assert sum(p.numel() for p in built.parameters()) == audio.estimated_parameters()


def test_app_configs_have_sanity_limits() -> None:
    from mambakit.apps.audio.models import AudioConfig
    from mambakit.apps.genomics.models import GenomicsMambaConfig
    from mambakit.apps.vision.classifier import VisionConfig

    for cls, data, message in (
        (GenomicsMambaConfig, {"n_layer": 10**7}, "n_layer 10000000 is above the sanity limit 1024"),
        (AudioConfig, {"d_model": 10**6}, "d_model 1000000 is above the sanity limit 65536"),
        (AudioConfig, {"pools": [4] * 600, "selective": [True] * 601}, "the block count n_layers * (2 * len(pools)"),
        (AudioConfig, {"d_model": 4096, "expand": 16}, "the centre's width d_model * expand ** len(pools) 1048576"),
        (
            AudioConfig,
            {"d_model": 16384, "n_layers": 100, "pools": [2], "selective": [True, True]},
            "the model would have about 1.01e+12 parameters",
        ),
        (VisionConfig, {"model_kwargs": {"dims": 10**6}}, "model_kwargs.dims 1000000 is above the sanity limit"),
        (VisionConfig, {"model_kwargs": {"depths": [2000, 1]}}, "the layer count of model_kwargs.depths 2001 is above"),
        (VisionConfig, {"model_kwargs": {"dims": 8192}}, "the model would have about 1.08e+11 parameters"),
        (VisionConfig, {"num_classes": 10**9}, "num_classes 1000000000 is above the sanity limit 16777216"),
    ):
        with pytest.raises(ValueError) as info:
            cls.from_dict(data)
        assert str(info.value).startswith("config: ") and message in str(info.value), (cls, data, str(info.value))
        assert str(info.value).endswith(LIMIT_HINT)


# --- 3. no pickled code runs -------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates `marker`: code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (str(self.marker), "w")


def _malicious(path: Path, marker: Path, wrap: Callable[[Any], Any] = lambda p: {"weight": p}) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(_Payload(marker)), path)
    return path


def test_the_payload_runs_code_when_unpickled_unsafely(tmp_path: Path) -> None:
    """The guard of every test below: loading the payload without weights_only does create the marker."""
    marker = tmp_path / "code-ran"
    torch.load(_malicious(tmp_path / "evil.bin", marker), weights_only=False)
    assert marker.exists()


def _mambakit_dir(directory: Path, marker: Path) -> Path:
    _saved_lm(directory)
    (directory / "model.safetensors").unlink()
    _malicious(directory / "pytorch_model.bin", marker, lambda p: {"backbone.embedding.weight": p})
    return directory / "pytorch_model.bin"


def _state_spaces_dir(directory: Path, marker: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"d_model": 8, "n_layer": 1, "vocab_size": 10, "ssm_cfg": {}}))
    return _malicious(directory / "pytorch_model.bin", marker)


def _hugging_face_dir(directory: Path, marker: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(
        json.dumps({"model_type": "mamba", "hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 16})
    )
    return _malicious(directory / "pytorch_model.bin", marker)


def _sharded_dir(directory: Path, marker: Path) -> Path:
    _state_spaces_dir(directory, marker).rename(directory / "pytorch_model-00001-of-00001.bin")
    index = {"weight_map": {"backbone.embedding.weight": "pytorch_model-00001-of-00001.bin"}}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return directory / "pytorch_model-00001-of-00001.bin"


CHECKPOINT_DIRS = {
    "mambakit-bin": _mambakit_dir,
    "state-spaces": _state_spaces_dir,
    "hugging-face": _hugging_face_dir,
    "sharded-bin": _sharded_dir,
}
REFUSED_PICKLE = "hold objects besides tensors, which are not loaded for safety"


@pytest.mark.parametrize("kind", list(CHECKPOINT_DIRS))
def test_checkpoint_weights_never_run_pickled_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    marker = tmp_path / "code-ran"
    directory = tmp_path / "checkpoint"
    weights = CHECKPOINT_DIRS[kind](directory, marker)
    with pytest.raises(CheckpointError) as info:
        load_model(directory)
    assert str(info.value).startswith(f"{weights}: not a readable PyTorch weights file (UnpicklingError)")
    assert REFUSED_PICKLE in str(info.value) and "\n" not in str(info.value)
    line = _one_line_error(capsys, "convert", str(directory), "--out", str(tmp_path / "converted"))
    assert f"{weights}: not a readable PyTorch weights file" in line and REFUSED_PICKLE in line
    assert not (tmp_path / "converted").exists() and not marker.exists()


def test_cli_commands_that_load_checkpoints_never_run_pickled_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "code-ran"
    directory = tmp_path / "checkpoint"
    weights = _state_spaces_dir(directory, marker)
    (directory / "tokenizer.json").write_text('{"kind": "bytes"}')  # --init-from reads it before the weights
    for args in (
        ["generate", "text", "--checkpoint", str(directory), "--max-new-tokens", "2"],
        ["eval", "genomics", "--checkpoint", str(directory)],
        ["train", "text", "--init-from", str(directory), "--out", str(tmp_path / "run"), "--max-steps", "1"],
    ):
        line = _one_line_error(capsys, *args)
        assert f"{weights}: not a readable PyTorch weights file" in line, (args, line)
    assert not marker.exists() and not (tmp_path / "run").exists()


def _malicious_trainer_state(out_dir: Path, marker: Path) -> Path:
    return _malicious(out_dir / "last" / "trainer_state.pt", marker, lambda p: {"optimizer": p, "step": 3})


def test_resume_never_runs_pickled_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "code-ran"
    out = tmp_path / "run"
    state = _malicious_trainer_state(out, marker)
    message = f"{state}: the trainer state holds objects that only code run from the file could rebuild"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        read_trainer_state(state.parent)
    model = MambaLMHeadModel(MambaConfig(d_model=8, n_layer=1, vocab_size=10))
    examples = [{"input_ids": torch.arange(6), "labels": torch.arange(6)}] * 4
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        fit(model, Task(), examples, config=TrainConfig(out_dir=out, max_steps=1, batch_size=2, resume=True))
    line = _one_line_error(capsys, "train", "synthetic", "--resume", "--out", str(out), "--max-steps", "1")
    assert line.startswith(f"mambakit: error: {message}")
    assert not marker.exists()


def _vmamba_release(path: Path, marker: Path) -> Path:
    """An official-looking VMamba .pth: weights of test_vmamba, a yacs-like config holding the payload."""
    import mambakit.apps.vision  # noqa: F401 - registers the VMamba models with timm
    import timm

    state = timm.create_model("test_vmamba", num_classes=10).state_dict()
    return _malicious(path, marker, lambda p: {"model": state, "config": {"MODEL": {"NAME": p}}, "epoch": 3})


def test_vmamba_release_files_never_run_pickled_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import timm
    from mambakit.apps.vision.checkpoints import VisionCheckpointError, read_official_checkpoint

    marker = tmp_path / "code-ran"
    release = _vmamba_release(tmp_path / "vssm_evil.pth", marker)
    # torch pickles the builtin open as io.open
    refused = re.escape(f"{release}: refused: its pickle needs io.open; mambakit loads only weights")
    with pytest.raises(VisionCheckpointError, match=f"^{refused}"):
        read_official_checkpoint(release)
    with pytest.raises(VisionCheckpointError, match=f"^{refused}"):
        timm.create_model("test_vmamba", num_classes=10, pretrained=True, pretrained_cfg_overlay={"file": str(release)})
    image = tmp_path / "image.png"
    image.write_bytes(b"")  # predict reads its --data after loading the weights
    predictions = tmp_path / "predictions.csv"
    for model, refusal in (
        ("test_vmamba", "refused: its pickle needs io.open; mambakit loads only weights"),
        ("resnet18", "cannot load into resnet18 (weights_only=True blocked loading"),  # timm's own loader
    ):
        line = _one_line_error(
            capsys,
            "predict",
            "vision",
            "-c",
            str(release),
            "--model",
            model,
            "--data",
            str(image),
            "--out",
            str(predictions),
        )
        assert line.startswith(f"mambakit: error: {release}: {refusal}"), line
    assert not marker.exists() and not predictions.exists()


def test_every_load_in_the_package_is_weights_only() -> None:
    """torch.load only with weights_only=True, numpy loads only with allow_pickle=False, and no pickle module
    loads at all, anywhere in mambakit and its apps."""
    offences = []
    for path in sorted([*ROOT.joinpath("mambakit").rglob("*.py"), *ROOT.joinpath("apps").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = ast.unparse(node.func.value)
            keywords = {keyword.arg: ast.unparse(keyword.value) for keyword in node.keywords}
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if (owner, node.func.attr) == ("torch", "load") and keywords.get("weights_only") != "True":
                offences.append(f"{where}: torch.load without weights_only=True")
            if owner in ("np", "numpy") and node.func.attr == "load" and keywords.get("allow_pickle") != "False":
                offences.append(f"{where}: numpy load without allow_pickle=False")
            if owner in ("pickle", "dill", "cloudpickle") and node.func.attr in ("load", "loads", "Unpickler"):
                offences.append(f"{where}: {owner}.{node.func.attr}")
    assert not offences, offences


# --- 4. tampered app files ---------------------------------------------------------------------------------------


def _genomics_checkpoint(directory: Path, labels: list[str] | None = None, record: bool = True) -> Path:
    from mambakit.apps.genomics.models import GenomicsMambaConfig
    from mambakit.apps.genomics.tokenizer import DNATokenizer

    config = GenomicsMambaConfig(d_model=8, n_layer=1, vocab_size=12, pad_token_id=4)
    model = MambaForSequenceClassification(config, num_labels=2, labels=labels)
    files = {"tokenizer.json": DNATokenizer().to_json()}
    if record:
        files["run_record.json"] = RunRecord("genomics", "classify").to_json()
    return save_pretrained(model, directory, extra_files=files)


LEGACY_RECORD_ERRORS = {
    "list": ("[1, 2]", "genomics.json: expected a JSON object (the legacy run record), got a JSON list"),
    "fewer-classes": ('{"classes": ["x"]}', "genomics.json: classes lists 1 names, but the model has 2 classes"),
    "classes-string": ('{"classes": "xy"}', "genomics.json: classes must be a list of strings or null, got 'xy'"),
    "quoted-seq-len": ('{"seq_len": "64"}', "genomics.json: seq_len must be an integer or null, got '64' (a string)"),
}


@pytest.mark.parametrize("case", list(LEGACY_RECORD_ERRORS))
def test_a_tampered_legacy_genomics_record_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    content, message = LEGACY_RECORD_ERRORS[case]
    legacy = _genomics_checkpoint(tmp_path / "legacy", record=False)  # its labels come from genomics.json
    (legacy / "genomics.json").write_text(content)
    sequences = tmp_path / "seqs.fa"
    sequences.write_text(">a\nACGTACGTAAAC\n")
    out = tmp_path / "predictions.csv"
    line = _one_line_error(
        capsys, "predict", "genomics", "-c", str(legacy), "--data", str(sequences), "--out", str(out)
    )
    assert line.startswith(f"mambakit: error: {legacy}/{message}"), line
    assert not out.exists()


def test_tampered_genomics_labels_and_tokenizer_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labelled = _genomics_checkpoint(tmp_path / "labelled", labels=["mafk", "oct4"])
    config_path = _rewrite_config(labelled, head={"num_labels": 2, "labels": ["mafk"], "pooling": "mean"})
    line = _one_line_error(capsys, "eval", "genomics", "-c", str(labelled))
    assert line.startswith(f"mambakit: error: {config_path}: cannot build MambaForSequenceClassification")
    assert line.endswith("labels must name each of the 2 classes, got ['mafk']")
    tokenized = _genomics_checkpoint(tmp_path / "tokenizer")
    (tokenized / "tokenizer.json").write_text("[]")
    line = _one_line_error(capsys, "eval", "genomics", "-c", str(tokenized))
    assert line == (
        f"mambakit: error: {tokenized}/tokenizer.json: expected a JSON object (the genomics tokenizer), got a JSON "
        f"list; restore the checkpoint's tokenizer.json"
    )


def test_tampered_text_tokenizer_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mambakit.apps.text.tokenizer import ByteTokenizer

    directory = save_pretrained(
        MambaLMHeadModel(MambaConfig(d_model=8, n_layer=1, vocab_size=257)),
        tmp_path / "lm",
        extra_files={"tokenizer.json": "[]", "run_record.json": RunRecord("text", "lm").to_json()},
    )
    line = _one_line_error(capsys, "generate", "text", "-c", str(directory), "--max-new-tokens", "2")
    assert line == (
        f"mambakit: error: {directory}/tokenizer.json: neither mambakit's byte tokenizer nor a Hugging Face "
        f"tokenizer.json (a JSON list (not an object)); restore the checkpoint's tokenizer.json"
    )
    with pytest.raises(ValueError, match=r"^lm/tokenizer.json: a JSON list \(not an object\) is not mambakit's byte"):
        ByteTokenizer.from_json("[]", "lm/tokenizer.json")


def test_a_config_json_that_cannot_be_read_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = _saved_lm(tmp_path / "lm")
    (directory / "config.json").unlink()
    (directory / "config.json").mkdir()  # unreadable as a file, for root too
    with pytest.raises(CheckpointError, match=f"^{directory}/config.json: cannot read the config \\(Is a directory\\)"):
        load_model(directory)
    line = _one_line_error(capsys, "generate", "text", "-c", str(directory), "--max-new-tokens", "2")
    assert line.startswith(f"mambakit: error: {directory}/config.json: cannot read the config")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_config_json_without_read_permission_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = _saved_lm(tmp_path / "lm")
    (directory / "config.json").chmod(0)
    try:
        line = _one_line_error(capsys, "generate", "text", "-c", str(directory), "--max-new-tokens", "2")
    finally:
        (directory / "config.json").chmod(0o644)
    assert line == (
        f"mambakit: error: {directory}/config.json: cannot read the config (Permission denied); check that it is a "
        f"file you may read"
    )
    shutil.rmtree(directory)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"version": "2"}, "version must be an integer, got '2' (a string)"),
        ({"options": []}, "options must be a mapping, got [] (a list)"),
    ],
)
def test_a_tampered_run_record_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], record: dict, message: str
) -> None:
    from mambakit.apps.text.tokenizer import ByteTokenizer

    directory = save_pretrained(
        MambaLMHeadModel(MambaConfig(d_model=8, n_layer=1, vocab_size=257)),
        tmp_path / "lm",
        extra_files={
            "run_record.json": json.dumps({"domain": "text", "task": "lm", **record}),
            "tokenizer.json": ByteTokenizer().to_json(),
        },
    )
    line = _one_line_error(capsys, "generate", "text", "-c", str(directory), "--max-new-tokens", "2")
    assert line == f"mambakit: error: {directory}/run_record.json: {message}"


def test_domain_options_of_a_run_record_are_typed() -> None:
    from mambakit.domains import load_domains

    text = load_domains("text")["text"]
    with pytest.raises(UserError, match=r"^run_record.json: seq_len must be an integer, got '64' \(a string\)$"):
        text.options_from_json({"seq_len": "64"}, "run_record.json")
    assert text.options_from_json({"init_from": "base"}, "run_record.json").init_from == Path("base")
