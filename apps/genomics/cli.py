"""The genomics domain: DNA classification, next-base pretraining and masked-LM pretraining, on the user's
FASTA/FASTQ/BED/CSV or on real DNA shipped with the package (data/README.md). The core builds `mambakit train
genomics` and `mambakit eval genomics` from the tasks and options declared here; `predict` is the app's own."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from mambakit.cli_support import (
    BatchSizeOption,
    CheckpointOption,
    DataOption,
    DeviceOption,
    print_metrics,
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
from mambakit.jsonfiles import read_json_object
from mambakit.validation import checked_value

from .models import DOMAIN_NAME, GenomicsMambaConfig, create_model
from .predict import MAX_PREDICT_LENGTH, PARQUET
from .prepare import DEFAULT_EVAL_WINDOWS
from .tasks import ClassifyTask, MlmTask, PretrainTask
from .tokenizer import DNATokenizer

#: Model sizes: tiny trains in minutes on a CPU; small is the Mamba paper's DNA model (6 x 128).
PRESETS = {
    "tiny": {"d_model": 64, "n_layer": 2, "d_state": 8},
    "small": {"d_model": 128, "n_layer": 6, "d_state": 16},
    "base": {"d_model": 256, "n_layer": 8, "d_state": 16},
}
CLASSIFY_DEFAULTS = {
    "epochs": 5,
    "batch_size": 32,
    "lr": 3e-3,
    "warmup_ratio": 0.05,
    "eval_every": 100,
    "save_every": 100,
    "log_every": 20,
}
PRETRAIN_DEFAULTS = {
    "max_steps": 400,
    "batch_size": 8,
    "lr": 3e-3,
    "warmup_ratio": 0.05,
    "eval_every": 100,
    "save_every": 100,
    "log_every": 20,
}
#: Pretraining window when --seq-len is not given.
DEFAULT_WINDOW = 1024
#: The run record of checkpoints written before run records existed (mambakit up to 85bf326).
LEGACY_RECORD = "genomics.json"

GenomeOption = Annotated[
    Path | None, typer.Option("--genome", help="Indexed FASTA that BED intervals in --data refer to.")
]
ConjoinOption = Annotated[
    bool, typer.Option("--conjoin", help="Average each prediction with that of the reverse complement.")
]


@dataclass(frozen=True)
class GenomicsOptions:
    """The genomics app's own options (saved in each checkpoint's run record)."""

    genome: GenomeOption = field(default=None, metadata=EVAL_OPTION)
    seq_len: Annotated[
        int | None,
        typer.Option(
            "--seq-len",
            min=2,
            help=f"pretrain/mlm: bases per window (default {DEFAULT_WINDOW}); "
            "classify: keep the first N bases of each sequence (default: all).",
        ),
    ] = None
    bidirectional: Annotated[bool, typer.Option(help="BiMamba: a forward and a flipped pass per layer.")] = False
    rc_equivariant: Annotated[
        bool, typer.Option("--rc-equivariant", help="Caduceus-PS parameter sharing across the two strands.")
    ] = False
    rc_aug: Annotated[bool, typer.Option("--rc-aug", help="Train on random reverse complements too.")] = False
    conjoin: ConjoinOption = False
    pooling: Annotated[str, typer.Option(help="classify: mean | last | cls | max over the real bases.")] = "mean"
    eval_windows: Annotated[
        int,
        typer.Option(
            "--eval-windows",
            min=1,
            help=f"pretrain/mlm: windows each evaluation scores, evenly spread over the held-out part "
            f"(default {DEFAULT_EVAL_WINDOWS}); raise it for a finer estimate on a large genome.",
        ),
    ] = field(default=DEFAULT_EVAL_WINDOWS, metadata=EVAL_OPTION)


def _model(task: str, inputs: TaskInputs, splits: Splits) -> Any:
    options: GenomicsOptions = inputs.options
    tokenizer: DNATokenizer = inputs.featurizer
    config = inputs.model_config(
        GenomicsMambaConfig,
        vocab_size=tokenizer.vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        bidirectional=options.bidirectional,
        rc_equivariant=options.rc_equivariant,
        complement_map=tokenizer.complement_map if options.rc_equivariant else None,
    )
    return create_model(
        task, config, num_labels=max(len(splits.labels), 2), pooling=options.pooling, labels=splits.labels or None
    )


def _classification_data(inputs: TaskInputs) -> Splits:
    from .prepare import classification_splits

    options: GenomicsOptions = inputs.options
    return classification_splits(
        inputs.run.data or None,
        inputs.featurizer,
        options.genome,
        inputs.run.seed,
        max_length=options.seq_len,
        rc_augment=options.rc_aug,
    )


def _classification_eval_data(inputs: TaskInputs) -> Any:
    """The user's labelled sequences, whole; else the embedded task's test split."""
    from .datasets import SequenceDataset

    if not inputs.run.data:
        return _classification_data(inputs).test
    records = read_inputs(inputs.run.data, inputs.options.genome)
    return SequenceDataset(records, inputs.featurizer, inputs.labels, inputs.options.seq_len)


def _genome_data(inputs: TaskInputs) -> Splits:
    from .prepare import pretraining_splits

    data = inputs.run.data
    if len(data) > 1:
        raise UserError(f"--task {inputs.run.task} takes one genome FASTA as --data, got {len(data)} paths")
    return pretraining_splits(
        data[0] if data else None,
        inputs.featurizer,
        window=inputs.options.seq_len or DEFAULT_WINDOW,
        seed=inputs.run.seed,
        rc_augment=inputs.options.rc_aug,
        eval_windows=inputs.options.eval_windows,
    )


def read_inputs(paths: list[Path], genome: Path | None) -> list[Any]:
    """Records from --data: tables (labels optional), BED intervals over --genome, FASTA/FASTQ files; the format
    is the one the file's last suffix names (after a compression suffix)."""
    from .readers import IndexedFasta, read_records, sequence_file_kind

    fasta = None
    records = []
    for path in paths:
        if sequence_file_kind(path) == "bed":
            if genome is None:
                raise UserError(f"{path}: BED intervals need --genome, the FASTA they refer to")
            fasta = fasta or IndexedFasta(genome)
        records.extend(read_records(path, fasta, require_label=False))
    return records


