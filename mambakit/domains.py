"""Domains: what an app (genomics, audio, vision, text, or a third party's) declares, and the registry of them.

An app registers through the entry-point group `mambakit.apps`, pointing at a `Domain`:

    DOMAIN = Domain(
        name="toy", help="...",
        tasks=[DomainTask("classify", "...", data=..., model=..., task=..., defaults={...})],
        options=ToyOptions,                 # a frozen dataclass of the app's own CLI options
        featurizer=..., load_featurizer=...,
        presets={"tiny": {...}},
    )

From those declarations the core builds `mambakit train|eval <domain>` (mambakit.cli_support), saves a typed,
versioned `RunRecord` beside each checkpoint, and loads a checkpoint with its featurizer and record back
(`load_checkpoint`). Apps add further verbs (predict, generate) as plain commands. The core never imports an
app by name.

Importing this module imports neither torch nor typer.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from .errors import MambakitError, UserError, described
from .validation import check_values

ENTRY_POINT_GROUP = "mambakit.apps"
VERBS = ("train", "eval", "generate", "predict")
RUN_RECORD_NAME = "run_record.json"
RUN_RECORD_VERSION = 1
#: Field metadata of a domain option that `eval` takes too (e.g. where the data is); the others come from the
#: checkpoint's run record.
EVAL_OPTION = {"eval": True}


class Featurizer(Protocol):
    """What turns raw inputs into model inputs (a tokenizer, a quantizer, an image transform); saved beside the
    weights as the domain's `featurizer_file`."""

    def to_json(self) -> str:
        """The featurizer as JSON text; the domain's `load_featurizer` reads it back."""
        ...


@dataclass(frozen=True)
class RunOptions:
    """The options every domain's `train` shares, after merging --config with the flags."""

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
    grad_checkpointing: bool = False
    cuda_graphs: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    """Model config overrides (from the config file's `model:` section)."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig overrides (from the config file's `train:` section)."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, for the resolved config written beside the checkpoints."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["data"] = [str(path) for path in self.data]
        out["out"] = str(self.out) if self.out is not None else None
        return out


@dataclass(frozen=True)
class Splits:
    """The datasets of one run: training, validation (picks the best checkpoint) and test (scored at the end)."""

    train: Any
    val: Any = None
    test: Any = None
    labels: tuple[str, ...] = ()
    """Class names (index = class id) of classification data; empty otherwise."""


@dataclass(frozen=True)
class TaskInputs:
    """What a domain task's builders get: the common options, the app's own options, its featurizer, its presets,
    the class names (from the data when training, the checkpoint when evaluating; empty for tasks without
    classes) and, when evaluating or predicting, the checkpoint's model."""

    run: RunOptions
    options: Any
    featurizer: Any
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    model: Any = None
    labels: tuple[str, ...] = ()

    def model_config(self, config_class: Any, **fixed: Any) -> Any:
        """`config_class` from the preset's sizes, then the config file's `model:` overrides, then `fixed` (what
        the data decides, e.g. the vocabulary size); bad settings are one UserError line."""
        preset = self.presets.get(self.run.preset, {})
        try:
            return config_class.from_dict({**preset, **self.run.model, **fixed})
        except (TypeError, ValueError) as error:
            # The config class names itself "config"; say instead where its values came from.
            reason = str(error).removeprefix("config: ")
            sources = f"--preset {self.run.preset}" + (
                " and the --config file's model: section" if self.run.model else ""
            )
            raise UserError(f"model settings ({sources}): {reason}") from None


