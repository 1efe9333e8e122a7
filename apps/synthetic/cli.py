"""The synthetic domain: the capability tasks (selective copying, induction heads, MQAR and its harder variant) and
Park et al.'s in-context learning tasks (linear regression, sparse parity, vector-valued MQAR, on vector prompts)
for every model family one MambaConfig builds: Mamba (S6), Mamba-LTI (S4D-like), Transformer (attention + MLP),
MambaFormer (Park et al.: a Mamba block in place of positions, then attention and Mamba alternating) and the
standard hybrid (attention and Mamba alternating, rotary positions). The core builds `mambakit train|eval
synthetic`."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from mambakit.domains import EVAL_OPTION, Domain, DomainTask, Splits, TaskInputs
from mambakit.errors import UserError

from .bench import capabilities

DOMAIN_NAME = "synthetic"

#: Sizes: tiny is the CPU smoke scale of ../shared/notes/capabilities.md; small the papers' d_model 64.
PRESETS = {
    "tiny": {"d_model": 32, "n_layer": 2, "d_state": 8, "attn_num_heads": 4},
    "small": {"d_model": 64, "n_layer": 2, "d_state": 16, "attn_num_heads": 8},
    "base": {"d_model": 128, "n_layer": 2, "d_state": 16, "attn_num_heads": 8},
}
#: Model families (--model).
FAMILIES = ("mamba", "mamba-lti", "transformer", "mambaformer", "hybrid")
#: Positions of the attention layers (--positions); MambaFormer has none (its first Mamba block orders the input).
POSITIONS = ("rope", "learned", "none")
#: Learned position tables cover this many positions at least (the longest the Mamba paper tests attention at),
#: so extrapolation can be measured; positions past the training length keep their initial values.
LEARNED_POSITIONS = 1 << 14
#: The longest sequence (and the most tokens to copy or pairs) a run may ask for: 4x the Mamba paper's longest
#: induction-heads test (2^20); numbers past this only exhaust memory.
MAX_LENGTH = 1 << 22
#: The largest vocabulary (or ICL vector dimension).
MAX_VOCAB = 1 << 20
TRAIN_DEFAULTS = {
    "max_steps": 400,
    "batch_size": 32,
    "lr": 3e-3,
    "weight_decay": 0.0,
    "warmup_ratio": 0.05,
    "eval_every": 100,
    "save_every": 100,
    "log_every": 20,
}


@dataclass(frozen=True)
class SyntheticOptions:
    """The synthetic app's own options (saved in each checkpoint's run record)."""

    family: Annotated[str, typer.Option("--model", help="Model family: " + " | ".join(FAMILIES) + ".")] = "mamba"
    positions: Annotated[
        str,
        typer.Option(
            "--positions",
            help="Positions of the attention layers (transformer, hybrid): rope | learned (absolute, GPT-2) | none.",
        ),
    ] = "rope"
    length: Annotated[
        int | None,
        typer.Option(
            "--length",
            min=4,
            max=MAX_LENGTH,
            help="Sequence length; copying: the longest string (default: the task's; eval: length to test at).",
        ),
    ] = field(default=None, metadata=EVAL_OPTION)
    vocab: Annotated[
        int | None,
        typer.Option(
            "--vocab",
            min=3,
            max=MAX_VOCAB,
            help="Vocabulary size; icl-* tasks: vector dimension d (default: the task's).",
        ),
    ] = None
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            min=1,
            max=MAX_LENGTH,
            help="Tokens to copy / key-value pairs; copying: the shortest string; icl-* tasks: points or pairs per "
            "prompt N (default: the task's).",
        ),
    ] = None
    lengths: Annotated[
        str | None,
        typer.Option("--lengths", help="eval: comma-separated lengths to test at, e.g. 64,256,4096 (extrapolation)."),
    ] = field(default=None, metadata=EVAL_OPTION)
    curriculum_every: Annotated[
        int,
        typer.Option(
            "--curriculum-every",
            min=1,
            help="ICL linear regression: steps between curriculum increments (Park et al.: 2000).",
        ),
    ] = 2000


def family_fields(family: str, n_layer: int, d_model: int, positions: str = "rope", length: int = 0) -> dict[str, Any]:
    """The MambaConfig fields that make `family` from a preset of `n_layer` mixers of width `d_model`; attention
    layers get `positions` (learned ones a table of at least `length` positions)."""
    if positions not in POSITIONS:
        raise UserError(f"--positions {positions!r}: choose one of {', '.join(POSITIONS)}")
    attention = {"attn_positions": positions}
    if positions == "learned":
        attention["max_position_embeddings"] = max(length, LEARNED_POSITIONS)
    if family == "mamba":
        return {}
    if family == "mamba-lti":
        return {"selective": False}
    if family == "transformer":
        return {"attn_layer_idx": list(range(n_layer)), "d_intermediate": 4 * d_model, **attention}
    if family == "mambaformer":
        # One Mamba block first, then attention (odd) and Mamba (even) alternating: n_layer + 1 mixers.
        return {"n_layer": n_layer + 1, "attn_layer_idx": list(range(1, n_layer + 1, 2)), "attn_positions": "none"}
    if family == "hybrid":
        return {"attn_layer_idx": list(range(0, n_layer, 2)), **attention}
    raise UserError(f"--model {family!r}: choose one of {', '.join(FAMILIES)}")


def _shape(inputs: TaskInputs, task: str) -> Any:
    from .data import TASKS, TaskShape

    options: SyntheticOptions = inputs.options
    default = TASKS[task].defaults
    return TaskShape(
        length=options.length or default.length,
        vocab=options.vocab or default.vocab,
        count=options.count or default.count,
    )


def _splits(inputs: TaskInputs, task: str, make: Any, shape: Any, sizes_hint: str) -> Splits:
    """Training (TRAIN_EXAMPLES fresh examples) and validation (VALIDATION_EXAMPLES fixed ones) datasets made by
    `make(shape, seed, size, validation=...)`; sizes the task cannot have are one line naming `sizes_hint`."""
    from .data import TRAIN_EXAMPLES, VALIDATION_EXAMPLES

    if inputs.run.data:
        raise UserError("synthetic tasks generate their own data from the seed; drop --data")
    seed = inputs.run.seed
    try:
        return Splits(make(shape, seed, TRAIN_EXAMPLES), make(shape, seed, VALIDATION_EXAMPLES, validation=True))
    except ValueError as error:
        raise UserError(f"{task}: {error}; change {sizes_hint}") from None


def _data(task: str) -> Any:
    def build(inputs: TaskInputs) -> Splits:
        from .data import SyntheticTask

        make = functools.partial(SyntheticTask, task)
        return _splits(inputs, task, make, _shape(inputs, task), "--length, --vocab or --count")

    return build


def _eval_lengths(text: str) -> list[int]:
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 4 or max(lengths) > MAX_LENGTH:
        raise UserError(
            f"--lengths {text!r}: give comma-separated sequence lengths from 4 to {MAX_LENGTH}, e.g. 64,256,1024"
        )
    return lengths


def _at_length(task: str, options: SyntheticOptions, length: int) -> SyntheticOptions:
    """The options that evaluate `task` at `length` (copying's strings then all have that length)."""
    from .data import TASKS

    count = length if TASKS[task].count_follows_length else options.count
    return dataclasses.replace(options, length=length, count=count)


def _eval_data(task: str) -> Any:
    """The fixed validation examples, at --length when given, or one set per length of --lengths."""

    def build(inputs: TaskInputs) -> Any:
        options: SyntheticOptions = inputs.options
        if options.lengths is None:
            return _data(task)(inputs).val
        return {
            f"length {length}": _data(task)(dataclasses.replace(inputs, options=_at_length(task, options, length))).val
            for length in _eval_lengths(options.lengths)
        }

    return build


def _config(inputs: TaskInputs, vocab: int, length: int) -> Any:
    """The MambaConfig of the run: the preset's sizes, the family's layout (`family_fields`), then the config
    file's `model:` settings, which may change the layout too (e.g. d_intermediate 0: attention without an MLP)."""
    from mambakit.models import MambaConfig

    options: SyntheticOptions = inputs.options
    sizes = {**inputs.presets.get(inputs.run.preset, {}), **inputs.run.model}
    fields = family_fields(
        options.family, int(sizes.get("n_layer", 2)), int(sizes.get("d_model", 32)), options.positions, length
    )
    # MambaFormer's n_layer (one more mixer) is derived from the model settings' own, so it always applies.
    layout = {name: value for name, value in fields.items() if name not in inputs.run.model or name == "n_layer"}
    return inputs.model_config(MambaConfig, vocab_size=vocab, **layout)


def _model(task: str) -> Any:
    def build(inputs: TaskInputs, splits: Splits) -> Any:
        from mambakit.models import MambaLMHeadModel

        from .data import TASKS

        shape = _shape(inputs, task)
        return MambaLMHeadModel(_config(inputs, shape.vocab, TASKS[task].positions(shape)))

    return build


def _task(inputs: TaskInputs) -> Any:
    from .tasks import ScoredTokensTask

    family_fields(inputs.options.family, 2, 32, inputs.options.positions)  # bad names fail before any data is made
    return ScoredTokensTask()


def _icl_shape(inputs: TaskInputs, task: str) -> Any:
    """The prompt sizes of ICL task `task`: --vocab is the dimension d, --count the points or pairs N; a prompt's
    length follows from N, so --length and --lengths are refused."""
    from .icl import TASKS, PromptShape

    options: SyntheticOptions = inputs.options
    if options.length is not None or options.lengths is not None:
        raise UserError(
            f"{task}: a prompt is 2N vectors (MQAR: 2N + 1), so --length and --lengths do not apply; set N with --count"
        )
    default = TASKS[task].defaults
    return PromptShape(
        dims=options.vocab or default.dims, points=options.count or default.points, parity_bits=default.parity_bits
    )


def _icl_data(task: str) -> Any:
    def build(inputs: TaskInputs) -> Splits:
        from .icl import InContextData

        make = functools.partial(InContextData, task)
        return _splits(inputs, task, make, _icl_shape(inputs, task), "--vocab or --count")

    return build


def _icl_model(task: str) -> Any:
    def build(inputs: TaskInputs, splits: Splits) -> Any:
        from mambakit.models import MambaForVectorSequences

        from .icl import TASKS, output_features, prompt_length

        kind, shape = TASKS[task].kind, _icl_shape(inputs, task)
        config = _config(inputs, 0, prompt_length(kind, shape))
        return MambaForVectorSequences(config, in_features=shape.dims, out_features=output_features(kind, shape))

    return build


def _icl_task(task: str) -> Any:
    def build(inputs: TaskInputs) -> Any:
        from .icl import TASKS, InContextTask

        family_fields(inputs.options.family, 2, 32, inputs.options.positions)  # bad names fail before any data
        return InContextTask(TASKS[task].kind, curriculum_every=inputs.options.curriculum_every)

    return build


TASK_HELP = {
    "selective-copying": "copy the scattered data tokens, in order, at the markers (Mamba paper 4.1.1)",
    "induction-heads": "after the copy prefix, output the token that followed its first occurrence (H3 / Mamba)",
    "mqar": "multi-query associative recall: give each queried key's value (Zoology)",
    "mqar-hard": "MQAR with random tokens between the queries (Mamba-2 paper 9.1)",
    "copying": "copy a string of --count to --length letters after the separator (Jelassi et al.)",
}
ICL_TASK_HELP = {
    "icl-linear-regression": "in-context linear regression y = w·x, with the curriculum (Park et al. / Garg et al.)",
    "icl-sparse-parity": "in-context sparse parity: y = product of 2 of the d ±1 coordinates (Park et al.)",
    "icl-vector-mqar": "vector-valued MQAR: output the value of the queried key, vectors in R^d (Park et al.)",
}

DOMAIN = Domain(
    name=DOMAIN_NAME,
    help="capability tasks: selective copying, induction heads, MQAR, in-context learning; Mamba, LTI, Transformer "
    "and hybrids",
    tasks=tuple(
        DomainTask(
            name,
            help_text,
            data=_data(name),
            model=_model(name),
            task=_task,
            defaults=TRAIN_DEFAULTS,
            eval_data=_eval_data(name),
        )
        for name, help_text in TASK_HELP.items()
    )
    + tuple(
        DomainTask(
            name,
            help_text,
            data=_icl_data(name),
            model=_icl_model(name),
            task=_icl_task(name),
            defaults=TRAIN_DEFAULTS,
        )
        for name, help_text in ICL_TASK_HELP.items()
    ),
    options=SyntheticOptions,
    presets=PRESETS,
    benchmarks={"capabilities": capabilities},
)