TASKS = (
    DomainTask(
        "classify",
        "accuracy, MCC, AUROC; default data: Oct4 vs Mafk ChIP-seq sites",
        data=_classification_data,
        model=lambda inputs, splits: _model("classify", inputs, splits),
        task=lambda inputs: ClassifyTask(inputs.featurizer, conjoin=inputs.options.conjoin),
        defaults=CLASSIFY_DEFAULTS,
        eval_data=_classification_eval_data,
    ),
    DomainTask(
        "pretrain",
        "next base, bits per base; default data: the C. diphtheriae chromosome",
        data=_genome_data,
        model=lambda inputs, splits: _model("pretrain", inputs, splits),
        task=lambda inputs: PretrainTask(inputs.featurizer),
        defaults=PRETRAIN_DEFAULTS,
    ),
    DomainTask(
        "mlm",
        "masked bases, for --bidirectional / --rc-equivariant models",
        data=_genome_data,
        model=lambda inputs, splits: _model("mlm", inputs, splits),
        task=lambda inputs: MlmTask(inputs.featurizer),
        defaults=PRETRAIN_DEFAULTS,
    ),
)


def read_legacy_record(checkpoint: Path, model: Any) -> RunRecord | None:
    """The run record of a checkpoint written before run records existed: its genomics.json (task, classes,
    seq_len, conjoin, seed). The classes become the classifier's label names."""
    path = checkpoint / LEGACY_RECORD
    if not path.is_file():
        return None
    legacy = read_json_object(path, "legacy run record")
    where = str(path)
    classes = checked_value("classes", legacy.get("classes"), list[str] | None, where)
    if classes and getattr(model, "labels", ()) is None:
        num_labels = getattr(model, "num_labels", len(classes))
        if len(classes) != num_labels:
            raise UserError(
                f"{path}: classes lists {len(classes)} names, but the model has {num_labels} classes; restore the "
                f"checkpoint's {LEGACY_RECORD}"
            )
        model.labels = tuple(classes)
    options = {
        "seq_len": checked_value("seq_len", legacy.get("seq_len"), int | None, where),
        "conjoin": checked_value("conjoin", legacy.get("conjoin", False), bool, where),
    }
    task = checked_value("task", legacy.get("task", "classify"), str, where)
    return RunRecord(DOMAIN_NAME, task, options, checked_value("seed", legacy.get("seed", 0), int, where))


