"""`lightgen sweep NAME`: plan a sweep once, then dry-run it, show its status, or launch it (``lightgen.sweep``)."""

from __future__ import annotations

import typer
from rich.console import Console

from lightgen.cliutil import SET_HELP, UserError, console, user_errors


def _parse_sets(sets: list[str] | None) -> dict:
    from lightgen.config import _parse_scalar, _split_override

    out = {}
    for s in sets or []:
        k, v = _split_override(s)
        out[k] = _parse_scalar(v)
    return out


def _default_preset() -> str:
    from lightgen.sweep.launch import _cuda_device_count

    # no GPU: the cpu preset, which learns on a CPU (benchmarks/LEARN_CPU.md); smoke is the plumbing check
    return "lab" if _cuda_device_count() > 0 else "cpu"


@user_errors
def sweep(
    name: str = typer.Argument(..., help="Sweep name (data-scale, caption-diversity, iterations, dpo-beta) or a YAML path."),
    preset: str = typer.Option(None, "--preset", help="Experiment preset: cpu (default without a GPU; learns on a CPU), smoke (a two-minute plumbing check), lab (default with a GPU), paper."),
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
    launcher: str = typer.Option("local", "--launcher", help="local (worker processes here) or slurm (a Slurm job array through submitit)."),
    partition: str = typer.Option(None, "--partition", help="Slurm partition (--launcher slurm)."),
    gpus_per_node: int = typer.Option(None, "--gpus-per-node", min=0, max=64, help="GPUs per Slurm job (--launcher slurm)."),
    nodes: int = typer.Option(None, "--nodes", min=1, max=1024, help="Nodes per Slurm job, one worker each (--launcher slurm)."),
    time_limit: str = typer.Option(None, "--time", help="Slurm time limit per job: minutes or [D-]HH:MM:SS (default 60); "
                                   "a pre-empted or timed-out job is requeued and resumes (--launcher slurm)."),
    account: str = typer.Option(None, "--account", help="Slurm account (--launcher slurm)."),
    qos: str = typer.Option(None, "--qos", help="Slurm quality of service (--launcher slurm)."),
    array_parallelism: int = typer.Option(None, "--array-parallelism", min=1, max=10000,
                                          help="At most this many Slurm worker jobs at once (--launcher slurm)."),
) -> None:
    """Run (or continue) an ablation sweep as an Optuna study; every trial is a child run in MLflow."""
    from lightgen import sweep as sw

    slurm_opts = _slurm_options(launcher, partition, gpus_per_node, nodes, time_limit, account, qos, array_parallelism,
                                workers)
    definition = sw.load_sweep(name)  # a typo'd name is refused before the default preset looks for a GPU (torch)
    overrides = _parse_sets(sets)
    preset = preset or _default_preset()
    plan = sw.plan_sweep(definition, preset, overrides, seeds=seeds)
    if dry_run:
        _print_dry_run(plan, sw.dry_run(plan))
        if slurm_opts is not None:
            _print_sbatch(plan, slurm_opts)
        return
    cfg = plan.base_config
    storage_url = storage or cfg.sweep.storage or sw.default_storage_url(cfg.tracking.root)
    sw.check_storage_url(storage_url, "--storage" if storage else "sweep.storage" if cfg.sweep.storage else "tracking.root")
    if status:
        st = sw.sweep_status(plan, sw.get_study(plan, sw.open_storage(storage_url, heartbeat=False)))
        _print_status(st)
        if slurm_opts is not None or _has_slurm_jobs(plan):
            _print_slurm_status(plan, sw.get_study(plan, sw.open_storage(storage_url, heartbeat=False)))
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
    from lightgen.progress import SweepProgress
    from lightgen.sweep.launch import SweepInterrupted

    if slurm_opts is not None:
        _launch_slurm(name, opts, slurm_opts, plan, tracking_uri or cfg.tracking.tracking_uri, preset)
        return
    view = SweepProgress(console=Console(highlight=False))  # bars on a terminal, plain lines when piped
    try:
        result = sw.launch(name, opts, log=lambda m: view.console.print(m, highlight=False, markup=False, soft_wrap=True), plan=plan,
                           view=view)
    except (ConnectionError, PermissionError) as e:
        raise UserError(str(e)) from None
    except SweepInterrupted as e:
        print(f"interrupted: {e.running} trial{'s' if e.running != 1 else ''} stopped at their last checkpoint; "
              "run the same command to continue", flush=True)
        raise typer.Exit(130) from None
    _print_status(result)
    console.print(f"sweep {result['status']} in {result['wall_seconds']:.1f} s; parent run {result['parent_run_id']}")
    _print_next_steps(plan, tracking_uri or cfg.tracking.tracking_uri, preset)
    if result["status"] != "FINISHED":
        raise typer.Exit(1)


