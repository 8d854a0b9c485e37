"""Distillation datasets: ``get_dataset(cfg)`` builds or reuses the cached dataset of a config.

Toy world: :mod:`lightgen.data.toy` (captions from :mod:`lightgen.world.captions`, images from the toy
teacher).  Real world: :mod:`lightgen.data.real` (a caption file, a diffusers teacher, VAE/text caches).
"""

from __future__ import annotations

from typing import Any


def get_dataset(cfg: Any, progress: bool = False, **kwargs: Any) -> Any:
    """The dataset of ``cfg`` (world, scale, diversity, seed): built on first use, then read from cache."""
    if cfg.world.kind == "toy":
        from lightgen.data.toy import get_toy_dataset

        return get_toy_dataset(cfg, progress=progress, **kwargs)
    from lightgen.data.real import get_real_dataset

    return get_real_dataset(cfg, progress=progress, **kwargs)


def log_dataset(tracker: Any, ds: Any) -> dict[str, float]:
    """Log a dataset's measured diversity (``data/…`` metrics) and identity tags to a Tracker; returns the metrics.

    Call it wherever a dataset is used (training, DPO, sweeps) so the curves can be drawn against
    measured rather than nominal diversity.
    """
    metrics = ds.metrics()
    tracker.log_metrics(metrics, step=0)
    from lightgen.tracking import TAG_DATASET, TAG_DATASET_PATH

    tracker.set_tags({TAG_DATASET: ds.manifest_hash, TAG_DATASET_PATH: str(ds.path)})
    return metrics


__all__ = ["get_dataset", "log_dataset"]
