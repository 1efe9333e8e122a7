"""Reading a configuration object from a JSON file, with errors that name the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def load_json_object(path: str | Path, build: Callable[[dict[str, Any]], T]) -> T:
    """`build(data)` for the JSON object in `path`. A missing file raises FileNotFoundError, bad JSON or a bad
    object ValueError, each one line starting with the path."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of config keys")
    try:
        return build(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
