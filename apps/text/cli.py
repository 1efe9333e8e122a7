"""The text domain: byte-level language models on text files (default: Python's standard library sources,
present on every machine with Python). The core builds `mambakit train text` and `mambakit eval text` from the
task declared here; `generate` is the app's own."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from mambakit.cli_support import (
    CheckpointOption,
    CudaGraphOption,
    DeviceOption,
    SeedOption,
    announce,
    is_main_process,
    resolve_device,
)
from mambakit.domains import (
    EVAL_OPTION,
    Domain,
    DomainTask,
    Requirement,
    RunRecord,
    Splits,
    TaskInputs,
    load_checkpoint,
)
from mambakit.errors import UserError

from .data import DATASETS, PYARROW
from .tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer

PRESETS = {
    "tiny": {"d_model": 128, "n_layer": 2, "d_state": 16},
    "small": {"d_model": 384, "n_layer": 8, "d_state": 16},
    "base": {"d_model": 768, "n_layer": 24, "d_state": 16},
}
TRAIN_DEFAULTS = {
    "max_steps": 300,
    "batch_size": 16,
    "lr": 3e-3,
    "warmup_steps": 30,
    "eval_every": 100,
    "save_every": 100,
    "log_every": 10,
}
DOMAIN_NAME = "text"


@dataclass(frozen=True)
class TextOptions:
    """The text app's own options (saved in each checkpoint's run record)."""

    seq_len: Annotated[int, typer.Option("--seq-len", min=8, help="Tokens per window (default 256).")] = field(
        default=256, metadata=EVAL_OPTION
    )
    text_field: Annotated[
        str,
        typer.Option("--text-field", help="The field holding the text in .jsonl/.json/.csv/.tsv/.parquet/.arrow data."),
    ] = field(default="text", metadata=EVAL_OPTION)
    errors: Annotated[
        str,
        typer.Option(
            "--errors",
            help="Bytes that are not UTF-8 in the data: strict (a one-line error naming the file and offset) or "
            "replace (read as U+FFFD).",
        ),
    ] = field(default="strict", metadata=EVAL_OPTION)
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="Fine-tune this language model (a mambakit, Hugging Face or state-spaces directory with its "
            "tokenizer.json): its architecture, weights and tokenizer are kept; --preset does not apply.",
        ),
    ] = None
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="A Hugging Face tokenizer.json or a directory holding one; or train:VOCAB_SIZE (byte-level BPE) / "
            "train:unigram:VOCAB_SIZE, trained on the training text (default: bytes). Saved with the checkpoint, so "
            "eval and generate need no flag.",
        ),
    ] = None
    lora_rank: Annotated[
        int,
        typer.Option(
            "--lora-rank",
            min=0,
            help="Fine-tune LoRA adapters of this rank (through PEFT) instead of every weight; needs --init-from. "
            "Checkpoints then hold only the adapters, which load onto the --init-from model (0: off).",
        ),
    ] = 0
    lora_alpha: Annotated[
        float | None, typer.Option("--lora-alpha", min=0.0, help="LoRA scale numerator (default: 2 x rank).")
    ] = None
    lora_dropout: Annotated[
        float, typer.Option("--lora-dropout", min=0.0, max=1.0, help="Dropout on the LoRA path's input.")
    ] = 0.0
    lora_targets: Annotated[
        str,
        typer.Option("--lora-targets", help="Comma-separated Linear layers that get adapters (name endings)."),
    ] = "in_proj,x_proj,dt_proj,out_proj"

    def __post_init__(self) -> None:
        from .data import ERROR_MODES

        if self.errors not in ERROR_MODES:
            raise UserError(f"--errors {self.errors}: choose one of {', '.join(ERROR_MODES)}")
        if self.lora_rank and self.init_from is None:
            raise UserError("--lora-rank adapts a trained model: add --init-from CHECKPOINT")


#: Smallest vocabulary a trained tokenizer may have: the 256 byte pieces, the end-of-text token, a few merges.
MIN_TRAINED_VOCAB = 260


def make_tokenizer(options: TextOptions) -> Tokenizer:
    """The tokenizer of a new run: --tokenizer's file, one to train on the training text (train:[unigram:]N), or
    bytes."""
    given = options.tokenizer
    if options.init_from is not None:
        if given is not None:
            raise UserError("--init-from keeps the checkpoint's own tokenizer: drop --tokenizer")
        return _checkpoint_tokenizer(options.init_from)
    if given is None:
        return ByteTokenizer()
    if given.startswith("train:"):
        *model, size = given.split(":")[1:]
        if len(model) > 1 or (model and model[0] not in ("bpe", "unigram")) or not size.isdigit():
            raise UserError(f"--tokenizer {given}: write train:VOCAB_SIZE or train:unigram:VOCAB_SIZE")
        if int(size) < MIN_TRAINED_VOCAB:
            raise UserError(f"--tokenizer {given}: a trained tokenizer needs at least {MIN_TRAINED_VOCAB} ids")
        return HFTokenizer.to_be_trained(int(size), model[0] if model else "bpe")
    try:
        return HFTokenizer.from_path(Path(given))
    except ValueError as error:
        raise UserError(f"--tokenizer {given}: {error}") from None


def _checkpoint_tokenizer(checkpoint: Path) -> Tokenizer:
    file = checkpoint / "tokenizer.json"
    if not file.is_file():
        raise UserError(
            f"--init-from {checkpoint}: no tokenizer.json there; save the model's tokenizer beside its weights "
            f"(Hugging Face: tokenizer.save_pretrained)"
        )
    try:
        return load_tokenizer(file.read_text(encoding="utf-8"), str(file))
    except ValueError as error:
        raise UserError(str(error)) from None


def _token_streams(inputs: TaskInputs) -> tuple[Any, Any]:
    """(training, held-out) token streams of the given files, folders, globs and hf: sources, or of the default
    corpus, read document by document; a tokenizer still to train is trained on the training documents first
    (it is the run's featurizer, saved after). Long streams spill to `_spill_dir`."""
    from .data import encode_split, iter_documents, training_documents

    sources = _sources(inputs)
    options = inputs.options
    tokenizer = inputs.featurizer
    if isinstance(tokenizer, HFTokenizer) and tokenizer.to_train is not None:
        vocab_size, model = tokenizer.to_train
        announce(f"training a {model} tokenizer of {vocab_size:,} ids on the training text")
        tokenizer.fit(training_documents(iter_documents(sources, options.text_field, options.errors)))
    documents = iter_documents(sources, options.text_field, options.errors)
    return encode_split(documents, tokenizer, spill_dir=_spill_dir(inputs))


def _sources(inputs: TaskInputs) -> list[Any]:
    from .data import default_corpus_files, expand_paths

    return expand_paths(inputs.run.data) if inputs.run.data else default_corpus_files()


def _spill_dir(inputs: TaskInputs) -> Path:
    """Where long token streams spill: the run folder's tokens/, or a temporary folder removed at exit (eval, and
    torchrun processes other than the first, which alone writes in the run folder)."""
    if inputs.run.out is not None and is_main_process():
        return inputs.run.out / "tokens"
    import atexit
    import shutil
    import tempfile

    spill_dir = Path(tempfile.mkdtemp(prefix="mambakit-tokens-"))
    atexit.register(shutil.rmtree, spill_dir, ignore_errors=True)
    return spill_dir


def _windows(tokens: Any, seq_len: int, what: str) -> Any:
    from mambakit.datasets import TokenWindows

    windows = TokenWindows(tokens, seq_len)
    if len(windows) == 0:
        raise UserError(
            f"the text is too short for --seq-len {seq_len}: {len(tokens)} {what} tokens; give more "
            f"text or a smaller --seq-len"
        )
    return windows


def _lm_data(inputs: TaskInputs) -> Splits:
    train_tokens, eval_tokens = _token_streams(inputs)
    seq_len = inputs.options.seq_len
    return Splits(_windows(train_tokens, seq_len, "training"), _windows(eval_tokens, seq_len, "held-out"))


def _lm_eval_data(inputs: TaskInputs) -> Any:
    """What `eval` scores: the text given with --data, whole (it was named to be scored); without it, the held-out
    part of the default corpus, which training did not see."""
    from .data import encode_split, encode_whole, iter_documents

    documents = iter_documents(_sources(inputs), inputs.options.text_field, inputs.options.errors)
    if inputs.run.data:
        tokens = encode_whole(documents, inputs.featurizer, _spill_dir(inputs))
        return _windows(tokens, inputs.options.seq_len, "evaluation")
    held_out = encode_split(documents, inputs.featurizer, spill_dir=_spill_dir(inputs), keep_train=False)[1]
    return _windows(held_out, inputs.options.seq_len, "held-out")


def _lm_model(inputs: TaskInputs, splits: Splits) -> Any:
    from mambakit.models import MambaConfig, MambaLMHeadModel

    tokenizer: Tokenizer = inputs.featurizer
    if inputs.options.init_from is not None:
        model = _pretrained(inputs.options.init_from, tokenizer)
        return _with_lora(model, inputs.options) if inputs.options.lora_rank else model
    return MambaLMHeadModel(
        inputs.model_config(
            MambaConfig,
            vocab_size=tokenizer.vocab_size,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )


def _pretrained(checkpoint: Path, tokenizer: Tokenizer) -> Any:
    """The language model in `checkpoint`, to fine-tune; a one-line error when it is not one or its vocabulary
    is smaller than its tokenizer's."""
    from mambakit.models import CheckpointError, MambaLMHeadModel, load_model

    try:
        model = load_model(checkpoint)
    except (CheckpointError, FileNotFoundError) as error:
        raise UserError(f"--init-from {checkpoint}: {str(error).splitlines()[0]}") from None
    if not isinstance(model, MambaLMHeadModel):
        raise UserError(f"--init-from {checkpoint}: holds a {model.architecture}, not a language model")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(
            f"--init-from {checkpoint}: its tokenizer has {tokenizer.vocab_size} ids, the model "
            f"{model.config.vocab_size}: the tokenizer.json does not belong to these weights"
        )
    return model.train()


def _with_lora(model: Any, options: TextOptions) -> Any:
    """`model` with LoRA adapters on --lora-targets; only they train."""
    from mambakit.models.lora import add_lora

    targets = tuple(name.strip() for name in options.lora_targets.split(",") if name.strip())
    try:
        add_lora(model, options.lora_rank, options.lora_alpha, options.lora_dropout, targets, options.init_from)
    except ImportError as error:
        raise UserError(str(error)) from None
    except ValueError as error:
        raise UserError(f"--lora-targets {options.lora_targets}: {error}") from None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    announce(
        f"LoRA rank {options.lora_rank}: {trainable:,} of {sum(p.numel() for p in model.parameters()):,} weights train"
    )
    return model


def _lm_task(inputs: TaskInputs) -> Any:
    from mambakit.train.lm_task import CausalLMTask

    tokenizer: Tokenizer = inputs.featurizer
    if isinstance(tokenizer, ByteTokenizer):
        return CausalLMTask("byte")
    return CausalLMTask("token", bytes_of=lambda ids: len(tokenizer.decode(ids).encode("utf-8")))


def read_legacy_record(checkpoint: Path, model: Any) -> RunRecord | None:
    """Language models without a run record: text checkpoints from before run records (a byte tokenizer beside
    the weights), and Hugging Face or state-spaces directories that carry a tokenizer.json."""
    from mambakit.models import MambaLMHeadModel

    tokenizer_file = checkpoint / "tokenizer.json"
    if not isinstance(model, MambaLMHeadModel) or not tokenizer_file.is_file():
        return None
    try:
        load_tokenizer(tokenizer_file.read_text(encoding="utf-8"), str(tokenizer_file))
    except ValueError:
        return None
    return RunRecord(DOMAIN_NAME, "lm", {}, 0)


class _TextStream:
    """Prints generated text as it comes: the ids so far are decoded whole and the new end printed, held back
    while it ends in an incomplete character (a byte or token that is part of one), for at most 3 more ids."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer, self.ids, self.printed, self.held = tokenizer, [], "", 0

    def add(self, token: Any) -> None:
        self.ids.append(int(token[0]))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") and self.held < 3:
            self.held += 1
            return
        self._write(text)

    def flush(self) -> None:
        self._write(self.tokenizer.decode(self.ids))

    def _write(self, text: str) -> None:
        import sys

        sys.stdout.write(text[len(self.printed) :])
        sys.stdout.flush()
        self.printed, self.held = text, 0


def generate(
    checkpoint: CheckpointOption,
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")] = "def ",
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help="A file of prompts, one per line, generated in batches; writes JSON Lines {prompt, sequence, text}.",
        ),
    ] = None,
    num_return_sequences: Annotated[
        int, typer.Option("--num-return-sequences", min=1, help="Continuations per prompt (JSON Lines when > 1).")
    ] = 1,
    stop: Annotated[
        list[str] | None,
        typer.Option("--stop", help="Stop a continuation once it contains this text (kept); repeatable."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate.")] = 200,
    temperature: Annotated[float, typer.Option(min=0.0, help="0: greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option("--top-k", min=0, help="Keep the k most likely tokens (0: all).")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass.")] = 0.95,
    min_p: Annotated[float, typer.Option("--min-p", min=0.0, max=1.0, help="Drop tokens below min_p x max.")] = 0.0,
    repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", min=0.0)] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences generated together.")] = 16,
    seed: SeedOption = None,
    device: DeviceOption = None,
    cuda_graph: CudaGraphOption = None,
) -> None:
    """Continue a prompt with a text checkpoint (mambakit's, or a Hugging Face / state-spaces directory with a
    tokenizer.json), streaming the text as it comes; or many prompts (--prompts) and several continuations each
    (--num-return-sequences), written as JSON Lines."""
    import json
    import sys

    from mambakit.models import MambaLMHeadModel, SamplingConfig

    loaded = load_checkpoint(DOMAIN, checkpoint, device=resolve_device(device or "auto"), verb="generate")
    model, tokenizer = loaded.model, loaded.featurizer
    if not isinstance(model, MambaLMHeadModel):
        raise UserError(f"{checkpoint}: holds a {model.architecture}, not a language model")
    device_of_model = next(model.parameters()).device
    if cuda_graph and device_of_model.type != "cuda":
        raise UserError(
            f"--cuda-graph needs the model on CUDA, it is on {device_of_model}; use --device cuda or drop --cuda-graph"
        )
    try:
        sampling = SamplingConfig(temperature, top_k, top_p, min_p, repetition_penalty)
    except ValueError as error:
        raise UserError(str(error)) from None
    texts = _read_prompts(prompts) if prompts is not None else [prompt]
    encoded = [_prompt_ids(text, tokenizer, model.config.vocab_size, checkpoint) for text in texts]
    _check_lengths(encoded, max_new_tokens, model.backbone.max_positions, checkpoint)
    run = _Generation(model, tokenizer, sampling, max_new_tokens, stop or [], seed, cuda_graph, device_of_model)
    if prompts is None and num_return_sequences == 1:
        printer = _TextStream(tokenizer)
        sys.stdout.write(prompt)
        run.continuations([encoded[0]], streamer=printer.add)
        printer.flush()
        sys.stdout.write("\n")
        return
    # Prompts of one token length form exact batches (no padding enters the recurrent state).
    rows = [(index, ids) for index, ids in enumerate(encoded) for _ in range(num_return_sequences)]
    by_length: dict[int, list[tuple[int, list[int]]]] = {}
    for index, ids in rows:
        by_length.setdefault(len(ids), []).append((index, ids))
    results: dict[int, list[str]] = {index: [] for index in range(len(texts))}
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            for (index, _), text in zip(chunk, run.continuations([ids for _, ids in chunk]), strict=True):
                results[index].append(text)
    for index, text in enumerate(texts):
        for number, continuation in enumerate(results[index]):
            print(json.dumps({"prompt": text, "sequence": number, "text": continuation}, ensure_ascii=False))


def _read_prompts(path: Path) -> list[str]:
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (given with --prompts)") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (invalid byte at offset {error.start})") from None
    if not lines:
        raise UserError(f"{path}: no prompts (one per line)")
    return lines


def _prompt_ids(text: str, tokenizer: Tokenizer, vocab_size: int, checkpoint: Path) -> list[int]:
    ids = tokenizer.encode(text) or ([] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id])
    if not ids:
        raise UserError("a prompt is empty and the tokenizer has no beginning-of-text token: give some text")
    if max(ids) >= vocab_size:
        raise UserError(
            f"{checkpoint}: the tokenizer gives id {max(ids)}, past the model's vocabulary of "
            f"{vocab_size}: the tokenizer.json does not belong to these weights"
        )
    return ids


def _check_lengths(prompts: list[list[int]], max_new_tokens: int, limit: int | None, checkpoint: Path) -> None:
    """A one-line error, before anything is printed, when a prompt and its continuation pass the model's limit."""
    if limit is None:
        return
    longest = max(range(len(prompts)), key=lambda index: len(prompts[index]))
    if len(prompts[longest]) + max_new_tokens > limit:
        which = f"prompt {longest + 1}" if len(prompts) > 1 else "the prompt"
        raise UserError(
            f"{checkpoint}: {which} ({len(prompts[longest])} tokens) plus --max-new-tokens {max_new_tokens} "
            f"pass the model's {limit} positions; shorten the prompt or lower --max-new-tokens"
        )


@dataclass
class _Generation:
    """One generate call's settings, applied to batches of equally long prompts."""

    model: Any
    tokenizer: Tokenizer
    sampling: Any
    max_new_tokens: int
    stops: list[str]
    seed: int | None
    cuda_graph: bool | None
    device: Any

    def continuations(self, prompts: list[list[int]], streamer: Any = None) -> list[str]:
        """The continuation text of each prompt, cut after the first stop string."""
        import torch

        from mambakit.models import generate as generate_ids

        start = len(prompts[0])

        def stopped(sequences: torch.Tensor) -> torch.Tensor:
            texts = [self.tokenizer.decode(row[start:]) for row in sequences.tolist()]
            return torch.tensor([any(stop in text for stop in self.stops) for text in texts])

        sequences = generate_ids(
            self.model,
            torch.tensor(prompts, device=self.device),
            self.max_new_tokens,
            self.sampling,
            eos_token_id=self.tokenizer.eos_token_id,
            seed=self.seed,
            streamer=streamer,
            cuda_graph=self.cuda_graph,
            stop_when=stopped if self.stops else None,
        )
        return [self._cut(self.tokenizer.decode(row[start:])) for row in sequences.tolist()]

    def _cut(self, text: str) -> str:
        ends = [text.index(stop) + len(stop) for stop in self.stops if stop in text]
        return text[: min(ends)] if ends else text


DOMAIN = Domain(
    name=DOMAIN_NAME,
    help="language models on text: bytes or any Hugging Face tokenizer",
    tasks=[
        DomainTask(
            "lm",
            "next byte, bits per byte; default data: Python's standard library sources",
            data=_lm_data,
            model=_lm_model,
            task=_lm_task,
            defaults=TRAIN_DEFAULTS,
            eval_data=_lm_eval_data,
        )
    ],
    options=TextOptions,
    featurizer=make_tokenizer,
    load_featurizer=load_tokenizer,
    presets=PRESETS,
    commands={"generate": generate},
    read_legacy=read_legacy_record,
    requires=(
        Requirement("tokenizers", "tokenizers", "text", needed_for="Hugging Face tokenizers (--tokenizer)"),
        DATASETS,
        PYARROW,
        Requirement("peft", "peft", "lora", needed_for="LoRA fine-tuning (--lora-rank)"),
    ),
)
