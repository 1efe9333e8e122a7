"""What every domain's commands share: the common options (same name, same meaning in every domain), the
--config file merge, and the `train` and `eval` commands the core builds from a domain's declared tasks and
options (`train_command`, `eval_command`), each running to the end with a one-line outcome.

So `mambakit train genomics --lr 1e-3` and `mambakit train text --lr 1e-3` mean the same thing, and an app writes
only what is its own: data, model and Task builders, and its extra options.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from .domains import RUN_RECORD_NAME, Domain, NoOptions, RunOptions, RunRecord, TaskInputs, load_checkpoint
from .errors import UserError, first_line
from .validation import check_values, checked_value

DataOption = Annotated[
    list[Path] | None,
    typer.Option("--data", help="Input file or folder (repeatable). Without it, the domain's embedded default."),
]
TaskOption = Annotated[str | None, typer.Option("--task", help="What to train for; the domain lists its tasks.")]
OutOption = Annotated[Path | None, typer.Option("--out", help="Run folder: checkpoints, metrics, resolved config.")]
MaxStepsOption = Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many optimizer steps.")]
EpochsOption = Annotated[int | None, typer.Option("--epochs", min=1, help="Passes over the training data.")]
BatchSizeOption = Annotated[int | None, typer.Option("--batch-size", min=1, help="Examples per batch.")]
TrainBatchSizeOption = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        help="Examples per micro-batch on each process; one step takes train.grad_accum_steps micro-batches on every "
        "process (torchrun), so a step's examples are batch size x grad_accum_steps x processes.",
    ),
]
LrOption = Annotated[float | None, typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW).")]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="auto | cpu | cuda (auto: CUDA when present, else CPU).")
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML/JSON file of these options (plus `model:` and `train:` sections); "
        "flags given on the command line override it.",
    ),
]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Random seed (data order, init, sampling).")]
CudaGraphOption = Annotated[
    bool | None,
    typer.Option(
        "--cuda-graph/--no-cuda-graph",
        help="Replay each decoding step as a CUDA graph (default: on when the model is on CUDA).",
    ),
]
PrecisionOption = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="auto (bf16 autocast on a GPU, fp32 on the CPU), fp32, or bf16.",
    ),
]
CheckpointOption = Annotated[
    Path, typer.Option("--checkpoint", "-c", help="Checkpoint folder (a run folder's last/ or best/).")
]
GradCheckpointingOption = Annotated[
    bool, typer.Option("--grad-checkpointing", help="Recompute activations in the backward (long sequences).")
]
CudaGraphsOption = Annotated[
    bool,
    typer.Option(
        "--cuda-graphs",
        help="Replay each step's forward and backward as a CUDA graph (small models on one GPU, fixed shapes).",
    ),
]

PRESETS = ("tiny", "small", "base")
DEVICES = ("auto", "cpu", "cuda")
#: The resolved settings of a run, written into its --out folder when the run is accepted.
RUN_CONFIG_NAME = "run_config.json"

__all__ = ["UserError"]  # re-exported: apps and tests take it from here or from mambakit.errors


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping; any problem is one UserError line naming the file."""
    from .jsonfiles import read_json_file

    if path.suffix == ".json":
        data = read_json_file(path, "config file")
    else:
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: config file not found") from None
        except OSError as error:
            raise UserError(f"{path}: cannot read config file ({error.strerror})") from None
        except UnicodeDecodeError as error:
            raise UserError(
                f"{path}: not a text config file (invalid UTF-8 at byte {error.start}); give a YAML or JSON file"
            ) from None
        except (yaml.YAMLError, ValueError) as error:  # ValueError: an integer of more digits than Python converts
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(f"{path}: not valid YAML ({first_line})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(key, str) for key in data):
        raise UserError(f"{path}: expected a mapping of option names to values")
    return data


def _option_bounds(options_class: type, name: str) -> tuple[float | None, float | None, str]:
    """(min, max, flag) of the domain option `name`, from its typer.Option."""
    hint = typing.get_type_hints(options_class, include_extras=True)[name]
    for info in typing.get_args(hint)[1:]:
        if isinstance(info, typer.models.OptionInfo):
            flags = [flag for flag in (info.param_decls or ()) if flag.startswith("--")]
            return info.min, info.max, flags[0] if flags else "--" + name.replace("_", "-")
    return None, None, "--" + name.replace("_", "-")


def _checked_file_values(config: Path, values: dict[str, Any], options_class: type) -> dict[str, Any]:
    """The --config file's values, each checked against its option's type (a quoted "false" is a string, not
    false; a number or a mapping is no --data path) and the domain's options against their flags' bounds, which
    typer checks only on the command line. `data` may be one path or a list; it becomes a list."""
    where = str(config)
    common = {f.name for f in dataclasses.fields(RunOptions)}
    checked = check_values({k: v for k, v in values.items() if k not in common}, options_class, where)
    for name, value in checked.items():
        low, high, flag = _option_bounds(options_class, name)
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if is_number and ((low is not None and value < low) or (high is not None and value > high)):
            bounds = " to ".join(str(bound) for bound in (low, high) if bound is not None)
            kind = "at least" if high is None else "at most" if low is None else "in"
            raise UserError(f"{where}: {name} must be {kind} {bounds} (as {flag}), got {value!r}")
    if "data" in values:
        data = checked_value("data", values["data"], Path | list[Path], where)
        values = {**values, "data": data if isinstance(data, list) else [data]}
    checked.update(check_values(values, RunOptions, where))
    return checked


def _given(value: Any) -> bool:
    # Flags left at None (or an empty list, or a False switch) were not given: the config file decides.
    return not (value is None or value is False or value == [])


def resolve_run_options(
    config: Path | None,
    options_class: type = NoOptions,
    option_flags: Mapping[str, Any] | None = None,
    presets: Collection[str] = PRESETS,
    **flags: Any,
) -> tuple[RunOptions, Any]:
    """Merge the --config file (if any) with the flags, for the common options and the domain's own
    (`options_class`); flags that were given win. Unknown keys in the file, its values of the wrong type (or, for
    the domain's options, outside their flags' bounds), an unknown preset or device, a missing --data path are
    UserErrors naming the file and key."""
    common = {f.name for f in dataclasses.fields(RunOptions)}
    own = {f.name for f in dataclasses.fields(options_class)}
    merged: dict[str, Any] = {}
    from_file: dict[str, Any] = {}
    if config is not None:
        from_file = read_config_file(config)
        unknown = set(from_file) - common - own
        if unknown:
            raise UserError(f"{config}: unknown keys {sorted(unknown)}; known keys: {', '.join(sorted(common | own))}")
        from_file = _checked_file_values(config, from_file, options_class)
        merged.update({key: value for key, value in from_file.items() if key in common})
    merged.update({key: value for key, value in flags.items() if _given(value)})
    if merged.get("preset", "tiny") not in presets:
        raise UserError(f"unknown preset {merged['preset']!r}; choose one of {', '.join(presets)}")
    if merged.get("device", "auto") not in DEVICES:
        raise UserError(f"unknown device {merged['device']!r}; choose one of {', '.join(DEVICES)}")
    resolve_device(merged.get("device", "auto"))  # fail before any data is read
    seed = merged.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise UserError(f"--seed must be an integer in 0..2^63-1 (torch's seed range), got {seed!r}")
    for path in merged.get("data", []):
        check_data_source(path)
    # A key that is also a common option (vision's --model beside the file's `model:` section) is the common one.
    values = {key: value for key, value in from_file.items() if key in own and key not in common}
    values.update({key: value for key, value in (option_flags or {}).items() if _given(value)})
    try:
        options = options_class(**values)
    except (TypeError, ValueError) as error:
        raise UserError(f"options: {error}") from None
    return RunOptions(**merged), options


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when present, else 'cpu'; 'cuda' without a GPU is a UserError."""
    from .train.distributed import resolve_device as resolve

    return resolve(device).type


def is_main_process() -> bool:
    """False in every torchrun process but the first, which alone writes and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def check_data_source(path: Path) -> None:
    """Refuse, in one line, a --data path that does not exist. A glob pattern or a `scheme:name` source (the text
    app's `hf:NAME`) is left to the domain's reader, which says what it accepts."""
    text = str(path)
    scheme = text.split(":", 1)[0] if ":" in text else ""
    is_source = len(scheme) > 1 and scheme.isalnum()  # not a Windows drive letter
    if not (path.exists() or is_source or any(char in text for char in "*?[")):
        raise UserError(f"{path}: no such file or folder (given with --data)")


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


def train_domain(domain: Domain, run: RunOptions, options: Any) -> dict[str, float]:
    """Train `run.task` of `domain` (its default task when None) with the run's and the domain's options: build
    the data, model and Task, train to the end, save the run record and featurizer with every checkpoint, print
    the validation (and test) metrics. Returns the last metrics printed."""
    import torch

    spec = domain.task(run.task)
    run = dataclasses.replace(run, task=spec.name)
    featurizer = domain.make_featurizer(options)
    inputs = TaskInputs(run, options, featurizer, domain.presets)
    splits = spec.data(inputs)
    if splits.val is None:
        raise UserError("the data gave no validation examples; give more data or a validation split")
    inputs = dataclasses.replace(inputs, labels=splits.labels)
    torch.manual_seed(run.seed)
    model = spec.model(inputs, splits)
    record = RunRecord(domain.name, spec.name, domain.options_to_json(options), run.seed)
    files = {RUN_RECORD_NAME: record.to_json()}
    if featurizer is not None:
        files[domain.featurizer_file] = featurizer.to_json()
    announce(
        f"{domain.name} {spec.name}: {len(splits.train):,} training / {len(splits.val):,} validation / "
        f"{0 if splits.test is None else len(splits.test):,} test examples; "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"
    )
    optimizer = None if spec.optimizer is None else spec.optimizer(inputs)
    schedule = None if spec.schedule is None else spec.schedule(inputs)
    return run_training(
        domain.name,
        run,
        model,
        spec.task(inputs),
        splits,
        spec.defaults,
        files,
        domain.options_to_json(options),
        optimizer,
        schedule,
        {option.name: _option_flag(domain, option.name) for option in dataclasses.fields(domain.options)},
    )


def run_training(
    domain: str,
    run: RunOptions,
    model: Any,
    task: Any,
    splits: Any,
    train_defaults: Mapping[str, Any],
    extra_files: dict[str, str],
    domain_options: dict[str, Any],
    optimizer_factory: Any = None,
    schedule_factory: Any = None,
    option_flags: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Train through mambakit.train.fit with the run's options over the task's defaults, write the resolved
    configuration beside the checkpoints once the run is accepted, print the held-out metrics (and, when `splits`
    has a test set, the test metrics of the best checkpoint), and exit non-zero unless the training completed.

    --resume is refused, in one line naming the flags, when the run in --out was made by another domain or task or
    with other model settings (`option_flags` maps the domain options to their flags, for that line); a second
    Ctrl-C says what it kept and exits 130."""
    from .models import load_model
    from .train import TrainConfig, evaluate, fit
    from .train.optim import adamw, warmup_cosine

    out_dir = run.out or Path("runs") / f"{domain}-{run.task or 'default'}"
    given = {"max_steps": run.max_steps, "epochs": run.epochs, "batch_size": run.batch_size, "lr": run.lr}
    settings = {**train_defaults, **{k: v for k, v in given.items() if v is not None}, **run.train}
    if run.max_steps is not None and run.epochs is None:
        settings.pop("epochs", None)  # an explicit step count replaces a default epoch count
    if run.epochs is not None and run.max_steps is None:
        settings.pop("max_steps", None)
    for switch in ("grad_checkpointing", "cuda_graphs"):
        if getattr(run, switch):
            settings[switch] = True
    try:
        config = TrainConfig.from_dict(
            {
                **settings,
                "out_dir": str(out_dir),
                "device": resolve_device(run.device),
                "seed": run.seed,
                "resume": run.resume,
            }
        )
    except (TypeError, ValueError) as error:
        raise UserError(f"training settings: {error}") from None
    resolved = {
        "domain": domain,
        "options": run.to_json(),
        "domain_options": domain_options,
        "model": model.config.to_dict(),
        "train": config.to_dict(),
    }
    flags = {name: (option_flags or {}).get(name) or _flag_of(name) for name in domain_options}
    # Under torchrun every process runs this; fit lets only the first write, and only it reports.
    is_main = is_main_process()
    try:
        result = fit(
            model,
            task,
            splits.train,
            splits.val,
            config,
            extra_files=extra_files,
            run_files={RUN_CONFIG_NAME: json.dumps(resolved, indent=2) + "\n"},
            check_resume=lambda checkpoint: _check_same_run(out_dir, resolved, flags),
            optimizer_factory=optimizer_factory or adamw,
            schedule_factory=schedule_factory or warmup_cosine,
        )
    except KeyboardInterrupt as stopped:  # a second Ctrl-C: fit's TrainingAborted says what it kept
        print(f"mambakit: {first_line(stopped) if str(stopped) else 'stopped without saving'}", file=sys.stderr)
        raise typer.Exit(130) from None
    if result.status != "completed":
        print(
            f"mambakit: training {result.status} at step {result.step}; checkpoint in {out_dir / 'last'}; "
            f"continue with --resume",
            file=sys.stderr,
        )
        raise typer.Exit(result.exit_code)
    if is_main:
        print_metrics(f"{domain}: validation metrics after {result.step} steps ({out_dir})", result.metrics)
    if splits.test is None or not is_main:
        return result.metrics
    chosen = result.best_checkpoint or result.last_checkpoint
    test_metrics = evaluate(load_model(chosen, device=config.device), task, splits.test, config.eval_config())
    print_metrics(f"{domain}: test metrics of {chosen}", test_metrics)
    return test_metrics


def _check_same_run(out_dir: Path, resolved: Mapping[str, Any], flags: Mapping[str, str]) -> None:
    """Refuse, in one line naming the flags, to resume the run in `out_dir` with `resolved` settings when its
    run_config.json says it was made by another domain or task, or with other model settings. Without that file
    (a run made through the Python API) fit still compares the models."""
    path = out_dir / RUN_CONFIG_NAME
    if not path.is_file():
        return
    remedy = "restore it, or delete it to resume without comparing the settings"
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({first_line(error)}); {remedy}") from None
    sections = ("options", "domain_options", "model")
    if not (isinstance(saved, dict) and all(isinstance(saved.get(key), dict) for key in sections)):
        raise UserError(f"{path}: not a run configuration (a JSON object with {', '.join(sections)}); {remedy}")
    new = json.loads(json.dumps(resolved))  # JSON's types (lists, not tuples), as the saved file has them
    if saved.get("domain") != new["domain"]:
        raise UserError(
            f"{out_dir} holds a {saved.get('domain')} run, not a {new['domain']} one; resume it with "
            f"`mambakit train {saved.get('domain')}`, or choose another --out"
        )
    old_options, options = saved["options"], new["options"]
    differences = []  # (setting, this run's value, the saved run's value)
    if old_options.get("task") != options["task"]:
        differences.append(("--task", options["task"], old_options.get("task")))
    if saved["model"] != new["model"]:
        settings = [
            ("--preset", options["preset"], old_options.get("preset")),
            ("the config file's model:", options["model"], old_options.get("model")),
            *((flags[name], value, saved["domain_options"].get(name)) for name, value in new["domain_options"].items()),
        ]
        changed = [setting for setting in settings if setting[1] != setting[2]]
        # No setting explains it (the data sized the model, say): name the model's values that differ.
        old_model = saved["model"]
        differences += changed or [
            (key, value, old_model.get(key)) for key, value in new["model"].items() if old_model.get(key) != value
        ]
    if differences:
        given = ", ".join(f"{setting} {_shown(value)}" for setting, value, _ in differences)
        recorded = ", ".join(_shown(old) for _, _, old in differences)
        raise UserError(
            f"{given} {'does' if len(differences) == 1 else 'do'} not match the run in {out_dir} ({recorded}); "
            f"resume with the same settings or choose another --out"
        )


def _shown(value: Any) -> str:
    """A setting's value as a user typed it: on/off for a switch, compact JSON for a mapping."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _flag_of(name: str) -> str:
    """The flag typer makes of an option named `name` when it declares none."""
    return "--" + name.replace("_", "-")


def _option_flag(domain: Domain, name: str) -> str:
    """The command-line flag of the domain option `name`: the one its typer.Option declares, else typer's."""
    hints = typing.get_type_hints(domain.options, include_extras=True)
    for info in typing.get_args(hints[name])[1:]:
        declared = (getattr(info, "default", None), *(getattr(info, "param_decls", None) or ()))
        for flag in declared:
            if isinstance(flag, str) and flag.startswith("--"):
                return flag.split("/")[0]
    return _flag_of(name)


def evaluate_domain(
    domain: Domain,
    checkpoint: Path,
    data: list[Path],
    option_overrides: Mapping[str, Any],
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
) -> dict[str, float]:
    """Score a checkpoint of `domain` on `data` (or the task's default evaluation data): the task, its options
    and the seed come from the checkpoint's run record; `option_overrides` that are given replace recorded
    options (e.g. where the data is). `precision`: auto (bf16 autocast on a GPU), fp32 or bf16. Prints and returns
    the metrics."""
    from .train.config import PRECISIONS

    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    from .train import EvalConfig, evaluate

    resolved = resolve_device(device)
    loaded = load_checkpoint(domain, checkpoint, device=resolved)
    spec = domain.task(loaded.record.task)
    recorded = domain.options_from_json(loaded.record.options, str(checkpoint / RUN_RECORD_NAME))
    options = dataclasses.replace(recorded, **{k: v for k, v in option_overrides.items() if _given(v)})
    run = RunOptions(data=list(data), task=spec.name, seed=loaded.record.seed, device=resolved)
    labels = tuple(getattr(loaded.model, "labels", None) or ())
    inputs = TaskInputs(run, options, loaded.featurizer, domain.presets, model=loaded.model, labels=labels)
    task, data = spec.task(inputs), spec.evaluation_data(inputs)
    config = EvalConfig(batch_size=batch_size, precision=precision, device=resolved, seed=loaded.record.seed)
    if not isinstance(data, Mapping):
        metrics = evaluate(loaded.model, task, data, config)
        print_metrics(f"{domain.name} {spec.name}: {checkpoint}", metrics)
        return metrics
    scored: dict[str, float] = {}
    for name, dataset in data.items():
        metrics = evaluate(loaded.model, task, dataset, config)
        print_metrics(f"{domain.name} {spec.name}: {checkpoint} ({name})", metrics)
        scored.update({f"{name}/{metric}": value for metric, value in metrics.items()})
    return scored


def _parameter(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _domain_option_parameters(domain: Domain, for_eval: bool) -> list[inspect.Parameter]:
    """The domain's own options as command parameters. Non-switch options default to None (not given), so the
    config file and, in eval, the run record can supply them; their dataclass defaults apply last."""
    hints = typing.get_type_hints(domain.options, include_extras=True)
    parameters = []
    for option in dataclasses.fields(domain.options):
        if for_eval and not option.metadata.get("eval"):
            continue
        base, *metadata = typing.get_args(hints[option.name])
        if not metadata:
            raise ValueError(f"domain {domain.name!r}: option {option.name} needs an Annotated typer.Option type")
        if base is bool:
            parameters.append(_parameter(option.name, hints[option.name], False))
        else:
            optional = (base | None, *metadata)
            parameters.append(_parameter(option.name, Annotated[optional], None))
    return parameters


def _command(function: Callable[..., None], parameters: list[inspect.Parameter], doc: str) -> Callable[..., None]:
    names = [parameter.name for parameter in parameters]
    if len(set(names)) != len(names):
        raise ValueError(f"a domain option repeats a common option: {sorted(n for n in names if names.count(n) > 1)}")
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    function.__doc__ = doc
    return function


def _tasks_help(domain: Domain) -> str:
    return "Tasks: " + "; ".join(
        f"{task.name}{' (default)' if i == 0 else ''}: {task.help}" for i, task in enumerate(domain.tasks)
    )


def train_command(domain: Domain) -> Callable[..., None]:
    """`mambakit train <domain>`: the common options plus the domain's own, built from its declarations."""
    own = [option.name for option in dataclasses.fields(domain.options)]

    def train(**values: Any) -> None:
        option_flags = {name: values.pop(name) for name in own}
        run, options = resolve_run_options(
            values.pop("config"), domain.options, option_flags, domain.presets or PRESETS, **values
        )
        train_domain(domain, run, options)

    common = [
        _parameter("data", DataOption, None),
        _parameter("task", TaskOption, None),
        _parameter("out", OutOption, None),
        _parameter("max_steps", MaxStepsOption, None),
        _parameter("epochs", EpochsOption, None),
        _parameter("batch_size", TrainBatchSizeOption, None),
        _parameter("lr", LrOption, None),
        _parameter("device", DeviceOption, None),
        _parameter(
            "preset",
            Annotated[
                str | None, typer.Option("--preset", help=f"Model size: {' | '.join(domain.presets or PRESETS)}.")
            ],
            None,
        ),
        _parameter("config", ConfigOption, None),
        _parameter("resume", ResumeOption, False),
        _parameter("seed", SeedOption, None),
        _parameter("grad_checkpointing", GradCheckpointingOption, False),
        _parameter("cuda_graphs", CudaGraphsOption, False),
    ]
    return _command(
        train,
        common + _domain_option_parameters(domain, for_eval=False),
        f"Train a model of the {domain.name} domain ({domain.help}). {_tasks_help(domain)}. Without --data: the "
        f"domain's default data (embedded, or generated).",
    )


def eval_command(domain: Domain) -> Callable[..., None]:
    """`mambakit eval <domain>`: score a checkpoint on --data or on its task's default evaluation data."""

    def evaluate(
        checkpoint: Path,
        data: list[Path] | None,
        batch_size: int | None,
        device: str | None,
        precision: str | None,
        **overrides: Any,
    ) -> None:
        for path in data or []:
            check_data_source(path)
        evaluate_domain(
            domain, checkpoint, data or [], overrides, batch_size or 32, device or "auto", precision or "auto"
        )

    common = [
        _parameter("checkpoint", CheckpointOption, inspect.Parameter.empty),
        _parameter("data", DataOption, None),
        _parameter("batch_size", BatchSizeOption, None),
        _parameter("device", DeviceOption, None),
        _parameter("precision", PrecisionOption, None),
    ]
    return _command(
        evaluate,
        common + _domain_option_parameters(domain, for_eval=True),
        f"Score a {domain.name} checkpoint on --data, or on its task's default held-out data "
        f"(the task and its options come from the checkpoint).",
    )
