"""Small helpers shared by the command modules: the command side of the error boundary, config loading.

The error boundary (:func:`lightgen.errors.describe_error`, used by :func:`user_errors`,
:func:`lightgen.errors.run_guarded` and ``lightgen.cli.main``; re-exported here) sorts exceptions in two: *expected* ones — bad input the user can fix
(``ConfigError``, ``UserError``, ``OSError``, ``UnicodeDecodeError``, JSON/YAML/Parquet decode errors,
schema errors) — become one line on stderr naming the file or field, exit code 2, no traceback; anything
else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from lightgen.config import ExperimentConfig, load_config
from lightgen.errors import UserError, describe_error, one_line, run_guarded  # noqa: F401 - the error boundary

console = Console(stderr=True)

SET_HELP = "Dotted override, e.g. --set train.iterations=2000 --set data.scale=200k (repeatable)."


def print_error(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, markup=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    print_error(message)
    raise typer.Exit(code)


def not_yet(feature: str) -> NoReturn:
    fail(f"'{feature}' is not yet available in this version of LightGen Studio", code=2)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The error boundary of a command: expected errors → one line naming the file/field, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - sorted by describe_error; bugs are re-raised
            msg = describe_error(e)
            if msg is None:
                raise
            fail(msg)

    return wrapper


def config_from_cli(config: str, sets: list[str] | None) -> ExperimentConfig:
    return load_config(config, sets or [])


def echo(msg: str) -> None:
    print(msg, file=sys.stdout, flush=True)
