"""`lightgen train` and `lightgen sample`."""

from __future__ import annotations

import typer

from lightgen.cliutil import SET_HELP, config_from_cli, not_yet, user_errors


@user_errors
def train(
    config: str = typer.Argument(..., help="Experiment YAML or preset name (smoke, lab, paper)."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Pre-train the MAR student on a dataset, tracked in MLflow."""
    config_from_cli(config, sets)
    not_yet("train")


def sample() -> None:
    """Sample images from a checkpoint for prompts (optionally inpainting)."""
    not_yet("sample")


def register(root: typer.Typer) -> None:
    root.command("train")(train)
    root.command("sample")(sample)
