"""Small helpers shared by the command modules: error handling and config loading from the CLI."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, NoReturn

import typer
from rich.console import Console

from lightgen.config import ConfigError, ExperimentConfig, load_config

console = Console(stderr=True)

SET_HELP = "Dotted override, e.g. --set train.iterations=2000 --set data.scale=200k (repeatable)."


class UserError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""


def fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def not_yet(feature: str) -> NoReturn:
    fail(f"'{feature}' is not yet available in this version of LightGen Studio", code=2)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ConfigError/UserError/FileNotFoundError into a clear message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, UserError) as e:
            fail(str(e))
        except FileNotFoundError as e:
            fail(f"file not found: {e.filename or e}")
        except PermissionError as e:
            fail(f"permission denied: {e.filename or e}")

    return wrapper


def config_from_cli(config: str, sets: list[str] | None) -> ExperimentConfig:
    return load_config(config, sets or [])


def echo(msg: str) -> None:
    print(msg, file=sys.stdout, flush=True)
