"""`mambakit train|eval|predict genomics`: DNA classification, next-base pretraining and masked-LM pretraining,
on the user's FASTA/FASTQ/BED/CSV or on real DNA shipped with the package (data/README.md)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from mambakit.cli_support import (
    BatchSizeOption,
    CheckpointOption,
    ConfigOption,
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

from .models import TASKS

#: Model sizes: tiny trains in minutes on a CPU; small is the Mamba paper's DNA model (6 x 128).
PRESETS = {
    "tiny": {"d_model": 64, "n_layer": 2, "d_state": 8},
    "small": {"d_model": 128, "n_layer": 6, "d_state": 16},
    "base": {"d_model": 256, "n_layer": 8, "d_state": 16},
}
TRAIN_DEFAULTS = {
    "classify": {"epochs": 5, "batch_size": 32, "lr": 3e-3, "warmup_ratio": 0.05, "eval_every": 100,
                 "save_every": 100, "log_every": 20},
    "pretrain": {"max_steps": 400, "batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.05, "eval_every": 100,
                 "save_every": 100, "log_every": 20},
}
TRAIN_DEFAULTS["mlm"] = TRAIN_DEFAULTS["pretrain"]
#: Written beside the weights: what the checkpoint was trained for.
APP_FILE = "genomics.json"

GenomeOption = Annotated[
    Path | None, typer.Option("--genome", help="Indexed FASTA that BED intervals in --data refer to.")
]
SeqLenOption = Annotated[
    int | None,
    typer.Option("--seq-len", min=2, help="pretrain/mlm: bases per window (default 1024); classify: keep the first "
                 "N bases of each sequence (default: all)."),
]
ConjoinOption = Annotated[
    bool, typer.Option("--conjoin", help="Average each prediction with that of the reverse complement.")
]


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
    genome: GenomeOption = None,
    seq_len: SeqLenOption = None,
    bidirectional: Annotated[bool, typer.Option(help="BiMamba: a forward and a flipped pass per layer.")] = False,
    rc_equivariant: Annotated[
        bool, typer.Option("--rc-equivariant", help="Caduceus-PS parameter sharing across the two strands.")
    ] = False,
    rc_aug: Annotated[bool, typer.Option("--rc-aug", help="Train on random reverse complements too.")] = False,
    conjoin: ConjoinOption = False,
    pooling: Annotated[str, typer.Option(help="classify: mean | last | cls | max over the real bases.")] = "mean",
    grad_checkpointing: Annotated[
        bool, typer.Option("--grad-checkpointing", help="Recompute activations in the backward (long sequences).")
    ] = False,
) -> None:
    """Train on DNA. Tasks: classify (default; accuracy, MCC, AUROC), pretrain (next base; bits per base), mlm
    (masked bases; for --bidirectional / --rc-equivariant models). Without --data: classify Oct4 vs Mafk ChIP-seq
    sites, or pretrain on the C. diphtheriae chromosome, both shipped with mambakit."""
    import torch

    from .models import create_model
    from .prepare import classification_splits, pretraining_splits
    from .tasks import ClassifyTask, MlmTask, PretrainTask
    from .tokenizer import DNATokenizer

    run = resolve_run_options(config, data=data, task=task, out=out, max_steps=max_steps, epochs=epochs,
                              batch_size=batch_size, lr=lr, device=device, preset=preset, resume=resume, seed=seed)
    task_name = run.task or "classify"
    if task_name not in TASKS:
        raise UserError(f"unknown genomics task {task_name!r}; choose one of {', '.join(TASKS)}")
    tokenizer = DNATokenizer()
    classes: list[str] = []
    if task_name == "classify":
        splits, classes = classification_splits(run.data or None, tokenizer, genome, run.seed, max_length=seq_len,
                                                rc_augment=rc_aug)
        task_object = ClassifyTask(tokenizer, conjoin=conjoin)
    else:
        if len(run.data) > 1:
            raise UserError(f"--task {task_name} takes one genome FASTA as --data, got {len(run.data)} paths")
        splits = pretraining_splits(run.data[0] if run.data else None, tokenizer, window=seq_len or 1024,
                                    seed=run.seed, rc_augment=rc_aug)
        task_object = PretrainTask(tokenizer) if task_name == "pretrain" else MlmTask(tokenizer)
    if splits.val is None:
        raise UserError("the data gave no validation examples; give more sequences or a val split")
    torch.manual_seed(run.seed)
    options = {"bidirectional": bidirectional, "rc_equivariant": rc_equivariant}
    if rc_equivariant:
        options["complement_map"] = tokenizer.complement_map
    model_config = build_model_config(PRESETS, run, vocab_size=tokenizer.vocab_size,
                                      pad_token_id=tokenizer.pad_token_id, **options)
    try:
        model = create_model(task_name, model_config, num_labels=max(len(classes), 2), pooling=pooling)
    except ValueError as error:
        raise UserError(str(error)) from None
    defaults = {**TRAIN_DEFAULTS[task_name], "grad_checkpointing": grad_checkpointing}
    app_record = {"task": task_name, "classes": classes, "seq_len": seq_len, "conjoin": conjoin, "seed": run.seed}
    announce(f"genomics {task_name}: {len(splits.train):,} training / {len(splits.val):,} validation / "
          f"{len(splits.test) if splits.test else 0:,} test examples; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    run_training("genomics", replace(run, task=task_name), model, task_object, splits.train, splits.val, defaults,
                 {"tokenizer.json": tokenizer.to_json(), APP_FILE: json.dumps(app_record, indent=2) + "\n"},
                 test_data=splits.test)


def _load(checkpoint: Path, device: str) -> tuple[Any, Any, dict[str, Any]]:
    from mambakit.models import load_model

    from .tokenizer import DNATokenizer

    model = load_model(checkpoint, device=resolve_device(device))
    app_file = checkpoint / APP_FILE
    if not app_file.exists():
        raise UserError(f"{app_file}: missing; this is not a genomics checkpoint (train one with "
                        f"`mambakit train genomics`)")
    try:
        tokenizer = DNATokenizer.from_json((checkpoint / "tokenizer.json").read_text(),
                                           str(checkpoint / "tokenizer.json"))
        record = json.loads(app_file.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{checkpoint}: {error}") from None
    return model, tokenizer, record


def _labelled_or_plain(paths: list[Path], genome: Path | None) -> list[Any]:
    """Records from --data: a table (labels optional) or FASTA/FASTQ/BED files."""
    from .readers import IndexedFasta, read_bed, read_sequences, read_table

    records = []
    for path in paths:
        suffixes = "".join(path.suffixes).lower()
        if any(s in suffixes for s in (".csv", ".tsv")):
            records.extend(read_table(path, require_label=False))
        elif ".bed" in suffixes:
            if genome is None:
                raise UserError(f"{path}: BED intervals need --genome, the FASTA they refer to")
            records.extend(read_bed(path, IndexedFasta(genome)))
        else:
            records.extend(read_sequences(path))
    return records


def predict(
    checkpoint: CheckpointOption,
    data: DataOption = None,
    out: Annotated[Path, typer.Option("--out", help="predictions.csv, or embeddings.npy / .parquet with --embed.")]
    = Path("predictions.csv"),
    embed: Annotated[bool, typer.Option("--embed", help="Export one embedding per sequence instead of labels.")]
    = False,
    conjoin: ConjoinOption = False,
    genome: GenomeOption = None,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = None,
) -> None:
    """Label DNA sequences (FASTA/FASTQ/BED/CSV) with a classifier checkpoint, or export embeddings (--embed) from
    any genomics checkpoint. Labels in the input, if any, are checked against the model's classes and scored."""
    import numpy as np
    import torch

    from mambakit.models import MambaForSequenceClassification

    from .datasets import SequenceDataset
    from .predict import embed as embed_sequences
    from .predict import predict_logits, save_embeddings
    from .tasks import classification_metrics

    if not data:
        raise UserError("predict needs --data: the sequences to label or embed")
    model, tokenizer, record = _load(checkpoint, device or "auto")
    records = _labelled_or_plain(list(data), genome)
    classes = record.get("classes") or []
    labelled = embed is False and bool(classes) and all(r.label is not None for r in records)
    dataset = SequenceDataset(records, tokenizer, classes if labelled else None, record.get("seq_len"))
    if embed:
        written = save_embeddings(out, embed_sequences(model, dataset, batch_size or 64, conjoin=conjoin),
                                  dataset.names)
        print(f"wrote {len(dataset):,} embeddings to {written}")
        return
    if not isinstance(model, MambaForSequenceClassification):
        raise UserError(f"{checkpoint}: a {model.architecture} predicts no labels; use --embed for embeddings")
    logits = predict_logits(model, dataset, batch_size or 64, conjoin=conjoin or record.get("conjoin", False))
    probabilities = torch.from_numpy(logits).softmax(-1).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        handle.write(",".join(["name", "prediction", *[f"p_{name}" for name in classes]]) + "\n")
        for name, row in zip(dataset.names, probabilities, strict=True):
            handle.write(",".join([name, classes[int(np.argmax(row))], *[f"{p:.6f}" for p in row]]) + "\n")
    print(f"wrote {len(dataset):,} predictions to {out}")
    if labelled:
        print_metrics(f"genomics: {checkpoint} on {', '.join(map(str, data))}",
                      classification_metrics(torch.from_numpy(logits), torch.from_numpy(dataset.labels)))


