"""The error contract of the studio, with no CLI dependency (no typer, no rich).

:class:`UserError` is bad input the user can fix; :func:`describe_error` sorts any exception into an
*expected* one (a one-line message naming the file or field, exit code 2) or a bug (``None``: the caller
keeps the traceback). Library modules raise ``UserError`` from here; the command boundary
(``lightgen.cliutil.user_errors`` / ``run_guarded``) prints what ``describe_error`` says.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable


class UserError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""


class ConfigError(ValueError):
    """A configuration problem, with a message meant for the user (``lightgen.config`` raises it)."""


def one_line(message: str) -> str:
    """A (possibly multi-line) message as one line: the first line, then the others joined by '; '."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    head, rest = lines[0], lines[1:]
    return head + (" " if head.endswith(":") else "; ") + "; ".join(rest)


def validation_messages(e: Any) -> str:
    """A pydantic ``ValidationError`` as one line: ``loc: message`` per error, joined by '; ' (the
    "Value error, " prefix of our own validators dropped)."""
    return "; ".join((f"{'.'.join(map(str, err['loc']))}: " if err["loc"] else "")
                     + str(err["msg"]).removeprefix("Value error, ") for err in e.errors())


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
