"""The `lightgen` command line: one typer app; each command (group) lives in its module of
``lightgen.commands`` and registers itself here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="lightgen",
    help="LightGen Studio: data-scale / caption-diversity / DPO ablations of LightGen, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from lightgen import __version__

        typer.echo(f"lightgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """LightGen Studio: data-scale / caption-diversity / DPO ablations of LightGen, tracked in MLflow."""


def _register_all() -> None:
    from lightgen.commands import COMMANDS

    for module in COMMANDS:
        module.register(app)


_register_all()


def main() -> None:
    """The outer error boundary: what a command did not turn into a message (a benchmark script run
    through ``lightgen bench``, an error raised while parsing) is sorted here too — expected errors are
    one line and exit code 2, bugs keep their traceback (exit code 1)."""
    import os
    import sys

    from lightgen.cliutil import describe_error, print_error

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no INFO lines about database migrations
    try:
        app()
    except Exception as e:  # noqa: BLE001 - sorted by describe_error; bugs are re-raised
        msg = describe_error(e)
        if msg is None:
            raise
        print_error(msg)
        sys.exit(2)


if __name__ == "__main__":
    main()
