"""What every domain's commands share: the common options (same name, same meaning in every domain), the
--config file merge, presets, and running a training to the end with a one-line outcome.

Apps build their commands from these pieces so that `mambakit train genomics --lr 1e-3` and
`mambakit train text --lr 1e-3` mean the same thing.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

import typer

DataOption = Annotated[
    list[Path] | None,
    typer.Option("--data", help="Input file or folder (repeatable). Without it, the domain's embedded default."),
]
TaskOption = Annotated[str | None, typer.Option("--task", help="What to train for; the domain lists its tasks.")]
OutOption = Annotated[Path | None, typer.Option("--out", help="Run folder: checkpoints, metrics, resolved config.")]
MaxStepsOption = Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many optimizer steps.")]
EpochsOption = Annotated[int | None, typer.Option("--epochs", min=1, help="Passes over the training data.")]
BatchSizeOption = Annotated[int | None, typer.Option("--batch-size", min=1, help="Examples per optimizer step.")]
LrOption = Annotated[float | None, typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW).")]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="auto | cpu | cuda (auto: CUDA when present, else CPU).")
]
PresetOption = Annotated[str | None, typer.Option("--preset", help="Model size: tiny | small | base.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="YAML/JSON file of these options (plus `model:` and `train:` sections); "
                 "flags given on the command line override it."),
]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Random seed (data order, init, sampling).")]
CudaGraphOption = Annotated[
    bool | None,
    typer.Option("--cuda-graph/--no-cuda-graph",
                 help="Replay each decoding step as a CUDA graph (default: on when the model is on CUDA)."),
]
CheckpointOption = Annotated[
    Path, typer.Option("--checkpoint", "-c", help="Checkpoint folder (a run folder's last/ or best/).")
]

PRESETS = ("tiny", "small", "base")
DEVICES = ("auto", "cpu", "cuda")


class UserError(ValueError):
    """A mistake the user can fix; the CLI prints it as one line and exits with code 2."""


@dataclass(frozen=True)
class RunOptions:
    """The common options of `mambakit train|eval <domain>`, after merging --config with the flags."""

    data: list[Path] = field(default_factory=list)
    task: str | None = None
    out: Path | None = None
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str = "auto"
    preset: str = "tiny"
    resume: bool = False
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    """MambaConfig overrides (from the config file's `model:` section)."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig overrides (from the config file's `train:` section)."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, for the resolved config written beside the checkpoints."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["data"] = [str(path) for path in self.data]
        out["out"] = str(self.out) if self.out is not None else None
        return out


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping; any problem is one UserError line naming the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read config file ({error.strerror})") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001 - json and yaml raise different types
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({first_line})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option names to values")
    return data


