"""`lightgen geneval …` commands: prompts, sample, evaluate, summary, import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from lightgen.config import MAX_BOOTSTRAP
from lightgen.cliutil import SET_HELP, UserError, config_from_cli, echo, user_errors

app = typer.Typer(help="GenEval: official/toy prompts, sampling, scoring, summaries.", no_args_is_help=True)


def _world(cfg: Any) -> Any:
    """The toy world for toy prompts/detector; None in the real world."""
    from lightgen.world import make_world

    return make_world(cfg)


@app.command("prompts")
@user_errors
def prompts(
    out: Path = typer.Option(..., "--out", help="Folder for evaluation_metadata.jsonl + generation_prompts.txt."),
    prompt_set: str = typer.Option("official", "--set", help="official (GenEval's 553) or toy."),
    config: str = typer.Option("smoke", "--config", "-c", help="Preset or YAML (toy set: world + eval.n_prompts)."),
    override: Optional[list[str]] = typer.Option(None, "--override", "-o", help=SET_HELP.replace("--set", "--override")),
) -> None:
    """Regenerate GenEval's prompt files (official or toy)."""
    from lightgen.geneval.prompts import official_prompts, write_prompt_files

    if prompt_set == "official":
        specs = official_prompts()
    elif prompt_set == "toy":
        cfg = config_from_cli(config, override)
        world = _world(cfg)
        if world is None:
            raise UserError("--set toy needs world.kind=toy")
        from lightgen.geneval.evaluate import prompt_set as get_prompts

        specs = get_prompts(cfg, world)  # the standard set, then the held-out set (split "heldout")
    else:
        raise UserError(f"--set must be 'official' or 'toy', got '{prompt_set}'")
    meta, txt = write_prompt_files(specs, out)
    echo(f"wrote {len(specs)} prompts to {meta} and {txt}")


