"""The audio tasks for mambakit's trainer: next-sample language modelling is the core's `CausalLMTask("sample")`;
clip classification is the core's, over fixed-length clips that bring their own attention masks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.utils.data import default_collate

from mambakit.train.classification import ClassificationTask


class AudioClassificationTask(ClassificationTask):
    """Accuracy, MCC, AUROC of clips already cropped or padded to one length (the dataset's masks are kept)."""

    def collate(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        return default_collate(list(examples))
