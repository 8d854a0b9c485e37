"""The `lightgen` command line: one typer app, each command group registered by its own module."""

from __future__ import annotations

import typer

from rich.console import Console

from lightgen.cliutil import SET_HELP, UserError, console, not_yet, user_errors

app = typer.Typer(
    name="lightgen",
    help="LightGen Studio: data-scale / caption-diversity / DPO ablations of LightGen, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

bench_app = typer.Typer(help="Throughput and overhead benchmarks (train, sample, tracking, smoke, data).", no_args_is_help=True)
runs_app = typer.Typer(help="Export runs to a bundle and import bundles into a store.", no_args_is_help=True)


def _parse_sets(sets: list[str] | None) -> dict:
    from lightgen.config import _parse_scalar, _split_override

    out = {}
    for s in sets or []:
        k, v = _split_override(s)
        out[k] = _parse_scalar(v)
    return out


def _default_preset() -> str:
    from lightgen.sweep.launch import _cuda_device_count

    return "lab" if _cuda_device_count() > 0 else "smoke"


@user_errors
def sweep(
    name: str = typer.Argument(..., help="Sweep name (data-scale, caption-diversity, iterations, dpo-beta) or a YAML path."),
    preset: str = typer.Option(None, "--preset", help="Experiment preset: smoke (default without a GPU), lab, paper."),
    gpus: str = typer.Option(None, "--gpus", help="Comma-separated GPU indices, one worker per GPU (e.g. 0,1)."),
    workers_per_gpu: int = typer.Option(1, "--workers-per-gpu", min=1, max=64, help="Workers per GPU (small models)."),
    workers: int = typer.Option(None, "--workers", min=1, max=256, help="Worker processes without GPUs (default sweep.workers)."),
    storage: str = typer.Option(None, "--storage", help="Optuna storage URL (default: journal file under mlruns/optuna)."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    seeds: int = typer.Option(None, "--seeds", min=1, max=1000, help="Replicates per point (overrides the sweep's)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print points, datasets, checkpoints and compute; run nothing."),
    status: bool = typer.Option(False, "--status", help="Show progress per point and exit."),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="Run again the jobs that failed permanently (NaN loss, bad input)."),
    runner: str = typer.Option(None, "--runner", hidden=True, help="module:function running one trial (tests)."),
) -> None:
    """Run (or continue) an ablation sweep as an Optuna study; every trial is a child run in MLflow."""
    from lightgen import sweep as sw

    preset = preset or _default_preset()
    overrides = _parse_sets(sets)
    plan = sw.plan_sweep(sw.load_sweep(name), preset, overrides, seeds=seeds)
    if dry_run:
        _print_dry_run(plan, sw.dry_run(plan))
        return
    cfg = plan.base_config
    storage_url = storage or cfg.sweep.storage or sw.default_storage_url(cfg.tracking.root)
    sw.check_storage_url(storage_url, "--storage" if storage else "sweep.storage" if cfg.sweep.storage else "tracking.root")
    if status:
        st = sw.sweep_status(plan, sw.get_study(plan, sw.open_storage(storage_url, heartbeat=False)))
        _print_status(st)
        return
    gpu_list = None
    if gpus:
        try:
            gpu_list = [int(g) for g in gpus.split(",") if g.strip() != ""]
        except ValueError:
            raise UserError(f"--gpus must be comma-separated integers, got '{gpus}'") from None
    opts = sw.LaunchOptions(preset=preset, sets=overrides, gpus=gpu_list, workers_per_gpu=workers_per_gpu,
                            workers=workers, storage=storage, tracking_uri=tracking_uri, runner=runner, seeds=seeds,
                            retry_failed=retry_failed)
    try:
        result = sw.launch(name, opts, log=lambda m: console.print(m, highlight=False), plan=plan)
    except (ConnectionError, PermissionError) as e:
        raise UserError(str(e)) from None
    _print_status(result)
    console.print(f"sweep {result['status']} in {result['wall_seconds']:.1f} s; parent run {result['parent_run_id']}")
    if result["status"] != "FINISHED":
        raise typer.Exit(1)


def _print_dry_run(plan, info) -> None:
    from rich.table import Table

    t = Table(title=f"{plan.sweep.name} [{plan.preset}]: {len(plan.points)} points x {plan.seeds} seeds = {info['jobs']} jobs")
    for col in ("arm", "point", "point_id", "actual size", "iterations"):
        t.add_column(col)
    for p in plan.points:
        t.add_row(p.arm, p.label, p.point_id, str(p.cfg.data.actual_size), str(p.cfg.train.iterations))
    Console().print(t)
    print(f"datasets to build: {len(info['datasets'])}")
    for d in info["datasets"]:
        print(f"  scale {d['scale']} (actual {d['actual']}), diversity {d['diversity']}, seed {d['seed']}, {d['resolution']} px")
    print(f"checkpoints: {len(info['checkpoints'])} under {plan.base_config.tracking.root}/checkpoints/")
    print(f"compute: {info['samples']:,} training samples, ~{info['train_flops']:.3g} training FLOPs (6·N·tokens estimate)")


def _print_status(st) -> None:
    from rich.table import Table

    t = Table(title=f"study {st['study']}: {st['complete']}/{st['jobs']} jobs complete")
    for col in ("point", "arm", "complete", "running", "waiting", "failed", "objective"):
        t.add_column(col)
    for r in st["points"]:
        vals = ", ".join(f"{v:.3f}" for v in r["values"] if v is not None)
        t.add_row(r["point"], r["arm"], str(r["complete"]), str(r["running"]), str(r["waiting"]), str(r["failed"]), vals)
    Console().print(t)


BENCHMARKS = {
    "train": "Training throughput: images/s, step time, peak memory, MFU (CPU-sized by default; --size L --device cuda).",
    "sample": "Sampling throughput: images/s at a batch size, GenEval pass time.",
    "tracking": "MLflow logging cost per training step, batched vs one call per value.",
    "smoke": "Wall time of the whole smoke sweep, GenEval included.",
    "data": "Toy teacher rendering rate (images/s) at 32/64/128 px.",
    "geneval": "Toy GenEval detector: accuracy under corruptions, false positives, scoring rate.",
}


def _bench_command(name: str, doc: str):
    @user_errors
    def run(ctx: typer.Context) -> None:
        import runpy
        import sys
        from pathlib import Path

        from lightgen.config import REPO_ROOT

        script = Path(REPO_ROOT) / "benchmarks" / f"bench_{name}.py"
        if not script.is_file():
            not_yet(f"bench {name}")
        sys.argv = [str(script), *ctx.args]
        runpy.run_path(str(script), run_name="__main__")

    run.__doc__ = doc + " Extra arguments go to the benchmark script (see its --help)."
    return run


for _name, _doc in BENCHMARKS.items():
    bench_app.command(_name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        _bench_command(_name, _doc))


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


def _register_all() -> None:
    from lightgen.data import cli as data_cli
    from lightgen.geneval import cli as geneval_cli
    from lightgen.train import cli as train_cli
    from lightgen.train import dpo_cli

    data_cli.register(app)
    train_cli.register(app)
    dpo_cli.register(app)
    geneval_cli.register(app)
    app.command("sweep")(sweep)
    app.add_typer(bench_app, name="bench")
    app.add_typer(runs_app, name="runs")


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
