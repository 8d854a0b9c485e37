"""`lightgen dpo …` commands."""

from __future__ import annotations

import typer

from lightgen.cliutil import not_yet

app = typer.Typer(help="Diffusion-DPO post-training (and its SFT control arm).", no_args_is_help=True)


@app.command("train")
def train() -> None:
    """DPO from a base checkpoint or MLflow run id."""
    not_yet("dpo")


@app.command("pairs")
def pairs() -> None:
    """Build preference pairs (teacher image vs the base student's sample)."""
    not_yet("dpo pairs")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dpo")
