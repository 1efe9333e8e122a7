"""Checks of configs that come from files a user may have been handed (a --config file, a checkpoint's
config.json): every value against its declared type, and every size against a sanity limit before anything is
allocated.

Types, from a dataclass's annotations (`check_fields`) or one annotation (`checked_value`): a bool must be a real
bool (YAML's quoted "false" is a string, and a truthy one); a float field takes ints and floats but not strings,
bools or non-finite numbers; an int field takes no bools and no fractions (4.0 becomes 4); a Path is a non-empty
string; lists become the tuples an annotation asks for. A mismatch is one UserError line naming the key:

    config: norm_epsilon must be a number, got '1e-5' (a string)

Sizes (`check_sizes`): a config.json that asks for d_model 10^9 or n_layer 10^7 would allocate until the machine
runs out of memory, so sizes above generous limits (every published Mamba, Falcon-Mamba and Codestral-Mamba shape
fits) and a parameter estimate above `MAX_PARAMETERS` are refused, naming the key, unless the environment sets
MAMBAKIT_ALLOW_LARGE_MODELS=1.

Imports neither torch nor any kernel.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

#: Set to 1 to load or build models above the sanity limits.
ALLOW_LARGE_MODELS = "MAMBAKIT_ALLOW_LARGE_MODELS"
#: Model widths (d_model); the largest published Mamba (Falcon-Mamba, Codestral-Mamba 7B) has 4096.
WIDTH_LIMIT = 65536
#: Layers (n_layer, blocks); the largest published Mamba has 64.
LAYER_LIMIT = 1024
#: Vocabulary entries, classes and positions; published vocabularies stay below 300k.
VOCAB_LIMIT = 2**24
#: SSM state size per channel (d_state); Mamba-2 models use up to 256.
STATE_LIMIT = 4096
#: Small factors: expand, conv widths.
FACTOR_LIMIT = 1024
#: Parameters of the whole model (estimated from the config before anything is allocated).
MAX_PARAMETERS = 100_000_000_000

_PLURALS = {bool: "true/false values", int: "integers", float: "numbers", str: "strings", Path: "paths"}
#: How long a shown value may get in a message.
_SHOWN = 60


def _describe(annotation: Any) -> str:
    """What a value of `annotation` is, in words: "an integer", "a list of numbers", "a string or null"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _describe(arg) for arg in args)
    if origin in (tuple, list, Sequence):
        items = [arg for arg in args if arg is not Ellipsis]
        kinds = {_PLURALS.get(arg, "values") for arg in items}
        count = f"{len(items)} " if items and Ellipsis not in args and origin is tuple else ""
        return f"a list of {count}{kinds.pop() if len(kinds) == 1 else 'values'}"
    if origin is dict or annotation is dict:
        return "a mapping"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path (a non-empty string)",
    }.get(annotation, f"a {getattr(annotation, '__name__', annotation)}")


def _kind(value: Any) -> str:
    """What `value` is, in the words of a config file's author: "a string", "a boolean", "a list"."""
    if value is None:
        return "null"
    for cls, words in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string")):
        if isinstance(value, cls):
            return words
    if isinstance(value, list | tuple):
        return "a list"
    return "a mapping" if isinstance(value, Mapping) else f"a {type(value).__name__}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


class _Mismatch(Exception):
    """`value` (at `name`, an element's name when it is inside a list) is not what `annotation` asks for."""

    def __init__(self, name: str, value: Any, annotation: Any) -> None:
        super().__init__(name)
        self.name, self.value, self.annotation = name, value, annotation