@app.command("sample")
@user_errors
def sample(
    out: Path = typer.Option(..., "--out", help="Output folder in GenEval's layout."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint folder (or a run folder: its newest checkpoint)."),
    teacher: bool = typer.Option(False, "--teacher", help="Toy world: render the prompts with the teacher instead (reference images)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Preset/YAML (default: the checkpoint's config; smoke with --teacher)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    images_per_prompt: Optional[int] = typer.Option(None, "--images-per-prompt", min=1, help="Default: eval.images_per_prompt (4)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Sampling seed."),
) -> None:
    """Sample images for the configured prompt set in GenEval's folder layout (from a checkpoint or the toy teacher)."""
    from lightgen.config import load_config
    from lightgen.geneval.evaluate import prompt_set as get_prompts
    from lightgen.geneval.evaluate import sample_to_folder
    from lightgen.geneval.prompts import write_prompt_files

    if (checkpoint is None) == (not teacher):
        raise UserError("give exactly one of --checkpoint PATH or --teacher")
    from lightgen.utils import check_folder_path

    check_folder_path(out, "--out")  # before any image is sampled
    if teacher:
        cfg = config_from_cli(config or "smoke", sets)
        world = _world(cfg)
        if world is None:
            raise UserError("--teacher needs the toy world (world.kind=toy)")
        metas = get_prompts(cfg, world)
        by_prompt = {m["prompt"]: m for m in metas}

        def sampler(prompts: list[str], seeds: list[int]):
            return world.render([by_prompt[p] for p in prompts], cfg.data.resolution, seeds)
    else:
        load_checkpoint, sample_images = _model_api()
        if not checkpoint.exists():
            raise UserError(f"checkpoint not found: {checkpoint}")
        model, ckpt_cfg = load_checkpoint(checkpoint)
        cfg = config_from_cli(config, sets) if config else load_config(ckpt_cfg.model_dump(mode="json"), sets or [])
        metas = get_prompts(cfg, _world(cfg))

        def sampler(prompts: list[str], seeds: list[int]):
            return sample_images(model, prompts, cfg.eval, seeds=seeds)

    n = images_per_prompt or cfg.eval.images_per_prompt
    sample_to_folder(sampler, metas, out, n, seed, cfg.eval.batch_size)
    write_prompt_files(metas, out)
    echo(f"wrote {len(metas)} prompts x {n} images to {out}")


def _model_api() -> tuple[Any, Any]:
    """(load_checkpoint, sample_images) from the model/train packages, guarded: they may be absent."""
    try:
        from lightgen.model import sample_images  # type: ignore[attr-defined]
    except ImportError as e:
        raise UserError(f"sampling needs lightgen.model.sample_images, not available here: {e}") from None
    try:
        from lightgen.model import load_checkpoint  # type: ignore[attr-defined]
    except ImportError:
        try:
            from lightgen.train.checkpoint import load_checkpoint  # type: ignore[no-redef]
        except ImportError as e:
            raise UserError(f"sampling needs load_checkpoint (lightgen.model / lightgen.train.checkpoint): {e}") from None
    return load_checkpoint, sample_images


@app.command("evaluate")
@user_errors
def evaluate(
    folder: Path = typer.Argument(..., help="GenEval layout: NNNNN/metadata.jsonl + NNNNN/samples/NNNN.png."),
    outfile: Optional[Path] = typer.Option(None, "--out", help="results.jsonl (default: <folder>/results.jsonl)."),
    config: str = typer.Option("smoke", "--config", "-c", help="Preset/YAML: eval.detector, world, tracking.root."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    bootstrap: Optional[int] = typer.Option(None, "--bootstrap", min=0, max=MAX_BOOTSTRAP, help="Default: eval.bootstrap."),
    run: Optional[str] = typer.Option(None, "--run", help="Also log metrics + geneval/results.jsonl into this MLflow run."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Default: tracking.tracking_uri / $MLFLOW_TRACKING_URI."),
) -> None:
    """Score a GenEval folder with the configured detector, writing results.jsonl and printing the summary."""
    from lightgen.geneval.evaluate import evaluate_folder, make_detector
    from lightgen.geneval.summary import format_summary, summarize, write_results

    cfg = config_from_cli(config, sets)
    world = _world(cfg) if cfg.eval.detector == "toy" else None
    results = evaluate_folder(folder, make_detector(cfg, world))
    dest = write_results(results, outfile or folder / "results.jsonl")
    summary = summarize(results, bootstrap if bootstrap is not None else cfg.eval.bootstrap, cfg.seed)
    echo(format_summary(summary, results))
    echo(f"\nwrote {len(results)} results to {dest}")
    if run:
        _log_to_run(run, tracking_uri or cfg.tracking.tracking_uri, summary, dest, step=0)


@app.command("summary")
@user_errors
def summary(
    results_file: Path = typer.Argument(..., help="results.jsonl (ours or the official evaluator's)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, max=MAX_BOOTSTRAP),
    seed: int = typer.Option(0, "--seed", min=0),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Summarise results.jsonl the way GenEval reports it, with a bootstrap CI."""
    from lightgen.geneval.summary import format_summary, read_results, summarize

    results = read_results(results_file)
    s = summarize(results, bootstrap, seed)
    echo(json.dumps(s, indent=2) if as_json else format_summary(s, results))


@app.command("import")
@user_errors
def import_(
    results_file: Path = typer.Argument(..., help="An official GenEval results.jsonl."),
    run: str = typer.Option(..., "--run", help="MLflow run id to log into."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db."),
    step: int = typer.Option(0, "--step", min=0),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, max=MAX_BOOTSTRAP),
    seed: int = typer.Option(0, "--seed", min=0),
) -> None:
    """Log an official GenEval results.jsonl into an MLflow run (metrics + artifact geneval/results.jsonl)."""
    from lightgen.geneval.summary import read_results, summarize

    results = read_results(results_file)
    s = summarize(results, bootstrap, seed)
    _log_to_run(run, tracking_uri, s, results_file, step)


def _log_to_run(run: str, tracking_uri: str | None, summary: dict[str, float], results_file: Path, step: int) -> None:
    """Metrics via the studio's Tracker (batched) and results.jsonl as artifact geneval/results.jsonl."""
    from lightgen.geneval.evaluate import log_results_artifact
    from lightgen.tracking import Tracker, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    tracker = Tracker(run, uri)
    try:
        tracker.client.get_run(run)
    except Exception as e:  # noqa: BLE001 - MLflow raises various types for unknown ids
        raise UserError(f"--run {run}: no such MLflow run in {uri} ({type(e).__name__})") from None
    tracker.log_metrics(summary, step=step)
    tracker.flush(synchronous=True)
    log_results_artifact(tracker, results_file)
    echo(f"logged {len(summary)} metrics and geneval/results.jsonl into run {run} "
         f"(overall {summary['geneval/overall']:.4f})")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="geneval")
