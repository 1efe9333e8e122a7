"""Image classification for mambakit's trainer: timm's transforms for training and evaluation, optional
Mixup/CutMix on training batches, and top-1/top-5/MCC/AUROC with a confusion matrix at evaluation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from torch import Tensor, nn
from torch.utils.data import default_collate

from mambakit.train.classification import ClassificationTask, classification_metrics


def image_transform(
    img_size: int,
    training: bool,
    auto_augment: str | None = None,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    crop_pct: float = 1.0,
    crop_scale: float = 0.25,
) -> Any:
    """timm's transform: for training a random resized crop (area `crop_scale` to 1), horizontal flips and, when named,
    an AutoAugment/RandAugment policy (e.g. "rand-m9-mstd0.5"); for evaluation a resize and centre crop of
    `crop_pct`. Both end in a normalised float tensor (3, img_size, img_size)."""
    if training:
        return create_transform(
            img_size,
            is_training=True,
            scale=(crop_scale, 1.0),
            hflip=0.5,
            auto_augment=auto_augment,
            interpolation="bicubic",
            mean=mean,
            std=std,
        )
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, interpolation="bicubic", mean=mean, std=std)


class ImageClassificationTask(ClassificationTask):
    """Batches of `pixel_values` (b, 3, H, W) and `labels` (b,). With `mixup` or `cutmix` > 0, training batches are
    mixed (timm's Mixup, label smoothing `smoothing`) and the loss uses the soft targets; evaluation never mixes.
    `evaluate` adds top-5 accuracy and keeps the last confusion matrix (true x predicted counts) in
    `confusion_matrix`."""

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, smoothing: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.mixup = (
            Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=num_classes)
            if mixup > 0 or cutmix > 0
            else None
        )
        self.confusion_matrix: np.ndarray | None = None

    def collate(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Stacked pixel_values and labels (the images share one size after the transform)."""
        return default_collate(list(examples))

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        if self.mixup is not None and model.training and len(batch["labels"]) % 2 == 0:
            pixels, targets = self.mixup(batch["pixel_values"], batch["labels"])
            batch = {"pixel_values": pixels, "labels": targets}
        return super().compute_loss(model, batch)

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        """loss, accuracy (top-1), top5, mcc, auroc over all batches."""
        logits, labels = self.collect_logits(model, batches)
        metrics = classification_metrics(logits, labels)
        k = min(5, logits.shape[1])
        metrics["top5"] = float((logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean())
        confusion = np.zeros((logits.shape[1], logits.shape[1]), dtype=np.int64)
        np.add.at(confusion, (labels.numpy(), logits.argmax(1).numpy()), 1)
        self.confusion_matrix = confusion
        return metrics
