"""The vision domain: image classification with VMamba or any timm model, on an ImageFolder, a CSV of path,label,
a `datasets` parquet dump, or the Fashion-MNIST subset shipped with the package (data/README.md). The core builds
`mambakit train vision`; `eval` (with a confusion matrix) and `predict` (also from a released VMamba .pth) are the
app's own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from mambakit.cli_support import BatchSizeOption, CheckpointOption, DataOption, DeviceOption, print_metrics
from mambakit.cli_support import resolve_device as resolve_device_name
from mambakit.domains import Domain, DomainTask, Requirement, Splits, TaskInputs, load_checkpoint
from mambakit.errors import UserError

DOMAIN_NAME = "vision"
#: --preset -> the timm model trained when --model is not given.
PRESETS = {
    "tiny": {"model_name": "vmamba_nano"},
    "small": {"model_name": "vmamba_tiny_s1l8"},
    "base": {"model_name": "vmamba_base_s2l15"},
}
TRAIN_DEFAULTS = {
    "epochs": 3,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "warmup_ratio": 0.05,
    "eval_every": 100,
    "save_every": 100,
    "log_every": 20,
}
#: The resolution the embedded 28 x 28 images train at, and user images when --img-size is not given.
EMBEDDED_SIZE, DEFAULT_SIZE = 32, 224

ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="Any timm model name (vmamba_nano, vmamba_tiny_s1l8, resnet18, convnext_tiny, ...)."),
]


#: What every vision command imports (images decode through Pillow; timm needs torchvision), dependencies first so
#: the first one missing is the one named; and pyarrow for `datasets` dumps.
REQUIREMENTS = (
    Requirement("PIL", "Pillow", "vision"),
    Requirement("torchvision", "torchvision", "vision"),
    Requirement("timm", "timm", "vision"),
    Requirement("pyarrow", "pyarrow", "vision", needed_for="Hugging Face datasets dumps (.parquet/.arrow)"),
)


#: timm schedulers offered by --sched (those that need no metric and no epoch structure).
SCHEDULERS = ("cosine", "tanh", "poly", "step")


@dataclass(frozen=True)
class VisionOptions:
    """The vision app's own options (saved in each checkpoint's run record)."""

    model: ModelOption = None
    img_size: Annotated[
        int | None,
        typer.Option(
            "--img-size",
            min=8,
            help=f"Training resolution (default {EMBEDDED_SIZE} on the embedded data, {DEFAULT_SIZE} on yours).",
        ),
    ] = None
    pretrained: Annotated[
        Path | None, typer.Option("--pretrained", help="Start from these weights (e.g. a released VMamba .pth).")
    ] = None
    auto_augment: Annotated[
        str | None, typer.Option("--auto-augment", help="timm AutoAugment/RandAugment policy, e.g. rand-m9-mstd0.5.")
    ] = None
    crop_scale: Annotated[
        float, typer.Option("--crop-scale", min=0.01, max=1.0, help="Smallest area of the random resized crop.")
    ] = 0.6
    mixup: Annotated[float, typer.Option("--mixup", min=0.0, help="Mixup alpha (0: off).")] = 0.0
    cutmix: Annotated[float, typer.Option("--cutmix", min=0.0, help="CutMix alpha (0: off).")] = 0.0
    drop_path: Annotated[
        float | None, typer.Option("--drop-path", min=0.0, max=1.0, help="Stochastic depth rate (default: model's).")
    ] = None
    opt: Annotated[
        str, typer.Option("--opt", help="timm optimizer (create_optimizer_v2): adamw, lamb, sgd, lion, ...")
    ] = "adamw"
    layer_decay: Annotated[
        float | None,
        typer.Option("--layer-decay", min=0.0, max=1.0, help="Layer-wise lr decay (e.g. 0.75 for fine-tuning)."),
    ] = None
    sched: Annotated[
        str,
        typer.Option(
            "--sched",
            help="timm lr scheduler, stepped per update after the warm-up: " + " | ".join(SCHEDULERS) + ".",
        ),
    ] = "cosine"


def _labelled(inputs: TaskInputs) -> Any:
    from .data import embedded_dataset, load_labelled_images

    return load_labelled_images(inputs.run.data) if inputs.run.data else embedded_dataset(seed=inputs.run.seed)


def _img_size(inputs: TaskInputs) -> int:
    return inputs.options.img_size or (DEFAULT_SIZE if inputs.run.data else EMBEDDED_SIZE)


def _data(inputs: TaskInputs) -> Splits:
    from .data import ImageDataset, split_indices
    from .tasks import image_transform

    labelled = _labelled(inputs)
    splits = split_indices(labelled, seed=inputs.run.seed) if inputs.run.data else labelled.splits
    size, classes = _img_size(inputs), labelled.classes
    options: VisionOptions = inputs.options
    train_transform = image_transform(
        size, training=True, auto_augment=options.auto_augment, crop_scale=options.crop_scale
    )
    eval_transform = image_transform(size, training=False)

    def dataset(split: str, transform: Any) -> Any:
        indices = splits.get(split) or []
        return ImageDataset([labelled.records[i] for i in indices], classes, transform) if indices else None

    return Splits(
        dataset("train", train_transform),
        dataset("val", eval_transform),
        dataset("test", eval_transform),
        tuple(classes),
    )


def _eval_data(inputs: TaskInputs) -> Any:
    """The user's labelled images, whole (classes checked against the model's); else the embedded test split."""
    from .data import ImageDataset, load_labelled_images
    from .tasks import image_transform

    transform = image_transform(inputs.model.config.img_size, training=False)
    if not inputs.run.data:
        return _data(inputs).test
    return ImageDataset(load_labelled_images(inputs.run.data).records, inputs.labels, transform)


def _model(inputs: TaskInputs, splits: Splits) -> Any:
    from .classifier import ImageClassifier, VisionConfig

    options: VisionOptions = inputs.options
    fixed: dict[str, Any] = {"num_classes": len(splits.labels), "in_chans": 3, "img_size": _img_size(inputs)}
    if options.model is not None:
        fixed["model_name"] = options.model
    config = inputs.model_config(VisionConfig, **fixed)
    if options.drop_path is not None:
        config = VisionConfig.from_dict(
            {**config.to_dict(), "model_kwargs": {**config.model_kwargs, "drop_path_rate": options.drop_path}}
        )
    pretrained = None if options.pretrained is None else str(options.pretrained)
    return ImageClassifier(config, labels=splits.labels, pretrained_file=pretrained)


def _optimizer(inputs: TaskInputs) -> Any:
    """timm's create_optimizer_v2 over the timm model, as `mambakit.train.fit`'s optimizer factory."""
    options: VisionOptions = inputs.options

    def build(model: Any, exempt: set[str], config: Any) -> Any:
        from timm.optim import create_optimizer_v2

        extra = {"betas": config.betas} if options.opt.lower() in ("adamw", "adam", "nadamw", "lamb") else {}
        try:
            optimizer = create_optimizer_v2(
                model.model,
                opt=options.opt,
                lr=config.lr,
                weight_decay=config.weight_decay,
                layer_decay=options.layer_decay,
                **extra,
            )
        except (AssertionError, ValueError) as error:  # timm asserts on an unknown optimizer name
            raise UserError(f"--opt {options.opt!r}: {error or 'not an optimizer timm knows'}") from None
        return optimizer

    return build


class TimmUpdateSchedule:
    """A timm scheduler stepped once per optimizer update (timm's `step_update`), with the state a resumed run
    restores. timm's schedulers apply each group's lr_scale (layer decay) themselves."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler, self.updates = scheduler, 0

    def step(self) -> None:
        self.updates += 1
        self.scheduler.step_update(self.updates)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = state_dict["updates"]
        self.scheduler.load_state_dict(state_dict["scheduler"])
        self.scheduler.step_update(self.updates)


def _schedule(inputs: TaskInputs) -> Any:
    """timm's create_scheduler_v2 counted in optimizer updates: warm-up from the config's steps, decay to
    lr * min_lr_ratio at the last step ("step" divides the lr by 10 at each third of the run)."""
    options: VisionOptions = inputs.options
    if options.sched not in SCHEDULERS:
        raise UserError(f"--sched {options.sched!r}: choose one of {', '.join(SCHEDULERS)}")

    def build(optimizer: Any, config: Any, warmup_steps: int, total_steps: int) -> TimmUpdateSchedule:
        from timm.scheduler import create_scheduler_v2

        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=options.sched,
            num_epochs=max(1, total_steps - warmup_steps),
            decay_epochs=max(1, (total_steps - warmup_steps) // 3),
            decay_rate=0.1,
            min_lr=config.lr * config.min_lr_ratio,
            warmup_epochs=warmup_steps,
            warmup_prefix=True,
            step_on_epochs=False,
            updates_per_epoch=1,
        )
        return TimmUpdateSchedule(scheduler)

    return build


def _task(inputs: TaskInputs) -> Any:
    from .tasks import ImageClassificationTask

    return ImageClassificationTask(len(inputs.labels), inputs.options.mixup, inputs.options.cutmix)


def write_confusion_png(path: Path, confusion: Any, labels: list[str]) -> Path:
    """The confusion matrix (rows: true class, columns: predicted) as a PNG heat map, counts in the cells."""
    from PIL import Image, ImageDraw

    cell, margin = 36, 120
    size = len(labels)
    image = Image.new("RGB", (margin + cell * size, margin + cell * size), "white")
    draw = ImageDraw.Draw(image)
    totals = confusion.sum(axis=1, keepdims=True).clip(min=1)
    for row in range(size):
        draw.text((4, margin + row * cell + cell // 3), labels[row][:18], fill="black")
        draw.text((margin + row * cell + 2, margin - 14 - 12 * (row % 2)), labels[row][:6], fill="black")
        for column in range(size):
            shade = int(255 * (1 - confusion[row, column] / totals[row, 0]))
            box = (
                margin + column * cell,
                margin + row * cell,
                margin + (column + 1) * cell - 1,
                margin + (row + 1) * cell - 1,
            )
            draw.rectangle(box, fill=(shade, shade, 255))
            draw.text(
                (box[0] + 3, box[1] + cell // 3),
                str(int(confusion[row, column])),
                fill="black" if shade > 110 else "white",
            )
    draw.text((4, 4), "rows: true class; columns: predicted", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def evaluate(
    checkpoint: CheckpointOption,
    data: DataOption = None,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = None,
    confusion: Annotated[Path, typer.Option("--confusion", help="Where to write the confusion matrix PNG.")] = Path(
        "confusion_matrix.png"
    ),
) -> None:
    """Score a vision checkpoint: top-1/top-5 accuracy, MCC, AUROC on labelled images (--data), or on the embedded
    test split; writes the confusion matrix as a PNG."""
    from mambakit.domains import RunOptions
    from mambakit.train import EvalConfig
    from mambakit.train import evaluate as evaluate_model

    resolved = resolve_device_name(device or "auto")
    loaded = load_checkpoint(DOMAIN, checkpoint, device=resolved)
    options = DOMAIN.options_from_json(loaded.record.options, str(checkpoint))
    run = RunOptions(data=list(data or []), seed=loaded.record.seed, device=resolved)
    inputs = TaskInputs(run, options, None, PRESETS, model=loaded.model, labels=tuple(loaded.model.labels or ()))
    task = _task(inputs)
    metrics = evaluate_model(loaded.model, task, _eval_data(inputs), EvalConfig(batch_size or 64, device=resolved))
    print_metrics(f"vision: {checkpoint}", metrics)
    written = write_confusion_png(confusion, task.confusion_matrix, list(loaded.model.labels))
    print(f"wrote the confusion matrix to {written}")


def _official_model(weights: Path, model_name: str, device: str) -> tuple[Any, Any, list[str]]:
    """A timm model with released weights (a VMamba .pth), its eval transform and ImageNet's class names."""
    import timm
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    try:
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    except UserError:
        raise
    except Exception as error:  # timm's own loaders (non-VMamba models) fail on bad bytes with many types
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{weights}: cannot load into {model_name} ({first_line})") from None
    transform = create_transform(**resolve_data_config({}, model=model))
    info = ImageNetInfo()
    labels = (
        [info.index_to_description(i) for i in range(model.num_classes)]
        if model.num_classes == 1000
        else [str(i) for i in range(model.num_classes)]
    )
    return model.to(device).eval(), transform, labels


def predict(
    checkpoint: CheckpointOption,
    data: DataOption = None,
    out: Annotated[Path, typer.Option("--out", help="The predictions CSV.")] = Path("predictions.csv"),
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes listed per image.")] = 5,
    model: Annotated[
        str, typer.Option("--model", help="With a weights file as -c: the timm model it is for.")
    ] = "vmamba_tiny_s1l8",
    batch_size: BatchSizeOption = None,
    device: DeviceOption = None,
) -> None:
    """Classify images (files, folders, a CSV of paths) with a vision checkpoint folder, or with released weights
    (-c vssm1_tiny_0230s_ckpt_epoch_264.pth --model vmamba_tiny_s1l8: ImageNet classes); writes the top-k classes
    per image. Labels in the input, if any, are scored."""
    import torch

    from mambakit.predictions import check_output_file, write_top_k_csv
    from mambakit.train.classification import classification_metrics

    from .data import ImageDataset, read_images
    from .tasks import image_transform

    if not data:
        raise UserError("predict needs --data: image files, folders of images, or a CSV of image paths")
    check_output_file(out)
    resolved = resolve_device_name(device or "auto")
    if checkpoint.is_file():
        network, transform, labels = _official_model(checkpoint, model, resolved)
    else:
        loaded = load_checkpoint(DOMAIN, checkpoint, device=resolved, verb="predict")
        network, labels = loaded.model.eval(), list(loaded.model.labels or [])
        transform = image_transform(loaded.model.config.img_size, training=False)
    records = read_images(data)
    scored = all(record.label is not None for record in records)
    dataset = ImageDataset(records, labels if scored else None, transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size or 64)
    logits = []
    with torch.no_grad():
        for batch in loader:
            output = network(batch["pixel_values"].to(resolved))
            logits.append((output.logits if hasattr(output, "logits") else output).float().cpu())
    all_logits = torch.cat(logits)
    probabilities = all_logits.softmax(-1).numpy()
    names = [record.source for record in records]
    written = write_top_k_csv(out, names, probabilities, labels, min(top_k, len(labels)))
    print(f"wrote {len(records):,} predictions to {written}")
    if scored:
        print_metrics(
            f"vision: {checkpoint} on {', '.join(map(str, data))}",
            classification_metrics(all_logits, torch.from_numpy(dataset.labels)),
        )


DOMAIN = Domain(
    name=DOMAIN_NAME,
    help="images: VMamba or any timm model, classification",
    tasks=[
        DomainTask(
            "classify",
            "top-1/top-5, MCC, AUROC; default data: a Fashion-MNIST subset",
            data=_data,
            model=_model,
            task=_task,
            defaults=TRAIN_DEFAULTS,
            eval_data=_eval_data,
            optimizer=_optimizer,
            schedule=_schedule,
        )
    ],
    options=VisionOptions,
    presets=PRESETS,
    commands={"eval": evaluate, "predict": predict},
    requires=REQUIREMENTS,
)
