"""`lightgen runs export|import`: move a sweep's runs between machines as a Parquet bundle."""

from __future__ import annotations

import typer

from lightgen.cliutil import UserError, user_errors

runs_app = typer.Typer(help="Export runs to a bundle and import bundles into a store.", no_args_is_help=True)


@runs_app.command("export")
@user_errors
def runs_export(
    out: str = typer.Option(..., "--out", help="Bundle folder to write (runs.parquet, metrics_history.parquet, results.parquet)."),
    sweep: str = typer.Option(None, "--sweep", help="Only this sweep's runs (default: every run in the store)."),
    experiment: str = typer.Option(None, "--experiment", help="Only this MLflow experiment."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="Store to read (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
) -> None:
    """Write a sweep's runs (params, tags, metric histories, per-prompt GenEval results) to one bundle."""
    from lightgen.runs import export_runs
    from lightgen.utils import check_folder_path

    if not out.endswith(".parquet"):
        check_folder_path(out, "--out")  # before the store is read
    try:
        stats = export_runs(out, tracking_uri, sweep, experiment)
    except LookupError as e:
        raise UserError(str(e)) from None
    print(f"exported {stats['runs']} runs, {stats['metric_points']} metric points, {stats['results']} GenEval rows to {out}")


@runs_app.command("import")
@user_errors
def runs_import(
    bundles: list[str] = typer.Argument(..., help="Bundle folder(s) written by `lightgen runs export`."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="Store to merge into (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
) -> None:
    """Merge bundles into a store without duplicating runs or points (every bundle is validated first)."""
    from lightgen.analysis.bundle import read_bundle
    from lightgen.runs import import_runs, validate_bundle

    for b in bundles:  # all bundles checked before any is written: a bad one leaves the store as it was
        validate_bundle(b, *read_bundle(b))
    for b in bundles:
        stats = import_runs(b, tracking_uri)
        print(f"{b}: imported {stats['imported']} runs, skipped {stats['skipped']} already present")


def register(root: typer.Typer) -> None:
    root.add_typer(runs_app, name="runs")
