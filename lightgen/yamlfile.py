"""Reading YAML files (configs, presets, sweep definitions): every failure a ``ConfigError`` naming the file,
with the line and column of a syntax error. ``yaml.safe_load`` only: no Python objects are constructed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from lightgen.errors import ConfigError, validation_messages

M = TypeVar("M")


def read_yaml_text(path: Path, what: str) -> str:
    """The text of a YAML file; unreadable files and bytes that are not UTF-8 are ConfigErrors naming it."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder, expected a YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{what} {path}:{line}: not UTF-8 text (byte {data[e.start:e.start + 1]!r} "
                          f"at offset {e.start})") from None


def _yaml_problem(e: Exception) -> str:
    """A YAML error as one line: what is wrong and where (line, column)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def load_yaml(path: Path, what: str, *, not_mapping: str, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """A YAML file that must hold a mapping: ``"<path>: <not_mapping>, got <type>"`` otherwise; an empty
    file gives ``empty`` when that is not None."""
    text = read_yaml_text(path, what)
    try:
        data = yaml.safe_load(text)  # safe: no Python objects are ever constructed
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML in {path}: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"malformed YAML in {path}: nested too deeply") from None
    if data is None and empty is not None:
        data = dict(empty)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {not_mapping}, got {type(data).__name__}")
    return data


def load_model(path: Path, model: type[M], what: str, *, not_mapping: str, error: type[Exception] = ConfigError) -> M:
    """A YAML mapping validated by a pydantic ``model``; a failure is ``error("invalid <what> <path>: loc:
    message; …")``, one line naming the file and every bad field."""
    from pydantic import ValidationError

    data = load_yaml(path, what, not_mapping=not_mapping)
    try:
        return model.model_validate(data)  # type: ignore[attr-defined]
    except ValidationError as e:
        raise error(f"invalid {what} {path}: {validation_messages(e)}") from None