def _convert(name: str, value: Any, annotation: Any) -> Any:
    """`value` as `annotation` asks (JSON lists -> tuples, 4.0 -> 4 for an int), or _Mismatch."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is typing.Annotated:
        return _convert(name, value, args[0])
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _convert(name, value, arg)
                except _Mismatch as mismatch:
                    if mismatch.name != name:  # an element of the right container is wrong: say which
                        raise
        raise _Mismatch(name, value, annotation)
    if origin in (tuple, list, Sequence):
        if not isinstance(value, list | tuple):
            raise _Mismatch(name, value, annotation)
        if origin is not tuple or Ellipsis in args or not args:
            item_types = [args[0] if args else Any] * len(value)
        elif len(value) == len(args):
            item_types = list(args)
        else:
            raise _Mismatch(name, value, annotation)
        converted = [
            _convert(f"{name}[{i}]", item, item_type)
            for i, (item, item_type) in enumerate(zip(value, item_types, strict=True))
        ]
        return tuple(converted) if origin is tuple else converted
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
            raise _Mismatch(name, value, annotation)
        value_type = args[1] if args else Any
        return {key: _convert(f"{name}.{key}", item, value_type) for key, item in value.items()}
    return _convert_scalar(name, value, annotation)


def _convert_scalar(name: str, value: Any, annotation: Any) -> Any:
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)  # JSON writers that know only doubles write 4 as 4.0
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        is_int = isinstance(value, int) and not isinstance(value, bool)
        ok = is_int or (isinstance(value, float) and math.isfinite(value))
    elif annotation is Path:
        if isinstance(value, str) and value:
            return Path(value)
        ok = isinstance(value, Path)
    elif isinstance(annotation, type):
        ok = isinstance(value, annotation)
    else:  # an annotation this checker does not know (a TypeVar, a Literal): the class validates it
        ok = True
    if not ok:
        raise _Mismatch(name, value, annotation)
    return value


def checked_value(name: str, value: Any, annotation: Any, where: str = "config") -> Any:
    """`value` of key `name` checked against the type `annotation` and normalised (lists to the tuples the
    annotation names, integral floats to ints, strings to Paths); a mismatch is a UserError "`where`: `name` must
    be ..., got ... (...)"."""
    try:
        return _convert(name, value, annotation)
    except _Mismatch as mismatch:
        value = mismatch.value
        got = "not finite" if isinstance(value, float) and not math.isfinite(value) else _kind(value)
        raise UserError(
            f"{where}: {mismatch.name} must be {_describe(mismatch.annotation)}, got {_shown(value)} ({got})"
        ) from None


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of dataclass `cls`'s fields (Annotated extras dropped), by field name."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def check_fields(instance: Any, where: str = "config") -> None:
    """Check every field of the dataclass `instance` against its annotation (see `checked_value`), replacing the
    values that normalise (a JSON list by the tuple the field declares); for `__post_init__`, frozen or not."""
    for name, annotation in field_types(type(instance)).items():
        value = getattr(instance, name)
        normalised = checked_value(name, value, annotation, where)
        if normalised is not value:
            object.__setattr__(instance, name, normalised)


def check_values(values: Mapping[str, Any], cls: type, where: str) -> dict[str, Any]:
    """The entries of `values` that are fields of dataclass `cls`, each checked against the field's type and
    normalised (see `checked_value`); other entries are left to the caller."""
    types_of = field_types(cls)
    return {
        name: checked_value(name, value, types_of[name], where) for name, value in values.items() if name in types_of
    }


def large_models_allowed() -> bool:
    """Whether the environment lifts the sanity limits (MAMBAKIT_ALLOW_LARGE_MODELS=1)."""
    return os.environ.get(ALLOW_LARGE_MODELS, "") == "1"


def _integers(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    return [item for item in value if isinstance(item, int)] if isinstance(value, tuple | list) else []


def check_sizes(
    sizes: Mapping[str, tuple[Any, int]], estimated_parameters: Callable[[], int], where: str = "config"
) -> None:
    """Refuse, before anything is allocated, a size above its sanity limit (`sizes`: key -> (value, limit); a
    list's integers are checked one by one, values that are no integers skipped), then a model whose
    `estimated_parameters()` (called only once the sizes passed) exceeds MAX_PARAMETERS. Each refusal is a
    UserError naming the key and the limit; MAMBAKIT_ALLOW_LARGE_MODELS=1 lifts them all."""
    if large_models_allowed():
        return
    hint = f"set {ALLOW_LARGE_MODELS}=1 if you mean it"
    for name, (value, limit) in sizes.items():
        for size in _integers(value):
            if size > limit:
                raise UserError(f"{where}: {name} {_shown(size)} is above the sanity limit {limit} ({hint})")
    parameters = estimated_parameters()
    if parameters > MAX_PARAMETERS:
        # Python's ints have no ceiling, floats (and so the "g" format) stop near 1.8e308.
        about = f"about {parameters:.3g}" if parameters < 1e300 else "more than 1e+300"
        raise UserError(
            f"{where}: the model would have {about} parameters, above the sanity limit {MAX_PARAMETERS:.3g} ({hint})"
        )
