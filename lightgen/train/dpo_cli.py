"""`lightgen dpo …` commands: ``lightgen dpo CONFIG --base …`` (= ``dpo train``) and ``lightgen dpo pairs``.

typer cannot give one group both a ``CONFIG`` argument and subcommands, so the group is a click Group
subclass that routes any first token that is not a subcommand (or ``--help``) to ``train``.

``--base`` is a checkpoint folder (or a run folder: its newest checkpoint) or an MLflow run id. A run id
is resolved, in order, from the run's tag or param ``lightgen.checkpoint``, a ``checkpoint`` artifact
folder it logged, or the default checkpoint folder of its config
(``<tracking.root>/checkpoints/<point_id>/seed<seed>``, from its ``tracking.root`` param and its
``lightgen.point_id`` / ``lightgen.seed`` tags — where ``lightgen train`` writes). The DPO run links to its
base with tag ``lightgen.base_run_id`` (run ids only), tag ``lightgen.base_checkpoint`` and param
``dpo.base``; it logs its own checkpoint as tag ``lightgen.checkpoint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click
import typer
from typer.core import TyperGroup

from lightgen.cliutil import SET_HELP, UserError, config_from_cli, echo, fail, user_errors

from lightgen.tracking import TAG_BASE_CHECKPOINT, TAG_CHECKPOINT  # noqa: E402  (light: no MLflow/torch at CLI start)


class DefaultTrainGroup(TyperGroup):
    """A group whose unknown first token goes to the ``train`` subcommand: ``dpo CONFIG`` = ``dpo train CONFIG``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["train", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=DefaultTrainGroup, no_args_is_help=True,
                  help="Diffusion-DPO post-training (and its SFT control arm): `lightgen dpo CONFIG --base …`, "
                       "`lightgen dpo pairs CONFIG --base …`.")


# --------------------------------------------------------------------------------------------------
# base resolution
# --------------------------------------------------------------------------------------------------
def resolve_base(base: str, tracking_uri: str | None = None) -> tuple[Path, str | None]:
    """``--base`` → (checkpoint folder, MLflow run id or None)."""
    from lightgen.train import checkpoint as ckpt

    return ckpt.resolve_source(base, tracking_uri, what="--base")


# --------------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------------
def _dataset(cfg: Any) -> Any:
    try:
        from lightgen.data import get_dataset
    except ImportError:
        raise UserError("the data layer is not available; give preference pairs with --set dpo.pairs=FILE.jsonl") from None
    return get_dataset(cfg, progress=True)


def _world(cfg: Any) -> Any:
    from lightgen.world import make_world

    return make_world(cfg)


def _geneval(cfg: Any, sampler: Any, out_dir: Path) -> tuple[dict[str, float], list[dict]] | None:
    """GenEval of a sampler, or None when evaluation is off or the GenEval layer is missing."""
    if not cfg.eval.enabled:
        return None
    try:
        from lightgen.geneval.evaluate import run_geneval
    except ImportError:
        return None
    return run_geneval(cfg, _world(cfg), sampler, out_dir, save_images=False)