def predict(
    checkpoint: CheckpointOption,
    data: DataOption = None,
    out: Annotated[
        Path, typer.Option("--out", help="predictions.csv, or embeddings.npy / .parquet with --embed.")
    ] = Path("predictions.csv"),
    embed: Annotated[
        bool, typer.Option("--embed", help="Export one embedding per sequence instead of labels.")
    ] = False,
    conjoin: ConjoinOption = False,
    genome: GenomeOption = None,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = None,
    max_length: Annotated[
        int,
        typer.Option(
            "--max-length",
            min=2,
            help="Longest sequence taken (bases), and most padded bases run together: memory grows with it.",
        ),
    ] = MAX_PREDICT_LENGTH,
) -> None:
    """Label DNA sequences (FASTA/FASTQ/BED/CSV) with a classifier checkpoint, or export embeddings (--embed) from
    any genomics checkpoint. Labels in the input, if any, are checked against the model's classes and scored."""
    import torch

    from mambakit.models import MambaForSequenceClassification
    from mambakit.predictions import check_output_file, write_predictions_csv
    from mambakit.train.classification import classification_metrics

    from .datasets import SequenceDataset
    from .predict import check_embeddings_path, check_lengths, predict_logits, save_embeddings
    from .predict import embed as embed_sequences

    if not data:
        raise UserError("predict needs --data: the sequences to label or embed")
    if embed:
        check_embeddings_path(out)
    else:
        check_output_file(out)
    loaded = load_checkpoint(DOMAIN, checkpoint, device=resolve_device(device or "auto"), verb="predict")
    model, tokenizer = loaded.model, loaded.featurizer
    options = DOMAIN.options_from_json(loaded.record.options, str(checkpoint))
    records = read_inputs(list(data), genome)
    check_lengths(records, max_length, options.seq_len)
    classes = list(getattr(model, "labels", None) or [])
    labelled = embed is False and bool(classes) and all(r.label is not None for r in records)
    dataset = SequenceDataset(records, tokenizer, classes if labelled else None, options.seq_len)
    if embed:
        written = save_embeddings(
            out,
            embed_sequences(model, dataset, batch_size or 64, conjoin=conjoin, max_tokens=max_length),
            dataset.names,
        )
        print(f"wrote {len(dataset):,} embeddings to {written}")
        return
    if not isinstance(model, MambaForSequenceClassification):
        raise UserError(f"{checkpoint}: a {model.architecture} predicts no labels; use --embed for embeddings")
    logits = predict_logits(model, dataset, batch_size or 64, conjoin or options.conjoin, max_length)
    probabilities = torch.from_numpy(logits).softmax(-1).numpy()
    written = write_predictions_csv(out, dataset.names, probabilities.argmax(-1), probabilities, classes)
    print(f"wrote {len(dataset):,} predictions to {written}")
    if labelled:
        print_metrics(
            f"genomics: {checkpoint} on {', '.join(map(str, data))}",
            classification_metrics(torch.from_numpy(logits), torch.from_numpy(dataset.labels)),
        )


DOMAIN = Domain(
    name=DOMAIN_NAME,
    help="DNA: classification, next-base and masked pretraining, embeddings",
    tasks=TASKS,
    options=GenomicsOptions,
    featurizer=lambda options: DNATokenizer(),
    load_featurizer=DNATokenizer.from_json,
    presets=PRESETS,
    commands={"predict": predict},
    read_legacy=read_legacy_record,
    requires=(Requirement("Bio", "Biopython", "genomics"), PARQUET),
)
