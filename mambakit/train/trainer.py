"""`fit` and `evaluate`: the one training loop of every mambakit app.

One step = grad_accum_steps micro-batches (forward under autocast, backward, gradients synchronised once) ->
loss and gradient norm agreed across processes and checked for NaN/inf -> clip -> AdamW -> LR schedule. At each
step boundary: log, evaluate, save, callbacks, then stop if SIGINT/SIGTERM arrived.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import MambakitError, UserError, first_line
from ..jsonfiles import read_json_file
from ..models import load_model
from ..models.checkpoint import CONFIG_NAME
from ..models.protocol import TrainableModel, is_trainable
from ..models.registry import architecture_class
from .checkpointing import (
    TRAINER_STATE_NAME,
    complete_copy,
    read_train_config,
    read_trainer_state,
    tidy,
    write_checkpoint,
)
from .config import EvalConfig, TrainConfig
from .data import (
    EVAL,
    TRAIN,
    BatchStream,
    batch_loader,
    capture_rng,
    check_dataset,
    deal_position,
    derive_seed,
    epoch_order,
    is_streaming,
    restore_rng,
    seeded_rng,
)
from .distributed import (
    Distributed,
    autocast_dtype,
    gradient_sync,
    is_sharded,
    reshard,
    resolve_device,
    setup,
    unwrap,
    wrap_model,
)
from .metrics import METRICS_NAME, MetricsLog, records_until
from .optim import OptimizerFactory, ScheduleFactory, adamw, build_optimizer, no_weight_decay_names, warmup_cosine
from .run_folder import RunFolderLock, lock_run_folder, write_run_files
from .step_graph import StepGraph, batch_signature
from .task import Task

logger = logging.getLogger(__name__)

LAST, BEST = "last", "best"
#: Signals that stop training gracefully (a checkpoint is written first).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingDiverged(MambakitError, RuntimeError):
    """The loss or the gradient norm became NaN or infinite; training stopped before the optimizer step and
    wrote no checkpoint, so out_dir/last (when the run saved one) still holds the last good one."""

    def __init__(self, step: int, loss: float, grad_norm: float, checkpoint: Path | None) -> None:
        self.step, self.loss, self.grad_norm, self.checkpoint = step, loss, grad_norm, checkpoint
        kept = f"{checkpoint} still holds the last good checkpoint" if checkpoint else "no checkpoint was saved yet"
        super().__init__(
            f"training diverged at step {step}: loss {loss}, gradient norm {grad_norm}; {kept}; "
            f"lower the lr, lengthen the warm-up or check the data"
        )


class TrainingAborted(KeyboardInterrupt):
    """A Ctrl-C after a stop request stopped training at once, without saving (for a save that hangs);
    `checkpoint` (out_dir/last, when the run saved one) holds the last checkpoint."""

    def __init__(self, step: int, checkpoint: Path | None, saved_step: int | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        kept = (
            f"{checkpoint} keeps step {saved_step}: continue from it with resume (--resume)"
            if checkpoint
            else "no checkpoint was saved, so a new run starts over"
        )
        super().__init__(f"stopped at once by a second Ctrl-C after step {step}, without saving; {kept}")


@dataclass(frozen=True)
class StepInfo:
    """What a callback is told after every step (on every process)."""

    step: int
    epoch: int
    loss: float
    """This step's loss, averaged over micro-batches and processes."""
    lr: float
    """The learning rate this step used."""
    grad_norm: float
    """The global gradient norm before clipping."""
    eval_metrics: dict[str, float] | None
    """The evaluation run at this step, if any."""


Callback = Callable[[StepInfo], None]


@dataclass(frozen=True)
class TrainResult:
    """How a `fit` call ended."""

    status: Literal["completed", "interrupted"]
    step: int
    epoch: int
    out_dir: Path
    train_loss: float | None
    """Mean loss of the last logging window (None if no step ran in this call)."""
    metrics: dict[str, float]
    """The last evaluation's metrics (empty without eval_data or when no evaluation ran in this call)."""
    best_metric: float | None
    best_step: int | None
    interrupted_by: str | None = None
    """"SIGINT" or "SIGTERM" when status is "interrupted"."""

    @property
    def exit_code(self) -> int:
        """0 when completed; 128 + the signal number when interrupted (130 for SIGINT, 143 for SIGTERM)."""
        return 0 if self.interrupted_by is None else 128 + signal.Signals[self.interrupted_by].value

    @property
    def last_checkpoint(self) -> Path:
        return self.out_dir / LAST

    @property
    def best_checkpoint(self) -> Path | None:
        """out_dir/best, or None when there was no evaluation."""
        return None if self.best_step is None else self.out_dir / BEST