@app.command("train")
@user_errors
def train(
    config: str = typer.Argument(..., help="Experiment YAML or preset name (smoke, lab, paper)."),
    base: str = typer.Option(None, "--base", help="Base checkpoint folder or MLflow run id (default: dpo.base)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    ckpt_dir: Optional[str] = typer.Option(None, "--checkpoint-dir", help="Default: <root>/checkpoints/<point_id>/seed<seed>."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment (default: tracking.experiment or 'lightgen-dpo')."),
    geneval: bool = typer.Option(True, "--geneval/--no-geneval", help="GenEval of the base and of the result (eval.enabled)."),
) -> None:
    """DPO (or dpo.mode=sft) from a base checkpoint or MLflow run id, tracked in MLflow."""
    from lightgen import tracking
    from lightgen.train.cli import checkpoint_dir
    from lightgen.train.dpo import load_base_sampler, dpo_train
    from lightgen.train.pretrain import NonFiniteLossError

    cfg = config_from_cli(config, sets)
    from lightgen.utils import check_folder_path

    check_folder_path(cfg.tracking.root, "tracking.root")  # refused before any run or dataset is started
    if ckpt_dir:
        check_folder_path(ckpt_dir, "--checkpoint-dir")
    base = base or cfg.dpo.base
    if not base:
        raise UserError("give the base model with --base CHECKPOINT|RUN_ID (or dpo.base in the config)")
    base_cp, base_run = resolve_base(base, cfg.tracking.tracking_uri)
    cfg = cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update={"base": base})})  # param dpo.base
    dataset = None if cfg.dpo.pairs else _dataset(cfg)
    from lightgen.sweep import job_point_id

    # a DPO/SFT job's identity includes its kind and its base: never the folder of a pre-training run
    point = job_point_id(cfg, cfg.dpo.mode, base=str(base_cp.resolve()))
    out = Path(ckpt_dir) if ckpt_dir else checkpoint_dir(cfg, point)
    exp = experiment or cfg.tracking.experiment or "lightgen-dpo"
    tags = {TAG_BASE_CHECKPOINT: str(base_cp.resolve()), tracking.TAG_POINT: point}
    if base_run:
        tags[tracking.TAG_BASE_RUN] = base_run
    geneval_root = cfg.root_path() / "geneval" / "dpo"
    try:
        with tracking.tracked_run(cfg, experiment=exp, kind="dpo", tags=tags) as tracker:
            before = _geneval(cfg, load_base_sampler(base_cp, cfg), geneval_root / tracker.run_id / "base") if geneval else None
            if before is not None:
                tracker.log_metrics({k.replace("geneval", "geneval_base", 1): v for k, v in before[0].items()}, step=0)
            result = dpo_train(cfg, base_cp, dataset, out, tracker=tracker, progress=None)
            tracker.set_tags({TAG_CHECKPOINT: str(Path(result.checkpoint).resolve())})
            after = _geneval(cfg, result.sampler, geneval_root / tracker.run_id / "after") if geneval else None
            if after is not None:
                from lightgen.geneval.evaluate import log_results_artifact

                tracker.log_metrics(after[0], step=result.step)
                log_results_artifact(tracker, after[1])
                if before is not None:
                    tracker.log_metrics({"geneval_delta/overall": after[0]["geneval/overall"] - before[0]["geneval/overall"]},
                                        step=result.step)
    except NonFiniteLossError as e:
        fail(str(e), code=1)
    echo(f"{cfg.dpo.mode} to step {result.step}; checkpoint {result.checkpoint}")
    if result.loss_history:
        echo(f"final {'sft' if cfg.dpo.mode == 'sft' else 'dpo'} loss {result.loss_history[-1][1]:.4f}")
    if before is not None and after is not None:
        echo(f"GenEval overall {before[0]['geneval/overall']:.3f} → {after[0]['geneval/overall']:.3f}")


@app.command("pairs")
@user_errors
def pairs(
    config: str = typer.Argument(..., help="Experiment YAML or preset name (dataset, dpo.num_pairs, eval sampling)."),
    base: str = typer.Option(None, "--base", help="Base checkpoint folder or MLflow run id (default: dpo.base)."),
    out: Optional[str] = typer.Option(None, "--out", help="Output folder (default: <root>/dpo_pairs/<key>)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Build preference pairs: the teacher's image (winner) vs the base student's sample (loser)."""
    from lightgen.train.dpo import build_pairs

    cfg = config_from_cli(config, sets)
    base = base or cfg.dpo.base
    if not base:
        raise UserError("give the base model with --base CHECKPOINT|RUN_ID (or dpo.base in the config)")
    base_cp, _ = resolve_base(base, cfg.tracking.tracking_uri)
    ps = build_pairs(cfg, base_cp, _dataset(cfg), out, progress=True)
    echo(f"{len(ps)} pairs in {ps.path}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dpo")
