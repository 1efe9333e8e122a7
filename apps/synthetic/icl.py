"""Park et al. 2024 ("Can Mamba Learn How to Learn?", code krafton-ai/mambaformer-icl): three in-context learning
tasks whose prompts are sequences of real vectors, read by `mambakit.models.MambaForVectorSequences`.

- linear regression: x_i ~ N(0, I_d), w ~ N(0, I_d) per prompt, y_i = w·x_i; the prompt x_1, ỹ_1, ..., x_N, ỹ_N
  has ỹ_i = (y_i, 0, ..., 0) (Garg et al.'s format), the output at x_i predicts y_i; MSE over all N points.
  Trained with Park's curriculum (fewer dimensions and points early on).
- sparse parity: x_i uniform in {±1}^d, y_i the product of k = 2 chosen coordinates; the same interleaved prompt;
  binary cross-entropy on the logit at x_i, metric sign accuracy.
- vector-valued MQAR: N key/value pairs in R^d, each vector Gaussian scaled to norm sqrt(d), then a query that
  copies one of the keys: k_1, v_1, ..., k_N, v_N, q; the output at q predicts the queried key's value (MSE),
  metric: the prompt's value nearest the prediction is the right one.

The generators and datasets give the raw ingredients of a prompt ({"xs", "w"}, {"xs", "coords"},
{"keys", "values", "query"}), not the prompt: `InContextTask` builds the prompt and the labels in `compute_loss`,
after its `curriculum` has cut the batch down, so labels always agree with what the model sees.

Open choices, where the paper or its code leaves one (or where this reading departs from the code):
- Sparse parity draws the k coordinates per prompt; Park's code draws one set per training step for the whole
  batch. Prompts do not interact, so each prompt has the same distribution either way; only the correlation
  between prompts of one batch differs.
- MQAR's query copies a key drawn uniformly from the N keys. Park's code draws the copied vector's index as
  2 * randint(0, N) with N inclusive, so 1/(N+1) of its queries are a fresh vector (whose target is the value of
  the key with the largest inner product); that quirk is not copied.
- MQAR's accuracy compares the prediction with the prompt's N values (nearest in Euclidean distance); Park's
  code matches it against the keys' index.
- Sparse parity's `accuracy_last_half` scores the points from index N // 2 (0-based) on.
- The curriculum (linear regression only, as in Park's configs; sparse parity and MQAR train at full size)
  starts at min(5, d) dimensions and min(11, N) points and adds 1 dimension and 2 points every
  `curriculum_every` steps (Park: 2,000, from 5 to 20 dimensions and 11 to 41 points). Dimensions past the
  current count are zeroed in xs and in w before y is computed (Park zeroes them in the sampler); points past it
  are dropped.
- Losses are means: over the N points (regression, parity) and over the d components of the value (MQAR).
  Linear regression's `error` is Garg et al.'s squared error over d; its "loss" the plain mean squared error.
- The synthetic domain's training defaults and 512 validation prompts apply (Park: Adam, batch 64, lr 1e-4 to
  4e-4, clipping 10 or 100, 1,280 evaluation prompts); the CLI's flags and config file set Park's values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambakit.errors import UserError
from mambakit.train import Task

from .data import SeededExamples
from .generators import distinct_draws

LINEAR_REGRESSION, SPARSE_PARITY, VECTOR_MQAR = "linear-regression", "sparse-parity", "vector-mqar"
KINDS = (LINEAR_REGRESSION, SPARSE_PARITY, VECTOR_MQAR)
#: Park's curriculum: (first value, increment) of the dimensions and of the points, stepped every interval.
CURRICULUM_DIMS = (5, 1)
CURRICULUM_POINTS = (11, 2)
CURRICULUM_EVERY = 2000


@dataclass(frozen=True)
class PromptShape:
    """An ICL task's sizes: vector dimension d, points (regression, parity) or key/value pairs (MQAR) N, and the
    chosen coordinates k of sparse parity."""

    dims: int
    points: int
    parity_bits: int = 2


def linear_regression(batch: int, points: int, dims: int, generator: torch.Generator) -> dict[str, Tensor]:
    """{"xs": (batch, points, dims), "w": (batch, dims)}, both N(0, I): one weight vector per prompt (Garg et al.'s
    `linear_regression`, scale 1, no noise). The labels are `regression_targets(xs, w)`."""
    if dims < 1 or points < 1:
        raise UserError(f"linear regression needs dims >= 1 and points >= 1, got {dims} and {points}")
    xs = torch.randn(batch, points, dims, generator=generator)
    return {"xs": xs, "w": torch.randn(batch, dims, generator=generator)}


def sparse_parity(batch: int, points: int, dims: int, bits: int, generator: torch.Generator) -> dict[str, Tensor]:
    """{"xs": (batch, points, dims) uniform in {-1, 1}, "coords": (batch, dims) a 0/1 mask of `bits` distinct
    coordinates per prompt}. The labels are `parity_targets(xs, coords)`."""
    if not 1 <= bits <= dims or points < 1:
        raise UserError(f"sparse parity needs 1 <= bits <= dims and points >= 1, got {bits}, {dims} and {points}")
    xs = torch.randint(0, 2, (batch, points, dims), generator=generator).float() * 2 - 1
    chosen = distinct_draws(batch, dims, bits, generator)
    coords = torch.zeros(batch, dims).scatter_(1, chosen, 1.0)
    return {"xs": xs, "coords": coords}


def vector_mqar(batch: int, pairs: int, dims: int, generator: torch.Generator) -> dict[str, Tensor]:
    """{"keys", "values": (batch, pairs, dims), each vector Gaussian scaled to norm sqrt(dims); "query": (batch,)
    the index of the queried key, uniform over the pairs}. The prompt ends with a copy of that key."""
    if dims < 1 or pairs < 1:
        raise UserError(f"vector MQAR needs dims >= 1 and pairs >= 1, got {dims} and {pairs}")
    vectors = torch.randn(batch, 2, pairs, dims, generator=generator)
    vectors = vectors / vectors.norm(dim=-1, keepdim=True) * dims**0.5
    query = torch.randint(0, pairs, (batch,), generator=generator)
    return {"keys": vectors[:, 0], "values": vectors[:, 1], "query": query}


def regression_targets(xs: Tensor, w: Tensor) -> Tensor:
    """y = w·x per point: xs (b, n, d), w (b, d) -> (b, n). Elementwise, so autocast leaves it in fp32."""
    return (xs * w.unsqueeze(1)).sum(-1)


def parity_targets(xs: Tensor, coords: Tensor) -> Tensor:
    """The product of the chosen coordinates per point, in {-1, 1}: xs (b, n, d), coords (b, d) 0/1 -> (b, n)."""
    return torch.where(coords.bool().unsqueeze(1), xs, torch.ones_like(xs)).prod(-1)


def interleaved_prompt(xs: Tensor, ys: Tensor) -> Tensor:
    """x_1, ỹ_1, ..., x_n, ỹ_n with ỹ_i = (y_i, 0, ..., 0): xs (b, n, d), ys (b, n) -> (b, 2n, d)."""
    padded_ys = torch.zeros_like(xs)
    padded_ys[..., 0] = ys
    return torch.stack((xs, padded_ys), dim=2).flatten(1, 2)


def retrieval_prompt(keys: Tensor, values: Tensor, query: Tensor) -> Tensor:
    """k_1, v_1, ..., k_n, v_n, k_query: keys, values (b, n, d), query (b,) -> (b, 2n + 1, d)."""
    queried = keys[torch.arange(keys.shape[0], device=keys.device), query]
    return torch.cat((torch.stack((keys, values), dim=2).flatten(1, 2), queried.unsqueeze(1)), dim=1)


def least_squares_predictions(xs: Tensor, ys: Tensor) -> Tensor:
    """Garg et al.'s least-squares baseline: at point i, x_i · w_i where w_i is the minimum-norm least-squares fit
    to the points before i (0 at the first point), in float64: xs (b, n, d), ys (b, n) -> (b, n).

    All n fits run as one batched pseudo-inverse: fit i sees the points with the later rows zeroed, and zero rows
    leave the minimum-norm solution unchanged."""
    xs, ys = xs.double(), ys.double()
    points = xs.shape[1]
    before = torch.ones(points, points, device=xs.device).tril(-1).bool()  # before[i, j]: point j precedes i
    fit_xs = xs.unsqueeze(1) * before.unsqueeze(-1)  # (b, n fits, n points, d)
    fit_ys = ys.unsqueeze(1) * before
    weights = (torch.linalg.pinv(fit_xs) @ fit_ys.unsqueeze(-1)).squeeze(-1)  # (b, n, d)
    return (xs * weights).sum(-1)


@dataclass(frozen=True)
class InContextSpec:
    """One ICL task: its kind, its default sizes and one example's generator."""

    kind: str
    defaults: PromptShape
    generate: Callable[[PromptShape, torch.Generator], dict[str, Tensor]]


