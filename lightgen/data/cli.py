"""`lightgen data …` commands."""

from __future__ import annotations

import typer

from lightgen.cliutil import not_yet

app = typer.Typer(help="Build and inspect distillation datasets (toy world or a diffusers teacher).", no_args_is_help=True)


@app.command("build")
def build() -> None:
    """Build a dataset (world, scale, diversity, seed) into the cache, with a progress bar."""
    not_yet("data build")


@app.command("show")
def show() -> None:
    """Print a dataset's stats and write a PNG grid of samples with their captions."""
    not_yet("data show")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="data")
