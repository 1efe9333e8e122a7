"""The one trainer of every mambakit app: AMP, gradient accumulation, checkpoints, exact resume, DDP/FSDP.

    from mambakit.train import TrainConfig, Task, fit

    result = fit(model, Task(), train_data, eval_data, config=TrainConfig(out_dir="runs/x", max_steps=1000))

An app subclasses `Task` for its collation, loss and metrics; `fit` does the rest (see its docstring).
"""

from .config import EvalConfig, TrainConfig
from .optim import parameter_groups
from .task import Task
from .trainer import Callback, StepInfo, TrainingAborted, TrainingDiverged, TrainResult, evaluate, fit

__all__ = [
    "Callback",
    "EvalConfig",
    "StepInfo",
    "Task",
    "TrainConfig",
    "TrainResult",
    "TrainingAborted",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "parameter_groups",
]
