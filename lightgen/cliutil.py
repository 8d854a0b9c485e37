"""Small helpers shared by the command modules: the error boundary and config loading from the CLI.

The error boundary (:func:`describe_error`, used by :func:`user_errors`, :func:`run_guarded` and
``lightgen.cli.main``) sorts exceptions in two: *expected* ones — bad input the user can fix
(``ConfigError``, ``UserError``, ``OSError``, ``UnicodeDecodeError``, JSON/YAML/Parquet decode errors,
schema errors) — become one line on stderr naming the file or field, exit code 2, no traceback; anything
else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from lightgen.config import ConfigError, ExperimentConfig, load_config

console = Console(stderr=True)

SET_HELP = "Dotted override, e.g. --set train.iterations=2000 --set data.scale=200k (repeatable)."


class UserError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""


def one_line(message: str) -> str:
    """A (possibly multi-line) message as one line: the first line, then the others joined by '; '."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    head, rest = lines[0], lines[1:]
    return head + (" " if head.endswith(":") else "; ") + "; ".join(rest)


def describe_error(e: BaseException) -> str | None:
    """The user-facing message of an *expected* error, or ``None`` when ``e`` is a bug."""
    if isinstance(e, (ConfigError, UserError)):
        return str(e)
    if isinstance(e, UnicodeDecodeError):
        return f"input is not UTF-8 text ({e.reason} at byte {e.start}: {e.object[e.start:e.start + 1]!r})"
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
    try:
        import yaml

        if isinstance(e, yaml.YAMLError):
            return f"malformed YAML: {e}"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(e, ConnectionError):
        return str(e) or type(e).__name__
    if isinstance(e, OSError):
        name = e.filename if e.filename is not None else None
        if isinstance(e, FileNotFoundError):
            return f"file not found: {name or e}"
        if isinstance(e, IsADirectoryError):
            return f"{name}: is a folder, expected a file"
        if isinstance(e, NotADirectoryError):
            return f"{name}: part of this path is a regular file, not a folder"
        if isinstance(e, FileExistsError):
            return f"{name}: already exists (and is not a folder)"
        if isinstance(e, PermissionError):
            return f"permission denied: {name or e}"
        return f"{name}: {e.strerror or e}" if name else f"{e.strerror or e}"
    try:
        import pyarrow

        if isinstance(e, pyarrow.ArrowException):
            return f"not a readable Parquet/Arrow file: {e}"
    except ImportError:  # pragma: no cover
        pass
    try:
        from pydantic import ValidationError

        if isinstance(e, ValidationError):
            errs = e.errors()
            first = errs[0] if errs else {"loc": (), "msg": str(e)}
            loc = ".".join(str(p) for p in first["loc"])
            return f"invalid {e.title}: {loc}: {first['msg']}" + (f" (+{len(errs) - 1} more)" if len(errs) > 1 else "")
    except ImportError:  # pragma: no cover
        pass
    return None


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


def run_guarded(main: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The error boundary of a script entry point (sweep worker, analysis scripts, benchmarks).

    Returns ``main``'s integer result (0 for ``None``); expected errors print one line and give 2; a
    ``SystemExit`` passes through; bugs propagate with their traceback (the interpreter exits with 1).
    """
    try:
        rc = main(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        msg = describe_error(e)
        if msg is None:
            raise
        print(f"error: {one_line(msg)}", file=sys.stderr, flush=True)
        return 2
    return int(rc or 0)


def config_from_cli(config: str, sets: list[str] | None) -> ExperimentConfig:
    return load_config(config, sets or [])


def echo(msg: str) -> None:
    print(msg, file=sys.stdout, flush=True)