def evaluate(
    checkpoint: CheckpointOption,
    data: DataOption = None,
    genome: GenomeOption = None,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = None,
) -> None:
    """Score a genomics checkpoint: a classifier on labelled sequences (default: the embedded task's test split),
    a pretrained model on a genome FASTA (default: the embedded genome's held-out part), bits per base."""
    from mambakit.train import TrainConfig
    from mambakit.train import evaluate as evaluate_model

    from .datasets import SequenceDataset
    from .prepare import classification_splits, pretraining_splits
    from .tasks import ClassifyTask, MlmTask, PretrainTask

    model, tokenizer, record = _load(checkpoint, device or "auto")
    task_name = record.get("task", "classify")
    if task_name == "classify":
        task_object = ClassifyTask(tokenizer, record.get("conjoin", False))
        if data:
            dataset = SequenceDataset(_labelled_or_plain(list(data), genome), tokenizer, record["classes"],
                                      record.get("seq_len"))
        else:
            dataset = classification_splits(None, tokenizer, seed=record.get("seed", 0),
                                            max_length=record.get("seq_len"))[0].test
    else:
        task_object = PretrainTask(tokenizer) if task_name == "pretrain" else MlmTask(tokenizer)
        if data and len(data) > 1:
            raise UserError(f"evaluating a {task_name} model takes one genome FASTA as --data")
        splits = pretraining_splits(data[0] if data else None, tokenizer, window=record.get("seq_len") or 1024,
                                    seed=record.get("seed", 0))
        dataset = splits.test or splits.val
    config = TrainConfig(out_dir=checkpoint, max_steps=1, batch_size=batch_size or 32,
                         device=resolve_device(device or "auto"))
    print_metrics(f"genomics {task_name}: {checkpoint}", evaluate_model(model, task_object, dataset, config))


DOMAIN = Domain(
    name="genomics",
    help="DNA: classification, next-base and masked pretraining, embeddings.",
    commands={"train": train, "eval": evaluate, "predict": predict},
)
