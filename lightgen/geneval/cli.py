"""`lightgen geneval …` commands."""

from __future__ import annotations

import typer

from lightgen.cliutil import not_yet

app = typer.Typer(help="GenEval: official/toy prompts, sampling, scoring, summaries.", no_args_is_help=True)


@app.command("prompts")
def prompts() -> None:
    """Regenerate GenEval's prompt files (official or toy)."""
    not_yet("geneval prompts")


@app.command("sample")
def sample() -> None:
    """Sample images for a prompt set in GenEval's folder layout."""
    not_yet("geneval sample")


@app.command("evaluate")
def evaluate() -> None:
    """Score a GenEval folder with a detector, writing results.jsonl."""
    not_yet("geneval evaluate")


@app.command("summary")
def summary() -> None:
    """Summarise results.jsonl the way GenEval reports it, with CIs."""
    not_yet("geneval summary")


@app.command("import")
def import_() -> None:
    """Log an official GenEval results.jsonl into an MLflow run."""
    not_yet("geneval import")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="geneval")
