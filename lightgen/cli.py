"""The `lightgen` command line: one typer app, each command group registered by its own module."""

from __future__ import annotations

import typer

from lightgen.cliutil import not_yet

app = typer.Typer(
    name="lightgen",
    help="LightGen Studio: data-scale / caption-diversity / DPO ablations of LightGen, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

sweep_app = typer.Typer(help="Run an ablation sweep (data-scale, caption-diversity, iterations, dpo-beta).")
bench_app = typer.Typer(help="Throughput and overhead benchmarks (train, sample, tracking, smoke, data).", no_args_is_help=True)
runs_app = typer.Typer(help="Export runs to a bundle and import bundles into a store.", no_args_is_help=True)


@sweep_app.callback(invoke_without_command=True)
def sweep() -> None:
    """Run a sweep NAME [--preset] [--gpus] [--workers-per-gpu] [--storage] [--tracking-uri] [--set] [--dry-run] [--status]."""
    not_yet("sweep")


@bench_app.command("train")
def bench_train() -> None:
    """Training throughput (images/s, step time, memory, MFU)."""
    not_yet("bench train")


@runs_app.command("export")
def runs_export() -> None:
    """Write a sweep's runs to one bundle."""
    not_yet("runs export")


def _register_all() -> None:
    from lightgen.data import cli as data_cli
    from lightgen.geneval import cli as geneval_cli
    from lightgen.train import cli as train_cli
    from lightgen.train import dpo_cli

    data_cli.register(app)
    train_cli.register(app)
    dpo_cli.register(app)
    geneval_cli.register(app)
    app.add_typer(sweep_app, name="sweep")
    app.add_typer(bench_app, name="bench")
    app.add_typer(runs_app, name="runs")


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
