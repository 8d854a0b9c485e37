"""`lightgen data …` commands: build a dataset into the cache, show its stats and a grid of samples."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from lightgen.cliutil import SET_HELP, UserError, config_from_cli, echo, user_errors

app = typer.Typer(help="Build and inspect distillation datasets (toy world or a diffusers teacher).", no_args_is_help=True)


def _stats_table(ds: object, cfg: object) -> str:
    from lightgen.world.captions import Knobs

    knobs = Knobs.from_config(cfg.data)
    lines = [
        f"dataset      {ds.path}",
        f"world        {cfg.world.kind}   scale {cfg.data.scale_label} (actual {len(ds)})   "
        f"resolution {cfg.data.resolution}   seed {cfg.data.seed}",
        f"diversity    caption_diversity={cfg.data.caption_diversity:g}  coverage={knobs.coverage:.3g}  "
        f"variety={knobs.variety:.3g}  density={knobs.density:.3g}",
        f"manifest     {ds.manifest_hash}",
    ]
    counts = ds.manifest.get("counts") or {}
    if counts:
        lines.append("tasks (cache) " + "  ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    lines.append("metric                  value")
    for k, v in ds.diversity.items():
        lines.append(f"data/{k:<20s}{v:>10.4g}")
    return "\n".join(lines)


@app.command("build")
@user_errors
def build(
    config: str = typer.Argument(..., help="Preset name or YAML path."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    world: Optional[str] = typer.Option(None, "--world", help="Shortcut for --set world.kind=toy|real."),
    scale: Optional[str] = typer.Option(None, "--scale", help="Shortcut for --set data.scale=… (e.g. 200k)."),
    diversity: Optional[float] = typer.Option(None, "--diversity", help="Shortcut for data.caption_diversity."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Shortcut for --set data.seed=…"),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache folder (data.cache_dir); default <root>/datasets."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Build a dataset (world, scale, diversity, seed; cache under tracking.root/datasets) and print its stats."""
    from lightgen.data import get_dataset

    extra = [f"{k}={v}" for k, v in (("world.kind", world), ("data.scale", scale),
                                      ("data.caption_diversity", diversity), ("data.seed", seed),
                                      ("data.cache_dir", out)) if v is not None]
    cfg = config_from_cli(config, [*(sets or []), *extra])
    from lightgen.utils import check_folder_path

    check_folder_path(cfg.data.cache_dir or cfg.tracking.root, "data.cache_dir" if cfg.data.cache_dir else "tracking.root")
    ds = get_dataset(cfg, progress=progress)
    echo(_stats_table(ds, cfg))


@app.command("show")
@user_errors
def show(
    config: str = typer.Argument(..., help="Preset name or YAML path."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    out: Path = typer.Option(None, "--out", help="Where to write the PNG grid of samples "
                                                 "(default: <tracking.root>/analysis/data/grid-<dataset>.png, beside the store)."),
    n: int = typer.Option(16, "--n", min=1, max=256, help="Number of samples in the grid."),
    seed: int = typer.Option(0, "--seed", min=0, help="Which samples (seeded choice)."),
) -> None:
    """Print a dataset's stats and write a PNG grid of samples with their captions."""
    from lightgen.data import get_dataset
    from lightgen.utils import image_grid_png, write_atomic

    cfg = config_from_cli(config, sets)
    ds = get_dataset(cfg, progress=False)
    echo(_stats_table(ds, cfg))
    k = min(n, len(ds))
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=k, replace=False))
    batch = ds.get_batch(idx)
    if "images" not in batch:
        raise UserError("this dataset stores latents only (no images) — nothing to show as a grid")
    if out is None:  # not the current folder (a repository checkout): the store's own analysis folder
        out = (Path(cfg.tracking.root) / "analysis" / "data"
               / f"grid-{cfg.world.kind}-{cfg.data.scale_label}-div{cfg.data.caption_diversity}-s{cfg.data.seed}.png")
        out.parent.mkdir(parents=True, exist_ok=True)
    if out.parent and not out.parent.exists():
        raise UserError(f"--out: folder {out.parent} does not exist")
    write_atomic(out, image_grid_png(batch["images"], batch["captions"], ncol=4))
    echo(f"wrote {out} ({k} samples)")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="data")
