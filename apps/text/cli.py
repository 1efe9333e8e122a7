"""`mambakit train|eval|generate text`: byte-level language models on text files (default: Python's standard
library sources, present on every machine with Python)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from mambakit.cli_support import (
    BatchSizeOption,
    CheckpointOption,
    ConfigOption,
    CudaGraphOption,
    DataOption,
    DeviceOption,
    EpochsOption,
    LrOption,
    MaxStepsOption,
    OutOption,
    PresetOption,
    ResumeOption,
    SeedOption,
    TaskOption,
    UserError,
    announce,
    build_model_config,
    print_metrics,
    resolve_device,
    resolve_run_options,
    run_training,
)
from mambakit.domains import Domain

TASKS = ("lm",)
PRESETS = {
    "tiny": {"d_model": 128, "n_layer": 2, "d_state": 16},
    "small": {"d_model": 384, "n_layer": 8, "d_state": 16},
    "base": {"d_model": 768, "n_layer": 24, "d_state": 16},
}
TRAIN_DEFAULTS = {"max_steps": 300, "batch_size": 16, "lr": 3e-3, "warmup_steps": 30, "eval_every": 100,
                  "save_every": 100, "log_every": 10}
SeqLenOption = Annotated[int, typer.Option("--seq-len", min=8, help="Bytes per training window.")]


def _corpus_streams(data: list[Path]):  # noqa: ANN202
    from .data import default_corpus_files, encode_split, expand_paths, read_documents
    from .tokenizer import ByteTokenizer

    files = expand_paths(data) if data else default_corpus_files()
    return encode_split(read_documents(files), ByteTokenizer()), len(files)


def train(
    data: DataOption = None,
    task: TaskOption = None,
    out: OutOption = None,
    max_steps: MaxStepsOption = None,
    epochs: EpochsOption = None,
    batch_size: BatchSizeOption = None,
    lr: LrOption = None,
    device: DeviceOption = None,
    preset: PresetOption = None,
    config: ConfigOption = None,
    resume: ResumeOption = False,
    seed: SeedOption = None,
    seq_len: SeqLenOption = 256,
) -> None:
    """Train a byte-level Mamba language model; prints held-out bits per byte. Without --data it trains on
    about 3 MB of Python's own standard-library sources."""
    import torch

    from mambakit.datasets import TokenWindows
    from mambakit.models import MambaLMHeadModel
    from mambakit.train.lm_task import CausalLMTask

    from .tokenizer import ByteTokenizer

    run = resolve_run_options(config, data=data, task=task, out=out, max_steps=max_steps, epochs=epochs,
                              batch_size=batch_size, lr=lr, device=device, preset=preset, resume=resume, seed=seed)
    if (run.task or "lm") not in TASKS:
        raise UserError(f"unknown text task {run.task!r}; choose one of {', '.join(TASKS)}")
    tokenizer = ByteTokenizer()
    (train_tokens, eval_tokens), n_files = _corpus_streams(run.data)
    train_data, eval_data = TokenWindows(train_tokens, seq_len), TokenWindows(eval_tokens, seq_len)
    if len(train_data) == 0 or len(eval_data) == 0:
        raise UserError(f"the text is too short for --seq-len {seq_len}: {len(train_tokens)} training and "
                        f"{len(eval_tokens)} held-out bytes; give more text or a smaller --seq-len")
    torch.manual_seed(run.seed)
    model = MambaLMHeadModel(build_model_config(
        PRESETS, run, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    announce(f"text: {n_files} files, {len(train_tokens):,} training / {len(eval_tokens):,} held-out bytes; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    run_training("text", replace(run, task="lm"), model, CausalLMTask("byte"),
                 train_data, eval_data, TRAIN_DEFAULTS, {"tokenizer.json": tokenizer.to_json()})


def _load(checkpoint: Path, device: str):  # noqa: ANN202
    from mambakit.models import MambaLMHeadModel, load_model

    from .tokenizer import ByteTokenizer

    model = load_model(checkpoint, device=resolve_device(device))
    if not isinstance(model, MambaLMHeadModel):
        raise UserError(f"{checkpoint}: holds a {model.architecture}, not a language model")
    tokenizer_file = checkpoint / "tokenizer.json"
    if not tokenizer_file.exists():
        raise UserError(f"{tokenizer_file}: missing; this checkpoint was not written by `mambakit train text`")
    try:
        tokenizer = ByteTokenizer.from_json(tokenizer_file.read_text())
    except ValueError as error:
        raise UserError(f"{tokenizer_file}: {error}") from None
    return model, tokenizer


def evaluate(
    checkpoint: CheckpointOption,
    data: DataOption = None,
    device: DeviceOption = None,
    batch_size: BatchSizeOption = None,
    seq_len: SeqLenOption = 256,
) -> None:
    """Bits per byte of a text checkpoint on text files (default: the held-out part of the default corpus)."""
    from mambakit.datasets import TokenWindows
    from mambakit.train import TrainConfig
    from mambakit.train import evaluate as evaluate_model
    from mambakit.train.lm_task import CausalLMTask

    model, _ = _load(checkpoint, device or "auto")
    (_, eval_tokens), _ = _corpus_streams(list(data or []))
    windows = TokenWindows(eval_tokens, seq_len)
    if len(windows) == 0:
        raise UserError(f"the text is too short for --seq-len {seq_len}; give more text or a smaller --seq-len")
    config = TrainConfig(out_dir=checkpoint, max_steps=1, batch_size=batch_size or 16,
                         device=resolve_device(device or "auto"))
    print_metrics(f"text: {checkpoint}", evaluate_model(model, CausalLMTask("byte"), windows, config))


def generate(
    checkpoint: CheckpointOption,
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")] = "def ",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Bytes to generate.")] = 200,
    temperature: Annotated[float, typer.Option(min=0.0, help="0: greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option("--top-k", min=0, help="Keep the k most likely bytes (0: all).")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass.")] = 0.95,
    min_p: Annotated[float, typer.Option("--min-p", min=0.0, max=1.0, help="Drop bytes below min_p x max.")] = 0.0,
    repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", min=0.0)] = 1.0,
    seed: SeedOption = None,
    device: DeviceOption = None,
    cuda_graph: CudaGraphOption = None,
) -> None:
    """Continue a prompt with a text checkpoint, streaming the bytes as they come."""
    import sys

    import torch

    from mambakit.models import SamplingConfig
    from mambakit.models import generate as generate_ids

    model, tokenizer = _load(checkpoint, device or "auto")
    ids = tokenizer.encode(prompt) or [tokenizer.bos_token_id]
    device_of_model = next(model.parameters()).device
    if cuda_graph and device_of_model.type != "cuda":
        raise UserError(f"--cuda-graph needs the model on CUDA, it is on {device_of_model}; use --device cuda or "
                        "drop --cuda-graph")
    try:
        sampling = SamplingConfig(temperature, top_k, top_p, min_p, repetition_penalty)
    except ValueError as error:
        raise UserError(str(error)) from None
    pending = bytearray()

    def stream(token: torch.Tensor) -> None:
        # Bytes of a multi-byte character arrive one at a time: print once they decode.
        value = int(token[0])
        if value < 256:
            pending.append(value)
            try:
                sys.stdout.write(pending.decode("utf-8"))
                pending.clear()
            except UnicodeDecodeError:
                if len(pending) >= 4:
                    sys.stdout.write(pending.decode("utf-8", errors="replace"))
                    pending.clear()
            sys.stdout.flush()

    sys.stdout.write(prompt)
    generate_ids(model, torch.tensor([ids], device=device_of_model), max_new_tokens, sampling,
                 eos_token_id=tokenizer.eos_token_id, seed=seed, streamer=stream, cuda_graph=cuda_graph)
    sys.stdout.write("\n")


DOMAIN = Domain(
    name="text",
    help="Byte-level language models on text.",
    commands={"train": train, "eval": evaluate, "generate": generate},
)