def fit(
    model: TrainableModel,
    task: Task,
    train_data: Any,
    eval_data: Any = None,
    config: TrainConfig | None = None,
    *,
    extra_files: Mapping[str, bytes | str] | None = None,
    run_files: Mapping[str, bytes | str] | None = None,
    check_resume: Callable[[Path], None] | None = None,
    callbacks: Sequence[Callback] = (),
    optimizer_factory: OptimizerFactory = adamw,
    schedule_factory: ScheduleFactory = warmup_cosine,
) -> TrainResult:
    """Train `model` on `train_data` as `config` says; return how the run ended.

    train_data / eval_data: map-style Datasets (shuffled per epoch from (seed, epoch)) or IterableDatasets (read
    in order; the position is the number of examples consumed; `set_epoch(epoch)` is called when present). Each
    process takes every world_size-th example. Every process evaluates all of eval_data, so any metric is exact.

    The model is trained in place on the configured device. With FSDP it is sharded in place: to use it after
    fit, create the process group yourself (fit then leaves it alive). Checkpoints go to
    out_dir/last and out_dir/best (see `mambakit.train.checkpointing`), each with `extra_files` (e.g. the
    tokenizer config) beside the weights. With config.resume the run continues from out_dir/last and ends
    bit-identical to an uninterrupted one; without it, an out_dir that already holds last/ is refused.

    A run resumes on any world size, DDP or FSDP. Exact: the parameters, the optimizer state (saved as one full
    state dict, sharded again as the new run needs), the scheduler's step, the epoch and the number of examples
    all processes consumed in it. Re-dealt: the epoch's other examples, among the new processes as a run of that
    size deals them (none repeated, none left out). batch_size is per process, so the examples per step change with
    the world size unless grad_accum_steps changes to match; a warning says which. With epochs, the steps left are
    re-planned (and with them the schedule's end). Each process continues its own RNG state; a process the saved run
    did not have starts a new one. With the same examples per step, the resumed run ends as an uninterrupted one on
    the new world size would, to float rounding.

    One run uses an out_dir at a time: a second is refused (naming the first's pid) while the first runs; the lock
    goes with the process, however it ends. Nothing is written into out_dir before the run is accepted: a refused
    run (already running, nothing to resume, a checkpoint of another model, a corrupt trainer state) leaves it as it
    was. `run_files` (e.g. the CLI's resolved configuration) are written into out_dir once the run is accepted.
    `check_resume`, when resuming, is called with the checkpoint directory before anything is loaded; it refuses
    the resume by raising (a UserError saying what differs).

    `config` is required (it may be passed by position or by name). `callbacks` are called after every step with
    a `StepInfo`, on every process. `optimizer_factory` builds the optimizer (default AdamW over config's lr, betas
    and weight decay) and `schedule_factory` its per-step learning-rate schedule (default: linear warm-up, then
    cosine, scaling each parameter group's lr).

    SIGINT/SIGTERM stop at the next step boundary after writing last/ (status "interrupted"); a second SIGINT
    raises `TrainingAborted` (a KeyboardInterrupt) at once, without saving. A NaN/inf loss or gradient norm raises
    `TrainingDiverged` and writes nothing. Under torchrun (WORLD_SIZE > 1) the process group is created (and
    destroyed at the end) unless the caller made one; rank 0 alone locks out_dir, logs and writes files.
    """
    if config is None:
        raise TypeError("fit: config (a TrainConfig) is required")
    if not is_trainable(model):
        raise TypeError(
            f"fit: {type(model).__name__} does not meet mambakit.models.TrainableModel (config, "
            f"architecture, from_config, head_config, shard_units, no_weight_decay), so checkpoints "
            f"could not be saved and loaded"
        )
    check_dataset(train_data, "train_data")
    if eval_data is not None:
        check_dataset(eval_data, "eval_data")
    distributed, device = setup(config.device)
    lock = distributed.main_decides(lambda: lock_run_folder(config.out_dir, create=not config.resume))
    try:
        trainer = _Trainer(
            model,
            task,
            train_data,
            eval_data,
            config,
            extra_files,
            callbacks,
            distributed,
            device,
            optimizer_factory,
            schedule_factory,
            _Admission(check_resume, run_files or {}, lock),
        )
        result = trainer.run()
    finally:
        if lock is not None:
            lock.release()
    # Not on an exception: destroying the group can block on processes still inside a collective, while a process
    # that exits lets torchrun stop the others.
    distributed.close()
    return result


def evaluate(model: nn.Module, task: Task, data: Any, config: EvalConfig | None = None) -> dict[str, float]:
    """`task.evaluate` over all of `data` on config's device, in eval mode under torch.no_grad and autocast
    (EvalConfig's defaults when `config` is None)."""
    check_dataset(data, "data")
    config = config or EvalConfig()
    device = resolve_device(config.device)
    return _evaluation(model.to(device), task, data, config, device)