@dataclass(frozen=True)
class DomainTask:
    """One thing a domain trains for: its data, model and Task builders and its training defaults."""

    name: str
    help: str
    data: Callable[[TaskInputs], Splits]
    """The run's datasets: the user's --data, or the domain's embedded default."""
    model: Callable[[TaskInputs, Splits], Any]
    """A new model (a `mambakit.models.TrainableModel`) for these datasets."""
    task: Callable[[TaskInputs], Any]
    """The `mambakit.train.Task`: collation, loss, metrics."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """TrainConfig settings that the flags and the config file override."""
    eval_data: Callable[[TaskInputs], Any] | None = None
    """What `eval` scores (inputs.model is the checkpoint's model); default: the test split of `data`, else val.
    A mapping of names to datasets (one per sequence length, say) is scored and reported per name."""
    optimizer: Callable[[TaskInputs], Any] | None = None
    """inputs -> an optimizer factory for `mambakit.train.fit` (see `mambakit.train.optim.OptimizerFactory`);
    default: the trainer's AdamW."""
    schedule: Callable[[TaskInputs], Any] | None = None
    """inputs -> a learning-rate schedule factory for `mambakit.train.fit` (see
    `mambakit.train.optim.ScheduleFactory`); default: the trainer's warm-up + cosine."""

    def evaluation_data(self, inputs: TaskInputs) -> Any:
        """The dataset `eval` scores for these inputs."""
        if self.eval_data is not None:
            return self.eval_data(inputs)
        splits = self.data(inputs)
        dataset = splits.test if splits.test is not None else splits.val
        if dataset is None:
            raise UserError(f"task {self.name}: the data gave no test or validation examples to evaluate on")
        return dataset


class MissingExtraError(MambakitError, ImportError):
    """An optional package a domain (or one of its features) needs is missing or broken; the message names the
    mambakit extra that installs it."""


@dataclass(frozen=True)
class Requirement:
    """A module a domain imports from an optional package: `package` is the name users know it by, `extra` the
    mambakit extra that installs it. With `needed_for` empty, every command of the domain needs it (the CLI checks
    before running one); otherwise only that feature does, and the rest of the domain works without it."""

    module: str
    package: str
    extra: str
    needed_for: str = ""

    def import_error(self) -> Exception | None:
        """None when the module imports, else the error importing it raised."""
        try:
            importlib.import_module(self.module)
        except Exception as error:  # an ABI mismatch or a broken dependency raises more than ImportError
            return error
        return None

    def is_absent(self, error: Exception) -> bool:
        """Whether `error` (from `import_error`) says the package is not installed, rather than installed but
        broken (failing on a dependency of its own, an ABI mismatch)."""
        missing = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
        return missing is not None and (self.module == missing or self.module.startswith(missing + "."))

    def explain(self, needer: str, error: Exception) -> str:
        """One line: `needer` ("the genomics domain", "writing Parquet") needs the package, and what to run: install
        the extra, or reinstall it when the package is there but its import fails (the error is quoted)."""
        if self.is_absent(error):
            return f"{needer} needs {self.package}: pip install 'mambakit[{self.extra}]'"
        return (
            f"{needer} needs {self.package}, which is installed but fails to import ({described(error)}); reinstall "
            f"it: pip install --force-reinstall 'mambakit[{self.extra}]'"
        )

    def load(self, needer: str) -> Any:
        """The imported module; a `MissingExtraError` saying that `needer` (e.g. "writing Parquet") needs the
        package when it does not import."""
        error = self.import_error()
        if error is not None:
            raise MissingExtraError(self.explain(needer, error)) from error
        return importlib.import_module(self.module)


@dataclass(frozen=True)
class NoOptions:
    """The options of a domain that has none of its own."""


@dataclass(frozen=True)
class RunRecord:
    """What a checkpoint was trained for, saved beside it as run_record.json: the domain, the task, the domain's
    options and the seed, so eval and predict rebuild the same data and task. Versioned: a newer version is
    refused with a one-line error."""

    domain: str
    task: str
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    version: int = RUN_RECORD_VERSION

    def to_json(self) -> str:
        """JSON text of every field."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> RunRecord:
        """Read `to_json`'s output; `source` names the file in errors."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{source}: not valid JSON ({error}); restore it from a copy") from None
        if not isinstance(data, dict) or not {"domain", "task"} <= set(data):
            raise UserError(f"{source}: expected a JSON object with domain and task")
        known = {f.name for f in dataclasses.fields(cls)}
        if set(data) - known:
            raise UserError(f"{source}: unknown keys {sorted(set(data) - known)}; known: {', '.join(sorted(known))}")
        data = check_values(data, cls, source)
        if data.get("version", RUN_RECORD_VERSION) > RUN_RECORD_VERSION:
            raise UserError(
                f"{source}: run record version {data['version']} was written by a newer mambakit; upgrade mambakit"
            )
        return cls(**data)


@dataclass(frozen=True)
class Loaded:
    """A checkpoint loaded for its domain: the model (eval mode), its featurizer and its run record."""

    model: Any
    featurizer: Any
    record: RunRecord


@dataclass(frozen=True)
class Domain:
    """One domain app: its tasks and options (from which the core builds `train` and `eval`), its featurizer,
    model presets, and any further commands (`predict`, `generate`), each a typed function whose signature the
    CLI turns into options (use the option types of mambakit.cli_support so options mean the same everywhere)."""

    name: str
    help: str
    tasks: Sequence[DomainTask] = ()
    """The first one is the default task."""
    options: type = NoOptions
    """A frozen dataclass of the domain's own options: each field's type is Annotated with its typer.Option,
    its default is the CLI default; fields with metadata EVAL_OPTION are also `eval` options."""
    featurizer: Callable[[Any], Featurizer] | None = None
    """options -> the featurizer of a new run (saved beside the checkpoints)."""
    load_featurizer: Callable[[str, str], Featurizer] | None = None
    """(JSON text, file name for errors) -> the featurizer a checkpoint was trained with."""
    featurizer_file: str = "tokenizer.json"
    """The file beside the weights that holds the featurizer's JSON."""
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """--preset name -> model config sizes."""
    commands: Mapping[str, Callable[..., None]] = field(default_factory=dict)
    """Further verbs (generate, predict) -> command function."""
    benchmarks: Mapping[str, Callable[..., None]] = field(default_factory=dict)
    """`mambakit bench NAME` commands the domain adds (e.g. the synthetic domain's `capabilities`)."""
    read_legacy: Callable[[Path, Any], RunRecord | None] | None = None
    """For checkpoints written before run records existed: (checkpoint dir, model) -> the record, or None when
    the checkpoint is not this domain's."""
    requires: Sequence[Requirement] = ()
    """The optional packages the domain imports: those without `needed_for` are checked before any of its
    commands runs; `mambakit info` reports every one that is missing."""

    def __post_init__(self) -> None:
        unknown = set(self.commands) - set(VERBS)
        if unknown:
            raise ValueError(f"domain {self.name!r}: unknown verbs {sorted(unknown)}; verbs are {', '.join(VERBS)}")
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"domain {self.name!r}: task names repeat: {names}")
        if not dataclasses.is_dataclass(self.options):
            raise ValueError(f"domain {self.name!r}: options must be a dataclass, got {self.options!r}")
        if self.tasks and (self.featurizer is None) != (self.load_featurizer is None):
            raise ValueError(f"domain {self.name!r}: give both featurizer and load_featurizer, or neither")

    @property
    def verbs(self) -> tuple[str, ...]:
        """Every verb this domain answers to."""
        built = ("train", "eval") if self.tasks else ()
        return tuple(verb for verb in VERBS if verb in built or verb in self.commands)

    def task(self, name: str | None) -> DomainTask:
        """The task called `name` (None: the default), or a UserError listing the tasks."""
        if not self.tasks:
            raise UserError(f"domain {self.name} declares no tasks")
        for task in self.tasks:
            if name is None or task.name == name:
                return task
        raise UserError(f"unknown {self.name} task {name!r}; choose one of {', '.join(t.name for t in self.tasks)}")

    def options_to_json(self, options: Any) -> dict[str, Any]:
        """The domain options as JSON data (paths as strings)."""
        return {
            name: str(value) if isinstance(value, Path) else value
            for name, value in dataclasses.asdict(options).items()
        }

    def options_from_json(self, data: Mapping[str, Any], source: str) -> Any:
        """The domain options from `options_to_json`'s output; options added since take their defaults."""
        known = {f.name for f in dataclasses.fields(self.options)}
        if set(data) - known:
            raise UserError(f"{source}: unknown {self.name} options {sorted(set(data) - known)}")
        return self.options(**check_values(data, self.options, source))

    def unmet_requirements(self, every_command_only: bool = False) -> list[tuple[Requirement, Exception]]:
        """(requirement, import error) of each declared package (with `every_command_only`, of those every command
        needs) that does not import, leaving out those that fail only because another declared package is absent
        (timm without torchvision: torchvision is what to install)."""
        declared = [r for r in self.requires if not (every_command_only and r.needed_for)]
        failed = [(requirement, requirement.import_error()) for requirement in declared]
        unmet = [(requirement, error) for requirement, error in failed if error is not None]
        absent = {requirement.module.split(".")[0] for requirement, error in unmet if requirement.is_absent(error)}

        def caused_by_another(requirement: Requirement, error: Exception) -> bool:
            missing = getattr(error, "name", None) or ""
            return not requirement.is_absent(error) and missing.split(".")[0] in absent

        return [(requirement, error) for requirement, error in unmet if not caused_by_another(requirement, error)]

    def check_requirements(self) -> None:
        """A `MissingExtraError` naming the first package every command of the domain needs that does not import,
        and the extra that installs it. Packages only some features need are not imported here: they cost every
        command their import time (transformers, through peft, takes seconds)."""
        for requirement, error in self.unmet_requirements(every_command_only=True):
            raise MissingExtraError(requirement.explain(f"the {self.name} domain", error))

    def make_featurizer(self, options: Any) -> Any:
        """The featurizer of a new run (None for a domain without one)."""
        return None if self.featurizer is None else self.featurizer(options)


