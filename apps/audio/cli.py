"""The audio domain: raw-waveform language models (bits per sample; class-conditioned when the data has labels) and
clip classifiers over the pooled Mamba U-Net, on folders of audio files, a CSV of path,label, or the Free Spoken
Digit Dataset shipped with the package (data/README.md). The core builds `mambakit train|eval audio`;
`generate` (WAV files, real-time factor) and `predict` (labels CSV) are the app's own."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from mambakit.cli_support import (
    BatchSizeOption,
    CheckpointOption,
    DataOption,
    DeviceOption,
    SeedOption,
    print_metrics,
)
from mambakit.cli_support import resolve_device as resolve_device_name
from mambakit.domains import Domain, DomainTask, Splits, TaskInputs, load_checkpoint
from mambakit.errors import UserError

from .data import PYARROW, SOUNDFILE, TORCHAUDIO
from .models import DOMAIN_NAME, AudioClassifier, AudioConfig, AudioLM

#: Model sizes, all at SaShiMi's pools 4 x 4: tiny trains in minutes on a CPU; small (SaShiMi's width, d_model 64,
#: one block per stage) is the shipped model, which generates in real time on a 2-core CPU at batch 16; base and
#: large add blocks per stage (the Mamba paper's SC09 model has 8).
PRESETS = {
    "tiny": {"d_model": 32, "n_layers": 1, "d_state": 8},
    "small": {"d_model": 64, "n_layers": 1, "d_state": 16},
    "base": {"d_model": 64, "n_layers": 2, "d_state": 16},
    "large": {"d_model": 64, "n_layers": 4, "d_state": 16},
}
LM_DEFAULTS = {
    "max_steps": 300,
    "batch_size": 16,
    "lr": 2e-3,
    "warmup_ratio": 0.1,
    "max_grad_norm": 0.5,
    "eval_every": 100,
    "save_every": 100,
    "log_every": 10,
}
CLASSIFY_DEFAULTS = {
    "epochs": 5,
    "batch_size": 32,
    "lr": 2e-3,
    "warmup_ratio": 0.05,
    "eval_every": 100,
    "save_every": 100,
    "log_every": 20,
}


@dataclass(frozen=True)
class AudioOptions:
    """The audio app's own options (saved in each checkpoint's run record)."""

    crop: Annotated[
        int, typer.Option("--crop", min=16, help="Samples per training window (default 8000: 1 s at 8 kHz).")
    ] = 8000
    sample_rate: Annotated[
        int, typer.Option("--sample-rate", min=1000, help="Rate the audio is resampled to (default 8000).")
    ] = 8000
    encoding: Annotated[str, typer.Option("--encoding", help="8-bit sample quantisation: mu-law | linear.")] = "mu-law"
    unconditional: Annotated[
        bool, typer.Option("--unconditional", help="lm: ignore the labels (no class conditioning).")
    ] = False
    lti_outer: Annotated[
        bool, typer.Option("--lti-outer", help="Time-invariant (S4D-like) blocks at the waveform level.")
    ] = False


def _labelled(inputs: TaskInputs) -> Any:
    from .data import embedded_dataset, load_labelled_audio

    return load_labelled_audio(inputs.run.data) if inputs.run.data else embedded_dataset(seed=inputs.run.seed)


def _splits(inputs: TaskInputs, make: Any) -> Splits:
    from .data import split_indices

    labelled = _labelled(inputs)
    splits = split_indices(labelled, seed=inputs.run.seed) if inputs.run.data else labelled.splits

    def dataset(split: str, train: bool) -> Any:
        indices = splits.get(split) or []
        return make([labelled.records[i] for i in indices], labelled.classes, train) if indices else None

    return Splits(dataset("train", True), dataset("val", False), dataset("test", False), tuple(labelled.classes))


def _conditioned(inputs: TaskInputs) -> bool:
    return not inputs.options.unconditional


def _lm_data(inputs: TaskInputs) -> Splits:
    from .data import AudioLMDataset

    options: AudioOptions = inputs.options

    def make(records: Any, classes: list[str], train: bool) -> Any:
        return AudioLMDataset(
            records,
            options.crop,
            options.sample_rate,
            options.encoding,
            classes if _conditioned(inputs) else None,
            random_crop=train,
        )

    return _splits(inputs, make)


def _classify_data(inputs: TaskInputs) -> Splits:
    from .data import AudioClassificationDataset

    options: AudioOptions = inputs.options
    return _splits(
        inputs,
        lambda records, classes, train: AudioClassificationDataset(
            records, classes, options.crop, options.sample_rate, options.encoding
        ),
    )


def _config(inputs: TaskInputs, num_classes: int) -> AudioConfig:
    options: AudioOptions = inputs.options
    levels = len(inputs.run.model.get("pools", (4, 4))) + 1
    return inputs.model_config(
        AudioConfig,
        sample_rate=options.sample_rate,
        encoding=options.encoding,
        num_classes=num_classes,
        selective=[not options.lti_outer] + [True] * (levels - 1),
    )


def _lm_model(inputs: TaskInputs, splits: Splits) -> Any:
    conditioned = _conditioned(inputs) and len(splits.labels) > 0
    config = _config(inputs, len(splits.labels) if conditioned else 0)
    return AudioLM(config, labels=splits.labels if conditioned else None)


def _classify_model(inputs: TaskInputs, splits: Splits) -> Any:
    return AudioClassifier(_config(inputs, 0), labels=splits.labels)


def _classify_task(inputs: TaskInputs) -> Any:
    from .tasks import AudioClassificationTask

    return AudioClassificationTask()


def _lm_task(inputs: TaskInputs) -> Any:
    from mambakit.train.lm_task import CausalLMTask

    return CausalLMTask("sample")


TASKS = (
    DomainTask(
        "lm",
        "next sample, bits per sample; class-conditioned on labelled data; default data: FSDD digits",
        data=_lm_data,
        model=_lm_model,
        task=_lm_task,
        defaults=LM_DEFAULTS,
    ),
    DomainTask(
        "classify",
        "clip classification: accuracy, MCC, AUROC",
        data=_classify_data,
        model=_classify_model,
        task=_classify_task,
        defaults=CLASSIFY_DEFAULTS,
    ),
)


#: The model `generate audio` uses without -c: trained by `mambakit train audio` on the embedded digits
#: (pretrained/README.md has the command and its metrics).
SHIPPED_MODEL = Path(__file__).resolve().with_name("pretrained") / "fsdd-small"


def generate(
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", "-c", help="Language-model checkpoint (default: the shipped spoken-digit model)."),
    ] = None,
    seconds: Annotated[float, typer.Option("--seconds", min=0.001, help="Length of each clip.")] = 1.0,
    n: Annotated[int, typer.Option("--n", min=1, help="Clips to generate (one batch).")] = 4,
    label: Annotated[str | None, typer.Option("--label", help="Class to ask for (conditioned models).")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, help="0: greedy.")] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    prompt: Annotated[Path | None, typer.Option("--prompt", help="An audio file to continue.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the WAV files.")] = Path("generated"),
    seed: SeedOption = None,
    device: DeviceOption = None,
) -> None:
    """Generate audio with a language-model checkpoint and write WAV files; prints the real-time factor."""
    import torch

    from mambakit.models import SamplingConfig

    from .data import decode, encode, read_audio, silence_code, write_wav
    from .generate import generate_audio

    SOUNDFILE.load("generate audio (it writes WAV files)")
    if checkpoint is None:
        checkpoint = SHIPPED_MODEL
        if not (checkpoint / "config.json").is_file():
            raise UserError(f"{checkpoint}: the shipped model is missing from this installation; reinstall mambakit")
    loaded = load_checkpoint(DOMAIN, checkpoint, device=resolve_device_name(device or "auto"), verb="generate")
    model = loaded.model
    if not isinstance(model, AudioLM):
        raise UserError(f"{checkpoint}: holds a {model.architecture}, which generates nothing; train --task lm")
    config: AudioConfig = model.config
    class_ids = None
    if label is not None:
        if not model.labels:
            raise UserError(f"{checkpoint}: this model is unconditional; drop --label")
        if label not in model.labels:
            raise UserError(f"--label {label!r} is not one of the model's classes ({', '.join(model.labels)})")
        class_ids = torch.full((n,), model.labels.index(label), dtype=torch.long)
    elif model.labels:
        class_ids = torch.arange(n) % len(model.labels)  # one of each class in turn
    device_of_model = next(model.parameters()).device
    prompt_ids = None
    if prompt is not None:
        prompt_ids = torch.as_tensor(encode(read_audio(prompt, config.sample_rate), config.encoding)).long()
    length = max(1, round(seconds * config.sample_rate))
    try:
        sampling = SamplingConfig(temperature=temperature, top_p=top_p)
    except ValueError as error:
        raise UserError(str(error)) from None

    def progress(done: int) -> None:
        print(f"\r{done:,}/{length:,} samples", end="", file=sys.stderr, flush=True)

    result = generate_audio(
        model,
        n,
        length,
        silence_code(config.encoding),
        sampling,
        None if class_ids is None else class_ids.to(device_of_model),
        prompt_ids,
        seed,
        progress,
    )
    print(file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    for index, ids in enumerate(result.ids):
        name = f"{index:03d}" + ("" if class_ids is None else f"_{model.labels[int(class_ids[index])]}")
        write_wav(out / f"{name}.wav", decode(ids.numpy(), config.encoding), config.sample_rate)
    factor = result.samples_per_second / config.sample_rate
    print(
        f"wrote {n} clips of {seconds:g} s to {out}: {result.samples_per_second:,.0f} samples/s, {factor:.2f}x real "
        f"time at {config.sample_rate} Hz (batch {n}, {device_of_model})"
    )


def predict(
    checkpoint: CheckpointOption,
    data: DataOption = None,
    out: Annotated[Path, typer.Option("--out", help="The predictions CSV.")] = Path("predictions.csv"),
    batch_size: BatchSizeOption = None,
    device: DeviceOption = None,
) -> None:
    """Label audio clips (files, folders, a CSV of paths) with a classifier checkpoint; labelled input is scored."""
    import torch

    from mambakit.predictions import check_output_file, write_predictions_csv
    from mambakit.train.classification import classification_metrics

    from .data import AudioClassificationDataset, read_audio_inputs

    if not data:
        raise UserError("predict needs --data: audio files, folders, or a CSV of audio paths")
    check_output_file(out)
    resolved = resolve_device_name(device or "auto")
    loaded = load_checkpoint(DOMAIN, checkpoint, device=resolved, verb="predict")
    model = loaded.model
    if not isinstance(model, AudioClassifier):
        raise UserError(f"{checkpoint}: a {model.architecture} predicts no labels; train --task classify")
    options = DOMAIN.options_from_json(loaded.record.options, str(checkpoint))
    records = read_audio_inputs(data)
    scored = all(record.label is not None for record in records)
    classes = list(model.labels)
    dataset = AudioClassificationDataset(
        records, classes if scored else None, options.crop, options.sample_rate, options.encoding
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size or 32)
    with torch.no_grad():
        logits = torch.cat(
            [
                model(batch["input_ids"].to(resolved), batch["attention_mask"].to(resolved)).logits.float().cpu()
                for batch in loader
            ]
        )
    probabilities = logits.softmax(-1).numpy()
    written = write_predictions_csv(out, [r.source for r in records], probabilities.argmax(-1), probabilities, classes)
    print(f"wrote {len(records):,} predictions to {written}")
    if scored:
        labels = torch.from_numpy(dataset.labels)
        print_metrics(f"audio: {checkpoint} on {', '.join(map(str, data))}", classification_metrics(logits, labels))


DOMAIN = Domain(
    name=DOMAIN_NAME,
    help="raw-waveform audio: Mamba U-Net language models and clip classifiers",
    tasks=TASKS,
    options=AudioOptions,
    presets=PRESETS,
    commands={"generate": generate, "predict": predict},
    requires=(SOUNDFILE, TORCHAUDIO, PYARROW),
)