#: task name -> its kind, the CPU-smoke sizes of ../shared/notes/capabilities.md, and one example's generator.
TASKS: dict[str, InContextSpec] = {
    "icl-linear-regression": InContextSpec(
        LINEAR_REGRESSION, PromptShape(dims=5, points=11), lambda s, g: linear_regression(1, s.points, s.dims, g)
    ),
    "icl-sparse-parity": InContextSpec(
        SPARSE_PARITY,
        PromptShape(dims=10, points=40, parity_bits=2),
        lambda s, g: sparse_parity(1, s.points, s.dims, s.parity_bits, g),
    ),
    "icl-vector-mqar": InContextSpec(
        VECTOR_MQAR, PromptShape(dims=8, points=8), lambda s, g: vector_mqar(1, s.points, s.dims, g)
    ),
}


def prompt_length(kind: str, shape: PromptShape) -> int:
    """Positions of a full-size prompt: 2N, plus the query for MQAR."""
    return 2 * shape.points + (kind == VECTOR_MQAR)


def output_features(kind: str, shape: PromptShape) -> int:
    """The model's outputs per position: a value vector for MQAR, a scalar otherwise."""
    return shape.dims if kind == VECTOR_MQAR else 1


class InContextData(SeededExamples):
    """The raw ingredients of one task's prompts (see the module docstring)."""

    def __init__(self, task: str, shape: PromptShape, seed: int, size: int, validation: bool = False) -> None:
        self.task = task  # the name, not its generator: loader workers that spawn must pickle the dataset
        super().__init__(shape, seed, size, validation)

    def example(self, generator: torch.Generator) -> dict[str, Tensor]:
        return {name: value[0] for name, value in TASKS[self.task].generate(self.shape, generator).items()}