def resolve_run_options(config: Path | None, **flags: Any) -> RunOptions:
    """Merge the --config file (if any) with the flags; flags that were given (not None) win.
    Unknown keys in the file, an unknown preset or device are UserErrors."""
    known = {f.name for f in fields(RunOptions)}
    merged: dict[str, Any] = {}
    if config is not None:
        from_file = read_config_file(config)
        unknown = set(from_file) - known
        if unknown:
            raise UserError(f"{config}: unknown keys {sorted(unknown)}; known keys: {', '.join(sorted(known))}")
        merged.update(from_file)
    # Flags left at None (or an empty list, or a False switch) were not given: the file decides.
    merged.update({key: value for key, value in flags.items() if not (value is None or value is False or value == [])})
    if "data" in merged:
        data = merged["data"]
        merged["data"] = [Path(p) for p in (data if isinstance(data, list) else [data])]
    if merged.get("out") is not None:
        merged["out"] = Path(merged["out"])
    if merged.get("preset", "tiny") not in PRESETS:
        raise UserError(f"unknown preset {merged['preset']!r}; choose one of {', '.join(PRESETS)}")
    if merged.get("device", "auto") not in DEVICES:
        raise UserError(f"unknown device {merged['device']!r}; choose one of {', '.join(DEVICES)}")
    resolve_device(merged.get("device", "auto"))  # fail before any data is read
    for section in ("model", "train"):
        if not isinstance(merged.get(section, {}), dict):
            raise UserError(f"{config}: `{section}:` must be a mapping of {section} settings")
    for path in merged.get("data", []):
        if not path.exists():
            raise UserError(f"{path}: no such file or folder (given with --data)")
    return RunOptions(**merged)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when present, else 'cpu'; 'cuda' without a GPU is a UserError."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible on this machine; use --device cpu (or auto)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def is_main_process() -> bool:
    """False in every torchrun process but the first, which alone writes and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def announce(message: str) -> None:
    """Print a line of progress, once per run (not once per torchrun process)."""
    if is_main_process():
        print(message)


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    """A small two-column table on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout)
    console.print(title)
    table = Table("metric", "value")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def build_model_config(preset_configs: dict[str, dict[str, Any]], run: RunOptions, **fixed: Any):  # noqa: ANN201
    """The MambaConfig of the run: the preset's sizes, then the config file's `model:` overrides, then `fixed`
    (what the data decides, e.g. the vocabulary size)."""
    from .models import MambaConfig

    try:
        return MambaConfig.from_dict({**preset_configs[run.preset], **run.model, **fixed})
    except (TypeError, ValueError) as error:
        raise UserError(f"model settings: {error}") from None


def run_training(domain: str, run: RunOptions, model: Any, task: Any, train_data: Any, eval_data: Any,
                 train_defaults: dict[str, Any], extra_files: dict[str, str] | None = None,
                 test_data: Any = None) -> dict[str, float]:
    """Train through mambakit.train.fit with the run's options over the domain's defaults, write the resolved
    configuration beside the checkpoints, print the held-out (and, given `test_data`, the test metrics of the
    best checkpoint), and exit non-zero unless the training completed."""
    from .models import load_model
    from .train import TrainConfig, TrainingDiverged, evaluate, fit

    out_dir = run.out or Path("runs") / f"{domain}-{run.task or 'default'}"
    given = {"max_steps": run.max_steps, "epochs": run.epochs, "batch_size": run.batch_size, "lr": run.lr}
    settings = {**train_defaults, **{k: v for k, v in given.items() if v is not None}, **run.train}
    if run.max_steps is not None and run.epochs is None:
        settings.pop("epochs", None)  # an explicit step count replaces a default epoch count
    if run.epochs is not None and run.max_steps is None:
        settings.pop("max_steps", None)
    try:
        config = TrainConfig.from_dict({**settings, "out_dir": str(out_dir), "device": resolve_device(run.device),
                                        "seed": run.seed, "resume": run.resume})
    except (TypeError, ValueError) as error:
        raise UserError(f"training settings: {error}") from None
    # Under torchrun every process runs this; only the first writes and reports.
    is_main = is_main_process()
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        resolved = {"domain": domain, "options": run.to_json(), "model": model.config.to_dict(),
                    "train": json.loads(config.to_json())}
        (out_dir / "run_config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    try:
        result = fit(model, task, train_data, eval_data, config, extra_files=extra_files)
    except TrainingDiverged as error:
        print(f"mambakit: error: {error}; the last good checkpoint is in {out_dir / 'last'}", file=sys.stderr)
        raise typer.Exit(1) from None
    if result.status != "completed":
        print(f"mambakit: training {result.status} at step {result.step}; checkpoint in {out_dir / 'last'}; "
              f"continue with --resume", file=sys.stderr)
        raise typer.Exit(result.exit_code)
    if is_main:
        print_metrics(f"{domain}: validation metrics after {result.step} steps ({out_dir})", result.metrics)
    if test_data is None or not is_main:
        return result.metrics
    chosen = result.best_checkpoint or result.last_checkpoint
    test_metrics = evaluate(load_model(chosen, device=config.device), task, test_data, config)
    print_metrics(f"{domain}: test metrics of {chosen}", test_metrics)
    return test_metrics
