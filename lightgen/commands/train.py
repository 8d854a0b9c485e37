"""`lightgen train` and `lightgen sample`."""

from __future__ import annotations

import typer

from lightgen.cliutil import SET_HELP, UserError, config_from_cli, echo, fail, user_errors


@user_errors
def train(
    config: str = typer.Argument(..., help="Experiment YAML or preset name (smoke, lab, paper)."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    ckpt_dir: str = typer.Option(None, "--checkpoint-dir", help="Default: <root>/checkpoints/<point_id>/seed<seed>."),
    experiment: str = typer.Option(None, "--experiment", help="MLflow experiment (default: tracking.experiment or 'lightgen/train')."),
) -> None:
    """Pre-train the MAR student on a dataset, tracked in MLflow (resumes from the newest checkpoint)."""
    cfg = config_from_cli(config, sets)  # validate before the heavy imports: bad input fails at once
    from lightgen import layout, pipeline, tracking
    from lightgen.train.pretrain import NonFiniteLossError
    from lightgen.utils import check_folder_path

    check_folder_path(cfg.tracking.root, "tracking.root")  # refused before any run or dataset is started
    out = check_folder_path(ckpt_dir, "--checkpoint-dir") if ckpt_dir else layout.checkpoint_dir(cfg)
    exp = experiment or pipeline.experiment_name(cfg, "train")
    # a killed earlier run of this folder (SIGKILL leaves it RUNNING) is resumed: one run, the whole history
    resume_id = tracking.stale_run_to_resume(cfg.tracking.tracking_uri, exp, out)
    if resume_id:
        echo(f"resuming MLflow run {resume_id} (its process is gone; checkpoints in {out})")
    try:
        result = pipeline.run(cfg, out, mode="train", experiment=exp, run_kind="train", run_id=resume_id, progress=True)
    except NonFiniteLossError as e:
        fail(str(e), code=1)
    summary = {**result.summary, "step": result.step}
    echo(f"trained to step {summary.get('step', '?')}; checkpoints in {out}; MLflow run {result.run_id}")
    if "geneval/overall" in summary:
        echo(f"GenEval overall {summary['geneval/overall']:.3f} "
             f"[{summary['geneval/overall_ci_low']:.3f}, {summary['geneval/overall_ci_high']:.3f}]")


def _load_rgb(path: str, size: int):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path).convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
    return np.asarray(img.resize((size, size), Image.BICUBIC))


@user_errors
def sample(
    checkpoint: str = typer.Option(..., "--checkpoint",
                                   help="Checkpoint folder (or a run folder: its newest) or an MLflow run id (its checkpoint tag)."),
    prompt: list[str] = typer.Option(..., "--prompt", help="Prompt (repeatable)."),
    n: int = typer.Option(4, "--n", min=1, help="Images per prompt."),
    seed: int = typer.Option(0, "--seed", min=0),
    out: str = typer.Option("grid.png", "--out", help="PNG grid to write."),
    inpaint: str = typer.Option(None, "--inpaint", help="Image whose unmasked region is kept."),
    mask: str = typer.Option(None, "--mask", help="Mask image: white = generate, black = keep."),
    size: int = typer.Option(None, "--size", help="Resolution (must match the checkpoint's data.resolution)."),
    sets: list[str] = typer.Option(None, "--set", help="Sampling overrides, e.g. --set eval.cfg=3 --set eval.num_iter=32."),
    weights: str = typer.Option("ema", "--weights", help="ema (default) or model."),
    tracking_uri: str = typer.Option(None, "--tracking-uri",
                                     help="MLflow store holding the run id (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."),
) -> None:
    """Sample images from a checkpoint or an MLflow run's checkpoint for prompts (optionally inpainting)."""
    import numpy as np
    import torch

    from lightgen.config import load_config
    from lightgen.model.sampling import sample_images
    from lightgen.train.checkpoint import load_checkpoint
    from lightgen.train.pretrain import resolve_device
    from lightgen.utils import image_grid_png, write_atomic

    if weights not in ("ema", "model"):
        raise UserError(f"--weights must be 'ema' or 'model', got {weights!r}")
    if (inpaint is None) != (mask is None):
        raise UserError("--inpaint and --mask must be given together")
    from lightgen.train.checkpoint import resolve_source

    folder, _ = resolve_source(checkpoint, tracking_uri, what="--checkpoint")  # a folder, or a run's checkpoint
    model, cfg = load_checkpoint(folder, weights=weights)
    if sets:
        bad = [s for s in sets if not s.startswith("eval.")]
        if bad:
            raise UserError(f"sample only accepts eval.* overrides, got {bad}")
        cfg = load_config(cfg.model_dump(mode="json"), sets)
    res = cfg.data.resolution
    if size is not None and size != res:
        raise UserError(f"--size {size}: this checkpoint was trained at {res} px (data.resolution); "
                        "use a checkpoint fine-tuned at that size")
    model.to(resolve_device(cfg.train.device))
    captions = [p for p in prompt for _ in range(n)]
    known_tokens = known_mask = None
    if inpaint is not None:
        img = _load_rgb(inpaint, res)
        m = _load_rgb(mask, res).mean(-1) / 255.0  # 1 = generate
        g = model.tokenizer.grid
        cell = res // g
        per_token = m.reshape(g, cell, g, cell).mean(axis=(1, 3)).reshape(-1)
        known_mask = torch.from_numpy(per_token < 0.5)
        if bool(known_mask.all()):
            raise UserError(f"{mask}: the mask marks nothing to generate (white = generate)")
        with torch.no_grad():
            known_tokens = model.tokenizer.encode_batch({"images": img[None]}, device=model.device)[0]
    images = sample_images(model, captions, cfg.eval, seed=seed, known_tokens=known_tokens, known_mask=known_mask)
    write_atomic(out, image_grid_png(np.asarray(images), captions, ncol=n))
    echo(f"wrote {len(images)} images to {out}")


def register(root: typer.Typer) -> None:
    root.command("train")(train)
    root.command("sample")(sample)
