"""TrainConfig: everything that decides a training run, as plain data with a JSON round trip.

Imports neither torch nor any kernel, so a CLI can build and validate one cheaply.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..jsonfiles import load_json_object

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
DISTRIBUTED = ("ddp", "fsdp")


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate: batch size, precision, device, workers and seed (of per-batch randomness)."""

    batch_size: int = 32
    precision: str = "auto"
    """"auto": bf16 autocast on CUDA, fp32 on CPU; "fp32"; "bf16"."""
    device: str = "auto"
    """"auto": CUDA when available, else CPU; "cpu"; "cuda" (an error where CUDA is absent)."""
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("batch_size", 1), ("num_workers", 0), ("seed", 0)):
            _check_int(name, getattr(self, name), minimum)
        for name, choices in (("precision", PRECISIONS), ("device", DEVICES)):
            if getattr(self, name) not in choices:
                raise UserError(f"eval config: {name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: length, optimizer, schedule, precision, checkpoints, logging; validated on construction.

    Units: a *step* is one optimizer update. It consumes `grad_accum_steps` micro-batches of `batch_size`
    examples on every process, so the effective batch is batch_size * grad_accum_steps * world_size. An
    *epoch* is one pass over the training data; examples that do not fill a whole step at its end are left out.
    """

    out_dir: Path
    """Checkpoints (last/, best/), metrics.jsonl and TensorBoard logs go here."""
    max_steps: int | None = None
    """Stop after this many steps. At least one of max_steps and epochs is needed; with both, the first reached
    ends the run. Streaming (IterableDataset) training data needs max_steps: its length is unknown."""
    epochs: int | None = None
    batch_size: int = 8
    """Examples per micro-batch on each process (also the evaluation batch size)."""
    lr: float = 1e-3
    """Peak learning rate, reached at the end of the warm-up."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay; see `parameter_groups` for the parameters exempt from it."""
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    """Linear warm-up length in steps; give this or warmup_ratio, not both."""
    warmup_ratio: float = 0.0
    """Warm-up length as a fraction of the run's steps."""
    min_lr_ratio: float = 0.1
    """The cosine decay ends at min_lr_ratio * lr on the last step."""
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping (the norm is still logged)."""
    precision: str = "auto"
    """"auto": bf16 autocast on CUDA, fp32 on CPU; "fp32"; "bf16" (autocast, parameters stay fp32)."""
    device: str = "auto"
    """"auto": CUDA when available, else CPU; "cpu"; "cuda" (an error where CUDA is absent)."""
    seed: int = 0
    """Seeds the data order, per-batch randomness and the RNGs; model initialisation is the caller's."""
    eval_every: int = 1000
    """Evaluate every this many steps (and at the end); 0: only at the end."""
    save_every: int = 1000
    """Write last/ every this many steps (and at the end and on interruption); 0: only then."""
    log_every: int = 10
    """Write a metrics record every this many steps."""
    num_workers: int = 0
    """DataLoader worker processes for map-style data (streams are read in the main process)."""
    seq_len_warmup: tuple[tuple[int, int], ...] = ()
    """Sequence-length warm-up stages (step, max_length), HyenaDNA-style; see `max_length_at`."""
    grad_checkpointing: bool = False
    """Recompute activations in the backward (model.set_grad_checkpointing) to save memory."""
    cuda_graphs: bool = False
    """Capture each step's forward and backward as a CUDA graph and replay it (`mambakit.train.step_graph`): for
    small models whose steps wait on kernel launches. One process on a GPU, one micro-batch a step; a new batch
    shape is captured anew; a step that cannot be captured trains without graphs, with a warning."""
    distributed: str = "ddp"
    """Wrapper when launched by torchrun with more than one process: "ddp" or "fsdp" (FSDP2 fully_shard)."""
    resume: bool = False
    """Continue the run saved in out_dir/last exactly where it stopped."""
    ema_decay: float = 0.0
    """An exponential moving average of the weights (timm's model EMA), updated after every step with this decay
    (e.g. 0.999); evaluation, best/ and the test metrics then use the averaged weights, while last/ keeps the
    trained ones for resuming (the average is in its trainer state). 0: off."""

    def __post_init__(self) -> None:
        # Normalise the JSON-friendly forms (str path, lists) so that equal configs compare equal.
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        try:
            object.__setattr__(self, "betas", tuple(float(beta) for beta in self.betas))
            object.__setattr__(
                self, "seq_len_warmup", tuple((int(step), int(length)) for step, length in self.seq_len_warmup)
            )
        except (TypeError, ValueError):
            raise UserError(
                f"train config: betas must be two numbers and seq_len_warmup a list of [step, "
                f"max_length] pairs, got {self.betas!r} and {self.seq_len_warmup!r}"
            ) from None
        for name, minimum in (
            ("batch_size", 1),
            ("grad_accum_steps", 1),
            ("log_every", 1),
            ("seed", 0),
            ("warmup_steps", 0),
            ("eval_every", 0),
            ("save_every", 0),
            ("num_workers", 0),
        ):
            _check_int(name, getattr(self, name), minimum)
        for name in ("max_steps", "epochs"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.max_steps is None and self.epochs is None:
            raise UserError("train config: set max_steps or epochs (or both: the first reached ends the run)")
        for name in ("lr", "weight_decay", "max_grad_norm"):
            # The optimizer keeps them in fp32 tensors: far beyond any sensible value, below fp32's overflow.
            _check_number(name, getattr(self, name), 0.0, 1e30)
        for name in ("warmup_ratio", "min_lr_ratio"):
            _check_number(name, getattr(self, name), 0.0, 1.0)
        _check_number("ema_decay", self.ema_decay, 0.0, 1.0)
        if self.ema_decay == 1.0:
            raise UserError("train config: ema_decay must be below 1 (1 would never move the average); 0 is off")
        if self.warmup_steps and self.warmup_ratio:
            raise UserError("train config: give warmup_steps or warmup_ratio, not both")
        if len(self.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise UserError(f"train config: betas must be two numbers in [0, 1), got {list(self.betas)}")
        for name, choices in (("precision", PRECISIONS), ("device", DEVICES), ("distributed", DISTRIBUTED)):
            if getattr(self, name) not in choices:
                raise UserError(
                    f"train config: {name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        for name in ("grad_checkpointing", "resume", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"train config: {name} must be true or false, got {getattr(self, name)!r}")
        if self.cuda_graphs and self.grad_accum_steps > 1:
            raise UserError("train config: cuda_graphs replays one micro-batch a step; set grad_accum_steps to 1")
        self._check_seq_len_warmup()

    def _check_seq_len_warmup(self) -> None:
        stages = self.seq_len_warmup
        if not stages:
            return
        steps = [step for step, _ in stages]
        if steps[0] != 0 or any(later <= earlier for earlier, later in zip(steps, steps[1:], strict=False)):
            raise UserError(
                f"train config: seq_len_warmup stages must start at step 0 and have increasing "
                f"steps, got {[list(stage) for stage in stages]}"
            )
        if any(length < 1 for _, length in stages):
            raise UserError(
                f"train config: seq_len_warmup max_length values must be >= 1, got {[list(stage) for stage in stages]}"
            )

    def max_length_at(self, step: int) -> int | None:
        """The sequence-length limit for the step that follows `step` completed steps: the max_length of the last
        seq_len_warmup stage whose step is <= `step`; None (no limit) without stages.

        The first stage starts at step 0 and the last one stays in force to the end, so to finish at full length
        make the last max_length at least the data's sequence length. Shorter sequences are never padded.
        """
        limit = None
        for stage_step, length in self.seq_len_warmup:
            if stage_step > step:
                break
            limit = length
        return limit

    def eval_config(self) -> EvalConfig:
        """The evaluation settings of this run (the same batch size, precision, device, workers and seed)."""
        return EvalConfig(self.batch_size, self.precision, self.device, self.num_workers, self.seed)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON data."""
        data = {field.name: getattr(self, field.name) for field in fields(self)}
        data["out_dir"] = str(self.out_dir)
        data["betas"] = list(self.betas)
        data["seq_len_warmup"] = [list(stage) for stage in self.seq_len_warmup]
        return data

    def to_json(self) -> str:
        """JSON text of every field."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict of fields; unknown keys raise ValueError naming the known ones."""
        known = [field.name for field in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UserError(f"train config: unknown keys {unknown}; known keys: {', '.join(known)}")
        if "out_dir" not in data:
            raise UserError("train config: out_dir is required")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a JSON file written by `to_json` (or by hand)."""
        return load_json_object(path, cls.from_dict)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"train config: {name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value) and low <= value <= high):
        raise UserError(f"train config: {name} must be a number in [{low}, {high}], got {value!r}")
