"""The synthetic domain: the capability tasks (selective copying, induction heads, MQAR and its harder variant)
for every model family one MambaConfig builds: Mamba (S6), Mamba-LTI (S4D-like), Transformer (attention + MLP),
MambaFormer (Park et al.: a Mamba block in place of positions, then attention and Mamba alternating) and the
standard hybrid (attention and Mamba alternating, rotary positions). The core builds `mambakit train|eval
synthetic`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from mambakit.domains import EVAL_OPTION, Domain, DomainTask, Splits, TaskInputs
from mambakit.errors import UserError

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
        typer.Option("--length", min=4, help="Sequence length (default: the task's; eval: length to test at)."),
    ] = field(default=None, metadata=EVAL_OPTION)
    vocab: Annotated[int | None, typer.Option("--vocab", min=3, help="Vocabulary size (default: the task's).")] = None
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Tokens to copy / key-value pairs (default: the task's).")
    ] = None
    lengths: Annotated[
        str | None,
        typer.Option("--lengths", help="eval: comma-separated lengths to test at, e.g. 64,256,4096 (extrapolation)."),
    ] = field(default=None, metadata=EVAL_OPTION)


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
    default = TASKS[task][1]
    return TaskShape(
        length=options.length or default.length,
        vocab=options.vocab or default.vocab,
        count=options.count or default.count,
    )


def _data(task: str) -> Any:
    def build(inputs: TaskInputs) -> Splits:
        from .data import TRAIN_EXAMPLES, VALIDATION_EXAMPLES, SyntheticTask

        if inputs.run.data:
            raise UserError("synthetic tasks generate their own data from the seed; drop --data")
        shape, seed = _shape(inputs, task), inputs.run.seed
        try:
            train = SyntheticTask(task, shape, seed, TRAIN_EXAMPLES)
            val = SyntheticTask(task, shape, seed, VALIDATION_EXAMPLES, validation=True)
        except ValueError as error:
            raise UserError(f"{task}: {error}; change --length, --vocab or --count") from None
        return Splits(train, val)

    return build


def _eval_lengths(text: str) -> list[int]:
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 4:
        raise UserError(f"--lengths {text!r}: give comma-separated sequence lengths of at least 4, e.g. 64,256,1024")
    return lengths


def _eval_data(task: str) -> Any:
    """The fixed validation examples, at --length when given, or one set per length of --lengths."""

    def build(inputs: TaskInputs) -> Any:
        options: SyntheticOptions = inputs.options
        if options.lengths is None:
            return _data(task)(inputs).val
        return {
            f"length {length}": _data(task)(
                dataclasses.replace(inputs, options=dataclasses.replace(options, length=length))
            ).val
            for length in _eval_lengths(options.lengths)
        }

    return build


def _model(task: str) -> Any:
    def build(inputs: TaskInputs, splits: Splits) -> Any:
        from mambakit.models import MambaConfig, MambaLMHeadModel

        options: SyntheticOptions = inputs.options
        sizes = {**inputs.presets.get(inputs.run.preset, {}), **inputs.run.model}
        shape = _shape(inputs, task)
        fields = family_fields(
            options.family, int(sizes.get("n_layer", 2)), int(sizes.get("d_model", 32)), options.positions, shape.length
        )
        config = inputs.model_config(MambaConfig, vocab_size=shape.vocab, **fields)
        return MambaLMHeadModel(config)

    return build


def _task(inputs: TaskInputs) -> Any:
    from .tasks import ScoredTokensTask

    family_fields(inputs.options.family, 2, 32, inputs.options.positions)  # bad names fail before any data is made
    return ScoredTokensTask()


TASK_HELP = {
    "selective-copying": "copy the scattered data tokens, in order, at the markers (Mamba paper 4.1.1)",
    "induction-heads": "after the copy prefix, output the token that followed its first occurrence (H3 / Mamba)",
    "mqar": "multi-query associative recall: give each queried key's value (Zoology)",
    "mqar-hard": "MQAR with random tokens between the queries (Mamba-2 paper 9.1)",
}

DOMAIN = Domain(
    name=DOMAIN_NAME,
    help="capability tasks: selective copying, induction heads, MQAR; Mamba, LTI, Transformer and hybrids",
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
    ),
    options=SyntheticOptions,
    presets=PRESETS,
)