def load_checkpoint(domain: Domain, checkpoint: Path, device: Any = None, verb: str = "eval") -> Loaded:
    """A checkpoint of `domain` with its featurizer and run record; any other checkpoint is a one-line
    UserError saying whose it is (and the `verb` command to use instead)."""
    from .models import load_model

    model = load_model(checkpoint, device=device)
    record_file = checkpoint / RUN_RECORD_NAME
    record: RunRecord | None
    if record_file.is_file():
        record = RunRecord.from_json(record_file.read_text(), str(record_file))
    else:
        record = domain.read_legacy(checkpoint, model) if domain.read_legacy is not None else None
        if record is None:
            raise UserError(
                f"{checkpoint}: not a {domain.name} checkpoint (no {RUN_RECORD_NAME}); train one with "
                f"`mambakit train {domain.name}`"
            )
    if record.domain != domain.name:
        raise UserError(
            f"{checkpoint}: a {record.domain} checkpoint, not a {domain.name} checkpoint; use "
            f"`mambakit {verb} {record.domain}`"
        )
    featurizer = None
    if domain.load_featurizer is not None:
        path = checkpoint / domain.featurizer_file
        try:
            featurizer = domain.load_featurizer(path.read_text(), str(path))
        except FileNotFoundError:
            raise UserError(f"{path}: missing; a {domain.name} checkpoint keeps its featurizer here") from None
        except ValueError as error:
            raise UserError(str(error)) from None
    return Loaded(model, featurizer, record)


def load_domains(only: str | None = None) -> dict[str, Domain]:
    """Every installed domain (or only the one named `only`), by name, sorted. Loading a domain imports its app,
    which registers its models. An app that fails to load is skipped with a warning rather than breaking the
    whole CLI."""
    import warnings

    domains: dict[str, Domain] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if only is not None and entry.name != only:
            continue
        try:
            domain = entry.load()
        except Exception as error:  # a broken third-party app must not take the CLI down
            warnings.warn(f"mambakit app {entry.name!r} failed to load: {type(error).__name__}: {error}", stacklevel=2)
            continue
        if not isinstance(domain, Domain):
            warnings.warn(f"mambakit app {entry.name!r} does not point at a mambakit.domains.Domain", stacklevel=2)
            continue
        domains[domain.name] = domain
    return dict(sorted(domains.items()))