def _evaluation(model: nn.Module, task: Task, data: Any, config: EvalConfig, device: torch.device) -> dict[str, float]:
    order = None if is_streaming(data) else list(range(len(data)))
    stream = BatchStream(
        data, task.collate, config.batch_size, order=order, skip=0, drop_last=False, seed_words=(config.seed, EVAL)
    )
    loader = batch_loader(stream, config.num_workers, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _autocast(device, autocast_dtype(config.precision, device)):
            metrics = task.evaluate(model, (_to_device(batch, device) for batch in loader))
    finally:
        model.train(was_training)
    return {name: float(value) for name, value in metrics.items()}


def _autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        name: value.to(device, non_blocking=True) if isinstance(value, Tensor) else value
        for name, value in batch.items()
    }


def _full_groups(batches: Iterable[dict[str, Tensor]], size: int) -> Iterator[list[dict[str, Tensor]]]:
    """Consecutive groups of `size` batches; an incomplete last group is dropped."""
    iterator = iter(batches)
    while len(group := list(islice(iterator, size))) == size:
        yield group


def _check_same_model(model: Any, checkpoint: Path) -> None:
    """A one-line UserError naming what differs when `checkpoint` (a mambakit checkpoint directory) holds another
    model than `model`: another architecture, or other config values or head settings."""
    path = checkpoint / CONFIG_NAME
    if not path.is_file():  # a LoRA adapter checkpoint: loading its weights checks it
        return
    saved = read_json_file(path, "checkpoint config")
    if not isinstance(saved, dict):
        raise UserError(
            f"{path}: expected a JSON object of config keys; restore it, or start over with another out_dir (--out)"
        )
    expected = json.loads(json.dumps({**model.config.to_dict(), "head": model.head_config()}))  # JSON's types
    if saved.get("architecture") != model.architecture:
        differences = [f"architecture {model.architecture!r} (the checkpoint's: {saved.get('architecture')!r})"]
    else:
        differences = [
            f"{key} {value!r} (the checkpoint's: {saved.get(key)!r})"
            for key, value in expected.items()
            if saved.get(key) != value
        ]
    if differences:
        raise UserError(
            f"the model does not match the checkpoint in {checkpoint}: {', '.join(differences[:4])}"
            f"{' ...' if len(differences) > 4 else ''}; resume with the same model settings, or start over with "
            f"another out_dir (--out)"
        )


class _StopRequest:
    """While installed, SIGINT and SIGTERM only record that training should stop at the next step boundary; a
    second SIGINT raises KeyboardInterrupt at once (for a save that hangs)."""

    def __init__(self, announce: bool) -> None:
        self.signum = 0
        self.announce = announce

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            logger.warning(
                "%s received: stopping at the end of this step, after saving a checkpoint", signal.Signals(signum).name
            )

    @contextmanager
    def installed(self) -> Iterator[None]:
        # Python runs signal handlers in the main thread only; a fit in another thread keeps the defaults.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


@dataclass
class _Window:
    """Sums over the steps since the last metrics record."""

    steps: int = 0
    loss: float = 0.0
    grad_norm: float = 0.0
    tokens: float = 0.0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class _WeightAverage:
    """An exponential moving average of a model's parameters and floating-point buffers (timm's model EMA): after
    each optimizer step, average = decay * average + (1 - decay) * weight."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.live = [t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()]
        self.average = [t.detach().clone() for t in self.live]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.average, [t.detach() for t in self.live], 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own again after it."""
        with torch.no_grad():
            trained = [t.detach().clone() for t in self.live]
            torch._foreach_copy_([t.detach() for t in self.live], self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([t.detach() for t in self.live], trained)

    def state(self) -> list[Tensor]:
        return [t.detach().cpu() for t in self.average]

    def load(self, tensors: list[Tensor]) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.average, [t.to(a.device) for t, a in zip(tensors, self.average, strict=True)])


@dataclass(frozen=True)
class _Admission:
    """What fit was given to accept a run into out_dir: the caller's resume check, the files to write once the run
    is accepted, and the run folder's lock (None on the processes other than rank 0)."""

    check_resume: Callable[[Path], None] | None
    run_files: Mapping[str, bytes | str]
    lock: RunFolderLock | None


