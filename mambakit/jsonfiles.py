"""Reading JSON files (configs, checkpoint metadata, run records) with one-line errors that name the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")


def read_json_file(path: str | Path, what: str = "JSON file") -> Any:
    """The JSON value in `path`. A missing file raises FileNotFoundError, an unreadable one ValueError, each one
    line starting with the path; `what` names the file's role in the message."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; expected the {what} here") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path}: not valid JSON ({first_line}); restore or re-export the {what}") from None


def load_json_object(path: str | Path, build: Callable[[dict[str, Any]], T]) -> T:
    """`build(data)` for the JSON object in `path`, with `read_json_file`'s errors; a bad object is a ValueError
    starting with the path."""
    data = read_json_file(path, "config")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of config keys")
    try:
        return build(data)
    except (TypeError, ValueError) as error:
        raise UserError(f"{path}: {error}") from None