class InContextTask(Task):
    """The trainer Task of one ICL kind: builds each prompt and its labels from the raw batch, reads the model's
    outputs where they are scored, and reports the kind's metrics (linear regression: `error`, the squared error
    per point over d, with the least-squares and zero-predictor baselines; sparse parity and MQAR: `accuracy`).
    Linear regression trains with Park's curriculum, one stage every `curriculum_every` steps."""

    def __init__(self, kind: str, curriculum_every: int = CURRICULUM_EVERY) -> None:
        if kind not in KINDS:
            raise UserError(f"unknown ICL kind {kind!r}; kinds: {', '.join(KINDS)}")
        if curriculum_every < 1:
            raise UserError(f"curriculum_every must be >= 1, got {curriculum_every}")
        self.kind, self.curriculum_every = kind, curriculum_every
        self.primary_metric = "error" if kind == LINEAR_REGRESSION else "accuracy"
        self.greater_is_better = kind != LINEAR_REGRESSION

    def predict(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The model's (predictions, targets) on a raw batch, fp32: per point (b, n) for regression (the value) and
        parity (the logit), the queried value (b, d) for MQAR."""
        if self.kind == VECTOR_MQAR:
            keys, values, query = batch["keys"], batch["values"], batch["query"]
            outputs = model(input_vectors=retrieval_prompt(keys, values, query)).logits
            return outputs[:, -1].float(), values[torch.arange(len(query), device=query.device), query]
        xs = batch["xs"]
        ys = (
            regression_targets(xs, batch["w"])
            if self.kind == LINEAR_REGRESSION
            else parity_targets(xs, batch["coords"])
        )
        outputs = model(input_vectors=interleaved_prompt(xs, ys)).logits
        return outputs[:, ::2, 0].float(), ys  # the outputs at the x positions

    def _loss(self, predictions: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        if self.kind == SPARSE_PARITY:
            return F.binary_cross_entropy_with_logits(predictions, (targets + 1) / 2, reduction=reduction)
        return F.mse_loss(predictions, targets, reduction=reduction)

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return self._loss(*self.predict(model, batch))

    def count_tokens(self, batch: dict[str, Tensor]) -> int:
        """Prompt positions in the batch."""
        if self.kind == VECTOR_MQAR:
            batch_size, pairs = batch["keys"].shape[:2]
            return batch_size * (2 * pairs + 1)
        return 2 * batch["xs"].shape[:2].numel()

    def curriculum(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Linear regression at training step `step`: the first `dims` coordinates of xs and w kept (the rest
        zeroed) and the first `points` points, both growing every `curriculum_every` steps up to the full size."""
        if self.kind != LINEAR_REGRESSION:
            return batch
        xs, w = batch["xs"], batch["w"]
        full_points, full_dims = xs.shape[1:]
        stage = step // self.curriculum_every
        dims = min(full_dims, min(CURRICULUM_DIMS[0], full_dims) + CURRICULUM_DIMS[1] * stage)
        points = min(full_points, min(CURRICULUM_POINTS[0], full_points) + CURRICULUM_POINTS[1] * stage)
        dropped = torch.arange(full_dims, device=xs.device) >= dims
        return {"xs": xs[:, :points].masked_fill(dropped, 0.0), "w": w.masked_fill(dropped, 0.0)}

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        """The kind's metrics over all prompts (always full size); "loss" is the training loss."""
        if self.kind == LINEAR_REGRESSION:
            return self._evaluate_regression(model, batches)
        loss, loss_terms, correct, scored, correct_late, scored_late = 0.0, 0, 0, 0, 0, 0
        for batch in batches:
            predictions, targets = self.predict(model, batch)
            loss += float(self._loss(predictions, targets, reduction="sum"))
            loss_terms += predictions.numel()
            if self.kind == SPARSE_PARITY:
                right = torch.where(predictions >= 0, 1.0, -1.0) == targets
                late = right[:, targets.shape[1] // 2 :]
                correct_late, scored_late = correct_late + int(late.sum()), scored_late + late.numel()
            else:
                distances = (batch["values"].float() - predictions.unsqueeze(1)).norm(dim=-1)  # (b, pairs)
                right = distances.argmin(dim=1) == batch["query"]
            correct, scored = correct + int(right.sum()), scored + right.numel()
        if scored == 0:
            raise UserError("evaluation data is empty: it gave no batch")
        metrics = {"loss": loss / loss_terms, "accuracy": correct / scored}
        if self.kind == SPARSE_PARITY:
            metrics["accuracy_last_half"] = correct_late / scored_late
        return metrics

    def _evaluate_regression(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        # Squared errors per point, (prompts, n) per batch: the model's, least squares', the zero predictor's.
        model_errors, least_squares_errors, zero_errors = [], [], []
        for batch in batches:
            predictions, targets = self.predict(model, batch)
            targets = targets.double()
            model_errors.append((predictions.double() - targets) ** 2)
            least_squares_errors.append((least_squares_predictions(batch["xs"], targets) - targets) ** 2)
            zero_errors.append(targets**2)
        if not model_errors:
            raise UserError("evaluation data is empty: it gave no batch")
        dims = batch["xs"].shape[-1]

        def per_point(errors: list[Tensor]) -> Tensor:
            # Garg et al.'s normalisation: squared error over d, so the zero predictor scores 1 per point.
            return torch.cat(errors).mean(0) / dims

        model_per_point = per_point(model_errors)
        return {
            "loss": float(model_per_point.mean()) * dims,
            "error": float(model_per_point.mean()),
            "error_last": float(model_per_point[-1]),
            "least_squares_error": float(per_point(least_squares_errors).mean()),
            "zero_error": float(per_point(zero_errors).mean()),
        }