class _Trainer:
    """The state of one fit call; built fully (run accepted into out_dir, model placed and wrapped, optimizer,
    resume) by __init__."""

    def __init__(
        self,
        model: Any,
        task: Task,
        train_data: Any,
        eval_data: Any,
        config: TrainConfig,
        extra_files: Mapping[str, bytes | str] | None,
        callbacks: Sequence[Callback],
        distributed: Distributed,
        device: torch.device,
        optimizer_factory: OptimizerFactory,
        schedule_factory: ScheduleFactory,
        admission: _Admission,
    ) -> None:
        self.task, self.train_data, self.eval_data, self.config = task, train_data, eval_data, config
        self.extra_files, self.callbacks = dict(extra_files or {}), tuple(callbacks)
        self.dist, self.device = distributed, device
        self.autocast_dtype = autocast_dtype(config.precision, device)
        self.out_dir = config.out_dir
        self.streaming = is_streaming(train_data)
        self.step_examples = config.batch_size * config.grad_accum_steps
        self.steps_per_epoch, self.total_steps = self._plan()
        self.step = self.epoch = 0
        # The data position: this process consumed `examples` of its share of the epoch, dealt from `epoch_start`
        # (nonzero only after a resume on another world size; see data.deal_position).
        self.examples = self.epoch_start = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.saved_step: int | None = None
        self.train_loss: float | None = None
        self.eval_metrics: dict[str, float] = {}
        self.interrupted_by: str | None = None
        self.stop = _StopRequest(announce=distributed.is_main)
        self._shadow: Any = None  # a TrainableModel nn.Module, built on first use

        resumed = self._admit(model, admission.check_resume)
        if resumed is not None:
            self._load_weights(model, resumed[0])
            self._restore_position(resumed[1])
        model.to(device)
        if config.grad_checkpointing:
            if hasattr(model, "set_grad_checkpointing"):
                model.set_grad_checkpointing(True)
            else:
                self._log(
                    logging.WARNING,
                    "grad_checkpointing: %s has no set_grad_checkpointing; training without it",
                    type(model).__name__,
                )
        exempt = no_weight_decay_names(model)  # before wrapping: FSDP drops the parameters' tags
        self.model = wrap_model(model, config.distributed, device, distributed)
        self.core: Any = unwrap(self.model)  # the TrainableModel nn.Module holding the parameters
        self.sharded = is_sharded(self.model)
        self.optimizer, self.scheduler = build_optimizer(
            self.core, exempt, config, self.total_steps, optimizer_factory, schedule_factory
        )
        if config.ema_decay and self.sharded:
            raise UserError("ema_decay with FSDP is not supported yet: train with DDP (distributed ddp) or without")
        self.ema = _WeightAverage(self.core, config.ema_decay) if config.ema_decay else None
        if config.cuda_graphs and (device.type != "cuda" or distributed.world_size > 1):
            raise UserError(
                f"cuda_graphs (--cuda-graphs) needs one process on a CUDA device, this run has "
                f"{_processes(distributed.world_size)} on {device.type}: leave it off"
            )
        self.graphs = config.cuda_graphs  # off for the rest of the run once a step fails to capture
        self.step_graph: StepGraph | None = None
        if resumed is None:
            _seed_process(derive_seed(config.seed, distributed.rank))
        else:
            self._restore(*resumed)
        distributed.main_decides(lambda: self._accept(admission))
        self._log(
            logging.INFO,
            "training %d steps on %s (%s, %s): %d examples per step",
            self.total_steps,
            device,
            _processes(distributed.world_size),
            self.autocast_dtype or "fp32",
            self.step_examples * distributed.world_size,
        )

    def _log(self, level: int, message: str, *args: Any) -> None:
        """Log on rank 0 only (every process would say the same)."""
        if self.dist.is_main:
            logger.log(level, message, *args)

    def _plan(self) -> tuple[int | None, int]:
        """(steps per epoch for map-style data, total steps of the run) of a run that starts at step 0."""
        config, world_size = self.config, self.dist.world_size
        if self.streaming:
            if config.max_steps is None:
                raise UserError(
                    "train_data is a stream (IterableDataset) of unknown length: set max_steps, which "
                    "sizes the learning-rate schedule (epochs can still end the run earlier)"
                )
            return None, config.max_steps
        steps_per_epoch = len(self.train_data) // world_size // self.step_examples
        if steps_per_epoch == 0:
            raise UserError(
                f"train_data has {len(self.train_data)} examples, fewer than one step takes "
                f"(batch_size x grad_accum_steps x processes = {self.step_examples * world_size})"
            )
        lengths = [n for n in (config.max_steps, config.epochs and config.epochs * steps_per_epoch) if n]
        return steps_per_epoch, min(lengths)

    def _steps_left_in_epoch(self) -> int:
        """Whole steps left in the current epoch of map-style data: examples that cannot fill one on every process
        are left out, as at every epoch's end."""
        share = (len(self.train_data) - self.epoch_start) // self.dist.world_size
        return max(0, share - self.examples) // self.step_examples

    def _admit(self, model: Any, check_resume: Callable[[Path], None] | None) -> tuple[Path, dict[str, Any]] | None:
        """Decide, on rank 0 under the run folder's lock and before anything is written, whether this run may use
        out_dir; refusals are one-line UserErrors on every process. Returns the checkpoint to resume from and its
        trainer state, or None for a fresh run."""
        resumed = self.dist.main_decides(lambda: self._check_out_dir(model, check_resume))
        if self.config.resume and not self.dist.is_main:
            source = complete_copy(self.out_dir / LAST)
            assert source is not None, "rank 0 accepted the resume, so the checkpoint is there"
            resumed = source, read_trainer_state(source)
        return resumed

    def _check_out_dir(
        self, model: Any, check_resume: Callable[[Path], None] | None
    ) -> tuple[Path, dict[str, Any]] | None:
        """`_admit`'s decision, made on rank 0 only (it reads out_dir, writes nothing)."""
        out_dir, last = self.out_dir, self.out_dir / LAST
        source = complete_copy(last)  # last/, or what a crash in the middle of replacing it left
        resumable = source is not None and (source / TRAINER_STATE_NAME).is_file()
        if not self.config.resume:
            if resumable:
                raise UserError(
                    f"{out_dir} already holds a training checkpoint (last/): continue it with resume (--resume), "
                    f"or choose another out_dir (--out)"
                )
            if source is not None:
                raise UserError(
                    f"{last} has no {TRAINER_STATE_NAME}, so it cannot be resumed, and a new run would replace it: "
                    f"delete {last} to start over there, or choose another out_dir (--out)"
                )
            return None
        if source is None:
            raise UserError(
                f"nothing to resume in {out_dir}: it has no {LAST}/ checkpoint; start without resume (--resume)"
            )
        if not resumable:
            raise UserError(
                f"nothing to resume in {out_dir}: {LAST}/ has no {TRAINER_STATE_NAME}; start over with another "
                f"out_dir (--out), or delete {last}"
            )
        if check_resume is not None:
            check_resume(source)
        _check_same_model(model, source)
        state = read_trainer_state(source)
        records_until(out_dir / METRICS_NAME, state["step"])  # a damaged metrics file is refused here, unchanged
        saved = read_train_config(source)
        if saved is not None:
            new, old = self.config.to_dict(), saved.to_dict()
            # A moved run folder or the resume flag itself does not change what the run computes.
            changed = [
                f"{key} {old[key]!r} -> {new[key]!r}"
                for key in new
                if key not in ("resume", "out_dir") and new[key] != old[key]
            ]
            if changed:
                self._log(
                    logging.WARNING,
                    "resuming with a changed config (%s): the run will differ from an uninterrupted one",
                    ", ".join(changed),
                )
        return source, state

    def _load_weights(self, model: Any, source: Path) -> None:
        try:
            model.load_state_dict(load_model(source, merge_adapters=False).state_dict())
        except RuntimeError as error:  # shapes or names that differ, where the configs did not tell
            raise UserError(
                f"{source}: its weights do not fit the model ({first_line(error)}); resume with the same model "
                f"settings, or start over with another out_dir (--out)"
            ) from None

    def _accept(self, admission: _Admission) -> None:
        """The run is accepted: finish or clear what a crash left of a checkpoint write, write the run files, record
        the owner."""
        for name in (LAST, BEST):
            tidy(self.out_dir / name)
        write_run_files(self.out_dir, admission.run_files)
        if admission.lock is not None:
            admission.lock.record_owner()

    def _restore_position(self, state: dict[str, Any]) -> None:
        """Continue at the saved step, epoch and data position, on this run's world size.

        Exact on any world size: the step (so the scheduler's position), the epoch and the number of examples all
        processes together consumed in it. Re-dealt when the world size changed: the epoch's remaining examples
        among the new processes (`data.deal_position`; those too few to fill a step on every process end the
        epoch), so the order after the position is the one a run of the new size takes from there. With `epochs`
        the run's length is re-planned, since the steps left depend on the examples per step."""
        saved_world_size = state.get("world_size", len(state["rng"]))
        consumed = state.get("epoch_start", 0) + state["examples_in_epoch"] * saved_world_size
        self.step, self.epoch = state["step"], state["epoch"]
        self.epoch_start, self.examples = deal_position(consumed, self.dist.world_size)
        epochs = self.config.epochs
        if not self.streaming:
            if self._steps_left_in_epoch() == 0:
                self._next_epoch()
            if epochs is not None and self.epoch < epochs:
                assert self.steps_per_epoch is not None, "map-style data has a length"
                later_epochs = (epochs - self.epoch - 1) * self.steps_per_epoch
                through_epochs = self.step + self._steps_left_in_epoch() + later_epochs
                self.total_steps = min(n for n in (self.config.max_steps, through_epochs) if n)
        if saved_world_size != self.dist.world_size:
            self._log_new_world_size(state, saved_world_size, consumed)

    def _log_new_world_size(self, state: dict[str, Any], saved_world_size: int, consumed: int) -> None:
        """One line saying what a resume on another world size keeps and what changes."""
        world_size = self.dist.world_size
        per_step = self.step_examples * world_size
        saved_per_step = state.get("examples_per_step", self.step_examples * saved_world_size)
        if saved_per_step == per_step:
            batch = f"examples per step stay {per_step}"
        else:
            batch = (
                f"examples per step change from {saved_per_step} to {per_step} (batch_size {self.config.batch_size} "
                f"x grad_accum_steps {self.config.grad_accum_steps} x {_processes(world_size)})"
            )
            accumulation, rest = divmod(saved_per_step, self.config.batch_size * world_size)
            if accumulation and not rest:
                batch += f"; to keep {saved_per_step}, resume with grad_accum_steps {accumulation}"
        saved_total = state.get("total_steps", self.total_steps)
        schedule = f"; the schedule now ends at step {self.total_steps} (was {saved_total})"
        self._log(
            logging.WARNING,
            "resuming on %s a run saved on %d: step %d, epoch %d and its %d consumed examples carry over, "
            "the epoch's other examples are dealt anew; %s%s",
            _processes(world_size),
            saved_world_size,
            self.step,
            state["epoch"],
            consumed,
            batch,
            schedule if saved_total != self.total_steps else "",
        )

    def _restore(self, source: Path, state: dict[str, Any]) -> None:
        """Load the optimizer (a full state dict, sharded here as this run's wrapper needs), the scheduler, the
        weight average and this process's RNG states."""
        try:
            dcp = _state_dict_api()
            dcp.set_optimizer_state_dict(
                self.core, self.optimizer, state["optimizer"], options=dcp.StateDictOptions(full_state_dict=True)
            )
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            raise UserError(
                f"{source / TRAINER_STATE_NAME}: its optimizer state does not fit this run's optimizer "
                f"({first_line(error)}); resume with the same settings, or start over with another out_dir (--out)"
            ) from None
        self.best_metric, self.best_step = state["best_metric"], state["best_step"]
        if self.ema is not None:
            if state.get("ema") is None:
                raise UserError(f"{source} was saved without ema_decay; resume it without ema_decay")
            self.ema.load(state["ema"])
        self.saved_step = self.step
        rng, rank = state["rng"], self.dist.rank
        if rank < len(rng):
            restore_rng(rng[rank])
        else:  # a process the saved run did not have: a stream of its own, not a copy of another process's
            _seed_process(derive_seed(self.config.seed, rank, self.step))
        self._log(logging.INFO, "resumed from %s at step %d (epoch %d)", source, self.step, self.epoch)

    def run(self) -> TrainResult:
        if self._done():
            self._log(logging.INFO, "nothing to train: the run in %s already ended at step %d", self.out_dir, self.step)
        log = MetricsLog(self.out_dir, self.dist.is_main, self.step, self.total_steps)
        try:
            with self.stop.installed():
                status = "completed" if self._done() else self._loop(log)
        except KeyboardInterrupt:
            checkpoint = None if self.saved_step is None else self.out_dir / LAST
            raise TrainingAborted(self.step, checkpoint, self.saved_step) from None
        finally:
            log.close()
        return TrainResult(
            status,
            self.step,
            self.epoch,
            self.out_dir,
            self.train_loss,
            self.eval_metrics,
            self.best_metric,
            self.best_step,
            self.interrupted_by,
        )

    def _done(self) -> bool:
        epochs = self.config.epochs
        return self.step >= self.total_steps or (epochs is not None and self.epoch >= epochs)

    def _loop(self, log: MetricsLog) -> Literal["completed", "interrupted"]:
        self.model.train()
        window, clock = _Window(), time.perf_counter()
        while True:
            steps_this_epoch = 0
            for group in _full_groups(self._train_batches(), self.config.grad_accum_steps):
                loss, lr, grad_norm, tokens = self._step(group)
                now = time.perf_counter()
                window.steps += 1
                window.loss += loss
                window.grad_norm += grad_norm
                window.tokens += tokens
                window.seconds += now - clock
                steps_this_epoch += 1
                if not self.streaming and self._steps_left_in_epoch() == 0:  # that was the epoch's last step
                    self._next_epoch()
                log.advance(self.step, loss, window.tokens_per_s)
                if self.step % self.config.log_every == 0 or self._done():
                    self.train_loss = window.loss / window.steps
                    log.log(
                        self.step,
                        {
                            "epoch": self.epoch,
                            "loss": self.train_loss,
                            "lr": lr,
                            "grad_norm": window.grad_norm / window.steps,
                            "tokens_per_s": window.tokens_per_s,
                        },
                    )
                    window = _Window()
                if self._boundary(log, StepInfo(self.step, self.epoch, loss, lr, grad_norm, None)):
                    return "interrupted"
                if self._done():
                    return "completed"
                clock = time.perf_counter()
            if self.streaming:  # the stream ran out: the epoch is over
                if steps_this_epoch == 0 and self.examples == 0:
                    raise UserError(
                        f"train_data gave fewer examples than one step takes (batch_size x "
                        f"grad_accum_steps x processes = {self.step_examples * self.dist.world_size})"
                    )
                self._next_epoch()
                if self._done():
                    return "completed"
            else:  # map-style data: every epoch has a step (see _plan and _restore_position), or this would spin
                assert steps_this_epoch, f"epoch {self.epoch} of map-style data gave no step"

    def _next_epoch(self) -> None:
        self.epoch += 1
        self.examples = self.epoch_start = 0

    def _train_batches(self) -> Iterable[dict[str, Tensor]]:
        config, rank, world_size = self.config, self.dist.rank, self.dist.world_size
        if self.streaming:
            order = None
            if hasattr(self.train_data, "set_epoch"):
                self.train_data.set_epoch(self.epoch)
        else:
            order = epoch_order(len(self.train_data), config.seed, self.epoch, rank, world_size, self.epoch_start)
            order = order[: self.examples + self._steps_left_in_epoch() * self.step_examples]
        stream = BatchStream(
            self.train_data,
            self.task.collate,
            config.batch_size,
            order=order,
            skip=self.examples,
            drop_last=True,
            seed_words=(config.seed, TRAIN, self.epoch, rank),
            rank=rank,
            world_size=world_size,
            start=self.epoch_start,
        )
        return batch_loader(stream, config.num_workers, pin_memory=self.device.type == "cuda")

    def _step(self, group: list[dict[str, Tensor]]) -> tuple[float, float, float, float]:
        """One optimizer step over `group`'s micro-batches: (loss, lr, grad_norm, tokens of all processes)."""
        limit = self.config.max_length_at(self.step)
        losses, tokens = [], 0
        for index, batch in enumerate(group):
            batch = self.task.curriculum(batch, self.step)
            if limit is not None:
                batch = self.task.crop(batch, limit)
            tokens += self.task.count_tokens(batch)
            batch = _to_device(batch, self.device)
            graph = self._graph_for(batch) if self.graphs else None
            if graph is not None:  # one micro-batch a step (TrainConfig checks): the graph's loss is the step's
                losses.append(graph(batch))
                continue
            with gradient_sync(self.model, enabled=index == len(group) - 1):
                with _autocast(self.device, self.autocast_dtype):
                    loss = self.task.compute_loss(self.model, batch)
                (loss / len(group)).backward()
            losses.append(loss.detach().float())
        # One all-reduce gives every process the same loss, so all of them agree on divergence.
        stats = torch.stack(
            [torch.stack(losses).mean().double(), torch.tensor(tokens, dtype=torch.float64, device=self.device)]
        )
        self.dist.all_reduce_sum(stats)
        grad_norm = self._clip_gradients()
        loss_sum, tokens_all, norm = torch.cat([stats, grad_norm.reshape(1).double()]).tolist()
        loss_value = loss_sum / self.dist.world_size
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            raise TrainingDiverged(
                self.step + 1, loss_value, norm, None if self.saved_step is None else self.out_dir / LAST
            )
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        self.scheduler.step()
        if self.step_graph is None:  # a graph's gradients are its buffers, overwritten by the next replay
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.examples += self.step_examples
        return loss_value, lr, norm, tokens_all

    def _graph_for(self, batch: dict[str, Any]) -> StepGraph | None:
        """The captured forward and backward for `batch`'s shapes, captured now when they are new; None, with a
        warning, when the step cannot be captured (a host synchronisation in the model or the loss): the run
        then goes on without graphs."""
        if self.step_graph is not None and self.step_graph.signature == batch_signature(batch):
            return self.step_graph
        self.step_graph = None  # its memory goes before the next capture takes its own
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        try:
            with _autocast(self.device, self.autocast_dtype):
                self.step_graph = StepGraph(partial(self.task.compute_loss, self.model), batch, parameters)
        except RuntimeError as error:
            self.graphs = False
            self._log(
                logging.WARNING,
                "cuda_graphs: the training step could not be captured as a CUDA graph (%s); training without graphs",
                first_line(error),
            )
        return self.step_graph

    def _clip_gradients(self) -> Tensor:
        """The global gradient norm (before clipping); gradients clipped to max_grad_norm unless it is 0."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.config.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        # FSDP's norm is a DTensor of partial sums; full_tensor reduces it.
        return norm.full_tensor() if self.sharded else norm

    def _boundary(self, log: MetricsLog, info: StepInfo) -> bool:
        """Evaluate, save, run callbacks and check for a stop request after a step; True to stop now."""
        config, final = self.config, self._done()
        to_save = []
        if self.eval_data is not None and (final or (config.eval_every and self.step % config.eval_every == 0)):
            with self._averaged():
                self.eval_metrics = _evaluation(self.core, self.task, self.eval_data, config.eval_config(), self.device)
            if self.sharded:
                reshard(self.model)
            log.log(self.step, self.eval_metrics, prefix="eval_")
            info = replace(info, eval_metrics=self.eval_metrics)
            if self._improves(self.eval_metrics):
                self.best_metric, self.best_step = self.eval_metrics[self.task.primary_metric], self.step
                to_save.append(BEST)
        if final or (config.save_every and self.step % config.save_every == 0):
            to_save.append(LAST)
        if to_save:
            self._save(to_save)
        for callback in self.callbacks:
            callback(info)
        signum = self.dist.max_int(self.stop.signum, self.device)  # every process stops at the same step
        if not signum or final:
            return False
        self.interrupted_by = signal.Signals(signum).name
        if LAST not in to_save:
            self._save([LAST])
        self._log(
            logging.WARNING,
            "stopped by %s at step %d; resume from %s",
            self.interrupted_by,
            self.step,
            self.out_dir / LAST,
        )
        return True

    def _improves(self, metrics: dict[str, float]) -> bool:
        name = self.task.primary_metric
        if name not in metrics:
            raise UserError(
                f"Task.evaluate returned no {name!r} (the task's primary_metric); it returned "
                f"{', '.join(sorted(metrics))}"
            )
        value = metrics[name]
        if not math.isfinite(value):
            return False
        if self.best_metric is None:
            return True
        return value > self.best_metric if self.task.greater_is_better else value < self.best_metric

    def _save(self, names: list[str]) -> None:
        """Write the checkpoints `names` (last, best) of the current step; every process takes part, rank 0
        writes."""
        state = self._trainer_state()
        for name in names:
            # best/ holds the weights that were evaluated: the average, when there is one.
            with self._averaged() if name == BEST else nullcontext():
                model = self._model_to_save()
                if self.dist.is_main:
                    write_checkpoint(self.out_dir / name, model, self.extra_files, state, self.config)
        if self.dist.is_main:
            logger.info("step %d: saved %s", self.step, " and ".join(str(self.out_dir / name) for name in names))
        self.dist.barrier()  # no process runs ahead (or exits) while rank 0 writes
        if LAST in names:
            self.saved_step = self.step

    def _trainer_state(self) -> dict[str, Any]:
        rng = self.dist.gather_objects(capture_rng(cuda=self.device.type == "cuda"))
        optimizer = None
        if self.sharded or self.dist.is_main:  # gathering FSDP shards takes every process
            dcp = _state_dict_api()
            optimizer = dcp.get_optimizer_state_dict(
                self.core, self.optimizer, options=dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return {
            "step": self.step,
            "epoch": self.epoch,
            "examples_in_epoch": self.examples,
            "epoch_start": self.epoch_start,
            "examples_per_step": self.step_examples * self.dist.world_size,
            "total_steps": self.total_steps,
            "world_size": self.dist.world_size,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "ema": None if self.ema is None else self.ema.state(),
        }

    def _averaged(self) -> AbstractContextManager[Any]:
        """The model holds the averaged weights inside the block when the run keeps an average."""
        return nullcontext() if self.ema is None else self.ema.applied()

    def _model_to_save(self) -> Any:
        """The model with full weights on rank 0: the model itself, or for FSDP a CPU copy of the gathered
        shards (None on the other processes)."""
        if not self.sharded:
            return self.core
        dcp = _state_dict_api()
        weights = dcp.get_model_state_dict(
            self.core, options=dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not self.dist.is_main:
            return None
        if self._shadow is None:
            with seeded_rng(0):  # building one draws random initial weights: leave the training RNG untouched
                # The registered class: FSDP swapped the model's own class for a sharded subclass.
                architecture = architecture_class(self.core.architecture).cls
                self._shadow = architecture.from_config(self.core.config, self.core.head_config())
        self._shadow.load_state_dict(weights)
        return self._shadow


def _state_dict_api() -> Any:
    """torch.distributed.checkpoint.state_dict, imported when a run first saves or resumes: importing it takes
    about a second, which every command that imports the trainer (a one-line error included) would otherwise pay."""
    from torch.distributed.checkpoint import state_dict

    return state_dict


def _seed_process(seed: int) -> None:
    """Seed this process's python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _processes(count: int) -> str:
    return f"{count} process{'es' if count > 1 else ''}"