def _slurm_options(launcher, partition, gpus_per_node, nodes, time_limit, account, qos, array_parallelism, workers):
    """``--launcher slurm``'s options (None for the local launcher, which refuses Slurm-only options)."""
    from lightgen.sweep.slurm import LAUNCHERS, SlurmOptions, parse_time

    if launcher not in LAUNCHERS:
        raise UserError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    given = {"--partition": partition, "--gpus-per-node": gpus_per_node, "--nodes": nodes, "--time": time_limit,
             "--account": account, "--qos": qos, "--array-parallelism": array_parallelism}
    if launcher == "local":
        used = [k for k, v in given.items() if v is not None]
        if used:
            raise UserError(f"{used[0]} is an option of --launcher slurm (this is --launcher local)")
        return None
    if time_limit is not None:
        parse_time(time_limit)
    return SlurmOptions(partition=partition, gpus_per_node=gpus_per_node, nodes=nodes or 1, time=time_limit,
                        account=account, qos=qos, array_parallelism=array_parallelism, workers=workers)


def _print_sbatch(plan, slurm_opts) -> None:
    from lightgen.sweep.slurm import sbatch_script

    n = slurm_opts.workers or len(plan.jobs)
    print(f"slurm: {len(plan.points)} points x {plan.seeds} seeds = {len(plan.jobs)} jobs, run by a job array of "
          f"{n} worker task(s); the sbatch script that would be submitted:")
    print(sbatch_script(plan, slurm_opts, n))


def _has_slurm_jobs(plan) -> bool:
    from lightgen.sweep.slurm import recorded_jobs

    return bool(recorded_jobs(plan.base_config.tracking.root, plan.study_name))


def _print_slurm_status(plan, study) -> None:
    from rich.table import Table

    from lightgen.sweep.slurm import slurm_status

    rows = slurm_status(plan, study)
    t = Table(title=f"Slurm jobs of study {plan.study_name}: {len(rows)}")
    for col in ("slurm job", "state", "trials"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["job_id"], r["state"], "; ".join(r["trials"]) or "-")
    Console().print(t)


def _launch_slurm(name, opts, slurm_opts, plan, tracking_uri, preset) -> None:
    from lightgen import sweep as sw
    from lightgen.sweep.launch import SweepInterrupted
    from lightgen.sweep.slurm import launch_slurm

    try:
        result = launch_slurm(name, opts, slurm_opts, log=lambda m: print(m, flush=True), plan=plan)
    except (ConnectionError, PermissionError) as e:
        raise UserError(str(e)) from None
    except SweepInterrupted:
        raise typer.Exit(130) from None
    _print_status(result)
    print(f"sweep {result['status']} in {result['wall_seconds']:.1f} s; parent run {result['parent_run_id']}; "
          f"Slurm jobs {', '.join(result['slurm_jobs']) or 'none'}")
    if result["status"] == "INCOMPLETE":
        print("jobs ended with work left (cancelled, failed or out of time): run the same command to continue")
    _print_next_steps(plan, tracking_uri, preset)
    if result["status"] != "FINISHED":
        raise typer.Exit(1)


def _print_next_steps(plan, tracking_uri: str | None, preset: str) -> None:
    """Where the results are and what to type next (the README's "first hour" walks through it)."""
    from lightgen.tracking.names import DEFAULT_TRACKING_URI, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    root = plan.base_config.tracking.root
    default = uri == DEFAULT_TRACKING_URI
    ui = "mlflow ui" if default else f"mlflow ui --backend-store-uri {uri}"
    src = "" if default else f" --tracking-uri {uri}"
    print(f"results: runs in {uri.removeprefix('sqlite:///')}, artifacts, datasets and checkpoints under {root}/")
    print(f"next:    {ui}   (http://127.0.0.1:5000: experiment {plan.experiment_name}, expand the parent run "
          f"{plan.sweep.name}:{preset})")
    print(f"         python analysis/make_tables.py --sweep {plan.sweep.name}{src}")
    print(f"         python analysis/make_curves.py --sweep {plan.sweep.name}{src}")
    if preset == "smoke":
        print("note:    the smoke preset is a plumbing check: its scores are ~0 by design; "
              "--preset cpu is the one that learns (benchmarks/LEARN_CPU.md)")


def _print_dry_run(plan, info) -> None:
    from rich.table import Table

    t = Table(title=f"{plan.sweep.name} [{plan.preset}]: {len(plan.points)} points x {plan.seeds} seeds = {info['jobs']} jobs")
    for col in ("arm", "point", "point_id", "actual size", "iterations"):
        t.add_column(col)
    for p in plan.points:
        t.add_row(p.arm, p.label, p.point_id, str(p.cfg.data.actual_size), str(p.cfg.train.iterations))
    Console().print(t)
    streams = info.get("streams") or []
    to_build = [s for s in streams if s["built"] < s["size"]]
    print(f"datasets: {len(info['datasets'])}, from {len(streams)} image stream(s) (a smaller scale is a prefix of "
          f"its stream); streams to build: {len(to_build)}")
    for st in streams:
        state = ("already built" if st["built"] >= st["size"] else
                 f"{st['built']:,} built, {st['size'] - st['built']:,} to build" if st["built"] else "to build")
        print(f"  {st['size']:,} images for scale {', '.join(st['scales'])}: {state}")
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


def register(root: typer.Typer) -> None:
    root.command("sweep")(sweep)
