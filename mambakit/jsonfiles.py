"""Reading JSON files (configs, checkpoint metadata, run records) with one-line errors that name the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")


def read_json_file(path: str | Path, what: str = "JSON file") -> Any:
    """The JSON value in `path`. A missing file raises FileNotFoundError; one that cannot be read (no permission,
    a directory) or is not JSON a UserError (a ValueError); each one line starting with the path. `what` names the
    file's role in the message."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; expected the {what} here") from None
    except OSError as error:
        raise UserError(
            f"{path}: cannot read the {what} ({error.strerror or type(error).__name__}); check that it is a file "
            f"you may read"
        ) from None
    except ValueError as error:  # not JSON, not UTF-8, or an integer of more digits than Python converts
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path}: not valid JSON ({first_line}); restore or re-export the {what}") from None


def read_json_object(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """The JSON object in `path`, with `read_json_file`'s errors; any other JSON value (a list, say) is a
    UserError starting with the path."""
    data = read_json_file(path, what)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object (the {what}), got a JSON {type(data).__name__}")
    return data


def load_json_object(path: str | Path, build: Callable[[dict[str, Any]], T]) -> T:
    """`build(data)` for the JSON object in `path`, with `read_json_object`'s errors; a bad object is a ValueError
    starting with the path."""
    data = read_json_object(path, "config")
    try:
        return build(data)
    except (TypeError, ValueError) as error:
        raise UserError(f"{path}: {error}") from None
